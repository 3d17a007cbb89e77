"""The commit cycle shared by all shards: real files, fsync on, in-process."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from pathlib import Path

import pytest

from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.errors import Unavailable
from fenliu.server.core.shard import Shard
from fenliu.server.core.types import RegisterAgent, Status
from fenliu.server.snapshots import snapshot_in_process
from fenliu.server.storage.base import recover
from fenliu.server.storage.codec import FormatError, encode_command
from fenliu.server.storage.files import FilesStorage

from ..core.test_invariants import dump
from .conftest import T0, load, open_node

SHARDS = 4


def shops_per_shard(d: Dispatcher) -> dict[int, str]:
    """One shop id for every shard."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < SHARDS:
        found.setdefault(d.shard_for(f"shop{n}").index, f"shop{n}")
        n += 1
    return found


def register(shop: str, agent: str) -> RegisterAgent:
    return RegisterAgent(
        at=T0, shop_id=shop, agent_id=agent, max_concurrent=1, status=Status.ONLINE
    )


def on_disk(data: Path) -> object:
    return dump(load(data, SHARDS))


def teams(d: Dispatcher) -> list[list[str]]:
    return [sorted(a for shop in s.shops.values() for a in shop.agents) for s in d.shards]


def break_disk(storage: FilesStorage) -> None:
    """The log's descriptor becomes a read-only one (dup2 is atomic, so no other file can
    take the number): its next write fails with EBADF, a real OSError."""
    wal = storage.wal
    assert wal._fd is not None
    read_only = os.open(next(wal.dir.glob("wal-*.log")), os.O_RDONLY)
    os.dup2(read_only, wal._fd)
    os.close(read_only)


def test_concurrent_changes_on_every_shard_share_one_cycle_and_are_all_durable(
    tmp_path: Path,
) -> None:
    async def main() -> tuple[object, int, list[int]]:
        node, storage = open_node(tmp_path, SHARDS, fsync=True)
        shops = shops_per_shard(node.dispatcher)
        await asyncio.gather(
            *(node.execute(register(shop, f"a{k}")) for shop in shops.values() for k in range(3))
        )
        state = dump(node.dispatcher)
        cycles, positions = storage.cycles, [log.position for log in storage.logs]
        storage.close()
        return state, cycles, positions

    state, cycles, positions = asyncio.run(main())
    assert cycles == 1  # 12 records on 4 shards: one thread hop, one write, one fsync
    assert positions == [3] * SHARDS
    assert on_disk(tmp_path) == state


def test_a_failed_write_undoes_every_batch_of_its_cycle_and_nothing_before(
    tmp_path: Path,
) -> None:
    async def main() -> tuple[object, object, list[object], list[list[str]]]:
        node, storage = open_node(tmp_path, SHARDS, fsync=True)
        d = node.dispatcher
        shops = shops_per_shard(d)
        await asyncio.gather(*(node.execute(register(shop, "a0")) for shop in shops.values()))
        before = dump(d)
        break_disk(storage)
        outcomes = await asyncio.gather(
            *(node.execute(register(shops[i], "a1")) for i in range(SHARDS)),
            return_exceptions=True,
        )
        after = dump(d)
        await asyncio.gather(*(node.execute(register(shop, "a2")) for shop in shops.values()))
        live = teams(d)
        storage.close()
        return before, after, outcomes, live

    before, after, outcomes, live = asyncio.run(main())
    assert all(isinstance(o, Unavailable) for o in outcomes)  # one write for all 4 batches
    assert after == before  # every shard restored: the refused changes are gone
    assert live == [["a0", "a2"]] * SHARDS  # writing resumed in a fresh segment
    assert teams(load(tmp_path, SHARDS)) == live


def test_a_shard_that_cannot_be_restored_yet_strands_nobody_and_is_restored_later(
    tmp_path: Path,
) -> None:
    """Shard 0's restore raises something other than OSError (say a FormatError from a
    file damaged by the same failing disk). Every caller is answered, shard 0 refuses
    calls (never serving the undone change) and a snapshot does not wait for it; once its
    files read again, it is restored and serves."""

    async def main() -> tuple[list[object], object, list[int], bool]:
        node, storage = open_node(tmp_path, SHARDS, fsync=True)
        shops = shops_per_shard(node.dispatcher)
        await asyncio.gather(*(node.execute(register(shop, "a0")) for shop in shops.values()))
        break_disk(storage)

        def broken_load() -> object:
            raise FormatError("shard-000: not a fenliu file")

        storage.snapshots[0].load = broken_load  # type: ignore[method-assign,assignment]
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                *(node.execute(register(shops[i], "a1")) for i in range(SHARDS)),
                return_exceptions=True,
            ),
            5,
        )
        refused = await asyncio.gather(node.execute(register(shops[0], "a9")),
                                       return_exceptions=True)  # fmt: skip
        failed = await asyncio.wait_for(snapshot_in_process(node, storage), 5)
        del storage.snapshots[0].load
        node.retry_restores()  # the server's ticker does this every tick
        again = await asyncio.wait_for(node.execute(register(shops[0], "a2")), 5)
        storage.close()
        return outcomes, refused[0], failed, again is not None

    outcomes, refused, failed, resumed = asyncio.run(main())
    assert all(isinstance(o, Unavailable) for o in outcomes)
    assert isinstance(refused, Unavailable)
    assert failed == [0]
    assert resumed
    assert teams(load(tmp_path, SHARDS))[0] == ["a0", "a2"]


def test_close_waits_for_a_cycle_in_the_thread_before_closing_the_files(tmp_path: Path) -> None:
    """Before: close() closed the shard files first, so a cycle still in the thread found
    ``_fd`` None and reopened a segment (a leaked fd after close), or between its write
    and its fsync got ``os.fsync(None)``: a TypeError that killed the commit task."""

    async def main() -> tuple[int | None, bool]:
        node, storage = open_node(tmp_path, SHARDS, fsync=True)
        wal = storage.wal
        original, entered, release = wal.write, threading.Event(), threading.Event()

        def slow_write(batches: object) -> None:
            entered.set()
            release.wait(5)
            original(batches)  # type: ignore[arg-type]

        wal.write = slow_write  # type: ignore[method-assign,assignment]
        pending = asyncio.ensure_future(node.execute(register("shop0", "a0")))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        threading.Timer(0.2, release.set).start()
        storage.close()  # Server.stop's order: nothing new comes, one cycle may be running
        await asyncio.wait_for(pending, 5)
        return wal._fd, pending.exception() is None

    fd, ok = asyncio.run(main())
    assert fd is None  # no file left open by the journal after close
    assert ok


def test_a_failed_fsync_takes_its_batch_back_out_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write reached the page cache but making it durable failed: the callers hear
    Unavailable, so neither the restore that undoes the change nor a later recovery may
    replay it. (The segment is O_DSYNC: the write that copied the batch into the page cache
    is the call that reports the failed sync.)"""

    async def main() -> tuple[object, object, object]:
        node, storage = open_node(tmp_path, SHARDS, fsync=True)
        d = node.dispatcher
        shops = shops_per_shard(d)
        await node.execute(register(shops[0], "a0"))
        before = dump(d)
        broken = storage.wal._fd
        real_write = os.write

        def write(fd: int, data: bytes) -> int:
            written = real_write(fd, data)
            if fd == broken:
                raise OSError(errno.EIO, "injected: the disk lost the write")
            return written

        monkeypatch.setattr(os, "write", write)
        with pytest.raises(Unavailable):
            await node.execute(register(shops[0], "a1"))
        after = dump(d)
        monkeypatch.setattr(os, "write", real_write)
        await node.execute(register(shops[0], "a2"))  # resumes
        storage.close()
        return before, after, dump(d)

    before, after, final = asyncio.run(main())
    assert after == before  # the restore did not bring a1 back from the page cache
    assert teams(load(tmp_path, SHARDS))[0] == ["a0", "a2"]
    assert on_disk(tmp_path) == final


def test_a_restore_leaves_another_shards_write_under_way_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard is restored (after a failed write, or a bug) on the loop while the writer
    thread may be appending another shard's batch to the same segment: what the restore
    finds after the durable records is that write under way, not a torn tail. Before: the
    restore truncated the segment there, the rest of the write landed after the cut, and
    the acknowledged record was lost to the next start (its second half read as a tail)."""

    async def main() -> tuple[list[str], list[str]]:
        node, storage = open_node(tmp_path, SHARDS)
        shops = shops_per_shard(node.dispatcher)
        await asyncio.gather(*(node.execute(register(shop, "a0")) for shop in shops.values()))
        wal = storage.wal
        restored: list[Shard] = []
        real_write = os.write

        def write(fd: int, data: bytes | memoryview) -> int:
            if fd != wal._fd or restored:
                return real_write(fd, data)
            written = real_write(fd, data[: len(data) // 2])  # the writer is half-way...
            restored.append(recover(0, storage.logs[0], storage.snapshots[0]))  # ...when
            return written  # the loop restores shard 0; then the writer goes on

        monkeypatch.setattr(os, "write", write)
        wal.write([(1, [encode_command(register(shops[1], "a1"))])])  # durable: acknowledged
        monkeypatch.undo()
        storage.close()
        return sorted(restored[0].shops[shops[0]].agents), teams(load(tmp_path, SHARDS))[1]

    shard0, shard1 = asyncio.run(main())
    assert shard0 == ["a0"]
    assert shard1 == ["a0", "a1"]

"""The commit cycle shared by all shards: real files, fsync on, in-process."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.errors import Unavailable
from fenliu.server.core.types import RegisterAgent, Status
from fenliu.server.rpc.service import Core
from fenliu.server.storage.codec import FormatError
from fenliu.server.storage.files import ShardFiles
from fenliu.server.storage.journal import Journal

from ..core.test_invariants import dump

SHARDS = 4
T0 = 1_700_000_000_000


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
    d = Dispatcher(SHARDS)
    for i in range(SHARDS):
        d.shards[i] = ShardFiles(data, i, fsync=False).load()
    return dump(d)


def test_concurrent_changes_on_every_shard_share_one_cycle_and_are_all_durable(
    tmp_path: Path,
) -> None:
    async def main() -> tuple[object, int, list[int]]:
        d = Dispatcher(SHARDS)
        journal = Journal(d, tmp_path, fsync=True)
        journal.recover()
        core = Core(d, lambda: T0, journal=journal)
        shops = shops_per_shard(d)
        await asyncio.gather(
            *(core.execute(register(shop, f"a{k}")) for shop in shops.values() for k in range(3))
        )
        state = dump(d)
        cycles, batches = journal.cycles, [w.batches for w in journal.writers]
        journal.close()
        return state, cycles, batches

    state, cycles, batches = asyncio.run(main())
    assert cycles == 1  # 12 records on 4 shards: one thread hop
    assert batches == [1] * SHARDS  # one write + fsync per shard
    assert on_disk(tmp_path) == state


def test_a_failing_shard_undoes_only_its_own_batch_in_a_shared_cycle(tmp_path: Path) -> None:
    async def main() -> tuple[list[object], list[object], list[object]]:
        d = Dispatcher(SHARDS)
        journal = Journal(d, tmp_path, fsync=True)
        journal.recover()
        core = Core(d, lambda: T0, journal=journal)
        shops = shops_per_shard(d)
        await asyncio.gather(*(core.execute(register(shop, "a0")) for shop in shops.values()))
        before = dump(d)
        files = journal.writers[0].files
        assert files._fd is not None  # break shard 0's disk: its next write gets EBADF
        read_only = os.open(next(files.dir.glob("journal-*.log")), os.O_RDONLY)
        os.dup2(read_only, files._fd)
        os.close(read_only)
        outcomes = await asyncio.gather(
            *(core.execute(register(shops[i], "a1")) for i in range(SHARDS)),
            return_exceptions=True,
        )
        after = dump(d)
        again = await core.execute(register(shops[0], "a2"))  # a fresh segment: resumes
        assert again is not None
        journal.close()
        return before, after, outcomes

    before, after, outcomes = asyncio.run(main())
    assert isinstance(outcomes[0], Unavailable)
    assert [o for o in outcomes[1:] if isinstance(o, BaseException)] == []
    assert after[0] == before[0]  # shard 0 reloaded: its change undone
    assert all(after[i] != before[i] for i in range(1, SHARDS))  # the others kept theirs
    recovered = [ShardFiles(tmp_path, i, fsync=False).load() for i in range(SHARDS)]
    teams = [sorted(a for shop in s.shops.values() for a in shop.agents) for s in recovered]
    assert teams[0] == ["a0", "a2"]  # a1 was refused and undone, a2 came after the disk
    assert teams[1:] == [["a0", "a1"]] * (SHARDS - 1)


def test_an_unexpected_error_in_one_shard_neither_strands_the_others_nor_wedges_the_journal(
    tmp_path: Path,
) -> None:
    """Shard 0's reload raises something other than OSError (say a FormatError from a
    segment header cut short by the same failing disk). Before: the shared commit task
    died in its outcome loop, so shards 1-3, durable, never released their callers, their
    ``_writing`` stayed set and ``snapshot`` (hence ``Server.stop``) waited forever."""

    async def main() -> tuple[list[object], bool]:
        d = Dispatcher(SHARDS)
        journal = Journal(d, tmp_path, fsync=True)
        journal.recover()
        core = Core(d, lambda: T0, journal=journal)
        shops = shops_per_shard(d)
        await asyncio.gather(*(core.execute(register(shop, "a0")) for shop in shops.values()))
        files = journal.writers[0].files
        assert files._fd is not None
        read_only = os.open(next(files.dir.glob("journal-*.log")), os.O_RDONLY)
        os.dup2(read_only, files._fd)
        os.close(read_only)

        def broken_load() -> object:
            raise FormatError("shard-000: not a fenliu file")

        files.load = broken_load  # type: ignore[method-assign,assignment]
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                *(core.execute(register(shops[i], "a1")) for i in range(SHARDS)),
                return_exceptions=True,
            ),
            5,
        )
        del files.load
        again = await asyncio.wait_for(core.execute(register(shops[1], "a2")), 5)
        await asyncio.wait_for(journal.snapshot(), 5)
        journal.close()
        return outcomes, again is not None

    outcomes, resumed = asyncio.run(main())
    assert isinstance(outcomes[0], Unavailable)
    assert [o for o in outcomes[1:] if isinstance(o, BaseException)] == []
    assert resumed


def test_close_waits_for_a_cycle_in_the_thread_before_closing_the_files(tmp_path: Path) -> None:
    """Before: close() closed the shard files first, so a cycle still in the thread found
    ``_fd`` None and reopened a segment (a leaked fd after close), or between its write
    and its fsync got ``os.fsync(None)``: a TypeError that killed the commit task."""
    import threading

    async def main() -> tuple[int | None, bool]:
        d = Dispatcher(SHARDS)
        journal = Journal(d, tmp_path, fsync=True)
        journal.recover()
        core = Core(d, lambda: T0, journal=journal)
        files = journal.writers[d.shard_for("shop0").index].files
        original, entered, release = files.append, threading.Event(), threading.Event()

        def slow_append(data: bytes, records: int) -> None:
            entered.set()
            release.wait(5)
            original(data, records)

        files.append = slow_append  # type: ignore[method-assign]
        pending = asyncio.ensure_future(core.execute(register("shop0", "a0")))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        threading.Timer(0.2, release.set).start()
        journal.close()  # Server.stop's order: nothing new comes, one cycle may be running
        await asyncio.wait_for(pending, 5)
        return files._fd, pending.exception() is None

    fd, ok = asyncio.run(main())
    assert fd is None  # no file left open by the journal after close
    assert ok


def test_a_failed_fsync_takes_its_batch_back_out_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write reached the page cache but the fsync failed: the callers hear Unavailable,
    so neither the reload that undoes the change nor a later recovery may replay it."""

    async def main() -> tuple[object, object, object]:
        d = Dispatcher(SHARDS)
        journal = Journal(d, tmp_path, fsync=True)
        journal.recover()
        core = Core(d, lambda: T0, journal=journal)
        shops = shops_per_shard(d)
        await core.execute(register(shops[0], "a0"))
        before = dump(d)
        broken = journal.writers[0].files._fd
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if fd == broken:
                raise OSError(errno.EIO, "injected: the disk lost the write")
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        with pytest.raises(Unavailable):
            await core.execute(register(shops[0], "a1"))
        after = dump(d)
        monkeypatch.setattr(os, "fsync", real_fsync)
        await core.execute(register(shops[0], "a2"))  # a fresh segment: resumes
        journal.close()
        return before, after, dump(d)

    before, after, final = asyncio.run(main())
    assert after == before  # the reload did not bring a1 back from the page cache
    recovered = ShardFiles(tmp_path, 0, fsync=False).load()
    assert sorted(a for shop in recovered.shops.values() for a in shop.agents) == ["a0", "a2"]
    assert on_disk(tmp_path) == final

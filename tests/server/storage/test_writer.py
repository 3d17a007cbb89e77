"""The journal's writer thread (fsync on): what queues up during a cycle is the next
cycle, a cycle is held only while several callers wait on each, close answers
everything, and the thread is named for whoever reads /proc."""

from __future__ import annotations

import asyncio
import errno
import threading
from pathlib import Path

from fenliu.server.node import Node
from fenliu.server.storage.codec import encode_command
from fenliu.server.storage.files import COMMIT_INTERVAL_S, FilesStorage, hold

from .conftest import load, open_node
from .test_group_commit import SHARDS, register, shops_per_shard, teams


def test_appends_queued_during_a_cycle_are_all_written_by_the_next_one(tmp_path: Path) -> None:
    async def main() -> tuple[int, int]:
        node, storage = open_node(tmp_path, SHARDS, fsync=True)
        shops = shops_per_shard(node.dispatcher)
        wal = storage.wal
        original, entered, release = wal.write, threading.Event(), threading.Event()

        def held_write(batches: object) -> None:
            entered.set()
            release.wait(30)  # the first cycle is held in the thread until told
            original(batches)  # type: ignore[arg-type]

        wal.write = held_write  # type: ignore[method-assign,assignment]
        first = storage.append([(0, [encode_command(register(shops[0], "a0"))])])
        for _ in range(3000):  # up to 30 s on a loaded machine
            if entered.is_set():
                break
            await asyncio.sleep(0.01)
        assert entered.is_set(), "the writer thread never took the first append"
        later = [
            storage.append([(i, [encode_command(register(shops[i], f"a{i}"))])])
            for i in range(1, SHARDS)
        ]
        release.set()
        await asyncio.wait_for(asyncio.gather(first, *later), 30)
        cycles, records = storage.cycles, sum(wal.positions)
        storage.close()
        return cycles, records

    cycles, records = asyncio.run(main())
    assert cycles == 2  # the held one, then the three queued meanwhile, together
    assert records == SHARDS
    assert teams(load(tmp_path, SHARDS)) == [[f"a{i}"] for i in range(SHARDS)]


def test_a_cycle_is_held_only_while_several_callers_wait_on_each() -> None:
    interval = COMMIT_INTERVAL_S
    # a lone caller (the last cycle carried its one record) is written at once
    assert hold(busy=False, gathered=1, since_last=0.0) == 0.0
    assert hold(busy=False, gathered=0, since_last=0.0) == 0.0
    # several records a cycle, or appends queued while the last was written: the rest
    # of the interval since the last cycle began
    assert abs(hold(busy=False, gathered=2, since_last=interval / 4) - interval * 3 / 4) < 1e-9
    assert abs(hold(busy=True, gathered=1, since_last=interval / 2) - interval / 2) < 1e-9
    assert abs(hold(busy=True, gathered=50, since_last=0.0) - interval) < 1e-9
    # ...and nothing once the interval has passed
    assert hold(busy=True, gathered=50, since_last=interval) == 0.0
    assert hold(busy=False, gathered=50, since_last=interval * 3) == 0.0


def test_an_append_after_close_fails_at_once_and_writes_nothing(tmp_path: Path) -> None:
    async def main() -> tuple[OSError | None, int]:
        node, storage = open_node(tmp_path, SHARDS, fsync=True)
        shops = shops_per_shard(node.dispatcher)
        await node.execute(register(shops[0], "a0"))  # the writer thread runs
        storage.close()
        late = storage.append([(1, [encode_command(register(shops[1], "a1"))])])
        try:
            await asyncio.wait_for(late, 10)
        except OSError as exc:
            return exc, sum(storage.wal.positions)
        return None, sum(storage.wal.positions)

    error, records = asyncio.run(main())
    assert error is not None and error.errno == errno.ECANCELED
    assert records == 1
    assert teams(load(tmp_path, SHARDS))[1] == []


def test_the_writer_thread_is_named_in_proc(tmp_path: Path) -> None:
    """Linux (where fenliu runs): the bench tells its CPU apart from the loop's by it."""

    async def main() -> list[str]:
        node, storage = open_node(tmp_path, SHARDS, fsync=True)
        await node.execute(register(shops_per_shard(node.dispatcher)[0], "a0"))
        names = [p.read_text().strip() for p in Path("/proc/self/task").glob("*/comm")]
        storage.close()
        return names

    assert "fenliu-journal" in asyncio.run(main())


def test_a_storage_used_from_a_second_loop_still_answers(tmp_path: Path) -> None:
    """The writer thread answers each append on its caller's loop: a storage opened in one
    ``asyncio.run`` and used in the next (tools, tests) is not left waiting forever."""

    async def first() -> tuple[Node, FilesStorage]:
        node, storage = open_node(tmp_path, SHARDS, fsync=True)
        await node.execute(register(shops_per_shard(node.dispatcher)[0], "a0"))
        return node, storage

    node, storage = asyncio.run(first())

    async def second() -> None:
        shop = shops_per_shard(node.dispatcher)[1]
        await asyncio.wait_for(node.execute(register(shop, "a1")), 30)

    try:
        asyncio.run(second())
    finally:
        storage.close()
    assert teams(load(tmp_path, SHARDS))[:2] == [["a0"], ["a1"]]

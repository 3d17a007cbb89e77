"""The journal's writer thread (fsync on): what queues up during a cycle is the next
cycle, close answers everything, and the thread is named for whoever reads /proc. And
the node's commit hold in front of it (``--commit-delay``): an append waits for more
calls only while several callers are about, never for a lone caller, and ends once
enough records are staged or the calls stop coming."""

from __future__ import annotations

import asyncio
import errno
import threading
import time
from pathlib import Path

from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.node import ENOUGH, SIBLINGS, Node, hold
from fenliu.server.storage.codec import encode_command
from fenliu.server.storage.files import FilesStorage

from .conftest import T0, load, open_node
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


HOUR = 3600.0  # a hold's delay that no test could wait out: a call held by it never ends


def held_node(data: Path, *, delay: float = HOUR, quiet: float = HOUR) -> tuple[Node, FilesStorage]:
    """A node on real files with fsync on, whose commit hold waits ``delay`` at most and
    ends after ``quiet`` without a call."""
    storage = FilesStorage(data, SHARDS, fsync=True)
    node = Node(Dispatcher(SHARDS), lambda: T0, commit_delay=delay)
    node.commit_quiet = quiet
    node.open(storage)
    return node, storage


def test_the_hold_rule() -> None:
    delay = 0.002
    # a lone caller: one record staged, at most one in the last append: at once
    assert hold(since_append=0.0, staged=1, last_append=1, delay=delay) == 0.0
    assert hold(since_append=0.0, staged=1, last_append=0, delay=delay) == 0.0
    # several callers about (now, or in the last append): the rest of the delay since the
    # last append began
    assert SIBLINGS == 2
    assert abs(hold(since_append=delay / 4, staged=2, last_append=1, delay=delay)
               - delay * 3 / 4) < 1e-12  # fmt: skip
    assert abs(hold(since_append=delay / 2, staged=1, last_append=9, delay=delay)
               - delay / 2) < 1e-12  # fmt: skip
    assert hold(since_append=0.0, staged=30, last_append=30, delay=delay) == delay
    # ...nothing once the delay has passed since the last append (an idle server's first
    # burst), once enough are staged for one fsync, or with the hold off
    assert hold(since_append=delay, staged=30, last_append=30, delay=delay) == 0.0
    assert hold(since_append=float("inf"), staged=30, last_append=0, delay=delay) == 0.0
    assert hold(since_append=0.0, staged=ENOUGH, last_append=30, delay=delay) == 0.0
    assert hold(since_append=0.0, staged=30, last_append=30, delay=0.0) == 0.0


def test_a_lone_caller_is_never_held(tmp_path: Path) -> None:
    """One caller, one call at a time, under an hour-long delay: each is written at once."""

    async def main() -> tuple[int, int]:
        node, storage = held_node(tmp_path)
        shop = shops_per_shard(node.dispatcher)[0]
        try:
            for k in range(20):
                await asyncio.wait_for(node.execute(register(shop, f"a{k}")), 60)
            return node.holds, storage.cycles
        finally:
            storage.close()

    holds, cycles = asyncio.run(main())
    assert holds == 0
    assert cycles == 20  # one fsync each, none waited for another
    assert len(teams(load(tmp_path, SHARDS))[0]) == 20


def test_a_held_append_goes_once_enough_records_are_staged(tmp_path: Path) -> None:
    async def main() -> tuple[list[int], int, int]:
        node, storage = held_node(tmp_path)
        shops = shops_per_shard(node.dispatcher)
        try:
            # several callers at once on an idle server: not held (nothing was appended
            # within the delay), and the next append now has company in the last one
            await asyncio.wait_for(
                asyncio.gather(*(node.execute(register(shops[i], f"x{i}")) for i in range(2))),
                60,
            )
            assert (node.holds, storage.cycles) == (0, 1)
            first = [
                node.submit(register(shops[k % SHARDS], f"a{k}"))[1] for k in range(ENOUGH - 1)
            ]
            for _ in range(20):  # held: staged, not written
                await asyncio.sleep(0.01)
            assert node.holds == 1 and storage.cycles == 1
            assert all(node.staged(i) for i in range(SHARDS))
            assert not any(f.done() for f in first)
            last = node.submit(register(shops[0], "last"))[1]  # the ENOUGH-th: goes now
            await asyncio.wait_for(asyncio.gather(*first, last), 60)
            return [log.position for log in storage.logs], storage.cycles, node.holds
        finally:
            storage.close()

    positions, cycles, holds = asyncio.run(main())
    assert cycles == 2 and holds == 1  # the ENOUGH records in one held cycle
    assert sum(positions) == 2 + ENOUGH


def test_a_held_append_goes_once_the_calls_stop_coming(tmp_path: Path) -> None:
    """Callers that all wait on the held batch send nothing more: the hold ends after a
    quiet spell, not at its hour-long delay. Calls that keep coming join it."""

    async def main() -> tuple[int, int, int]:
        node, storage = held_node(tmp_path, quiet=2.0)
        shops = shops_per_shard(node.dispatcher)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(node.execute(register(shops[i], f"x{i}")) for i in range(2))),
                60,
            )

            async def trickle() -> None:  # one call every 20 ms, well within the quiet 2 s
                await asyncio.sleep(0.02)
                calls = []
                for k in range(10):
                    calls.append(asyncio.ensure_future(node.execute(register(shops[1], f"t{k}"))))
                    await asyncio.sleep(0.02)
                await asyncio.gather(*calls)

            burst = [node.execute(register(shops[0], f"a{k}")) for k in range(3)]
            await asyncio.wait_for(asyncio.gather(*burst, trickle()), 60)
            return storage.cycles, node.holds, sum(log.position for log in storage.logs)
        finally:
            storage.close()

    cycles, holds, records = asyncio.run(main())
    assert holds == 1
    assert cycles == 2  # the burst and the whole trickle in one held cycle
    assert records == 2 + 3 + 10


def test_a_check_that_ran_late_finds_a_busy_loop_not_quiet(tmp_path: Path) -> None:
    """A hold's check that runs late (the loop was busy, or the process off the CPU: calls
    may be waiting to be read) keeps holding; the next one that runs on time ends it."""

    async def main() -> tuple[int, bool, int, int]:
        node, storage = held_node(tmp_path, quiet=0.5)
        shops = shops_per_shard(node.dispatcher)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(node.execute(register(shops[i], f"x{i}")) for i in range(2))),
                60,
            )
            calls = [node.submit(register(shops[0], f"a{k}"))[1] for k in range(3)]
            await asyncio.sleep(0)  # the flush runs: held, its first check due in 0.5 s
            assert node.holds == 1
            time.sleep(1.0)  # the loop is busy: the check runs 0.5 s late
            for _ in range(5):
                await asyncio.sleep(0.01)
            cycles_after_late_check, held = storage.cycles, node.staged(0)
            await asyncio.wait_for(asyncio.gather(*calls), 60)  # a check on time ends it
            return cycles_after_late_check, held, storage.cycles, node.holds
        finally:
            storage.close()

    late, held, cycles, holds = asyncio.run(main())
    assert (late, held) == (1, True)  # still held after the late check
    assert (cycles, holds) == (2, 1)


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

"""Real files on disk: restart, torn tail, corrupt snapshot, newer format, failing disk."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fenliu.client import Client, Status, Unavailable
from fenliu.server.config import Config
from fenliu.server.core import types as t
from fenliu.server.core.types import RegisterAgent, Route
from fenliu.server.rpc.app import ServerThread
from fenliu.server.snapshots import Snapshotter, snapshot_in_process
from fenliu.server.storage import codec

from ..core.test_invariants import dump
from .conftest import T0, load, open_node

SHARDS = 2


def serve(data: Path) -> ServerThread:
    return ServerThread(Config(shards=SHARDS, data_dir=str(data), tick_interval_s=60))


def drive(target: str, buyers: range) -> list[str]:
    """Some traffic touching every kind of state; returns the session ids."""
    with Client(target) as fenliu:
        for shop in ("shop-a", "shop-b"):
            fenliu.register_agent(shop, "a1", max_concurrent=2, status=Status.ONLINE)
            fenliu.register_agent(shop, "a2", max_concurrent=1, status=Status.ONLINE)
        sessions = [fenliu.route("shop-a", f"b{i}").session_id for i in buyers]
        fenliu.acknowledge("shop-a", "a1", fenliu.list_agent_sessions("shop-a", "a1")[0].session_id)
        fenliu.set_status("shop-b", "a2", Status.SUSPENDED)
        fenliu.end_sessions("shop-a", sessions[:1])
    return sessions


def served(data: Path, buyers: range) -> object:
    """Serve on ``data``, drive some traffic, stop (a clean shutdown); the state it had."""
    with serve(data) as server:
        drive(server.target, buyers)
        return server.call(lambda: dump(server.dispatcher))


def state_of(data: Path) -> object:
    """The state the files hold, loaded in-process."""
    return dump(load(data, SHARDS))


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


def test_a_restart_recovers_exactly_the_state_before(data: Path) -> None:
    before = served(data, range(5))
    with serve(data) as server:
        assert server.call(lambda: dump(server.dispatcher)) == before
        drive(server.target, range(5, 8))  # and it goes on from there
        after = server.call(lambda: dump(server.dispatcher))
    assert state_of(data) == after


def test_recovery_without_a_snapshot_replays_the_whole_journal(data: Path) -> None:
    before = served(data, range(5))
    for snapshot in data.glob("shard-*/snapshot-*.snap"):
        snapshot.unlink()
    assert state_of(data) == before


def test_a_torn_tail_is_dropped_and_the_rest_recovered(data: Path) -> None:
    before = served(data, range(5))
    for snapshot in data.glob("shard-*/snapshot-*.snap"):
        snapshot.unlink()
    segment = max(data.glob("wal/wal-*.log"), key=lambda p: p.stat().st_size)
    intact = segment.stat().st_size
    whole = codec.frame(b"a record the crash cut short")
    with open(segment, "ab") as f:
        f.write(whole[:-5])  # a crash mid-write: never acknowledged
    assert state_of(data) == before
    assert segment.stat().st_size == intact  # truncated, so new records follow cleanly


def test_a_corrupt_snapshot_falls_back_to_an_older_one_and_a_longer_replay(data: Path) -> None:
    served(data, range(3))  # first stop: first snapshot
    before = served(data, range(3, 6))  # second: second snapshot, journal kept since the first
    damaged_shards = 0
    for shard_dir in data.glob("shard-*"):
        snapshots = sorted(shard_dir.glob("snapshot-*.snap"))
        if len(snapshots) < 2:
            continue  # a shard with no traffic: both snapshots are the same file
        damaged_shards += 1
        newest = snapshots[-1]
        damaged = bytearray(newest.read_bytes())
        damaged[-3] ^= 0xFF
        newest.write_bytes(bytes(damaged))
    assert damaged_shards
    assert state_of(data) == before


def test_a_newer_format_is_refused_not_misread(data: Path) -> None:
    served(data, range(2))
    segment = next(data.glob("wal/wal-*.log"))
    raw = bytearray(segment.read_bytes())
    raw[6:8] = (codec.FORMAT_VERSION + 1).to_bytes(2, "little")
    segment.write_bytes(bytes(raw))
    for snapshot in data.glob("shard-*/snapshot-*.snap"):
        snapshot.unlink()
    with pytest.raises(codec.FormatError, match="newer|Upgrade fenliu"):
        state_of(data)


def test_a_failing_disk_answers_unavailable_changes_nothing_and_recovers(data: Path) -> None:
    with serve(data) as server, Client(server.target, retries=0) as fenliu:
        drive(server.target, range(2))
        before = server.call(lambda: dump(server.dispatcher))
        storage = server.call(lambda: server._server.storage)  # type: ignore[union-attr]
        wal = storage.wal

        def break_disk() -> None:
            # The log's descriptor becomes a read-only one (dup2 is atomic, so no other
            # file can take the number): its next write fails with EBADF, a real OSError.
            assert wal._fd is not None
            read_only = os.open(next(wal.dir.glob("wal-*.log")), os.O_RDONLY)
            os.dup2(read_only, wal._fd)
            os.close(read_only)

        server.call(break_disk)
        with pytest.raises(Unavailable) as lost:
            fenliu.route("shop-a", "b-lost")
        assert lost.value.reason == "NOT_DURABLE"  # a journal failure, not a transport one
        assert server.call(lambda: dump(server.dispatcher)) == before  # nothing changed
        assert [a.agent_id for a in fenliu.list_team("shop-a")] == ["a1", "a2"]  # reads serve
        decision = fenliu.route("shop-a", "b-after")  # a fresh segment: writing resumes
        assert decision.session_id
        after = server.call(lambda: dump(server.dispatcher))
    assert state_of(data) == after


def test_reads_are_not_journaled(data: Path) -> None:
    with serve(data) as server:
        drive(server.target, range(2))
        storage = server.call(lambda: server._server.storage)  # type: ignore[union-attr]
        records = sum(log.position for log in storage.logs)
        with Client(server.target) as fenliu:
            fenliu.list_team("shop-a")
            fenliu.list_queue("shop-a")
        assert sum(log.position for log in storage.logs) == records


def test_a_segment_killed_before_its_header_is_dropped(data: Path) -> None:
    before = served(data, range(3))
    cut_short = data / "wal" / "wal-99999999.log"
    cut_short.write_bytes(codec.MAGIC[:3])
    assert state_of(data) == before
    assert not cut_short.exists()


def commands(shop: str, buyers: range) -> list[t.Command]:
    return [
        RegisterAgent(at=T0, shop_id=shop, agent_id="a1", max_concurrent=100,
                      status=t.Status.ONLINE),
        *(Route(at=T0 + i, shop_id=shop, buyer_id=f"b{i}", request_id=f"r{i}")
          for i in buyers),
    ]  # fmt: skip


@pytest.mark.parametrize("where", ["snapshotter", "in-process"])
def test_a_snapshot_holds_the_exact_state(data: Path, where: str) -> None:
    async def run() -> object:
        node, storage = open_node(data, SHARDS)
        for command in commands("shop-a", range(3)):
            await node.execute(command)
        if where == "snapshotter":
            snapshotter = Snapshotter(data, SHARDS)
            await snapshotter.start()
            assert await snapshotter.snapshot(storage)
            await snapshotter.close()
        else:
            assert await snapshot_in_process(node, storage) == []
        storage.close()
        return dump(node.dispatcher)

    state = asyncio.run(run())
    for path in data.glob("wal/wal-*.log"):  # only the snapshots can tell now
        path.unlink()
    assert list(data.glob("shard-*/snapshot-*.snap"))
    assert state_of(data) == state


def test_the_snapshotter_follows_the_log_and_snapshots_exactly_what_is_durable(
    data: Path,
) -> None:
    """Changes in flight when a snapshot is ordered are not in it (only what is durable
    is), the snapshotter keeps its replica between orders (each replays only what is new),
    and old segments are pruned once every shard's two kept snapshots cover them."""
    shards = 4
    shops = [f"shop-{i}" for i in range(8)]
    ordered: list[list[int]] = []

    async def run() -> object:
        node, storage = open_node(data, shards)
        snapshotter = Snapshotter(data, shards)
        await snapshotter.start()
        for k in range(3):
            for shop in shops:
                for command in commands(shop, range(k * 10, k * 10 + 3)):
                    if k and type(command) is RegisterAgent:
                        continue
                    await node.execute(command)
            busy = [
                asyncio.ensure_future(node.execute(command))
                for shop in shops
                for command in commands(shop, range(k * 10 + 3, k * 10 + 5))[1:]
            ]
            await asyncio.sleep(0)  # applied and staged, not yet durable
            ordered.append(list(storage.wal.positions))
            assert await snapshotter.snapshot(storage)
            await asyncio.gather(*busy)
        await snapshotter.close()
        storage.close()
        return dump(node.dispatcher)

    state = asyncio.run(run())
    for i in range(shards):
        kept = sorted(p.name for p in (data / f"shard-{i:03d}").glob("snapshot-*.snap"))
        assert kept == [f"snapshot-{ordered[k][i]:016d}.snap" for k in (1, 2)]
    assert min(int(p.stem.split("-")[1]) for p in data.glob("wal/wal-*.log")) > 1  # pruned
    assert dump(load(data, shards)) == state


def test_a_dead_snapshotter_is_replaced_and_a_failed_snapshot_stores_nothing(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> tuple[object, list[bool], int]:
        node, storage = open_node(data, SHARDS)
        for command in commands("shop-a", range(2)):
            await node.execute(command)
        snapshotter = Snapshotter(data, SHARDS)
        await snapshotter.start()
        assert snapshotter._proc is not None
        snapshotter._proc.kill()  # died, say by the OOM killer
        await snapshotter._proc.wait()
        outcomes = [await snapshotter.snapshot(storage)]  # replaced first, then stored
        await node.execute(Route(at=T0, shop_id="shop-a", buyer_id="b9", request_id="r9"))
        # The next image of shard 0 cannot be written (a directory in the way).
        position = storage.wal.positions[0]
        blocker = data / "shard-000" / f"snapshot-{position:016d}.tmp"
        blocker.mkdir()
        outcomes.append(await snapshotter.snapshot(storage))
        blocker.rmdir()
        outcomes.append(await snapshotter.snapshot(storage))  # the retry
        await snapshotter.close()
        storage.close()
        return dump(node.dispatcher), outcomes, snapshotter.restarts

    state, outcomes, restarts = asyncio.run(run())
    assert (outcomes, restarts) == ([True, False, True], 1)
    assert "the snapshotter exited" in caplog.text
    assert "the snapshotter failed" in caplog.text
    assert state_of(data) == state


def test_the_snapshotter_never_deletes_a_segment_the_server_is_creating(data: Path) -> None:
    """The snapshotter lists the log's segments (when it starts, and whenever it needs the
    next one) while the server may be opening a new one: created, its header not written
    yet. It must leave it alone: the server alone drops files. Before: the replica took it
    for one cut short by a crash and unlinked it, and everything the server then wrote to
    it, acknowledged, was gone at the next start."""

    async def run() -> tuple[bool, bool]:
        node, storage = open_node(data, 2)
        await node.execute(RegisterAgent(at=T0, shop_id="shop-0", agent_id="a0", max_concurrent=1))
        creating = storage.wal.dir / "wal-00000002.log"
        creating.touch()  # the writer between its open and its header
        snapshotter = Snapshotter(data, 2)
        await snapshotter.start()
        stored = await snapshotter.snapshot(storage)
        await snapshotter.close()
        storage.close()
        return stored, creating.exists()

    stored, kept = asyncio.run(run())
    assert stored
    assert kept

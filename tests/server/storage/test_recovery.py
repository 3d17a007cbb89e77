"""Real files on disk: restart, torn tail, corrupt snapshot, newer format, failing disk."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fenliu.client import Client, Status, Unavailable
from fenliu.server import snapshots as snapshots_module
from fenliu.server.config import Config
from fenliu.server.core import image, types as t
from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.types import RegisterAgent, Route
from fenliu.server.rpc.app import ServerThread
from fenliu.server.snapshots import snapshot_all
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


def test_a_forked_snapshot_holds_the_exact_state(data: Path) -> None:
    commands = [
        RegisterAgent(at=T0, shop_id="shop-a", agent_id="a1", max_concurrent=1,
                      status=t.Status.ONLINE),
        *(Route(at=T0 + i, shop_id="shop-a", buyer_id=f"b{i}", request_id=f"r{i}")
          for i in range(3)),
    ]  # fmt: skip

    async def run() -> object:
        node, storage = open_node(data, SHARDS)
        for command in commands:
            await node.execute(command)
        assert await snapshot_all(node, storage, fork=True) == []
        storage.close()
        return dump(node.dispatcher)

    state = asyncio.run(run())
    for path in data.glob("wal/wal-*.log"):  # only the snapshots can tell now
        path.unlink()
    assert list(data.glob("shard-*/snapshot-*.snap"))
    assert state_of(data) == state


@pytest.mark.parametrize("processes", [1, 3])
def test_a_forked_snapshot_of_busy_shards_records_each_exact_position(
    data: Path, processes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shards whose journal is still writing are snapshotted in a later round; every image
    covers exactly the records before its segment (the journals are kept: a wrong position
    would replay records twice or not at all)."""
    monkeypatch.setattr(snapshots_module, "SNAPSHOT_PROCESSES", processes)
    shards = 4
    shops = [f"shop-{i}" for i in range(8)]
    assert {Dispatcher(shards).shard_for(shop).index for shop in shops} == set(range(shards))
    positions: dict[int, int] = {}

    async def run() -> object:
        node, storage = open_node(data, shards)
        d = node.dispatcher
        for shop in shops:
            await node.execute(RegisterAgent(at=T0, shop_id=shop, agent_id="a1",
                                             max_concurrent=5, status=t.Status.ONLINE))  # fmt: skip
        quiet = [shop for shop in shops if d.shard_for(shop).index >= 2]
        busy = [
            asyncio.ensure_future(
                node.execute(Route(at=T0 + i, shop_id=shop, buyer_id=f"b{i}", request_id=f"r{i}"))
            )  # fmt: skip
            for i, shop in enumerate(shop for shop in shops * 3 if shop not in quiet)
        ]
        await asyncio.sleep(0)  # applied and staged, not yet durable
        assert [node.idle(i) for i in range(shards)] == [False, False, True, True]
        assert await snapshot_all(node, storage, fork=True) == []
        await asyncio.gather(*busy)
        positions.update((i, log.position) for i, log in enumerate(storage.logs))
        storage.close()
        return dump(d)

    state = asyncio.run(run())
    for i in range(shards):
        (snapshot,) = (data / f"shard-{i:03d}").glob("snapshot-*.snap")
        assert snapshot.name == f"snapshot-{positions[i]:016d}.snap"
    assert dump(load(data, shards)) == state
    for path in data.glob("wal/wal-*.log"):  # the snapshots alone hold it all
        path.unlink()
    assert dump(load(data, shards)) == state


def test_a_failed_snapshot_child_leaves_the_journal_to_recover_from(
    data: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: object) -> bytes:
        raise MemoryError("no memory for the image")

    async def run() -> tuple[object, list[int]]:
        node, storage = open_node(data, SHARDS)
        await node.execute(RegisterAgent(at=T0, shop_id="shop-a", agent_id="a1",
                                         max_concurrent=1, status=t.Status.ONLINE))  # fmt: skip
        await node.execute(Route(at=T0, shop_id="shop-a", buyer_id="b1", request_id="r1"))
        monkeypatch.setattr(image, "encode", broken)  # the child inherits it
        failed = await snapshot_all(node, storage, fork=True)
        storage.close()
        return dump(node.dispatcher), failed

    state, failed = asyncio.run(run())
    assert failed == list(range(SHARDS))  # said, so that it is counted and retried
    assert "the snapshot failed: the snapshot child exited with 1" in caplog.text
    assert not list(data.glob("shard-*/snapshot-*"))  # neither a snapshot nor a .tmp
    assert state_of(data) == state

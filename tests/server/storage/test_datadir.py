"""Issue 10, storage that never lies: a data directory the server cannot trust is refused
at start, naming what is wrong, never half-read. Real server processes, real files.

Issue 10's acceptance tests: they failed on the code before it (each docstring says how).
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import zlib
from pathlib import Path

import pytest

from fenliu.client import Client, NotFound, Status

from .procs import flip, frames, launch, refuses, running, serving, starts, wal_segments

pytestmark = pytest.mark.slow

SHOP = "dd-a"
SHARDS = 2


def index_of(shop: str, shards: int = SHARDS) -> int:
    return zlib.crc32(shop.encode()) % shards


def shard_of(shop: str, shards: int = SHARDS) -> str:
    """The shard's directory (its snapshots)."""
    return f"shard-{index_of(shop, shards):03d}"


def routed(target: str, buyers: range) -> list[str]:
    """Each buyer routed (one record each, acknowledged); their session ids."""
    with Client(target) as fenliu:
        fenliu.register_agent(SHOP, "a1", max_concurrent=1000, status=Status.ONLINE)
        return [fenliu.route(SHOP, f"b{i}").session_id for i in buyers]


def journal_of(data: Path, shop: str = SHOP) -> Path:
    """The write-ahead log segment holding the most of the shop's shard's records."""
    return max(wal_segments(data), key=lambda p: len(frames(p, index_of(shop))))


def named_offset(text: str, path: Path) -> int:
    """The ``offset N`` of the log line naming ``path``."""
    for line in text.splitlines():
        if path.name in line and (found := re.search(r"offset (\d+)", line)):
            return int(found.group(1))
    raise AssertionError(f"no line names {path.name} and an offset:\n{text}")


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "server.log"


def damaged_in_the_middle(data: Path, log: Path) -> tuple[Path, int, int, list[str]]:
    """20 acknowledged routes, a SIGKILL (no snapshot), one flipped byte in record 10:
    the segment, the damaged record's offset, the records from it on, the session ids."""
    with running(data, log) as (proc, target):
        sessions = routed(target, range(20))
    segment = journal_of(data)
    records = frames(segment)
    assert records == frames(segment, index_of(SHOP)), "only the shop's shard wrote"
    assert len(records) >= 21  # the registration and the 20 routes, all acknowledged
    offset, size = records[10]
    flip(segment, offset + 8 + size // 2)  # inside the payload: the checksum fails
    return segment, offset, len(records) - 10, sessions


def test_a_flipped_byte_mid_journal_is_refused_naming_the_file_and_offset(
    tmp_path: Path, log: Path
) -> None:
    """Before issue 10: taken for a torn tail, 10 acknowledged records dropped without an error."""
    data = tmp_path / "data"
    segment, offset, _, _ = damaged_in_the_middle(data, log)
    before = segment.read_bytes()
    text = refuses(launch(data, log))
    named = named_offset(text, segment)
    assert 8 <= named <= offset, f"offset {named} is not where the damage is ({offset})"
    assert str(segment) in text, f"the file is not named:\n{text}"
    assert segment.read_bytes() == before, "a refused start must change nothing"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_truncate_corrupt_journal_starts_and_says_what_it_drops(
    tmp_path: Path, log: Path, how: str
) -> None:
    """Before issue 10: no such flag (argparse exits 2); and without it the server does the same
    silently (so the env variant fails on the refusal without it)."""
    data = tmp_path / "data"
    segment, offset, dropped, sessions = damaged_in_the_middle(data, log)
    dropped_bytes = segment.stat().st_size - offset
    refuses(launch(data, log))  # without the flag or key: refused (and nothing changed)
    assert segment.stat().st_size == offset + dropped_bytes
    extra = ("--truncate-corrupt-journal",) if how == "flag" else ()
    env = {"FENLIU_TRUNCATE_CORRUPT_JOURNAL": "true"} if how == "env" else None
    with running(data, log, *extra, env=env) as (proc, target):
        text = proc.text()
        lines = [line for line in text.splitlines() if segment.name in line]
        assert lines, f"nothing logged about {segment.name}:\n{text}"
        said = "\n".join(lines)
        assert f"{dropped_bytes} bytes" in said or re.search(rf"\b{dropped} records?\b", said), said
        with Client(target) as fenliu:
            for sid in sessions[:9]:  # records 1..9: before the damage
                assert fenliu.get_session(SHOP, sid).buyer_id
            for sid in sessions[9:]:  # record 10 on: dropped, as the log said
                with pytest.raises(NotFound):
                    fenliu.get_session(SHOP, sid)
    assert segment.stat().st_size == offset
    with running(data, log) as (_, target):  # truncated: an ordinary start now
        with Client(target) as fenliu:
            assert fenliu.get_session(SHOP, sessions[0]).buyer_id


def test_damage_at_the_end_of_a_segment_followed_by_another_is_corruption(
    tmp_path: Path, log: Path
) -> None:
    """A torn tail can only be at the very end of the journal: a later segment was
    opened after it, so what it held had been written. Before issue 10: dropped as torn, and the
    next segment replayed on top of the gap."""
    data = tmp_path / "data"
    with running(data, log) as (_, target):
        routed(target, range(5))
    with running(data, log) as (_, target):
        with Client(target) as fenliu:
            for i in range(5, 10):
                fenliu.route(SHOP, f"b{i}")
    first, second = wal_segments(data)[:2]
    assert frames(second, index_of(SHOP)), "the later segment holds records"
    offset, size = frames(first)[-1]
    flip(first, offset + size - 1)
    text = refuses(launch(data, log))
    assert named_offset(text, first) <= offset


def test_both_snapshots_damaged_and_the_journal_pruned_is_refused_naming_the_shard(
    tmp_path: Path, log: Path
) -> None:
    """Before issue 10: the shard starts empty plus the remaining journal; the shop vanishes."""
    data = tmp_path / "data"
    for run in range(2):  # two clean stops: two snapshots, the journal before the older pruned
        with running(data, log) as (proc, target):
            routed(target, range(run * 5, run * 5 + 5))
            assert proc.stop() == 0
    shard = data / shard_of(SHOP)
    snapshots = sorted(shard.glob("snapshot-*.snap"))
    assert len(snapshots) == 2
    assert starts(wal_segments(data)[0])[index_of(SHOP)] > 0, "the log's first records pruned"
    for snapshot in snapshots:
        flip(snapshot, snapshot.stat().st_size - 3)
    text = refuses(launch(data, log))
    assert shard.name in text


def test_a_second_server_on_a_live_data_directory_refuses_naming_the_holder(
    tmp_path: Path, log: Path
) -> None:
    """Before issue 10: the second one starts and journals into the same files."""
    data = tmp_path / "data"
    with running(data, log) as (first, target):
        routed(target, range(2))
        text = refuses(launch(data, tmp_path / "second.log"))
        assert re.search(r"lock", text, re.IGNORECASE), text
        assert f"pid {first.pid}" in text, text
        with Client(target) as fenliu:  # the holder goes on serving
            assert fenliu.route(SHOP, "after").session_id
    with running(data, log) as (_, target):  # and once it is gone, the lock is free
        with Client(target) as fenliu:
            assert fenliu.get_position(SHOP, "after").buyer_id == "after"


def test_another_shard_count_is_refused_saying_what_to_do(tmp_path: Path, log: Path) -> None:
    """Before issue 10: --shards 2 on a 4-shard directory starts silently, and half the shops are
    NOT_FOUND (their writes then lost when going back to 4)."""
    data = tmp_path / "data"
    shops = [f"shop-{i}" for i in range(8)]
    assert len({shard_of(s, 4) for s in shops}) == 4
    with running(data, log, shards=4) as (proc, target):
        with Client(target) as fenliu:
            for shop in shops:
                fenliu.register_agent(shop, "a1", max_concurrent=1)
        assert proc.stop() == 0
    text = refuses(launch(data, log, shards=2))
    lines = [ln for ln in text.splitlines() if re.search(r"\b4\b", ln) and re.search(r"\b2\b", ln)]
    assert lines, f"no line names both shard counts:\n{text}"
    assert "--shards 4" in text, f"not told what to do:\n{text}"
    with running(data, log, shards=4) as (_, target):  # nothing was changed or lost
        with Client(target) as fenliu:
            for shop in shops:
                assert [a.agent_id for a in fenliu.list_team(shop)] == ["a1"]


def test_the_data_directory_has_a_manifest(tmp_path: Path, log: Path) -> None:
    """Before issue 10: there is no MANIFEST."""
    data = tmp_path / "data"
    with running(data, log, shards=3) as (proc, target):
        routed(target, range(1))
        assert proc.stop() == 0
    manifest = json.loads((data / "MANIFEST").read_text())
    assert manifest["shards"] == 3
    assert isinstance(manifest["format"], int) and manifest["format"] >= 1
    assert importlib.metadata.version("fenliu") in str(manifest["created_by"])


def test_a_directory_from_before_manifests_still_starts(tmp_path: Path, log: Path) -> None:
    """No MANIFEST (every directory written before issue 10): the --shards given is
    taken, and a manifest written. (tests/server/storage/test_golden.py covers the data.)"""
    data = tmp_path / "data"
    with running(data, log) as (proc, target):
        routed(target, range(3))
        assert proc.stop() == 0
    (data / "MANIFEST").unlink(missing_ok=True)
    proc = launch(data, log)
    serving(proc)
    try:
        assert proc.stop() == 0
    finally:
        proc.crash()
    assert json.loads((data / "MANIFEST").read_text())["shards"] == SHARDS

"""Local files that never lie: damage refused, the manifest and the lock, no leaked fds."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.types import RegisterAgent, Status
from fenliu.server.storage import codec
from fenliu.server.storage.base import StorageError
from fenliu.server.storage.files import FilesStorage

from ..core.test_invariants import dump
from .conftest import T0, load, open_node

SHARDS = 2


def agents(n: int, shop: str = "shop") -> list[RegisterAgent]:
    return [
        RegisterAgent(at=T0, shop_id=shop, agent_id=f"a{i}", max_concurrent=1,
                      status=Status.ONLINE)
        for i in range(n)
    ]  # fmt: skip


def written(data: Path, commands: list[RegisterAgent]) -> object:
    """Each command durable on its own (one record per batch); the state after them."""

    async def main() -> object:
        node, storage = open_node(data, SHARDS)
        for command in commands:
            await node.execute(command)
        storage.close()
        return dump(node.dispatcher)

    return asyncio.run(main())


def the_segment(data: Path) -> Path:
    (segment,) = data.glob("wal/wal-*.log")
    return segment


def record_offsets(segment: Path) -> list[int]:
    """Where each record starts (the first frame is the segment's start, not a record)."""
    data = segment.read_bytes()
    return [end for _, end in codec.frames(data, codec.HEADER_SIZE)]


def test_a_flipped_byte_mid_journal_is_damage_named_by_file_and_offset(tmp_path: Path) -> None:
    written(tmp_path, agents(20))
    segment = the_segment(tmp_path)
    offsets = record_offsets(segment)
    raw = bytearray(segment.read_bytes())
    raw[offsets[15] + 12] ^= 0x01  # inside record 16 of 20
    segment.write_bytes(bytes(raw))
    with pytest.raises(StorageError, match=rf"{segment}: a damaged record at offset {offsets[15]}"):
        load(tmp_path, SHARDS)
    assert segment.read_bytes() == bytes(raw)  # refused, not "repaired"


def test_the_operator_may_truncate_at_the_damage_and_is_told_what_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    written(tmp_path, agents(20))
    segment = the_segment(tmp_path)
    offsets = record_offsets(segment)
    raw = bytearray(segment.read_bytes())
    raw[offsets[15] + 12] ^= 0x01
    segment.write_bytes(bytes(raw))
    d = load(tmp_path, SHARDS, truncate_corrupt=True)
    assert len(d.shard_for("shop").shops["shop"].agents) == 15
    assert f"at offset {offsets[15]}: truncating" in caplog.text
    assert segment.stat().st_size == offsets[15]


def test_a_torn_tail_is_still_a_crash_not_damage(tmp_path: Path) -> None:
    before = written(tmp_path, agents(5))
    segment = the_segment(tmp_path)
    with open(segment, "ab") as f:
        f.write(codec.frame(b"cut short by a crash")[:-4])
    assert dump(load(tmp_path, SHARDS)) == before


def test_a_bad_segment_with_a_later_segment_after_it_is_damage(tmp_path: Path) -> None:
    written(tmp_path, agents(3))
    written(tmp_path, agents(5)[3:])  # the next start writes a later segment
    first = min(tmp_path.glob("wal/wal-*.log"))
    with open(first, "ab") as f:
        f.write(b"\x07" * 10)  # garbage between the first segment's end and the next
    with pytest.raises(StorageError, match=f"{first}: a damaged record"):
        load(tmp_path, SHARDS)


def test_both_snapshots_damaged_after_pruning_refuses_to_start(tmp_path: Path) -> None:
    async def main() -> None:
        from fenliu.server.snapshots import snapshot_in_process

        node, storage = open_node(tmp_path, SHARDS)
        for round_ in range(3):  # three snapshots: the journal before the second is pruned
            for command in agents(2, shop=f"shop{round_}"):
                await node.execute(command)
            assert await snapshot_in_process(node, storage) == []
        storage.close()

    asyncio.run(main())
    damaged = 0
    for snapshot in tmp_path.glob("shard-*/snapshot-*.snap"):
        raw = bytearray(snapshot.read_bytes())
        raw[-2] ^= 0xFF
        snapshot.write_bytes(bytes(raw))
        damaged += 1
    assert damaged
    with pytest.raises(StorageError, match="no usable snapshot"):
        load(tmp_path, SHARDS)


def test_another_shard_count_is_refused_with_what_to_do(tmp_path: Path) -> None:
    written(tmp_path, agents(2))
    with pytest.raises(StorageError, match="created with 2 shards.*--shards 2"):
        FilesStorage(tmp_path, 8)


def test_a_data_directory_from_before_manifests_gets_one_from_its_shard_folders(
    tmp_path: Path,
) -> None:
    for i in range(16):
        (tmp_path / f"shard-{i:03d}").mkdir(parents=True)
    with pytest.raises(StorageError, match="created with 16 shards"):
        FilesStorage(tmp_path, 8)
    FilesStorage(tmp_path, 16).close()
    assert '"shards": 16' in (tmp_path / "MANIFEST").read_text()


def test_a_second_process_on_a_held_directory_is_refused_naming_the_holder(
    tmp_path: Path,
) -> None:
    storage = FilesStorage(tmp_path, SHARDS)
    try:
        probe = (
            "import sys; from pathlib import Path\n"
            "from fenliu.server.storage.files import FilesStorage\n"
            "from fenliu.server.storage.base import StorageError\n"
            "try: FilesStorage(Path(sys.argv[1]), 2)\n"
            "except StorageError as e: print(e); sys.exit(3)\n"
        )
        other = subprocess.run(
            [sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True
        )
    finally:
        storage.close()
    assert other.returncode == 3, other.stderr
    assert f"locked by another fenliu server (pid {os.getpid()})" in other.stdout
    FilesStorage(tmp_path, SHARDS).close()  # released with its holder


def test_a_segment_that_cannot_be_opened_leaks_no_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FilesStorage(tmp_path, SHARDS, fsync=False)
    wal = storage.wal
    list(wal.replay([0] * SHARDS))
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    fds = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "write", full)
    for _ in range(50):
        with pytest.raises(OSError):
            wal.write([(0, [b"x"])])
    monkeypatch.setattr(os, "write", real_write)
    assert len(os.listdir("/proc/self/fd")) == fds
    assert not list(wal.dir.glob("wal-*.log"))  # no header-less segment left
    storage.close()


def test_leftover_snapshot_temporaries_are_removed_at_start(tmp_path: Path) -> None:
    FilesStorage(tmp_path, SHARDS).close()
    tmp = tmp_path / "shard-001" / "snapshot-0000000000000009.tmp"
    tmp.write_bytes(b"half a snapshot")
    FilesStorage(tmp_path, SHARDS).close()
    assert not tmp.exists()


def test_a_follower_of_the_log_never_changes_a_file(tmp_path: Path) -> None:
    """The snapshotter reads the server's live log: a segment it finds half made (empty,
    say, in the instant between its creation and its head) or a torn tail is the server's
    to judge, never the follower's. (Before: its scan unlinked a new empty segment, and
    the server went on appending to a file no longer in the directory.)"""
    from fenliu.server.storage.wal import Wal

    written(tmp_path, agents(3))
    segment = the_segment(tmp_path)
    durable_end = segment.stat().st_size
    with open(segment, "ab") as f:
        f.write(codec.frame(b"being written")[:-3])  # an append in progress
    newer = tmp_path / "wal" / "wal-00000009.log"
    newer.write_bytes(b"")  # a segment as it is created (before heads were made atomic)
    before = {p: p.read_bytes() for p in tmp_path.glob("wal/*")}
    follower = Wal(tmp_path, SHARDS, read_only=True).follow([0] * SHARDS)
    target = [0] * SHARDS
    target[Dispatcher(SHARDS).index_of("shop")] = 3  # the three registrations
    assert len(list(follower.advance(target, (1, durable_end)))) == 3
    follower.close()
    assert {p: p.read_bytes() for p in tmp_path.glob("wal/*")} == before


def test_a_follower_never_takes_what_lies_past_the_durable_point(tmp_path: Path) -> None:
    """An append the server is making (or that failed and will be truncated away) may be
    in the file already, whole frames of it: the follower reads up to the durable point
    it is given and not a byte further, so it never applies a change nobody acknowledged."""
    from fenliu.server.storage.wal import Wal

    written(tmp_path, agents(3))
    segment = the_segment(tmp_path)
    durable_end = segment.stat().st_size
    index = Dispatcher(SHARDS).index_of("shop")
    ghost = RegisterAgent(at=T0, shop_id="shop", agent_id="ghost", max_concurrent=1)
    undone = codec.encode_command(ghost)
    with open(segment, "ab") as f:  # a whole frame of a batch whose fsync then failed
        f.write(codec.frame(index.to_bytes(2, "little") + undone))
    follower = Wal(tmp_path, SHARDS, read_only=True).follow([0] * SHARDS)
    target = [0] * SHARDS
    target[index] = 3
    assert len(list(follower.advance(target, (1, durable_end)))) == 3
    with open(segment, "r+b") as f:  # the server takes it back out and goes on
        f.truncate(durable_end)
    written_more = agents(5)[3:]
    raw = b"".join(
        codec.frame(index.to_bytes(2, "little") + codec.encode_command(c)) for c in written_more
    )
    with open(segment, "ab") as f:
        f.write(raw)
    target[index] = 5
    records = list(follower.advance(target, (1, durable_end + len(raw))))
    assert [codec.decode_command(r).agent_id for _, r in records] == ["a3", "a4"]  # type: ignore[attr-defined]
    follower.close()

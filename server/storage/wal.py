"""One write-ahead log for every shard of a process: a commit cycle is one write, one fsync.

    DATA/wal/wal-00000007.log     a segment: header, start frame, records
    DATA/shard-007/journal-*.log  per-shard segments of format 3 and before (read only)

Every frame is the codec's ``[length][crc32][payload]``. A segment's first frame is its
start: the position of every shard before it (how many records of each came before),
so a shard's records are numbered without reading what is older, positions continue
across segments (a gap between two is damage) and a segment may be dropped once every
shard's snapshots cover it. Every other frame's payload is the shard number (u16, little
endian) and the record.

The first start of this layout continues the positions where a data directory's old
per-shard journals (format 3 and before) end; those are read first and dropped as the
new snapshots cover them.

Damage is told apart from a crash: a frame torn by a crash is the last thing in the last
segment; a bad frame with intact frames or a later segment after it is damage: refused
(naming the file and offset), unless the operator asks to truncate there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import msgspec

from . import codec
from .base import StorageError

log = logging.getLogger(__name__)

ROTATE_BYTES = 64 << 20
"""A segment this large is closed and the next write opens a new one."""
_SEGMENT = "wal-{:08d}.log"
_FRAME = struct.Struct("<II")
_SHARD = struct.Struct("<H")
_START = b"\xff\xff"  # a start frame's shard field
_MAX_RECORD = 64 << 20  # a frame claiming more is damage, not a record
_START_PREFIX = 1 << 16  # bytes read to find a segment's start frame


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Segment:
    __slots__ = ("seq", "path", "starts")

    def __init__(self, seq: int, path: Path, starts: list[int]) -> None:
        self.seq = seq
        self.path = path
        self.starts = starts  # every shard's position before this segment


class Wal:
    """The log of ``shards`` shards under ``root``; writes run in one worker thread.

    ``reader``: another process's log, followed while its owner writes (the snapshotter):
    a newest segment without its header or start frame is one being created, left alone
    (only the owner drops files)."""

    def __init__(
        self,
        root: Path,
        shards: int,
        *,
        fsync: bool = True,
        truncate_corrupt: bool = False,
        reader: bool = False,
    ) -> None:
        self.dir = root / "wal"
        self.dir.mkdir(exist_ok=True)
        self.root = root
        self.reader = reader
        self.shards = shards
        self.fsync = fsync
        self.truncate_corrupt = truncate_corrupt
        self.positions = [0] * shards  # durable records of each shard
        self._lock = threading.Lock()  # the segment list: the writer adds, pruning drops
        self._segments = self._scan()
        self._legacy = [sorted((root / f"shard-{i:03d}").glob("journal-*.log"))
                        for i in range(shards)]  # fmt: skip
        self._legacy_end = [0] * shards
        self.covered = [0] * shards  # positions every shard's kept snapshots cover
        self._fd: int | None = None
        self._size = 0
        self.rotate_requested = False
        self.read = False  # replayed: positions known, appending allowed

    # ------------------------------------------------------------ positions

    def start(self, shard: int) -> int:
        """The position before shard ``shard``'s first record still kept."""
        for path in self._legacy[shard]:
            if path.exists() and path.stat().st_size >= codec.HEADER_SIZE:
                return _legacy_position(path)
        with self._lock:
            if self._segments:
                return self._segments[0].starts[shard]
        return self.positions[shard]

    # ------------------------------------------------------------ reading

    def replay(self, after: Sequence[int]) -> Iterator[tuple[int, bytes]]:
        """Every shard's records after its position in ``after``, in log order (old
        per-shard journals first); once exhausted, the positions are the durable ones."""
        counts = [0] * self.shards
        for i in range(self.shards):
            for payload in self._replay_legacy(i, counts):
                if counts[i] > after[i]:
                    yield i, payload
        self._legacy_end = list(counts)
        yield from self._replay_segments(after, counts, only=None)
        self.positions = counts
        self.read = True

    def replay_shard(self, shard: int, after: int) -> Iterator[bytes]:
        """Shard ``shard``'s records after ``after`` (positions unchanged). Once the log was
        read (``replay``) it is being written: this restores a shard while serving, reads
        up to the shard's durable position only and never truncates, since what follows in
        the last segment may be another shard's write under way in the writer's thread
        (a torn tail's cut there would break it). Before, it reads as ``replay`` does.

        Raises:
            StorageError: the log ends or breaks before the shard's durable position, or
                (before the log was read) is damaged.
        """
        counts = [0] * self.shards
        if not self.read:
            for payload in self._replay_legacy(shard, counts):
                if counts[shard] > after:
                    yield payload
            bounds = [0] * self.shards
            bounds[shard] = after
            for _, payload in self._replay_segments(bounds, counts, only=shard):
                yield payload
            return
        until = self.positions[shard]
        if after >= until:
            return  # its snapshot covers every durable record
        if after < self._legacy_end[shard]:
            for payload in self._replay_legacy(shard, counts):
                if counts[shard] > after:
                    yield payload
        with self._lock:
            segments = list(self._segments)
        for k, segment in enumerate(segments):
            if counts[shard] >= until or segment.starts[shard] >= until:
                break
            if k + 1 < len(segments) and segments[k + 1].starts[shard] <= after:
                continue  # nothing wanted in this one
            counts[shard] = segment.starts[shard]
            data = segment.path.read_bytes()
            codec.check_header(data, str(segment.path))
            frames = codec.frames(data, codec.HEADER_SIZE)
            next(frames, None)  # its start (checked when the log was first read)
            for payload, _ in frames:
                if payload[0] | payload[1] << 8 != shard:
                    continue
                counts[shard] += 1
                if counts[shard] > after:
                    yield payload[2:]
                if counts[shard] >= until:
                    break
        if counts[shard] < until:
            raise StorageError(
                f"{self.dir}: shard {shard}'s records end at {counts[shard]}, before its "
                f"durable position {until}"
            )

    def follow(self, after: Sequence[int]) -> Follower:
        """A reader of the log as it grows, from every shard's position in ``after``: for a
        replica of the shards kept by another process (the snapshotter) while this one's
        owner appends. It reads only what it is told is durable and never truncates."""
        return Follower(self, after)

    def _replay_legacy(self, shard: int, counts: list[int]) -> Iterator[bytes]:
        paths = [p for p in self._legacy[shard] if p.exists()]
        expected: int | None = None
        for k, path in enumerate(paths):
            data = path.read_bytes()
            last = k + 1 == len(paths) and not self._segments
            if len(data) < codec.HEADER_SIZE:  # killed before its header: no records
                if not last:
                    self._damaged(path, 0, len(data), "a segment without a header")
                log.warning("%s: dropping a segment cut short before its header", path)
                path.unlink()
                continue
            codec.check_header(data, str(path))
            start = _legacy_position(path)
            if expected is not None and start != expected:
                raise StorageError(
                    f"{path}: the journal has a gap: this segment starts after record "
                    f"{start}, the previous one ended at {expected}"
                )
            counts[shard] = start
            cut = _Cut()
            for payload in _checked_frames(path, data, codec.HEADER_SIZE, last, cut, self):
                counts[shard] += 1
                yield payload
            expected = counts[shard]
            if cut.damaged:
                for later in paths[k + 1 :]:
                    later.unlink()
                break

    def _replay_segments(
        self, after: Sequence[int], counts: list[int], only: int | None
    ) -> Iterator[tuple[int, bytes]]:
        with self._lock:
            segments = list(self._segments)
        for k, segment in enumerate(segments):
            following = segments[k + 1] if k + 1 < len(segments) else None
            if following is not None and all(
                following.starts[i] <= after[i] for i in range(self.shards) if only in (None, i)
            ):
                counts[:] = following.starts  # nothing wanted in this one
                continue
            data = segment.path.read_bytes()
            codec.check_header(data, str(segment.path))
            frames = codec.frames(data, codec.HEADER_SIZE)
            first = next(frames, None)
            if first is None or first[0][:2] != _START:
                self._damaged(
                    segment.path, codec.HEADER_SIZE, len(data), "a segment without its start"
                )
                break
            if k > 0 or any(counts):
                if segment.starts != counts and only is None:
                    raise StorageError(
                        f"{segment.path}: the log has a gap: this segment starts at "
                        f"{segment.starts}, the previous one ended at {counts}"
                    )
            counts[:] = segment.starts
            cut = _Cut()
            last = following is None
            for payload in _checked_frames(segment.path, data, first[1], last, cut, self):
                shard = payload[0] | payload[1] << 8
                if shard >= self.shards:
                    self._damaged(segment.path, 0, len(data), f"a record of shard {shard}")
                counts[shard] += 1
                if counts[shard] > after[shard] and only in (None, shard):
                    yield shard, payload[2:]
            if cut.damaged:
                with self._lock:
                    for later in segments[k + 1 :]:
                        later.path.unlink()
                        self._segments.remove(later)
                break

    def _damaged(self, path: Path, offset: int, size: int, what: str) -> None:
        """Refuse to go on past damage, or (``truncate_corrupt``) say what is dropped."""
        if not self.truncate_corrupt:
            raise StorageError(
                f"{path}: {what} at offset {offset} with log data after it: this is "
                f"damage, not a crash. Restore the data directory from a backup, or start "
                f"with --truncate-corrupt-journal to drop the log from there on."
            )
        log.error(
            "%s: %s at offset %d: truncating, dropping %d bytes here and every later "
            "segment (--truncate-corrupt-journal)", path, what, offset, size - offset,
        )  # fmt: skip

    def _scan(self) -> list[_Segment]:
        segments = []
        paths = sorted(self.dir.glob("wal-*.log"))
        for path in paths:
            with open(path, "rb") as f:
                prefix = f.read(_START_PREFIX)
            if self.reader and path == paths[-1] and not _started(prefix):
                continue  # being created by the log's owner: not ours to judge or drop
            if len(prefix) < codec.HEADER_SIZE:  # killed before its header: nothing in it
                log.warning("%s: dropping a segment cut short before its header", path)
                path.unlink()
                continue
            codec.check_header(prefix, str(path))
            first = next(codec.frames(prefix, codec.HEADER_SIZE), None)
            if first is None or first[0][:2] != _START:  # killed before its start frame
                if path == max(self.dir.glob("wal-*.log")):
                    log.warning("%s: dropping a segment cut short before its start", path)
                    path.unlink()
                    continue
                raise StorageError(f"{path}: a segment without its start frame, not the last")
            starts = msgspec.msgpack.decode(first[0][2:], type=list[int])
            if len(starts) != self.shards:
                raise StorageError(f"{path}: a log of {len(starts)} shards, not {self.shards}")
            segments.append(_Segment(int(path.stem.split("-")[1]), path, starts))
        return segments

    # ------------------------------------------------------------ writing (worker thread)

    def write(self, batches: Sequence[tuple[int, Sequence[bytes]]]) -> None:
        """Append every shard's batch, then fsync once: all durable, or none (raises)."""
        assert self.read, "replay the log before appending to it"
        if self._fd is None or self.rotate_requested or self._size >= ROTATE_BYTES:
            self._open_segment()
        fd = self._fd
        assert fd is not None
        frame, pack = codec.frame, _SHARD.pack
        data = b"".join(
            [frame(pack(shard) + record) for shard, records in batches for record in records]
        )
        start = self._size
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.fsync:
                os.fsync(fd)
        except OSError:
            # Not durable, so not acknowledged: take the batch back out of the file, or a
            # restore (and any later recovery) would replay what the page cache kept. If
            # that fails too, the segment is closed: the next write opens a fresh one.
            try:
                os.ftruncate(fd, start)
            except OSError:
                self.close()
            raise
        self._size = start + len(data)
        positions = list(self.positions)
        for shard, records in batches:
            positions[shard] += len(records)
        self.positions = positions  # one assignment: a reader sees one cycle or the next

    def _open_segment(self) -> None:
        self.close()
        self.rotate_requested = False
        with self._lock:
            seq = self._segments[-1].seq + 1 if self._segments else 1
        path = self.dir / _SEGMENT.format(seq)
        starts = list(self.positions)
        head = codec.file_header() + codec.frame(_START + msgspec.msgpack.encode(starts))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        try:
            os.write(fd, head)
            if self.fsync:
                os.fsync(fd)
                _sync_dir(self.dir)
        except BaseException:
            os.close(fd)  # a full disk must not leak a descriptor per attempt
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        self._fd, self._size = fd, len(head)
        with self._lock:
            self._segments.append(_Segment(seq, path, starts))

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    # ------------------------------------------------------------ pruning

    def prune(self, shard: int, before: int) -> None:
        """Shard ``shard``'s records up to ``before`` are covered by its kept snapshots:
        drop what no shard needs any more."""
        self.covered[shard] = max(self.covered[shard], before)
        paths = [p for p in self._legacy[shard] if p.exists()]
        ends = [_legacy_position(p) for p in paths[1:]] + [self._legacy_end[shard]]
        for path, end in zip(paths, ends[: len(paths)], strict=True):
            if end <= before:
                path.unlink()
        with self._lock:
            while len(self._segments) > 1 and all(
                s <= c for s, c in zip(self._segments[1].starts, self.covered, strict=True)
            ):
                self._segments.pop(0).path.unlink()


class Follower:
    """Reads the log forward up to positions its owner says are durable (``advance``)."""

    def __init__(self, wal: Wal, after: Sequence[int]) -> None:
        self.wal = wal
        self.after = list(after)  # records at or before these were applied already
        self.counts: list[int] | None = None  # positions read so far (None: not started)
        self._legacy_done = False
        self._segment: _Segment | None = None
        self._file: BinaryIO | None = None
        self._buffer = b""

    def advance(self, targets: Sequence[int]) -> Iterator[tuple[int, bytes]]:
        """(shard, record) of every record after the last call's up to ``targets`` (all
        durable: the owner said so); stops exactly there.

        Raises:
            StorageError: the log ends (or breaks) before reaching ``targets``.
        """
        wal = self.wal
        if not self._legacy_done:  # frozen per-shard journals of format 3 and before
            counts = [0] * wal.shards
            for i in range(wal.shards):
                for payload in wal._replay_legacy(i, counts):
                    if counts[i] > self.after[i]:
                        yield i, payload
            self._legacy_done = True
            self.counts = counts
        assert self.counts is not None
        counts = self.counts
        while any(c < t for c, t in zip(counts, targets, strict=True)):
            if self._file is None and not self._open_next(counts):
                raise StorageError(
                    f"{wal.dir}: the log ends at {counts}, before the durable positions "
                    f"{list(targets)}"
                )
            assert self._file is not None
            self._buffer += self._file.read()
            offset = 0
            for payload, end in codec.frames(self._buffer, 0):
                shard = payload[0] | payload[1] << 8
                if counts[shard] >= targets[shard]:
                    break  # beyond the durable point: left for the next call
                counts[shard] += 1
                offset = end
                if counts[shard] > self.after[shard]:
                    yield shard, payload[2:]
                if not any(c < t for c, t in zip(counts, targets, strict=True)):
                    break
            self._buffer = self._buffer[offset:]
            if any(c < t for c, t in zip(counts, targets, strict=True)):
                self._file.close()  # this segment is done: the rest is in the next one
                self._file, self._buffer = None, b""

    def _open_next(self, counts: list[int]) -> bool:
        with self.wal._lock:
            self.wal._segments = self.wal._scan()  # the owner may have added (or pruned) some
            segments = list(self.wal._segments)
        later = [s for s in segments if self._segment is None or s.seq > self._segment.seq]
        if self._segment is None:  # the first: the last one starting at or before ``after``
            starts = [
                s for s in later if all(a >= b for a, b in zip(self.after, s.starts, strict=True))
            ]
            later = later[len(starts) - 1 :] if starts else later
        if not later:
            return False
        segment = later[0]
        if self._segment is not None and segment.starts != counts:
            raise StorageError(f"{segment.path}: starts at {segment.starts}, not at {counts}")
        counts[:] = segment.starts if self._segment is None else counts
        self._segment = segment
        self._file = open(segment.path, "rb")  # noqa: SIM115 - kept open between calls
        header = self._file.read(codec.HEADER_SIZE)
        codec.check_header(header, str(segment.path))
        self._buffer = self._file.read()
        first = next(codec.frames(self._buffer, 0), None)
        if first is None or first[0][:2] != _START:
            raise StorageError(f"{segment.path}: a segment without its start frame")
        self._buffer = self._buffer[first[1] :]
        return True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _Cut:
    __slots__ = ("damaged",)

    def __init__(self) -> None:
        self.damaged = False


def _checked_frames(
    path: Path, data: bytes, offset: int, last: bool, cut: _Cut, wal: Wal
) -> Iterator[bytes]:
    """The intact frames from ``offset``; then a torn tail is dropped (the crash's last
    write, never acknowledged) and damage refused or, if the operator said so, cut."""
    end = offset
    for payload, end in codec.frames(data, offset):  # noqa: B007
        yield payload
    if end >= len(data):
        return
    if not last or _valid_frame_after(data, end):
        wal._damaged(path, end, len(data), "a damaged record")
        cut.damaged = True
    else:
        log.warning("%s: dropping %d bytes of a torn tail (never acknowledged)",
                    path, len(data) - end)  # fmt: skip
    with open(path, "r+b") as f:
        f.truncate(end)


def _valid_frame_after(data: bytes, offset: int) -> bool:
    """Whether an intact frame starts anywhere after the bad one at ``offset`` (then the
    bad one is damage in the middle, not a torn tail)."""
    size = len(data)
    length = _FRAME.unpack_from(data, offset)[0] if offset + _FRAME.size <= size else 0
    probes: list[int] | range = [offset + _FRAME.size + length] if 0 < length <= _MAX_RECORD else []
    for at in [*probes, *range(offset + 1, size - _FRAME.size)]:
        if at + _FRAME.size > size:
            continue
        length, crc = _FRAME.unpack_from(data, at)
        end = at + _FRAME.size + length
        if 0 < length <= _MAX_RECORD and end <= size and zlib.crc32(data[at + 8 : end]) == crc:
            return True
    return False


def _started(prefix: bytes) -> bool:
    """Whether a segment's first bytes hold its header and its start frame."""
    if len(prefix) < codec.HEADER_SIZE:
        return False
    first = next(codec.frames(prefix, codec.HEADER_SIZE), None)
    return first is not None and first[0][:2] == _START


def _legacy_position(path: Path) -> int:
    return int(path.stem.split("-")[1])

"""One write-ahead log for every shard of a process: a commit cycle is one O_DSYNC write.

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


def sync_dir(path: Path) -> None:
    """fsync a directory, so that a file created or renamed in it survives a crash."""
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
    """The log of ``shards`` shards under ``root``; writes run in one writer thread
    (``files.FilesStorage``'s)."""

    def __init__(
        self,
        root: Path,
        shards: int,
        *,
        fsync: bool = True,
        truncate_corrupt: bool = False,
        read_only: bool = False,
    ) -> None:
        self.dir = root / "wal"
        self.dir.mkdir(exist_ok=True)
        self.root = root
        # Another process's log (the snapshotter follows the server's): nothing is ever
        # truncated, dropped or written, whatever is found.
        self.read_only = read_only
        if not read_only:
            for tmp in self.dir.glob("*.tmp"):  # a segment cut short while being made
                tmp.unlink()
        self.shards = shards
        self.fsync = fsync
        self.truncate_corrupt = truncate_corrupt
        # What is durable, in one tuple so that a reader sees one commit cycle's or the
        # next's: every shard's records, and where they end (segment seq, byte offset).
        self.durable: tuple[list[int], int, int] = ([0] * shards, 0, 0)
        self._lock = threading.Lock()  # the segment list: the writer adds, pruning drops
        self._segments = self._scan()
        self._legacy = [sorted((root / f"shard-{i:03d}").glob("journal-*.log"))
                        for i in range(shards)]  # fmt: skip
        self._legacy_end = [0] * shards
        self.covered = [0] * shards  # positions every shard's kept snapshots cover
        self._fd: int | None = None
        self._seq = 0  # the segment written to, and its size
        self._size = 0
        self.rotate_requested = False
        self.read = False  # replayed: positions known, appending allowed

    # ------------------------------------------------------------ positions

    @property
    def positions(self) -> list[int]:
        """Every shard's durable records."""
        return self.durable[0]

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
        with self._lock:
            last = self._segments[-1] if self._segments else None
        self.durable = (counts, last.seq, last.path.stat().st_size) if last else (counts, 0, 0)
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
                if self.read_only:
                    continue
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
        for path in sorted(self.dir.glob("wal-*.log")):
            try:
                with open(path, "rb") as f:
                    prefix = f.read(_START_PREFIX)
            except FileNotFoundError:  # pruned by the owner since the glob
                continue
            first = None
            if len(prefix) >= codec.HEADER_SIZE:
                codec.check_header(prefix, str(path))
                first = next(codec.frames(prefix, codec.HEADER_SIZE), None)
            if first is None or first[0][:2] != _START:  # (only from before atomic heads)
                if self.read_only:
                    continue
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
        """Append every shard's batch in one write (O_DSYNC with fsync on: durable when it
        returns): all durable, or none (raises)."""
        assert self.read and not self.read_only, "replay the log before appending to it"
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
            while view:  # (O_DSYNC with fsync: durable as each write returns)
                written = os.write(fd, view)
                view = view[written:]
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
        self.durable = (positions, self._seq, self._size)

    def _open_segment(self) -> None:
        self.close()
        self.rotate_requested = False
        with self._lock:
            seq = self._segments[-1].seq + 1 if self._segments else 1
        path = self.dir / _SEGMENT.format(seq)
        starts = list(self.positions)
        self._seq = seq
        head = codec.file_header() + codec.frame(_START + msgspec.msgpack.encode(starts))
        # Made under a temporary name and renamed: a reader (the snapshotter) never sees a
        # segment without its whole head.
        tmp = path.with_suffix(".tmp")
        # With fsync, the segment is opened O_DSYNC: a write returns once its data (and
        # the size that finds it) is on the disk, so a commit cycle is one system call that
        # lets go of the GIL once, not a write and an fsync that each have to take it back
        # from a busy loop thread.
        sync = os.O_DSYNC if self.fsync else 0
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | sync, 0o644)
        try:
            os.write(fd, head)
            os.replace(tmp, path)
            if self.fsync:
                sync_dir(self.dir)
        except BaseException:
            os.close(fd)  # a full disk must not leak a descriptor per attempt
            with contextlib.suppress(OSError):
                os.unlink(tmp)
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
    """Reads the log forward up to the point its owner says is durable (``advance``)."""

    def __init__(self, wal: Wal, after: Sequence[int]) -> None:
        self.wal = wal
        self.after = list(after)  # records at or before these were applied already
        self.counts: list[int] | None = None  # positions read so far (None: not started)
        self._segment: _Segment | None = None
        self._following: _Segment | None = None  # the segment after it, once there is one
        self._file: int | None = None  # the segment's descriptor
        self._read_to = 0  # file offset read up to
        self._buffer = b""

    def advance(self, targets: Sequence[int], end: tuple[int, int]) -> Iterator[tuple[int, bytes]]:
        """(shard, record) of every record after the last call's, up to the durable point:
        every shard at ``targets``, which is ``end`` = (segment, byte offset) in the log.

        Nothing past ``end`` is ever read: bytes there may be an append in flight that
        fails and is truncated away. Of an older segment, only the records up to the next
        one's start are taken (whatever a failed append left after them is not a record).

        Raises:
            StorageError: the log does not reach the durable point as it should.
        """
        if self.counts is None:  # frozen per-shard journals of format 3 and before first
            self.counts = [0] * self.wal.shards
            for i in range(self.wal.shards):
                for payload in self.wal._replay_legacy(i, self.counts):
                    if self.counts[i] > self.after[i]:
                        yield i, payload
        counts = self.counts
        end_seq, end_offset = end
        while any(c < t for c, t in zip(counts, targets, strict=True)):
            if self._file is None:
                self._open_next(counts, end_seq)
            segment, file = self._segment, self._file
            assert segment is not None and file is not None
            if segment.seq < end_seq and self._following is None:  # made since it was opened
                self._following = next((s for s in self.wal._scan() if s.seq > segment.seq), None)
            if segment.seq == end_seq:
                limit, wanted = list(targets), max(0, end_offset - self._read_to)
            elif self._following is not None:
                limit, wanted = self._following.starts, -1
            else:
                raise StorageError(f"{segment.path}: no segment follows it, yet the durable "
                                   f"point is in segment {end_seq}")  # fmt: skip
            # pread at our own offset: no read-ahead buffer may hold bytes past the point
            # (a buffered file would: an append that fails and is truncated away).
            if wanted < 0:
                wanted = max(0, os.fstat(file).st_size - self._read_to)
            chunk = os.pread(file, wanted, self._read_to)
            self._read_to += len(chunk)
            self._buffer += chunk
            offset = 0
            for payload, frame_end in codec.frames(self._buffer, 0):
                shard = payload[0] | payload[1] << 8
                if shard >= len(counts) or counts[shard] >= limit[shard]:
                    break
                counts[shard] += 1
                offset = frame_end
                if counts[shard] > self.after[shard]:
                    yield shard, payload[2:]
            self._buffer = self._buffer[offset:]
            if counts == limit and segment.seq != end_seq:
                self.close()  # this one is done: the rest is in the next
            elif any(c < t for c, t in zip(counts, limit, strict=True)) and (
                segment.seq != end_seq or self._read_to >= end_offset
            ):
                raise StorageError(
                    f"{segment.path}: ends at {counts}, before {limit} (the durable point)"
                )

    def _open_next(self, counts: list[int], end_seq: int) -> None:
        """Open the segment to read next (the first: the last one starting at or before
        every shard's ``after``)."""
        segments = self.wal._scan()  # the owner adds and prunes segments meanwhile
        if self._segment is None:
            started = [s for s in segments if all(map(int.__ge__, self.after, s.starts))]
            later = segments[segments.index(started[-1]) :] if started else segments
        else:
            later = [s for s in segments if s.seq > self._segment.seq]
        if not later or later[0].seq > end_seq:
            raise StorageError(f"{self.wal.dir}: no segment to read up to segment {end_seq}")
        segment = later[0]
        if self._segment is not None and segment.starts != counts:
            raise StorageError(f"{segment.path}: starts at {segment.starts}, not at {counts}")
        counts[:] = segment.starts
        self._segment, self._following = segment, later[1] if len(later) > 1 else None
        self._file = os.open(segment.path, os.O_RDONLY)  # kept open between calls
        head = os.pread(self._file, _START_PREFIX, 0)
        first = next(codec.frames(head, codec.HEADER_SIZE), None)
        assert first is not None  # _scan read it
        self._read_to, self._buffer = first[1], b""

    def close(self) -> None:
        if self._file is not None:
            os.close(self._file)
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
    if end >= len(data) or wal.read_only:  # (a follower stops there; the owner decides)
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


def _legacy_position(path: Path) -> int:
    return int(path.stem.split("-")[1])

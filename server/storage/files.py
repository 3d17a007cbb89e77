"""One shard's files: journal segments and snapshots, and recovery from them.

    DATA/shard-007/journal-0000000000001234.log   records from position 1234 on
    DATA/shard-007/snapshot-0000000000001234.snap the state after 1234 records

Every file starts with the codec's header. Snapshots are written atomically (temporary
file, fsync, rename, fsync of the directory). The two newest snapshots are kept, and the
journal from the older one on, so a corrupt newest snapshot falls back to the previous
one plus a longer replay. A segment is opened at each start and each snapshot.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from ..core.errors import FenliuError
from ..core.shard import Shard
from . import codec

log = logging.getLogger(__name__)

_JOURNAL = "journal-{:016d}.log"
_SNAPSHOT = "snapshot-{:016d}.snap"
KEEP_SNAPSHOTS = 2


def _position(path: Path) -> int:
    return int(path.stem.split("-")[1])


class ShardFiles:
    """The journal and snapshots of shard ``index`` under ``root``."""

    def __init__(self, root: Path, index: int, *, fsync: bool = True) -> None:
        self.dir = root / f"shard-{index:03d}"
        self.index = index
        self.fsync = fsync
        self.position = 0  # records durable in the journal (after load: replayed)
        self._fd: int | None = None

    # ------------------------------------------------------------ recovery

    def load(self) -> Shard:
        """The state before the last stop or crash: newest valid snapshot, then the journal.

        Raises:
            codec.FormatError: a file written by a newer format (refused, never misread).
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        shard, position = self._newest_snapshot()
        for path in self._segments():
            start = _position(path)
            data = path.read_bytes()
            if len(data) < codec.HEADER_SIZE:  # killed before its header: no records in it
                log.warning("%s: dropping a segment cut short before its header", path)
                path.unlink()
                continue
            codec.check_header(data, str(path))
            index, end = start, codec.HEADER_SIZE
            for payload, end in codec.frames(data, codec.HEADER_SIZE):  # noqa: B007
                if index >= position:
                    _replay(shard, codec.decode_command(payload), path, index)
                    position = index + 1
                index += 1
            if end < len(data):  # a torn or corrupt tail: never acknowledged
                log.warning("%s: dropping %d bytes of a torn tail", path, len(data) - end)
                with open(path, "r+b") as f:
                    f.truncate(end)
        self.position = position
        return shard

    def _newest_snapshot(self) -> tuple[Shard, int]:
        for path in sorted(self.dir.glob("snapshot-*.snap"), reverse=True):
            data = path.read_bytes()
            codec.check_header(data, str(path))  # a newer format stops the start
            for payload, _ in codec.frames(data, codec.HEADER_SIZE):
                try:
                    shard, position = codec.decode_shard(payload)
                except Exception:  # noqa: BLE001 - any damage means: use the previous one
                    break
                return shard, position
            log.warning("%s is damaged; falling back to an older snapshot", path)
        return Shard(self.index), 0

    def _segments(self) -> list[Path]:
        return sorted(self.dir.glob("journal-*.log"))

    # ------------------------------------------------------------ appending

    def open_segment(self) -> None:
        """Start a new segment at the current position (after load or a snapshot)."""
        self.close()
        path = self.dir / _JOURNAL.format(self.position)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if os.fstat(fd).st_size == 0:
            os.write(fd, codec.file_header())
        self._fd = fd
        self._sync_dir()

    def append(self, data: bytes, records: int) -> None:
        """Write framed records and make them durable (one fsync for the whole batch)."""
        if self._fd is None:
            self.open_segment()
        fd = self._fd
        assert fd is not None
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.fsync:
                os.fsync(fd)
        except OSError:
            # Not durable, so not acknowledged: take the batch back out of the file, or
            # the reload that undoes it (and any later recovery) would replay what a
            # failed write or fsync left in the page cache. Best effort: the disk is failing.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
        self.position += records

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    # ------------------------------------------------------------ snapshots

    def write_snapshot(self, payload: bytes, position: int) -> None:
        """Atomically store an image covering ``position`` records (no pruning: see prune)."""
        final = self.dir / _SNAPSHOT.format(position)
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(codec.file_header())
            f.write(codec.frame(payload))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        self._sync_dir()

    def prune(self) -> None:
        """Drop snapshots beyond the newest two, and journal segments older than both."""
        snapshots = sorted(self.dir.glob("snapshot-*.snap"), reverse=True)
        for old in snapshots[KEEP_SNAPSHOTS:]:
            old.unlink()
        if len(snapshots) < KEEP_SNAPSHOTS:
            return
        keep_from = _position(snapshots[KEEP_SNAPSHOTS - 1])
        segments = self._segments()
        for path, following in zip(segments, segments[1:], strict=False):
            if _position(following) <= keep_from:
                path.unlink()  # every record in it is older than the older kept snapshot

    def _sync_dir(self) -> None:
        if not self.fsync:
            return
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replay(shard: Shard, command: object, path: Path, index: int) -> None:
    try:
        shard.apply(command)
    except FenliuError as exc:  # it was accepted once; refusing now would be a core bug
        log.error("%s: record %d no longer applies: %s", path, index, exc)
    shard.outbox.clear()

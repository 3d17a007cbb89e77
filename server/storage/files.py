"""Local files: the embedded default storage, one directory per shard under the data dir.

    DATA/MANIFEST                                  format, shard count, created-by (JSON)
    DATA/LOCK                                      held (flock) by the serving process
    DATA/shard-007/journal-0000000000001234.log    records 1235.. (after position 1234)
    DATA/shard-007/snapshot-0000000000001234.snap  the state after record 1234

Every file starts with the codec's header. Snapshots are written atomically (temporary
file, fsync, rename, fsync of the directory). The two newest snapshots are kept, and the
journal from the older one on, so a damaged newest snapshot falls back to the previous
one plus a longer replay.

Group commit: ``FilesStorage`` runs commit cycles for all shards. A cycle takes the batch
of every shard that has one and, in one worker thread, writes each with one ``write``
and fsyncs them all at once (one thread per shard: concurrent fsyncs share the file
system's journal commits); then every batch's future is resolved. A failed write or
fsync is truncated back out of its segment, so what was not acknowledged is never read.

Damage is told apart from a crash: a record torn by a crash is the last thing in the
last segment; a bad record with valid records or a later segment after it is damage,
and the shard refuses to load (naming the file and offset) unless the operator asks to
truncate there (``truncate_corrupt``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import codec
from .base import StorageError

log = logging.getLogger(__name__)

_JOURNAL = "journal-{:016d}.log"
_SNAPSHOT = "snapshot-{:016d}.snap"
KEEP_SNAPSHOTS = 2
MANIFEST = "MANIFEST"
LOCK = "LOCK"
_FRAME = struct.Struct("<II")
_MAX_RECORD = 64 << 20  # a frame claiming more is damage, not a record


def _position(path: Path) -> int:
    return int(path.stem.split("-")[1])


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ShardLog:
    """The journal of shard ``index``: segment files in ``dir``."""

    def __init__(
        self, storage: FilesStorage, index: int, *, fsync: bool, truncate_corrupt: bool
    ) -> None:
        self.dir = storage.root / f"shard-{index:03d}"
        self.index = index
        self.fsync = fsync
        self.truncate_corrupt = truncate_corrupt
        self._storage = storage
        self._fd: int | None = None
        self._position = 0  # durable records
        self._start = 0
        self._read = False  # replayed: position known, appending allowed

    @property
    def position(self) -> int:
        return self._position

    @property
    def start(self) -> int:
        for path in self._segments():  # (one killed before its header holds nothing)
            if path.stat().st_size >= codec.HEADER_SIZE:
                return _position(path)
        return self._position

    def append(self, records: Sequence[bytes]) -> asyncio.Future[None]:
        assert self._read, "replay the log before appending to it"
        return self._storage.submit(self, b"".join(map(codec.frame, records)), len(records))

    # ------------------------------------------------------------ reading

    def replay(self, after: int) -> Iterator[bytes]:
        """Every record after ``after``; sets the position to the last one (see module)."""
        self.close()
        segments = self._segments()
        expected: int | None = None
        for k, path in enumerate(segments):
            start = _position(path)
            data = path.read_bytes()
            if len(data) < codec.HEADER_SIZE:  # killed before its header: no records
                if k + 1 < len(segments):
                    self._damaged(path, 0, len(data), "a segment without a header")
                log.warning("%s: dropping a segment cut short before its header", path)
                path.unlink()
                continue
            codec.check_header(data, str(path))
            if expected is not None and start != expected:
                raise StorageError(
                    f"{path}: the journal has a gap: this segment starts after record "
                    f"{start}, the previous one ended at {expected}"
                )
            index, offset = start, codec.HEADER_SIZE
            for payload, end in codec.frames(data, codec.HEADER_SIZE):
                index += 1
                offset = end
                if index > after:
                    yield payload
            if offset < len(data):
                last = k + 1 == len(segments)
                if not last or _valid_frame_after(data, offset):
                    offset = self._damaged(path, offset, len(data), "a damaged record")
                else:
                    log.warning("%s: dropping %d bytes of a torn tail (never acknowledged)",
                                path, len(data) - offset)  # fmt: skip
                with open(path, "r+b") as f:
                    f.truncate(offset)
                if not last:  # truncated here: what followed is gone too
                    for later in segments[k + 1 :]:
                        later.unlink()
                    expected = index
                    break
            expected = index
        self._position = max(expected or 0, after) if expected is not None else after
        self._read = True

    def _damaged(self, path: Path, offset: int, size: int, what: str) -> int:
        """Refuse to go on past damage, or (with ``truncate_corrupt``) say what is dropped."""
        if not self.truncate_corrupt:
            raise StorageError(
                f"{path}: {what} at offset {offset} with journal data after it: this is "
                f"damage, not a crash. Restore the data directory from a backup, or start "
                f"with --truncate-corrupt-journal to drop the journal from there on."
            )
        log.error("%s: %s at offset %d: truncating, dropping %d bytes here and every later "
                  "segment of the shard (--truncate-corrupt-journal)", path, what, offset,
                  size - offset)  # fmt: skip
        return offset

    def _segments(self) -> list[Path]:
        return sorted(self.dir.glob("journal-*.log"))

    # ------------------------------------------------------------ writing (worker thread)

    def open_segment(self) -> None:
        """Start a new segment at the current position."""
        self.close()
        path = self.dir / _JOURNAL.format(self._position)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            if os.fstat(fd).st_size == 0:
                os.write(fd, codec.file_header())
            if self.fsync:
                _sync_dir(self.dir)
        except BaseException:
            os.close(fd)  # a full disk must not leak a descriptor per attempt
            with contextlib.suppress(OSError):
                if os.stat(path).st_size < codec.HEADER_SIZE:
                    os.unlink(path)
            raise
        self._fd = fd

    def write(self, data: bytes, records: int) -> None:
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
            # Not durable, so not acknowledged: take the batch back out of the file, or a
            # reload (and any later recovery) would replay what the page cache kept. If
            # that fails too the segment is closed: the next write opens a fresh one.
            try:
                os.ftruncate(fd, start)
            except OSError:
                self.close()
            raise
        self._position += records

    def rotate(self) -> None:
        self.close()  # the next write opens a segment at the current position

    def prune(self, before: int) -> None:
        segments = self._segments()
        for path, following in zip(segments, segments[1:], strict=False):
            if _position(following) <= before:
                path.unlink()  # every record in it is covered by the older kept snapshot

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)


def _valid_frame_after(data: bytes, offset: int) -> bool:
    """Whether an intact record starts anywhere after the bad one at ``offset`` (then the
    bad one is damage in the middle, not a torn tail)."""
    size = len(data)
    length = _FRAME.unpack_from(data, offset)[0] if offset + _FRAME.size <= size else 0
    probes = [offset + _FRAME.size + length] if 0 < length <= _MAX_RECORD else []
    probes += range(offset + 1, size - _FRAME.size)
    for at in probes:
        if at + _FRAME.size > size:
            continue
        length, crc = _FRAME.unpack_from(data, at)
        end = at + _FRAME.size + length
        if 0 < length <= _MAX_RECORD and end <= size and zlib.crc32(data[at + 8 : end]) == crc:
            return True
    return False


class ShardSnapshots:
    """The snapshots of shard ``index``; the newest ``KEEP_SNAPSHOTS`` are kept."""

    def __init__(self, root: Path, index: int, *, fsync: bool) -> None:
        self.dir = root / f"shard-{index:03d}"
        self.index = index
        self.fsync = fsync

    def save(self, payload: bytes, position: int) -> None:
        final = self.dir / _SNAPSHOT.format(position)
        tmp = final.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(codec.file_header())
                f.write(codec.frame(payload))
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        if self.fsync:
            _sync_dir(self.dir)

    def load(self) -> tuple[bytes, int] | None:
        for path in self._snapshots():
            data = path.read_bytes()
            codec.check_header(data, str(path))  # a newer format stops the start
            for payload, _ in codec.frames(data, codec.HEADER_SIZE):
                return payload, _position(path)
            log.warning("%s is damaged; falling back to an older snapshot", path)
        return None

    def prune(self) -> int:
        snapshots = self._snapshots()
        for old in snapshots[KEEP_SNAPSHOTS:]:
            old.unlink()
        kept = snapshots[:KEEP_SNAPSHOTS]
        return _position(kept[-1]) if len(kept) == KEEP_SNAPSHOTS else 0

    def _snapshots(self) -> list[Path]:
        return sorted(self.dir.glob("snapshot-*.snap"), reverse=True)


_Write = tuple[ShardLog, bytes, int]


class FilesStorage:
    """A data directory: its manifest and lock, and every shard's log and snapshots.

    Raises (on construction):
        StorageError: another process holds the directory, or it was made with another
            shard count or by a newer format.
    """

    def __init__(
        self,
        root: Path,
        shards: int,
        *,
        fsync: bool = True,
        truncate_corrupt: bool = False,
        created_by: str = "fenliu",
    ) -> None:
        self.root = root
        self.fsync = fsync
        root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock(root)
        try:
            _check_manifest(root, shards, created_by)
            for i in range(shards):
                shard_dir = root / f"shard-{i:03d}"
                shard_dir.mkdir(exist_ok=True)
                for tmp in shard_dir.glob("*.tmp"):  # a snapshot cut short by a crash
                    tmp.unlink()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self.logs = [
            ShardLog(self, i, fsync=fsync, truncate_corrupt=truncate_corrupt) for i in range(shards)
        ]
        self.snapshots = [ShardSnapshots(root, i, fsync=fsync) for i in range(shards)]
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fenliu-journal")
        self._sync_pool = ThreadPoolExecutor(
            max_workers=min(shards, 16), thread_name_prefix="fenliu-fsync"
        )
        self._queued: list[tuple[ShardLog, bytes, int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self.cycles = 0  # commit cycles run (each: one thread hop, one fsync per dirty shard)
        self.on_fsync: Callable[[float], None] | None = None  # seconds per shard batch

    def submit(self, shard_log: ShardLog, data: bytes, records: int) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queued.append((shard_log, data, records, future))
        if self._task is None:
            self._task = loop.create_task(self._commit())
        return future

    async def _commit(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(0)  # let the calls already running join this cycle
            while self._queued:
                queued, self._queued = self._queued, []
                writes: list[_Write] = [(shard_log, d, n) for shard_log, d, n, _ in queued]
                try:
                    if self.fsync:  # the slow part runs off the loop, one hop for all shards
                        outcomes = await loop.run_in_executor(
                            self._executor, _write_all, writes, self._sync_pool
                        )
                    else:  # a write to the page cache is cheaper than a thread hop
                        outcomes = _write_all(writes, None)
                except Exception as exc:  # not a disk error (a closed pool, a bug): fail all
                    log.exception("a commit cycle failed")
                    failed = OSError(errno.EIO, f"the commit cycle failed: {exc!r}")
                    outcomes = [(failed, 0.0)] * len(queued)
                self.cycles += 1
                for (shard_log, _, _, future), (error, seconds) in zip(
                    queued, outcomes, strict=True
                ):
                    if future.done():
                        continue
                    if error is not None:
                        log.error("shard %d: the journal write failed: %s", shard_log.index, error)
                        future.set_exception(error)
                        continue
                    future.set_result(None)
                    if self.fsync and self.on_fsync is not None:
                        try:
                            self.on_fsync(seconds)
                        except Exception:  # a metric must not fail a durable batch
                            log.exception("the fsync observer failed")
        finally:
            self._task = None
            for *_, future in self._queued:  # cancelled: nobody may wait forever
                if not future.done():
                    future.set_exception(OSError(errno.ECANCELED, "the journal closed"))
            self._queued = []

    def close(self) -> None:
        # The threads first: a cycle still writing must not find its files closed under it.
        self._executor.shutdown(wait=True)
        self._sync_pool.shutdown(wait=True)
        for shard_log in self.logs:
            shard_log.close()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)


def _write(shard_log: ShardLog, data: bytes, records: int) -> tuple[OSError | None, float]:
    started = time.perf_counter()
    try:
        shard_log.write(data, records)
    except OSError as exc:
        return exc, 0.0
    return None, time.perf_counter() - started


def _write_all(
    writes: list[_Write], pool: ThreadPoolExecutor | None
) -> list[tuple[OSError | None, float]]:
    """Every shard's batch, each fsynced in its own ``pool`` thread at once (concurrent
    fsyncs share the file system's journal commits: 16 files take ~2x one, in sequence
    ~18x); one shard failing does not stop the others."""
    if pool is None or len(writes) == 1:
        return [_write(*write) for write in writes]
    return [f.result() for f in [pool.submit(_write, *write) for write in writes]]


def _lock(root: Path) -> int:
    """Hold the directory's lock for the life of the process, or say who holds it."""
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StorageError(
            f"data directory {root} is locked by another fenliu server (pid {holder}); "
            "stop it first, or give this one another --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _check_manifest(root: Path, shards: int, created_by: str) -> None:
    """Check the directory's manifest against this server, or write it for a new one."""
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        existing = sorted(root.glob("shard-*"))
        if existing:  # made before manifests: its shard directories say how many
            manifest = {"format": 3, "shards": len(existing), "created_by": "fenliu (<= 0.1)"}
        else:
            manifest = {"format": codec.FORMAT_VERSION, "shards": shards,
                        "created_by": created_by}  # fmt: skip
        _check(path, manifest, shards)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, path)
        _sync_dir(root)
        return
    except (OSError, ValueError) as exc:
        raise StorageError(f"{path}: cannot be read ({exc}); it must be JSON") from None
    _check(path, manifest, shards)


def _check(path: Path, manifest: object, shards: int) -> None:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), int):
        raise StorageError(f"{path}: not a fenliu manifest (no shard count)")
    fmt = manifest.get("format", 0)
    if not isinstance(fmt, int) or fmt > codec.FORMAT_VERSION:
        raise StorageError(
            f"{path}: written by format {fmt}; this fenliu reads up to "
            f"{codec.FORMAT_VERSION}. Upgrade fenliu to read it."
        )
    if manifest["shards"] != shards:
        raise StorageError(
            f"data directory {path.parent} was created with {manifest['shards']} shards and "
            f"this server has {shards} (--shards): shops would be looked up in the wrong "
            f"shard. Start it with --shards {manifest['shards']}."
        )

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
of every shard that has one and, in the journal's writer thread, writes them all to the
one write-ahead log with one ``write`` (``O_DSYNC``: durable as it returns); then every
batch's future is resolved. A failed write is truncated back out of its segment, so what was not
acknowledged is never read.

Damage is told apart from a crash: a record torn by a crash is the last thing in the
last segment; a bad record with valid records or a later segment after it is damage,
and the shard refuses to load (naming the file and offset) unless the operator asks to
truncate there (``truncate_corrupt``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeAlias

from . import codec
from .base import StorageError
from .wal import Wal, sync_dir

log = logging.getLogger(__name__)

_SNAPSHOT = "snapshot-{:016d}.snap"
KEEP_SNAPSHOTS = 2
MANIFEST = "MANIFEST"
LOCK = "LOCK"


def _position(path: Path) -> int:
    return int(path.stem.split("-")[1])


class ShardLog:
    """Shard ``index``'s view of the data directory's write-ahead log (``wal.py``)."""

    def __init__(self, storage: FilesStorage, index: int) -> None:
        self.index = index
        self._storage = storage
        self._wal = storage.wal

    @property
    def position(self) -> int:
        return self._wal.positions[self.index]

    @property
    def start(self) -> int:
        return self._wal.start(self.index)

    def replay(self, after: int) -> Iterator[bytes]:
        return self._wal.replay_shard(self.index, after)

    def rotate(self) -> None:
        self._wal.rotate_requested = True  # the writer opens a new segment before its next

    def prune(self, before: int) -> None:
        self._wal.prune(self.index, before)


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
            sync_dir(self.dir)

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


class FilesStorage:
    """A data directory: its manifest and lock, the write-ahead log of every shard and
    each shard's snapshots.

    Group commit: one writer thread runs commit cycles while appends are queued. A cycle
    takes every append queued since the last one (each: every dirty shard's batch; the
    node keeps one in flight per shard) and writes them all to the log with one ``write``
    (the segment is ``O_DSYNC``); then, on the loop, every append's future is resolved with the same
    outcome. It never waits for more: under load the node holds its appends instead, so
    that what arrives meanwhile joins the batch (``node.hold``, ``--commit-delay``). With
    fsync off the cycle runs on the loop (no thread hop).

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
            self.wal = Wal(root, shards, fsync=fsync, truncate_corrupt=truncate_corrupt)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self.logs = [ShardLog(self, i) for i in range(shards)]
        self.snapshots = [ShardSnapshots(root, i, fsync=fsync) for i in range(shards)]
        # The fsync path: one writer thread of its own for the process's life, fed through
        # a queue (no executor, no task per cycle); it hands each cycle's outcome back to
        # the loop with one call_soon_threadsafe.
        self._queue: queue.SimpleQueue[_Cycle | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._closed = False
        self._inline: list[_Cycle] = []  # fsync off: written on the loop, next iteration
        self.cycles = 0  # commit cycles run (each: one thread hop, one write, one fsync)
        self.on_fsync: Callable[[float], None] | None = None  # seconds per cycle

    def replay(self, after: Sequence[int]) -> Iterator[tuple[int, bytes]]:
        """Every shard's records after its position in ``after`` (at start, one pass)."""
        return self.wal.replay(after)

    def append(self, batches: Sequence[tuple[int, Sequence[bytes]]]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if self._closed:
            future.set_exception(OSError(errno.ECANCELED, "the log closed"))
            return future
        if not self.fsync:  # a write to the page cache is cheaper than a thread hop
            if not self._inline:
                loop.call_soon(self._write_inline)  # the calls ready now join this cycle
            self._inline.append((batches, future))
            return future
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._write_cycles, name="fenliu-journal", daemon=True
            )
            self._writer.start()
        self._queue.put((batches, future))
        return future

    def _write_inline(self) -> None:
        queued, self._inline = self._inline, []
        self._settle(queued, *_write(self.wal, [b for appended, _ in queued for b in appended]))

    def _write_cycles(self) -> None:
        """The writer thread: everything queued meanwhile is one cycle (one write, one
        fsync), then its outcome goes back to the loop of each caller; ends at the ``None``
        of close."""
        _name_thread(b"fenliu-journal")  # so that /proc (and the bench) can tell it apart
        take, take_now = self._queue.get, self._queue.get_nowait
        while True:
            first = take()
            if first is None:
                return
            queued = [first]
            stop = False
            with contextlib.suppress(queue.Empty):
                while True:
                    cycle = take_now()
                    if cycle is None:
                        stop = True
                        break
                    queued.append(cycle)
            batches = [batch for appended, _ in queued for batch in appended]
            outcome = _write(self.wal, batches)
            by_loop: dict[asyncio.AbstractEventLoop, list[_Cycle]] = {}
            for cycle in queued:  # (one loop, unless the storage outlived one)
                by_loop.setdefault(cycle[1].get_loop(), []).append(cycle)
            for loop, cycles in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop closed: nobody waits
                    loop.call_soon_threadsafe(self._settle, cycles, *outcome)
            if stop:
                return

    def _settle(self, queued: list[_Cycle], error: OSError | None, seconds: float) -> None:
        """On the loop: resolve every future of one cycle, all with its outcome."""
        self.cycles += 1
        if error is not None:
            log.error("the log write failed (%d appends): %s", len(queued), error)
        for _, future in queued:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(None)
        if error is None and self.fsync and self.on_fsync is not None:
            try:
                self.on_fsync(seconds)
            except Exception:  # a metric must not fail a durable batch
                log.exception("the fsync observer failed")

    def close(self) -> None:
        # The thread first: a cycle still writing must not find its file closed under it.
        # What was queued before is written (and answered) first.
        self._closed = True
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
        self.wal.close()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)


_Cycle: TypeAlias = tuple[Sequence[tuple[int, Sequence[bytes]]], asyncio.Future[None]]
"""One append: every dirty shard's batch, and the future its node waits on."""


def _name_thread(name: bytes) -> None:
    """The calling thread's name as the OS shows it (Linux; elsewhere nothing)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)  # PR_SET_NAME


def _write(wal: Wal, batches: list[tuple[int, Sequence[bytes]]]) -> tuple[OSError | None, float]:
    started = time.perf_counter()
    try:
        wal.write(batches)
    except OSError as exc:
        return exc, 0.0
    except Exception as exc:  # not a disk error (a bug): the cycle fails as one would
        log.exception("a commit cycle failed")
        return OSError(errno.EIO, f"the commit cycle failed: {exc!r}"), 0.0
    return None, time.perf_counter() - started


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
        sync_dir(root)
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

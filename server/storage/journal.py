"""Group commit: every state change is journaled before the reply that acknowledges it.

A command is applied in memory at once (so the next one sees it), its record is queued
for its shard, and the caller awaits the future ``submit`` returned. One task runs commit
cycles for all shards: a cycle takes every shard's queue and, in one worker thread, writes
each dirty shard's records with one ``write`` and one ``fsync``, then releases all those
callers together: many requests share one fsync, and one thread hop serves every shard.
The next cycle's records accumulate on the loop while the current one is in the thread.

If the disk fails, every caller waiting on that shard gets ``Unavailable`` and the shard
is reloaded from its files, so the changes nobody was told about are undone; the next
command opens a fresh segment, so writing resumes when the disk does.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from ..core.dispatcher import Dispatcher
from ..core.errors import Unavailable
from ..core.shard import Shard
from . import codec
from .files import ShardFiles

log = logging.getLogger(__name__)

SNAPSHOT_PROCESSES = max(1, min(2, os.cpu_count() or 1))
"""Processes encoding and writing a forked snapshot's shards in parallel: two, where there
are two cores (the images are independent; more would only compete with the server)."""


class ShardWriter:
    """The queue of one shard's records, made durable by the journal's commit cycles."""

    def __init__(self, files: ShardFiles, on_failure: Callable[[], None]) -> None:
        self.files = files
        self._on_failure = on_failure
        self._records: list[bytes] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._writing = False  # a batch of this shard is in the current cycle
        self.queued = False  # in the journal's list of shards with records to write
        self.batches = 0  # fsyncs done, for the group-commit figures
        self.records = 0
        self.on_fsync: Callable[[float], None] | None = None  # seconds per write + fsync

    def submit(self, payload: bytes) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._records.append(codec.frame(payload))
        self._waiters.append(future)
        return future

    @property
    def idle(self) -> bool:
        return not self._records and not self._writing

    def take(self) -> tuple[bytes, int, list[asyncio.Future[None]]]:
        """Everything queued, as one write: the data, its record count, its callers."""
        records, self._records = self._records, []
        waiters, self._waiters = self._waiters, []
        self._writing = bool(records)
        return b"".join(records), len(records), waiters

    def done(self, records: int, waiters: list[asyncio.Future[None]]) -> None:
        self._writing = False
        self.batches += 1
        self.records += records
        for waiter in waiters:
            if not waiter.done():  # a cancelled call: its record is durable all the same
                waiter.set_result(None)

    def fail(self, waiters: list[asyncio.Future[None]], exc: OSError) -> None:
        """Undo everything not yet durable: the failed batch and whatever queued behind it.

        The shard is reloaded from its files; whatever happens on the way, every caller
        hears ``Unavailable`` (nobody may wait forever)."""
        self._writing = False
        waiters = waiters + self._waiters
        self._records, self._waiters = [], []
        error = Unavailable(f"the change could not be made durable ({exc.strerror}); retry", "")
        try:
            log.error("shard %d: the journal write failed: %s", self.files.index, exc)
            self.files.close()
            self._on_failure()
        finally:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error)


_Write = tuple[ShardFiles, bytes, int]


def _append(files: ShardFiles, data: bytes, records: int) -> tuple[OSError | None, float]:
    """Append (and fsync) one shard's batch: the error, if any, and the seconds it took."""
    started = time.perf_counter()
    try:
        files.append(data, records)
    except OSError as exc:
        return exc, 0.0
    return None, time.perf_counter() - started


def _append_all(
    writes: list[_Write], pool: ThreadPoolExecutor | None
) -> list[tuple[OSError | None, float]]:
    """Every shard's batch, each fsynced in its own ``pool`` thread at once (concurrent
    fsyncs share the file system's journal commits: 16 files take ~2x one, in sequence
    ~18x); one shard failing does not stop the others."""
    if pool is None or len(writes) == 1:
        return [_append(*write) for write in writes]
    return [f.result() for f in [pool.submit(_append, *write) for write in writes]]


class Journal:
    """The journals and snapshots of every shard of a dispatcher, under ``root``.

    Group commit across shards: one task runs commit cycles while records are queued.
    A cycle takes every shard's queue and hands all of them to one worker thread, which
    writes each dirty shard file and fsyncs them all at once (one thread per shard);
    then the callers of those batches are released. While a cycle is in the thread the
    loop keeps applying commands, and their records form the next cycle.
    """

    def __init__(self, dispatcher: Dispatcher, root: Path, *, fsync: bool = True) -> None:
        self.dispatcher = dispatcher
        self.root = root
        self.fsync = fsync
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fenliu-journal")
        self.writers = [
            ShardWriter(ShardFiles(root, i, fsync=fsync), self._reloader(i))
            for i in range(len(dispatcher.shards))
        ]
        # The cycle runs in ``_executor``; it fsyncs the dirty shard files here, in parallel.
        self._sync_pool = ThreadPoolExecutor(
            max_workers=len(self.writers), thread_name_prefix="fenliu-fsync"
        )
        self._queued: list[ShardWriter] = []
        self._task: asyncio.Task[None] | None = None
        self.cycles = 0  # commit cycles run (each: one thread hop, one fsync per dirty shard)

    def recover(self) -> None:
        """Load every shard from its files into the dispatcher (at start, before serving)."""
        started = time.perf_counter()
        for i, writer in enumerate(self.writers):
            self.dispatcher.shards[i] = writer.files.load()
            writer.files.open_segment()
        records = sum(w.files.position for w in self.writers)
        log.info(
            "recovered %d shards (%d journal records) from %s in %.2fs",
            len(self.writers), records, self.root, time.perf_counter() - started,
        )  # fmt: skip

    def observe_fsync(self, observer: Callable[[float], None]) -> None:
        """Call ``observer`` with the seconds each group commit's write + fsync took."""
        for writer in self.writers:
            writer.on_fsync = observer

    def submit(self, shard: Shard, payload: bytes) -> asyncio.Future[None]:
        """Queue a record of ``shard``; the future resolves once it is durable."""
        writer = self.writers[shard.index]
        future = writer.submit(payload)
        if not writer.queued:
            writer.queued = True
            self._queued.append(writer)
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._commit())
        return future

    async def _commit(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(0)  # let the calls already running join this cycle
            while self._queued:
                queued, self._queued = self._queued, []
                batches: list[tuple[ShardWriter, int, list[asyncio.Future[None]]]] = []
                writes: list[_Write] = []
                for writer in queued:
                    writer.queued = False
                    data, records, waiters = writer.take()
                    if records:  # (a shard that failed since it was queued has none)
                        batches.append((writer, records, waiters))
                        writes.append((writer.files, data, records))
                try:
                    if self.fsync:  # the slow part runs off the loop, one hop for all shards
                        outcomes = await loop.run_in_executor(
                            self._executor, _append_all, writes, self._sync_pool
                        )
                    else:  # a write to the page cache is cheaper than a thread hop
                        outcomes = _append_all(writes, None)
                except Exception as exc:  # not a disk error (a closed pool, a bug): fail all
                    log.exception("a commit cycle failed")
                    failed = OSError(0, f"the commit cycle failed: {exc!r}")
                    outcomes = [(failed, 0.0)] * len(batches)
                self.cycles += 1
                # One shard's trouble must not strand the callers of the others: each
                # batch is settled on its own.
                for (writer, records, waiters), (error, seconds) in zip(
                    batches, outcomes, strict=True
                ):
                    try:
                        if error is not None:
                            writer.fail(waiters, error)
                            continue
                        writer.done(records, waiters)
                        if self.fsync and writer.on_fsync is not None:
                            writer.on_fsync(seconds)
                    except Exception:  # its callers have their answers (fail, done)
                        log.exception("shard %d: settling a batch failed", writer.files.index)
        finally:
            self._task = None
            # Cancelled (the loop closing): a writer left queued would never be queued
            # again, so no later submit would start a cycle for it.
            for writer in self._queued:
                writer.queued = False
            self._queued = []

    async def snapshot(self, *, fork: bool = False) -> None:
        """Snapshot every shard, each at an instant when its journal is idle.

        With ``fork`` (where the OS has it) one child process encodes and writes the images
        of every shard idle at the fork, from a copy-on-write view of memory, so routing
        stalls only for the fork itself; shards busy then follow in further rounds (one
        fork each). Otherwise each image is encoded here, on the loop, one shard at a time.
        """
        loop = asyncio.get_running_loop()
        fork = fork and hasattr(os, "fork")
        pending = list(self.writers)
        while pending:
            while not any(writer.idle for writer in pending):
                await asyncio.sleep(0.001)
            ready = [w for w in pending if w.idle] if fork else [next(w for w in pending if w.idle)]
            pending = [w for w in pending if w not in ready]
            # Nothing awaits from here to the rotations: each image, its position and its
            # segment boundary agree, and no append runs while a segment changes.
            jobs = [
                (w.files, w.files.position, self.dispatcher.shards[w.files.index]) for w in ready
            ]
            if fork:
                for files, _, _ in jobs:
                    files.open_segment()
                pid = os.fork()
                if pid == 0:  # the child: encode, write, leave without running anything else
                    _write_and_exit(jobs, SNAPSHOT_PROCESSES)
                status = await loop.run_in_executor(self._executor, _wait, pid)
                if status != 0:
                    indexes = [files.index for files, _, _ in jobs]
                    log.error("shards %s: the snapshot child failed (%d)", indexes, status)
                    continue
            else:
                ((files, position, shard),) = jobs
                with _no_gc():
                    payload = codec.encode_shard(shard, position)
                files.open_segment()
                await loop.run_in_executor(self._executor, files.write_snapshot, payload, position)
            # Pruning stays here: an orphaned child must never delete what a restarted
            # server is reading.
            for files, _, _ in jobs:
                await loop.run_in_executor(self._executor, files.prune)

    def close(self) -> None:
        # The threads first: a cycle still writing must not find its files closed under it.
        self._executor.shutdown(wait=True)
        self._sync_pool.shutdown(wait=True)
        for writer in self.writers:
            writer.files.close()

    def _reloader(self, index: int) -> Callable[[], None]:
        def reload() -> None:
            try:
                self.dispatcher.shards[index] = self.writers[index].files.load()
            except OSError as exc:  # still failing: keep what we have, refuse writes
                log.error("shard %d: cannot reload from disk: %s", index, exc)
            except Exception:  # noqa: BLE001 - a reload must never take the commit task down
                log.exception("shard %d: cannot reload from disk", index)

        return reload


def _write_and_exit(jobs: list[tuple[ShardFiles, int, Shard]], processes: int) -> NoReturn:
    """In a forked child: store the snapshots and exit at once (no atexit, no grpc).

    The shards are shared out among ``processes`` processes (this one and grandchildren
    forked from it, so the server's loop pays for one fork only); the exit code is 0 when
    every snapshot is stored. No garbage is ever collected here: the child exits before it
    would matter, and a collection would walk, and so copy, every page of the heap.
    """
    code = 1
    try:
        gc.disable()
        children: list[int] = []
        share = jobs[::processes]
        for k in range(1, min(processes, len(jobs))):
            pid = os.fork()
            if pid == 0:
                children.clear()
                share = jobs[k::processes]
                break
            children.append(pid)
        for files, position, shard in share:
            files.write_snapshot(codec.encode_shard(shard, position), position)
        code = 0
        for pid in children:
            if _wait(pid) != 0:
                code = 1
    finally:
        os._exit(code)


@contextmanager
def _no_gc() -> Iterator[None]:
    """No collection while an image is built: its many small containers would trigger
    full collections over the whole heap, which only cost time (nothing there is garbage)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _wait(pid: int) -> int:
    """The child's exit code (negative: killed by that signal)."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)

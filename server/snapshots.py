"""Snapshots of every shard, each at an instant when nothing of it is on its way to the log.

With ``fork`` (where the OS has it) one child process encodes and stores the images of
every shard idle at the fork, from a copy-on-write view of memory, so routing stalls only
for the fork itself; shards busy then follow in further rounds (one fork each). Otherwise
each image is encoded here, on the loop, one shard at a time (the final one at shutdown).
Old snapshots and the journal they cover are pruned here, in the server, only after the
new ones are stored: an orphaned child must never delete what a restarted server reads.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from .core import image
from .core.shard import Shard
from .node import Node
from .storage.base import SnapshotStore, Storage

log = logging.getLogger(__name__)

SNAPSHOT_PROCESSES = max(1, min(2, os.cpu_count() or 1))
"""Processes encoding and storing a forked snapshot's shards in parallel: two, where there
are two cores (the images are independent; more would only compete with the server)."""

_Job = tuple[SnapshotStore, int, Shard]


async def snapshot_all(node: Node, storage: Storage, *, fork: bool = False) -> list[int]:
    """Snapshot every shard; returns the shards whose snapshot failed (logged)."""
    fork = fork and hasattr(os, "fork")
    pending = list(range(len(storage.logs)))
    failed: list[int] = []
    while pending:
        while not any(node.idle(i) or node.fenced(i) for i in pending):
            await asyncio.sleep(0.001)
        fenced = [i for i in pending if node.fenced(i)]  # nothing trustworthy to image
        if fenced:
            log.error("shards %s: no snapshot while being restored", fenced)
            failed += fenced
            pending = [i for i in pending if i not in fenced]
            continue
        ready = [i for i in pending if node.idle(i)]
        if not fork:
            ready = ready[:1]
        pending = [i for i in pending if i not in ready]
        # Nothing awaits from here to the rotations: each image, its position and its
        # segment boundary agree, and no append runs while a segment changes.
        jobs: list[_Job] = []
        for i in ready:
            storage.logs[i].rotate()
            jobs.append((storage.snapshots[i], storage.logs[i].position, node.dispatcher.shards[i]))
        try:
            if fork:
                pid = os.fork()
                if pid == 0:  # the child: encode, store, leave without running anything else
                    _store_and_exit(jobs, SNAPSHOT_PROCESSES)
                status = await asyncio.to_thread(_wait, pid)
                if status != 0:
                    raise OSError(f"the snapshot child exited with {status}")
            else:
                ((store, position, shard),) = jobs
                with _no_gc():
                    payload = image.encode(shard, position)
                await asyncio.to_thread(store.save, payload, position)
        except OSError as exc:
            log.error("shards %s: the snapshot failed: %s", ready, exc)
            failed += ready
            continue
        for i in ready:
            await asyncio.to_thread(_prune, storage, i)
    return failed


def _prune(storage: Storage, index: int) -> None:
    keep_from = storage.snapshots[index].prune()
    if keep_from:
        storage.logs[index].prune(keep_from)


def _store_and_exit(jobs: list[_Job], processes: int) -> NoReturn:
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
        for store, position, shard in share:
            store.save(image.encode(shard, position), position)
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

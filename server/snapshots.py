"""Snapshots of every shard, and pruning what they cover.

Periodic snapshots are written by the snapshotter (``storage/snapshotter.py``), a process
of its own that follows the write-ahead log and keeps a replica of the shards: the server
sends it the positions durable now, it brings its replica there and stores every shard's
image at exactly those positions, and the server then prunes. The serving process never
forks and never encodes an image while it serves, so routing does not stall for a
snapshot. ``snapshot_in_process`` encodes here, on the loop, shard by shard: for a storage
without files (memory) and as the fallback of the final snapshot at shutdown. Old
snapshots and the log they cover are pruned by the server only, after the new ones are
stored: a snapshotter must never delete what a restarted server reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .core import image
from .node import Node
from .storage.base import Storage
from .storage.files import FilesStorage

log = logging.getLogger(__name__)


async def snapshot_in_process(node: Node, storage: Storage) -> list[int]:
    """Snapshot every shard here, each at an instant when nothing of it is on its way to
    the log; returns the shards whose snapshot failed (logged)."""
    pending = list(range(len(storage.logs)))
    failed: list[int] = []
    while pending:
        while not any(node.idle(i) or node.fenced(i) for i in pending):
            await asyncio.sleep(0.001)
        index = next(i for i in pending if node.idle(i) or node.fenced(i))
        pending.remove(index)
        if node.fenced(index):  # nothing trustworthy to image
            log.error("shard %d: no snapshot while it is being restored", index)
            failed.append(index)
            continue
        # Nothing awaits from here to the encoding: the image and its position agree.
        shard_log, store = storage.logs[index], storage.snapshots[index]
        shard_log.rotate()
        position = shard_log.position
        with _no_gc():
            payload = image.encode(node.dispatcher.shards[index], position)
        try:
            await asyncio.to_thread(store.save, payload, position)
        except OSError as exc:
            log.error("shard %d: the snapshot failed: %s", index, exc)
            failed.append(index)
            continue
        await asyncio.to_thread(prune, storage, index)
    return failed


def prune(storage: Storage, index: int) -> None:
    """Drop shard ``index``'s snapshots beyond the kept ones and the log they cover."""
    keep_from = storage.snapshots[index].prune()
    if keep_from:
        storage.logs[index].prune(keep_from)


class Snapshotter:
    """The snapshotter process of a data directory, driven over its stdin and stdout."""

    def __init__(self, root: Path, shards: int) -> None:
        self.root = root
        self.shards = shards
        self._proc: asyncio.subprocess.Process | None = None
        self._ready = False
        self.restarts = 0

    async def start(self) -> None:
        """Start the process (it loads its replica from the files on its own)."""
        self._ready = False
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fenliu.server.storage.snapshotter",
            str(self.root), str(self.shards),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip

    async def snapshot(self, storage: FilesStorage) -> bool:
        """Every shard's snapshot at the positions durable now, then pruned; False (and
        logged) if it failed, in which case the next call starts a fresh snapshotter."""
        if self._proc is None or self._proc.returncode is not None:
            if self._proc is not None:
                self.restarts += 1
                log.warning("the snapshotter exited (%s); starting a new one",
                            self._proc.returncode)  # fmt: skip
                await self.close()
            await self.start()
        targets, seq, offset = storage.wal.durable  # now: one cycle's, never half of one
        for shard_log in storage.logs:
            shard_log.rotate()
        try:
            answer = await self._ask(targets, (seq, offset))
        except (OSError, ValueError, EOFError) as exc:
            log.error("the snapshotter failed: %s", exc)
            await self.close()
            return False
        if "ok" not in answer:
            log.error("the snapshotter failed: %s", answer.get("failed", answer))
            return False
        for index in range(len(storage.logs)):
            await asyncio.to_thread(prune, storage, index)
        return True

    async def _ask(self, targets: Sequence[int], end: tuple[int, int]) -> dict[str, object]:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        while not self._ready:
            self._ready = "ready" in await self._line(proc)
        proc.stdin.write((json.dumps({"to": list(targets), "end": list(end)}) + "\n").encode())
        await proc.stdin.drain()
        return await self._line(proc)

    @staticmethod
    async def _line(proc: asyncio.subprocess.Process) -> dict[str, object]:
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if not line:
            raise EOFError(f"the snapshotter exited ({await proc.wait()})")
        answer = json.loads(line)
        if not isinstance(answer, dict):
            raise ValueError(f"the snapshotter said {answer!r}")
        return answer

    async def close(self, timeout: float = 30.0) -> None:
        """Close its input (it exits), wait for it (``timeout``, then kill it) and read its
        output to the end, so nothing of it is left open."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.read()


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

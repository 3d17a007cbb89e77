"""In-memory storage: the same seams as ``files.py`` with lists for files (tests, tools).

``MemoryStorage.append`` is durable as soon as it returns, unless a log in it was told to
fail (``MemoryLog.failures``), which is how tests exercise the write path's undo without a
disk.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Iterator, Sequence


class MemoryLog:
    def __init__(self) -> None:
        self.records: list[bytes] = []
        self._start = 0
        self.failures = 0  # appends to fail from now on (tests): MemoryStorage.append

    @property
    def position(self) -> int:
        return self._start + len(self.records)

    @property
    def start(self) -> int:
        return self._start

    def replay(self, after: int) -> Iterator[bytes]:
        return iter(self.records[max(0, after - self._start) :])

    def rotate(self) -> None:
        pass

    def prune(self, before: int) -> None:
        drop = before - self._start
        if drop > 0:
            del self.records[:drop]
            self._start = before


class MemorySnapshots:
    def __init__(self, keep: int = 2) -> None:
        self.images: list[tuple[bytes, int]] = []  # oldest first
        self.keep = keep

    def save(self, payload: bytes, position: int) -> None:
        self.images.append((payload, position))

    def load(self) -> tuple[bytes, int] | None:
        return self.images[-1] if self.images else None

    def prune(self) -> int:
        del self.images[: -self.keep]
        return self.images[0][1] if len(self.images) == self.keep else 0


class MemoryStorage:
    """Every shard's log and snapshots, in memory."""

    def __init__(self, shards: int) -> None:
        self.logs = [MemoryLog() for _ in range(shards)]
        self.snapshots = [MemorySnapshots() for _ in range(shards)]

    def append(self, batches: Sequence[tuple[int, Sequence[bytes]]]) -> asyncio.Future[None]:
        """All or nothing, as one write of a shared log: a log told to fail fails them all."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failing = [self.logs[i] for i, _ in batches if self.logs[i].failures]
        if failing:
            for log in failing:
                log.failures -= 1
            future.set_exception(OSError(errno.ENOSPC, "No space left on device (memory log)"))
            return future
        for i, records in batches:
            self.logs[i].records.extend(records)
        future.set_result(None)
        return future

    def replay(self, after: Sequence[int]) -> Iterator[tuple[int, bytes]]:
        for i, (log, position) in enumerate(zip(self.logs, after, strict=True)):
            for record in log.replay(position):
                yield i, record

    def close(self) -> None:
        pass

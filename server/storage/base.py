"""The storage seams: a shard's ``Log`` and its ``SnapshotStore``, and recovery over them.

The write path (``server/node.py``) needs two things per shard and nothing more:

- a ``Log``: records appended in order (``Storage.append``, several shards' batches at
  once), durable once the returned future resolves, read back after a position (local
  files: ``files.py``; memory: ``memory.py``; a replicated stream in cluster mode);
- a ``SnapshotStore``: shard images saved at a log position, the newest valid one
  loaded back.

``recover`` turns the two into the shard's durable state; it is the same at start-up,
after a failed write (the shard returns to what is durable) and in a replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from typing import Protocol

from ..core import image
from ..core.errors import FenliuError
from ..core.shard import Shard
from ..core.types import Event
from . import codec

log = logging.getLogger(__name__)


class StorageError(Exception):
    """Storage cannot be trusted as it is (corrupt, locked, mismatched): refuse, loudly."""


class Log(Protocol):
    """One shard's ordered log of records (positions count from 1)."""

    @property
    def position(self) -> int:
        """Records durable so far: the position of the last one."""
        ...

    @property
    def start(self) -> int:
        """The position before the first record still kept (0: nothing pruned)."""
        ...

    def replay(self, after: int) -> Iterator[bytes]:
        """The records after position ``after``, in order.

        Raises:
            StorageError: a record in the middle is damaged (a torn tail is not).
        """
        ...

    def rotate(self) -> None:
        """Start a new segment at the current position (so older ones can be pruned)."""
        ...

    def prune(self, before: int) -> None:
        """Records up to ``before`` are covered by snapshots: they may be dropped."""
        ...


class SnapshotStore(Protocol):
    """One shard's snapshots: images (``core/image.py``) at log positions."""

    def save(self, payload: bytes, position: int) -> None:
        """Store an image covering ``position`` records, atomically."""
        ...

    def load(self) -> tuple[bytes, int] | None:
        """The newest valid image and its position (damaged ones are skipped), or None."""
        ...

    def prune(self) -> int:
        """Drop all but the newest kept images; returns the position the oldest kept one
        covers (0: none), up to which the log may be pruned."""
        ...


class Storage(Protocol):
    """Every shard's log and snapshot store (``files.py``, ``memory.py``)."""

    @property
    def logs(self) -> Sequence[Log]: ...

    @property
    def snapshots(self) -> Sequence[SnapshotStore]: ...

    def append(self, batches: Sequence[tuple[int, Sequence[bytes]]]) -> asyncio.Future[None]:
        """Append each (shard, records) batch to its shard's log, in order; resolves once
        all are durable, or fails with ``OSError`` having made none of them durable (a
        shared log writes them at once). At most one batch of a shard is in flight.
        """
        ...

    def replay(self, after: Sequence[int]) -> Iterator[tuple[int, bytes]]:
        """(shard, record) of every shard's records after its position in ``after``, in
        one pass (at start: a shared log is read once, not once per shard)."""
        ...

    def close(self) -> None: ...


def recover(index: int, log_: Log, snapshots: SnapshotStore) -> Shard:
    """Shard ``index`` as it is durable: the newest valid snapshot, then the log after it.

    Raises:
        StorageError: no usable snapshot for a log that no longer starts at 0, or a
            damaged record in the middle of the log.
        codec.FormatError: a file written by a newer format.
    """
    shard, position = load_snapshot(index, snapshots, log_.start)
    for payload in log_.replay(position):
        apply_record(shard, payload)
    return shard


def recover_all(storage: Storage) -> list[Shard]:
    """Every shard as it is durable, reading the logs in one pass (see ``recover``)."""
    pairs = zip(storage.logs, storage.snapshots, strict=True)
    found = [load_snapshot(i, snaps, log_.start) for i, (log_, snaps) in enumerate(pairs)]
    shards = [shard for shard, _ in found]
    for index, payload in storage.replay([position for _, position in found]):
        apply_record(shards[index], payload)
    return shards


def load_snapshot(index: int, snapshots: SnapshotStore, log_start: int) -> tuple[Shard, int]:
    """Shard ``index``'s newest valid snapshot (an empty shard if none) and its position,
    for a log whose first kept record follows ``log_start``."""
    found = snapshots.load()
    shard, position = image.decode(found[0]) if found is not None else (Shard(index), 0)
    if shard.index != index:
        raise StorageError(f"shard {index}: its snapshot holds shard {shard.index}")
    if position < log_start:
        raise StorageError(
            f"shard {index}: no usable snapshot, and its journal starts after record "
            f"{log_start} (the records before were pruned): the shard cannot be rebuilt. "
            "Restore the shard's directory from a backup."
        )
    return shard, position


def apply_record(shard: Shard, payload: bytes, events: list[Event] | None = None) -> None:
    """Replay one journal record (accepted once, so it must apply again); its events (the
    same seqs as when it was first applied) are added to ``events`` when given."""
    command = codec.decode_command(payload)
    try:
        shard.apply(command)
    except FenliuError as exc:  # it was accepted once: refusing now is a core bug
        raise StorageError(
            f"shard {shard.index}: a journal record no longer applies: {exc}"
        ) from exc
    if events is not None:
        events.extend(shard.outbox)
    shard.outbox.clear()

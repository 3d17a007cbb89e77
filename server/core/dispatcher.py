"""The dispatcher: routes each command to the shard owning its shop."""

from __future__ import annotations

import zlib
from typing import Any, Final

from mypy_extensions import mypyc_attr

from .errors import FenliuError
from .shard import Shard
from .types import AnyCommand, AnyQuery, Event, Moved, Tick

DEFAULT_SHARDS: Final = 16


def shard_index(shop_id: str, shards: int) -> int:
    """A stable shard number for a shop: the same in every process and every run."""
    return zlib.crc32(shop_id.encode()) % shards


@mypyc_attr(allow_interpreted_subclasses=True)  # tests subclass it
class Dispatcher:
    """All shards of one process. ``execute`` changes state, ``read`` never does."""

    def __init__(self, shards: int = DEFAULT_SHARDS) -> None:
        if shards < 1:
            raise ValueError("shards must be at least 1")
        self.shards = [Shard(i) for i in range(shards)]
        # shop id -> shard index, for shops that exist (they are never removed): a dict hit
        # instead of encode + crc32 on every command. Indexes, not shards: recovery
        # replaces the shard objects.
        self._index: dict[str, int] = {}

    def index_of(self, shop_id: str) -> int:
        """The shard number of a shop (cached once the shop exists)."""
        index = self._index.get(shop_id)
        if index is None:
            index = shard_index(shop_id, len(self.shards))
            if shop_id in self.shards[index].shops:
                self._index[shop_id] = index
        return index

    def index_for(self, command: Any) -> int:
        """The shard number a command goes to: a Tick's own, else its shop's."""
        return command.shard if type(command) is Tick else self.index_of(command.shop_id)  # type: ignore[no-any-return]

    def shard_for(self, shop_id: str) -> Shard:
        return self.shards[self.index_of(shop_id)]

    def install(self, index: int, shard: Shard) -> None:
        """Put ``shard`` (recovered or reloaded) in place of shard ``index``."""
        if shard.index != index:
            raise ValueError(f"shard {shard.index} cannot be installed as shard {index}")
        self.shards[index] = shard

    def due(self, now: int) -> list[int]:
        """The shards with a timer due by ``now``: the ones a Tick has work for."""
        return [s.index for s in self.shards if s.timers and s.timers[0][0] <= now]

    def next_due(self) -> int | None:
        """The earliest time a timer of any shard is due (None: no timer): when a Tick
        next has work (the what-if simulator fires timers at their exact times)."""
        dues = [s.timers[0][0] for s in self.shards if s.timers]
        return min(dues) if dues else None

    def execute(self, command: AnyCommand) -> Any:
        """Apply one command; raises a ``FenliuError`` having changed nothing.

        A ``Tick`` goes to its shard, or (``shard`` -1) to every shard.
        """
        if type(command) is Tick:
            if command.shard >= 0:
                return self.shards[command.shard].apply(command)
            moved: list[Any] = []
            for shard in self.shards:
                moved.extend(shard.apply(command).moved)
            return Moved(moved=tuple(moved))
        return self.shard_for(command.shop_id).apply(command)  # type: ignore[union-attr]

    def apply_each(
        self,
        commands: list[Any],
        start: int,
        fenced: list[bool],
        results: list[Any],
        events: list[Event],
    ) -> int:
        """Apply ``commands[start:]`` in order: each one's result, or the ``FenliuError`` it
        raised having changed nothing, appended to ``results``, and the events it made
        (its shard's outbox) to ``events``. Stops at a command whose shard is ``fenced``
        (not applied, nothing appended) or that raised anything else (a bug, its shard
        half-changed: that exception appended) and returns its index; else
        ``len(commands)``. The node's loop for a batch without storage
        (``Node.execute_each``), compiled: one interpreted call a batch, not a command."""
        shards = self.shards
        count = len(commands)
        i = start
        while i < count:
            command = commands[i]
            try:
                index = self.index_for(command)
            except Exception as exc:  # noqa: BLE001 - not a command: its answer, as submit's
                results.append(exc)
                i += 1
                continue
            if fenced[index]:
                return i
            shard = shards[index]
            try:
                results.append(shard.apply(command))
            except FenliuError as exc:
                results.append(exc)
            except Exception as exc:  # noqa: BLE001 - the caller fences the shard
                results.append(exc)
                return i
            outbox = shard.outbox
            if outbox:
                events.extend(outbox)
                shard.outbox = []
            i += 1
        return count

    def read(self, query: AnyQuery) -> Any:
        return self.shard_for(query.shop_id).read(query)

    def drain_events(self) -> list[Event]:
        """Every shard's pending events (tests; the server takes each shard's own)."""
        events: list[Event] = []
        for shard in self.shards:
            if shard.outbox:
                events.extend(shard.outbox)
                shard.outbox.clear()
        return events

"""The watch hub: the server's event sink, fanning events out to watch streams.

Per watched shop the hub keeps a ring of its latest events (``ring_size``), so that a
watcher reconnecting with the last seq it saw gets what it missed. A ring is created when
a shop gets its first watcher and kept while it has one; afterwards it stays, for a
reconnect, among the ``idle_rings`` most recently unwatched ones. Shops nobody watches
cost nothing but a dict lookup per event.

Each watcher has a bounded buffer (``buffer_size`` items). ``publish`` only appends to
rings and buffers and never waits, so a watcher that does not read cannot slow routing:
when its buffer is full, the buffer is emptied and replaced by one ``FellBehind`` marker
(``Behind``), after which new events queue up again.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import NamedTuple

from fenliu.client._pb import fenliu_pb2 as pb

from ..core import types as t
from ..node import discard

DEFAULT_RING_SIZE = 1024
DEFAULT_BUFFER_SIZE = 256
DEFAULT_IDLE_RINGS = 256


NOT_KEPT = pb.FellBehind.CAUSE_NOT_KEPT
OVERFLOW = pb.FellBehind.CAUSE_OVERFLOW
UNDONE = pb.FellBehind.CAUSE_UNDONE


class Behind(NamedTuple):
    """Events were lost (or undone); the ones that follow come after ``seq``."""

    seq: int
    cause: pb.FellBehind.Cause.ValueType  # NOT_KEPT, OVERFLOW or UNDONE


Item = t.Event | Behind


class FellBehindCounts:
    """How often watchers fell behind since start, by cause (for metrics)."""

    __slots__ = ("overflow", "not_kept", "undone")

    def __init__(self) -> None:
        self.overflow = 0
        self.not_kept = 0
        self.undone = 0


class Watcher:
    """One watch stream's subscription: a bounded buffer the stream drains."""

    __slots__ = (
        "shop_id",
        "agent_id",
        "buffer",
        "limit",
        "overflows",
        "closed",
        "_wake",
        "_half",
        "_counts",
    )

    def __init__(
        self, shop_id: str, agent_id: str, limit: int, counts: FellBehindCounts | None = None
    ) -> None:
        self.shop_id = shop_id
        self.agent_id = agent_id  # "" = every event of the shop
        self.buffer: deque[Item] = deque()
        self.limit = limit
        self.overflows = 0
        self.closed = False
        self._wake = asyncio.Event()
        self._half = asyncio.Event()  # set while the buffer is at least half full
        self._counts = counts

    def wants(self, event: t.Event) -> bool:
        return not self.agent_id or event.agent_id == self.agent_id

    def put(self, item: Item) -> None:
        buffer = self.buffer
        if len(buffer) >= self.limit and isinstance(item, t.Event):
            buffer.clear()  # it has fallen behind: say so instead of queueing more
            self.overflows += 1
            if self._counts is not None:
                self._counts.overflow += 1
            item = Behind(item.seq, OVERFLOW)
        buffer.append(item)
        if len(buffer) * 2 >= self.limit:
            self._half.set()
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._half.set()
        self._wake.set()

    async def linger(self, seconds: float) -> None:
        """Let events gather for ``seconds`` before the next ``take``; cut short once the
        buffer is half full (a busy shop never overflows for it) or the watcher closed."""
        if self._half.is_set():
            return
        try:
            await asyncio.wait_for(self._half.wait(), seconds)
        except TimeoutError:
            pass

    async def take(self) -> list[Item]:
        """What has arrived since the last call (waits for something); [] once closed."""
        while not self.buffer and not self.closed:
            self._wake.clear()
            await self._wake.wait()
        if self.closed:
            return []
        items = list(self.buffer)
        self.buffer.clear()
        self._half.clear()
        return items


class Hub:
    """Rings of recent events per watched shop, and the watchers to feed."""

    def __init__(
        self,
        ring_size: int = DEFAULT_RING_SIZE,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        idle_rings: int = DEFAULT_IDLE_RINGS,
    ) -> None:
        if min(ring_size, buffer_size) < 1 or idle_rings < 0:
            raise ValueError("ring_size and buffer_size must be at least 1, idle_rings >= 0")
        self.ring_size = ring_size
        self.buffer_size = buffer_size
        self.idle_rings = idle_rings
        self.rings: dict[str, deque[t.Event]] = {}
        self.watchers: dict[str, list[Watcher]] = {}
        self._idle: OrderedDict[str, None] = OrderedDict()  # unwatched rings, oldest first
        self.closed = False
        self.fell_behind = FellBehindCounts()

    def publish(self, events: list[t.Event]) -> None:
        """The event sink: runs after every command; appends, never waits."""
        rings, watchers = self.rings, self.watchers
        for event in events:
            ring = rings.get(event.shop_id)
            if ring is None:
                continue  # nobody watches this shop, nor did recently
            ring.append(event)
            for watcher in watchers.get(event.shop_id, ()):
                if watcher.wants(event):
                    watcher.put(event)

    def undone(self, shop_id: str, seq: int) -> None:
        """The shop's changes after ``seq`` were undone (never published): its watchers
        re-read, and its ring, which holds only what was published, stays as it is."""
        for watcher in self.watchers.get(shop_id, ()):
            watcher.put(Behind(seq, UNDONE))
            self.fell_behind.undone += 1

    def replayed(self, events: list[t.Event]) -> None:
        """Cluster mode: a shard was rebuilt from its log here (taken over, or read back),
        and these are its replayed records' events, in order, with the seqs they were first
        issued with. Each shop's ring keeps them, so a watcher that followed the shop from
        its old owner resumes after its last seq with no gap and no duplicate; the ones
        newer than a ring holds (durable, never published here) go to its watchers too."""
        by_shop: dict[str, list[t.Event]] = {}
        for event in events:
            by_shop.setdefault(event.shop_id, []).append(event)
        for shop_id, shop_events in by_shop.items():
            ring = self.rings.get(shop_id)
            if ring is None:  # kept as an idle ring: for the watchers about to reconnect
                self.rings[shop_id] = deque(shop_events, maxlen=self.ring_size)
                self._idle[shop_id] = None
                continue
            last = ring[-1].seq if ring else 0
            newer = [e for e in shop_events if e.seq > last]
            watchers = self.watchers.get(shop_id, ())
            if newer and ring and newer[0].seq != last + 1:  # what the ring held is stale
                ring.clear()
                for watcher in watchers:
                    watcher.put(Behind(newer[0].seq - 1, NOT_KEPT))
            for event in newer:
                ring.append(event)
                for watcher in watchers:
                    if watcher.wants(event):
                        watcher.put(event)
        self._trim_idle()

    def forget(self, shop_ids: Iterable[str]) -> None:
        """Cluster mode: these shops are served elsewhere now: their watch streams end (the
        SDK reconnects to the new owner, after its last seq) and their rings go."""
        for shop_id in list(shop_ids):
            for watcher in self.watchers.pop(shop_id, ()):
                watcher.close()
            self.rings.pop(shop_id, None)
            self._idle.pop(shop_id, None)

    def shops(self) -> list[str]:
        """The shops with a ring (watched, or recently)."""
        return list(self.rings)

    def tee(self, other: Callable[[list[t.Event]], None]) -> Callable[[list[t.Event]], None]:
        """An event sink feeding this hub, then ``other`` (unless it is ``discard``)."""
        if other is discard:
            return self.publish

        def sink(events: list[t.Event]) -> None:
            self.publish(events)
            other(events)

        return sink

    def subscribe(
        self, shop_id: str, agent_id: str, head: int, after: int | None
    ) -> tuple[Watcher, list[Item]]:
        """A new watcher of the shop (of one agent when ``agent_id``), and what it missed.

        ``head`` is the shop's latest seq now; ``after`` the last seq the watcher saw
        (None: from now on). Returns the watcher and the items to send before its buffer.
        """
        ring = self.rings.get(shop_id)
        if ring is None:
            ring = self.rings[shop_id] = deque(maxlen=self.ring_size)
        self._idle.pop(shop_id, None)
        watcher = Watcher(shop_id, agent_id, self.buffer_size, self.fell_behind)
        if self.closed:
            watcher.close()
        self.watchers.setdefault(shop_id, []).append(watcher)
        missed = _missed(ring, head, after, watcher)
        if missed and isinstance(missed[0], Behind):
            self.fell_behind.not_kept += 1
        return watcher, missed

    def unsubscribe(self, watcher: Watcher) -> None:
        watchers = self.watchers.get(watcher.shop_id)
        if watchers is None or watcher not in watchers:
            return
        watchers.remove(watcher)
        if watchers:
            return
        del self.watchers[watcher.shop_id]
        self._idle[watcher.shop_id] = None
        self._trim_idle()

    def _trim_idle(self) -> None:
        while len(self._idle) > self.idle_rings:
            oldest, _ = self._idle.popitem(last=False)
            del self.rings[oldest]

    def close(self) -> None:
        """The server is stopping: every watch stream ends."""
        self.closed = True
        for watchers in self.watchers.values():
            for watcher in watchers:
                watcher.close()

    def watching(self) -> int:
        """Open watch streams."""
        return sum(len(ws) for ws in self.watchers.values())

    def buffered(self) -> Iterable[int]:
        """The buffer length of every watcher (for tests and metrics)."""
        return [len(w.buffer) for ws in self.watchers.values() for w in ws]


def _missed(ring: deque[t.Event], head: int, after: int | None, watcher: Watcher) -> list[Item]:
    if after is None or after == head:
        return []
    if after > head or not ring or ring[0].seq > after + 1 or ring[-1].seq != head:
        return [Behind(head, NOT_KEPT)]
    return [e for e in ring if e.seq > after and watcher.wants(e)]

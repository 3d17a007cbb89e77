"""One shop's live feed: fenliu's WatchShop stream in, server-sent events out.

A ``ShopFeed`` holds the one watch stream the dashboard process keeps per shop, however
many pages are open on it. Each fenliu event goes out (in small batches) to every page as
an ``events`` message whose SSE id is the last seq it carries; after events the feed
re-reads the shop (team, queue, left messages, stats, policy: a ``state`` message,
throttled) so the page always shows what fenliu says, never a state rebuilt from events.

Resuming: the feed keeps the last ``RING`` events. A page that reconnects with
``Last-Event-ID: N`` gets the events after N from that ring (no gap, no duplicate), or a
``reset`` when they are no longer kept. fenliu's own FellBehind (any cause) makes the feed
re-read and tell the pages with a ``behind`` message.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import datetime
import itertools
import logging
import math
import time
import zoneinfo
from collections.abc import Awaitable, Iterable
from typing import Any

import msgspec

from fenliu.client import (
    Agent,
    AsyncClient,
    Event,
    EventKind,
    FellBehind,
    FenliuError,
    Policy,
    QueueEntry,
    QueueList,
    Reason,
    ShopStats,
    Started,
    StatsCounts,
    Status,
    WatchStream,
)
from fenliu.client._types import watch_items

log = logging.getLogger("fenliu.dashboard")

RING = 4096  # events kept for pages that reconnect
QUEUE_LIMIT = 500  # queue entries and left messages a page gets (the totals are exact)
REFRESH_INTERVAL = 0.5  # at most two re-reads a second, however busy the shop
SAMPLE_INTERVAL = 2.0  # re-read at least this often: waits tick, charts fill, links fail
BACKFILL_TIMEOUT = 3.0
FENLIU_RING = 1000  # a little less than the events fenliu keeps of a watched shop (1,024)
FLUSH_DELAY = 0.1  # under a burst, events go out as one SSE message per 100 ms
QUIET = 0.03  # an event after this long without one goes out at once
CLIENT_BUFFER = 1024  # SSE messages a page may lag before it is dropped (it reconnects)
HOUR_BUCKET_MS = 10_000
DAY_BUCKET_MS = 300_000


def _name(value: Any) -> Any:
    """An enum member's lower-case name; a raw int from a newer server stays an int."""
    return value.name.lower() if hasattr(value, "name") else value


_encode = msgspec.json.Encoder().encode  # compact UTF-8 JSON, in C


def sse(kind: str, data: Any, event_id: int | None = None) -> bytes:
    """One server-sent event (compact JSON on one data line)."""
    return sse_raw(kind, _encode(data), event_id)


def sse_raw(kind: str, body: bytes, event_id: int | None = None) -> bytes:
    """One server-sent event whose data (one line of JSON) is already encoded."""
    head = b"id: %d\n" % event_id if event_id is not None else b""
    return b"%sevent: %s\ndata: %s\n\n" % (head, kind.encode(), body)


# An enum member -> its name on the page, looked up once (not per event); a raw int from a
# newer server goes out as the int.
_KINDS: dict[Any, Any] = {k: _name(k) for k in EventKind}
_REASONS: dict[Any, Any] = {r: _name(r) for r in Reason}
_STATUSES: dict[Any, Any] = {s: _name(s) for s in Status}
_STATUSES[None] = _STATUSES[0] = None  # (the wire's 0: no status)


def event_json(e: Event) -> dict[str, Any]:
    """What the page shows of an event; empty fields left out (the page reads a missing one
    as empty: less for every page to parse, each event being parsed by every page)."""
    out: dict[str, Any] = {"seq": e.seq, "kind": _KINDS.get(e.kind, e.kind), "at": e.at_ms}
    if e.agent_id:
        out["agent"] = e.agent_id
    if e.session_id:
        out["session"] = e.session_id
    if e.buyer_id:
        out["buyer"] = e.buyer_id
    reason = e.reason
    if reason:  # 0: UNSPECIFIED
        out["reason"] = _REASONS.get(reason, reason)
    status = e.status
    if status:  # STATUS_CHANGED only (the wire's 0, the SDK's None)
        out["status"] = _STATUSES.get(status, status)
    return out


# The JSON of an event's fixed part by kind, and of its reason and status: encoded once.
_HEADS = {int(k): b'{"seq":%%d,"kind":%s,"at":%%d' % _encode(_name(k)) for k in EventKind}
_REASON_JSON = {int(r): b',"reason":' + _encode(_name(r)) for r in Reason if r}
_REASON_JSON[0] = b""
_STATUS_JSON = {int(s): b',"status":' + _encode(_name(s)) for s in Status}
_STATUS_JSON[0] = b""


def event_bytes(e: Event | Any) -> bytes:
    """The event as the page gets it: ``event_json``'s JSON, encoded once and kept in the
    ring as is (an ``events`` message is these joined: no per-page, no per-flush encoding),
    built from pre-encoded pieces (an int from a newer server: ``event_json``'s way)."""
    head = _HEADS.get(e.kind)
    reason = _REASON_JSON.get(e.reason)
    status = _STATUS_JSON.get(e.status or 0)
    if head is None or reason is None or status is None:
        return _encode(event_json(e))
    out = head % (e.seq, e.at_ms)
    agent, session, buyer = e.agent_id, e.session_id, e.buyer_id
    if agent:
        out += b',"agent":' + _encode(agent)
    if session:
        out += b',"session":' + _encode(session)
    if buyer:
        out += b',"buyer":' + _encode(buyer)
    return out + reason + status + b"}"


class _Batch:
    """A watch message's events as they came off the wire, as one item (``seq``: the last
    one's, where the stream resumes): the feed reads the fields the page shows straight
    from them, in one pass (an SDK ``Event`` with its enums built per event, and a pass of
    the feed per event, were most of this process's Python time under a burst)."""

    __slots__ = ("events", "seq")

    def __init__(self, events: Any) -> None:
        self.events = events
        self.seq = events[-1].seq


def _wire_items(m: Any) -> list[Any]:
    which = m.WhichOneof("message")
    if which == "events":
        events = m.events.events
        return [_Batch(events)] if events else []
    if which == "event":
        return [m.event]
    return watch_items(m)


def _joined(fragments: Iterable[bytes]) -> bytes:
    return b"[" + b",".join(fragments) + b"]"


def _entries(listing: QueueList) -> dict[str, Any]:
    def one(q: QueueEntry) -> dict[str, Any]:
        return {
            "session": q.session_id,
            "buyer": q.buyer_id,
            "position": q.position,
            "priority": q.priority,
            "group": q.group,
            "channel": q.channel,
            "waited_ms": q.waited_ms,
            "agent": q.agent_id,
        }

    return {"total": listing.total, "entries": [one(q) for q in listing.entries]}


def _counts(c: StatsCounts) -> dict[str, Any]:
    return {
        "assigned": c.assigned,
        "reassigned": c.reassigned,
        "transferred": c.transferred,
        "timeouts": c.timeouts,
        "first_replies": c.first_replies,
        "fast_first_replies": c.fast_first_replies,
        "unreplied": c.unreplied,
        "fast_reply_rate": c.fast_reply_rate,
    }


def error_json(error: FenliuError) -> dict[str, Any]:
    """What a page shows of a refused call: code, reason, field, subject and message."""
    code = error.code.name if hasattr(error.code, "name") else str(error.code)
    message = str(error)
    if message.startswith(f"{code}: "):
        message = message[len(code) + 2 :]
    return {
        "code": code,
        "reason": error.reason,
        "field": error.field,
        "subject": error.subject,
        "message": message,
    }


_EMPTY = QueueList(entries=(), total=0)


class History:
    """The chart series: queue length and longest wait per 10 s over the last hour, the
    2-minute first reply rate per 5 minutes since the shop's midnight. Kept by this process
    from when it started watching the shop (fenliu keeps no such series)."""

    def __init__(self) -> None:
        self.hour: collections.OrderedDict[int, list[int]] = collections.OrderedDict()
        self.day: collections.OrderedDict[int, list[float]] = collections.OrderedDict()
        self._day_start = 0

    def add(self, stats: ShopStats, time_zone: str) -> None:
        at = stats.at_ms
        bucket = at - at % HOUR_BUCKET_MS
        point = self.hour.get(bucket)
        if point is None:
            self.hour[bucket] = [bucket, stats.queue_length, stats.longest_wait_ms]
        else:  # the bucket's peak: a short spike still shows
            point[1] = max(point[1], stats.queue_length)
            point[2] = max(point[2], stats.longest_wait_ms)
        while self.hour and next(iter(self.hour)) < at - 3_600_000:
            self.hour.popitem(last=False)
        day_start = _midnight_ms(at, time_zone)
        if day_start != self._day_start:
            self.day.clear()
            self._day_start = day_start
        today = stats.today
        known = today.first_replies + today.unreplied
        bucket = at - at % DAY_BUCKET_MS
        self.day[bucket] = [bucket, today.fast_reply_rate, known]

    def json(self) -> dict[str, Any]:
        return {
            "hour": list(self.hour.values()),
            "day": list(self.day.values()),
            "day_start": self._day_start,
        }


def _midnight_ms(at_ms: int, time_zone: str) -> int:
    try:
        zone: datetime.tzinfo = zoneinfo.ZoneInfo(time_zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        zone = datetime.UTC
    local = datetime.datetime.fromtimestamp(at_ms / 1000, zone)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return int(midnight.timestamp() * 1000)


class Subscriber:
    """One open page: the SSE messages waiting to be written to it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(CLIENT_BUFFER)

    def put(self, message: bytes | None) -> bool:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            return False
        return True


class ShopFeed:
    """The dashboard's view of one shop, shared by every page open on it."""

    def __init__(self, fenliu: AsyncClient, shop_id: str) -> None:
        self.fenliu = fenliu
        self.shop_id = shop_id
        self.last_seq = 0  # the last event seq the feed has (from fenliu)
        self.floor = 0  # events after the floor, up to last_seq, are in the ring
        self.sent_seq = 0  # the last event broadcast to the pages (last_seq once flushed)
        # The ring: the seqs and, side by side, each event's JSON (no tuple or dict kept
        # per event: nothing for the collector to scan).
        self.ring_seqs: collections.deque[int] = collections.deque()
        self.ring_json: collections.deque[bytes] = collections.deque()
        self.state: bytes | None = None
        self._state_due = False  # a state re-read is waiting for the next flush
        self.link: dict[str, Any] = {"up": False, "error": None}
        self.history = History()
        self.time_zone = "Asia/Shanghai"
        self.ready = asyncio.Event()  # the first state is read and the watch has caught up
        self.started_ms = int(time.time() * 1000)
        # agent -> [status name, since (epoch ms), known]: known when a STATUS_CHANGED
        # event said so, else the time this process first saw that status
        self._status: dict[str, list[Any]] = {}
        self._subscribers: set[Subscriber] = set()
        self._pending: list[bytes] = []  # events' JSON for the next flush
        self._pending_seq = 0  # the seq of the last of them
        self._flush_handle: asyncio.TimerHandle | None = None
        self._last_flush = 0.0
        self._last_event = -math.inf  # when the last event came (loop time)
        self._dirty = asyncio.Event()
        self._full = True  # the next re-read reads the policy too (see _refresh)
        self._policy: Policy | None = None
        self._queue = _EMPTY
        self._left = _EMPTY
        self._tasks: list[asyncio.Task[None]] = []
        self._caught_up_at: int | None = None
        self._backfill_lock = asyncio.Lock()
        self._stream: WatchStream | None = None  # fenliu's watch stream, while there is one

    # ------------------------------------------------------------ life

    async def start(self) -> None:
        """Read the shop once (raises NotFound for an unknown shop), then watch it."""
        stats = await self._refresh()
        # Ask fenliu for what it still keeps of the shop's recent past: status times, and
        # events for pages that resume (a restarted dashboard keeps their Last-Event-ID).
        after = max(0, stats.event_seq - FENLIU_RING)
        self.last_seq = self.floor = self.sent_seq = after
        self._caught_up_at = stats.event_seq
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._watch(after)),
            loop.create_task(self._refresher()),
            loop.create_task(self._sampler()),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sub in list(self._subscribers):
            sub.put(None)

    # ------------------------------------------------------------ pages

    async def backfill(self, after: int) -> None:
        """Fetch from fenliu (``after_seq``) the events after ``after`` that the ring does not
        hold (a page resuming on a dashboard that restarted since): fenliu keeps the last
        1,024 of a watched shop. When it no longer has them the page gets a reset."""
        if not 0 <= after < self.floor:
            return
        async with self._backfill_lock:
            floor = self.floor
            if after >= floor:
                return
            got: list[Event] = []
            stream = self.fenliu.watch_shop(self.shop_id, after_seq=after, give_up_after=2.0)
            try:
                async with asyncio.timeout(BACKFILL_TIMEOUT), stream:
                    async for item in stream:
                        if isinstance(item, FellBehind):
                            return  # not kept there either
                        if isinstance(item, Event):
                            if item.seq <= floor:
                                got.append(item)
                            if item.seq >= floor:
                                break
            except (TimeoutError, FenliuError):
                return
            if floor != self.floor or [e.seq for e in got] != list(range(after + 1, floor + 1)):
                return  # the ring was reset meanwhile, or fenliu skipped some
            for e in reversed(got):
                self.ring_seqs.appendleft(e.seq)
                self.ring_json.appendleft(event_bytes(e))
            self.floor = after

    def subscribe(self, last_event_id: int | None) -> Subscriber:
        """A new page: it gets the events after ``last_event_id`` it missed (or a reset
        when they are gone), then the current state, then everything live."""
        # Up to what was broadcast: events still waiting for the next flush reach the page
        # with it, so none comes twice.
        sent = self.sent_seq
        sub = Subscriber()
        if last_event_id is not None:
            if self.floor <= last_event_id <= sent:
                # The ring holds floor+1 .. last_seq, one seq after the other.
                seqs, kept = self.ring_seqs, self.ring_json
                start = bisect.bisect_right(seqs, last_event_id)
                end = bisect.bisect_right(seqs, sent)
                if end > start:
                    missed = itertools.islice(kept, start, end)
                    sub.put(sse_raw("events", _joined(missed), seqs[end - 1]))
            else:
                sub.put(sse("reset", {"seq": sent, "asked": last_event_id}, sent))
        else:
            sub.put(sse("hello", {"seq": sent}, sent))
        sub.put(sse("link", self.link))
        if self.state is not None:
            sub.put(self.state)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    @property
    def pages(self) -> int:
        return len(self._subscribers)

    def touch(self) -> None:
        """Something changed (an action from a page): re-read soon, all of it."""
        self._full = True
        self._dirty.set()

    def heartbeat(self) -> None:
        for sub in list(self._subscribers):
            if sub.queue.empty():
                sub.put(b": keep-alive\n\n")

    def _broadcast(self, message: bytes) -> None:
        for sub in list(self._subscribers):
            if not sub.put(message):  # that page stopped reading: it reconnects and resumes
                self._subscribers.discard(sub)
                sub.queue.get_nowait()
                sub.put(None)

    # ------------------------------------------------------------ fenliu events

    async def _watch(self, after: int) -> None:
        while True:
            try:
                stream = self._stream = self.fenliu.watch_shop(
                    self.shop_id, after_seq=after, give_up_after=math.inf
                )
                stream.decode = _wire_items
                async with stream:
                    async for item in stream:
                        self._on_item(item)
            except asyncio.CancelledError:
                raise
            except FenliuError as exc:  # NotFound, PermissionDenied, ...: say so, try later
                self._set_link(False, error_json(exc))
            except Exception:  # pragma: no cover - a bug; keep the feed alive
                log.exception("watch of shop %s failed", self.shop_id)
            after = self.last_seq
            await asyncio.sleep(2.0)

    def _on_item(self, item: Started | Event | FellBehind | Any) -> None:
        """One item of the watch: Started, FellBehind, a batch of wire events (see
        ``_wire_items``), or one event (wire or SDK ``Event``: both have what the page
        shows)."""
        if isinstance(item, _Batch):
            self._on_events(item.events)
        elif not isinstance(item, (Started, FellBehind)):
            self._on_events((item,))
        elif isinstance(item, FellBehind):
            # Any cause (NOT_KEPT, OVERFLOW, or one a newer fenliu adds): what came before
            # is lost, so re-read; the stream goes on after item.seq.
            self._flush()
            self.ring_seqs.clear()
            self.ring_json.clear()
            self.last_seq = self.floor = self.sent_seq = item.seq
            cause = _name(item.cause)
            self._broadcast(sse("behind", {"seq": item.seq, "cause": cause}, item.seq))
            self._dirty.set()
        else:  # (re)connected: fenliu may have restarted; re-read all
            self._set_link(True, None)  # live: events flow again
            self._full = True
            self._dirty.set()
        if self._caught_up_at is not None:
            if isinstance(item, Started):  # fenliu's head may be behind what stats said
                self._caught_up_at = min(self._caught_up_at, item.head_seq)
            if self.last_seq >= self._caught_up_at:
                self._caught_up_at = None
                self.ready.set()

    def _on_events(self, events: Iterable[Any]) -> None:
        last = first = self.last_seq
        seqs, kept, pending = self.ring_seqs, self.ring_json, self._pending
        for e in events:
            seq = e.seq
            if seq <= last:
                continue  # already had it
            last = seq
            data = event_bytes(e)
            if len(seqs) >= RING:
                self.floor = seqs.popleft()
                kept.popleft()
            seqs.append(seq)
            kept.append(data)
            pending.append(data)
            status = e.status
            if status:  # STATUS_CHANGED (the wire's 0 and the SDK's None: no status)
                self._status[e.agent_id] = [_STATUSES.get(status, status), e.at_ms, True]
        if last == first:
            return
        self.last_seq = self._pending_seq = last
        # The first event after a quiet spell goes out at once (with whatever else this
        # loop iteration brings); under a burst (fenliu's messages ~20 ms apart), one
        # message per FLUSH_DELAY: each message costs a write per page open.
        loop = asyncio.get_running_loop()
        now = loop.time()
        handle = self._flush_handle
        if now - self._last_event >= QUIET:
            if handle is not None:
                handle.cancel()
            self._flush_handle = loop.call_later(0.0, self._flush)
        elif handle is None:
            wait = self._last_flush + FLUSH_DELAY - now
            self._flush_handle = loop.call_later(max(0.0, wait), self._flush)
        self._last_event = now
        self._dirty.set()

    def _flush(self) -> None:
        """The events since the last flush as one ``events`` message, and a state re-read
        meanwhile after them, in one piece: one put (and one write) per page."""
        self._flush_handle = None
        self._last_flush = asyncio.get_running_loop().time()
        message = b""
        if self._pending:
            batch, self._pending = self._pending, []
            self.sent_seq = self._pending_seq
            message = sse_raw("events", _joined(batch), self.sent_seq)
        if self._state_due and self.state is not None:
            message += self.state
        self._state_due = False
        if message:
            self._broadcast(message)

    # ------------------------------------------------------------ state

    async def _refresher(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._refresh()
            except FenliuError as exc:  # Unavailable, DeadlineExceeded, NotFound, ...
                self._set_link(False, error_json(exc))
            await asyncio.sleep(REFRESH_INTERVAL)

    async def _sampler(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL)
            self._full = True
            self._dirty.set()

    async def _refresh(self) -> ShopStats:
        """Re-read the shop. Under a burst (up to four times a second) that is the stats and
        the team; the queue and the left messages only while there are some (or were: the
        stats' counts say when a listing is empty without reading it); the policy, which no
        event changes, on the periodic sample, after a (re)connect and after an action."""
        f, shop = self.fenliu, self.shop_id
        full, self._full = self._full or self._policy is None, False
        reads: list[Awaitable[Any]] = [f.get_shop_stats(shop, window_minutes=60), f.list_team(shop)]
        queued, left_kept = full or self._queue.total > 0, full or self._left.total > 0
        if queued:
            reads.append(f.list_queue(shop, limit=QUEUE_LIMIT))
        if left_kept:
            reads.append(f.list_left_messages(shop, limit=QUEUE_LIMIT))
        if full:
            reads.append(f.get_shop_policy(shop))
        got = await asyncio.gather(*reads)
        stats: ShopStats = got[0]
        team: tuple[Agent, ...] = got[1]
        rest = iter(got[2:])
        queue = next(rest) if queued else self._queue
        left = next(rest) if left_kept else self._left
        policy = next(rest) if full else self._policy
        more: list[Awaitable[Any]] = []
        if not queued and stats.queue_length > 0:  # queued meanwhile: read it after all
            more.append(f.list_queue(shop, limit=QUEUE_LIMIT))
        if not left_kept and stats.left_messages > 0:
            more.append(f.list_left_messages(shop, limit=QUEUE_LIMIT))
        if more:
            late = iter(await asyncio.gather(*more))
            if not queued and stats.queue_length > 0:
                queue = next(late)
            if not left_kept and stats.left_messages > 0:
                left = next(late)
        assert policy is not None
        self._policy, self._queue, self._left = policy, queue, left
        self.time_zone = policy.time_zone
        self.history.add(stats, policy.time_zone)
        state = {
            "shop": shop,
            "at": stats.at_ms,
            "seq": stats.event_seq,
            "time_zone": policy.time_zone,
            "policy": {
                "strategy": _name(policy.strategy),
                "queue_order": _name(policy.queue_order),
                "queue_limit": policy.queue_limit,
            },
            "team": self._team(team, stats.at_ms),
            "queue": _entries(queue),
            "left": _entries(left),
            "stats": {
                "queue_length": stats.queue_length,
                "longest_wait_ms": stats.longest_wait_ms,
                "left_messages": stats.left_messages,
                "open_sessions": stats.open_sessions,
                "today": _counts(stats.today),
                "window": _counts(stats.window),
                "window_minutes": stats.window_minutes,
            },
            "history": self.history.json(),
            "watching_since": self.started_ms,
        }
        self.state = sse("state", state)
        # Live means events flow, not only that reads answer: until the watch stream is
        # back (a Started), the page keeps saying it is not.
        self._set_link(self._stream is not None and self._stream.connected, None)
        # With the next flush (events due within FLUSH_DELAY take it along), else now.
        self._state_due = True
        if self._flush_handle is None:
            self._flush()
        return stats

    def _team(self, team: Iterable[Agent], now_ms: int) -> list[dict[str, Any]]:
        rows = []
        for a in team:
            status = _name(a.status)
            known = self._status.get(a.agent_id)
            if known is None or known[0] != status:
                known = self._status[a.agent_id] = [status, now_ms, False]
            rows.append(
                {
                    "agent": a.agent_id,
                    "role": _name(a.role),
                    "groups": list(a.groups),
                    "max": a.max_concurrent,
                    "status": status,
                    "load": a.load,
                    "new": a.new_count,
                    "backlog": a.backlog_size,
                    "served_today": a.served_today,
                    "since": known[1],
                    "since_known": known[2],
                }
            )
        return rows

    def _set_link(self, up: bool, error: dict[str, Any] | None) -> None:
        link = {"up": up, "error": error}
        if link != self.link:
            self.link = link
            self._broadcast(sse("link", link))


STATUS_NAMES = {s.name.lower(): s for s in Status}

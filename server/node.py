"""The write path's owner: a command is applied, made durable, published, then answered.

    execute(command)
      1. apply it to its shard (the core checks everything first; a refusal changes nothing)
      2. stage its record and its events beside the shard's other changes not yet durable
      3. append them to the shard's log: one batch in flight per shard (group commit)
      4. once durable: publish the batch's events, in order, then release its callers

Nothing leaves before it is durable: no event, no reply. A read may see a change whose
record is still in flight (step 3); if that append fails, the shard returns to its durable
state (``storage.base.recover``), every caller of the failed batch and of the ones queued
behind it gets UNAVAILABLE, and every watcher of the shard's shops is told the shop was
``undone`` (it re-reads): the seqs of events never published are issued again, but no
watcher ever saw them. An unexpected exception inside a command (a bug) is handled the
same way: the half-applied shard is restored, the caller gets INTERNAL. While a shard is
being restored its commands and reads answer UNAVAILABLE.

Without storage (no data directory) a change is answered at once; a bug then leaves the
shard fenced (every call on it UNAVAILABLE) with nothing to restore it from.

The commit hold (``commit_delay``, the server's ``--commit-delay``; PostgreSQL's
commit_delay / commit_siblings adapted): under load a commit cycle (one fsync) costs the
same whatever it carries, so when several calls are staged (``SIBLINGS`` or more, now or
in the last append) the next append waits, while calls keep arriving, up to
``commit_delay`` since the last append began; it goes at once when ``ENOUGH`` records are
staged, or when the loop sat idle for a quarter of the delay and no call arrived (``hold``
and ``_check_hold``).
A lone caller's change (one record staged, one in the last append) is appended at once.
Nothing is answered or published before its fsync: the hold only delays the append.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeAlias

from .core import types as t
from .core.dispatcher import Dispatcher
from .core.errors import FenliuError, Unavailable
from .core.shard import Shard
from .storage import codec
from .storage.base import Storage, recover, recover_all

log = logging.getLogger(__name__)

COMMIT_DELAY_S = 0.004
"""The default ``commit_delay``: how long, at most, an append waits for more calls under
load (bench/README.md, "the commit hold", has the figures it was picked from)."""
SIBLINGS = 2
"""A hold needs this many records staged now, or in the last append: several callers."""
ENOUGH = 64
"""A hold ends once this many records are staged: one fsync carries enough of them."""

Clock: TypeAlias = Callable[[], int]
"""Milliseconds since the epoch."""
AppendEach: TypeAlias = Callable[[list[tuple[int, list[bytes]]]], list[asyncio.Future[None]]]
"""Cluster mode's storage: one future per (shard, records) batch."""
EventSink: TypeAlias = Callable[[list[t.Event]], None]
"""Receives durable events, in order; never called with an empty list."""


class UndoSink(Protocol):
    def undone(self, shop_id: str, seq: int) -> None:
        """The shop's changes after ``seq`` were undone: its watchers must re-read."""
        ...


def discard(events: list[t.Event]) -> None:
    """The default event sink: drops them."""


class _Staged:
    """One shard's changes on their way to its log: at most one batch in flight."""

    __slots__ = ("records", "events", "waiters", "in_flight")

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.events: list[t.Event] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.in_flight: tuple[list[t.Event], list[asyncio.Future[None]]] | None = None


class Node:
    """The dispatcher behind the servicers: stamped by a clock, every change durable before
    it is published or acknowledged, reads and watch heads that agree with that.

    ``open`` it (with a storage, or None to keep state in memory) before serving."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        now_ms: Clock,
        events: EventSink = discard,
        undo: UndoSink | None = None,
        commit_delay: float = COMMIT_DELAY_S,
    ) -> None:
        self.dispatcher = dispatcher
        self.now = now_ms
        self.storage: Storage | None = None  # set by ``open``
        self._publish = events
        self._undo = undo
        count = len(dispatcher.shards)
        self._staged = [_Staged() for _ in range(count)]
        self._fenced = [False] * count  # being restored (or, without storage, broken)
        # cluster mode: the error a shard not owned here answers (it is fenced meanwhile),
        # and how a shard is restored (asynchronously, from its stream) instead of recover
        self._refusals: list[Unavailable | None] = [None] * count
        self.restorer: Callable[[int], None] | None = None
        self._append_each: AppendEach | None = None
        self.refused = 0  # calls answered with a refusal (metrics)
        self._dirty: dict[int, None] = {}  # shards with staged records, in order
        self._flushing = False  # a flush is scheduled (at once, or the hold's check)
        # The commit hold (see the module's docstring); cluster mode's appends are not held.
        self.commit_delay = commit_delay
        self.commit_quiet = commit_delay / 4  # a hold ends once no call came for this long
        self._holding: asyncio.TimerHandle | None = None  # the hold's next check
        self._hold_until = 0.0  # loop time the hold ends at, at the latest
        self._check_at = 0.0  # loop time its next check is due
        self._held = 0  # records staged while holding (the last check's count)
        self._seen = 0  # ...at the last check
        self._appended_at = float("-inf")  # loop time of the last append
        self._last_records = 0  # records the last append carried
        self.holds = 0  # appends that were held (metrics, tests)

    # ------------------------------------------------------------ start-up

    def open(self, storage: Storage | None) -> None:
        """Serve from ``storage``: load every shard's durable state (at start, before serving).

        Raises:
            StorageError, codec.FormatError: storage cannot be trusted as it is.
        """
        self.storage = storage
        if storage is None:
            return
        started = time.perf_counter()
        for i, shard in enumerate(recover_all(storage)):
            self.dispatcher.install(i, shard)
        replayed = sum(log_.position - log_.start for log_ in storage.logs)
        shops = sum(len(s.shops) for s in self.dispatcher.shards)
        log.info(
            "recovered %d shards, %d shops, up to %d journal records replayed, in %.2fs",
            len(self._staged), shops, replayed, time.perf_counter() - started,
        )  # fmt: skip

    def attach(self, storage: Any, restorer: Callable[[int], None]) -> None:
        """Cluster mode: append to ``storage`` (``storage/jetstream.py``) without reading it
        here, each shard's batch settling on its own (``append_each``: one future per
        batch); every shard refuses calls until ``serve`` installs it, and a failed one is
        handed to ``restorer`` (which calls ``serve`` or ``refuse`` when it knows)."""
        self.storage = storage
        self.restorer = restorer
        self._append_each = getattr(storage, "append_each", None)

    def serve(self, index: int, shard: Shard) -> None:
        """Cluster mode: shard ``index`` (as its stream holds it) is served here from now."""
        self.dispatcher.install(index, shard)
        self._refusals[index] = None
        self._fenced[index] = False

    def refuse(self, index: int, error: Unavailable) -> None:
        """Cluster mode: shard ``index`` answers ``error`` to every call from now (lost, or
        handed over); what is staged behind its batch in flight fails with it."""
        self._refusals[index] = error
        self._fenced[index] = True
        self._fail_staged(index, error)

    # ------------------------------------------------------------ the write path

    async def execute(self, command: t.AnyCommand) -> Any:
        """Apply one command and answer once it is durable.

        Raises:
            FenliuError: the core refused it (nothing changed), or Unavailable: it could
                not be made durable (undone) or its shard is being restored.
        """
        if type(command) is t.Tick and command.shard < 0:
            return await self._tick_all(command.at)
        result, durable = self._submit(command)
        if durable is not None:
            await durable
        return result

    async def execute_each(self, commands: Iterable[t.AnyCommand]) -> list[Any]:
        """Apply commands one by one; each item's result or the exception it raised."""
        if self.storage is None:
            return self._apply_each(list(commands))
        results: list[Any] = []
        waits: list[tuple[int, asyncio.Future[None]]] = []
        mine: dict[int, asyncio.Future[None]] = {}  # one waiter a shard (``_stage``)
        for command in commands:
            try:
                result, durable = self._submit(command, mine)
            except Exception as exc:
                results.append(exc)
                continue
            if durable is not None:
                waits.append((len(results), durable))
            results.append(result)
        if waits:
            futures = list(dict.fromkeys(f for _, f in waits))
            outcomes = await asyncio.gather(*futures, return_exceptions=True)
            failed = {
                f: outcome
                for f, outcome in zip(futures, outcomes, strict=True)
                if isinstance(outcome, Exception)
            }
            if failed:
                for i, future in waits:
                    if future in failed:
                        results[i] = failed[future]
        return results

    def _apply_each(self, commands: list[t.AnyCommand]) -> list[Any]:
        """``execute_each`` without storage: the dispatcher's compiled loop applies the
        commands (``Dispatcher.apply_each``), this one takes the few it stops at (a fenced
        shard's, answered by ``submit``; a failed one's, its shard fenced), and the events
        are published in command order."""
        results: list[Any] = []
        events: list[t.Event] = []
        apply_each = self.dispatcher.apply_each
        count = len(commands)
        i = apply_each(commands, 0, self._fenced, results, events)
        while i < count:
            command = commands[i]
            if len(results) > i:  # it failed half-way in the core
                index = self.dispatcher.index_for(command)
                self._failed(index, self.dispatcher.shards[index])
            else:  # its shard is fenced: submit raises the refusal
                if events:  # the ones before it first
                    self._deliver(events)
                    events = []
                try:
                    results.append(self._submit(command)[0])
                except Exception as exc:  # noqa: BLE001 - the item's answer
                    results.append(exc)
            i = apply_each(commands, i + 1, self._fenced, results, events)
        if events:
            self._deliver(events)
        return results

    def submit(
        self, command: t.AnyCommand, mine: dict[int, asyncio.Future[None]] | None = None
    ) -> tuple[Any, asyncio.Future[None] | None]:
        """``execute`` without the wait, for callers that pipeline (Route, RouteStream):
        apply ``command`` and stage its record and events; the result now, and the future
        its caller must await before answering (None: durable already, without storage,
        its events published at once). Not for a Tick of every shard. ``mine``: the
        waiters one caller already holds, a shard's each (``_stage``).

        Raises:
            FenliuError: the core refused it (nothing changed); Unavailable: its shard is
                being restored.
        """
        # Every Route runs this: the fenced check, the apply and the publish written out
        # (``_shard``, ``_failed`` and ``_deliver`` are their slow paths), no frame of a
        # wrapper either: three interpreted frames fewer a command.
        index = self.dispatcher.index_for(command)
        shard = self._shard(index) if self._fenced[index] else self.dispatcher.shards[index]
        try:
            result = shard.apply(command)
        except FenliuError:
            raise
        except Exception:
            self._failed(index, shard)
            raise
        events = shard.outbox
        if events:
            shard.outbox = []
        if self.storage is None:
            if events:
                try:
                    self._publish(events)
                except Exception:  # the change has happened: its caller still gets its answer
                    log.exception("the event sink failed; %d events dropped", len(events))
            return result, None
        return result, self._stage(index, codec.encode_command(command), events, mine)

    _submit = submit  # the internal name (execute, execute_each); one frame, not two

    def submit_route(
        self, fields: tuple[Any, ...], at: int
    ) -> tuple[Any, asyncio.Future[None] | None]:
        """``submit`` of a Route given as its fields at ``at`` (``Shard.apply_route``), as
        the wire codec reads a unary Route. Without storage the core takes the tuple as
        it is: no Route made only to be taken apart again (a unary Route's core call runs
        cold, so every line it need not touch counts). With storage the Route is made: its
        record is the command's."""
        if self.storage is not None:
            return self._submit(t.Route(*fields, at=at))
        index = self.dispatcher.index_of(fields[0])
        shard = self._shard(index) if self._fenced[index] else self.dispatcher.shards[index]
        try:  # as in submit
            result = shard.apply_route(fields, at)
        except FenliuError:
            raise
        except Exception:
            self._failed(index, shard)
            raise
        events = shard.outbox
        if events:
            shard.outbox = []
            self._deliver(events)
        return result, None

    async def _tick_all(self, at: int) -> t.Moved:
        """A Tick of every shard (``shard`` -1: tests and tools), one command per shard."""
        results = await self.execute_each(
            [t.Tick(at=at, shard=i) for i in range(len(self._staged))]
        )
        for result in results:
            if isinstance(result, Exception):
                raise result
        return t.Moved(moved=tuple(d for result in results for d in result.moved))

    def read(self, query: t.AnyQuery) -> Any:
        return self._shard(self.dispatcher.index_of(query.shop_id)).read(query)

    def watch_head(self, shop_id: str) -> int:
        """The seq of the shop's latest published event: a watcher starts after it.

        Raises:
            NotFound: no such shop. Unavailable: its shard is being restored.
        """
        index = self.dispatcher.index_of(shop_id)
        shop = self._shard(index).shop(shop_id)
        staged = self._staged[index]
        unpublished = staged.events + (staged.in_flight[0] if staged.in_flight else [])
        return shop.event_seq - sum(1 for e in unpublished if e.shop_id == shop_id)

    def due_ticks(self) -> list[t.Tick]:
        """One Tick for every shard with a timer due now (none is journaled otherwise)."""
        now = self.now()
        return [t.Tick(at=now, shard=i) for i in self.dispatcher.due(now) if not self._fenced[i]]

    def idle(self, index: int) -> bool:
        """Nothing of shard ``index`` is on its way to the log (a snapshot may be taken)."""
        staged = self._staged[index]
        return not staged.records and staged.in_flight is None

    def staged(self, index: int) -> bool:
        """Changes of shard ``index`` are applied but not yet sent to storage (behind its
        batch in flight, or about to be flushed): a refusal now drops them."""
        return bool(self._staged[index].records)

    def fenced(self, index: int) -> bool:
        """Shard ``index`` refuses every call until it is restored from storage."""
        return self._fenced[index]

    def retry_restores(self) -> None:
        """Try again to restore the shards a failing disk kept from being restored."""
        if self.storage is not None:
            refused = self._refusals
            for index in [i for i, f in enumerate(self._fenced) if f and refused[i] is None]:
                self._restore(index)

    # ------------------------------------------------------------ internals

    def _shard(self, index: int) -> Shard:
        if self._fenced[index]:
            refusal = self._refusals[index]
            if refusal is not None:
                self.refused += 1
                raise refusal.with_traceback(None)  # one error raised again and again
            raise Unavailable(f"shard {index} is being restored after a storage failure; retry", "")
        return self.dispatcher.shards[index]

    def _failed(self, index: int, shard: Shard) -> None:
        """A command raised an unexpected exception (a bug) half-way, being handled now:
        the shard is fenced and restored; its caller re-raises it (INTERNAL)."""
        shard.outbox.clear()
        log.exception("shard %d: a command failed half-way; restoring the shard", index)
        self._fenced[index] = True
        if self.storage is not None:
            self._fail_staged(index, Unavailable("an earlier change was undone; retry", ""))
            self._restore(index)
        else:
            log.critical("shard %d: no storage to restore it from: it stays fenced", index)

    def _stage(
        self,
        index: int,
        record: bytes,
        events: list[t.Event],
        mine: dict[int, asyncio.Future[None]] | None = None,
    ) -> asyncio.Future[None]:
        """Stage a record and its events; the future that settles with them.

        With ``mine`` (one caller's, as ``execute_each``'s) the caller's pending waiter on
        this shard serves again: it is among the shard's staged waiters (nothing is flushed
        while a caller stages; once failed, it is done), so it settles with this record's
        batch. Never shared between callers: cancelling one caller's await cancels it."""
        staged = self._staged[index]
        loop = asyncio.get_running_loop()
        waiter = mine.get(index) if mine is not None else None
        if waiter is None or waiter.done():
            waiter = loop.create_future()
            staged.waiters.append(waiter)
            if mine is not None:
                mine[index] = waiter
        staged.records.append(record)
        if events:
            staged.events.extend(events)
        self._dirty[index] = None
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush)  # the calls ready now join this batch
        elif self._holding is not None:
            self._held += 1
            if self._held >= ENOUGH:  # enough for one fsync: no need to wait for more
                self._holding.cancel()
                self._holding = None
                loop.call_soon(self._flush)
        return waiter

    def _flush(self, may_hold: bool = True) -> None:
        """Every shard's staged batch that has none in flight, in one append of them all
        (unless the commit hold says to wait for more calls first)."""
        self._flushing = False
        if self._holding is not None:  # a settled batch flushes before the hold's check
            self._holding.cancel()
            self._holding = None
        assert self.storage is not None
        if may_hold and self.commit_delay > 0 and self._append_each is None and self._hold():
            return
        batches: list[tuple[int, list[bytes]]] = []
        for index in list(self._dirty):
            staged = self._staged[index]
            if staged.in_flight is not None:
                continue  # one batch in flight per shard: its settling flushes this one
            del self._dirty[index]
            if not staged.records or self._fenced[index]:
                continue
            batches.append((index, staged.records))
            staged.in_flight = (staged.events, staged.waiters)
            staged.records, staged.events, staged.waiters = [], [], []
        if not batches:
            return
        self._appended_at = asyncio.get_running_loop().time()
        self._last_records = sum(len(records) for _, records in batches)
        if self._append_each is not None:  # cluster mode: each shard settles on its own
            self._flush_each(batches)
            return
        try:
            appended = self.storage.append(batches)
        except Exception as exc:  # noqa: BLE001 - as a failed append
            appended = asyncio.get_running_loop().create_future()
            appended.set_exception(exc)
        indexes = [index for index, _ in batches]
        appended.add_done_callback(lambda done: self._settled(indexes, done))

    def _hold(self) -> bool:
        """Whether the append waits (a check is then scheduled): see ``hold``."""
        staged = self._staged
        ready = sum(len(staged[i].records) for i in self._dirty if staged[i].in_flight is None)
        if not ready:  # every dirty shard has a batch in flight: its settling flushes
            return False
        loop = asyncio.get_running_loop()
        now = loop.time()
        wait = hold(now - self._appended_at, ready, self._last_records, self.commit_delay)
        if wait <= 0:
            return False
        self.holds += 1
        self._hold_until = now + wait
        self._held = self._seen = ready
        self._flushing = True
        self._check_after(loop, min(wait, self.commit_quiet))
        return True

    def _check_after(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self._check_at = loop.time() + delay
        self._holding = loop.call_later(delay, self._check_hold)

    def _check_hold(self) -> None:
        """The hold's check: append now if its time is up, or if the loop was idle since
        the last check (this check ran on time) and no call arrived meanwhile: nothing more
        is coming (the callers about all wait on this batch). Else check again
        ``commit_quiet`` (a quarter of the delay) later. A check that ran late found a
        busy loop (or a process off the CPU: calls may be waiting to be read), not quiet."""
        self._holding = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        left = self._hold_until - now
        late = now - self._check_at > self.commit_quiet / 2
        if left > 1e-4 and (self._held > self._seen or late):
            self._seen = self._held
            self._check_after(loop, min(left, self.commit_quiet))
            return
        self._flush(may_hold=False)

    def _flush_each(self, batches: list[tuple[int, list[bytes]]]) -> None:
        """One future per shard's batch (a stream per shard: one stream's leader election
        must not hold the other shards' callers)."""
        assert self._append_each is not None
        try:
            futures = self._append_each(batches)
        except Exception as exc:  # noqa: BLE001 - as a failed append of them all
            failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            futures = [failed] * len(batches)
        for (index, _), future in zip(batches, futures, strict=True):
            future.add_done_callback(functools.partial(self._settled_one, index))

    def _settled_one(self, index: int, done: asyncio.Future[None]) -> None:
        self._settled([index], done)

    def _settled(self, indexes: list[int], done: asyncio.Future[None]) -> None:
        error = done.exception() if not done.cancelled() else OSError("cancelled")
        for index in indexes:
            staged = self._staged[index]
            assert staged.in_flight is not None
            (events, waiters), staged.in_flight = staged.in_flight, None
            if error is None:
                if events:
                    self._deliver(events)
                for waiter in waiters:
                    if not waiter.done():  # a cancelled call: durable all the same
                        waiter.set_result(None)
                if self._fenced[index]:
                    self._restore(index)  # a bug was waiting for this batch to settle
                continue
            reason = getattr(error, "strerror", None) or str(error)
            unavailable = Unavailable(f"the change could not be made durable ({reason}); retry", "")
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(unavailable)
            self._fenced[index] = True
            self._fail_staged(index, unavailable)
            self._restore(index)
        if self._dirty:
            self._flush()

    def _deliver(self, events: list[t.Event]) -> None:
        try:
            self._publish(events)
        except Exception:  # the change has happened: its callers still get their answers
            log.exception("the event sink failed; %d events dropped", len(events))

    def _fail_staged(self, index: int, error: Unavailable) -> None:
        """Drop what is staged behind (it built on what is being undone)."""
        staged = self._staged[index]
        waiters, staged.waiters = staged.waiters, []
        staged.records, staged.events = [], []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)

    def _restore(self, index: int) -> None:
        """Put shard ``index`` back to its durable state, once its batch in flight settled."""
        staged = self._staged[index]
        if staged.in_flight is not None or self.storage is None:
            return  # ``_settled`` calls again
        if self.restorer is not None:
            if self._refusals[index] is None:
                self.restorer(index)  # cluster mode: read back from the stream, if still ours
            return
        try:
            shard = recover(index, self.storage.logs[index], self.storage.snapshots[index])
        except Exception as exc:  # noqa: BLE001 - still failing: stay fenced, retry later
            log.error("shard %d: cannot be restored from storage yet: %s", index, exc)
            return
        old = self.dispatcher.shards[index]
        self.dispatcher.install(index, shard)
        self._fenced[index] = False
        log.warning("shard %d: restored to its durable state", index)
        if self._undo is not None:
            for shop_id in old.shops:
                shop = shard.shops.get(shop_id)
                self._undo.undone(shop_id, shop.event_seq if shop is not None else 0)


def hold(since_append: float, staged: int, last_append: int, delay: float) -> float:
    """How long an append of ``staged`` records waits for more calls, at most (0: go now):
    the rest of ``delay`` since the last append began (``since_append`` s ago), if several
    callers are about (``SIBLINGS`` or more records staged now, or carried by the last
    append, ``last_append``) and fewer than ``ENOUGH`` records are staged. A lone caller's
    change (one record now, at most one in the last append) never waits."""
    if delay <= 0 or staged >= ENOUGH or max(staged, last_append) < SIBLINGS:
        return 0.0
    return max(0.0, delay - since_append)

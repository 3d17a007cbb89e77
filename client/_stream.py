"""``RouteStream``: many Routes over one bidirectional stream (``AsyncClient.route_stream``).

An IM gateway routes each buyer message as it arrives and wants its decision back, fast and
cheap: ``await stream.route(shop_id, buyer_id)`` from as many tasks as there are messages
in flight. Each request is written to the stream (in the order of the calls) and its future
resolved by the answer in the same position, so the calls pipeline over one stream and a
server CPU-second makes several times the decisions of unary ``route``.

The server reads a bounded window ahead of the answers its caller has not read; grpc's
flow control then holds the writes back (``send`` waits), so neither side's memory grows.

Failures: an item's error is raised by its ``route`` (or set in its ``RouteResult``), and
the stream goes on. If the stream itself breaks (the server restarts, say), the calls
waiting on it fail with that error (``Unavailable``) and the next call opens a new stream;
every item has a request id, so the caller may resend it and get the original decision.
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from ._errors import DeadlineExceeded, FenliuError, Unavailable, from_rpc_error
from ._pb import fenliu_pb2 as pb
from ._types import Decision, RouteItem, RouteResult, strings

if TYPE_CHECKING:
    from ._cluster import Router


def new_id() -> str:
    import uuid

    return uuid.uuid4().hex


MAX_PER_MESSAGE = 1000
"""Requests in one coalesced message (the server's limit, as RouteBatch's)."""
MAX_UNSENT = 1000
"""Requests queued but not written: with this many ``send`` waits (the server holds the
stream back, or the connection is slow), so a caller cannot grow the queue unbounded."""
MESSAGES_IN_FLIGHT = 2
"""Coalescing, messages written and not wholly answered: with this many the writer waits
for an answer before it writes again, and what is queued meanwhile goes in one message.
The server reads and answers a message at a time (~80 µs of its CPU a message, ~10 a
request), so writing each request as it comes, one a message at 30,000/s, queued
messages behind its reads for hundreds of ms (bench/README.md, "RouteStream p99");
waiting for an answer lets a message carry what came during a round trip. Two, not one:
the server reads the next message while its answer to the last is on its way. A lone
request on an idle stream still goes at once."""
COALESCE_KEY = "fenliu-coalesce"
"""A server that coalesces says so in RouteStream's initial metadata."""


class _Call:
    """One RouteStream call: its requests not written yet (``outbox``), the futures of
    every request not answered yet, in order (``pending``: the unwritten ones last), and
    its writer and reader tasks."""

    __slots__ = ("call", "pending", "outbox", "coalesce", "ended", "writer", "reader", "wakes",
                 "ends", "written")  # fmt: skip

    def __init__(self, call: Any) -> None:
        self.call = call
        self.pending: collections.deque[asyncio.Future[RouteResult]] = collections.deque()
        self.outbox: list[pb.RouteRequest] = []
        self.coalesce = False  # the server said it coalesces: write several a message
        self.ended = False  # the reader is done: nothing more is written or answered
        self.writer: asyncio.Task[None] | None = None
        self.reader: asyncio.Task[None] | None = None
        # wakes[0]: the writer's future while the outbox is empty; wakes[1]: the future
        # senders wait on while the outbox is full.
        self.wakes: list[asyncio.Future[None] | None] = [None, None]
        # how many requests were written, and that count at the end of each message not
        # wholly answered yet (coalescing, at most MESSAGES_IN_FLIGHT)
        self.written = 0
        self.ends: collections.deque[int] = collections.deque()

    def wake(self, which: int) -> None:
        waiter = self.wakes[which]
        if waiter is not None:
            self.wakes[which] = None
            if not waiter.done():
                waiter.set_result(None)


class RouteStream:
    """One RouteStream call, opened at the first request; ``async with`` it, or ``close``.

    ``send(item)`` queues one request and returns the future of its ``RouteResult``;
    ``route(...)`` (``AsyncClient.route``'s parameters) sends one and returns its
    ``Decision``, raising its error. Use it from one event loop (the client's).

    Coalescing: one writer task writes, in one message, every request queued at the moment
    it writes (a lone request goes at once: it never waits to fill a message), and the
    server answers, in one reply, every answer ready at once; with ``MESSAGES_IN_FLIGHT``
    messages unanswered the writer waits for an answer, so under load a message carries
    what came during a round trip rather than the server reading one a request. With a
    server that does not say it coalesces (``COALESCE_KEY``), one request a message. Server
    CPU per decision then falls with the requests in flight (bench/README.md).
    """

    def __init__(self, open_call: Callable[[], Any], timeout: float) -> None:
        self._open_call = open_call
        self.timeout = timeout
        self._live: _Call | None = None
        self._closed = False
        self.messages_sent = 0  # messages written, and the requests in them (tests, bench)
        self.requests_sent = 0

    async def __aenter__(self) -> RouteStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def send(self, item: RouteItem | pb.RouteRequest) -> asyncio.Future[RouteResult]:
        """Queue one request (waiting while ``MAX_UNSENT`` are queued unwritten: the server
        holds the stream back); the future of its result. Items without a request id get
        one. If the stream breaks, the futures of its unanswered requests fail with the
        stream's error (``Unavailable``, say), and the next ``send`` opens a new stream.

        Raises:
            RuntimeError: the stream is closed.
        """
        if isinstance(item, RouteItem):
            request = item.to_pb()
        elif isinstance(item, pb.RouteRequest):
            request = pb.RouteRequest()
            request.CopyFrom(item)
        else:
            raise TypeError(f"item must be a RouteItem (got {type(item).__name__})")
        if not request.request_id:
            request.request_id = new_id()
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise RuntimeError("this RouteStream is closed")
            live = self._live if self._live is not None else self._start()
            if len(live.outbox) < MAX_UNSENT:
                break
            waiter = live.wakes[1]
            if waiter is None:
                waiter = live.wakes[1] = loop.create_future()
            await asyncio.shield(waiter)  # one future for every sender waiting
        future: asyncio.Future[RouteResult] = loop.create_future()
        live.pending.append(future)
        live.outbox.append(request)
        if not (live.coalesce and len(live.ends) >= MESSAGES_IN_FLIGHT):
            live.wake(0)  # else the writer waits for an answer, not for this request
        return future

    async def route(
        self,
        shop_id: str,
        buyer_id: str,
        *,
        request_id: str = "",
        addressed_agent_id: str = "",
        crowds: Iterable[str] = (),
        group: str = "",
        channel: str = "",
        from_team_member: bool = False,
        timeout: float | None = None,
    ) -> Decision:
        """Route one buyer message over the stream; its decision, or its error raised
        (``DeadlineExceeded`` if no answer within ``timeout``, default the client's)."""
        item = RouteItem(
            shop_id=shop_id, buyer_id=buyer_id, request_id=request_id or new_id(),
            addressed_agent_id=addressed_agent_id, crowds=tuple(strings(crowds, "crowds")),
            group=group, channel=channel, from_team_member=from_team_member,
        )  # fmt: skip
        future = await self.send(item)
        try:
            result = await asyncio.wait_for(asyncio.shield(future), timeout or self.timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                grpc.StatusCode.DEADLINE_EXCEEDED, "no answer on the stream in time"
            ) from None
        if result.error is not None:
            raise result.error
        assert result.decision is not None
        return result.decision

    async def close(self) -> None:
        """Stop sending, write what is queued, wait for the answers still due, end the
        stream."""
        self._closed = True
        live = self._live
        if live is not None:
            live.wake(0)  # the writer sees the stream closed once its outbox is empty
            live.wake(1)
            for task in (live.writer, live.reader):
                if task is not None:
                    await task

    def _start(self) -> _Call:
        live = self._live = _Call(self._open_call())
        loop = asyncio.get_running_loop()
        live.reader = loop.create_task(self._read(live))
        live.writer = loop.create_task(self._write(live))
        return live

    async def _write(self, live: _Call) -> None:
        """Write what ``send`` queued, as it comes: everything queued at once in one
        message (once the server said it coalesces), until the stream is closed."""
        call, outbox, wakes, ends = live.call, live.outbox, live.wakes, live.ends
        loop = asyncio.get_running_loop()
        try:
            while not live.ended:
                if not outbox or (live.coalesce and len(ends) >= MESSAGES_IN_FLIGHT):
                    if self._closed and not outbox:
                        await call.done_writing()
                        return
                    waiter = wakes[0] = loop.create_future()
                    await waiter  # a request queued, or (coalescing) a message answered
                    continue
                count = min(len(outbox), MAX_PER_MESSAGE) if live.coalesce else 1
                message = pb.RouteStreamRequest(request=outbox[0], coalesce=True)
                if count > 1:
                    message.more.extend(outbox[1:count])
                del outbox[:count]
                live.written += count  # every message, so the answers' count matches
                ends.append(live.written)
                live.wake(1)
                await call.write(message)
                self.messages_sent += 1
                self.requests_sent += count
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the stream broke: its reader fails every pending future with its status

    async def _read(self, live: _Call) -> None:
        call, pending = live.call, live.pending
        error: FenliuError = Unavailable(
            grpc.StatusCode.UNAVAILABLE, "the stream ended before answering"
        )
        from_pb = RouteResult.from_pb
        try:
            metadata = await call.initial_metadata()
            live.coalesce = any(key == COALESCE_KEY for key, _ in metadata or ())
            ends, answered = live.ends, 0
            while True:
                reply = await call.read()
                if reply is grpc.aio.EOF:  # type: ignore[attr-defined]
                    break
                for result in (reply.result, *reply.more) if reply.more else (reply.result,):
                    future = pending.popleft()
                    if not future.done():
                        future.set_result(from_pb(result))
                answered += 1 + len(reply.more)
                if ends and ends[0] <= answered:
                    while ends and ends[0] <= answered:
                        ends.popleft()
                    if live.coalesce:
                        live.wake(0)  # room for a message: the writer writes what is queued
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc)
        except asyncio.CancelledError:
            error = Unavailable(grpc.StatusCode.CANCELLED, "the stream was cancelled")
            raise
        finally:
            live.ended = True
            if self._live is live:
                self._live = None  # the next send opens a new stream
            live.outbox.clear()
            live.wake(0)
            live.wake(1)
            while pending:
                future = pending.popleft()
                if not future.done():
                    future.set_exception(error)


class ClusterRouteStream:
    """``RouteStream`` in cluster mode: one stream per owner, each item written to the
    stream of its shop's owner (``AsyncClient.route_stream``, the same methods).

    An item a node refuses (NOT_OWNER: it does not own the shop, or no longer) or cannot
    make durable (UNAVAILABLE), or that was on a stream that broke, is sent again, with its
    request id, to the owner the refusal names or the cluster map says, until its timeout:
    a planned hand-off or a failover is not seen by the caller.
    """

    def __init__(
        self, router: Callable[[], Router], open_call: Callable[[str | None], Any], timeout: float
    ) -> None:
        self._router_of = router
        self._open_call = open_call
        self.timeout = timeout
        self._streams: dict[str, RouteStream] = {}
        self._following: set[asyncio.Task[None]] = set()
        self._closed = False
        self.resent = 0  # items sent again (tests and the benchmarks)

    async def __aenter__(self) -> ClusterRouteStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def _router(self) -> Router:
        return self._router_of()

    def _stream(self, address: str) -> RouteStream:
        stream = self._streams.get(address)
        if stream is None:
            stream = self._streams[address] = RouteStream(
                lambda: self._open_call(address), self.timeout
            )
        return stream

    async def send(self, item: RouteItem | pb.RouteRequest) -> asyncio.Future[RouteResult]:
        """``RouteStream.send``: written to the owner's stream; the future of its result."""
        if self._closed:
            raise RuntimeError("this RouteStream is closed")
        if isinstance(item, RouteItem):
            request = item.to_pb()
        elif isinstance(item, pb.RouteRequest):
            request = pb.RouteRequest()
            request.CopyFrom(item)
        else:
            raise TypeError(f"item must be a RouteItem (got {type(item).__name__})")
        if not request.request_id:
            request.request_id = new_id()
        await self._router.ready()
        loop = asyncio.get_running_loop()
        address = self._router.address(request.shop_id)
        first: asyncio.Future[RouteResult] | FenliuError
        try:
            first = await self._stream(address).send(request)
        except FenliuError as exc:
            first = exc
        outer: asyncio.Future[RouteResult] = loop.create_future()
        task = loop.create_task(self._follow(request, address, first, outer))
        self._following.add(task)
        task.add_done_callback(self._following.discard)
        return outer

    async def _follow(
        self,
        request: pb.RouteRequest,
        address: str,
        sent: asyncio.Future[RouteResult] | FenliuError,
        outer: asyncio.Future[RouteResult],
    ) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.timeout
        attempt = 0
        while True:
            broken = isinstance(sent, FenliuError)
            if isinstance(sent, FenliuError):
                error: FenliuError | None = sent
                result = RouteResult(decision=None, error=sent)
            else:
                try:
                    left = max(0.0, give_up - loop.time())
                    result = await asyncio.wait_for(asyncio.shield(sent), left)
                    error = result.error
                except TimeoutError:
                    error = DeadlineExceeded(
                        grpc.StatusCode.DEADLINE_EXCEEDED, "no answer on the stream in time"
                    )
                    result = RouteResult(decision=None, error=error)
                except FenliuError as exc:  # the stream broke under it
                    error, broken = exc, True
                    result = RouteResult(decision=None, error=exc)
            retry = isinstance(error, Unavailable) and not self._closed
            if not retry or loop.time() >= give_up:
                if not outer.done():
                    if broken and error is not None:
                        outer.set_exception(error)
                    else:
                        outer.set_result(result)
                return
            assert error is not None
            attempt += 1
            moved = self._router.learn(error)
            if not moved:
                pause = min(0.05 * 2 ** (attempt - 1), 0.5) * (0.5 + random.random())
                await asyncio.sleep(min(pause, max(0.0, give_up - loop.time())))
                await self._router.refresh(avoid=address)
            address = self._router.address(request.shop_id)
            self.resent += 1
            try:
                sent = await self._stream(address).send(request)
            except (FenliuError, RuntimeError) as exc:
                sent = exc if isinstance(exc, FenliuError) else Unavailable(
                    grpc.StatusCode.UNAVAILABLE, str(exc))  # fmt: skip

    async def route(self, shop_id: str, buyer_id: str, **kwargs: Any) -> Decision:
        """``RouteStream.route``: the decision, or its error raised."""
        timeout = kwargs.pop("timeout", None)
        item = RouteItem(
            shop_id=shop_id, buyer_id=buyer_id, request_id=kwargs.pop("request_id", "") or new_id(),
            crowds=tuple(strings(kwargs.pop("crowds", ()), "crowds")), **kwargs,
        )  # fmt: skip
        future = await self.send(item)
        try:
            result = await asyncio.wait_for(asyncio.shield(future), (timeout or self.timeout) + 1)
        except TimeoutError:
            raise DeadlineExceeded(
                grpc.StatusCode.DEADLINE_EXCEEDED, "no answer on the stream in time"
            ) from None
        if result.error is not None:
            raise result.error
        assert result.decision is not None
        return result.decision

    async def close(self) -> None:
        """Wait for the answers still due (and their resends), end every stream."""
        if self._following:
            await asyncio.gather(*list(self._following), return_exceptions=True)
        self._closed = True
        for stream in list(self._streams.values()):
            await stream.close()

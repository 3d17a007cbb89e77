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
import contextlib
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


class RouteStream:
    """One RouteStream call, opened at the first request; ``async with`` it, or ``close``.

    ``send(item)`` writes one request and returns the future of its ``RouteResult``;
    ``route(...)`` (``AsyncClient.route``'s parameters) sends one and returns its
    ``Decision``, raising its error. Use it from one event loop (the client's).
    """

    def __init__(self, open_call: Callable[[], Any], timeout: float) -> None:
        self._open_call = open_call
        self.timeout = timeout
        self._call: Any = None
        self._pending: collections.deque[asyncio.Future[RouteResult]] = collections.deque()
        self._reader: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()
        self._closed = False

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
        """Write one request (waiting while the server holds the stream back); the future
        of its result. Items without a request id get one.

        Raises:
            RuntimeError: the stream is closed. Unavailable: the stream broke.
        """
        request = pb.RouteStreamRequest()
        if isinstance(item, RouteItem):
            request.request.CopyFrom(item.to_pb())
        elif isinstance(item, pb.RouteRequest):
            request.request.CopyFrom(item)
        else:
            raise TypeError(f"item must be a RouteItem (got {type(item).__name__})")
        if not request.request.request_id:
            request.request.request_id = new_id()
        async with self._writing:
            if self._closed:
                raise RuntimeError("this RouteStream is closed")
            call = self._call if self._call is not None else self._start()
            future: asyncio.Future[RouteResult] = asyncio.get_running_loop().create_future()
            self._pending.append(future)
            try:
                await call.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                raise await self._write_failed(future, exc) from None
        return future

    async def _write_failed(
        self, future: asyncio.Future[RouteResult], exc: BaseException
    ) -> FenliuError:
        """Why a write failed: the stream's own status, as its reader gets it (a write on
        a call that just failed may say INTERNAL "Internal error from Core" instead)."""
        reader = self._reader
        if reader is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(reader), self.timeout)
        if future.done() and not future.cancelled():
            error = future.exception()
            if isinstance(error, FenliuError):
                return error
        if isinstance(exc, grpc.aio.AioRpcError):
            return from_rpc_error(exc)
        return Unavailable(grpc.StatusCode.UNAVAILABLE, "the stream ended")

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
        """Stop sending, wait for the answers still due, end the stream."""
        async with self._writing:
            self._closed = True
            call, reader = self._call, self._reader
            if call is not None:
                try:
                    await call.done_writing()
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    pass
        if reader is not None:
            await reader

    def _start(self) -> Any:
        call = self._call = self._open_call()
        self._reader = asyncio.get_running_loop().create_task(self._read(call))
        return call

    async def _read(self, call: Any) -> None:
        pending = self._pending
        error: FenliuError = Unavailable(
            grpc.StatusCode.UNAVAILABLE, "the stream ended before answering"
        )
        try:
            while True:
                reply = await call.read()
                if reply is grpc.aio.EOF:  # type: ignore[attr-defined]
                    break
                future = pending.popleft()
                if not future.done():
                    future.set_result(RouteResult.from_pb(reply.result))
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc)
        except asyncio.CancelledError:
            error = Unavailable(grpc.StatusCode.CANCELLED, "the stream was cancelled")
            raise
        finally:
            if self._call is call:
                self._call = None  # the next send opens a new stream
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

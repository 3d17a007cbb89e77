"""The Presence, Routing and Queue servicers: convert, call the node, convert back.

Every method runs on the event loop, so the core sees one command at a time; the node
(``server/node.py``) answers once the change is durable.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc.aio

from fenliu.client._pb import fenliu_pb2 as pb, fenliu_pb2_grpc as pb_grpc

from ..core import compiled
from ..core.errors import InvalidArgument
from ..core.types import Refused
from ..core.validate import MAX_BATCH, check_batch
from ..node import Node
from . import convert, wire
from .decode import Malformed
from .status import abort, abort_on_error, error_message

log = logging.getLogger(__name__)

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

STREAM_WINDOW = 128
"""RouteStream: requests (not messages) read ahead of the answers sent. With this many
answers unsent (their changes not durable yet, or the caller not reading them) the stream
stops reading until one is sent, so what a stream holds in the server is bounded: at most
``STREAM_WINDOW - 1 + MAX_BATCH`` answers (a coalesced message's requests are read
together), and grpc's own flow control then holds the caller's writes back."""
_END = object()
COALESCE_KEY = "fenliu-coalesce"
"""RouteStream's initial metadata: this server answers every request of a coalesced
message and coalesces answers for a caller that asks (``coalesce``)."""
COALESCES = ((COALESCE_KEY, "1"),)


async def _change(node: Node, command: Any) -> Any:
    """A change's result once durable; a keyed command's remembered refusal (``Refused``,
    journaled like any change) is raised as its error."""
    result = await node.execute(command)
    if type(result) is Refused:
        raise result.exception()
    return result


class PresenceService(pb_grpc.PresenceServicer):
    """Shops' policies, agents and their status, private contacts."""

    def __init__(self, node: Node) -> None:
        self._node = node

    async def SetShopPolicy(
        self, request: pb.SetShopPolicyRequest, context: Context
    ) -> pb.ShopPolicy:
        async with abort_on_error(context):
            command = convert.set_policy(request, self._node.now())
            return convert.shop_policy(await _change(self._node, command))

    async def GetShopPolicy(
        self, request: pb.GetShopPolicyRequest, context: Context
    ) -> pb.ShopPolicy:
        async with abort_on_error(context):
            return convert.shop_policy(
                self._node.read(convert.get_policy(request, self._node.now()))
            )

    async def RegisterAgent(self, request: pb.RegisterAgentRequest, context: Context) -> pb.Agent:
        async with abort_on_error(context):
            command = convert.register_agent(request, self._node.now())
            return convert.agent(await _change(self._node, command))

    async def UpdateAgent(self, request: pb.UpdateAgentRequest, context: Context) -> pb.Agent:
        async with abort_on_error(context):
            command = convert.update_agent(request, self._node.now())
            return convert.agent(await _change(self._node, command))

    async def RemoveAgent(
        self, request: pb.RemoveAgentRequest, context: Context
    ) -> pb.RemoveAgentReply:
        async with abort_on_error(context):
            command = convert.remove_agent(request, self._node.now())
            return convert.remove_reply(await _change(self._node, command))

    async def SetStatus(self, request: pb.SetStatusRequest, context: Context) -> pb.SetStatusReply:
        async with abort_on_error(context):
            command = convert.set_status(request, self._node.now())
            return convert.status_reply(await _change(self._node, command))

    async def ListTeam(self, request: pb.ListTeamRequest, context: Context) -> pb.ListTeamReply:
        async with abort_on_error(context):
            return convert.team(self._node.read(convert.list_team(request, self._node.now())))

    async def AddPrivateContact(
        self, request: pb.PrivateContactRequest, context: Context
    ) -> pb.Empty:
        async with abort_on_error(context):
            command = convert.add_private_contact(request, self._node.now())
            return convert.empty(await _change(self._node, command))

    async def RemovePrivateContact(
        self, request: pb.PrivateContactRequest, context: Context
    ) -> pb.Empty:
        async with abort_on_error(context):
            command = convert.remove_private_contact(request, self._node.now())
            return convert.empty(await _change(self._node, command))


class RoutingService(pb_grpc.RoutingServicer):
    """Route buyers' messages and act on sessions."""

    def __init__(self, node: Node) -> None:
        self._node = node

    async def Route(self, request: Any, context: Context) -> Any:
        """The hot path, written out: ``abort_on_error`` and ``Node.execute`` as plain
        code (no context manager's coroutines, no coroutine frame of execute's own), an
        await only when there is a change to wait for. The same errors, the same answer.

        With the wire codec compiled the request is its ``RouteFields``, whose tuple the
        core takes as it is (``Node.submit_route``), and the answer the core's Decision,
        which grpc serializes with ``wire.decision_reply``; otherwise upb's RouteRequest
        and Decision."""
        node = self._node
        try:
            if WIRE:
                result, durable = node.submit_route(request.fields, node.now())
            else:
                result, durable = node.submit(_route(request, node.now()))
            if durable is not None:
                await durable
            return _answer(result)
        except Exception as exc:  # noqa: BLE001 - as abort_on_error
            await abort(context, exc)
            raise  # unreachable: abort raises

    async def RouteBatch(self, request: Any, context: Context) -> Any:
        """Each request routed on its own: one item's error does not stop the others.

        With the wire codec compiled (``wire.py``) the request is its ``RouteItems`` and
        the answer its ``RouteResults``, which grpc serializes with ``wire_reply``;
        otherwise upb's RouteBatchRequest and RouteBatchReply."""
        async with abort_on_error(context):
            at = self._node.now()  # one arrival time for the whole batch
            results = await self._node.execute_each(_batch_routes(request, at))
            return _batch_reply(results)

    async def RouteStream(
        self, requests: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[pb.RouteStreamReply]:
        """Each request routed as it is read, answered in order once durable (see
        ``STREAM_WINDOW``); an item's error is its answer, the stream goes on.

        Coalescing (the proto's RouteStreamRequest): a message's requests (``request``,
        then ``more``) are routed in order with one arrival time, each answered as if sent
        alone; a caller that set ``coalesce`` gets every answer ready at once in one reply
        (``result``, then ``more``), never one held back to fill it. The server says it
        coalesces in its initial metadata (``COALESCE_KEY``), so an SDK coalesces only
        with a server that answers every request of a message.

        Two tasks, the reader (this call's ``read``) and the writer (this coroutine), share
        a deque of answers, one per request; a future is made only when one of them has to
        wait (the writer for an answer, the reader for room in the window), not per item.
        (Reading with ``context.read()`` and writing with ``context.write()`` instead of
        the request iterator and ``yield`` made a server stopping under a stream end it
        INTERNAL now and then, not UNAVAILABLE: tests/client/test_route_stream.py, 3 in 15
        under load.)"""
        node = self._node
        loop = asyncio.get_running_loop()
        answers: deque[Any] = deque()  # (result, durable) or _END; see STREAM_WINDOW
        # wakes[0]: the writer's future while it waits for an answer; wakes[1]: the reader's
        # while the window is full. Whoever makes the other's wait over sets it.
        wakes: list[asyncio.Future[None] | None] = [None, None]
        coalesce = [False]  # the caller reads replies with ``more``
        await context.send_initial_metadata(COALESCES)

        def wake(which: int) -> None:
            waiter = wakes[which]
            if waiter is not None:
                wakes[which] = None
                if not waiter.done():
                    waiter.set_result(None)

        async def read() -> None:
            route, submit, append = convert.route, node.submit, answers.append
            try:
                async for item in requests:  # a RouteStreamRequest, or Malformed
                    if item.__class__ is Malformed:
                        append((item.error(), None))
                    else:
                        if item.coalesce:
                            coalesce[0] = True
                        more = item.more
                        if not more:
                            try:
                                append(submit(route(item.request, node.now())))
                            except Exception as exc:  # noqa: BLE001 - the item's answer
                                append((exc, None))
                        else:
                            route_each(item.request, more, route, submit, append, node.now())
                    wake(0)
                    if len(answers) >= STREAM_WINDOW:  # full: read on once one is sent
                        waiter = wakes[1] = loop.create_future()
                        await waiter
            finally:
                answers.append(_END)  # never waits, so a cancelled read ends too
                wake(0)

        reader = loop.create_task(read())
        try:
            while True:
                if not answers:
                    waiter = wakes[0] = loop.create_future()
                    await waiter
                    continue
                answer = answers.popleft()
                if answer is _END:
                    break
                result, durable = answer
                if durable is not None:
                    try:
                        await durable
                    except Exception as exc:  # noqa: BLE001 - not durable: the item's error
                        result = exc
                if coalesce[0]:
                    yield coalesced_reply(result, answers)
                else:
                    yield stream_reply(result)
                if wakes[1] is not None and len(answers) < STREAM_WINDOW:
                    wake(1)
            await reader  # a failed read (the call cancelled, say) ends the stream with it
        finally:
            reader.cancel()

    RouteStream.accepts_malformed = True  # type: ignore[attr-defined]
    """Malformed items reach it (decode.py): each is answered with its error."""

    async def Acknowledge(self, request: pb.SessionRequest, context: Context) -> pb.Session:
        async with abort_on_error(context):
            command = convert.acknowledge(request, self._node.now())
            return convert.session(await _change(self._node, command))

    async def Reply(self, request: pb.SessionRequest, context: Context) -> pb.Session:
        async with abort_on_error(context):
            return convert.session(
                await _change(self._node, convert.reply(request, self._node.now()))
            )

    async def Transfer(self, request: pb.TransferRequest, context: Context) -> pb.Decision:
        async with abort_on_error(context):
            command = convert.transfer(request, self._node.now())
            return convert.decision(await _change(self._node, command))

    async def EndSessions(
        self, request: pb.EndSessionsRequest, context: Context
    ) -> pb.EndSessionsReply:
        async with abort_on_error(context):
            check_batch(len(request.session_ids), "session_ids")
            command = convert.end_sessions(request, self._node.now())
            return convert.end_reply(await _change(self._node, command))

    async def GetSession(self, request: pb.GetSessionRequest, context: Context) -> pb.Session:
        async with abort_on_error(context):
            query = convert.get_session(request, self._node.now())
            return convert.session(self._node.read(query))

    async def ListAgentSessions(
        self, request: pb.ListAgentSessionsRequest, context: Context
    ) -> pb.ListSessionsReply:
        async with abort_on_error(context):
            query = convert.list_agent_sessions(request, self._node.now())
            return convert.sessions(self._node.read(query))

    async def StarSession(self, request: pb.StarSessionRequest, context: Context) -> pb.Session:
        async with abort_on_error(context):
            command = convert.star_session(request, self._node.now())
            return convert.session(await _change(self._node, command))

    async def ListRecentContacts(
        self, request: pb.AgentListRequest, context: Context
    ) -> pb.ListRecentContactsReply:
        async with abort_on_error(context):
            query = convert.list_recent_contacts(request, self._node.now())
            return convert.recent_contacts(self._node.read(query))

    async def ListStarred(
        self, request: pb.AgentListRequest, context: Context
    ) -> pb.ListStarredReply:
        async with abort_on_error(context):
            query = convert.list_starred(request, self._node.now())
            return convert.starred(self._node.read(query))


class QueueService(pb_grpc.QueueServicer):
    """The shop queue and left messages."""

    def __init__(self, node: Node) -> None:
        self._node = node

    async def ListQueue(self, request: pb.ListQueueRequest, context: Context) -> pb.ListQueueReply:
        async with abort_on_error(context):
            return convert.queue(self._node.read(convert.list_queue(request, self._node.now())))

    async def GetPosition(self, request: pb.BuyerRequest, context: Context) -> pb.Session:
        async with abort_on_error(context):
            query = convert.get_position(request, self._node.now())
            return convert.session(self._node.read(query))

    async def Pick(self, request: pb.PickRequest, context: Context) -> pb.Decision:
        async with abort_on_error(context):
            return convert.decision(
                await _change(self._node, convert.pick(request, self._node.now()))
            )

    async def LeaveQueue(self, request: pb.BuyerRequest, context: Context) -> pb.Session:
        async with abort_on_error(context):
            command = convert.leave_queue(request, self._node.now())
            return convert.session(await _change(self._node, command))

    async def ListLeftMessages(
        self, request: pb.ListLeftMessagesRequest, context: Context
    ) -> pb.ListQueueReply:
        async with abort_on_error(context):
            query = convert.list_left_messages(request, self._node.now())
            return convert.queue(self._node.read(query))


class DiagnosticsService(pb_grpc.DiagnosticsServicer):
    """The transport floor: Echo does no work, so it costs what the stack costs."""

    async def Echo(self, request: pb.EchoMessage, context: Context) -> pb.EchoMessage:
        return request


def batch_routes(request: pb.RouteBatchRequest, at: int) -> list[Any]:
    """A RouteBatchRequest's items as Route commands arriving at ``at``."""
    check_batch(len(request.requests), "requests")
    route = convert.route
    return [route(item, at) for item in request.requests]


def route_batch_reply(results: list[Any]) -> pb.RouteBatchReply:
    """One result per item, a decision or the error it got, built in place (no copies)."""
    reply = pb.RouteBatchReply()
    add = reply.results.add
    for result in results:
        if isinstance(result, Exception):
            add(error=error_message(result))
            continue
        # convert.set_decision written out: one interpreted frame fewer a decision
        target = add().decision
        target.outcome = result.outcome
        target.reason = result.reason
        target.buyer_id = result.buyer_id
        if agent_id := result.agent_id:
            target.agent_id = agent_id
        if session_id := result.session_id:
            target.session_id = session_id
        if queue_position := result.queue_position:
            target.queue_position = queue_position
        if state := result.state:  # None: no session (UNSPECIFIED)
            target.state = state
        if result.priority_notice:
            target.priority_notice = True
        if notice := result.notice:
            target.notice = notice
    return reply


def route_each(
    first: pb.RouteRequest, more: Any, route: Any, submit: Any, append: Any, at: int
) -> None:
    """A coalesced message's requests, routed in order (one arrival time), each answer
    appended; over ``MAX_BATCH`` requests, every one answered INVALID_ARGUMENT naming
    ``more``, none routed (so the answers still match the requests one to one). With a
    journal, the message's requests of one shard share a waiter (``Node._stage``): they
    are staged together, so they settle with the same append."""
    count = 1 + len(more)
    if count > MAX_BATCH:
        error = InvalidArgument(
            f"a RouteStreamRequest carries at most {MAX_BATCH} requests (request and more); "
            f"this one carries {count}",
            "more",
        )
        for _ in range(count):
            append((error, None))
        return
    mine: dict[int, Any] = {}
    for request in (first, *more):
        try:
            append(submit(route(request, at), mine))
        except Exception as exc:  # noqa: BLE001 - the item's answer
            append((exc, None))


def coalesced_reply(result: Any, answers: deque[Any]) -> pb.RouteStreamReply:
    """The answer ``result`` and, after it, every answer at the head of ``answers`` that
    is ready (durable, or failed), taken off it, up to ``MAX_BATCH`` in the reply: what a
    coalescing caller gets in one message. An answer still on its way to the log ends the
    reply (it comes in the next, never waited for here)."""
    reply = pb.RouteStreamReply()
    set_result(reply.result, result)
    add = reply.more.add
    room = MAX_BATCH - 1
    while answers and room:
        head = answers[0]
        if head is _END:
            break
        result, durable = head
        if durable is not None:
            if not durable.done() or durable.cancelled():
                break  # a cancelled one: the writer's own await of it, as for any head
            failed = durable.exception()
            if failed is not None:  # not durable: the item's error
                result = failed
        answers.popleft()
        set_result(add(), result)
        room -= 1
    return reply


def set_result(message: pb.RouteResult, result: Any) -> None:
    """``message`` (a RouteResult) set to the decision, or the error the request got."""
    if isinstance(result, Exception):
        message.error.CopyFrom(error_message(result))
    else:
        convert.set_decision(message.decision, result)


def stream_reply(result: Any) -> pb.RouteStreamReply:
    """A RouteStream answer: the decision, or the error the request got."""
    reply = pb.RouteStreamReply()
    if isinstance(result, Exception):
        reply.result.error.CopyFrom(error_message(result))
    else:
        convert.set_decision(reply.result.decision, result)
    return reply


def wire_reply(reply: wire.RouteResults) -> bytes:
    """RouteBatch's response serializer with the wire codec: the RouteBatchReply's bytes."""
    return wire.route_batch_reply(reply.results, _error_bytes)


def _as_is(result: Any) -> Any:
    return result


def _error_bytes(exc: Exception) -> bytes:
    return error_message(exc).SerializeToString()


WIRE = compiled(wire.__name__)
"""Whether Route and RouteBatch read and write their bytes with the wire codec (only
compiled: it is then ~0.9 µs a decision cheaper than upb, bench/route_batch.py;
interpreted, dearer)."""
if WIRE:  # Route's request is its RouteFields, its answer the core's Decision
    _answer: Any = _as_is
    RoutingService.Route.wire_codec = (  # type: ignore[attr-defined]
        wire.read_route,
        wire.decision_reply,
    )
    _batch_routes: Any = wire.RouteItems.routes
    _batch_reply: Any = wire.RouteResults
    RoutingService.RouteBatch.wire_codec = (  # type: ignore[attr-defined]
        wire.read_route_batch,
        wire_reply,
    )
else:
    _route = convert.route
    _answer = convert.decision
    _batch_routes = batch_routes
    _batch_reply = route_batch_reply


def add_services(server: grpc.aio.Server, node: Node) -> None:
    """Register the fenliu servicers, sharing ``node``, on ``server``."""
    pb_grpc.add_PresenceServicer_to_server(PresenceService(node), server)
    pb_grpc.add_RoutingServicer_to_server(RoutingService(node), server)
    pb_grpc.add_QueueServicer_to_server(QueueService(node), server)
    pb_grpc.add_DiagnosticsServicer_to_server(DiagnosticsService(), server)

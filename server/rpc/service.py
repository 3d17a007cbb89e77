"""The Presence, Routing and Queue servicers: convert, call the core, convert back.

Every method runs on the event loop, so the core sees one command at a time. After
each command the core's pending events go to the ``events`` sink (the watch hub, ``watch.py``),
so they never pile up in the shards' outboxes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

import grpc.aio

from fenliu.client._pb import fenliu_pb2 as pb, fenliu_pb2_grpc as pb_grpc

from ..core import types as t
from ..core.dispatcher import Dispatcher
from ..core.validate import check_batch
from ..storage import codec
from ..storage.journal import Journal
from . import convert
from .status import abort_on_error, error_message

log = logging.getLogger(__name__)

Clock: TypeAlias = Callable[[], int]
"""Milliseconds since the epoch."""
EventSink: TypeAlias = Callable[[list[t.Event]], None]
"""Receives the events of each command, in order; never called with an empty list."""
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def discard(events: list[t.Event]) -> None:
    """The default event sink: drops them."""


class Core:
    """The dispatcher as the servicers use it: stamped with a clock, events forwarded,
    and, with a journal, every state change durable before it is acknowledged."""

    __slots__ = ("dispatcher", "now", "journal", "_events")

    def __init__(
        self,
        dispatcher: Dispatcher,
        now_ms: Clock,
        events: EventSink = discard,
        journal: Journal | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.now = now_ms
        self.journal = journal
        self._events = events

    async def execute(self, command: t.AnyCommand) -> Any:
        """Apply one command, hand its events to the sink, and wait until it is durable.

        Raises:
            FenliuError: the core refused it, or (Unavailable) the journal failed: undone.
        """
        try:
            result = self.dispatcher.execute(command)
        finally:
            self._flush()
        if self.journal is not None:
            commits = self._commit(command)
            if len(commits) == 1:
                await commits[0]
            else:
                await asyncio.gather(*commits)
        return result

    async def execute_each(self, commands: Iterable[t.AnyCommand]) -> list[Any]:
        """Apply commands one by one; an item's result or the exception it raised."""
        results: list[Any] = []
        commits: list[tuple[int, asyncio.Future[None]]] = []
        try:
            for command in commands:
                try:
                    results.append(self.dispatcher.execute(command))
                except Exception as exc:
                    results.append(exc)
                    continue
                commits += [(len(results) - 1, f) for f in self._commit(command)]
        finally:
            self._flush()
        outcomes = await asyncio.gather(*(f for _, f in commits), return_exceptions=True)
        for (index, _), outcome in zip(commits, outcomes, strict=True):
            if isinstance(outcome, Exception):
                results[index] = outcome
        return results

    def read(self, query: t.AnyQuery) -> Any:
        return self.dispatcher.read(query)

    def _commit(self, command: t.AnyCommand) -> list[asyncio.Future[None]]:
        """Queue the command's record in its shard's journal (every shard for a Tick)."""
        journal = self.journal
        if journal is None:
            return []
        payload = codec.encode_command(command)
        if type(command) is t.Tick:
            return [journal.submit(shard, payload) for shard in self.dispatcher.shards]
        return [journal.submit(self.dispatcher.shard_for(command.shop_id), payload)]  # type: ignore[union-attr]

    def _flush(self) -> None:
        events = self.dispatcher.drain_events()
        if not events:
            return
        try:
            self._events(events)
        except Exception:
            # The command has happened; its caller must still get the result.
            log.exception("the event sink failed; %d events dropped", len(events))


class PresenceService(pb_grpc.PresenceServicer):
    """Shops' policies, agents and their status, private contacts."""

    def __init__(self, core: Core) -> None:
        self._core = core

    async def SetShopPolicy(
        self, request: pb.SetShopPolicyRequest, context: Context
    ) -> pb.ShopPolicy:
        async with abort_on_error(context):
            command = convert.set_policy(request, self._core.now())
            return convert.shop_policy(await self._core.execute(command))

    async def GetShopPolicy(
        self, request: pb.GetShopPolicyRequest, context: Context
    ) -> pb.ShopPolicy:
        async with abort_on_error(context):
            return convert.shop_policy(
                self._core.read(convert.get_policy(request, self._core.now()))
            )

    async def RegisterAgent(self, request: pb.RegisterAgentRequest, context: Context) -> pb.Agent:
        async with abort_on_error(context):
            command = convert.register_agent(request, self._core.now())
            return convert.agent(await self._core.execute(command))

    async def UpdateAgent(self, request: pb.UpdateAgentRequest, context: Context) -> pb.Agent:
        async with abort_on_error(context):
            command = convert.update_agent(request, self._core.now())
            return convert.agent(await self._core.execute(command))

    async def RemoveAgent(
        self, request: pb.RemoveAgentRequest, context: Context
    ) -> pb.RemoveAgentReply:
        async with abort_on_error(context):
            command = convert.remove_agent(request, self._core.now())
            return convert.remove_reply(await self._core.execute(command))

    async def SetStatus(self, request: pb.SetStatusRequest, context: Context) -> pb.SetStatusReply:
        async with abort_on_error(context):
            command = convert.set_status(request, self._core.now())
            return convert.status_reply(await self._core.execute(command))

    async def ListTeam(self, request: pb.ListTeamRequest, context: Context) -> pb.ListTeamReply:
        async with abort_on_error(context):
            return convert.team(self._core.read(convert.list_team(request, self._core.now())))

    async def AddPrivateContact(
        self, request: pb.PrivateContactRequest, context: Context
    ) -> pb.Empty:
        async with abort_on_error(context):
            command = convert.add_private_contact(request, self._core.now())
            return convert.empty(await self._core.execute(command))

    async def RemovePrivateContact(
        self, request: pb.PrivateContactRequest, context: Context
    ) -> pb.Empty:
        async with abort_on_error(context):
            command = convert.remove_private_contact(request, self._core.now())
            return convert.empty(await self._core.execute(command))


class RoutingService(pb_grpc.RoutingServicer):
    """Route buyers' messages and act on sessions."""

    def __init__(self, core: Core) -> None:
        self._core = core

    async def Route(self, request: pb.RouteRequest, context: Context) -> pb.Decision:
        async with abort_on_error(context):
            return convert.decision(
                await self._core.execute(convert.route(request, self._core.now()))
            )

    async def RouteBatch(
        self, request: pb.RouteBatchRequest, context: Context
    ) -> pb.RouteBatchReply:
        """Each request routed on its own: one item's error does not stop the others."""
        async with abort_on_error(context):
            check_batch(len(request.requests), "requests")
            at = self._core.now()  # one arrival time for the whole batch
            commands = [convert.route(item, at) for item in request.requests]
            results = await self._core.execute_each(commands)
            return route_batch_reply(results)

    async def Acknowledge(self, request: pb.SessionRequest, context: Context) -> pb.Session:
        async with abort_on_error(context):
            command = convert.acknowledge(request, self._core.now())
            return convert.session(await self._core.execute(command))

    async def Reply(self, request: pb.SessionRequest, context: Context) -> pb.Session:
        async with abort_on_error(context):
            return convert.session(
                await self._core.execute(convert.reply(request, self._core.now()))
            )

    async def Transfer(self, request: pb.TransferRequest, context: Context) -> pb.Decision:
        async with abort_on_error(context):
            command = convert.transfer(request, self._core.now())
            return convert.decision(await self._core.execute(command))

    async def EndSessions(
        self, request: pb.EndSessionsRequest, context: Context
    ) -> pb.EndSessionsReply:
        async with abort_on_error(context):
            check_batch(len(request.session_ids), "session_ids")
            command = convert.end_sessions(request, self._core.now())
            return convert.end_reply(await self._core.execute(command))

    async def GetSession(self, request: pb.GetSessionRequest, context: Context) -> pb.Session:
        async with abort_on_error(context):
            query = convert.get_session(request, self._core.now())
            return convert.session(self._core.read(query))

    async def ListAgentSessions(
        self, request: pb.ListAgentSessionsRequest, context: Context
    ) -> pb.ListSessionsReply:
        async with abort_on_error(context):
            query = convert.list_agent_sessions(request, self._core.now())
            return convert.sessions(self._core.read(query))

    async def StarSession(self, request: pb.StarSessionRequest, context: Context) -> pb.Session:
        async with abort_on_error(context):
            command = convert.star_session(request, self._core.now())
            return convert.session(await self._core.execute(command))

    async def ListRecentContacts(
        self, request: pb.AgentListRequest, context: Context
    ) -> pb.ListRecentContactsReply:
        async with abort_on_error(context):
            query = convert.list_recent_contacts(request, self._core.now())
            return convert.recent_contacts(self._core.read(query))

    async def ListStarred(
        self, request: pb.AgentListRequest, context: Context
    ) -> pb.ListStarredReply:
        async with abort_on_error(context):
            query = convert.list_starred(request, self._core.now())
            return convert.starred(self._core.read(query))


class QueueService(pb_grpc.QueueServicer):
    """The shop queue and left messages."""

    def __init__(self, core: Core) -> None:
        self._core = core

    async def ListQueue(self, request: pb.ListQueueRequest, context: Context) -> pb.ListQueueReply:
        async with abort_on_error(context):
            return convert.queue(self._core.read(convert.list_queue(request, self._core.now())))

    async def GetPosition(self, request: pb.BuyerRequest, context: Context) -> pb.Session:
        async with abort_on_error(context):
            query = convert.get_position(request, self._core.now())
            return convert.session(self._core.read(query))

    async def Pick(self, request: pb.PickRequest, context: Context) -> pb.Decision:
        async with abort_on_error(context):
            return convert.decision(
                await self._core.execute(convert.pick(request, self._core.now()))
            )

    async def LeaveQueue(self, request: pb.BuyerRequest, context: Context) -> pb.Session:
        async with abort_on_error(context):
            command = convert.leave_queue(request, self._core.now())
            return convert.session(await self._core.execute(command))

    async def ListLeftMessages(
        self, request: pb.ListLeftMessagesRequest, context: Context
    ) -> pb.ListQueueReply:
        async with abort_on_error(context):
            query = convert.list_left_messages(request, self._core.now())
            return convert.queue(self._core.read(query))


class DiagnosticsService(pb_grpc.DiagnosticsServicer):
    """The transport floor: Echo does no work, so it costs what the stack costs."""

    async def Echo(self, request: pb.EchoMessage, context: Context) -> pb.EchoMessage:
        return request


def route_batch_reply(results: list[Any]) -> pb.RouteBatchReply:
    """One result per item, a decision or the error it got, built in place (no copies)."""
    reply = pb.RouteBatchReply()
    add = reply.results.add
    for result in results:
        if isinstance(result, Exception):
            add(error=error_message(result))
        else:
            convert.set_decision(add().decision, result)
    return reply


def add_services(server: grpc.aio.Server, core: Core) -> None:
    """Register the fenliu servicers, sharing ``core``, on ``server``."""
    pb_grpc.add_PresenceServicer_to_server(PresenceService(core), server)
    pb_grpc.add_RoutingServicer_to_server(RoutingService(core), server)
    pb_grpc.add_QueueServicer_to_server(QueueService(core), server)
    pb_grpc.add_DiagnosticsServicer_to_server(DiagnosticsService(), server)

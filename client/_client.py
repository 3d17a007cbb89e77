"""``AsyncClient`` and ``Client``: one method per RPC, typed results, typed errors.

Every call has a deadline (``timeout``, default 5 s). Calls that are safe to repeat are
retried when the server is UNAVAILABLE (or, stopping, cut the call off with CANCELLED),
for up to ``retry_budget`` seconds (default 5, never past the deadline) with jittered
exponential backoff, so a server restart of a second or two is not seen by the caller:
``route`` (its request id, generated once per call, makes the retry return the original
decision), the batch, every read, and the setters that converge (policy, register,
status, acknowledge, end, private contacts). The others (remove_agent, reply, transfer,
pick, leave_queue) are never retried: a second attempt could act twice.

Cluster mode (``_cluster.py``): given one or more node addresses, the client keeps the
cluster map and calls each shop's owner directly, one channel per node. A node that does
not own the shop answers UNAVAILABLE NOT_OWNER naming the owner: every call is retried
there at once (the refusal changed nothing, so this is safe for every call). A node that
cannot be reached: the map is read again and the call retried with backoff, within its
deadline, if it is safe to repeat (above; a request with a ``request_id`` field, its
idempotency key, is given one and resent with the same key). ``route_batch`` is split by
owner, the parts sent concurrently, the results merged in request order; ``route_stream``
keeps one stream per owner; watch streams reconnect to the new owner and resume.

``Client`` is the blocking twin of ``AsyncClient``: it runs one on a private event loop
thread, so the two share every line of logic.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Concatenate, NamedTuple, ParamSpec, TypeVar

import grpc
import grpc.aio

from ._cluster import TAKEOVER_POLL_S, Router, owner_hint, taking_over
from ._errors import FenliuError, Unavailable, from_rpc_error, server_went_away
from ._pb import fenliu_pb2 as pb, fenliu_pb2_grpc as pb_grpc
from ._stream import ClusterRouteStream, RouteStream
from ._types import (
    Agent,
    AgentSessions,
    ClusterMap,
    Decision,
    EndResult,
    MessageFilter,
    Named,
    OnQueueFull,
    Policy,
    QueueList,
    QueueOrder,
    QueueSort,
    RecentContact,
    Role,
    RouteItem,
    RouteResult,
    Session,
    SessionSort,
    ShopStats,
    StarredSession,
    Status,
    StatusResult,
    Strategy,
    WatchItem,
    member,
    strings,
)
from ._watch import DEFAULT_GIVE_UP_AFTER, WatchStream

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 5.0
DEFAULT_RETRY_BUDGET = 5.0
"""Seconds an idempotent call keeps retrying on UNAVAILABLE (never past its deadline)."""
MAX_BACKOFF = 0.5
MOVE_BACKOFF = 0.1
"""The longest pause between attempts while a shard is moving (no owner to name yet, or
the new owner still taking it over: a hand-off takes a few tenths of a second), so the
call lands within about this long of the shard being served again."""
KEEPALIVE_S = 30.0
"""Seconds between keepalive pings while a call (a watch stream) is open. The server
accepts pings 20 s apart (``server/rpc/app.py``): a shorter interval there gets GOAWAY."""
KEEPALIVE_TIMEOUT_S = 20.0


def channel_options(keepalive: float = KEEPALIVE_S) -> tuple[tuple[str, int], ...]:
    """The SDK's channel options; ``keepalive`` 0 sends no pings."""
    options: tuple[tuple[str, int], ...] = (
        # After a restart, reconnect within ~0.1 s rather than grpc's default 1 s backoff.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1_000),
    )
    if keepalive > 0:
        timeout_ms = int(min(keepalive, KEEPALIVE_TIMEOUT_S) * 1000)
        # A watch stream may be quiet for hours: ping it, so a dead peer or a NAT that
        # dropped the connection is noticed (and the stream reconnects) within a minute.
        options += (
            ("grpc.keepalive_time_ms", int(keepalive * 1000)),
            ("grpc.keepalive_timeout_ms", timeout_ms),
            ("grpc.http2.max_pings_without_data", 0),
            # Any ping unanswered that long (grpc's own BDP pings too: a keepalive ping
            # waits behind one in flight) means the connection is dead; grpc's default is
            # a minute.
            ("grpc.http2.ping_timeout_ms", timeout_ms),
        )
    return options


P = ParamSpec("P")
T = TypeVar("T")


def new_request_id() -> str:
    """A fresh idempotency key for ``route``."""
    return uuid.uuid4().hex


def _channel(
    target: str, tls: bool | grpc.ChannelCredentials, keepalive: float
) -> grpc.aio.Channel:
    options = channel_options(keepalive)
    if tls is False:
        return grpc.aio.insecure_channel(target, options=options)
    credentials = grpc.ssl_channel_credentials() if tls is True else tls
    return grpc.aio.secure_channel(target, credentials, options=options)


class _Stubs:
    __slots__ = ("presence", "routing", "queue", "monitor", "cluster")

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.presence = pb_grpc.PresenceStub(channel)
        self.routing = pb_grpc.RoutingStub(channel)
        self.queue = pb_grpc.QueueStub(channel)
        self.monitor = pb_grpc.MonitorStub(channel)
        self.cluster = pb_grpc.ClusterStub(channel)


class _Method(NamedTuple):
    """An RPC by name (``_Stubs`` attribute, method), called on whichever node serves it."""

    service: str
    name: str


class _Service:
    """``self._presence.SetShopPolicy`` names the RPC; ``_call`` picks the node."""

    __slots__ = ("_service",)

    def __init__(self, service: str) -> None:
        self._service = service

    def __getattr__(self, name: str) -> _Method:
        return _Method(self._service, name)


def _shop_of(request: Any) -> str | None:
    """The shop a request is about (None: any node may answer it)."""
    return getattr(request, "shop_id", None)


def _with_key(request: Any) -> bool:
    """Whether the request carries an idempotency key (a ``request_id`` field): given one
    when empty, so every attempt sends the same key."""
    if "request_id" not in request.DESCRIPTOR.fields_by_name:
        return False
    if not request.request_id:
        request.request_id = new_request_id()
    return True


class AsyncClient:
    """The asynchronous SDK. Use ``async with AsyncClient(target) as fenliu:``.

    It may be created anywhere (outside a running event loop too): the channels are opened
    on the first call, on the loop that makes it, and serve that loop only.

    Every mutating method sends an idempotency key, ``request_id`` (a fresh one per call
    unless given): the server remembers each key with its outcome for 10 minutes, so the
    same request again (a retry, through a failover too) answers the first outcome
    without applying it twice. A key reused by another request is ``FailedPrecondition``
    (reason ``REQUEST_ID_REUSED``).

    Raises (from every method): a ``FenliuError`` subclass, never a raw ``grpc.RpcError``.
    """

    _presence = _Service("presence")
    _routing = _Service("routing")
    _queue = _Service("queue")
    _monitor = _Service("monitor")
    _cluster = _Service("cluster")

    def __init__(
        self,
        target: str | Sequence[str] = DEFAULT_TARGET,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int | None = None,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
        backoff: float = 0.05,
        metadata: Sequence[tuple[str, str]] = (),
        channel: grpc.aio.Channel | None = None,
        token: str | None = None,
        tls: bool | grpc.ChannelCredentials = False,
        keepalive: float = KEEPALIVE_S,
    ) -> None:
        """``target``: the server's address, or a cluster's nodes' (a list: any of them
        answers the cluster map). ``timeout``: each call's deadline, seconds. Idempotent
        calls are retried on UNAVAILABLE for up to ``retry_budget`` seconds (within the
        deadline), with exponential backoff from ``backoff`` seconds (at most 0.5 s,
        jittered), and at most ``retries`` times when given (0: one attempt, not even to
        the owner a NOT_OWNER answer names). ``token`` is sent as ``authorization: Bearer
        <token>`` on every call. ``tls``: True verifies the server against the system's
        roots; for a private CA or a client certificate pass
        ``grpc.ssl_channel_credentials(...)``. ``keepalive``: seconds between pings while
        a call is open (0: none), so a dead connection under a watch stream is noticed."""
        targets = [target] if isinstance(target, str) else list(target)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError("target must be an address or a non-empty list of addresses")
        self._targets = targets
        self._target = targets[0]
        self._tls = tls
        self._keepalive = keepalive
        self._channel: grpc.aio.Channel | None = channel
        self._channels: list[grpc.aio.Channel] = []  # opened here (closed by close)
        self._router: Router | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.timeout = timeout
        self.retries = retries
        self.retry_budget = retry_budget
        self.backoff = backoff
        self.metadata = tuple(metadata)
        if token is not None:
            self.metadata += (("authorization", f"Bearer {token}"),)

    def _open(self) -> Router:
        """The router (channels are opened on the running loop, at their first call)."""
        loop = asyncio.get_running_loop()
        if self._router is None:
            self._loop = loop
            self._router = Router(self._targets, self._open_stubs, lambda: self.metadata)
        elif self._loop is not loop:
            raise RuntimeError(
                "this AsyncClient's channel was opened on another event loop: "
                "use one AsyncClient per loop (or the blocking Client)"
            )
        return self._router

    def _open_stubs(self, address: str) -> _Stubs:
        if address == self._target and self._channel is not None:
            return _Stubs(self._channel)
        channel = _channel(address, self._tls, self._keepalive)
        self._channels.append(channel)
        return _Stubs(channel)

    @property
    def router(self) -> Router | None:
        """Cluster mode's map and channels (None before the first call)."""
        return self._router

    async def close(self) -> None:
        router, self._router = self._router, None
        if router is not None:
            await router.close()
        channels, self._channels = self._channels, []
        if self._channel is not None:
            channels.append(self._channel)
            self._channel = None
        for channel in channels:
            await channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _ready(self) -> Router:
        router = self._open()
        if router.wanted:
            await router.ready()
        return router

    async def _call(
        self,
        method: _Method,
        request: Any,
        *,
        idempotent: bool,
        timeout: float | None,
        address: str | None = None,
    ) -> Any:
        """One RPC with the deadline, the retries it may have, and typed errors; sent to
        the owner of the request's shop (or ``address``: then tried there once)."""
        router = await self._ready()
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + (timeout or self.timeout)
        safe = idempotent or _with_key(request)
        give_up = min(deadline, started + self.retry_budget)
        shop = _shop_of(request)
        attempt = hops = 0
        while True:
            target = address or router.address(shop)
            stub = getattr(router.stubs_at(target), method.service)
            try:
                return await getattr(stub, method.name)(
                    request, timeout=max(0.0, deadline - loop.time()), metadata=self.metadata
                )
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc)
                gone = server_went_away(exc, error)
            attempt += 1
            if address is not None or (self.retries is not None and attempt > self.retries):
                raise error
            moved = await self._rerouted(router, error, target)
            if moved is None:  # not NOT_OWNER: retried only if safe to repeat
                if not safe or not gone:
                    raise error
                if router.clustered and shop and hops < 3:  # a node gone, or stopping
                    await router.refresh(target, give_up - loop.time())  # (a hand-off's
                    if router.address(shop) != target:  # old owner): the map may name
                        hops += 1  # the new owner already; then it is asked at once
                        continue
            elif moved and attempt <= 3:
                if loop.time() >= give_up:
                    raise error
                continue  # at once, to the owner the refusal named
            if moved is False and taking_over(error, target):
                pause = TAKEOVER_POLL_S * (0.5 + random.random())  # served there shortly
            else:
                longest = MAX_BACKOFF if moved is None else MOVE_BACKOFF
                pause = min(self.backoff * 2 ** (attempt - 1), longest) * (0.5 + random.random())
            if loop.time() + pause >= give_up:
                raise error
            await asyncio.sleep(pause)
            if isinstance(error, Unavailable) and moved is None:  # a node gone: who serves
                await router.refresh(target, give_up - loop.time())  # its shops now?

    async def _rerouted(self, router: Router, error: FenliuError, target: str) -> bool | None:
        """After a failed call: None unless it was a NOT_OWNER refusal; then whether the
        shard's owner is now known to be another node than ``target`` (the map is read
        again when the refusal names none)."""
        hint = owner_hint(error)
        if hint is None:
            return None
        if not router.clustered:
            await router.refresh()  # the first refusal: this is a cluster; read its map
        router.learn(error)
        shard = hint[0]

        def elsewhere() -> bool:
            return 0 <= shard < router.shards and router.owners[shard] not in ("", target)

        if elsewhere():
            return True
        if taking_over(error, target):
            return False  # the owner to be, about to serve it: no map to read
        await router.refresh(avoid=target)
        return elsewhere()

    # ------------------------------------------------------------ presence

    async def set_shop_policy(
        self,
        shop_id: str,
        *,
        strategy: Strategy | str | None = None,
        queue_order: QueueOrder | str | None = None,
        queue_limit: int | None = None,
        on_queue_full: OnQueueFull | str | None = None,
        priority_crowds: Iterable[str] | None = None,
        priority_may_exceed_capacity: bool | None = None,
        notice_interval_ms: int | None = None,
        route_when_all_suspended: bool | None = None,
        auto_assign_left_messages: bool | None = None,
        accept_timeout_ms: int | None = None,
        reply_timeout_ms: int | None = None,
        idle_end_timeout_ms: int | None = None,
        queue_wait_limit_ms: int | None = None,
        sticky_window_ms: int | None = None,
        recent_contact_ttl_ms: int | None = None,
        time_zone: str | None = None,
        member_crowd: str | None = None,
        group_crowds: Mapping[str, Iterable[str]] | None = None,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Policy:
        """Change the fields given (the others keep their values); returns the whole policy.

        ``member_crowd`` names the crowd whose priority notice has the member wording;
        ``group_crowds`` maps a group to the crowds it serves (routed within it first).
        Enums may be given by name (``strategy="least-load"``, any case).
        """
        fields = {k: v for k, v in locals().items() if k not in _NOT_POLICY and v is not None}
        for name, kind in _POLICY_ENUMS.items():
            if name in fields:
                fields[name] = member(kind, fields[name], name)
        policy = pb.ShopPolicy(**fields)
        if priority_crowds is not None:
            policy.priority_crowds.extend(strings(priority_crowds, "priority_crowds"))
            policy.set_priority_crowds = True
        if group_crowds is not None:
            for group, crowds in group_crowds.items():
                policy.group_crowds.add(group=group, crowds=list(crowds))
            policy.set_group_crowds = True
        request = pb.SetShopPolicyRequest(
            request_id=request_id or new_request_id(), shop_id=shop_id, policy=policy
        )
        reply = await self._call(
            self._presence.SetShopPolicy, request, idempotent=True, timeout=timeout
        )
        return Policy.from_pb(reply)

    async def get_shop_policy(self, shop_id: str, *, timeout: float | None = None) -> Policy:
        request = pb.GetShopPolicyRequest(shop_id=shop_id)
        reply = await self._call(
            self._presence.GetShopPolicy, request, idempotent=True, timeout=timeout
        )
        return Policy.from_pb(reply)

    async def register_agent(
        self,
        shop_id: str,
        agent_id: str,
        *,
        role: Role | str = Role.SUB,
        groups: Iterable[str] = (),
        max_concurrent: int = 0,
        status: Status | str = Status.OFFLINE,
        replace: bool = False,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Agent:
        """Create the agent (SUB, no groups, max 0, OFFLINE unless given). ``role`` and
        ``status`` may be names (``status="online"``, any case).

        Raises:
            AlreadyExists: the agent exists with other fields; ``update_agent`` changes
                only the fields it names, ``replace=True`` replaces role, groups and max.
        """
        request = pb.RegisterAgentRequest(
            request_id=request_id or new_request_id(),
            shop_id=shop_id,
            agent_id=agent_id,
            role=member(Role, role, "role"),
            groups=strings(groups, "groups"),
            max_concurrent=max_concurrent,
            status=member(Status, status, "status"),
            replace=replace,
        )
        reply = await self._call(
            self._presence.RegisterAgent, request, idempotent=True, timeout=timeout
        )
        return Agent.from_pb(reply)

    async def update_agent(
        self,
        shop_id: str,
        agent_id: str,
        *,
        role: Role | str | None = None,
        groups: Iterable[str] | None = None,
        max_concurrent: int | None = None,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Agent:
        """Change only the fields given of an existing agent; returns the agent."""
        request = pb.UpdateAgentRequest(
            request_id=request_id or new_request_id(), shop_id=shop_id, agent_id=agent_id
        )
        if role is not None:
            request.role = member(Role, role, "role")
        if groups is not None:
            request.groups.extend(strings(groups, "groups"))
            request.set_groups = True
        if max_concurrent is not None:
            request.max_concurrent = max_concurrent
        reply = await self._call(
            self._presence.UpdateAgent, request, idempotent=True, timeout=timeout
        )
        return Agent.from_pb(reply)

    async def remove_agent(
        self, shop_id: str, agent_id: str, *, request_id: str = "", timeout: float | None = None
    ) -> tuple[Decision, ...]:
        """Remove the agent; returns where its open sessions went."""
        request = pb.RemoveAgentRequest(
            request_id=request_id or new_request_id(), shop_id=shop_id, agent_id=agent_id
        )
        reply = await self._call(
            self._presence.RemoveAgent, request, idempotent=False, timeout=timeout
        )
        return tuple(Decision.from_pb(d) for d in reply.moved)

    async def set_status(
        self,
        shop_id: str,
        agent_id: str,
        status: Status | str,
        *,
        request_id: str = "",
        timeout: float | None = None,
    ) -> StatusResult:
        """``status`` may be a name (``"online"``, any case)."""
        request = pb.SetStatusRequest(
            request_id=request_id or new_request_id(),
            shop_id=shop_id,
            agent_id=agent_id,
            status=member(Status, status, "status"),
        )
        reply = await self._call(
            self._presence.SetStatus, request, idempotent=True, timeout=timeout
        )
        return StatusResult.from_pb(reply)

    async def list_team(self, shop_id: str, *, timeout: float | None = None) -> tuple[Agent, ...]:
        request = pb.ListTeamRequest(shop_id=shop_id)
        reply = await self._call(self._presence.ListTeam, request, idempotent=True, timeout=timeout)
        return tuple(Agent.from_pb(a) for a in reply.agents)

    async def add_private_contact(
        self, shop_id: str, buyer_id: str, *, request_id: str = "", timeout: float | None = None
    ) -> None:
        request = pb.PrivateContactRequest(
            request_id=request_id or new_request_id(), shop_id=shop_id, buyer_id=buyer_id
        )
        await self._call(
            self._presence.AddPrivateContact, request, idempotent=True, timeout=timeout
        )

    async def remove_private_contact(
        self, shop_id: str, buyer_id: str, *, request_id: str = "", timeout: float | None = None
    ) -> None:
        request = pb.PrivateContactRequest(
            request_id=request_id or new_request_id(), shop_id=shop_id, buyer_id=buyer_id
        )
        await self._call(
            self._presence.RemovePrivateContact, request, idempotent=True, timeout=timeout
        )

    # ------------------------------------------------------------ routing

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
        """Route one buyer message. Without ``request_id`` one is generated (and reused by
        the retries), so a retry never assigns twice."""
        request = route_request(
            shop_id, buyer_id, request_id=request_id, addressed_agent_id=addressed_agent_id,
            crowds=crowds, group=group, channel=channel, from_team_member=from_team_member,
        ).to_pb()  # fmt: skip
        reply = await self._call(self._routing.Route, request, idempotent=True, timeout=timeout)
        return Decision.from_pb(reply)

    async def route_batch(
        self, requests: Iterable[RouteItem | pb.RouteRequest], *, timeout: float | None = None
    ) -> tuple[RouteResult, ...]:
        """Route up to 1,000 messages in one call; one ``RouteResult`` per item, in order
        (its ``decision``, or the ``error`` that item got).

        Items are ``RouteItem`` (``route_request(...)`` builds one); a raw
        ``fenliu_pb2.RouteRequest`` is taken as it is. Items without a request_id get one.
        """
        if isinstance(requests, (str, bytes, RouteItem, pb.RouteRequest)):
            raise TypeError("requests must be a list of RouteItem, not one item: [item]?")
        batch = pb.RouteBatchRequest()
        for i, item in enumerate(requests):
            added = batch.requests.add()
            if isinstance(item, RouteItem):
                added.CopyFrom(item.to_pb())
            elif isinstance(item, pb.RouteRequest):
                added.CopyFrom(item)
            else:
                raise TypeError(f"requests[{i}] must be a RouteItem (got {type(item).__name__})")
            if not added.request_id:
                added.request_id = new_request_id()
        results = await self._route_batch(batch, timeout)
        return tuple(RouteResult.from_pb(r) for r in results)

    async def _route_batch(
        self, batch: pb.RouteBatchRequest, timeout: float | None
    ) -> list[pb.RouteResult]:
        """Outside cluster mode one call. In it: the items split by owner, the parts sent
        concurrently, the results put back in request order; the items a node refused
        (NOT_OWNER) or could not make durable, and a part whose node is gone, are sent
        again (each has its request id) until the deadline."""
        router = await self._ready()
        if not router.clustered:
            reply = await self._call(
                self._routing.RouteBatch, batch, idempotent=True, timeout=timeout
            )
            if not any(owner_hint(RouteResult.from_pb(r).error or _NO_ERROR) for r in
                       reply.results if r.HasField("error")):  # fmt: skip
                return list(reply.results)
            await router.refresh()  # a single seed's node refused some: a cluster
            if not router.clustered:
                return list(reply.results)
        loop = asyncio.get_running_loop()
        started = loop.time()
        give_up = min(started + (timeout or self.timeout), started + self.retry_budget)
        items = list(batch.requests)
        results: list[pb.RouteResult | None] = [None] * len(items)
        pending = list(range(len(items)))
        attempt = 0

        async def part(address: str, indexes: list[int]) -> None:
            request = pb.RouteBatchRequest(requests=[items[i] for i in indexes])
            left = max(0.05, give_up - loop.time())
            try:
                reply = await self._call(self._routing.RouteBatch, request, idempotent=True,
                                         timeout=left, address=address)  # fmt: skip
            except Unavailable:
                return  # the node is gone: these items are sent again
            for i, result in zip(indexes, reply.results, strict=True):
                results[i] = result
                if result.HasField("error"):
                    error = RouteResult.from_pb(result).error
                    if error is not None and owner_hint(error) is not None:
                        router.learn(error)

        while True:
            await asyncio.gather(*(part(a, ix) for a, ix in router.split(
                [items[i].shop_id for i in pending]).items()))  # fmt: skip
            pending = [i for i in pending if _again(results[i])]
            attempt += 1
            if not pending or (self.retries is not None and attempt > self.retries):
                break
            pause = min(self.backoff * 2 ** (attempt - 1), MAX_BACKOFF) * (0.5 + random.random())
            if loop.time() + pause >= give_up:
                break
            await asyncio.sleep(pause)
            await router.refresh()
        if any(r is None for r in results):
            raise Unavailable(grpc.StatusCode.UNAVAILABLE,
                              "no node serving these shops answered in time")  # fmt: skip
        return [r for r in results if r is not None]

    def route_stream(self, *, timeout: float | None = None) -> RouteStream | ClusterRouteStream:
        """Routes pipelined over one bidirectional stream (``RouteStream``): for a gateway
        routing each message as it arrives, at a fraction of unary ``route``'s server cost.
        ``async with fenliu.route_stream() as stream: await stream.route(shop, buyer)``;
        ``timeout``: how long each ``route`` waits for its answer (default the client's)."""

        def open_call(address: str | None = None) -> Any:
            router = self._open()
            stubs = router.stubs_at(address or router.default)
            return stubs.routing.RouteStream(metadata=self.metadata)

        known = self._router is not None and self._router.clustered
        if not known and len(self._targets) == 1:
            return RouteStream(open_call, timeout or self.timeout)  # one server (so far)
        return ClusterRouteStream(self._open, open_call, timeout or self.timeout)

    async def acknowledge(
        self,
        shop_id: str,
        agent_id: str,
        session_id: str,
        *,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Session:
        """The agent acts on a new customer (ASSIGNED → ACTIVE)."""
        request = pb.SessionRequest(
            request_id=request_id or new_request_id(),
            shop_id=shop_id,
            agent_id=agent_id,
            session_id=session_id,
        )
        reply = await self._call(
            self._routing.Acknowledge, request, idempotent=True, timeout=timeout
        )
        return Session.from_pb(reply)

    async def reply(
        self,
        shop_id: str,
        agent_id: str,
        session_id: str,
        *,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Session:
        """The agent replied to the buyer (records the first response time)."""
        request = pb.SessionRequest(
            request_id=request_id or new_request_id(),
            shop_id=shop_id,
            agent_id=agent_id,
            session_id=session_id,
        )
        reply = await self._call(self._routing.Reply, request, idempotent=False, timeout=timeout)
        return Session.from_pb(reply)

    async def transfer(
        self,
        shop_id: str,
        session_id: str,
        *,
        to_agent_id: str = "",
        to_group: str = "",
        agent_id: str = "",
        force: bool = False,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Decision:
        """Hand the session to an agent or a group (``force`` allows a full target)."""
        request = pb.TransferRequest(request_id=request_id or new_request_id(), 
            shop_id=shop_id, session_id=session_id, agent_id=agent_id,
            to_agent_id=to_agent_id, to_group=to_group, force=force,
        )  # fmt: skip
        reply = await self._call(self._routing.Transfer, request, idempotent=False, timeout=timeout)
        return Decision.from_pb(reply)

    async def end_sessions(
        self,
        shop_id: str,
        session_ids: Iterable[str],
        *,
        request_id: str = "",
        timeout: float | None = None,
    ) -> EndResult:
        request = pb.EndSessionsRequest(
            request_id=request_id or new_request_id(),
            shop_id=shop_id,
            session_ids=strings(session_ids, "session_ids"),
        )
        reply = await self._call(
            self._routing.EndSessions, request, idempotent=True, timeout=timeout
        )
        return EndResult.from_pb(reply)

    async def get_session(
        self, shop_id: str, session_id: str, *, timeout: float | None = None
    ) -> Session:
        request = pb.GetSessionRequest(shop_id=shop_id, session_id=session_id)
        reply = await self._call(
            self._routing.GetSession, request, idempotent=True, timeout=timeout
        )
        return Session.from_pb(reply)

    async def list_agent_sessions(
        self,
        shop_id: str,
        agent_id: str,
        *,
        sort: SessionSort = SessionSort.LATEST_MESSAGE,
        channel: str = "",
        message_state: MessageFilter = MessageFilter.ANY,
        timeout: float | None = None,
    ) -> AgentSessions:
        """The agent's list (seed 003): in progress and recently ended, sorted, filtered."""
        request = pb.ListAgentSessionsRequest(
            shop_id=shop_id, agent_id=agent_id, sort=sort.value, channel=channel,  # type: ignore[arg-type]
            message_state=message_state.value,  # type: ignore[arg-type]
        )  # fmt: skip
        reply = await self._call(
            self._routing.ListAgentSessions, request, idempotent=True, timeout=timeout
        )
        return AgentSessions.from_pb(reply)

    async def star_session(
        self,
        shop_id: str,
        agent_id: str,
        session_id: str,
        *,
        starred: bool = True,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Session:
        """Star a session of the agent's list (``starred=False`` clears the star)."""
        request = pb.StarSessionRequest(
            request_id=request_id or new_request_id(),
            shop_id=shop_id,
            agent_id=agent_id,
            session_id=session_id,
            starred=starred,
        )
        reply = await self._call(
            self._routing.StarSession, request, idempotent=True, timeout=timeout
        )
        return Session.from_pb(reply)

    async def list_recent_contacts(
        self, shop_id: str, agent_id: str, *, limit: int = 0, timeout: float | None = None
    ) -> tuple[RecentContact, ...]:
        """Buyers whose recent contact is the agent, newest first."""
        request = pb.AgentListRequest(shop_id=shop_id, agent_id=agent_id, limit=limit)
        reply = await self._call(
            self._routing.ListRecentContacts, request, idempotent=True, timeout=timeout
        )
        return tuple(RecentContact.from_pb(c) for c in reply.contacts)

    async def list_starred(
        self, shop_id: str, agent_id: str, *, limit: int = 0, timeout: float | None = None
    ) -> tuple[StarredSession, ...]:
        """The agent's starred sessions, newest star first."""
        request = pb.AgentListRequest(shop_id=shop_id, agent_id=agent_id, limit=limit)
        reply = await self._call(
            self._routing.ListStarred, request, idempotent=True, timeout=timeout
        )
        return tuple(StarredSession.from_pb(s) for s in reply.sessions)

    # ------------------------------------------------------------ queue

    async def list_queue(
        self,
        shop_id: str,
        *,
        priority_only: bool = False,
        group: str = "",
        channel: str = "",
        sort: QueueSort | str = QueueSort.QUEUE_ORDER,
        limit: int = 0,
        timeout: float | None = None,
    ) -> QueueList:
        request = pb.ListQueueRequest(
            shop_id=shop_id, priority_only=priority_only, group=group, channel=channel,
            sort=member(QueueSort, sort, "sort"), limit=limit,
        )  # fmt: skip
        reply = await self._call(self._queue.ListQueue, request, idempotent=True, timeout=timeout)
        return QueueList.from_pb(reply)

    async def get_position(
        self, shop_id: str, buyer_id: str, *, timeout: float | None = None
    ) -> Session:
        """The buyer's open session; ``queue_position`` is 0 unless it is QUEUED."""
        request = pb.BuyerRequest(shop_id=shop_id, buyer_id=buyer_id)
        reply = await self._call(self._queue.GetPosition, request, idempotent=True, timeout=timeout)
        return Session.from_pb(reply)

    async def pick(
        self,
        shop_id: str,
        agent_id: str,
        session_id: str = "",
        *,
        force: bool = False,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Decision:
        """The agent takes a queued session, a left message or one of its backlog (手工接入);
        without ``session_id`` the first queue entry it may take."""
        request = pb.PickRequest(
            request_id=request_id or new_request_id(),
            shop_id=shop_id,
            agent_id=agent_id,
            session_id=session_id,
            force=force,
        )
        reply = await self._call(self._queue.Pick, request, idempotent=False, timeout=timeout)
        return Decision.from_pb(reply)

    async def leave_queue(
        self, shop_id: str, buyer_id: str, *, request_id: str = "", timeout: float | None = None
    ) -> Session:
        request = pb.BuyerRequest(
            request_id=request_id or new_request_id(), shop_id=shop_id, buyer_id=buyer_id
        )
        reply = await self._call(self._queue.LeaveQueue, request, idempotent=False, timeout=timeout)
        return Session.from_pb(reply)

    async def list_left_messages(
        self, shop_id: str, *, limit: int = 0, timeout: float | None = None
    ) -> QueueList:
        request = pb.ListLeftMessagesRequest(shop_id=shop_id, limit=limit)
        reply = await self._call(
            self._queue.ListLeftMessages, request, idempotent=True, timeout=timeout
        )
        return QueueList.from_pb(reply)

    # ------------------------------------------------------------ monitor

    async def cluster_map(
        self, *, with_lag: bool = False, timeout: float | None = None
    ) -> ClusterMap:
        """Who serves each virtual shard, as the node called last read it (cluster mode;
        outside it the map names no cluster and no owners).

        ``with_lag``: also each owned shard's ``lag``, asked of every live node of the map
        at once (each tells its own shards'; a node that does not answer leaves its
        shards' lag None): a monitoring call, one stream read per shard."""
        reply = await self._call(
            self._cluster.GetClusterMap, pb.GetClusterMapRequest(with_lag=with_lag),
            idempotent=True, timeout=timeout,
        )  # fmt: skip
        self._open().apply(reply)
        cmap = ClusterMap.from_pb(reply)
        if not with_lag:
            return cmap
        others = [n for n in cmap.nodes if n.node_id != cmap.node_id and n.address]

        async def lag_at(address: str) -> ClusterMap | None:
            try:
                reply = await self._call(
                    self._cluster.GetClusterMap, pb.GetClusterMapRequest(with_lag=True),
                    idempotent=True, timeout=timeout, address=address,
                )  # fmt: skip
            except FenliuError:
                return None  # that node away or stopping: its shards' lag unknown
            return ClusterMap.from_pb(reply)

        told = await asyncio.gather(*(lag_at(n.address) for n in others))
        # (shard, owner) -> lag, as each owner tells it: a shard that owner no longer
        # holds in the map shown stays unknown
        lag = {(o.shard, o.node_id): o.lag for o in cmap.owners if o.node_id == cmap.node_id}
        for node, seen in zip(others, told, strict=True):
            if seen is not None:
                lag.update(((o.shard, o.node_id), o.lag) for o in seen.owners
                           if o.node_id == node.node_id)  # fmt: skip
        owners = tuple(
            dataclasses.replace(o, lag=lag.get((o.shard, o.node_id))) for o in cmap.owners
        )
        return dataclasses.replace(cmap, owners=owners)

    async def get_shop_stats(
        self, shop_id: str, *, window_minutes: int = 0, timeout: float | None = None
    ) -> ShopStats:
        """Queue, today's and the last ``window_minutes`` (1-60, default 60) counts, agents."""
        request = pb.GetShopStatsRequest(shop_id=shop_id, window_minutes=window_minutes)
        reply = await self._call(
            self._monitor.GetShopStats, request, idempotent=True, timeout=timeout
        )
        return ShopStats.from_pb(reply)

    def watch_shop(
        self,
        shop_id: str,
        *,
        after_seq: int | None = None,
        give_up_after: float = DEFAULT_GIVE_UP_AFTER,
    ) -> WatchStream:
        """Every event of the shop, from now on or after ``after_seq``: see ``WatchStream``."""

        def open_stream(after: int | None) -> Any:
            request = pb.WatchShopRequest(shop_id=shop_id, after_seq=after, batch=True)
            return self._stubs_for(shop_id).monitor.WatchShop(request, metadata=self.metadata)

        return WatchStream(
            open_stream, after_seq, backoff=self.backoff, give_up_after=give_up_after,
            reroute=self._reroute_watch,
        )  # fmt: skip

    def _stubs_for(self, shop_id: str) -> _Stubs:
        router = self._open()
        stubs: _Stubs = router.stubs_at(router.address(shop_id))
        return stubs

    async def _reroute_watch(self, error: FenliuError | None) -> None:
        """A watch stream ended (``error`` None: the node closed it, say its shard moved)
        or failed: where it reconnects (the owner a NOT_OWNER names, or the map again)."""
        router = self._open()
        if error is not None and owner_hint(error) is not None:
            if not router.clustered:
                await router.refresh()
            if router.learn(error):
                return
        elif error is None and not router.clustered:
            return  # a single server stopping: reconnect to it
        await router.refresh()

    def watch_agent(
        self,
        shop_id: str,
        agent_id: str,
        *,
        after_seq: int | None = None,
        give_up_after: float = DEFAULT_GIVE_UP_AFTER,
    ) -> WatchStream:
        """The events naming the agent (its workstation's feed): see ``WatchStream``."""

        def open_stream(after: int | None) -> Any:
            request = pb.WatchAgentRequest(
                shop_id=shop_id, agent_id=agent_id, after_seq=after, batch=True
            )
            return self._stubs_for(shop_id).monitor.WatchAgent(request, metadata=self.metadata)

        return WatchStream(
            open_stream, after_seq, backoff=self.backoff, give_up_after=give_up_after,
            reroute=self._reroute_watch,
        )  # fmt: skip


_NO_ERROR = FenliuError(grpc.StatusCode.OK, "")


def _again(result: pb.RouteResult | None) -> bool:
    """Whether a batch item must be sent again: no answer, or refused by a node that does
    not own its shop, or not made durable (UNAVAILABLE: its request id makes it safe)."""
    return result is None or (
        result.HasField("error") and result.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    )


_NOT_POLICY = {"self", "shop_id", "timeout", "request_id", "priority_crowds", "group_crowds"}
_POLICY_ENUMS: dict[str, type[Named]] = {
    "strategy": Strategy,
    "queue_order": QueueOrder,
    "on_queue_full": OnQueueFull,
}


def route_request(
    shop_id: str,
    buyer_id: str,
    *,
    request_id: str = "",
    addressed_agent_id: str = "",
    crowds: Iterable[str] = (),
    group: str = "",
    channel: str = "",
    from_team_member: bool = False,
) -> RouteItem:
    """One item for ``route_batch`` (a request id is generated when none is given)."""
    return RouteItem(
        shop_id=shop_id,
        buyer_id=buyer_id,
        request_id=request_id or new_request_id(),
        addressed_agent_id=addressed_agent_id,
        crowds=tuple(strings(crowds, "crowds")),
        group=group,
        channel=channel,
        from_team_member=from_team_member,
    )


# ---------------------------------------------------------------- the blocking twin


def _blocking(
    method: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[Client, P], T]:
    """The blocking form of an ``AsyncClient`` method, with the same signature."""

    def call(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(method(self._async, *args, **kwargs))

    call.__name__ = method.__name__
    call.__qualname__ = f"Client.{method.__name__}"
    call.__doc__ = method.__doc__
    return call


class Client:
    """The blocking SDK: the same methods as ``AsyncClient``. Use ``with Client(target):``.

    Raises (from every method): a ``FenliuError`` subclass, never a raw ``grpc.RpcError``.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int | None = None,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
        backoff: float = 0.05,
        metadata: Sequence[tuple[str, str]] = (),
        token: str | None = None,
        tls: bool | grpc.ChannelCredentials = False,
        keepalive: float = KEEPALIVE_S,
    ) -> None:
        """The parameters of ``AsyncClient``."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fenliu-client", daemon=True
        )
        self._thread.start()

        async def make() -> AsyncClient:
            return AsyncClient(
                target, timeout=timeout, retries=retries, retry_budget=retry_budget,
                backoff=backoff, metadata=metadata, token=token, tls=tls, keepalive=keepalive,
            )  # fmt: skip

        self._async = self._run(make())

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    set_shop_policy = _blocking(AsyncClient.set_shop_policy)
    get_shop_policy = _blocking(AsyncClient.get_shop_policy)
    register_agent = _blocking(AsyncClient.register_agent)
    update_agent = _blocking(AsyncClient.update_agent)
    remove_agent = _blocking(AsyncClient.remove_agent)
    set_status = _blocking(AsyncClient.set_status)
    list_team = _blocking(AsyncClient.list_team)
    add_private_contact = _blocking(AsyncClient.add_private_contact)
    remove_private_contact = _blocking(AsyncClient.remove_private_contact)
    route = _blocking(AsyncClient.route)
    route_batch = _blocking(AsyncClient.route_batch)
    acknowledge = _blocking(AsyncClient.acknowledge)
    reply = _blocking(AsyncClient.reply)
    transfer = _blocking(AsyncClient.transfer)
    end_sessions = _blocking(AsyncClient.end_sessions)
    get_session = _blocking(AsyncClient.get_session)
    list_agent_sessions = _blocking(AsyncClient.list_agent_sessions)
    star_session = _blocking(AsyncClient.star_session)
    list_recent_contacts = _blocking(AsyncClient.list_recent_contacts)
    list_starred = _blocking(AsyncClient.list_starred)
    list_queue = _blocking(AsyncClient.list_queue)
    get_position = _blocking(AsyncClient.get_position)
    pick = _blocking(AsyncClient.pick)
    leave_queue = _blocking(AsyncClient.leave_queue)
    list_left_messages = _blocking(AsyncClient.list_left_messages)
    get_shop_stats = _blocking(AsyncClient.get_shop_stats)
    cluster_map = _blocking(AsyncClient.cluster_map)

    @property
    def router(self) -> Router | None:
        """``AsyncClient.router``: cluster mode's map and channels."""
        return self._async.router

    def route_stream(self, *, timeout: float | None = None) -> BlockingRouteStream:
        """Blocking ``AsyncClient.route_stream``: ``with fenliu.route_stream() as stream:``;
        its ``route`` blocks for the decision, ``send`` returns a future of the result (so
        one thread can pipeline many)."""

        async def make() -> RouteStream | ClusterRouteStream:
            return self._async.route_stream(timeout=timeout)

        return BlockingRouteStream(self, self._run(make()))

    def watch_shop(
        self,
        shop_id: str,
        *,
        after_seq: int | None = None,
        give_up_after: float = DEFAULT_GIVE_UP_AFTER,
    ) -> Iterator[WatchItem]:
        """Blocking ``AsyncClient.watch_shop``: iterate it; closing it ends the stream."""
        stream = self._async.watch_shop(shop_id, after_seq=after_seq, give_up_after=give_up_after)
        return self._iterate(stream)

    def watch_agent(
        self,
        shop_id: str,
        agent_id: str,
        *,
        after_seq: int | None = None,
        give_up_after: float = DEFAULT_GIVE_UP_AFTER,
    ) -> Iterator[WatchItem]:
        """Blocking ``AsyncClient.watch_agent``: iterate it; closing it ends the stream."""
        stream = self._async.watch_agent(
            shop_id, agent_id, after_seq=after_seq, give_up_after=give_up_after
        )
        return self._iterate(stream)

    def _iterate(self, stream: WatchStream) -> Iterator[WatchItem]:
        stepping: list[asyncio.Task[Any]] = []  # the step in flight, if any

        async def step() -> WatchItem | None:
            task = asyncio.current_task()
            if task is not None:
                stepping[:] = [task]
            try:
                return await stream.__anext__()
            except StopAsyncIteration:
                return None

        async def stop() -> None:
            # Interrupted while waiting (Ctrl-C): the step still runs on the loop, and an
            # async generator cannot be closed while it runs. Cancel it first.
            for task in stepping:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
            await stream.aclose()

        try:
            while (item := self._run(step())) is not None:
                yield item
        finally:
            if not self._loop.is_closed():
                self._run(stop())


class BlockingRouteStream:
    """``RouteStream`` for the blocking ``Client`` (run on the client's loop thread)."""

    def __init__(self, client: Client, stream: RouteStream | ClusterRouteStream) -> None:
        self._client = client
        self._stream = stream

    def send(self, item: RouteItem | pb.RouteRequest) -> Future[RouteResult]:
        """Write one request (blocking while the stream is held back); its result's future."""

        async def send() -> asyncio.Future[RouteResult]:
            return await self._stream.send(item)

        sent = self._client._run(send())

        async def wait() -> RouteResult:
            return await sent

        return asyncio.run_coroutine_threadsafe(wait(), self._client._loop)

    def route(self, shop_id: str, buyer_id: str, **kwargs: Any) -> Decision:
        """``RouteStream.route``: the decision, or its error raised."""
        return self._client._run(self._stream.route(shop_id, buyer_id, **kwargs))

    def close(self) -> None:
        if not self._client._loop.is_closed():
            self._client._run(self._stream.close())

    def __enter__(self) -> BlockingRouteStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

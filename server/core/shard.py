"""A shard: the shops whose id hashes to it, their timers, and the commands on them.

``Shard.apply`` checks a command completely before it changes anything, then hands it to
the shop (``shop.py``); ``Shard.read`` answers queries without changing state.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappop, heappush
from operator import attrgetter
from typing import Any, Final

import msgspec
from mypy_extensions import mypyc_attr

from . import validate as v
from .errors import (
    AlreadyExists,
    FailedPrecondition,
    FenliuError,
    InvalidArgument,
    NotFound,
    resource_name,
)
from .shop import (
    ENDED_KEEP_MS as _ENDED_KEEP_MS,
    IDEMPOTENCY_WINDOW_MS,
    T_NOTICE,
    T_RECENT,
    T_REQUEST,
    T_SESSION,
    Shop,
)
from .state import Agent, Ended, Session
from .stats import (
    FAST_REPLY_MS,
    REPLIED,
    REPLIED_FAST,
    WINDOW_MINUTES,
    ShopCounters,
    counts_view,
)
from .types import (
    Acknowledge,
    AddPrivateContact,
    AgentSessionsView,
    AgentStatsView,
    AgentView,
    ContactView,
    Decision,
    Done,
    EndResult,
    EndSessions,
    Event,
    GetPolicy,
    GetPosition,
    GetSession,
    GetShopStats,
    LeaveQueue,
    ListAgentSessions,
    ListLeftMessages,
    ListQueue,
    ListRecentContacts,
    ListStarred,
    ListTeam,
    MessageFilter,
    Moved,
    Outcome,
    Pick,
    Policy,
    PolicyChange,
    QueueEntryView,
    QueueList,
    QueueSort,
    Reason,
    Refused,
    RegisterAgent,
    RemoveAgent,
    RemovePrivateContact,
    Reply,
    Role,
    Route,
    SessionSort,
    SessionView,
    SetPolicy,
    SetStatus,
    ShopStatsView,
    StarredView,
    StarSession,
    State,
    Status,
    StatusResult,
    Tick,
    Transfer,
    UpdateAgent,
)

_heappop: Final = heappop  # a module static, not a globals lookup per call (mypyc)
_heappush: Final = heappush
_Route: Final = Route
_Tick: Final = Tick
_Refused: Final = Refused
_replace: Final = msgspec.structs.replace
# A command's key read in C: compiled, ``command.request_id`` on an Any costs ~1,200 more
# instructions per command than this call (bench/keyed.py).
_request_id: Final = attrgetter("request_id")
_key_of: Final = attrgetter("shop_id", "request_id")
_astuple: Final = msgspec.structs.astuple
# Route's fields in astuple's order (kw_only: the base's ``at`` comes last).
_ROUTE_FIELDS: Final = (
    "shop_id", "buyer_id", "request_id", "addressed_agent_id", "crowds", "group", "channel",
    "from_team_member", "at",
)  # fmt: skip
if Route.__struct_fields__ != _ROUTE_FIELDS:
    raise ImportError(f"Route's fields changed: {Route.__struct_fields__}; see Shard.apply_route")

_DURATIONS: Final = (
    "notice_interval_ms",
    "accept_timeout_ms",
    "reply_timeout_ms",
    "idle_end_timeout_ms",
    "queue_wait_limit_ms",
    "sticky_window_ms",
    "recent_contact_ttl_ms",
)


@mypyc_attr(allow_interpreted_subclasses=True)  # tests subclass it
class Shard:
    """One partition of the state; commands on it are applied one at a time."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.shops: dict[str, Shop] = {}
        self.now = 0  # the time of the latest command; never goes backwards
        self.outbox: list[Event] = []
        self.moved: list[Decision] = []
        self.timers: list[tuple[int, int, int, Shop, Any]] = []
        self.timer_seq = 0
        # Keyed commands (request_id set, not Route), oldest first: (shop id, request id)
        # -> (time, the command, its outcome: a result or a Refused). See ``keyed``.
        self.keyed: dict[tuple[str, str], tuple[int, Any, Any]] = {}

    def push_timer(self, due: int, kind: int, shop: Shop, key: Any) -> None:
        self.timer_seq += 1
        _heappush(self.timers, (due, self.timer_seq, kind, shop, key))

    # ------------------------------------------------------------ entry points

    def apply(self, command: Any) -> Any:
        """Apply one command; raises a ``FenliuError`` having changed nothing."""
        kind = type(command)
        if kind is _Route:  # the hot path: its fields, read in one C call
            fields = _astuple(command)
            return self.apply_route(fields, fields[8])
        before = self.now
        at: int = command.at
        if at > before:
            self.now = at
        if self.moved:
            self.moved = []
        try:
            if kind is not _Tick and _request_id(command):
                return self.keyed_apply(command)
            return _COMMANDS[kind](self, command)
        except FenliuError:
            self.now = before  # a rejected command leaves no trace, not even its time
            raise

    def apply_route(self, fields: tuple[Any, ...], at: int) -> Decision:
        """``apply`` of a Route given as its fields at ``at``: Route's first eight in its
        field order (``_ROUTE_FIELDS``), as ``astuple`` and the wire codec give them. A
        unary Route from the wire codec comes here with its tuple (``Node.submit_route``):
        no Route made only to be taken apart again."""
        before = self.now
        if at > before:
            self.now = at
        if self.moved:
            self.moved = []
        try:
            return self.route_fields(fields)
        except FenliuError:
            self.now = before  # a rejected command leaves no trace, not even its time
            raise

    def read(self, query: Any) -> Any:
        return _QUERIES[type(query)](self, query)

    # ------------------------------------------------------------ idempotency keys

    def keyed_apply(self, command: Any) -> Any:
        """A command with an idempotency key (any but Route and Tick): applied once.

        The key is remembered in the shard, per shop, with the command and its outcome for
        ``IDEMPOTENCY_WINDOW_MS`` (Route's window): the same command again answers that
        outcome and changes nothing; an error is an outcome too, returned as a ``Refused``
        (remembering it is a change: it is journaled and imaged like the rest). The key
        reused by another command (other fields, or another kind) is FAILED_PRECONDITION
        naming ``request_id``, remembering nothing.
        """
        key: tuple[str, str] = _key_of(command)
        shop_id, request_id = key
        v.check_id(shop_id, "shop_id")
        v.check_id(request_id, "request_id")
        keyed = self.keyed
        if keyed:
            self.expire_keyed()
        entry = keyed.get(key)
        if entry is not None:
            earlier = entry[1]
            if type(earlier) is type(command) and _replace(earlier, at=command.at) == command:
                return entry[2]
            raise FailedPrecondition(
                f"request_id: {request_id!r} was the key of another request to shop "
                f"{shop_id!r} (a {type(earlier).__name__}) in the last "
                f"{IDEMPOTENCY_WINDOW_MS // 60_000} minutes; use a new key for a new request",
                "request_id",
                reason="REQUEST_ID_REUSED",
                subject=resource_name(shop_id),
            )
        try:
            outcome = _COMMANDS[type(command)](self, command)
        except FenliuError as exc:
            outcome = _Refused(
                error=type(exc).__name__,
                message=exc.message,
                field=exc.field,
                reason=exc.reason,
                subject=exc.subject,
            )
        keyed[key] = (self.now, command, outcome)
        return outcome

    def expire_keyed(self) -> None:
        """Forget the keyed commands older than the window (at each keyed command and Tick)."""
        keyed = self.keyed
        horizon = self.now - IDEMPOTENCY_WINDOW_MS
        old: list[tuple[str, str]] = []
        for key, entry in keyed.items():
            if entry[0] > horizon:
                break
            old.append(key)
        for key in old:
            del keyed[key]

    def shop(self, shop_id: str) -> Shop:
        shop = self.shops.get(shop_id)
        if shop is None:
            v.check_id(shop_id, "shop_id")
            raise NotFound(
                f"shop_id: no shop {shop_id!r}",
                "shop_id",
                reason="SHOP_NOT_FOUND",
                subject=resource_name(shop_id),
            )
        return shop

    def shop_or_new(self, shop_id: str) -> Shop:
        shop = self.shops.get(shop_id)
        if shop is None:
            v.check_id(shop_id, "shop_id")
            shop = self.shops[shop_id] = Shop(self, shop_id)
        return shop

    # ------------------------------------------------------------ routing

    def route(self, cmd: Route) -> Decision:
        # All fields in one C call: a msgspec field read is a generic attribute lookup (about
        # 160 instructions each, compiled); one astuple and the items cost a fifth of that.
        return self.route_fields(_astuple(cmd))

    def route_fields(self, fields: tuple[Any, ...]) -> Decision:
        """Rules 0 and 1 here; the shop applies rules 2–6. ``fields``: see ``apply_route``."""
        shop_id: str = fields[0]
        buyer_id: str = fields[1]
        request_id: str = fields[2]
        shop = self.shop(shop_id)
        v.check_id(buyer_id, "buyer_id")
        v.check_id(request_id, "request_id")
        cached = shop.requests.get(request_id)
        if cached is not None:
            return cached
        addressed_id: str = fields[3]
        crowds: tuple[str, ...] = fields[4]
        group: str = fields[5]
        channel: str = fields[6]
        team: bool = fields[7]
        if group:
            v.check_optional_id(group, "group")
        if channel:
            v.check_optional_id(channel, "channel")
        if crowds:
            v.check_ids(crowds, "crowds", v.MAX_CROWDS)
        addressed = None
        if addressed_id:
            v.check_id(addressed_id, "addressed_agent_id")
        if team:
            if not addressed_id:
                raise InvalidArgument(
                    "addressed_agent_id is required for a team message", "addressed_agent_id"
                )
            if buyer_id not in shop.agents:
                # a wrong flag from the gateway would skip routing silently
                raise InvalidArgument(
                    f"from_team_member is set but buyer_id {v.show(buyer_id)} is not an "
                    f"agent of shop {v.show(shop_id)}",
                    "from_team_member",
                )
        if addressed_id:
            addressed = shop.agent(addressed_id, "addressed_agent_id")
        if team:
            assert addressed is not None
            decision = Decision(
                outcome=Outcome.TEAM_DELIVERY,
                reason=Reason.TEAM_MESSAGE,
                buyer_id=buyer_id,
                agent_id=addressed.agent_id,
            )
        else:
            decision = shop.route_buyer(buyer_id, addressed, crowds, group, channel)
        shop.remember_request(request_id, decision)
        return decision

    def tick(self, cmd: Tick) -> Moved:
        """Fire every timer due by now: timeouts, queue waits, expiries."""
        now = self.now
        timers = self.timers
        if self.keyed:
            self.expire_keyed()
        while timers and timers[0][0] <= now:
            due, _, kind, shop, key = _heappop(timers)
            if kind == T_SESSION:
                shop.fire(key, due)
            elif kind == T_RECENT:
                shop.expire_recent()
            elif kind == T_REQUEST:
                shop.expire_requests()
            elif kind == T_NOTICE:
                self._expire(shop, shop.notices, key, shop.policy.notice_interval_ms, kind)
        return Moved(moved=tuple(self.moved))

    def _expire(self, shop: Shop, table: dict[str, Any], key: str, ttl: int, kind: int) -> None:
        """Drop ``table[key]`` if its time (last element, or the value) is ``ttl`` old."""
        value = table.get(key)
        if value is None:
            return
        at = value[-1] if isinstance(value, tuple) else value
        if at + ttl <= self.now:
            del table[key]
        else:
            self.push_timer(at + ttl, kind, shop, key)

    # ------------------------------------------------------------ shops and agents

    def set_policy(self, cmd: SetPolicy) -> Policy:
        change = cmd.change
        _check_policy(change)
        shop = self.shop_or_new(cmd.shop_id)
        old = shop.policy
        fields = {k: val for k, val in msgspec.structs.asdict(change).items() if val is not None}
        shop.policy = new = msgspec.structs.replace(old, **fields)
        shop.priority_crowds = frozenset(new.priority_crowds)
        shop.set_crowd_groups()
        if new.strategy is not old.strategy:
            for scope, heap in shop.heaps.items():
                heap.strategy = new.strategy
                shop.rebuild_heap(scope)
        if new.queue_order is not old.queue_order:
            shop.rebuild_queue()
        if new.time_zone != old.time_zone:
            shop.day_start = shop.day_end = 0
        for session in shop.sessions.values():
            shop.schedule(session)
        shop.fill_all()
        return new

    def register_agent(self, cmd: RegisterAgent) -> AgentView:
        """Create an agent; an existing one only with ``replace`` (or the same fields)."""
        v.check_id(cmd.shop_id, "shop_id")
        v.check_id(cmd.agent_id, "agent_id")
        v.check_ids(cmd.groups, "groups", v.MAX_GROUPS)
        v.check_range(cmd.max_concurrent, "max_concurrent", 0, v.MAX_CONCURRENT)
        shop = self.shops.get(cmd.shop_id)
        agent = shop.agents.get(cmd.agent_id) if shop is not None else None
        groups = tuple(dict.fromkeys(cmd.groups))
        if agent is not None and shop is not None and cmd.replace is False:
            same = (agent.role, agent.groups, agent.max_concurrent) == (
                cmd.role, groups, cmd.max_concurrent,
            )  # fmt: skip
            if same:  # a retried registration: nothing to change
                return _agent_view(shop, agent, self.now)
            raise AlreadyExists(
                f"agent_id: agent {cmd.agent_id!r} exists in shop {cmd.shop_id!r}; "
                "UpdateAgent changes the fields it names, replace=true replaces them all",
                "agent_id",
                subject=resource_name(cmd.shop_id, "agents", cmd.agent_id),
            )
        self._check_main(shop, cmd.shop_id, agent, cmd.role)
        shop = self.shop_or_new(cmd.shop_id)
        if agent is None:
            shop.reg_seq += 1
            agent = Agent(
                cmd.agent_id, cmd.role, groups, cmd.max_concurrent, cmd.status, shop.reg_seq
            )
            shop.agents[agent.agent_id] = agent
            shop.join(agent)
            shop.emit("status_changed", agent.agent_id, status=agent.status)
            if cmd.role is Role.MAIN:
                shop.main = agent
            shop.touch(agent)
        else:
            shop.change_agent(agent, cmd.role, groups, cmd.max_concurrent)
        shop.fill_all() if shop.queue or shop.left else shop.fill(agent)
        return _agent_view(shop, agent, self.now)

    def _check_main(self, shop: Shop | None, shop_id: str, agent: Agent | None, role: Role) -> None:
        main = shop.main if shop is not None else None
        if role is Role.MAIN and main is not None and main is not agent:
            raise FailedPrecondition(
                f"role: shop {shop_id!r} already has a MAIN agent ({main.agent_id!r})",
                "role",
                reason="MAIN_AGENT_TAKEN",
                subject=resource_name(shop_id, "agents", main.agent_id),
            )

    def update_agent(self, cmd: UpdateAgent) -> AgentView:
        """Change only the named fields of an existing agent (like SetPolicy)."""
        shop = self.shop(cmd.shop_id)
        v.check_id(cmd.agent_id, "agent_id")
        if cmd.groups is not None:
            v.check_ids(cmd.groups, "groups", v.MAX_GROUPS)
        if cmd.max_concurrent is not None:
            v.check_range(cmd.max_concurrent, "max_concurrent", 0, v.MAX_CONCURRENT)
        agent = shop.agent(cmd.agent_id)
        role = agent.role if cmd.role is None else cmd.role
        self._check_main(shop, cmd.shop_id, agent, role)
        groups = agent.groups if cmd.groups is None else tuple(dict.fromkeys(cmd.groups))
        max_concurrent = agent.max_concurrent if cmd.max_concurrent is None else cmd.max_concurrent
        if (role, groups, max_concurrent) == (agent.role, agent.groups, agent.max_concurrent):
            return _agent_view(shop, agent, self.now)
        shop.change_agent(agent, role, groups, max_concurrent)
        shop.fill_all() if shop.queue or shop.left else shop.fill(agent)
        return _agent_view(shop, agent, self.now)

    def star_session(self, cmd: StarSession) -> SessionView:
        """Star a session of the agent's list (in progress or ended), or clear its star."""
        shop = self.shop(cmd.shop_id)
        v.check_id(cmd.session_id, "session_id")
        agent = shop.agent(cmd.agent_id)
        session = shop.sessions.get(cmd.session_id)
        found = shop.ended_session(cmd.session_id) if session is None else None
        if session is None and found is None and not shop.issued(cmd.session_id):
            shop.session(cmd.session_id)  # raises NotFound
        if cmd.starred:
            if session is not None and session.agent is agent:
                buyer = session.buyer_id
            elif found is not None and found[0] is agent:
                buyer = found[1].buyer_id
            else:
                raise FailedPrecondition(
                    f"session_id: session {cmd.session_id!r} is not in the list of agent "
                    f"{agent.agent_id!r}",
                    "session_id",
                    reason="SESSION_NOT_HELD",
                    subject=resource_name(shop.shop_id, "sessions", cmd.session_id),
                )
            self._stars(shop, agent)[cmd.session_id] = (buyer, self.now)
        elif agent.starred is not None:
            agent.starred.pop(cmd.session_id, None)  # clearing a missing star changes nothing
        if session is not None:
            return _session_view(shop, session)
        if found is not None:
            return _ended_view(found[1], found[0])
        return _gone_view(cmd.session_id)

    def _stars(self, shop: Shop, agent: Agent) -> dict[str, tuple[str, int]]:
        """The agent's stars, past the recent-contact window dropped."""
        starred = agent.starred
        if starred is None:
            starred = agent.starred = {}
        horizon = self.now - shop.policy.recent_contact_ttl_ms
        for session_id in [k for k, (_, at) in starred.items() if at <= horizon]:
            del starred[session_id]
        return starred

    def remove_agent(self, cmd: RemoveAgent) -> Moved:
        shop = self.shop(cmd.shop_id)
        shop.remove_agent(shop.agent(cmd.agent_id))
        return Moved(moved=tuple(self.moved))

    def set_status(self, cmd: SetStatus) -> StatusResult:
        shop = self.shop(cmd.shop_id)
        agent = shop.agent(cmd.agent_id)
        shop.set_status(agent, cmd.status)
        return StatusResult(agent=_agent_view(shop, agent, self.now), moved=tuple(self.moved))

    def add_private(self, cmd: AddPrivateContact) -> Done:
        shop = self.shop(cmd.shop_id)
        v.check_id(cmd.buyer_id, "buyer_id")
        shop.private.add(cmd.buyer_id)
        return Done()

    def remove_private(self, cmd: RemovePrivateContact) -> Done:
        shop = self.shop(cmd.shop_id)
        v.check_id(cmd.buyer_id, "buyer_id")
        shop.private.discard(cmd.buyer_id)
        return Done()

    # ------------------------------------------------------------ sessions

    def held(self, shop: Shop, agent_id: str, session_id: str) -> tuple[Agent, Session]:
        """The agent and one of its ASSIGNED/ACTIVE sessions."""
        agent = shop.agent(agent_id)
        session = shop.session(session_id)
        if session.agent is not agent or session.state not in (State.ASSIGNED, State.ACTIVE):
            raise FailedPrecondition(
                f"session_id: session {session_id!r} is {session.state.name}"
                f" and not held by agent {agent_id!r}",
                "session_id",
                reason="SESSION_NOT_HELD",
                subject=resource_name(shop.shop_id, "sessions", session_id),
            )
        return agent, session

    def acknowledge(self, cmd: Acknowledge) -> SessionView:
        shop = self.shop(cmd.shop_id)
        agent, session = self.held(shop, cmd.agent_id, cmd.session_id)
        if session.state is State.ASSIGNED:
            shop.act(session, agent)
            shop.schedule(session)
        return _session_view(shop, session)

    def reply(self, cmd: Reply) -> SessionView:
        shop = self.shop(cmd.shop_id)
        agent, session = self.held(shop, cmd.agent_id, cmd.session_id)
        shop.act(session, agent)
        if not session.first_reply_at:
            session.first_reply_at = self.now
            shop.tally(REPLIED)
            if self.now - session.created_at <= FAST_REPLY_MS:
                shop.tally(REPLIED_FAST)
        session.awaiting_since = None
        session.last_activity = self.now
        shop.schedule(session)
        return _session_view(shop, session)

    def transfer(self, cmd: Transfer) -> Decision:
        v.check_optional_id(cmd.agent_id, "agent_id")
        v.check_optional_id(cmd.to_agent_id, "to_agent_id")
        v.check_optional_id(cmd.to_group, "to_group")
        if bool(cmd.to_agent_id) == bool(cmd.to_group):  # format before existence
            raise InvalidArgument(
                "exactly one of to_agent_id and to_group must be set", "to_agent_id"
            )
        shop = self.shop(cmd.shop_id)
        v.check_id(cmd.session_id, "session_id")
        session = shop.session(cmd.session_id)
        source = session.agent
        if session.state not in (State.ASSIGNED, State.ACTIVE) or source is None:
            raise FailedPrecondition(
                f"session_id: only an ASSIGNED or ACTIVE session can be transferred "
                f"(it is {session.state.name})",
                "session_id",
                reason="SESSION_NOT_TRANSFERABLE",
                subject=resource_name(shop.shop_id, "sessions", cmd.session_id),
            )
        if cmd.agent_id and cmd.agent_id != source.agent_id:
            shop.agent(cmd.agent_id)
            raise FailedPrecondition(
                f"agent_id: session {cmd.session_id!r} is held by {source.agent_id!r}",
                "agent_id",
                reason="SESSION_NOT_HELD",
                subject=resource_name(shop.shop_id, "sessions", cmd.session_id),
            )
        if cmd.to_agent_id:
            target = self._transfer_target(shop, cmd, source)
            shop.detach(session)
            session.private = False  # handed over on purpose
            shop.assign(session, target, Reason.TRANSFER)
        else:
            plan = shop.shop_route(cmd.to_group, session.priority, {source.agent_id})
            if plan[0] != "assign" and not cmd.force:
                raise FailedPrecondition(
                    f"to_group: nobody in group {cmd.to_group!r} can take the session now",
                    "to_group",
                    reason="GROUP_UNAVAILABLE",
                    subject=resource_name(shop.shop_id, "groups", cmd.to_group),
                )
            shop.detach(session)
            session.private = False
            session.group = cmd.to_group
            if plan[0] == "assign":
                shop.assign(session, plan[1], Reason.TRANSFER)  # type: ignore[arg-type]
            else:
                shop.enqueue(session, Reason.TRANSFER)
        shop.emit("transferred", source.agent_id, session, Reason.TRANSFER)
        decision = shop.decision(session, Reason.TRANSFER)
        shop.fill(source)
        return decision

    def _transfer_target(self, shop: Shop, cmd: Transfer, source: Agent) -> Agent:
        target = shop.agent(cmd.to_agent_id, "to_agent_id")
        problem = reason = ""
        if target is source:
            problem, reason = "is the agent holding the session", "SAME_AGENT"
        elif target.status is Status.OFFLINE:
            problem, reason = "is OFFLINE", "AGENT_OFFLINE"
        elif target.load >= target.max_concurrent and not cmd.force:
            problem = f"is full ({target.load}/{target.max_concurrent}); set force to override"
            reason = "AGENT_FULL"
        if problem:
            raise FailedPrecondition(
                f"to_agent_id: agent {target.agent_id!r} {problem}",
                "to_agent_id",
                reason=reason,
                subject=resource_name(shop.shop_id, "agents", target.agent_id),
            )
        return target

    def end_sessions(self, cmd: EndSessions) -> EndResult:
        shop = self.shop(cmd.shop_id)
        v.check_batch(len(cmd.session_ids), "session_ids")
        sessions = shop.sessions
        for i, session_id in enumerate(cmd.session_ids):
            if session_id in sessions:
                continue  # an open session's id is well formed
            v.check_id(session_id, f"session_ids[{i}]")
            if not shop.issued(session_id):
                raise NotFound(
                    f"session_ids[{i}]: shop {cmd.shop_id!r} never had session {session_id!r}",
                    f"session_ids[{i}]",
                    reason="SESSION_NOT_FOUND",
                    subject=resource_name(cmd.shop_id, "sessions", session_id),
                )
        ended = 0
        freed: dict[str, Agent] = {}
        for session_id in cmd.session_ids:
            session = shop.sessions.get(session_id)
            if session is not None:
                agent = shop.end(session)
                ended += 1
                if agent is not None:
                    freed[agent.agent_id] = agent
        for agent in freed.values():
            if shop.agents.get(agent.agent_id) is agent:
                shop.fill(agent)
        return EndResult(
            ended=ended, already_ended=len(cmd.session_ids) - ended, moved=tuple(self.moved)
        )

    def pick(self, cmd: Pick) -> Decision:
        shop = self.shop(cmd.shop_id)
        v.check_optional_id(cmd.session_id, "session_id")
        agent = shop.agent(cmd.agent_id)
        if agent.status is Status.OFFLINE:
            raise FailedPrecondition(
                f"agent_id: agent {agent.agent_id!r} is OFFLINE",
                "agent_id",
                reason="AGENT_OFFLINE",
                subject=resource_name(shop.shop_id, "agents", agent.agent_id),
            )
        if cmd.session_id:
            session = shop.session(cmd.session_id)
            _check_pickable(shop, session, agent)
        else:
            found = next((e[3] for e in shop.queue if _may_pick(e[3], agent)), None)
            if found is None:
                raise FailedPrecondition(
                    "session_id: the queue holds nothing this agent may take",
                    "session_id",
                    reason="NOTHING_TO_PICK",
                    subject=resource_name(shop.shop_id),
                )
            session = found
        if agent.load >= agent.max_concurrent and not cmd.force:
            raise FailedPrecondition(
                f"agent_id: agent {agent.agent_id!r} is full "
                f"({agent.load}/{agent.max_concurrent}); set force to override",
                "agent_id",
                reason="AGENT_FULL",
                subject=resource_name(shop.shop_id, "agents", agent.agent_id),
            )
        shop.detach(session)
        shop.assign(session, agent, Reason.MANUAL_PICK, active=True)
        shop.served(agent)
        shop.remember_contact(session.buyer_id, agent)
        return shop.decision(session, Reason.MANUAL_PICK)

    def leave_queue(self, cmd: LeaveQueue) -> SessionView:
        shop = self.shop(cmd.shop_id)
        session = shop.buyer_session(cmd.buyer_id)
        if session.state is not State.QUEUED:
            raise FailedPrecondition(
                f"buyer_id: the session of {cmd.buyer_id!r} is {session.state.name}, not QUEUED",
                "buyer_id",
                reason="SESSION_NOT_QUEUED",
                subject=resource_name(shop.shop_id, "sessions", session.session_id),
            )
        shop.end(session)
        return _session_view(shop, session)

    # ------------------------------------------------------------ reads

    def get_policy(self, q: GetPolicy) -> Policy:
        return self.shop(q.shop_id).policy

    def list_team(self, q: ListTeam) -> tuple[AgentView, ...]:
        shop = self.shop(q.shop_id)
        now = max(q.at, self.now)
        return tuple(_agent_view(shop, a, now) for a in shop.agents.values())

    def get_session(self, q: GetSession) -> SessionView:
        """An open session; an ended one is ENDED (with its details while an agent's list
        keeps it, ENDED_KEEP_MS), an id the shop never issued NOT_FOUND."""
        shop = self.shop(q.shop_id)
        v.check_id(q.session_id, "session_id")
        session = shop.sessions.get(q.session_id)
        if session is not None:
            return _session_view(shop, session)
        found = shop.ended_session(q.session_id)
        if found is not None:
            return _ended_view(found[1], found[0])
        if shop.issued(q.session_id):
            return _gone_view(q.session_id)
        return _session_view(shop, shop.session(q.session_id))  # raises NotFound

    def list_agent_sessions(self, q: ListAgentSessions) -> AgentSessionsView:
        """Seed 003's reception list: in progress and ended, sorted and filtered."""
        shop = self.shop(q.shop_id)
        v.check_optional_id(q.channel, "channel")
        agent = shop.agent(q.agent_id)
        channel, messages = q.channel, q.messages
        live = [
            s
            for s in (*agent.open_sessions(), *agent.backlog.values())
            if (not channel or s.channel == channel)
            and (
                messages is MessageFilter.ANY
                or (s.awaiting_since is not None) == (messages is MessageFilter.WAITING)
            )
        ]
        live.sort(key=_SORTS[q.sort])
        now = max(q.at, self.now)
        ended = [
            e
            for e in reversed((agent.ended or {}).values())
            if e.ended_at > now - _ENDED_KEEP_MS and (not channel or e.channel == channel)
        ]
        if messages is not MessageFilter.WAITING:  # an ended session waits for nothing
            ended.sort(key=_ENDED_SORTS[q.sort])
        else:
            ended = []
        return AgentSessionsView(
            sessions=tuple(_session_view(shop, s) for s in live),
            ended=tuple(_ended_view(e, agent) for e in ended),
            load=agent.load,
            max_concurrent=agent.max_concurrent,
            over_capacity=agent.load > agent.max_concurrent,
        )

    def list_recent_contacts(self, q: ListRecentContacts) -> tuple[ContactView, ...]:
        """The buyers whose recent contact (rule 4) is the agent, newest first."""
        shop = self.shop(q.shop_id)
        limit = _limit(q.limit)
        agent = shop.agent(q.agent_id)
        index = shop.contact_index.get(agent.agent_id)
        if index is None:
            return ()
        horizon = max(q.at, self.now) - shop.policy.recent_contact_ttl_ms
        found: list[ContactView] = []
        for buyer, packed in reversed(shop.recent.items()):
            at = packed >> 32
            if at <= horizon:
                break  # oldest first: the rest are older
            if packed & 0xFFFFFFFF == index:
                found.append(ContactView(buyer_id=buyer, agent_id=agent.agent_id, last_at=at))
                if len(found) == limit:
                    break
        return tuple(found)

    def list_starred(self, q: ListStarred) -> tuple[StarredView, ...]:
        shop = self.shop(q.shop_id)
        limit = _limit(q.limit)
        agent = shop.agent(q.agent_id)
        horizon = max(q.at, self.now) - shop.policy.recent_contact_ttl_ms
        stars = sorted(
            (
                (at, sid, buyer)
                for sid, (buyer, at) in (agent.starred or {}).items()
                if at > horizon
            ),
            reverse=True,
        )
        return tuple(
            StarredView(
                session_id=sid,
                buyer_id=buyer,
                starred_at=at,
                state=shop.sessions[sid].state if sid in shop.sessions else State.ENDED,
            )
            for at, sid, buyer in stars[:limit]
        )

    def list_queue(self, q: ListQueue) -> QueueList:
        shop = self.shop(q.shop_id)
        limit = _limit(q.limit)
        v.check_optional_id(q.group, "group")
        v.check_optional_id(q.channel, "channel")
        now = max(q.at, self.now)
        entries = [
            _entry_view(e[3], i + 1, now)
            for i, e in enumerate(shop.queue)
            if (not q.priority_only or e[3].priority)
            and (not q.group or e[3].group == q.group)
            and (not q.channel or e[3].channel == q.channel)
        ]
        if q.sort is QueueSort.LONGEST_WAIT:
            entries.sort(key=lambda e: -e.waited_ms)
        elif q.sort is QueueSort.SHORTEST_WAIT:
            entries.sort(key=lambda e: e.waited_ms)
        return QueueList(entries=tuple(entries[:limit]), total=len(entries))

    def get_position(self, q: GetPosition) -> SessionView:
        shop = self.shop(q.shop_id)
        session = shop.buyer_session(q.buyer_id)
        return _session_view(shop, session)

    def list_left_messages(self, q: ListLeftMessages) -> QueueList:
        shop = self.shop(q.shop_id)
        limit = _limit(q.limit)
        now = max(q.at, self.now)
        entries = [_entry_view(s, i + 1, now) for i, s in enumerate(shop.left.values())]
        return QueueList(entries=tuple(entries[:limit]), total=len(entries))

    def get_shop_stats(self, q: GetShopStats) -> ShopStatsView:
        shop = self.shop(q.shop_id)
        minutes = q.window_minutes or WINDOW_MINUTES
        v.check_range(minutes, "window_minutes", 1, WINDOW_MINUTES)
        now = max(q.at, self.now)
        day = shop.today(now)
        overdue = sum(
            1
            for s in shop.sessions.values()
            if not s.first_reply_at and now - s.created_at > FAST_REPLY_MS
        )
        counters = shop.counters or ShopCounters()
        return ShopStatsView(
            shop_id=shop.shop_id,
            at=now,
            queue_length=len(shop.queue),
            longest_wait_ms=max((now - e[3].created_at for e in shop.queue), default=0),
            left_messages=len(shop.left),
            open_sessions=len(shop.sessions),
            today=counts_view(counters.today_counts(day), overdue),
            window=counts_view(counters.window(now, minutes), overdue),
            window_minutes=minutes,
            agents=tuple(
                AgentStatsView(
                    agent_id=a.agent_id,
                    status=a.status,
                    load=a.load,
                    served_today=a.served_count if a.served_day == day else 0,
                )
                for a in shop.agents.values()
            ),
            event_seq=shop.event_seq,
        )


# ---------------------------------------------------------------- checks and views


def _check_policy(change: PolicyChange) -> None:
    if change.queue_limit is not None:
        v.check_range(change.queue_limit, "policy.queue_limit", 0, v.MAX_QUEUE_LIMIT)
    for name in _DURATIONS:
        value = getattr(change, name)
        if value is not None:
            v.check_range(value, f"policy.{name}", 0, v.MAX_DURATION_MS)
    if change.priority_crowds is not None:
        v.check_ids(change.priority_crowds, "policy.priority_crowds", v.MAX_PRIORITY_CROWDS)
    if change.time_zone is not None:
        v.check_time_zone(change.time_zone)
    if change.member_crowd is not None:
        v.check_optional_id(change.member_crowd, "policy.member_crowd")
    if change.group_crowds is not None:
        if len(change.group_crowds) > v.MAX_CROWD_GROUPS:
            raise InvalidArgument(
                f"policy.group_crowds holds {len(change.group_crowds)} groups; "
                f"at most {v.MAX_CROWD_GROUPS}",
                "policy.group_crowds",
            )
        for group, crowds in change.group_crowds.items():
            v.check_id(group, "policy.group_crowds")
            v.check_ids(crowds, f"policy.group_crowds[{group}]", v.MAX_CROWDS)


def _limit(limit: int) -> int:
    if limit == 0:
        return 100
    v.check_range(limit, "limit", 1, v.MAX_LIST)
    return limit


def _may_pick(session: Session, agent: Agent) -> bool:
    """Whether the agent may pick this queue entry without naming it."""
    return (not session.group or session.group in agent.groups) and not (
        session.excluded and agent.agent_id in session.excluded
    )


def _check_pickable(shop: Shop, session: Session, agent: Agent) -> None:
    state = session.state
    if state is State.QUEUED:
        return
    if state is State.BACKLOG and session.agent is agent:
        return
    if state is State.LEFT_MESSAGE and session.left_for in ("", agent.agent_id):
        return
    raise FailedPrecondition(
        f"session_id: session {session.session_id!r} is {state.name}; an agent picks queued "
        "sessions, left messages and its own backlog",
        "session_id",
        reason="SESSION_NOT_PICKABLE",
        subject=resource_name(shop.shop_id, "sessions", session.session_id),
    )


def _agent_view(shop: Shop, agent: Agent, now: int) -> AgentView:
    return AgentView(
        agent_id=agent.agent_id,
        role=agent.role,
        groups=agent.groups,
        max_concurrent=agent.max_concurrent,
        status=agent.status,
        load=agent.load,
        new_count=agent.new_count,
        backlog_size=len(agent.backlog),
        served_today=agent.served_count if agent.served_day == shop.today(now) else 0,
        over_capacity=agent.load > agent.max_concurrent,
    )


def _session_view(shop: Shop, session: Session) -> SessionView:
    agent = session.agent
    return SessionView(
        session_id=session.session_id,
        buyer_id=session.buyer_id,
        state=session.state,
        agent_id=agent.agent_id if agent is not None else session.left_for,
        group=session.group,
        channel=session.channel,
        priority=session.priority,
        queue_position=shop.position(session),
        created_at=session.created_at,
        first_reply_at=session.first_reply_at,
        reason=session.reason,
        assigned_at=session.assigned_at if session.agent is not None else 0,
        last_buyer_at=session.last_buyer_at,
        waiting_since=session.awaiting_since or 0,
        last_message_at=session.last_activity,
        starred=agent is not None
        and agent.starred is not None
        and session.session_id in agent.starred,
    )


def _ended_view(e: Ended, agent: Agent) -> SessionView:
    return SessionView(
        session_id=e.session_id,
        buyer_id=e.buyer_id,
        state=State.ENDED,
        agent_id=agent.agent_id,
        group=e.group,
        channel=e.channel,
        priority=e.priority,
        queue_position=0,
        created_at=e.created_at,
        first_reply_at=e.first_reply_at,
        reason=e.reason,
        assigned_at=e.assigned_at,
        last_buyer_at=e.last_buyer_at,
        last_message_at=e.last_activity,
        ended_at=e.ended_at,
        starred=agent.starred is not None and e.session_id in agent.starred,
    )


def _gone_view(session_id: str) -> SessionView:
    """An ended session no list keeps any more: only that it ended."""
    return SessionView(
        session_id=session_id,
        buyer_id="",
        state=State.ENDED,
        agent_id="",
        group="",
        channel="",
        priority=False,
        queue_position=0,
        created_at=0,
        first_reply_at=0,
        reason=Reason.STRATEGY,
    )


def _wait_key(s: Session | Ended) -> tuple[int, int]:
    """Waiting first, longest first; then answered, latest message first (seed 003)."""
    awaiting = s.awaiting_since if isinstance(s, Session) else None
    if awaiting is not None:
        return (0, awaiting)
    return (1, -s.last_activity)


# Ties keep the list's own order (held sessions by arrival, then the backlog): sorts are stable.
_SORTS: dict[SessionSort, Callable[[Session], Any]] = {
    SessionSort.LATEST_MESSAGE: lambda s: -s.last_buyer_at,
    SessionSort.LONGEST_WAIT: _wait_key,
    SessionSort.ACCESS_TIME: lambda s: -(s.assigned_at or s.entered_at),
}
_ENDED_SORTS: dict[SessionSort, Callable[[Ended], Any]] = {
    SessionSort.LATEST_MESSAGE: lambda e: -e.last_buyer_at,
    SessionSort.LONGEST_WAIT: lambda e: -e.last_activity,
    SessionSort.ACCESS_TIME: lambda e: -e.assigned_at,
}


def _entry_view(session: Session, position: int, now: int) -> QueueEntryView:
    return QueueEntryView(
        session_id=session.session_id,
        buyer_id=session.buyer_id,
        position=position,
        priority=session.priority,
        group=session.group,
        channel=session.channel,
        waited_ms=max(0, now - session.created_at),
        agent_id=session.left_for,
    )


_COMMANDS: dict[type, Callable[[Shard, Any], Any]] = {
    Route: Shard.route,
    Tick: Shard.tick,
    SetPolicy: Shard.set_policy,
    RegisterAgent: Shard.register_agent,
    UpdateAgent: Shard.update_agent,
    StarSession: Shard.star_session,
    RemoveAgent: Shard.remove_agent,
    SetStatus: Shard.set_status,
    AddPrivateContact: Shard.add_private,
    RemovePrivateContact: Shard.remove_private,
    Acknowledge: Shard.acknowledge,
    Reply: Shard.reply,
    Transfer: Shard.transfer,
    EndSessions: Shard.end_sessions,
    Pick: Shard.pick,
    LeaveQueue: Shard.leave_queue,
}

_QUERIES: dict[type, Callable[[Shard, Any], Any]] = {
    GetPolicy: Shard.get_policy,
    ListTeam: Shard.list_team,
    GetSession: Shard.get_session,
    ListAgentSessions: Shard.list_agent_sessions,
    ListRecentContacts: Shard.list_recent_contacts,
    ListStarred: Shard.list_starred,
    ListQueue: Shard.list_queue,
    GetPosition: Shard.get_position,
    ListLeftMessages: Shard.list_left_messages,
    GetShopStats: Shard.get_shop_stats,
}

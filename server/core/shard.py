"""A shard: the shops whose id hashes to it, their timers, and the commands on them.

``Shard.apply`` checks a command completely before it changes anything, then hands it to
the shop (``shop.py``); ``Shard.read`` answers queries without changing state.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappop, heappush
from typing import Any

import msgspec

from . import validate as v
from .errors import FailedPrecondition, FenliuError, InvalidArgument, NotFound, resource_name
from .shop import T_NOTICE, T_RECENT, T_REQUEST, T_SESSION, Shop
from .state import Agent, Session
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
    AgentStatsView,
    AgentView,
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
    ListTeam,
    Moved,
    Outcome,
    Pick,
    Policy,
    PolicyChange,
    QueueEntryView,
    QueueList,
    QueueSort,
    Reason,
    RegisterAgent,
    RemoveAgent,
    RemovePrivateContact,
    Reply,
    Role,
    Route,
    SessionView,
    SetPolicy,
    SetStatus,
    ShopStatsView,
    State,
    Status,
    StatusResult,
    Tick,
    Transfer,
)

_DURATIONS = (
    "notice_interval_ms",
    "accept_timeout_ms",
    "reply_timeout_ms",
    "idle_end_timeout_ms",
    "queue_wait_limit_ms",
    "sticky_window_ms",
    "recent_contact_ttl_ms",
)


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

    def push_timer(self, due: int, kind: int, shop: Shop, key: Any) -> None:
        self.timer_seq += 1
        heappush(self.timers, (due, self.timer_seq, kind, shop, key))

    # ------------------------------------------------------------ entry points

    def apply(self, command: Any) -> Any:
        """Apply one command; raises a ``FenliuError`` having changed nothing."""
        before = self.now
        if command.at > before:
            self.now = command.at
        self.moved = []
        try:
            return _COMMANDS[type(command)](self, command)
        except FenliuError:
            self.now = before  # a rejected command leaves no trace, not even its time
            raise

    def read(self, query: Any) -> Any:
        return _QUERIES[type(query)](self, query)

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
        """Rules 0 and 1 here; the shop applies rules 2–6."""
        shop = self.shop(cmd.shop_id)
        v.check_id(cmd.buyer_id, "buyer_id")
        v.check_id(cmd.request_id, "request_id")
        cached = shop.requests.get(cmd.request_id)
        if cached is not None:
            return cached[0]
        if cmd.group:
            v.check_optional_id(cmd.group, "group")
        if cmd.channel:
            v.check_optional_id(cmd.channel, "channel")
        if cmd.crowds:
            v.check_ids(cmd.crowds, "crowds", v.MAX_CROWDS)
        addressed = None
        if cmd.addressed_agent_id:
            v.check_id(cmd.addressed_agent_id, "addressed_agent_id")
            addressed = shop.agent(cmd.addressed_agent_id, "addressed_agent_id")
        if cmd.from_team_member:
            if addressed is None:
                raise InvalidArgument(
                    "addressed_agent_id is required for a team message", "addressed_agent_id"
                )
            decision = Decision(
                outcome=Outcome.TEAM_DELIVERY,
                reason=Reason.TEAM_MESSAGE,
                buyer_id=cmd.buyer_id,
                agent_id=addressed.agent_id,
            )
        else:
            decision = shop.route_buyer(cmd.buyer_id, addressed, cmd.crowds, cmd.group, cmd.channel)
        shop.remember_request(cmd.request_id, decision)
        return decision

    def tick(self, cmd: Tick) -> Moved:
        """Fire every timer due by now: timeouts, queue waits, expiries."""
        now = self.now
        timers = self.timers
        while timers and timers[0][0] <= now:
            due, _, kind, shop, key = heappop(timers)
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
        v.check_id(cmd.shop_id, "shop_id")
        v.check_id(cmd.agent_id, "agent_id")
        v.check_ids(cmd.groups, "groups", v.MAX_GROUPS)
        v.check_range(cmd.max_concurrent, "max_concurrent", 0, v.MAX_CONCURRENT)
        shop = self.shops.get(cmd.shop_id)
        agent = shop.agents.get(cmd.agent_id) if shop is not None else None
        main = shop.main if shop is not None else None
        if cmd.role is Role.MAIN and main is not None and main is not agent:
            raise FailedPrecondition(
                f"role: shop {cmd.shop_id!r} already has a MAIN agent ({main.agent_id!r})",
                "role",
                reason="MAIN_AGENT_TAKEN",
                subject=resource_name(cmd.shop_id, "agents", main.agent_id),
            )
        shop = self.shop_or_new(cmd.shop_id)
        groups = tuple(dict.fromkeys(cmd.groups))
        if agent is None:
            shop.reg_seq += 1
            agent = Agent(
                cmd.agent_id, cmd.role, groups, cmd.max_concurrent, cmd.status, shop.reg_seq
            )
            shop.agents[agent.agent_id] = agent
            shop.join(agent)
            shop.emit("status_changed", agent.agent_id, status=agent.status)
        else:
            shop.leave(agent)
            agent.role, agent.groups, agent.max_concurrent = cmd.role, groups, cmd.max_concurrent
            shop.join(agent)
            if shop.main is agent and cmd.role is not Role.MAIN:
                shop.main = None
        if cmd.role is Role.MAIN:
            shop.main = agent
        shop.touch(agent)
        shop.fill_all() if shop.queue or shop.left else shop.fill(agent)
        return _agent_view(shop, agent, self.now)

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
        shop = self.shop(cmd.shop_id)
        v.check_optional_id(cmd.agent_id, "agent_id")
        v.check_optional_id(cmd.to_agent_id, "to_agent_id")
        v.check_optional_id(cmd.to_group, "to_group")
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
        if bool(cmd.to_agent_id) == bool(cmd.to_group):
            raise InvalidArgument(
                "exactly one of to_agent_id and to_group must be set", "to_agent_id"
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
        shop = self.shop(q.shop_id)
        v.check_id(q.session_id, "session_id")
        return _session_view(shop, shop.session(q.session_id))

    def list_agent_sessions(self, q: ListAgentSessions) -> tuple[SessionView, ...]:
        shop = self.shop(q.shop_id)
        agent = shop.agent(q.agent_id)
        return tuple(
            _session_view(shop, s) for s in (*agent.sessions.values(), *agent.backlog.values())
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
    )


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
    ListQueue: Shard.list_queue,
    GetPosition: Shard.get_position,
    ListLeftMessages: Shard.list_left_messages,
    GetShopStats: Shard.get_shop_stats,
}

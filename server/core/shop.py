"""One shop's state and its routing rules (SPEC §2–§5).

A ``Shop`` never reads a clock: its shard sets ``shard.now`` before each command.
The shard checks a command before calling in here, so these methods only change state.
Sessions that a command moves besides its own subject are collected in ``shard.moved``
for the command's result.

Placement vocabulary: a *plan* is ``(kind, agent, reason)`` where kind is
``ASSIGN`` (the agent takes it even above capacity: priority overflow, forced),
``PIN`` (the agent takes it, or its backlog when full), ``QUEUE`` or ``LEAVE``.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from datetime import datetime, timedelta
from heapq import heappush
from itertools import islice
from typing import TYPE_CHECKING, Final

from .errors import NotFound, ResourceExhausted, resource_name
from .shop_heap import AgentHeap, Entry, strategy_key
from .state import Agent, Ended, Session
from .stats import COUNTED_EVENTS, ENDED_UNREPLIED, ShopCounters
from .types import (
    LIT_CHANNELS,
    RECEIVING,
    Decision,
    Event,
    OnQueueFull,
    Outcome,
    Policy,
    PriorityNotice,
    QueueOrder,
    Reason,
    Role,
    State,
    Status,
)
from .validate import check_id, zone

if TYPE_CHECKING:
    from .shard import Shard

_heappush: Final = heappush  # a module static, not a globals lookup per call (mypyc)
_bisect_left: Final = bisect_left
_insort: Final = insort
ASSIGN: Final = "assign"
PIN: Final = "pin"
QUEUE: Final = "queue"
LEAVE: Final = "leave"
Plan = tuple[str, Agent | None, Reason]

# Timer kinds of the shard's timer heap.
# T_RECENT and T_REQUEST entries are per shop (key ""), for the oldest entry of the table.
T_SESSION: Final = 0
T_RECENT: Final = 1
T_REQUEST: Final = 2
T_NOTICE: Final = 3

IDEMPOTENCY_WINDOW_MS: Final = 10 * 60_000
ENDED_KEEP_MS: Final = 24 * 3600 * 1000
"""How long an agent's list shows a session after it ended (seed 003's 已结束会话)."""
ENDED_PER_AGENT: Final = 100
"""At most this many ended sessions per agent list (the oldest go first): the memory bound."""
_INDEX_MASK: Final = (1 << 32) - 1
# Enum members as module constants for the hot path: on Python 3.11 an attribute of an
# enum class (``State.QUEUED``) goes through EnumType's __getattr__ hook, ~5x a global.
_ACTIVE: Final = State.ACTIVE
_ASSIGNED: Final = State.ASSIGNED
_BACKLOG: Final = State.BACKLOG
_ENDED: Final = State.ENDED
_LEFT_MESSAGE: Final = State.LEFT_MESSAGE
_QUEUED: Final = State.QUEUED
_OFFLINE: Final = Status.OFFLINE
_SUSPENDED: Final = Status.SUSPENDED
_ONLINE: Final = Status.ONLINE
_INVISIBLE: Final = Status.INVISIBLE
_RECEIVING: Final = RECEIVING
assert RECEIVING == (_ONLINE, _INVISIBLE)
_LIT_CHANNELS: Final = LIT_CHANNELS
_Decision: Final = Decision  # classes of interpreted types.py: module statics, no lookups
_Event: Final = Event
_ADDRESSED: Final = Reason.ADDRESSED
_AGENT_OFFLINE: Final = Reason.AGENT_OFFLINE
_ALL_BUSY: Final = Reason.ALL_BUSY
_ALL_OFFLINE: Final = Reason.ALL_OFFLINE
_ALL_SUSPENDED: Final = Reason.ALL_SUSPENDED
_CAPACITY_FREED: Final = Reason.CAPACITY_FREED
_OPEN_SESSION: Final = Reason.OPEN_SESSION
_PRIORITY_CROWD: Final = Reason.PRIORITY_CROWD
_PRIORITY_OVERFLOW: Final = Reason.PRIORITY_OVERFLOW
_PRIVATE_CONTACT: Final = Reason.PRIVATE_CONTACT
_RECENT_CONTACT: Final = Reason.RECENT_CONTACT
_STRATEGY: Final = Reason.STRATEGY
_CROWD_GROUP: Final = Reason.CROWD_GROUP
_NO_NOTICE: Final = PriorityNotice.NONE
_LIFO: Final = QueueOrder.LIFO
_PRIORITY_REASONS: Final = (Reason.PRIORITY_CROWD, Reason.PRIORITY_OVERFLOW)

# Decision and Event are built positionally here (``decision``, ``emit``): their order.
if Decision.__struct_fields__[:7] != (
    "outcome",
    "reason",
    "buyer_id",
    "agent_id",
    "session_id",
    "queue_position",
    "state",
) or Event.__struct_fields__ != (
    "kind",
    "shop_id",
    "at",
    "agent_id",
    "session_id",
    "buyer_id",
    "reason",
    "seq",
    "status",
):
    raise ImportError("Decision's or Event's fields changed: see Shop.decision and Shop.emit")

_OUTCOME_OF_STATE: Final = {
    State.QUEUED: Outcome.QUEUED,
    State.BACKLOG: Outcome.BACKLOG,
    State.ASSIGNED: Outcome.ASSIGNED,
    State.ACTIVE: Outcome.ASSIGNED,
    State.LEFT_MESSAGE: Outcome.LEFT_MESSAGE,
}


class Shop:
    """A tenant: its policy, agents, sessions, queue, left messages and contacts."""

    def __init__(self, shard: Shard, shop_id: str) -> None:
        policy = Policy()
        everyone: dict[str, Agent] = {}
        # Compiled, the fields are laid out in the order first assigned here: what a new
        # buyer's decision reads and writes first and together (in a big world the shop is
        # cold, and adjacent fields share its lines; bench/core_world.py --cache-sim).
        self.shard = shard
        self.requests: dict[str, Decision] = {}  # request id -> decision, oldest first
        # their times, run-length: request_runs[i + 1] requests at request_runs[i], for
        # every even i from request_head
        self.request_runs: list[int] = []
        self.request_head = 0
        self.by_buyer: dict[str, Session] = {}
        self.main: Agent | None = None
        # buyer -> last act << 32 | index of the agent id in contact_ids (see pack_contact),
        # oldest first: an update moves the buyer to the end, so expiry pops from the front.
        self.recent: dict[str, int] = {}
        # The whole shop's heap also as an attribute: a decision without a group (most)
        # reads it twice (``best``, ``touch``), and in a big world a dict is cold lines.
        self.top = AgentHeap(policy.strategy, everyone)
        self.sessions: dict[str, Session] = {}
        self.next_seq = 0
        self.assign_seq = 0
        self.event_seq = 0  # the seq of the shop's latest event
        self.shop_id = shop_id
        self.counters: ShopCounters | None = None  # stats, from the first counted event
        self.day_start = 0
        self.day_end = 0
        self.day = 0
        # The timer limits as plain ints (set with the policy): due() runs on every decision
        # and a msgspec field read is a generic attribute lookup.
        self.queue_wait_limit_ms = self.accept_timeout_ms = 0
        self.reply_timeout_ms = self.idle_end_timeout_ms = 0
        self._policy = policy
        self.policy = policy
        self.priority_crowds: frozenset[str] = frozenset()
        self.crowd_groups: dict[str, tuple[str, ...]] = {}  # crowd -> groups serving it
        self.agents: dict[str, Agent] = {}
        # Per scope ("" = whole shop, else a group): members, eligible-agent heap,
        # and how many members are ONLINE/INVISIBLE (receiving) or not OFFLINE (present).
        self.members: dict[str, dict[str, Agent]] = {"": everyone}
        self.heaps: dict[str, AgentHeap] = {"": self.top}
        self.receiving: dict[str, int] = {"": 0}
        self.present: dict[str, int] = {"": 0}
        self.queue: list[tuple[int, int, int, Session]] = []  # sorted by queue key
        self.left: dict[str, Session] = {}  # left messages, oldest first
        self.reserved_left = 0  # left messages reserved for one agent (MAIN's private ones)
        self.contact_ids: list[str] = []  # agent ids of recent contacts, append-only
        self.contact_index: dict[str, int] = {}
        self.private: set[str] = set()
        self.notices: dict[str, int] = {}  # buyer -> last priority notice
        self.reg_seq = 0

    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self._policy = policy
        self.queue_wait_limit_ms = policy.queue_wait_limit_ms
        self.accept_timeout_ms = policy.accept_timeout_ms
        self.reply_timeout_ms = policy.reply_timeout_ms
        self.idle_end_timeout_ms = policy.idle_end_timeout_ms

    # ------------------------------------------------------------ events and helpers

    def emit(
        self,
        kind: str,
        agent_id: str = "",
        session: Session | None = None,
        reason: Reason | None = None,
        status: Status | None = None,
    ) -> None:
        self.event_seq += 1
        counted = COUNTED_EVENTS.get(kind)
        if counted is not None:
            self.tally(counted)
        shard = self.shard
        # positional, in Event's field order: kind, shop_id, at, agent_id, session_id,
        # buyer_id, reason, seq, status
        if session is not None:
            event = _Event(
                kind, self.shop_id, shard.now, agent_id, session.session_id, session.buyer_id,
                reason, self.event_seq, status,
            )  # fmt: skip
        else:
            event = _Event(
                kind, self.shop_id, shard.now, agent_id, "", "", reason, self.event_seq, status
            )
        shard.outbox.append(event)

    def tally(self, index: int) -> None:
        """Count one event of a stats field (``stats.py``) now."""
        now = self.shard.now
        counters = self.counters
        if counters is None:
            counters = self.counters = ShopCounters()
        counters.add(index, self.today(now), now)

    def agent(self, agent_id: str, field: str = "agent_id") -> Agent:
        agent = self.agents.get(agent_id)
        if agent is None:
            check_id(agent_id, field)  # malformed beats unknown
            raise NotFound(
                f"{field}: no agent {agent_id!r} in shop {self.shop_id!r}",
                field,
                reason="AGENT_NOT_FOUND",
                subject=resource_name(self.shop_id, "agents", agent_id),
            )
        return agent

    def session(self, session_id: str, field: str = "session_id") -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            check_id(session_id, field)
            raise NotFound(
                f"{field}: no open session {session_id!r} in shop {self.shop_id!r}",
                field,
                reason="SESSION_NOT_FOUND",
                subject=resource_name(self.shop_id, "sessions", session_id),
            )
        return session

    def buyer_session(self, buyer_id: str) -> Session:
        """The buyer's open session."""
        check_id(buyer_id, "buyer_id")
        session = self.by_buyer.get(buyer_id)
        if session is None:
            raise NotFound(
                f"buyer_id: buyer {buyer_id!r} has no open session",
                "buyer_id",
                reason="NO_OPEN_SESSION",
                subject=resource_name(self.shop_id, "buyers", buyer_id),
            )
        return session

    def issued(self, session_id: str) -> bool:
        """Whether this shop ever issued the id (open or ended)."""
        digits = session_id[1:]  # strictly the shop's form: "s01" is not "s1"
        return (
            session_id[:1] == "s"
            and digits.isascii()
            and digits.isdigit()
            and digits[0] != "0"
            and int(digits) <= self.next_seq
        )

    def position(self, session: Session) -> int:
        """1-based place in the shop queue; 0 when not queued."""
        if session.state is not _QUEUED:
            return 0
        return _bisect_left(self.queue, self.queue_key(session)) + 1

    def set_crowd_groups(self) -> None:
        """The policy's group -> crowds, inverted for routing (groups in policy order)."""
        crowd_groups: dict[str, tuple[str, ...]] = {}
        for group, crowds in self.policy.group_crowds.items():
            for crowd in crowds:
                crowd_groups[crowd] = (*crowd_groups.get(crowd, ()), group)
        self.crowd_groups = crowd_groups

    def decision(
        self, session: Session, reason: Reason, notice: PriorityNotice = _NO_NOTICE
    ) -> Decision:
        agent = session.agent
        if notice is _NO_NOTICE:  # the hot path: the notice fields keep their defaults
            state = session.state
            # positional, in Decision's field order: outcome, reason, buyer_id, agent_id,
            # session_id, queue_position, state
            return _Decision(
                _OUTCOME_OF_STATE[state],
                reason,
                session.buyer_id,
                agent.agent_id if agent is not None else session.left_for,
                session.session_id,
                self.position(session) if state is _QUEUED else 0,
                state,
            )
        return _Decision(
            outcome=_OUTCOME_OF_STATE[session.state],
            reason=reason,
            buyer_id=session.buyer_id,
            agent_id=agent.agent_id if agent is not None else session.left_for,
            session_id=session.session_id,
            queue_position=self.position(session),
            state=session.state,
            priority_notice=True,
            notice=notice,
        )

    # ------------------------------------------------------------ agents and scopes

    def touch(self, agent: Agent) -> None:
        """Record a change to the agent: older heap entries go stale, a fresh one is pushed
        in its scopes that keep a heap (small ones are scanned: nothing to push)."""
        agent.version += 1
        status = agent.status
        if (status is _ONLINE or status is _INVISIBLE) and agent.load < agent.max_concurrent:
            top = self.top
            entry = None
            if not top.scan:
                entry = top.entry(agent)  # one strategy per shop: the same in every scope
                self.push_entry("", top, entry)
            for scope in agent.groups:
                heap = self.heaps[scope]
                if not heap.scan:
                    if entry is None:
                        entry = heap.entry(agent)
                    self.push_entry(scope, heap, entry)

    def push_entry(self, scope: str, heap: AgentHeap, entry: Entry) -> None:
        entries = heap.entries
        _heappush(entries, entry)
        if len(entries) > 2 * len(self.members[scope]) + 16:
            self.rebuild_heap(scope)

    def rebuild_heap(self, scope: str) -> None:
        self.heaps[scope].rebuild(
            [
                a
                for a in self.members[scope].values()
                if a.status in _RECEIVING and a.load < a.max_concurrent
            ]
        )

    def join(self, agent: Agent) -> None:
        """Add the agent to its scopes' members and counts."""
        for scope in agent.scopes:
            members = self.members.get(scope)
            if members is None:
                members = self.members[scope] = {}
                self.heaps[scope] = AgentHeap(self.policy.strategy, members)
                self.receiving[scope] = 0
                self.present[scope] = 0
            members[agent.agent_id] = agent
            if self.heaps[scope].resize():
                self.rebuild_heap(scope)  # grown past the scan limit: a heap from now on
        self.count(agent, 1)

    def leave(self, agent: Agent) -> None:
        self.count(agent, -1)
        for scope in agent.scopes:
            del self.members[scope][agent.agent_id]
            self.heaps[scope].resize()
        agent.version += 1

    def count(self, agent: Agent, sign: int) -> None:
        receiving = agent.status in _RECEIVING
        present = agent.status is not _OFFLINE
        for scope in agent.scopes:
            if receiving:
                self.receiving[scope] += sign
            if present:
                self.present[scope] += sign

    def in_scope(self, agent: Agent, group: str) -> bool:
        return not group or group in agent.groups

    def served(self, agent: Agent) -> None:
        """Count a session the agent acted on, in today's count (shop time zone)."""
        day = self.today(self.shard.now)
        if agent.served_day != day:
            agent.served_day = day
            agent.served_count = 0
        agent.served_count += 1

    def today(self, now: int) -> int:
        if not self.day_start <= now < self.day_end:
            self.day, self.day_start, self.day_end = _day_bounds(self.policy.time_zone, now)
        return self.day

    # ------------------------------------------------------------ choosing (no mutation)

    def best(self, scope: str, excluded: set[str] | None) -> Agent | None:
        """The best eligible (ONLINE/INVISIBLE, under capacity) agent in scope."""
        if not excluded:
            heap = self.heaps.get(scope) if scope else self.top
            return heap.best() if heap is not None else None
        strategy = self.policy.strategy
        candidates = [
            a
            for a in self.members.get(scope, {}).values()
            if a.status in _RECEIVING and a.load < a.max_concurrent and a.agent_id not in excluded
        ]
        return min(candidates, key=lambda a: strategy_key(strategy, a), default=None)

    def least_loaded(
        self, scope: str, statuses: tuple[Status, ...], excluded: set[str] | None, capped: bool
    ) -> Agent | None:
        """The least loaded agent of the given statuses (under capacity if ``capped``)."""
        best: Agent | None = None
        best_key: tuple[float, int, int] | None = None
        for a in self.members.get(scope, {}).values():
            if a.status not in statuses or (excluded and a.agent_id in excluded):
                continue
            if capped and a.load >= a.max_concurrent:
                continue
            ratio = a.load / a.max_concurrent if a.max_concurrent else float(a.load + 1)
            key = (ratio if capped else float(a.load), a.last_assign, a.reg)
            if best_key is None or key < best_key:
                best, best_key = a, key
        return best

    def shop_route(
        self,
        group: str,
        priority: bool,
        excluded: set[str] | None,
        crowds: tuple[str, ...] = (),
    ) -> Plan:
        """Rule 6: the shop's own choice for a session needing ``group`` (or none).

        ``crowds`` (new buyers only): with no group required, the groups serving one of
        them (seed 004's 人群接待范围) are tried first, for an eligible agent.
        """
        if crowds and not group and self.crowd_groups:
            for crowd in crowds:
                for scope in self.crowd_groups.get(crowd, ()):
                    agent = self.best(scope, excluded)
                    if agent is not None:
                        return ASSIGN, agent, _PRIORITY_CROWD if priority else _CROWD_GROUP
        agent = self.best(group, excluded)
        if agent is not None:
            return ASSIGN, agent, _PRIORITY_CROWD if priority else _STRATEGY
        receiving = self.receiving.get(group, 0)
        if excluded and receiving:
            receiving = sum(
                1
                for a in self.members[group].values()
                if a.status in _RECEIVING and a.agent_id not in excluded
            )
        policy = self.policy  # not before: in a big world the policy is a cold line
        if priority and receiving and policy.priority_may_exceed_capacity:
            agent = self.least_loaded(group, _RECEIVING, excluded, capped=False)
            return ASSIGN, agent, _PRIORITY_OVERFLOW
        if not receiving and policy.route_when_all_suspended:
            agent = self.least_loaded(group, (_SUSPENDED,), excluded, capped=True)
            if agent is not None:
                return ASSIGN, agent, _ALL_SUSPENDED
        if self.present.get(group, 0):
            return QUEUE, None, _ALL_BUSY
        return LEAVE, None, _ALL_OFFLINE

    def first_rules(self, buyer_id: str, addressed: Agent | None, group: str) -> Plan | None:
        """Rules 3–5: private contact, recent contact, addressed agent."""
        main = self.main
        if addressed is not None and addressed is main and buyer_id in self.private:
            if main.status is _OFFLINE:
                return LEAVE, main, _PRIVATE_CONTACT
            return PIN, main, _PRIVATE_CONTACT
        recent = self.recent.get(buyer_id)
        if recent is not None and self.shard.now - (recent >> 32) <= self.policy.sticky_window_ms:
            agent = self.agents.get(self.contact_ids[recent & _INDEX_MASK])
            if agent is not None and agent.status is not _OFFLINE and self.in_scope(agent, group):
                return PIN, agent, _RECENT_CONTACT
        if addressed is not None and addressed.status in _RECEIVING:
            return PIN, addressed, _ADDRESSED
        return None

    # ------------------------------------------------------------ placing (mutation)

    def new_session(self, buyer_id: str, group: str, priority: bool, channel: str) -> Session:
        self.next_seq += 1
        session = Session(self.next_seq, buyer_id, group, priority, channel, self.shard.now)
        self.sessions[session.session_id] = session
        self.by_buyer[buyer_id] = session
        return session

    def place(self, session: Session, plan: Plan) -> None:
        """Put a detached session where the plan says."""
        kind, agent, reason = plan
        if kind == ASSIGN or (kind == PIN and agent.load < agent.max_concurrent):  # type: ignore[union-attr]
            self.assign(session, agent, reason)  # type: ignore[arg-type]
        elif kind == PIN:
            self.to_backlog(session, agent, reason)  # type: ignore[arg-type]
        elif kind == QUEUE:
            self.enqueue(session, reason)
        else:
            self.leave_message(session, reason, agent)

    def assign(self, session: Session, agent: Agent, reason: Reason, active: bool = False) -> None:
        now = self.shard.now
        session.state = _ACTIVE if active else _ASSIGNED
        session.agent = agent
        session.reason = reason
        session.assigned_at = now
        agent.load += 1
        if not active:
            agent.new_count += 1
        agent.hold(session)
        self.assign_seq += 1
        agent.last_assign = self.assign_seq
        self.touch(agent)
        self.schedule(session)
        self.emit("assigned", agent.agent_id, session, reason)

    def to_backlog(self, session: Session, agent: Agent, reason: Reason) -> None:
        session.state = State.BACKLOG
        session.agent = agent
        session.reason = reason
        session.entered_at = self.shard.now
        agent.backlog[session.session_id] = session
        self.schedule(session)
        self.emit("backlog_changed", agent.agent_id, session, reason)

    def queue_key(self, session: Session) -> tuple[int, int, int]:
        if session.priority:
            return (0, session.created_at, session.seq)
        if self.policy.queue_order is _LIFO:
            return (1, -session.created_at, -session.seq)
        return (1, session.created_at, session.seq)

    def enqueue(self, session: Session, reason: Reason) -> None:
        session.state = _QUEUED
        session.agent = None
        session.reason = reason
        session.entered_at = self.shard.now
        _insort(self.queue, (*self.queue_key(session), session))
        self.schedule(session)
        self.emit("queue_changed", "", session, reason)

    def leave_message(self, session: Session, reason: Reason, for_agent: Agent | None) -> None:
        session.state = State.LEFT_MESSAGE
        session.agent = None
        session.reason = reason
        session.left_for = for_agent.agent_id if for_agent is not None else ""
        if session.left_for:
            self.reserved_left += 1
        self.left[session.session_id] = session
        self.emit("left_message", session.left_for, session, reason)

    def detach(self, session: Session) -> Agent | None:
        """Take the session out of its place; returns the agent whose load it freed."""
        state = session.state
        agent = session.agent
        session.agent = None
        if state is _ASSIGNED or state is _ACTIVE:
            assert agent is not None
            agent.load -= 1
            if state is _ASSIGNED:
                agent.new_count -= 1
            agent.release(session)
            self.touch(agent)
            return agent
        if state is _BACKLOG:
            assert agent is not None
            del agent.backlog[session.session_id]
            self.emit("backlog_changed", agent.agent_id, session)
        elif state is _QUEUED:
            index = _bisect_left(self.queue, self.queue_key(session))
            del self.queue[index]
            self.emit("queue_changed", "", session)
        elif state is _LEFT_MESSAGE:
            del self.left[session.session_id]
            if session.left_for:
                self.reserved_left -= 1
                session.left_for = ""
        return None

    def end(self, session: Session, reason: Reason | None = None) -> Agent | None:
        """End an open session; returns the agent whose capacity it freed."""
        holder = session.agent
        if session.state is _ACTIVE and holder is not None:
            self.remember_contact(session.buyer_id, holder)
        if holder is not None:
            self.keep_ended(holder, session)
        if not session.first_reply_at:
            self.tally(ENDED_UNREPLIED)
        freed = self.detach(session)
        session.state = _ENDED
        del self.sessions[session.session_id]
        del self.by_buyer[session.buyer_id]
        self.emit("ended", holder.agent_id if holder else "", session, reason)
        return freed

    def keep_ended(self, agent: Agent, session: Session) -> None:
        """Put the session in the agent's ended part, dropping what is past keeping."""
        now = self.shard.now
        ended = agent.ended
        if ended is None:
            ended = agent.ended = {}
        horizon = now - ENDED_KEEP_MS
        while ended:
            first = next(iter(ended.values()))
            if first.ended_at > horizon and len(ended) < ENDED_PER_AGENT:
                break
            del ended[first.session_id]
        ended[session.session_id] = Ended(session, now)
        starred = agent.starred
        if starred is not None and session.session_id in starred:
            # the star list covers sessions seen in the recent-contact window: renew it
            starred[session.session_id] = (session.buyer_id, now)

    def ended_session(self, session_id: str) -> tuple[Agent, Ended] | None:
        """The agent list keeping this ended session, and its record."""
        for agent in self.agents.values():
            ended = agent.ended
            if ended is not None:
                record = ended.get(session_id)
                if record is not None and record.ended_at > self.shard.now - ENDED_KEEP_MS:
                    return agent, record
        return None

    def act(self, session: Session, agent: Agent) -> None:
        """The agent acted on the session (acknowledge, reply, pick)."""
        if session.state is _ASSIGNED:
            session.state = _ACTIVE
            agent.new_count -= 1
            self.touch(agent)
            self.served(agent)
        self.remember_contact(session.buyer_id, agent)

    def remember_contact(self, buyer_id: str, agent: Agent) -> None:
        """Remember (or refresh) the buyer's recent contact, newest last.

        One T_RECENT timer per shop stands for the oldest entry (``expire_recent``), so a
        contact costs a dict slot and one int rather than a timer-heap entry of its own.
        """
        recent = self.recent
        now = self.shard.now
        if not recent:
            self.shard.push_timer(now + self.policy.recent_contact_ttl_ms, T_RECENT, self, "")
        elif buyer_id in recent:
            del recent[buyer_id]  # re-inserted at the end: the dict stays oldest first
        recent[buyer_id] = self.pack_contact(agent.agent_id, now)

    def pack_contact(self, agent_id: str, at: int) -> int:
        index = self.contact_index.get(agent_id)
        if index is None:
            index = self.contact_index[agent_id] = len(self.contact_ids)
            self.contact_ids.append(agent_id)
        return at << 32 | index

    def recent_contacts(self) -> dict[str, tuple[str, int]]:
        """buyer -> (agent id, last act), oldest first: the recent contacts unpacked."""
        ids = self.contact_ids
        return {b: (ids[p & _INDEX_MASK], p >> 32) for b, p in self.recent.items()}

    def expire_recent(self) -> None:
        """The shop's T_RECENT timer: forget contacts older than the TTL, then stand for
        the oldest one left (a TTL shortened since is applied when this fires, as before)."""
        ttl = self.policy.recent_contact_ttl_ms
        recent = self.recent
        horizon = self.shard.now - ttl
        expired = []
        for buyer, packed in recent.items():
            if packed >> 32 > horizon:
                self.shard.push_timer((packed >> 32) + ttl, T_RECENT, self, "")
                break
            expired.append(buyer)
        for buyer in expired:
            del recent[buyer]

    def remember_request(self, request_id: str, decision: Decision) -> None:
        """Cache a Route's decision for the idempotency window; oldest first, like
        ``recent``, with one T_REQUEST timer per shop for the oldest entry. Their times
        are kept apart, run-length in one flat list (``request_runs``: a time, then how
        many requests came at it): no tuple per request, and one list's lines to touch."""
        now = self.shard.now
        requests = self.requests
        if not requests:
            self.shard.push_timer(now + IDEMPOTENCY_WINDOW_MS, T_REQUEST, self, "")
        requests[request_id] = decision
        _count_run(self.request_runs, self.request_head, now)

    def expire_requests(self) -> None:
        requests = self.requests
        horizon = self.shard.now - IDEMPOTENCY_WINDOW_MS
        runs = self.request_runs
        head = self.request_head
        drop = 0
        while head < len(runs) and runs[head] <= horizon:
            count: int = runs[head + 1]
            drop += count
            head += 2
        if drop:
            for request_id in list(islice(requests, drop)):
                del requests[request_id]
        if head == len(runs):
            runs.clear()
            head = 0
        elif head > 2048 and 2 * head > len(runs):
            del runs[:head]
            head = 0
        self.request_head = head
        if head < len(runs):
            self.shard.push_timer(runs[head] + IDEMPOTENCY_WINDOW_MS, T_REQUEST, self, "")

    def request_table(self) -> dict[str, tuple[Decision, int]]:
        """request id -> (decision, time), oldest first: the remembered requests."""
        runs = self.request_runs
        times = [
            runs[i] for i in range(self.request_head, len(runs), 2) for _ in range(runs[i + 1])
        ]
        return {
            request_id: (decision, at)
            for (request_id, decision), at in zip(self.requests.items(), times, strict=True)
        }

    def load_requests(self, table: dict[str, tuple[Decision, int]]) -> None:
        """Put back ``request_table``'s form (an image's), oldest first."""
        self.requests = {}
        runs: list[int] = []
        self.request_runs, self.request_head = runs, 0
        for request_id, (decision, at) in table.items():
            self.requests[request_id] = decision
            _count_run(runs, 0, at)

    def forget_requests(self) -> None:
        """Forget every remembered request (their T_REQUEST timer then finds none)."""
        self.load_requests({})

    def reroute(
        self, session: Session, reason: Reason, exclude: Agent | None
    ) -> tuple[Decision, Agent | None]:
        """Reassignment: rule 6 without the agents it timed out on, else back to the queue.

        Returns the decision and the agent whose capacity was freed.
        """
        old = session.agent
        if old is not None:
            self.emit("reassigned_away", old.agent_id, session, reason)
        if exclude is not None:
            if session.excluded is None:
                session.excluded = set()
            session.excluded.add(exclude.agent_id)
        freed = self.detach(session)
        main = self.main
        if session.private and main is not None:
            # Rule 3: never routed to anyone else; MAIN takes it back when it can.
            self.leave_message(session, reason, main)
            return self.decision(session, reason), freed
        session.private = False
        # Never back to an agent it timed out on (SPEC §2): with nobody else, the queue, at
        # the place its request time gives it; a pick, a new agent or the wait limit moves it.
        kind, agent, _ = self.shop_route(session.group, session.priority, session.excluded)
        if kind == ASSIGN:
            self.assign(session, agent, reason)  # type: ignore[arg-type]
        else:
            self.enqueue(session, reason)
        return self.decision(session, reason), freed

    # ------------------------------------------------------------ when capacity frees

    def may_take(self, agent: Agent, session: Session) -> bool:
        """Whether the agent may take this queued session or left message by itself."""
        if session.left_for:
            return session.left_for == agent.agent_id  # MAIN's own, whatever its status
        if session.group and session.group not in agent.groups:
            return False
        if session.excluded and agent.agent_id in session.excluded:
            return False
        if agent.status in _RECEIVING:
            return True
        return (
            agent.status is Status.SUSPENDED
            and self.policy.route_when_all_suspended
            and not self.receiving.get(session.group, 0)
        )

    def fill(self, agent: Agent) -> None:
        """SPEC §3: refill the agent's capacity from its backlog, the queue, left messages."""
        while agent.load < agent.max_concurrent and agent.status is not _OFFLINE:
            session = next(iter(agent.backlog.values()), None)
            if session is None:
                session = self.next_for(agent)
                if session is None:
                    return
            self.detach(session)
            self.assign(session, agent, _CAPACITY_FREED)
            self.shard.moved.append(self.decision(session, _CAPACITY_FREED))

    def next_for(self, agent: Agent) -> Session | None:
        """The next session the agent takes after its backlog: left messages reserved for it
        (private contacts), the queue, then, with auto-assign, the shop's left messages."""
        if self.reserved_left:
            for session in self.left.values():
                if session.left_for == agent.agent_id:
                    return session
        for entry in self.queue:
            if self.may_take(agent, entry[3]):
                return entry[3]
        if self.policy.auto_assign_left_messages:
            for session in self.left.values():
                if not session.left_for and self.may_take(agent, session):
                    return session
        return None

    def offer(self, session: Session) -> bool:
        """Give a new left message to an agent free to take it (a backlog's wait ran out
        while others have room); returns whether one took it."""
        if not self.policy.auto_assign_left_messages:
            return False
        kind, agent, _ = self.shop_route(session.group, False, session.excluded)
        if kind != ASSIGN or agent is None:
            return False
        self.detach(session)
        self.assign(session, agent, Reason.CAPACITY_FREED)
        self.shard.moved.append(self.decision(session, Reason.CAPACITY_FREED))
        return True

    def fill_all(self) -> None:
        """Refill every agent (after a change that may open capacity shop-wide)."""
        if not (self.queue or self.left) and not any(a.backlog for a in self.agents.values()):
            return
        for agent in list(self.agents.values()):
            self.fill(agent)
        self.retry_priority()

    def retry_priority(self) -> None:
        """Route queued priority entries again: they may overflow onto a receiving agent."""
        for entry in [e for e in self.queue if e[0] == 0]:
            session = entry[3]
            plan = self.shop_route(session.group, True, session.excluded)
            if plan[0] == ASSIGN:
                self.detach(session)
                self.assign(session, plan[1], plan[2])  # type: ignore[arg-type]
                self.shard.moved.append(self.decision(session, plan[2]))

    # ------------------------------------------------------------ timers

    def due(self, session: Session) -> int | None:
        """When the session's next timer fires, from its state and the policy."""
        state = session.state
        if state is _QUEUED or state is _BACKLOG:
            limit = self.queue_wait_limit_ms
            return session.entered_at + limit if limit else None
        if session.private and (state is _ASSIGNED or session.awaiting_since is not None):
            return None  # rule 3: a private contact is MAIN's; no timeout moves it
        if state is _ASSIGNED:
            limit = self.accept_timeout_ms
            return session.assigned_at + limit if limit else None
        if state is _ACTIVE:
            awaiting = session.awaiting_since
            if awaiting is not None:
                # counted from the later of the first unanswered message and the assignment
                limit = self.reply_timeout_ms
                assigned = session.assigned_at
                return (awaiting if awaiting > assigned else assigned) + limit if limit else None
            limit = self.idle_end_timeout_ms
            return session.last_activity + limit if limit else None
        return None

    def schedule(self, session: Session) -> None:
        """Keep one live heap entry no later than the session's due time."""
        due = self.due(session)
        if due is not None and (session.timer_due is None or due < session.timer_due):
            session.timer_due = due
            self.shard.push_timer(due, T_SESSION, self, session)

    def fire(self, session: Session, entry_due: int) -> None:
        """A timer entry of the session reached its time."""
        if session.timer_due != entry_due or self.sessions.get(session.session_id) is not session:
            return  # stale entry
        session.timer_due = None
        due = self.due(session)
        if due is None:
            return
        if due > self.shard.now:
            self.schedule(session)
            return
        state = session.state
        holder = session.agent
        freed: Agent | None = None
        if state is State.QUEUED or state is State.BACKLOG:
            self.detach(session)
            for_main = self.main if session.private else None
            self.leave_message(session, Reason.QUEUE_WAIT_LIMIT, for_main)
            if for_main is not None or not self.offer(session):
                self.shard.moved.append(self.decision(session, Reason.QUEUE_WAIT_LIMIT))
        elif state is State.ASSIGNED or session.awaiting_since is not None:
            reason = Reason.ACCEPT_TIMEOUT if state is State.ASSIGNED else Reason.REPLY_TIMEOUT
            self.emit("timeout", holder.agent_id if holder else "", session, reason)
            decision, freed = self.reroute(session, reason, exclude=holder)
            self.shard.moved.append(decision)
        else:
            self.emit("timeout", holder.agent_id if holder else "", session)
            freed = self.end(session)
        if freed is not None:
            self.fill(freed)

    # ------------------------------------------------------------ rule 2 and 3–6

    def route_buyer(
        self,
        buyer_id: str,
        addressed: Agent | None,
        crowds: tuple[str, ...],
        group: str,
        channel: str,
    ) -> Decision:
        """Rules 2–6 for one buyer message (rules 0 and 1 are the shard's)."""
        now = self.shard.now
        session = self.by_buyer.get(buyer_id)
        if session is not None and session.state is not _LEFT_MESSAGE:
            return self.open_session_message(session)
        priority = bool(crowds) and not self.priority_crowds.isdisjoint(crowds)
        plan = self.first_rules(buyer_id, addressed, group)
        # A left message back in play keeps the agents it timed out on out (rule 3 aside).
        excluded = session.excluded if session is not None else None
        if excluded and plan is not None and plan[2] is not _PRIVATE_CONTACT:
            if plan[1] is not None and plan[1].agent_id in excluded:
                plan = None
        if plan is None:
            plan = self.shop_route(group, priority, excluded, crowds)
            if plan[0] == QUEUE and len(self.queue) >= self.policy.queue_limit:
                plan = self.queue_full(session)
        if session is None:
            session = self.new_session(buyer_id, group, priority, channel)
        else:  # a left message: the buyer is back, route it again
            session.last_activity = session.last_buyer_at = now
            if session.awaiting_since is None:
                session.awaiting_since = now
            target = plan[1].agent_id if plan[1] is not None else ""
            if plan[0] == LEAVE and target in ("", session.left_for):
                return self.decision(session, session.reason)  # still nobody to take it
            self.detach(session)
            session.group, session.priority, session.channel = group, priority, channel
        session.private = plan[2] is _PRIVATE_CONTACT
        self.place(session, plan)
        notice = _NO_NOTICE
        if priority and channel in _LIT_CHANNELS:
            notice = self.priority_notice(session, plan[2], group, crowds)
        return self.decision(session, plan[2], notice)

    def priority_notice(
        self, session: Session, reason: Reason, group: str, crowds: tuple[str, ...]
    ) -> PriorityNotice:
        """Seed 004's buyer notice for a priority buyer from a lit entry, or NONE.

        Only a success has one: the buyer is with an agent now and someone in scope is
        ONLINE/INVISIBLE (not when shared over SUSPENDED agents, queued, in a backlog or
        left a message). With a queue (queue_limit > 0) a recent contact or the addressed
        agent counts too ("skipped the queue"); without one it does not. At most one per
        buyer per notice_interval.
        """
        state = session.state
        if state is not _ASSIGNED and state is not _ACTIVE:
            return _NO_NOTICE
        queue_on = self.policy.queue_limit > 0
        if reason not in _PRIORITY_REASONS and not (
            queue_on and (reason is _RECENT_CONTACT or reason is _ADDRESSED)
        ):
            return _NO_NOTICE
        if not self.receiving.get(group, 0) or not self.notice(session.buyer_id):
            return _NO_NOTICE
        member = self.policy.member_crowd
        if member and member in crowds:
            if queue_on:
                return PriorityNotice.MEMBER_SKIPPED_QUEUE
            return PriorityNotice.MEMBER_ARRANGED
        return PriorityNotice.SKIPPED_QUEUE if queue_on else PriorityNotice.ARRANGED

    def queue_full(self, session: Session | None) -> Plan:
        if self.policy.on_queue_full is OnQueueFull.REJECT and session is None:
            raise ResourceExhausted(
                f"the queue of shop {self.shop_id!r} holds queue_limit="
                f"{self.policy.queue_limit} entries",
                "shop_id",
                reason="QUEUE_FULL",
                subject=resource_name(self.shop_id),
            )
        return LEAVE, None, Reason.QUEUE_FULL

    def notice(self, buyer_id: str) -> bool:
        now = self.shard.now
        last = self.notices.get(buyer_id)
        if last is not None and now - last < self.policy.notice_interval_ms:
            return False
        if last is None:
            self.shard.push_timer(now + self.policy.notice_interval_ms, T_NOTICE, self, buyer_id)
        self.notices[buyer_id] = now
        return True

    def open_session_message(self, session: Session) -> Decision:
        """Rule 2: a buyer message on an open session."""
        now = self.shard.now
        session.last_activity = session.last_buyer_at = now
        if session.awaiting_since is None:
            session.awaiting_since = now
        agent = session.agent
        if session.state is _ASSIGNED or session.state is _ACTIVE:
            assert agent is not None
            if agent.status is _OFFLINE:
                return self.reroute(session, _AGENT_OFFLINE, exclude=None)[0]
        self.schedule(session)
        return self.decision(session, _OPEN_SESSION)

    # ------------------------------------------------------------ agent presence

    def set_status(self, agent: Agent, status: Status) -> None:
        old = agent.status
        if old is status:
            return
        was_receiving = old in _RECEIVING
        self.count(agent, -1)
        agent.status = status
        self.count(agent, 1)
        self.touch(agent)
        self.emit("status_changed", agent.agent_id, status=status)
        if status is Status.OFFLINE:
            moving = [s for s in agent.open_sessions() if s.state is State.ASSIGNED]
            for session in [*moving, *agent.backlog.values()]:
                self.shard.moved.append(
                    self.reroute(session, Reason.AGENT_OFFLINE, exclude=None)[0]
                )
        if was_receiving and status not in _RECEIVING:
            self.fill_all()  # a scope may have lost its last receiving agent
        else:
            self.fill(agent)
            if status in _RECEIVING and not was_receiving:
                self.retry_priority()

    def remove_agent(self, agent: Agent) -> None:
        self.leave(agent)
        del self.agents[agent.agent_id]
        agent.status = Status.OFFLINE  # so that nothing moving off it can land on it again
        if self.main is agent:
            self.release_main(agent)
        for session in [*agent.open_sessions(), *agent.backlog.values()]:
            self.shard.moved.append(self.reroute(session, Reason.AGENT_OFFLINE, exclude=None)[0])
        self.emit("status_changed", agent.agent_id, status=Status.OFFLINE)
        self.fill_all()

    def change_agent(
        self, agent: Agent, role: Role, groups: tuple[str, ...], max_concurrent: int
    ) -> None:
        """Give an existing agent a role, groups and max (RegisterAgent with replace,
        UpdateAgent); the caller has checked that no other agent is MAIN."""
        self.leave(agent)
        agent.role, agent.groups, agent.max_concurrent = role, groups, max_concurrent
        self.join(agent)
        if role is Role.MAIN:
            self.main = agent
        elif self.main is agent:
            self.release_main(agent)
        self.touch(agent)

    def release_main(self, agent: Agent) -> None:
        """``agent`` is MAIN no longer (removed or made SUB): the shop has no MAIN, so no
        private contact's session is kept for one (rule 3): they become ordinary ones."""
        self.main = None
        for session in [*agent.open_sessions(), *agent.backlog.values()]:
            session.private = False
        for session in self.left.values():
            if session.left_for == agent.agent_id:
                session.left_for = ""  # MAIN is gone: the shop's now
                session.private = False
                self.reserved_left -= 1

    def rebuild_queue(self) -> None:
        self.queue = sorted((*self.queue_key(e[3]), e[3]) for e in self.queue)


def _count_run(runs: list[int], head: int, at: int) -> None:
    """One more request at ``at`` in a run-length list (a time, then how many came at it)
    whose live runs start at ``head``."""
    if len(runs) > head and runs[-2] == at:
        count: int = runs[-1]  # typed: compiled, a native add
        runs[-1] = count + 1
    else:
        runs.append(at)
        runs.append(1)


def _day_bounds(time_zone: str, now_ms: int) -> tuple[int, int, int]:
    """(day ordinal, start ms, end ms) of the local day containing ``now_ms``."""
    tz = zone(time_zone)
    local = datetime.fromtimestamp(now_ms / 1000, tz)
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    end = start + timedelta(days=1)  # wall-clock arithmetic: the next local midnight
    return (
        local.date().toordinal(),
        int(start.timestamp() * 1000),
        int(end.timestamp() * 1000),
    )

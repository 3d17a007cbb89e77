"""Hypothesis stateful test: random sequences of every command keep the core's invariants.

After every step:
- no agent above max_concurrent unless a rule allowed it (priority overflow, a forced
  transfer or pick, a lowered max_concurrent);
- a private contact's session is with MAIN (held, backlog, or a left message for MAIN);
- at most one open session per (shop, buyer), every open session in exactly one place
  (an agent, a backlog, the queue, left messages) and every session ever decided either
  there or ended (by an ``ended`` event): nothing lost, nothing duplicated;
- load/new_count equal a recount and are never negative; scope counters equal a recount;
- each scope's heap picks what a brute-force scan picks;
- nothing queued (or, with auto-assign, left) while an agent that may take it is free;
- a rejected command changes nothing (not even timers or events);
- a session is never with an agent it timed out on unless a person put it there (a pick,
  a transfer) or rule 3 keeps it MAIN's (issue 15: no bounce);
- a priority notice only on a success: a priority buyer from a lit entry now with an agent,
  someone in scope ONLINE/INVISIBLE, and ``priority_notice`` true exactly then;
- an ended session reads as ENDED, never NOT_FOUND;
- replaying the same commands on a fresh dispatcher gives the same state, also when the
  run was snapshotted and restored (encode, decode, go on) at random points.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fenliu.server.core import image
from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.errors import FenliuError
from fenliu.server.core.shop import Shop
from fenliu.server.core.shop_heap import strategy_key
from fenliu.server.core.state import Session
from fenliu.server.core.types import (
    LIT_CHANNELS,
    RECEIVING,
    Acknowledge,
    AddPrivateContact,
    EndSessions,
    GetSession,
    LeaveQueue,
    OnQueueFull,
    Pick,
    PolicyChange,
    PriorityNotice,
    QueueOrder,
    Reason,
    RegisterAgent,
    RemoveAgent,
    Reply,
    Role,
    Route,
    SetPolicy,
    SetStatus,
    StarSession,
    State,
    Status,
    Strategy,
    Tick,
    Transfer,
    UpdateAgent,
)

SHOPS = ["shop-a", "shop-b"]
AGENTS = ["main", "a1", "a2", "a3"]
BUYERS = [f"b{i}" for i in range(8)]
GROUPS = ["pre", "post"]
MINUTE = 60_000

shops = st.sampled_from(SHOPS)
agents = st.sampled_from(AGENTS)
buyers = st.sampled_from(BUYERS)
statuses = st.sampled_from(list(Status))
sessions = st.integers(1, 30).map(lambda n: f"s{n}")
optional_group = st.sampled_from(["", *GROUPS])
durations = st.sampled_from([0, MINUTE, 5 * MINUTE, 10 * MINUTE])


def dump(d: Dispatcher) -> Any:
    """A canonical, comparable picture of the whole state."""
    out = []
    for shard in d.shards:
        shops_dump = {sid: dump_shop(shop) for sid, shop in sorted(shard.shops.items())}
        timers = sorted(
            (t[0], t[1], t[2], t[3].shop_id, _key(t[4]))
            for t in shard.timers
            if not isinstance(t[4], Session) or t[3].sessions.get(t[4].session_id) is t[4]
        )  # entries of ended sessions are inert
        out.append((shard.now, shops_dump, timers, len(shard.outbox)))
    return out


def _key(key: Any) -> str:
    return key if isinstance(key, str) else key.session_id


def _ended(e: Any) -> tuple[Any, ...]:
    return tuple(getattr(e, name) for name in type(e).__slots__)


def dump_shop(shop: Shop) -> Any:
    agents = [
        (
            a.agent_id,
            a.role,
            a.groups,
            a.max_concurrent,
            a.status,
            a.load,
            a.new_count,
            [s.session_id for s in a.open_sessions()],
            list(a.backlog),
            a.last_assign,
            a.reg,
            a.served_count,
            [_ended(e) for e in (a.ended or {}).values()],
            dict(a.starred or {}),
        )
        for a in shop.agents.values()
    ]
    sessions = [
        (
            s.session_id,
            s.buyer_id,
            s.state,
            s.agent.agent_id if s.agent else "",
            s.group,
            s.priority,
            s.channel,
            s.created_at,
            s.entered_at,
            s.assigned_at,
            s.awaiting_since,
            s.last_activity,
            s.first_reply_at,
            sorted(s.excluded or ()),
            s.reason,
            s.timer_due,
            s.left_for,
            s.private,
            s.last_buyer_at,
        )
        for s in shop.sessions.values()
    ]
    return (
        shop.policy,
        agents,
        sessions,
        [e[3].session_id for e in shop.queue],
        list(shop.left),
        shop.recent_contacts(),
        sorted(shop.private),
        dict(shop.notices),
        shop.request_table(),
        shop.next_seq,
        shop.assign_seq,
        shop.main.agent_id if shop.main else None,
        shop.event_seq,
        _counters(shop),
    )


def _counters(shop: Shop) -> Any:
    c = shop.counters
    if c is None:
        return None
    buckets = [(minute, list(counts)) for minute, counts in c.buckets.items()]
    return (c.day, list(c.today), c.minute, list(c.current), buckets)  # copies: they change


class RoutingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.d = Dispatcher(shards=2)
        self.now = 1_700_000_000_000
        self.log: list[Any] = []
        self.seen: dict[tuple[str, str], str] = {}  # (shop, session) -> buyer
        self.ended: set[tuple[str, str]] = set()
        self.may_exceed: set[tuple[str, str]] = set()
        self.requests = 0
        self.event_seqs: dict[str, int] = {}  # shop -> seq of its last event seen
        self.timed_out: dict[tuple[str, str], set[str]] = {}  # session -> agents it timed out on
        self.decided: dict[tuple[str, str], Any] = {}  # (shop, request id) -> its decision

    # ------------------------------------------------------------ driving

    def run(self, command: Any) -> Any:
        before = dump(self.d)
        try:
            result = self.d.execute(command)
        except FenliuError:
            assert dump(self.d) == before, f"rejected {command!r} changed the state"
            return None
        self.log.append(command)
        self.observe(command, result)
        return result

    def observe(self, command: Any, result: Any) -> None:
        shop = getattr(command, "shop_id", "")
        decisions = []
        if hasattr(result, "outcome"):
            decisions.append(result)
        decisions.extend(getattr(result, "moved", ()))
        for decision in decisions:
            if decision.session_id:
                self.seen[(shop or self._shop_of(decision), decision.session_id)] = (
                    decision.buyer_id
                )
            if decision.reason is Reason.PRIORITY_OVERFLOW:
                self.may_exceed.add((shop or self._shop_of(decision), decision.agent_id))
        if isinstance(command, Route) and hasattr(result, "outcome"):
            key = (command.shop_id, command.request_id)
            if self.decided.get(key) != result:  # not rule 0's cached answer to a retry
                self.check_notice(command, result)
            self.decided[key] = result
        if getattr(command, "force", False) or isinstance(command, (RegisterAgent, UpdateAgent)):
            # A forced transfer/pick or a lowered max_concurrent may leave an agent above max.
            target = getattr(command, "to_agent_id", "") or getattr(command, "agent_id", "")
            agent = self._agent(shop, target)
            if agent is not None and agent.load > agent.max_concurrent:
                self.may_exceed.add((shop, target))
        for event in self.d.drain_events():
            # Every shop numbers its events 1, 2, 3, ... without gaps, across snapshots.
            assert event.seq == self.event_seqs.get(event.shop_id, 0) + 1, event
            self.event_seqs[event.shop_id] = event.seq
            assert (event.status is not None) == (event.kind == "status_changed"), event
            if event.kind == "ended":
                self.ended.add((event.shop_id, event.session_id))
            key = (event.shop_id, event.session_id)
            if event.kind == "timeout" and event.reason in (
                Reason.ACCEPT_TIMEOUT,
                Reason.REPLY_TIMEOUT,
            ):
                self.timed_out.setdefault(key, set()).add(event.agent_id)
            if event.kind in ("assigned", "backlog_changed") and event.reason is not None:
                self.check_no_bounce(key, event)
            if event.kind == "assigned" and event.reason is Reason.PRIORITY_OVERFLOW:
                self.may_exceed.add((event.shop_id, event.agent_id))

    def check_no_bounce(self, key: tuple[str, str], event: Any) -> None:
        """SPEC §2: a session never returns by itself to an agent it timed out on."""
        if event.agent_id not in self.timed_out.get(key, ()):
            return
        if event.reason in (Reason.MANUAL_PICK, Reason.TRANSFER):
            return  # a person chose it
        session = self.d.shard_for(key[0]).shops[key[0]].sessions.get(key[1])
        assert session is not None and session.private, (
            f"{key} went back to {event.agent_id}, which it timed out on ({event.reason.name})"
        )

    def check_notice(self, command: Route, decision: Any) -> None:
        """Seed 004: a notice only when priority reception succeeded."""
        assert decision.priority_notice == (decision.notice is not PriorityNotice.NONE)
        if decision.notice is PriorityNotice.NONE or decision.reason is Reason.OPEN_SESSION:
            assert decision.notice is PriorityNotice.NONE or decision.reason is not (
                Reason.OPEN_SESSION
            )
            return
        shop = self.d.shard_for(command.shop_id).shops[command.shop_id]
        assert not shop.priority_crowds.isdisjoint(command.crowds), decision
        assert command.channel in LIT_CHANNELS, decision
        assert decision.outcome.name == "ASSIGNED", decision
        assert decision.reason in (
            Reason.PRIORITY_CROWD,
            Reason.PRIORITY_OVERFLOW,
            Reason.RECENT_CONTACT,
            Reason.ADDRESSED,
        ), decision
        assert shop.receiving.get(command.group, 0) > 0, decision
        member = bool(shop.policy.member_crowd) and shop.policy.member_crowd in command.crowds
        assert decision.notice.name.startswith("MEMBER_") == member, decision

    def _agent(self, shop_id: str, agent_id: str) -> Any:
        shop = self.d.shard_for(shop_id).shops.get(shop_id)
        return shop.agents.get(agent_id) if shop is not None else None

    def _shop_of(self, decision: Any) -> str:
        for shard in self.d.shards:
            for shop in shard.shops.values():
                session = shop.sessions.get(decision.session_id)
                if session is not None and session.buyer_id == decision.buyer_id:
                    return shop.shop_id
        return "?"

    # ------------------------------------------------------------ rules

    @rule(
        shop=shops,
        agent=agents,
        groups=st.lists(st.sampled_from(GROUPS), max_size=2),
        max_concurrent=st.integers(0, 3),
        status=statuses,
        replace=st.sampled_from([None, True, False]),
    )
    def register(
        self,
        shop: str,
        agent: str,
        groups: list[str],
        max_concurrent: int,
        status: Status,
        replace: bool | None,
    ) -> None:
        role = Role.MAIN if agent == "main" else Role.SUB
        self.run(
            RegisterAgent(
                at=self.now,
                shop_id=shop,
                agent_id=agent,
                role=role,
                groups=tuple(groups),
                max_concurrent=max_concurrent,
                status=status,
                replace=replace,
            )
        )

    @rule(
        shop=shops,
        agent=agents,
        role=st.sampled_from([None, *Role]),
        groups=st.none() | st.lists(st.sampled_from(GROUPS), max_size=2).map(tuple),
        max_concurrent=st.none() | st.integers(0, 3),
    )
    def update(
        self,
        shop: str,
        agent: str,
        role: Role | None,
        groups: tuple[str, ...] | None,
        max_concurrent: int | None,
    ) -> None:
        command = UpdateAgent(
            at=self.now,
            shop_id=shop,
            agent_id=agent,
            role=role,
            groups=groups,
            max_concurrent=max_concurrent,
        )
        before = self._agent(shop, agent)
        kept = None if before is None else (before.role, before.groups, before.max_concurrent)
        if self.run(command) is not None and kept is not None:
            after = self._agent(shop, agent)
            # only the fields named change
            named = (role, None if groups is None else tuple(dict.fromkeys(groups)), max_concurrent)
            for i, value in enumerate(named):
                now = (after.role, after.groups, after.max_concurrent)[i]
                assert now == (kept[i] if value is None else value)

    @rule(shop=shops, agent=agents, session=sessions, starred=st.booleans())
    def star(self, shop: str, agent: str, session: str, starred: bool) -> None:
        self.run(
            StarSession(
                at=self.now, shop_id=shop, agent_id=agent, session_id=session, starred=starred
            )
        )

    @rule(shop=shops, agent=agents, status=statuses)
    def set_status(self, shop: str, agent: str, status: Status) -> None:
        self.run(SetStatus(at=self.now, shop_id=shop, agent_id=agent, status=status))

    @rule(shop=shops, agent=agents)
    def remove(self, shop: str, agent: str) -> None:
        self.run(RemoveAgent(at=self.now, shop_id=shop, agent_id=agent))

    @rule(
        shop=shops,
        strategy=st.sampled_from(list(Strategy)),
        order=st.sampled_from(list(QueueOrder)),
        limit=st.integers(0, 4),
        full=st.sampled_from(list(OnQueueFull)),
        crowds=st.sampled_from([(), ("vip",), ("vip", "member")]),
        flags=st.tuples(st.booleans(), st.booleans(), st.booleans()),
        member=st.sampled_from(["", "member"]),
        group_crowds=st.sampled_from([{}, {"pre": ("gold",)}, {"post": ("gold", "vip")}]),
        accept=durations,
        reply=durations,
        idle=durations,
        wait=durations,
    )
    def policy(
        self,
        shop: str,
        strategy: Strategy,
        order: QueueOrder,
        limit: int,
        full: OnQueueFull,
        crowds: tuple[str, ...],
        flags: tuple[bool, bool, bool],
        member: str,
        group_crowds: dict[str, tuple[str, ...]],
        accept: int,
        reply: int,
        idle: int,
        wait: int,
    ) -> None:
        change = PolicyChange(
            strategy=strategy,
            queue_order=order,
            queue_limit=limit,
            on_queue_full=full,
            priority_crowds=crowds,
            priority_may_exceed_capacity=flags[0],
            route_when_all_suspended=flags[1],
            auto_assign_left_messages=flags[2],
            accept_timeout_ms=accept,
            reply_timeout_ms=reply,
            idle_end_timeout_ms=idle,
            queue_wait_limit_ms=wait,
            member_crowd=member,
            group_crowds=group_crowds,
        )
        self.run(SetPolicy(at=self.now, shop_id=shop, change=change))

    @rule(shop=shops, buyer=st.sampled_from(BUYERS[:4]))
    def private(self, shop: str, buyer: str) -> None:
        self.run(AddPrivateContact(at=self.now, shop_id=shop, buyer_id=buyer))

    @rule(
        shop=shops,
        buyer=buyers,
        addressed=st.sampled_from(["", "main", "main", "a1"]),
        crowds=st.sampled_from([(), ("vip",), ("x",), ("gold",), ("vip", "member")]),
        group=optional_group,
        channel=st.sampled_from(["", "item_page", "message_box", "shop_home"]),
        team=st.booleans(),
        retry=st.booleans(),
    )
    def route(
        self,
        shop: str,
        buyer: str,
        addressed: str,
        crowds: tuple[str, ...],
        group: str,
        channel: str,
        team: bool,
        retry: bool,
    ) -> None:
        if not retry or self.requests == 0:
            self.requests += 1
        command = Route(
            at=self.now,
            shop_id=shop,
            buyer_id=buyer,
            request_id=f"r{self.requests}",
            addressed_agent_id=addressed,
            crowds=crowds,
            group=group,
            channel=channel,
            from_team_member=team and self.requests % 5 == 0,
        )
        first = self.run(command)
        if retry and first is not None:
            # Rule 0: the same request again is the same decision and changes nothing.
            after_first = dump(self.d)
            assert self.d.execute(command) == first
            assert dump(self.d) == after_first

    @rule(shop=shops, agent=agents, session=sessions, reply=st.booleans())
    def act(self, shop: str, agent: str, session: str, reply: bool) -> None:
        kind = Reply if reply else Acknowledge
        self.run(kind(at=self.now, shop_id=shop, agent_id=agent, session_id=session))

    @rule(
        shop=shops,
        session=sessions,
        to_agent=st.sampled_from(["", *AGENTS]),
        to_group=optional_group,
        force=st.booleans(),
    )
    def transfer(self, shop: str, session: str, to_agent: str, to_group: str, force: bool) -> None:
        self.run(
            Transfer(
                at=self.now,
                shop_id=shop,
                session_id=session,
                to_agent_id=to_agent,
                to_group=to_group,
                force=force,
            )
        )

    @rule(shop=shops, ids=st.lists(sessions, min_size=1, max_size=3))
    def end(self, shop: str, ids: list[str]) -> None:
        self.run(EndSessions(at=self.now, shop_id=shop, session_ids=tuple(ids)))

    @rule(shop=shops, agent=agents, session=st.sampled_from([""]) | sessions, force=st.booleans())
    def pick(self, shop: str, agent: str, session: str, force: bool) -> None:
        self.run(Pick(at=self.now, shop_id=shop, agent_id=agent, session_id=session, force=force))

    @rule(shop=shops, buyer=buyers)
    def leave(self, shop: str, buyer: str) -> None:
        self.run(LeaveQueue(at=self.now, shop_id=shop, buyer_id=buyer))

    @rule(minutes=st.sampled_from([0, 1, 3, 6, 11, 31, 60 * 25]))
    def advance(self, minutes: int) -> None:
        self.now += minutes * MINUTE
        self.run(Tick(at=self.now))

    @rule()
    def snapshot_and_restore(self) -> None:
        # Durability: a snapshot of every shard, decoded, is the same state and goes on
        # the same way (the final replay from scratch checks the rest of the run).
        before = dump(self.d)
        for i, shard in enumerate(self.d.shards):
            restored, position = image.decode(image.encode(shard, len(self.log)))
            assert position == len(self.log)
            self.d.shards[i] = restored
        assert dump(self.d) == before

    # ------------------------------------------------------------ invariants

    def all_shops(self) -> list[Shop]:
        return [shop for shard in self.d.shards for shop in shard.shops.values()]

    @invariant()
    def capacity_respected(self) -> None:
        for shop in self.all_shops():
            for a in shop.agents.values():
                key = (shop.shop_id, a.agent_id)
                if a.load <= a.max_concurrent:
                    self.may_exceed.discard(key)
                elif shop.policy.priority_may_exceed_capacity and any(
                    s.priority for s in a.open_sessions()
                ):
                    self.may_exceed.add(key)  # priority overflow, also on reassignment
                assert a.load <= a.max_concurrent or key in self.may_exceed, (
                    f"{key} holds {a.load} > max {a.max_concurrent} with no rule allowing it"
                )

    @invariant()
    def every_session_in_exactly_one_place(self) -> None:
        places: dict[tuple[str, str], str] = {}

        def put(shop: Shop, session_id: str, place: str) -> None:
            key = (shop.shop_id, session_id)
            assert key not in places, f"{key} is in {places[key]} and {place}"
            places[key] = place

        for shop in self.all_shops():
            buyers = [s.buyer_id for s in shop.sessions.values()]
            assert len(buyers) == len(set(buyers)), "two open sessions for one buyer"
            assert set(shop.by_buyer) == set(buyers)
            for a in shop.agents.values():
                held = a.open_sessions()
                assert [s.before for s in held] == [None, *held][: len(held)], "links out of step"
                assert a.last is (held[-1] if held else None)
                for s in held:
                    assert s.state in (State.ASSIGNED, State.ACTIVE) and s.agent is a
                    put(shop, s.session_id, f"agent {a.agent_id}")
                for sid, s in a.backlog.items():
                    assert s.state is State.BACKLOG and s.agent is a
                    put(shop, sid, f"backlog {a.agent_id}")
            keys = [e[:3] for e in shop.queue]
            assert keys == sorted(keys)
            for e in shop.queue:
                assert e[3].state is State.QUEUED and e[:3] == shop.queue_key(e[3])
                put(shop, e[3].session_id, "queue")
            for sid, s in shop.left.items():
                assert s.state is State.LEFT_MESSAGE
                put(shop, sid, "left messages")
            assert {k[1] for k in places if k[0] == shop.shop_id} == set(shop.sessions)
            for s in shop.sessions.values():
                if s.private:  # rule 3: a private contact's session is MAIN's, never others'
                    main = shop.main
                    assert main is not None and (s.agent is main or s.left_for == main.agent_id)
        open_now = set(places)
        decided = set(self.seen)
        assert open_now <= decided, f"sessions nobody was told about: {open_now - decided}"
        assert decided - self.ended == open_now, (
            f"lost: {decided - self.ended - open_now}, ended yet open: {open_now & self.ended}"
        )

    @invariant()
    def never_back_with_an_agent_it_timed_out_on(self) -> None:
        by_hand = (Reason.MANUAL_PICK, Reason.TRANSFER)
        for shop in self.all_shops():
            for s in shop.sessions.values():
                a = s.agent
                if a is None or not s.excluded or a.agent_id not in s.excluded:
                    continue
                assert s.reason in by_hand or s.private or s.reason is Reason.PRIVATE_CONTACT, (
                    f"{s.session_id} is back with {a.agent_id}, which it timed out on "
                    f"({s.state.name}, {s.reason.name})"
                )

    @invariant()
    def ended_sessions_read_as_ended(self) -> None:
        for shop_id, session_id in sorted(self.ended):
            shop = self.d.shard_for(shop_id).shops[shop_id]
            if session_id in shop.sessions:
                continue  # (never: ended ids are not reused) the open check catches it
            view = self.d.read(GetSession(at=self.now, shop_id=shop_id, session_id=session_id))
            assert view.state is State.ENDED, (shop_id, session_id)

    @invariant()
    def counters_match_a_recount(self) -> None:
        for shop in self.all_shops():
            for a in shop.agents.values():
                held = a.open_sessions()
                assert a.load == len(held) >= 0
                assert a.new_count == sum(s.state is State.ASSIGNED for s in held) >= 0
            for scope, members in shop.members.items():
                members_now = [a for a in shop.agents.values() if scope in a.scopes]
                assert sorted(members) == sorted(a.agent_id for a in members_now)
                assert shop.receiving[scope] == sum(a.status in RECEIVING for a in members_now)
                assert shop.present[scope] == sum(
                    a.status is not Status.OFFLINE for a in members_now
                )

    @invariant()
    def heaps_agree_with_brute_force(self) -> None:
        for shop in self.all_shops():
            for scope, members in shop.members.items():
                eligible = [
                    a
                    for a in members.values()
                    if a.status in RECEIVING and a.load < a.max_concurrent
                ]
                expected = min(
                    eligible, key=lambda a: strategy_key(shop.policy.strategy, a), default=None
                )
                assert shop.heaps[scope].best() is expected

    @invariant()
    def nothing_waits_while_an_agent_could_take_it(self) -> None:
        for shop in self.all_shops():
            waiting = [e[3] for e in shop.queue]
            auto = shop.policy.auto_assign_left_messages
            waiting += [s for s in shop.left.values() if auto or s.left_for]
            for s in waiting:
                for a in shop.agents.values():
                    if a.load >= a.max_concurrent or a.status is Status.OFFLINE:
                        continue
                    if s.left_for:  # MAIN's private left message: MAIN's whatever its status
                        assert a.agent_id != s.left_for, f"{s.session_id} waits for free {a}"
                        continue
                    if s.group and s.group not in a.groups:
                        continue
                    if s.excluded and a.agent_id in s.excluded:
                        continue
                    receiving_in_scope = any(
                        b.status in RECEIVING
                        for b in shop.agents.values()
                        if not s.group or s.group in b.groups
                    )
                    suspended_ok = (
                        a.status is Status.SUSPENDED
                        and shop.policy.route_when_all_suspended
                        and not receiving_in_scope
                    )
                    assert a.status not in RECEIVING and not suspended_ok, (
                        f"{s.session_id} ({s.state.name}) waits while {a.agent_id} "
                        f"({a.status.name}, {a.load}/{a.max_concurrent}) is free"
                    )

    def teardown(self) -> None:
        replay = Dispatcher(shards=2)
        for command in self.log:
            replay.execute(command)
        replay.drain_events()
        self.d.drain_events()
        assert dump(replay) == dump(self.d), "replay diverged"


RoutingMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_routing_invariants = RoutingMachine.TestCase

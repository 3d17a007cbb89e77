"""SPEC §6: bad input is refused with the right error naming the field, and changes nothing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fenliu.server.core.errors import (
    FailedPrecondition,
    FenliuError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from fenliu.server.core.types import (
    DAY,
    Acknowledge,
    AddPrivateContact,
    EndSessions,
    GetPolicy,
    GetPosition,
    GetSession,
    LeaveQueue,
    ListQueue,
    ListTeam,
    OnQueueFull,
    Outcome,
    Pick,
    PolicyChange,
    RegisterAgent,
    RemoveAgent,
    Reply,
    Role,
    Route,
    SetPolicy,
    SetStatus,
    Status,
    Transfer,
)

from .conftest import T0, World


@pytest.fixture
def busy(w):
    """A shop with something in every place a bad command could disturb.

    m (MAIN, max 1): b1 ACTIVE, private contact p in its backlog; a1 (max 1): b2 ASSIGNED;
    a2 (presale) OFFLINE; the queue full with q1, q2 (limit 2, REJECT); a left message l1.
    """
    w.policy(queue_limit=2, on_queue_full=OnQueueFull.REJECT, auto_assign_left_messages=False)
    w.agent("m", role=Role.MAIN, max=1, status=Status.OFFLINE)
    w.agent("a1", max=1, status=Status.OFFLINE)
    w.agent("a2", max=3, groups=("presale",), status=Status.OFFLINE)
    w.sid = {}
    w.sid["l1"] = w.route("l1").session_id
    w.status("m", Status.ONLINE)
    w.status("a1", Status.ONLINE)
    w.sid["b1"] = w.route("b1", addressed_agent_id="m").session_id
    w.ack("m", w.sid["b1"])
    w.sid["b2"] = w.route("b2", addressed_agent_id="a1").session_id
    w.private("p")
    w.sid["p"] = w.route("p", addressed_agent_id="m").session_id
    w.sid["q1"] = w.route("q1").session_id
    w.sid["q2"] = w.route("q2").session_id
    assert w.queue() == ["q1", "q2"]
    assert w.left_messages() == {"l1": ""}
    return w


def route(w, **fields):
    """A Route of a new buyer in the busy shop, with some fields replaced."""
    base = {"shop_id": w.shop, "buyer_id": "n1", "request_id": "r-new"}
    return w.d.execute(Route(at=w.now, **{**base, **fields}))


def policy(w, **change):
    return w.do(SetPolicy, change=PolicyChange(**change))


def register(w, **fields):
    base = {"agent_id": "a9", "max_concurrent": 1}
    return w.do(RegisterAgent, **{**base, **fields})


def command(cls, **fields):
    """A command of the busy shop; ``sid:<buyer>`` stands for that buyer's session id."""

    def act(w):
        resolved = {
            key: w.sid[value[4:]] if isinstance(value, str) and value.startswith("sid:") else value
            for key, value in fields.items()
        }
        if "session_ids" in resolved:
            resolved["session_ids"] = tuple(
                w.sid[v[4:]] if v.startswith("sid:") else v for v in resolved["session_ids"]
            )
        return w.do(cls, **resolved)

    return act


def case(id, act, error, field):
    return pytest.param(act, error, field, id=id)


IA, NF, FP = InvalidArgument, NotFound, FailedPrecondition
ID_129 = "x" * 129

CASES = [
    # Route: malformed
    case("route-shop-empty", lambda w: route(w, shop_id=""), IA, "shop_id"),
    case("route-shop-too-long", lambda w: route(w, shop_id=ID_129), IA, "shop_id"),
    case("route-shop-space", lambda w: route(w, shop_id="shop 1"), IA, "shop_id"),
    case("route-buyer-empty", lambda w: route(w, buyer_id=""), IA, "buyer_id"),
    case("route-buyer-chinese", lambda w: route(w, buyer_id="买家"), IA, "buyer_id"),
    case("route-request-empty", lambda w: route(w, request_id=""), IA, "request_id"),
    case("route-request-slash", lambda w: route(w, request_id="r/1"), IA, "request_id"),
    case(
        "route-addressed-bad",
        lambda w: route(w, addressed_agent_id="a 1"),
        IA,
        "addressed_agent_id",
    ),
    case(
        "route-11-crowds",
        lambda w: route(w, crowds=tuple(f"c{i}" for i in range(11))),
        IA,
        "crowds",
    ),
    case("route-crowd-empty", lambda w: route(w, crowds=("vip", "")), IA, ("crowds", "crowds[1]")),
    case("route-group-bad", lambda w: route(w, group="pre sale"), IA, "group"),
    case(
        "route-team-without-addressee",
        lambda w: route(w, buyer_id="a1", from_team_member=True),
        IA,
        "addressed_agent_id",
    ),
    # Route: unknown things
    case("route-unknown-shop", lambda w: route(w, shop_id="nope"), NF, "shop_id"),
    case(
        "route-unknown-addressee",
        lambda w: route(w, addressed_agent_id="ghost"),
        NF,
        "addressed_agent_id",
    ),
    case(
        "route-team-unknown-addressee",
        lambda w: route(w, buyer_id="a1", from_team_member=True, addressed_agent_id="ghost"),
        NF,
        "addressed_agent_id",
    ),
    # Route: queue full and the policy says REJECT
    case("route-queue-full", lambda w: route(w), ResourceExhausted, None),
    # Presence
    case("register-agent-empty", lambda w: register(w, agent_id=""), IA, "agent_id"),
    case("register-max-10001", lambda w: register(w, max_concurrent=10_001), IA, "max_concurrent"),
    case("register-max-negative", lambda w: register(w, max_concurrent=-1), IA, "max_concurrent"),
    case(
        "register-33-groups",
        lambda w: register(w, groups=tuple(f"g{i}" for i in range(33))),
        IA,
        "groups",
    ),
    case(
        "register-group-bad",
        lambda w: register(w, groups=("ok", "no way")),
        IA,
        ("groups", "groups[1]"),
    ),
    case("register-second-main", lambda w: register(w, role=Role.MAIN), FP, "role"),
    case(
        "status-unknown-agent",
        command(SetStatus, agent_id="ghost", status=Status.ONLINE),
        NF,
        "agent_id",
    ),
    case(
        "status-unknown-shop",
        lambda w: w.d.execute(
            SetStatus(at=w.now, shop_id="nope", agent_id="a1", status=Status.ONLINE)
        ),
        NF,
        "shop_id",
    ),
    case("remove-unknown-agent", command(RemoveAgent, agent_id="ghost"), NF, "agent_id"),
    case("private-buyer-empty", command(AddPrivateContact, buyer_id=""), IA, "buyer_id"),
    # Policy
    case(
        "policy-11-priority-crowds",
        lambda w: policy(w, priority_crowds=tuple(f"c{i}" for i in range(11))),
        IA,
        "policy.priority_crowds",
    ),
    case(
        "policy-priority-crowd-bad",
        lambda w: policy(w, priority_crowds=("vip", "v i p")),
        IA,
        ("policy.priority_crowds", "policy.priority_crowds[1]"),
    ),
    case(
        "policy-time-zone-unknown",
        lambda w: policy(w, time_zone="Mars/Olympus"),
        IA,
        "policy.time_zone",
    ),
    case(
        "policy-queue-limit-negative", lambda w: policy(w, queue_limit=-1), IA, "policy.queue_limit"
    ),
    case(
        "policy-accept-timeout-negative",
        lambda w: policy(w, accept_timeout_ms=-1),
        IA,
        "policy.accept_timeout_ms",
    ),
    # Acknowledge and reply
    case(
        "ack-unknown-session",
        command(Acknowledge, agent_id="m", session_id="s999"),
        NF,
        "session_id",
    ),
    case(
        "ack-malformed-session",
        command(Acknowledge, agent_id="m", session_id="s 1"),
        IA,
        "session_id",
    ),
    case(
        "ack-unknown-agent",
        command(Acknowledge, agent_id="ghost", session_id="sid:b1"),
        NF,
        "agent_id",
    ),
    case(
        "ack-by-another-agent",
        command(Acknowledge, agent_id="a1", session_id="sid:b1"),
        FP,
        ("agent_id", "session_id"),
    ),
    case(
        "ack-queued-session",
        command(Acknowledge, agent_id="m", session_id="sid:q1"),
        FP,
        ("session_id", "agent_id"),
    ),
    case(
        "reply-by-another-agent",
        command(Reply, agent_id="a1", session_id="sid:b1"),
        FP,
        ("agent_id", "session_id"),
    ),
    # Transfer
    case(
        "transfer-unknown-session",
        command(Transfer, session_id="s999", to_agent_id="a1"),
        NF,
        "session_id",
    ),
    case(
        "transfer-unknown-target",
        command(Transfer, session_id="sid:b1", to_agent_id="ghost"),
        NF,
        "to_agent_id",
    ),
    case(
        "transfer-to-offline",
        command(Transfer, session_id="sid:b1", to_agent_id="a2", force=True),
        FP,
        "to_agent_id",
    ),
    case(
        "transfer-to-full",
        command(Transfer, session_id="sid:b1", to_agent_id="a1"),
        FP,
        "to_agent_id",
    ),
    case(
        "transfer-group-bad",
        command(Transfer, session_id="sid:b1", to_group="pre sale"),
        IA,
        "to_group",
    ),
    case(
        "transfer-no-target",
        command(Transfer, session_id="sid:b1"),
        IA,
        ("to_agent_id", "to_group"),
    ),
    case(
        "transfer-by-another-agent",
        command(Transfer, session_id="sid:b1", agent_id="a1", to_agent_id="a1", force=True),
        FP,
        "agent_id",
    ),
    # End sessions
    case(
        "end-1001-sessions",
        command(EndSessions, session_ids=tuple(f"s{i}" for i in range(1001))),
        IA,
        "session_ids",
    ),
    case(
        "end-one-unknown",
        command(EndSessions, session_ids=("sid:b2", "s999")),
        NF,
        ("session_ids", "session_ids[1]"),
    ),
    case(
        "end-malformed",
        command(EndSessions, session_ids=("s 1",)),
        IA,
        ("session_ids", "session_ids[0]"),
    ),
    # Pick
    case(
        "pick-by-offline-agent",
        command(Pick, agent_id="a2", session_id="sid:q1", force=True),
        FP,
        "agent_id",
    ),
    case("pick-by-full-agent", command(Pick, agent_id="a1", session_id="sid:q1"), FP, None),
    case("pick-unknown-session", command(Pick, agent_id="a1", session_id="s999"), NF, "session_id"),
    case(
        "pick-unknown-agent",
        command(Pick, agent_id="ghost", session_id="sid:q1"),
        NF,
        "agent_id",
    ),
    case(
        "pick-an-active-session",
        command(Pick, agent_id="a1", session_id="sid:b1", force=True),
        FP,
        "session_id",
    ),
    # Leave queue
    case("leave-not-queued", command(LeaveQueue, buyer_id="b1"), FP, "buyer_id"),
    case("leave-unknown-buyer", command(LeaveQueue, buyer_id="nobody"), NF, "buyer_id"),
]


@pytest.mark.parametrize(("act", "error", "field"), CASES)
def test_rejected_command_names_the_field_and_changes_nothing(busy, act, error, field):
    before = busy.snapshot()
    busy.d.drain_events()
    with pytest.raises(FenliuError) as info:
        act(busy)
    assert type(info.value) is error
    if field is not None:
        assert info.value.field in (field if isinstance(field, tuple) else (field,))
    else:
        assert isinstance(info.value.field, str)
    assert busy.snapshot() == before
    assert busy.d.drain_events() == []


@pytest.mark.parametrize(
    ("act", "field"),
    [
        pytest.param(
            command(Transfer, session_id="sid:q1", to_agent_id="a 1"),
            "to_agent_id",
            id="transfer-queued-session-to-malformed-agent",
        ),
        pytest.param(
            command(Pick, agent_id="a2", session_id="s 1"),
            "session_id",
            id="offline-agent-picks-malformed-session",
        ),
    ],
)
def test_malformed_input_is_invalid_argument_whatever_the_state(busy, act, field):
    # SPEC §6: "answers with the gRPC code that fits": INVALID_ARGUMENT is for arguments that are
    # problematic regardless of the state; FAILED_PRECONDITION for well-formed ones the state
    # refuses (errors.py FailedPrecondition: "well formed but the current state does not
    # allow it")
    before = busy.snapshot()
    with pytest.raises(FenliuError) as info:
        act(busy)
    assert (type(info.value), info.value.field) == (InvalidArgument, field)
    assert busy.snapshot() == before


def test_rejected_command_does_not_create_an_unknown_shop(busy):
    with pytest.raises(NotFound):
        route(busy, shop_id="nope")
    with pytest.raises(NotFound):
        busy.d.read(GetPolicy(at=busy.now, shop_id="nope"))


def test_rejected_route_is_not_remembered_as_a_retry(busy):
    # SPEC §6: "A rejected request leaves the state exactly as it was", request ids included
    with pytest.raises(ResourceExhausted):
        route(busy, request_id="r-later")
    busy.leave_queue("q1")
    assert route(busy, request_id="r-later").outcome == Outcome.QUEUED


def test_limits_are_inclusive(w):
    longest = "aZ09._:@-" + "x" * 119
    assert len(longest) == 128
    w.agent(longest, max=10_000, groups=tuple(f"g{i}" for i in range(32)))
    w.agent("a0", max=0)
    w.policy(priority_crowds=tuple(f"c{i}" for i in range(10)))
    d = w.route(longest, request_id=longest, crowds=tuple(f"k{i}" for i in range(10)))
    assert d.agent_id == longest
    # 1,000 ids is a legal batch: unknown ids, not a malformed request
    with pytest.raises(NotFound):
        w.end(*(f"s{i}" for i in range(1000, 2000)))


@pytest.mark.parametrize(
    ("query", "error", "field"),
    [
        pytest.param(ListQueue(at=0, shop_id="shop-1", limit=1001), IA, "limit", id="queue-limit"),
        pytest.param(ListTeam(at=0, shop_id="nope"), NF, "shop_id", id="team-unknown-shop"),
        pytest.param(GetSession(at=0, shop_id="shop-1", session_id="s999"), NF, "session_id"),
        pytest.param(GetPosition(at=0, shop_id="shop-1", buyer_id="nobody"), NF, "buyer_id"),
    ],
)
def test_bad_query_names_the_field(busy, query, error, field):
    with pytest.raises(FenliuError) as info:
        busy.d.read(query)
    assert (type(info.value), info.value.field) == (error, field)


# ---------------------------------------------------------------- nothing crashes the core

ANY_TEXT = st.text(max_size=140)
IDS = st.one_of(st.sampled_from(["a1", "m", "b1", "ghost", "s1", "s2"]), ANY_TEXT)


def _commands():
    # ``at`` is the server's clock, not client input (SPEC §7): keep it to plausible times
    at = st.integers(min_value=T0, max_value=T0 + 400 * DAY)
    shop = st.one_of(st.just("shop-1"), ANY_TEXT)
    routes = st.builds(
        Route,
        at=at,
        shop_id=shop,
        buyer_id=IDS,
        request_id=IDS,
        addressed_agent_id=st.one_of(st.just(""), IDS),
        crowds=st.lists(IDS, max_size=12).map(tuple),
        group=st.one_of(st.just(""), IDS),
        channel=ANY_TEXT,
        from_team_member=st.booleans(),
    )
    registers = st.builds(
        RegisterAgent,
        at=at,
        shop_id=shop,
        agent_id=IDS,
        role=st.sampled_from(Role),
        groups=st.lists(IDS, max_size=34).map(tuple),
        max_concurrent=st.integers(min_value=-5, max_value=20_000),
        status=st.sampled_from(Status),
    )
    acks = st.builds(Acknowledge, at=at, shop_id=shop, agent_id=IDS, session_id=IDS)
    ends = st.builds(EndSessions, at=at, shop_id=shop, session_ids=st.lists(IDS).map(tuple))
    picks = st.builds(Pick, at=at, shop_id=shop, agent_id=IDS, session_id=IDS, force=st.booleans())
    return st.one_of(routes, registers, acks, ends, picks)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cmds=st.lists(_commands(), max_size=6))
def test_nothing_a_client_sends_crashes_the_core(cmds):
    # SPEC §6: "Nothing a client sends may crash the server"; a refusal changes nothing
    w = World()
    w.agent("m", role=Role.MAIN, max=1)
    w.agent("a1", max=1)
    w.route("b1")
    for cmd in cmds:
        before = w.snapshot()
        try:
            w.d.execute(cmd)
        except FenliuError:
            assert w.snapshot() == before


# ---------------------------------------------------------------- the ids' fast paths

ID_RULE = __import__("re").compile(r"[A-Za-z0-9._:@-]{1,128}")


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(ANY_TEXT, st.text(alphabet="aZ09٣²ｱ-.", max_size=130)))
def test_an_optional_id_is_checked_as_the_rule_says(value):
    # check_optional_id's fast path (isalnum/isascii before the regex) accepts exactly what
    # SPEC §6's rule accepts: "" or 1-128 of [A-Za-z0-9._:@-] (not a Unicode digit like ٣)
    from fenliu.server.core import validate as v

    ok = value == "" or ID_RULE.fullmatch(value) is not None
    if ok:
        v.check_optional_id(value, "channel")
    else:
        with pytest.raises(InvalidArgument) as caught:
            v.check_optional_id(value, "channel")
        assert caught.value.field == "channel"

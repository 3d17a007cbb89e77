"""Seed 003's reception list: sorts, filters, the ended part, stars, recent contacts, the
over-capacity warning; and issue 15's agent update and bad input."""

from __future__ import annotations

import pytest

from fenliu.server.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from fenliu.server.core.shop import ENDED_KEEP_MS
from fenliu.server.core.types import (
    DAY,
    MINUTE,
    EndSessions,
    GetSession,
    ListAgentSessions,
    ListRecentContacts,
    ListStarred,
    MessageFilter,
    PolicyChange,
    RegisterAgent,
    Role,
    SessionSort,
    SetPolicy,
    StarSession,
    State,
    Status,
    Transfer,
    UpdateAgent,
)

from .conftest import T0


def listing(w, agent="a1", **fields):
    return w.ask(ListAgentSessions, agent_id=agent, **fields)


def buyers(view):
    return [s.buyer_id for s in view.sessions]


@pytest.fixture
def desk(w):
    """a1 holds three sessions: b1 (t0, answered at +3), b2 (+1, waiting), b3 (+2, waiting,
    message_box); then b1 writes again at +4 and is answered at +5."""
    w.policy(idle_end_timeout_ms=0, reply_timeout_ms=0)
    w.agent("a1", max=10)
    w.sid = {}
    for buyer, channel in (("b1", "item_page"), ("b2", "item_page")):
        w.sid[buyer] = w.route(buyer, channel=channel).session_id
        w.advance(minutes=1)
    w.sid["b3"] = w.route("b3", channel="message_box").session_id
    w.advance(minutes=1)
    w.reply("a1", w.sid["b1"])  # +3: b1 answered
    w.advance(minutes=1)
    w.route("b2")  # +4: b2 writes again (still waiting since +1)
    w.advance(minutes=1)
    return w


def test_agent_list_sorts_by_the_buyers_latest_message(desk):
    # Seed 003: "客户消息由近到远"
    view = listing(desk, sort=SessionSort.LATEST_MESSAGE)
    assert buyers(view) == ["b2", "b3", "b1"]
    assert view.sessions[0].last_buyer_at == T0 + 4 * MINUTE


def test_agent_list_sorts_by_how_long_the_buyer_has_waited(desk):
    # Seed 003: "等待时长由长到短 ... 客服回复过的会话,按照最新一条消息发送时间倒序排列"
    view = listing(desk, sort=SessionSort.LONGEST_WAIT)
    assert buyers(view) == ["b2", "b3", "b1"]
    b2, b3, b1 = view.sessions
    assert (b2.waiting_since, b3.waiting_since, b1.waiting_since) == (
        T0 + MINUTE,
        T0 + 2 * MINUTE,
        0,
    )
    # an answered session sorts by its latest message either way, newest first
    desk.route("b4")
    desk.reply("a1", desk.sid["b3"])
    desk.advance(minutes=1)
    desk.reply("a1", desk.route("b4").session_id)
    assert buyers(listing(desk, sort=SessionSort.LONGEST_WAIT)) == ["b2", "b4", "b3", "b1"]


def test_agent_list_sorts_by_access_time(desk):
    # Seed 003: "接入时间由近到远 ... 发送消息后顺序不变"
    view = listing(desk, sort=SessionSort.ACCESS_TIME)
    assert buyers(view) == ["b3", "b2", "b1"]
    assert view.sessions[0].assigned_at == T0 + 2 * MINUTE


def test_agent_list_filters_by_channel_and_message_state(desk):
    assert buyers(listing(desk, channel="message_box")) == ["b3"]
    assert buyers(listing(desk, messages=MessageFilter.WAITING)) == ["b2", "b3"]
    assert buyers(listing(desk, messages=MessageFilter.ANSWERED)) == ["b1"]
    assert buyers(listing(desk, channel="item_page", messages=MessageFilter.WAITING)) == ["b2"]


def test_agent_list_has_an_ended_part_including_idle_timeouts(w):
    # Seed 003: "如设置了超时自动结束,系统自动结束的会话,会自动置入已结束会话中"
    w.agent("a1")
    d1 = w.route("b1", channel="item_page")
    w.ack("a1", d1.session_id)
    w.reply("a1", d1.session_id)
    w.advance(minutes=1)
    d2 = w.route("b2")
    w.end(d2.session_id)
    w.advance(minutes=15)  # b1 idle past idle_end_timeout: ended by the server
    view = listing(w)
    assert view.sessions == ()
    assert [(s.buyer_id, s.state) for s in view.ended] == [
        ("b2", State.ENDED),
        ("b1", State.ENDED),
    ]  # latest buyer message first: b2 wrote after b1
    assert view.ended[1].ended_at == T0 + 16 * MINUTE
    assert view.ended[1].first_reply_at == T0
    # kept a bounded time, then gone from the list
    w.advance(hours=24)
    assert listing(w).ended == ()


def test_ended_session_reads_as_ended_not_not_found(w):
    w.agent("a1")
    d = w.route("b1", channel="order_page")
    w.end(d.session_id)
    view = w.session(d.session_id)
    assert (view.state, view.buyer_id, view.agent_id, view.channel) == (
        State.ENDED,
        "b1",
        "a1",
        "order_page",
    )
    # after the list let it go: still ENDED, without details
    w.advance(hours=25)
    assert w.session(d.session_id).state == State.ENDED
    # an id the shop never issued is still NOT_FOUND
    with pytest.raises(NotFound):
        w.session("s99")


def test_agent_can_star_a_session_and_clear_the_star(w):
    w.agent("a1")
    d = w.route("b1")
    starred = w.do(StarSession, agent_id="a1", session_id=d.session_id)
    assert starred.starred is True
    assert listing(w).sessions[0].starred is True
    assert [s.session_id for s in w.ask(ListStarred, agent_id="a1")] == [d.session_id]
    # "再次点击该图标,星标清除"
    w.do(StarSession, agent_id="a1", session_id=d.session_id, starred=False)
    assert w.ask(ListStarred, agent_id="a1") == ()
    assert listing(w).sessions[0].starred is False


def test_starred_list_keeps_ended_sessions_for_the_recent_contact_window(w):
    # Seed 003: "星标列表:指最近6个月内进过会话列表且该客服星标过的会话记录"
    w.agent("a1")
    d = w.route("b1")
    w.do(StarSession, agent_id="a1", session_id=d.session_id)
    w.end(d.session_id)
    w.advance(hours=24 * 100)
    (star,) = w.ask(ListStarred, agent_id="a1")
    assert (star.session_id, star.buyer_id, star.state) == (d.session_id, "b1", State.ENDED)
    w.advance(hours=24 * 81)  # 181 days after it ended
    assert w.ask(ListStarred, agent_id="a1") == ()


def test_an_agent_stars_only_sessions_in_its_own_list(w):
    w.agent("a1")
    w.agent("a2")
    d = w.route("b1", addressed_agent_id="a2")
    before = w.snapshot()
    with pytest.raises(FailedPrecondition):
        w.do(StarSession, agent_id="a1", session_id=d.session_id)
    with pytest.raises(NotFound):
        w.do(StarSession, agent_id="a1", session_id="s77")
    assert w.snapshot() == before


def test_recent_contacts_list_the_buyers_the_agent_served_newest_first(w):
    # Seed 003: "最近联系人列表:指最近6个月内进过会话列表的联系人记录"
    w.agent("a1")
    w.agent("a2")
    w.serve("b1", "a1")
    w.advance(minutes=1)
    w.serve("b2", "a2")
    w.advance(minutes=1)
    w.serve("b3", "a1")
    contacts = w.ask(ListRecentContacts, agent_id="a1")
    assert [(c.buyer_id, c.last_at) for c in contacts] == [
        ("b3", T0 + 2 * MINUTE),
        ("b1", T0),
    ]
    assert [c.buyer_id for c in w.ask(ListRecentContacts, agent_id="a1", limit=1)] == ["b3"]
    w.advance(hours=24 * 181)
    assert w.ask(ListRecentContacts, agent_id="a1") == ()


# ---------------------------------------------------------------- over capacity


@pytest.fixture
def overloaded(w):
    """a1 holds 4 sessions, then its max is lowered to 2 (seed 003's warning)."""
    w.agent("a1", max=4)
    w.agent("a2", max=0)  # keeps the shop from leaving messages
    w.sid = [w.route(f"b{i}").session_id for i in range(4)]
    w.do(UpdateAgent, agent_id="a1", max_concurrent=2)
    return w


def test_load_above_max_is_flagged_in_the_team_and_the_agents_list(overloaded):
    assert overloaded.team()["a1"].over_capacity is True
    view = listing(overloaded)
    assert (view.load, view.max_concurrent, view.over_capacity) == (4, 2, True)
    assert overloaded.team()["a2"].over_capacity is False
    # and it gets nothing new
    assert overloaded.route("n1").agent_id == ""


def test_over_capacity_is_cleared_by_one_batch_exit(overloaded):
    overloaded.do(EndSessions, session_ids=tuple(overloaded.sid[:3]))
    assert overloaded.team()["a1"].over_capacity is False


def test_over_capacity_is_cleared_by_raising_the_max(overloaded):
    agent = overloaded.do(UpdateAgent, agent_id="a1", max_concurrent=6)
    assert (agent.load, agent.max_concurrent, agent.over_capacity) == (4, 6, False)


# ---------------------------------------------------------------- agent update


def test_update_agent_changes_only_the_fields_it_names(w):
    w.agent("m", role=Role.MAIN, max=2, groups=("presale",))
    agent = w.do(UpdateAgent, agent_id="m", max_concurrent=3)
    assert (agent.role, agent.groups, agent.max_concurrent) == (Role.MAIN, ("presale",), 3)
    agent = w.do(UpdateAgent, agent_id="m", groups=("presale", "aftersale"))
    assert (agent.role, agent.groups, agent.max_concurrent) == (
        Role.MAIN,
        ("presale", "aftersale"),
        3,
    )
    agent = w.do(UpdateAgent, agent_id="m", role=Role.SUB)
    assert (agent.role, agent.max_concurrent) == (Role.SUB, 3)


def test_update_agent_raising_max_takes_from_the_queue_at_once(w):
    w.agent("a1", max=0)
    w.route("b1")
    assert w.queue() == ["b1"]
    w.do(UpdateAgent, agent_id="a1", max_concurrent=1)
    assert w.sessions_of("a1") == {"b1": State.ASSIGNED}


def test_update_agent_refuses_a_second_main_and_an_unknown_agent(w):
    w.agent("m", role=Role.MAIN)
    w.agent("a1")
    before = w.snapshot()
    with pytest.raises(FailedPrecondition):
        w.do(UpdateAgent, agent_id="a1", role=Role.MAIN)
    with pytest.raises(NotFound):
        w.do(UpdateAgent, agent_id="ghost", max_concurrent=1)
    with pytest.raises(InvalidArgument) as info:
        w.do(UpdateAgent, agent_id="a1", max_concurrent=10_001)
    assert info.value.field == "max_concurrent"
    assert w.snapshot() == before


def register(w, agent_id, **fields):
    return w.do(RegisterAgent, agent_id=agent_id, **fields)


def test_registering_an_existing_agent_is_refused_unless_asked_to_replace(w):
    register(w, "m", role=Role.MAIN, max_concurrent=2, groups=("g",), replace=False)
    before = w.snapshot()
    with pytest.raises(AlreadyExists) as info:
        register(w, "m", max_concurrent=3, replace=False)  # would demote MAIN to SUB
    assert info.value.field == "agent_id"
    assert w.snapshot() == before
    agent = register(w, "m", max_concurrent=3, replace=True)
    assert (agent.role, agent.groups, agent.max_concurrent) == (Role.SUB, (), 3)


def test_retried_registration_with_the_same_fields_succeeds_and_changes_nothing(w):
    first = register(w, "a1", max_concurrent=2, status=Status.ONLINE, replace=False)
    before = w.snapshot()
    again = register(w, "a1", max_concurrent=2, status=Status.ONLINE, replace=False)
    assert again == first
    assert w.snapshot() == before


def test_a_new_agent_is_a_sub_account_offline_with_max_zero_by_default(w):
    agent = register(w, "a1", replace=False)
    assert (agent.role, agent.status, agent.max_concurrent, agent.groups) == (
        Role.SUB,
        Status.OFFLINE,
        0,
        (),
    )


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("zone", ["America", "Etc", "Asia", "Europe/" + "x" * 300, ""])
def test_time_zone_that_is_not_a_zone_is_invalid_argument_naming_time_zone(w, zone):
    before = w.snapshot()
    with pytest.raises(InvalidArgument) as info:
        w.do(SetPolicy, change=PolicyChange(time_zone=zone))
    assert info.value.field == "policy.time_zone"
    assert len(info.value.message) < 200  # the name is cut, not echoed whole
    assert w.snapshot() == before


@pytest.mark.parametrize("wrong", ["s01", "s0", "s001", "s+1"])
def test_session_ids_are_parsed_strictly(w, wrong):
    w.agent("a1")
    d = w.route("b1")
    assert d.session_id == "s1"
    before = w.snapshot()
    with pytest.raises((NotFound, InvalidArgument)):
        w.end(wrong)
    with pytest.raises((NotFound, InvalidArgument)):
        w.ask(GetSession, session_id=wrong)
    assert w.snapshot() == before
    assert w.session("s1").state == State.ASSIGNED


def test_transfer_without_a_target_is_invalid_before_the_session_is_looked_up(w):
    with pytest.raises(InvalidArgument) as info:
        w.do(Transfer, session_id="s404")
    assert info.value.field == "to_agent_id"


def test_ended_records_are_kept_for_a_day():
    assert ENDED_KEEP_MS == DAY

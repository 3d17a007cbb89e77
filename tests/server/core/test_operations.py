"""SPEC §4: shops, presence, session operations (acknowledge, reply, transfer, end), the queue."""

from __future__ import annotations

import pytest

from fenliu.server.core.errors import FailedPrecondition
from fenliu.server.core.types import (
    AgentView,
    GetPolicy,
    Outcome,
    Policy,
    Reason,
    RegisterAgent,
    RemoveAgent,
    Role,
    State,
    Status,
    UpdateAgent,
)

from .conftest import World


def moved(result):
    """(buyer, agent) of each session a command moved, sorted."""
    return sorted((d.buyer_id, d.agent_id) for d in result.moved)


def fill(w, agent_id, *buyers):
    """Give the agent an acknowledged session per buyer (addressed to it)."""
    return [w.ack(agent_id, w.route(b, addressed_agent_id=agent_id).session_id) for b in buyers]


# ---------------------------------------------------------------- shops


def test_shop_exists_once_its_first_agent_is_registered_with_default_policy():
    w = World("shop-new")
    w.agent("a1")
    assert w.route("b1").agent_id == "a1"
    assert w.ask(GetPolicy) == Policy()


def test_shops_never_see_each_others_data(w):
    # Given a second shop on the same dispatcher with the same agent and buyer ids
    other = World("shop-2", d=w.d)
    other.now = w.now
    w.agent("a1")
    other.agent("a1")
    d = other.route("b1")
    other.ack("a1", d.session_id)
    # expect nothing of it in shop-1
    assert w.team()["a1"].load == 0
    assert w.sessions_of("a1") == {}
    assert w.route("b1").reason == Reason.STRATEGY  # no open session, no recent contact here
    assert other.team()["a1"].load == 1


# ---------------------------------------------------------------- presence


def test_team_lists_status_load_new_count_max_backlog_and_served_today(w):
    w.agent("a1", max=2, groups=("presale",))
    w.serve("x", "a1")  # served 1
    w.route("b1", addressed_agent_id="a1")  # new customer
    fill(w, "a1", "b2")  # served 2, a1 now at max
    w.route("x")  # recent contact: backlog
    assert w.team()["a1"] == AgentView(
        agent_id="a1",
        role=Role.SUB,
        groups=("presale",),
        max_concurrent=2,
        status=Status.ONLINE,
        load=2,
        new_count=1,
        backlog_size=1,
        served_today=2,
    )


def test_registering_again_updates_role_groups_and_max_but_not_status(w):
    w.agent("a1", max=2)
    view = w.agent("a1", status=Status.OFFLINE, max=4, groups=("vip",), role=Role.MAIN)
    assert (view.status, view.max_concurrent, view.groups, view.role) == (
        Status.ONLINE,
        4,
        ("vip",),
        Role.MAIN,
    )
    assert w.team()["a1"] == view


def test_going_suspended_keeps_current_sessions(w):
    w.agent("a1")
    w.agent("a2")
    w.route("b1", addressed_agent_id="a1")
    fill(w, "a1", "b2")
    result = w.status("a1", Status.SUSPENDED)
    assert result.agent.status == Status.SUSPENDED
    assert result.moved == ()
    assert w.sessions_of("a1") == {"b1": State.ASSIGNED, "b2": State.ACTIVE}


def test_going_offline_moves_new_customers_and_backlog_at_once(w):
    # Seed 002: "离线:不再接收、查看客户消息"; SPEC §4: ASSIGNED and backlog re-routed at once
    w.agent("a1", max=2)
    w.agent("a2")
    w.serve("x", "a1")
    w.route("b1", addressed_agent_id="a1")
    fill(w, "a1", "b2")
    w.route("x")
    assert w.sessions_of("a1") == {"b1": State.ASSIGNED, "b2": State.ACTIVE, "x": State.BACKLOG}
    # When a1 goes offline
    result = w.status("a1", Status.OFFLINE)
    # expect the new customer and the backlog with a2 now; the active one waits for its buyer
    assert moved(result) == [("b1", "a2"), ("x", "a2")]
    assert {d.reason for d in result.moved} == {Reason.AGENT_OFFLINE}
    assert w.sessions_of("a1") == {"b2": State.ACTIVE}
    assert w.team()["a1"].backlog_size == 0


def test_removing_an_agent_reroutes_all_its_sessions(w):
    w.agent("a1")
    w.agent("a2")
    w.route("b1", addressed_agent_id="a1")
    fill(w, "a1", "b2")
    result = w.do(RemoveAgent, agent_id="a1")
    assert moved(result) == [("b1", "a2"), ("b2", "a2")]
    assert {d.reason for d in result.moved} == {Reason.AGENT_OFFLINE}
    assert set(w.team()) == {"a2"}


def test_left_message_for_a_removed_main_becomes_the_shops(w):
    # README timers: "left messages for a removed MAIN become the shop's"
    w.agent("m", role=Role.MAIN, status=Status.OFFLINE)
    w.agent("a1", status=Status.OFFLINE)
    w.private("p")
    w.route("p", addressed_agent_id="m")
    w.do(RemoveAgent, agent_id="m")
    assert w.left_messages() == {"p": ""}
    assert moved(w.status("a1", Status.ONLINE)) == [("p", "a1")]


# ---------------------------------------------------------------- acknowledge, reply


def test_acknowledging_a_new_customer_makes_it_active(w):
    w.agent("a1")
    d = w.route("b1")
    assert (w.team()["a1"].new_count, w.team()["a1"].load) == (1, 1)
    view = w.ack("a1", d.session_id)
    assert view.state == State.ACTIVE
    a1 = w.team()["a1"]
    assert (a1.new_count, a1.load, a1.served_today) == (0, 1, 1)


def test_acknowledging_an_active_session_again_changes_nothing(w):
    # README: "Acknowledge on an ACTIVE session is a no-op success"
    w.agent("a1")
    d = w.route("b1")
    w.ack("a1", d.session_id)
    before = w.snapshot()
    assert w.ack("a1", d.session_id).state == State.ACTIVE
    assert w.snapshot() == before


def test_reply_records_the_first_response_time_once(w):
    w.agent("a1")
    d = w.route("b1")
    w.advance(minutes=1)
    first = w.reply("a1", d.session_id)
    # SPEC §1: ACTIVE = acknowledged or replied
    assert (first.state, first.first_reply_at) == (State.ACTIVE, w.now)
    replied_at = w.now
    w.advance(minutes=1)
    assert w.reply("a1", d.session_id).first_reply_at == replied_at
    assert w.team()["a1"].served_today == 1


# ---------------------------------------------------------------- transfer


def test_transfer_to_an_agent_arrives_as_a_new_customer(w):
    w.agent("a1")
    w.agent("a2")
    (b,) = fill(w, "a1", "b1")
    d = w.transfer(b.session_id, agent_id="a1", to_agent_id="a2")
    assert (d.outcome, d.reason, d.agent_id, d.state) == (
        Outcome.ASSIGNED,
        Reason.TRANSFER,
        "a2",
        State.ASSIGNED,
    )
    assert d.session_id == b.session_id
    team = w.team()
    assert (team["a1"].load, team["a2"].load, team["a2"].new_count) == (0, 1, 1)


def test_transfer_to_a_suspended_agent_is_allowed(w):
    # SPEC §4 refuses a transfer only when the target is OFFLINE or full
    w.agent("a1")
    w.agent("a2", status=Status.SUSPENDED)
    (b,) = fill(w, "a1", "b1")
    assert w.transfer(b.session_id, to_agent_id="a2").agent_id == "a2"


@pytest.mark.parametrize("force", [False, True], ids=["plain", "forced"])
def test_transfer_to_an_offline_agent_is_refused(w, force):
    # README: OFFLINE target refused always, "a forced transfer must not strand the buyer"
    w.agent("a1")
    w.agent("a2", status=Status.OFFLINE)
    (b,) = fill(w, "a1", "b1")
    before = w.snapshot()
    with pytest.raises(FailedPrecondition) as err:
        w.transfer(b.session_id, to_agent_id="a2", force=force)
    assert err.value.field == "to_agent_id"
    assert w.snapshot() == before


def test_transfer_to_a_full_agent_is_refused_unless_forced(w):
    w.agent("a1")
    w.agent("a2", max=1)
    (b,) = fill(w, "a1", "b1")
    fill(w, "a2", "c1")
    before = w.snapshot()
    with pytest.raises(FailedPrecondition) as err:
        w.transfer(b.session_id, to_agent_id="a2")
    assert err.value.field == "to_agent_id"
    assert w.snapshot() == before
    d = w.transfer(b.session_id, to_agent_id="a2", force=True)
    assert (d.agent_id, d.reason) == ("a2", Reason.TRANSFER)
    assert w.team()["a2"].load == 2


def test_transfer_to_a_group_goes_to_the_best_agent_of_the_group_but_not_the_sender(w):
    w.agent("a1", groups=("aftersale",))
    w.agent("a2", groups=("aftersale",))
    w.agent("a3", groups=("presale",))
    fill(w, "a2", "c1", "c2")  # a1, holding one session, would be the group's best
    (b,) = fill(w, "a1", "b1")
    d = w.transfer(b.session_id, agent_id="a1", to_group="aftersale")
    assert (d.outcome, d.reason, d.agent_id) == (Outcome.ASSIGNED, Reason.TRANSFER, "a2")


def test_transfer_to_a_group_with_nobody_free_is_refused_unless_forced(w):
    # README: nobody eligible -> FAILED_PRECONDITION unless force, which queues it for the group
    w.agent("a1", groups=("presale",))
    w.agent("a2", max=1, groups=("aftersale",))
    fill(w, "a2", "c1")
    (b,) = fill(w, "a1", "b1")
    before = w.snapshot()
    with pytest.raises(FailedPrecondition):
        w.transfer(b.session_id, to_group="aftersale")
    assert w.snapshot() == before
    d = w.transfer(b.session_id, to_group="aftersale", force=True)
    assert d.outcome == Outcome.QUEUED
    assert w.queue(group="aftersale") == ["b1"]
    assert w.team()["a1"].load == 0


# ---------------------------------------------------------------- manual pick


def test_agent_picks_a_queued_buyer_by_hand(w):
    # SPEC §4 手工接入; README: picking is acting on it (ACTIVE at once)
    w.agent("a1", max=1)
    w.agent("a2", max=2, status=Status.SUSPENDED)
    fill(w, "a1", "c1")
    w.route("q1")
    w.advance(seconds=1)
    q2 = w.route("q2")
    d = w.pick("a2", q2.session_id)
    assert (d.agent_id, d.reason, d.state, d.session_id) == (
        "a2",
        Reason.MANUAL_PICK,
        State.ACTIVE,
        q2.session_id,
    )
    assert w.queue() == ["q1"]
    assert w.position("q1") == 1
    a2 = w.team()["a2"]
    assert (a2.load, a2.new_count, a2.served_today) == (1, 0, 1)


def test_pick_without_a_session_takes_the_first_entry_the_agent_may_take(w):
    w.agent("a1", max=1, groups=("presale",))
    w.agent("a2", max=1, groups=("aftersale",))
    fill(w, "a1", "c1")
    fill(w, "a2", "c2")
    w.route("qp", group="presale")
    w.advance(seconds=1)
    w.route("qa", group="aftersale")
    d = w.pick("a2", force=True)
    assert (d.buyer_id, d.agent_id, d.state) == ("qa", "a2", State.ACTIVE)
    assert w.queue() == ["qp"]


def test_pick_beyond_capacity_needs_force(w):
    w.agent("a1", max=1)
    fill(w, "a1", "c1")
    q = w.route("q")
    before = w.snapshot()
    with pytest.raises(FailedPrecondition):
        w.pick("a1", q.session_id)
    assert w.snapshot() == before
    d = w.pick("a1", q.session_id, force=True)
    assert (d.agent_id, d.state) == ("a1", State.ACTIVE)
    assert w.team()["a1"].load == 2


def test_agent_picks_from_its_own_backlog(w):
    # Seed 000: "客服也可以手动点出被缓存的消息"
    w.agent("a1", max=1)
    w.serve("x", "a1")
    fill(w, "a1", "z")
    x = w.route("x")
    d = w.pick("a1", x.session_id, force=True)
    assert (d.agent_id, d.reason, d.state) == ("a1", Reason.MANUAL_PICK, State.ACTIVE)
    assert (w.team()["a1"].backlog_size, w.team()["a1"].load) == (0, 2)


def test_agent_picks_a_left_message(w):
    w.policy(auto_assign_left_messages=False)
    w.agent("a1", status=Status.OFFLINE)
    left = w.route("l1")
    w.status("a1", Status.ONLINE)
    d = w.pick("a1", left.session_id)
    assert (d.agent_id, d.reason, d.state) == ("a1", Reason.MANUAL_PICK, State.ACTIVE)
    assert w.left_messages() == {}


def test_sub_cannot_pick_a_private_left_message_for_main(w):
    # README rule 3: "a left message for MAIN, which only MAIN can take"
    w.agent("m", role=Role.MAIN, status=Status.OFFLINE)
    w.agent("a1")
    w.private("p")
    p = w.route("p", addressed_agent_id="m")
    before = w.snapshot()
    with pytest.raises(FailedPrecondition):
        w.pick("a1", p.session_id, force=True)
    assert w.snapshot() == before


# ---------------------------------------------------------------- leave queue, end sessions


def test_buyer_leaving_the_queue_ends_its_session(w):
    w.agent("a1", max=0)
    for buyer in ("q1", "q2", "q3"):
        w.route(buyer)
        w.advance(seconds=1)
    view = w.leave_queue("q2")
    assert (view.buyer_id, view.state) == ("q2", State.ENDED)
    assert w.queue() == ["q1", "q3"]
    assert w.position("q3") == 2


def test_ending_many_sessions_and_retrying_counts_already_ended(w):
    w.agent("a1")
    s1, s2, s3 = (w.route(b).session_id for b in ("b1", "b2", "b3"))
    first = w.end(s1, s2)
    assert (first.ended, first.already_ended) == (2, 0)
    retry = w.end(s1, s2)
    assert (retry.ended, retry.already_ended) == (0, 2)
    mixed = w.end(s1, s3)
    assert (mixed.ended, mixed.already_ended) == (1, 1)
    assert w.team()["a1"].load == 0
    assert {w.state(s) for s in (s1, s2, s3)} == {State.ENDED}


# ---------------------------------------------------------------- served today


def test_served_today_resets_at_midnight_in_the_shop_time_zone(w):
    # Given the default time zone Asia/Shanghai, 23:30 there
    w.agent("a1")
    w.advance(hours=13, minutes=30)
    w.serve("b1", "a1")
    w.advance(minutes=20)  # 23:50
    assert w.team()["a1"].served_today == 1
    w.advance(minutes=40)  # 00:30 next day in Shanghai, still the same day in UTC
    assert w.team()["a1"].served_today == 0


def test_served_today_follows_the_shop_time_zone(w):
    w.policy(time_zone="UTC")
    w.agent("a1")
    w.advance(hours=13, minutes=30)  # 15:30 UTC
    w.serve("b1", "a1")
    w.advance(hours=1)  # 16:30 UTC (00:30 in Shanghai)
    assert w.team()["a1"].served_today == 1
    w.advance(hours=8)  # 00:30 UTC next day
    assert w.team()["a1"].served_today == 0


@pytest.mark.parametrize("how", ["update", "replace", "remove"])
def test_a_main_no_longer_main_keeps_no_private_contact_for_a_main(how):
    """Rule 3 keeps a private contact's session MAIN's; once the shop has no MAIN (made
    SUB, or removed) those sessions and MAIN's reserved left messages are ordinary ones.
    (Found by the stateful test: UpdateAgent made MAIN a SUB and left its session private.)"""
    w = World("shop-demote")
    w.agent("boss", role=Role.MAIN)
    w.agent("a1")
    w.private("held")
    w.private("waiting")
    held = w.route("held", addressed_agent_id="boss")
    w.status("boss", Status.OFFLINE)  # a private contact for an OFFLINE MAIN: left for it
    left = w.route("waiting", addressed_agent_id="boss")
    assert left.outcome is Outcome.LEFT_MESSAGE and left.agent_id == "boss"
    w.status("boss", Status.ONLINE)
    shop = w.d.shard_for("shop-demote").shops["shop-demote"]
    assert shop.sessions[held.session_id].private
    if how == "update":
        w.do(UpdateAgent, agent_id="boss", role=Role.SUB)
    elif how == "replace":
        w.do(RegisterAgent, agent_id="boss", role=Role.SUB, max_concurrent=5, replace=True)
    else:
        w.do(RemoveAgent, agent_id="boss")
    assert shop.main is None
    assert [s.session_id for s in shop.sessions.values() if s.private or s.left_for] == []
    assert shop.reserved_left == 0

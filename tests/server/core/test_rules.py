"""SPEC §2: the routing rules of Route, 0 to 6, and the seed scenarios behind them."""

from __future__ import annotations

import pytest

from fenliu.server.core.errors import ResourceExhausted
from fenliu.server.core.types import (
    MINUTE,
    OnQueueFull,
    Outcome,
    QueueOrder,
    Reason,
    Role,
    State,
    Status,
    Strategy,
)


def where(decision):
    """The part of a decision most tests care about."""
    return decision.outcome, decision.reason, decision.agent_id


# ---------------------------------------------------------------- rule 0: retries


def test_retried_request_gets_the_original_decision_and_changes_nothing(w):
    # Given a routed message
    w.agent("a1")
    first = w.route("b1", request_id="r1")
    before = w.snapshot()
    # When the gateway retries it (rule 2 would now say OPEN_SESSION)
    again = w.route("b1", request_id="r1")
    # expect the original decision verbatim, nothing changed
    assert again == first
    assert again.reason == Reason.STRATEGY
    assert w.snapshot() == before


def test_retry_gets_the_original_decision_whatever_its_other_fields_say(w):
    # README rule 0: "a retry gets the original decision verbatim, whatever its other fields say"
    w.agent("a1")
    w.agent("a2")
    first = w.route("b1", request_id="r1")
    before = w.snapshot()
    # When the same request id comes with another buyer and an addressee
    again = w.route("b2", request_id="r1", addressed_agent_id="a2")
    # expect the original decision and no session for b2
    assert again == first
    assert w.snapshot() == before


def test_retry_is_not_a_new_buyer_message(w):
    # Given an active session the agent answered at t0
    w.agent("a1")
    d = w.route("b1", request_id="r1")
    w.ack("a1", d.session_id)
    w.reply("a1", d.session_id)
    # When the same request is retried 5 minutes later
    w.advance(minutes=5)
    w.route("b1", request_id="r1")
    # expect no unanswered message: the session is idle since t0 and ends at 15 min (SPEC §5)
    w.advance(minutes=11)
    assert w.state(d.session_id) == State.ENDED


def test_request_id_is_forgotten_after_ten_minutes(w):
    # README rule 0: request ids are remembered for 10 minutes
    w.agent("a1")
    first = w.route("b1", request_id="r1")
    w.end(first.session_id)  # never acted on: no recent contact
    # When the same request id arrives 11 minutes later
    w.advance(minutes=11)
    again = w.route("b1", request_id="r1")
    # expect a fresh routing: a new session
    assert where(again) == (Outcome.ASSIGNED, Reason.STRATEGY, "a1")
    assert again.session_id != first.session_id


# ---------------------------------------------------------------- rule 1: team messages


@pytest.mark.parametrize("addressee_status", [Status.SUSPENDED, Status.OFFLINE])
def test_team_message_is_delivered_to_the_addressee_without_a_session(w, addressee_status):
    # Given a colleague who is not taking buyers (seed 000 注释3: team chat is not routed)
    w.agent("a1")
    w.agent("a2", status=addressee_status, max=0)
    before = w.snapshot()
    # When a1 writes to a2
    d = w.route("a1", from_team_member=True, addressed_agent_id="a2")
    # expect delivery to a2, no session, no load, no queue
    assert where(d) == (Outcome.TEAM_DELIVERY, Reason.TEAM_MESSAGE, "a2")
    assert d.session_id == ""
    assert w.snapshot() == before


# ---------------------------------------------------------------- rule 2: open session


def test_open_session_stays_with_its_agent_even_when_suspended_and_full(w):
    # Seed 000 scenario 1: talking to a buyer, the agent goes SUSPENDED
    w.agent("a1", max=1)
    w.agent("a2")
    d = w.route("b1", addressed_agent_id="a1")
    w.ack("a1", d.session_id)
    w.status("a1", Status.SUSPENDED)
    # When the buyer writes again
    again = w.route("b1")
    # expect the same agent and session, not a2
    assert where(again) == (Outcome.ASSIGNED, Reason.OPEN_SESSION, "a1")
    assert again.session_id == d.session_id
    assert again.state == State.ACTIVE
    assert w.team()["a2"].load == 0


def test_queued_buyer_writing_again_keeps_its_place(w):
    # Given two queued buyers
    w.agent("a1", max=0)
    first = w.route("b1")
    w.advance(seconds=1)
    w.route("b2")
    # When the first one writes again
    again = w.route("b1")
    # expect its queue position, same session, no second entry
    assert (again.outcome, again.reason) == (Outcome.QUEUED, Reason.OPEN_SESSION)
    assert (again.session_id, again.queue_position) == (first.session_id, 1)
    assert w.queue() == ["b1", "b2"]


def test_active_session_of_an_offline_agent_moves_at_the_next_buyer_message(w):
    # SPEC §4: going OFFLINE re-routes ACTIVE sessions "at their next buyer message"
    w.agent("a1")
    w.agent("a2")
    d = w.route("b1", addressed_agent_id="a1")
    w.ack("a1", d.session_id)
    w.status("a1", Status.OFFLINE)
    assert w.sessions_of("a1") == {"b1": State.ACTIVE}
    # When the buyer writes
    again = w.route("b1")
    # expect rule 6 to a2 (README: reason AGENT_OFFLINE), a1 left with nothing
    assert (again.outcome, again.agent_id, again.reason) == (
        Outcome.ASSIGNED,
        "a2",
        Reason.AGENT_OFFLINE,
    )
    assert again.session_id == d.session_id
    assert w.sessions_of("a1") == {}


# ---------------------------------------------------------------- rule 3: private contacts


def test_private_contact_goes_to_suspended_main(w):
    # Given MAIN suspended and a free sub (seed 000 scenario 2)
    w.agent("m", role=Role.MAIN, status=Status.SUSPENDED)
    w.agent("a1")
    w.private("p")
    # When the private contact writes to MAIN
    d = w.route("p", addressed_agent_id="m")
    # expect MAIN
    assert where(d) == (Outcome.ASSIGNED, Reason.PRIVATE_CONTACT, "m")


def test_private_contact_waits_in_the_backlog_of_a_full_main(w):
    # Given MAIN at max_concurrent and a free sub
    w.agent("m", role=Role.MAIN, max=1)
    w.agent("a1")
    w.ack("m", w.route("c1", addressed_agent_id="m").session_id)
    w.private("p")
    # When the private contact writes to MAIN
    d = w.route("p", addressed_agent_id="m")
    # expect MAIN's backlog (SPEC rule 3 "whatever MAIN's status or load"; README: backlog)
    assert where(d) == (Outcome.BACKLOG, Reason.PRIVATE_CONTACT, "m")
    assert d.state == State.BACKLOG
    assert w.team()["m"].backlog_size == 1
    assert w.team()["a1"].load == 0


def test_private_contact_of_offline_main_is_a_left_message_for_main(w):
    # Given MAIN OFFLINE and a free, online sub
    w.agent("m", role=Role.MAIN, status=Status.OFFLINE)
    w.agent("a1", max=1)
    w.private("p")
    # When the private contact writes to MAIN
    d = w.route("p", addressed_agent_id="m")
    # expect a left message for MAIN, never routed to a1
    assert (d.outcome, d.reason) == (Outcome.LEFT_MESSAGE, Reason.PRIVATE_CONTACT)
    assert w.left_messages() == {"p": "m"}
    assert w.team()["a1"].load == 0
    # When a1 frees capacity (auto_assign_left_messages is on by default)
    result = w.end(w.route("c1").session_id)
    # expect the message still waits for MAIN
    assert all(m.buyer_id != "p" for m in result.moved)
    assert w.left_messages() == {"p": "m"}
    assert w.sessions_of("a1") == {}


def test_main_coming_online_takes_its_private_left_message(w):
    w.agent("m", role=Role.MAIN, status=Status.OFFLINE)
    w.private("p")
    w.route("p", addressed_agent_id="m")
    # When MAIN comes online (SPEC §3: an agent becoming ONLINE frees capacity)
    result = w.status("m", Status.ONLINE)
    # expect the left message is MAIN's now
    assert [(d.buyer_id, d.agent_id) for d in result.moved] == [("p", "m")]
    assert w.sessions_of("m") == {"p": State.ASSIGNED}
    assert w.left_messages() == {}


def test_private_contact_waiting_for_main_stays_mains_when_main_goes_offline(w):
    # Given MAIN at max with its private contact p in its backlog, and a free sub
    w.agent("m", role=Role.MAIN, max=1)
    w.agent("a1")
    w.ack("m", w.route("c1", addressed_agent_id="m").session_id)
    w.private("p")
    assert w.route("p", addressed_agent_id="m").outcome == Outcome.BACKLOG
    # When MAIN goes offline
    result = w.status("m", Status.OFFLINE)
    # expect SPEC rule 3: "if MAIN is OFFLINE it becomes a left message for MAIN, never routed
    # to anyone else" (seed 000: 私密联系人...不管主帐号是否挂起或离线,都不会进行分流)
    assert [(d.buyer_id, d.agent_id) for d in result.moved if d.agent_id == "a1"] == []
    assert w.sessions_of("a1") == {}
    assert w.left_messages() == {"p": "m"}


def test_private_contact_not_addressed_to_main_is_routed_by_the_shop(w):
    # README rule 3: applies when the buyer is a private contact *and* addressed to MAIN
    w.agent("a1")
    w.agent("m", role=Role.MAIN)
    w.private("p")
    d = w.route("p")
    assert (d.reason, d.agent_id) == (Reason.STRATEGY, "a1")


# ---------------------------------------------------------------- rule 4: recent contact


def test_recent_contact_wins_even_when_suspended(w):
    # Seed 000 scenario 3: a suspended sub still gets its recent contacts
    w.agent("a1")
    w.agent("a2")
    w.serve("b1", "a1")
    w.status("a1", Status.SUSPENDED)
    # When the buyer comes back
    d = w.route("b1")
    # expect a1, though a2 is online and free
    assert where(d) == (Outcome.ASSIGNED, Reason.RECENT_CONTACT, "a1")
    assert w.team()["a2"].load == 0


@pytest.mark.parametrize(
    ("hours_later", "expected"),
    [
        pytest.param(23, ("a1", Reason.RECENT_CONTACT), id="within-24h"),
        pytest.param(25, ("a2", Reason.STRATEGY), id="after-24h"),
    ],
)
def test_recent_contact_is_remembered_for_the_sticky_window(w, hours_later, expected):
    # Given a2 registered first, so the strategy alone would choose a2
    w.agent("a2")
    w.agent("a1")
    w.serve("b1", "a1")
    # When the buyer comes back some hours later (sticky_window default 24 h)
    w.advance(hours=hours_later)
    d = w.route("b1")
    # expect a1 only within the window
    assert (d.agent_id, d.reason) == expected


def test_sticky_window_counts_from_the_end_of_the_session(w):
    # README rule 4: remembered "with the time of the last such act or the end of that session"
    w.policy(sticky_window_ms=60 * MINUTE, idle_end_timeout_ms=0)
    w.agent("a2")
    w.agent("a1")
    d = w.route("b1", addressed_agent_id="a1")
    w.ack("a1", d.session_id)
    w.reply("a1", d.session_id)  # the last act, at 0 min
    w.advance(minutes=50)
    w.end(d.session_id)  # ended at 50 min
    w.advance(minutes=50)  # 100 min after the act, 50 after the end
    again = w.route("b1")
    assert (again.agent_id, again.reason) == ("a1", Reason.RECENT_CONTACT)


def test_recent_contact_is_the_agent_that_acted_not_the_one_it_was_passed_to(w):
    # README rule 4: the recent contact is the agent that last acted on a session of the buyer
    w.agent("a2")
    w.agent("a1")
    w.agent("a3")
    d = w.route("b1", addressed_agent_id="a1")
    w.ack("a1", d.session_id)
    w.transfer(d.session_id, to_agent_id="a3")  # a3 never acts on it
    w.end(d.session_id)
    again = w.route("b1")
    assert (again.agent_id, again.reason) == ("a1", Reason.RECENT_CONTACT)


def test_offline_recent_contact_does_not_keep_the_buyer(w):
    w.agent("a1")
    w.agent("a2")
    w.serve("b1", "a1")
    w.status("a1", Status.OFFLINE)
    d = w.route("b1")
    assert where(d) == (Outcome.ASSIGNED, Reason.STRATEGY, "a2")


def test_assignment_without_any_act_makes_no_recent_contact(w):
    # README rule 4: the recent contact is the agent that last *acted on* a session
    w.agent("a2")
    w.agent("a1")
    d = w.route("b1", addressed_agent_id="a1")
    w.end(d.session_id)  # a1 never acknowledged, replied or picked
    again = w.route("b1")
    assert (again.reason, again.agent_id) == (Reason.STRATEGY, "a2")


def test_recent_contact_outside_the_required_group_is_skipped(w):
    # README rule 4: "With a required group, R must be in it."
    w.agent("a1", groups=("presale",))
    w.agent("a2", groups=("aftersale",))
    w.serve("b1", "a1")
    d = w.route("b1", group="aftersale")
    assert (d.reason, d.agent_id) == (Reason.STRATEGY, "a2")


def test_full_recent_contact_keeps_the_buyer_in_its_backlog(w):
    # Seed 000 消息缓存: at max, new messages of the agent's buyers wait in its cache
    w.agent("a1", max=1)
    w.agent("a2")
    w.serve("x", "a1")
    w.ack("a1", w.route("z", addressed_agent_id="a1").session_id)
    d = w.route("x")
    assert where(d) == (Outcome.BACKLOG, Reason.RECENT_CONTACT, "a1")
    assert d.state == State.BACKLOG
    assert w.team()["a1"].backlog_size == 1
    assert w.team()["a2"].load == 0


# ---------------------------------------------------------------- rule 5: addressed


@pytest.mark.parametrize("status", [Status.ONLINE, Status.INVISIBLE])
def test_addressed_message_goes_to_the_addressed_agent(w, status):
    # Given a1 (ONLINE or INVISIBLE) busier than a2
    w.agent("a1", status=status)
    w.agent("a2")
    w.ack("a1", w.route("c1", addressed_agent_id="a1").session_id)
    d = w.route("b1", addressed_agent_id="a1")
    assert where(d) == (Outcome.ASSIGNED, Reason.ADDRESSED, "a1")


def test_addressed_agent_at_max_keeps_the_message_in_its_backlog(w):
    w.agent("a1", max=1)
    w.agent("a2")
    w.route("c1", addressed_agent_id="a1")
    d = w.route("b1", addressed_agent_id="a1")
    assert where(d) == (Outcome.BACKLOG, Reason.ADDRESSED, "a1")
    assert w.team()["a2"].load == 0


@pytest.mark.parametrize("main_status", [Status.SUSPENDED, Status.OFFLINE])
def test_message_addressed_to_unavailable_main_is_routed_like_any_other(w, main_status):
    # Seed 000 scenario 2: messages addressed to a suspended MAIN are shared out to the subs
    w.agent("m", role=Role.MAIN, status=main_status)
    w.agent("a1")
    d = w.route("b1", addressed_agent_id="m")
    assert where(d) == (Outcome.ASSIGNED, Reason.STRATEGY, "a1")


# ---------------------------------------------------------------- rule 6: strategies


def test_least_new_prefers_fewest_new_customers_over_load(w):
    # Seed 002: "系统会根据谁的新客户最少来进行优先分配"
    w.agent("a1", max=10)
    w.agent("a2", max=10)
    for buyer in ("c1", "c2", "c3"):  # a2: 3 active, 0 new
        w.ack("a2", w.route(buyer, addressed_agent_id="a2").session_id)
    w.route("c4", addressed_agent_id="a1")  # a1: 1 new
    d = w.route("b1")
    assert where(d) == (Outcome.ASSIGNED, Reason.STRATEGY, "a2")


def test_least_new_breaks_a_tie_by_lowest_load(w):
    w.agent("a1", max=10)
    w.agent("a2", max=10)
    # a1: 2 active (assigned first), a2: 1 active (assigned last)
    w.ack("a1", w.route("c1", addressed_agent_id="a1").session_id)
    w.ack("a1", w.route("c2", addressed_agent_id="a1").session_id)
    w.ack("a2", w.route("c3", addressed_agent_id="a2").session_id)
    d = w.route("b1")
    assert d.agent_id == "a2"


def test_least_new_breaks_remaining_ties_by_longest_since_last_assignment(w):
    w.agent("a1", max=10)
    w.agent("a2", max=10)
    # both 0 new, 1 active; a1 assigned most recently
    w.ack("a2", w.route("c1", addressed_agent_id="a2").session_id)
    w.ack("a1", w.route("c2", addressed_agent_id="a1").session_id)
    d = w.route("b1")
    assert d.agent_id == "a2"


def test_least_load_splits_evenly_by_share_of_max_concurrent(w):
    # Seed 001 平均分流 with unequal max reception: load / max_concurrent, then longest idle
    w.policy(strategy=Strategy.LEAST_LOAD)
    w.agent("a1", max=2)
    w.agent("a2", max=4)
    agents = [w.route(f"b{i}").agent_id for i in range(6)]
    # ratios: 0|0 -> a1, .5|0 -> a2, .5|.25 -> a2, .5|.5 (a1 idle longer) -> a1, full|.5 -> a2, a2
    assert agents == ["a1", "a2", "a2", "a1", "a2", "a2"]
    team = w.team()
    assert (team["a1"].load, team["a2"].load) == (2, 4)


def test_round_robin_ignores_load(w):
    w.policy(strategy=Strategy.ROUND_ROBIN)
    w.agent("a1", max=10)
    w.agent("a2", max=10)
    w.agent("a3", max=10)
    for buyer in ("c1", "c2"):  # a1 busy, assigned most recently
        w.ack("a1", w.route(buyer, addressed_agent_id="a1").session_id)
    agents = [w.route(f"b{i}").agent_id for i in range(4)]
    assert agents == ["a2", "a3", "a1", "a2"]


def test_invisible_agent_is_routed_like_online(w):
    w.agent("a1", status=Status.INVISIBLE)
    d = w.route("b1")
    assert where(d) == (Outcome.ASSIGNED, Reason.STRATEGY, "a1")


def test_offline_agent_receives_nothing(w):
    # Seed 000 注释2 / seed 002: offline agents receive nothing, even when the others are full
    w.agent("a1", status=Status.OFFLINE)
    w.agent("a2", max=1)
    w.route("b1")
    d = w.route("b2")
    assert d.outcome == Outcome.QUEUED
    assert w.team()["a1"].load == 0


# ---------------------------------------------------------------- rule 6: suspended agents


def test_suspended_main_gets_private_and_recent_contacts_only(w):
    # Seed 000 scenario 2
    w.agent("m", role=Role.MAIN)
    w.agent("a1")
    w.serve("r", "m")
    w.private("p")
    w.status("m", Status.SUSPENDED)
    assert w.route("p", addressed_agent_id="m").agent_id == "m"
    assert w.route("r").agent_id == "m"
    # everything else, including messages addressed to MAIN, goes to the sub
    assert where(w.route("n1", addressed_agent_id="m")) == (
        Outcome.ASSIGNED,
        Reason.STRATEGY,
        "a1",
    )
    assert w.route("n2").agent_id == "a1"


def test_suspended_sub_gets_only_recent_contacts_while_others_are_online(w):
    # Seed 000 scenario 3
    w.agent("a1")
    w.agent("a2")
    w.serve("r", "a1")
    w.status("a1", Status.SUSPENDED)
    # a2 gets every new buyer, though a1 has no load at all
    assert [w.route(f"n{i}").agent_id for i in range(3)] == ["a2", "a2", "a2"]
    assert w.route("r").agent_id == "a1"


def test_all_suspended_share_buyers_evenly(w):
    # Seed 000 scenario 2: "如果所有帐号全都挂起了,也会平均分配"
    for agent in ("m", "a1", "a2"):
        w.agent(agent, role=Role.MAIN if agent == "m" else Role.SUB, status=Status.SUSPENDED)
    decisions = [w.route(f"b{i}") for i in range(6)]
    assert {d.reason for d in decisions} == {Reason.ALL_SUSPENDED}
    assert {a.agent_id: a.load for a in w.team().values()} == {"m": 2, "a1": 2, "a2": 2}


def test_all_suspended_queue_the_buyer_when_sharing_is_off(w):
    w.policy(route_when_all_suspended=False)
    w.agent("a1", status=Status.SUSPENDED)
    d = w.route("b1")
    assert d.outcome == Outcome.QUEUED
    assert w.team()["a1"].load == 0


def test_free_suspended_agent_is_not_used_while_an_online_one_is_full(w):
    # SPEC rule 6 / README: SUSPENDED agents share only when nobody in scope is ONLINE/INVISIBLE
    w.agent("a1", max=1)
    w.agent("a2", status=Status.SUSPENDED)
    w.route("b1")
    d = w.route("b2")
    assert (d.outcome, d.reason) == (Outcome.QUEUED, Reason.ALL_BUSY)
    assert w.team()["a2"].load == 0


# ---------------------------------------------------------------- rule 6: queue, left messages


def test_buyers_queue_when_all_agents_are_at_max_reception(w):
    # Seed 001 问题三: everybody at max reception -> the buyer queues
    w.agent("a1", max=1)
    w.agent("a2", max=1)
    w.route("c1")
    w.route("c2")
    d1 = w.route("b1")
    d2 = w.route("b2")
    assert (d1.outcome, d1.reason, d1.queue_position) == (Outcome.QUEUED, Reason.ALL_BUSY, 1)
    assert (d2.outcome, d2.queue_position) == (Outcome.QUEUED, 2)
    assert d1.state == State.QUEUED
    assert w.position("b2") == 2


def test_full_queue_leaves_a_message_by_default(w):
    w.policy(queue_limit=2)
    w.agent("a1", max=0)
    w.route("b1")
    w.route("b2")
    d = w.route("b3")
    assert (d.outcome, d.reason) == (Outcome.LEFT_MESSAGE, Reason.QUEUE_FULL)
    assert w.queue() == ["b1", "b2"]
    assert w.left_messages() == {"b3": ""}


def test_full_queue_rejects_when_the_policy_says_so(w):
    w.policy(queue_limit=2, on_queue_full=OnQueueFull.REJECT)
    w.agent("a1", max=0)
    w.route("b1")
    w.route("b2")
    before = w.snapshot()
    with pytest.raises(ResourceExhausted):
        w.route("b3")
    assert w.snapshot() == before


def test_everybody_offline_gives_a_left_message_for_the_shop(w):
    w.agent("a1", status=Status.OFFLINE)
    w.agent("m", role=Role.MAIN, status=Status.OFFLINE)
    d = w.route("b1", addressed_agent_id="m")
    assert where(d) == (Outcome.LEFT_MESSAGE, Reason.ALL_OFFLINE, "")
    assert d.state == State.LEFT_MESSAGE
    assert w.left_messages() == {"b1": ""}


def test_shop_without_agents_gives_a_left_message(w):
    d = w.route("b1")
    assert (d.outcome, d.reason) == (Outcome.LEFT_MESSAGE, Reason.ALL_OFFLINE)


# ---------------------------------------------------------------- rule 6: groups


def test_required_group_routes_only_to_agents_of_that_group(w):
    w.agent("a1", groups=("presale",))
    w.agent("a2", groups=("aftersale",))
    w.ack("a2", w.route("c1", addressed_agent_id="a2").session_id)
    assert w.route("b1", group="aftersale").agent_id == "a2"
    assert w.route("b2", group="presale").agent_id == "a1"


def test_group_with_everyone_offline_gives_a_left_message(w):
    # README rule 6: scoped to the required group
    w.agent("a1", groups=("presale",))
    w.agent("a2", groups=("aftersale",), status=Status.OFFLINE)
    d = w.route("b1", group="aftersale")
    assert (d.outcome, d.reason) == (Outcome.LEFT_MESSAGE, Reason.ALL_OFFLINE)
    assert w.team()["a1"].load == 0


def test_unknown_group_gives_a_left_message(w):
    # README rule 6: "an unknown group has no agents, so it ends in a left message"
    w.agent("a1")
    d = w.route("b1", group="nosuch")
    assert d.outcome == Outcome.LEFT_MESSAGE
    assert w.team()["a1"].load == 0


# ---------------------------------------------------------------- rule 6: priority crowds


@pytest.fixture
def vip(w):
    """The shop names "vip" a priority crowd (seed 004 优先接待人群)."""
    w.policy(priority_crowds=("vip",))
    return ("vip",)


def test_priority_crowd_goes_to_a_free_agent_with_a_notice(w, vip):
    w.agent("a1")
    d = w.route("v1", crowds=("member", *vip), channel="item_page")  # a lit entry (seed 004)
    assert where(d) == (Outcome.ASSIGNED, Reason.PRIORITY_CROWD, "a1")
    assert d.priority_notice is True


def test_other_crowds_are_not_priority(w, vip):
    w.agent("a1")
    d = w.route("b1", crowds=("member",))
    assert (d.reason, d.priority_notice) == (Reason.STRATEGY, False)


def test_priority_crowd_skips_the_queue_above_capacity(w, vip):
    # Given everyone online at max, a buyer queued and a free SUSPENDED agent
    w.agent("a1", max=2)
    w.agent("a2", max=1)
    w.agent("a3", status=Status.SUSPENDED)
    w.route("c1", addressed_agent_id="a1")
    w.route("c2", addressed_agent_id="a1")
    w.route("c3", addressed_agent_id="a2")
    w.route("n1")
    # When a priority buyer comes (priority_may_exceed_capacity is on by default)
    d = w.route("v1", crowds=vip, channel="shop_home")
    # expect the least loaded ONLINE agent above its max, ahead of the queued buyer
    assert where(d) == (Outcome.ASSIGNED, Reason.PRIORITY_OVERFLOW, "a2")
    assert d.priority_notice is True
    assert w.team()["a2"].load == 2
    assert w.queue() == ["n1"]


def test_priority_crowd_queues_ahead_of_others_when_overflow_is_off(w, vip):
    w.policy(priority_may_exceed_capacity=False)
    w.agent("a1", max=0)
    w.route("n1")
    w.advance(seconds=1)
    w.route("n2")
    w.advance(seconds=1)
    d1 = w.route("v1", crowds=vip)
    w.advance(seconds=1)
    d2 = w.route("v2", crowds=vip)
    assert (d1.outcome, d1.queue_position) == (Outcome.QUEUED, 1)
    assert (d2.outcome, d2.queue_position) == (Outcome.QUEUED, 2)
    assert w.queue() == ["v1", "v2", "n1", "n2"]
    assert w.position("n1") == 3


def test_priority_entries_stay_first_in_first_out_in_a_lifo_queue(w, vip):
    # README: priority entries first (always FIFO among themselves), then the others in queue_order
    w.policy(priority_may_exceed_capacity=False, queue_order=QueueOrder.LIFO)
    w.agent("a1", max=0)
    for buyer, crowds in (("n1", ()), ("n2", ()), ("v1", vip), ("v2", vip)):
        w.route(buyer, crowds=crowds)
        w.advance(seconds=1)
    assert w.queue() == ["v1", "v2", "n2", "n1"]


def test_priority_notice_at_most_once_per_8_hours(w, vip):
    # Seed 004: "同一个买家,每8个小时仅会触发一次"
    w.agent("a1")
    first = w.route("v1", crowds=vip, channel="item_page")
    w.end(first.session_id)  # never acted on: no recent contact, so rule 6 again
    w.advance(hours=7, minutes=59)
    second = w.route("v1", crowds=vip, channel="item_page")
    w.end(second.session_id)
    w.advance(minutes=2)  # 8 h 01 min after the first notice
    third = w.route("v1", crowds=vip, channel="item_page")
    assert [d.reason for d in (first, second, third)] == [Reason.PRIORITY_CROWD] * 3
    assert [d.priority_notice for d in (first, second, third)] == [True, False, True]


def test_queued_priority_buyer_overflows_onto_an_agent_coming_online(w, vip):
    # README §3: "When an agent becomes ONLINE/INVISIBLE, queued priority entries are routed
    # again (they may overflow onto it)."
    w.agent("a1", status=Status.SUSPENDED, max=1)
    w.agent("a2", status=Status.OFFLINE, max=0)
    w.route("c1")  # a1 (all suspended) is now full
    d = w.route("v1", crowds=vip)
    assert d.outcome == Outcome.QUEUED
    result = w.status("a2", Status.ONLINE)
    assert [(m.buyer_id, m.agent_id) for m in result.moved] == [("v1", "a2")]
    assert w.sessions_of("a2") == {"v1": State.ASSIGNED}


def test_sticky_window_comes_from_the_policy(w):
    w.policy(sticky_window_ms=60 * MINUTE)
    w.agent("a2")
    w.agent("a1")
    w.serve("b1", "a1")
    w.advance(minutes=61)
    assert w.route("b1").agent_id == "a2"

"""Issue 15: the seeds' last routing rules.

No-bounce reassignment (SPEC §2), priority failure and seed 004's notices, crowd-scoped
groups (seed 004's 人群接待范围) and the team flag.
"""

from __future__ import annotations

import pytest

from fenliu.server.core.errors import InvalidArgument
from fenliu.server.core.types import (
    MINUTE,
    Outcome,
    PriorityNotice,
    Reason,
    State,
    Status,
)

from .conftest import World


def moved(result):
    return [(d.buyer_id, d.agent_id, d.outcome) for d in result.moved]


# ---------------------------------------------------------------- no-bounce reassignment


def test_accept_timed_out_session_never_bounces_back_to_the_agent_it_timed_out_on(w):
    # Issue 15: A times out -> B (right), B times out -> back to A (wrong)
    w.agent("a")
    w.agent("b")
    d = w.route("b1", addressed_agent_id="a")
    assert moved(w.advance(minutes=11)) == [("b1", "b", Outcome.ASSIGNED)]
    # When it times out on b too
    result = w.advance(minutes=11)
    # expect the shop queue, not a again (nobody else can take it)
    assert moved(result) == [("b1", "", Outcome.QUEUED)]
    assert result.moved[0].reason == Reason.ACCEPT_TIMEOUT
    assert w.session(d.session_id).state == State.QUEUED
    # and it stays there however long a and b have room
    w.advance(minutes=30)
    assert w.queue() == ["b1"]
    assert w.sessions_of("a") == {} and w.sessions_of("b") == {}


def test_reply_timed_out_session_never_bounces_back_either(w):
    w.agent("a")
    w.agent("b")
    d = w.route("b1", addressed_agent_id="a")
    w.ack("a", d.session_id)
    assert moved(w.advance(minutes=31)) == [("b1", "b", Outcome.ASSIGNED)]
    w.ack("b", d.session_id)
    result = w.advance(minutes=31)
    assert moved(result) == [("b1", "", Outcome.QUEUED)]
    assert result.moved[0].reason == Reason.REPLY_TIMEOUT


def test_bounced_session_waits_at_its_original_place_in_the_queue(w):
    # Given b1 (asked first) and b2 queued behind it while a and b are full
    w.agent("a", max=1)
    w.agent("b", max=1)
    w.route("b1", addressed_agent_id="a")
    w.ack("b", w.route("f1", addressed_agent_id="b").session_id)
    w.advance(seconds=1)
    w.route("b2")
    assert w.queue() == ["b2"]
    # When b1 times out on a (b is full): it goes back into the queue ahead of b2, and a,
    # freed, takes b2 instead of taking b1 back
    w.advance(minutes=10)
    assert w.sessions_of("a") == {"b2": State.ASSIGNED}
    assert w.queue() == ["b1"]
    # a later buyer queues behind it
    w.route("b3")
    assert w.queue() == ["b1", "b3"]


def test_bounced_session_is_moved_by_a_manual_pick(w):
    w.agent("a")
    w.agent("b")
    d = w.route("b1", addressed_agent_id="a")
    w.advance(minutes=11)
    w.advance(minutes=11)
    assert w.queue() == ["b1"]
    # a manual pick by an agent it timed out on is a person's choice: allowed
    pick = w.pick("a", d.session_id)
    assert (pick.outcome, pick.agent_id, pick.reason) == (
        Outcome.ASSIGNED,
        "a",
        Reason.MANUAL_PICK,
    )


def test_bounced_session_goes_to_a_new_agent(w):
    w.agent("a")
    w.agent("b")
    w.route("b1", addressed_agent_id="a")
    w.advance(minutes=11)
    w.advance(minutes=11)
    assert w.queue() == ["b1"]
    w.agent("c", status=Status.OFFLINE)
    result = w.status("c", Status.ONLINE)
    assert moved(result) == [("b1", "c", Outcome.ASSIGNED)]


def test_bounced_session_becomes_a_left_message_at_the_queue_wait_limit(w):
    w.policy(queue_wait_limit_ms=5 * MINUTE)
    w.agent("a")
    w.agent("b")
    w.route("b1", addressed_agent_id="a")
    w.advance(minutes=11)
    w.advance(minutes=11)
    assert w.queue() == ["b1"]
    w.advance(minutes=6)
    assert w.queue() == []
    assert w.left_messages() == {"b1": ""}


# ---------------------------------------------------------------- priority failure (seed 004)


@pytest.fixture
def vip(w):
    w.policy(priority_crowds=("vip",))
    return ("vip",)


def priority(w, buyer="v1", channel="item_page", crowds=("vip",), **fields):
    return w.route(buyer, crowds=crowds, channel=channel, **fields)


def test_priority_fails_without_a_notice_when_every_agent_is_suspended(w, vip):
    # Seed 004: "没有在线不挂起的客服 ... 属于优先接待失败,不会有任何买家侧提示"
    w.agent("s1", status=Status.SUSPENDED)
    d = priority(w)
    assert (d.outcome, d.reason) == (Outcome.ASSIGNED, Reason.ALL_SUSPENDED)
    assert (d.notice, d.priority_notice) == (PriorityNotice.NONE, False)


def test_priority_fails_without_a_notice_when_the_only_agent_is_suspended_and_full(w, vip):
    w.agent("s1", status=Status.SUSPENDED, max=1)
    w.route("c1")
    d = priority(w)
    assert d.outcome == Outcome.QUEUED
    assert (d.notice, d.priority_notice) == (PriorityNotice.NONE, False)


def test_priority_fails_without_a_notice_when_suspended_agents_do_not_route(w, vip):
    w.policy(route_when_all_suspended=False)
    w.agent("s1", status=Status.SUSPENDED)
    d = priority(w)
    assert d.outcome == Outcome.QUEUED
    assert (d.notice, d.priority_notice) == (PriorityNotice.NONE, False)


def test_priority_fails_without_a_notice_when_everybody_is_offline(w, vip):
    w.agent("o1", status=Status.OFFLINE)
    d = priority(w)
    assert d.outcome == Outcome.LEFT_MESSAGE
    assert (d.notice, d.priority_notice) == (PriorityNotice.NONE, False)


def test_priority_to_a_suspended_recent_contact_with_nobody_online_has_no_notice(w, vip):
    # Rule 4 still takes the buyer to R (SUSPENDED), but no agent is ONLINE/INVISIBLE:
    # seed 004 calls that a failed priority reception
    w.agent("r1")
    w.serve("v1", "r1")
    w.status("r1", Status.SUSPENDED)
    d = priority(w)
    assert (d.reason, d.agent_id) == (Reason.RECENT_CONTACT, "r1")
    assert (d.notice, d.priority_notice) == (PriorityNotice.NONE, False)


def test_priority_buyer_queued_ahead_gets_no_notice_until_a_person_has_it(w, vip):
    # Overflow off, everyone online but full: first in line, but nobody serves it yet
    w.policy(priority_may_exceed_capacity=False)
    w.agent("a1", max=0)
    d = priority(w)
    assert (d.outcome, d.queue_position, d.notice) == (Outcome.QUEUED, 1, PriorityNotice.NONE)


def test_a_failed_priority_reception_does_not_use_up_the_buyers_notice(w, vip):
    w.agent("s1", status=Status.SUSPENDED)
    first = priority(w)
    w.end(first.session_id)
    w.agent("a1")
    second = priority(w)
    assert (first.notice, second.notice) == (PriorityNotice.NONE, PriorityNotice.SKIPPED_QUEUE)


# ---------------------------------------------------------------- seed 004's notices


@pytest.mark.parametrize("channel", ["item_page", "order_page", "shop_home"])
def test_priority_notice_on_a_lit_entry_says_the_queue_was_skipped(w, vip, channel):
    w.agent("a1")
    d = priority(w, channel=channel)
    assert (d.reason, d.notice, d.priority_notice) == (
        Reason.PRIORITY_CROWD,
        PriorityNotice.SKIPPED_QUEUE,
        True,
    )


@pytest.mark.parametrize("channel", ["message_box", "", "live_room"])
def test_priority_from_the_message_box_gets_priority_but_no_notice(w, vip, channel):
    # Seed 004: "消息盒子中 ... 会触发优先接待,但不会发送优先接待提示"
    w.agent("a1", max=1)
    w.route("c1")  # a1 full: only priority overflows onto it
    d = priority(w, channel=channel)
    assert (d.outcome, d.reason) == (Outcome.ASSIGNED, Reason.PRIORITY_OVERFLOW)
    assert (d.notice, d.priority_notice) == (PriorityNotice.NONE, False)


def test_priority_notice_without_a_queue_says_priority_reception_arranged(w, vip):
    # queue_limit 0: the shop does not queue ("未开启排队")
    w.policy(queue_limit=0)
    w.agent("a1")
    d = priority(w)
    assert (d.notice, d.priority_notice) == (PriorityNotice.ARRANGED, True)


def test_member_crowd_gets_the_member_wording(w, vip):
    w.policy(priority_crowds=("vip", "member"), member_crowd="member")
    w.agent("a1")
    assert priority(w, "m1", crowds=("member",)).notice == PriorityNotice.MEMBER_SKIPPED_QUEUE
    # a member who is priority by another crowd gets the member wording as well
    assert priority(w, "m2", crowds=("vip", "member")).notice == (
        PriorityNotice.MEMBER_SKIPPED_QUEUE
    )
    assert priority(w, "v3", crowds=("vip",)).notice == PriorityNotice.SKIPPED_QUEUE
    w.policy(queue_limit=0)
    assert priority(w, "m4", crowds=("member",)).notice == PriorityNotice.MEMBER_ARRANGED


def test_priority_buyer_to_their_recent_contact_without_a_queue_gets_no_notice(w, vip):
    # Seed 004: "在未开启排队时,如果买家通过优先接待被分配到最近联系人客服,那么不会触发"
    w.policy(queue_limit=0)
    w.agent("a1")
    w.agent("a2")
    w.serve("v1", "a2")
    d = priority(w)
    assert (d.reason, d.agent_id, d.notice) == (Reason.RECENT_CONTACT, "a2", PriorityNotice.NONE)


def test_priority_buyer_to_their_recent_contact_with_a_queue_gets_the_notice(w, vip):
    # Seed 004: "开启排队时 ... 不论接待者是否最近联系人客服,都会触发买家侧提示"
    w.agent("a1")
    w.agent("a2")
    w.serve("v1", "a2")
    d = priority(w)
    assert (d.reason, d.agent_id, d.notice) == (
        Reason.RECENT_CONTACT,
        "a2",
        PriorityNotice.SKIPPED_QUEUE,
    )


def test_buyer_outside_the_priority_crowds_never_gets_a_notice(w, vip):
    w.policy(member_crowd="member")
    w.agent("a1")
    d = priority(w, crowds=("member",))  # the member crowd is not a priority crowd here
    assert (d.reason, d.notice) == (Reason.STRATEGY, PriorityNotice.NONE)


# ---------------------------------------------------------------- crowd-scoped groups


@pytest.fixture
def vip_team(w):
    """Group "vipdesk" serves the crowd "gold"; a0 (no group) is the strategy's first pick."""
    w.policy(group_crowds={"vipdesk": ("gold",)})
    w.agent("a0")
    w.agent("g1", groups=("vipdesk",), max=1)
    return w


def test_buyer_in_a_groups_crowd_is_routed_within_that_group_first(vip_team):
    d = vip_team.route("b1", crowds=("gold",))
    assert (d.outcome, d.reason, d.agent_id) == (Outcome.ASSIGNED, Reason.CROWD_GROUP, "g1")
    # another buyer goes by the strategy (a0 has fewer new customers than g1 now)
    assert vip_team.route("b2").agent_id == "a0"


def test_crowd_group_full_falls_back_to_the_whole_shop(vip_team):
    vip_team.route("b1", crowds=("gold",))  # g1 now full
    d = vip_team.route("b2", crowds=("gold",))
    assert (d.reason, d.agent_id) == (Reason.STRATEGY, "a0")


def test_group_required_by_the_caller_beats_the_crowd_scope(vip_team):
    vip_team.agent("p1", groups=("presale",))
    d = vip_team.route("b1", crowds=("gold",), group="presale")
    assert (d.reason, d.agent_id) == (Reason.STRATEGY, "p1")


def test_priority_buyer_in_a_groups_crowd_goes_to_the_group_with_priority(vip_team):
    vip_team.policy(priority_crowds=("gold",))
    d = vip_team.route("b1", crowds=("gold",), channel="item_page")
    assert (d.reason, d.agent_id, d.notice) == (
        Reason.PRIORITY_CROWD,
        "g1",
        PriorityNotice.SKIPPED_QUEUE,
    )


# ---------------------------------------------------------------- the team flag


def test_team_flag_from_a_buyer_who_is_not_an_agent_is_refused_naming_the_field(w):
    w.agent("a1")
    before = w.snapshot()
    with pytest.raises(InvalidArgument) as info:
        w.route("buyer-7", from_team_member=True, addressed_agent_id="a1")
    assert info.value.field == "from_team_member"
    assert "buyer-7" in info.value.message
    assert w.snapshot() == before
    # and the request id was not used up: the same id routes once the flag is right
    assert w.route("buyer-7", request_id="req-1").outcome == Outcome.ASSIGNED


def test_team_flag_is_checked_before_an_unknown_addressee():
    w = World()
    w.policy()
    w.agent("a1")
    with pytest.raises(InvalidArgument) as info:
        w.route("buyer-7", from_team_member=True, addressed_agent_id="ghost")
    assert info.value.field == "from_team_member"

"""SPEC §3: when capacity frees, the backlog first, then the shop queue, then left messages."""

from __future__ import annotations

from fenliu.server.core.types import Outcome, QueueOrder, Reason, State, Status


def moved(result):
    """(buyer, agent) of each session a command moved."""
    return [(d.buyer_id, d.agent_id) for d in result.moved]


def fill(w, agent_id, *buyers):
    """Give the agent an acknowledged session per buyer (addressed to it)."""
    return [w.ack(agent_id, w.route(b, addressed_agent_id=agent_id).session_id) for b in buyers]


def test_ending_a_session_serves_the_backlog_before_the_shop_queue(w):
    # Given a1 at max with a queued buyer q and, later, its recent contact x in its backlog
    w.agent("a1", max=1)
    w.serve("x", "a1")
    (z,) = fill(w, "a1", "z")
    assert w.route("q").outcome == Outcome.QUEUED
    w.advance(seconds=1)
    assert w.route("x").outcome == Outcome.BACKLOG
    # When a1 ends its session
    result = w.end(z.session_id)
    # expect the backlog first, in the same step
    assert moved(result) == [("x", "a1")]
    assert result.moved[0].reason == Reason.CAPACITY_FREED
    assert w.sessions_of("a1") == {"x": State.ASSIGNED}
    assert w.queue() == ["q"]
    # and the queue when the backlog is empty
    result = w.end(result.moved[0].session_id)
    assert moved(result) == [("q", "a1")]


def test_backlog_pops_first_in_first_out(w):
    # Seed 000 消息缓存: "等到聊天窗口数量少于上限后,队列里的顾客消息自动弹出"
    w.agent("a1", max=1)
    w.agent("a2")
    w.serve("x", "a1")
    w.serve("y", "a1")
    (z,) = fill(w, "a1", "z")
    w.route("x")
    w.advance(seconds=1)
    w.route("y")
    assert w.sessions_of("a1") == {"z": State.ACTIVE, "x": State.BACKLOG, "y": State.BACKLOG}
    result = w.end(z.session_id)
    assert moved(result) == [("x", "a1")]
    assert w.sessions_of("a1") == {"x": State.ASSIGNED, "y": State.BACKLOG}


def test_backlog_is_not_shared_with_free_agents(w):
    # Seed 000 Q1: "缓存消息已经在帐号的缓存区中了,是不会自动分配给其他客服的"
    w.agent("a1", max=1)
    w.agent("a2", max=1)
    w.serve("x", "a1")
    fill(w, "a1", "z")
    w.route("x")
    # When a2 takes a buyer and frees its capacity again
    n = w.route("n")
    assert n.agent_id == "a2"
    result = w.end(n.session_id)
    # expect x still waiting for a1
    assert moved(result) == []
    assert w.sessions_of("a1")["x"] == State.BACKLOG
    assert w.sessions_of("a2") == {}


def test_backlog_pops_while_the_agent_is_suspended(w):
    # README §3: "its backlog (FIFO, also while SUSPENDED)"
    w.agent("a1", max=1)
    w.serve("x", "a1")
    (z,) = fill(w, "a1", "z")
    w.status("a1", Status.SUSPENDED)
    w.route("x")
    result = w.end(z.session_id)
    assert moved(result) == [("x", "a1")]


def test_queue_is_served_first_in_first_out(w):
    w.agent("a1", max=1)
    (z,) = fill(w, "a1", "z")
    for buyer in ("q1", "q2", "q3"):
        w.route(buyer)
        w.advance(seconds=1)
    result = w.end(z.session_id)
    assert moved(result) == [("q1", "a1")]
    assert w.queue() == ["q2", "q3"]


def test_lifo_queue_serves_the_newest_first(w):
    w.policy(queue_order=QueueOrder.LIFO)
    w.agent("a1", max=1)
    (z,) = fill(w, "a1", "z")
    for buyer in ("q1", "q2", "q3"):
        w.route(buyer)
        w.advance(seconds=1)
    result = w.end(z.session_id)
    assert moved(result) == [("q3", "a1")]
    assert sorted(w.queue()) == ["q1", "q2"]


def test_priority_entries_leave_the_queue_first(w):
    w.policy(priority_crowds=("vip",), priority_may_exceed_capacity=False)
    w.agent("a1", max=1)
    (z,) = fill(w, "a1", "z")
    w.route("n1")
    w.advance(seconds=1)
    w.route("v1", crowds=("vip",))
    result = w.end(z.session_id)
    assert moved(result) == [("v1", "a1")]
    assert w.queue() == ["n1"]


def test_agent_back_from_a_break_takes_queued_buyers(w):
    # Seed 001 问题五: "小休客服变为在线时,系统进行会话分配"
    w.agent("a1", max=1)
    w.agent("a2", max=2, status=Status.SUSPENDED)
    fill(w, "a1", "z")
    for buyer in ("q1", "q2", "q3"):
        assert w.route(buyer).outcome == Outcome.QUEUED
        w.advance(seconds=1)
    # When a2 comes back online
    result = w.status("a2", Status.ONLINE)
    # expect it to take the two oldest queued buyers in the same step
    assert moved(result) == [("q1", "a2"), ("q2", "a2")]
    assert {d.reason for d in result.moved} == {Reason.CAPACITY_FREED}
    assert w.sessions_of("a2") == {"q1": State.ASSIGNED, "q2": State.ASSIGNED}
    assert w.queue() == ["q3"]


def test_raising_max_concurrent_takes_from_the_queue(w):
    w.agent("a1", max=1)
    fill(w, "a1", "z")
    w.route("q1")
    w.advance(seconds=1)
    w.route("q2")
    view = w.agent("a1", max=3)
    assert view.load == 3
    assert w.sessions_of("a1") == {"z": State.ACTIVE, "q1": State.ASSIGNED, "q2": State.ASSIGNED}
    assert w.queue() == []


def test_lowering_max_concurrent_takes_nothing_away(w):
    # SPEC §4: "the agent just gets nothing new until below"
    w.agent("a1", max=3)
    sessions = fill(w, "a1", "c1", "c2", "c3")
    view = w.agent("a1", max=1)
    assert view.load == 3
    assert w.sessions_of("a1") == {"c1": State.ACTIVE, "c2": State.ACTIVE, "c3": State.ACTIVE}
    assert w.route("q").outcome == Outcome.QUEUED
    # When load drops to 2, then 1: still not below max
    assert moved(w.end(sessions[0].session_id)) == []
    assert moved(w.end(sessions[1].session_id)) == []
    # When load drops to 0
    assert moved(w.end(sessions[2].session_id)) == [("q", "a1")]


def test_transfer_out_lets_the_agent_take_the_next_queued_buyer(w):
    w.agent("a1", max=1)
    w.agent("a2", max=1)
    (z,) = fill(w, "a1", "z")
    fill(w, "a2", "y")
    w.route("q")
    w.transfer(z.session_id, agent_id="a1", to_agent_id="a2", force=True)
    assert w.sessions_of("a1") == {"q": State.ASSIGNED}
    assert w.queue() == []


def test_left_messages_are_auto_assigned_oldest_first_after_the_queue(w):
    # Seed 001 离线会话系统自动分配 (auto_assign_left_messages, default on)
    w.agent("a1", max=1, status=Status.OFFLINE)
    w.agent("a2", max=0, status=Status.OFFLINE)
    for buyer in ("l1", "l2"):
        assert w.route(buyer).outcome == Outcome.LEFT_MESSAGE
        w.advance(seconds=1)
    w.status("a2", Status.SUSPENDED)  # someone non-OFFLINE, full: now buyers queue
    assert w.route("q").outcome == Outcome.QUEUED
    # When a1 comes online: the queue first, though the left messages are older
    result = w.status("a1", Status.ONLINE)
    assert moved(result) == [("q", "a1")]
    # When a1 frees capacity: the oldest left message
    result = w.end(result.moved[0].session_id)
    assert moved(result) == [("l1", "a1")]
    assert w.left_messages() == {"l2": ""}


def test_left_messages_stay_when_auto_assign_is_off(w):
    w.policy(auto_assign_left_messages=False)
    w.agent("a1", status=Status.OFFLINE)
    w.route("l1")
    result = w.status("a1", Status.ONLINE)
    assert moved(result) == []
    assert w.left_messages() == {"l1": ""}


def test_queue_entry_needing_a_group_does_not_block_other_groups(w):
    # SPEC §3: no head-of-line blocking across groups
    w.agent("a1", max=1, groups=("presale",))
    w.agent("a2", max=1, groups=("aftersale",))
    fill(w, "a1", "c1")
    (c2,) = fill(w, "a2", "c2")
    w.route("qp", group="presale")
    w.advance(seconds=1)
    w.route("qa", group="aftersale")
    result = w.end(c2.session_id)
    assert moved(result) == [("qa", "a2")]
    assert w.queue() == ["qp"]


def test_group_entry_is_only_taken_by_an_agent_of_that_group(w):
    w.agent("a1", max=1, groups=("presale",))
    w.agent("a3", max=1)
    fill(w, "a1", "c1")
    (c3,) = fill(w, "a3", "c3")
    w.route("qp", group="presale")
    assert moved(w.end(c3.session_id)) == []
    assert w.queue() == ["qp"]


def test_suspended_agent_does_not_take_from_the_queue_while_someone_is_online(w):
    # README §3: SUSPENDED agents take from the queue only when nobody in scope is ONLINE
    w.agent("a1", max=1)
    w.agent("a2", max=1)
    fill(w, "a1", "c1")
    (c2,) = fill(w, "a2", "c2")
    w.status("a2", Status.SUSPENDED)
    w.route("q")
    assert moved(w.end(c2.session_id)) == []
    assert w.queue() == ["q"]


def test_suspended_agent_takes_from_the_queue_when_nobody_is_online(w):
    # SPEC rule 6 / README §3: route_when_all_suspended (default on)
    w.agent("a1", max=1, status=Status.SUSPENDED)
    c1 = w.route("c1")
    assert (c1.agent_id, c1.reason) == ("a1", Reason.ALL_SUSPENDED)
    assert w.route("q").outcome == Outcome.QUEUED
    assert moved(w.end(c1.session_id)) == [("q", "a1")]

"""SPEC §5: timers from the shop policy, fired by Tick commands alone (no other traffic)."""

from __future__ import annotations

from fenliu.server.core.types import MINUTE, Outcome, Reason, Role, State


def moved(result):
    """(buyer, agent, reason) of each session a command moved, sorted by buyer."""
    return sorted((d.buyer_id, d.agent_id, d.reason) for d in result.moved)


# ---------------------------------------------------------------- accept_timeout (seed 002)


def test_new_customer_not_acted_on_in_10_minutes_goes_to_another_agent(w):
    # Seed 002: "超过10分钟后,如果你没有对新客户进行任何操作,系统会将客户重新分配给其他客服"
    w.agent("a1")
    w.agent("a2")
    d = w.route("b1", addressed_agent_id="a1")
    # When only ticks arrive: nothing at 9 minutes
    assert w.advance(minutes=9).moved == ()
    assert w.sessions_of("a1") == {"b1": State.ASSIGNED}
    # expect the reassignment once 10 minutes have passed
    result = w.advance(minutes=2)
    assert moved(result) == [("b1", "a2", Reason.ACCEPT_TIMEOUT)]
    assert result.moved[0].session_id == d.session_id
    assert w.sessions_of("a1") == {}
    assert w.sessions_of("a2") == {"b1": State.ASSIGNED}


def test_acknowledged_customer_is_not_reassigned_after_10_minutes(w):
    w.agent("a1")
    w.agent("a2")
    d = w.route("b1", addressed_agent_id="a1")
    w.advance(minutes=5)
    w.ack("a1", d.session_id)
    w.reply("a1", d.session_id)
    w.advance(minutes=6)  # 11 minutes after the assignment, 6 after the reply
    assert w.sessions_of("a1") == {"b1": State.ACTIVE}


def test_accept_timeout_comes_from_the_shop_policy(w):
    w.policy(accept_timeout_ms=2 * MINUTE)
    w.agent("a1")
    w.agent("a2")
    w.route("b1", addressed_agent_id="a1")
    assert moved(w.advance(minutes=3)) == [("b1", "a2", Reason.ACCEPT_TIMEOUT)]


def test_reassignment_skips_every_agent_the_session_timed_out_on(w):
    # README: "A reassigned session excludes the agents it timed out on for the rest of its life"
    w.agent("a1", max=10)
    w.agent("a2", max=10)
    w.agent("a3", max=10)
    w.ack("a3", w.route("c1", addressed_agent_id="a3").session_id)  # a3 busier than a1
    w.route("b1", addressed_agent_id="a1")
    assert moved(w.advance(minutes=11)) == [("b1", "a2", Reason.ACCEPT_TIMEOUT)]
    # When it times out on a2 as well: a1 (no load) would be best, but it timed out there
    assert moved(w.advance(minutes=11)) == [("b1", "a3", Reason.ACCEPT_TIMEOUT)]


def test_timed_out_session_nobody_can_take_returns_to_the_queue_at_its_request_time(w):
    # SPEC §2: "it goes back into the shop queue at the place its original request time gives it"
    w.agent("a1", max=2)
    w.agent("a2", max=0)  # online, always full
    for buyer in ("b1", "b2", "b3", "b4", "b5"):
        w.route(buyer)
        w.advance(minutes=1)
    assert w.queue() == ["b3", "b4", "b5"]
    # When b1 and b2 time out on a1 (due at 10 and 11 minutes)
    w.advance(minutes=8)  # 13 minutes after b1
    # expect a1 to take b3 and b4 (it may not take back b1, b2), and b1, b2 back in line
    # ahead of b5, who asked later
    assert w.sessions_of("a1") == {"b3": State.ASSIGNED, "b4": State.ASSIGNED}
    assert w.queue() == ["b1", "b2", "b5"]


# ---------------------------------------------------------------- reply_timeout (seed 002)


def test_unanswered_buyer_is_reassigned_after_30_minutes(w):
    # Seed 002: "已接待的客户,在30分钟内...超过30分钟未回复,系统会将客户重新分配给其他客服"
    w.agent("a1")
    w.agent("a2")
    d = w.route("b1", addressed_agent_id="a1")
    w.ack("a1", d.session_id)
    w.reply("a1", d.session_id)
    w.advance(minutes=5)
    w.route("b1")  # the buyer writes at 5 min and gets no answer
    assert w.advance(minutes=29).moved == ()  # 34 min: 29 unanswered, never idle
    assert w.sessions_of("a1") == {"b1": State.ACTIVE}
    result = w.advance(minutes=2)  # 31 min unanswered
    assert moved(result) == [("b1", "a2", Reason.REPLY_TIMEOUT)]


def test_reply_restarts_the_reply_timeout(w):
    w.policy(idle_end_timeout_ms=0)  # 0 switches a timer off (proto ShopPolicy)
    w.agent("a1")
    w.agent("a2")
    d = w.route("b1", addressed_agent_id="a1")
    w.ack("a1", d.session_id)
    w.advance(minutes=20)
    w.reply("a1", d.session_id)
    w.advance(minutes=5)
    w.route("b1")  # unanswered from 25 min
    assert w.advance(minutes=25).moved == ()  # 50 min since the request, 25 unanswered
    assert w.sessions_of("a1") == {"b1": State.ACTIVE}


# ---------------------------------------------------------------- idle_end_timeout


def test_idle_session_ends_after_15_minutes(w):
    # SPEC §5 (seed 003 超时自动结束): no message either way -> ENDED
    w.agent("a1")
    d = w.route("b1")
    w.ack("a1", d.session_id)
    w.reply("a1", d.session_id)
    w.advance(minutes=14)
    assert w.state(d.session_id) == State.ACTIVE
    w.advance(minutes=2)
    assert w.state(d.session_id) == State.ENDED
    assert w.team()["a1"].load == 0


def test_idle_end_frees_capacity_for_the_queue(w):
    w.agent("a1", max=1)
    d = w.route("b1")
    w.ack("a1", d.session_id)
    w.reply("a1", d.session_id)
    assert w.route("q").outcome == Outcome.QUEUED
    w.advance(minutes=16)
    assert w.sessions_of("a1") == {"q": State.ASSIGNED}


def test_idle_end_timeout_off_keeps_sessions_open(w):
    w.policy(idle_end_timeout_ms=0)
    w.agent("a1")
    d = w.route("b1")
    w.ack("a1", d.session_id)
    w.reply("a1", d.session_id)
    w.advance(hours=3)
    assert w.state(d.session_id) == State.ACTIVE


# ---------------------------------------------------------------- queue_wait_limit


def test_queue_wait_limit_turns_a_queued_buyer_into_a_left_message(w):
    w.policy(queue_wait_limit_ms=5 * MINUTE)
    w.agent("a1", max=0)
    d = w.route("q")
    assert w.advance(minutes=4).moved == ()
    assert w.queue() == ["q"]
    result = w.advance(minutes=2)
    assert [(m.buyer_id, m.outcome, m.reason) for m in result.moved] == [
        ("q", Outcome.LEFT_MESSAGE, Reason.QUEUE_WAIT_LIMIT)
    ]
    assert w.queue() == []
    assert w.state(d.session_id) == State.LEFT_MESSAGE
    assert "q" in w.left_messages()


def test_private_contact_waiting_past_the_limit_stays_mains(w):
    # SPEC rule 3: a private contact's message to MAIN is "never routed to anyone else"
    w.policy(queue_wait_limit_ms=5 * MINUTE, reply_timeout_ms=0, idle_end_timeout_ms=0)
    w.agent("m", role=Role.MAIN, max=1)
    w.agent("a1")
    w.ack("m", w.route("c1", addressed_agent_id="m").session_id)
    w.private("p")
    assert w.route("p", addressed_agent_id="m").outcome == Outcome.BACKLOG
    w.advance(minutes=6)
    assert w.sessions_of("a1") == {}
    assert w.left_messages() == {"p": "m"}


def test_queue_wait_limit_is_off_by_default(w):
    w.agent("a1", max=0)
    w.route("q")
    w.advance(hours=5)
    assert w.queue() == ["q"]


def test_queue_wait_limit_applies_to_a_backlog(w):
    # README: "QUEUED or BACKLOG longer than the limit since entering -> left message"
    w.policy(queue_wait_limit_ms=5 * MINUTE, reply_timeout_ms=0, idle_end_timeout_ms=0)
    w.agent("a1", max=1)
    w.serve("x", "a1")
    w.ack("a1", w.route("z", addressed_agent_id="a1").session_id)
    x = w.route("x")
    assert x.outcome == Outcome.BACKLOG
    w.advance(minutes=6)
    assert w.state(x.session_id) == State.LEFT_MESSAGE
    assert w.team()["a1"].backlog_size == 0


# ---------------------------------------------------------------- ticks


def test_timers_fire_on_ticks_alone_and_never_early(w):
    # Given a new customer and no traffic at all afterwards
    w.agent("a1")
    w.agent("a2")
    w.route("b1", addressed_agent_id="a1")
    # When ticks come every minute, then one at 10.5 minutes
    results = [w.advance(minutes=1) for _ in range(9)]
    results.append(w.advance(seconds=90))
    # expect exactly one move, on the tick past 10 minutes
    assert [len(r.moved) for r in results] == [0] * 9 + [1]

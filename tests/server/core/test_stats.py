"""Event sequence numbers and the shop stats (SPEC §4 Watch, §5 stats), computed by hand."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.errors import InvalidArgument, NotFound
from fenliu.server.core.types import (
    MINUTE,
    AgentStatsView,
    CountsView,
    GetShopStats,
    Reason,
    ShopStatsView,
    Status,
)

from .conftest import T0, World


def stats(w: World, window_minutes: int = 0) -> ShopStatsView:
    result: ShopStatsView = w.ask(GetShopStats, window_minutes=window_minutes)
    return result


def counts(**fields: float) -> CountsView:
    base: dict[str, float] = dict.fromkeys(
        ("assigned", "reassigned", "transferred", "timeouts", "first_replies"), 0
    )
    base.update(fast_first_replies=0, unreplied=0, fast_reply_rate=0.0)
    base.update(fields)
    return CountsView(**base)  # type: ignore[arg-type]


def test_each_shop_numbers_its_events_from_one_without_gaps(w: World) -> None:
    w.d.drain_events()
    other = World("shop-2", w.d)
    other.policy()
    w.agent("a", max=1)
    other.agent("x")
    w.route("b1")
    with pytest.raises(NotFound):
        w.route("b2", addressed_agent_id="nobody")  # rejected: no event, no seq
    w.status("a", Status.SUSPENDED)
    events = w.d.drain_events()
    mine = [(e.seq, e.kind, e.status) for e in events if e.shop_id == w.shop]
    assert mine == [
        (1, "status_changed", Status.ONLINE),
        (2, "assigned", None),
        (3, "status_changed", Status.SUSPENDED),
    ]
    assert [(e.seq, e.kind) for e in events if e.shop_id == "shop-2"] == [(1, "status_changed")]
    assert stats(w).event_seq == 3


def test_stats_of_a_scripted_scenario_match_the_hand_count(w: World) -> None:
    w.policy(reply_timeout_ms=5 * MINUTE)
    w.agent("a", max=1)
    w.agent("b", max=1)
    s1 = w.route("b1").session_id  # T0: a
    s2 = w.route("b2").session_id  # T0: b
    s3 = w.route("b3").session_id  # T0: queued, both full
    w.advance(minutes=1)
    w.reply("a", s1)  # first reply after 1 min: fast
    w.advance(seconds=30)
    w.ack("b", s2)  # acted on (served), but no reply
    w.advance(seconds=90)  # T0+3
    w.end(s1)  # a frees and takes s3, queued since T0
    w.advance(seconds=30)
    w.reply("a", s3)  # first reply 3.5 min after the request: slow, queue time included
    moved = w.advance(seconds=90)  # T0+5: s2's reply timeout; a is full, so s2 queues
    assert [(d.session_id, d.reason) for d in moved.moved] == [(s2, Reason.REPLY_TIMEOUT)]
    w.advance(minutes=1)  # T0+6

    got = stats(w)
    # s1 fast; s3 slow; s2 has waited 6 min for a first reply: already late.
    today = counts(
        assigned=3, reassigned=1, timeouts=1, first_replies=2, fast_first_replies=1, unreplied=1,
        fast_reply_rate=1 / 3,
    )  # fmt: skip
    assert got.today == today
    assert got.window == today and got.window_minutes == 60
    assert (got.queue_length, got.longest_wait_ms, got.left_messages, got.open_sessions) == (
        1, 6 * MINUTE, 0, 2,
    )  # fmt: skip
    assert got.agents == (
        AgentStatsView(agent_id="a", status=Status.ONLINE, load=1, served_today=2),
        AgentStatsView(agent_id="b", status=Status.ONLINE, load=0, served_today=1),
    )
    # The last 2 minutes (T0+5 and T0+6) hold only the timeout and its reassignment.
    assert stats(w, 2).window == counts(reassigned=1, timeouts=1, unreplied=1)

    w.end(s2, s3)  # s2 ends never replied to: no longer overdue but counted as unreplied
    assert stats(w).today == today

    w.advance(minutes=57)  # T0+63: the 60-minute window starts at T0+4
    got = stats(w)
    assert got.window == counts(reassigned=1, timeouts=1, unreplied=1)
    assert got.today == today
    assert (got.queue_length, got.longest_wait_ms, got.open_sessions) == (0, 0, 0)


def test_a_session_ended_before_any_reply_counts_against_the_rate(w: World) -> None:
    w.agent("a", max=0)  # present but full: buyers queue
    w.route("b1")
    w.advance(seconds=30)
    assert stats(w).today == counts()  # 30 s without a reply is not late yet
    w.leave_queue("b1")
    assert stats(w).today == counts(unreplied=1)


def test_today_restarts_at_midnight_in_the_shops_time_zone() -> None:
    d = Dispatcher(shards=4)
    # 23:59 in Shanghai is 15:59 UTC: the same day in UTC, the day before in Shanghai.
    late = int(datetime(2024, 3, 1, 23, 59, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp() * 1000)
    shanghai, utc = World("sh", d), World("utc", d)
    for w in (shanghai, utc):
        w.now = late
        w.policy(time_zone="Asia/Shanghai" if w is shanghai else "UTC")
        w.agent("a", max=10)
        w.ack("a", w.route("b1").session_id)
        w.now = late + 2 * MINUTE  # 00:01 in Shanghai, 16:01 UTC
        w.ack("a", w.route("b2").session_id)
    assert stats(shanghai).today.assigned == 1
    assert stats(shanghai).agents[0].served_today == 1
    assert stats(shanghai).window.assigned == 2  # the window does not care about days
    assert stats(utc).today.assigned == 2
    assert stats(utc).agents[0].served_today == 2


def test_the_window_is_1_to_60_minutes(w: World) -> None:
    with pytest.raises(InvalidArgument, match="window_minutes"):
        stats(w, 61)
    with pytest.raises(InvalidArgument, match="window_minutes"):
        stats(w, -1)
    fresh = stats(w, 1)  # nothing counted yet
    assert (fresh.window_minutes, fresh.at) == (1, T0)
    assert fresh.today == fresh.window == counts()


def test_a_transfer_counts_as_transferred_and_assigned_and_keeps_the_reply_clock(
    w: World,
) -> None:
    w.agent("a")
    w.agent("b")
    s1 = w.route("b1").session_id  # a
    w.advance(minutes=1)
    w.transfer(s1, to_agent_id="b")
    w.advance(seconds=59)
    w.reply("b", s1)  # 1:59 after the request, whoever holds it: fast
    kinds = [e.kind for e in w.d.drain_events() if e.session_id == s1]
    assert kinds == ["assigned", "assigned", "transferred"]
    assert stats(w).today == counts(
        assigned=2, transferred=1, first_replies=1, fast_first_replies=1, fast_reply_rate=1.0
    )

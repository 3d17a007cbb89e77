"""Monitor over a real server: watch streams in order, resume, fell-behind, stats, restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fenliu.client._pb import fenliu_pb2 as pb, fenliu_pb2_grpc as pb_grpc
from fenliu.server.config import Config
from fenliu.server.core.types import Tick
from fenliu.server.rpc import monitor as monitor_module
from fenliu.server.rpc.app import ServerThread

from .conftest import MINUTE, OFFLINE, ONLINE, Api, FakeClock, field_of, rpc_error

K = pb.EventKind
R = pb.Reason
STREAM_TIMEOUT = 30  # seconds: a broken stream fails the test instead of hanging it


@pytest.fixture(scope="module")
def monitor(channel: grpc.Channel) -> pb_grpc.MonitorStub:
    return pb_grpc.MonitorStub(channel)


def watch_shop(monitor: pb_grpc.MonitorStub, shop: str, after: int | None = None) -> Any:
    request = pb.WatchShopRequest(shop_id=shop, after_seq=after)
    return monitor.WatchShop(request, timeout=STREAM_TIMEOUT)


def take(stream: Iterator[pb.WatchMessage], n: int) -> list[pb.WatchMessage]:
    return [next(stream) for _ in range(n)]


def brief(messages: list[pb.WatchMessage]) -> list[tuple[Any, ...]]:
    """(seq, kind, agent, session, reason, status) of events; markers as (kind, seq)."""
    out: list[tuple[Any, ...]] = []
    for m in messages:
        which = m.WhichOneof("message")
        if which == "event":
            e = m.event
            out.append((e.seq, e.kind, e.agent_id, e.session_id, e.reason, e.status))
        elif which == "started":
            out.append(("started", m.started.head_seq))
        else:
            out.append(("behind", m.fell_behind.resume_after_seq, m.fell_behind.cause))
    return out


def scenario(api: Api, server: ServerThread, clock: FakeClock, shop: str) -> None:
    """Two agents with room for one each, three buyers, an end, an OFFLINE, a timeout."""
    api.agent(shop, "a", max=1)
    api.agent(shop, "b", max=1)
    api.route(shop, "b1")
    api.route(shop, "b2")
    api.route(shop, "b3")
    api.routing.EndSessions(pb.EndSessionsRequest(shop_id=shop, session_ids=["s1"]))
    api.presence.SetStatus(pb.SetStatusRequest(shop_id=shop, agent_id="b", status=OFFLINE))
    clock.advance(11)  # s3's accept timeout (10 min) at a
    server.execute(Tick(at=clock.now))


# Worked out by hand from SPEC §2-§5 and server/core/README.md.
SCENARIO = [
    (1, K.EVENT_KIND_STATUS_CHANGED, "a", "", 0, ONLINE),
    (2, K.EVENT_KIND_STATUS_CHANGED, "b", "", 0, ONLINE),
    (3, K.EVENT_KIND_ASSIGNED, "a", "s1", R.REASON_STRATEGY, 0),
    (4, K.EVENT_KIND_ASSIGNED, "b", "s2", R.REASON_STRATEGY, 0),
    (5, K.EVENT_KIND_QUEUE_CHANGED, "", "s3", R.REASON_ALL_BUSY, 0),  # both full
    (6, K.EVENT_KIND_ENDED, "a", "s1", 0, 0),
    (7, K.EVENT_KIND_QUEUE_CHANGED, "", "s3", 0, 0),  # a frees: s3 leaves the queue...
    (8, K.EVENT_KIND_ASSIGNED, "a", "s3", R.REASON_CAPACITY_FREED, 0),  # ...for a
    (9, K.EVENT_KIND_STATUS_CHANGED, "b", "", 0, OFFLINE),
    (10, K.EVENT_KIND_REASSIGNED_AWAY, "b", "s2", R.REASON_AGENT_OFFLINE, 0),
    (11, K.EVENT_KIND_QUEUE_CHANGED, "", "s2", R.REASON_AGENT_OFFLINE, 0),  # a is full
    (12, K.EVENT_KIND_TIMEOUT, "a", "s3", R.REASON_ACCEPT_TIMEOUT, 0),
    (13, K.EVENT_KIND_REASSIGNED_AWAY, "a", "s3", R.REASON_ACCEPT_TIMEOUT, 0),
    # Nobody else is present and s3 never returns to a by itself (SPEC §2): the queue,
    (14, K.EVENT_KIND_QUEUE_CHANGED, "", "s3", R.REASON_ACCEPT_TIMEOUT, 0),
    # and a, freed, takes s2 (ahead in the queue: asked earlier) instead.
    (15, K.EVENT_KIND_QUEUE_CHANGED, "", "s2", 0, 0),
    (16, K.EVENT_KIND_ASSIGNED, "a", "s2", R.REASON_CAPACITY_FREED, 0),
]


def test_a_watcher_sees_exactly_the_scenarios_events_in_order(
    api: Api, monitor: pb_grpc.MonitorStub, server: ServerThread, clock: FakeClock, shop: str
) -> None:
    api.policy(shop)  # the shop exists, no events yet
    stream = watch_shop(monitor, shop)
    assert brief(take(stream, 1)) == [("started", 0)]
    scenario(api, server, clock, shop)
    assert brief(take(stream, len(SCENARIO))) == SCENARIO
    # a's workstation, from the start (the ring has kept the shop's events since seq 0).
    agent_stream = monitor.WatchAgent(
        pb.WatchAgentRequest(shop_id=shop, agent_id="a", after_seq=0), timeout=STREAM_TIMEOUT
    )
    mine = [e for e in SCENARIO if e[2] == "a"]
    assert brief(take(agent_stream, 1 + len(mine))) == [("started", len(SCENARIO)), *mine]
    stream.cancel()
    agent_stream.cancel()


def test_a_batched_stream_carries_the_same_events_in_order_in_fewer_messages(
    api: Api, monitor: pb_grpc.MonitorStub, server: ServerThread, clock: FakeClock, shop: str
) -> None:
    api.policy(shop)
    first_watcher = watch_shop(monitor, shop)  # the shop's ring is kept from now on
    take(first_watcher, 1)
    scenario(api, server, clock, shop)  # all of it before the two watchers come
    plain = monitor.WatchShop(pb.WatchShopRequest(shop_id=shop, after_seq=0),
                              timeout=STREAM_TIMEOUT)  # fmt: skip
    batched = monitor.WatchShop(pb.WatchShopRequest(shop_id=shop, after_seq=0, batch=True),
                                timeout=STREAM_TIMEOUT)  # fmt: skip
    assert brief(take(plain, 1 + len(SCENARIO)))[1:] == SCENARIO  # one message an event
    first, missed = take(batched, 2)
    assert brief([first]) == [("started", len(SCENARIO))]
    assert missed.WhichOneof("message") == "events"  # what it missed: one message
    flat = [pb.WatchMessage(event=e) for e in missed.events.events]
    assert brief(flat) == SCENARIO
    api.route(shop, "later")  # and live events come batched too
    (live,) = take(batched, 1)
    assert [e.seq for e in live.events.events] == [len(SCENARIO) + 1]
    plain.cancel()
    batched.cancel()
    first_watcher.cancel()


def test_a_batched_stream_sends_the_first_event_at_once_and_gathers_the_next_ones(
    api: Api,
    monitor: pb_grpc.MonitorStub,
    shop: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A long linger (the server runs in this process), so that nothing else on a loaded
    # machine can take that long: the first event after a quiet spell must not wait for
    # it, the ones routed while it runs must come together as one message.
    linger = 4.0
    monkeypatch.setattr(monitor_module, "BATCH_LINGER_S", linger)
    api.policy(shop)
    batched = monitor.WatchShop(pb.WatchShopRequest(shop_id=shop, batch=True),
                                timeout=STREAM_TIMEOUT)  # fmt: skip
    assert brief(take(batched, 1)) == [("started", 0)]
    began = time.monotonic()
    api.route(shop, "first")
    (alone,) = take(batched, 1)
    assert time.monotonic() - began < linger / 2, "the first event waited for the linger"
    assert [e.seq for e in alone.events.events] == [1]
    for i in range(5):  # while the stream lingers after sending "first"
        api.route(shop, f"next{i}")
    (gathered,) = take(batched, 1)
    assert [e.seq for e in gathered.events.events] == [2, 3, 4, 5, 6]
    batched.cancel()


def test_a_watcher_that_disconnects_and_resumes_misses_nothing(
    api: Api, monitor: pb_grpc.MonitorStub, server: ServerThread, clock: FakeClock, shop: str
) -> None:
    api.policy(shop)
    steady = watch_shop(monitor, shop)
    flaky = watch_shop(monitor, shop)
    assert brief(take(steady, 1)) == brief(take(flaky, 1)) == [("started", 0)]
    api.agent(shop, "a", max=1)
    api.route(shop, "b1")
    seen = take(flaky, 2)
    flaky.cancel()  # gone while more happens
    api.route(shop, "b2")
    api.agent(shop, "b", max=1)
    resumed = watch_shop(monitor, shop, after=seen[-1].event.seq)
    assert brief(take(resumed, 1)) == [("started", 6)]
    api.route(shop, "b3")
    # Missed: b2 queued, b registered, b2 leaves the queue for b. Live: b3 queued.
    rest = take(resumed, 5)
    all_steady = take(steady, 7)
    assert brief(seen + rest) == brief(all_steady)
    assert [m.event.seq for m in seen + rest] == [1, 2, 3, 4, 5, 6, 7]
    steady.cancel()
    resumed.cancel()


def test_resuming_from_further_back_than_the_ring_says_fell_behind(
    api: Api, monitor: pb_grpc.MonitorStub, shop: str
) -> None:
    api.agent(shop, "a", max=5)
    api.route(shop, "b1")  # seq 2, while nobody watched: never kept
    stream = watch_shop(monitor, shop, after=1)
    assert brief(take(stream, 2)) == [
        ("started", 2),
        ("behind", 2, pb.FellBehind.CAUSE_NOT_KEPT),
    ]
    api.route(shop, "b2")
    assert [m.event.seq for m in take(stream, 1)] == [3]  # and it goes on after 2
    stream.cancel()
    ahead = watch_shop(monitor, shop, after=99)  # e.g. the numbering of an older server
    assert brief(take(ahead, 2)) == [("started", 3), ("behind", 3, pb.FellBehind.CAUSE_NOT_KEPT)]
    ahead.cancel()


def test_watch_and_stats_refuse_unknown_and_malformed_names(
    api: Api, monitor: pb_grpc.MonitorStub, shop: str
) -> None:
    api.agent(shop, "a")
    watch_agent = pb.WatchAgentRequest
    not_found, invalid = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT
    cases = [
        (monitor.WatchShop, pb.WatchShopRequest(shop_id="nope"), not_found, "shop_id"),
        (monitor.WatchShop, pb.WatchShopRequest(shop_id="bad id"), invalid, "shop_id"),
        (monitor.WatchAgent, watch_agent(shop_id=shop, agent_id="x"), not_found, "agent_id"),
        (monitor.WatchAgent, watch_agent(shop_id=shop), invalid, "agent_id"),
    ]
    for call, request, code, field in cases:
        with pytest.raises(grpc.RpcError) as info:
            next(call(request, timeout=STREAM_TIMEOUT))
        assert (info.value.code(), field_of(info.value)) == (code, field)  # type: ignore[attr-defined]
    error = rpc_error(monitor.GetShopStats, pb.GetShopStatsRequest(shop_id=shop, window_minutes=61))
    assert (error.code(), field_of(error)) == (grpc.StatusCode.INVALID_ARGUMENT, "window_minutes")  # type: ignore[attr-defined]
    error = rpc_error(monitor.GetShopStats, pb.GetShopStatsRequest(shop_id="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


def test_shop_stats_over_grpc(
    api: Api, monitor: pb_grpc.MonitorStub, server: ServerThread, clock: FakeClock, shop: str
) -> None:
    scenario(api, server, clock, shop)
    stats = monitor.GetShopStats(pb.GetShopStatsRequest(shop_id=shop))
    # Assigned s1, s2, s3, s3 again; s2 moved off b (OFFLINE) and s3 off a (timeout). No
    # replies: s2 and s3 are open and 11 min old, s1 ended without one: 3 unreplied.
    counts = pb.StatsCounts(assigned=4, reassigned=2, timeouts=1, unreplied=3)
    assert (stats.today, stats.window, stats.window_minutes) == (counts, counts, 60)
    assert (stats.queue_length, stats.longest_wait_ms, stats.open_sessions) == (1, 11 * MINUTE, 2)
    assert stats.event_seq == len(SCENARIO) and stats.at_ms == clock.now
    assert [(a.agent_id, a.status, a.load, a.served_today) for a in stats.agents] == [
        ("a", ONLINE, 1, 0),
        ("b", OFFLINE, 0, 0),
    ]


def test_a_watcher_that_never_reads_does_not_hold_up_route(
    api: Api, monitor: pb_grpc.MonitorStub, server: ServerThread, shop: str
) -> None:
    api.agent(shop, "a", max=10_000)
    stream = watch_shop(monitor, shop)
    assert brief(take(stream, 1)) == [("started", 1)]
    # Then it stops reading: HTTP/2 flow control stops its stream, its buffer fills up.
    batches = 6
    for batch in range(batches):
        requests = [
            pb.RouteRequest(shop_id=shop, buyer_id=f"b{batch}-{i}", request_id=f"r{batch}-{i}")
            for i in range(1000)
        ]
        reply = api.routing.RouteBatch(pb.RouteBatchRequest(requests=requests))
        assert all(r.decision.outcome == pb.OUTCOME_ASSIGNED for r in reply.results)
    head = 1 + batches * 1000
    hub = server._server.hub  # type: ignore[union-attr]
    buffered, overflows = server.call(
        lambda: (list(hub.buffered()), hub.watchers[shop][0].overflows)
    )
    assert buffered and max(buffered) <= hub.buffer_size  # bounded, whatever it missed
    assert overflows >= 1
    # Reading again: what was already on its way, then FELL_BEHIND, then every event after.
    messages = brief(take(stream, 1))
    while messages[-1][0] != "behind" or messages[-1][1] < head - hub.buffer_size:
        messages += brief(take(stream, 1))
    last = messages[-1]
    assert last[2] == pb.FellBehind.CAUSE_OVERFLOW
    after = [e[0] for e in brief(take(stream, head - last[1]))]
    assert after == list(range(last[1] + 1, head + 1))
    stream.cancel()


def test_stopping_the_server_ends_watch_streams_cleanly() -> None:
    with ServerThread(Config(shards=2, tick_interval_s=3600, grace_s=60)) as server:
        with grpc.insecure_channel(server.target) as channel:
            Api(channel).agent("s", "a")
            stream = pb_grpc.MonitorStub(channel).WatchShop(
                pb.WatchShopRequest(shop_id="s"), timeout=STREAM_TIMEOUT
            )
            assert brief(take(stream, 1)) == [("started", 1)]
            server.stop()  # the drain would wait 60 s for a stream the hub did not end
            assert list(stream) == []  # ended with OK status, not cut off or failed
            assert stream.code() == grpc.StatusCode.OK


def test_the_seq_continues_after_a_restart_on_real_files(tmp_path: Path) -> None:
    config = Config(shards=2, data_dir=str(tmp_path), tick_interval_s=3600)
    with ServerThread(config) as server, grpc.insecure_channel(server.target) as channel:
        api = Api(channel)
        api.agent("s", "a")
        api.route("s", "b1")
        before = pb_grpc.MonitorStub(channel).GetShopStats(pb.GetShopStatsRequest(shop_id="s"))
    assert before.event_seq == 2
    with ServerThread(config) as server, grpc.insecure_channel(server.target) as channel:
        monitor = pb_grpc.MonitorStub(channel)
        stream = watch_shop(monitor, "s", after=2)  # the last seq seen before the restart
        assert brief(take(stream, 1)) == [("started", 2)]  # nothing missed, no FELL_BEHIND
        Api(channel).route("s", "b2", request_id="after-restart")
        assert [m.event.seq for m in take(stream, 1)] == [3]
        after = monitor.GetShopStats(pb.GetShopStatsRequest(shop_id="s"))
        assert (after.today.assigned, after.event_seq) == (2, 3)
        stream.cancel()

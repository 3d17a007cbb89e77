"""Every RPC's happy path, through a real server on a loopback port."""

from __future__ import annotations

import grpc
import pytest

from fenliu.client._pb import fenliu_pb2 as pb, fenliu_pb2_grpc as pb_grpc

from .conftest import OFFLINE, ONLINE, Api, FakeClock, rpc_error

# ---------------------------------------------------------------- Presence


def test_set_and_get_shop_policy(api: Api, shop: str) -> None:
    # Given a policy with a strategy and priority crowds
    first = api.policy(
        shop, strategy=pb.STRATEGY_ROUND_ROBIN, priority_crowds=["vip"], set_priority_crowds=True
    )
    assert first.strategy == pb.STRATEGY_ROUND_ROBIN
    assert list(first.priority_crowds) == ["vip"]
    assert first.queue_limit == 1000  # a default, untouched
    # When only the queue limit changes, expect the rest kept
    second = api.policy(shop, queue_limit=5)
    assert (second.strategy, second.queue_limit) == (pb.STRATEGY_ROUND_ROBIN, 5)
    assert list(second.priority_crowds) == ["vip"]
    # When set_priority_crowds comes with no crowds, expect the list cleared
    third = api.policy(shop, set_priority_crowds=True)
    assert list(third.priority_crowds) == []
    assert api.presence.GetShopPolicy(pb.GetShopPolicyRequest(shop_id=shop)) == third


def test_register_agent_creates_then_replaces_only_when_asked(api: Api, shop: str) -> None:
    created = api.agent(shop, "boss", max=3, role=pb.AGENT_ROLE_MAIN, groups=["presale"])
    assert (created.agent_id, created.role, list(created.groups)) == (
        "boss",
        pb.AGENT_ROLE_MAIN,
        ["presale"],
    )
    assert (created.max_concurrent, created.status, created.load) == (3, ONLINE, 0)
    # Registering it again is refused (issue 15: it used to replace it silently)
    with pytest.raises(grpc.RpcError) as info:
        api.agent(shop, "boss", status=OFFLINE, max=4, role=pb.AGENT_ROLE_MAIN)
    assert info.value.code() is grpc.StatusCode.ALREADY_EXISTS
    # A replace changes max_concurrent and groups; the status it carries is ignored.
    updated = api.agent(shop, "boss", status=OFFLINE, max=4, role=pb.AGENT_ROLE_MAIN, replace=True)
    assert (updated.max_concurrent, updated.status, list(updated.groups)) == (4, ONLINE, [])
    api.agent(shop, "sub", status=pb.AGENT_STATUS_UNSPECIFIED)
    team = api.team(shop)
    assert list(team) == ["boss", "sub"]
    assert (team["sub"].status, team["sub"].role) == (OFFLINE, pb.AGENT_ROLE_SUB)


def test_set_status_lets_the_agent_take_the_queue(api: Api, shop: str) -> None:
    # Given one full agent, a queued buyer and an OFFLINE agent
    api.agent(shop, "a1", max=1)
    api.agent(shop, "a2", status=OFFLINE, max=1)
    api.route(shop, "b1")
    queued = api.route(shop, "b2")
    assert (queued.outcome, queued.reason, queued.queue_position) == (
        pb.OUTCOME_QUEUED,
        pb.REASON_ALL_BUSY,
        1,
    )
    # When the OFFLINE agent comes ONLINE, expect it to take the queued buyer
    reply = api.presence.SetStatus(
        pb.SetStatusRequest(shop_id=shop, agent_id="a2", status=pb.AGENT_STATUS_INVISIBLE)
    )
    assert (reply.agent.agent_id, reply.agent.status) == ("a2", pb.AGENT_STATUS_INVISIBLE)
    assert [(m.buyer_id, m.agent_id, m.reason) for m in reply.moved] == [
        ("b2", "a2", pb.REASON_CAPACITY_FREED)
    ]
    assert reply.agent.load == 1


def test_remove_agent_reroutes_its_sessions(api: Api, shop: str) -> None:
    api.agent(shop, "a1")
    api.agent(shop, "a2")
    assert api.route(shop, "b1").agent_id == "a1"
    reply = api.presence.RemoveAgent(pb.RemoveAgentRequest(shop_id=shop, agent_id="a1"))
    assert [(m.buyer_id, m.agent_id, m.reason) for m in reply.moved] == [
        ("b1", "a2", pb.REASON_AGENT_OFFLINE)
    ]
    assert list(api.team(shop)) == ["a2"]


def test_private_contacts(api: Api, shop: str) -> None:
    # Given a SUSPENDED MAIN and an ONLINE sub, and two private contacts of which one is removed
    api.agent(shop, "main", role=pb.AGENT_ROLE_MAIN)
    api.agent(shop, "sub")
    api.presence.SetStatus(
        pb.SetStatusRequest(shop_id=shop, agent_id="main", status=pb.AGENT_STATUS_SUSPENDED)
    )
    for buyer in ("b1", "b2"):
        added = api.presence.AddPrivateContact(
            pb.PrivateContactRequest(shop_id=shop, buyer_id=buyer)
        )
        assert added == pb.Empty()
    api.presence.RemovePrivateContact(pb.PrivateContactRequest(shop_id=shop, buyer_id="b2"))
    # When both write to MAIN, expect only the private contact to reach it
    private = api.route(shop, "b1", addressed_agent_id="main")
    assert (private.agent_id, private.reason) == ("main", pb.REASON_PRIVATE_CONTACT)
    other = api.route(shop, "b2", addressed_agent_id="main")
    assert (other.agent_id, other.reason) == ("sub", pb.REASON_STRATEGY)


# ---------------------------------------------------------------- Routing


def test_route_assigns_and_a_retry_does_not_assign_again(api: Api, shop: str) -> None:
    api.agent(shop, "a1")
    api.agent(shop, "a2")
    first = api.route(shop, "b1", request_id="r-1", channel="item_page")
    assert (first.outcome, first.reason, first.state) == (
        pb.OUTCOME_ASSIGNED,
        pb.REASON_STRATEGY,
        pb.SESSION_STATE_ASSIGNED,
    )
    assert (first.agent_id, first.buyer_id) == ("a1", "b1") and first.session_id
    # A retry, even one whose other fields differ, gets the original decision and changes nothing
    before = api.state(shop)
    assert api.route(shop, "b1", request_id="r-1") == first
    assert api.route(shop, "b9", request_id="r-1") == first
    assert api.state(shop) == before
    assert sum(agent.load for agent in api.team(shop).values()) == 1
    error = rpc_error(api.queue.GetPosition, pb.BuyerRequest(shop_id=shop, buyer_id="b9"))
    assert error.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    # A new message of the same buyer stays in its open session
    again = api.route(shop, "b1")
    assert (again.session_id, again.reason) == (first.session_id, pb.REASON_OPEN_SESSION)


def test_route_team_message_has_no_session(api: Api, shop: str) -> None:
    api.agent(shop, "a1")
    api.agent(shop, "a2")  # the sender must be an agent of the shop (issue 15)
    decision = api.route(shop, "a2", addressed_agent_id="a1", from_team_member=True)
    assert (decision.outcome, decision.reason) == (pb.OUTCOME_TEAM_DELIVERY, pb.REASON_TEAM_MESSAGE)
    assert (decision.state, decision.session_id) == (pb.SESSION_STATE_UNSPECIFIED, "")


def test_route_batch_mixes_decisions_and_errors(api: Api, shop: str) -> None:
    api.agent(shop, "a1")
    good = pb.RouteRequest(shop_id=shop, buyer_id="b1", request_id="r-1")
    requests = [
        good,
        pb.RouteRequest(shop_id=shop, buyer_id="bad buyer", request_id="r-2"),
        pb.RouteRequest(shop_id=f"{shop}-unknown", buyer_id="b3", request_id="r-3"),
        pb.RouteRequest(shop_id=shop, buyer_id="b4", request_id="r-4"),
        good,  # a retry inside the batch
    ]
    reply = api.routing.RouteBatch(pb.RouteBatchRequest(requests=requests))
    kinds = [result.WhichOneof("result") for result in reply.results]
    assert kinds == ["decision", "error", "error", "decision", "decision"]
    first, bad, unknown, fourth, retry = reply.results
    assert (first.decision.buyer_id, fourth.decision.buyer_id) == ("b1", "b4")
    assert retry.decision == first.decision
    assert (bad.error.code, bad.error.field) == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "buyer_id",
    )
    assert "bad buyer" in bad.error.message
    assert (unknown.error.code, unknown.error.field) == (
        grpc.StatusCode.NOT_FOUND.value[0],
        "shop_id",
    )
    assert api.team(shop)["a1"].load == 2


def test_acknowledge_reply_and_get_session(api: Api, shop: str, clock: FakeClock) -> None:
    api.agent(shop, "a1")
    routed_at = clock.now
    session_id = api.route(shop, "b1", channel="order_page").session_id
    request = pb.SessionRequest(shop_id=shop, agent_id="a1", session_id=session_id)
    acknowledged = api.routing.Acknowledge(request)
    assert acknowledged.state == pb.SESSION_STATE_ACTIVE
    assert api.team(shop)["a1"].new_count == 0
    clock.advance(minutes=1)
    replied = api.routing.Reply(request)
    assert replied.first_reply_at_ms == routed_at + 60_000
    session = api.session(shop, session_id)
    assert session == replied
    assert (session.buyer_id, session.agent_id, session.channel) == ("b1", "a1", "order_page")
    assert (session.created_at_ms, session.reason) == (routed_at, pb.REASON_STRATEGY)


def test_list_agent_sessions(api: Api, shop: str) -> None:
    api.agent(shop, "a1", max=1)
    assigned = api.route(shop, "b1")
    backlog = api.route(shop, "b2", addressed_agent_id="a1")
    assert backlog.outcome == pb.OUTCOME_BACKLOG
    reply = api.routing.ListAgentSessions(pb.ListAgentSessionsRequest(shop_id=shop, agent_id="a1"))
    assert [(s.session_id, s.state) for s in reply.sessions] == [
        (assigned.session_id, pb.SESSION_STATE_ASSIGNED),
        (backlog.session_id, pb.SESSION_STATE_BACKLOG),
    ]


def test_transfer_to_an_agent_and_to_a_group(api: Api, shop: str) -> None:
    api.agent(shop, "a1")
    api.agent(shop, "a2")
    api.agent(shop, "a3", groups=["aftersale"])
    session_id = api.route(shop, "b1").session_id
    to_agent = api.routing.Transfer(
        pb.TransferRequest(shop_id=shop, session_id=session_id, agent_id="a1", to_agent_id="a2")
    )
    assert (to_agent.agent_id, to_agent.reason, to_agent.state) == (
        "a2",
        pb.REASON_TRANSFER,
        pb.SESSION_STATE_ASSIGNED,
    )
    to_group = api.routing.Transfer(
        pb.TransferRequest(shop_id=shop, session_id=session_id, to_group="aftersale")
    )
    assert (to_group.agent_id, to_group.reason) == ("a3", pb.REASON_TRANSFER)
    assert api.session(shop, session_id).group == "aftersale"


def test_end_sessions_frees_capacity_and_a_retry_counts_already_ended(api: Api, shop: str) -> None:
    api.agent(shop, "a1", max=1)
    first = api.route(shop, "b1")
    api.route(shop, "b2")  # queued: a1 is full
    request = pb.EndSessionsRequest(shop_id=shop, session_ids=[first.session_id])
    reply = api.routing.EndSessions(request)
    assert (reply.ended, reply.already_ended) == (1, 0)
    assert [(m.buyer_id, m.agent_id, m.reason) for m in reply.moved] == [
        ("b2", "a1", pb.REASON_CAPACITY_FREED)
    ]
    retry = api.routing.EndSessions(request)
    assert (retry.ended, retry.already_ended, list(retry.moved)) == (0, 1, [])


# ---------------------------------------------------------------- Queue


def test_queue_list_position_leave_and_pick(api: Api, shop: str, clock: FakeClock) -> None:
    # Given a full agent and three queued buyers from two channels
    api.agent(shop, "a1", max=1)
    api.route(shop, "b0")
    for buyer, channel in (("b1", "item_page"), ("b2", "order_page"), ("b3", "item_page")):
        api.route(shop, buyer, channel=channel)
        clock.advance(minutes=1)
    listed = api.queue.ListQueue(pb.ListQueueRequest(shop_id=shop))
    assert [(e.buyer_id, e.position, e.waited_ms) for e in listed.entries] == [
        ("b1", 1, 180_000),
        ("b2", 2, 120_000),
        ("b3", 3, 60_000),
    ]
    assert listed.total == 3
    items = api.queue.ListQueue(pb.ListQueueRequest(shop_id=shop, channel="item_page", limit=1))
    assert ([e.buyer_id for e in items.entries], items.total) == (["b1"], 2)
    shortest = api.queue.ListQueue(
        pb.ListQueueRequest(shop_id=shop, sort=pb.QUEUE_SORT_SHORTEST_WAIT)
    )
    assert [e.buyer_id for e in shortest.entries] == ["b3", "b2", "b1"]
    # When b1 leaves, expect b3 to move up; when a1 picks (forced: it is full), expect b2
    position = api.queue.GetPosition(pb.BuyerRequest(shop_id=shop, buyer_id="b3"))
    assert (position.state, position.queue_position) == (pb.SESSION_STATE_QUEUED, 3)
    left = api.queue.LeaveQueue(pb.BuyerRequest(shop_id=shop, buyer_id="b1"))
    assert (left.buyer_id, left.state) == ("b1", pb.SESSION_STATE_ENDED)
    picked = api.queue.Pick(pb.PickRequest(shop_id=shop, agent_id="a1", force=True))
    assert (picked.buyer_id, picked.agent_id, picked.reason, picked.state) == (
        "b2",
        "a1",
        pb.REASON_MANUAL_PICK,
        pb.SESSION_STATE_ACTIVE,
    )
    position = api.queue.GetPosition(pb.BuyerRequest(shop_id=shop, buyer_id="b3"))
    assert position.queue_position == 1


def test_left_messages_listed_and_picked(api: Api, shop: str) -> None:
    api.policy(shop, auto_assign_left_messages=False)
    api.agent(shop, "a1", status=OFFLINE)
    left = api.route(shop, "b1", channel="shop_home")
    assert (left.outcome, left.reason) == (pb.OUTCOME_LEFT_MESSAGE, pb.REASON_ALL_OFFLINE)
    request = pb.ListLeftMessagesRequest(shop_id=shop)
    listed = api.queue.ListLeftMessages(request)
    assert [(e.session_id, e.buyer_id, e.channel) for e in listed.entries] == [
        (left.session_id, "b1", "shop_home")
    ]
    api.presence.SetStatus(pb.SetStatusRequest(shop_id=shop, agent_id="a1", status=ONLINE))
    picked = api.queue.Pick(pb.PickRequest(shop_id=shop, agent_id="a1", session_id=left.session_id))
    assert (picked.agent_id, picked.reason) == ("a1", pb.REASON_MANUAL_PICK)
    assert api.queue.ListLeftMessages(request).total == 0


def test_echo_returns_its_payload(channel: grpc.Channel) -> None:
    # The benchmarks' transport floor: the same stack, no work.
    stub = pb_grpc.DiagnosticsStub(channel)
    assert stub.Echo(pb.EchoMessage(payload=b"\x00fenliu")).payload == b"\x00fenliu"

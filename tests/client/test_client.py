"""The SDK against a real server on a loopback port: typed results and typed errors."""

from __future__ import annotations

import asyncio
import itertools

import pytest

import fenliu.client as sdk
from fenliu.client import (
    Agent,
    AsyncClient,
    Client,
    Decision,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OnQueueFull,
    Outcome,
    QueueFull,
    QueueSort,
    Reason,
    Role,
    SessionState,
    Status,
    Strategy,
    route_request,
)

_shops = itertools.count()


def new_shop(fenliu: Client, *agents: tuple[str, int]) -> str:
    """A fresh shop with ONLINE agents (id, max_concurrent); the first is MAIN."""
    shop = f"shop{next(_shops)}"
    for i, (agent, max_concurrent) in enumerate(agents):
        role = Role.MAIN if i == 0 else Role.SUB
        fenliu.register_agent(
            shop, agent, role=role, max_concurrent=max_concurrent, status=Status.ONLINE
        )
    return shop


def test_a_conversation_from_route_to_end_has_typed_results(fenliu: Client) -> None:
    shop = new_shop(fenliu, ("main", 1), ("alice", 1))
    first = fenliu.route(shop, "b1", channel="item_page")
    assert isinstance(first, Decision)
    assert (first.outcome, first.reason, first.state) == (
        Outcome.ASSIGNED, Reason.STRATEGY, SessionState.ASSIGNED,
    )  # fmt: skip
    session = fenliu.acknowledge(shop, first.agent_id, first.session_id)
    assert session.state is SessionState.ACTIVE and session.channel == "item_page"
    replied = fenliu.reply(shop, first.agent_id, first.session_id)
    assert replied.first_reply_at_ms > 0
    fenliu.route(shop, "b2")
    queued = fenliu.route(shop, "b3")
    assert (queued.outcome, queued.queue_position) == (Outcome.QUEUED, 1)
    assert fenliu.get_position(shop, "b3").queue_position == 1
    queue = fenliu.list_queue(shop, sort=QueueSort.LONGEST_WAIT)
    assert queue.total == 1 and queue.entries[0].buyer_id == "b3"
    team = {a.agent_id: a for a in fenliu.list_team(shop)}
    assert all(isinstance(a, Agent) for a in team.values())
    assert team[first.agent_id].served_today == 1
    ended = fenliu.end_sessions(shop, [first.session_id])
    assert (ended.ended, ended.already_ended) == (1, 0)
    assert [m.buyer_id for m in ended.moved] == ["b3"]
    assert ended.moved[0].reason is Reason.CAPACITY_FREED
    assert fenliu.end_sessions(shop, [first.session_id]).already_ended == 1
    sessions = fenliu.list_agent_sessions(shop, first.agent_id)
    assert [s.buyer_id for s in sessions] == ["b3"]
    assert fenliu.get_session(shop, sessions[0].session_id).buyer_id == "b3"


def test_policy_set_changes_only_the_named_fields(fenliu: Client) -> None:
    shop = new_shop(fenliu, ("main", 1))
    policy = fenliu.set_shop_policy(shop, strategy=Strategy.LEAST_LOAD, priority_crowds=["vip"])
    assert policy.strategy is Strategy.LEAST_LOAD and policy.priority_crowds == ("vip",)
    again = fenliu.set_shop_policy(shop, queue_limit=5)
    assert again.strategy is Strategy.LEAST_LOAD and again.queue_limit == 5
    cleared = fenliu.set_shop_policy(shop, priority_crowds=[])
    assert cleared.priority_crowds == ()
    assert fenliu.get_shop_policy(shop) == cleared


def test_status_transfer_pick_and_leave(fenliu: Client) -> None:
    shop = new_shop(fenliu, ("main", 1), ("alice", 1))
    a = fenliu.route(shop, "b1")
    other = "alice" if a.agent_id == "main" else "main"
    moved = fenliu.transfer(shop, a.session_id, to_agent_id=other)
    assert (moved.agent_id, moved.reason) == (other, Reason.TRANSFER)
    result = fenliu.set_status(shop, "alice", Status.SUSPENDED)
    assert result.agent.status is Status.SUSPENDED
    b = fenliu.route(shop, "b2")
    assert b.outcome in (Outcome.ASSIGNED, Outcome.QUEUED)
    fenliu.route(shop, "b3")
    left = fenliu.leave_queue(shop, "b3")
    assert left.state is SessionState.ENDED
    fenliu.route(shop, "b4")
    picked = fenliu.pick(shop, "main", force=True)
    assert (picked.buyer_id, picked.reason) == ("b4", Reason.MANUAL_PICK)
    fenliu.add_private_contact(shop, "vip1")
    fenliu.remove_private_contact(shop, "vip1")
    assert fenliu.list_left_messages(shop).total == 0
    gone = fenliu.remove_agent(shop, "alice")
    assert all(isinstance(d, Decision) for d in gone)


def test_errors_are_typed_and_name_the_field(fenliu: Client) -> None:
    shop = new_shop(fenliu, ("main", 1))
    with pytest.raises(InvalidArgument) as bad:
        fenliu.route(shop, "no spaces allowed")
    assert bad.value.field == "buyer_id" and "buyer_id" in bad.value.message
    with pytest.raises(NotFound) as unknown:
        fenliu.list_team("nobody-has-this-shop")
    assert unknown.value.field == "shop_id"
    fenliu.set_status(shop, "main", Status.OFFLINE)
    with pytest.raises(FailedPrecondition) as state:
        fenliu.pick(shop, "main")
    assert state.value.field == "agent_id"


def test_a_full_queue_that_rejects_is_queue_full(fenliu: Client) -> None:
    shop = new_shop(fenliu, ("main", 0))
    fenliu.set_shop_policy(shop, queue_limit=0, on_queue_full=OnQueueFull.REJECT)
    with pytest.raises(QueueFull):
        fenliu.route(shop, "b1")


def test_the_same_request_id_is_the_same_decision(fenliu: Client) -> None:
    shop = new_shop(fenliu, ("main", 5))
    first = fenliu.route(shop, "b1", request_id="req-1")
    assert fenliu.route(shop, "b1", request_id="req-1") == first
    assert [a.load for a in fenliu.list_team(shop)] == [1]


def test_route_batch_answers_each_item(fenliu: Client) -> None:
    shop = new_shop(fenliu, ("main", 5))
    results = fenliu.route_batch(
        [route_request(shop, "b1"), route_request(shop, "bad id"), route_request(shop, "b2")]
    )
    assert [r.decision is not None for r in results] == [True, False, True]
    assert isinstance(results[1].error, InvalidArgument) and results[1].error.field == "buyer_id"


def test_the_async_client_has_the_same_api(target: str) -> None:
    async def scenario() -> tuple[Decision, int]:
        async with AsyncClient(target) as fenliu:
            shop = f"async-shop{next(_shops)}"
            await fenliu.register_agent(shop, "main", max_concurrent=1, status=Status.ONLINE)
            decision = await fenliu.route(shop, "b1")
            team = await fenliu.list_team(shop)
            return decision, team[0].load

    decision, load = asyncio.run(scenario())
    assert decision.agent_id == "main" and load == 1


def test_sync_and_async_clients_offer_the_same_methods() -> None:
    public = {n for n in dir(AsyncClient) if not n.startswith("_") and n != "close"}
    assert public <= set(dir(Client))
    assert Client.route.__doc__ == AsyncClient.route.__doc__


def test_all_lists_exactly_the_public_names() -> None:
    public = {n for n in dir(sdk) if not n.startswith("_")} - {"testing"}
    assert sorted(sdk.__all__) == sorted(public)

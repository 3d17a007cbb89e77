"""The SDK's arguments and results as a user reaches for them (issue 15), on a real server:
enums print as names, names are taken where enums are, a bare string is never split into
characters, and ``route_batch`` is typed like the rest."""

from __future__ import annotations

import itertools

import pytest

from fenliu.client import (
    Client,
    Decision,
    InvalidArgument,
    NotFound,
    OnQueueFull,
    Outcome,
    QueueOrder,
    Reason,
    Role,
    RouteItem,
    RouteResult,
    Status,
    Strategy,
    route_request,
)
from fenliu.client._pb import fenliu_pb2 as pb

_shops = itertools.count()


def shop_with(fenliu: Client, *agents: str) -> str:
    shop = f"args-shop{next(_shops)}"
    for agent in agents:
        fenliu.register_agent(shop, agent, max_concurrent=5, status=Status.ONLINE)
    return shop


def test_enums_print_as_names_and_still_compare_as_enums(
    fenliu: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    shop = shop_with(fenliu, "bob")
    decision = fenliu.route(shop, "buyer1")
    print(decision.outcome, decision.agent_id, decision.reason)
    assert capsys.readouterr().out == "ASSIGNED bob STRATEGY\n"
    assert decision.outcome == Outcome.ASSIGNED and decision.outcome is Outcome.ASSIGNED
    assert decision.outcome == 1 and int(decision.reason) == Reason.STRATEGY.value
    assert f"{decision.outcome}" == "ASSIGNED" and f"{decision.outcome:>10}" == "  ASSIGNED"
    assert f"{decision.outcome:d}" == "1"
    assert str(fenliu.list_team(shop)[0].status) == "ONLINE"


def test_names_are_taken_where_enums_are_in_any_case(fenliu: Client) -> None:
    shop = f"args-shop{next(_shops)}"
    agent = fenliu.register_agent(shop, "main", role="main", status="Online", max_concurrent=2)
    assert (agent.role, agent.status) == (Role.MAIN, Status.ONLINE)
    assert fenliu.set_status(shop, "main", "suspended").agent.status is Status.SUSPENDED
    policy = fenliu.set_shop_policy(
        shop, strategy="least-load", queue_order="LIFO", on_queue_full="reject"
    )
    assert (policy.strategy, policy.queue_order, policy.on_queue_full) == (
        Strategy.LEAST_LOAD, QueueOrder.LIFO, OnQueueFull.REJECT,
    )  # fmt: skip
    assert fenliu.list_queue(shop, sort="longest-wait").total == 0
    assert Status("offline") is Status.OFFLINE


@pytest.mark.parametrize("bad", ["onlin", "", 7, 2.5, None])
def test_an_unknown_enum_value_is_refused_naming_the_parameter(fenliu: Client, bad: object) -> None:
    shop = f"args-shop{next(_shops)}"
    with pytest.raises(InvalidArgument) as info:
        fenliu.register_agent(shop, "main", status=bad)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert info.value.field == "status" and info.value.message.startswith("status: ")
    assert "online" in info.value.message  # says what it may be
    with pytest.raises(ValueError, match="strategy"):
        fenliu.set_shop_policy(shop, strategy="fastest")
    with pytest.raises(NotFound):  # nothing was sent: the shop does not exist
        fenliu.get_shop_policy(shop)


def test_a_bare_string_where_a_list_is_expected_is_a_type_error(fenliu: Client) -> None:
    shop = shop_with(fenliu, "bob")
    decision = fenliu.route(shop, "buyer1")
    with pytest.raises(TypeError, match="crowds"):
        fenliu.route(shop, "buyer2", crowds="vip")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="session_ids"):
        fenliu.end_sessions(shop, decision.session_id)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="groups"):
        fenliu.register_agent(shop, "carol", groups="presale")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="priority_crowds"):
        fenliu.set_shop_policy(shop, priority_crowds="vip")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="requests"):
        fenliu.route_batch(route_request(shop, "buyer3"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="crowds"):
        RouteItem(shop, "buyer3", crowds="vip")  # type: ignore[arg-type]
    # nothing was routed, ended or registered
    assert [a.agent_id for a in fenliu.list_team(shop)] == ["bob"]
    assert fenliu.list_team(shop)[0].load == 1
    assert fenliu.end_sessions(shop, [decision.session_id]).ended == 1


def test_route_batch_takes_route_items_and_returns_typed_results(fenliu: Client) -> None:
    shop = shop_with(fenliu, "bob")
    results = fenliu.route_batch(
        [
            RouteItem(shop, "b1", crowds=("vip",)),
            route_request(shop, "b2", channel="item_page"),
            RouteItem(shop, "bad id"),
            pb.RouteRequest(shop_id=shop, buyer_id="b3"),  # the raw form still goes through
        ]
    )
    assert all(isinstance(r, RouteResult) for r in results)
    decisions = [r.decision for r in results]
    assert all(isinstance(d, Decision) for d in (decisions[0], decisions[1], decisions[3]))
    assert [d.buyer_id for d in decisions if d is not None] == ["b1", "b2", "b3"]
    assert decisions[0] is not None and decisions[0].outcome is Outcome.ASSIGNED
    assert isinstance(results[2].error, InvalidArgument)
    assert results[2].error.field == "buyer_id"

"""Protobuf <-> core conversion, without a server."""

from __future__ import annotations

import msgspec
import pytest

from fenliu.client._pb import fenliu_pb2 as pb
from fenliu.server.core import types as t
from fenliu.server.core.errors import InvalidArgument
from fenliu.server.rpc import convert
from fenliu.server.rpc.service import route_batch_reply

AT = 1_700_000_000_000


def test_policy_change_takes_only_the_fields_present() -> None:
    policy = pb.ShopPolicy(strategy=pb.STRATEGY_ROUND_ROBIN, queue_limit=0, time_zone="UTC")
    change = convert.policy_change(policy)
    assert change == t.PolicyChange(strategy=t.Strategy.ROUND_ROBIN, queue_limit=0, time_zone="UTC")


def test_policy_change_takes_every_field() -> None:
    policy = convert.shop_policy(t.Policy(priority_crowds=("vip",), queue_wait_limit_ms=5))
    change = convert.policy_change(policy)
    assert msgspec.structs.asdict(change) == msgspec.structs.asdict(
        t.Policy(priority_crowds=("vip",), queue_wait_limit_ms=5)
    )


@pytest.mark.parametrize(
    ("policy", "crowds"),
    [
        pytest.param(pb.ShopPolicy(), None, id="absent-keeps"),
        pytest.param(pb.ShopPolicy(set_priority_crowds=True), (), id="flag-clears"),
        pytest.param(
            pb.ShopPolicy(priority_crowds=["vip"], set_priority_crowds=True), ("vip",), id="flag"
        ),
        pytest.param(pb.ShopPolicy(priority_crowds=["vip"]), ("vip",), id="non-empty-sets"),
    ],
)
def test_priority_crowds(policy: pb.ShopPolicy, crowds: tuple[str, ...] | None) -> None:
    assert convert.policy_change(policy).priority_crowds == crowds


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("strategy", 0, id="strategy-unspecified"),
        pytest.param("strategy", 9, id="strategy-unknown"),
        pytest.param("queue_order", 0, id="queue-order-unspecified"),
        pytest.param("on_queue_full", 3, id="on-queue-full-unknown"),
    ],
)
def test_policy_enum_out_of_range(field: str, value: int) -> None:
    policy = pb.ShopPolicy(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as info:
        convert.policy_change(policy)
    assert info.value.field == f"policy.{field}"
    assert str(value) in info.value.message


def test_register_agent_defaults_unspecified_role_and_status() -> None:
    command = convert.register_agent(pb.RegisterAgentRequest(shop_id="s", agent_id="a"), AT)
    assert (command.role, command.status, command.at) == (t.Role.SUB, t.Status.OFFLINE, AT)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        pytest.param(pb.RegisterAgentRequest(role=3), "role", id="role"),
        pytest.param(pb.RegisterAgentRequest(status=5), "status", id="status"),
    ],
)
def test_register_agent_unknown_enum(request_: pb.RegisterAgentRequest, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        convert.register_agent(request_, AT)
    assert info.value.field == field


def test_set_status_refuses_unspecified() -> None:
    with pytest.raises(InvalidArgument) as info:
        convert.set_status(pb.SetStatusRequest(shop_id="s", agent_id="a"), AT)
    assert info.value.field == "status"
    assert "ONLINE" in info.value.message


def test_list_queue_sort() -> None:
    assert convert.list_queue(pb.ListQueueRequest(), AT).sort is t.QueueSort.QUEUE_ORDER
    longest = pb.ListQueueRequest(sort=pb.QUEUE_SORT_LONGEST_WAIT)
    assert convert.list_queue(longest, AT).sort is t.QueueSort.LONGEST_WAIT
    with pytest.raises(InvalidArgument) as info:
        convert.list_queue(pb.ListQueueRequest(sort=7), AT)
    assert info.value.field == "sort"


def test_route_request() -> None:
    request = pb.RouteRequest(
        shop_id="s",
        buyer_id="b",
        request_id="r",
        addressed_agent_id="a",
        crowds=["vip", "member"],
        group="presale",
        channel="item_page",
        from_team_member=True,
    )
    assert convert.route(request, AT) == t.Route(
        at=AT,
        shop_id="s",
        buyer_id="b",
        request_id="r",
        addressed_agent_id="a",
        crowds=("vip", "member"),
        group="presale",
        channel="item_page",
        from_team_member=True,
    )


def test_decision_without_state_is_unspecified() -> None:
    result = t.Decision(
        outcome=t.Outcome.TEAM_DELIVERY, reason=t.Reason.TEAM_MESSAGE, buyer_id="b", agent_id="a"
    )
    message = convert.decision(result)
    assert message.state == pb.SESSION_STATE_UNSPECIFIED
    assert (message.outcome, message.reason) == (pb.OUTCOME_TEAM_DELIVERY, pb.REASON_TEAM_MESSAGE)
    assert (message.agent_id, message.buyer_id) == ("a", "b")


def test_route_request_without_crowds() -> None:
    command = convert.route(pb.RouteRequest(shop_id="s", buyer_id="b", request_id="r"), AT)
    assert command == t.Route(at=AT, shop_id="s", buyer_id="b", request_id="r")
    assert command.crowds == () and type(command.crowds) is tuple


def test_decision_every_field_and_every_default() -> None:
    """Only the fields that differ from their default are set (proto3 leaves defaults out
    of the bytes): both kinds of decision give what the full constructor gives."""
    full = t.Decision(
        outcome=t.Outcome.QUEUED, reason=t.Reason.STRATEGY, buyer_id="b", agent_id="a",
        session_id="s1", queue_position=7, state=t.State.QUEUED, priority_notice=True,
        notice=t.PriorityNotice.SKIPPED_QUEUE,
    )  # fmt: skip
    bare = t.Decision(outcome=t.Outcome.LEFT_MESSAGE, reason=t.Reason.QUEUE_FULL, buyer_id="b")
    for result in (full, bare):
        expected = pb.Decision(
            outcome=int(result.outcome), reason=int(result.reason), agent_id=result.agent_id,
            session_id=result.session_id, queue_position=result.queue_position,
            state=int(result.state or 0), priority_notice=result.priority_notice,
            buyer_id=result.buyer_id, notice=int(result.notice),
        )  # fmt: skip
        assert convert.decision(result) == expected
        assert convert.decision(result).SerializeToString() == expected.SerializeToString()
        batch = pb.RouteBatchReply()
        convert.set_decision(batch.results.add().decision, result)
        assert batch.results[0].decision == expected
        # RouteBatch's reply writes the same fields out in its loop
        reply = route_batch_reply([result, InvalidArgument("channel is bad", "channel")])
        assert reply.results[0].decision == expected
        assert reply.results[0].decision.SerializeToString() == expected.SerializeToString()
        assert reply.results[1].error.field == "channel"
    assert convert.decision(full).queue_position == 7
    assert convert.decision(full).notice == pb.PRIORITY_NOTICE_SKIPPED_QUEUE


def test_session_view() -> None:
    view = t.SessionView(
        session_id="s1",
        buyer_id="b",
        state=t.State.ACTIVE,
        agent_id="a",
        group="g",
        channel="c",
        priority=True,
        queue_position=0,
        created_at=AT,
        first_reply_at=AT + 5,
        reason=t.Reason.STRATEGY,
    )
    message = convert.session(view)
    assert (message.created_at_ms, message.first_reply_at_ms) == (AT, AT + 5)
    assert (message.state, message.reason) == (pb.SESSION_STATE_ACTIVE, pb.REASON_STRATEGY)


@pytest.mark.parametrize(
    ("core", "proto"),
    [
        pytest.param(t.Status, pb.AgentStatus, id="status"),
        pytest.param(t.Role, pb.AgentRole, id="role"),
        pytest.param(t.Strategy, pb.Strategy, id="strategy"),
        pytest.param(t.QueueOrder, pb.QueueOrder, id="queue-order"),
        pytest.param(t.OnQueueFull, pb.OnQueueFull, id="on-queue-full"),
        pytest.param(t.Outcome, pb.Outcome, id="outcome"),
        pytest.param(t.Reason, pb.Reason, id="reason"),
        pytest.param(t.State, pb.SessionState, id="state"),
        pytest.param(t.QueueSort, pb.QueueSort, id="queue-sort"),
    ],
)
def test_core_enums_carry_the_proto_values(core: type, proto: object) -> None:
    """Conversion is by value, so each core member must be the proto member of that value."""
    names = {value: name for name, value in proto.items()}  # type: ignore[attr-defined]
    for member in core:  # type: ignore[attr-defined]
        # Only QueueSort has a core member 0: QUEUE_SORT_UNSPECIFIED is "queue order".
        suffix = "_UNSPECIFIED" if member.value == 0 else f"_{member.name}"
        assert names[member.value].endswith(suffix), member

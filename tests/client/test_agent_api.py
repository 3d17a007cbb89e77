"""Issue 15 through the SDK and a real server on a loopback port: the notice a priority
buyer gets, agent registration and update, the agent's list, stars and recent contacts,
and bad input answered with the right code."""

from __future__ import annotations

import asyncio
import itertools

import grpc
import pytest

from fenliu.client import (
    AgentSessions,
    AlreadyExists,
    AsyncClient,
    Client,
    FailedPrecondition,
    InvalidArgument,
    MessageFilter,
    NotFound,
    Outcome,
    PriorityNotice,
    Reason,
    Role,
    SessionSort,
    SessionState,
    Status,
)
from fenliu.client._pb import fenliu_pb2 as pb, fenliu_pb2_grpc as pb_grpc

_shops = itertools.count()


def new_shop(fenliu: Client, *agents: tuple[str, int]) -> str:
    shop = f"api15-{next(_shops)}"
    fenliu.set_shop_policy(shop)
    for agent, max_concurrent in agents:
        fenliu.register_agent(shop, agent, max_concurrent=max_concurrent, status=Status.ONLINE)
    return shop


# ---------------------------------------------------------------- notices


def test_priority_notice_reaches_the_sdk_with_its_wording(fenliu: Client) -> None:
    shop = new_shop(fenliu, ("a1", 5))
    policy = fenliu.set_shop_policy(shop, priority_crowds=["vip", "member"], member_crowd="member")
    assert policy.member_crowd == "member"
    member = fenliu.route(shop, "m1", crowds=["member"], channel="item_page")
    assert (member.notice, member.priority_notice) == (PriorityNotice.MEMBER_SKIPPED_QUEUE, True)
    assert member.notice.text == "会员专属客服: 已跳过排队直连人工"
    box = fenliu.route(shop, "v1", crowds=["vip"], channel="message_box")
    assert (box.reason, box.notice, box.priority_notice) == (
        Reason.PRIORITY_CROWD,
        PriorityNotice.NONE,
        False,
    )


def test_a_client_reading_only_the_old_bool_still_sees_the_notice(target: str) -> None:
    with Client(target) as fenliu:
        shop = new_shop(fenliu, ("a1", 5))
        fenliu.set_shop_policy(shop, priority_crowds=["vip"], queue_limit=0)
    with grpc.insecure_channel(target) as channel:
        routing = pb_grpc.RoutingStub(channel)
        request = pb.RouteRequest(
            shop_id=shop, buyer_id="v1", request_id="r1", crowds=["vip"], channel="shop_home"
        )
        decision = routing.Route(request)
    assert decision.priority_notice is True
    assert decision.notice == pb.PRIORITY_NOTICE_ARRANGED


def test_group_crowds_round_trip_and_route_a_crowd_within_its_group(fenliu: Client) -> None:
    shop = new_shop(fenliu, ("a0", 5))
    fenliu.register_agent(shop, "g1", groups=["desk"], max_concurrent=5, status=Status.ONLINE)
    policy = fenliu.set_shop_policy(shop, group_crowds={"desk": ["gold", "platinum"]})
    assert policy.group_crowds == {"desk": ("gold", "platinum")}
    assert fenliu.get_shop_policy(shop).group_crowds == {"desk": ("gold", "platinum")}
    decision = fenliu.route(shop, "b1", crowds=["platinum"])
    assert (decision.agent_id, decision.reason) == ("g1", Reason.CROWD_GROUP)
    assert fenliu.set_shop_policy(shop, group_crowds={}).group_crowds == {}


# ---------------------------------------------------------------- register and update


def test_registering_an_existing_agent_is_already_exists_unless_replace(fenliu: Client) -> None:
    shop = new_shop(fenliu)
    fenliu.register_agent(shop, "m", role=Role.MAIN, max_concurrent=2, groups=["pre"])
    with pytest.raises(AlreadyExists) as info:
        fenliu.register_agent(shop, "m", max_concurrent=3)
    assert info.value.field == "agent_id"
    assert info.value.code is grpc.StatusCode.ALREADY_EXISTS
    assert fenliu.list_team(shop)[0].role is Role.MAIN  # nothing changed
    replaced = fenliu.register_agent(shop, "m", max_concurrent=3, replace=True)
    assert (replaced.role, replaced.groups, replaced.max_concurrent) == (Role.SUB, (), 3)


def test_update_agent_changes_only_the_fields_it_names(fenliu: Client) -> None:
    shop = new_shop(fenliu)
    fenliu.register_agent(shop, "m", role=Role.MAIN, max_concurrent=2, groups=["pre"])
    agent = fenliu.update_agent(shop, "m", groups=["pre", "after"])
    assert (agent.role, agent.groups, agent.max_concurrent) == (Role.MAIN, ("pre", "after"), 2)
    agent = fenliu.update_agent(shop, "m", max_concurrent=3)
    assert (agent.role, agent.groups, agent.max_concurrent) == (Role.MAIN, ("pre", "after"), 3)
    assert fenliu.update_agent(shop, "m", groups=[]).groups == ()
    with pytest.raises(NotFound):
        fenliu.update_agent(shop, "ghost", max_concurrent=1)


def test_the_async_client_updates_an_agent_too(target: str) -> None:
    async def scenario() -> tuple[int, Role]:
        async with AsyncClient(target) as fenliu:
            shop = f"api15-async-{next(_shops)}"
            await fenliu.register_agent(shop, "m", role=Role.MAIN, max_concurrent=1)
            agent = await fenliu.update_agent(shop, "m", max_concurrent=4)
            return agent.max_concurrent, agent.role

    assert asyncio.run(scenario()) == (4, Role.MAIN)


# ---------------------------------------------------------------- the agent's list


def test_agent_list_sorts_filters_and_has_an_ended_part(fenliu: Client) -> None:
    shop = new_shop(fenliu, ("a1", 5))
    first = fenliu.route(shop, "b1", channel="item_page")
    second = fenliu.route(shop, "b2", channel="message_box")
    fenliu.reply(shop, "a1", first.session_id)
    listing = fenliu.list_agent_sessions(shop, "a1", sort=SessionSort.LONGEST_WAIT)
    assert isinstance(listing, AgentSessions)
    assert [s.buyer_id for s in listing] == ["b2", "b1"]  # waiting first, then answered
    assert listing.sessions[0].waiting_since_ms > 0 and listing.sessions[1].waiting_since_ms == 0
    assert listing.sessions[0].assigned_at_ms > 0
    waiting = fenliu.list_agent_sessions(shop, "a1", message_state=MessageFilter.WAITING)
    assert [s.buyer_id for s in waiting] == ["b2"]
    boxed = fenliu.list_agent_sessions(shop, "a1", channel="message_box")
    assert [s.buyer_id for s in boxed] == ["b2"]
    fenliu.end_sessions(shop, [second.session_id])
    listing = fenliu.list_agent_sessions(shop, "a1")
    assert [s.buyer_id for s in listing.sessions] == ["b1"]
    assert [(s.buyer_id, s.state) for s in listing.ended] == [("b2", SessionState.ENDED)]
    assert listing.ended[0].ended_at_ms > 0
    ended = fenliu.get_session(shop, second.session_id)
    assert (ended.state, ended.buyer_id) == (SessionState.ENDED, "b2")


def test_stars_and_recent_contacts_over_the_wire(fenliu: Client) -> None:
    shop = new_shop(fenliu, ("a1", 5), ("a2", 5))
    decision = fenliu.route(shop, "b1", addressed_agent_id="a1")
    fenliu.acknowledge(shop, "a1", decision.session_id)
    assert fenliu.star_session(shop, "a1", decision.session_id).starred is True
    fenliu.end_sessions(shop, [decision.session_id])
    (star,) = fenliu.list_starred(shop, "a1")
    assert (star.session_id, star.state) == (decision.session_id, SessionState.ENDED)
    assert [c.buyer_id for c in fenliu.list_recent_contacts(shop, "a1")] == ["b1"]
    assert fenliu.list_recent_contacts(shop, "a2") == ()
    with pytest.raises(FailedPrecondition):
        fenliu.star_session(shop, "a2", decision.session_id)
    fenliu.star_session(shop, "a1", decision.session_id, starred=False)
    assert fenliu.list_starred(shop, "a1") == ()


def test_over_capacity_shows_in_the_team_and_the_list_and_one_call_clears_it(
    fenliu: Client,
) -> None:
    shop = new_shop(fenliu, ("a1", 3))
    ids = [fenliu.route(shop, f"b{i}").session_id for i in range(3)]
    fenliu.update_agent(shop, "a1", max_concurrent=1)
    assert fenliu.list_team(shop)[0].over_capacity is True
    listing = fenliu.list_agent_sessions(shop, "a1")
    assert (listing.load, listing.max_concurrent, listing.over_capacity) == (3, 1, True)
    fenliu.end_sessions(shop, ids[:2])  # batch exit
    assert fenliu.list_team(shop)[0].over_capacity is False
    fenliu.update_agent(shop, "a1", max_concurrent=0)
    assert fenliu.update_agent(shop, "a1", max_concurrent=5).over_capacity is False


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("zone", ["America", "Etc", "Asia", "x" * 300])
def test_a_time_zone_directory_is_invalid_argument_not_internal(fenliu: Client, zone: str) -> None:
    shop = new_shop(fenliu)
    with pytest.raises(InvalidArgument) as info:
        fenliu.set_shop_policy(shop, time_zone=zone)
    assert info.value.field == "policy.time_zone"
    assert fenliu.get_shop_policy(shop).time_zone == "Asia/Shanghai"


def test_session_ids_are_parsed_strictly_over_the_wire(fenliu: Client) -> None:
    shop = new_shop(fenliu, ("a1", 5))
    assert fenliu.route(shop, "b1").session_id == "s1"
    with pytest.raises(NotFound):
        fenliu.end_sessions(shop, ["s01"])
    assert fenliu.get_session(shop, "s1").state is SessionState.ASSIGNED


def test_transfer_with_no_target_on_an_unknown_session_is_invalid_argument(
    fenliu: Client,
) -> None:
    shop = new_shop(fenliu, ("a1", 5))
    with pytest.raises(InvalidArgument) as info:
        fenliu.transfer(shop, "s404")
    assert info.value.field == "to_agent_id"


def test_team_flag_from_a_non_agent_is_invalid_argument(fenliu: Client) -> None:
    shop = new_shop(fenliu, ("a1", 5))
    with pytest.raises(InvalidArgument) as info:
        fenliu.route(shop, "buyer-9", from_team_member=True, addressed_agent_id="a1")
    assert info.value.field == "from_team_member"
    assert fenliu.route(shop, "a1", from_team_member=True, addressed_agent_id="a1").outcome is (
        Outcome.TEAM_DELIVERY
    )

"""Bad input of every kind in SPEC §6: the right code, the field named, nothing changed."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2 as ed
from grpc_status import rpc_status

from fenliu.client._pb import fenliu_pb2 as pb
from fenliu.server.config import Config
from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.shard import Shard
from fenliu.server.rpc import status
from fenliu.server.rpc.app import ServerThread

from .conftest import OFFLINE, Api, field_of, rpc_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclasses.dataclass
class World:
    """A shop at its limits: a1 and a2 full, b3 queued, the queue full and set to REJECT."""

    api: Api
    shop: str
    sessions: dict[str, str]  # buyer -> session id

    def route(self, **fields: Any) -> tuple[Callable[..., Any], pb.RouteRequest]:
        values = {"shop_id": self.shop, "buyer_id": "b9", "request_id": "r-9", **fields}
        return self.api.routing.Route, pb.RouteRequest(**values)

    def register(self, **fields: Any) -> tuple[Callable[..., Any], pb.RegisterAgentRequest]:
        values = {"shop_id": self.shop, "agent_id": "a9", "max_concurrent": 1, **fields}
        return self.api.presence.RegisterAgent, pb.RegisterAgentRequest(**values)

    def policy(self, **fields: Any) -> tuple[Callable[..., Any], pb.SetShopPolicyRequest]:
        request = pb.SetShopPolicyRequest(shop_id=self.shop, policy=pb.ShopPolicy(**fields))
        return self.api.presence.SetShopPolicy, request

    def status(self, agent_id: str, value: int) -> tuple[Callable[..., Any], pb.SetStatusRequest]:
        request = pb.SetStatusRequest(shop_id=self.shop, agent_id=agent_id, status=value)
        return self.api.presence.SetStatus, request

    def transfer(self, **fields: Any) -> tuple[Callable[..., Any], pb.TransferRequest]:
        request = pb.TransferRequest(shop_id=self.shop, session_id=self.sessions["b1"], **fields)
        return self.api.routing.Transfer, request


@pytest.fixture
def world(api: Api, shop: str) -> World:
    api.policy(shop, queue_limit=1, on_queue_full=pb.ON_QUEUE_FULL_REJECT)
    api.agent(shop, "a1", max=1)
    api.agent(shop, "a2", max=1)
    api.agent(shop, "off", status=OFFLINE, max=3)
    sessions = {buyer: api.route(shop, buyer).session_id for buyer in ("b1", "b2", "b3")}
    queued = api.queue.GetPosition(pb.BuyerRequest(shop_id=shop, buyer_id="b3"))
    assert queued.state == pb.SESSION_STATE_QUEUED
    return World(api, shop, sessions)


def _second_main(world: World) -> tuple[Callable[..., Any], Any]:
    world.api.agent(world.shop, "boss", role=pb.AGENT_ROLE_MAIN)
    return world.register(agent_id="boss2", role=pb.AGENT_ROLE_MAIN)


Case = Callable[[World], tuple[Callable[..., Any], Any]]
CASES = [
    # ------------------------------------------------ INVALID_ARGUMENT: malformed
    pytest.param(lambda w: w.route(buyer_id="b 1"), INVALID, "buyer_id", id="id-bad-characters"),
    pytest.param(lambda w: w.route(buyer_id="买家"), INVALID, "buyer_id", id="id-not-ascii"),
    pytest.param(lambda w: w.register(agent_id="a" * 129), INVALID, "agent_id", id="id-too-long"),
    pytest.param(lambda w: w.route(request_id=""), INVALID, "request_id", id="id-empty"),
    pytest.param(lambda w: w.route(shop_id=""), INVALID, "shop_id", id="shop-id-empty"),
    pytest.param(
        lambda w: w.route(crowds=[f"c{i}" for i in range(11)]), INVALID, "crowds", id="11-crowds"
    ),
    pytest.param(lambda w: w.route(crowds=["ok", "n/a"]), INVALID, "crowds[1]", id="crowd-bad"),
    pytest.param(
        lambda w: w.policy(priority_crowds=[f"c{i}" for i in range(11)], set_priority_crowds=True),
        INVALID,
        "policy.priority_crowds",
        id="11-priority-crowds",
    ),
    pytest.param(
        lambda w: w.register(groups=[f"g{i}" for i in range(33)]), INVALID, "groups", id="33-groups"
    ),
    pytest.param(
        lambda w: w.register(max_concurrent=10_001),
        INVALID,
        "max_concurrent",
        id="max-concurrent-10001",
    ),
    pytest.param(
        lambda w: (
            w.api.routing.RouteBatch,
            pb.RouteBatchRequest(
                requests=[
                    pb.RouteRequest(shop_id=w.shop, buyer_id=f"x{i}", request_id=f"x{i}")
                    for i in range(1001)
                ]
            ),
        ),
        INVALID,
        "requests",
        id="route-batch-1001",
    ),
    pytest.param(
        lambda w: (
            w.api.routing.EndSessions,
            pb.EndSessionsRequest(shop_id=w.shop, session_ids=[w.sessions["b1"]] * 1001),
        ),
        INVALID,
        "session_ids",
        id="end-sessions-1001",
    ),
    pytest.param(
        lambda w: w.policy(time_zone="Mars/Olympus"), INVALID, "policy.time_zone", id="time-zone"
    ),
    pytest.param(
        lambda w: w.policy(queue_limit=10**7), INVALID, "policy.queue_limit", id="queue-limit"
    ),
    pytest.param(
        lambda w: w.route(from_team_member=True),
        INVALID,
        "addressed_agent_id",
        id="team-message-to-nobody",
    ),
    pytest.param(
        lambda w: (
            w.api.routing.Transfer,
            pb.TransferRequest(shop_id=w.shop, session_id=w.sessions["b1"]),
        ),
        INVALID,
        "to_agent_id",
        id="transfer-to-nowhere",
    ),
    pytest.param(
        lambda w: (w.api.queue.ListQueue, pb.ListQueueRequest(shop_id=w.shop, limit=1001)),
        INVALID,
        "limit",
        id="list-limit-1001",
    ),
    # ------------------------------------------------ INVALID_ARGUMENT: enums (adapter)
    pytest.param(lambda w: w.status("a1", 0), INVALID, "status", id="set-status-unspecified"),
    pytest.param(lambda w: w.status("a1", 42), INVALID, "status", id="set-status-unknown"),
    pytest.param(lambda w: w.register(role=7), INVALID, "role", id="role-unknown"),
    pytest.param(lambda w: w.register(status=9), INVALID, "status", id="new-status-unknown"),
    pytest.param(lambda w: w.policy(strategy=0), INVALID, "policy.strategy", id="strategy-0"),
    pytest.param(
        lambda w: w.policy(queue_limit=5, on_queue_full=3),
        INVALID,
        "policy.on_queue_full",
        id="on-queue-full-unknown",
    ),
    pytest.param(
        lambda w: (w.api.queue.ListQueue, pb.ListQueueRequest(shop_id=w.shop, sort=5)),
        INVALID,
        "sort",
        id="sort-unknown",
    ),
    # ------------------------------------------------ NOT_FOUND
    pytest.param(lambda w: w.route(shop_id="no-such-shop"), NOT_FOUND, "shop_id", id="shop"),
    pytest.param(lambda w: w.status("a404", 1), NOT_FOUND, "agent_id", id="agent"),
    pytest.param(
        lambda w: (
            w.api.presence.RemoveAgent,
            pb.RemoveAgentRequest(shop_id=w.shop, agent_id="a404"),
        ),
        NOT_FOUND,
        "agent_id",
        id="remove-agent",
    ),
    pytest.param(
        lambda w: w.route(addressed_agent_id="a404"),
        NOT_FOUND,
        "addressed_agent_id",
        id="addressed-agent",
    ),
    pytest.param(
        lambda w: (
            w.api.routing.GetSession,
            pb.GetSessionRequest(shop_id=w.shop, session_id="s404"),
        ),
        NOT_FOUND,
        "session_id",
        id="session",
    ),
    pytest.param(
        lambda w: (
            w.api.routing.Acknowledge,
            pb.SessionRequest(shop_id=w.shop, agent_id="a1", session_id="s404"),
        ),
        NOT_FOUND,
        "session_id",
        id="acknowledge-session",
    ),
    pytest.param(
        lambda w: (
            w.api.routing.EndSessions,
            pb.EndSessionsRequest(shop_id=w.shop, session_ids=[w.sessions["b1"], "s404"]),
        ),
        NOT_FOUND,
        "session_ids[1]",
        id="end-one-unknown-of-two",
    ),
    pytest.param(
        lambda w: (w.api.queue.GetPosition, pb.BuyerRequest(shop_id=w.shop, buyer_id="b404")),
        NOT_FOUND,
        "buyer_id",
        id="buyer-position",
    ),
    # ------------------------------------------------ FAILED_PRECONDITION
    pytest.param(
        lambda w: (w.api.queue.Pick, pb.PickRequest(shop_id=w.shop, agent_id="off")),
        PRECONDITION,
        "agent_id",
        id="pick-by-offline-agent",
    ),
    pytest.param(
        lambda w: (w.api.queue.Pick, pb.PickRequest(shop_id=w.shop, agent_id="a1")),
        PRECONDITION,
        "agent_id",
        id="pick-by-full-agent",
    ),
    pytest.param(
        lambda w: w.transfer(to_agent_id="a2"), PRECONDITION, "to_agent_id", id="transfer-to-full"
    ),
    pytest.param(
        lambda w: w.transfer(to_agent_id="off", force=True),
        PRECONDITION,
        "to_agent_id",
        id="transfer-to-offline-forced",
    ),
    pytest.param(
        lambda w: (w.api.queue.LeaveQueue, pb.BuyerRequest(shop_id=w.shop, buyer_id="b1")),
        PRECONDITION,
        "buyer_id",
        id="leave-queue-when-assigned",
    ),
    pytest.param(
        lambda w: (
            w.api.routing.Acknowledge,
            pb.SessionRequest(shop_id=w.shop, agent_id="a2", session_id=w.sessions["b1"]),
        ),
        PRECONDITION,
        "session_id",
        id="acknowledge-by-other-agent",
    ),
    pytest.param(
        _second_main,
        PRECONDITION,
        "role",
        id="second-main",
    ),
    # ------------------------------------------------ RESOURCE_EXHAUSTED
    pytest.param(lambda w: w.route(), EXHAUSTED, "shop_id", id="queue-full-reject"),
]


# The ErrorInfo reason and subject of each case that is not INVALID_ARGUMENT ({shop} is the
# world's shop, {b1} the session id of buyer b1). INVALID_ARGUMENT is INVALID_FIELD, no subject.
SUBJECTS: dict[str, tuple[str, str]] = {
    "shop": ("SHOP_NOT_FOUND", "shops/no-such-shop"),
    "agent": ("AGENT_NOT_FOUND", "shops/{shop}/agents/a404"),
    "remove-agent": ("AGENT_NOT_FOUND", "shops/{shop}/agents/a404"),
    "addressed-agent": ("AGENT_NOT_FOUND", "shops/{shop}/agents/a404"),
    "session": ("SESSION_NOT_FOUND", "shops/{shop}/sessions/s404"),
    "acknowledge-session": ("SESSION_NOT_FOUND", "shops/{shop}/sessions/s404"),
    "end-one-unknown-of-two": ("SESSION_NOT_FOUND", "shops/{shop}/sessions/s404"),
    "buyer-position": ("NO_OPEN_SESSION", "shops/{shop}/buyers/b404"),
    "pick-by-offline-agent": ("AGENT_OFFLINE", "shops/{shop}/agents/off"),
    "pick-by-full-agent": ("AGENT_FULL", "shops/{shop}/agents/a1"),
    "transfer-to-full": ("AGENT_FULL", "shops/{shop}/agents/a2"),
    "transfer-to-offline-forced": ("AGENT_OFFLINE", "shops/{shop}/agents/off"),
    "leave-queue-when-assigned": ("SESSION_NOT_QUEUED", "shops/{shop}/sessions/{b1}"),
    "acknowledge-by-other-agent": ("SESSION_NOT_HELD", "shops/{shop}/sessions/{b1}"),
    "second-main": ("MAIN_AGENT_TAKEN", "shops/{shop}/agents/boss"),
    "queue-full-reject": ("QUEUE_FULL", "shops/{shop}"),
}


@pytest.mark.parametrize(("case", "code", "field"), CASES)
def test_bad_input(
    world: World, case: Case, code: grpc.StatusCode, field: str, request: pytest.FixtureRequest
) -> None:
    call, message = case(world)
    before = world.api.state(world.shop)
    error = rpc_error(call, message)
    assert error.code() == code  # type: ignore[attr-defined]
    assert field_of(error) == field
    details = error.details()  # type: ignore[attr-defined]
    assert (field if code is not EXHAUSTED else "queue_limit") in details
    assert world.api.state(world.shop) == before
    if code is INVALID:
        reason, subject = "INVALID_FIELD", ""
    else:
        reason, subject = SUBJECTS[request.node.callspec.id]
        subject = subject.format(shop=world.shop, b1=world.sessions["b1"])
    _check_rich_status(error, code, field, reason, subject)


def _check_rich_status(
    error: grpc.RpcError, code: grpc.StatusCode, field: str, reason: str, subject: str
) -> None:
    """ErrorInfo, then the one detail of the code, all read as grpc_status reads them."""
    rich = rpc_status.from_call(error)  # type: ignore[arg-type]  # raises if code/message differ
    assert rich is not None
    message = rich.message
    info, detail = ed.ErrorInfo(), _DETAIL[code]()
    assert len(rich.details) == 2
    assert rich.details[0].Unpack(info) and rich.details[1].Unpack(detail)
    metadata = {"field": field, "subject": subject} if subject else {"field": field}
    assert (info.reason, info.domain, dict(info.metadata)) == (reason, "fenliu", metadata)
    if isinstance(detail, ed.BadRequest):
        [violation] = detail.field_violations
        assert (violation.field, violation.description) == (field, message)
    elif isinstance(detail, ed.ResourceInfo):
        kind = subject.split("/")[2][:-1] if subject.count("/") == 3 else "shop"
        assert (detail.resource_type, detail.resource_name, detail.description) == (
            kind,
            subject,
            message,
        )
    elif isinstance(detail, ed.PreconditionFailure):
        [violation] = detail.violations
        assert (violation.type, violation.subject, violation.description) == (
            reason,
            subject,
            message,
        )
    else:
        assert isinstance(detail, ed.QuotaFailure)
        [violation] = detail.violations
        assert (violation.subject, violation.description) == (subject, message)


_DETAIL: dict[grpc.StatusCode, type[Message]] = {
    INVALID: ed.BadRequest,
    NOT_FOUND: ed.ResourceInfo,
    PRECONDITION: ed.PreconditionFailure,
    EXHAUSTED: ed.QuotaFailure,
}


def test_every_refusal_case_has_its_reason_listed() -> None:
    ids = {param.id for param in CASES if param.values[1] is not INVALID}
    assert ids == set(SUBJECTS)


def test_batch_items_carry_the_same_details(world: World) -> None:
    good = pb.RouteRequest(shop_id=world.shop, buyer_id="b2", request_id="again")
    bad = pb.RouteRequest(shop_id=world.shop, buyer_id="b 2", request_id="bad")
    gone = pb.RouteRequest(
        shop_id=world.shop, buyer_id="b5", request_id="gone", addressed_agent_id="a404"
    )
    reply = world.api.routing.RouteBatch(pb.RouteBatchRequest(requests=[good, bad, gone]))
    ok, invalid, missing = reply.results
    assert ok.HasField("decision")
    info, bad_request = ed.ErrorInfo(), ed.BadRequest()
    assert invalid.error.details[0].Unpack(info) and invalid.error.details[1].Unpack(bad_request)
    assert (info.reason, bad_request.field_violations[0].field) == ("INVALID_FIELD", "buyer_id")
    resource = ed.ResourceInfo()
    assert missing.error.details[0].Unpack(info) and missing.error.details[1].Unpack(resource)
    assert (info.reason, resource.resource_name) == (
        "AGENT_NOT_FOUND",
        f"shops/{world.shop}/agents/a404",
    )


def test_a_refused_register_does_not_create_the_shop(api: Api, shop: str) -> None:
    error = rpc_error(
        api.presence.RegisterAgent,
        pb.RegisterAgentRequest(shop_id=shop, agent_id="a1", max_concurrent=10_001),
    )
    assert field_of(error) == "max_concurrent"
    error = rpc_error(api.presence.ListTeam, pb.ListTeamRequest(shop_id=shop))
    assert (error.code(), field_of(error)) == (NOT_FOUND, "shop_id")  # type: ignore[attr-defined]


def test_a_refused_route_does_not_use_up_its_request_id(world: World) -> None:
    """A retry of a request that failed is routed afresh, not answered with the error."""
    call, request = world.route(buyer_id="b 9", request_id="r-once")
    rpc_error(call, request)
    world.api.agent(world.shop, "a3", max=1)  # room for the queued b3 first, then for b9
    world.api.agent(world.shop, "a4", max=1)
    decision = world.api.route(world.shop, "b9", request_id="r-once")
    assert (decision.buyer_id, decision.outcome) == ("b9", pb.OUTCOME_ASSIGNED)


# ---------------------------------------------------------------- unexpected failures


class _FaultyShard(Shard):
    """Fails, as a bug would, half-way through any command for buyer "boom": after it
    has changed something (the shard's clock)."""

    __slots__ = ()  # the layout of Shard: __class__ can be assigned, compiled too

    def apply(self, command: Any) -> Any:
        if getattr(command, "buyer_id", "") == "boom":
            self.now = command.at
            raise RuntimeError("secret internals")
        return super().apply(command)

    def apply_route(self, fields: tuple[Any, ...], at: int) -> Any:  # unary Route's way in
        if fields[1] == "boom":
            self.now = at
            raise RuntimeError("secret internals")
        return super().apply_route(fields, at)


class _Faulty(Dispatcher):
    """Every shard faulty, also those recovered or restored from storage."""

    def __init__(self, shards: int) -> None:
        super().__init__(shards)
        self.shards = [_FaultyShard(i) for i in range(shards)]

    def install(self, index: int, shard: Shard) -> None:
        shard.__class__ = _FaultyShard
        super().install(index, shard)


@pytest.fixture
def faulty_api(tmp_path: Path) -> Iterator[Api]:
    """A server with files, so a failed shard is restored from them."""
    config = Config(shards=2, data_dir=str(tmp_path))
    with ServerThread(config, dispatcher=_Faulty(shards=2)) as server:
        with grpc.insecure_channel(server.target) as channel:
            yield Api(channel)


def test_unexpected_error_is_internal_without_internals_and_the_shard_is_restored(
    faulty_api: Api, shop: str, caplog: pytest.LogCaptureFixture
) -> None:
    faulty_api.agent(shop, "a1")
    with caplog.at_level(logging.ERROR, logger=status.__name__):
        error = rpc_error(faulty_api.routing.Route, _request(shop, "boom"))
    assert error.code() == grpc.StatusCode.INTERNAL  # type: ignore[attr-defined]
    assert error.details() == status.INTERNAL_MESSAGE  # type: ignore[attr-defined]
    assert field_of(error) is None
    assert "secret internals" in caplog.text  # logged with its traceback, never sent
    # And the shard, restored to its durable state, goes on serving
    assert faulty_api.route(shop, "b1").agent_id == "a1"


def test_unexpected_error_in_a_batch_fails_only_its_item(
    faulty_api: Api, shop: str, caplog: pytest.LogCaptureFixture
) -> None:
    faulty_api.agent(shop, "a1")
    batch = pb.RouteBatchRequest(requests=[_request(shop, "boom"), _request(shop, "b1")])
    with caplog.at_level(logging.CRITICAL):
        boom, fine = faulty_api.routing.RouteBatch(batch).results
    assert (boom.error.code, boom.error.message, boom.error.field) == (
        grpc.StatusCode.INTERNAL.value[0],
        status.INTERNAL_MESSAGE,
        "",
    )
    assert fine.decision.agent_id == "a1"


def test_unexpected_error_in_a_coalesced_stream_message_undoes_its_shards_items_before_it(
    faulty_api: Api, shop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One message, one shard, journaled: the item before the failure is undone with the
    shard (UNAVAILABLE, retry), the failed one is INTERNAL, the one after it is routed by
    the restored shard (its waiter a new one, not the failed one it would have shared)."""
    faulty_api.agent(shop, "a1")
    message = pb.RouteStreamRequest(
        request=_request(shop, "b0"),
        more=[_request(shop, "boom"), _request(shop, "b1")],
        coalesce=True,
    )
    with caplog.at_level(logging.CRITICAL):
        replies = list(faulty_api.routing.RouteStream(iter([message]), timeout=10))
    results = [r for reply in replies for r in (reply.result, *reply.more)]
    codes = [r.error.code if r.HasField("error") else r.decision.agent_id for r in results]
    internal = grpc.StatusCode.INTERNAL.value[0]
    unavailable = grpc.StatusCode.UNAVAILABLE.value[0]
    assert codes == [unavailable, internal, "a1"]


@pytest.fixture
def unstored_faulty() -> Iterator[tuple[Api, str, str]]:
    """A server without storage, faulty as ``_Faulty``: its API, a shop of shard 0 (the
    one to break) and one of shard 1, each with agent a1 online."""
    with ServerThread(Config(shards=2), dispatcher=_Faulty(shards=2)) as server:
        with grpc.insecure_channel(server.target) as channel:
            api = Api(channel)
            shops = {server.dispatcher.index_of(f"f{n}"): f"f{n}" for n in range(20)}
            broken, other = shops[0], shops[1]
            api.agent(broken, "a1")
            api.agent(other, "a1")
            yield api, broken, other


def test_without_storage_a_failed_shard_is_fenced_not_served_half_applied(
    unstored_faulty: tuple[Api, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    api, broken, other = unstored_faulty
    with caplog.at_level(logging.CRITICAL):
        error = rpc_error(api.routing.Route, _request(broken, "boom"))
    assert error.code() == grpc.StatusCode.INTERNAL  # type: ignore[attr-defined]
    # Nothing durable to restore it from: it refuses rather than serve a
    # half-applied state; the other shard serves on.
    error = rpc_error(api.routing.Route, _request(broken, "b1"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert api.route(other, "b1").agent_id == "a1"


def test_without_storage_a_batch_item_failing_fences_its_shard_for_the_items_after_it(
    unstored_faulty: tuple[Api, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The batch path without storage (the dispatcher's compiled loop): the items before
    the failure are answered, the failed one is INTERNAL, the later ones of its shard
    UNAVAILABLE (fenced, not half-applied), the other shard's served throughout."""
    api, broken, other = unstored_faulty
    items = [(broken, "b1"), (other, "b2"), (broken, "boom"), (broken, "b3"), (other, "b4"),
             (broken, "b5")]  # fmt: skip
    batch = pb.RouteBatchRequest(requests=[_request(s, b) for s, b in items])
    with caplog.at_level(logging.CRITICAL):
        results = api.routing.RouteBatch(batch).results
    codes = [r.error.code if r.HasField("error") else r.decision.agent_id for r in results]
    internal = grpc.StatusCode.INTERNAL.value[0]
    unavailable = grpc.StatusCode.UNAVAILABLE.value[0]
    assert codes == ["a1", "a1", internal, unavailable, "a1", unavailable]
    assert "it stays fenced" in caplog.text


def _request(shop: str, buyer: str) -> pb.RouteRequest:
    return pb.RouteRequest(shop_id=shop, buyer_id=buyer, request_id=f"req-{buyer}")

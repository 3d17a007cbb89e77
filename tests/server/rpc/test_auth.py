"""Bearer tokens through a real server and the real SDK: who may call, and on which shops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fenliu.client import Client, NotFound, PermissionDenied, Status, Unauthenticated, route_request
from fenliu.client._pb import fenliu_pb2 as pb, fenliu_pb2_grpc as pb_grpc
from fenliu.server.config import Config, Token
from fenliu.server.rpc.app import Server, ServerThread

GATEWAY = Token("gateway", "gateway-secret-1", None)
DESK = Token("desk", "desk-secret-22", frozenset({"shop-a"}))
CONFIG = Config(shards=2, tick_interval_s=3600, grace_s=1, tokens=(GATEWAY, DESK))


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(CONFIG) as server:
        with Client(server.target, token=GATEWAY.secret) as gateway:
            for shop in ("shop-a", "shop-b"):
                gateway.register_agent(shop, "alice", max_concurrent=5, status=Status.ONLINE)
        yield server


def client(server: ServerThread, token: str | None, **kw: Any) -> Client:
    return Client(server.target, token=token, retries=0, **kw)


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param((), id="none"),
        pytest.param((("authorization", "Bearer wrong-secret-9"),), id="wrong"),
        pytest.param((("authorization", f"Basic {GATEWAY.secret}"),), id="not-bearer"),
        pytest.param((("authorization", "Bearer "),), id="empty"),
        pytest.param((("authorization", f"Bearer {GATEWAY.secret}x"),), id="longer"),
    ],
)
def test_no_valid_token_is_unauthenticated(server: ServerThread, metadata: Any) -> None:
    with Client(server.target, metadata=metadata, retries=0) as fenliu:
        with pytest.raises(Unauthenticated):
            fenliu.route("shop-a", "buyer-x")
        with pytest.raises(Unauthenticated):
            fenliu.list_team("shop-a")
    with client(server, GATEWAY.secret) as gateway:
        with pytest.raises(NotFound):  # the refused route made no session
            gateway.get_position("shop-a", "buyer-x")
        assert [a.agent_id for a in gateway.list_team("shop-a")] == ["alice"]


def test_a_token_for_every_shop_may_touch_any(server: ServerThread) -> None:
    with client(server, GATEWAY.secret) as gateway:
        assert gateway.route("shop-b", "buyer-1").agent_id == "alice"
        gateway.register_agent("shop-new", "bob", max_concurrent=1)


def test_a_scoped_token_touches_its_shops_only(server: ServerThread) -> None:
    with client(server, DESK.secret) as desk:
        decision = desk.route("shop-a", "buyer-2")
        assert decision.agent_id == "alice"
        with pytest.raises(PermissionDenied) as info:
            desk.route("shop-b", "buyer-2")
        assert info.value.field == "shop_id"
        assert "shop-b" in info.value.message
        with pytest.raises(PermissionDenied):
            desk.list_team("shop-b")
        with pytest.raises(PermissionDenied):
            desk.end_sessions("shop-b", ["s1"])
    with client(server, GATEWAY.secret) as gateway:  # the refused call changed nothing
        sessions = gateway.list_agent_sessions("shop-b", "alice")
        assert "buyer-2" not in [s.buyer_id for s in sessions]


def test_a_batch_is_refused_whole_if_one_item_is_out_of_scope(server: ServerThread) -> None:
    with client(server, DESK.secret) as desk:
        with pytest.raises(PermissionDenied) as info:
            desk.route_batch(
                [route_request("shop-a", "buyer-3"), route_request("shop-b", "buyer-3")]
            )
        assert info.value.field == "requests[1].shop_id"
    with client(server, GATEWAY.secret) as gateway:
        for shop in ("shop-a", "shop-b"):
            sessions = gateway.list_agent_sessions(shop, "alice")
            assert "buyer-3" not in [s.buyer_id for s in sessions]


def test_echo_needs_a_token_but_no_shop(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        echo = pb_grpc.DiagnosticsStub(channel).Echo
        with pytest.raises(grpc.RpcError) as info:
            echo(pb.EchoMessage(payload=b"x"))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        reply = echo(
            pb.EchoMessage(payload=b"x"), metadata=[("authorization", f"Bearer {DESK.secret}")]
        )
        assert reply.payload == b"x"


def test_health_and_reflection_stay_open(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="fenliu.v1.Routing"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = list(stub.ServerReflectionInfo(iter([request])))
        names = {s.name for s in replies[0].list_services_response.service}
        assert "fenliu.v1.Routing" in names


# A server-streaming service (as the watch streams will be): the guard checks its request.
STREAM = "/test.Watch/Follow"


async def _follow(request: pb.ListTeamRequest, context: Any) -> AsyncIterator[pb.Empty]:
    for _ in range(3):
        yield pb.Empty()


async def _collect(requests: AsyncIterator[pb.ListTeamRequest], context: Any) -> pb.Empty:
    async for _ in requests:
        pass
    return pb.Empty()


async def _stream_calls() -> dict[str, Any]:
    codec: dict[str, Any] = {
        "request_deserializer": pb.ListTeamRequest.FromString,
        "response_serializer": pb.Empty.SerializeToString,
    }
    handler = grpc.method_handlers_generic_handler(
        "test.Watch",
        {
            "Follow": grpc.unary_stream_rpc_method_handler(_follow, **codec),
            "Collect": grpc.stream_unary_rpc_method_handler(_collect, **codec),
        },
    )
    server = Server(Config(host="127.0.0.1", port=0, shards=1, tokens=(GATEWAY, DESK)))
    server.add_generic_rpc_handlers((handler,))
    outcomes: dict[str, Any] = {}
    async with server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        follow = channel.unary_stream(
            STREAM,
            request_serializer=pb.ListTeamRequest.SerializeToString,
            response_deserializer=pb.Empty.FromString,
        )
        for name, shop, token in [
            ("own", "shop-a", DESK.secret),
            ("other", "shop-b", DESK.secret),
            ("none", "shop-a", None),
        ]:
            metadata = [("authorization", f"Bearer {token}")] if token else []
            try:
                replies = [
                    r async for r in follow(pb.ListTeamRequest(shop_id=shop), metadata=metadata)
                ]
                outcomes[name] = len(replies)
            except grpc.aio.AioRpcError as exc:
                outcomes[name] = exc.code()
        collect = channel.stream_unary(
            "/test.Watch/Collect",
            request_serializer=pb.ListTeamRequest.SerializeToString,
            response_deserializer=pb.Empty.FromString,
        )
        requests = [pb.ListTeamRequest(shop_id="shop-a")]
        for name, token in [("collect-scoped", DESK), ("collect-all", GATEWAY)]:
            metadata = [("authorization", f"Bearer {token.secret}")]
            try:
                outcomes[name] = await collect(iter(requests), metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                outcomes[name] = exc.code()
    return outcomes


def test_server_streams_are_guarded_too() -> None:
    assert asyncio.run(_stream_calls()) == {
        "own": 3,
        "other": grpc.StatusCode.PERMISSION_DENIED,
        "none": grpc.StatusCode.UNAUTHENTICATED,
        # A client stream's requests cannot be checked up front: every-shop tokens only.
        "collect-scoped": grpc.StatusCode.PERMISSION_DENIED,
        "collect-all": pb.Empty(),
    }


def test_the_log_says_whether_auth_is_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fenliu.server")
    with ServerThread(Config(shards=1)):
        pass
    with ServerThread(Config(shards=1, tokens=(GATEWAY,))):
        pass
    messages = [r.getMessage() for r in caplog.records if r.name == "fenliu.server"]
    assert any(m.startswith("auth is OFF: any caller may touch any shop") for m in messages)
    assert "auth is on: 1 tokens; health and reflection stay open" in messages

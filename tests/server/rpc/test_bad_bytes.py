"""Bad input at the adapter (issue 15): malformed request bytes and oversized echoes.

Raw bytes go over a real channel to a real server (``request_serializer=None``), with auth
on and off; the server's log is captured to check its volume.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from fenliu.client import Client, PermissionDenied, Status
from fenliu.client._pb import fenliu_pb2 as pb
from fenliu.server.config import Config, Token
from fenliu.server.rpc import decode
from fenliu.server.rpc.app import ServerThread
from fenliu.server.rpc.status import FIELD_KEY

GATEWAY = Token("gateway", "gateway-secret-1", None)
DESK = Token("desk", "desk-secret-22", frozenset({"shop-a"}))
GARBAGE = b"\xff\xff\xff\xff\x0f"  # a field with tag 0x1fffffff... and a truncated varint
ROUNDS = 200


@pytest.fixture(scope="module", params=["auth-off", "auth-on"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    tokens = (GATEWAY, DESK) if request.param == "auth-on" else ()
    config = Config(shards=2, tick_interval_s=3600, grace_s=1, tokens=tokens, access_log=True)
    with ServerThread(config) as server:
        with Client(server.target, token=GATEWAY.secret) as gateway:
            gateway.register_agent("shop-a", "alice", max_concurrent=5, status=Status.ONLINE)
        yield server


def raw(
    target: str, method: str, body: bytes, metadata: tuple[tuple[str, str], ...] = ()
) -> grpc.RpcError:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            call(body, timeout=5, metadata=metadata)
    return info.value


def _malformed_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "malformed" in r.getMessage() or r.exc_info]


def test_malformed_bytes_are_invalid_argument_with_a_bounded_log(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    decode.MALFORMED_LOG._last = None  # a fresh interval: the first one is logged
    caplog.set_level(logging.INFO)
    with grpc.insecure_channel(server.target) as channel:
        route = channel.unary_unary(
            "/fenliu.v1.Routing/Route", request_serializer=None, response_deserializer=None
        )
        for _ in range(ROUNDS):  # unauthenticated: no token at all
            with pytest.raises(grpc.RpcError) as info:
                route(GARBAGE, timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "fenliu.v1.RouteRequest" in (info.value.details() or "")
            assert "DecodeError" not in (info.value.details() or "")
    lines = _malformed_lines(caplog)
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]
    assert not any(r.exc_info for r in caplog.records)
    assert not any("Traceback" in r.getMessage() for r in caplog.records)
    total = sum(len(r.getMessage()) for r in caplog.records if r.name != "fenliu.access")
    assert total < 2_000  # 200 requests: not 200 tracebacks


@pytest.mark.parametrize(
    "method",
    [
        "/fenliu.v1.Presence/RegisterAgent",
        "/fenliu.v1.Routing/RouteBatch",
        "/fenliu.v1.Monitor/GetShopStats",
        "/fenliu.v1.Diagnostics/Echo",
        "/grpc.health.v1.Health/Check",
    ],
)
def test_every_unary_method_answers_malformed_bytes_with_invalid_argument(
    server: ServerThread, method: str
) -> None:
    error = raw(server.target, method, GARBAGE, (("authorization", f"Bearer {GATEWAY.secret}"),))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_watch_stream_answers_malformed_bytes_with_invalid_argument(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        watch = channel.unary_stream(
            "/fenliu.v1.Monitor/WatchShop", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as info:
            list(watch(GARBAGE, timeout=5))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_reflection_answers_malformed_bytes_with_invalid_argument(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        info = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=None,
            response_deserializer=None,
        )
        with pytest.raises(grpc.RpcError) as raised:
            list(info(iter([GARBAGE]), timeout=5))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_malformed_bytes_change_nothing(server: ServerThread) -> None:
    good = pb.RegisterAgentRequest(shop_id="shop-a", agent_id="zed", max_concurrent=1)
    body = good.SerializeToString()[:-1] + b"\xff"  # the last varint now runs off the end
    error = raw(server.target, "/fenliu.v1.Presence/RegisterAgent", body,
                (("authorization", f"Bearer {GATEWAY.secret}"),))  # fmt: skip
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    with Client(server.target, token=GATEWAY.secret) as fenliu:
        assert "zed" not in [a.agent_id for a in fenliu.list_team("shop-a")]


# ---------------------------------------------------------------- echoes are capped


def test_a_100kb_shop_id_is_permission_denied_with_a_short_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    huge = "x" * 100_000
    config = Config(shards=2, tick_interval_s=3600, tokens=(GATEWAY, DESK), access_log=True)
    caplog.set_level(logging.INFO)
    with ServerThread(config) as server, Client(server.target, token=DESK.secret) as desk:
        with pytest.raises(PermissionDenied) as info:
            desk.route(huge, "buyer-1")
        with Client(server.target, token=GATEWAY.secret) as gateway:
            gateway.register_agent("shop-a", "alice", max_concurrent=1, status=Status.ONLINE)
            assert gateway.list_team("shop-a")[0].load == 0  # the refused route changed nothing
    assert info.value.field == "shop_id"
    assert len(info.value.message) < 700
    assert "more characters" in info.value.message
    assert max(len(r.getMessage()) + len(getattr(r, "shop_id", "")) for r in caplog.records) < 1_000


def test_a_100kb_id_gets_a_short_invalid_argument_with_details(server: ServerThread) -> None:
    huge = "y" * 100_000
    metadata = (("authorization", f"Bearer {GATEWAY.secret}"),)
    request = pb.GetSessionRequest(shop_id="shop-a", session_id=huge)
    error = raw(
        server.target, "/fenliu.v1.Routing/GetSession", request.SerializeToString(), metadata
    )
    assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert len(error.details() or "") < 700
    trailing = dict(error.trailing_metadata() or ())
    assert len(str(trailing.get(FIELD_KEY, ""))) < 400
    assert sum(len(v) for v in trailing.values()) < 6_000


def test_reflection_v1_lists_both_reflection_services(server: ServerThread) -> None:
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with grpc.insecure_channel(server.target) as channel:
        for package in ("v1", "v1alpha"):
            info = channel.stream_stream(
                f"/grpc.reflection.{package}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            (reply,) = list(info(iter([request]), timeout=5))
            names = {s.name for s in reply.list_services_response.service}
            assert {"grpc.reflection.v1.ServerReflection", "fenliu.v1.Routing"} <= names

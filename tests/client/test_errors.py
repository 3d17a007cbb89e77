"""The SDK's typed errors carry the server's rich error details as attributes."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2 as ed, status_pb2

from fenliu.client import (
    AsyncClient,
    Client,
    FailedPrecondition,
    FenliuError,
    FieldViolation,
    InvalidArgument,
    NotFound,
    OnQueueFull,
    PreconditionViolation,
    QueueFull,
    QuotaViolation,
    ResourceInfo,
    Role,
    Status,
    route_request,
)
from fenliu.client._errors import from_rpc_error
from fenliu.client._pb import fenliu_pb2 as pb, fenliu_pb2_grpc as pb_grpc

_shops = itertools.count()


def _shop(fenliu: Client) -> str:
    """A shop with one OFFLINE MAIN agent "main" (max 0) whose queue rejects at once."""
    shop = f"err-shop{next(_shops)}"
    fenliu.register_agent(shop, "main", role=Role.MAIN, max_concurrent=0, status=Status.OFFLINE)
    fenliu.set_shop_policy(shop, queue_limit=0, on_queue_full=OnQueueFull.REJECT)
    return shop


def _bad_id(fenliu: Client, shop: str) -> Any:
    return fenliu.route(shop, "no spaces")


def _no_shop(fenliu: Client, shop: str) -> Any:
    return fenliu.list_team(f"{shop}-missing")


def _no_agent(fenliu: Client, shop: str) -> Any:
    return fenliu.set_status(shop, "ghost", Status.ONLINE)


def _offline_pick(fenliu: Client, shop: str) -> Any:
    return fenliu.pick(shop, "main")


def _full_queue(fenliu: Client, shop: str) -> Any:
    fenliu.set_status(shop, "main", Status.ONLINE)
    return fenliu.route(shop, "b1")


def _expected(
    kind: type[FenliuError], field: str, reason: str, subject: str, message: str, shop: str
) -> dict[str, Any]:
    """Every error attribute: those of other codes stay empty."""
    attributes: dict[str, Any] = {
        "type": kind,
        "field": field,
        "reason": reason,
        "subject": subject,
        "violations": (),
        "preconditions": (),
        "resource": None,
        "quota_violations": (),
    }
    if kind is InvalidArgument:
        attributes["violations"] = (FieldViolation(field, message),)
    elif kind is NotFound:
        kind_name = subject.split("/")[2][:-1] if subject.count("/") == 3 else "shop"
        owner = f"shops/{shop}" if subject.count("/") == 3 else ""
        attributes["resource"] = ResourceInfo(kind_name, subject, owner, message)
    elif kind is FailedPrecondition:
        attributes["preconditions"] = (PreconditionViolation(reason, subject, message),)
    elif kind is QueueFull:
        attributes["quota_violations"] = (QuotaViolation(subject, message),)
    return attributes


def _attributes(error: FenliuError) -> dict[str, Any]:
    return {
        "type": type(error),
        "field": error.field,
        "reason": error.reason,
        "subject": error.subject,
        "violations": error.violations,
        "preconditions": error.preconditions,
        "resource": error.resource,
        "quota_violations": error.quota_violations,
    }


CASES = [
    pytest.param(_bad_id, InvalidArgument, "buyer_id", "INVALID_FIELD", "", id="invalid"),
    pytest.param(
        _no_shop, NotFound, "shop_id", "SHOP_NOT_FOUND", "shops/{shop}-missing", id="no-shop"
    ),
    pytest.param(
        _no_agent,
        NotFound,
        "agent_id",
        "AGENT_NOT_FOUND",
        "shops/{shop}/agents/ghost",
        id="no-agent",
    ),
    pytest.param(
        _offline_pick,
        FailedPrecondition,
        "agent_id",
        "AGENT_OFFLINE",
        "shops/{shop}/agents/main",
        id="precondition",
    ),
    pytest.param(_full_queue, QueueFull, "shop_id", "QUEUE_FULL", "shops/{shop}", id="queue-full"),
]


@pytest.mark.parametrize(("call", "kind", "field", "reason", "subject"), CASES)
def test_typed_errors_carry_the_details(
    fenliu: Client,
    call: Callable[[Client, str], Any],
    kind: type[FenliuError],
    field: str,
    reason: str,
    subject: str,
) -> None:
    shop = _shop(fenliu)
    with pytest.raises(FenliuError) as info:
        call(fenliu, shop)
    error = info.value
    subject = subject.format(shop=shop)
    assert _attributes(error) == _expected(kind, field, reason, subject, error.message, shop)
    assert isinstance(error.details[0], ed.ErrorInfo) and error.details[0].domain == "fenliu"


def test_the_async_client_reads_the_same_details(fenliu: Client, target: str) -> None:
    shop = _shop(fenliu)

    async def pick() -> FenliuError:
        async with AsyncClient(target) as client:
            with pytest.raises(FenliuError) as info:
                await client.pick(shop, "main")
            return info.value

    error = asyncio.run(pick())
    assert isinstance(error, FailedPrecondition)
    assert error.preconditions == (
        PreconditionViolation("AGENT_OFFLINE", f"shops/{shop}/agents/main", error.message),
    )


def test_a_batch_item_error_has_the_details(fenliu: Client) -> None:
    shop = _shop(fenliu)
    fenliu.set_status(shop, "main", Status.ONLINE)  # full at 0: b1 would queue, and may not
    full, bad = fenliu.route_batch([route_request(shop, "b1"), route_request(shop, "bad id")])
    assert isinstance(full.error, QueueFull) and full.error.reason == "QUEUE_FULL"
    assert full.error.quota_violations == (QuotaViolation(f"shops/{shop}", full.error.message),)
    assert isinstance(bad.error, InvalidArgument)
    assert bad.error.violations == (FieldViolation("buyer_id", bad.error.message),)


def test_from_rpc_error_reads_a_blocking_stub_error(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.PresenceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListTeam(pb.ListTeamRequest(shop_id="never-registered"))
    error = from_rpc_error(info.value)
    assert isinstance(error, NotFound)
    assert (error.field, error.reason) == ("shop_id", "SHOP_NOT_FOUND")
    assert error.resource == ResourceInfo(
        "shop", "shops/never-registered", "", "shop_id: no shop 'never-registered'"
    )


# ------------------------------------------------ servers that send less (or worse)

MESSAGE = "agent_id: no agent 'x'"


def _status(message: str = MESSAGE, *details: Any) -> bytes:
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)
        packed.append(item)
    code = grpc.StatusCode.NOT_FOUND.value[0]
    return status_pb2.Status(code=code, message=message, details=packed).SerializeToString()


_INFO = ed.ErrorInfo(reason="AGENT_NOT_FOUND", domain="fenliu", metadata={"field": "agent_id"})


class _Answers:
    """A stand-in server that fails every ListTeam with the trailing metadata it is given."""

    metadata: tuple[tuple[str, str | bytes], ...] = ()

    def list_team(self, request: Any, context: grpc.ServicerContext) -> Any:
        context.set_trailing_metadata(self.metadata)
        context.abort(grpc.StatusCode.NOT_FOUND, MESSAGE)


@pytest.fixture(scope="module")
def other_server() -> Iterator[tuple[str, _Answers]]:
    answers = _Answers()
    handler = grpc.method_handlers_generic_handler(
        "fenliu.v1.Presence",
        {
            "ListTeam": grpc.unary_unary_rpc_method_handler(
                answers.list_team,
                request_deserializer=pb.ListTeamRequest.FromString,
                response_serializer=pb.ListTeamReply.SerializeToString,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", answers
    finally:
        server.stop(None).wait()


@pytest.mark.parametrize(
    ("metadata", "field", "reason", "details"),
    [
        pytest.param((("fenliu-field", "agent_id"),), "agent_id", "", 0, id="older-server"),
        pytest.param((), "", "", 0, id="nothing-at-all"),
        pytest.param(
            (("grpc-status-details-bin", _status(MESSAGE, _INFO)),),
            "agent_id",
            "AGENT_NOT_FOUND",
            1,
            id="field-from-error-info",
        ),
        pytest.param(
            (("fenliu-field", "agent_id"), ("grpc-status-details-bin", _status("other", _INFO))),
            "agent_id",
            "",
            0,
            id="status-of-another-message-ignored",
        ),
        pytest.param(
            (("grpc-status-details-bin", b"\xff\xff not a status"),),
            "",
            "",
            0,
            id="garbage-ignored",
        ),
    ],
)
def test_less_detail_falls_back(
    other_server: tuple[str, _Answers],
    metadata: tuple[tuple[str, str | bytes], ...],
    field: str,
    reason: str,
    details: int,
) -> None:
    target, answers = other_server
    answers.metadata = metadata
    with Client(target, retries=0) as client, pytest.raises(NotFound) as info:
        client.list_team("s1")
    error = info.value
    assert (error.message, error.field, error.reason, len(error.details)) == (
        MESSAGE,
        field,
        reason,
        details,
    )
    assert (error.violations, error.preconditions, error.resource) == ((), (), None)


def test_an_unknown_detail_type_is_kept_packed(other_server: tuple[str, _Answers]) -> None:
    target, answers = other_server
    answers.metadata = (
        ("grpc-status-details-bin", _status(MESSAGE, duration_pb2.Duration(seconds=3), _INFO)),
    )
    with Client(target, retries=0) as client, pytest.raises(NotFound) as info:
        client.list_team("s1")
    unknown, known = info.value.details
    assert isinstance(unknown, any_pb2.Any) and unknown.Is(duration_pb2.Duration.DESCRIPTOR)
    assert isinstance(known, ed.ErrorInfo) and info.value.reason == "AGENT_NOT_FOUND"


def test_a_stream_write_failing_as_the_call_ends_is_unavailable() -> None:
    """grpc.aio reports a write that failed because the call had ended as its own INTERNAL
    "Internal error from Core", over the status the call ended with (grpc/grpc#36066; the
    route stream saw it when its server stopped). The SDK reads it as the stream broken:
    Unavailable, which the stream's callers retry. A loopback server ends each stream at
    once while the client writes."""
    from fenliu.client import Unavailable
    from fenliu.client._errors import LOCAL_WRITE_FAILURE, from_rpc_error

    async def handler(requests: Any, context: Any) -> Any:
        return
        yield  # a stream-stream handler that answers nothing and ends

    async def run() -> list[type]:
        server = grpc.aio.server()
        method = grpc.stream_stream_rpc_method_handler(
            handler, request_deserializer=bytes, response_serializer=bytes
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("t.T", {"S": method}),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        kinds: list[type] = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stream = channel.stream_stream(
                    "/t.T/S", request_serializer=bytes, response_deserializer=bytes
                )
                for _ in range(20):
                    call = stream()
                    try:
                        for _ in range(200):
                            await call.write(b"x" * 65536)
                    except grpc.aio.AioRpcError as exc:
                        kinds.append(type(from_rpc_error(exc)))
                    except asyncio.InvalidStateError:
                        pass  # the end was seen before the write: nothing to map
                    call.cancel()
        finally:
            await server.stop(0)
        return kinds

    kinds = asyncio.run(run())
    assert kinds and set(kinds) == {Unavailable}, kinds
    local = grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, None, None, LOCAL_WRITE_FAILURE)
    assert isinstance(from_rpc_error(local), Unavailable)
    server_said = grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, None, None, "boom")
    assert not isinstance(from_rpc_error(server_said), Unavailable)

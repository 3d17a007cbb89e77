"""Retries and deadlines against a flaky fake Routing server on a loopback port."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from fenliu.client import Client, DeadlineExceeded, Unavailable
from fenliu.client._pb import fenliu_pb2 as pb, fenliu_pb2_grpc as pb_grpc


class Flaky(pb_grpc.RoutingServicer):
    """Fails the first ``failures`` calls of each method with UNAVAILABLE; records requests."""

    def __init__(self, failures: int, delay: float = 0.0) -> None:
        self.failures = failures
        self.delay = delay
        self.seen: dict[str, list[Any]] = {}

    def _answer(self, name: str, request: Any, context: grpc.ServicerContext) -> None:
        calls = self.seen.setdefault(name, [])
        calls.append(request)
        time.sleep(self.delay)
        if len(calls) <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")

    def Route(self, request: pb.RouteRequest, context: grpc.ServicerContext) -> pb.Decision:
        self._answer("Route", request, context)
        return pb.Decision(outcome=pb.OUTCOME_ASSIGNED, session_id=request.request_id)

    def Transfer(self, request: pb.TransferRequest, context: grpc.ServicerContext) -> pb.Decision:
        self._answer("Transfer", request, context)
        return pb.Decision(outcome=pb.OUTCOME_ASSIGNED)


def serve(servicer: Flaky) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_RoutingServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def flaky() -> Iterator[tuple[Flaky, str]]:
    servicer = Flaky(failures=2)
    server, target = serve(servicer)
    yield servicer, target
    server.stop(None)


def test_route_is_retried_with_the_same_request_id(flaky: tuple[Flaky, str]) -> None:
    servicer, target = flaky
    with Client(target, backoff=0.001) as fenliu:
        decision = fenliu.route("shop", "buyer")
    calls = servicer.seen["Route"]
    assert len(calls) == 3
    assert len({c.request_id for c in calls}) == 1
    assert decision.session_id == calls[0].request_id


def test_retries_give_up_with_unavailable(flaky: tuple[Flaky, str]) -> None:
    servicer, target = flaky
    with Client(target, retries=1, backoff=0.001) as fenliu, pytest.raises(Unavailable):
        fenliu.route("shop", "buyer")
    assert len(servicer.seen["Route"]) == 2


def test_transfer_is_retried_with_the_same_idempotency_key(flaky: tuple[Flaky, str]) -> None:
    # Before every mutating call carried a key, a Transfer was never retried (an unknown
    # outcome might have moved the session); with its key the server applies it once.
    servicer, target = flaky
    with Client(target, backoff=0.001) as fenliu:
        fenliu.transfer("shop", "s1", to_agent_id="a")
    calls = servicer.seen["Transfer"]
    assert len(calls) == 3
    assert len({c.request_id for c in calls}) == 1 and calls[0].request_id


def test_a_slow_server_meets_the_deadline() -> None:
    server, target = serve(Flaky(failures=0, delay=0.5))
    try:
        with Client(target, timeout=0.1) as fenliu, pytest.raises(DeadlineExceeded):
            fenliu.route("shop", "buyer")
    finally:
        server.stop(None)

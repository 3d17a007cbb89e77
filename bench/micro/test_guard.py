"""What the call guard adds to one Route call, in-process (no transport, no journal).

    pytest bench/micro/test_guard.py --benchmark-enable -o testpaths=bench

Each round awaits 100 Route calls (rule 2: the same buyer, a new request id) on one
event loop: straight into the servicer, as with the guard off, or through the guard's
``intercept_service`` and wrapped handler with auth, metrics or both on. The difference
over 100 is the guard's cost per call.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from fenliu.client._pb import fenliu_pb2 as pb
from fenliu.server.config import Token
from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.node import Node
from fenliu.server.rpc.auth import Authenticator
from fenliu.server.rpc.guard import CallGuard
from fenliu.server.rpc.metrics import Metrics
from fenliu.server.rpc.service import RoutingService

CALLS = 100
METHOD = "/fenliu.v1.Routing/Route"
TOKEN = Token("bench", "bench-token-123", frozenset({"shop"}))


class Details:
    """The call details grpc passes to an interceptor."""

    method = METHOD
    invocation_metadata = (("authorization", f"Bearer {TOKEN.secret}"),)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def setup(loop: asyncio.AbstractEventLoop) -> tuple[Dispatcher, RoutingService, Any]:
    dispatcher = Dispatcher()
    clock = itertools.count(1_700_000_000_000)
    node = Node(dispatcher, lambda: next(clock))  # journal off
    node.open(None)
    from fenliu.server.core.types import RegisterAgent, Status

    dispatcher.execute(RegisterAgent(at=1, shop_id="shop", agent_id="a", max_concurrent=5,
                                     status=Status.ONLINE))  # fmt: skip
    service = RoutingService(node)
    handler = grpc.unary_unary_rpc_method_handler(service.Route)
    return dispatcher, service, handler


def as_served(request: pb.RouteRequest) -> Any:
    """``request`` as grpc hands it to the servicer: read by the wire codec when compiled."""
    codec = getattr(RoutingService.Route, "wire_codec", None)
    return request if codec is None else codec[0](request.SerializeToString())


def rounds(loop: asyncio.AbstractEventLoop, guard: CallGuard | None) -> Callable[[], None]:
    _, service, handler = setup(loop)
    ids = itertools.count()

    async def continuation(details: Any) -> Any:
        return handler

    async def plain() -> None:
        for _ in range(CALLS):
            request = pb.RouteRequest(shop_id="shop", buyer_id="b", request_id=f"r{next(ids)}")
            await service.Route(as_served(request), None)  # type: ignore[arg-type]

    async def guarded() -> None:
        assert guard is not None
        for _ in range(CALLS):
            request = pb.RouteRequest(shop_id="shop", buyer_id="b", request_id=f"r{next(ids)}")
            wrapped = await guard.intercept_service(continuation, Details())  # type: ignore[arg-type]
            await wrapped.unary_unary(as_served(request), None)

    body = plain if guard is None else guarded
    return lambda: loop.run_until_complete(body())


@pytest.mark.benchmark(group="guard")
@pytest.mark.parametrize("mode", ["off", "auth", "metrics", "auth+metrics+access"])
def test_route_through_the_guard(
    benchmark: Any, loop: asyncio.AbstractEventLoop, mode: str
) -> None:
    dispatcher = Dispatcher()
    guards = {
        "off": None,
        "auth": CallGuard(authenticator=Authenticator([TOKEN])),
        "metrics": CallGuard(metrics=Metrics(dispatcher)),
        "auth+metrics+access": CallGuard(
            authenticator=Authenticator([TOKEN]), metrics=Metrics(dispatcher), access_log=True
        ),
    }
    benchmark(rounds(loop, guards[mode]))

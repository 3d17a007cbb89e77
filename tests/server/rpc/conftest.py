"""A real fenliu server on a loopback port, driven through the generated stubs.

One server per test module (``server``) on a fake clock that only moves when a test
says so; each test gets a shop of its own (``shop``), so tests never see each other.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest

from fenliu.client._pb import fenliu_pb2 as pb, fenliu_pb2_grpc as pb_grpc
from fenliu.server.config import Config
from fenliu.server.rpc.app import ServerThread
from fenliu.server.rpc.status import FIELD_KEY

# 2024-03-01 10:00 in Asia/Shanghai, the default shop time zone: far from midnight.
T0 = int(datetime(2024, 3, 1, 10, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp() * 1000)
MINUTE = 60_000
ONLINE = pb.AGENT_STATUS_ONLINE
OFFLINE = pb.AGENT_STATUS_OFFLINE

_shops = itertools.count(1)


class FakeClock:
    """The server's clock: ms since the epoch, moved by hand."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += int(minutes * MINUTE)


class Api:
    """The three fenliu stubs on one channel, plus shortcuts for one shop's set-up."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.presence = pb_grpc.PresenceStub(channel)
        self.routing = pb_grpc.RoutingStub(channel)
        self.queue = pb_grpc.QueueStub(channel)
        self._requests = itertools.count(1)

    def agent(self, shop: str, agent_id: str, status: int = ONLINE, max: int = 5, **kw: Any) -> Any:
        request = pb.RegisterAgentRequest(
            shop_id=shop, agent_id=agent_id, status=status, max_concurrent=max, **kw
        )
        return self.presence.RegisterAgent(request)

    def policy(self, shop: str, **fields: Any) -> Any:
        request = pb.SetShopPolicyRequest(shop_id=shop, policy=pb.ShopPolicy(**fields))
        return self.presence.SetShopPolicy(request)

    def route(self, shop: str, buyer: str, request_id: str = "", **kw: Any) -> Any:
        request_id = request_id or f"req-{next(self._requests)}"
        request = pb.RouteRequest(shop_id=shop, buyer_id=buyer, request_id=request_id, **kw)
        return self.routing.Route(request)

    def session(self, shop: str, session_id: str) -> Any:
        return self.routing.GetSession(pb.GetSessionRequest(shop_id=shop, session_id=session_id))

    def team(self, shop: str) -> dict[str, Any]:
        reply = self.presence.ListTeam(pb.ListTeamRequest(shop_id=shop))
        return {agent.agent_id: agent for agent in reply.agents}

    def state(self, shop: str) -> tuple[Any, ...]:
        """Everything a shop shows: policy, team, each agent's sessions, queue, left messages."""
        agents = self.team(shop)
        sessions = [
            self.routing.ListAgentSessions(pb.ListAgentSessionsRequest(shop_id=shop, agent_id=a))
            for a in agents
        ]
        return (
            self.presence.GetShopPolicy(pb.GetShopPolicyRequest(shop_id=shop)),
            list(agents.values()),
            sessions,
            self.queue.ListQueue(pb.ListQueueRequest(shop_id=shop, limit=1000)),
            self.queue.ListLeftMessages(pb.ListLeftMessagesRequest(shop_id=shop, limit=1000)),
        )


def rpc_error(call: Callable[..., Any], request: Any) -> grpc.RpcError:
    """The error ``call(request)`` fails with (the test fails if it succeeds)."""
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    return info.value


def field_of(error: grpc.RpcError) -> str | None:
    """The ``fenliu-field`` trailing metadata of a failed call, if any."""
    metadata = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    return metadata.get(FIELD_KEY)


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def server(clock: FakeClock) -> Iterator[ServerThread]:
    # Ticks only matter when a test moves the clock; a long interval keeps them out of the way.
    with ServerThread(Config(shards=4, tick_interval_s=3600, grace_s=1), now_ms=clock) as server:
        yield server


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as channel:
        yield channel


@pytest.fixture(scope="module")
def api(channel: grpc.Channel) -> Api:
    return Api(channel)


@pytest.fixture
def shop() -> str:
    """A shop id no other test uses (the shop exists once the test registers something)."""
    return f"shop-{next(_shops)}"

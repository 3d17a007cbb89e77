"""The SDK's RouteStream, async and blocking, against a real server: pipelined routes
answered to the right caller, per-item errors that leave the stream usable, a broken
stream that fails its callers instead of hanging them."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from fenliu.client import (
    AsyncClient,
    Client,
    InvalidArgument,
    Outcome,
    Status,
    Unavailable,
    route_request,
)
from fenliu.server.config import Config
from fenliu.server.rpc.app import ServerThread

_shops = itertools.count(1)


def test_many_concurrent_routes_each_get_their_own_decision(target: str) -> None:
    shop = f"stream-shop{next(_shops)}"

    async def scenario() -> list[tuple[str, str, Outcome]]:
        async with AsyncClient(target) as fenliu:
            await fenliu.register_agent(shop, "a1", max_concurrent=300, status=Status.ONLINE)
            async with fenliu.route_stream() as stream:
                decisions = await asyncio.gather(
                    *(stream.route(shop, f"b{i}", channel="im") for i in range(500))
                )
            team = await fenliu.list_team(shop)
            assert team[0].load == 300
        return [(d.buyer_id, d.agent_id, d.outcome) for d in decisions]

    decided = asyncio.run(scenario())
    assert [buyer for buyer, _, _ in decided] == [f"b{i}" for i in range(500)]
    outcomes = [outcome for _, _, outcome in decided]
    assert outcomes.count(Outcome.ASSIGNED) == 300 and outcomes.count(Outcome.QUEUED) == 200


def test_an_items_error_is_raised_by_its_route_and_the_stream_goes_on(target: str) -> None:
    shop = f"stream-shop{next(_shops)}"

    async def scenario() -> None:
        async with AsyncClient(target) as fenliu:
            await fenliu.register_agent(shop, "a1", max_concurrent=5, status=Status.ONLINE)
            async with fenliu.route_stream() as stream:
                with pytest.raises(InvalidArgument) as info:
                    await stream.route(shop, "bad id")
                assert info.value.field == "buyer_id"
                assert (await stream.route(shop, "b1")).agent_id == "a1"
                # send: the result with its error, not raised
                results = [await stream.send(route_request(shop, b)) for b in ("", "b2")]
                bad, good = [await r for r in results]
                assert isinstance(bad.error, InvalidArgument) and bad.decision is None
                assert good.decision is not None and good.decision.buyer_id == "b2"

    asyncio.run(scenario())


def test_the_blocking_client_streams_too(fenliu: Client) -> None:
    shop = f"stream-shop{next(_shops)}"
    fenliu.register_agent(shop, "a1", max_concurrent=5, status=Status.ONLINE)
    with fenliu.route_stream() as stream:
        first = stream.route(shop, "b1")
        futures = [stream.send(route_request(shop, f"c{i}")) for i in range(3)]
        again = stream.route(shop, "b1")
        results = [f.result(timeout=10) for f in futures]
    assert first.agent_id == "a1" and again.session_id == first.session_id
    assert [r.decision.buyer_id for r in results if r.decision] == ["c0", "c1", "c2"]
    with pytest.raises(RuntimeError):
        stream.route(shop, "b9")  # closed


def test_a_stream_whose_server_stops_fails_its_callers_and_reopens() -> None:
    async def scenario(server: ServerThread) -> None:
        async with AsyncClient(server.target, timeout=5) as fenliu:
            await fenliu.register_agent("s1", "a1", max_concurrent=5, status=Status.ONLINE)
            stream = fenliu.route_stream()
            assert (await stream.route("s1", "b1")).agent_id == "a1"
            await asyncio.get_running_loop().run_in_executor(None, server.stop)
            with pytest.raises(Unavailable):
                await stream.route("s1", "b2")
            await stream.close()

    server = ServerThread(Config(shards=2))
    server.start()
    try:
        asyncio.run(scenario(server))
    finally:
        server.stop()

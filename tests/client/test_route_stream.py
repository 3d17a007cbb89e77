"""The SDK's RouteStream, async and blocking, against a real server: pipelined routes
answered to the right caller, per-item errors that leave the stream usable, a broken
stream that fails its callers instead of hanging them; requests queued together sent in
one message (coalescing), and one a message to a server that does not coalesce."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpc.aio
import pytest

from fenliu.client import (
    AsyncClient,
    Client,
    InvalidArgument,
    Outcome,
    RouteStream,
    Status,
    Unavailable,
    route_request,
)
from fenliu.client._pb import fenliu_pb2 as pb, fenliu_pb2_grpc as pb_grpc
from fenliu.client._stream import COALESCE_KEY, MAX_PER_MESSAGE, MAX_UNSENT, MESSAGES_IN_FLIGHT
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


def test_routes_queued_together_go_in_one_message_and_each_gets_its_own_decision(
    target: str,
) -> None:
    """Once the server has said it coalesces (its initial metadata, before the first
    answer), every request queued while the writer waits goes in one message; the
    coalesced answers come back each to its own caller, in order."""
    shop = f"stream-shop{next(_shops)}"

    async def scenario() -> tuple[int, int, list[str]]:
        async with AsyncClient(target) as fenliu:
            await fenliu.register_agent(shop, "a1", max_concurrent=1000, status=Status.ONLINE)
            async with fenliu.route_stream() as stream:
                assert isinstance(stream, RouteStream)
                first = await stream.route(shop, "first")
                decisions = await asyncio.gather(*(stream.route(shop, f"b{i}") for i in range(500)))
            assert first.agent_id == "a1"
            return stream.messages_sent, stream.requests_sent, [d.buyer_id for d in decisions]

    messages, requests, buyers = asyncio.run(scenario())
    assert buyers == [f"b{i}" for i in range(500)]
    assert (messages, requests) == (2, 501)


def test_senders_past_the_unsent_limit_wait_and_are_all_answered_in_order(target: str) -> None:
    """More requests at once than ``MAX_UNSENT``: the senders past it wait for the writer,
    at most ``MAX_PER_MESSAGE`` go in a message, and every one is answered to its caller."""
    shop = f"stream-shop{next(_shops)}"
    count = MAX_UNSENT * 2 + 500

    async def scenario() -> tuple[int, int, list[str]]:
        async with AsyncClient(target, timeout=60) as fenliu:
            await fenliu.set_shop_policy(shop, queue_limit=count)
            await fenliu.register_agent(shop, "a1", max_concurrent=count, status=Status.ONLINE)
            async with fenliu.route_stream() as stream:
                assert isinstance(stream, RouteStream)
                await stream.route(shop, "first")
                decisions = await asyncio.gather(
                    *(stream.route(shop, f"b{i}") for i in range(count))
                )
            return stream.messages_sent, stream.requests_sent, [d.buyer_id for d in decisions]

    messages, requests, buyers = asyncio.run(scenario())
    assert buyers == [f"b{i}" for i in range(count)]
    assert requests == count + 1
    assert 1 + count / MAX_PER_MESSAGE <= messages < count


def test_the_blocking_client_coalesces_from_many_threads(fenliu: Client) -> None:
    shop = f"stream-shop{next(_shops)}"
    fenliu.register_agent(shop, "a1", max_concurrent=1000, status=Status.ONLINE)
    with fenliu.route_stream() as stream:
        with ThreadPoolExecutor(8) as pool:
            decided = list(pool.map(lambda i: stream.route(shop, f"b{i}").buyer_id, range(400)))
        futures = [stream.send(route_request(shop, f"c{i}")) for i in range(300)]
        results = [f.result(timeout=30) for f in futures]
    assert decided == [f"b{i}" for i in range(400)]
    assert [r.decision.buyer_id for r in results if r.decision] == [f"c{i}" for i in range(300)]
    assert fenliu.list_team(shop)[0].load == 700


class _OldRouting(pb_grpc.RoutingServicer):
    """A RouteStream server from before coalescing: one answer per message, ``more``
    unknown to it (and no ``fenliu-coalesce`` in its metadata)."""

    def __init__(self) -> None:
        self.messages: list[int] = []  # requests per message received

    async def RouteStream(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        async for message in requests:
            self.messages.append(1 + len(message.more))
            decision = pb.Decision(
                buyer_id=message.request.buyer_id, agent_id="a1", outcome=pb.OUTCOME_ASSIGNED
            )
            yield pb.RouteStreamReply(result=pb.RouteResult(decision=decision))


def test_with_a_server_that_does_not_coalesce_the_sdk_sends_one_request_a_message() -> None:
    async def scenario() -> tuple[list[int], list[str]]:
        old = _OldRouting()
        server = grpc.aio.server()
        pb_grpc.add_RoutingServicer_to_server(old, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with AsyncClient(f"127.0.0.1:{port}", timeout=30) as fenliu:
                async with fenliu.route_stream() as stream:
                    await stream.route("s1", "first")
                    decisions = await asyncio.gather(
                        *(stream.route("s1", f"b{i}") for i in range(200))
                    )
        finally:
            await server.stop(None)
        return old.messages, [d.buyer_id for d in decisions]

    messages, buyers = asyncio.run(scenario())
    assert buyers == [f"b{i}" for i in range(200)]
    assert messages == [1] * 201


class _HeldRouting(pb_grpc.RoutingServicer):
    """A coalescing RouteStream server that answers a message only once the test lets it
    (``gate``): what the SDK writes while its messages are unanswered."""

    def __init__(self) -> None:
        self.messages: list[list[str]] = []  # the buyers of each message received
        self.gate = asyncio.Semaphore(0)

    async def RouteStream(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        await context.send_initial_metadata(((COALESCE_KEY, "1"),))
        received: asyncio.Queue[list[str]] = asyncio.Queue()

        async def read() -> None:  # every message as it comes, answered or not
            async for message in requests:
                buyers = [r.buyer_id for r in (message.request, *message.more)]
                self.messages.append(buyers)
                received.put_nowait(buyers)

        reader = asyncio.ensure_future(read())
        while not (reader.done() and received.empty()):
            getting = asyncio.ensure_future(received.get())
            await asyncio.wait({getting, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not getting.done():
                getting.cancel()
                continue
            buyers = getting.result()
            await self.gate.acquire()
            results = [
                pb.RouteResult(decision=pb.Decision(buyer_id=b, outcome=pb.OUTCOME_ASSIGNED))
                for b in buyers
            ]
            yield pb.RouteStreamReply(result=results[0], more=results[1:])


async def _until(condition: Any, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_with_its_messages_unanswered_the_sdk_waits_and_sends_what_came_in_one() -> None:
    """Coalescing, at most ``MESSAGES_IN_FLIGHT`` messages go unanswered: requests sent
    meanwhile wait (none written, however long), and the first answer lets them all go in
    one message; every one answered to its caller, in order."""
    assert MESSAGES_IN_FLIGHT == 2  # the scenario below holds two

    async def scenario() -> tuple[list[list[str]], list[str], list[int]]:
        held = _HeldRouting()
        server = grpc.aio.server()
        pb_grpc.add_RoutingServicer_to_server(held, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        written = []
        try:
            async with AsyncClient(f"127.0.0.1:{port}", timeout=60) as fenliu:
                async with fenliu.route_stream() as stream:
                    assert isinstance(stream, RouteStream)
                    held.gate.release()
                    await stream.route("s1", "first")  # the server's metadata is in
                    futures = [await stream.send(route_request("s1", "a1"))]
                    await _until(lambda: len(held.messages) == 2)
                    futures.append(await stream.send(route_request("s1", "a2")))
                    await _until(lambda: len(held.messages) == 3)
                    futures += [await stream.send(route_request("s1", f"c{i}")) for i in range(10)]
                    for _ in range(20):  # the writer has every chance to write: it must not
                        await asyncio.sleep(0.01)
                    written.append(stream.messages_sent)
                    held.gate.release()  # a1's answer: room for one message
                    await _until(lambda: len(held.messages) == 4)
                    written.append(stream.messages_sent)
                    for _ in range(2):
                        held.gate.release()
                    results = [await f for f in futures]
        finally:
            await server.stop(None)
        return held.messages, [r.decision.buyer_id for r in results if r.decision], written

    messages, buyers, written = asyncio.run(scenario())
    assert messages == [["first"], ["a1"], ["a2"], [f"c{i}" for i in range(10)]]
    assert buyers == ["a1", "a2", *(f"c{i}" for i in range(10))]
    assert written == [3, 4]

"""RouteStream coalescing over a real server: a message's requests (``request``, then
``more``) answered in order, each by its decision or its error, in replies that carry
every answer ready at once (``result``, then ``more``) for a caller that set
``coalesce``, and exactly one reply per request for one that did not; more than 1,000
requests in a message refused naming ``more``; the window still holds a caller that does
not read; answers only once durable."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc

from fenliu.client._pb import fenliu_pb2 as pb
from fenliu.server.config import Config
from fenliu.server.core import types as t
from fenliu.server.rpc.app import ServerThread
from fenliu.server.rpc.service import COALESCE_KEY, STREAM_WINDOW

from .conftest import Api

INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def _request(shop: str, buyer: str, request_id: str = "", **kw: Any) -> pb.RouteRequest:
    return pb.RouteRequest(shop_id=shop, buyer_id=buyer, request_id=request_id or buyer, **kw)


def _message(requests: list[pb.RouteRequest], coalesce: bool = True) -> pb.RouteStreamRequest:
    return pb.RouteStreamRequest(request=requests[0], more=requests[1:], coalesce=coalesce)


def _results(replies: Iterable[pb.RouteStreamReply]) -> list[pb.RouteResult]:
    return [r for reply in replies for r in (reply.result, *reply.more)]


def test_coalesced_requests_are_answered_in_order_and_an_error_does_not_end_the_stream(
    api: Api, shop: str
) -> None:
    api.agent(shop, "a1", max=2)
    first = [
        _request(shop, "b1"),
        _request("", "b2"),  # no shop: INVALID_ARGUMENT naming the field
        _request(shop, "b3"),
    ]
    second = [
        _request(shop, "b1", request_id="b1-again"),  # a message on b1's open session
        _request(shop, "bad id"),  # INVALID_ARGUMENT naming buyer_id
        _request(shop, "b4"),  # the agent is full: queued
    ]
    replies = list(api.routing.RouteStream(iter([_message(first), _message(second)]), timeout=10))
    # each message's answers are ready together (no journal): one reply each
    assert len(replies) == 2 and [len(r.more) for r in replies] == [2, 2]
    one, bad, three, again, bad_id, four = _results(replies)
    assert one.decision.buyer_id == "b1" and one.decision.outcome == pb.OUTCOME_ASSIGNED
    assert bad.error.code == INVALID and bad.error.field == "shop_id"
    assert three.decision.buyer_id == "b3" and three.decision.agent_id == "a1"
    assert again.decision.session_id == one.decision.session_id
    assert again.decision.reason == pb.REASON_OPEN_SESSION
    assert bad_id.error.code == INVALID and bad_id.error.field == "buyer_id"
    assert four.decision.outcome == pb.OUTCOME_QUEUED and four.decision.queue_position == 1


def test_the_server_says_it_coalesces_in_its_initial_metadata(api: Api, shop: str) -> None:
    api.agent(shop, "a1")
    call = api.routing.RouteStream(iter([_message([_request(shop, "b1")])]), timeout=10)
    assert (COALESCE_KEY, "1") in tuple(call.initial_metadata())
    assert next(call).result.decision.agent_id == "a1"


def test_a_caller_that_did_not_opt_in_gets_one_reply_per_request(api: Api, shop: str) -> None:
    """Pipelined, one request a message, no ``coalesce``: as before coalescing, one reply
    each, never one with ``more``; and a message with ``more`` from a caller that did not
    opt in still has each of its requests answered in a reply of its own."""
    api.agent(shop, "a1", max=500)
    singles = [pb.RouteStreamRequest(request=_request(shop, f"b{i}")) for i in range(300)]
    several = _message([_request(shop, f"c{i}") for i in range(5)], coalesce=False)
    replies = list(api.routing.RouteStream(iter([*singles, several]), timeout=30))
    assert len(replies) == 305
    assert all(len(reply.more) == 0 for reply in replies)
    buyers = [reply.result.decision.buyer_id for reply in replies]
    assert buyers == [f"b{i}" for i in range(300)] + [f"c{i}" for i in range(5)]


def test_a_message_of_more_than_1000_requests_is_refused_naming_the_field(
    api: Api, shop: str
) -> None:
    """Each of its 1,001 requests gets INVALID_ARGUMENT naming ``more``, none is routed,
    and the stream goes on; 1,000 is allowed."""
    api.agent(shop, "a1", max=5000)
    too_many = _message([_request(shop, f"x{i}") for i in range(1001)])
    most = _message([_request(shop, f"y{i}") for i in range(1000)])
    after = _message([_request(shop, "z")])
    results = _results(api.routing.RouteStream(iter([too_many, most, after]), timeout=30))
    assert len(results) == 1001 + 1000 + 1
    refused, routed = results[:1001], results[1001:]
    assert all(r.error.code == INVALID and r.error.field == "more" for r in refused)
    assert "1001" in refused[0].error.message
    assert [r.decision.buyer_id for r in routed] == [f"y{i}" for i in range(1000)] + ["z"]
    assert api.team(shop)["a1"].load == 1001  # none of the refused message's buyers


def _queued(api: Api, shop: str) -> int:
    return int(api.queue.ListQueue(pb.ListQueueRequest(shop_id=shop, limit=1)).total)


def test_a_coalescing_caller_that_does_not_read_stops_the_server_reading(
    server: ServerThread, api: Api, shop: str
) -> None:
    """As the one-a-message test (test_route_stream.py), with messages of 500 requests: the
    window counts requests, so the server stops reading a bounded number ahead, then, once
    the caller reads, answers every one in order."""
    count, size = 40_000, 500
    api.policy(shop, queue_limit=count)
    api.agent(shop, "a1", max=1)

    def messages() -> Iterator[pb.RouteStreamRequest]:
        for start in range(0, count, size):
            yield _message([_request(shop, f"b{i}") for i in range(start, start + size)])

    caller = grpc.insecure_channel(server.target, options=[("grpc.http2.bdp_probe", 0)])
    replies = Api(caller).routing.RouteStream(messages(), timeout=60)
    read, steady = -1, 0
    deadline = time.monotonic() + 30
    while steady < 5 and time.monotonic() < deadline:  # until it has stopped for ~0.5 s
        time.sleep(0.1)
        now = _queued(api, shop) + 1
        steady = steady + 1 if now == read else 0
        read = now
    assert steady == 5, "the server never stopped reading"
    assert STREAM_WINDOW <= read < count // 2, read
    got = 0
    for i, result in enumerate(_results(replies)):
        assert result.decision.buyer_id == f"b{i}"
        assert result.decision.queue_position == i  # b0 assigned, then 1, 2, ...
        got += 1
    caller.close()
    assert got == count == _queued(api, shop) + 1


def test_coalesced_answers_come_only_once_the_change_is_durable(tmp_path: Path, shop: str) -> None:
    """With a journal: when a reply arrives, every assignment it answers has had its
    event published (events are published only once their batch is durable, before its
    callers are answered)."""
    published: list[t.Event] = []
    config = Config(shards=2, data_dir=str(tmp_path), tick_interval_s=3600)
    with ServerThread(config, events=published.extend) as server:
        with grpc.insecure_channel(server.target) as channel:
            api = Api(channel)
            api.agent(shop, "a1", max=200)
            batches = [[_request(shop, f"b{m}-{i}") for i in range(m % 7 + 1)] for m in range(40)]
            expected = [r.buyer_id for batch in batches for r in batch]
            stream = api.routing.RouteStream(iter(_message(b) for b in batches), timeout=10)
            answered: list[str] = []
            for reply in stream:
                assigned = {e.buyer_id for e in list(published) if e.kind == "assigned"}
                for result in (reply.result, *reply.more):
                    assert result.decision.buyer_id in assigned
                    answered.append(result.decision.buyer_id)
    assert answered == expected

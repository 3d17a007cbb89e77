"""RouteStream over a real server: answers in order, per-item errors that never end the
stream, answers only once durable, and a window that holds a caller who does not read."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from fenliu.client._pb import fenliu_pb2 as pb
from fenliu.server.config import Config
from fenliu.server.core import types as t
from fenliu.server.rpc.app import ServerThread
from fenliu.server.rpc.service import STREAM_WINDOW

from .conftest import Api
from .test_errors import _Faulty


def _item(shop: str, buyer: str, request_id: str = "", **kw: Any) -> pb.RouteStreamRequest:
    request = pb.RouteRequest(shop_id=shop, buyer_id=buyer, request_id=request_id or buyer, **kw)
    return pb.RouteStreamRequest(request=request)


def test_each_request_is_answered_in_order_and_an_error_does_not_end_the_stream(
    api: Api, shop: str
) -> None:
    api.agent(shop, "a1", max=2)
    items = [
        _item(shop, "b1"),
        _item("", "b2"),  # no shop: INVALID_ARGUMENT naming the field
        _item(shop, "b3"),
        _item(shop, "b1", request_id="b1-again"),  # a message on b1's open session
        _item(shop, "b4"),  # the agent is full: queued
    ]
    answers = list(api.routing.RouteStream(iter(items), timeout=10))
    assert len(answers) == len(items)
    first, bad, third, again, fourth = (a.result for a in answers)
    assert first.decision.buyer_id == "b1" and first.decision.agent_id == "a1"
    assert first.decision.outcome == pb.OUTCOME_ASSIGNED
    assert bad.WhichOneof("result") == "error"
    assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert bad.error.field == "shop_id"
    assert third.decision.buyer_id == "b3" and third.decision.agent_id == "a1"
    assert again.decision.session_id == first.decision.session_id
    assert again.decision.reason != first.decision.reason  # rule 2, not a new assignment
    assert fourth.decision.outcome == pb.OUTCOME_QUEUED and fourth.decision.queue_position == 1


def test_a_retried_request_id_gets_the_original_decision(api: Api, shop: str) -> None:
    api.agent(shop, "a1")
    items = [_item(shop, "b1", request_id="same"), _item(shop, "b1", request_id="same")]
    one, two = (a.result.decision for a in api.routing.RouteStream(iter(items), timeout=10))
    assert one == two


def test_malformed_bytes_are_that_items_error_and_the_stream_goes_on(
    server: ServerThread, api: Api, shop: str
) -> None:
    api.agent(shop, "a1")
    good = _item(shop, "b1").SerializeToString()
    with grpc.insecure_channel(server.target) as channel:
        stream = channel.stream_stream(
            "/fenliu.v1.Routing/RouteStream",
            request_serializer=None,
            response_deserializer=pb.RouteStreamReply.FromString,
        )
        bad, fine = (a.result for a in stream(iter([b"\xff\xff\xff", good]), timeout=10))
    assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "RouteStreamRequest" in bad.error.message
    assert fine.decision.agent_id == "a1"


def test_an_unexpected_error_fails_only_its_item(tmp_path: Path, shop: str) -> None:
    config = Config(shards=2, data_dir=str(tmp_path))
    with ServerThread(config, dispatcher=_Faulty(shards=2)) as server:
        with grpc.insecure_channel(server.target) as channel:
            api = Api(channel)
            api.agent(shop, "a1")
            items = [_item(shop, "boom"), _item(shop, "b1")]
            boom, fine = (a.result for a in api.routing.RouteStream(iter(items), timeout=10))
    assert boom.error.code == grpc.StatusCode.INTERNAL.value[0]
    assert fine.decision.agent_id == "a1"


def test_answers_come_only_once_the_change_is_durable(tmp_path: Path, shop: str) -> None:
    """Events are published only when their batch is durable, and before its callers are
    answered: when an answer arrives, its assignment's event has been published."""
    published: list[t.Event] = []
    config = Config(shards=2, data_dir=str(tmp_path), tick_interval_s=3600)
    with ServerThread(config, events=published.extend) as server:
        with grpc.insecure_channel(server.target) as channel:
            api = Api(channel)
            api.agent(shop, "a1", max=50)
            buyers = [f"b{i}" for i in range(40)]
            stream = api.routing.RouteStream(iter(_item(shop, b) for b in buyers), timeout=10)
            for buyer, answer in zip(buyers, stream, strict=True):
                assert answer.result.decision.buyer_id == buyer
                assigned = {e.buyer_id for e in list(published) if e.kind == "assigned"}
                assert buyer in assigned


def _queued(api: Api, shop: str) -> int:
    return int(api.queue.ListQueue(pb.ListQueueRequest(shop_id=shop, limit=1)).total)


def test_a_caller_that_does_not_read_stops_the_server_reading(
    server: ServerThread, api: Api, shop: str
) -> None:
    """With its one agent full every request after the first queues a buyer, so the queue's
    length is how many requests the server has read (less one). The caller sends many and
    reads none: the server stops reading (a bounded number ahead), then, once the caller
    reads, answers every one.

    The caller's channel keeps grpc's fixed 64 KB receive window (no BDP probing, which
    grows it to megabytes): what the server reads ahead is then its window plus the few
    thousand answers of 64 KB the transport holds for the caller."""
    count = 20_000
    api.policy(shop, queue_limit=count)
    api.agent(shop, "a1", max=1)
    sent = 0

    def items() -> Iterator[pb.RouteStreamRequest]:
        nonlocal sent
        for i in range(count):
            sent += 1
            yield _item(shop, f"b{i}")

    options = [("grpc.http2.bdp_probe", 0)]
    caller = grpc.insecure_channel(server.target, options=options)
    answers = Api(caller).routing.RouteStream(items(), timeout=60)
    read, steady = -1, 0
    deadline = time.monotonic() + 20
    while steady < 5 and time.monotonic() < deadline:  # until it has stopped for ~0.5 s
        time.sleep(0.1)
        now = _queued(api, shop) + 1
        steady = steady + 1 if now == read else 0
        read = now
    assert steady == 5, "the server never stopped reading"
    assert STREAM_WINDOW <= read < count // 2, (read, sent)
    got = 0
    for i, answer in enumerate(answers):
        assert answer.result.decision.buyer_id == f"b{i}"
        assert answer.result.decision.queue_position == i  # b0 assigned, then 1, 2, ...
        got += 1
    caller.close()
    assert got == count == _queued(api, shop) + 1

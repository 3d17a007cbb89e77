"""The wire codec of Route and RouteBatch (``server/rpc/wire.py``) held to upb, byte for byte.

For any bytes, ``read_route_batch`` and ``read_route`` must fail exactly when upb's
parser fails and otherwise give the fields upb gives; ``route_batch_reply`` and
``decision_reply`` must write the bytes upb writes for the same results. The bytes are
built from a small grammar of protobuf
fields (every wire type, groups, over-long varints, invalid UTF-8, wrong wire types for
known fields, field numbers 0 and past 2^29) and then cut anywhere, so that the
malformed cases come from the same place as the well-formed ones.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from google.protobuf.message import DecodeError
from hypothesis import example, given, settings

from fenliu.client._pb import fenliu_pb2 as pb
from fenliu.server.core import types as t
from fenliu.server.core.errors import FailedPrecondition, InvalidArgument, NotFound
from fenliu.server.rpc import service, wire
from fenliu.server.rpc.service import route_batch_reply

# ---------------------------------------------------------------- the bytes


def varint(value: int, padding: int = 0) -> bytes:
    """``value`` as a varint, with ``padding`` redundant continuation bytes (over-long)."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    if not padding:
        return bytes(out) + bytes([value])
    out.append(value | 0x80)
    return bytes(out) + b"\x80" * (padding - 1) + b"\x00"


def key(number: int, kind: int, padding: int = 0) -> bytes:
    return varint(number << 3 | kind, padding)


numbers = st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 1000, (1 << 29) - 1, 0, 1 << 29])
numbers |= st.just(1 << 32)
paddings = st.sampled_from([0, 0, 0, 0, 1, 3, 8])
texts = st.text(max_size=6).map(str.encode) | st.sampled_from(
    [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"a\xe4\xb8", b"\xf4\x90\x80\x80", b""]
)
varints = st.sampled_from([0, 1, 127, 128, 300, (1 << 32) - 1, (1 << 63), (1 << 64) - 1])
varints |= st.integers(0, (1 << 64) - 1)


def fields(inner: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """One field of any wire type; ``inner`` gives a length-delimited field's payload."""
    number_and_padding = st.tuples(numbers, paddings)
    varint_field = st.builds(
        lambda np, value, pad: key(np[0], 0, np[1]) + varint(value, pad),
        number_and_padding,
        varints | st.integers(1 << 64, 1 << 70),
        paddings,
    )
    len_field = st.builds(
        lambda np, payload: key(np[0], 2, np[1]) + varint(len(payload)) + payload,
        number_and_padding,
        inner | texts,
    )
    fixed = st.builds(
        lambda np, kind, raw: key(np[0], kind, np[1]) + raw[: 8 if kind == 1 else 4],
        number_and_padding,
        st.sampled_from([1, 5]),
        st.binary(min_size=8, max_size=8),
    )
    stray = st.builds(
        lambda np, kind: key(np[0], kind, np[1]), number_and_padding, st.sampled_from([4, 6, 7])
    )
    return varint_field | len_field | fixed | stray


def messages(inner: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.lists(fields(inner), max_size=6).map(b"".join)


def groups(body: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A group (start, body, end), its end now and then another field number's."""
    return st.builds(
        lambda number, end_number, payload, same: (
            key(number, 3) + payload + key(number if same else end_number, 4)
        ),
        st.integers(1, 20),
        st.integers(1, 20),
        body,
        st.booleans(),
    )


# A RouteRequest's bytes: its fields well typed mostly, then anything.
route_fields = st.one_of(
    st.builds(lambda n, s: key(n, 2) + varint(len(s)) + s, st.integers(1, 7), texts),
    st.builds(lambda v: key(8, 0) + varint(v), varints),
    fields(st.binary(max_size=4)),
    st.recursive(
        st.just(b""), lambda body: groups(messages(st.binary(max_size=3)) | body), max_leaves=4
    ),
)
route_requests = st.lists(route_fields, max_size=10).map(b"".join)
batch_fields = st.one_of(
    st.builds(lambda body: key(1, 2) + varint(len(body)) + body, route_requests),
    fields(route_requests),
    groups(messages(st.binary(max_size=3))),
)
batches = st.lists(batch_fields, max_size=5).map(b"".join)


def as_fields(r: pb.RouteRequest) -> tuple[object, ...]:
    """A RouteRequest read by upb, as the codec's tuple."""
    return (r.shop_id, r.buyer_id, r.request_id, r.addressed_agent_id, tuple(r.crowds), r.group,
            r.channel, r.from_team_member)  # fmt: skip


def upb_items(data: bytes) -> list[tuple[object, ...]] | None:
    """upb's reading of ``data`` as the codec's tuples; None if upb refuses it."""
    try:
        request = pb.RouteBatchRequest.FromString(data)
    except DecodeError:
        return None
    return [as_fields(r) for r in request.requests]


def upb_fields(data: bytes) -> tuple[object, ...] | None:
    """upb's reading of ``data`` as one RouteRequest (unary Route's); None if refused."""
    try:
        return as_fields(pb.RouteRequest.FromString(data))
    except DecodeError:
        return None


def wire_fields(data: bytes) -> tuple[object, ...] | None:
    try:
        return wire.read_route(data).fields
    except wire.Malformed:
        return None


def wire_items(data: bytes) -> list[tuple[object, ...]] | None:
    try:
        return list(wire.read_route_batch(data).items)
    except wire.Malformed:
        return None


def test_field_numbers_are_the_protos() -> None:
    request = pb.RouteRequest.DESCRIPTOR.fields_by_name
    decision = pb.Decision.DESCRIPTOR.fields_by_name
    result = pb.RouteResult.DESCRIPTOR.fields_by_name
    expected = {
        "_ITEM": (pb.RouteBatchRequest.DESCRIPTOR.fields_by_name["requests"], 2),
        "_SHOP_ID": (request["shop_id"], 2),
        "_BUYER_ID": (request["buyer_id"], 2),
        "_REQUEST_ID": (request["request_id"], 2),
        "_ADDRESSED": (request["addressed_agent_id"], 2),
        "_CROWDS": (request["crowds"], 2),
        "_GROUP": (request["group"], 2),
        "_CHANNEL": (request["channel"], 2),
        "_TEAM": (request["from_team_member"], 0),
        "_DECISION": (result["decision"], 2),
        "_ERROR": (result["error"], 2),
        "_OUTCOME": (decision["outcome"], 0),
        "_REASON": (decision["reason"], 0),
        "_AGENT_ID": (decision["agent_id"], 2),
        "_SESSION_ID": (decision["session_id"], 2),
        "_POSITION": (decision["queue_position"], 0),
        "_STATE": (decision["state"], 0),
        "_NOTICE_FLAG": (decision["priority_notice"], 0),
        "_DECISION_BUYER": (decision["buyer_id"], 2),
        "_NOTICE": (decision["notice"], 0),
    }
    assert pb.RouteBatchReply.DESCRIPTOR.fields_by_name["results"].number == 1
    for name, (field, kind) in expected.items():
        assert getattr(wire, name) == field.number << 3 | kind, name
    # every field the reader fills and the writer writes is one of these
    assert len(request) == 8 and len(decision) == 9 and len(result) == 2


@settings(max_examples=3000, deadline=None)
@given(batches, st.integers(0, 1 << 16))
@example(key(1, 2) + varint(3) + key(1, 2) + varint(1) + b"\xff", 0)  # invalid UTF-8
@example(key(1, 3) + key(2, 4), 0)  # a group ended by another number
@example(key(1, 4), 0)  # an end group without its start
@example(key(9, 0) + b"\x80" * 10 + b"\x00", 0)  # an 11-byte varint
@example(key(9, 0) + b"\xff" * 9 + b"\x7f", 0)  # 10 bytes, past 64 bits: kept to 64
@example(varint(8 << 3 | 0, 5) + b"\x01", 0)  # a key over 5 bytes
def test_reads_what_upb_reads(data: bytes, cut: int) -> None:
    """The same items, or both refuse, for the bytes and for every prefix tried of them."""
    assert wire_items(data) == upb_items(data)
    prefix = data[: cut % (len(data) + 1)]
    assert wire_items(prefix) == upb_items(prefix)


@settings(max_examples=3000, deadline=None)
@given(route_requests, st.integers(0, 1 << 16))
@example(key(1, 2) + varint(1) + b"\xff", 0)  # invalid UTF-8
@example(key(5, 3) + key(6, 4), 0)  # a group ended by another number
@example(key(9, 0) + b"\x80" * 10 + b"\x00", 0)  # an 11-byte varint
def test_reads_a_route_request_as_upb_does(data: bytes, cut: int) -> None:
    """Unary Route's request: the same fields, or both refuse, whole and cut."""
    assert wire_fields(data) == upb_fields(data)
    prefix = data[: cut % (len(data) + 1)]
    assert wire_fields(prefix) == upb_fields(prefix)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.builds(
            pb.RouteRequest,
            shop_id=st.text(max_size=8),
            buyer_id=st.text(max_size=8),
            request_id=st.text(max_size=8),
            addressed_agent_id=st.text(max_size=8),
            crowds=st.lists(st.text(max_size=4), max_size=3),
            group=st.text(max_size=4),
            channel=st.text(max_size=4),
            from_team_member=st.booleans(),
        ),
        max_size=8,
    )
)
def test_reads_any_request_upb_writes(requests: list[pb.RouteRequest]) -> None:
    data = pb.RouteBatchRequest(requests=requests).SerializeToString()
    items = wire_items(data)
    assert items is not None and items == upb_items(data)
    assert len(items) == len(requests)


@pytest.mark.parametrize("depth", [1, 50, 98, 99, 100, 101, 150])
def test_nested_groups_past_the_limit_are_refused_as_upb_does(depth: int) -> None:
    body = b"".join(key(5, 3) for _ in range(depth)) + b"".join(key(5, 4) for _ in range(depth))
    for data in (
        body,  # in the batch
        key(1, 2) + varint(len(body)) + body,  # in an item
    ):
        assert wire_items(data) == upb_items(data), depth
    assert wire_fields(body) == upb_fields(body), depth  # unary Route's: groups from 0


def test_an_item_becomes_the_route_convert_makes() -> None:
    from fenliu.server.rpc import convert

    request = pb.RouteRequest(
        shop_id="s", buyer_id="b", request_id="r", addressed_agent_id="a1",
        crowds=["vip", "new"], group="g", channel="item_page", from_team_member=True,
    )  # fmt: skip
    data = pb.RouteBatchRequest(requests=[request, pb.RouteRequest()]).SerializeToString()
    routes = wire.read_route_batch(data).routes(7)
    assert routes == [convert.route(request, 7), convert.route(pb.RouteRequest(), 7)]
    assert wire.read_route_batch(data).shop_fields() == [
        ("requests[0].shop_id", "s"),
        ("requests[1].shop_id", ""),
    ]


def test_a_route_request_becomes_the_route_convert_makes() -> None:
    from fenliu.server.rpc import convert

    request = pb.RouteRequest(
        shop_id="s", buyer_id="b", request_id="r", addressed_agent_id="a1",
        crowds=["vip", "new"], group="g", channel="item_page", from_team_member=True,
    )  # fmt: skip
    for message in (request, pb.RouteRequest()):
        fields = wire.read_route(message.SerializeToString())
        assert fields.route(7) == convert.route(message, 7)
        assert fields.shop_fields() == [("shop_id", message.shop_id)]


def test_over_max_batch_is_refused_naming_the_field() -> None:
    from fenliu.server.core.validate import MAX_BATCH

    data = (key(1, 2) + varint(0)) * (MAX_BATCH + 1)
    with pytest.raises(InvalidArgument) as caught:
        wire.read_route_batch(data).routes(0)
    assert caught.value.field == "requests"


# ---------------------------------------------------------------- the reply

decisions = st.builds(
    t.Decision,
    outcome=st.sampled_from(t.Outcome),
    reason=st.sampled_from(t.Reason),
    buyer_id=st.text(max_size=6),
    agent_id=st.text(max_size=6),
    session_id=st.text(max_size=30),
    queue_position=st.integers(0, (1 << 32) - 1),
    state=st.none() | st.sampled_from(t.State),
    priority_notice=st.booleans(),
    notice=st.sampled_from(t.PriorityNotice),
)
errors = st.builds(
    lambda kind, message, field: kind(message, field),
    st.sampled_from([InvalidArgument, NotFound, FailedPrecondition]),
    st.text(max_size=300),
    st.text(max_size=10),
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(decisions | errors, max_size=8))
def test_writes_the_bytes_upb_writes(results: list[object]) -> None:
    ours = service.wire_reply(wire.RouteResults(results))
    assert ours == route_batch_reply(results).SerializeToString()
    assert pb.RouteBatchReply.FromString(ours) == route_batch_reply(results)


@settings(max_examples=1000, deadline=None)
@given(decisions)
def test_writes_the_decision_upb_writes(result: t.Decision) -> None:
    from fenliu.server.rpc import convert

    assert wire.decision_reply(result) == convert.decision(result).SerializeToString()


def test_the_service_uses_the_codec_exactly_when_it_is_compiled() -> None:
    from fenliu.server.core import COMPILED, compiled

    assert service.WIRE is compiled(wire.__name__)
    assert service.WIRE is COMPILED  # built together (setup.py)
    for method in (service.RoutingService.Route, service.RoutingService.RouteBatch):
        codec = getattr(method, "wire_codec", None)
        assert (codec is not None) is service.WIRE, method

"""Route's and RouteBatch's bytes read and written directly, without upb message objects.

A new buyer's decision in a 1,000-item RouteBatch read its request through eight upb
attribute reads (~1.0 µs) and wrote its answer through a RouteResult and a Decision
built field by field (~0.9 µs): a fifth of what the core costs for the decision. This
module parses a serialized ``RouteBatchRequest`` (or a unary Route's ``RouteRequest``)
straight into the fields of each ``RouteRequest`` and serializes a ``RouteBatchReply``
(or a ``Decision``) straight from the core's results, into librt's ``BytesWriter``,
whose appends mypyc compiles inline. Compiled by mypyc with the core (``setup.py``) it
takes ~0.5 µs a decision to read (the Route made too) and ~0.25 µs to write
(``bench/route_batch.py``); interpreted it is slower than upb, so the service uses it
only compiled (``WIRE`` in ``service.py``) and upb otherwise. Either way the same bytes
give the same commands, and the same results give the same bytes
(``tests/server/rpc/test_wire.py`` holds the two to it).

What it accepts is what upb accepts (proto3): fields in any order, the last of a
singular field winning, unknown fields of every wire type skipped (groups included), a
known field with another wire type taken as unknown, strings checked as UTF-8. Anything
else (a truncated field, a length past its message, a field number 0 outside a group,
wire type 6 or 7, an end group without its start or with another number, a key over 5
bytes, a varint over 10 bytes, groups nested past upb's depth) raises ``Malformed``, a
``ValueError``: the decode guard (``decode.py``) answers INVALID_ARGUMENT as for upb.

The field numbers are the proto's (``protos/fenliu/v1/fenliu.proto``); the tests check
them against the generated descriptors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgspec
from librt.strings import BytesWriter

from ..core.types import Route
from ..core.validate import check_batch

_astuple: Final = msgspec.structs.astuple

# wire types
_VARINT: Final = 0
_I64: Final = 1
_LEN: Final = 2
_SGROUP: Final = 3
_EGROUP: Final = 4
_I32: Final = 5
MAX_DEPTH: Final = 100  # upb's default nesting limit, groups included

# keys (field number << 3 | wire type) of the fields read and written here
_ITEM: Final = 1 << 3 | _LEN  # RouteBatchRequest.requests; RouteBatchReply.results
_SHOP_ID: Final = 1 << 3 | _LEN  # RouteRequest
_BUYER_ID: Final = 2 << 3 | _LEN
_REQUEST_ID: Final = 3 << 3 | _LEN
_ADDRESSED: Final = 4 << 3 | _LEN
_CROWDS: Final = 5 << 3 | _LEN
_GROUP: Final = 6 << 3 | _LEN
_CHANNEL: Final = 7 << 3 | _LEN
_TEAM: Final = 8 << 3 | _VARINT
_DECISION: Final = 1 << 3 | _LEN  # RouteResult
_ERROR: Final = 2 << 3 | _LEN
_OUTCOME: Final = 1 << 3 | _VARINT  # Decision
_REASON: Final = 2 << 3 | _VARINT
_AGENT_ID: Final = 3 << 3 | _LEN
_SESSION_ID: Final = 4 << 3 | _LEN
_POSITION: Final = 5 << 3 | _VARINT
_STATE: Final = 6 << 3 | _VARINT
_NOTICE_FLAG: Final = 7 << 3 | _VARINT
_DECISION_BUYER: Final = 8 << 3 | _LEN
_NOTICE: Final = 9 << 3 | _VARINT

_U64: Final = (1 << 64) - 1
_MAX_KEY: Final = (1 << 32) - 1
_MAX_LEN: Final = (1 << 31) - 1


class Malformed(ValueError):
    """The bytes are not a message of the type read."""


# ---------------------------------------------------------------- reading


def _varint(data: bytes, i: int, end: int) -> tuple[int, int]:
    """The varint at ``i`` (up to 10 bytes, kept to 64 bits as upb does) and the index after it."""
    value = 0
    shift = 0
    while True:
        if i >= end:
            raise Malformed("a varint runs past the end of its message")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & _U64, i
        shift += 7
        if shift >= 70:
            raise Malformed("a varint is longer than 10 bytes")


def _key(data: bytes, i: int, end: int) -> tuple[int, int]:
    """A field's key at ``i`` (the one-byte case inline), field number 0 refused, and the
    index after it."""
    key, i = _any_key(data, i, end)
    if key >> 3 == 0:
        raise Malformed("field number 0")
    return key, i


def _any_key(data: bytes, i: int, end: int) -> tuple[int, int]:
    """A key at ``i``, field number 0 let through: upb skips one in an unknown group."""
    key = data[i]
    if key < 0x80:
        i += 1
    else:
        start = i
        key, i = _varint(data, i, end)
        if key > _MAX_KEY or i - start > 5:
            raise Malformed("a field key is over 32 bits or 5 bytes")
    return key, i


def _length(data: bytes, i: int, end: int) -> tuple[int, int]:
    """A length-delimited field's length at ``i``, checked to fit, and the index after it."""
    if i < end and data[i] < 0x80:
        length = data[i]
        i += 1
    else:
        length, i = _varint(data, i, end)
        if length > _MAX_LEN:
            raise Malformed("a length is over 2 GiB")
    if length > end - i:
        raise Malformed("a length-delimited field runs past the end of its message")
    return length, i


def _skip(data: bytes, i: int, end: int, key: int, depth: int) -> int:
    """Past the value of the field ``key`` (its key read) that starts at ``i``."""
    kind = key & 7
    if kind == _VARINT:
        return _varint(data, i, end)[1]
    if kind == _LEN:
        length, i = _length(data, i, end)
        return i + length
    if kind == _I64 or kind == _I32:
        size = 8 if kind == _I64 else 4
        if size > end - i:
            raise Malformed("a fixed-size field runs past the end of its message")
        return i + size
    if kind == _SGROUP:
        if depth >= MAX_DEPTH:
            raise Malformed("groups nested too deep")
        while True:
            if i >= end:
                raise Malformed("a group has no end")
            inner, i = _any_key(data, i, end)
            if inner & 7 == _EGROUP:
                if inner >> 3 != key >> 3:
                    raise Malformed("a group ends with another field number")
                return i
            i = _skip(data, i, end, inner, depth + 1)
    if kind == _EGROUP:
        raise Malformed("an end group without its start")
    raise Malformed(f"wire type {kind}")


def _text(data: bytes, i: int, length: int) -> str:
    try:
        return data[i : i + length].decode()
    except UnicodeDecodeError:
        raise Malformed("a string field is not UTF-8") from None


class RouteItems:
    """A parsed RouteBatchRequest: each item's RouteRequest fields, in order."""

    def __init__(self, items: list[tuple[str, str, str, str, tuple[str, ...], str, str, bool]]):
        self.items = items

    def shop_fields(self) -> list[tuple[str, str]]:
        """Each item's shop id with the field that names it (the call guard's scope check)."""
        return [(f"requests[{n}].shop_id", item[0]) for n, item in enumerate(self.items)]

    def routes(self, at: int) -> list[Route]:
        """The items as Route commands arriving at ``at``; INVALID_ARGUMENT over MAX_BATCH."""
        items = self.items
        check_batch(len(items), "requests")
        return [_route(item, at) for item in items]


class RouteFields:
    """A parsed RouteRequest (unary Route's): its fields."""

    def __init__(self, fields: tuple[str, str, str, str, tuple[str, ...], str, str, bool]):
        self.fields = fields

    def shop_fields(self) -> list[tuple[str, str]]:
        """Its shop id with the field that names it (the call guard's scope check)."""
        return [("shop_id", self.fields[0])]

    def route(self, at: int) -> Route:
        """The request as a Route command arriving at ``at``."""
        return _route(self.fields, at)


def _route(item: tuple[str, str, str, str, tuple[str, ...], str, str, bool], at: int) -> Route:
    shop_id, buyer_id, request_id, addressed, crowds, group, channel, team = item
    return Route(
        at=at,
        shop_id=shop_id,
        buyer_id=buyer_id,
        request_id=request_id,
        addressed_agent_id=addressed,
        crowds=crowds,
        group=group,
        channel=channel,
        from_team_member=team,
    )


def read_route(data: bytes) -> RouteFields:
    """A serialized RouteRequest; ``Malformed`` if upb would not parse it."""
    return RouteFields(_route_request(data, 0, len(data), 0))


def read_route_batch(data: bytes) -> RouteItems:
    """A serialized RouteBatchRequest; ``Malformed`` if upb would not parse it."""
    items: list[tuple[str, str, str, str, tuple[str, ...], str, str, bool]] = []
    end = len(data)
    i = 0
    while i < end:
        key, i = _key(data, i, end)
        if key == _ITEM:
            length, i = _length(data, i, end)
            items.append(_route_request(data, i, i + length, 1))
            i += length
        else:
            i = _skip(data, i, end, key, 0)
    return RouteItems(items)


def _route_request(
    data: bytes, i: int, end: int, depth: int
) -> tuple[str, str, str, str, tuple[str, ...], str, str, bool]:
    """The fields of the RouteRequest in ``data[i:end]``, nested ``depth`` deep (its groups
    count from there: a batch's item is one level down)."""
    shop_id = buyer_id = request_id = addressed = group = channel = ""
    crowds: list[str] = []
    team = False
    while i < end:
        key, i = _key(data, i, end)
        if key & 7 == _LEN and key <= _CHANNEL:
            length, i = _length(data, i, end)
            text = _text(data, i, length)
            i += length
            if key == _SHOP_ID:
                shop_id = text
            elif key == _BUYER_ID:
                buyer_id = text
            elif key == _REQUEST_ID:
                request_id = text
            elif key == _ADDRESSED:
                addressed = text
            elif key == _CROWDS:
                crowds.append(text)
            elif key == _GROUP:
                group = text
            else:
                channel = text
        elif key == _TEAM:
            value, i = _varint(data, i, end)
            team = value != 0
        else:
            i = _skip(data, i, end, key, depth)
    return shop_id, buyer_id, request_id, addressed, tuple(crowds), group, channel, team


# ---------------------------------------------------------------- writing


def _put_varint(out: BytesWriter, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _size(value: int) -> int:
    """Bytes of ``value`` as a varint."""
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


class RouteResults:
    """RouteBatch's answer before it is bytes: each item's Decision or the error it got.

    ``route_batch_reply`` makes the bytes (grpc calls it as the response serializer); the
    metrics count the decisions from here."""

    def __init__(self, results: list[Any]) -> None:
        self.results = results

    def counts(self) -> dict[tuple[int, int], int]:
        """How many decisions of each (outcome, reason), the proto's numbers; errors are
        not decisions (the metrics count a batch's with one increment a kind)."""
        counts: dict[tuple[int, int], int] = {}
        for result in self.results:
            if not isinstance(result, Exception):
                key = (int(result.outcome), int(result.reason))
                counts[key] = counts.get(key, 0) + 1
        return counts


def route_batch_reply(results: list[Any], error: Callable[[Exception], bytes]) -> bytes:
    """The serialized RouteBatchReply of ``results`` (a core Decision or an exception each);
    ``error`` serializes an item's Error message. The bytes upb writes for the same reply."""
    out = BytesWriter()
    for result in results:
        if isinstance(result, Exception):
            body = error(result)
            _put_result(out, _ERROR, len(body))
            out.write(body)
        else:
            _put_decision(out, result, True)
    return out.getvalue()


def _put_result(out: BytesWriter, member: int, size: int) -> None:
    """A RouteResult's key and length, then its one member's (``_DECISION`` or ``_ERROR``,
    ``size`` bytes, written next by the caller)."""
    out.append(_ITEM)
    _put_varint(out, 1 + _size(size) + size)
    out.append(member)
    _put_varint(out, size)


def decision_reply(result: Any) -> bytes:
    """The serialized Decision of a core Decision (unary Route's answer): upb's bytes."""
    out = BytesWriter()
    _put_decision(out, result, False)
    return out.getvalue()


def _put_decision(out: BytesWriter, result: Any, in_result: bool) -> None:
    """``result``'s Decision, in a RouteResult if ``in_result``, its fields in number order
    (upb's), each left out at its default (proto3)."""
    fields = _astuple(result)  # outcome, reason, buyer_id, agent_id, session_id,
    outcome: int = fields[0]  # queue_position, state, priority_notice, notice
    reason: int = fields[1]
    buyer_id: str = fields[2]
    agent_id: str = fields[3]
    session_id: str = fields[4]
    buyer = buyer_id.encode()
    agent = agent_id.encode()
    session = session_id.encode()
    position: int = fields[5]
    state_field = fields[6]
    state: int = 0 if state_field is None else state_field
    flag: bool = fields[7]
    notice: int = fields[8]
    size = 0
    if outcome:
        size += 1 + _size(outcome)
    if reason:
        size += 1 + _size(reason)
    if agent:
        size += 1 + _size(len(agent)) + len(agent)
    if session:
        size += 1 + _size(len(session)) + len(session)
    if position:
        size += 1 + _size(position)
    if state:
        size += 1 + _size(state)
    if flag:
        size += 2
    if buyer:
        size += 1 + _size(len(buyer)) + len(buyer)
    if notice:
        size += 1 + _size(notice)
    if in_result:
        _put_result(out, _DECISION, size)
    if outcome:
        out.append(_OUTCOME)
        _put_varint(out, outcome)
    if reason:
        out.append(_REASON)
        _put_varint(out, reason)
    if agent:
        out.append(_AGENT_ID)
        _put_varint(out, len(agent))
        out.write(agent)
    if session:
        out.append(_SESSION_ID)
        _put_varint(out, len(session))
        out.write(session)
    if position:
        out.append(_POSITION)
        _put_varint(out, position)
    if state:
        out.append(_STATE)
        _put_varint(out, state)
    if flag:
        out.append(_NOTICE_FLAG)
        out.append(1)
    if buyer:
        out.append(_DECISION_BUYER)
        _put_varint(out, len(buyer))
        out.write(buyer)
    if notice:
        out.append(_NOTICE)
        _put_varint(out, notice)

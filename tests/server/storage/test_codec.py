"""The on-disk encodings: a shard image restores the exact state; frames stop at damage."""

from __future__ import annotations

import msgspec
import pytest

from fenliu.server.core import image
from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.types import (
    MINUTE,
    Acknowledge,
    AddPrivateContact,
    EndSessions,
    PolicyChange,
    RegisterAgent,
    Role,
    Route,
    SetPolicy,
    SetStatus,
    StarSession,
    Status,
    Tick,
)
from fenliu.server.storage import codec

from ..core.test_invariants import dump

T0 = 1_700_000_000_000


def busy_dispatcher() -> Dispatcher:
    """One shop using every part of the state: backlog, queue, left messages for MAIN,
    private contacts, recent contacts, notices, requests, timers."""
    d = Dispatcher(shards=1)
    run = d.execute
    run(SetPolicy(at=T0, shop_id="s", change=PolicyChange(priority_crowds=("vip",))))
    run(RegisterAgent(at=T0, shop_id="s", agent_id="main", role=Role.MAIN, max_concurrent=1,
                      status=Status.ONLINE))  # fmt: skip
    run(RegisterAgent(at=T0, shop_id="s", agent_id="a1", groups=("pre",), max_concurrent=1,
                      status=Status.ONLINE))  # fmt: skip
    run(AddPrivateContact(at=T0, shop_id="s", buyer_id="friend"))
    for i, buyer in enumerate(["b1", "b2", "b3", "vip1"]):
        crowds = ("vip",) if buyer.startswith("vip") else ()
        run(Route(at=T0 + i, shop_id="s", buyer_id=buyer, request_id=f"r{i}", crowds=crowds))
    run(Route(at=T0 + 9, shop_id="s", buyer_id="friend", request_id="rf",
              addressed_agent_id="main"))  # fmt: skip
    run(SetStatus(at=T0 + 10, shop_id="s", agent_id="main", status=Status.OFFLINE))
    run(Tick(at=T0 + 11 * MINUTE))
    d.drain_events()
    return d


def roundtrip(d: Dispatcher) -> Dispatcher:
    restored = Dispatcher(shards=len(d.shards))
    for i, shard in enumerate(d.shards):
        restored.shards[i], position = image.decode(image.encode(shard, 42))
        assert position == 42
    return restored


def test_a_shard_image_restores_the_exact_state() -> None:
    d = busy_dispatcher()
    shop = d.shards[0].shops["s"]
    assert shop.left and shop.queue and any(s.private for s in shop.sessions.values())
    assert shop.counters is not None and any(shop.counters.today) and shop.counters.buckets
    assert shop.event_seq > 0
    assert dump(roundtrip(d)) == dump(d)


def test_a_format_1_image_reads_with_no_event_seq_and_no_counters() -> None:
    d = busy_dispatcher()
    raw = msgspec.msgpack.decode(image.encode(d.shards[0], 7))
    for shop_image in raw[5]:
        del shop_image[-2:]  # format 1 ended a shop image at reg_seq
    shard, position = image.decode(msgspec.msgpack.encode(raw))
    shop, original = shard.shops["s"], d.shards[0].shops["s"]
    assert position == 7
    assert shop.event_seq == 0 and shop.counters is None
    assert list(shop.sessions) == list(original.sessions)


def test_a_restored_shard_goes_on_exactly_like_the_original() -> None:
    d = busy_dispatcher()
    restored = roundtrip(d)
    later = [
        SetStatus(at=T0 + 12 * MINUTE, shop_id="s", agent_id="main", status=Status.ONLINE),
        Route(at=T0 + 13 * MINUTE, shop_id="s", buyer_id="b9", request_id="r9"),
        Tick(at=T0 + 60 * MINUTE),
    ]
    for command in later:
        assert d.execute(command) == restored.execute(command)
    assert dump(restored) == dump(d)


def test_frames_stop_at_a_torn_or_corrupt_record() -> None:
    records = [codec.frame(codec.encode_command(Tick(at=n))) for n in range(3)]
    data = b"".join(records)
    whole = [codec.decode_command(p) for p, _ in codec.frames(data, 0)]
    assert whole == [Tick(at=0), Tick(at=1), Tick(at=2)]
    torn = data[:-3]
    assert len(list(codec.frames(torn, 0))) == 2
    corrupt = bytearray(data)
    corrupt[len(records[0]) + 9] ^= 0xFF  # a payload byte of the second record
    assert len(list(codec.frames(bytes(corrupt), 0))) == 1


def test_a_newer_format_is_refused_with_a_clear_message() -> None:
    newer = codec.MAGIC + (codec.FORMAT_VERSION + 1).to_bytes(2, "little")
    version = codec.FORMAT_VERSION + 1
    expected = f"format version {version}; .* up to {version - 1}"
    with pytest.raises(codec.FormatError, match=expected):
        codec.check_header(newer, "journal-0")
    with pytest.raises(codec.FormatError, match="not a fenliu file"):
        codec.check_header(b"GARBAGE!", "journal-0")
    codec.check_header(codec.file_header(), "journal-0")
    codec.check_header(codec.MAGIC + (1).to_bytes(2, "little"), "snapshot-1")  # older: read


def test_an_ended_sessions_timer_is_written_but_dropped_on_load() -> None:
    d = busy_dispatcher()
    shard, shop = d.shards[0], d.shards[0].shops["s"]
    ended = next(s for s in shop.sessions.values() if s.timer_due is not None)
    d.execute(EndSessions(at=T0 + 11 * MINUTE, shop_id="s", session_ids=(ended.session_id,)))
    d.drain_events()
    assert any(entry[4] is ended for entry in shard.timers)  # inert, still in the live heap
    raw = msgspec.msgpack.decode(image.encode(shard, 7))
    assert ended.session_id in [key for *_, key in raw[4]]  # the heap is written whole
    restored, _ = image.decode(image.encode(shard, 7))
    keys = [getattr(key, "session_id", key) for *_, key in restored.timers]
    assert ended.session_id not in keys
    assert all(  # still a heap
        restored.timers[i] <= restored.timers[c]
        for c in range(1, len(restored.timers))
        for i in [(c - 1) // 2]
    )
    assert dump(roundtrip(d)) == dump(d)


def test_a_format_2_image_still_reads() -> None:
    """Format 2 wrote "" for a session without a holder and only live timer entries."""
    d = busy_dispatcher()
    shop = d.shards[0].shops["s"]
    assert any(s.agent is None for s in shop.sessions.values())
    raw = msgspec.msgpack.decode(image.encode(d.shards[0], 7))
    for shop_image in raw[5]:
        for session_image in shop_image[4]:
            session_image[3] = session_image[3] or ""
    shard, position = image.decode(msgspec.msgpack.encode(raw))
    restored = Dispatcher(shards=1)
    restored.shards[0] = shard
    assert position == 7
    assert dump(restored) == dump(d)


def ended_and_starred() -> Dispatcher:
    """A shop whose agent has an ended part, a star and crowd-scoped groups (issue 15)."""
    d = Dispatcher(shards=1)
    run = d.execute
    change = PolicyChange(member_crowd="member", group_crowds={"desk": ("gold",)})
    run(SetPolicy(at=T0, shop_id="s", change=change))
    run(RegisterAgent(at=T0, shop_id="s", agent_id="a1", groups=("desk",), max_concurrent=3,
                      status=Status.ONLINE))  # fmt: skip
    for i, buyer in enumerate(["b1", "b2"]):
        run(Route(at=T0 + i, shop_id="s", buyer_id=buyer, request_id=f"r{i}", channel="shop_home"))
    run(Acknowledge(at=T0 + 5, shop_id="s", agent_id="a1", session_id="s1"))
    run(StarSession(at=T0 + 6, shop_id="s", agent_id="a1", session_id="s1"))
    run(StarSession(at=T0 + 6, shop_id="s", agent_id="a1", session_id="s2"))
    run(EndSessions(at=T0 + 7, shop_id="s", session_ids=("s1",)))
    run(Route(at=T0 + 8, shop_id="s", buyer_id="b2", request_id="r9"))
    d.drain_events()
    return d


def test_a_shard_image_keeps_ended_sessions_stars_and_the_new_policy_fields() -> None:
    d = ended_and_starred()
    agent = d.shards[0].shops["s"].agents["a1"]
    assert agent.ended and list(agent.ended) == ["s1"] and set(agent.starred or ()) == {"s1", "s2"}
    restored = roundtrip(d)
    assert dump(restored) == dump(d)
    shop = restored.shards[0].shops["s"]
    assert shop.crowd_groups == {"gold": ("desk",)}
    assert shop.sessions["s2"].last_buyer_at == T0 + 8


def test_an_image_from_before_issue_15_reads_with_no_ended_part_and_no_stars() -> None:
    d = ended_and_starred()
    raw = msgspec.msgpack.decode(image.encode(d.shards[0], 7))
    for shop_image in raw[5]:
        for agent_image in shop_image[2]:
            del agent_image[-2:]  # ended, starred
        for session_image in shop_image[4]:
            del session_image[-1:]  # last_buyer_at
    shard, _ = image.decode(msgspec.msgpack.encode(raw))
    agent = shard.shops["s"].agents["a1"]
    assert agent.ended is None and agent.starred is None
    session = shard.shops["s"].sessions["s2"]
    assert session.last_buyer_at == session.last_activity

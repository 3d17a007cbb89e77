"""The on-disk schema, pinned: journal records are keyed by tag and field name, images are
positional. A rename, a removal or a reordering breaks every data directory written before
it, so this test fails on one; adding a field with a default (at the end, for images) is how
the schema grows, and the addition goes into the pins below."""

from __future__ import annotations

import typing

import msgspec

from fenliu.server.core import image, types as t

# Records (format 5): tag -> field names. The names of format 1-4 records are the same, less
# format 5's request_id (issue 11).
RECORDS = {
    "SetPolicy": ["shop_id", "change", "request_id", "at"],
    "RegisterAgent": ["shop_id", "agent_id", "role", "groups", "max_concurrent", "status",
                      "replace", "request_id", "at"],
    "UpdateAgent": ["shop_id", "agent_id", "role", "groups", "max_concurrent", "request_id", "at"],
    "StarSession": ["shop_id", "agent_id", "session_id", "starred", "request_id", "at"],
    "RemoveAgent": ["shop_id", "agent_id", "request_id", "at"],
    "SetStatus": ["shop_id", "agent_id", "status", "request_id", "at"],
    "AddPrivateContact": ["shop_id", "buyer_id", "request_id", "at"],
    "RemovePrivateContact": ["shop_id", "buyer_id", "request_id", "at"],
    "Route": ["shop_id", "buyer_id", "request_id", "addressed_agent_id", "crowds", "group",
              "channel", "from_team_member", "at"],
    "Acknowledge": ["shop_id", "agent_id", "session_id", "request_id", "at"],
    "Reply": ["shop_id", "agent_id", "session_id", "request_id", "at"],
    "Transfer": ["shop_id", "session_id", "agent_id", "to_agent_id", "to_group", "force",
                 "request_id", "at"],
    "EndSessions": ["shop_id", "session_ids", "request_id", "at"],
    "Pick": ["shop_id", "agent_id", "session_id", "force", "request_id", "at"],
    "LeaveQueue": ["shop_id", "buyer_id", "request_id", "at"],
    "Tick": ["shard", "at"],
}  # fmt: skip
POLICY = ["strategy", "queue_order", "queue_limit", "on_queue_full", "priority_crowds",
          "priority_may_exceed_capacity", "notice_interval_ms", "route_when_all_suspended",
          "auto_assign_left_messages", "accept_timeout_ms", "reply_timeout_ms",
          "idle_end_timeout_ms", "queue_wait_limit_ms", "sticky_window_ms",
          "recent_contact_ttl_ms", "time_zone", "member_crowd", "group_crowds"]  # fmt: skip
DECISION = ["outcome", "reason", "buyer_id", "agent_id", "session_id", "queue_position", "state",
            "priority_notice", "notice"]  # fmt: skip
# Images: positional, so the order is the schema.
IMAGES = {
    image.AgentImage: ["agent_id", "role", "groups", "max_concurrent", "status", "sessions",
                       "backlog", "last_assign", "reg", "served_day", "served_count", "ended",
                       "starred"],
    image.EndedImage: ["session_id", "buyer_id", "channel", "group", "priority", "created_at",
                       "assigned_at", "last_buyer_at", "last_activity", "first_reply_at",
                       "ended_at", "reason"],
    image.SessionImage: ["seq", "buyer_id", "state", "agent_id", "group", "priority", "channel",
                         "created_at", "entered_at", "assigned_at", "awaiting_since",
                         "last_activity", "first_reply_at", "excluded", "reason", "timer_due",
                         "left_for", "private", "last_buyer_at"],
    image.CountersImage: ["day", "today", "minute", "current", "buckets"],
    image.ShopImage: ["shop_id", "policy", "agents", "main", "sessions", "left", "recent",
                      "private", "notices", "requests", "next_seq", "assign_seq", "reg_seq",
                      "event_seq", "counters"],
    image.ShardImage: ["index", "position", "now", "timer_seq", "timers", "shops", "keyed"],
    image.KeyedImage: ["shop_id", "request_id", "at", "command", "refused", "outcome"],
}  # fmt: skip


def _names(cls: type) -> list[str]:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    return [f.encode_name for f in info.fields]


def _grown(now: list[str], pinned: list[str]) -> bool:
    return set(pinned) <= set(now)


def test_every_record_keeps_its_tag_and_field_names() -> None:
    tags = {msgspec.inspect.type_info(c).tag: c for c in typing.get_args(t.AnyCommand)}  # type: ignore[attr-defined]
    assert set(RECORDS) <= set(tags)  # no tag renamed or removed
    for tag, fields in RECORDS.items():
        assert _grown(_names(tags[tag]), fields), tag
    assert _grown(_names(t.Policy), POLICY)
    assert _grown(_names(t.PolicyChange), POLICY)
    assert _grown(_names(t.Decision), DECISION)


def test_images_only_grow_at_the_end() -> None:
    for cls, fields in IMAGES.items():
        assert _names(cls)[: len(fields)] == fields, cls.__name__


def test_records_leave_defaults_out_and_read_back() -> None:
    route = t.Route(at=1, shop_id="s", buyer_id="b", request_id="r")
    raw = msgspec.msgpack.encode(route)
    assert msgspec.msgpack.decode(raw) == {
        "type": "Route", "shop_id": "s", "buyer_id": "b", "request_id": "r", "at": 1,
    }  # fmt: skip
    # A record of format 3 (every field written) reads as the same command.
    old = {"type": "Route", "at": 1, "shop_id": "s", "buyer_id": "b", "request_id": "r",
           "addressed_agent_id": "", "crowds": [], "group": "", "channel": "",
           "from_team_member": False}  # fmt: skip
    decoder = msgspec.msgpack.Decoder(t.AnyCommand)
    assert decoder.decode(msgspec.msgpack.encode(old)) == route
    assert decoder.decode(msgspec.msgpack.encode({"type": "Tick", "at": 5})) == t.Tick(at=5)

"""Version 1 shard images (one timer per recent contact and per request id) still load."""

from __future__ import annotations

import msgspec

from fenliu.server.core import image
from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.shop import T_RECENT, T_REQUEST
from fenliu.server.core.types import (
    MINUTE,
    Acknowledge,
    EndSessions,
    PolicyChange,
    Reason,
    RegisterAgent,
    Route,
    SetPolicy,
    Status,
    Tick,
)

T0 = 1_700_000_000_000


def test_a_version_1_image_keeps_its_contacts_and_requests_and_expires_them() -> None:
    d = Dispatcher(shards=1)
    d.execute(SetPolicy(at=T0, shop_id="s", change=PolicyChange(recent_contact_ttl_ms=MINUTE)))
    for agent in ("a1", "a2"):
        d.execute(RegisterAgent(at=T0, shop_id="s", agent_id=agent, max_concurrent=5,
                                status=Status.ONLINE))  # fmt: skip
    for i, buyer in enumerate(["x", "y"]):
        at = T0 + i * 1000
        decision = d.execute(Route(at=at, shop_id="s", buyer_id=buyer, request_id=f"r{i}",
                                   addressed_agent_id="a1"))  # fmt: skip
        d.execute(Acknowledge(at=at, shop_id="s", agent_id="a1", session_id=decision.session_id))
        d.execute(EndSessions(at=at, shop_id="s", session_ids=(decision.session_id,)))
    # Rewrite the image as version 1 wrote it: x's contact renewed in place (not moved to
    # the end), one timer per contact and per request id.
    old = msgspec.msgpack.decode(image.encode(d.shards[0], 7), type=image.ShardImage)
    shop = old.shops[0]
    shop.recent = {"x": ("a1", T0 + 1500), "y": ("a1", T0 + 1000)}
    timers = [e for e in old.timers if e[2] not in (T_RECENT, T_REQUEST)]
    seq = old.timer_seq
    for buyer, (_, at) in shop.recent.items():
        seq += 1
        timers.append((at + MINUTE, seq, T_RECENT, "s", buyer))
    for request_id, (_, at) in shop.requests.items():
        seq += 1
        timers.append((at + 10 * MINUTE, seq, T_REQUEST, "s", request_id))
    old.timers, old.timer_seq = sorted(timers), seq
    shard, position = image.decode(msgspec.msgpack.encode(old))
    assert position == 7
    assert [t[2] for t in shard.timers].count(T_RECENT) == 1
    assert [t[2] for t in shard.timers].count(T_REQUEST) == 1
    restored = Dispatcher(shards=1)
    restored.shards[0] = shard
    assert list(shard.shops["s"].recent_contacts()) == ["y", "x"]  # oldest first

    restored.execute(Tick(at=T0 + MINUTE + 1200))  # y expired, x not
    assert list(shard.shops["s"].recent_contacts()) == ["x"]
    route = Route(at=T0 + MINUTE + 1200, shop_id="s", buyer_id="x", request_id="n1")
    assert restored.execute(route).reason is Reason.RECENT_CONTACT
    assert restored.execute(Route(at=T0 + MINUTE + 1200, shop_id="s", buyer_id="x",
                                  request_id="r0")).session_id == "s1"  # fmt: skip
    restored.execute(Tick(at=T0 + 11 * MINUTE + 1000))  # r0 and r1 left the window
    assert set(shard.shops["s"].requests) == {"n1"}

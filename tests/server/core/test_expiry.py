"""Remembered recent contacts and request ids expire from the oldest, one timer per shop."""

from __future__ import annotations

from fenliu.server.core.shop import T_RECENT, T_REQUEST
from fenliu.server.core.types import Reason

from .conftest import SHOP, T0, World


def table_timers(w: World, kind: int) -> int:
    shard = w.d.shard_for(SHOP)
    return sum(1 for t in shard.timers if t[2] == kind and t[3].shop_id == SHOP)


def test_a_recent_contact_is_forgotten_after_its_ttl_unless_renewed(w: World) -> None:
    # The sticky window outlasts the TTL, so only forgetting stops rule 4.
    w.policy(sticky_window_ms=120 * 60_000, recent_contact_ttl_ms=30 * 60_000)
    w.agent("a1")
    w.agent("a2")
    w.serve("x", "a1")
    w.serve("y", "a1")
    w.serve("z", "a2")
    assert table_timers(w, T_RECENT) == 1  # one for the shop, not one per buyer
    w.advance(minutes=20)
    w.serve("x", "a1")  # renewed: now the newest contact
    w.advance(minutes=11)  # y and z are 31 minutes old, x 11
    for buyer, reason in [("y", Reason.STRATEGY), ("z", Reason.STRATEGY)]:
        decision = w.route(buyer)
        assert decision.reason is reason
        w.end(decision.session_id)
    decision = w.route("x")
    assert (decision.reason, decision.agent_id) == (Reason.RECENT_CONTACT, "a1")
    w.end(decision.session_id)
    w.advance(minutes=20)  # x is 31 minutes old too
    assert w.route("x").reason is Reason.STRATEGY
    assert table_timers(w, T_RECENT) == 0  # nothing left to remember


def test_a_request_id_is_answered_from_memory_for_ten_minutes(w: World) -> None:
    w.agent("a1")
    first = w.route("b1", request_id="same")
    w.route("b2", request_id="other")
    assert table_timers(w, T_REQUEST) == 1
    w.advance(minutes=9)
    assert w.route("b1", request_id="same") == first  # a retry, not a new message
    w.advance(minutes=1)
    again = w.route("b1", request_id="same")
    assert again.reason is Reason.OPEN_SESSION  # a new message on the open session
    assert again.session_id == first.session_id


def test_requests_sharing_a_time_expire_together_and_each_by_its_own_time(w: World) -> None:
    """The request ids' times are kept run-length (no tuple per request): several at one
    moment, then later ones; each leaves the window by its own time, in order, and the
    table (what a shard image keeps) gives every id with its time, across a restore."""
    from fenliu.server.core import image

    w.agent("a1", max=100)
    first = [w.route(f"b{i}", request_id=f"r{i}") for i in range(3)]  # at T0
    w.advance(minutes=4)
    w.route("c1", request_id="later")  # at T0 + 4 min
    shop = w.d.shard_for(SHOP).shops[SHOP]
    table = shop.request_table()
    assert [(rid, at - T0) for rid, (_, at) in table.items()] == [
        ("r0", 0),
        ("r1", 0),
        ("r2", 0),
        ("later", 4 * 60_000),
    ]
    assert [d for d, _ in list(table.values())[:3]] == first
    shard = w.d.shard_for(SHOP)
    restored, _ = image.decode(image.encode(shard, 0))
    assert restored.shops[SHOP].request_table() == table
    w.advance(minutes=6)  # r0-r2 are 10 minutes old, "later" 6
    assert list(shop.requests) == ["later"]
    assert w.route("b0", request_id="r0").reason is Reason.OPEN_SESSION  # not a retry
    assert w.route("c1", request_id="later").session_id.startswith("s")
    assert list(shop.request_table())[:1] == ["later"]
    w.advance(minutes=4)  # "later" is 10 minutes old; r0 (again) 4
    assert list(shop.requests) == ["r0"]
    assert table_timers(w, T_REQUEST) == 1

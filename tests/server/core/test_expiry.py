"""Remembered recent contacts and request ids expire from the oldest, one timer per shop."""

from __future__ import annotations

from fenliu.server.core.shop import T_RECENT, T_REQUEST
from fenliu.server.core.types import Reason

from .conftest import SHOP, World


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

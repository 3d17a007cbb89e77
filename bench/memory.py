"""Memory of the core's state, measured with tracemalloc (SPEC §8 targets).

    python bench/memory.py                 # 100 shops x 100 agents, 100,000 buyers
    python bench/memory.py --shops 10 --agents 100 --buyers 20000

Every figure is the growth of traced memory over one step, divided by the items the
step adds, with everything the step allocated and the core keeps counted (the id
strings, dict slots, timer-heap entries, events drained). Steps:

- agents: registering ONLINE agents (ids like ``a123``, one group each);
- open sessions: routing new buyers (ids like ``b123456``) that the strategy assigns,
  measured after their request ids left the 10-minute idempotency window, so the figure
  is what an open session costs for as long as it stays open;
- request ids: what the Route requests of the previous step cost while remembered
  (10 minutes), per request;
- recent contacts: the sessions acknowledged and ended; what stays is one remembered
  recent contact per buyer (``recent_contact_ttl_ms``, 180 days by default), less what
  the same run leaves when no session was acted on (dict tables do not shrink);
- ended records: what each ended session leaves in its agent's list (seed 003's ended
  part, kept ``ENDED_KEEP_MS``, at most ``ENDED_PER_AGENT`` per agent): the same run with
  the records kept, less one with them switched off, per record kept.

Prints one JSON record.
"""

from __future__ import annotations

import argparse
import gc
import json
import tracemalloc

from fenliu.server import core
from fenliu.server.core import shop as core_shop
from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.types import (
    MINUTE,
    Acknowledge,
    EndSessions,
    PolicyChange,
    RegisterAgent,
    Route,
    SetPolicy,
    Status,
    Tick,
)

T0 = 1_700_000_000_000
TARGETS = {"agent": 1024, "open_session": 600, "recent_contact": 150}
# ended_record has no SPEC target; it is reported beside them


def traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def measure(shops: list[str], agents: int, buyers: int, act: bool) -> dict[str, float]:
    """Traced growth of each step in a fresh core; ``act``: agents acknowledge before the
    sessions end (each buyer then leaves a recent contact behind)."""
    d = Dispatcher()
    # Timeouts off so that sessions stay open while the clock moves past the request window.
    off = PolicyChange(accept_timeout_ms=0, reply_timeout_ms=0, idle_end_timeout_ms=0)
    for shop in shops:
        d.execute(SetPolicy(at=T0, shop_id=shop, change=off))
    figures: dict[str, float] = {}

    base = traced()
    for shop in shops:
        for a in range(agents):
            d.execute(
                RegisterAgent(
                    at=T0,
                    shop_id=shop,
                    agent_id=f"a{a}",
                    groups=(f"g{a % 4}",),
                    max_concurrent=10_000,
                    status=Status.ONLINE,
                )
            )
    d.drain_events()
    figures["agent"] = (traced() - base) / (len(shops) * agents)

    base = traced()
    opened: list[tuple[str, str, str]] = []
    for n in range(buyers):
        shop = shops[n % len(shops)]
        decision = d.execute(Route(at=T0, shop_id=shop, buyer_id=f"b{n}", request_id=f"r{n}"))
        opened.append((shop, decision.agent_id, decision.session_id))
    d.drain_events()
    with_requests = traced()
    at = T0 + 11 * MINUTE
    d.execute(Tick(at=at))  # the request ids leave the idempotency window
    d.drain_events()
    after = traced()
    figures["open_session"] = (after - base) / buyers
    figures["request_id"] = (with_requests - after) / buyers

    for shop, agent_id, session_id in opened:
        if act:
            d.execute(Acknowledge(at=at, shop_id=shop, agent_id=agent_id, session_id=session_id))
        d.execute(EndSessions(at=at, shop_id=shop, session_ids=(session_id,)))
    d.drain_events()
    del opened
    figures["ended"] = (traced() - base) / buyers  # what the ended sessions left behind
    figures["kept"] = sum(
        len(a.ended or ())
        for shard in d.shards
        for shop in shard.shops.values()
        for a in shop.agents.values()
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shops", type=int, default=100)
    parser.add_argument("--agents", type=int, default=100, help="per shop")
    parser.add_argument("--buyers", type=int, default=100_000, help="in all")
    args = parser.parse_args()
    shops = [f"shop{s}" for s in range(args.shops)]
    if core.COMPILED:
        # a compiled class's calls between its methods are direct: the patch would not apply
        raise SystemExit(
            "bench/memory.py patches Shop.keep_ended: run it on the pure core "
            "(FENLIU_PURE=1 pip install ., or an editable install)"
        )
    tracemalloc.start()
    # Ending sessions leaves dict tables as large as they grew (dicts do not shrink): the
    # cost of a recent contact is what one run with acknowledged sessions keeps beyond an
    # identical run whose sessions were never acted on (no contact remembered).
    control = measure(shops, args.agents, args.buyers, act=False)
    figures = measure(shops, args.agents, args.buyers, act=True)
    tracemalloc.stop()
    kept = control.pop("kept")
    figures.pop("kept")
    figures["recent_contact"] = figures.pop("ended") - control["ended"]
    # The ended part: the control run again with no ended records kept.
    keep = core_shop.Shop.keep_ended
    core_shop.Shop.keep_ended = lambda self, agent, session: None  # type: ignore[method-assign]
    tracemalloc.start()
    bare = measure(shops, args.agents, args.buyers, act=False)
    tracemalloc.stop()
    core_shop.Shop.keep_ended = keep  # type: ignore[method-assign]
    figures["ended_record"] = (control["ended"] - bare["ended"]) * args.buyers / kept

    report = {
        "shops": args.shops,
        "agents_per_shop": args.agents,
        "buyers": args.buyers,
        "bytes": {k: round(v) for k, v in figures.items()},
        "targets": TARGETS,
        "met": {k: figures[k] <= limit for k, limit in TARGETS.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""The GC pauses of a core holding a large world, with and without the server's freeze.

    python bench/gc_pause.py                       # 10,000 shops x 5 agents, 100,000 routes
    python bench/gc_pause.py --shops 1000 --routes 20000

In-process (no gRPC): builds the world (ONLINE agents), then routes a stream of new
buyers, ending each session ``--hold`` routes later (as the load harness's churn does).
Every collection the interpreter runs is timed through ``gc.callbacks`` (that is how long
the event loop would stand still). ``default`` leaves CPython's GC alone; ``freeze`` does
what the server does with ``gc_freeze_interval_s`` (``freeze_heap``): a full one after
the world is built and an ordinary one every ``--freeze-every`` routes (the freezes are timed too:
the first, of the whole world, is the server's after recovery, before it serves). Prints
one JSON record: per mode, collections by generation, the longest pause, the total, and
the traced-memory growth of the stream.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc
from collections import deque
from typing import Any

from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.types import EndSessions, RegisterAgent, Route, Status
from fenliu.server.rpc.app import freeze_heap

T0 = 1_700_000_000_000


def run(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    gc.collect()
    gc.unfreeze()
    pauses: list[tuple[int, float]] = []
    started = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - started[0]))

    d = Dispatcher()
    shops = [f"s{i}" for i in range(args.shops)]
    for shop in shops:
        for a in range(args.agents):
            d.execute(
                RegisterAgent(at=T0, shop_id=shop, agent_id=f"a{a}", max_concurrent=10,
                              status=Status.ONLINE)
            )  # fmt: skip
    d.drain_events()
    freezes: list[float] = []

    if mode == "freeze":  # the whole world, as the server does after recovery
        freezes.append(freeze_heap(full=True))
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    gc.callbacks.append(timed)
    try:
        open_: deque[tuple[str, str]] = deque()
        for n in range(args.routes):
            at = T0 + n
            shop = shops[(n * 7919) % len(shops)]
            decision = d.execute(Route(at=at, shop_id=shop, buyer_id=f"b{n}", request_id=f"r{n}"))
            if decision.session_id:
                open_.append((shop, decision.session_id))
            if len(open_) > args.hold:
                shop_id, session_id = open_.popleft()
                d.execute(EndSessions(at=at, shop_id=shop_id, session_ids=(session_id,)))
            d.drain_events()
            if mode == "freeze" and n and n % args.freeze_every == 0:
                freezes.append(freeze_heap())
    finally:
        gc.callbacks.remove(timed)
    growth = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    by_gen = {g: [p for gen, p in pauses if gen == g] for g in (0, 1, 2)}
    return {
        "collections": {f"gen{g}": len(v) for g, v in by_gen.items()},
        "longest_ms": {f"gen{g}": round(max(v, default=0) * 1000, 2) for g, v in by_gen.items()},
        "total_ms": round(sum(p for _, p in pauses) * 1000, 1),
        "freezes": len(freezes),
        "first_freeze_ms": round(freezes[0] * 1000, 2) if freezes else 0,  # the whole world
        "longest_later_freeze_ms": round(max(freezes[1:], default=0) * 1000, 2),
        "frozen_objects": gc.get_freeze_count(),
        "traced_growth_kib": growth // 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shops", type=int, default=10_000)
    p.add_argument("--agents", type=int, default=5, help="per shop")
    p.add_argument("--routes", type=int, default=100_000)
    p.add_argument("--hold", type=int, default=2_000, help="sessions open at once")
    p.add_argument("--freeze-every", type=int, default=5_000, help="routes between freezes")
    args = p.parse_args()
    record = {"parameters": vars(args), "python": __import__("sys").version.split()[0]}
    for mode in ("default", "freeze"):
        record[mode] = run(mode, args)
    gc.unfreeze()
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()

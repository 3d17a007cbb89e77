"""The cyclic GC's cost a new buyer in a growing world, in-process, with the server's
freezes (README "Garbage collection"), CPython's own full collections on or off.

    python bench/gc_world.py                  # both modes, alternating, 2 runs each
    python bench/gc_world.py --decisions 450000 --per-freeze 90000 --runs 3

The core's Dispatcher (no gRPC) gets ``--decisions`` new buyers over 400 shops of 4
agents (bench/cpu.py's world); every ``--per-freeze`` decisions (about a second of a
RouteBatch run) it does what the server's periodic freeze does (``gc.collect(1)``,
``gc.freeze()``). ``default`` leaves CPython's thresholds; ``no-auto-full`` sets
generation 2's out of reach, as ``fenliu-server`` does while it freezes. Prints one JSON
line a run: collections and CPU seconds (``thread_time``) per generation, GC µs a decision.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from typing import Any

from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.types import RegisterAgent, Route, Status
from fenliu.server.rpc.app import NO_AUTOMATIC_FULL

T0 = 1_700_000_000_000


def run(mode: str, decisions: int, per_freeze: int, shops: int) -> dict[str, Any]:
    dispatcher = Dispatcher()
    ids = [f"c{s:03d}" for s in range(shops)]
    for shop in ids:
        for a in range(4):
            agent = RegisterAgent(
                at=T0, shop_id=shop, agent_id=f"a{a}", max_concurrent=10_000, status=Status.ONLINE
            )
            dispatcher.execute(agent)
    dispatcher.drain_events()
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    if mode == "no-auto-full":
        gc.set_threshold(before[0], before[1], NO_AUTOMATIC_FULL)
    stats = {g: [0, 0.0] for g in range(3)}
    started = [0.0]

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.thread_time()
        else:
            s = stats[info["generation"]]
            s[0] += 1
            s[1] += time.thread_time() - started[0]

    gc.callbacks.append(watch)
    try:
        t0 = time.thread_time()
        for n in range(decisions):
            shop_id = ids[n * 7919 % shops]
            route = Route(at=T0 + n // 100, shop_id=shop_id, buyer_id=f"b{n}", request_id=f"r{n}")
            dispatcher.execute(route)
            if n % 1000 == 999:
                dispatcher.drain_events()
            if n % per_freeze == per_freeze - 1:
                gc.collect(1)
                gc.freeze()
        total = time.thread_time() - t0
    finally:
        gc.callbacks.remove(watch)
        gc.set_threshold(*before)
        gc.unfreeze()
    gc_s = sum(t for _, t in stats.values())
    return {"mode": mode, "collections": {g: c for g, (c, _) in stats.items()},
            "gc_s": {g: round(t, 3) for g, (_, t) in stats.items()},
            "us_per_decision": round(total / decisions * 1e6, 2),
            "gc_us_per_decision": round(gc_s / decisions * 1e6, 3)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=450_000)
    parser.add_argument("--per-freeze", type=int, default=90_000)
    parser.add_argument("--shops", type=int, default=400)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    for _ in range(args.runs):
        for mode in ("default", "no-auto-full"):
            print(json.dumps(run(mode, args.decisions, args.per_freeze, args.shops)), flush=True)


if __name__ == "__main__":
    main()

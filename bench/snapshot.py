"""Snapshot time and routing stall: the snapshotter process against an in-process snapshot.

    python bench/snapshot.py                                  # 100,000 agents, 1,000,000 sessions
    python bench/snapshot.py --agents 10000 --sessions 100000 # a quick look

Builds the world through a real ``Node`` on real files (every change journaled, fsync
off to build it quickly), starts the snapshotter (which loads its replica from those
files, as it does when a server starts), then for each round: routes ``--delta`` more
buyers, and times one snapshot by the snapshotter while a 1 ms heartbeat runs on the
server's loop (the longest gap is the routing stall), with the snapshotter's CPU time;
then the same snapshot encoded in-process on the loop, as the baseline, and the
heartbeat's longest gap with nothing to do (the machine's own noise floor). Medians over
``--rounds``; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.types import RegisterAgent, Route, Status
from fenliu.server.node import Node
from fenliu.server.snapshots import Snapshotter, snapshot_in_process
from fenliu.server.storage.files import FilesStorage

T0 = 1_700_000_000_000
SHOPS = 1000
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system time of a process and of its children it has waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICKS


async def build(node: Node, agents: int, sessions: int, first: int = 0) -> None:
    per_shop = max(1, agents // SHOPS)
    capacity = sessions // (per_shop * SHOPS) + 2
    if not first:
        for s in range(SHOPS):
            for a in range(per_shop):
                await node.execute(RegisterAgent(at=T0, shop_id=f"shop{s}", agent_id=f"a{a}",
                                                 max_concurrent=capacity * 2,
                                                 status=Status.ONLINE))  # fmt: skip
    pending = []
    for i in range(first, first + sessions):
        pending.append(node.execute(Route(at=T0, shop_id=f"shop{i % SHOPS}", buyer_id=f"b{i}",
                                          request_id=f"r{i}")))  # fmt: skip
        if len(pending) >= 1000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    for shard in node.dispatcher.shards:  # the idempotency window would have let these go
        for shop in shard.shops.values():
            shop.forget_requests()


async def stalled(work: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """(seconds ``work`` took, the longest gap in a 1 ms heartbeat meanwhile, in ms)."""
    gaps: list[float] = []
    running = True

    async def heartbeat() -> None:
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    started = time.perf_counter()
    await work()
    took = time.perf_counter() - started
    running = False
    await beat
    return took, max(gaps) * 1000


async def main(args: argparse.Namespace) -> dict[str, Any]:
    record: dict[str, Any] = {"agents": args.agents, "sessions": args.sessions}
    with tempfile.TemporaryDirectory(prefix="fenliu-bench-snap-") as tmp:
        root = Path(tmp)
        storage = FilesStorage(root, 16, fsync=False)
        node = Node(Dispatcher(16), lambda: T0)
        node.open(storage)
        started = time.perf_counter()
        await build(node, args.agents, args.sessions)
        record["build_s"] = round(time.perf_counter() - started, 1)
        gc.collect()
        gc.freeze()  # as fenliu-server does
        snapshotter = Snapshotter(root, 16)
        started = time.perf_counter()
        await snapshotter.start()
        assert await snapshotter.snapshot(storage)  # its first: loads the replica, then stores
        record["snapshotter_first_s"] = round(time.perf_counter() - started, 1)
        runs: dict[str, list[float]] = {k: [] for k in (
            "snapshotter_s", "snapshotter_stall_ms", "snapshotter_cpu_s",
            "in_process_s", "in_process_stall_ms", "idle_stall_ms")}  # fmt: skip
        assert snapshotter._proc is not None
        pid = snapshotter._proc.pid
        for r in range(args.rounds):
            await build(node, args.agents, args.delta, first=args.sessions + r * args.delta)
            cpu = cpu_s(pid)
            took, stall = await stalled(lambda: snapshotter.snapshot(storage))
            runs["snapshotter_cpu_s"].append(cpu_s(pid) - cpu)
            runs["snapshotter_s"].append(took)
            runs["snapshotter_stall_ms"].append(stall)
            took, stall = await stalled(lambda: snapshot_in_process(node, storage))
            runs["in_process_s"].append(took)
            runs["in_process_stall_ms"].append(stall)
            # The floor: the heartbeat's own longest gap over as long, with nothing to do.
            idle = runs["snapshotter_s"][-1]
            runs["idle_stall_ms"].append((await stalled(partial(asyncio.sleep, idle)))[1])
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in runs.items()),
                  flush=True)  # fmt: skip
        await snapshotter.close()
        storage.close()
        record.update({k: round(statistics.median(v), 3) for k, v in runs.items()})
        record["snapshot_mb"] = round(
            sum(p.stat().st_size for p in root.glob("shard-*/snapshot-*.snap")) / 2 / 1e6, 1
        )  # two kept per shard
    record["load_average"] = os.getloadavg()
    return record


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--delta", type=int, default=10_000, help="buyers routed per round")
    parser.add_argument("--rounds", type=int, default=3)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))

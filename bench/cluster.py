"""Cluster mode through the cluster-aware SDK (issue 11), each case against its baseline
in the same run:

    python bench/cluster.py                    # all four, 3 rounds
    python bench/cluster.py --only scale --rounds 3 --seconds 8

- scale: decisions/s of new buyers with 1 node vs 2 nodes, the SDK splitting the load
  (each call to its shop's owner); load processes (``--procs``, each an AsyncClient with
  ``--callers`` unary Routes in flight) run the same load against both; also the nodes'
  CPU per decision (utime + stime of the node processes, /proc) and p50/p99.
- failover: 2 nodes under load, the owner of a probed shop SIGKILLed: the time from the
  kill to the probe's first decision on the new owner (target ≤ 5 s), p99 of every call
  in the 10 s after the kill against the 5 s before (the SDK retries within the deadline).
- handoff: 3 nodes under load, one stopped with SIGTERM (its shards handed over): the
  longest a call on a moved shard was held (target ≤ 1 s of unavailability), errors
  surfacing (none expected), p99 during against before.
- join: 2 nodes under load, a third started (the others hand it its share): the same
  figures for the shops of the shards that moved.

Engines: a 3-node NATS JetStream cluster and one etcd (``server/cluster/local.py``), fresh
fenliu nodes (lease TTL 2 s) per case and round, on loopback; everything, the load
included, shares this machine's cores. Prints one JSON line per round and a summary with
the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing as mp
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from fenliu.client import AsyncClient
from fenliu.server.cluster.local import EtcdCluster, FenliuNode, NatsCluster
from fenliu.server.core.dispatcher import shard_index

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import process_cpu_s  # noqa: E402

SHARDS = 16
SHOPS = [f"bshop{i}" for i in range(64)]
EXTRA = ["--lease-ttl", "2", "--tick-interval", "0.5"]
_names = itertools.count(1)
_ids = itertools.count(1)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.nats = NatsCluster(root / "nats", size=3)
        self.etcd = EtcdCluster(root / "etcd", size=1)

    def nodes(self, count: int) -> tuple[str, list[FenliuNode]]:
        name = f"b{os.getpid()}x{next(_names)}"
        started = []
        for _ in range(count):
            node = FenliuNode(self.root / "nodes", f"n{next(_ids)}", self.nats, self.etcd,
                              name=name, shards=SHARDS, extra=EXTRA)  # fmt: skip
            node.start()
            node.wait_healthy(90)
            started.append(node)
        return name, started

    def add(self, name: str) -> FenliuNode:
        node = FenliuNode(self.root / "nodes", f"n{next(_ids)}", self.nats, self.etcd,
                          name=name, shards=SHARDS, extra=EXTRA)  # fmt: skip
        node.start()
        node.wait_healthy(90)
        return node

    def close(self) -> None:
        self.etcd.stop()
        self.nats.stop()


async def settle(fenliu: AsyncClient, addresses: set[str], timeout: float = 120) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        cmap = await fenliu.cluster_map()
        owners = {o.shard: o.address for o in cmap.owners if o.address}
        if set(owners) == set(range(SHARDS)) and set(owners.values()) == addresses:
            return owners
        if time.monotonic() > deadline:
            raise RuntimeError(f"shards never settled on {addresses}: {owners}")
        await asyncio.sleep(0.2)


async def prepare(addresses: list[str]) -> None:
    async with AsyncClient(addresses, timeout=60, retry_budget=60) as fenliu:
        await settle(fenliu, set(addresses))
        for shop in SHOPS:
            for agent in ("a1", "a2", "a3", "a4"):  # 40,000 sessions per shop, never full
                await fenliu.register_agent(shop, agent, max_concurrent=10_000, status="online")


# ---------------------------------------------------------------- load processes


def _worker(addresses: list[str], callers: int, start: float, stop: float, tag: str,
            out: Any) -> None:  # fmt: skip
    """One load process: ``callers`` Routes of new buyers in flight from ``start`` to
    ``stop`` (wall clock); puts (count, latencies, errors) on ``out``."""

    async def main() -> tuple[int, list[float], int]:
        latencies: list[float] = []
        errors = 0
        serial = itertools.count()
        async with AsyncClient(addresses, timeout=30, retry_budget=30) as fenliu:
            await fenliu.cluster_map()  # the map read before the clock starts
            await fenliu.route(SHOPS[0], f"{tag}-warm")

            async def caller(k: int) -> None:
                nonlocal errors
                while time.time() < stop:
                    shop = SHOPS[(k * 7919 + next(serial)) % len(SHOPS)]
                    began = time.perf_counter()
                    try:
                        await fenliu.route(shop, f"{tag}-{k}-{next(serial)}")
                    except Exception:  # noqa: BLE001 - counted
                        errors += 1
                        continue
                    latencies.append(time.perf_counter() - began)

            await asyncio.sleep(max(0.0, start - time.time()))
            await asyncio.gather(*(caller(k) for k in range(callers)))
        return len(latencies), latencies, errors

    out.put(asyncio.run(main()))


def scale_round(env: Env, count: int, args: argparse.Namespace) -> dict[str, Any]:
    _, nodes = env.nodes(count)
    try:
        addresses = [n.address for n in nodes]
        asyncio.run(prepare(addresses))
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        start = time.time() + 4.0  # the processes import and connect first
        stop = start + args.seconds
        procs = [
            ctx.Process(target=_worker, args=(addresses, args.callers, start, stop, f"p{p}", out))
            for p in range(args.procs)
        ]
        for p in procs:
            p.start()
        time.sleep(max(0.0, start - time.time()))
        cpu0 = sum(process_cpu_s(n.pid) for n in nodes)
        time.sleep(max(0.0, stop - time.time()))
        cpu1 = sum(process_cpu_s(n.pid) for n in nodes)
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
        done = sum(r[0] for r in results)
        latencies = [x for r in results for x in r[1]]
        return {
            "case": "scale", "nodes": count, "decisions_per_s": round(done / args.seconds),
            "server_cpu_us_per_decision": round((cpu1 - cpu0) / max(1, done) * 1e6, 1),
            "p50_ms": round(pct(latencies, 0.5) * 1e3, 2),
            "p99_ms": round(pct(latencies, 0.99) * 1e3, 2),
            "errors": sum(r[2] for r in results), "load": os.getloadavg()[0],
        }  # fmt: skip
    finally:
        for node in nodes:
            node.stop(30)


# ---------------------------------------------------------------- failover and hand-off


class Traffic:
    """In-process callers (one AsyncClient) recording (start, end, shop, ok) per call."""

    def __init__(self, fenliu: AsyncClient, shops: list[str], callers: int) -> None:
        self.fenliu, self.shops = fenliu, shops
        self.calls: list[tuple[float, float, str, bool]] = []
        self._stop = asyncio.Event()
        self._serial = itertools.count()
        self.tasks = [asyncio.create_task(self._caller(k, callers)) for k in range(callers)]

    async def _caller(self, k: int, callers: int) -> None:
        i = k
        while not self._stop.is_set():
            shop = self.shops[i % len(self.shops)]
            i += callers
            began = time.monotonic()
            try:
                await self.fenliu.route(shop, f"t-{next(self._serial)}")
                ok = True
            except Exception:  # noqa: BLE001 - an error surfacing: counted
                ok = False
            self.calls.append((began, time.monotonic(), shop, ok))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self.tasks)

    def p99(self, since: float, until: float) -> float:
        return pct([e - b for b, e, _, ok in self.calls if since <= b < until and ok], 0.99)


def failover_round(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    name, nodes = env.nodes(2)

    async def main() -> dict[str, Any]:
        addresses = [n.address for n in nodes]
        await prepare(addresses)
        async with AsyncClient(addresses, timeout=30, retry_budget=30) as fenliu:
            owners = await settle(fenliu, set(addresses))
            victim = next(n for n in nodes if n.address == owners[0])
            moved = [s for s in SHOPS if owners[shard_index(s, SHARDS)] == victim.address]
            traffic = Traffic(fenliu, SHOPS, args.callers)
            await asyncio.sleep(5.0)
            killed = time.monotonic()
            victim.kill()
            await asyncio.sleep(10.0)
            await traffic.stop()
        first = min((e for b, e, s, ok in traffic.calls if ok and s in moved and b >= killed),
                    default=float("nan"))  # fmt: skip
        return {
            "case": "failover", "kill_to_served_s": round(first - killed, 2),
            "p99_before_ms": round(traffic.p99(killed - 5, killed) * 1e3, 1),
            "p99_after_ms": round(traffic.p99(killed, killed + 10) * 1e3, 1),
            "errors": sum(1 for *_, ok in traffic.calls if not ok), "load": os.getloadavg()[0],
        }  # fmt: skip

    try:
        return asyncio.run(main())
    finally:
        for node in nodes:
            if node.running:
                node.stop(30)
        del name


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_STEP = re.compile(r"(\w+) \+(\d+\.\d+)")


def log_offsets(nodes: list[FenliuNode]) -> dict[str, int]:
    return {n.name: n.log_path.stat().st_size if n.log_path.exists() else 0 for n in nodes}


def step_log(nodes: list[FenliuNode], offsets: dict[str, int], began: float) -> dict[str, Any]:
    """What the nodes' step logs say about the hand-off that began at ``began`` (wall
    clock): when the last key was freed and the last moved shard served (seconds after
    ``began``), the longest claim, and the longest of each takeover step."""
    freed: list[float] = []
    served: list[float] = []
    claims: list[float] = []
    worst: dict[str, float] = {}
    for node in nodes:
        if not node.log_path.exists():
            continue
        with open(node.log_path, "rb") as f:
            f.seek(offsets.get(node.name, 0))
            text = f.read().decode(errors="replace")
        for line in text.splitlines():
            stamp = _STAMP.match(line)
            if stamp is None:
                continue
            at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - began
            if "handed over (settled" in line:
                freed.append(at)
            elif "owned at epoch" in line:
                served.append(at)
                found = re.search(r"rebuilt in (\d+\.\d+)s", line)
                if found:
                    claims.append(float(found.group(1)))
            elif "takeover steps" in line:
                for name, value in _STEP.findall(line.split("takeover steps", 1)[1]):
                    worst[name] = max(worst.get(name, 0.0), float(value))
    return {
        "last_freed_s": round(max(freed, default=float("nan")), 3),
        "last_served_s": round(max(served, default=float("nan")), 3),
        "longest_claim_s": round(max(claims, default=float("nan")), 3),
        "longest_step_s": {k: round(v, 3) for k, v in worst.items()},
    }


def handoff_round(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    name, nodes = env.nodes(3)

    async def main() -> dict[str, Any]:
        addresses = [n.address for n in nodes]
        await prepare(addresses)
        async with AsyncClient(addresses, timeout=30, retry_budget=30) as fenliu:
            owners = await settle(fenliu, set(addresses))
            leaving = nodes[0]
            moved = [s for s in SHOPS if owners[shard_index(s, SHARDS)] == leaving.address]
            traffic = Traffic(fenliu, SHOPS, args.callers)
            await asyncio.sleep(5.0)
            offsets = log_offsets(nodes)
            wall = time.time()
            began = time.monotonic()
            await asyncio.to_thread(leaving.stop, 30)  # SIGTERM: a planned hand-off
            ended = time.monotonic()
            await asyncio.sleep(5.0)
            await traffic.stop()
        window = [(b, e) for b, e, s, ok in traffic.calls
                  if s in moved and e >= began and b <= ended + 5]  # fmt: skip
        return {
            "case": "handoff", "sigterm_to_exit_s": round(ended - began, 2),
            "longest_held_call_s": round(max((e - b for b, e in window), default=0.0), 3),
            "it_began_s": round(max(window, key=lambda w: w[1] - w[0], default=(began, 0))[0]
                                - began, 3),  # fmt: skip
            "calls_held_over_0.5_s": sum(1 for b, e in window if e - b > 0.5),
            "steps": step_log(nodes, offsets, wall),
            "p99_before_ms": round(traffic.p99(began - 5, began) * 1e3, 1),
            "p99_during_ms": round(traffic.p99(began, ended + 5) * 1e3, 1),
            "errors": sum(1 for *_, ok in traffic.calls if not ok), "load": os.getloadavg()[0],
        }  # fmt: skip

    try:
        return asyncio.run(main())
    finally:
        for node in nodes:
            node.stop(30)
        del name


def join_round(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    name, nodes = env.nodes(2)

    async def main() -> dict[str, Any]:
        addresses = [n.address for n in nodes]
        await prepare(addresses)
        async with AsyncClient(addresses, timeout=30, retry_budget=30) as fenliu:
            before = await settle(fenliu, set(addresses))
            traffic = Traffic(fenliu, SHOPS, args.callers)
            await asyncio.sleep(5.0)
            offsets = log_offsets(nodes)
            wall = time.time()
            began = time.monotonic()
            nodes.append(await asyncio.to_thread(env.add, name))  # serving: then it claims
            after = await settle(fenliu, {*addresses, nodes[-1].address})
            ended = time.monotonic()
            await asyncio.sleep(5.0)
            await traffic.stop()
        moved = [
            s for s in SHOPS if before[shard_index(s, SHARDS)] != after[shard_index(s, SHARDS)]
        ]
        window = [(b, e) for b, e, s, ok in traffic.calls
                  if s in moved and e >= began and b <= ended + 5]  # fmt: skip
        return {
            "case": "join", "start_to_settled_s": round(ended - began, 2),
            "moved_shards": sum(1 for i in range(SHARDS) if before[i] != after[i]),
            "longest_held_call_s": round(max((e - b for b, e in window), default=0.0), 3),
            "steps": step_log(nodes, offsets, wall),
            "p99_before_ms": round(traffic.p99(began - 5, began) * 1e3, 1),
            "p99_during_ms": round(traffic.p99(began, ended + 5) * 1e3, 1),
            "errors": sum(1 for *_, ok in traffic.calls if not ok), "load": os.getloadavg()[0],
        }  # fmt: skip

    try:
        return asyncio.run(main())
    finally:
        for node in nodes:
            node.stop(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="scale: each measurement")
    parser.add_argument("--procs", type=int, default=2, help="scale: load processes")
    parser.add_argument("--callers", type=int, default=32, help="calls in flight per process")
    parser.add_argument("--only", choices=("scale", "failover", "handoff", "join"), default=None)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    env = Env(Path(tempfile.mkdtemp(prefix="fenliu-bench-cluster-")))
    rows: list[dict[str, Any]] = []
    try:
        for _ in range(args.rounds):
            if args.only in (None, "scale"):
                for count in (1, 2):
                    rows.append(scale_round(env, count, args))
                    print(json.dumps(rows[-1]), flush=True)
            if args.only in (None, "failover"):
                rows.append(failover_round(env, args))
                print(json.dumps(rows[-1]), flush=True)
            if args.only in (None, "handoff"):
                rows.append(handoff_round(env, args))
                print(json.dumps(rows[-1]), flush=True)
            if args.only in (None, "join"):
                rows.append(join_round(env, args))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        env.close()
    print(f"load average after: {os.getloadavg()}")
    for count in (1, 2):
        got = [r for r in rows if r["case"] == "scale" and r["nodes"] == count]
        if got:
            rate = statistics.median(r["decisions_per_s"] for r in got)
            cpu = statistics.median(r["server_cpu_us_per_decision"] for r in got)
            print(f"scale, {count} node(s): {rate:,.0f} decisions/s (median of {len(got)}), "
                  f"{cpu} us server CPU per decision")  # fmt: skip
    for case, key in (("failover", "kill_to_served_s"), ("handoff", "longest_held_call_s"),
                      ("join", "longest_held_call_s")):  # fmt: skip
        got = [r[key] for r in rows if r["case"] == case]
        if got:
            print(f"{case}: {key} {got}")


if __name__ == "__main__":
    main()

"""Cluster mode through the cluster-aware SDK (issue 11), each case against its baseline
in the same run:

    python bench/cluster.py                    # all four, 3 rounds
    python bench/cluster.py --only scale --rounds 5 --seconds 8 --node-cpu 0.3

- scale: decisions/s of new buyers with 1 node vs 2 nodes, the SDK splitting the load
  (each call to its shop's owner; 4 shops on each of the 16 shards); load processes
  (``--procs``, each an AsyncClient with ``--callers`` unary Routes in flight). Uncapped
  (``--node-cpu 0``, the default): the same load against both, every process sharing the
  machine. ``--node-cpu 0.3``: each node in a cgroup of its own with a CPU quota of 0.3
  cores and a high weight (a machine of its own), ``--procs`` load processes per node, and
  NATS, etcd and the load in one uncapped high-weight cgroup, so that 1 vs 2 nodes differ
  only in the node count; exits 2 where cgroups cannot be written. Per round: each node's
  CPU (cores; µs per decision), cpu.stat's throttling, NATS/etcd/load CPU, the headroom,
  p50/p99, warnings when a node did not reach its budget or the machine had no headroom.
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
import contextlib
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
from cgroups import CapError, CpuCap, cgroup_root, probe_caps  # noqa: E402
from loadgen import process_cpu_s  # noqa: E402

SHARDS = 16
SHOPS = [f"bshop{i}" for i in range(64)]


def _even_shops(per_shard: int) -> list[str]:
    """Shops of the scale mode: ``per_shard`` on every shard, so that a node's share of the
    load is its share of the shards (SHOPS put 36 of 64 on one node's 8 shards of 16: the
    other node then idles a quarter of the time in a closed loop, as shops are few)."""
    got: dict[int, list[str]] = {i: [] for i in range(SHARDS)}
    for i in itertools.count():
        shop = f"sshop{i}"
        bucket = got[shard_index(shop, SHARDS)]
        if len(bucket) < per_shard:
            bucket.append(shop)
        if all(len(b) == per_shard for b in got.values()):
            return [shop for bucket in got.values() for shop in bucket]
    raise AssertionError("unreachable")


SCALE_SHOPS = _even_shops(4)
EXTRA = ["--lease-ttl", "2", "--tick-interval", "0.5"]
_names = itertools.count(1)
_ids = itertools.count(1)
REST_SHARES = 262_144  # the engines and load: as high as a node, no quota


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


async def prepare(addresses: list[str], shops: list[str] = SHOPS, even: bool = False
                  ) -> dict[int, str]:  # fmt: skip
    """Agents for ``shops`` once the shards are settled on ``addresses`` (``even``: and
    spread evenly, at most one apart); the owners."""
    async with AsyncClient(addresses, timeout=60, retry_budget=60) as fenliu:
        owners = await settle(fenliu, set(addresses))
        deadline = time.monotonic() + 60
        while even and time.monotonic() < deadline:
            counts = [sum(1 for a in owners.values() if a == x) for x in addresses]
            if max(counts) - min(counts) <= 1:
                break
            await asyncio.sleep(0.2)
            owners = await settle(fenliu, set(addresses))
        for shop in shops:
            for agent in ("a1", "a2", "a3", "a4"):  # 40,000 sessions per shop, never full
                await fenliu.register_agent(shop, agent, max_concurrent=10_000, status="online")
    return owners


def run_delay_s(pids: list[int]) -> float:
    """Seconds the threads of ``pids`` have waited runnable for a CPU so far (the second
    field of /proc/<pid>/task/*/schedstat): how much they were starved."""
    total = 0
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int(stat.read_text().split()[1])
    return total / 1e9


def machine_idle_s() -> float:
    """Idle (and iowait) CPU seconds of the whole machine so far, /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- load processes


def _worker(addresses: list[str], callers: int, start: float, stop: float, tag: str,
            out: Any) -> None:  # fmt: skip
    """One load process: ``callers`` Routes of new buyers in flight from ``start`` to
    ``stop`` (wall clock); puts (decisions done by ``stop``, their latencies, errors, this
    process's CPU seconds from ``start`` to ``stop``) on ``out``."""

    async def main() -> tuple[int, list[float], int, float]:
        latencies: list[float] = []
        errors = 0
        serial = itertools.count()
        cpu = [0.0, 0.0]
        async with AsyncClient(addresses, timeout=30, retry_budget=30) as fenliu:
            await fenliu.cluster_map()  # the map read before the clock starts
            await fenliu.route(SCALE_SHOPS[0], f"{tag}-warm")

            async def caller(k: int) -> None:
                nonlocal errors
                while time.time() < stop:
                    shop = SCALE_SHOPS[(k * 7919 + next(serial)) % len(SCALE_SHOPS)]
                    began = time.perf_counter()
                    try:
                        await fenliu.route(shop, f"{tag}-{k}-{next(serial)}")
                    except Exception:  # noqa: BLE001 - counted
                        errors += 1
                        continue
                    if time.time() <= stop:  # a call ending after the clock stopped: not counted
                        latencies.append(time.perf_counter() - began)

            async def clock() -> None:
                cpu[0] = time.process_time()
                await asyncio.sleep(max(0.0, stop - time.time()))
                cpu[1] = time.process_time()

            await asyncio.sleep(max(0.0, start - time.time()))
            await asyncio.gather(clock(), *(caller(k) for k in range(callers)))
        return len(latencies), latencies, errors, cpu[1] - cpu[0]

    out.put(asyncio.run(main()))


def capped_nodes(env: Env, count: int, cores: float, root: Path) -> list[tuple[FenliuNode, CpuCap]]:
    """``count`` fresh nodes of one cluster, each started inside a cgroup of its own with
    a quota of ``cores``."""
    name = f"b{os.getpid()}x{next(_names)}"
    started: list[tuple[FenliuNode, CpuCap]] = []
    try:
        for _ in range(count):
            node = FenliuNode(env.root / "nodes", f"n{next(_ids)}", env.nats, env.etcd,
                              name=name, shards=SHARDS, extra=EXTRA)  # fmt: skip
            cap = CpuCap(root, f"fenliu-bench-{os.getpid()}-{node.name}", cores)
            node.args = cap.wrap(node.args)
            started.append((node, cap))
            node.start()
            node.wait_healthy(120)
            if cap.pids() != [node.pid]:
                raise CapError(f"cgroup {cap.path} holds {cap.pids()}, not the node {node.pid}")
    except BaseException:
        for node, cap in started:
            node.stop(30)
            cap.remove()
        raise
    return started


def scale_round(env: Env, count: int, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement against ``count`` nodes. Uncapped (``--node-cpu 0``): ``--procs``
    load processes whatever the count, every process sharing the machine. Capped: each
    node in a cgroup with ``--node-cpu`` cores, and ``--procs`` load processes per node,
    so that every node has the same calls in flight with 1 node as with 2."""
    capped = args.node_cpu > 0
    rest: CpuCap | None = None
    if capped:
        pairs = capped_nodes(env, count, args.node_cpu, args.cgroup_root)
        nodes, caps = [n for n, _ in pairs], [c for _, c in pairs]
    else:
        nodes, caps = env.nodes(count)[1], []
    try:
        addresses = [n.address for n in nodes]
        owners = asyncio.run(prepare(addresses, SCALE_SHOPS, even=True))
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        start = time.time() + 4.0  # the processes import and connect first
        stop = start + args.seconds
        nprocs = args.procs * count if capped else args.procs
        procs = [
            ctx.Process(target=_worker, args=(addresses, args.callers, start, stop, f"p{p}", out))
            for p in range(nprocs)
        ]
        for p in procs:
            p.start()
        engines = [m.pid for m in env.nats.members], [m.pid for m in env.etcd.members]
        if capped:  # NATS, etcd and the load before other work on this machine, uncapped
            rest = CpuCap(args.cgroup_root, f"fenliu-bench-{os.getpid()}-rest", 0, REST_SHARES)
            rest.move([*engines[0], *engines[1], *(p.pid for p in procs if p.pid)])

        def sample() -> tuple[list[float], float, float, list[tuple[int, float]], float, float]:
            return ([process_cpu_s(n.pid) for n in nodes],
                    sum(process_cpu_s(pid) for pid in engines[0]),
                    sum(process_cpu_s(pid) for pid in engines[1]),
                    [c.throttled() for c in caps], machine_idle_s(),
                    run_delay_s([*engines[0], *engines[1]]))  # fmt: skip

        time.sleep(max(0.0, start - time.time()))
        s0, t0 = sample(), time.monotonic()
        time.sleep(max(0.0, stop - time.time()))
        s1, t1 = sample(), time.monotonic()
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
    finally:
        for node in nodes:
            node.stop(30)
        for cap in caps:
            cap.remove()
        if rest is not None:
            rest.remove()
    wall = t1 - t0
    done = sum(r[0] for r in results)
    latencies = [x for r in results for x in r[1]]
    node_cpu = [b - a for a, b in zip(s0[0], s1[0], strict=True)]
    load_cpu = sum(r[3] for r in results)
    row: dict[str, Any] = {
        "case": "scale", "nodes": count,
        "mode": f"capped {args.node_cpu} cores/node ({caps[0].describe()})" if capped
        else "uncapped",
        "node_cpu_budget": args.node_cpu if capped else None,
        "shards_per_node": [sum(1 for a in owners.values() if a == n.address) for n in nodes],
        "load_procs": nprocs, "in_flight": nprocs * args.callers,
        "decisions_per_s": round(done / args.seconds),
        "node_cpu_cores": [round(c / wall, 3) for c in node_cpu],
        "server_cpu_us_per_decision": round(sum(node_cpu) / max(1, done) * 1e6, 1),
        "nr_throttled": [b[0] - a[0] for a, b in zip(s0[3], s1[3], strict=True)],
        "throttled_ms": [round(b[1] - a[1]) for a, b in zip(s0[3], s1[3], strict=True)],
        "nats_cpu_cores": round((s1[1] - s0[1]) / wall, 3),
        "etcd_cpu_cores": round((s1[2] - s0[2]) / wall, 3),
        "load_cpu_cores": round(load_cpu / args.seconds, 3),
        "load_cpu_us_per_decision": round(load_cpu / max(1, done) * 1e6, 1),
        "engines_wait_ms_per_s": round((s1[5] - s0[5]) / wall * 1e3, 1),
        "machine_idle_cores": round((s1[4] - s0[4]) / wall, 3),
        "p50_ms": round(pct(latencies, 0.5) * 1e3, 2),
        "p99_ms": round(pct(latencies, 0.99) * 1e3, 2),
        "errors": sum(r[2] for r in results), "load": os.getloadavg()[0],
    }  # fmt: skip
    warnings = []
    if capped:
        for node, used in zip(nodes, row["node_cpu_cores"], strict=True):
            if used < 0.9 * args.node_cpu:
                warnings.append(f"node {node.name} used {used} of its {args.node_cpu} "
                                "cores: not saturated (too little load, or no CPU left for "
                                "it)")  # fmt: skip
        left = (os.cpu_count() or 1) - count * args.node_cpu
        others = row["nats_cpu_cores"] + row["etcd_cpu_cores"] + row["load_cpu_cores"]
        if others > 0.9 * left:
            warnings.append(f"NATS, etcd and the load used {others:.2f} of the {left:.2f} "
                            "cores left beside the nodes' budgets")  # fmt: skip
    ours = sum(row["node_cpu_cores"]) + row["nats_cpu_cores"] + row["etcd_cpu_cores"]
    ours += row["load_cpu_cores"]
    # capped, the bench's processes come before other work, so the headroom is what they
    # left of the machine; uncapped, it is what nobody used
    spare = (os.cpu_count() or 1) - ours if capped else row["machine_idle_cores"]
    row["headroom_cores"] = round(spare, 3)
    if spare < 0.05 * (os.cpu_count() or 1):
        warnings.append(f"the machine had no headroom ({spare:.2f} cores): NATS, etcd or "
                        "the load may have been starved")  # fmt: skip
    row["warnings"] = warnings
    return row


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

    def held(self, moved: list[str], began: float, ended: float) -> dict[str, Any]:
        """A hand-off's figures (SIGTERM or a node joining from ``began`` to ``ended``):
        the longest a call on a ``moved`` shop was held and when it began, the calls held
        over 0.5 s, p99 of every call in the 5 s before against the hand-off and 5 s after,
        the errors that surfaced."""
        window = [(b, e) for b, e, s, ok in self.calls
                  if s in moved and e >= began and b <= ended + 5]  # fmt: skip
        longest = max(window, key=lambda w: w[1] - w[0], default=(began, began))
        return {
            "longest_held_call_s": round(longest[1] - longest[0], 3),
            "it_began_s": round(longest[0] - began, 3),
            "calls_held_over_0.5_s": sum(1 for b, e in window if e - b > 0.5),
            "p99_before_ms": round(self.p99(began - 5, began) * 1e3, 1),
            "p99_during_ms": round(self.p99(began, ended + 5) * 1e3, 1),
            "errors": sum(1 for *_, ok in self.calls if not ok), "load": os.getloadavg()[0],
        }  # fmt: skip


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
        return {
            "case": "handoff",
            "sigterm_to_exit_s": round(ended - began, 2),
            **traffic.held(moved, began, ended),
            "steps": step_log(nodes, offsets, wall),
        }

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
        return {
            "case": "join",
            "start_to_settled_s": round(ended - began, 2),
            "moved_shards": sum(1 for i in range(SHARDS) if before[i] != after[i]),
            **traffic.held(moved, began, ended),
            "steps": step_log(nodes, offsets, wall),
        }

    try:
        return asyncio.run(main())
    finally:
        for node in nodes:
            node.stop(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="scale: each measurement")
    parser.add_argument("--procs", type=int, default=2,
                        help="scale: load processes (per node with --node-cpu)")  # fmt: skip
    parser.add_argument("--callers", type=int, default=32, help="calls in flight per process")
    parser.add_argument("--node-cpu", type=float, default=0.0,
                        help="scale: each node's CPU budget in cores, a cgroup quota "
                        "(0: uncapped, every process sharing the machine)")  # fmt: skip
    parser.add_argument("--cgroup-root", type=Path, default=None,
                        help="where the per-node cgroups go (default: /sys/fs/cgroup/cpu, "
                        "else the cgroup v2 root)")  # fmt: skip
    parser.add_argument("--only", choices=("scale", "failover", "handoff", "join"), default=None)
    args = parser.parse_args()
    if args.node_cpu < 0:
        parser.error("--node-cpu must be >= 0")
    mode = "uncapped (every process shares the machine's cores)"
    if args.node_cpu > 0 and args.only in (None, "scale"):
        try:
            args.cgroup_root = cgroup_root(args.cgroup_root)
            mode = (f"capped: each node {args.node_cpu} cores "
                    f"({probe_caps(args.cgroup_root, args.node_cpu)})")  # fmt: skip
        except CapError as exc:
            print(f"--node-cpu {args.node_cpu}: {exc}. The capped scale mode needs a writable "
                  "cgroup CPU controller (root); it never runs uncapped instead (that is "
                  "--node-cpu 0).", file=sys.stderr)  # fmt: skip
            sys.exit(2)
    print(f"load average before: {os.getloadavg()}", flush=True)
    if args.only in (None, "scale"):
        print(f"scale mode: {mode}", flush=True)
    env = Env(Path(tempfile.mkdtemp(prefix="fenliu-bench-cluster-")))
    rows: list[dict[str, Any]] = []
    try:
        for _ in range(args.rounds):
            if args.only in (None, "scale"):
                for count in (1, 2):
                    rows.append(scale_round(env, count, args))
                    print(json.dumps(rows[-1]), flush=True)
                    for warning in rows[-1]["warnings"]:
                        print(f"WARNING: {count} node(s): {warning}", flush=True)
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
        if args.node_cpu > 0:
            print(f"cgroups left: {CpuCap.remove_all()} removed now, "
                  f"{[str(c.path) for c in CpuCap.made]} not", flush=True)  # fmt: skip
    print(f"load average after: {os.getloadavg()}")
    scale_summary(rows, mode)
    for case, key in (("failover", "kill_to_served_s"), ("handoff", "longest_held_call_s"),
                      ("join", "longest_held_call_s")):  # fmt: skip
        got = [r[key] for r in rows if r["case"] == case]
        if got:
            print(f"{case}: {key} {got}")


def scale_summary(rows: list[dict[str, Any]], mode: str) -> None:
    """Medians per node count and the 2-node/1-node ratio (of the medians, and per round)."""
    one = [r for r in rows if r["case"] == "scale" and r["nodes"] == 1]
    two = [r for r in rows if r["case"] == "scale" and r["nodes"] == 2]
    if not one:
        return
    med = statistics.median
    print(f"scale mode: {mode}")
    for count, got in ((1, one), (2, two)):
        if not got:
            continue
        cores = med(sum(r["node_cpu_cores"]) / count for r in got)
        print(f"scale, {count} node(s): {med(r['decisions_per_s'] for r in got):,.0f} "
              f"decisions/s (median of {len(got)}), "
              f"{med(r['server_cpu_us_per_decision'] for r in got)} us node CPU per decision, "
              f"{cores:.3f} cores per node, p50/p99 {med(r['p50_ms'] for r in got)}/"
              f"{med(r['p99_ms'] for r in got)} ms, NATS {med(r['nats_cpu_cores'] for r in got)}"
              f" etcd {med(r['etcd_cpu_cores'] for r in got)} load "
              f"{med(r['load_cpu_cores'] for r in got)} cores, machine idle "
              f"{med(r['machine_idle_cores'] for r in got)} cores, "
              f"load average {med(r['load'] for r in got):.1f}")  # fmt: skip
    if two:
        ratios = [
            b["decisions_per_s"] / max(1, a["decisions_per_s"])
            for a, b in zip(one, two, strict=False)
        ]
        ratio = med(r["decisions_per_s"] for r in two) / max(
            1, med(r["decisions_per_s"] for r in one)
        )
        target = "met" if ratio >= 1.6 else "NOT met"
        print(f"scale ratio 2 nodes / 1 node: {ratio:.2f} (medians; target >= 1.6: {target}); "
              f"per round {[round(x, 2) for x in ratios]}")  # fmt: skip
    warned = sum(len(r["warnings"]) for r in one + two)
    if warned:
        print(f"WARNING: {warned} warning(s) above: read those rounds with care")


if __name__ == "__main__":
    main()

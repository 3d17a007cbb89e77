"""The journal's cost over gRPC: new-buyer Routes, journal off vs on with fsync (issue 10).

    python bench/journal_grpc.py                       # 64 and 1,024 in flight, 3 rounds
    python bench/journal_grpc.py --inflight 64 --seconds 5 --rounds 5

Each round starts a fresh ``fenliu-server`` per mode (no data directory; a data directory
with fsync on), every one serving metrics (``--metrics-port``: the same call guard on
every call in every mode; until 2026-12-01 23:35 only the fsync ones did, and their cost
counted the guard's as the journal's), registers the same team, and drives closed-loop
Routes of buyers never seen before (every one a real rule-6 decision: ASSIGNED by the
strategy, never a retry) from client processes, ``--inflight`` calls in flight in all.
Each round measures every in-flight count and mode, the order alternating from round to
round, so all see the same machine noise. Reported per mode: decisions/s and the server's
CPU per decision (user + system time of its process, from /proc; split into its main
thread, the journal's writer thread and the rest: grpc's threads), with fsync the calls
per commit cycle (from the server's metrics: how many calls shared each fsync), their
medians over the rounds, and the cost of the journal = 1 - fsync / off, per round and its
median, with the rounds' spread (the noise) and the load average around each round.

    python bench/journal_grpc.py --inflight 64 1024 --seconds 4 --rounds 7
    python bench/journal_grpc.py --python /other/venv/bin/python ...   # another build too
    python bench/journal_grpc.py --delays 0.5 1 2 4 ...     # this build at other --commit-delay
    python bench/journal_grpc.py --server-cpu 0.5 ...       # every server on a CPU budget

Also per mode: the callers' p50/p99 latency (the commit hold's price) and the server's
CPU in cores. ``--delays`` adds a mode per value (ms): this build's fsync server started
with ``--commit-delay`` at that value. ``--server-cpu CORES`` starts every server (journal
off and on alike) inside a cgroup of its own with that CPU quota and a high weight
(``bench/cgroups.py``), and the load processes in one of high weight without a quota, so
that the throughput is the server's, not what the neighbours left it; each round checks
the server used its budget (≥ 90%: else a warning), and every cgroup is removed at the
end. Where cgroups cannot be written it exits 2 (it never runs uncapped instead).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
from cgroups import CapError, CpuCap, cgroup_root, probe_caps  # noqa: E402
from loadgen import free_port, process_cpu_s, scrape  # noqa: E402
from run import ServerProcess  # noqa: E402

from fenliu.client._pb import fenliu_pb2 as pb, fenliu_pb2_grpc as pb_grpc  # noqa: E402

CYCLES = "fenliu_journal_fsync_seconds_count"
"""The server's count of commit cycles (each one write and one fsync)."""
SHOPS = 200
AGENTS = 5
TICKS = os.sysconf("SC_CLK_TCK")


server_cpu_s = process_cpu_s


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds by thread: the main thread, the journal's writer, the rest (grpc's)."""
    out = {"main": 0.0, "journal": 0.0, "other": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # ended meanwhile
            continue
        if task.name == str(pid):
            kind = "main"
        elif name.startswith("fenliu-journal"):
            kind = "journal"
        else:
            kind = "other"
        out[kind] += (int(fields[11]) + int(fields[12])) / TICKS
    return out


async def _setup(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        presence = pb_grpc.PresenceStub(channel)
        await asyncio.gather(
            *(
                presence.RegisterAgent(
                    pb.RegisterAgentRequest(
                        shop_id=f"shop{s}",
                        agent_id=f"a{a}",
                        max_concurrent=10_000,
                        status=pb.AGENT_STATUS_ONLINE,
                    )
                )  # fmt: skip
                for s in range(SHOPS)
                for a in range(AGENTS)
            )
        )


async def _drive(
    target: str, proc: int, inflight: int, start: float, stop: float
) -> tuple[int, list[float]]:
    """Closed-loop new-buyer Routes between ``start`` and ``stop`` (wall clock): how many
    were decided in that window, and each one's latency (s)."""
    done = cancelled = 0
    latencies: list[float] = []
    # One connection per 64 callers: past ~100 concurrent streams on one HTTP/2
    # connection the calls queue in the client (and some end CANCELLED).
    own = [("grpc.use_local_subchannel_pool", 1)]  # else channels share one connection
    channels = [
        grpc.aio.insecure_channel(target, options=own) for _ in range((inflight + 63) // 64)
    ]
    try:

        async def caller(c: int) -> None:
            nonlocal done, cancelled
            route = pb_grpc.RoutingStub(channels[c // 64]).Route
            n = 0
            while time.time() < stop:
                n += 1
                request = pb.RouteRequest(
                    shop_id=f"shop{(c * 31 + n) % SHOPS}",
                    buyer_id=f"p{proc}c{c}n{n}",
                    request_id=f"p{proc}c{c}n{n}",
                )
                sent = time.perf_counter()
                try:
                    decision = await route(request)
                except grpc.aio.AioRpcError as exc:  # counted, not fatal: a loaded machine
                    if exc.code() != grpc.StatusCode.CANCELLED:
                        raise
                    cancelled += 1  # the client's queue of streams cut it off; not a decision
                    continue
                if time.time() >= start:
                    latencies.append(time.perf_counter() - sent)
                    assert decision.reason == pb.REASON_STRATEGY, decision  # a real decision
                    done += 1

        await asyncio.gather(*(caller(c) for c in range(inflight)))
        if cancelled:
            print(
                f"load process {proc}: {cancelled} calls CANCELLED by the client", file=sys.stderr
            )
    finally:
        for channel in channels:
            await channel.close()
    return done, latencies


def _client(
    target: str, proc: int, inflight: int, start: float, stop: float, cgroup: str
) -> tuple[int, list[float]]:
    if cgroup:  # the load's cgroup (high weight, no quota): before any work
        Path(cgroup).write_text(str(os.getpid()))
    return asyncio.run(_drive(target, proc, inflight, start, stop))


def _ready(_: int) -> None:
    time.sleep(0.2)  # (so that each worker takes one)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


class _Cap(CpuCap):
    """A quota per 10 ms, not 100: a server of 0.5 cores then runs 5 ms of every 10, not 50
    ms of every 100 (a 50 ms stall would batch the calls that queue meanwhile into one
    fsync, whatever the commit hold, and that is what this bench measures)."""

    PERIOD_US = 10_000


class Budget:
    """``--server-cpu``: each server inside a cgroup with a quota of ``cores`` (made per
    server, removed when it stops), the load processes in one of high weight only."""

    def __init__(self, root: Path, cores: float) -> None:
        self.root, self.cores = root, cores
        self.load = _Cap(root, f"fenliu-bench-{os.getpid()}-load", 0)

    def server(self, name: str) -> CpuCap:
        return _Cap(self.root, f"fenliu-bench-{os.getpid()}-{name}", self.cores)


def measure(
    mode: str,
    inflight: int,
    seconds: float,
    procs: int,
    python: str = "",
    delay_ms: float | None = None,
    budget: Budget | None = None,
    flags: dict[str, list[str]] | None = None,
) -> dict[str, float]:
    """One mode's round; ``flags`` gets the mode's server flags (the modes must differ only
    in what they compare: the storage, the commit hold)."""
    cap: CpuCap | None = None
    with tempfile.TemporaryDirectory(prefix="fenliu-bench-") as tmp:
        server = ServerProcess(data_dir=tmp if mode != "off" else "", fsync=True)
        if python:  # another build's server (an A/B of two builds in one run)
            server.args[0] = python
        if delay_ms is not None:  # this build at another commit hold
            server.args += ["--commit-delay", str(delay_ms / 1e3)]
        # Every mode's server serves metrics (the fsync ones' count their commit cycles):
        # metrics install the call guard, an interceptor on every call, and a baseline
        # without it would count the guard's cost as the journal's.
        metrics = free_port()
        server.args += ["--metrics-port", str(metrics)]
        journal = mode != "off"
        if flags is not None:
            flags[mode] = sorted(a for a in server.args if a.startswith("--"))
        if budget is not None:
            cap = budget.server(f"server-{mode}")
            server.args = cap.wrap(server.args)
        try:
            target = server.start()
            # (with a data directory its snapshotter process is in there too, on the budget)
            if cap is not None and (server.proc is None or server.proc.pid not in cap.pids()):
                raise CapError(f"cgroup {cap.path} holds {cap.pids()}, not the server")
            asyncio.run(_setup(target))
            assert server.proc is not None
            load = str(budget.load.path / "cgroup.procs") if budget is not None else ""
            with multiprocessing.get_context("spawn").Pool(procs) as pool:
                # the load processes are up (spawned, grpc imported) before the clock
                # starts: on a busy machine that alone can take seconds
                pool.map(_ready, range(procs), chunksize=1)
                warm = 1.0
                start = time.time() + warm
                stop = start + seconds
                jobs = [
                    pool.apply_async(_client, (target, p, inflight // procs, start, stop, load))
                    for p in range(procs)
                ]
                time.sleep(max(0.0, start - time.time()))
                cpu0 = server_cpu_s(server.proc.pid)
                threads0 = thread_cpu_s(server.proc.pid)
                cycles0 = scrape(metrics, CYCLES) if journal else 0.0
                throttled0 = cap.throttled() if cap is not None else (0, 0.0)
                time.sleep(max(0.0, stop - time.time()))
                cpu1 = server_cpu_s(server.proc.pid)
                threads1 = thread_cpu_s(server.proc.pid)
                cycles1 = scrape(metrics, CYCLES) if journal else 0.0
                throttled1 = cap.throttled() if cap is not None else (0, 0.0)
                got = [job.get(timeout=seconds + 60) for job in jobs]
        finally:
            server.stop()
            if cap is not None:
                cap.remove()
    done = sum(n for n, _ in got)
    latencies = [x for _, sample in got for x in sample]
    calls = max(done, 1)
    result = {"per_s": done / seconds, "cpu_us_per_call": (cpu1 - cpu0) / calls * 1e6}
    for kind, spent in threads1.items():
        result[f"{kind}_us_per_call"] = (spent - threads0.get(kind, 0.0)) / calls * 1e6
    if journal:  # ~ the calls of one round; how many shared each fsync
        result["calls_per_cycle"] = calls / max(cycles1 - cycles0, 1.0)
    result["p50_ms"] = _pct(latencies, 0.5) * 1e3
    result["p99_ms"] = _pct(latencies, 0.99) * 1e3
    result["server_cores"] = (cpu1 - cpu0) / seconds
    if cap is not None:
        result["throttled_ms"] = throttled1[1] - throttled0[1]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inflight", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument(
        "--python", default="", help="also measure fsync with this interpreter's fenliu (A/B)"
    )
    parser.add_argument(
        "--delays", type=float, nargs="*", default=[],
        help="also this build's fsync server at each --commit-delay (ms)",
    )  # fmt: skip
    parser.add_argument(
        "--server-cpu", type=float, default=0.0,
        help="each server's CPU budget in cores, a cgroup quota (0: uncapped)",
    )  # fmt: skip
    parser.add_argument("--cgroup-root", type=Path, default=None,
                        help="where the cgroups go (default: /sys/fs/cgroup/cpu, else the "
                        "cgroup v2 root)")  # fmt: skip
    args = parser.parse_args()
    if args.server_cpu < 0:
        parser.error("--server-cpu must be >= 0")
    budget: Budget | None = None
    mode_line = "uncapped (every process shares the machine's cores)"
    if args.server_cpu > 0:
        try:
            args.cgroup_root = cgroup_root(args.cgroup_root)
            probe_caps(args.cgroup_root, args.server_cpu)
            budget = Budget(args.cgroup_root, args.server_cpu)
            probe = budget.server("probe")
            mode_line = f"capped: each server {args.server_cpu} cores ({probe.describe()})"
            probe.remove()
        except CapError as exc:
            CpuCap.remove_all()
            print(f"--server-cpu {args.server_cpu}: {exc}. The capped mode needs a writable "
                  "cgroup CPU controller (root); it never runs uncapped instead (that is "
                  "--server-cpu 0).", file=sys.stderr)  # fmt: skip
            sys.exit(2)
    print(f"mode: {mode_line}", file=sys.stderr, flush=True)
    record: dict[str, Any] = {
        "load_average": os.getloadavg(), "seconds": args.seconds, "mode": mode_line,
        "server_cpu_budget": args.server_cpu or None,
    }  # fmt: skip
    delays = {f"fsync_{d:g}ms": d for d in args.delays}
    modes = ["off", "fsync", *delays] + (["fsync_other"] if args.python else [])
    runs: dict[int, dict[str, list[dict[str, float]]]] = {
        n: {mode: [] for mode in modes} for n in args.inflight
    }
    loads: list[float] = []
    warnings: list[str] = []
    flags: dict[str, list[str]] = {}  # each mode's server flags
    try:
        for r in range(args.rounds):
            loads.append(os.getloadavg()[0])
            order = modes if r % 2 == 0 else modes[::-1]
            for inflight in args.inflight if r % 2 == 0 else args.inflight[::-1]:
                for mode in order:
                    python = args.python if mode == "fsync_other" else ""
                    result = measure(mode, inflight, args.seconds, args.procs, python,
                                     delays.get(mode), budget, flags)  # fmt: skip
                    runs[inflight][mode].append(result)
                    print(f"{inflight} in flight, round {r + 1}, {mode}: "
                          + ", ".join(f"{k} {v:.{3 if k == 'server_cores' else 1}f}"
                                    for k, v in result.items()),
                          file=sys.stderr, flush=True)  # fmt: skip
                    if budget is not None and result["server_cores"] < 0.9 * budget.cores:
                        warning = (
                            f"{inflight} in flight, round {r + 1}, {mode}: the server used "
                            f"{result['server_cores']:.2f} of its {budget.cores} cores (not "
                            "saturated: too little load, or no CPU left)"
                        )
                        warnings.append(warning)
                        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    finally:
        if budget is not None:
            budget.load.release()
            removed = CpuCap.remove_all()
            print(f"cgroups left: {removed} removed now, {[str(c.path) for c in CpuCap.made]} "
                  "not", file=sys.stderr, flush=True)  # fmt: skip
            record["cgroups_left"] = [str(c.path) for c in CpuCap.made]
    loads.append(os.getloadavg()[0])
    record["load_average_by_round"] = [round(x, 1) for x in loads]
    record["server_flags"] = flags
    record["warnings"] = warnings
    for inflight in args.inflight:
        rs = runs[inflight]
        med = {
            mode: {
                k: round(statistics.median(run[k] for run in rr), 3 if k == "server_cores" else 1)
                for k in rr[0]
            }
            for mode, rr in rs.items()
        }
        entry: dict[str, Any] = {**med}
        for mode in modes[1:]:
            ratios = [f["per_s"] / o["per_s"] for f, o in zip(rs[mode], rs["off"], strict=True)]
            costs = sorted(1 - x for x in ratios)
            q1, _, q3 = statistics.quantiles(costs, n=4) if len(costs) > 1 else costs * 3
            entry[f"cost_{mode}"] = {
                "median": round(statistics.median(costs), 3),
                "by_round": [round(1 - x, 3) for x in ratios],
                "quartiles": [round(q1, 3), round(q3, 3)],
                "cpu_per_call": round(
                    1 - med["off"]["cpu_us_per_call"] / med[mode]["cpu_us_per_call"], 3
                ),
            }
            spread = costs[-1] - costs[0]
            if spread > 0.15:
                entry[f"cost_{mode}"]["warning"] = f"rounds disagree by {spread:.2f}: noisy"
        record[str(inflight)] = entry
    record["load_average_after"] = os.getloadavg()
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()

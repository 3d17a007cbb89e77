"""The journal's cost over gRPC: new-buyer Routes, journal off vs on with fsync (issue 10).

    python bench/journal_grpc.py                       # 64 and 1,024 in flight, 3 rounds
    python bench/journal_grpc.py --inflight 64 --seconds 5 --rounds 5

Each round starts a fresh ``fenliu-server`` per mode (no data directory; a data directory
with fsync on), registers the same team, and drives closed-loop Routes of buyers never
seen before (every one a real rule-6 decision: ASSIGNED by the strategy, never a retry)
from client processes, ``--inflight`` calls in flight in all. Each round measures every
in-flight count and mode, the order alternating from round to round, so all see the same
machine noise. Reported per mode: decisions/s and the server's CPU per decision (user +
system time of its process, from /proc; split into its main thread, the journal's
writer thread and the rest: grpc's threads), with fsync the calls per commit cycle
(from the server's metrics: how many calls shared each fsync), their medians over the
rounds, and the cost of the journal = 1 - fsync / off, per round and its median, with
the rounds' spread (the noise) and the load average around each round.

    python bench/journal_grpc.py --inflight 64 1024 --seconds 4 --rounds 7
    python bench/journal_grpc.py --python /other/venv/bin/python ...   # another build too
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


async def _drive(target: str, proc: int, inflight: int, start: float, stop: float) -> int:
    """Closed-loop new-buyer Routes between ``start`` and ``stop`` (wall clock)."""
    done = cancelled = 0
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
                try:
                    decision = await route(request)
                except grpc.aio.AioRpcError as exc:  # counted, not fatal: a loaded machine
                    if exc.code() != grpc.StatusCode.CANCELLED:
                        raise
                    cancelled += 1  # the client's queue of streams cut it off; not a decision
                    continue
                if time.time() >= start:
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
    return done


def _client(target: str, proc: int, inflight: int, start: float, stop: float) -> int:
    return asyncio.run(_drive(target, proc, inflight, start, stop))


def measure(
    mode: str, inflight: int, seconds: float, procs: int, python: str = ""
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="fenliu-bench-") as tmp:
        server = ServerProcess(data_dir=tmp if mode != "off" else "", fsync=True)
        if python:  # another build's server (an A/B of two builds in one run)
            server.args[0] = python
        metrics = free_port() if mode != "off" else 0
        if metrics:  # to count its commit cycles
            server.args += ["--metrics-port", str(metrics)]
        target = server.start()
        try:
            asyncio.run(_setup(target))
            assert server.proc is not None
            warm = 1.0
            start = time.time() + warm
            stop = start + seconds
            with multiprocessing.get_context("spawn").Pool(procs) as pool:
                jobs = [
                    pool.apply_async(_client, (target, p, inflight // procs, start, stop))
                    for p in range(procs)
                ]
                time.sleep(max(0.0, start - time.time()))
                cpu0 = server_cpu_s(server.proc.pid)
                threads0 = thread_cpu_s(server.proc.pid)
                cycles0 = scrape(metrics, CYCLES) if metrics else 0.0
                time.sleep(max(0.0, stop - time.time()))
                cpu1 = server_cpu_s(server.proc.pid)
                threads1 = thread_cpu_s(server.proc.pid)
                cycles1 = scrape(metrics, CYCLES) if metrics else 0.0
                done = sum(job.get(timeout=seconds + 60) for job in jobs)
        finally:
            server.stop()
    calls = max(done, 1)
    result = {"per_s": done / seconds, "cpu_us_per_call": (cpu1 - cpu0) / calls * 1e6}
    for kind, spent in threads1.items():
        result[f"{kind}_us_per_call"] = (spent - threads0.get(kind, 0.0)) / calls * 1e6
    if metrics:  # ~ the calls of one round; how many shared each fsync
        result["calls_per_cycle"] = calls / max(cycles1 - cycles0, 1.0)
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
    args = parser.parse_args()
    record: dict[str, Any] = {"load_average": os.getloadavg(), "seconds": args.seconds}
    modes = ["off", "fsync"] + (["fsync_other"] if args.python else [])
    runs = {n: {mode: [] for mode in modes} for n in args.inflight}
    loads: list[float] = []
    for r in range(args.rounds):
        loads.append(os.getloadavg()[0])
        order = modes if r % 2 == 0 else modes[::-1]
        for inflight in args.inflight if r % 2 == 0 else args.inflight[::-1]:
            for mode in order:
                python = args.python if mode == "fsync_other" else ""
                result = measure(mode, inflight, args.seconds, args.procs, python)
                runs[inflight][mode].append(result)
                print(f"{inflight} in flight, round {r + 1}, {mode}: "
                      + ", ".join(f"{k} {v:.1f}" for k, v in result.items()),
                      file=sys.stderr, flush=True)  # fmt: skip
    loads.append(os.getloadavg()[0])
    record["load_average_by_round"] = [round(x, 1) for x in loads]
    for inflight in args.inflight:
        rs = runs[inflight]
        med = {
            mode: {k: round(statistics.median(run[k] for run in rr), 1) for k in rr[0]}
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

"""The journal's cost over gRPC: new-buyer Routes, journal off vs on with fsync (issue 10).

    python bench/journal_grpc.py                       # 64 and 1,024 in flight, 3 rounds
    python bench/journal_grpc.py --inflight 64 --seconds 5 --rounds 5

Each round starts a fresh ``fenliu-server`` per mode (no data directory; a data directory
with fsync on), registers the same team, and drives closed-loop Routes of buyers never
seen before (every one a real rule-6 decision: ASSIGNED by the strategy, never a retry)
from client processes, ``--inflight`` calls in flight in all. Modes alternate within a
round, so both see the same machine noise. Reported per mode: decisions/s and the
server's CPU per decision (user + system time of its process, from /proc), their medians
over the rounds, and the cost of the journal = 1 - fsync / off for each.
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
from run import ServerProcess  # noqa: E402

from fenliu.client._pb import fenliu_pb2 as pb, fenliu_pb2_grpc as pb_grpc  # noqa: E402

SHOPS = 200
AGENTS = 5
TICKS = os.sysconf("SC_CLK_TCK")


def server_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


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


def measure(mode: str, inflight: int, seconds: float, procs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="fenliu-bench-") as tmp:
        server = ServerProcess(data_dir=tmp if mode == "fsync" else "", fsync=True)
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
                time.sleep(max(0.0, stop - time.time()))
                cpu1 = server_cpu_s(server.proc.pid)
                done = sum(job.get(timeout=seconds + 60) for job in jobs)
        finally:
            server.stop()
    return {"per_s": done / seconds, "cpu_us_per_call": (cpu1 - cpu0) / max(done, 1) * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inflight", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    args = parser.parse_args()
    record: dict[str, Any] = {"load_average": os.getloadavg(), "seconds": args.seconds}
    for inflight in args.inflight:
        runs: dict[str, list[dict[str, float]]] = {"off": [], "fsync": []}
        for r in range(args.rounds):
            for mode in ("off", "fsync") if r % 2 == 0 else ("fsync", "off"):
                runs[mode].append(measure(mode, inflight, args.seconds, args.procs))
                print(f"{inflight} in flight, round {r + 1}, {mode}: {runs[mode][-1]}",
                      file=sys.stderr, flush=True)  # fmt: skip
        med = {
            mode: {k: statistics.median(run[k] for run in rs) for k in rs[0]}
            for mode, rs in runs.items()
        }
        ratios = [f["per_s"] / o["per_s"] for f, o in zip(runs["fsync"], runs["off"], strict=True)]
        record[str(inflight)] = {
            **med,
            "cost_throughput": round(1 - statistics.median(ratios), 3),
            "cost_by_round": [round(1 - x, 3) for x in ratios],
            "cost_cpu_per_call": round(
                1 - med["off"]["cpu_us_per_call"] / med["fsync"]["cpu_us_per_call"], 3
            ),
        }
        spread = max(ratios) - min(ratios)
        if spread > 0.15:
            record[str(inflight)]["warning"] = f"rounds disagree by {spread:.2f}: noisy machine"
    record["load_average_after"] = os.getloadavg()
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()

"""Journal cost in-process, measured in one run (issue 3, SPEC §8; over gRPC, with server
CPU per call: ``journal_grpc.py``; snapshot time and stall: ``snapshot.py``).

    python bench/journal.py                      # throughput: journal off / on (no fsync) / on

Throughput drives ``Node.execute`` (what every RPC calls) from many concurrent
coroutines on one event loop, without gRPC, so the figure isolates the journal; each
mode runs ``--rounds`` times and the median is reported. Prints one JSON record.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.types import EndSessions, RegisterAgent, Route, Status
from fenliu.server.node import Node
from fenliu.server.storage.files import FilesStorage

T0 = 1_700_000_000_000
SHOPS = 64


def clock() -> int:
    return time.time_ns() // 1_000_000


def world(d: Dispatcher, agents_per_shop: int) -> None:
    for s in range(SHOPS):
        for a in range(agents_per_shop):
            d.execute(
                RegisterAgent(
                    at=T0,
                    shop_id=f"shop{s}",
                    agent_id=f"a{a}",
                    max_concurrent=10_000,
                    status=Status.ONLINE,
                )  # fmt: skip
            )
    d.drain_events()


async def drive(core: Node, seconds: float, workers: int) -> int:
    """Route-and-end pairs from ``workers`` coroutines for ``seconds``; decisions made."""
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        n = 0
        while time.perf_counter() < stop:
            n += 1
            shop = f"shop{(w * 7 + n) % SHOPS}"
            decision = await core.execute(
                Route(at=clock(), shop_id=shop, buyer_id=f"w{w}b{n}", request_id=f"w{w}r{n}")
            )
            await core.execute(
                EndSessions(at=clock(), shop_id=shop, session_ids=(decision.session_id,))
            )
            done += 1

    await asyncio.gather(*(worker(w) for w in range(workers)))
    return done


async def throughput(mode: str, seconds: float, workers: int) -> dict[str, float]:
    d = Dispatcher()
    node = Node(d, clock)
    storage = None
    with tempfile.TemporaryDirectory() as tmp:
        if mode != "off":
            storage = FilesStorage(Path(tmp), len(d.shards), fsync=mode == "fsync")
            node.open(storage)
        world(d, 10)  # (after recovery, which installs the shards)
        done = await drive(node, seconds, workers)
        result = {"decisions_per_s": done / seconds}
        if storage is not None:
            records = sum(log.position for log in storage.logs)
            result["records_per_cycle"] = records / max(storage.cycles, 1)
            storage.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    record: dict[str, object] = {"workers": args.workers, "seconds": args.seconds}
    for mode in ("off", "nofsync", "fsync"):
        runs = [
            asyncio.run(throughput(mode, args.seconds, args.workers)) for _ in range(args.rounds)
        ]
        record[mode] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{mode}: {record[mode]}", flush=True)
    base = record["off"]["decisions_per_s"]  # type: ignore[index]
    for mode in ("nofsync", "fsync"):
        cost = 1 - record[mode]["decisions_per_s"] / base  # type: ignore[index]
        record[f"journal_cost_{mode}"] = round(cost, 3)
    print(json.dumps(record))


if __name__ == "__main__":
    main()

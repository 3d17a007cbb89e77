"""The replicated log's cost against the local journal, in the same run (issue 11).

    python bench/cluster_log.py                     # 3 rounds, 16 shards, batches of 1/16/64

Starts a 3-node NATS JetStream cluster on loopback (``server/cluster/local.py``) and a
local data directory, and drives both through the write path's storage seam the way a
node does: one ``append`` of every shard's batch per cycle, the next cycle once it is
durable (one batch in flight per shard). JetStream: one R3 stream per shard, each batch
one packed message fenced on the stream's last sequence (``storage/jetstream.py``); files:
the shared WAL, fsync on (``storage/files.py``). Records are real encoded Route commands.
Also: one record to one shard (the latency of a lone change). Rounds alternate the
backends; medians of the rounds are printed with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from fenliu.server.cluster.local import NatsCluster
from fenliu.server.core import types as t
from fenliu.server.storage import codec
from fenliu.server.storage.base import recover_all
from fenliu.server.storage.files import FilesStorage
from fenliu.server.storage.jetstream import JetStreamStorage

T0 = 1_700_000_000_000


class Appender:
    """What both backends offer the write path: ``append(batches)`` → a future."""

    def __init__(self, storage: FilesStorage | JetStreamStorage) -> None:
        self.storage = storage

    async def append(self, batches: Sequence[tuple[int, Sequence[bytes]]]) -> None:
        await self.storage.append(batches)


def records(n: int, base: int) -> list[bytes]:
    return [
        codec.encode_command(
            t.Route(at=T0 + base + i, shop_id=f"shop{i % 97}", buyer_id=f"buyer{base + i}",
                    request_id=f"req-{base + i}")
        )
        for i in range(n)
    ]  # fmt: skip


async def measure(app: Appender, shards: int, batch: int, seconds: float) -> dict[str, float]:
    """Cycles of one append of every shard's batch, for ``seconds`` (at most 5,000)."""
    latencies = []
    payload = records(batch, 0)
    started = time.perf_counter()
    while time.perf_counter() - started < seconds and len(latencies) < 5000:
        t0 = time.perf_counter()
        await app.append([(i, payload) for i in range(shards)])
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "records_per_s": shards * batch * len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "cycles": len(latencies),
    }


async def run(args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="fenliu-bench-cluster-") as tmp:
        root = Path(tmp)
        with NatsCluster(root / "nats", size=3) as nats:
            js = await JetStreamStorage.connect(nats.urls, cluster="bench", shards=args.shards)
            for i in range(args.shards):
                await js.take_over(i, epoch=1)
            files = FilesStorage(root / "data", args.shards, fsync=True)
            recover_all(files)  # a journal is read before it is appended to
            backends = {"jetstream-R3": Appender(js), "files-fsync": Appender(files)}
            cases = [(1, 1)] + [(args.shards, b) for b in args.batches]
            for _ in range(args.rounds):
                for shards, batch in cases:
                    for name, app in backends.items():
                        key = f"{name} shards={shards} batch={batch}"
                        result = await measure(app, shards, batch, args.seconds)
                        results.setdefault(key, []).append(result)
                        print(key, {k: round(v, 2) for k, v in result.items()}, flush=True)
            files.close()
            await js.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    load_before = os.getloadavg()
    results = asyncio.run(run(args))
    load_after = os.getloadavg()
    print(f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print("| case | records/s | p50 ms | p99 ms |\n|---|---|---|---|")
    for key, rounds in results.items():
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        spread = [round(r["records_per_s"]) for r in rounds]
        print(f"| {key} | {med['records_per_s']:,.0f} ({min(spread):,}–{max(spread):,}) "
              f"| {med['p50_ms']:.2f} | {med['p99_ms']:.2f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"load": [load_before, load_after], "results": results}))


if __name__ == "__main__":
    main()

"""Per-command cost against the shard count: 16, 256 and 4,096 shards (issue 10).

    python bench/shards.py                 # in memory and on files (fsync off), 5 rounds

The same work at each shard count: route a new buyer and end the session, from 64
concurrent callers of ``Node.execute`` on one loop, across 1,000 shops. Rounds alternate
the shard counts; the figure is the median CPU time per command (``time.process_time``)
and its ratio to 16 shards. Before issue 10 every command scanned every shard's outbox and
a Tick went to every shard every second, so the cost grew with the shard count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.types import EndSessions, RegisterAgent, Route, Status
from fenliu.server.node import Node
from fenliu.server.storage.files import FilesStorage

T0 = 1_700_000_000_000
SHOPS = 1000


async def per_command_us(shards: int, files: bool, commands: int) -> float:
    with tempfile.TemporaryDirectory(prefix="fenliu-bench-shards-") as tmp:
        node = Node(Dispatcher(shards), lambda: T0)
        storage = FilesStorage(Path(tmp), shards, fsync=False) if files else None
        node.open(storage)
        for s in range(SHOPS):
            register = RegisterAgent(
                at=T0, shop_id=f"shop{s}", agent_id="a", max_concurrent=10_000,
                status=Status.ONLINE,
            )  # fmt: skip
            await node.execute(register)
        per_caller = commands // 2 // 64

        async def caller(c: int) -> None:
            for n in range(per_caller):
                shop = f"shop{(c * 37 + n) % SHOPS}"
                d = await node.execute(Route(at=T0, shop_id=shop, buyer_id=f"c{c}n{n}",
                                             request_id=f"c{c}n{n}"))  # fmt: skip
                await node.execute(EndSessions(at=T0, shop_id=shop, session_ids=(d.session_id,)))

        started = time.process_time()
        await asyncio.gather(*(caller(c) for c in range(64)))
        cpu = time.process_time() - started
        if storage is not None:
            storage.close()
    return cpu / (per_caller * 64 * 2) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=64_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    counts = (16, 256, 4096)
    record: dict[str, object] = {"load_average": os.getloadavg()}
    for files in (False, True):
        runs: dict[int, list[float]] = {n: [] for n in counts}
        for r in range(args.rounds):
            for n in counts if r % 2 == 0 else counts[::-1]:
                runs[n].append(asyncio.run(per_command_us(n, files, args.commands)))
        med = {n: statistics.median(v) for n, v in runs.items()}
        record["files" if files else "memory"] = {
            **{f"{n}_shards_us": round(med[n], 2) for n in counts},
            **{f"{n}_vs_16": round(med[n] / med[16], 3) for n in counts[1:]},
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()

"""Does a watcher slow routing? Route over gRPC with no watcher, a reading one, and one
that never reads, measured side by side in one run (issue 4).

    python bench/watch.py                        # 3 rounds of 2 s per mode
    python bench/watch.py --seconds 1 --rounds 1 --workers 32

A real server (``ServerThread``, journal off, 127.0.0.1) and a grpc.aio client in this
process; each worker routes a new buyer and ends its session, over and over. The shop
being routed is the one watched. Prints one JSON record: decisions/s per mode (median of
the rounds), each as a ratio to "no watcher", and what the never-reading watcher's buffer
held at the end (its bound and how often it overflowed into FELL_BEHIND).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time
from typing import Any

import grpc.aio

from fenliu.client._pb import fenliu_pb2 as pb, fenliu_pb2_grpc as pb_grpc
from fenliu.server.config import Config
from fenliu.server.rpc.app import ServerThread

SHOP = "bench"


async def drive(target: str, seconds: float, workers: int, ids: Any) -> int:
    """Route + end pairs from ``workers`` coroutines for ``seconds``; decisions made."""
    done = 0
    async with grpc.aio.insecure_channel(target) as channel:
        routing = pb_grpc.RoutingStub(channel)
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                n = next(ids)
                request = pb.RouteRequest(shop_id=SHOP, buyer_id=f"b{n}", request_id=f"r{n}")
                decision = await routing.Route(request)
                ends = pb.EndSessionsRequest(shop_id=SHOP, session_ids=[decision.session_id])
                await routing.EndSessions(ends)
                done += 1

        await asyncio.gather(*(worker() for _ in range(workers)))
    return done


async def flood(channel: grpc.aio.Channel, ids: Any, batches: int = 4) -> None:
    """Untimed: 1,000 route + end pairs per batch, ~8,000 events."""
    routing = pb_grpc.RoutingStub(channel)
    for _ in range(batches):
        numbers = [next(ids) for _ in range(1000)]
        requests = [
            pb.RouteRequest(shop_id=SHOP, buyer_id=f"b{n}", request_id=f"r{n}") for n in numbers
        ]
        reply = await routing.RouteBatch(pb.RouteBatchRequest(requests=requests))
        ends = [r.decision.session_id for r in reply.results]
        await routing.EndSessions(pb.EndSessionsRequest(shop_id=SHOP, session_ids=ends))


async def with_watcher(
    server: ServerThread, mode: str, seconds: float, workers: int, ids: Any
) -> tuple[int, list[tuple[int, int]]]:
    """Decisions made, and (buffered, overflows) of each watcher when the drive ended."""
    target = server.target
    if mode == "none":
        return await drive(target, seconds, workers, ids), []
    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.MonitorStub(channel).WatchShop(pb.WatchShopRequest(shop_id=SHOP))
        await call.read()  # WatchStarted: subscribed
        reader = None
        if mode == "never_reading":
            await flood(channel, ids)  # fills its HTTP/2 window: from here on it is stuck
        if mode == "reading":

            async def read_all() -> None:
                while await call.read() is not grpc.aio.EOF:
                    pass

            reader = asyncio.create_task(read_all())
        try:
            done = await drive(target, seconds, workers, ids)
            hub = server._server.hub  # type: ignore[union-attr]
            watchers = server.call(
                lambda: [(len(w.buffer), w.overflows) for ws in hub.watchers.values() for w in ws]
            )
            return done, watchers
        finally:
            call.cancel()
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=64)
    args = parser.parse_args()
    modes = ("none", "reading", "never_reading")
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    ids = itertools.count()
    config = Config(shards=4, tick_interval_s=3600, grace_s=1)
    with ServerThread(config) as server:
        with grpc.insecure_channel(server.target) as channel:
            pb_grpc.PresenceStub(channel).RegisterAgent(
                pb.RegisterAgentRequest(
                    shop_id=SHOP,
                    agent_id="a",
                    max_concurrent=10_000,
                    status=pb.AGENT_STATUS_ONLINE,
                )  # fmt: skip
            )
        never_reading: list[tuple[int, int]] = []
        for _ in range(args.rounds):
            for mode in modes:  # interleaved, so drift hits every mode alike
                run = with_watcher(server, mode, args.seconds, args.workers, ids)
                n, watchers = asyncio.run(run)
                rates[mode].append(n / args.seconds)
                if mode == "never_reading":
                    never_reading += watchers
        buffer_size = server._server.hub.buffer_size  # type: ignore[union-attr]
    medians = {mode: statistics.median(r) for mode, r in rates.items()}
    print(
        json.dumps(
            {
                "seconds": args.seconds,
                "rounds": args.rounds,
                "workers": args.workers,
                "decisions_per_s": {m: round(v) for m, v in medians.items()},
                "ratio_to_none": {m: round(v / medians["none"], 3) for m, v in medians.items()},
                "never_reading_watcher_at_end": [
                    {"buffered": b, "overflows": o} for b, o in never_reading
                ],
                "buffer_size": buffer_size,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

"""RouteBatch's work in-process: decisions/s and where the time goes (SPEC §8: a batch path
makes >= 150,000 decisions/s per process).

    python bench/route_batch.py                        # 20 rounds of 1,000-item batches
    python bench/route_batch.py --batch 1000 --rounds 50 --shops 100 --agents 10
    python bench/route_batch.py --world 0              # an empty world (before 2026-12-02)

No network and no gRPC server: each round parses a serialized ``RouteBatchRequest`` (what
grpc hands the servicer), awaits ``RoutingService.RouteBatch`` on one event loop with the
journal off, and serializes the reply. Every item is a new buyer that the strategy
assigns; the sessions are ended between rounds (not timed) so the shops stay in a steady
state. The world holds ``--world`` open sessions besides (default 1,000,000: SPEC §8's
process, 100,000 agents and 1,000,000 sessions), in SPEC's shape: ``--per-agent`` (10)
open sessions an agent, so ``--world`` makes the shops ``world / (agents x per_agent)``
when that is more than ``--shops``. A decision's cost depends on the world's size (the
same instructions, more cache and TLB misses: bench/core_world.py), so an empty world
flatters it. The stages are also timed alone (best round of each), to show where time goes:

- decode: the bytes read (upb's ``RouteBatchRequest.FromString``, or the wire codec's
  ``read_route_batch``);
- convert: the items made Route commands (``convert.route`` each, or ``RouteItems.routes``);
- core: ``Dispatcher.execute`` for each command (the routing itself);
- encode: the reply's bytes (a ``RouteBatchReply`` built and serialized, or the wire
  codec's ``route_batch_reply``).

Both codecs run in the same rounds, interleaved (``--codec`` picks one): upb's, and the
wire codec (``server/rpc/wire.py``) that the server uses when it is compiled (``WIRE``).
The wire codec's rounds are skipped, with a note, when it is not compiled: interpreted it
is slower than upb and the server does not use it. Prints one JSON record (decisions/s of
the whole and of each stage alone, for each codec, and the wire/upb ratio).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import time
from typing import Any

from fenliu.client._pb import fenliu_pb2 as pb
from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.types import EndSessions, RegisterAgent, Route, Status
from fenliu.server.node import Node
from fenliu.server.rpc import convert, service as servicer, wire
from fenliu.server.rpc.service import RoutingService, route_batch_reply

T0 = 1_700_000_000_000
TARGET = 150_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--shops", type=int, default=100)
    parser.add_argument("--agents", type=int, default=10, help="per shop")
    parser.add_argument("--world", type=int, default=1_000_000,
                        help="open sessions made before the rounds (0: none)")  # fmt: skip
    parser.add_argument("--per-agent", type=int, default=10,
                        help="the world's open sessions an agent (SPEC §8: 10)")  # fmt: skip
    parser.add_argument("--codec", choices=["both", "upb", "wire"], default="both")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    dispatcher = Dispatcher()
    per_shop = args.agents * args.per_agent
    count = max(args.shops, -(-args.world // per_shop) if args.world else 0)
    shops = [f"shop{s}" for s in range(count)]
    for shop in shops:
        for a in range(args.agents):
            dispatcher.execute(
                RegisterAgent(
                    at=T0,
                    shop_id=shop,
                    agent_id=f"a{a}",
                    max_concurrent=10_000,
                    status=Status.ONLINE,
                )
            )
    dispatcher.drain_events()
    for n in range(args.world):  # the world: each shop's agents per_agent sessions each
        dispatcher.execute(
            Route(at=T0, shop_id=shops[n % len(shops)], buyer_id=f"w{n}", request_id=f"w{n}")
        )
        if n % 10_000 == 9_999:
            dispatcher.drain_events()
    dispatcher.drain_events()
    gc.collect()
    gc.freeze()  # as fenliu-server does after its start (README "Garbage collection")
    clock = itertools.count(T0)
    node = Node(dispatcher, lambda: next(clock))  # journal off: the events are dropped
    node.open(None)
    service = RoutingService(node)
    ids = itertools.count()

    def batch() -> bytes:
        items = []
        for _ in range(args.batch):
            n = next(ids)
            shop = shops[n % len(shops)]
            items.append(pb.RouteRequest(shop_id=shop, buyer_id=f"b{n}", request_id=f"r{n}"))
        return pb.RouteBatchRequest(requests=items).SerializeToString()

    codecs = [c for c in CODECS if args.codec in ("both", c)]
    if not servicer.WIRE and "wire" in codecs:
        codecs.remove("wire")  # interpreted, slower than upb: the server does not use it
    whole: dict[str, list[float]] = {c: [] for c in codecs}
    stages = {c: {"decode": [], "convert": [], "core": [], "encode": []} for c in codecs}
    for _ in range(args.rounds):
        for codec in codecs:  # interleaved: each round runs every codec
            read, routes, reply_bytes = CODECS[codec]
            # The whole path, as the servicer runs it (its RouteBatch with this codec).
            servicer._batch_routes, servicer._batch_reply = BATCH[codec]
            payload = batch()
            start = time.perf_counter()
            reply = await service.RouteBatch(read(payload), None)  # type: ignore[arg-type]
            out = reply_bytes(reply)
            whole[codec].append(time.perf_counter() - start)
            end_all(dispatcher, payload, out)

            # The same work stage by stage.
            payload = batch()
            t0 = time.perf_counter()
            request = read(payload)
            t1 = time.perf_counter()
            commands = routes(request, T0)
            t2 = time.perf_counter()
            results = [dispatcher.execute(c) for c in commands]
            dispatcher.drain_events()
            t3 = time.perf_counter()
            out = reply_bytes(BATCH[codec][1](results))
            t4 = time.perf_counter()
            for name, seconds in zip(
                stages[codec], (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True
            ):
                stages[codec][name].append(seconds)
            end_all(dispatcher, payload, out)
    servicer._batch_routes, servicer._batch_reply = BATCH["wire" if servicer.WIRE else "upb"]

    rate = {c: args.batch / min(whole[c]) for c in codecs}
    best = max(rate.values())
    record: dict[str, Any] = {
        "batch": args.batch,
        "rounds": args.rounds,
        "shops": len(shops),
        "agents_per_shop": args.agents,
        "world": f"{args.world:,} open sessions besides the batch's ("
        f"{args.world / (len(shops) * args.agents):.1f} an agent), "
        f"{len(shops) * args.agents:,} agents",
        "server_codec": "wire" if servicer.WIRE else "upb",
        "decisions_per_s": {c: round(r) for c, r in rate.items()},
        "target": TARGET,
        "met": best >= TARGET,
        "stage_us_per_decision": {
            c: {name: round(min(v) / args.batch * 1e6, 2) for name, v in stages[c].items()}
            for c in codecs
        },
    }
    if len(codecs) == 2:
        record["wire_over_upb"] = round(rate["wire"] / rate["upb"], 3)
    elif not servicer.WIRE and args.codec != "upb":
        record["note"] = "the wire codec is not compiled here (a pure install): upb only"
    return record


def _upb_routes(request: pb.RouteBatchRequest, at: int) -> list[Route]:
    return [convert.route(item, at) for item in request.requests]


CODECS: dict[str, tuple[Any, Any, Any]] = {  # read, make the commands, the reply's bytes
    "upb": (pb.RouteBatchRequest.FromString, _upb_routes, pb.RouteBatchReply.SerializeToString),
    "wire": (wire.read_route_batch, wire.RouteItems.routes, servicer.wire_reply),
}
BATCH: dict[str, tuple[Any, Any]] = {  # the servicer's request -> commands, results -> reply
    "upb": (servicer.batch_routes, route_batch_reply),
    "wire": (wire.RouteItems.routes, wire.RouteResults),
}


def end_all(dispatcher: Dispatcher, payload: bytes, reply: bytes) -> None:
    """End the batch's sessions (untimed): the shops stay in a steady state. Every item
    must have been assigned (a session), or the round measured something else."""
    items = pb.RouteBatchRequest.FromString(payload).requests
    results = pb.RouteBatchReply.FromString(reply).results
    for item, result in zip(items, results, strict=True):
        assert result.decision.session_id, result
        command = EndSessions(
            at=T0, shop_id=item.shop_id, session_ids=(result.decision.session_id,)
        )
        dispatcher.execute(command)
    dispatcher.drain_events()


if __name__ == "__main__":
    main()

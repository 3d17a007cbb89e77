"""Every acknowledged change survives SIGKILLs of the nodes that owned it, under concurrent
load: three real fenliu nodes in cluster mode, buyers routed without pause by concurrent
callers through the cluster-aware SDK (it follows the map and NOT_OWNER), ten SIGKILLs of
the node owning the most shards, each replaced by a new node. At the end every routed
buyer's session is where its acknowledged decision put it, and the state the streams hold
satisfies the core's invariants."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from pathlib import Path

from fenliu.client import AsyncClient
from fenliu.server.cluster.local import EtcdCluster, FenliuNode, NatsCluster
from fenliu.server.core.dispatcher import Dispatcher, shard_index
from fenliu.server.storage.jetstream import JetStreamStorage

from ..server.core.test_invariants import RoutingMachine

SHARDS = 8
SHOPS = [f"shop{i}" for i in range(12)]
KILLS = 10
CALLERS = 6
LIMIT_S = 240.0  # the whole test's bound, kills included


def test_ten_owner_kills_under_load_lose_nothing_acknowledged(
    nats_cluster: NatsCluster, etcd: EtcdCluster, name: str, tmp_path: Path
) -> None:
    ids = (f"n{i}" for i in itertools.count(1))
    extra = ["--lease-ttl", "2", "--tick-interval", "0.5"]

    def new_node() -> FenliuNode:
        node = FenliuNode(tmp_path, next(ids), nats_cluster, etcd, name=name, shards=SHARDS,
                          extra=extra)  # fmt: skip
        node.start()
        node.wait_healthy(60)
        return node

    nodes = [new_node() for _ in range(3)]
    started = time.monotonic()
    acked: dict[tuple[str, str], tuple[str, str]] = {}  # (shop, buyer) -> (session, agent)
    kills: list[float] = []

    async def main() -> int:
        # The SDK, given the first nodes (all killed in time: it learns the new ones from
        # the map); a deadline long enough for a failover (TTL 2 s) on a loaded machine.
        fenliu = AsyncClient([n.address for n in nodes], timeout=60, retry_budget=60)
        for shop in SHOPS:
            for agent in ("a1", "a2", "a3"):
                await fenliu.register_agent(shop, agent, max_concurrent=10_000, status="online")
        stop = asyncio.Event()
        serial = itertools.count()

        async def caller(k: int) -> None:
            rng = random.Random(k)
            while not stop.is_set():
                shop, buyer = rng.choice(SHOPS), f"b{k}-{next(serial)}"
                decision = await fenliu.route(shop, buyer, request_id=f"r-{buyer}")
                acked[(shop, buyer)] = (decision.session_id, decision.agent_id)

        callers = [asyncio.create_task(caller(k)) for k in range(CALLERS)]
        try:
            for _ in range(KILLS):
                await asyncio.sleep(1.0)  # load on the current owners
                while True:  # every shard owned by a live node (the last kill's moved)
                    assert time.monotonic() - started < LIMIT_S, "shards never settled"
                    cmap = await fenliu.cluster_map()
                    owner = {o.shard: o.address for o in cmap.owners if o.address}
                    live = {n.address: n for n in nodes if n.running}
                    owners = [owner.get(i) for i in range(SHARDS)]
                    if all(a in live for a in owners):
                        break
                    await asyncio.sleep(0.2)
                victim = max(live.values(), key=lambda n: owners.count(n.address))
                before = len(acked)
                victim.kill()
                kills.append(time.monotonic())
                nodes.remove(victim)
                nodes.append(await asyncio.to_thread(new_node))
                while len(acked) < before + 20:  # writes go on after the kill
                    assert time.monotonic() - started < LIMIT_S, "the load stopped"
                    for task in callers:
                        if task.done():
                            task.result()  # a caller's failure fails the test
                    await asyncio.sleep(0.1)
        finally:
            stop.set()
            await asyncio.gather(*callers, return_exceptions=True)
        for task in callers:
            task.result()
        # every acknowledged decision, read back from the owner now
        for (shop, buyer), (session_id, agent_id) in acked.items():
            session = await fenliu.get_session(shop, session_id)
            assert (session.buyer_id, session.agent_id) == (buyer, agent_id), (shop, buyer)
        assert fenliu.router is not None
        refreshes = fenliu.router.refreshes
        await fenliu.close()
        return refreshes

    try:
        refreshes = asyncio.run(main())
    finally:
        for node in nodes:  # SIGTERM: shards handed over, leases revoked
            node.stop(30)
    assert len(kills) == KILLS and len(acked) > 200, "too little traffic to mean much"
    print(f"{KILLS} owner kills, {len(acked)} acknowledged routes, {refreshes} maps read")

    async def recovered() -> Dispatcher:
        storage = await JetStreamStorage.connect(nats_cluster.urls, cluster=name, shards=SHARDS)
        d = Dispatcher(SHARDS)
        for i in range(SHARDS):
            d.install(i, await storage.take_over(i, epoch=1 << 40))
        assert sum(log.stale for log in storage.logs) == 0
        await storage.close()
        return d

    machine = RoutingMachine()
    machine.d = asyncio.run(recovered())
    for (shop, _buyer), (session_id, agent_id) in acked.items():
        shard = machine.d.shards[shard_index(shop, SHARDS)]
        assert shard.shops[shop].sessions[session_id].agent.agent_id == agent_id  # type: ignore[union-attr]
    machine.capacity_respected()
    machine.counters_match_a_recount()
    machine.heaps_agree_with_brute_force()
    machine.nothing_waits_while_an_agent_could_take_it()

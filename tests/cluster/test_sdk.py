"""The cluster-aware SDK against real fenliu nodes in cluster mode: each shop's calls go to
its owner (the map read from any node, or learnt from a NOT_OWNER refusal), a RouteBatch
is split by owner and merged in order, and a watch stream follows its shop across a
SIGKILL failover, resuming on the new owner with no gap and no duplicate."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fenliu.client import (
    AsyncClient,
    Client,
    Event,
    FellBehind,
    Started,
    route_request,
    shard_index as sdk_shard_index,
)
from fenliu.server.cluster.local import EtcdCluster, FenliuNode, NatsCluster
from fenliu.server.core.dispatcher import shard_index

SHARDS = 8
EXTRA = ["--lease-ttl", "2", "--tick-interval", "0.5"]
SHOPS = [f"sdk-shop{i}" for i in range(10)]


@pytest.fixture
def nodes(nats_cluster: NatsCluster, etcd: EtcdCluster, name: str, tmp_path: Path
          ) -> Iterator[list[FenliuNode]]:  # fmt: skip
    started: list[FenliuNode] = []
    ids = itertools.count(1)

    def new_node() -> FenliuNode:
        node = FenliuNode(tmp_path, f"n{next(ids)}", nats_cluster, etcd, name=name,
                          shards=SHARDS, extra=EXTRA)  # fmt: skip
        started.append(node)
        node.start()
        node.wait_healthy(60)
        return node

    new_node()
    new_node()
    yield started
    for node in started:
        node.stop(30)


def spread(fenliu: Client, addresses: list[str], timeout: float = 60) -> dict[int, str]:
    """Wait until every shard is owned by one of ``addresses`` and both own some."""
    deadline = time.monotonic() + timeout
    while True:
        cmap = fenliu.cluster_map()
        owners = {o.shard: o.address for o in cmap.owners}
        if all(owners.get(i) in addresses for i in range(SHARDS)) and set(owners.values()) == set(
            addresses
        ):
            return owners
        assert time.monotonic() < deadline, f"shards never spread: {owners}"
        time.sleep(0.2)


def test_the_sdks_shard_is_the_servers() -> None:
    for shop in ("a", "shop-1", "店铺", ""):
        assert sdk_shard_index(shop, 256) == shard_index(shop, 256)


def test_calls_go_to_each_shops_owner_and_batches_are_split_by_owner(
    nodes: list[FenliuNode],
) -> None:
    addresses = [n.address for n in nodes]
    with Client(addresses, timeout=20, retry_budget=20) as fenliu:
        owners = spread(fenliu, addresses)
        assert set(owners[shard_index(s, SHARDS)] for s in SHOPS) == set(addresses), "one owner"
        for shop in SHOPS:
            fenliu.register_agent(shop, "a1", max_concurrent=1000, status="online")
        items = [route_request(shop, f"b{i}") for i, shop in enumerate(SHOPS * 3)]
        results = fenliu.route_batch(items)
        assert [r.error for r in results] == [None] * len(items)
        for item, result in zip(items, results, strict=True):
            assert result.decision is not None
            session = fenliu.get_session(item.shop_id, result.decision.session_id)
            assert (session.buyer_id, session.agent_id) == (item.buyer_id, "a1")
        router = fenliu.router
        assert router is not None and router.clustered and router.shards == SHARDS
        with fenliu.route_stream() as stream:
            futures = [stream.send(route_request(s, "streamed")) for s in SHOPS]
            decided = [f.result(30) for f in futures]
        assert all(r.decision is not None and r.decision.agent_id == "a1" for r in decided)

    # One seed: the first refusal (NOT_OWNER) names the owner and makes it read the map.
    seed = addresses[0]
    other_shop = next(s for s in SHOPS if owners[shard_index(s, SHARDS)] != seed)
    with Client(seed, timeout=20) as fenliu:
        assert fenliu.list_team(other_shop)[0].agent_id == "a1"
        assert fenliu.router is not None and fenliu.router.clustered


def test_a_watcher_follows_its_shop_across_a_sigkill_with_no_gap_nor_duplicate(
    nodes: list[FenliuNode],
) -> None:
    addresses = [n.address for n in nodes]
    shop = "watched-shop"

    async def main() -> tuple[list[int], list[object], int]:
        async with AsyncClient(addresses, timeout=30, retry_budget=30) as fenliu:
            deadline = time.monotonic() + 60
            while True:
                cmap = await fenliu.cluster_map()
                owner = next(o.address for o in cmap.owners if o.shard == shard_index(shop,
                             SHARDS))  # fmt: skip
                live = {o.address for o in cmap.owners}
                if owner in addresses and live == set(addresses):
                    break
                assert time.monotonic() < deadline, "the shards never spread"
                await asyncio.sleep(0.2)
            await fenliu.register_agent(shop, "a1", max_concurrent=10_000, status="online")
            seen: list[int] = []
            marks: list[object] = []
            stream = fenliu.watch_shop(shop, give_up_after=60)

            async def watch() -> None:
                async for item in stream:
                    if isinstance(item, Event):
                        seen.append(item.seq)
                    elif isinstance(item, FellBehind):
                        marks.append(item)
                    elif isinstance(item, Started):
                        marks.append("started")

            watching = asyncio.create_task(watch())
            while not stream.connected:
                await asyncio.sleep(0.05)
            for i in range(30):
                await fenliu.route(shop, f"before{i}")
            victim = next(n for n in nodes if n.address == owner)
            victim.kill()  # SIGKILL: the shard moves to the other node
            for i in range(30):
                await fenliu.route(shop, f"after{i}")
            head = (await anext_started(fenliu, shop)).head_seq
            deadline = time.monotonic() + 60
            while not seen or seen[-1] < head:
                assert time.monotonic() < deadline, f"the watcher stopped at {seen[-1:]} < {head}"
                assert not watching.done(), watching
                await asyncio.sleep(0.1)
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            await stream.aclose()
            return seen, marks, head

    seen, marks, head = asyncio.run(main())
    assert [m for m in marks if m != "started"] == [], marks  # no FellBehind
    assert marks.count("started") >= 2  # it reconnected (to the new owner)
    assert seen == list(range(seen[0], head + 1)), "a gap or a duplicate"
    assert len(seen) >= 60  # every route's events, before and after the kill


async def anext_started(fenliu: AsyncClient, shop: str) -> Started:
    """The shop's head seq now, as a new watch stream's Started says."""
    stream = fenliu.watch_shop(shop)
    try:
        async for item in stream:
            assert isinstance(item, Started)
            return item
    finally:
        await stream.aclose()
    raise AssertionError("no Started")

"""Failures under concurrent load through the cluster-aware SDK, on real engines and real
fenliu nodes: the NATS leader of a shop's stream SIGKILLed, the etcd leader (of 3)
SIGKILLed, and planned hand-offs (a node joining, a node stopped with SIGTERM). Writes
resume, nothing acknowledged is lost, and in a planned hand-off no error reaches a caller
(not even a watcher: it follows its shop to the new owner with no gap and no duplicate).

No timing is asserted: every wait is generous and bounded (the machine may be loaded)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from fenliu.client import AsyncClient, Event, Started
from fenliu.server.cluster.local import EtcdCluster, FenliuNode, NatsCluster
from fenliu.server.core.dispatcher import shard_index

SHARDS = 8
# one shop per shard: whichever shards move, some watched shop moves with them
SHOPS = [next(f"shop{i}" for i in range(1000) if shard_index(f"shop{i}", SHARDS) == k)
         for k in range(SHARDS)]  # fmt: skip
CALLERS = 4
EXTRA = ["--lease-ttl", "2", "--tick-interval", "0.5"]
WAIT_S = 120.0  # the bound of every wait for the cluster (elections, moves, load)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """Three etcd members here (one may be killed)."""
    with EtcdCluster(tmp_path_factory.mktemp("etcd3"), size=3) as cluster:
        yield cluster


class Cluster:
    """The test's fenliu nodes, stopped at the end (SIGTERM, by PID)."""

    def __init__(self, root: Path, nats: NatsCluster, etcd: EtcdCluster, name: str) -> None:
        self.root, self.nats, self.etcd, self.name = root, nats, etcd, name
        self.nodes: list[FenliuNode] = []
        self._ids = itertools.count(1)

    def add(self) -> FenliuNode:
        node = FenliuNode(self.root, f"n{next(self._ids)}", self.nats, self.etcd,
                          name=self.name, shards=SHARDS, extra=EXTRA)  # fmt: skip
        self.nodes.append(node)
        node.start()
        node.wait_healthy(90)
        return node

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(30)


@pytest.fixture
def cluster(
    nats_cluster: NatsCluster, etcd: EtcdCluster, name: str, tmp_path: Path
) -> Iterator[Cluster]:
    started = Cluster(tmp_path, nats_cluster, etcd, name)
    try:
        yield started
    finally:
        started.stop()


async def settled(fenliu: AsyncClient, addresses: set[str]) -> dict[int, str]:
    """Every shard owned by one of ``addresses``, each of which owns some."""
    deadline = time.monotonic() + WAIT_S
    while True:
        cmap = await fenliu.cluster_map()
        owners = {o.shard: o.address for o in cmap.owners if o.address}
        if set(owners) == set(range(SHARDS)) and set(owners.values()) == addresses:
            return owners
        assert time.monotonic() < deadline, f"the shards never settled on {addresses}: {owners}"
        await asyncio.sleep(0.2)


class Load:
    """Callers routing new buyers without pause through one SDK client; every acknowledged
    decision is kept, and a caller's error is raised by ``stop`` (it fails the test)."""

    def __init__(self, fenliu: AsyncClient) -> None:
        self.fenliu = fenliu
        self.acked: dict[tuple[str, str], tuple[str, str, float]] = {}
        self._stop = asyncio.Event()
        self._serial = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for shop in SHOPS:
            for agent in ("a1", "a2"):
                await self.fenliu.register_agent(shop, agent, max_concurrent=10_000,
                                                 status="online")  # fmt: skip
        self._tasks = [asyncio.create_task(self._caller(k)) for k in range(CALLERS)]

    async def _caller(self, k: int) -> None:
        rng = random.Random(k)
        while not self._stop.is_set():
            shop, buyer = rng.choice(SHOPS), f"b{k}-{next(self._serial)}"
            decision = await self.fenliu.route(shop, buyer, request_id=f"r-{buyer}")
            self.acked[(shop, buyer)] = (decision.session_id, decision.agent_id, time.monotonic())

    def check(self) -> None:
        for task in self._tasks:
            if task.done():
                task.result()  # a caller's error fails the test now

    async def after(self, since: float, count: int = 20, shop: str | None = None) -> None:
        """Wait for ``count`` decisions acknowledged after ``since`` (of ``shop``)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            self.check()
            done = sum(1 for (s, _), (_, _, at) in self.acked.items()
                       if at > since and shop in (None, s))  # fmt: skip
            if done >= count:
                return
            assert time.monotonic() < deadline, f"only {done} decisions after the event"
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.check()

    async def verify(self) -> None:
        """Every acknowledged decision, read back from its shop's owner now."""
        assert len(self.acked) > 40, "too little traffic to mean much"
        for (shop, buyer), (session_id, agent_id, _) in self.acked.items():
            session = await self.fenliu.get_session(shop, session_id)
            assert (session.buyer_id, session.agent_id) == (buyer, agent_id), (shop, buyer)


def client(nodes: list[FenliuNode]) -> AsyncClient:
    # Deadlines long enough for a stream leader election (5-8 s) and a lease's TTL on a
    # loaded machine: the SDK retries within them; nothing may surface before.
    return AsyncClient([n.address for n in nodes], timeout=60, retry_budget=60)


def test_a_nats_stream_leaders_sigkill_under_load_loses_nothing_acknowledged(
    cluster: Cluster,
) -> None:
    cluster.add()
    cluster.add()

    async def main() -> str:
        fenliu = client(cluster.nodes)
        try:
            await settled(fenliu, {n.address for n in cluster.nodes})
            load = Load(fenliu)
            await load.start()
            await load.after(0.0)
            shop = SHOPS[0]
            stream = f"FENLIU_{cluster.name}_{shard_index(shop, SHARDS):04d}"
            nc = await nats.connect(cluster.nats.urls)
            try:
                info = await nc.jetstream().stream_info(stream)
            finally:
                await nc.close()
            assert info.cluster is not None and info.cluster.leader
            leader = cluster.nats.member(info.cluster.leader)
            leader.kill()
            killed = time.monotonic()
            try:
                await load.after(killed, shop=shop)  # that stream takes writes again
                await load.after(killed, count=100)
            finally:
                await asyncio.to_thread(leader.restart)
            await load.stop()
            await load.verify()
            return f"{len(load.acked)} acknowledged, leader {info.cluster.leader} killed"
        finally:
            await fenliu.close()

    print(asyncio.run(main()))


def test_an_etcd_leaders_sigkill_under_load_loses_nothing_acknowledged(
    cluster: Cluster,
) -> None:
    cluster.add()
    cluster.add()

    async def main() -> str:
        fenliu = client(cluster.nodes)
        try:
            await settled(fenliu, {n.address for n in cluster.nodes})
            load = Load(fenliu)
            await load.start()
            await load.after(0.0)
            leader = cluster.etcd.leader()
            leader.kill()
            killed = time.monotonic()
            try:
                await load.after(killed, count=100)
                await asyncio.sleep(3.0)  # past a lease TTL without the old leader
                await load.after(time.monotonic(), count=50)
            finally:
                await asyncio.to_thread(leader.restart)
            await load.stop()
            await load.verify()
            return f"{len(load.acked)} acknowledged, etcd {leader.name} killed"
        finally:
            await fenliu.close()

    print(asyncio.run(main()))


class Watch:
    """A watcher of one shop through the SDK: the seqs it saw, and its other items."""

    def __init__(self, fenliu: AsyncClient, shop: str) -> None:
        self.fenliu, self.shop = fenliu, shop
        self.seen: list[int] = []
        self.marks: list[object] = []
        self.stream = fenliu.watch_shop(shop, give_up_after=WAIT_S)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for item in self.stream:
            if isinstance(item, Event):
                self.seen.append(item.seq)
            else:
                self.marks.append("started" if isinstance(item, Started) else item)

    async def head(self) -> int:
        check = self.fenliu.watch_shop(self.shop)
        try:
            async for item in check:
                assert isinstance(item, Started)
                return item.head_seq
        finally:
            await check.aclose()
        raise AssertionError("no Started")

    async def caught_up(self) -> None:
        """Every event up to the shop's head now seen, once each, in order, no FellBehind."""
        head = await self.head()
        deadline = time.monotonic() + WAIT_S
        while not self.seen or self.seen[-1] < head:
            assert not self.task.done(), self.task
            assert time.monotonic() < deadline, (
                f"{self.shop}: the watcher stopped at {self.seen[-1:]} < {head}")  # fmt: skip
            await asyncio.sleep(0.1)
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.stream.aclose()
        assert [m for m in self.marks if not isinstance(m, str)] == [], self.marks
        assert self.seen == list(range(self.seen[0], head + 1)), f"{self.shop}: gap or duplicate"


def test_planned_hand_offs_under_load_surface_no_error(cluster: Cluster) -> None:
    first, second = cluster.add(), cluster.add()

    async def main() -> str:
        fenliu = client(cluster.nodes)
        try:
            await settled(fenliu, {first.address, second.address})
            load = Load(fenliu)
            await load.start()
            watches = [Watch(fenliu, shop) for shop in SHOPS]  # one per shard
            await load.after(0.0)

            third = await asyncio.to_thread(cluster.add)  # joins: shards handed to it
            await settled(fenliu, {first.address, second.address, third.address})
            await load.after(time.monotonic())
            await asyncio.to_thread(first.stop, 30)  # SIGTERM: hands its shards over
            assert first.proc is not None and first.proc.returncode == 0, first.log_tail()
            await settled(fenliu, {second.address, third.address})
            since = time.monotonic()
            for shop in SHOPS:
                await load.after(since, count=5, shop=shop)
            await load.stop()  # raises a caller's error: none may have surfaced
            await load.verify()
            for watch in watches:
                await watch.caught_up()
            starts = sum(w.marks.count("started") for w in watches)
            return f"{len(load.acked)} acknowledged, {starts} watch starts"
        finally:
            await fenliu.close()

    print(asyncio.run(main()))

"""The JetStream log against a real 3-node cluster: records through the real codec, fencing
of a stale owner, de-duplicated retries, and a stream leader SIGKILLed under appends."""

from __future__ import annotations

import asyncio
import time

import pytest

from fenliu.server.cluster.local import NatsCluster
from fenliu.server.core import types as t
from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.shard import Shard
from fenliu.server.storage import codec
from fenliu.server.storage.jetstream import AppendRefused, JetStreamStorage, chunks, pack, unpack

from ..server.core.test_invariants import dump

T0 = 1_700_000_000_000
SHARDS = 4


def commands(shop: str, n: int, at: int = T0) -> list[t.AnyCommand]:
    """Agents registered, then buyers routed: records the core applies and can replay."""
    out: list[t.AnyCommand] = [
        t.RegisterAgent(at=at, shop_id=shop, agent_id=f"a{i}", max_concurrent=50,
                        status=t.Status.ONLINE)
        for i in range(3)
    ]  # fmt: skip
    out += [
        t.Route(at=at + i, shop_id=shop, buyer_id=f"b{i}", request_id=f"r{i}") for i in range(n)
    ]
    return out


def route(shop: str, n: int) -> bytes:
    return codec.encode_command(
        t.Route(at=T0 + n, shop_id=shop, buyer_id=f"b{n}", request_id=f"r{n}")
    )


def tick(shard: int, n: int) -> bytes:
    return codec.encode_command(t.Tick(at=T0 + n, shard=shard))


def applied(d: Dispatcher, cmds: list[t.AnyCommand]) -> dict[int, list[bytes]]:
    """Apply to ``d`` as a node would; each shard's records in order."""
    out: dict[int, list[bytes]] = {}
    for cmd in cmds:
        index = d.index_of(cmd.shop_id)  # type: ignore[union-attr]
        d.shards[index].apply(cmd)
        d.shards[index].outbox.clear()
        out.setdefault(index, []).append(codec.encode_command(cmd))
    return out


async def connect(nats: NatsCluster, name: str, **kw: float) -> JetStreamStorage:
    return await JetStreamStorage.connect(nats.urls, cluster=name, shards=SHARDS, **kw)


async def take_all(storage: JetStreamStorage, epoch: int) -> Dispatcher:
    d = Dispatcher(SHARDS)
    for i in range(SHARDS):
        d.install(i, await storage.take_over(i, epoch))
    return d


def test_pack_round_trip_and_split() -> None:
    records = [b"x" * 10, b"y" * 300, b"z"]
    assert unpack(pack(records), "m") == records
    parts = chunks(records, limit=320)
    assert [r for part in parts for r in part] == records and len(parts) == 2
    assert chunks([b"q" * 1000], limit=10) == [[b"q" * 1000]]  # one record per message at least


def test_appends_replay_through_the_core_codec(nats_cluster: NatsCluster, name: str) -> None:
    async def main() -> tuple[object, object, int]:
        writer = await connect(nats_cluster, name)
        d = await take_all(writer, epoch=1)
        per_shard = applied(d, commands("s1", 40) + commands("s2", 40) + commands("s3", 5))
        for i, records in per_shard.items():  # in batches of 7, one in flight per shard
            for k in range(0, len(records), 7):
                await writer.append([(i, records[k : k + 7])])
        await writer.append(list(per_shard.items()))  # several shards in one append
        for i, records in per_shard.items():
            for cmd in records:
                d.shards[i].apply(codec.decode_command(cmd))
                d.shards[i].outbox.clear()
        reader = await connect(nats_cluster, name)
        again = await take_all(reader, epoch=2)
        stale = sum(log.stale for log in reader.logs)
        await writer.close()
        await reader.close()
        return dump(d), dump(again), stale

    expected, recovered, stale = asyncio.run(main())
    assert recovered == expected
    assert stale == 0


def test_snapshot_then_the_rest_and_the_stream_is_purged(
    nats_cluster: NatsCluster, name: str
) -> None:
    async def main() -> tuple[object, object, int, int]:
        writer = await connect(nats_cluster, name)
        d = await take_all(writer, epoch=1)
        index = d.index_of("snap")
        for round_ in range(3):  # three snapshots: the stream is purged up to the older kept
            records = applied(d, commands("snap", 10, at=T0 + 1000 * round_))[index]
            await writer.append([(index, records)])
            await writer.save_snapshot(index, d.shards[index], writer.logs[index].position)
        records = applied(d, commands("snap", 5, at=T0 + 9000))[index]
        await writer.append([(index, records)])  # after the newest snapshot: replayed
        info = await writer.js.stream_info(writer.logs[index].stream)
        reader = await connect(nats_cluster, name)
        shard: Shard = await reader.take_over(index, epoch=2)
        again = Dispatcher(SHARDS)
        again.install(index, shard)
        mine = Dispatcher(SHARDS)
        mine.install(index, d.shards[index])
        await writer.close()
        await reader.close()
        assert info.state is not None
        return dump(mine), dump(again), info.state.first_seq, writer.logs[index].start

    expected, recovered, first_seq, start = asyncio.run(main())
    assert recovered == expected
    # messages: takeover 1, batches 2, 3, 4 (snapshots at 2, 3, 4): purged below 3
    assert (first_seq, start) == (4, 3)


def test_a_stale_owner_is_refused_after_a_takeover(nats_cluster: NatsCluster, name: str) -> None:
    async def main() -> tuple[str, object, object]:
        old = await connect(nats_cluster, name)
        d = await take_all(old, epoch=1)
        index = d.index_of("fence")
        await old.append([(index, applied(d, commands("fence", 3))[index])])
        new = await connect(nats_cluster, name)
        taken = await new.take_over(index, epoch=2)  # the old owner does not know yet
        refused = ""
        late = Dispatcher(SHARDS)
        records = applied(late, commands("fence", 4, at=T0 + 500))[index]
        try:
            await old.append([(index, records)])
        except AppendRefused as exc:
            refused = str(exc)
        own = applied(Dispatcher(SHARDS), commands("other", 2))  # the new owner writes on
        for i, recs in own.items():
            if i == index:
                await new.append([(i, recs)])
                for r in recs:
                    taken.apply(codec.decode_command(r))
                taken.outbox.clear()
        third = await connect(nats_cluster, name)
        check = Dispatcher(SHARDS)
        check.install(index, await third.take_over(index, epoch=3))
        mine = Dispatcher(SHARDS)
        mine.install(index, taken)
        for s in (old, new, third):
            await s.close()
        return refused, dump(mine), dump(check)

    refused, expected, recovered = asyncio.run(main())
    assert "wrong last sequence" in refused
    assert recovered == expected  # the refused batch is nowhere


def test_a_retry_is_deduplicated(nats_cluster: NatsCluster, name: str) -> None:
    async def main() -> tuple[int, int, int, int]:
        storage = await connect(nats_cluster, name)
        await storage.take_over(0, epoch=1)
        log = storage.logs[0]
        payload = pack([b"one record"])
        headers = {
            "Fenliu-Kind": "batch", "Fenliu-Epoch": "1",
            "Nats-Expected-Last-Sequence": str(log.position), "Nats-Msg-Id": "same-id",
        }  # fmt: skip
        first = await storage.js.publish(log.subject, payload, headers=dict(headers))
        again = await storage.js.publish(log.subject, payload, headers=dict(headers))
        info = await storage.js.stream_info(log.stream)
        await storage.close()
        assert info.state is not None
        return first.seq, again.seq, int(bool(again.duplicate)), info.state.messages

    first, again, duplicate, messages = asyncio.run(main())
    assert (first, again, duplicate) == (2, 2, 1)  # the same sequence, told a duplicate
    assert messages == 2  # the takeover and one batch


def test_stream_leader_sigkill_under_appends(nats_cluster: NatsCluster, name: str) -> None:
    """Appends to every shard while the leader of shard 0's stream is SIGKILLed: writes
    resume (retried with the same message id), and every acknowledged record is read back,
    in order, once."""

    async def main() -> tuple[list[bytes], list[bytes], int, float, str]:
        storage = await connect(nats_cluster, name, attempt_timeout_s=1.0)
        for i in range(SHARDS):
            await storage.take_over(i, epoch=1)
        info = await storage.js.stream_info(storage.logs[0].stream)
        assert info.cluster is not None and info.cluster.leader
        leader = info.cluster.leader
        shop = next(f"k{j}" for j in range(100) if Dispatcher(SHARDS).index_of(f"k{j}") == 0)
        acked = [codec.encode_command(commands(shop, 0)[0])]  # the shop, then its routes
        await storage.append([(0, acked)])
        killed_at = 0.0
        resumed_at = 0.0
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < 40 and (not resumed_at or n < 400):
            batch = [route(shop, n + k) for k in range(5)]
            await storage.append([(i, batch if i == 0 else [tick(i, n)]) for i in range(SHARDS)])
            acked += batch
            n += 5
            if n == 100:
                nats_cluster.member(leader).kill()
                killed_at = time.monotonic()
            elif killed_at and not resumed_at:
                resumed_at = time.monotonic()
        nats_cluster.member(leader).restart()
        reader = await connect(nats_cluster, name)
        await reader.take_over(0, epoch=2)
        read = [
            r
            async for entry in reader.read(0, 0, reader.logs[0].position)
            if entry.kind == "batch"
            for r in entry.records
        ]
        retries = storage.retries
        await storage.close()
        await reader.close()
        return acked, read, retries, resumed_at - killed_at, leader

    acked, read, retries, outage, leader = asyncio.run(main())
    assert len(acked) >= 400
    assert read == acked, "an acknowledged record was lost, reordered or doubled"
    print(f"leader {leader} killed: writes resumed after {outage:.2f}s, {retries} retries")


@pytest.mark.parametrize("shards", [8])
def test_the_shard_count_is_fixed_when_the_cluster_is_created(
    nats_cluster: NatsCluster, name: str, shards: int
) -> None:
    from fenliu.server.storage.base import StorageError

    async def main() -> str:
        first = await JetStreamStorage.connect(nats_cluster.urls, cluster=name, shards=shards)
        await first.close()
        try:
            await JetStreamStorage.connect(nats_cluster.urls, cluster=name, shards=shards * 2)
        except StorageError as exc:
            return str(exc)
        return ""

    assert "has 8 virtual shards" in asyncio.run(main())


def test_one_streams_election_holds_only_its_own_shards_callers(
    nats_cluster: NatsCluster, name: str
) -> None:
    """A Node in cluster mode (``attach``): the leader of one shard's stream SIGKILLed, a
    change to a shard whose stream leader lives is durable and answered first; the held one
    is answered once its stream has a new leader."""
    from fenliu.server.node import Node

    async def main() -> tuple[list[str], list[bool], str]:
        storage = await connect(nats_cluster, name, attempt_timeout_s=1.0)
        node = Node(Dispatcher(SHARDS), lambda: T0)
        node.attach(storage, restorer=lambda index: None)
        leaders = {}
        for i in range(SHARDS):
            node.serve(i, await storage.take_over(i, epoch=1))
            info = await storage.js.stream_info(storage.logs[i].stream)
            assert info.cluster is not None
            leaders[i] = info.cluster.leader
        if len(set(leaders.values())) == 1:  # one server leads them all: move one away
            name0 = storage.logs[0].stream
            await storage.nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{name0}", b"", timeout=5)
            for _ in range(150):
                info = await storage.js.stream_info(name0)
                assert info.cluster is not None
                if info.cluster.leader and info.cluster.leader != leaders[0]:
                    leaders[0] = info.cluster.leader
                    break
                await asyncio.sleep(0.1)
        held, free = next(
            (a, b) for a in range(SHARDS) for b in range(SHARDS) if leaders[a] != leaders[b]
        )
        shops = {}
        for index in (held, free):
            shops[index] = next(f"e{j}" for j in range(1000)
                                if node.dispatcher.index_of(f"e{j}") == index)  # fmt: skip
            await node.execute(commands(shops[index], 0)[0])
        order: list[str] = []
        held_idle: list[bool] = []

        async def route(index: int, label: str) -> None:
            shop = shops[index]
            await node.execute(t.Route(at=T0, shop_id=shop, buyer_id="b", request_id="r"))
            order.append(label)
            if label == "free":  # answered while the other shard's batch is still in flight
                held_idle.append(node.idle(held))

        victim = str(leaders[held])
        nats_cluster.member(victim).kill()
        await asyncio.gather(route(held, "held"), route(free, "free"))
        nats_cluster.member(victim).restart()
        await storage.close()
        return order, held_idle, victim

    order, held_idle, victim = asyncio.run(main())
    assert order == ["free", "held"], f"with {victim} killed: {order}"
    assert held_idle == [False]

"""A member (lease + stream writer) hands a shard over without waiting for a TTL: the next
owner claims it at once with everything acknowledged, and the old one can no longer write."""

from __future__ import annotations

import asyncio

from fenliu.server.cluster.local import EtcdCluster, NatsCluster
from fenliu.server.cluster.member import Member
from fenliu.server.core import types as t
from fenliu.server.storage import codec
from fenliu.server.storage.jetstream import AppendRefused

T0 = 1_700_000_000_000
SHARDS = 4


def test_a_planned_hand_over_and_a_leave(
    nats_cluster: NatsCluster, etcd: EtcdCluster, name: str
) -> None:
    async def join(node: str) -> Member:
        return await Member.join(nats_cluster.urls, etcd.endpoints, cluster=name,
                                 node_id=node, shards=SHARDS, ttl_s=2)  # fmt: skip

    async def main() -> tuple[bool, float, str, bool, list[float], dict[int, int]]:
        a, b = await join("a"), await join("b")
        left: set[Member] = set()
        try:
            for i in range(SHARDS):
                assert await a.claim(i) is not None
            assert await b.claim(0) is None  # held
            await a.storage.append([(0, [codec.encode_command(t.Tick(at=T0 + 5, shard=0))])])
            await a.hand_over(0)
            shard = await b.claim(0)  # at once: no lease to wait out
            refused = ""
            try:
                await a.storage.append([(0, [codec.encode_command(t.Tick(at=T0 + 9, shard=0))])])
            except AppendRefused as exc:
                refused = str(exc)
            await a.leave()  # its lease revoked: every other shard is free at once
            left.add(a)
            others = [await b.claim(i) for i in range(1, SHARDS)]
            epochs = dict(b.ownership.owned)
        finally:  # a failed step still disconnects both (no connection outlives its loop)
            for member in (a, b):
                if member not in left:
                    await member.leave()
        assert shard is not None
        return (
            shard is not None, shard.now, refused, all(s is not None for s in others),
            [s.now for s in others if s is not None], epochs,
        )  # fmt: skip

    claimed, now, refused, all_others, _, epochs = asyncio.run(main())
    assert claimed and now == T0 + 5  # the acknowledged tick came with the shard
    assert "not owned" in refused
    assert all_others and sorted(epochs) == list(range(SHARDS))

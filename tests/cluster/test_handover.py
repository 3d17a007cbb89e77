"""A planned hand-over appends each shard's whole image as its owner's last message before
freeing its key (``runtime.py``, ``_hand_over``): the next owner finds it just before its
takeover and replays nothing, with every acknowledged change in it. Real fenliu-server
processes, NATS JetStream and etcd; the moves are a node joining (the first hands it half)
and the first node's SIGTERM (it hands over the rest)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fenliu.client import Client
from fenliu.server.cluster.local import EtcdCluster, NatsCluster
from fenliu.server.core.dispatcher import shard_index
from fenliu.server.storage.jetstream import (
    KIND_IMAGE,
    KIND_TAKEOVER,
    JetStreamStorage,
    decode_image,
)

from .conftest import owners
from .test_nodes import SHARDS, Node, nodes, wait_until

__all__ = ["nodes"]  # the fixture, imported for the test below

SHOPS = [f"handover-shop{i}" for i in range(8)]


def streams(nats: NatsCluster, name: str) -> dict[int, tuple[int, str, set[str]]]:
    """Per shard: the seq of its stream's last takeover message, the kind of the message
    before it, and the shops in the image it holds (read as a bystander: nothing written)."""

    async def main() -> dict[int, tuple[int, str, set[str]]]:
        storage = await JetStreamStorage.connect(nats.urls, cluster=name, shards=SHARDS)
        try:
            out = {}
            for index in range(SHARDS):
                info = await storage.js.stream_info(storage.logs[index].stream)
                assert info.state is not None
                entries = [e async for e in storage.read(index, 0, info.state.last_seq)]
                takeover = max(e.seq for e in entries if e.kind == KIND_TAKEOVER)
                [before] = [e for e in entries if e.seq == takeover - 1]
                shops = set()
                if before.kind == KIND_IMAGE:
                    shops = set(decode_image(before.image, index, before.seq)[0].shops)
                out[index] = (takeover, before.kind, shops)
            return out
        finally:
            await storage.close()

    return asyncio.run(asyncio.wait_for(main(), 120))


def test_a_hand_over_saves_the_image_the_next_owner_starts_from(
    nats_cluster: NatsCluster, etcd: EtcdCluster, name: str, tmp_path: Path, nodes: list[Node]
) -> None:
    a = Node(tmp_path, nats_cluster, etcd, name, "a")
    nodes.append(a)
    assert sorted(owners(etcd, name).values()) == ["a"] * SHARDS  # alone: every shard
    decisions = {}
    with Client(a.address, timeout=30, retry_budget=30) as fenliu:
        for shop in SHOPS:
            fenliu.register_agent(shop, "a1", max_concurrent=50, status="online")
            decisions[shop] = [fenliu.route(shop, f"buyer{i}").session_id for i in range(5)]
    b = Node(tmp_path, nats_cluster, etcd, name, "b")
    nodes.append(b)
    wait_until(lambda: sorted(owners(etcd, name).values()) == ["a"] * 8 + ["b"] * 8, 60,
               "8 shards each (a handed b half)")  # fmt: skip
    assert a.stop() == 0  # SIGTERM: hands the other half over
    wait_until(lambda: sorted(owners(etcd, name).values()) == ["b"] * SHARDS, 60,
               "b owns every shard")  # fmt: skip

    with Client(b.address, timeout=30, retry_budget=30) as fenliu:  # acknowledged: served
        for shop, sessions in decisions.items():
            assert [fenliu.get_session(shop, s).agent_id for s in sessions] == ["a1"] * 5
    found = streams(nats_cluster, name)
    # every shard moved once to b: the message just before b's takeover is a's image of
    # the shard (appended at its last durable message), so b replayed nothing
    assert {i: kind for i, (_, kind, _) in found.items()} == dict.fromkeys(found, KIND_IMAGE)
    for shop in SHOPS:
        assert shop in found[shard_index(shop, SHARDS)][2]
    log = b.text()
    for index, (takeover, _, _) in found.items():
        assert f"shard {index}: takeover steps" in log
        assert (
            f"0 messages between the snapshot at {takeover - 1} and the takeover at "
            f"{takeover})" in log
        ), log[-3000:]

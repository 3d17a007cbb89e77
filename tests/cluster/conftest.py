"""The engines of the cluster tests: a real 3-node NATS JetStream cluster and etcd, on free
loopback ports with data in temporary directories (``server/cluster/local.py``), started
once per test module and stopped by PID. Each test uses its own cluster name, so its
streams and keys are its own."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest

from fenliu.server.cluster.local import EtcdCluster, NatsCluster
from fenliu.server.cluster.ownership import Ownership

_names = itertools.count(1)


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path_factory.mktemp("nats"), size=3) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path_factory.mktemp("etcd"), size=1) as cluster:
        yield cluster


@pytest.fixture
def name() -> str:
    """A cluster name of this test's own (its streams, buckets and keys)."""
    return f"t{next(_names)}"


def owners(etcd: EtcdCluster, name: str) -> dict[int, str]:
    """Cluster ``name``'s shard owners as etcd names them: shard -> node id (read by a
    probe of its own, on a lease of its own)."""

    async def main() -> dict[int, str]:
        probe = Ownership(etcd.endpoints, name, "probe", ttl_s=2)
        await probe.start()
        try:
            return {i: o.node_id for i, o in (await probe.owners()).items()}
        finally:
            await probe.close()

    return asyncio.run(asyncio.wait_for(main(), 30))

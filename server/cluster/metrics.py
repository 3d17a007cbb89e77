"""Cluster mode's Prometheus metrics, on the server's registry (``metrics_port``):

fenliu_cluster_owned_shards            shards this node serves now (gauge)
fenliu_cluster_epoch_changes_total     shards taken over here (each a new epoch)
fenliu_cluster_not_owner_total         calls answered NOT_OWNER (or "no owner yet")
fenliu_cluster_lease_valid_seconds     how long the lease is surely alive (gauge;
                                       ≤ 0: this node stops appending)
fenliu_cluster_lease_reopens_total     keep-alive streams reopened
fenliu_cluster_append_seconds          one shard's batch acknowledged by its stream's
                                       quorum, retries included (histogram)
fenliu_cluster_replay_seconds          one takeover: fenced, snapshot loaded, stream
                                       replayed (histogram)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..node import Node

if TYPE_CHECKING:
    from .runtime import ClusterRuntime

APPEND_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0)
REPLAY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ClusterMetrics:
    def __init__(
        self, registry: CollectorRegistry, runtime: Callable[[], ClusterRuntime | None], node: Node
    ) -> None:
        self.append = Histogram(
            "fenliu_cluster_append_seconds", "One shard batch acknowledged by its stream",
            buckets=APPEND_BUCKETS, registry=registry,
        )  # fmt: skip
        self.replay = Histogram(
            "fenliu_cluster_replay_seconds", "One takeover: fenced, loaded and replayed",
            buckets=REPLAY_BUCKETS, registry=registry,
        )  # fmt: skip
        registry.register(_Figures(runtime, node))


class _Figures(Collector):
    def __init__(self, runtime: Callable[[], ClusterRuntime | None], node: Node) -> None:
        self.runtime = runtime
        self.node = node

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        runtime = self.runtime()
        yield CounterMetricFamily(
            "fenliu_cluster_not_owner", "Calls answered NOT_OWNER", value=self.node.refused
        )
        if runtime is None or runtime.member is None:
            return
        own = runtime.member.ownership
        yield GaugeMetricFamily(
            "fenliu_cluster_owned_shards", "Shards this node serves", value=len(own.owned)
        )
        yield CounterMetricFamily(
            "fenliu_cluster_epoch_changes", "Shards taken over here", value=runtime.epoch_changes
        )
        yield GaugeMetricFamily(
            "fenliu_cluster_lease_valid_seconds", "How long the lease is surely alive",
            value=own.valid_until - time.monotonic() if own.lease else 0.0,
        )  # fmt: skip
        yield CounterMetricFamily(
            "fenliu_cluster_lease_reopens", "Keep-alive streams reopened", value=own.reopened
        )

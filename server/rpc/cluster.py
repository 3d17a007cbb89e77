"""The Cluster servicer: the cluster map (shard -> owner, address, epoch) any node answers.

Outside cluster mode the map names no cluster and no owners: the server serves every shop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc.aio

from fenliu.client._pb import fenliu_pb2 as pb, fenliu_pb2_grpc as pb_grpc

from ..config import Config
from .service import Context

if TYPE_CHECKING:
    from ..cluster.runtime import ClusterRuntime


class ClusterService(pb_grpc.ClusterServicer):
    def __init__(self, config: Config, runtime: Callable[[], ClusterRuntime | None]) -> None:
        self._config = config
        self._runtime = runtime

    async def GetClusterMap(
        self, request: pb.GetClusterMapRequest, context: Context
    ) -> pb.ClusterMap:
        runtime = self._runtime()
        if runtime is None:
            return pb.ClusterMap(shards=self._config.shards)
        # with_lag: the lag of the shards this node owns (the others' are theirs to tell)
        lag = await runtime.lag() if request.with_lag else {}
        me = runtime.node_id
        return pb.ClusterMap(
            cluster=self._config.cluster_name,
            shards=runtime.shards,
            owners=[
                pb.ShardOwner(
                    shard=shard,
                    node_id=node,
                    address=address,
                    epoch=epoch,
                    lag=lag.get(shard) if node == me else None,
                )
                for shard, node, address, epoch in runtime.cluster_map()
            ],
            nodes=[pb.ClusterNode(node_id=n, address=a) for n, a in sorted(runtime.nodes.items())],
            node_id=runtime.node_id,
        )


def add_cluster(
    server: grpc.aio.Server, config: Config, runtime: Callable[[], ClusterRuntime | None]
) -> None:
    pb_grpc.add_ClusterServicer_to_server(ClusterService(config, runtime), server)

"""Cluster mode in the SDK: the cluster map, one channel per node, and where a call goes.

A fenliu cluster serves each virtual shard from one node at a time (its owner); a shop's
shard is ``shard_index(shop_id, shards)`` (the server's own function). The ``Router`` keeps
the map (``GetClusterMap``, from any node) and answers the address a shop's calls go to.

Outside cluster mode nothing of this costs anything: with one target the client calls it
as it always did, and reads the map only once a call fails with UNAVAILABLE (a node that
does not own the shard says NOT_OWNER, naming the owner; a map that names no cluster ends
the probing for good). Given several targets it reads the map before the first call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio
from google.rpc import error_details_pb2 as ed

from ._errors import FenliuError
from ._pb import fenliu_pb2 as pb

__all__ = ["NOT_OWNER", "Router", "shard_index"]


def shard_index(shop_id: str, shards: int) -> int:
    """The virtual shard of a shop in a cluster of ``shards``: ``crc32(shop_id) % shards``,
    the server's own function (``fenliu.server.core.dispatcher.shard_index``, loaded on the
    first use: the SDK outside cluster mode loads nothing of the server)."""
    from fenliu.server.core.dispatcher import shard_index as server_shard_index

    global _shard_index
    _shard_index = server_shard_index
    return server_shard_index(shop_id, shards)


_shard_index: Callable[[str, int], int] = shard_index

NOT_OWNER = "NOT_OWNER"
"""The ErrorInfo reason of a node asked for a shard it does not own (UNAVAILABLE)."""
TAKEOVER_POLL_S = 0.025
"""The pause between attempts at a node that is taking the shard over (it names itself):
about this long (±50%), so a call lands within ~this of the shard being served there."""
REFRESH_EVERY_S = 0.2
"""The map is read at most this often (a failover's retries all ask for it)."""
MAP_TIMEOUT_S = 1.0


def owner_hint(error: FenliuError) -> tuple[int, str] | None:
    """(shard, owner address) from a NOT_OWNER error's ErrorInfo ("" while nobody owns it);
    None for any other error."""
    if error.reason != NOT_OWNER:
        return None
    shard = -1
    if error.subject.startswith("shards/"):
        with contextlib.suppress(ValueError):
            shard = int(error.subject.removeprefix("shards/"))
    for detail in error.details:
        if isinstance(detail, ed.ErrorInfo) and detail.reason == NOT_OWNER:
            return shard, detail.metadata.get("address", "")
    return shard, ""


def taking_over(error: FenliuError, target: str) -> bool:
    """A NOT_OWNER refusal from ``target`` naming ``target`` itself: that node holds the
    shard's key and is taking its stream over (it serves the shard within moments; the map
    can only say the same)."""
    hint = owner_hint(error)
    return hint is not None and bool(hint[1]) and hint[1] == target


class Router:
    """The cluster map as last read, and a channel's stubs per address (opened lazily)."""

    def __init__(
        self,
        targets: Sequence[str],
        open_stubs: Callable[[str], Any],
        metadata: Callable[[], tuple[tuple[str, str], ...]],
    ) -> None:
        self.targets = list(targets)
        self.default = self.targets[0]
        self._open_stubs = open_stubs
        self._metadata = metadata
        self.stubs: dict[str, Any] = {}
        self.shards = 0  # > 0: a cluster of that many virtual shards
        self.owners: list[str] = []  # shard -> its owner's address ("" while it moves)
        self.nodes: list[str] = []  # the live nodes' addresses, as last read
        self.single = False  # a node said: no cluster (probing ends)
        self.wanted = len(self.targets) > 1  # read the map before the first call
        self.refreshes = 0  # maps read (tests and the benchmarks)
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = -1e9

    @property
    def clustered(self) -> bool:
        return self.shards > 0

    def address(self, shop_id: str | None) -> str:
        """Where a call about ``shop_id`` goes (None: any node)."""
        if self.shards and shop_id:
            owner = self.owners[_shard_index(shop_id, self.shards)]
            if owner:
                return owner
        return self.default

    def shard(self, shop_id: str) -> int:
        return _shard_index(shop_id, self.shards) if self.shards else 0

    def stubs_at(self, address: str) -> Any:
        stubs = self.stubs.get(address)
        if stubs is None:
            stubs = self.stubs[address] = self._open_stubs(address)
        return stubs

    def learn(self, error: FenliuError) -> bool:
        """Take the owner a NOT_OWNER error names; True if that is a new address to try."""
        hint = owner_hint(error)
        if hint is None:
            return False
        shard, address = hint
        if not self.shards or not 0 <= shard < self.shards or not address:
            return False
        moved = self.owners[shard] != address
        self.owners[shard] = address
        return moved

    async def ready(self) -> None:
        """Before the first call given several targets: read the map (once)."""
        if self.wanted:
            self.wanted = False
            await self.refresh()

    async def refresh(self, avoid: str = "", timeout: float = MAP_TIMEOUT_S) -> None:
        """Read the map again from any node (one read at a time, at most every
        REFRESH_EVERY_S; ``avoid``, a node that just failed, is asked last; each node asked
        for at most ``timeout`` seconds)."""
        if self.single:
            return
        if self._refreshing is not None:
            await asyncio.shield(self._refreshing)
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._refreshed_at < REFRESH_EVERY_S:
            return
        self._refreshing = loop.create_task(self._read(avoid, max(0.05, timeout)))
        try:
            await asyncio.shield(self._refreshing)
        finally:
            self._refreshing = None

    async def _read(self, avoid: str, timeout: float) -> None:
        candidates = list(dict.fromkeys(self.nodes + self.targets))
        if avoid in candidates:
            candidates.remove(avoid)
            candidates.append(avoid)
        try:
            for address in candidates:
                try:
                    cmap = await self.stubs_at(address).cluster.GetClusterMap(
                        pb.GetClusterMapRequest(), timeout=min(timeout, MAP_TIMEOUT_S),
                        metadata=self._metadata(),
                    )  # fmt: skip
                except grpc.aio.AioRpcError:
                    continue
                self.apply(cmap)
                if cmap.cluster:
                    self.default = address  # a live node, for calls about no shop
                return
        finally:
            self._refreshed_at = asyncio.get_running_loop().time()

    def apply(self, cmap: pb.ClusterMap) -> None:
        self.refreshes += 1
        if not cmap.cluster:
            if not self.shards:
                self.single = True  # a single server: never asked again
            return
        owners = [""] * cmap.shards
        for owner in cmap.owners:
            if 0 <= owner.shard < cmap.shards:
                owners[owner.shard] = owner.address
        self.shards, self.owners = cmap.shards, owners
        self.nodes = [n.address for n in cmap.nodes if n.address]

    def split(self, shops: Sequence[str]) -> dict[str, list[int]]:
        """The positions of ``shops`` grouped by the address each goes to, in order."""
        groups: dict[str, list[int]] = {}
        for i, shop in enumerate(shops):
            groups.setdefault(self.address(shop), []).append(i)
        return groups

    async def close(self) -> None:
        task, self._refreshing = self._refreshing, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

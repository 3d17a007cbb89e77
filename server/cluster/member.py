"""One node's part in a cluster: its lease (``ownership.py``) and its writer of the shards'
streams (``storage/jetstream.py``), joined so that a shard is written only while owned.

    member = await Member.join(nats_urls, etcd_endpoints, cluster="prod", node_id="n1",
                               address="10.0.0.5:50051", shards=256)
    shard = await member.claim(7)      # None: another node holds it
    await member.storage.append([(7, records)])   # refused once the lease may have lapsed
    await member.hand_over(7)          # a planned move: the next owner takes it at once
    await member.leave()

``claim`` takes the shard's key (its epoch) and then its stream (fencing every older
owner), and rebuilds the shard; the storage asks ``owns`` before every message, and a
shard lost with the lease stops being written at once (``on_lost``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from ..core.shard import Shard
from ..core.types import Event
from ..storage.jetstream import JetStreamStorage
from .ownership import DEFAULT_TTL_S, Ownership

log = logging.getLogger(__name__)


class Member:
    def __init__(self, ownership: Ownership, storage: JetStreamStorage) -> None:
        self.ownership = ownership
        self.storage = storage
        self.lost: Callable[[list[int]], None] | None = None  # the node's hook, if any

    @classmethod
    async def join(
        cls,
        nats_urls: Sequence[str],
        etcd_endpoints: Sequence[str],
        *,
        cluster: str,
        node_id: str,
        address: str = "",
        shards: int = 256,
        replicas: int = 3,
        ttl_s: int = DEFAULT_TTL_S,
        announce: bool = True,
    ) -> Member:
        ownership = Ownership(etcd_endpoints, cluster, node_id, ttl_s=ttl_s, address=address,
                              announce=announce)  # fmt: skip
        await ownership.start()
        try:
            storage = await JetStreamStorage.connect(
                nats_urls, cluster=cluster, shards=shards, replicas=replicas,
                allowed=ownership.owns,
            )  # fmt: skip
        except BaseException:
            await ownership.close()
            raise
        member = cls(ownership, storage)
        ownership.on_lost = member._on_lost
        return member

    def _on_lost(self, indexes: list[int]) -> None:
        for index in indexes:
            self.storage.release(index)
        log.warning("shards %s lost with the lease: no longer written here", indexes)
        if self.lost is not None:
            self.lost(indexes)

    async def claim(
        self,
        index: int,
        events: list[Event] | None = None,
        taken: Callable[[int], None] | None = None,
    ) -> Shard | None:
        """Take shard ``index`` if it is free: the shard rebuilt from its stream, or None
        (the events replayed are added to ``events``; ``taken(epoch)`` is called once the
        key is ours, before the stream is taken over)."""
        started = time.perf_counter()
        epoch = await self.ownership.acquire(index)
        if epoch is None:
            return None
        acquired = time.perf_counter()
        if taken is not None:
            taken(epoch)
        try:
            shard = await self.storage.take_over(index, epoch, events)
            log.info("shard %d: key taken in %.3fs, stream taken over and rebuilt in %.3fs",
                     index, acquired - started, time.perf_counter() - acquired)  # fmt: skip
            return shard
        except BaseException:
            await self.ownership.release(index)
            raise

    async def hand_over(self, index: int) -> None:
        """Stop writing shard ``index`` and free its key (its batch in flight settled)."""
        self.storage.release(index)
        await self.ownership.release(index)

    async def leave(self) -> None:
        """Free every shard (the lease is revoked) and disconnect."""
        for index in list(self.ownership.owned):
            self.storage.release(index)
        await self.ownership.close(revoke=True)
        await self.storage.close()

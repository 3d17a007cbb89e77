"""Who writes which shard: etcd leases and one key per owned shard bound to the lease.

    /fenliu/<cluster>/shards/<index>   value: the owner's node id   lease: the owner's lease
    /fenliu/<cluster>/nodes/<node id>  value: its advertised address  lease: the same

A node holds one lease (TTL 2–5 s) and keeps it alive on a bidirectional stream. It takes
a shard with a create-if-absent transaction; the revision at which the key was created is
the shard's **epoch**, the fencing token written into every message of its stream
(``storage/jetstream.py``). A key goes away when its owner's lease expires (the owner died
or froze), and a contender creates it again, at a higher revision: a higher epoch.

An owner does not wait to be told it lost its lease: it tracks the expiry itself. A
keep-alive sent at ``t`` and answered with TTL ``T`` means etcd expires the lease no earlier
than ``t + T`` (etcd counts from when it received it, after ``t``), so ``valid()`` holds
until ``t + T - margin`` and the write path stops appending before the lease can expire.
The stream's fencing refuses whatever slips through anyway (a frozen process wakes up
believing its clock). A broken keep-alive stream is reopened; when etcd says the lease is
gone (TTL 0), every shard is lost and a new lease is granted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import grpc
from etcd3aio import Etcd3Client, EtcdError, prefix_range_end
from etcd3aio._protobuf import LeaseKeepAliveRequest
from etcd3aio.kv import KVService

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 3
MARGIN_S = 0.5


@dataclass(frozen=True)
class Owner:
    node_id: str
    epoch: int  # the create revision of the shard's key
    lease: int


class Ownership:
    """One node's lease and the shards it holds in cluster ``cluster``.

    ``await start()`` grants the lease and keeps it alive; ``acquire(index)`` takes a
    free shard and returns its epoch; ``owns(index)`` is what the write path asks before
    every append. ``on_lost(indexes)`` is called when shards are lost with the lease.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        cluster: str,
        node_id: str,
        *,
        ttl_s: int = DEFAULT_TTL_S,
        margin_s: float = MARGIN_S,
        address: str = "",
        announce: bool = True,
        on_lost: Callable[[list[int]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 2 <= ttl_s <= 60:
            raise ValueError(f"ttl_s must be 2..60 seconds (got {ttl_s!r})")
        if not 0 < margin_s < ttl_s / 2:
            raise ValueError(f"margin_s must be in (0, ttl_s/2) (got {margin_s!r})")
        self.client = Etcd3Client(list(endpoints), rpc_max_attempts=5)
        self.prefix = f"/fenliu/{cluster}"
        self.node_id = node_id
        self.address = address
        self.announced = announce  # the node key is put with the lease (else: announce())
        self.ttl_s = ttl_s
        self.margin_s = margin_s
        self.on_lost = on_lost
        self.clock = clock
        self.lease = 0
        self.valid_until = 0.0  # clock() before which the lease is surely alive
        self.owned: dict[int, int] = {}  # shard -> epoch
        self.reopened = 0  # keep-alive streams reopened (metrics, tests)
        self.leases = 0  # leases granted
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # ------------------------------------------------------------ the lease

    async def start(self) -> None:
        await self.client.connect()
        await self._grant()
        self._task = asyncio.create_task(self._keep_alive(), name=f"lease-{self.node_id}")

    async def close(self, revoke: bool = True) -> None:
        """Stop keeping the lease alive; ``revoke`` it (its shards are free at once)."""
        self._closing = True
        task, self._task = self._task, None
        # A cancelled gRPC read may surface as an RpcError (caught: the stream is
        # reopened) instead of CancelledError, so the flag ends the loop and the cancel is
        # repeated until the task is done (bounded).
        for _ in range(40):
            if task is None or task.done():
                break
            task.cancel()
            await asyncio.wait({task}, timeout=0.25)
        if revoke and self.lease:
            with contextlib.suppress(EtcdError, grpc.aio.AioRpcError, TimeoutError):
                assert self.client.lease is not None
                await self.client.lease.revoke(self.lease, timeout=2.0)
        self._lose(list(self.owned))
        self.lease = 0
        await self.client.close()

    def valid(self) -> bool:
        """The lease is surely alive now (and will be for ``margin_s`` more)."""
        return self.lease != 0 and self.clock() < self.valid_until

    def owns(self, index: int) -> bool:
        """This node may append to shard ``index`` now."""
        return index in self.owned and self.valid()

    def epoch(self, index: int) -> int:
        return self.owned.get(index, 0)

    async def _grant(self) -> None:
        assert self.client.lease is not None and self.client.kv is not None
        sent = self.clock()
        granted = await self.client.lease.grant(self.ttl_s, timeout=5.0)
        self.lease = granted.ID
        self.valid_until = sent + granted.TTL - self.margin_s
        self.leases += 1
        if self.address and self.announced:  # a serving node (not a tool or probe)
            await self.client.kv.put(
                f"{self.prefix}/nodes/{self.node_id}", self.address, lease=self.lease,
                timeout=5.0,
            )  # fmt: skip

    async def _keep_alive(self) -> None:
        interval = max(0.2, self.ttl_s / 4)
        while not self._closing:
            try:
                await self._stream(interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reopen: the lease may still be alive
                if self._closing:
                    return
                log.warning("lease %x: keep-alive stream broken (%s); reopening", self.lease, exc)
            self.reopened += 1
            if not self.valid() and self.lease and not await self._alive():
                log.error("lease %x expired: %d shards lost", self.lease, len(self.owned))
                self._lose(list(self.owned))
                self.lease = 0
            if not self.lease:
                with contextlib.suppress(Exception):
                    await self._grant()
            await asyncio.sleep(min(interval, 0.2))

    async def _stream(self, interval: float) -> None:
        """One keep-alive stream: a request every ``interval``, each answer awaited for
        at most ``interval``; returns (to be reopened) when one is not answered."""
        assert self.client.lease is not None
        sends: asyncio.Queue[float] = asyncio.Queue()
        lease = self.lease
        if not lease:
            return

        async def requests() -> AsyncIterator[LeaseKeepAliveRequest]:
            while True:
                await sends.get()
                yield LeaseKeepAliveRequest(ID=lease)

        call = self.client.lease._stub.LeaseKeepAlive(requests())
        try:
            while not self._closing:
                sent = self.clock()
                sends.put_nowait(sent)
                reply = await asyncio.wait_for(call.read(), timeout=interval * 2)
                if reply is grpc.aio.EOF:  # type: ignore[attr-defined]
                    return
                if reply.TTL <= 0:  # etcd: this lease is gone
                    log.error("lease %x: etcd says it expired", lease)
                    self._lose(list(self.owned))
                    self.lease = 0
                    return
                self.valid_until = max(self.valid_until, sent + reply.TTL - self.margin_s)
                await asyncio.sleep(max(0.0, interval - (self.clock() - sent)))
        except TimeoutError:
            return
        finally:
            call.cancel()

    async def _alive(self) -> bool:
        """Asks etcd whether the lease still lives (it answered nothing for a while)."""
        assert self.client.lease is not None
        try:
            sent = self.clock()
            reply = await self.client.lease.time_to_live(self.lease, timeout=1.0)
        except Exception:  # noqa: BLE001 - unknown: keep trying while etcd is away
            return True
        if reply.TTL > 0:
            self.valid_until = max(self.valid_until, sent + reply.TTL - self.margin_s)
            return True
        return False

    def _lose(self, indexes: list[int]) -> None:
        for index in indexes:
            self.owned.pop(index, None)
        if indexes and self.on_lost is not None:
            self.on_lost(indexes)

    # ------------------------------------------------------------ shards

    def key(self, index: int) -> str:
        return f"{self.prefix}/shards/{index}"

    async def acquire(self, index: int) -> int | None:
        """Take shard ``index`` if nobody holds it: its new epoch, or None (held)."""
        if not self.valid():
            return None
        assert self.client.kv is not None
        key = self.key(index)
        reply = await self.client.kv.txn(
            compare=[KVService.txn_compare_create_revision(key, 0)],
            success=[KVService.txn_op_put(key, self.node_id, lease=self.lease)],
            timeout=5.0,
        )
        if not reply.succeeded:
            return None
        epoch = int(reply.header.revision)
        self.owned[index] = epoch
        return epoch

    async def release(self, index: int) -> None:
        """Give shard ``index`` up (a planned hand-off): its key goes only if still ours."""
        epoch = self.owned.pop(index, 0)
        if not epoch:
            return
        assert self.client.kv is not None
        key = self.key(index)
        await self.client.kv.txn(
            compare=[KVService.txn_compare_create_revision(key, epoch)],
            success=[KVService.txn_op_delete(key)],
            timeout=5.0,
        )

    async def changes(self) -> AsyncIterator[None]:
        """Yields each time a key of the cluster changes (a shard taken or freed, a node
        joining or leaving): one etcd watch on the cluster's prefix. Ends or raises when
        the watch does (the caller opens it again)."""
        assert self.client.watch is not None
        prefix = f"{self.prefix}/"
        async for reply in self.client.watch.watch(prefix, prefix_range_end(prefix)):
            if reply.events:
                yield None

    async def announce(self) -> None:
        """Put this node among the live nodes (once ready to serve): the others then hand
        it its share of the shards."""
        self.announced = True
        if not self.address or not self.lease:
            return
        assert self.client.kv is not None
        await self.client.kv.put(
            f"{self.prefix}/nodes/{self.node_id}", self.address, lease=self.lease, timeout=5.0
        )

    async def withdraw(self) -> None:
        """Remove this node from the live nodes (it is leaving): the others count one
        node fewer at once, so each takes its larger share of the shards it frees."""
        if not self.address:
            return
        assert self.client.kv is not None
        await self.client.kv.delete(f"{self.prefix}/nodes/{self.node_id}", timeout=2.0)

    async def owners(self) -> dict[int, Owner]:
        """Every owned shard and its owner, in one range read."""
        assert self.client.kv is not None
        prefix = f"{self.prefix}/shards/"
        reply = await self.client.kv.get(prefix, prefix_range_end(prefix), timeout=5.0)
        return {
            int(kv.key.decode()[len(prefix) :]): Owner(kv.value.decode(), kv.create_revision,
                                                       kv.lease)
            for kv in reply.kvs
        }  # fmt: skip

    async def nodes(self) -> dict[str, str]:
        """Every live node (its lease alive) and its advertised address."""
        assert self.client.kv is not None
        prefix = f"{self.prefix}/nodes/"
        reply = await self.client.kv.get(prefix, prefix_range_end(prefix), timeout=5.0)
        return {kv.key.decode()[len(prefix) :]: kv.value.decode() for kv in reply.kvs}

    async def owner(self, index: int) -> Owner | None:
        """Who holds shard ``index`` now, as etcd says (linearizable)."""
        assert self.client.kv is not None
        reply = await self.client.kv.get(self.key(index), timeout=5.0)
        if not reply.kvs:
            return None
        kv = reply.kvs[0]
        return Owner(kv.value.decode(), kv.create_revision, kv.lease)

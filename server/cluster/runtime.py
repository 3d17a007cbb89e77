"""Cluster mode inside a server process: the node serves the shards it owns, refuses the
others naming their owner, takes free shards up to its fair share and hands extra ones
over, and snapshots what it owns.

    every BALANCE_S, and at once when a key of the cluster changes (an etcd watch: a
    shard freed or taken, a node joining or leaving): read the owners and the live nodes
    (two etcd range reads)
      - a shard owned elsewhere: refused with NOT_OWNER naming that owner (its address)
      - a free shard, while this node holds fewer than ceil(shards / nodes): claimed
        (its key, a takeover message on its stream, the shard rebuilt), then served
      - more than the fair share: a few handed over (refused here at a moment nothing is
        staged behind its batch in flight; once that batch is durable, the shard's image
        appended to its stream; the key freed: the next owner claims it at once and starts
        from the image, replaying nothing)
    at shutdown: the node withdrawn from the live nodes while every shard is handed over
      (concurrently), then each refused naming its new owner, the lease revoked

This is the first, simple assignment (each node takes free shards itself, no coordinator);
docs/cluster.md has what comes next.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Iterable
from typing import Protocol

from ..config import Config
from ..core import types as t
from ..core.dispatcher import shard_index
from ..core.errors import NotOwner
from ..core.shard import Shard
from ..node import Node
from .member import Member
from .metrics import ClusterMetrics
from .ownership import Owner

log = logging.getLogger(__name__)

BALANCE_S = 0.5
MOVES_PER_ROUND = 4
QUIET_WAIT_S = 0.1  # a shard handed over waits this long at most for a moment with
QUIET_POLL_S = 0.001  # nothing staged behind its batch in flight (a refusal drops nothing)
HANDOVER_SNAPSHOT_S = 5.0  # the hand-over image is given up after this long (its key freed)
FOLLOW_S = 1.0  # a leaving node learns its shards' new owners for this long at most
HANDOVER_EVENTS = 128  # recent events per watched shop handed over with the image


class Watches(Protocol):
    """The watch hub (``rpc/watch.py``), as cluster mode uses it."""

    rings: dict[str, deque[t.Event]]  # each watched shop's recent events

    def replayed(self, events: list[t.Event]) -> None: ...
    def forget(self, shop_ids: Iterable[str]) -> None: ...
    def shops(self) -> list[str]: ...


class ClusterRuntime:
    def __init__(
        self, config: Config, node: Node, address: str, watches: Watches | None = None
    ) -> None:
        self.config = config
        self.node = node
        self.watches = watches
        self._served: set[int] = set()  # shards served here (their watchers are here)
        self.address = address
        self.node_id = config.node_id or address
        self.shards = config.shards
        self.member: Member | None = None
        self.owners: dict[int, Owner] = {}
        self.nodes: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # a key changed: run a round now
        self._restoring: set[int] = set()
        self._snapshot_at = time.monotonic() + config.snapshot_interval_s
        self.epoch_changes = 0  # shards claimed here (metrics)
        self.metrics: ClusterMetrics | None = None  # set by the server with metrics on

    # ------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Join the cluster and take a fair share of the free shards before serving.

        Cancelled or failed part-way (a second signal while starting): the node leaves
        again, its lease revoked (nothing was served, so nothing is handed over).
        """
        try:
            await self._start()
        except BaseException:
            await self._abandon()
            raise

    async def _abandon(self) -> None:
        await self._stop_tasks()
        member, self.member = self.member, None
        if member is not None:
            try:
                await member.leave()
            except Exception as exc:  # noqa: BLE001 - the lease expires by itself anyway
                log.warning("could not leave the cluster: %r", exc)

    async def _stop_tasks(self) -> None:
        """The balancing loop and the ownership watch, cancelled and awaited."""
        for task in (self._task, self._watch_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._watch_task = None

    async def _start(self) -> None:
        c = self.config
        self.member = await Member.join(
            [u.strip() for u in c.cluster_nats.split(",") if u.strip()],
            [e.strip() for e in c.cluster_etcd.split(",") if e.strip()],
            cluster=c.cluster_name, node_id=self.node_id, address=self.address,
            shards=self.shards, replicas=c.replicas, ttl_s=c.lease_ttl_s, announce=False,
        )  # fmt: skip
        self.member.lost = self._lost
        if self.metrics is not None:
            self.member.storage.on_append = self.metrics.append.observe
        self.node.attach(self.member.storage, self._restore)
        for index in range(self.shards):
            self.node.refuse(index, self._not_owner(index))
        self._watch_task = asyncio.create_task(self._watch(), name="fenliu-cluster-watch")
        await self._round()
        # live only now, its free shards taken and about to serve: the others hand it its
        # share once it can claim at once (before, a joiner's start-up held moved shards)
        await self.member.ownership.announce()
        self._task = asyncio.create_task(self._forever(), name="fenliu-cluster")
        log.info("cluster %s: node %s at %s owns %d of %d shards", c.cluster_name,
                 self.node_id, self.address, len(self.owned), self.shards)  # fmt: skip

    async def stop(self) -> None:
        """Hand every shard over (a planned move) and leave the cluster.

        The node leaves the live nodes first, so that the others' fair share counts it out
        when they see its shards freed; meanwhile every shard is handed over concurrently
        (``_hand_over``: its image appended to its stream, its key freed once the node is
        withdrawn); then each is refused naming its new owner, until the lease is revoked.
        """
        await self._stop_tasks()
        if self.member is None:
            return
        owned = list(self.owned)
        for index in owned:
            self.owners.pop(index, None)
        withdrawn = asyncio.ensure_future(self._withdraw())
        outcomes = await asyncio.gather(*(self._hand_over(i, withdrawn) for i in owned),
                                        return_exceptions=True)  # fmt: skip
        await withdrawn
        for index, outcome in zip(owned, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error("shard %d: the hand-over failed (freed with the lease): %r",
                          index, outcome)  # fmt: skip
        await self._name_new_owners(owned)
        await self.member.leave()
        self.member = None

    @property
    def owned(self) -> dict[int, int]:
        return self.member.ownership.owned if self.member is not None else {}

    def cluster_map(self) -> list[tuple[int, str, str, int]]:
        """(shard, owner node id, its address, epoch) of every shard ("" and 0: free), as
        last read (at most BALANCE_S old)."""
        out = []
        for index in range(self.shards):
            owner = self.owners.get(index)
            if owner is None:
                out.append((index, "", "", 0))
            else:
                out.append((index, owner.node_id, self.nodes.get(owner.node_id, ""),
                            owner.epoch))  # fmt: skip
        return out

    async def lag(self) -> dict[int, int]:
        """Each shard owned here: its stream's messages not yet applied here (see
        ``JetStreamStorage.lag``); a shard left out: unknown."""
        if self.member is None:
            return {}
        return await self.member.storage.lag(sorted(self.owned))

    # ------------------------------------------------------------ rounds

    async def _forever(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: 3.11's wait_for returns the result of a wait
            # that ended just as the task was cancelled and swallows the cancel (the node's
            # own announce wakes it right as a stop signalled during start-up cancels it),
            # and this loop would go on forever under stop()'s await
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BALANCE_S):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._round()
                if time.monotonic() >= self._snapshot_at:
                    await self._snapshot()
                    self._snapshot_at = time.monotonic() + self.config.snapshot_interval_s
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - etcd or NATS away: the next round retries
                log.exception("cluster round failed; retrying")

    async def _watch(self) -> None:
        """Wake the rounds whenever a key of the cluster changes: a shard another node
        frees is claimed at once, not at the next round (the rounds every BALANCE_S go on
        regardless: a broken watch only makes moves slower)."""
        while self.member is not None:
            try:
                async for _ in self.member.ownership.changes():
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - etcd away: open it again shortly
                log.warning("cluster watch broken (%s); reopening", exc)
            await asyncio.sleep(1.0)

    async def _round(self) -> None:
        assert self.member is not None
        own = self.member.ownership
        self.owners = await own.owners()
        self.nodes = await own.nodes()
        for index in range(self.shards):
            owner = self.owners.get(index)
            if owner is not None and owner.node_id != self.node_id:
                self.node.refuse(index, self._not_owner(index))
                self._unserve(index)
            elif owner is None and index not in self.owned:
                self.node.refuse(index, self._not_owner(index))  # moving: not the old owner
        for index, owner in self.owners.items():
            if (owner.node_id == self.node_id and index in self.owned and own.valid()
                    and index not in self._served and index not in self._restoring):  # fmt: skip
                # refused while the lease could not be renewed (an etcd election): the key
                # held, so the shard is still ours: read it back and serve it again
                log.warning("shard %d: still owned after a lapse of the lease; restoring", index)
                self._restore(index)
        share = math.ceil(self.shards / len({*self.nodes, self.node_id}))  # this node too
        free = [i for i in range(self.shards) if i not in self.owners]
        if own.valid():
            # claimed concurrently: a hand-off's shards (all freed at once) are served
            # again after one takeover's time, not one after the other; each claimer tries
            # the free shards in its own order, and one that loses a shard to another node
            # tries the next at once (not in the next round)
            random.shuffle(free)
            claimers = max(0, min(share - len(self.owned), len(free)))
            if free:
                log.info("round: %d shards free, %d owned here of a share of %d (%d live "
                         "nodes): %d claimers", len(free), len(self.owned), share,
                         len(self.nodes), claimers)  # fmt: skip
            await asyncio.gather(*(self._claim_one_of(free) for _ in range(claimers)))
        elif free:
            log.warning("round: %d shards free, none claimed: the lease is not valid now",
                        len(free))  # fmt: skip
        extra = len(self.owned) - share
        moving = sorted(self.owned, reverse=True)[: max(0, min(extra, MOVES_PER_ROUND))]
        outcomes = await asyncio.gather(*(self._hand_over(i) for i in moving),
                                        return_exceptions=True)  # fmt: skip
        for index, outcome in zip(moving, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error("shard %d: the hand-over failed (the next round retries): %r",
                          index, outcome)  # fmt: skip

    async def _claim_one_of(self, free: list[int]) -> None:
        """Claim one of ``free`` (shared by the claimers of a round: each takes the next)."""
        while free:
            index = free.pop()
            try:
                if await self._claim(index):
                    return
            except Exception as exc:  # noqa: BLE001 - the next round retries it
                log.error("shard %d: the claim failed (the next round retries): %r", index, exc)

    async def _claim(self, index: int) -> bool:
        assert self.member is not None
        own = self.member.ownership
        started = time.perf_counter()
        replayed: list[t.Event] = []

        def taking(epoch: int) -> None:  # the key is ours: calls wait here, not elsewhere
            self.owners[index] = Owner(self.node_id, epoch, own.lease)
            self.node.refuse(index, self._not_owner(index, taking=True))

        try:
            shard = await self.member.claim(index, replayed, taking)
        except BaseException:
            mine = self.owners.get(index)
            if mine is not None and mine.node_id == self.node_id:
                self.owners.pop(index, None)  # not ours after all: refused as free
            self.node.refuse(index, self._not_owner(index))
            raise
        if shard is None:
            return False  # taken by another node meanwhile
        rebuilt = time.perf_counter()
        self._serve(index, shard, replayed)
        self.owners[index] = Owner(self.node_id, own.epoch(index), own.lease)  # the map
        self.epoch_changes += 1
        if self.metrics is not None:
            self.metrics.replay.observe(time.perf_counter() - started)
        log.info("shard %d: owned at epoch %d, rebuilt in %.3fs (%d events replayed), "
                 "served %.3fs later", index, own.epoch(index), rebuilt - started,
                 len(replayed), time.perf_counter() - rebuilt)  # fmt: skip
        return True

    async def _name_new_owners(self, handed: list[int]) -> None:
        """After handing ``handed`` over, and until it exits: refuse each naming its new
        owner once one holds it (etcd read every 20 ms, for FOLLOW_S at most), so callers
        go straight there rather than read the map from another node."""
        assert self.member is not None
        own = self.member.ownership
        waiting = set(handed)
        give_up = time.monotonic() + FOLLOW_S
        while waiting and time.monotonic() < give_up:
            try:
                owners, self.nodes = await own.owners(), await own.nodes()
            except Exception as exc:  # noqa: BLE001 - callers read the map elsewhere
                log.warning("could not read the new owners: %s", exc)
                return
            for index in list(waiting):
                owner = owners.get(index)
                if owner is not None and owner.node_id != self.node_id:
                    self.owners[index] = owner
                    self.node.refuse(index, self._not_owner(index))
                    waiting.discard(index)
            if waiting:
                await asyncio.sleep(0.02)
        log.info("the new owners named for %d of %d shards handed over",
                 len(handed) - len(waiting), len(handed))  # fmt: skip

    async def _withdraw(self) -> None:
        assert self.member is not None
        try:
            await self.member.ownership.withdraw()
        except Exception as exc:  # noqa: BLE001 - the lease's revocation removes it anyway
            log.warning("could not withdraw from the live nodes: %s", exc)

    async def _hand_over(self, index: int, before_freeing: Awaitable[None] | None = None) -> None:
        """Hand shard ``index`` over: refused here (nothing new joins its batch), its
        batch in flight settled, its image saved when it is the durable state (the next
        owner replays nothing), its key freed (after ``before_freeing``)."""
        assert self.member is not None
        began = time.perf_counter()
        self.owners.pop(index, None)  # refused as moving: the caller asks again shortly
        failures = self.member.storage.logs[index].failures
        quiet = await self._refuse_when_quiet(index)
        for _ in range(500):  # the batch in flight settles (bounded: 5 s)
            if self.node.idle(index):
                break
            await asyncio.sleep(0.01)
        settled = time.perf_counter()
        if not quiet:
            saved = "none (never quiet)"
        elif not self.node.idle(index) or self.member.storage.logs[index].failures != failures:
            saved = "none (its last batch failed)"  # what is here may not be durable
        else:
            saved = await self._hand_over_snapshot(index)
        snapshotted = time.perf_counter()
        if before_freeing is not None:
            await before_freeing
        await self.member.hand_over(index)
        self.owners.pop(index, None)
        self._unserve(index)
        log.info("shard %d: handed over (settled in %.3fs, snapshot %s in %.3fs, key freed "
                 "%.3fs later)", index, settled - began, saved, snapshotted - settled,
                 time.perf_counter() - snapshotted)  # fmt: skip

    async def _refuse_when_quiet(self, index: int) -> bool:
        """Refuse shard ``index`` at a moment nothing of it is staged behind its batch in
        flight (within QUIET_WAIT_S; the calls go on being served meanwhile): True if so,
        its image being its durable state once that batch is; False: refused anyway,
        dropping what was staged (applied in memory, never durable: no image is saved)."""
        give_up = time.monotonic() + QUIET_WAIT_S
        while True:
            if not self.node.staged(index) and not self.node.fenced(index):
                self.node.refuse(index, self._not_owner(index))  # in the same step
                return True
            if self.node.fenced(index) or time.monotonic() >= give_up:
                self.node.refuse(index, self._not_owner(index))
                return False
            await asyncio.sleep(QUIET_POLL_S)

    async def _hand_over_snapshot(self, index: int) -> str:
        """Append shard ``index``'s whole image as its last message (refused, nothing
        dropped and its last batch durable, so its state in memory is exactly its durable
        state): the next owner reads the message its takeover follows, finds the image and
        replays nothing. An image too big for one message goes to the snapshot store
        instead. A failure here only makes the hand-over slower (the next owner replays
        from the last snapshot)."""
        assert self.member is not None
        storage = self.member.storage
        log_ = storage.logs[index]
        if not log_.epoch:
            return "none (no longer written here)"
        shard = self.node.dispatcher.shards[index]
        events: list[t.Event] = []  # what watchers here may not have had: the next owner keeps
        if self.watches is not None:
            for shop, ring in self.watches.rings.items():
                if shard_index(shop, self.shards) == index:
                    events.extend(itertools.islice(ring, max(0, len(ring) - HANDOVER_EVENTS),
                                                   None))  # fmt: skip
        try:  # encoded before the first await
            seq = await asyncio.wait_for(storage.hand_over_image(index, shard, events),
                                         HANDOVER_SNAPSHOT_S)  # fmt: skip
            if seq is not None:
                return f"appended at {seq}"
            position = log_.position
            await asyncio.wait_for(storage.save_snapshot(index, shard, position, purge=False),
                                   HANDOVER_SNAPSHOT_S)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the next owner replays more, that's all
            log.warning("shard %d: no hand-over image: %r", index, exc)
            return "failed"
        return f"saved at {position}"

    async def _snapshot(self) -> None:
        assert self.member is not None
        for index in list(self.owned):
            if not self.node.idle(index) or self.node.fenced(index):
                continue
            storage = self.member.storage
            shard = self.node.dispatcher.shards[index]
            try:  # encoded before its first await: the image and its position agree
                await storage.save_snapshot(index, shard, storage.logs[index].position)
            except Exception as exc:  # noqa: BLE001 - the next interval tries again
                log.error("shard %d: the snapshot failed: %s", index, exc)

    # ------------------------------------------------------------ failures

    def _not_owner(self, index: int, taking: bool = False) -> NotOwner:
        owner = self.owners.get(index)
        if owner is None:
            return NotOwner(f"shard {index} has no owner right now; retry", shard=index)
        address = self.address if taking else self.nodes.get(owner.node_id, "")
        doing = "being taken over by" if taking else "served by"
        return NotOwner(
            f"shard {index} is {doing} node {owner.node_id} at {address or '?'}",
            shard=index, owner=owner.node_id, address=address, epoch=owner.epoch,
        )  # fmt: skip

    def _serve(self, index: int, shard: Shard, replayed: list[t.Event]) -> None:
        """Serve shard ``index`` rebuilt from its stream; its watchers resume with the
        events its replay re-emitted (``Hub.replayed``)."""
        if self.watches is not None:
            self.watches.replayed(replayed)
        self.node.serve(index, shard)
        self._served.add(index)

    def _unserve(self, index: int) -> None:
        """Shard ``index`` is no longer served here: its watch streams end (they reconnect
        to its new owner)."""
        if index not in self._served:
            return
        self._served.discard(index)
        if self.watches is not None:
            shops = self.watches.shops()
            self.watches.forget(s for s in shops if shard_index(s, self.shards) == index)

    def _lost(self, indexes: list[int]) -> None:
        for index in indexes:
            self.owners.pop(index, None)
            self.node.refuse(index, self._not_owner(index))
            self._unserve(index)

    def _restore(self, index: int) -> None:
        """A failed append: read the shard back from its stream if it is still ours."""
        if index in self._restoring:
            return
        self._restoring.add(index)
        asyncio.get_running_loop().create_task(self._restore_async(index))

    async def _restore_async(self, index: int) -> None:
        try:
            for _ in range(60):
                member = self.member
                if member is None or not member.ownership.owns(index):
                    self.node.refuse(index, self._not_owner(index))
                    self._unserve(index)
                    return
                replayed: list[t.Event] = []
                try:
                    shard = await member.storage.take_over(
                        index, member.ownership.epoch(index), replayed
                    )
                except Exception as exc:  # noqa: BLE001 - NATS away: try again shortly
                    log.error("shard %d: cannot be read back yet: %s", index, exc)
                    await asyncio.sleep(1.0)
                    continue
                self._serve(index, shard, replayed)
                log.warning("shard %d: restored from its stream", index)
                return
        finally:
            self._restoring.discard(index)

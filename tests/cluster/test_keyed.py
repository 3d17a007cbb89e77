"""Idempotency keys and fencing through real fenliu nodes in cluster mode (issue 11).

- Every mutating call, keyed, acknowledged by the node owning its shop; that node
  SIGKILLed; the same calls with the same keys to the new owner answer what the old one
  answered, and nothing is applied twice (the new owner replayed the keys from the stream).
- The frozen owner (docs/cluster.md, step 7): callers keep changing a shop on its owner,
  which is SIGSTOPped past its lease with their calls in flight; the other node takes the
  shard over; SIGCONT. Every change a caller was acknowledged (before, during or after the
  freeze) is in the state the shard's owner serves afterwards, and the shard's stream holds
  no message of an older epoch after a newer owner's takeover (no append of the frozen
  owner was accepted after it).

Robust on a loaded machine: every wait is on a condition with a generous deadline, the
callers' deadlines outlast the freeze, and no timing is asserted.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fenliu.client import Client, FenliuError, NotFound, Unavailable
from fenliu.client._client import new_request_id
from fenliu.server.cluster.local import EtcdCluster, NatsCluster
from fenliu.server.core.dispatcher import shard_index
from fenliu.server.storage.jetstream import JetStreamStorage

from ..client.test_idempotency import check_the_scenario_state, retry_all, scenario, state
from .conftest import owners
from .test_nodes import SHARDS, Node, cluster_map, nodes, wait_until

__all__ = ["nodes"]  # the fixture, imported

MAX_CALLS = 400  # per caller: the load is bounded in count as well as in time


def two_nodes(
    tmp_path: Path, nats: NatsCluster, etcd: EtcdCluster, name: str, started: list[Node]
) -> tuple[Node, Node, dict[int, str]]:
    a = Node(tmp_path, nats, etcd, name, "a")
    started.append(a)
    wait_until(lambda: len(owners(etcd, name)) == SHARDS, 60, "a owns every shard")
    b = Node(tmp_path, nats, etcd, name, "b")
    started.append(b)
    spread = wait_until(
        lambda: (o := owners(etcd, name)) and sorted(o.values()) == ["a"] * 8 + ["b"] * 8 and o,
        60, "8 shards each",
    )  # fmt: skip
    return a, b, spread


def shop_of(owner: str, spread: dict[int, str], prefix: str) -> str:
    """A shop whose shard ``owner`` owns."""
    return next(
        shop
        for shop in (f"{prefix}-{i}" for i in range(1000))
        if spread[shard_index(shop, SHARDS)] == owner
    )


def served_by(address: str, shop: str) -> bool:
    """``address`` serves the shop (its shard owned and replayed there)."""
    try:
        with Client(address, retries=0, timeout=5) as fenliu:
            fenliu.list_team(shop)
        return True
    except Unavailable:
        return False


def on_owner(addresses: list[str], read: Callable[[Client], Any], what: str) -> Any:
    """``read`` answered by whichever node serves the shop now (the others: NOT_OWNER)."""

    def attempt() -> Any:
        for address in addresses:
            try:
                with Client(address, retries=0, timeout=10) as fenliu:
                    return (read(fenliu),)
            except Unavailable:
                continue
        return None

    return wait_until(attempt, 60, what)[0]


def test_keyed_calls_acknowledged_by_a_killed_owner_answer_the_same_on_the_new_one(
    nats_cluster: NatsCluster, etcd: EtcdCluster, name: str, tmp_path: Path, nodes: list[Node]
) -> None:
    a, b, spread = two_nodes(tmp_path, nats_cluster, etcd, name, nodes)
    shop = shop_of("a", spread, "keyed")
    with Client(a.address, retries=0, timeout=30) as fenliu:
        done = scenario(fenliu, shop)
        before = state(fenliu, shop)
    a.kill()  # SIGKILL: b takes the shard over and replays its stream, the keys included
    wait_until(lambda: served_by(b.address, shop), 60, "the shop served by b")
    with Client(b.address, timeout=30) as fenliu:
        assert state(fenliu, shop) == before
        retry_all(fenliu, done)  # each answers as a did, and applies nothing
        assert state(fenliu, shop) == before
        check_the_scenario_state(fenliu, shop)


class Caller(threading.Thread):
    """Changes to one shop on one node, each with a key of its own: new buyers routed and
    new agents registered, every call's span and outcome recorded."""

    def __init__(self, address: str, shop: str, n: int, stop: threading.Event) -> None:
        super().__init__(name=f"caller-{n}", daemon=True)
        self.address, self.shop, self.n, self.stop = address, shop, n, stop
        # (kind, id, started, ended, answer or None, error or None)
        self.calls: list[tuple[str, str, float, float, Any, str | None]] = []

    def run(self) -> None:
        # No retries (a refusal is an outcome here), no keepalive pings (a frozen server
        # does not answer them), a deadline longer than any freeze in the test.
        with Client(self.address, retries=0, timeout=90, keepalive=0) as fenliu:
            for i in range(MAX_CALLS):
                if self.stop.is_set():
                    return
                route = i % 3 != 2
                ident = f"c{self.n}-{i}"
                started = time.monotonic()
                try:
                    if route:
                        answer: Any = fenliu.route(self.shop, ident, request_id=new_request_id())
                    else:
                        answer = fenliu.register_agent(self.shop, ident, max_concurrent=1000)
                    error = None
                except FenliuError as exc:
                    answer, error = None, f"{type(exc).__name__}: {exc}"
                kind = "route" if route else "register"
                self.calls.append((kind, ident, started, time.monotonic(), answer, error))
                if error is not None:
                    time.sleep(0.05)  # a refusing node answers at once: do not spin


def stream_entries(nats: NatsCluster, name: str, index: int) -> list[tuple[int, str, int]]:
    """(sequence, kind, epoch) of every message shard ``index``'s stream holds."""

    async def main() -> list[tuple[int, str, int]]:
        storage = await JetStreamStorage.connect(nats.urls, cluster=name, shards=SHARDS)
        try:
            info = await storage.js.stream_info(storage.logs[index].stream)
            assert info.state is not None
            first, last = info.state.first_seq, info.state.last_seq
            return [(e.seq, e.kind, e.epoch) async for e in storage.read(index, first - 1, last)]
        finally:
            await storage.close()

    return asyncio.run(asyncio.wait_for(main(), 120))


def test_a_frozen_owners_callers_are_never_acknowledged_for_what_the_new_owner_lacks(
    nats_cluster: NatsCluster, etcd: EtcdCluster, name: str, tmp_path: Path, nodes: list[Node]
) -> None:
    a, b, spread = two_nodes(tmp_path, nats_cluster, etcd, name, nodes)
    shop = shop_of("a", spread, "frozen")
    index = shard_index(shop, SHARDS)
    old_epoch = cluster_map(a.address).owners[index].epoch
    with Client(a.address, retries=0, timeout=30) as fenliu:
        fenliu.register_agent(shop, "seed", max_concurrent=1000, status="online")
    stop = threading.Event()
    callers = [Caller(a.address, shop, n, stop) for n in range(4)]
    for caller in callers:
        caller.start()
    try:
        wait_until(lambda: all(len(c.calls) >= 3 for c in callers), 60, "callers acknowledged")
        a.proc.send_signal(signal.SIGSTOP)  # frozen with its callers' next calls in flight
        frozen = time.monotonic()
        try:
            wait_until(
                lambda: owners(etcd, name).get(index) == "b", 60, "b owning the frozen shard"
            )
            wait_until(lambda: served_by(b.address, shop), 60, "the shop served by b")
            new_epoch = cluster_map(b.address).owners[index].epoch
        finally:
            thawed = time.monotonic()
            a.proc.send_signal(signal.SIGCONT)
        # every caller's call in flight across the freeze is answered (an error, mostly)
        wait_until(
            lambda: all(any(c[3] > thawed for c in caller.calls) for caller in callers),
            120, "the frozen node's callers answered",
        )  # fmt: skip
    finally:
        stop.set()
        for caller in callers:
            caller.join(120)
    assert not any(caller.is_alive() for caller in callers)
    calls = [call for caller in callers for call in caller.calls]
    across = [c for c in calls if c[2] < thawed and c[3] > thawed]
    assert across, "no call was in flight to the frozen node"
    assert new_epoch > old_epoch

    addresses = [b.address, a.address]
    team = {x.agent_id for x in on_owner(addresses, lambda f: f.list_team(shop), "the team")}
    acked = [c for c in calls if c[5] is None]
    routed = {c[4].session_id: c[1] for c in acked if c[0] == "route"}

    def buyers(f: Client) -> dict[str, str | None]:
        found: dict[str, str | None] = {}
        for sid in routed:
            try:
                found[sid] = f.get_session(shop, sid).buyer_id
            except NotFound:
                found[sid] = None  # acknowledged, and lost
        return found

    kept = on_owner(addresses, buyers, "the routed sessions")
    for kind, ident, _, _, _, _ in acked:
        if kind == "register":
            assert ident in team, f"{ident}'s registration acknowledged but not in the state"
    assert kept == routed, "a route acknowledged but not in the state"
    errors = sorted({c[5].split(":")[0] for c in across if c[5] is not None})
    acked_across = sum(1 for c in across if c[5] is None)
    refused_across = len(across) - acked_across
    print(
        f"frozen {thawed - frozen:.1f}s: {len(calls)} calls, {len(acked)} acknowledged; "
        f"{len(across)} in flight across the freeze: {acked_across} acknowledged (all kept), "
        f"{refused_across} refused ({', '.join(errors)})"
    )

    # The log: after a takeover, never a message of an older epoch (the frozen owner's).
    entries = stream_entries(nats_cluster, name, index)
    takeovers = [(seq, epoch) for seq, kind, epoch in entries if kind == "takeover"]
    assert new_epoch in {e for _, e in takeovers}, takeovers
    newest = 0
    for seq, kind, epoch in entries:
        if kind == "takeover":
            assert epoch >= newest, f"takeover {seq} of epoch {epoch} after epoch {newest}'s"
            newest = epoch
        else:
            assert epoch == newest, (
                f"message {seq} of epoch {epoch} after epoch {newest}'s takeover"
            )
    takeover_seq = next(seq for seq, epoch in takeovers if epoch == new_epoch)
    assert not [s for s, _, e in entries if s > takeover_seq and e == old_epoch]
    assert [s for s, k, e in entries if s < takeover_seq and e == old_epoch and k == "batch"]

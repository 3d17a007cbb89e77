"""Ownership on a real etcd: a SIGKILLed holder's shards are taken within its lease's TTL,
a holder frozen past its lease never gets an append accepted after the takeover, and a
healthy holder keeps its lease through an etcd member's death."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fenliu.server.cluster.local import EtcdCluster, NatsCluster
from fenliu.server.cluster.ownership import Ownership
from fenliu.server.storage.jetstream import JetStreamStorage

HERE = Path(__file__).resolve().parent
TTL = 2


class Holder:
    """The holder process (``holder.py``), its output in a file read as it grows."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.out = tmp / f"holder-{time.monotonic_ns()}.out"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "holder.py"), *args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def lines(self) -> list[list[str]]:
        return [line.split() for line in self.out.read_text().splitlines() if line.strip()]

    def wait_for(self, word: str, count: int = 1, timeout: float = 30.0) -> list[list[str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines() if line and line[0] == word]
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"holder said no {count}× {word!r}: {self.out.read_text()[-2000:]}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stopped(self, timeout: float = 10.0) -> None:
        """Wait until the kernel has stopped it (SIGSTOP taken): its output is final then."""
        deadline = time.monotonic() + timeout
        stat = Path(f"/proc/{self.proc.pid}/stat")
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "T":
            if time.monotonic() > deadline:
                raise AssertionError(f"holder {self.proc.pid} never stopped")
            time.sleep(0.005)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def holders():
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.stop()


async def contend(etcd: EtcdCluster, name: str, index: int, limit_s: float) -> tuple[int, float]:
    """Acquire shard ``index`` as node "b", trying every 20 ms: (epoch, seconds taken)."""
    own = Ownership(etcd.endpoints, name, "b", ttl_s=TTL)
    await own.start()
    try:
        started = time.monotonic()
        while time.monotonic() - started < limit_s:
            epoch = await own.acquire(index)
            if epoch is not None:
                return epoch, time.monotonic() - started
            await asyncio.sleep(0.02)
        raise AssertionError(f"shard {index} not free after {limit_s}s")
    finally:
        await own.close()


def test_a_killed_holders_shard_is_taken_within_its_ttl(
    etcd: EtcdCluster, name: str, tmp_path: Path, holders: list[Holder]
) -> None:
    holder = Holder(tmp_path, "--etcd", ",".join(etcd.endpoints), "--cluster", name,
                    "--node", "a", "--take", "0,1", "--ttl", str(TTL))  # fmt: skip
    holders.append(holder)
    owned = holder.wait_for("owned", 2)
    first = int(owned[0][2])

    async def main() -> tuple[int | None, int, float]:
        probe = Ownership(etcd.endpoints, name, "probe", ttl_s=TTL)
        await probe.start()
        held = await probe.acquire(0)  # held by the live holder: refused
        await probe.close()
        holder.proc.kill()
        holder.proc.wait(10)
        epoch, took = await contend(etcd, name, 0, limit_s=6 * TTL)
        return held, epoch, took

    held, epoch, took = asyncio.run(main())
    assert held is None
    assert epoch > first  # a new epoch: the fencing token only grows
    print(f"holder SIGKILLed: shard 0 owned again {took:.2f}s later (TTL {TTL}s)")
    # about the TTL (2.5 s here when idle); the bound only says it is the lease that moved
    # it, with room for a loaded machine (no timing-sensitive assertions)
    assert took < 5 * TTL


@pytest.mark.parametrize("lease_check", [True, False], ids=["lease-check", "fencing-only"])
def test_a_frozen_holder_never_appends_after_the_takeover(
    nats_cluster: NatsCluster,
    etcd: EtcdCluster,
    name: str,
    tmp_path: Path,
    holders: list[Holder],
    lease_check: bool,
) -> None:
    """SIGSTOP past the lease, a new owner takes over, SIGCONT: every append the frozen
    holder had acknowledged precedes the takeover, none is accepted after it (its own lease
    check stops it, and without that the stream's fencing refuses it).

    An append already past its lease check when the SIGSTOP lands (its message still in
    the NATS client's buffer, sent after SIGCONT) can only be refused by the fencing: so
    the lease check must be the one that refuses unless an append was in flight at the
    freeze. (The test once required the lease check's refusal always, and failed on that
    interleaving: a wrong assumption, not a lapse of either layer.)"""
    import signal

    args = ["--etcd", ",".join(etcd.endpoints), "--nats", ",".join(nats_cluster.urls),
            "--cluster", name, "--node", "a", "--take", "0", "--ttl", str(TTL)]  # fmt: skip
    holder = Holder(tmp_path, *args, *([] if lease_check else ["--no-lease-check"]))
    holders.append(holder)
    holder.wait_for("acked", 20)

    async def main() -> tuple[int, int, list[tuple[int, str, int]], bool]:
        holder.signal(signal.SIGSTOP)
        holder.stopped()
        in_flight = holder.lines()[-1][0] == "trying"  # an append begun, not yet answered
        epoch, _ = await contend(etcd, name, 0, limit_s=6 * TTL)
        storage = await JetStreamStorage.connect(nats_cluster.urls, cluster=name, shards=4)
        await storage.take_over(0, epoch)
        takeover = storage.logs[0].position
        holder.signal(signal.SIGCONT)
        holder.wait_for("refused", 1, timeout=20)
        info = await storage.js.stream_info(storage.logs[0].stream)
        assert info.state is not None
        after = [
            (e.seq, e.kind, e.epoch)
            async for e in storage.read(0, takeover - 1, info.state.last_seq)
        ]
        await storage.close()
        return epoch, takeover, after, in_flight

    epoch, takeover, after, in_flight = asyncio.run(main())
    acked = [int(line[2]) for line in holder.lines() if line[0] == "acked"]
    refused = [" ".join(line[2:]) for line in holder.lines() if line[0] == "refused"]
    assert acked and max(acked) < takeover, "the frozen holder was acknowledged after the takeover"
    assert after == [(takeover, "takeover", epoch)], "a message after the takeover"
    if lease_check and in_flight:  # either layer may have refused that one
        assert "not valid now" in refused[0] or "wrong last sequence" in refused[0], refused
    else:
        expected = "not valid now" if lease_check else "wrong last sequence"
        assert expected in refused[0], (refused, in_flight)


def test_a_holder_keeps_its_lease_through_an_etcd_leader_kill(tmp_path: Path) -> None:
    """Three etcd members; the leader SIGKILLed and restarted while a node holds shards:
    its keys (and so its epochs) survive, its keep-alive is reopened, it is valid again."""
    with EtcdCluster(tmp_path / "etcd3", size=3) as etcd:

        async def main() -> tuple[dict[int, int], dict[int, int], bool, int, str]:
            # The longest TTL the issue allows: with 2 s, an etcd election plus the client
            # moving to another member took longer than the lease on a loaded machine (1 of
            # 7 runs at load 24-60), which says nothing about the lease surviving the kill.
            ttl = 5
            own = Ownership(etcd.endpoints, "k", "a", ttl_s=ttl)
            await own.start()
            for index in range(4):
                assert await own.acquire(index)
            before = dict(own.owned)
            leader = etcd.leader()
            leader.kill()
            await asyncio.sleep(3 * ttl)  # several keep-alives through the election
            leader.restart()
            await asyncio.sleep(ttl)
            after = {}
            for index in range(4):
                found = await own.owner(index)
                assert found is not None, f"shard {index}'s key is gone"
                after[index] = found.epoch
            valid = own.valid()
            leases = own.leases
            await own.close()
            return before, after, valid, leases, leader.name

        before, after, valid, leases, killed = asyncio.run(main())
    assert after == before  # the same keys: no new epoch
    assert valid and leases == 1  # never lost: no second lease was needed
    print(f"etcd leader {killed} SIGKILLed and restarted: the lease held")


def test_a_watcher_sees_a_shard_freed_and_a_node_withdrawn(etcd: EtcdCluster, name: str) -> None:
    """``changes()`` (what wakes a node's round at once) yields when a shard's key is
    freed and when a leaving node withdraws; after ``withdraw`` the node is no longer
    live though its lease still is."""

    async def main() -> None:
        owner = Ownership(etcd.endpoints, name, "a", ttl_s=TTL, address="127.0.0.1:1")
        watcher = Ownership(etcd.endpoints, name, "w", ttl_s=TTL)
        await owner.start()
        await watcher.start()
        assert watcher.client.kv is not None
        seen: asyncio.Queue[None] = asyncio.Queue()

        async def watch() -> None:
            async for _ in watcher.changes():
                seen.put_nowait(None)

        task = asyncio.create_task(watch())
        try:
            assert await owner.acquire(3) is not None
            while seen.empty():  # the watch is open once it has seen a change
                await watcher.client.kv.put(f"/fenliu/{name}/probe", "x", timeout=5.0)
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.2)
            while not seen.empty():
                seen.get_nowait()
            await owner.release(3)
            await asyncio.wait_for(seen.get(), timeout=30)
            assert 3 not in await watcher.owners()
            assert "a" in await watcher.nodes()
            await owner.withdraw()
            await asyncio.wait_for(seen.get(), timeout=30)
            assert "a" not in await watcher.nodes()
            assert owner.valid()  # withdrawn, not expired
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await owner.close()
            await watcher.close()

    asyncio.run(main())

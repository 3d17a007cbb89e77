"""A recording read back from a real server's data directory: a ``fenliu-server`` process
on a free loopback port with a data directory of its own, driven with the SDK, stopped;
then ``fenliu simulate`` on the directory (and on a recording exported from it)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fenliu.client import Client, Status
from fenliu.server import sim
from fenliu.server.core.dispatcher import shard_index
from fenliu.server.core.types import RegisterAgent, Route
from fenliu.server.storage.wal import Wal

from ...client.test_restart import start


def _simulate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fenliu.client._cli", "simulate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_a_real_servers_data_directory_replays_as_it_was_served(tmp_path: Path) -> None:
    data = tmp_path / "data"
    child, port = start(data, tmp_path / "server.log")
    try:
        with Client(f"127.0.0.1:{port}") as fenliu:
            for i in range(3):
                fenliu.register_agent("s1", f"a{i}", max_concurrent=2, status=Status.ONLINE)
            fenliu.register_agent("other", "x", max_concurrent=1, status=Status.ONLINE)
            fenliu.route("other", "someone")
            decisions = [fenliu.route("s1", f"b{n}", request_id=f"r{n}") for n in range(10)]
            held = [d for d in decisions if d.agent_id]
            for d in held[:4]:
                fenliu.acknowledge("s1", d.agent_id, d.session_id)
                fenliu.reply("s1", d.agent_id, d.session_id)
            fenliu.end_sessions("s1", [d.session_id for d in held[:3]])
            fenliu.set_status("s1", "a2", Status.OFFLINE)
            served = fenliu.get_shop_stats("s1")
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(30)
    assert child.returncode == 0

    done = _simulate(data, "--shop", "s1", "--json", "--variant", "max=+2")
    assert done.returncode == 0, done.stderr
    runs = json.loads(done.stdout)["runs"]
    recorded = runs["recorded"]
    # the verbatim replay gives what the server counted
    assert recorded["sessions"] == 10
    assert recorded["first_replies"] == served.today.first_replies == 4
    # 6 held at once (3 agents of max 2); the 3 ended freed room for 3 queued buyers
    assert len(held) == 6
    assert recorded["reached_agent"] == 9 == served.today.assigned
    assert sum(a["served"] for a in recorded["agents"].values()) == served.today.assigned
    assert set(runs) == {"recorded", "baseline", "max=+2"}
    assert runs["max=+2"]["reached_agent"] >= runs["baseline"]["reached_agent"]

    # the export path: the same recording, as a file that can leave the machine
    exported = tmp_path / "s1.flrec"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fenliu.client._cli",
            "simulate",
            "export",
            str(data),
            "--shop",
            "s1",
            "-o",
            str(exported),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    from_file = sim.analyse(sim.Recording.read(exported)).recorded
    from_dir = sim.analyse(sim.load(data, "s1")).recorded
    assert from_file == from_dir == recorded
    assert sim.load(data).shop_id == "s1"  # the busiest shop by default

    done = _simulate(data, "--shop", "nobody")
    assert done.returncode == 1 and "nobody" in done.stderr


def _start(data: Path, log: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    args = [sys.executable, "-m", "fenliu.server", "--port", "0", "--grace", "1"]
    args += ["--data-dir", str(data), "--gc-freeze-interval", "0", *extra]
    with log.open("wb") as sink:
        child = subprocess.Popen(args, stderr=sink, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"fenliu serving on 127\.0\.0\.1:(\d+)", log.read_text())
        if found:
            return child, int(found.group(1))
        if child.poll() is not None:
            raise AssertionError(f"the server exited {child.returncode}: {log.read_text()}")
        time.sleep(0.05)
    child.kill()
    raise AssertionError("the server did not start")


def _journal_start(data: Path, shop: str) -> int:
    shards = json.loads((data / "MANIFEST").read_text())["shards"]
    return Wal(data, shards, read_only=True).start(shard_index(shop, shards))


@pytest.mark.slow
def test_a_pruned_journal_starts_from_the_snapshots_team(tmp_path: Path) -> None:
    """Snapshots every 0.2 s: once the journal's first segments are pruned, the recording
    takes the team from the newest snapshot and the commands after it."""
    data = tmp_path / "data"
    child, port = _start(data, tmp_path / "server.log", "--snapshot-interval", "0.2")
    n = 0
    try:
        with Client(f"127.0.0.1:{port}") as fenliu:
            for i in range(3):
                fenliu.register_agent("s1", f"a{i}", max_concurrent=50, status=Status.ONLINE)
            deadline = time.monotonic() + 60
            while _journal_start(data, "s1") == 0:
                assert time.monotonic() < deadline, "the journal was never pruned"
                d = fenliu.route("s1", f"b{n}", request_id=f"r{n}")
                fenliu.end_sessions("s1", [d.session_id])
                n += 1
                time.sleep(0.05)
            for k in range(5):  # after the pruning: these are in the journal
                d = fenliu.route("s1", f"late{k}", request_id=f"late{k}")
                fenliu.acknowledge("s1", d.agent_id, d.session_id)
                fenliu.reply("s1", d.agent_id, d.session_id)
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(30)
    assert child.returncode == 0
    rec = sim.load(data, "s1")
    assert rec.base is not None  # the shop at the snapshot
    registered = {c.agent_id for c in rec.setup() if isinstance(c, RegisterAgent)}
    assert registered == {"a0", "a1", "a2"}
    routed = [c.buyer_id for c in rec.commands if isinstance(c, Route)]
    assert routed[-5:] == [f"late{k}" for k in range(5)]
    assert len(routed) < n + 5  # the pruned part is not replayed
    analysis = sim.analyse(rec)
    recorded = analysis.recorded
    assert recorded["first_replies"] == 5  # the recorded session ids are the replay's
    assert recorded["refused_actions"] == 0
    assert not analysis.traffic.dropped
    baseline, _ = sim.simulate(analysis.traffic, analysis.behaviour)
    assert baseline["sessions"] == recorded["sessions"]

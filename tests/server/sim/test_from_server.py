"""A recording read back from a real server's data directory: a ``fenliu-server`` process
on a free loopback port with a data directory of its own, driven with the SDK, stopped;
then ``fenliu simulate`` on the directory (and on a recording exported from it)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fenliu.client import Client, Status
from fenliu.server import sim

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

"""``python -m fenliu.server.cluster.local``, interrupted during its start-up (SIGINT as a
terminal's Ctrl-C, or SIGTERM), stops every process it started so far and exits 128 + the
signal's number saying so: no nats-server, etcd or fenliu node is left running.

The real launcher, the real engines (the suite's nats-server and etcd). Every process it
starts carries this test's marker in its environment (``tests/_procs.py``): that is how
the test sees them, also once they made a session of their own, and all it ever signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fenliu.server.cluster.local import ensure_etcd, nats_server_binary
from tests._procs import MARKER, argv, command, marked, stop_marked

SPAWN_TIMEOUT_S = 180  # until the phase's process is spawned (a loaded machine, apt-get)
STOP_TIMEOUT_S = 180  # until the launcher has stopped everything (each one is bounded)


def _is(phase: str, args: list[str]) -> bool:
    """Whether a process's command line is the phase's engine (after its exec: a fork of
    the launcher not yet exec'd still has the launcher's)."""
    if not args:
        return False
    if phase == "fenliu":
        return args[1:4] == ["-m", "fenliu.server", "--host"]
    return Path(args[0]).name == {"nats": "nats-server", "etcd": "etcd"}[phase]


@pytest.mark.parametrize(
    ("phase", "signum"),
    [("nats", signal.SIGINT), ("etcd", signal.SIGTERM), ("fenliu", signal.SIGINT)],
)
def test_a_signal_during_the_start_up_stops_everything_started(
    tmp_path: Path, phase: str, signum: int
) -> None:
    nats_server_binary(), ensure_etcd()  # the engines are there (the set-up installs etcd)
    marker = uuid.uuid4().hex
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "fenliu.server.cluster.local", "--nodes", "3",
             "--dir", str(tmp_path / "cluster")],
            env={**os.environ, MARKER: marker}, stdin=subprocess.DEVNULL,
            stdout=stdout, stderr=stderr, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + SPAWN_TIMEOUT_S
        while not any(_is(phase, argv(pid)) for pid in marked(marker)):
            assert launcher.poll() is None, (launcher.returncode, err.read_text())
            assert time.monotonic() < deadline, f"no {phase} process after {SPAWN_TIMEOUT_S}s"
            time.sleep(0.02)
        seen = {pid: command(pid) for pid in marked(marker) if pid != launcher.pid}
        launcher.send_signal(signum)
        code = launcher.wait(STOP_TIMEOUT_S)
        left = {pid: command(pid) for pid in marked(marker)}
        name = signal.Signals(signum).name
        assert "cluster ready" not in out.read_text(), "the start-up was over: signal it sooner"
        assert not left, f"left running after the launcher exited {code}: {left}"
        assert code == 128 + signum, (code, err.read_text())
        said = err.read_text()
        assert f"{name} during the start-up: stopping the " in said, said
        assert "Traceback" not in said, said
        for pid, what in seen.items():  # each one it had spawned is named as stopped
            if _is("nats", what.split()) or _is("etcd", what.split()):
                assert f"(pid {pid})" in said, (pid, what, said)
    finally:
        stop_marked(marker, grace=10, group=launcher.pid)
        if launcher.poll() is None:
            launcher.kill()
        launcher.wait(10)

"""A real cluster-mode fenliu-server signalled while it is still starting (joining etcd and
NATS, claiming its shards): the first SIGTERM lets the start end and stops without serving
(exit 0, its shards handed back), a second one stops the start at once (exit 128 + 15);
either way within a bounded time, with nothing it started left running and no shard left
owned in etcd."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fenliu.server.cluster.local import EtcdCluster, NatsCluster
from tests._procs import MARKER, marked, stop_marked
from tests.cluster.conftest import owners

SHARDS = 16
TTL = 2

pytestmark = pytest.mark.slow


class Starting:
    """``fenliu-server`` in cluster mode, its output in a file, marked so that whatever it
    starts is found (and, should the test fail, stopped)."""

    def __init__(self, tmp: Path, nats: NatsCluster, etcd: EtcdCluster, name: str) -> None:
        self.log = tmp / "node.log"
        self.marker = uuid.uuid4().hex
        args = [
            sys.executable, "-m", "fenliu.server", "--host", "127.0.0.1", "--port", "0",
            "--shards", str(SHARDS), "--cluster-nats", ",".join(nats.urls),
            "--cluster-etcd", ",".join(etcd.endpoints), "--cluster-name", name,
            "--node-id", "a", "--lease-ttl", str(TTL),
        ]  # fmt: skip
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, MARKER: self.marker})  # fmt: skip

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, line: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.text():
            assert self.proc.poll() is None, f"exited: {self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {line!r} in {timeout}s: {self.text()}"
            time.sleep(0.002)

    def exit_code(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {timeout}s after SIGTERM: "
                                 f"{self.text()[-3000:]}") from None  # fmt: skip


@pytest.fixture
def starting(
    tmp_path: Path, nats_cluster: NatsCluster, etcd: EtcdCluster, name: str
) -> Iterator[Starting]:
    node = Starting(tmp_path, nats_cluster, etcd, name)
    try:
        node.wait_for("starting;")  # logged once its signal handlers are in place
        yield node
    finally:
        left = stop_marked(node.marker, grace=5.0)
        node.proc.wait(10)
        assert not left, f"left running: {left}"


def test_sigterm_while_starting_stops_without_serving(
    starting: Starting, etcd: EtcdCluster, name: str
) -> None:
    starting.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    assert starting.exit_code(timeout=20) == 0
    took = time.monotonic() - sent
    text = starting.text()
    assert "fenliu serving on" not in text.split("draining", 1)[1]
    assert "stopping without serving" in text
    assert took < 15, f"took {took:.1f}s to stop"
    assert marked(starting.marker) == []  # nothing it started outlives it
    assert owners(etcd, name) == {}  # handed back, the lease revoked: free now, not later


def test_a_second_sigterm_while_starting_stops_at_once(
    starting: Starting, etcd: EtcdCluster, name: str
) -> None:
    starting.proc.send_signal(signal.SIGTERM)
    starting.wait_for("draining")
    starting.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    assert starting.exit_code(timeout=10) == 128 + signal.SIGTERM
    took = time.monotonic() - sent
    text = starting.text()
    assert "fenliu serving on" not in text
    assert "stopped while starting" in text
    assert took < 5, f"took {took:.1f}s to stop"
    assert marked(starting.marker) == []
    assert owners(etcd, name) == {}  # the lease revoked on the way out

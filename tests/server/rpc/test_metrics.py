"""The metrics endpoint of a real server, scraped and parsed with prometheus-client's parser."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fenliu.client import Client, InvalidArgument, Status, Unauthenticated, route_request
from fenliu.server.config import Config, Token
from fenliu.server.rpc.app import ServerThread

TOKEN = Token("gateway", "gateway-secret-1", None)
ROUTE = {"service": "fenliu.v1.Routing", "method": "Route"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the endpoint, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    data = tmp_path_factory.mktemp("data")
    config = Config(
        shards=2, tick_interval_s=3600, grace_s=1, data_dir=str(data), snapshot_interval_s=0.05,
        metrics_port=free_port(), tokens=(TOKEN,),
    )  # fmt: skip
    with ServerThread(config) as server:
        yield server


def test_the_scrape_counts_calls_decisions_and_state(server: ServerThread) -> None:
    assert server.metrics_port is not None
    with Client(server.target, token=TOKEN.secret, retries=0) as fenliu:
        fenliu.register_agent("m-shop", "alice", max_concurrent=1, status=Status.ONLINE)
        first = fenliu.route("m-shop", "buyer-1")
        fenliu.route("m-shop", "buyer-1")  # the same buyer: OPEN_SESSION
        fenliu.route("m-shop", "buyer-2")  # alice is full: queued
        with pytest.raises(InvalidArgument):
            fenliu.route("m-shop", "")
    with Client(server.target, retries=0) as stranger, pytest.raises(Unauthenticated):
        stranger.route("m-shop", "buyer-3")
    # A call is counted as it ends, just after its answer was sent: wait for the fifth
    # Route to be counted (a wait, not a timing check), then read every figure.
    deadline = time.monotonic() + 10
    samples = scrape(server.metrics_port)
    while value(samples, "fenliu_rpc_duration_seconds_count", **ROUTE) < 5:
        assert time.monotonic() < deadline, "the five Routes were never all counted"
        time.sleep(0.05)
        samples = scrape(server.metrics_port)

    assert first.reason.name == "STRATEGY"
    rpcs = "fenliu_rpc_requests_total"
    assert value(samples, rpcs, **ROUTE, code="OK") == 3
    assert value(samples, rpcs, **ROUTE, code="INVALID_ARGUMENT") == 1
    assert value(samples, rpcs, **ROUTE, code="UNAUTHENTICATED") == 1
    register = {"service": "fenliu.v1.Presence", "method": "RegisterAgent"}
    assert value(samples, rpcs, **register, code="OK") == 1
    assert value(samples, "fenliu_rpc_duration_seconds_count", **ROUTE) == 5
    assert value(samples, "fenliu_rpc_duration_seconds_bucket", **ROUTE, le="+Inf") == 5

    decisions = "fenliu_route_decisions_total"
    assert value(samples, decisions, outcome="ASSIGNED", reason="STRATEGY") == 1
    assert value(samples, decisions, outcome="ASSIGNED", reason="OPEN_SESSION") == 1
    assert value(samples, decisions, outcome="QUEUED", reason="ALL_BUSY") == 1

    assert value(samples, "fenliu_shops") == 1
    assert value(samples, "fenliu_queued_buyers") == 1
    assert value(samples, "fenliu_sessions") == 2
    assert value(samples, "fenliu_left_messages") == 0
    assert value(samples, "fenliu_journal_fsync_seconds_count") >= 1  # registered, routed


def test_a_batch_counts_each_decision_and_no_error(server: ServerThread) -> None:
    """RouteBatch's items counted one by one (with the compiled wire codec its answer is
    the core's results until grpc serializes it: the same counts)."""
    assert server.metrics_port is not None
    batch = {"service": "fenliu.v1.Routing", "method": "RouteBatch"}
    decisions = "fenliu_route_decisions_total"
    with Client(server.target, token=TOKEN.secret, retries=0) as fenliu:
        fenliu.register_agent("m-batch", "bob", max_concurrent=2, status=Status.ONLINE)
        before = scrape(server.metrics_port)
        results = fenliu.route_batch([route_request("m-batch", b) for b in ("b1", "b2", "b3", "")])
    assert [r.decision.reason.name if r.decision else type(r.error).__name__ for r in results] == [
        "STRATEGY", "STRATEGY", "ALL_BUSY", "InvalidArgument",
    ]  # fmt: skip
    deadline = time.monotonic() + 10
    samples = scrape(server.metrics_port)
    while value(samples, "fenliu_rpc_requests_total", **batch, code="OK") < 1:
        assert time.monotonic() < deadline, "the RouteBatch was never counted"
        time.sleep(0.05)
        samples = scrape(server.metrics_port)
    for outcome, reason, more in (("ASSIGNED", "STRATEGY", 2), ("QUEUED", "ALL_BUSY", 1)):
        labels = {"outcome": outcome, "reason": reason}
        assert value(samples, decisions, **labels) - value(before, decisions, **labels) == more
    total = sum(v for (name, _), v in samples.items() if name == decisions)
    assert total - sum(v for (name, _), v in before.items() if name == decisions) == 3


def test_snapshots_are_timed(server: ServerThread) -> None:
    assert server.metrics_port is not None
    deadline = time.monotonic() + 10  # a wait for the periodic snapshot, not a timing check
    while value(scrape(server.metrics_port), "fenliu_snapshot_duration_seconds_count") < 1:
        assert time.monotonic() < deadline, "no snapshot was recorded"
        time.sleep(0.05)


def test_metrics_are_off_by_default() -> None:
    with ServerThread(Config(shards=1)) as server:
        assert server.metrics_port is None


def test_a_taken_metrics_port_stops_the_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        with pytest.raises(RuntimeError) as info:
            with ServerThread(Config(shards=1, metrics_port=port)):
                pass
    assert f"metrics cannot listen on 127.0.0.1:{port}" in str(info.value.__cause__)

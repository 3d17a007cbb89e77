"""Smoke test of the server-CPU benchmark (``bench/run.py quick``, bench/cpu.py): a tiny
run of every kind against a real server process, h2load with its distinct-request shim
included. Asserts that every figure is there and measured real decisions, never speed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("echo", "route_new", "route_open", "batch_new", "batch_open", "stream_new", "stream_open")


def _install(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True)


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    _install("h2load", "nghttp2-client")
    _install("cc", "gcc")
    out = tmp_path_factory.mktemp("cpu")
    cmd = [
        sys.executable, str(ROOT / "bench" / "run.py"), "quick", "--rounds", "2",
        "--seconds", "0.3", "--shops", "20", "--open-buyers", "1000", "--h2-requests", "600",
        "--batch-size", "100", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "cpu.json").read_text()), (out / "cpu.md").read_text()


def test_every_kind_made_real_decisions_and_has_its_server_cpu(
    record: tuple[dict[str, Any], str],
) -> None:
    data, _ = record
    assert len(data["rounds"]) == 2
    for rnd in data["rounds"]:
        for kind in KINDS:
            figure = rnd[kind]
            assert figure["done"] > 0 and figure["errors"] == {}, (kind, figure)
            assert figure["cpu_us_per_call"] > 0 and figure["loadavg"] >= 0, kind
            if kind != "echo":
                assert figure["real_decisions"] is True, (kind, figure["reasons_sampled"])
        for kind in ("h2load_echo", "h2load_route_new", "h2load_route_open"):
            assert rnd[kind]["done"] == 600 and rnd[kind]["failed"] == 0, rnd[kind]
        # h2load's requests were distinct decisions, not retries of one body
        assert rnd["h2load_route_new"]["real_decisions"] is True
        assert rnd["h2load_route_new"]["sample_reasons"] == ["REASON_STRATEGY"] * 2
        assert rnd["h2load_route_open"]["real_decisions"] is True
        assert rnd["h2load_route_open"]["sample_reasons"] == ["REASON_OPEN_SESSION"] * 2
    assert data["summary"]["real_decisions"] is True
    assert data["summary"]["paced_stream"]["latency_ms"]["count"] > 0


def test_the_table_says_which_targets_are_met(record: tuple[dict[str, Any], str]) -> None:
    _, table = record
    for target in ("Route/Echo by server CPU per call, new buyers", "RouteStream/Route",
                   "RouteBatch of new buyers", "RouteStream p99 at half its max rate",
                   "h2load Route/Echo by server CPU per call, open-session messages"):  # fmt: skip
        line = next(line for line in table.splitlines() if target in line)
        assert line.rstrip().endswith(("| met |", "| NOT met |")), line
    assert "load average" in table

"""Smoke test of the load harness (bench/run.py): a tiny world, a few hundred requests
of every kind against a real server process, and the record it writes is complete and
sane. Asserts shape, never speed (speed is what bench/README.md reports)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench")
    cmd = [
        sys.executable, str(ROOT / "bench" / "run.py"), "all", "--out", str(out),
        "--label", "smoke", "--shops", "40", "--max-agents", "12", "--rate", "100",
        "--seconds", "1.0", "--bursts", "0.2", "--rounds", "1", "--procs", "1",
        "--concurrency", "8", "--batch-seconds", "0.3", "--batch-size", "50",
        "--batch-concurrency", "2", "--hold", "0.3", "--status-churn", "5", "--no-h2load",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return out, json.loads((out / "record.json").read_text()), proc.stdout + proc.stderr


def test_record_describes_the_run(run: tuple[Path, dict[str, Any], str]) -> None:
    _, record, _ = run
    assert record["label"] == "smoke"
    assert record["machine"]["cores"] >= 1 and record["machine"]["grpcio"]
    assert record["parameters"]["shops"] == 40
    assert record["world"]["shops"] == 40 and record["world"]["largest_shop"] == 12
    assert record["world"]["agents"] >= 40
    # one world for the main server, one per journal mode, every agent registered
    builds = record["world"]["builds"]
    assert len(builds) == 4
    assert all(b["agents"] == record["world"]["agents"] and b["errors"] == {} for b in builds)
    assert len(record["rounds"]) == 1


def test_every_load_completed_without_errors_and_latencies_are_ordered(
    run: tuple[Path, dict[str, Any], str],
) -> None:
    _, record, _ = run
    rnd = record["rounds"][0]
    for key in ("closed_echo", "closed_route", "open_echo", "open_route"):
        fig = rnd[key]
        assert fig["sent"] > 0, key
        assert fig["completed"] + sum(fig["errors"].values()) == fig["sent"], key
        lat = fig["latency_ms"]
        assert lat["count"] == fig["sent"], key
        assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["p99_9_ms"]
        assert lat["p99_9_ms"] <= lat["max_ms"]
    for key in ("closed_echo", "closed_route"):
        assert rnd[key]["errors"] == {}, key
    # open loop: ~100/s for 1 s plus a 10x burst for 1 s: a few hundred arrivals each
    assert 500 < rnd["open_route"]["sent"] < 1600
    # every Route reply was a decision, and the churn ended sessions and flipped statuses
    route = rnd["open_route"]
    assert sum(route["outcomes"].values()) == route["completed"]
    assert route["outcomes"].get("OUTCOME_ASSIGNED", 0) > 0
    assert route["churn"].get("end", 0) > 0 and route["churn"].get("status", 0) > 0
    assert rnd["closed_echo"]["outcomes"] == {}


def test_batch_and_journal_figures(run: tuple[Path, dict[str, Any], str]) -> None:
    _, record, _ = run
    rnd = record["rounds"][0]
    for kind in ("echo", "route"):
        batch = rnd[f"batch_{kind}"]
        assert batch["decisions"] > 0 and batch["decisions"] % 50 == 0
        assert batch["errors"] == {}
    journal = record["journal"]
    for mode in ("off", "no_fsync", "fsync"):
        assert journal[mode]["median_per_s"] > 0
        assert journal[mode]["errors"] == [{}]
    assert journal["no_fsync"]["cost"] < 1 and journal["fsync"]["cost"] < 1


def test_summary_table_timeline_and_plots(run: tuple[Path, dict[str, Any], str]) -> None:
    out, record, output = run
    s = record["summary"]
    assert s["closed_route_vs_echo"] > 0 and s["batch_route_vs_echo"] > 0
    for kind in ("echo", "route"):
        windows = record["timeline"][kind]
        assert sum(w["count"] for w in windows) == record["rounds"][0][f"open_{kind}"]["sent"]
        curve = record["percentiles"][kind]
        assert [v for _, v in curve] == sorted(v for _, v in curve)
    table = (out / "report.md").read_text()
    assert "| figure | Route | Echo floor | Route / floor | target |" in table
    assert "≥ 150,000" in table and "| on, fsync |" in table
    assert table in output  # printed too
    for name in ("latency_over_time.png", "latency_percentiles.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "round 1/1: open loop route" in output  # the progress lines

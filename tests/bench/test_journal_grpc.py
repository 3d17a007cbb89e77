"""Smoke test of ``bench/journal_grpc.py`` (issue 10): one short round of every mode (the
journal off, fsync at this build's default commit hold, fsync at another ``--delays``
value), uncapped and with each server on a cgroup CPU budget (``--server-cpu``). Asserts
that every figure is there and that the cgroups are gone afterwards, never a rate or the
journal's cost (this machine is shared). Also: where cgroups cannot be written, the
capped mode says so and exits 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ._cgroups import clean, left, refused

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MODES = ("off", "fsync", "fsync_1ms")


def _run(*extra: str) -> tuple[dict[str, Any], str, int]:
    cmd = [
        sys.executable, str(ROOT / "bench" / "journal_grpc.py"), "--inflight", "8",
        "--seconds", "1", "--rounds", "1", "--procs", "1", "--delays", "1", *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        clean(proc.pid)
        raise AssertionError(f"bench/journal_grpc.py did not finish in 400 s:\n{err}") from None
    assert proc.returncode == 0, out + err
    return json.loads(out), err, proc.pid


@pytest.fixture(scope="module", params=["uncapped", "capped"])
def run(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], str, int]:
    extra = ("--server-cpu", "0.3") if request.param == "capped" else ()
    return (request.param, *_run(*extra))


@pytest.mark.timeout(600)
def test_every_mode_has_every_figure(run: tuple[str, dict[str, Any], str, int]) -> None:
    kind, record, err, _ = run
    entry = record["8"]
    for mode in MODES:
        row = entry[mode]
        assert row["per_s"] > 0 and row["cpu_us_per_call"] > 0, (mode, row)
        for thread in ("main", "journal", "other"):
            assert row[f"{thread}_us_per_call"] >= 0, (mode, row)
        assert 0 < row["p50_ms"] <= row["p99_ms"], (mode, row)
        assert row["server_cores"] > 0, (mode, row)
        if mode != "off":  # how many calls shared each fsync
            assert row["calls_per_cycle"] > 0, (mode, row)
            cost = entry[f"cost_{mode}"]
            assert set(cost) >= {"median", "by_round", "quartiles", "cpu_per_call"}, cost
            assert len(cost["by_round"]) == 1
        if kind == "capped":
            assert row["throttled_ms"] >= 0
            # the quota is a ceiling: a server never used much more than its budget
            assert row["server_cores"] < 0.3 * 1.5, (mode, row)
        else:
            assert "throttled_ms" not in row
    # the modes differ in what they compare only: journal off has the same call guard
    # (metrics) as the fsync ones, the delay modes add their --commit-delay
    flags = record["server_flags"]
    assert "--metrics-port" in flags["off"]
    assert flags["off"] == flags["fsync"], flags
    assert flags["fsync_1ms"] == sorted([*flags["fsync"], "--commit-delay"]), flags
    assert len(record["load_average_by_round"]) == 2
    assert isinstance(record["warnings"], list)
    if kind == "capped":
        assert record["mode"].startswith("capped: each server 0.3 cores"), record["mode"]
        assert record["server_cpu_budget"] == 0.3
    else:
        assert record["mode"].startswith("uncapped") and record["server_cpu_budget"] is None
    assert f"mode: {record['mode']}" in err


@pytest.mark.timeout(600)
def test_the_capped_mode_removes_its_cgroups(run: tuple[str, dict[str, Any], str, int]) -> None:
    kind, record, err, pid = run
    if kind == "capped":
        assert "cgroups left: [" in err and "] removed now, [] not" in err, err
        assert record["cgroups_left"] == []
    assert left(pid) == []


def test_without_writable_cgroups_it_says_so_and_exits_2() -> None:
    proc = refused("journal_grpc.py", "--rounds", "1", "--server-cpu", "0.3")
    assert "round 1" not in proc.stderr and proc.stdout == ""  # no server, no round ran

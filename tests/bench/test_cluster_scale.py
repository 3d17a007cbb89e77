"""Smoke test of the capped scale mode of ``bench/cluster.py`` (issue 11): one short round
against 1 node and 2 nodes, each node in a cgroup with a CPU quota, on a real 3-node NATS
cluster and etcd. Asserts that every figure is there and that the cgroups are gone
afterwards, never a rate or the 2-node/1-node ratio (this machine is shared).
Also: where cgroups cannot be written, the mode says so and exits non-zero."""

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


@pytest.fixture(scope="module")
def scale() -> tuple[list[dict[str, Any]], str, int]:
    cmd = [
        sys.executable, str(ROOT / "bench" / "cluster.py"), "--only", "scale", "--rounds", "1",
        "--seconds", "2", "--node-cpu", "0.3", "--procs", "1", "--callers", "8",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        clean(proc.pid)
        raise AssertionError(f"bench/cluster.py did not finish in 480 s:\n{out}") from None
    assert proc.returncode == 0, out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return rows, out, proc.pid


@pytest.mark.timeout(600)
def test_capped_scale_round_has_every_figure(scale: tuple[list[dict[str, Any]], str, int]) -> None:
    rows, out, _ = scale
    assert [r["nodes"] for r in rows] == [1, 2], out
    assert "scale mode: capped: each node 0.3 cores" in out
    for row in rows:
        n = row["nodes"]
        assert row["case"] == "scale" and row["mode"].startswith("capped 0.3 cores/node"), row
        assert row["node_cpu_budget"] == 0.3
        assert row["load_procs"] == n and row["in_flight"] == 8 * n  # --procs per node
        assert row["decisions_per_s"] > 0 and row["errors"] >= 0, row
        assert len(row["node_cpu_cores"]) == n and all(c > 0 for c in row["node_cpu_cores"])
        # the quota is a ceiling: a node never used much more than its budget
        assert all(c < 0.3 * 1.5 for c in row["node_cpu_cores"]), row
        assert row["server_cpu_us_per_decision"] > 0
        assert len(row["nr_throttled"]) == n and len(row["throttled_ms"]) == n
        assert all(t >= 0 for t in row["nr_throttled"] + row["throttled_ms"])
        assert row["nats_cpu_cores"] > 0 and row["etcd_cpu_cores"] >= 0
        assert row["load_cpu_cores"] > 0 and row["load_cpu_us_per_decision"] > 0
        assert row["engines_wait_ms_per_s"] >= 0 and row["machine_idle_cores"] >= 0
        assert isinstance(row["headroom_cores"], float)
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["load"] >= 0
        assert isinstance(row["warnings"], list)
    assert "scale ratio 2 nodes / 1 node:" in out
    assert "scale, 1 node(s):" in out and "scale, 2 node(s):" in out


@pytest.mark.timeout(600)
def test_capped_scale_removes_its_cgroups(scale: tuple[list[dict[str, Any]], str, int]) -> None:
    _, out, pid = scale
    assert "cgroups left: [] removed now, [] not" in out, out
    assert left(pid) == []


def test_without_writable_cgroups_it_says_so_and_exits_non_zero(tmp_path: Path) -> None:
    proc = refused("cluster.py", "--only", "scale", "--rounds", "1", "--node-cpu", "0.3")
    assert "load average before" not in proc.stdout  # no engine, no round ran

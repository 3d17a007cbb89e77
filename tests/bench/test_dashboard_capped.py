"""Smoke test of ``bench/dashboard.py --mode capped`` (issue 13): one short round of 0 / 1 /
2 pages with fenliu, the dashboard and the page readers each in a cgroup with a CPU quota,
the load generator in a high-weight one, unpinned and pinned (``--pin both``: fenliu on CPU
0, the dashboard, the pages and the load on CPU 1, interleaved in the same run). Asserts
that every figure is there (of both layouts, with where fenliu's CPU went), that each quota
was a ceiling, that each process ran on the CPUs it was given and that the cgroups are gone
afterwards, never a rate or the ratio (this machine is shared). Also: where cgroups cannot
be written, or the CPUs cannot be given, the mode says so and exits non-zero before it
starts anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ._cgroups import clean, left, refused

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ROLES = {"fenliu", "dashboard", "sse_readers", "load_generator"}
CAPPED = {"fenliu": 0.3, "dashboard": 0.2, "sse_readers": 0.2}
MODES = {"0_pages", "1_pages", "2_pages"}


@pytest.fixture(scope="module")
def run() -> tuple[dict[str, Any], str, int]:
    cmd = [
        sys.executable, str(ROOT / "bench" / "dashboard.py"), "--mode", "capped",
        "--rounds", "1", "--seconds", "1", "--pages", "2", "--samples", "3", "--workers", "8",
        "--load-procs", "1", "--server-cpu", "0.3", "--dashboard-cpu", "0.2",
        "--readers-cpu", "0.2", "--pin", "both", "--pin-cpus", "0:1",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        clean(proc.pid)
        raise AssertionError(f"bench/dashboard.py did not finish in 240 s:\n{err}") from None
    assert proc.returncode == 0, err
    return json.loads(out), err, proc.pid


ATTRIBUTION = (
    {
        f"{role}_{what}"
        for role in ("fenliu", "dashboard", "sse_readers")
        for what in ("user_us", "sys_us", "voluntary_cs", "involuntary_cs", "migrations")
    }
    | {f"{kind}{cpu}" for kind in ("net_rx", "net_tx") for cpu in ("", "_cpu0", "_cpu1")}
    | {f"cpu{cpu}_{kind}_pct" for cpu in (0, 1) for kind in ("softirq", "system", "steal")}
)
ALL = sorted(os.sched_getaffinity(0))  # every CPU this machine gives the tests
PINNED = {"fenliu": [0], "dashboard": [1], "sse_readers": [1], "load_generator": [1]}


@pytest.mark.timeout(300)
def test_a_capped_round_reports_every_figure(run: tuple[dict[str, Any], str, int]) -> None:
    record, err, _ = run
    check(record, err, pinned=True)
    assert "; unpinned, same run: dashboard target (capped: " in record["target"]
    check(record["unpinned"], err, pinned=False)


@pytest.mark.timeout(300)
def test_pinned_rounds_ran_on_their_cpus_and_unpinned_on_every_one(
    run: tuple[dict[str, Any], str, int],
) -> None:
    record, _, _ = run
    assert record["pinned"] == {"fenliu": [0], "dashboard_and_pages": [1], "load_generator": [1]}
    assert (
        "pinned: fenliu on CPU 0, the dashboard and the pages on CPU 1, load on CPU 1"
        in (record["target"])
    )
    assert record["unpinned"]["pinned"] is None
    for mode in MODES:
        (pinned,) = record["cpus_allowed_per_round"][mode]
        (unpinned,) = record["unpinned"]["cpus_allowed_per_round"][mode]
        readers = mode != "0_pages"
        assert pinned == {**PINNED, "sse_readers": [1] if readers else []}, pinned
        assert unpinned == {role: ALL for role in PINNED} | {
            "sse_readers": ALL if readers else []
        }, unpinned
        # (a thread asleep at the pinning moves at its next wake-up: migrations in a pinned
        # round are not 0 on their own, so not asserted)


def check(record: dict[str, Any], err: str, pinned: bool) -> None:
    assert record["mode"] == "capped"
    assert record["answers_the_target"].startswith("capped answers the target")
    budgets = record["budgets"]
    assert set(budgets) == ROLES
    for role, cores in CAPPED.items():
        assert budgets[role]["cores"] == cores
        assert f"{round(cores * 100_000)} " in budgets[role]["cgroup"]  # the quota, in µs
    assert budgets["load_generator"]["cores"] is None
    assert record["load_procs"] == 1 and record["workers_per_load_proc"] == 8
    assert set(record["decisions_per_s"]) == MODES
    assert all(rate > 0 for rate in record["decisions_per_s"].values())
    for key in (
        "rounds_per_s",
        "ratio_to_0_pages",
        "ratio_per_round",
        "fenliu_at_budget_per_round",
    ):
        assert set(record[key]) == MODES, key
    assert all(len(v) == 1 for v in record["ratio_per_round"].values())
    assert all(isinstance(v[0], bool) for v in record["fenliu_at_budget_per_round"].values())
    for mode in MODES:
        us = record["cpu_us_per_decision_by_process"][mode]
        assert set(us) == ROLES and us["fenliu"] > 0 and us["load_generator"] > 0
        cores = record["cores_used"][mode]
        assert set(cores) == ROLES and cores["fenliu"] > 0
        # a quota is a ceiling: no capped role used much more than its budget
        assert all(cores[role] < budget * 1.5 for role, budget in CAPPED.items()), cores
        assert set(record["nr_throttled"][mode]) == set(CAPPED)
        assert all(n[0] >= 0 for n in record["nr_throttled"][mode].values())
        assert all(ms[0] >= 0 for ms in record["throttled_ms"][mode].values())
    two = record["cpu_us_per_decision_by_process"]["2_pages"]
    assert two["dashboard"] > 0 and two["sse_readers"] > 0
    stream = record["fenliu_watch_stream_us_per_decision"]
    assert set(stream) == {"1_pages", "2_pages"}
    assert all(len(v["per_round"]) == 1 and "median" in v for v in stream.values())
    for mode, pages in (("1_pages", 1), ("2_pages", 2)):
        seen = record["pages"][mode]
        delays = seen["route_to_page_ms_under_load"]
        # every probe route is counted for every page, as seen (a delay) or not
        counted = delays["samples"] + delays["not_seen"]
        assert counted >= pages and counted % pages == 0, delays
        assert delays["samples"] >= 1 and delays["max"] >= delays["p99"] >= delays["p50"] > 0
        assert seen["sse_messages_per_round"][0] > 0
        assert seen["fell_behind_rereads"] >= 0 and seen["pages_dropped"] >= 0
    assert isinstance(record["warnings"], list)
    assert record["target"].startswith("dashboard target (capped: fenliu 0.3 cores")
    assert "2 pages / 0 = " in record["target"] and record["target"] in err
    verdict = ": met" if record["met"] else ": NOT "  # NOT met, or NOT measured
    assert isinstance(record["met"], bool) and verdict in record["target"]
    assert set(record["ratio_by_fenliu_cpu_per_decision"]) == {"1_pages", "2_pages"}
    assert all(v["median"] > 0 for v in record["ratio_by_fenliu_cpu_per_decision"].values())
    full = record["rounds_with_fenliu_at_budget"]
    assert full in ([], [0]) and set(record["ratio_to_0_pages_at_budget"]) == (
        MODES if full else set()
    )
    for mode in MODES:  # where fenliu's CPU went: every figure, per round and the median
        where = record["attribution"][mode]
        assert set(where) == ATTRIBUTION, set(where) ^ ATTRIBUTION
        assert all(len(v["per_round"]) == 1 and v["median"] >= 0 for v in where.values())
        assert where["fenliu_user_us"]["median"] + where["fenliu_sys_us"]["median"] > 0
        assert where["fenliu_voluntary_cs"]["median"] > 0  # it waits for calls
        assert where["net_rx"]["median"] > 0  # loopback gRPC: NET_RX softirqs
    if not pinned:  # the paced delays and the load averages are the whole run's
        return
    assert record["route_to_page_ms_paced"]["samples"] == 3
    assert len(record["load_average_before"]) == 3 and len(record["load_average"]) == 3


@pytest.mark.timeout(300)
def test_a_capped_run_removes_its_cgroups(run: tuple[dict[str, Any], str, int]) -> None:
    record, _, pid = run
    assert record["cgroups"]["left"] == []
    removed = record["cgroups"]["removed"]
    assert sorted(Path(p).name for p in removed) == sorted(
        f"fenliu-bench-{pid}-{role}" for role in ("fenliu", "dashboard", "sse_readers", "load")
    )
    assert left(pid) == []


def test_without_writable_cgroups_it_says_so_and_exits_non_zero() -> None:
    proc = refused("dashboard.py", "--mode", "capped", "--rounds", "1")
    assert proc.stdout == ""  # no server, no round ran


@pytest.mark.parametrize(
    ("cpus", "says"),
    [("0:4096", "are not among this machine's"), ("0:0", "must be non-empty and disjoint")],
)
def test_without_the_cpus_to_pin_it_says_so_and_exits_non_zero(cpus: str, says: str) -> None:
    cmd = [
        sys.executable, str(ROOT / "bench" / "dashboard.py"), "--mode", "capped",
        "--rounds", "1", "--pin", "on", "--pin-cpus", cpus,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)  # fmt: skip
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, out + err
    assert err.startswith("--pin: ") and says in err and "never runs unpinned" in err, err
    assert out == ""  # no server, no round ran
    assert left(proc.pid) == []  # and no cgroup was made

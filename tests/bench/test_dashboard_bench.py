"""``bench/dashboard.py``'s deployed mode: the dashboard and the page readers at SCHED_IDLE
(their threads too), and a tiny run of it that reads every figure the README quotes
(never a speed: those are bench/README.md's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import dashboard as bench  # noqa: E402

POLICY = "import os, threading; t = threading.Thread(target=lambda: print(os.sched_getscheduler(0))); t.start(); t.join(); print(os.sched_getscheduler(0))"  # noqa: E501


def test_a_deployed_child_and_its_threads_run_at_sched_idle() -> None:
    idle = subprocess.run(
        [sys.executable, "-c", POLICY], capture_output=True, text=True, check=True,
        preexec_fn=bench.lowest_priority,
    )  # fmt: skip
    assert idle.stdout.split() == [str(os.SCHED_IDLE)] * 2
    normal = subprocess.run([sys.executable, "-c", POLICY], capture_output=True, text=True)
    assert normal.stdout.split() == [str(os.SCHED_OTHER)] * 2
    assert threading.current_thread()  # (this process is left as it was)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


@pytest.mark.slow
def test_a_short_run_of_both_modes_reports_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "dashboard.py"), "--seconds", "0.5",
         "--rounds", "1", "--pages", "2", "--samples", "3", "--workers", "4"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    for mode, label in (("same_priority", "same priority"), ("deployed", "SCHED_IDLE")):
        got = record[mode]
        assert got["dashboard_and_readers"] == label
        assert set(got["decisions_per_s"]) == {"0_pages", "1_pages", "2_pages"}
        assert all(rate > 0 for rate in got["decisions_per_s"].values())
        two = got["cpu_us_per_decision_by_process"]["2_pages"]
        assert set(two) == {"fenliu", "dashboard", "sse_readers", "load_generator"}
        seen = got["pages"]["2_pages"]
        # Each probe route of the round (0.5 s: a few) is counted for both pages, as seen
        # (a delay) or not. At SCHED_IDLE on a loaded machine the readers may get no CPU
        # for a while (not seen, then): only the same-priority pages must have seen one.
        delays = seen["route_to_page_ms_under_load"]
        counted = delays["samples"] + delays["not_seen"]
        assert counted >= 2 and counted % 2 == 0
        if mode == "same_priority":
            assert delays["samples"] >= 1 and delays["p99"] >= delays["p50"] > 0
        assert seen["sse_messages_per_round"][0] > 0
        assert seen["fell_behind_rereads"] >= 0 and seen["pages_dropped"] >= 0
    assert record["route_to_page_ms_paced"]["samples"] == 3

"""Smoke test of bench/route_path.py: the unary Route's in-process path under callgrind,
a few calls of each kind. Asserts the record's shape and that the calls were counted (a
new buyer's path runs more instructions than an open session's), never a figure."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_instructions_per_call_of_both_kinds() -> None:
    if shutil.which("valgrind") is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "valgrind"], check=True)
    cmd = [sys.executable, str(ROOT / "bench" / "route_path.py"), "--calls", "200",
           "--open-sessions", "200"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["calls"] == 200
    # the path is ~30,000-40,000 instructions a call compiled, ~2-3x that pure: counted
    assert 5_000 < record["open_instructions"] < record["new_instructions"] < 500_000, record
    assert record["new_cpu_us"] > 0 and record["open_cpu_us"] > 0

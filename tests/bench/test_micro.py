"""The micro-benchmarks (``bench/micro``, outside the test paths) still run: each once,
timing off. They broke unnoticed once (test_guard imported a class the write path had
removed); this asserts they collect and pass, never how fast."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_micro_benchmark_runs() -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "testpaths=bench",
           "--benchmark-disable", str(ROOT / "bench" / "micro")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = re.search(r"(\d+) passed", proc.stdout)
    assert found and int(found.group(1)) >= 10, proc.stdout[-3000:]

"""What the capped benchmarks' smoke tests share: the cgroups a bench run made (named
``fenliu-bench-<pid>-*`` by ``bench/cgroups.py``'s callers), found and cleaned up."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

CGROUPS = (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup"))
ROOT = Path(__file__).resolve().parents[2]
READONLY = Path("/proc/sys/fenliu-no-cgroup")  # mkdir under /proc/sys fails, even as root


def left(pid: int) -> list[Path]:
    """The cgroups of the bench process ``pid`` that still exist."""
    return [p for root in CGROUPS for p in root.glob(f"fenliu-bench-{pid}-*") if p.is_dir()]


def clean(pid: int) -> None:
    """After a bench that did not finish: stop what it left in its cgroups, remove them."""
    for group in left(pid):
        for line in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line), signal.SIGKILL)
        with contextlib.suppress(OSError):
            group.rmdir()


def refused(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``bench/<script>`` with ``args`` and a cgroup root it cannot write: it must exit 2
    saying it cannot make its cgroup and never runs uncapped (the caller checks that no
    round ran, in that script's own words)."""
    cmd = [sys.executable, str(ROOT / "bench" / script), *args, "--cgroup-root", str(READONLY)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot make cgroup" in proc.stderr and "never runs uncapped" in proc.stderr
    return proc

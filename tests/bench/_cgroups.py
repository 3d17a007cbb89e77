"""What the capped benchmarks' smoke tests share: the cgroups a bench run made (named
``fenliu-bench-<pid>-*`` by ``bench/cgroups.py``'s callers), found and cleaned up."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

CGROUPS = (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup"))


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

"""A CPU budget for a process: a cgroup of its own with a CFS quota (its ceiling) and a high
weight (so it gets that much however busy the machine is), as if it ran on a machine of
its own. Used by the benchmarks that compare two set-ups on these shared cores
(``bench/cluster.py --node-cpu``, ``bench/dashboard.py``, ``bench/journal_grpc.py``).
Needs root and a writable cgroup ``cpu`` controller (v1 or v2); raises ``CapError``
otherwise, and a caller never falls back to uncapped silently."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

V1_CPU = Path("/sys/fs/cgroup/cpu")
V2_ROOT = Path("/sys/fs/cgroup")


class CapError(Exception):
    """The cgroup CPU controller cannot be written here (not root, read-only, missing)."""


class CpuCap:
    """A cgroup of its own for one process (a fenliu node, say): a CFS quota of
    ``cores`` (its ceiling) and a high weight (``shares``), so that it also gets that much
    when the machine is busy with other work: as if it ran on a machine of its own.
    ``cores`` 0: no quota, only the weight (e.g. the engines and load of
    ``bench/cluster.py``'s ``scale_round``). cgroup v1's ``cpu``
    controller (cpu.cfs_period_us, cpu.cfs_quota_us, cpu.shares) where mounted, else cgroup
    v2 (cpu.max, cpu.weight). A node is started inside it (``wrap``: a shell writes its own
    pid to cgroup.procs, then execs the node), so every thread and child is in it from the
    start. Every cgroup made is in ``made`` and removed by ``remove_all``, also on failure."""

    PERIOD_US = 100_000
    made: list[CpuCap] = []

    def __init__(self, root: Path, name: str, cores: float, shares: int = 262_144) -> None:
        self.version = "v2" if (root / "cgroup.controllers").exists() else "v1"
        self.root = root
        self.path = root / name
        self.quota_us = max(1000, round(cores * self.PERIOD_US)) if cores > 0 else 0
        self.shares = shares
        try:
            if self.version == "v2":
                control = root / "cgroup.subtree_control"
                if "cpu" not in control.read_text().split():
                    control.write_text("+cpu")
            self.path.mkdir()
            CpuCap.made.append(self)
            if self.version == "v2":
                weight = max(1, min(10_000, shares * 100 // 1024))
                (self.path / "cpu.weight").write_text(str(weight))
                if self.quota_us:
                    (self.path / "cpu.max").write_text(f"{self.quota_us} {self.PERIOD_US}")
            else:
                (self.path / "cpu.shares").write_text(str(shares))
                if self.quota_us:
                    (self.path / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
                    (self.path / "cpu.cfs_quota_us").write_text(str(self.quota_us))
        except OSError as exc:
            self.remove()
            raise CapError(f"cannot make cgroup {self.path} with a CPU quota: {exc}") from exc

    def describe(self) -> str:
        if self.version == "v2":
            return f"cgroup v2 cpu.max {self.quota_us} {self.PERIOD_US}, cpu.weight high"
        return (f"cgroup v1 cpu.cfs_quota_us {self.quota_us} per cpu.cfs_period_us "
                f"{self.PERIOD_US}, cpu.shares {self.shares}")  # fmt: skip

    def move(self, pids: list[int]) -> None:
        """Move running processes in (all their threads follow)."""
        for pid in pids:
            (self.path / "cgroup.procs").write_text(str(pid))

    def release(self) -> None:
        """Move every process still inside back to the root cgroup."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                (self.root / "cgroup.procs").write_text(str(pid))

    def wrap(self, args: list[str]) -> list[str]:
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"),
                *args]  # fmt: skip

    def pids(self) -> list[int]:
        return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]

    def throttled(self) -> tuple[int, float]:
        """(nr_throttled, throttled ms) so far, from cpu.stat."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        if "throttled_usec" in stat:  # v2
            return int(stat["nr_throttled"]), int(stat["throttled_usec"]) / 1e3
        return int(stat["nr_throttled"]), int(stat["throttled_time"]) / 1e6

    def remove(self) -> None:
        """rmdir once its processes are gone (a cgroup empties a moment after they exit)."""
        if self.path.exists() and self.quota_us == 0:
            self.release()
        deadline = time.monotonic() + 10
        while self.path.exists():
            try:
                self.path.rmdir()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if self in CpuCap.made:
            CpuCap.made.remove(self)

    @classmethod
    def remove_all(cls) -> list[str]:
        removed = []
        for cap in list(cls.made):
            try:
                cap.remove()
                removed.append(str(cap.path))
            except OSError as exc:
                print(f"WARNING: could not remove {cap.path}: {exc}", file=sys.stderr)
        return removed


def cgroup_root(given: Path | None) -> Path:
    """Where the per-node cgroups go: ``given``, or v1's cpu controller, or v2's root."""
    if given is not None:
        return given
    if V1_CPU.joinpath("cpu.cfs_quota_us").exists():
        return V1_CPU
    controllers = V2_ROOT / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return V2_ROOT
    raise CapError(f"no cgroup cpu controller: neither {V1_CPU}/cpu.cfs_quota_us nor "
                   f"'cpu' in {V2_ROOT}/cgroup.controllers")  # fmt: skip


def probe_caps(root: Path, cores: float) -> str:
    """A cgroup made, given a quota and removed before any engine starts; raises CapError."""
    cap = CpuCap(root, f"fenliu-bench-{os.getpid()}-probe", cores)
    try:
        return cap.describe()
    finally:
        cap.remove()

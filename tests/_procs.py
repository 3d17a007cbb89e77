"""Processes a test started, found by a marker in their environment (which every process
they start inherits, also one that made a session of its own or was reparented to init):
the test sets ``MARKER=<its own token>`` in the environment of what it starts, and only
ever signals what carries its token."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

MARKER = "FENLIU_TEST_PROCS"


PF_KTHREAD = 0x00200000  # a kernel thread: its environment is always empty
EXEC_RETRIES = 50  # looks, 2 ms apart, at an empty environment before believing it


def _stat(entry: Path) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command's name: state, ppid, ..."""
    return (entry / "stat").read_text().rsplit(")", 1)[1].split()


def _capabilities(entry: Path, field: str) -> int:
    for line in (entry / "status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    raise ValueError(f"no {field} in {entry}/status")


def _beyond_us(entry: Path) -> bool:
    """Whether the process holds a capability outside our bounding set: then nothing we
    started can be it (what we start never gains one), and reading its environment is
    refused for good (the sandbox's init, here), so it is not looked at again."""
    ours = _capabilities(Path("/proc/self"), "CapBnd")
    return bool(_capabilities(entry, "CapPrm") & ~ours)


def _environ(entry: Path) -> list[bytes]:
    """A process's environment. While it is in ``execve`` the kernel shows an empty one
    for a moment (between dropping the old program and setting up the new one's stack),
    so an empty environment of a live user process is looked at again before it is
    believed (a process started with none costs a scan 0.1 s)."""
    for _ in range(EXEC_RETRIES):
        try:
            raw = (entry / "environ").read_bytes()
        except PermissionError:  # mid-exec too, unless it outranks us
            raw = b""
            if _beyond_us(entry):
                break
        except ProcessLookupError:  # mid-exec too, or gone: stat says
            raw = b""
        if raw:
            break
        stat = _stat(entry)
        if stat[0] == "Z" or int(stat[6]) & PF_KTHREAD:
            break  # a zombie's environment is gone; a kernel thread never had one
        time.sleep(0.002)
    return raw.split(b"\0")


def marked(marker: str) -> list[int]:
    """The live (not zombie) processes whose environment carries ``MARKER=marker``."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in _environ(entry):
                continue
            state = _stat(entry)[0]
        except (OSError, IndexError):
            continue  # gone meanwhile
        if state != "Z":
            found.append(int(entry.name))
    return found


def argv(pid: int) -> list[str]:
    """A process's command line (empty once it is gone or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def command(pid: int) -> str:
    return " ".join(argv(pid)) or "(gone)"


def signal_marked(marker: str, signum: int) -> None:
    for pid in marked(marker):  # each one found by the marker: only what the test started
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def stop_marked(marker: str, grace: float, group: int | None = None) -> list[str]:
    """Stop what carries the marker (and the process ``group``, if given): SIGTERM, SIGKILL
    after ``grace`` seconds; what was running then ("pid: command")."""
    left = [f"{pid}: {command(pid)}" for pid in marked(marker)]
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if group is not None:
            try:
                os.killpg(group, signum)
            except (ProcessLookupError, PermissionError):
                pass
        signal_marked(marker, signum)
        deadline = time.monotonic() + wait
        while marked(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not marked(marker):
            break
    return left

"""Real ``fenliu-server`` processes for the issue-10 tests: started with their log in a
file (never a pipe nobody reads), and either serving or refusing to start."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec

HERE = Path(__file__).resolve().parent


@dataclass
class Proc:
    child: subprocess.Popen[bytes]
    log: Path
    start: int  # the log's size when this process started

    @property
    def pid(self) -> int:
        return self.child.pid

    def text(self) -> str:
        return self.log.read_bytes()[self.start :].decode(errors="replace")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self) -> int:
        """SIGTERM: drain, final snapshot; the exit code."""
        if self.child.poll() is None:
            self.child.terminate()
        return self.child.wait(60)

    def crash(self) -> None:
        """SIGKILL of the server and everything it started (a forked snapshot child too):
        what a power loss or the OOM killer of a container does."""
        if self.child.poll() is None:
            os.killpg(self.child.pid, signal.SIGKILL)
        self.child.wait(30)
        try:  # children orphaned before the kill are in the same group
            os.killpg(self.child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def launch(
    data: Path,
    log: Path,
    *extra: str,
    shards: int = 2,
    tick: float = 3600,
    snapshot: float = 3600,
    env: dict[str, str] | None = None,
    wrapper: str | None = None,
    nofile: int | None = None,
) -> Proc:
    """``python -m fenliu.server`` on a loopback port in its own process group.
    ``wrapper``: a script of this folder run instead, which runs the server itself."""
    args = [sys.executable]
    if wrapper is not None:
        args.append(str(HERE / wrapper))
    args += ["-m", "fenliu.server", "--host", "127.0.0.1", "--port", "0"]
    args += ["--data-dir", str(data), "--shards", str(shards)]
    args += ["--tick-interval", str(tick), "--snapshot-interval", str(snapshot), *extra]

    if nofile is not None:
        # The limit is set by a shell that then becomes the server, not by a preexec_fn:
        # that would make this (gRPC-using) process fork and run Python in the child, where
        # gRPC's fork handlers, skipped while its threads are busy, can abort it.
        args = ["sh", "-c", f'ulimit -n {int(nofile)} && exec "$@"', "sh", *args]
    start = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as out:
        child = subprocess.Popen(
            args, stdout=out, stderr=out, start_new_session=True,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
    return Proc(child, log, start)


def outcome(proc: Proc, timeout: float = 30) -> tuple[str, str | int]:
    """("serving", target) or ("exited", exit code), whichever comes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"fenliu serving on 127\.0\.0\.1:(\d+)", proc.text())
        if found:
            return "serving", f"127.0.0.1:{found.group(1)}"
        code = proc.child.poll()
        if code is not None:
            return "exited", code
        time.sleep(0.05)
    proc.crash()
    raise AssertionError(f"neither serving nor exited in {timeout}s:\n{proc.text()}")


def serving(proc: Proc) -> str:
    what, value = outcome(proc)
    assert what == "serving", f"the server exited with {value}:\n{proc.text()}"
    return str(value)


def refuses(proc: Proc) -> str:
    """The server must refuse to start (exit code 1); its log."""
    what, value = outcome(proc)
    if what == "serving":
        proc.crash()
        raise AssertionError(f"the server started instead of refusing:\n{proc.text()}")
    assert value == 1, f"exit code {value}, not 1:\n{proc.text()}"
    return proc.text()


@contextmanager
def running(data: Path, log: Path, *extra: str, **kw: object) -> Iterator[tuple[Proc, str]]:
    """A serving server; crashed (SIGKILL) on the way out unless stopped already."""
    proc = launch(data, log, *extra, **kw)  # type: ignore[arg-type]
    try:
        yield proc, serving(proc)
    finally:
        proc.crash()


HEADER = 8  # a data file's header: MAGIC (6 bytes) + u16 format version
START = b"\xff\xff"  # the shard field of a write-ahead log segment's start frame


def wal_segments(data: Path) -> list[Path]:
    """The data directory's write-ahead log segments (every shard's records), oldest first."""
    return sorted((data / "wal").glob("wal-*.log"))


def _frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, size, payload) of each intact-length frame after the file's header."""
    out, offset = [], HEADER
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "little")
        if offset + 8 + length > len(data):
            break
        out.append((offset, 8 + length, data[offset + 8 : offset + 8 + length]))
        offset += 8 + length
    return out


def frames(path: Path, shard: int | None = None) -> list[tuple[int, int]]:
    """(offset, size) of each framed record of a log segment (after its header and its
    start frame), of every shard or only of ``shard`` (a record's payload starts with its
    shard number, u16 little endian)."""
    found = _frames(path.read_bytes())
    if found and found[0][2][:2] == START:
        found = found[1:]
    return [
        (offset, size)
        for offset, size, payload in found
        if shard is None or int.from_bytes(payload[:2], "little") == shard
    ]


def starts(path: Path) -> list[int]:
    """A log segment's start frame: every shard's position before the segment (the
    records of each that came before it)."""
    found = _frames(path.read_bytes())
    assert found and found[0][2][:2] == START, f"{path}: no start frame"
    return list(msgspec.msgpack.decode(found[0][2][2:], type=list[int]))


def flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))

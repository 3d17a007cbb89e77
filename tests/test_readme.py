"""Every command and snippet in README.md, run as written against a real server.

The convention (for whoever adds a README section):

- Every fenced block is either run or listed in ``NOT_RUN`` below (by the start of its
  first line, with the reason). A block that is neither fails the test, and so does a
  ``NOT_RUN`` entry that no longer matches a block: nothing is ignored silently.
- ``bash`` blocks run with ``bash -euo pipefail`` in a scratch directory, as if the venv
  were activated (its ``bin`` first on PATH, ``python`` is the venv's), and with
  ``FENLIU_TARGET`` naming the test's server. Each block is one shell: a variable set on
  one line is there on the next.
- ``python`` blocks run with the venv's python; ``127.0.0.1:50051`` (the default address
  the README shows) is replaced by the test's server.
- Every block must exit 0, and nothing may print a traceback.
- Blocks run in README order against one server, so a later block sees what an earlier
  one did (the Python snippet uses the tour's ``shop1``). The server is a real
  ``fenliu-server`` process the test starts (the README's "start a server"), on a free
  port, with a data directory of its own.
- A command that runs until it is interrupted (``fenliu watch``, say) carries ``Ctrl-C`` in
  its trailing comment; it must be one simple command on its line. The test runs it under
  the ``tests/_ctrl_c.py`` wrapper (``python tests/_ctrl_c.py SECONDS ... -- CMD``),
  which sends it SIGINT ``CTRL_C_AFTER_S`` seconds after it is ready, passes its exit
  code on, and expects it to stop cleanly (exit 0) on Ctrl-C. Ready is at once, or, for a
  command listed in ``READY`` (one that takes a while to start, like the local cluster),
  once its output (stdout or stderr) has a line matching its pattern (within
  ``READY_TIMEOUT_S``).
- Each block runs in a session (process group) of its own, with a marker in its
  environment that every process it starts inherits. After the block, on a timeout or on
  a failure alike, the test stops what is left: SIGTERM to the group and to every process
  still carrying the marker (found in ``/proc``, so also those that made a session of
  their own, like the local cluster's engines, or were reparented to init), then SIGKILL
  after a grace. A block that leaves any process running fails the test, naming them.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, NamedTuple

import pytest

from tests._procs import MARKER, command, stop_marked

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CTRL_C = Path(__file__).with_name("_ctrl_c.py")
BIN = Path(sys.executable).parent
DEFAULT_TARGET = "127.0.0.1:50051"
CTRL_C_AFTER_S = 3
READY_TIMEOUT_S = 150
BLOCK_TIMEOUT_S = 240
STOP_GRACE_S = 60  # what a block's leftovers get between SIGTERM and SIGKILL

# Ctrl-C commands that are interrupted only once ready: their start (by the line's first
# words) and the line they print then. Interrupted during its start-up, the local cluster
# stops what it started and exits non-zero, so the README's Ctrl-C must come after.
READY: dict[str, str] = {
    "python -m fenliu.server.cluster.local": r"^cluster ready in ",
    "fenliu-dashboard ": r"fenliu-dashboard serving on http://127\.0\.0\.1:\d+ ",
}

NOT_RUN: dict[str, str] = {
    "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/fenliu-server": (
        "the set-up itself: it installs fenliu into a fresh .venv (from PyPI) and runs the "
        "whole test suite; .ci/run does exactly this on every change, and this test runs "
        "inside such a venv"
    ),
    "data/MANIFEST ": (
        "a listing of the data directory's files, not commands (tests/server/storage "
        "checks each of them)"
    ),
    "# /etc/fenliu/fenliu.toml": (
        "a configuration file, not commands: its secrets and paths exist only on a server "
        "(tests/server/test_options.py covers every key)"
    ),
}
RUN_LANGUAGES = ("bash", "python")


class Block(NamedTuple):
    line: int  # of the opening fence, 1-based
    language: str
    code: str

    @property
    def first_line(self) -> str:
        return self.code.strip().splitlines()[0].strip() if self.code.strip() else ""

    @property
    def not_run(self) -> bool:
        return any(self.first_line.startswith(key) for key in NOT_RUN)


def blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text (``` or ~~~, any info string)."""
    found: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^( {0,3})(`{3,}|~{3,})\s*([^`\s]*)", lines[i])
        if not opening:
            i += 1
            continue
        fence, language, start = opening.group(2), opening.group(3).lower(), i
        body: list[str] = []
        i += 1
        while i < len(lines) and not re.match(
            rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[i]
        ):
            body.append(lines[i])
            i += 1
        found.append(Block(start + 1, language, "\n".join(body) + "\n"))
        i += 1
    return found


def interruptible(code: str) -> str:
    """Lines that say ``Ctrl-C`` in their comment, run under ``--ctrl-c`` (SIGINT once ready)."""
    out = []
    for line in code.splitlines():
        if re.search(r"#.*\bCtrl-C\b", line) and not line.lstrip().startswith("#"):
            wrapper = [sys.executable, str(CTRL_C), str(CTRL_C_AFTER_S)]
            for start, pattern in READY.items():
                if line.lstrip().startswith(start):
                    wrapper += ["--ready", pattern, "--ready-timeout", str(READY_TIMEOUT_S)]
            line = f"{shlex.join(wrapper)} -- {line.lstrip()}"
        out.append(line)
    return "\n".join(out) + "\n"


class Ran(NamedTuple):
    returncode: int | None  # None: it timed out
    stdout: str
    stderr: str
    left: list[str]  # the processes it left running (stopped since), "pid: command"


def stop_leftovers(group: int, marker: str) -> list[str]:
    """Stop what a block left: SIGTERM to its process group and to every process carrying
    its marker, SIGKILL after ``STOP_GRACE_S``; what was left ("pid: command")."""
    return stop_marked(marker, STOP_GRACE_S, group=group)


def run_block(args: Sequence[str], *, cwd: Path, env: dict[str, str], timeout: float) -> Ran:
    """``args`` in a session of its own with a fresh marker; nothing it started outlives it.
    Its output goes to files, not pipes: what it leaves running may hold them open, and the
    block is done when its process exits."""
    marker = uuid.uuid4().hex
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(
            args, cwd=cwd, env={**env, MARKER: marker}, stdin=subprocess.DEVNULL,
            stdout=out, stderr=err, start_new_session=True,
        )  # fmt: skip
        try:
            code: int | None = child.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:  # a timeout, an error here, or done: what is left is stopped
            left = stop_leftovers(child.pid, marker)
            if child.poll() is None:
                child.kill()
            child.wait(10)

        def text(f: IO[bytes]) -> str:
            f.seek(0)
            return f.read().decode(errors="replace")

        return Ran(code, text(out), text(err), left)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``fenliu-server`` process (its console script) on a free port."""
    where = tmp_path_factory.mktemp("readme-server")
    log = where / "server.log"
    args = [str(BIN / "fenliu-server"), "--port", "0", "--data-dir", str(where / "data")]
    with log.open("wb") as sink:
        child = subprocess.Popen(args + ["--grace", "1"], stderr=sink, cwd=where)
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"fenliu serving on (127\.0\.0\.1:\d+)", log.read_text())):
            assert child.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        yield found.group(1)
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 0
        assert "Traceback" not in log.read_text()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


def test_every_block_is_run_or_listed_with_a_reason() -> None:
    found = blocks(README.read_text())
    assert found, "the README has no code blocks?"
    for block in found:
        assert block.language in RUN_LANGUAGES or block.not_run, (
            f"README.md line {block.line}: a {block.language or 'plain'} block that is neither "
            f"run nor listed in NOT_RUN (tests/test_readme.py) with a reason"
        )
    stale = {key for key in NOT_RUN if not any(b.first_line.startswith(key) for b in found)}
    assert not stale, f"NOT_RUN names blocks the README no longer has: {stale}"
    wrapped = [line for b in found for line in interruptible(b.code).splitlines()]
    unready = {k for k in READY if not any(f"-- {k}" in line for line in wrapped)}
    assert not unready, f"READY names Ctrl-C commands the README no longer has: {unready}"


def test_the_readme_commands_and_snippets_run_as_written(server: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(BIN.parent),
        "FENLIU_TARGET": server,
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("FENLIU_TOKEN", None)
    ran: list[tuple[Block, str]] = []
    for block in blocks(README.read_text()):
        if block.not_run or block.language not in RUN_LANGUAGES:
            continue
        if block.language == "bash":
            args = ["bash", "-euo", "pipefail", "-c", interruptible(block.code)]
        else:
            args = [str(BIN / "python"), "-c", block.code.replace(DEFAULT_TARGET, server)]
        done = run_block(args, cwd=tmp_path, env=env, timeout=BLOCK_TIMEOUT_S)
        where = f"README.md line {block.line} ({block.language})"
        assert done.returncode is not None, (
            f"{where} still ran after {BLOCK_TIMEOUT_S}s (stopped, with what it started: "
            f"{done.left}):\n{done.stdout}\n{done.stderr}"
        )
        assert not done.left, (
            f"{where} left processes running (stopped since): {done.left}\n{done.stderr}"
        )
        assert done.returncode == 0, f"{where} failed:\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, f"{where}:\n{done.stderr}"
        ran.append((block, done.stdout))
    assert ran
    snippet = [out for block, out in ran if block.language == "python"]
    # The Python tour prints names, not enum numbers (issue 15: it printed "1 bob 8").
    assert snippet and re.fullmatch(r"ASSIGNED \S+ [A-Z_]+\n", snippet[0]), snippet
    tour = [out for block, out in ran if "fenliu route shop1 buyer1" in block.code]
    assert tour and "ASSIGNED" in tour[0] and "OPEN_SESSION" in tour[0]


def test_a_block_is_stopped_with_everything_it_started(tmp_path: Path) -> None:
    """What a block leaves (here a process in a session of its own, as the local cluster's
    engines are, and one reparented to init) is found by the marker, reported and stopped;
    a block past its timeout is stopped with its whole process group."""
    env = dict(os.environ)
    left = run_block(
        ["bash", "-c", "setsid sleep 600 & echo $!; (sleep 601 & echo $!)"],
        cwd=tmp_path, env=env, timeout=60,
    )  # fmt: skip
    assert left.returncode == 0, left
    pids = sorted(int(line) for line in left.stdout.split())
    assert sorted(int(entry.split(":")[0]) for entry in left.left) == pids, left
    assert all("sleep" not in command(pid) for pid in pids), [command(p) for p in pids]

    hung = run_block(["bash", "-c", "sleep 602 & sleep 603"], cwd=tmp_path, env=env, timeout=1)
    assert hung.returncode is None, hung
    commands = sorted(entry.split(": ", 1)[1] for entry in hung.left)
    assert commands == ["bash -c sleep 602 & sleep 603", "sleep 602", "sleep 603"], hung

    clean = run_block(["bash", "-c", "sleep 0.1 & wait"], cwd=tmp_path, env=env, timeout=60)
    assert clean == Ran(0, "", "", []), clean

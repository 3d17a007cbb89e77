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
  ``timeout --preserve-status -s INT`` and expects it to stop cleanly (exit 0) on Ctrl-C.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
DEFAULT_TARGET = "127.0.0.1:50051"
CTRL_C_AFTER_S = 3
BLOCK_TIMEOUT_S = 120

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
    """Lines that say ``Ctrl-C`` in their comment, run under a timeout that sends SIGINT."""
    out = []
    for line in code.splitlines():
        if re.search(r"#.*\bCtrl-C\b", line) and not line.lstrip().startswith("#"):
            line = f"timeout --preserve-status -s INT {CTRL_C_AFTER_S} {line}"
        out.append(line)
    return "\n".join(out) + "\n"


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
        done = subprocess.run(
            args, cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=BLOCK_TIMEOUT_S,
        )  # fmt: skip
        where = f"README.md line {block.line} ({block.language})"
        assert done.returncode == 0, f"{where} failed:\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, f"{where}:\n{done.stderr}"
        ran.append((block, done.stdout))
    assert ran
    snippet = [out for block, out in ran if block.language == "python"]
    # The Python tour prints names, not enum numbers (issue 15: it printed "1 bob 8").
    assert snippet and re.fullmatch(r"ASSIGNED \S+ [A-Z_]+\n", snippet[0]), snippet
    tour = [out for block, out in ran if "fenliu route shop1 buyer1" in block.code]
    assert tour and "ASSIGNED" in tour[0] and "OPEN_SESSION" in tour[0]

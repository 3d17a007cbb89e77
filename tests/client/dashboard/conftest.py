"""Real processes for the dashboard's tests: ``fenliu-server``, ``fenliu-dashboard`` and
Debian's headless Chromium driven by Playwright (installed here when it is missing)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from fenliu.client import Client

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
BIN = Path(sys.executable).parent
expect.set_options(timeout=5_000)  # a step that waits longer has its own timeout


class Process:
    """A child process whose stderr is read by a thread (so it never blocks on a full
    pipe) until it logs the line ``ready`` matches; ``port`` is that line's port."""

    def __init__(self, args: list[str], ready: str) -> None:
        self.args = args
        self.lines: list[str] = []
        self._ready = re.compile(ready)
        self.port = 0
        self.child: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30) -> Process:
        found = threading.Event()
        child = subprocess.Popen(self.args, stderr=subprocess.PIPE, text=True)
        self.child = child

        def read() -> None:
            assert child.stderr is not None
            for line in child.stderr:
                self.lines.append(line)
                match = self._ready.search(line)
                if match and not found.is_set():
                    self.port = int(match.group(1))
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(timeout) or child.poll() is not None:
            self.stop()
            raise AssertionError(f"{self.args[0]} did not start:\n{''.join(self.lines)}")
        return self

    def stop(self) -> None:
        child, self.child = self.child, None
        if child is None:
            return
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
        if child.stderr is not None:
            child.stderr.close()


def fenliu_server(data_dir: Path, port: int = 0) -> Process:
    args = [str(BIN / "fenliu-server"), "--port", str(port), "--data-dir", str(data_dir)]
    args += ["--shards", "2", "--grace", "1"]
    return Process(args, r"fenliu serving on 127\.0\.0\.1:(\d+)$")


def dashboard(target: str, port: int = 0) -> Process:
    args = [str(BIN / "fenliu-dashboard"), "--fenliu", target, "--port", str(port)]
    return Process(args, r"fenliu-dashboard serving on http://127\.0\.0\.1:(\d+) ")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, installed by this fixture when missing (``.ci/run`` installs it
    up front); Playwright drives it through ``executable_path``, never its own download."""
    if not CHROMIUM.exists():
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "chromium"], check=True, env=env)
    assert CHROMIUM.exists(), "apt-get installed no /usr/bin/chromium"
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[Browser]:
    # Module scope: Playwright's sync API marks an event loop as running in this thread
    # while it is started, which would break asyncio.run() in the tests that follow.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"the page's script failed: {errors}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """A real fenliu-server process with its own data directory."""
    process = fenliu_server(tmp_path_factory.mktemp("fenliu") / "data").start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def target(server: Process) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def board(target: str) -> Iterator[Process]:
    """The real fenliu-dashboard process, a client of that server."""
    process = dashboard(target).start()
    yield process
    process.stop()


@pytest.fixture
def fenliu(target: str) -> Iterator[Client]:
    with Client(target) as client:
        yield client


@pytest.fixture
def shop() -> str:
    """A shop of its own for each test."""
    return f"shop-{uuid.uuid4().hex[:8]}"

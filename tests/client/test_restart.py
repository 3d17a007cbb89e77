"""The SDK across a real server restart, retry budgets, and where an AsyncClient may be made.

The restart test runs ``python -m fenliu.server`` as a real process on a data directory,
stops it with SIGTERM while a client routes, waits 0.7 s and starts it again on the same
port and directory. Starting a Python process takes a second or more on a busy machine,
so the client's deadline and retry budget are generous; the point is that ``route``
never surfaces the outage (today's retries gave up after ~0.35 s).
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fenliu.client import AsyncClient, Client, FenliuError, Status, Unavailable
from fenliu.client.testing import running_server

from .test_retries import Flaky, serve

START_TIMEOUT_S = 60.0
MAX_ROUTES = 5_000


def start(data: Path, log: Path, port: int = 0) -> tuple[subprocess.Popen[bytes], int]:
    args = [sys.executable, "-m", "fenliu.server", "--port", str(port), "--grace", "1"]
    args += ["--data-dir", str(data), "--gc-freeze-interval", "0"]
    with log.open("wb") as sink:  # the child has its own copy of the descriptor
        child = subprocess.Popen(args, stderr=sink, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = re.search(r"fenliu serving on 127\.0\.0\.1:(\d+)", log.read_text())
        if found:
            return child, int(found.group(1))
        if child.poll() is not None:
            raise AssertionError(f"the server exited {child.returncode}: {log.read_text()}")
        time.sleep(0.05)
    child.kill()
    raise AssertionError("the server did not start")


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait(10)


@pytest.mark.slow
def test_route_sees_no_error_across_a_server_restart(
    tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    data = tmp_path / "data"
    first, port = start(data, tmp_path / "first.log")
    children.append(first)
    errors: list[FenliuError] = []
    durations: list[float] = []
    decisions = []
    restarted = threading.Event()

    def gateway() -> None:
        with Client(f"127.0.0.1:{port}", timeout=START_TIMEOUT_S,
                    retry_budget=START_TIMEOUT_S) as fenliu:  # fmt: skip
            fenliu.register_agent("shop", "main", max_concurrent=10_000, status=Status.ONLINE)
            after = 0
            for i in range(MAX_ROUTES):
                began = time.monotonic()
                try:
                    decisions.append(fenliu.route("shop", f"buyer{i}"))
                except FenliuError as exc:
                    errors.append(exc)
                durations.append(time.monotonic() - began)
                after += restarted.is_set()
                if after >= 20:  # a few calls on the new process, then stop
                    return

    thread = threading.Thread(target=gateway)
    thread.start()
    while len(durations) < 20 and thread.is_alive():  # routing is under way
        time.sleep(0.01)
    first.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0
    time.sleep(0.7)
    second, _ = start(data, tmp_path / "second.log", port)
    children.append(second)
    restarted.set()
    thread.join(START_TIMEOUT_S * 2)
    assert not thread.is_alive()
    assert errors == []
    assert max(durations) >= 0.7  # a call did span the outage, retried through it
    assert len(decisions) >= 40
    with Client(f"127.0.0.1:{port}") as fenliu:  # the decisions before the restart survived
        assert fenliu.list_team("shop")[0].load == len(decisions)
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0


def test_idempotent_calls_retry_for_the_time_budget_not_a_fixed_count() -> None:
    servicer = Flaky(failures=8)  # more than the 3 retries the SDK used to make
    server, target = serve(servicer)
    try:
        with Client(target, backoff=0.001, retry_budget=30) as fenliu:
            assert fenliu.route("shop", "buyer").outcome
        assert len(servicer.seen["Route"]) == 9
        with Client(target, backoff=0.001, retry_budget=0) as fenliu:
            with pytest.raises(Unavailable):  # no budget: one attempt only
                fenliu.transfer("shop", "s1", to_agent_id="a")
            servicer.seen.clear()
            with pytest.raises(Unavailable):
                fenliu.route("shop", "buyer")
        assert len(servicer.seen["Route"]) == 1
    finally:
        server.stop(None)


def test_an_async_client_made_outside_a_running_loop_works() -> None:
    with running_server() as target:
        fenliu = AsyncClient(target)  # no loop runs here

        async def scenario() -> int:
            async with fenliu:
                await fenliu.register_agent("shop", "main", max_concurrent=1, status="online")
                await fenliu.route("shop", "buyer")
                return (await fenliu.list_team("shop"))[0].load

        assert asyncio.run(scenario()) == 1


def test_an_async_client_used_on_a_second_loop_says_so() -> None:
    with running_server() as target:
        fenliu = AsyncClient(target)

        async def first() -> None:
            await fenliu.register_agent("shop", "main")

        async def second() -> None:
            await fenliu.list_team("shop")

        asyncio.run(first())
        with pytest.raises(RuntimeError, match="another event loop"):
            asyncio.run(second())

"""The open-loop driver's pacing: ``sleep_until`` never returns before the time it was
given, on uvloop (whose short sleeps return early) as on asyncio. Asserts order only,
never how late it returns."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import loadgen  # noqa: E402

DELAYS_S = [0.0, 0.0001, 0.0003, 0.0007, 0.0012, 0.0015, 0.002, 0.005, 0.012]


async def _early_wakes() -> list[float]:
    """For each delay, several times: how much before its time ``sleep_until`` returned
    (0 when on time or late)."""
    early = []
    for _ in range(20):
        for delay in DELAYS_S:
            when = time.perf_counter() + delay
            returned = await loadgen.sleep_until(when)
            early.append(max(0.0, when - time.perf_counter()))
            assert returned >= when
    return early


@pytest.mark.parametrize("run", [uvloop.run, asyncio.run], ids=["uvloop", "asyncio"])
def test_sleep_until_never_returns_early(
    run: Callable[[Coroutine[Any, Any, list[float]]], list[float]],
) -> None:
    assert max(run(_early_wakes())) == 0.0


def test_other_tasks_run_while_it_waits() -> None:
    async def scenario() -> int:
        ticks = 0

        async def other() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(other())
        await loadgen.sleep_until(time.perf_counter() + 0.0005)  # the spin, not the sleep
        task.cancel()
        return ticks

    assert uvloop.run(scenario()) > 0


@pytest.mark.parametrize("run", [uvloop.run, asyncio.run], ids=["uvloop", "asyncio"])
def test_a_ticker_wakes_every_interval_without_spinning(
    run: Callable[[Coroutine[Any, Any, tuple[float, float]]], tuple[float, float]],
) -> None:
    """The paced RouteStream's clock (``loadgen.Ticker``, a timerfd): 100 ticks of 0.8 ms
    take at least their 80 ms (a tick is never early), and the process sleeps between them
    rather than yielding in a loop (``sleep_until``'s spin): its CPU is a fraction of the
    wall time. Generous (a loaded machine only lowers the CPU share and delays ticks)."""

    async def scenario() -> tuple[float, float]:
        ticker = loadgen.Ticker(0.0008)
        start, cpu = time.perf_counter(), time.process_time()
        try:
            for _ in range(100):
                await ticker.wait()
        finally:
            ticker.close()
        return time.perf_counter() - start, time.process_time() - cpu

    wall, cpu = run(scenario())
    assert wall >= 0.079
    assert cpu < 0.3 * wall


def test_a_ticker_lets_other_tasks_run_and_closes_its_timer() -> None:
    async def scenario() -> tuple[int, int]:
        done = 0

        async def other() -> None:
            nonlocal done
            for _ in range(10):
                await asyncio.sleep(0.001)
                done += 1

        ticker = loadgen.Ticker(0.001)
        task = asyncio.ensure_future(other())
        while not task.done():
            await ticker.wait()
        fd = ticker._fd
        ticker.close()
        return done, fd

    done, fd = uvloop.run(scenario())
    assert done == 10
    assert fd >= 0  # Linux: a timerfd, not the coarse asyncio.sleep fallback
    with pytest.raises(OSError):
        os.fstat(fd)  # closed

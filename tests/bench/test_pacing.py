"""The open-loop driver's pacing: ``sleep_until`` never returns before the time it was
given, on uvloop (whose short sleeps return early) as on asyncio. Asserts order only,
never how late it returns."""

from __future__ import annotations

import asyncio
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

"""Core micro-benchmarks (pytest-benchmark), kept out of the default test run.

    pytest bench/micro --benchmark-enable --benchmark-group-by=group

Each benchmark times routing in-process: a new buyer assigned by the shop strategy,
with its session ended in the same round so the shop stays in a steady state (two
commands per round), and a message on an open session (rule 2, one command).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.types import EndSessions, RegisterAgent, Route, Status

T0 = 1_700_000_000_000


def build(agents: int, shops: int = 1) -> Dispatcher:
    d = Dispatcher()
    for s in range(shops):
        for a in range(agents if s == 0 else 2):
            d.execute(
                RegisterAgent(
                    at=T0,
                    shop_id=f"shop{s}",
                    agent_id=f"a{a}",
                    max_concurrent=10_000,
                    status=Status.ONLINE,
                )
            )
    return d


def route_and_end(d: Dispatcher) -> Callable[[], None]:
    """One new buyer routed by the strategy, then its session ended (steady state)."""
    ids = itertools.count()

    def run() -> None:
        n = next(ids)
        decision = d.execute(Route(at=T0, shop_id="shop0", buyer_id=f"b{n}", request_id=f"r{n}"))
        d.execute(EndSessions(at=T0, shop_id="shop0", session_ids=(decision.session_id,)))
        d.drain_events()

    return run


@pytest.mark.parametrize("agents", [10, 100, 1000])
def test_new_buyer_decision(benchmark, agents: int) -> None:
    benchmark.group = "new buyer (route + end)"
    benchmark(route_and_end(build(agents)))


@pytest.mark.parametrize("shops", [10, 100_000])
def test_new_buyer_decision_many_shops(benchmark, shops: int) -> None:
    benchmark.group = "new buyer (route + end), shops"
    benchmark(route_and_end(build(10, shops)))


@pytest.mark.parametrize("agents", [10, 1000])
def test_open_session_message(benchmark, agents: int) -> None:
    benchmark.group = "open session (rule 2)"
    d = build(agents)
    for b in range(agents):
        d.execute(Route(at=T0, shop_id="shop0", buyer_id=f"b{b}", request_id=f"first{b}"))
    d.drain_events()
    ids = itertools.count()

    def message() -> None:
        n = next(ids)
        d.execute(Route(at=T0, shop_id="shop0", buyer_id=f"b{n % agents}", request_id=f"r{n}"))

    benchmark(message)

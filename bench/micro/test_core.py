"""Core micro-benchmarks (pytest-benchmark), kept out of the default test run.

    pytest bench/micro --benchmark-enable -o testpaths=bench --benchmark-group-by=group \
        --benchmark-columns=median,mean,ops,rounds

Everything is in-process (``Dispatcher.execute``), no gRPC. "One decision" is one
``Route`` of a new buyer that the shop strategy assigns (rule 6); the session it opens is
ended by the untimed setup of the next round, so the shop stays in a steady state.
Also timed: the same with its end (two commands per round) and a message on an open
session (rule 2).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.types import EndSessions, RegisterAgent, Route, Status

T0 = 1_700_000_000_000
ROUNDS = 20_000


def build(agents: int, shops: int = 1) -> Dispatcher:
    """``agents`` agents in shop0, two in each other shop."""
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


def one_decision(benchmark: Any, d: Dispatcher) -> None:
    """Time one Route of a new buyer; the setup ends the previous round's session."""
    ids = itertools.count()
    last: list[str] = []

    def setup() -> tuple[tuple[Route], dict[str, Any]]:
        if last:
            d.execute(EndSessions(at=T0, shop_id="shop0", session_ids=(last.pop(),)))
        d.drain_events()
        n = next(ids)
        return (Route(at=T0, shop_id="shop0", buyer_id=f"b{n}", request_id=f"r{n}"),), {}

    def route(command: Route) -> None:
        last.append(d.execute(command).session_id)

    benchmark.pedantic(route, setup=setup, rounds=ROUNDS, warmup_rounds=1000)


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
def test_decision_agents(benchmark: Any, agents: int) -> None:
    benchmark.group = "one decision: new buyer, agents per shop"
    one_decision(benchmark, build(agents))


@pytest.mark.parametrize("shops", [10, 100_000])
def test_decision_shops(benchmark: Any, shops: int) -> None:
    benchmark.group = "one decision: new buyer, shops"
    one_decision(benchmark, build(10, shops))


@pytest.mark.parametrize("agents", [10, 1000])
def test_route_and_end(benchmark: Any, agents: int) -> None:
    benchmark.group = "new buyer, route + end (two commands)"
    benchmark(route_and_end(build(agents)))


@pytest.mark.parametrize("agents", [10, 1000])
def test_open_session_message(benchmark: Any, agents: int) -> None:
    benchmark.group = "one decision: open session (rule 2)"
    d = build(agents)
    for b in range(agents):
        d.execute(Route(at=T0, shop_id="shop0", buyer_id=f"b{b}", request_id=f"first{b}"))
    d.drain_events()
    ids = itertools.count()

    def message() -> None:
        n = next(ids)
        d.execute(Route(at=T0, shop_id="shop0", buyer_id=f"b{n % agents}", request_id=f"r{n}"))

    benchmark(message)

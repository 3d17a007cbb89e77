"""The agent heap orders entries exactly by the strategy key (its inlined copy included)."""

from __future__ import annotations

from fenliu.server.core.shop_heap import AgentHeap, strategy_key
from fenliu.server.core.state import Agent
from fenliu.server.core.types import Role, Status, Strategy


def agents() -> list[Agent]:
    out = []
    for reg, (load, new, last) in enumerate([(2, 1, 7), (1, 1, 9), (1, 0, 3), (3, 0, 1)], 1):
        agent = Agent(f"a{reg}", Role.SUB, (), 4, Status.ONLINE, reg)
        agent.load, agent.new_count, agent.last_assign = load, new, last
        out.append(agent)
    return out


def test_entries_follow_the_strategy_key_and_the_best_is_the_smallest_key() -> None:
    for strategy in Strategy:
        team = agents()
        heap = AgentHeap(strategy)
        heap.rebuild(team)
        for agent in team:
            assert heap.entry(agent)[:4] == strategy_key(strategy, agent)
        assert heap.best() is min(team, key=lambda a: strategy_key(strategy, a))
        best = heap.best()
        assert best is not None
        best.version += 1  # a change makes its entries stale: the next best comes up
        assert heap.best() is sorted(team, key=lambda a: strategy_key(strategy, a))[1]

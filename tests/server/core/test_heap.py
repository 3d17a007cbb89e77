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


def test_a_scanned_scope_picks_what_the_heap_picks_and_switches_at_its_limit() -> None:
    """Small scopes are scanned (compiled, SCAN_LIMIT), larger ones keep a heap: the same
    agent either way, for every strategy, through changes and across the switch."""
    for strategy in Strategy:
        members: dict[str, Agent] = {}
        scanned = AgentHeap(strategy, members, scan_limit=3)
        heap = AgentHeap(strategy)
        team = agents()
        for agent in team:  # the fourth member crosses the limit
            members[agent.agent_id] = agent
            if scanned.resize():
                scanned.rebuild(team[: len(members)])
            heap.push(agent)
            expected = min(members.values(), key=lambda a: strategy_key(strategy, a))
            assert scanned.scan is (len(members) <= 3)
            assert scanned.best() is heap.best() is expected
        for agent in team:  # changes: not eligible (full, offline), then others
            agent.load = agent.max_concurrent
            agent.version += 1
            del members[agent.agent_id]
            scanned.resize()
            rest = [a for a in members.values()]
            expected = min(rest, key=lambda a: strategy_key(strategy, a), default=None)
            assert scanned.best() is expected
        assert scanned.scan and scanned.entries == []


def test_a_scan_skips_agents_that_cannot_take_a_session() -> None:
    team = agents()
    members = {a.agent_id: a for a in team}
    scanned = AgentHeap(Strategy.LEAST_NEW, members, scan_limit=16)
    assert scanned.scan
    best = scanned.best()
    assert best is min(team, key=lambda a: strategy_key(Strategy.LEAST_NEW, a))
    best.status = Status.INVISIBLE  # receives, as ONLINE does
    assert scanned.best() is best
    best.status = Status.SUSPENDED
    second = scanned.best()
    assert second is not None and second is not best
    second.load = second.max_concurrent
    third = scanned.best()
    assert third is not None and third not in (best, second)
    for agent in team:
        agent.status = Status.OFFLINE
    assert scanned.best() is None

"""Per-shop, per-scope heaps of eligible agents, keyed by the shop's strategy.

Entries are ``(k1, k2, k3, reg, version, agent)``: the key first, the agent's unique
registration number as a tie-break so the agent itself is never compared (the shape of
dramatiq's ``_WorkQueueItem``). An entry is live while its version is the agent's
version; any change to an agent bumps its version and pushes a fresh entry if it is
still eligible, so stale entries are dropped lazily when they reach the top.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush
from typing import Any

from .state import Agent
from .types import Strategy

Entry = tuple[Any, int, int, int, int, Agent]
_LEAST_NEW, _LEAST_LOAD = Strategy.LEAST_NEW, Strategy.LEAST_LOAD  # enum attributes are slow


def strategy_key(strategy: Strategy, agent: Agent) -> tuple[Any, int, int, int]:
    """The ordering key of an agent: smaller is better."""
    if strategy is _LEAST_NEW:
        return (agent.new_count, agent.load, agent.last_assign, agent.reg)
    if strategy is _LEAST_LOAD:
        # Equal ratios give equal doubles (IEEE division is correctly rounded).
        return (agent.load / agent.max_concurrent, agent.last_assign, 0, agent.reg)
    return (agent.last_assign, 0, 0, agent.reg)


class AgentHeap:
    """The eligible agents of one scope, best first."""

    __slots__ = ("entries", "strategy")

    def __init__(self, strategy: Strategy) -> None:
        self.entries: list[Entry] = []
        self.strategy = strategy

    def entry(self, agent: Agent) -> Entry:
        """The agent's entry now: ``strategy_key`` (inlined: this is the hot path), version."""
        strategy = self.strategy
        if strategy is _LEAST_NEW:
            return (agent.new_count, agent.load, agent.last_assign, agent.reg, agent.version, agent)
        if strategy is _LEAST_LOAD:
            ratio = agent.load / agent.max_concurrent
            return (ratio, agent.last_assign, 0, agent.reg, agent.version, agent)
        return (agent.last_assign, 0, 0, agent.reg, agent.version, agent)

    def push(self, agent: Agent) -> None:
        heappush(self.entries, self.entry(agent))

    def best(self) -> Agent | None:
        """The best live agent, dropping stale entries on the way."""
        entries = self.entries
        while entries:
            entry = entries[0]
            agent = entry[5]
            if entry[4] == agent.version:
                return agent
            heappop(entries)
        return None

    def rebuild(self, agents: list[Agent]) -> None:
        entries = [self.entry(agent) for agent in agents]
        heapify(entries)
        self.entries = entries

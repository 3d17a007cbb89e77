"""Per-shop, per-scope choice of the best eligible agent, by the shop's strategy.

A scope of at most ``SCAN_LIMIT`` members is scanned: the best eligible member (ONLINE/
INVISIBLE, under capacity) by comparing the key fields in place, no entry made and none
to drop; compiled, a scan of a small team costs less than one heap push. A larger scope
keeps a heap of entries ``(k1, k2, k3, reg, version, agent)``: the key first, the agent's
unique registration number as a tie-break so the agent itself is never compared (the
shape of dramatiq's ``_WorkQueueItem``). An entry is live while its version is the
agent's version; any change to an agent bumps its version and pushes a fresh entry if it
is still eligible, so stale entries are dropped lazily when they reach the top. Both
pick the smallest ``strategy_key``.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush
from typing import Any, Final

from . import COMPILED
from .state import Agent
from .types import RECEIVING, Status, Strategy

Entry = tuple[Any, int, int, int, int, Agent]
_heapify: Final = heapify  # a module static, not a globals lookup per call (mypyc)
_heappop: Final = heappop
_heappush: Final = heappush
_LEAST_NEW: Final = Strategy.LEAST_NEW
_LEAST_LOAD: Final = Strategy.LEAST_LOAD  # enum attributes are slow
_ONLINE: Final = Status.ONLINE
_INVISIBLE: Final = Status.INVISIBLE
assert RECEIVING == (_ONLINE, _INVISIBLE)

SCAN_LIMIT: Final = 16 if COMPILED else 0
"""Scopes of at most this many members are scanned instead of keeping a heap. Interpreted,
a scan of 10 agents costs more than the heap (callgrind, bench/core_compiled.py): none."""


def strategy_key(strategy: Strategy, agent: Agent) -> tuple[Any, int, int, int]:
    """The ordering key of an agent: smaller is better."""
    if strategy is _LEAST_NEW:
        return (agent.new_count, agent.load, agent.last_assign, agent.reg)
    if strategy is _LEAST_LOAD:
        # Equal ratios give equal doubles (IEEE division is correctly rounded).
        return (agent.load / agent.max_concurrent, agent.last_assign, 0, agent.reg)
    return (agent.last_assign, 0, 0, agent.reg)


class AgentHeap:
    """The eligible agents of one scope, best first.

    ``members`` is the scope's member table (the shop's own dict); without one (None) the
    heap is always kept. ``scan`` says which way it works now (``resize`` switches at
    ``scan_limit`` members).
    """

    __slots__ = ("entries", "strategy", "members", "scan", "scan_limit", "pool")

    def __init__(
        self,
        strategy: Strategy,
        members: dict[str, Agent] | None = None,
        scan_limit: int = SCAN_LIMIT,
    ) -> None:
        self.entries: list[Entry] = []
        self.strategy = strategy
        self.members = members
        self.scan_limit = scan_limit
        self.scan = members is not None and len(members) <= scan_limit
        # the members as a list while scanned: compiled, a list walks faster than a dict
        self.pool: list[Agent] = list(members.values()) if members is not None else []

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
        _heappush(self.entries, self.entry(agent))

    def best(self) -> Agent | None:
        """The best eligible agent: scanned, or the heap's top with stale entries dropped."""
        if self.scan:
            return self.scanned()
        entries = self.entries
        while entries:
            entry = entries[0]
            agent = entry[5]
            if entry[4] == agent.version:
                return agent
            _heappop(entries)
        return None

    def scanned(self) -> Agent | None:
        """The best eligible member by comparing key fields: ``strategy_key``'s order."""
        strategy = self.strategy
        best: Agent | None = None
        for agent in self.pool:
            status = agent.status
            if (status is not _ONLINE and status is not _INVISIBLE) or (
                agent.load >= agent.max_concurrent
            ):
                continue
            if best is None:
                best = agent
            elif strategy is _LEAST_NEW:
                if agent.new_count != best.new_count:
                    if agent.new_count < best.new_count:
                        best = agent
                elif agent.load != best.load:
                    if agent.load < best.load:
                        best = agent
                elif agent.last_assign != best.last_assign:
                    if agent.last_assign < best.last_assign:
                        best = agent
                elif agent.reg < best.reg:
                    best = agent
            elif strategy is _LEAST_LOAD:
                ratio = agent.load / agent.max_concurrent
                best_ratio = best.load / best.max_concurrent
                if ratio != best_ratio:
                    if ratio < best_ratio:
                        best = agent
                elif agent.last_assign != best.last_assign:
                    if agent.last_assign < best.last_assign:
                        best = agent
                elif agent.reg < best.reg:
                    best = agent
            elif agent.last_assign != best.last_assign:
                if agent.last_assign < best.last_assign:
                    best = agent
            elif agent.reg < best.reg:
                best = agent
        return best

    def rebuild(self, agents: list[Agent]) -> None:
        if self.scan:
            self.entries = []
            return
        entries = [self.entry(agent) for agent in agents]
        _heapify(entries)
        self.entries = entries

    def resize(self) -> bool:
        """After members joined or left: whether the scope must be (re)built as a heap now."""
        members = self.members
        scan = members is not None and len(members) <= self.scan_limit
        switched = scan != self.scan
        self.scan = scan
        self.pool = list(members.values()) if scan and members is not None else []
        if scan:
            self.entries = []
        return switched and not scan

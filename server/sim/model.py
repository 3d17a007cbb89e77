"""Agents' behaviour: what an agent does with a session once it reaches them.

A ``Script`` is one holding of a session by an agent, as offsets in ms from the moment the
session reached the agent: when they acknowledge it (None: never, within the holding),
when they reply (each reply), when they end it (None: they did not; the session ended
otherwise, or was taken away by a timeout). Under a variant a session reaches other agents
at other times, so the simulator draws a script for each holding and plays it from then.

``Empirical`` is fitted to a recording: every holding the recording shows, per agent,
except the censored ones (taken away by an agent going offline, a transfer, or still open
when the recording ends: how they would have gone on is unknown). A draw takes one whole
recorded holding of the agent (its acknowledge, replies and end together, so their
correlation is kept); an agent with fewer than ``MIN_OWN`` holdings draws from the whole
shop's. ``Parametric`` draws from lognormal delays (the synthetic traffic model, and the
ground truth of the honesty check).

Draws are seeded per (seed, session, holding number): the same holding gets the same
draw under every policy that brings it about, so variants differ by the policy, not by
the luck of the draw.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Protocol

MIN_OWN = 10


@dataclass(frozen=True)
class Script:
    ack: int | None
    replies: tuple[int, ...]
    end: int | None


class Behaviour(Protocol):
    def script(self, agent_id: str, rng: random.Random) -> Script: ...


@dataclass
class Empirical:
    """Recorded holdings, per agent; see the module's docstring."""

    own: dict[str, list[Script]] = field(default_factory=dict)
    pooled: list[Script] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)  # an added agent -> its model

    def add(self, agent_id: str, script: Script) -> None:
        self.own.setdefault(agent_id, []).append(script)
        self.pooled.append(script)

    def script(self, agent_id: str, rng: random.Random) -> Script:
        pool = self.own.get(self.aliases.get(agent_id, agent_id))
        if pool is None or len(pool) < MIN_OWN:
            pool = self.pooled
        if not pool:
            return Script(None, (), None)
        return pool[int(rng.random() * len(pool))]

    def summary(self) -> dict[str, object]:
        def median(values: list[int]) -> float | None:
            if not values:
                return None
            values = sorted(values)
            return values[len(values) // 2] / 1000.0

        scripts = self.pooled
        return {
            "holdings": len(scripts),
            "agents_with_own_model": sum(len(p) >= MIN_OWN for p in self.own.values()),
            "acknowledged": sum(s.ack is not None for s in scripts),
            "median_ack_s": median([s.ack for s in scripts if s.ack is not None]),
            "median_first_reply_s": median([s.replies[0] for s in scripts if s.replies]),
            "median_end_s": median([s.end for s in scripts if s.end is not None]),
        }


def _lognormal(rng: random.Random, median_ms: float, sigma: float) -> int:
    return max(1, int(median_ms * math.exp(rng.gauss(0.0, sigma))))


@dataclass
class Parametric:
    """Lognormal delays around the medians given, each agent ``speed`` times slower or
    faster (drawn once per agent from a lognormal of ``spread``)."""

    ack_ms: float = 20_000
    first_reply_ms: float = 40_000
    reply_gap_ms: float = 60_000
    replies_mean: float = 2.0
    end_ms: float = 90_000
    p_ack: float = 0.97
    sigma: float = 0.6
    spread: float = 0.3
    seed: int = 1
    speeds: dict[str, float] = field(default_factory=dict)

    def speed(self, agent_id: str) -> float:
        speed = self.speeds.get(agent_id)
        if speed is None:
            speed = self.speeds[agent_id] = math.exp(
                random.Random(f"{self.seed}:{agent_id}").gauss(0.0, self.spread)
            )
        return speed

    def script(self, agent_id: str, rng: random.Random) -> Script:
        f = self.speed(agent_id)
        if rng.random() >= self.p_ack:
            return Script(None, (), None)
        ack = _lognormal(rng, self.ack_ms * f, self.sigma)
        at = ack + _lognormal(rng, self.first_reply_ms * f, self.sigma)
        replies = [at]
        while rng.random() < 1.0 - 1.0 / max(1.0, self.replies_mean):
            at += _lognormal(rng, self.reply_gap_ms * f, self.sigma)
            replies.append(at)
        return Script(ack, tuple(replies), at + _lognormal(rng, self.end_ms * f, self.sigma))


@dataclass
class Harness:
    """The load harness's agents (``bench/loadgen.py``'s churn) on a minutes clock: 80% of
    sessions are acknowledged and replied to at about half the hold, every one is ended at
    about the hold; each agent a little slower or faster than the others."""

    hold_ms: float = 6 * 60_000
    p_answer: float = 0.8
    jitter: float = 0.5
    seed: int = 1
    speeds: dict[str, float] = field(default_factory=dict)

    def script(self, agent_id: str, rng: random.Random) -> Script:
        f = self.speeds.get(agent_id)
        if f is None:
            f = self.speeds[agent_id] = math.exp(
                random.Random(f"{self.seed}:{agent_id}").gauss(0.0, 0.3)
            )
        j = self.jitter
        half = self.hold_ms / 2 * f * rng.uniform(1 - j, 1 + j)
        end = int(self.hold_ms * f * rng.uniform(1 - j / 2, 1 + j / 2))
        if rng.random() >= self.p_answer:
            return Script(None, (), end)
        return Script(
            int(half), (int(half) + rng.randint(1_000, 5_000),), max(end, int(half) + 6_000)
        )

"""A synthetic traffic model: a shop's day without a recording.

Arrivals are Poisson with a daily profile (quiet at night, peaks late morning and
evening) scaled to ``sessions`` over ``hours``, times ``burst_factor`` inside each burst;
a buyer sends a few follow-up messages within the first minutes and gives up waiting
after ``patience`` (exponential). Agents work shifts (each agent one of ``shifts``, in
turn), go ONLINE at its start and OFFLINE at its end; ``status_churn_per_hour`` of them
step away (SUSPENDED) for a few minutes now and then. A ``vip`` share of buyers carry the
crowd ``vip`` (for priority-crowd variants).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from ..core import types as t
from .engine import Traffic

DAY_START = 1_794_412_800_000
"""2026-11-11 00:00 Asia/Shanghai, in ms since the epoch: where synthetic days begin."""


def _profile(hour: float) -> float:
    """The relative arrival rate at ``hour`` of the day (mean about 1)."""
    morning = math.exp(-(((hour - 10.5) / 2.5) ** 2))
    evening = math.exp(-(((hour - 21.0) / 2.0) ** 2))
    return 0.25 + 1.2 * morning + 1.4 * evening


@dataclass
class Model:
    shop_id: str = "shop"
    agents: int = 50
    max_concurrent: int = 5
    sessions: int = 20_000
    hours: float = 24.0
    bursts: tuple[tuple[float, float], ...] = ((20.0, 30.0),)  # (start hour, minutes)
    burst_factor: float = 3.0
    shifts: tuple[tuple[float, float], ...] = ((0.0, 24.0),)
    followups: float = 1.0  # mean follow-up messages per buyer, within the first minutes
    patience_s: float = 600.0
    status_churn_per_hour: float = 0.0
    vip: float = 0.0
    flat: bool = False  # no daily profile: a constant rate (and the bursts)
    seed: int = 1
    start: int = DAY_START
    extra: dict[str, str] = field(default_factory=dict)

    def rate(self, hour: float) -> float:
        base = 1.0 if self.flat else _profile(hour % 24)
        for start, minutes in self.bursts:
            if start <= hour < start + minutes / 60:
                return base * self.burst_factor
        return base


def parse_model(text: str) -> Model:
    """``key=value,...``: agents, max, sessions, hours, shifts (``8-20+12-24``), bursts
    (``20@30m+11@10m``: start hour @ length), burst_factor, followups, patience (s),
    churn (status changes an hour), vip (share), flat (1), seed."""
    m = Model()
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        key, value = key.strip(), value.strip()
        try:
            if key == "agents":
                m.agents = int(value)
            elif key == "max":
                m.max_concurrent = int(value)
            elif key == "sessions":
                m.sessions = int(value)
            elif key == "hours":
                m.hours = float(value)
            elif key == "shifts":
                m.shifts = tuple(
                    (float(a), float(b)) for a, b in (s.split("-") for s in value.split("+"))
                )
            elif key == "bursts":
                m.bursts = tuple(
                    (float(h), float(length.rstrip("m")))
                    for h, length in (b.split("@") for b in value.split("+") if b)
                )
            elif key == "burst_factor":
                m.burst_factor = float(value)
            elif key == "followups":
                m.followups = float(value)
            elif key == "patience":
                m.patience_s = float(value)
            elif key == "churn":
                m.status_churn_per_hour = float(value)
            elif key == "vip":
                m.vip = float(value)
            elif key == "flat":
                m.flat = value not in ("0", "false", "no")
            elif key == "seed":
                m.seed = int(value)
            elif key == "shop":
                m.shop_id = value
            else:
                raise ValueError(f"--synthetic: unknown key {key!r}")
        except (TypeError, ValueError) as exc:
            if "unknown key" in str(exc):
                raise
            raise ValueError(f"--synthetic {key}: {value!r} does not read ({exc})") from None
    return m


def traffic(m: Model) -> Traffic:
    """The model's outside world: team, shifts, statuses, buyers' messages and patience."""
    rng = random.Random(m.seed)
    start, span = m.start, int(m.hours * t.HOUR)
    end = start + span
    shop = m.shop_id
    out: list[tuple[int, int, t.Command]] = []  # (at, order, command)
    n = 0

    def add(at: int, command: t.Command) -> None:
        nonlocal n
        n += 1
        out.append((at, n, command))

    add(start, t.SetPolicy(at=start, shop_id=shop, change=t.PolicyChange()))
    for i in range(m.agents):
        agent = f"a{i}"
        begin, stop = m.shifts[i % len(m.shifts)]
        on = begin <= 0 < stop
        add(
            start,
            t.RegisterAgent(
                at=start,
                shop_id=shop,
                agent_id=agent,
                role=t.Role.MAIN if i == 0 else t.Role.SUB,
                max_concurrent=m.max_concurrent,
                status=t.Status.ONLINE if on else t.Status.OFFLINE,
            ),
        )
        day = 0.0
        while day * 24 < m.hours:
            for hour, status in ((begin, t.Status.ONLINE), (stop, t.Status.OFFLINE)):
                at = start + int((day * 24 + hour) * t.HOUR)
                if start < at < end:
                    add(at, t.SetStatus(at=at, shop_id=shop, agent_id=agent, status=status))
            day += 1
    if m.status_churn_per_hour > 0 and m.agents:
        at = start
        while True:
            at += int(rng.expovariate(m.status_churn_per_hour) * t.HOUR)
            if at >= end:
                break
            i = rng.randrange(m.agents)
            begin, stop = m.shifts[i % len(m.shifts)]
            hour = ((at - start) / t.HOUR) % 24
            if not begin <= hour < stop:
                continue
            back = at + int(rng.uniform(2, 8) * t.MINUTE)
            if ((back - start) / t.HOUR) % 24 >= stop or back >= end:
                continue
            away = t.Status.SUSPENDED if rng.random() < 0.7 else t.Status.OFFLINE
            add(at, t.SetStatus(at=at, shop_id=shop, agent_id=f"a{i}", status=away))
            add(back, t.SetStatus(at=back, shop_id=shop, agent_id=f"a{i}", status=t.Status.ONLINE))
    # arrivals: thinning against the peak rate
    hours = [h / 4 for h in range(int(m.hours * 4) + 1)]
    mean = sum(m.rate(h) for h in hours) / len(hours)
    per_ms = m.sessions / (span * mean) if span else 0.0
    peak = per_ms * max(m.rate(h) for h in (*hours, *(b for b, _ in m.bursts))) * 1.05
    abandons: list[tuple[int, str]] = []
    at_f = float(start)
    buyer = 0
    while peak > 0:
        at_f += rng.expovariate(peak)
        if at_f >= end:
            break
        if rng.random() * peak >= per_ms * m.rate((at_f - start) / t.HOUR):
            continue
        at = int(at_f)
        buyer += 1
        crowds = ("vip",) if m.vip and rng.random() < m.vip else ()
        bid = f"b{buyer}"
        add(
            at,
            t.Route(
                at=at,
                shop_id=shop,
                buyer_id=bid,
                request_id=f"r{buyer}",
                channel="item_page",
                crowds=crowds,
            ),
        )
        follow = at
        k = 0
        while m.followups and rng.random() < m.followups / (1 + m.followups):
            k += 1
            follow += int(rng.uniform(10, 60) * 1000)
            if follow < end:
                add(
                    follow,
                    t.Route(
                        at=follow,
                        shop_id=shop,
                        buyer_id=bid,
                        request_id=f"r{buyer}.{k}",
                        channel="item_page",
                        crowds=crowds,
                    ),
                )
        if m.patience_s > 0:
            abandons.append((at + int(rng.expovariate(1 / m.patience_s) * 1000), bid))
    out.sort(key=lambda x: (x[0], x[1]))
    return Traffic(shop, start, end, [c for _, _, c in out], sorted(abandons))

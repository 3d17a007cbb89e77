"""The simulator: the real core (``Dispatcher``) in fast-forward on a simulated clock.

What comes from outside the shop's agents is kept as recorded (``Traffic.external``):
buyers' messages (``Route``), buyers leaving, agents' status changes, registrations, policy
changes. What agents do with a session once it reaches them (acknowledge, reply, end) is
drawn from a behaviour model (``model.py``) when the core assigns it, and played from
then. The core's timers fire at their exact due times (``Dispatcher.next_due``).

``replay`` runs a recording verbatim instead (every command as journaled, ticks
included): the core is deterministic, so that gives the recorded figures, and it is where
the behaviour model is fitted (``analyse``).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ..core import types as t
from ..core.dispatcher import Dispatcher
from ..core.errors import FenliuError
from ..core.stats import FAST_REPLY_MS
from .model import Behaviour, Empirical, Script
from .recording import Recording

SAMPLE_MS = t.MINUTE
"""How often the queue length and agents' loads are sampled."""

_AGENT_ACTIONS = (t.Acknowledge, t.Reply, t.EndSessions, t.Transfer, t.Pick, t.StarSession)
_WAITING = (t.State.QUEUED, t.State.LEFT_MESSAGE, t.State.BACKLOG)


@dataclass
class Traffic:
    """The outside world of one shop: commands in time order, and buyers leaving
    (``abandons``: (time, buyer): the buyer gives up if still waiting then)."""

    shop_id: str
    start: int
    end: int
    external: list[t.Command]
    abandons: list[tuple[int, str]] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  # recorded actions not replayed


# ---------------------------------------------------------------- variants


@dataclass
class Variant:
    """A change to the recorded world: policy fields, agents' max reception (``max_all``:
    "8" for all, "+3" for all +3; ``max_agent``: per agent), agents added (copies of the
    recorded ones, their shifts and behaviour) or removed (the last registered)."""

    name: str = "baseline"
    policy: dict[str, Any] = field(default_factory=dict)
    max_all: str = ""
    max_agent: dict[str, int] = field(default_factory=dict)
    add_agents: int = 0
    remove_agents: int = 0

    def max_for(self, agent_id: str, recorded: int) -> int:
        if agent_id in self.max_agent:
            return self.max_agent[agent_id]
        if self.max_all.startswith(("+", "-")):
            return max(0, recorded + int(self.max_all))
        if self.max_all:
            return int(self.max_all)
        return recorded


_DURATIONS = {"ms": 1, "s": 1000, "m": t.MINUTE, "h": t.HOUR}
_ENUMS: dict[str, Any] = {
    "strategy": t.Strategy,
    "queue_order": t.QueueOrder,
    "on_queue_full": t.OnQueueFull,
}
_ALIASES = {
    "accept_timeout": "accept_timeout_ms",
    "reply_timeout": "reply_timeout_ms",
    "idle_end_timeout": "idle_end_timeout_ms",
    "queue_wait_limit": "queue_wait_limit_ms",
    "sticky_window": "sticky_window_ms",
}


def _duration(text: str, key: str) -> int:
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return int(float(text[: -len(unit)]) * _DURATIONS[unit])
    if text.isdigit():
        return int(text)
    raise ValueError(f"--variant {key}: {text!r} is not a duration (such as 90s, 5m, 1h)")


def parse_variant(text: str) -> Variant:
    """``[NAME:]key=value,key=value``; keys: strategy, queue_order, queue_limit,
    on_queue_full, accept_timeout, reply_timeout, idle_end_timeout, queue_wait_limit,
    priority_crowds (``vip+svip``), max (``8``, ``+3``), max.AGENT (``8``), agents
    (``+5``, ``-2``)."""
    name, _, spec = text.rpartition(":") if ":" in text else ("", "", text)
    v = Variant(name=name or spec)
    fields = set(t.PolicyChange.__struct_fields__)
    for item in filter(None, spec.split(",")):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        value = value.strip()
        if not eq or not value:
            raise ValueError(f"--variant: {item!r} is not key=value")
        if key == "max":
            if not value.lstrip("+-").isdigit():
                raise ValueError(f"--variant max: {value!r} is not N, +N or -N")
            v.max_all = value
        elif key.startswith("max."):
            if not value.isdigit():
                raise ValueError(f"--variant {key}: {value!r} is not a number")
            v.max_agent[key[4:]] = int(value)
        elif key == "agents":
            if not value.lstrip("+-").isdigit() or value[0] not in "+-":
                raise ValueError(f"--variant agents: {value!r} is not +N or -N")
            n = int(value)
            v.add_agents, v.remove_agents = max(0, n), max(0, -n)
        elif key in _ENUMS:
            try:
                v.policy[key] = _ENUMS[key][value.upper().replace("-", "_")]
            except KeyError:
                choices = ", ".join(m.name.lower().replace("_", "-") for m in _ENUMS[key])
                raise ValueError(f"--variant {key}: {value!r} is not one of: {choices}") from None
        elif key == "priority_crowds":
            v.policy[key] = tuple(c for c in value.split("+") if c)
        elif _ALIASES.get(key, key) in fields and _ALIASES.get(key, key).endswith("_ms"):
            v.policy[_ALIASES.get(key, key)] = _duration(value, key)
        elif key == "queue_limit":
            if not value.isdigit():
                raise ValueError(f"--variant queue_limit: {value!r} is not a number")
            v.policy[key] = int(value)
        else:
            raise ValueError(f"--variant: unknown key {key!r}")
    return v


def apply_variant(traffic: Traffic, variant: Variant) -> tuple[list[t.Command], dict[str, str]]:
    """The external commands as the variant changes them, and the added agents' models
    (added agent -> the recorded agent it copies)."""
    registered: list[str] = []
    for c in traffic.external:
        if type(c) is t.RegisterAgent and c.agent_id not in registered:
            registered.append(c.agent_id)
    removed = (
        set(registered[len(registered) - variant.remove_agents :])
        if variant.remove_agents
        else set()
    )
    clones: dict[str, list[str]] = {}
    aliases: dict[str, str] = {}
    for i in range(variant.add_agents):
        if not registered:
            break
        model = registered[i % len(registered)]
        clone = f"{model}.copy{i + 1}"
        clones.setdefault(model, []).append(clone)
        aliases[clone] = model
    change = msgspec.structs.replace(t.PolicyChange(), **variant.policy) if variant.policy else None
    out: list[t.Command] = []
    started = False
    for c in traffic.external:
        kind = type(c)
        agent_id = getattr(c, "agent_id", "")
        if agent_id in removed and kind is not t.Route:
            continue
        if isinstance(c, t.Route) and c.addressed_agent_id in removed:
            c = msgspec.structs.replace(c, addressed_agent_id="")
        elif isinstance(c, t.SetPolicy) and change is not None:
            c = msgspec.structs.replace(c, change=_merged(c.change, change))
        elif isinstance(c, t.RegisterAgent):
            c = msgspec.structs.replace(
                c, max_concurrent=variant.max_for(agent_id, c.max_concurrent)
            )
        elif isinstance(c, t.UpdateAgent) and c.max_concurrent is not None:
            c = msgspec.structs.replace(
                c, max_concurrent=variant.max_for(agent_id, c.max_concurrent)
            )
        out.append(c)
        if not started and change is not None and kind in (t.SetPolicy, t.RegisterAgent):
            started = True  # the shop exists now: the variant's policy from here on
            out.append(t.SetPolicy(at=c.at, shop_id=traffic.shop_id, change=change))
        for clone in clones.get(agent_id, ()):
            if kind in (t.RegisterAgent, t.UpdateAgent, t.SetStatus, t.RemoveAgent):
                copy = msgspec.structs.replace(c, agent_id=clone)
                if kind is t.RegisterAgent and copy.role is t.Role.MAIN:  # type: ignore[attr-defined]
                    copy = msgspec.structs.replace(copy, role=t.Role.SUB)
                out.append(copy)
    return out, aliases


def _merged(recorded: t.PolicyChange, variant: t.PolicyChange) -> t.PolicyChange:
    fields = {k: v for k in variant.__struct_fields__ if (v := getattr(variant, k)) is not None}
    return msgspec.structs.replace(recorded, **fields)


# ---------------------------------------------------------------- metrics


class Metrics:
    """What a run measured, as the report shows it."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        # session -> [created, first reached an agent, first reply, ended, waits?]
        self.sessions: dict[str, list[Any]] = {}
        self.left_messages: set[str] = set()
        self.expiries = 0
        self.abandoned = 0
        self.reassigned: dict[str, int] = {}
        self.timeouts: dict[str, int] = {}
        self.served: dict[str, int] = {}
        self.load_sum: dict[str, int] = {}
        self.peak_load: dict[str, int] = {}
        self.samples = 0
        self.queue: list[tuple[int, int]] = []
        self.refused = 0
        self.commands = 0

    def routed(self, at: int, decision: t.Decision) -> None:
        sid = decision.session_id
        if sid and sid not in self.sessions:
            waits = decision.outcome is not t.Outcome.LEFT_MESSAGE
            reached = at if decision.outcome is t.Outcome.ASSIGNED else None
            self.sessions[sid] = [at, reached, None, None, waits]

    def replied(self, at: int, sid: str) -> None:
        s = self.sessions.get(sid)
        if s is not None and s[2] is None:
            s[2] = at

    def event(self, ev: t.Event) -> None:
        kind = ev.kind
        s = self.sessions.get(ev.session_id)
        if kind == "assigned":
            self.served[ev.agent_id] = self.served.get(ev.agent_id, 0) + 1
            if s is not None and s[1] is None:
                s[1] = ev.at
        elif kind == "ended":
            if s is not None:
                s[3] = ev.at
        elif kind == "reassigned_away":
            name = ev.reason.name.lower() if ev.reason is not None else "other"
            self.reassigned[name] = self.reassigned.get(name, 0) + 1
        elif kind == "timeout":
            name = ev.reason.name.lower() if ev.reason is not None else "idle_end"
            self.timeouts[name] = self.timeouts.get(name, 0) + 1
        elif kind == "left_message":
            self.left_messages.add(ev.session_id)
            if ev.reason is t.Reason.QUEUE_WAIT_LIMIT:
                self.expiries += 1
                if s is not None and s[1] is None:
                    s[4] = ev.at  # it stopped waiting for an agent here

    def sample(self, at: int, stats: t.ShopStatsView) -> None:
        self.queue.append((at, stats.queue_length))
        self.samples += 1
        for a in stats.agents:
            self.load_sum[a.agent_id] = self.load_sum.get(a.agent_id, 0) + a.load
            if a.load > self.peak_load.get(a.agent_id, 0):
                self.peak_load[a.agent_id] = a.load

    def summary(self) -> dict[str, Any]:
        waits: list[int] = []
        fast = judged = replied = 0
        for created, reached, first_reply, ended, waiting in self.sessions.values():
            if waiting is not False:
                stop = reached
                if stop is None:
                    stop = (
                        waiting
                        if type(waiting) is int
                        else (ended if ended is not None else self.end)
                    )
                waits.append(max(0, stop - created))
            if first_reply is not None:
                replied += 1
                judged += 1
                fast += first_reply - created <= FAST_REPLY_MS
            elif ended is not None or self.end - created > FAST_REPLY_MS:
                judged += 1
        waits.sort()
        agents = sorted(set(self.served) | set(self.load_sum))
        served = [self.served.get(a, 0) for a in agents]
        return {
            "sessions": len(self.sessions),
            "reached_agent": sum(s[1] is not None for s in self.sessions.values()),
            "wait_mean_s": round(sum(waits) / len(waits) / 1000, 2) if waits else 0.0,
            "wait_p50_s": _pct(waits, 50),
            "wait_p90_s": _pct(waits, 90),
            "wait_p99_s": _pct(waits, 99),
            "wait_max_s": waits[-1] / 1000 if waits else 0.0,
            "fast_reply_rate": round(fast / judged, 4) if judged else 0.0,
            "first_replies": replied,
            "judged": judged,
            "left_messages": len(self.left_messages),
            "queue_wait_expiries": self.expiries,
            "abandoned": self.abandoned,
            "reassigned": dict(sorted(self.reassigned.items())),
            "timeouts": dict(sorted(self.timeouts.items())),
            "queue_mean": round(sum(q for _, q in self.queue) / len(self.queue), 2)
            if self.queue
            else 0.0,
            "queue_max": max((q for _, q in self.queue), default=0),
            "fairness_jain": round(_jain(served), 4),
            "agents": {
                a: {
                    "served": self.served.get(a, 0),
                    "mean_load": round(self.load_sum.get(a, 0) / self.samples, 2)
                    if self.samples
                    else 0.0,
                    "peak_load": self.peak_load.get(a, 0),
                }
                for a in agents
            },
            "queue_series": [[(at - self.start) / 60_000, q] for at, q in self.queue],
            "refused_actions": self.refused,
            "commands": self.commands,
        }


def _pct(values: list[int], q: float) -> float:
    if not values:
        return 0.0
    return values[max(0, math.ceil(len(values) * q / 100) - 1)] / 1000


def _jain(xs: list[int]) -> float:
    """Jain's fairness index: 1 when every agent served as many, 1/n when one served all."""
    total = sum(xs)
    squares = sum(x * x for x in xs)
    return total * total / (len(xs) * squares) if squares else 1.0


# ---------------------------------------------------------------- the run


Check = Callable[[Dispatcher, str], None]
Progress = Callable[[float], None]

_EXT, _ABANDON, _ACTION, _SAMPLE = 0, 1, 2, 3
_ACK, _REPLY, _END = 0, 1, 2


class _Run:
    def __init__(
        self,
        shop_id: str,
        start: int,
        end: int,
        *,
        check: Check | None,
        check_every: int,
        progress: Progress | None,
        record: bool,
    ) -> None:
        self.shop_id = shop_id
        self.start, self.end = start, end
        self.core = Dispatcher(1)
        self.shard = self.core.shards[0]
        self.metrics = Metrics(start, end)
        self.heap: list[tuple[int, int, int, int, Any]] = []
        self.seq = 0
        self.check = check
        self.check_every = check_every
        self.progress = progress
        self.log: list[t.Command] | None = [] if record else None
        self.buyers: dict[str, str] = {}  # buyer -> their latest session
        self.steps = 0

    def push(self, at: int, kind: int, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, kind, self.seq, kind, payload))

    def execute(self, command: t.Command) -> Any:
        self.metrics.commands += 1
        try:
            result = self.core.execute(command)  # type: ignore[arg-type]
        except FenliuError:
            self.metrics.refused += 1
            return None
        if self.log is not None:
            self.log.append(command)
        if type(result) is t.Refused:  # a keyed command's refusal, remembered (journaled)
            self.metrics.refused += 1
            return None
        if type(command) is t.Route:
            self.metrics.routed(command.at, result)
            if result.session_id:
                self.buyers[command.buyer_id] = result.session_id
        elif type(command) is t.Reply:
            self.metrics.replied(command.at, command.session_id)
        return result

    def on_event(self, ev: t.Event) -> None:
        self.metrics.event(ev)

    def run(self, auto_ticks: bool) -> None:
        for at in range(self.start, self.end + 1, SAMPLE_MS):
            self.push(at, _SAMPLE, None)
        heap, shard = self.heap, self.shard
        span = max(1, self.end - self.start)
        next_progress = 0.0
        while heap:
            at = heap[0][0]
            if at > self.end:
                break
            if auto_ticks:
                due = self.core.next_due()
                if due is not None and due <= at:
                    self.execute(t.Tick(at=max(due, shard.now), shard=0))
                    self.after()
                    continue
            _, _, _, kind, payload = heapq.heappop(heap)
            if kind == _SAMPLE:
                if self.shop_id in shard.shops:
                    stats = self.core.read(t.GetShopStats(at=at, shop_id=self.shop_id))
                    self.metrics.sample(at, stats)
                if self.progress is not None and (at - self.start) / span >= next_progress:
                    self.progress((at - self.start) / span)
                    next_progress += 0.01
                continue
            self.step(at, kind, payload)
            self.after()
        if self.progress is not None:
            self.progress(1.0)

    def after(self) -> None:
        outbox = self.shard.outbox
        if outbox:
            for ev in outbox:
                self.on_event(ev)
            outbox.clear()
        self.steps += 1
        if self.check is not None and self.steps % self.check_every == 0:
            self.check(self.core, self.shop_id)

    def step(self, at: int, kind: int, payload: Any) -> None:
        self.execute(payload)


class _Simulation(_Run):
    """External commands as recorded, agents' actions drawn from ``behaviour``."""

    def __init__(
        self,
        traffic: Traffic,
        behaviour: Behaviour,
        seed: int,
        external: list[t.Command],
        **kw: Any,
    ) -> None:
        super().__init__(traffic.shop_id, traffic.start, traffic.end, **kw)
        self.behaviour = behaviour
        self.seed = seed
        self.holding: dict[str, tuple[str, int]] = {}  # session -> (agent, holding number)
        self.counts: dict[str, int] = {}
        for c in external:
            if type(c) is not t.Tick:
                self.push(c.at, _EXT, c)
        for at, buyer in traffic.abandons:
            self.push(at, _ABANDON, buyer)

    def on_event(self, ev: t.Event) -> None:
        self.metrics.event(ev)
        kind = ev.kind
        if kind == "assigned":
            sid = ev.session_id
            n = self.counts[sid] = self.counts.get(sid, 0) + 1
            self.holding[sid] = (ev.agent_id, n)
            rng = random.Random(f"{self.seed}:{sid}:{n}")
            script = self.behaviour.script(ev.agent_id, rng)
            key = (sid, ev.agent_id, n)
            if script.ack is not None:
                self.push(ev.at + script.ack, _ACTION, (_ACK, key))
            for offset in script.replies:
                self.push(ev.at + offset, _ACTION, (_REPLY, key))
            if script.end is not None:
                self.push(ev.at + script.end, _ACTION, (_END, key))
        elif kind in ("reassigned_away", "ended", "transferred"):
            self.holding.pop(ev.session_id, None)

    def step(self, at: int, kind: int, payload: Any) -> None:
        if kind == _EXT:
            self.execute(payload)
        elif kind == _ACTION:
            action, (sid, agent, n) = payload
            if self.holding.get(sid) != (agent, n):
                return  # the session left this agent before
            shop = self.shop_id
            if action == _ACK:
                self.execute(t.Acknowledge(at=at, shop_id=shop, agent_id=agent, session_id=sid))
            elif action == _REPLY:
                self.execute(t.Reply(at=at, shop_id=shop, agent_id=agent, session_id=sid))
            else:
                self.execute(t.EndSessions(at=at, shop_id=shop, session_ids=(sid,)))
        elif kind == _ABANDON:
            sid = self.buyers.get(payload)
            if sid is None:
                return
            try:
                view = self.core.read(t.GetSession(at=at, shop_id=self.shop_id, session_id=sid))
            except FenliuError:
                return  # ended already
            if view.state in _WAITING:
                self.metrics.abandoned += 1
                self.execute(t.EndSessions(at=at, shop_id=self.shop_id, session_ids=(sid,)))


class _Replay(_Run):
    """A recording verbatim; fits the behaviour model and separates the outside world."""

    def __init__(self, rec: Recording, **kw: Any) -> None:
        super().__init__(rec.shop_id, rec.start, rec.end, **kw)
        self.behaviour = Empirical()
        self.external: list[t.Command] = []
        self.abandons: list[tuple[int, str]] = []
        self.dropped: dict[str, int] = {}
        # session -> [agent, reached at, ack, replies, end, timed out]
        self.open: dict[str, list[Any]] = {}
        self.preexisting: set[str] = set()
        base = rec.base_shard()
        if base is not None:
            self.core.install(0, base)
            self.shard = base
            shop = base.shops.get(rec.shop_id)
            self.preexisting = set(shop.sessions) if shop is not None else set()
        for c in rec.commands:
            self.push(c.at, _EXT, c)

    def on_event(self, ev: t.Event) -> None:
        self.metrics.event(ev)
        kind, sid = ev.kind, ev.session_id
        if kind == "assigned":
            self.open[sid] = [ev.agent_id, ev.at, None, [], None, False]
        elif kind == "timeout":
            h = self.open.get(sid)
            if h is not None:
                h[5] = True
        elif kind in ("reassigned_away", "ended", "transferred"):
            h = self.open.pop(sid, None)
            if h is None:
                return
            timed_out = h[5] or ev.reason in (t.Reason.ACCEPT_TIMEOUT, t.Reason.REPLY_TIMEOUT)
            if h[4] is not None or timed_out:  # not censored
                self.behaviour.add(h[0], Script(h[2], tuple(h[3]), h[4]))

    def step(self, at: int, kind: int, c: Any) -> None:
        ctype = type(c)
        if ctype is t.Tick:
            self.execute(msgspec.structs.replace(c, shard=0))
            return
        if ctype in _AGENT_ACTIONS:
            name = ctype.__name__
            known = self.metrics.sessions
            sids = c.session_ids if ctype is t.EndSessions else (getattr(c, "session_id", ""),)
            old = self.preexisting
            if any(sid and sid not in known and sid not in old for sid in sids):
                # a session the recording does not hold (damage, or a cut recording
                # without its base): left out
                outside = [sid for sid in sids if sid not in known and sid not in old]
                self.dropped["on sessions not in the recording"] = self.dropped.get(
                    "on sessions not in the recording", 0
                ) + len(outside)
                if ctype is not t.EndSessions or len(outside) == len(sids):
                    return
                c = msgspec.structs.replace(c, session_ids=tuple(s for s in sids if s in known))
            if ctype is t.EndSessions:
                for sid in c.session_ids:
                    h = self.open.get(sid)
                    if h is not None:
                        h[4] = at - h[1]
                    elif sid in self.metrics.sessions and self.metrics.sessions[sid][3] is None:
                        buyer = self._buyer(sid)
                        if buyer:
                            self.abandons.append((at, buyer))
                            self.metrics.abandoned += 1
            elif ctype is not t.Acknowledge and ctype is not t.Reply:
                self.dropped[name] = self.dropped.get(name, 0) + 1
            result = self.execute(c)
            if result is not None and (ctype is t.Acknowledge or ctype is t.Reply):
                h = self.open.get(c.session_id)
                if h is not None and h[0] == c.agent_id:
                    if ctype is t.Acknowledge and h[2] is None:
                        h[2] = at - h[1]
                    elif ctype is t.Reply:
                        h[3].append(at - h[1])
            return
        self.external.append(c)
        self.execute(c)

    def _buyer(self, sid: str) -> str:
        try:
            view = self.core.read(
                t.GetSession(at=self.shard.now, shop_id=self.shop_id, session_id=sid)
            )
        except FenliuError:
            return ""
        return view.buyer_id if view.state in _WAITING else ""


@dataclass
class Analysis:
    traffic: Traffic
    behaviour: Empirical
    recorded: dict[str, Any]


def analyse(
    rec: Recording,
    *,
    check: Check | None = None,
    check_every: int = 1,
    progress: Progress | None = None,
) -> Analysis:
    """Replay ``rec`` verbatim: its figures, its outside world and the fitted behaviour."""
    run = _Replay(rec, check=check, check_every=check_every, progress=progress, record=False)
    run.run(auto_ticks=False)
    dropped = {k: v for k, v in run.dropped.items() if v}
    external = rec.setup() + run.external  # a fresh shop as the base holds it, then the rest
    traffic = Traffic(rec.shop_id, rec.start, rec.end, external, run.abandons, dropped)
    return Analysis(traffic, run.behaviour, run.metrics.summary())


def simulate(
    traffic: Traffic,
    behaviour: Behaviour,
    variant: Variant | None = None,
    *,
    seed: int = 1,
    check: Check | None = None,
    check_every: int = 1,
    progress: Progress | None = None,
    record: bool = False,
) -> tuple[dict[str, Any], Recording | None]:
    """One run of ``traffic`` under ``variant`` (None: as recorded), agents per
    ``behaviour``; its summary, and (``record``) the journal it would have written."""
    variant = variant or Variant()
    external, aliases = apply_variant(traffic, variant)
    if aliases and isinstance(behaviour, Empirical):
        behaviour = Empirical(behaviour.own, behaviour.pooled, {**behaviour.aliases, **aliases})
    elif aliases and hasattr(behaviour, "speeds"):
        pass  # parametric: an added agent gets its own speed
    run = _Simulation(
        traffic,
        behaviour,
        seed,
        external,
        check=check,
        check_every=check_every,
        progress=progress,
        record=record,
    )
    run.run(auto_ticks=True)
    summary = run.metrics.summary()
    recording = None
    if run.log is not None:
        recording = Recording(traffic.shop_id, traffic.start, traffic.end, run.log)
    return summary, recording


def check_invariants(core: Dispatcher, shop_id: str) -> None:
    """The core's invariants for one shop (raises AssertionError): no agent holds more
    ordinary sessions than its max reception (priority ones may exceed it), loads and
    counters are never negative and match what is held, one open session per buyer, every
    queued session is in the queue."""
    shop = core.shard_for(shop_id).shops.get(shop_id)
    if shop is None:
        return
    for agent in shop.agents.values():
        held = agent.open_sessions()
        assert agent.load == len(held), f"{agent.agent_id}: load {agent.load}"
        assert [s.before for s in held] == [None, *held][: len(held)] and agent.last is (
            held[-1] if held else None
        ), f"{agent.agent_id}: its open sessions' links are out of step"
        assert 0 <= agent.new_count <= agent.load, f"{agent.agent_id}: new {agent.new_count}"
        ordinary = sum(1 for s in held if not s.priority)
        assert (
            ordinary <= max(agent.max_concurrent, 0)
            or agent.status not in t.RECEIVING
            or any(s.priority for s in held)
        ), f"{agent.agent_id}: {ordinary} sessions over max {agent.max_concurrent}"
        for s in held:
            assert s.agent is agent and s.state in (t.State.ASSIGNED, t.State.ACTIVE)
    buyers = [s.buyer_id for s in shop.sessions.values()]
    assert len(buyers) == len(set(buyers)), "a buyer has two open sessions"
    assert len(shop.by_buyer) == len(shop.sessions), "buyer index out of step"
    queued = sum(1 for s in shop.sessions.values() if s.state is t.State.QUEUED)
    assert queued == len(shop.queue), f"queue {len(shop.queue)} but {queued} queued"
    if shop.counters is not None:
        assert min(shop.counters.today) >= 0 and min(shop.counters.current) >= 0

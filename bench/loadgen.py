"""The load generator: world building, open-loop and closed-loop drivers, a histogram.

Everything here talks to a server over plain ``grpc.aio`` channels with pre-serialized
requests, so Route and the Echo floor go through exactly the same client code: the only
difference between the two is the method path and the body.

Latency is measured from each request's *scheduled* send time (open loop), so a stalled
server or a saturated client shows up as latency instead of silently slowing the
arrivals down (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import os
import random
import socket
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from fenliu.client._pb import fenliu_pb2 as pb

ROUTE = "/fenliu.v1.Routing/Route"
ROUTE_BATCH = "/fenliu.v1.Routing/RouteBatch"
ECHO = "/fenliu.v1.Diagnostics/Echo"
REGISTER = "/fenliu.v1.Presence/RegisterAgent"
SET_STATUS = "/fenliu.v1.Presence/SetStatus"
ACK = "/fenliu.v1.Routing/Acknowledge"
REPLY = "/fenliu.v1.Routing/Reply"
END = "/fenliu.v1.Routing/EndSessions"

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20)]


# -- histogram -------------------------------------------------------------------------


class Histogram:
    """Log-linear buckets over integer microseconds, HDR style: 64 sub-buckets per power
    of two, so every recorded value is kept to within 1/64 (1.6%) of itself; max is exact.
    Sparse (a dict), so it is cheap to ship between processes and to merge."""

    SUB = 64

    __slots__ = ("counts", "total", "max_us")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0
        self.max_us = 0

    @classmethod
    def _index(cls, us: int) -> int:
        if us < cls.SUB:
            return us
        shift = us.bit_length() - 7  # keep 7 significant bits: 64..127
        return (shift + 1) * cls.SUB + ((us >> shift) - cls.SUB)

    @classmethod
    def _upper(cls, index: int) -> int:
        """The highest value that lands in bucket ``index``."""
        if index < cls.SUB:
            return index
        shift = index // cls.SUB - 1
        mantissa = index % cls.SUB + cls.SUB
        return ((mantissa + 1) << shift) - 1

    def record(self, seconds: float) -> None:
        us = max(0, int(seconds * 1e6))
        i = self._index(us)
        self.counts[i] = self.counts.get(i, 0) + 1
        self.total += 1
        if us > self.max_us:
            self.max_us = us

    def merge(self, other: Histogram) -> None:
        for i, n in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + n
        self.total += other.total
        self.max_us = max(self.max_us, other.max_us)

    def percentile_ms(self, q: float) -> float:
        """The value at percentile ``q`` (0..100), in ms: the bucket's upper edge, capped
        at the exact max."""
        if not self.total:
            return 0.0
        rank = max(1, math.ceil(self.total * q / 100.0))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return min(self._upper(i), self.max_us) / 1000.0
        return self.max_us / 1000.0

    def summary(self) -> dict[str, float]:
        return {
            "count": self.total,
            "p50_ms": self.percentile_ms(50),
            "p90_ms": self.percentile_ms(90),
            "p99_ms": self.percentile_ms(99),
            "p99_9_ms": self.percentile_ms(99.9),
            "max_ms": self.max_us / 1000.0,
        }

    def to_wire(self) -> dict[str, Any]:
        return {"counts": self.counts, "total": self.total, "max_us": self.max_us}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Histogram:
        h = cls()
        h.counts = {int(k): int(v) for k, v in data["counts"].items()}
        h.total = int(data["total"])
        h.max_us = int(data["max_us"])
        return h


# -- pacing ----------------------------------------------------------------------------

SPIN_S = 0.001
"""``sleep_until`` sleeps to this long before the time, then yields until it."""


async def sleep_until(when: float, clock: Callable[[], float] = time.perf_counter) -> float:
    """Return at ``when`` (a ``clock`` time) or just after, never before; returns the time.

    An event loop's timers are coarse: uvloop returns at once from sleeps under ~1.5 ms
    (libuv's millisecond timers), so an open-loop driver that just sleeps the delay sends
    requests early during bursts and records them as ~0 µs. Sleep to ``SPIN_S`` before
    the time, then yield to the loop (other calls go on) until it has come.
    """
    now = clock()
    if when - now > SPIN_S:
        await asyncio.sleep(when - now - SPIN_S)
        now = clock()
    while now < when:
        await asyncio.sleep(0)
        now = clock()
    return now


TICK_S = 0.00025
"""A paced RouteStream's ``Ticker`` interval: the requests due are taken every 250 µs."""


class Ticker:
    """Wakes its caller every ``interval`` seconds without spinning: a Linux timerfd
    (CLOCK_MONOTONIC, ``time.perf_counter``'s clock) the event loop watches, so the wake-ups
    have the kernel's precision (µs), not the loop's millisecond timers, and cost one loop
    iteration each. ``sleep_until`` spins for its last millisecond: pacing 17,000
    requests/s a stream that way kept a load process busy (a whole core) however few it
    sent, and on 2 shared cores that core is the server's. Where there is no timerfd,
    ``asyncio.sleep(interval)`` (coarser: the late requests are counted from their
    scheduled time all the same). ``wait`` returns the clock after the tick."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._fd = -1
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def wait(self) -> float:
        if self._loop is None:
            self._start()
        if self._fd < 0:
            await asyncio.sleep(self.interval)
            return time.perf_counter()
        assert self._loop is not None
        waiter = self._waiter = self._loop.create_future()
        await waiter
        return time.perf_counter()

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._fd = _timerfd(self.interval)
        except OSError:
            self._fd = -1
            return
        self._loop.add_reader(self._fd, self._tick)

    def _tick(self) -> None:
        try:
            os.read(self._fd, 8)  # the expirations since the last read: a tick is a tick
        except BlockingIOError:
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result(None)

    def close(self) -> None:
        if self._fd >= 0:
            assert self._loop is not None
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


def _timerfd(interval: float) -> int:
    """A non-blocking periodic timerfd firing every ``interval`` s; OSError without one."""
    seconds, nanos = int(interval), int(interval % 1 * 1e9) or 1
    if hasattr(os, "timerfd_create"):  # Python 3.13
        fd = os.timerfd_create(time.CLOCK_MONOTONIC, flags=os.TFD_NONBLOCK | os.TFD_CLOEXEC)
        os.timerfd_settime(fd, initial=interval, interval=interval)
        return fd
    import ctypes
    import ctypes.util

    class Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    class Itimerspec(ctypes.Structure):
        _fields_ = [("it_interval", Timespec), ("it_value", Timespec)]

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        create, settime = libc.timerfd_create, libc.timerfd_settime
    except (OSError, AttributeError) as exc:
        raise OSError("no timerfd here") from exc
    fd = create(time.CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)  # TFD_* are O_*
    if fd < 0:
        raise OSError(ctypes.get_errno(), "timerfd_create")
    every = Timespec(seconds, nanos)
    if settime(fd, 0, ctypes.byref(Itimerspec(every, every)), None) < 0:
        os.close(fd)
        raise OSError(ctypes.get_errno(), "timerfd_settime")
    return fd


# -- the world -------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """Shops ``s0 .. s{n-1}``, ranked by traffic (Zipf); shop ``i`` has ``sizes[i]``
    agents ``a0 ..``. The most popular shops are the biggest ones, as in real life."""

    sizes: tuple[int, ...]
    zipf_s: float
    max_concurrent: int
    seed: int

    @classmethod
    def make(
        cls,
        shops: int,
        max_agents: int,
        zipf_s: float = 1.0,
        seed: int = 1,
        max_concurrent: int = 10,
    ) -> World:
        rng = random.Random(seed)
        # Pareto(alpha 1.1) team sizes, truncated: most shops have a handful of agents, a
        # few have hundreds; the top shop has the maximum.
        sizes = sorted(
            (min(max_agents, int(rng.paretovariate(1.1))) for _ in range(shops)), reverse=True
        )
        if sizes:
            sizes[0] = max_agents
        return cls(tuple(sizes), zipf_s, max_concurrent, seed)

    @property
    def agents(self) -> int:
        return sum(self.sizes)

    def cumulative_weights(self) -> list[float]:
        return list(
            itertools.accumulate(1.0 / (i + 1) ** self.zipf_s for i in range(len(self.sizes)))
        )


class ShopPicker:
    """Draws shop indices with Zipf weights (s = ``world.zipf_s``)."""

    def __init__(self, world: World, rng: random.Random) -> None:
        self._cum = world.cumulative_weights()
        self._total = self._cum[-1]
        self._rng = rng

    def __call__(self) -> int:
        return bisect.bisect_left(self._cum, self._rng.random() * self._total)


async def build_world(target: str, world: World, concurrency: int = 256) -> dict[str, Any]:
    """Registers every agent (ONLINE, max_concurrent from the world) with bounded
    concurrency; returns counts and the time it took."""
    started = time.perf_counter()
    errors: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        register = channel.unary_unary(REGISTER)

        def requests() -> Iterator[bytes]:
            for shop, size in enumerate(world.sizes):
                for agent in range(size):
                    yield pb.RegisterAgentRequest(
                        shop_id=f"s{shop}",
                        agent_id=f"a{agent}",
                        role=pb.AGENT_ROLE_MAIN if agent == 0 else pb.AGENT_ROLE_SUB,
                        max_concurrent=world.max_concurrent,
                        status=pb.AGENT_STATUS_ONLINE,
                    ).SerializeToString()

        pending = requests()

        async def worker() -> None:
            for body in pending:
                try:
                    await register(body, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {
        "shops": len(world.sizes),
        "agents": world.agents,
        "seconds": round(time.perf_counter() - started, 3),
        "errors": dict(errors),
    }


# -- traffic ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """A steady Poisson rate with bursts: ``rate(t) = base * factor`` inside a burst."""

    base_rate: float
    seconds: float
    bursts: tuple[float, ...] = ()  # burst start times, s
    burst_length: float = 1.0
    burst_factor: float = 10.0

    def rate(self, t: float) -> float:
        for start in self.bursts:
            if start <= t < start + self.burst_length:
                return self.base_rate * self.burst_factor
        return self.base_rate

    def arrivals(self, rng: random.Random) -> list[float]:
        """Poisson arrival times in [0, seconds) for the piecewise-constant rate, by
        thinning against the peak rate."""
        peak = self.base_rate * (self.burst_factor if self.bursts else 1.0)
        out: list[float] = []
        t = 0.0
        while True:
            t += rng.expovariate(peak)
            if t >= self.seconds:
                return out
            if rng.random() * peak < self.rate(t):
                out.append(t)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, of every thread, ended ones too) process ``pid`` has
    used so far, to the nanosecond: its POSIX CPU clock (Linux's clock id for another
    process's CPUCLOCK_SCHED), not /proc/<pid>/stat's 10 ms ticks, which read 0 for a
    short round of a cheap kind on a loaded machine."""
    return time.clock_gettime(((~pid) << 3) | 2)


def free_port() -> int:
    """A loopback port nobody listens on right now (for a server's extra listener)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int, name: str) -> float:
    """The value of metric ``name`` (a counter, or a histogram's ``_count``) on a server's
    Prometheus endpoint; 0 when it has no sample yet."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def route_body_size(world_shops: int) -> int:
    """The size of a typical encoded RouteRequest: the Echo floor sends this many bytes."""
    return len(sample_route(world_shops - 1, 999_999, 0, 0).SerializeToString())


def sample_route(shop: int, buyer: int, proc: int, seq: int) -> pb.RouteRequest:
    return pb.RouteRequest(
        shop_id=f"s{shop}",
        buyer_id=f"b{buyer}",
        request_id=f"r{proc}-{seq}-{os.getpid()}",
        channel="item_page",
    )


@dataclass
class Result:
    """What one load process measured."""

    histogram: Histogram = field(default_factory=Histogram)
    windows: dict[int, Histogram] = field(default_factory=dict)  # by window start, ms
    errors: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    churn: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    completed: int = 0
    seconds: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        return {
            "histogram": self.histogram.to_wire(),
            "windows": {k: v.to_wire() for k, v in self.windows.items()},
            "errors": dict(self.errors),
            "outcomes": dict(self.outcomes),
            "churn": dict(self.churn),
            "sent": self.sent,
            "completed": self.completed,
            "seconds": self.seconds,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Result:
        r = cls()
        r.histogram = Histogram.from_wire(data["histogram"])
        r.windows = {int(k): Histogram.from_wire(v) for k, v in data["windows"].items()}
        r.errors = Counter(data["errors"])
        r.outcomes = Counter(data["outcomes"])
        r.churn = Counter(data["churn"])
        r.sent, r.completed, r.seconds = data["sent"], data["completed"], data["seconds"]
        return r

    def merge(self, other: Result) -> None:
        self.histogram.merge(other.histogram)
        for k, h in other.windows.items():
            self.windows.setdefault(k, Histogram()).merge(h)
        self.errors.update(other.errors)
        self.outcomes.update(other.outcomes)
        self.churn.update(other.churn)
        self.sent += other.sent
        self.completed += other.completed
        self.seconds = max(self.seconds, other.seconds)


@dataclass(frozen=True)
class LoadSpec:
    """One load process's job. ``kind`` is ``route`` or ``echo``; ``mode`` is ``open``
    (Poisson arrivals per ``schedule``) or ``closed`` (``concurrency`` callers back to
    back for ``schedule.seconds``)."""

    target: str
    kind: str
    mode: str
    schedule: Schedule
    world: World
    proc: int = 0
    concurrency: int = 64
    inflight_cap: int = 2000
    buyers: int = 1_000_000
    churn: bool = True  # acknowledge, reply, end sessions and flip statuses alongside
    hold_s: float = 1.0  # how long a session stays open before the churn ends it
    status_churn_per_s: float = 20.0
    window_ms: int = 100
    timeout_s: float = 5.0


class _Churn:
    """Frees capacity: acknowledges, replies and ends sessions ``hold_s`` after they were
    routed (ends grouped per shop), and flips a few agents' status (ONLINE <-> SUSPENDED
    / OFFLINE and back) every second."""

    def __init__(self, spec: LoadSpec, channel: grpc.aio.Channel, result: Result) -> None:
        self.spec = spec
        self.result = result
        # (due, shop, agent, session): acknowledged and replied to at hold/2, ended at hold
        self.to_answer: list[tuple[float, int, str, str]] = []
        self.pending: list[tuple[float, int, str, str]] = []
        self.ack = channel.unary_unary(ACK)
        self.reply = channel.unary_unary(REPLY)
        self.end = channel.unary_unary(END)
        self.set_status = channel.unary_unary(SET_STATUS)
        self.rng = random.Random(spec.world.seed * 1000 + spec.proc + 7)
        self.flipped: list[tuple[int, int]] = []

    def opened(self, shop: int, decision: pb.Decision) -> None:
        if not decision.session_id:
            return
        now = time.perf_counter()
        if decision.agent_id and decision.outcome == pb.OUTCOME_ASSIGNED:
            self.to_answer.append(
                (now + self.spec.hold_s / 2, shop, decision.agent_id, decision.session_id)
            )
        self.pending.append((now + self.spec.hold_s, shop, decision.agent_id, decision.session_id))

    async def _call(self, name: str, method: Any, body: bytes) -> None:
        try:
            await method(body, timeout=self.spec.timeout_s)
            self.result.churn[name] += 1
        except grpc.aio.AioRpcError as exc:
            self.result.churn[f"{name}:{exc.code().name}"] += 1

    async def run(self, stop: asyncio.Event) -> None:
        tasks: set[asyncio.Task[None]] = set()
        last_flip = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.05)
            now = time.perf_counter()
            answer = [p for p in self.to_answer if p[0] <= now]
            self.to_answer = [p for p in self.to_answer if p[0] > now]
            for _, shop, agent, session in answer:
                if self.rng.random() < 0.8:
                    body = pb.SessionRequest(
                        shop_id=f"s{shop}", agent_id=agent, session_id=session
                    ).SerializeToString()
                    # acknowledge then reply, as an agent would (errors, such as a
                    # session moved away by a status flip, are counted, not fatal)
                    tasks.add(asyncio.ensure_future(self._ack_reply(body)))
            due = [p for p in self.pending if p[0] <= now]
            self.pending = [p for p in self.pending if p[0] > now]
            by_shop: dict[int, list[str]] = {}
            for _, shop, _agent, session in due:
                by_shop.setdefault(shop, []).append(session)
            for shop, sessions in by_shop.items():
                for i in range(0, len(sessions), 1000):
                    body = pb.EndSessionsRequest(
                        shop_id=f"s{shop}", session_ids=sessions[i : i + 1000]
                    ).SerializeToString()
                    tasks.add(asyncio.ensure_future(self._call("end", self.end, body)))
            if self.spec.status_churn_per_s and now - last_flip >= 1.0:
                last_flip = now
                tasks.add(asyncio.ensure_future(self._flip()))
            tasks = {t for t in tasks if not t.done()}
        if tasks:
            await asyncio.wait(tasks, timeout=self.spec.timeout_s)

    async def _ack_reply(self, body: bytes) -> None:
        await self._call("acknowledge", self.ack, body)
        await self._call("reply", self.reply, body)

    async def _flip(self) -> None:
        sizes = self.spec.world.sizes
        # bring last second's agents back ONLINE, then take a fresh few away
        back, self.flipped = self.flipped, []
        for shop, agent in back:
            await self._status(shop, agent, pb.AGENT_STATUS_ONLINE)
        for _ in range(int(self.spec.status_churn_per_s)):
            shop = self.rng.randrange(len(sizes))
            agent = self.rng.randrange(sizes[shop])
            status = self.rng.choice([pb.AGENT_STATUS_SUSPENDED, pb.AGENT_STATUS_OFFLINE])
            self.flipped.append((shop, agent))
            await self._status(shop, agent, status)

    async def _status(self, shop: int, agent: int, status: int) -> None:
        body = pb.SetStatusRequest(
            shop_id=f"s{shop}",
            agent_id=f"a{agent}",
            status=status,  # type: ignore[arg-type]
        ).SerializeToString()
        await self._call("status", self.set_status, body)


async def drive(spec: LoadSpec) -> Result:
    """Runs one load process's share against ``spec.target``."""
    result = Result()
    rng = random.Random(spec.world.seed * 7919 + spec.proc)
    pick_shop = ShopPicker(spec.world, rng)
    echo_body = pb.EchoMessage(payload=b"x" * route_body_size(len(spec.world.sizes)))
    echo_bytes = echo_body.SerializeToString()
    seq = itertools.count()
    window_s = spec.window_ms / 1000.0
    async with grpc.aio.insecure_channel(spec.target, options=CHANNEL_OPTIONS) as channel:
        await channel.channel_ready()
        route = channel.unary_unary(ROUTE)
        echo = channel.unary_unary(ECHO)
        churn = _Churn(spec, channel, result)
        stop = asyncio.Event()
        churn_task = (
            asyncio.ensure_future(churn.run(stop)) if spec.kind == "route" and spec.churn else None
        )

        def record(start: float, scheduled: float, done: float) -> None:
            latency = done - scheduled
            result.histogram.record(latency)
            w = int((scheduled - start) / window_s) * spec.window_ms
            h = result.windows.get(w)
            if h is None:
                h = result.windows[w] = Histogram()
            h.record(latency)

        async def one(start: float, scheduled: float) -> None:
            result.sent += 1
            try:
                if spec.kind == "route":
                    shop = pick_shop()
                    body = sample_route(
                        shop, rng.randrange(spec.buyers), spec.proc, next(seq)
                    ).SerializeToString()
                    reply = await route(body, timeout=spec.timeout_s)
                    decision = pb.Decision.FromString(reply)
                    result.outcomes[pb.Outcome.Name(decision.outcome)] += 1
                    churn.opened(shop, decision)
                else:
                    await echo(echo_bytes, timeout=spec.timeout_s)
                result.completed += 1
            except grpc.aio.AioRpcError as exc:
                result.errors[exc.code().name] += 1
            record(start, scheduled, time.perf_counter())

        start = time.perf_counter()
        if spec.mode == "open":
            inflight: set[asyncio.Task[None]] = set()
            for offset in spec.schedule.arrivals(rng):
                scheduled = start + offset
                await sleep_until(scheduled)
                if len(inflight) >= spec.inflight_cap:
                    result.sent += 1
                    result.errors["CLIENT_INFLIGHT_CAP"] += 1
                    continue
                task = asyncio.ensure_future(one(start, scheduled))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
            if inflight:
                # every call has its own deadline, so this ends; waiting less would
                # cancel calls on close and count them as CANCELLED
                await asyncio.wait(inflight)
        else:
            deadline = start + spec.schedule.seconds

            async def caller() -> None:
                while time.perf_counter() < deadline:
                    await one(start, time.perf_counter())

            await asyncio.gather(*(caller() for _ in range(spec.concurrency)))
        result.seconds = time.perf_counter() - start
        stop.set()
        if churn_task is not None:
            await churn_task
    return result


# -- batch path ------------------------------------------------------------------------


async def drive_batch(
    target: str,
    kind: str,
    world: World,
    seconds: float,
    batch: int = 1000,
    concurrency: int = 4,
    buyers: int = 200_000,
    proc: int = 0,
) -> dict[str, Any]:
    """Closed loop: ``concurrency`` callers send RouteBatch of ``batch`` requests (or an
    Echo of the same encoded size) back to back; counts decisions per second."""
    rng = random.Random(world.seed * 31 + proc)
    pick_shop = ShopPicker(world, rng)
    seq = itertools.count()

    def batch_body() -> bytes:
        return pb.RouteBatchRequest(
            requests=[
                pb.RouteRequest(
                    shop_id=f"s{pick_shop()}",
                    buyer_id=f"b{rng.randrange(buyers)}",
                    request_id=f"q{proc}-{next(seq)}-{os.getpid()}",
                    channel="item_page",
                )
                for _ in range(batch)
            ]
        ).SerializeToString()

    # Pre-encoded so the client spends its time sending, not building; every body once
    # only (a body sent again would be all retries, answered from the idempotency cache):
    # enough for 150,000 decisions/s, a caller stops early if they run out.
    bodies = [batch_body() for _ in range(int(seconds * 150_000 / batch) + concurrency)]
    echo_body = pb.EchoMessage(payload=b"x" * len(bodies[0])).SerializeToString()
    decisions = 0
    calls = 0
    errors: Counter[str] = Counter()
    hist = Histogram()
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        await channel.channel_ready()
        route_batch = channel.unary_unary(ROUTE_BATCH)
        echo = channel.unary_unary(ECHO)
        start = time.perf_counter()
        deadline = start + seconds

        async def caller(i: int) -> None:
            nonlocal decisions, calls
            n = i
            while time.perf_counter() < deadline and n < len(bodies):
                body = bodies[n]
                n += concurrency
                t0 = time.perf_counter()
                try:
                    if kind == "route":
                        reply = pb.RouteBatchReply.FromString(await route_batch(body, timeout=30))
                        ok = sum(1 for r in reply.results if r.HasField("decision"))
                        decisions += ok
                        if ok != len(reply.results):
                            errors["PER_REQUEST_ERROR"] += len(reply.results) - ok
                    else:
                        await echo(echo_body, timeout=30)
                        decisions += batch
                    calls += 1
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] += 1
                hist.record(time.perf_counter() - t0)

        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {
        "kind": kind,
        "decisions": decisions,
        "calls": calls,
        "seconds": elapsed,
        "per_s": decisions / elapsed,
        "call_latency": hist.summary(),
        "errors": dict(errors),
        "body_bytes": len(bodies[0]),
    }


def run_in_process(fn: Callable[..., Any], *args: Any) -> Any:
    """Runs coroutine function ``fn(*args)`` on a fresh uvloop (asyncio if missing)."""
    try:
        import uvloop

        return uvloop.run(fn(*args))
    except ImportError:  # pragma: no cover
        return asyncio.run(fn(*args))

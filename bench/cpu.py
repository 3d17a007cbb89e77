"""Server CPU per call, read from /proc/<pid>/stat, for real decisions of every kind.

    python bench/run.py quick            # under a minute: every figure, 2 rounds
    python bench/run.py cpu --rounds 5   # the same, longer

Kinds, each a closed loop of distinct pre-built requests (no two alike, so no retry is
ever answered from the idempotency cache; a sample's decision reason is checked):

    echo         Diagnostics/Echo with a body of a Route's size: the transport floor
    route_new    unary Route, a new buyer each (rule 6, the shop's strategy)
    route_open   unary Route, a message on an open session (rule 2)
    batch_new    RouteBatch of 1,000 new buyers; batch_open the same with open sessions
    stream_new   RouteStream, new buyers (``--window`` in flight per stream), coalescing
                 as the SDK does (each write carries every request queued at the time,
                 each reply every answer ready at the time);
    stream_open  the same with open sessions
    stream_new_single  RouteStream of new buyers one request a message, not coalescing
                 (the caller of before: what coalescing gains, in the same run)

Then the paced stream (``paced_stream``): RouteStream at half the median ``stream_new``
rate of the run (or ``--paced-rate``), and at each of ``--paced-rates``, each of
``--procs`` load processes pacing its share on its own stream as the SDK writes (one
message under way while another is answered), latency from each request's scheduled time,
with each load process's CPU and how late it queued requests.

Every kind runs once per round, rounds interleaved, so each ratio is taken within one
round (the same minute of a shared machine) and then the median; a warning is printed
when rounds disagree by more than ``SPREAD`` of the median. Each figure carries the load
average at its run. The server is a fresh ``fenliu-server`` process (journal off unless
``--data-dir``), CPU counted over all its threads.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
import grpc.aio  # noqa: E402
import loadgen  # noqa: E402

from fenliu.client._pb import fenliu_pb2 as pb  # noqa: E402
from fenliu.client._stream import MAX_PER_MESSAGE, MESSAGES_IN_FLIGHT  # noqa: E402

KINDS = ("echo", "route_new", "route_open", "batch_new", "batch_open", "stream_new", "stream_open",
         "stream_new_single")  # fmt: skip
EXPECTED = {"new": pb.REASON_STRATEGY, "open": pb.REASON_OPEN_SESSION}
ROUTE_STREAM = "/fenliu.v1.Routing/RouteStream"
SPREAD = 0.10
BUDGET_ATTEMPTS = 3
"""A kind that ran out of pre-built requests is measured again (with twice the rate it
reached) up to this many times in all; if it still runs out, the run's warnings say so."""
cpu_seconds = loadgen.process_cpu_s
LOAD_CPU_WARN = 0.8
"""A paced load process using more of a core than this is warned about: its own delays
(the loop busy, the process waiting for a core) are then in the latency it records."""


# -- the world: shops with room for every new buyer, and buyers with open sessions --------


def shop_ids(shops: int) -> list[str]:
    return [f"c{i:03d}" for i in range(shops)]  # fixed width: h2load's template patches it


async def build_world(target: str, shops: int, agents: int, open_buyers: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target) as channel:
        presence = channel.unary_unary(
            loadgen.REGISTER, request_serializer=pb.RegisterAgentRequest.SerializeToString
        )
        batch = channel.unary_unary(
            loadgen.ROUTE_BATCH,
            request_serializer=pb.RouteBatchRequest.SerializeToString,
            response_deserializer=pb.RouteBatchReply.FromString,
        )
        for shop in shop_ids(shops):
            await asyncio.gather(*(
                presence(pb.RegisterAgentRequest(
                    shop_id=shop, agent_id=f"a{a}", max_concurrent=10_000,
                    status=pb.AGENT_STATUS_ONLINE,
                ))
                for a in range(agents)
            ))  # fmt: skip
        opened = 0
        ids = shop_ids(shops)
        for start in range(0, open_buyers, 500):
            items = [
                pb.RouteRequest(shop_id=ids[j % shops], buyer_id=f"o{j}", request_id=f"open{j}")
                for j in range(start, min(open_buyers, start + 500))
            ]
            items += [
                pb.RouteRequest(shop_id=ids[j % shops], buyer_id=f"g{j:010d}", request_id=f"g{j}")
                for j in range(start, min(open_buyers, start + 500))
            ]  # the same buyers for h2load's messages (fixed width)
            reply = await batch(pb.RouteBatchRequest(requests=items), timeout=60)
            opened += sum(1 for r in reply.results if r.decision.session_id)
    return {"shops": shops, "agents": shops * agents, "open_sessions": opened}


# -- one load process --------------------------------------------------------------------


def requests(job: dict[str, Any], count: int) -> list[pb.RouteRequest]:
    """``count`` distinct requests: new buyers, or messages of the open sessions."""
    ids = shop_ids(job["shops"])
    tag = f"{job['tag']}p{job['proc']}"
    out = []
    for i in range(count):
        if case_of(job["kind"]) == "new":
            j = i * 7919 % len(ids)
            out.append(pb.RouteRequest(shop_id=ids[j], buyer_id=f"n{tag}x{i}",
                                       request_id=f"{tag}x{i}", channel="im"))  # fmt: skip
        else:
            buyer = (i * job["procs"] + job["proc"]) % job["open_buyers"]
            out.append(pb.RouteRequest(shop_id=ids[buyer % len(ids)], buyer_id=f"o{buyer}",
                                       request_id=f"{tag}x{i}", channel="im"))  # fmt: skip
    return out


async def drive(job: dict[str, Any]) -> dict[str, Any]:
    kind, seconds = job["kind"], job["seconds"]
    family = kind.split("_")[0]
    size = {"batch": job["batch"]}.get(family, 1)
    budget = request_budget(job)
    reqs = [] if kind == "echo" else requests(job, budget)
    ran_out = False  # a caller found no pre-built request left before the deadline
    route_bytes = len(requests({**job, "kind": "route_new"}, 1)[0].SerializeToString())
    done = 0
    reasons: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    hist = loadgen.Histogram()
    late = loadgen.Histogram()  # paced: how long after its time each request was queued
    gc.collect()
    gc.freeze()  # the pre-built requests: never scanned again by a collection mid-run

    def note(decision: pb.Decision | None, error: pb.Error | None = None) -> None:
        if error is not None and error.code:
            errors[str(error.code)] += 1
        elif decision is not None and done % 97 == 0:
            reasons[pb.Reason.Name(decision.reason)] += 1

    async with grpc.aio.insecure_channel(job["target"], options=loadgen.CHANNEL_OPTIONS) as ch:
        await ch.channel_ready()
        start, cpu0 = time.perf_counter(), time.process_time()
        deadline = start + seconds
        if family in ("echo", "route"):
            body = pb.EchoMessage(payload=b"x" * route_bytes).SerializeToString()
            bodies = iter(r.SerializeToString() for r in reqs)
            call = ch.unary_unary(loadgen.ECHO if kind == "echo" else loadgen.ROUTE)

            async def caller() -> None:
                nonlocal done, ran_out
                while time.perf_counter() < deadline:
                    data = body if kind == "echo" else next(bodies, None)
                    if data is None:
                        ran_out = True
                        return
                    t0 = time.perf_counter()
                    try:
                        reply = await call(data, timeout=10)
                    except grpc.aio.AioRpcError as exc:
                        errors[exc.code().name] += 1
                        continue
                    hist.record(time.perf_counter() - t0)
                    if kind != "echo":
                        note(pb.Decision.FromString(reply))
                    done += 1

            await asyncio.gather(*(caller() for _ in range(job["concurrency"])))
        elif family == "batch":
            batches = iter(
                pb.RouteBatchRequest(requests=reqs[i : i + size]).SerializeToString()
                for i in range(0, len(reqs), size)
            )
            call = ch.unary_unary(loadgen.ROUTE_BATCH)

            async def batcher() -> None:
                nonlocal done, ran_out
                while time.perf_counter() < deadline:
                    data = next(batches, None)
                    if data is None:
                        ran_out = True
                        return
                    t0 = time.perf_counter()
                    reply = pb.RouteBatchReply.FromString(await call(data, timeout=60))
                    hist.record(time.perf_counter() - t0)
                    for r in reply.results:
                        note(r.decision, r.error)
                        done += 1

            await asyncio.gather(*(batcher() for _ in range(job["concurrency"])))
        else:
            single = kind.endswith("_single")
            if single:
                items = iter(pb.RouteStreamRequest(request=r).SerializeToString() for r in reqs)
            else:
                items = iter(framed(r) for r in reqs)
            rate = job.get("rate", 0.0) / max(1, job["streams"])
            ran_out = any(await asyncio.gather(*(
                stream(ch, items, job["window"], deadline, rate, hist, note, errors, not single,
                       late, start)
                for _ in range(job["streams"])
            )))  # fmt: skip
            done = hist.total - sum(errors.values())
        elapsed = time.perf_counter() - start
        cpu_s = time.process_time() - cpu0
    return {"done": done, "seconds": elapsed, "reasons": dict(reasons), "errors": dict(errors),
            "latency": hist.to_wire(), "exhausted": ran_out, "budget": budget,
            "late": late.to_wire(), "load_cpu": round(cpu_s / elapsed, 3)}  # fmt: skip


def case_of(kind: str) -> str:
    """``new`` or ``open`` (``echo``: "")."""
    parts = kind.split("_")
    return parts[1] if len(parts) > 1 else ""


def request_budget(job: dict[str, Any]) -> int:
    """How many requests a load process pre-builds for ``job``.

    Paced (``rate``: RouteStream at a set rate), the writers send at most one request per
    1/rate s of the run and one more each, so this many never run out. Closed loops go as
    fast as the server answers: ``budget_rate`` (what ``run`` learned from an earlier
    attempt) or ``max_rate`` (4x for batches) per second of the run, plus one of each
    caller's calls; if that runs out all the same, ``measure`` says so (``exhausted``)
    and ``run`` measures the kind again with a larger budget.
    """
    seconds, family = job["seconds"], job["kind"].split("_")[0]
    if job.get("rate"):
        return math.ceil(job["rate"] * seconds) + job["streams"] + 1
    size = job["batch"] if family == "batch" else 1
    rate = job.get("budget_rate") or job["max_rate"] * (4 if family == "batch" else 1)
    return int(rate * seconds) + size * job["concurrency"]


async def stream(
    ch: grpc.aio.Channel, items: Any, window: int, deadline: float, rate: float,
    hist: loadgen.Histogram, note: Any, errors: Counter[str], coalesce: bool = True,
    late: loadgen.Histogram | None = None, start: float | None = None,
) -> bool:  # fmt: skip
    """One RouteStream: at most ``window`` unanswered; paced at ``rate``/s when given
    (``paced``: latency then from each item's scheduled time, the schedule starting at
    ``start``, the run's start, or now). Whether it ran out of ``items`` before the deadline.

    Coalescing (the SDK's way, ``coalesce``): ``items`` are RouteRequests framed as
    RouteStreamRequest's ``more`` (``framed``); each write sends, in one message, every
    request queued at that moment: in the closed loop the ones whose callers' answers came
    back (the window's room). Otherwise (``stream_new_single``: the one-per-message caller
    of before) ``items`` are whole RouteStreamRequests, one a message."""
    call = ch.stream_stream(ROUTE_STREAM, response_deserializer=pb.RouteStreamReply.FromString)()
    if rate:
        begun = time.perf_counter() if start is None else start
        return await paced_stream(call, items, window, deadline, rate, hist, note, errors, coalesce,
                                  late, begun)  # fmt: skip
    loop = asyncio.get_running_loop()
    sent: collections.deque[float] = collections.deque()  # send times, unanswered
    room: list[asyncio.Future[None] | None] = [None]  # the writer's, while the window is full
    ran_out = False

    async def write() -> None:
        nonlocal ran_out
        while time.perf_counter() < deadline:
            while len(sent) >= window:
                waiter = room[0] = loop.create_future()
                await waiter
            if not coalesce:
                data = next(items, None)
                if data is None:
                    ran_out = True
                    break
                sent.append(time.perf_counter())
                await call.write(data)
                continue
            parts: list[bytes] = []
            now = time.perf_counter()
            for _ in range(window - len(sent)):
                data = next(items, None)
                if data is None:
                    ran_out = True
                    break
                parts.append(data)
                sent.append(now)
            if parts:
                await call.write(coalesced(parts))
            if ran_out:
                break
        await call.done_writing()

    def answered(count: int) -> None:
        waiter = room[0]
        if waiter is not None and len(sent) < window:
            room[0] = None
            waiter.set_result(None)

    writer = asyncio.ensure_future(write())
    await read_replies(call, sent, hist, note, errors, coalesce, answered)
    await writer
    return ran_out


async def read_replies(
    call: Any, sent: collections.deque[float], hist: loadgen.Histogram, note: Any,
    errors: Counter[str], coalesce: bool, answered: Any,
) -> None:  # fmt: skip
    """Every reply of ``call``: each answer's latency from its time in ``sent`` (in order),
    its error counted, a sample's decision noted; ``answered(count)`` after each reply."""
    count = 0
    async for reply in call:
        now = time.perf_counter()
        for result in (reply.result, *reply.more) if coalesce else (reply.result,):
            hist.record(now - sent.popleft())
            if result.HasField("error"):
                errors[str(result.error.code)] += 1
            elif count % 97 == 0:  # a sample's decision reason, as the other kinds
                note(result.decision)
            count += 1
        answered(count)


async def paced_stream(
    call: Any, items: Any, window: int, deadline: float, rate: float,
    hist: loadgen.Histogram, note: Any, errors: Counter[str], coalesce: bool,
    late: loadgen.Histogram | None, start: float,
) -> bool:  # fmt: skip
    """A stream paced at ``rate``/s, as a gateway's messages arrive: one due every
    1/``rate`` s from ``start`` until ``deadline``. Every ``loadgen.TICK_S`` (a ``Ticker``:
    no spinning, so the load process's CPU is its requests', not its clock's) each request
    whose time has come joins the outbox (``late``: how long after its time), never one
    before it; the first tick at or past the deadline still queues those due before it, so
    a load process that got no CPU for a while (a loaded machine) sends them late, counted
    in ``late`` and the latency, rather than never (a stall of the whole run sent none, and
    every run lost the ones due after the last tick before the deadline). Coalescing, the
    writer sends the outbox in one message once fewer than the SDK's ``MESSAGES_IN_FLIGHT`` are
    unanswered (``client/_stream.py``: what a message waits for under load, instead of
    a message per request the server must read one by one); one a message otherwise.
    At most ``window`` requests unanswered: past it the due ones wait (and count it).
    Latency from each request's scheduled time."""
    loop = asyncio.get_running_loop()
    step = 1.0 / rate
    sent: collections.deque[float] = collections.deque()  # due times, written, unanswered
    outbox: list[tuple[float, bytes]] = []  # due, not written
    ends: collections.deque[int] = collections.deque()  # each unanswered message's last
    state = {"written": 0, "paced": False, "ran_out": False}
    wake: list[asyncio.Future[None] | None] = [None]
    cap = MESSAGES_IN_FLIGHT if coalesce else window

    def poke() -> None:
        waiter = wake[0]
        if waiter is not None and not waiter.done():
            wake[0] = None
            waiter.set_result(None)

    async def pace() -> None:
        ticker = loadgen.Ticker(min(step, loadgen.TICK_S))
        t = start
        try:
            now = start
            while now < deadline:
                now = await ticker.wait()
                before = len(outbox)
                while t + step <= min(now, deadline):
                    t += step
                    data = next(items, None)
                    if data is None:
                        state["ran_out"] = True
                        return
                    outbox.append((t, data))
                    if late is not None:
                        late.record(now - t)
                if len(outbox) > before:
                    poke()
        finally:
            ticker.close()
            state["paced"] = True
            poke()

    async def write() -> None:
        while True:
            room = min(window - len(sent), MAX_PER_MESSAGE if coalesce else 1)
            if not outbox or len(ends) >= cap or room <= 0:
                if state["paced"] and not outbox:
                    break
                waiter = wake[0] = loop.create_future()
                await waiter
                continue
            batch = outbox[:room]
            del outbox[:room]
            sent.extend(due for due, _ in batch)
            state["written"] += len(batch)
            ends.append(state["written"])
            if coalesce:
                await call.write(coalesced([data for _, data in batch]))
            else:
                await call.write(batch[0][1])
        await call.done_writing()

    def answered(count: int) -> None:
        while ends and ends[0] <= count:
            ends.popleft()
        poke()

    pacer, writer = asyncio.ensure_future(pace()), asyncio.ensure_future(write())
    await read_replies(call, sent, hist, note, errors, coalesce, answered)
    await pacer
    await writer
    return state["ran_out"]


COALESCE_FLAG = b"\x18\x01"  # RouteStreamRequest.coalesce = true


def framed(request: pb.RouteRequest) -> bytes:
    """``request`` as RouteStreamRequest's field 2 (``more``): tag, length, bytes."""
    body = request.SerializeToString()
    return b"\x12" + varint(len(body)) + body


def coalesced(parts: list[bytes]) -> bytes:
    """One RouteStreamRequest of ``framed`` requests: the first as ``request`` (field 1:
    the same framing, tag 0x0a), the rest as ``more``, and ``coalesce`` set."""
    return b"\x0a" + parts[0][1:] + b"".join(parts[1:]) + COALESCE_FLAG


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    return loadgen.run_in_process(drive, job)  # type: ignore[no-any-return]


# -- h2load with distinct requests ------------------------------------------------------

SHIM = Path(__file__).resolve().parent / "h2distinct.c"


def build_shim(where: Path) -> Path:
    """bench/h2distinct.c compiled (a C compiler is needed: cc)."""
    import subprocess

    out = where / "h2distinct.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(out), str(SHIM), "-ldl"],
                   check=True)  # fmt: skip
    return out


def h2load_template(kind: str, tag: str) -> tuple[bytes, dict[str, str]]:
    """The gRPC frame h2load sends and where the shim writes each request's count."""
    if kind == "echo":
        size = len(h2load_template("route_new", tag)[0]) - 5
        return grpc_frame(pb.EchoMessage(payload=b"x" * (size - 2)).SerializeToString()), {}
    buyer = f"h{tag}BBBBBBBBBB" if kind == "route_new" else "gBBBBBBBBBB"
    message = pb.RouteRequest(shop_id="cSSS", buyer_id=buyer, request_id=f"q{tag}RRRRRRRRRR",
                              channel="im").SerializeToString()  # fmt: skip
    frame = grpc_frame(message)
    return frame, {
        "FENLIU_H2_REQ_OFF": str(frame.index(b"R" * 10)),
        "FENLIU_H2_BUYER_OFF": str(frame.index(b"B" * 10)),
        "FENLIU_H2_SHOP_OFF": str(frame.index(b"SSS")),
    }


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def nth_body(frame: bytes, where: dict[str, str], n: int, shops: int, buyers: int) -> bytes:
    """What the shim makes of the template for the ``n``-th request (the sample check)."""
    b = bytearray(frame)
    fields = (
        ("FENLIU_H2_REQ_OFF", 10, n),
        ("FENLIU_H2_SHOP_OFF", 3, n % shops),
        ("FENLIU_H2_BUYER_OFF", 10, n % buyers if buyers else n),
    )
    for key, width, value in fields:
        if key in where:
            at = int(where[key])
            b[at : at + width] = f"{value:0{width}d}".encode()
    return bytes(b[5:])


def h2load_kind(
    server: Any, target: str, kind: str, args: argparse.Namespace, tag: str, shim: Path
) -> dict[str, Any]:
    import shutil
    import subprocess

    exe = shutil.which("h2load")
    if exe is None:
        raise SystemExit("h2load is missing: apt-get install -y nghttp2-client")
    frame, where = h2load_template(kind, tag)
    path = {"echo": loadgen.ECHO}.get(kind, loadgen.ROUTE)
    buyers = args.open_buyers if kind == "route_open" else 0
    with tempfile.NamedTemporaryFile(suffix=".bin") as body:
        body.write(frame)
        body.flush()
        environ = {**os.environ, **where, "LD_PRELOAD": str(shim), "FENLIU_H2_BODY": body.name,
                   "FENLIU_H2_SHOPS": str(args.shops), "FENLIU_H2_BUYERS": str(buyers)}  # fmt: skip
        cmd = [exe, "-n", str(args.h2_requests), "-c", str(args.h2_clients), "-m",
               str(args.h2_streams), "-t", "1", "-d", body.name, "-H",
               "content-type: application/grpc", "-H", "te: trailers",
               f"http://{target}{path}"]  # fmt: skip
        load = os.getloadavg()[0]
        counted = server_counters(server.proc.pid)
        cpu0 = cpu_seconds(server.proc.pid)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=environ)
        cpu = cpu_seconds(server.proc.pid) - cpu0
        counts = server_counters(server.proc.pid)
    import re

    rps = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", proc.stdout)
    ok = re.search(r"requests: .*?(\d+) succeeded, (\d+) failed", proc.stdout)
    done = int(ok.group(1)) if ok else 0
    out: dict[str, Any] = {
        "kind": kind, "per_s": float(rps.group(1)) if rps else 0.0, "done": done,
        "failed": int(ok.group(2)) if ok else None, "server_cpu_s": round(cpu, 3),
        "cpu_us_per_call": round(cpu / done * 1e6, 2) if done else None,
        "loadavg": round(load, 2), "command": " ".join(cmd),
        "per_call": attribution(counted, counts, done),
    }  # fmt: skip
    if kind != "echo":  # two of h2load's requests, sent again: retries of real decisions
        with grpc.insecure_channel(target) as channel:
            call = channel.unary_unary(path, response_deserializer=pb.Decision.FromString)
            sample = [call(nth_body(frame, where, n, args.shops, buyers), timeout=5)
                      for n in (5, 6)]  # fmt: skip
        expected = EXPECTED[kind.split("_")[1]]
        out["sample_reasons"] = [pb.Reason.Name(d.reason) for d in sample]
        out["real_decisions"] = (all(d.reason == expected for d in sample)
                                 and sample[0].buyer_id != sample[1].buyer_id)  # fmt: skip
    return out


# -- a run -------------------------------------------------------------------------------


CLK_TCK = os.sysconf("SC_CLK_TCK")


def server_counters(pid: int) -> dict[str, Any]:
    """What the kernel counts of process ``pid`` so far: user and system CPU (clock ticks,
    every thread, ended ones too), minor and major page faults (``/proc/<pid>/stat``), and
    per live thread its name, CPU in ns (``schedstat``'s run time) and voluntary and
    involuntary context switches (``status``). A thread that ends between two reads takes
    its switches with it (grpc's threads live as long as the server)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state) on
    threads: dict[int, tuple[str, int, int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            run_ns = int((task / "schedstat").read_text().split()[0])
            comm = (task / "comm").read_text().strip()
            status = (task / "status").read_text()
        except (OSError, ValueError, IndexError):  # the thread ended as it was read
            continue
        switches = {k: int(v) for k, _, v in (line.partition(":") for line in
                    status.splitlines()) if k.endswith("ctxt_switches")}  # fmt: skip
        threads[int(task.name)] = (comm, run_ns, switches.get("voluntary_ctxt_switches", 0),
                                   switches.get("nonvoluntary_ctxt_switches", 0))  # fmt: skip
    return {"pid": pid, "minflt": int(fields[7]), "majflt": int(fields[9]),
            "utime": int(fields[11]), "stime": int(fields[12]), "threads": threads}  # fmt: skip


ATTRIBUTION = ("user_us", "system_us", "main_thread_us", "other_threads_us", "minflt",
               "vcsw", "ivcsw")  # fmt: skip
"""bench/cpu.py's attribution of a kind's server CPU, each per call (per decision)."""


def attribution(before: dict[str, Any], after: dict[str, Any], calls: int) -> dict[str, Any]:
    """Where the server's CPU of ``calls`` went between two ``server_counters``, per call:
    user and system µs, the main thread's µs (the event loop: fenliu's and grpc.aio's
    Python) and every other thread's (grpc's C core: its poller, timer and executor
    threads), minor faults, voluntary and involuntary context switches (all threads), and
    each thread name's µs (``threads_us``)."""
    calls = max(calls, 1)
    tick_us = 1e6 / CLK_TCK
    main = after["pid"]
    by_name: Counter[str] = Counter()
    main_ns = others_ns = vcsw = ivcsw = 0
    for tid, (comm, run_ns, vol, invol) in after["threads"].items():
        _, run0, vol0, invol0 = before["threads"].get(tid, (comm, 0, 0, 0))
        ran = run_ns - run0
        by_name[comm] += ran
        if tid == main:
            main_ns += ran
        else:
            others_ns += ran
        vcsw += vol - vol0
        ivcsw += invol - invol0
    return {
        "user_us": round((after["utime"] - before["utime"]) * tick_us / calls, 2),
        "system_us": round((after["stime"] - before["stime"]) * tick_us / calls, 2),
        "main_thread_us": round(main_ns / 1e3 / calls, 2),
        "other_threads_us": round(others_ns / 1e3 / calls, 2),
        "minflt": round((after["minflt"] - before["minflt"]) / calls, 4),
        "majflt": round((after["majflt"] - before["majflt"]) / calls, 4),
        "vcsw": round(vcsw / calls, 3), "ivcsw": round(ivcsw / calls, 3),
        "threads": len(after["threads"]),
        "threads_us": {k: round(v / 1e3 / calls, 2) for k, v in sorted(by_name.items())},
    }  # fmt: skip


def measure(server: Any, pool: Any, job: dict[str, Any], procs: int) -> dict[str, Any]:
    """``job`` run by ``procs`` load processes against ``server``; its CPU is that of every
    process in ``server.pids`` when it has them (a router and its Redis,
    bench/redis_compare.py), else of ``server.proc``; ``per_call`` attributes the first's."""
    jobs = [{**job, "proc": i, "procs": procs} for i in range(procs)]
    pids = getattr(server, "pids", None) or [server.proc.pid]
    load = os.getloadavg()[0]
    counted = server_counters(pids[0])
    cpu0 = [cpu_seconds(pid) for pid in pids]
    parts = pool.map(_worker, jobs)
    by_process = [cpu_seconds(pid) - c for pid, c in zip(pids, cpu0, strict=True)]
    cpu = sum(by_process)
    counts = server_counters(pids[0])
    done = sum(p["done"] for p in parts)
    seconds = max(p["seconds"] for p in parts)
    hist, late = loadgen.Histogram(), loadgen.Histogram()
    reasons: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for p in parts:
        hist.merge(loadgen.Histogram.from_wire(p["latency"]))
        late.merge(loadgen.Histogram.from_wire(p["late"]))
        reasons.update(p["reasons"])
        errors.update(p["errors"])
    kind = job["kind"]
    expected = EXPECTED.get(case_of(kind))
    real = None
    if expected is not None:
        sampled = sum(reasons.values())
        real = bool(sampled) and reasons[pb.Reason.Name(expected)] / sampled >= 0.99
    return {
        "kind": kind, "done": done, "seconds": round(seconds, 3),
        "per_s": round(done / seconds, 1), "server_cpu_s": round(cpu, 3),
        "server_cpu_s_by_process": [round(c, 3) for c in by_process],
        "cpu_us_per_call": round(cpu / done * 1e6, 2) if done else None,
        "latency_ms": hist.summary(), "reasons_sampled": dict(reasons),
        "real_decisions": real, "errors": dict(errors), "loadavg": round(load, 2),
        "exhausted": any(p["exhausted"] for p in parts),
        "budget": sum(p["budget"] for p in parts),
        "load_cpu": [p["load_cpu"] for p in parts], "loadavg_end": round(os.getloadavg()[0], 2),
        "per_call": attribution(counted, counts, done),
        **({"late_ms": late.summary()} if late.total else {}),
    }  # fmt: skip


def weighted(pool: Any) -> list[Any]:
    """A cgroup of a high CPU weight and no quota (``bench/cgroups.py``) for the servers
    (the first: ``Worlds`` moves each server it starts into it) and one for each load
    process, moved in now (one each, as ``bench/cluster.py`` gives each node one: cgroup
    v1 shares are a group's, not each process's): on shared cores, other work then waits
    for them rather than they for it (``--cgroup``; a paced stream's latency is mostly that
    wait)."""
    from cgroups import CpuCap, cgroup_root

    root, caps = cgroup_root(None), []
    try:
        caps.append(CpuCap(root, f"fenliu-bench-cpu-{os.getpid()}-server", 0))
        for i, worker in enumerate(pool._pool):
            caps.append(CpuCap(root, f"fenliu-bench-cpu-{os.getpid()}-{i}", 0))
            caps[-1].move([worker.pid])
    except OSError:
        for cap in caps:
            cap.remove()
        raise
    return caps


def measure_paced(
    server: Any, pool: Any, base: dict[str, Any], args: argparse.Namespace, rate: float, tag: str
) -> dict[str, Any]:
    """The paced stream at ``rate``/s in all, each load process pacing its share on its
    own streams, the latency of all merged; ``warnings`` when a load process could not
    keep its pace (made under 97% of it) or used more than ``LOAD_CPU_WARN`` of a core."""
    from run import progress

    job = {**base, "kind": args.paced_kind, "tag": tag, "rate": rate / args.procs,
           "streams": args.paced_streams, "window": args.paced_window}  # fmt: skip
    f = {**measure(server, pool, job, args.procs), "rate": rate, "warnings": []}
    if f["per_s"] < 0.97 * rate:
        f["warnings"].append(f"paced at {rate:,.0f}/s the load processes made {f['per_s']:,.0f}/s:"
                             f" they could not keep the pace (more --procs?)")  # fmt: skip
    busy = [c for c in f["load_cpu"] if c > LOAD_CPU_WARN]
    if busy:
        f["warnings"].append(f"paced at {rate:,.0f}/s a load process used {max(busy):.0%} of a "
                             f"core (over {LOAD_CPU_WARN:.0%}): its own delays are in the "
                             f"latency (more --procs?)")  # fmt: skip
    late = f.get("late_ms", {}).get("p99_ms", 0.0)
    progress(f"RouteStream paced at {rate:,.0f}/s ({args.procs} load processes): made "
             f"{f['per_s']:,.0f}/s, p50 {f['latency_ms']['p50_ms']} ms, p99 "
             f"{f['latency_ms']['p99_ms']} ms (queued late p99 {late} ms), server "
             f"{f['cpu_us_per_call']} µs CPU/decision, load CPU {f['load_cpu']}, load "
             f"{f['loadavg']}-{f['loadavg_end']}")  # fmt: skip
    for warning in f["warnings"]:
        progress(f"WARNING: {warning}")
    return f


def spread(values: list[float]) -> float:
    mid = statistics.median(values)
    return (max(values) - min(values)) / mid if mid else 0.0


def summarize(
    rounds: list[dict[str, dict[str, Any]]],
    paced: dict[str, Any] | None,
    paced_rates: list[dict[str, Any]] | None = None,
    kinds: tuple[str, ...] = KINDS,
) -> dict:
    s: dict[str, Any] = {"warnings": []}

    def per_round(f: Any, name: str) -> float | None:
        try:
            values = [f(r) for r in rounds]
        except KeyError:  # a kind of the ratio was not run (--kinds)
            return None
        s[f"{name}_by_round"] = [round(v, 3) for v in values]
        if len(values) > 1 and spread(values) > SPREAD:
            s["warnings"].append(f"{name}: rounds disagree by {spread(values):.0%}: {values}")
        s[name] = round(statistics.median(values), 3)
        return s[name]

    for kind in kinds:
        per_round(lambda r, k=kind: r[k]["cpu_us_per_call"], f"{kind}_cpu_us")
        per_round(lambda r, k=kind: r[k]["per_s"], f"{kind}_per_s")
    for case in ("new", "open"):
        per_round(lambda r, c=case: r["echo"]["cpu_us_per_call"] / r[f"route_{c}"][
            "cpu_us_per_call"], f"route_{case}_vs_echo_by_cpu")  # fmt: skip
        per_round(lambda r, c=case: r[f"route_{c}"]["cpu_us_per_call"] / r[f"stream_{c}"][
            "cpu_us_per_call"], f"stream_{case}_vs_route_by_cpu")  # fmt: skip
    per_round(lambda r: r["route_new"]["cpu_us_per_call"] / r["stream_new_single"][
        "cpu_us_per_call"], "stream_new_single_vs_route_by_cpu")  # fmt: skip
    per_round(lambda r: r["stream_new_single"]["cpu_us_per_call"] / r["stream_new"][
        "cpu_us_per_call"], "stream_new_vs_single_by_cpu")  # fmt: skip
    if "h2load_echo" in rounds[0]:
        for kind in ("echo", "route_new", "route_open"):
            per_round(
                lambda r, k=kind: r[f"h2load_{k}"]["cpu_us_per_call"], f"h2load_{kind}_cpu_us"
            )
            per_round(lambda r, k=kind: r[f"h2load_{k}"]["per_s"], f"h2load_{kind}_per_s")
        for case in ("new", "open"):
            per_round(
                lambda r, c=case: (
                    r["h2load_echo"]["cpu_us_per_call"] / r[f"h2load_route_{c}"]["cpu_us_per_call"]
                ),
                f"h2load_route_{case}_vs_echo_by_cpu",
            )
            per_round(lambda r, c=case: r[f"h2load_route_{c}"]["per_s"] / r["h2load_echo"][
                "per_s"], f"h2load_route_{case}_vs_echo_by_throughput")  # fmt: skip
        if not all(
            r[f"h2load_route_{c}"]["real_decisions"] for r in rounds for c in ("new", "open")
        ):
            s["warnings"].append("an h2load sample was not the expected decision")
    s["attribution"] = attribution_summary(rounds, kinds)
    s["real_decisions"] = all(r[k]["real_decisions"] for r in rounds for k in kinds if k != "echo")
    if not s["real_decisions"]:
        s["warnings"].append("a sample's decision reason was not the expected one")
    short = sorted({k for r in rounds for k in kinds if r[k]["exhausted"]})
    if paced is not None and paced["exhausted"]:
        short.append("the paced stream")
    if short:
        s["warnings"].append(f"ran out of pre-built requests (even with a larger budget): "
                             f"{', '.join(short)}; raise --max-rate")  # fmt: skip
    s["reruns"] = [r for rnd in rounds for r in rnd.get("reruns", [])]
    if any(r[k]["errors"] for r in rounds for k in kinds):
        s["warnings"].append("some calls failed: see errors")
    s["paced_stream"] = paced
    s["paced_rates"] = paced_rates or []
    for f in ([paced] if paced else []) + s["paced_rates"]:
        s["warnings"] += f.get("warnings", [])
    return s


def attribution_summary(
    rounds: list[dict[str, dict[str, Any]]], kinds: tuple[str, ...]
) -> dict[str, dict[str, float]]:
    """Per kind (and h2load's), the median of the rounds' ``per_call`` attribution; and
    for each Route kind its difference from Echo (``route_new - echo``): each round's
    difference, then the median (the same minute of the machine for both)."""
    out: dict[str, dict[str, float]] = {}
    names = [k for k in kinds] + [k for k in rounds[0] if k.startswith("h2load_")]
    for kind in names:
        if not all("per_call" in r.get(kind, {}) for r in rounds):
            continue
        out[kind] = {f: round(statistics.median(r[kind]["per_call"][f] for r in rounds), 3)
                     for f in ATTRIBUTION}  # fmt: skip
    for prefix in ("", "h2load_"):
        echo = f"{prefix}echo"
        for case in ("new", "open"):
            route = f"{prefix}route_{case}"
            if echo in out and route in out:
                out[f"{route} - {echo}"] = {
                    f: round(statistics.median(r[route]["per_call"][f] - r[echo]["per_call"][f]
                                               for r in rounds), 3)
                    for f in ATTRIBUTION
                }  # fmt: skip
    return out


def markdown(record: dict[str, Any]) -> str:
    s, p = record["summary"], record["parameters"]
    last = record["rounds"][-1]
    kinds = tuple(record.get("kinds", KINDS))
    met = {True: "met", False: "NOT met", None: "—"}
    lines = [
        f"Run {record['started']} on {os.cpu_count()} cores, load average "
        f"{record['loadavg_start']:.1f} at start / {record['loadavg_end']:.1f} at end, "
        f"commit {record['commit']}; medians of {p['rounds']} interleaved rounds of "
        f"{p['seconds']} s, {p['procs']} load processes; journal "
        f"{'on' if p['data_dir'] else 'off'}. World: {record.get('world_bound', '')}.",
        "",
        "| kind | decisions/s | server CPU µs/call | by round | load avg (last round) "
        "| p99 ms (last) | real decisions |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in kinds:
        lines.append(
            f"| {kind} | {s[f'{kind}_per_s']:,.0f} | {s[f'{kind}_cpu_us']:.1f} "
            f"| {', '.join(f'{v:.1f}' for v in s[f'{kind}_cpu_us_by_round'])} "
            f"| {last[kind]['loadavg']} | {last[kind]['latency_ms']['p99_ms']:.2f} "
            f"| {'—' if kind == 'echo' else last[kind]['real_decisions']} |"
        )
    h2 = "h2load_echo_cpu_us" in s
    if h2:
        for kind in ("echo", "route_new", "route_open"):
            lines.append(
                f"| h2load {kind} | {s[f'h2load_{kind}_per_s']:,.0f} "
                f"| {s[f'h2load_{kind}_cpu_us']:.1f} "
                f"| {', '.join(f'{v:.1f}' for v in s[f'h2load_{kind}_cpu_us_by_round'])} "
                f"| {last[f'h2load_{kind}']['loadavg']} | — "
                f"| {last[f'h2load_{kind}'].get('real_decisions', '—')} |"
            )
    paced = s.get("paced_stream") or {}
    rows: list[tuple[str, Any, str, bool | None]] = []

    def row(name: str, key: str, target: str, bound: float | None, text: str = "") -> None:
        value = s.get(key)
        if value is not None:  # None: a kind of it was not run (--kinds)
            rows.append((name, text.format(value) if text else value, target,
                         None if bound is None else value >= bound))  # fmt: skip

    row("Route/Echo by server CPU per call, new buyers", "route_new_vs_echo_by_cpu", "≥ 0.90",
        0.90)  # fmt: skip
    row("Route/Echo by server CPU per call, open-session messages",
        "route_open_vs_echo_by_cpu", "≥ 0.90", 0.90)  # fmt: skip
    row("RouteStream/Route decisions per server CPU-second, new buyers",
        "stream_new_vs_route_by_cpu", "≥ 3", 3)  # fmt: skip
    row("RouteStream/Route decisions per server CPU-second, open sessions",
        "stream_open_vs_route_by_cpu", "≥ 3", 3)  # fmt: skip
    row("RouteStream one request a message (not coalescing)/Route, new buyers",
        "stream_new_single_vs_route_by_cpu", "(before)", None)  # fmt: skip
    row("RouteStream coalescing/one a message, new buyers", "stream_new_vs_single_by_cpu",
        "(the gain)", None)  # fmt: skip
    row("RouteBatch of new buyers, decisions/s", "batch_new_per_s", "≥ 150,000", 150_000,
        "{:,.0f}")  # fmt: skip
    if h2:
        for case, name in (("new", "new buyers"), ("open", "open-session messages")):
            value = s[f"h2load_route_{case}_vs_echo_by_cpu"]
            rows.append((f"h2load Route/Echo by server CPU per call, {name}", value, "≥ 0.90",
                         value >= 0.90))  # fmt: skip
            value = s[f"h2load_route_{case}_vs_echo_by_throughput"]
            rows.append((f"h2load Route/Echo by throughput, {name}", value, "≥ 0.90",
                         value >= 0.90))  # fmt: skip
    if paced:
        at = "a set rate" if p.get("paced_rate") else "half its max rate"
        if p.get("paced_kind", "stream_new") != "stream_new":
            at += f", {p['paced_kind']}"
        rows.append((f"RouteStream p99 at {at} ({paced['rate']:,.0f}/s, "
                     f"{paced['per_s']:,.0f}/s made)",
                     f"{paced['latency_ms']['p99_ms']:.2f} ms", "≤ 5 ms",
                     paced["latency_ms"]["p99_ms"] <= 5.0))  # fmt: skip
    lines += ["", "| target | measured (median of rounds) | target | |", "|---|---|---|---|"]
    lines += [f"| {name} | {value} | {target} | {met[ok]} |" for name, value, target, ok in rows]
    every = ([paced] if paced else []) + s.get("paced_rates", [])
    if every:
        head = f"| paced ({p['procs']} load processes, {p['paced_streams']} streams each)"
        lines += ["", head + " | asked | made | server CPU µs/decision | p50 ms | p99 ms "
                  "| queued late p99 ms | load CPU (each) | load avg |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for i, f in enumerate(every):
            name = ("half its max rate" if not p.get("paced_rate") else "set rate") if (
                paced and i == 0) else "set rate"  # fmt: skip
            lines.append(
                f"| {name} | {f['rate']:,.0f}/s | {f['per_s']:,.0f}/s | {f['cpu_us_per_call']} "
                f"| {f['latency_ms']['p50_ms']:.2f} | {f['latency_ms']['p99_ms']:.2f} "
                f"| {f.get('late_ms', {}).get('p99_ms', 0.0):.2f} "
                f"| {', '.join(f'{c:.2f}' for c in f['load_cpu'])} "
                f"| {f['loadavg']}–{f['loadavg_end']} |"
            )
    if s.get("attribution"):
        lines += ["", "Where the server's CPU goes, per call (per decision for batch and stream "
                  "kinds), medians of rounds (differences: each round's, then the median); "
                  "user/system from /proc ticks, threads from schedstat:", "",
                  "| kind | user µs | system µs | main thread µs | other threads µs "
                  "| minor faults | voluntary cs | involuntary cs |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for kind, f in s["attribution"].items():
            lines.append(f"| {kind} | {f['user_us']:.1f} | {f['system_us']:.1f} "
                         f"| {f['main_thread_us']:.1f} | {f['other_threads_us']:.1f} "
                         f"| {f['minflt']:.3f} | {f['vcsw']:.2f} | {f['ivcsw']:.2f} |")  # fmt: skip
    for rerun in s.get("reruns", []):
        lines.append(
            f"\nRound {rerun['round']}'s {rerun['kind']} ran out of its "
            f"{rerun['budget']:,} pre-built requests and was measured again with more."
        )
    if "ab" in s:
        lines += ["", f"A/B, the same rounds: this build ({record['builds']['this']}) against "
                  f"{record['ab']['python']}, each kind on one then the other",
                  "", "| kind | this µs/call | base µs/call | this/base (median of rounds) "
                  "| by round |", "|---|---|---|---|---|"]  # fmt: skip
        for kind, f in s["ab"].items():
            lines.append(
                f"| {kind} | {f['this_cpu_us']:.2f} | {f['base_cpu_us']:.2f} "
                f"| {f['ratio']:.3f} | {', '.join(map(str, f['ratio_by_round']))} |"
            )
    if s["warnings"]:
        lines += ["", *(f"WARNING: {w}" for w in s["warnings"])]
    return "\n".join(lines) + "\n"


class Worlds:
    """Where each kind runs: a fresh server per kind (``--world per-kind``: the world is the
    build plus that kind's own sessions, never earlier kinds'), or one server per build
    for the whole run (``shared``: the world grows by every new buyer of every kind).
    ``builds`` maps a build's name to its Python (``this``: the running one; ``--ab-python``
    adds ``base``), each server started with that interpreter."""

    def __init__(self, args: argparse.Namespace, builds: dict[str, str], tmp: str) -> None:
        self.args, self.builds, self.tmp = args, builds, tmp
        self.shared: dict[str, tuple[Any, str]] = {}
        self.world: dict[str, Any] = {}
        self.starts = itertools.count()
        self.cap: Any = None  # --cgroup: the servers' cgroup (``weighted``)

    def _start(self, build: str) -> tuple[Any, str]:
        from run import ServerProcess, progress

        args = self.args
        data = os.path.join(self.tmp, f"data{next(self.starts)}") if args.data_dir else ""
        server = ServerProcess(data_dir=data, fsync=not args.no_fsync)
        server.args[0] = self.builds[build]
        try:
            target = server.start()
            if self.cap is not None:
                self.cap.move([server.proc.pid])
            self.world = loadgen.run_in_process(
                build_world, target, args.shops, args.agents, args.open_buyers
            )
        except BaseException:
            server.stop()
            raise
        if not self.shared or args.world == "per-kind" and build == "this":
            progress(f"cpu: world {self.world} on {target} ({build}, {args.world})")
        return server, target

    def start_shared(self) -> None:
        if self.args.world == "shared":
            for build in self.builds:
                self.shared[build] = self._start(build)

    @contextlib.contextmanager
    def serving(self, build: str) -> Any:
        if build in self.shared:
            yield self.shared[build]
            return
        server, target = self._start(build)
        try:
            yield server, target
        finally:
            server.stop()

    def stop(self) -> None:
        for server, _ in self.shared.values():
            server.stop()


def world_bound(args: argparse.Namespace, world: dict[str, Any], rounds: list[Any]) -> str:
    """What the world held while a kind was measured, in words: the largest number of open
    sessions (the build's plus every new buyer decided before and during the kind)."""
    opened = world.get("open_sessions", 0)
    if args.world == "per-kind":
        most = max((opened + r[k]["done"] for r in rounds for k in r if k.endswith(("_new",
                    "_new_single")) and isinstance(r[k], dict)), default=opened)  # fmt: skip
        return (f"a fresh server per kind: {world.get('shops')} shops, "
                f"{world.get('agents')} agents, {opened:,} open sessions, plus the kind's own "
                f"new sessions (at most {most:,} in all)")  # fmt: skip
    made = sum(r[k]["done"] for r in rounds for k in r if k.endswith(("_new", "_new_single"))
               and isinstance(r[k], dict))  # fmt: skip
    return (
        f"one server for the run: {world.get('shops')} shops, {world.get('agents')} "
        f"agents, {opened:,} open sessions growing to ~{opened + made:,} by the end"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    import multiprocessing
    import subprocess

    from run import progress

    kinds = selected(args)
    builds = {"this": args.server_python or sys.executable}
    if args.ab_python:
        builds["base"] = args.ab_python
    record: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_start": os.getloadavg()[0],
        "parameters": {k: v for k, v in vars(args).items() if k != "func"},
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True, cwd=Path(__file__).parent).stdout.strip(),
        "kinds": list(kinds), "builds": builds, "rounds": [],
    }  # fmt: skip
    by_build: dict[str, list[dict[str, Any]]] = {b: [] for b in builds}
    with tempfile.TemporaryDirectory(prefix="fenliu-cpu-") as tmp:
        worlds = Worlds(args, builds, tmp)
        pool = multiprocessing.get_context("spawn").Pool(args.procs)
        caps: list[Any] = []
        try:
            if args.cgroup:
                caps = weighted(pool)
                worlds.cap = caps[0]
                record["cgroup"] = f"{len(caps)} x {caps[0].describe()}"
            worlds.start_shared()
            base = {
                "shops": args.shops, "open_buyers": args.open_buyers,
                "seconds": args.seconds, "concurrency": args.concurrency,
                "batch": args.batch_size, "streams": args.streams, "window": args.window,
                "max_rate": args.max_rate,
            }  # fmt: skip
            tags = itertools.count()
            budget_rates: dict[str, float] = {}  # per load process: never below --max-rate
            for i in range(args.rounds):
                rnds: dict[str, dict[str, Any]] = {b: {} for b in builds}
                for kind in kinds:
                    for build in builds:  # interleaved: each kind on every build in turn
                        rnd = rnds[build]
                        with worlds.serving(build) as (server, target):
                            job = {**base, "target": target, "kind": kind,
                                   "tag": f"t{next(tags)}"}  # fmt: skip
                            if kind.startswith("batch"):
                                job["concurrency"] = args.batch_concurrency
                            job["budget_rate"] = budget_rates.get(kind)
                            for attempt in range(BUDGET_ATTEMPTS):
                                rnd[kind] = f = measure(server, pool, job, args.procs)
                                # the next rounds pre-build for twice the fastest rate seen
                                rate = max(
                                    budget_rates.get(kind) or 0.0,
                                    2 * f["per_s"] / args.procs,
                                    args.max_rate * (4 if kind.startswith("batch") else 1),
                                )
                                budget_rates[kind] = rate
                                if not f["exhausted"] or attempt == BUDGET_ATTEMPTS - 1:
                                    break
                                rnd.setdefault("reruns", []).append(
                                    {"kind": kind, "round": i + 1, "budget": f["budget"]}
                                )
                                progress(f"round {i + 1}/{args.rounds} {kind}: ran out of its "
                                         f"{f['budget']:,} pre-built requests at "
                                         f"{f['per_s']:,.0f}/s; measuring it again with "
                                         f"{rate:,.0f}/s")  # fmt: skip
                                job = {**job, "tag": f"t{next(tags)}", "budget_rate": rate}
                            f["rss_mib"] = round(server.rss_kib() / 1024, 1)
                            f["server_pid"] = server.proc.pid
                        progress(f"round {i + 1}/{args.rounds} {kind} ({build}): "
                                 f"{f['per_s']:,.0f}/s, {f['cpu_us_per_call']} µs server "
                                 f"CPU/call, load {f['loadavg']}, RSS {f['rss_mib']} MiB"
                                 + (f", errors {f['errors']}" if f["errors"] else ""))  # fmt: skip
                for build in builds:
                    by_build[build].append(rnds[build])
            record["rounds"] = by_build["this"]
            if args.h2load:
                shim = build_shim(Path(tmp))
                for i in range(args.rounds):
                    for kind in ("echo", "route_new", "route_open"):
                        with worlds.serving("this") as (server, target):
                            f = h2load_kind(server, target, kind, args, f"{i}{next(tags)}", shim)
                        record["rounds"][i][f"h2load_{kind}"] = f
                        progress(f"h2load round {i + 1} {kind}: {f['per_s']:,.0f}/s, "
                                 f"{f['cpu_us_per_call']} µs server CPU/call, load "
                                 f"{f['loadavg']}, {f.get('sample_reasons', '')}")  # fmt: skip
            paced = None
            record["paced_rates"] = []
            if args.paced and "stream_new" in kinds:
                rate = (
                    args.paced_rate
                    or statistics.median(r["stream_new"]["per_s"] for r in record["rounds"]) / 2
                )
                with worlds.serving("this") as (server, target):
                    paced = measure_paced(server, pool, {**base, "target": target}, args, rate,
                                          "paced")  # fmt: skip
                for k, rate in enumerate(args.paced_rates):
                    with worlds.serving("this") as (server, target):
                        f = measure_paced(server, pool, {**base, "target": target}, args, rate,
                                          f"paced{k}")  # fmt: skip
                    record["paced_rates"].append(f)
        finally:
            pool.close()
            pool.join()
            worlds.stop()
            for cap in caps:
                cap.remove()
    record["world"] = worlds.world
    record["world_bound"] = world_bound(args, worlds.world, record["rounds"])
    record["loadavg_end"] = os.getloadavg()[0]
    record["summary"] = summarize(record["rounds"], paced, record["paced_rates"], kinds)
    if "base" in builds:
        record["ab"] = {"python": builds["base"], "rounds": by_build["base"],
                        "summary": summarize(by_build["base"], None, None, kinds)}  # fmt: skip
        record["summary"]["ab"] = ab_summary(record["rounds"], by_build["base"], kinds)
    return record


def selected(args: argparse.Namespace) -> tuple[str, ...]:
    kinds = tuple(k for k in args.kinds.split(",") if k) if args.kinds else KINDS
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise SystemExit(f"--kinds: unknown {unknown}; one of {', '.join(KINDS)}")
    return tuple(k for k in KINDS if k in kinds)  # the usual order


def ab_summary(
    this: list[dict[str, Any]], other: list[dict[str, Any]], kinds: tuple[str, ...]
) -> dict[str, Any]:
    """Per kind: both builds' median server CPU a call and the median of the rounds'
    ratios (this build's CPU over the other's, each round's pair measured back to back)."""
    out: dict[str, Any] = {}
    for kind in kinds:
        mine = [r[kind]["cpu_us_per_call"] for r in this]
        theirs = [r[kind]["cpu_us_per_call"] for r in other]
        ratios = [a / b for a, b in zip(mine, theirs, strict=True)]
        out[kind] = {"this_cpu_us": round(statistics.median(mine), 2),
                     "base_cpu_us": round(statistics.median(theirs), 2),
                     "ratio": round(statistics.median(ratios), 3),
                     "ratio_by_round": [round(r, 3) for r in ratios]}  # fmt: skip
    return out


def add_load_arguments(p: argparse.ArgumentParser) -> None:
    """The load processes and the world (also bench/redis_compare.py's)."""
    p.add_argument("--procs", type=int, default=1, help="load processes")
    p.add_argument("--concurrency", type=int, default=64, help="unary callers per process")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--batch-concurrency", type=int, default=2, help="per process")
    p.add_argument("--streams", type=int, default=2, help="RouteStreams per process")
    p.add_argument("--window", type=int, default=64, help="unanswered per stream")
    # 400 shops x 4 agents x 10,000: room for ~16M new buyers; a run of 5 rounds makes
    # ~1M a round since RouteStream coalesces (100 shops filled up by round 4: QUEUE_FULL)
    p.add_argument("--shops", type=int, default=400)
    p.add_argument("--agents", type=int, default=4, help="per shop")
    p.add_argument("--open-buyers", type=int, default=5000)
    p.add_argument("--max-rate", type=float, default=60_000,
                   help="requests pre-built per s (4x for batches)")  # fmt: skip


def add_arguments(p: argparse.ArgumentParser, quick: bool = False) -> None:
    p.add_argument("--rounds", type=int, default=2 if quick else 5)
    p.add_argument("--seconds", type=float, default=1.5 if quick else 5.0, help="per kind")
    add_load_arguments(p)
    p.add_argument("--paced-kind", default="stream_new",
                   choices=("stream_new", "stream_new_single"),
                   help="the paced stream: coalescing (the SDK's) or one a message")  # fmt: skip
    p.add_argument("--no-paced", dest="paced", action="store_false",
                   help="skip RouteStream at half its max rate")  # fmt: skip
    p.add_argument("--paced-rate", type=float, default=0.0,
                   help="pace the stream at this rate/s instead (0: half the median "
                        "stream_new rate)")  # fmt: skip
    p.add_argument("--paced-streams", type=int, default=1,
                   help="paced RouteStreams per load process (a gateway has one)")  # fmt: skip
    p.add_argument("--paced-window", type=int, default=2000,
                   help="paced: unanswered requests a stream may have (the SDK's bound is "
                        "the server's flow control)")  # fmt: skip
    p.add_argument("--paced-rates", type=lambda s: [float(x) for x in s.split(",") if x],
                   default=[], help="then pace at each of these rates/s too")  # fmt: skip
    p.add_argument("--cgroup", action="store_true",
                   help="the server and load processes in a cgroup of high CPU weight, "
                        "no quota (bench/cgroups.py; root): others' work waits")  # fmt: skip
    p.add_argument("--kinds", default="", help=f"comma-separated, of {','.join(KINDS)} (all)")
    p.add_argument("--world", choices=("per-kind", "shared"),
                   default="shared" if quick else "per-kind",
                   help="per-kind: a fresh server and world for every kind of every round "
                        "(the world holds the build and that kind's new sessions only); "
                        "shared: one server for the run, its world growing by every new "
                        "buyer of every kind")  # fmt: skip
    p.add_argument("--server-python", default="",
                   help="the server's interpreter (default: this one's)")  # fmt: skip
    p.add_argument("--ab-python", default="",
                   help="also run every kind on a server of this Python (another build, "
                        "e.g. /work/venvs/base/bin/python), interleaved: an A/B table")  # fmt: skip
    p.add_argument("--data-dir", action="store_true", help="journal on (a temporary dir)")
    p.add_argument("--no-fsync", action="store_true")
    p.add_argument("--out", default="", help="write cpu.json and cpu.md here")
    p.add_argument("--no-h2load", dest="h2load", action="store_false")
    p.add_argument("--h2-requests", type=int, default=10_000 if quick else 50_000)
    p.add_argument("--h2-clients", type=int, default=4)
    p.add_argument("--h2-streams", type=int, default=16)


def write_out(out: str, stem: str, record: dict[str, Any], table: str) -> None:
    """``record`` as ``stem.json`` and ``table`` as ``stem.md`` in folder ``out`` (made
    when missing); nothing when ``out`` is empty (no ``--out``)."""
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
        (folder / f"{stem}.md").write_text(table)


def main(args: argparse.Namespace) -> int:
    record = run(args)
    table = markdown(record)
    write_out(args.out, "cpu", record, table)
    print(table)
    return 0

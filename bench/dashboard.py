"""Do open dashboards slow routing, and how soon does a Route reach a page? (issue 13)

    python bench/dashboard.py                          # 3 rounds of 3 s per mode, 300 delays
    python bench/dashboard.py --seconds 2 --rounds 1 --samples 100
    python bench/dashboard.py screenshot docs/dashboard.png   # the README's picture

Three processes, as deployed: ``fenliu-server`` (in memory: journal off, so routing is
CPU-bound and any CPU the dashboard takes shows), ``fenliu-dashboard`` and, for the
"20 dashboards" mode, a reader process holding 20 SSE connections to the shop's page
stream (each parses every message, as a page would). This process drives routing over
gRPC: workers route a new buyer and end its session, over and over, in the watched shop.
Modes alternate within one run: 0 pages (the dashboard then watches nothing: ``--linger
0``), 1 page and 20 pages (one watch stream either way: the difference is the fan-out).
Each process's CPU per decision is reported too, and the ratio it implies (on 2 saturated
cores the rate goes as 1 / the CPU every process spends per decision). Then the same
modes under a paced load (``--rate`` decisions/s, open loop): the dashboard's and the
pages' cores at the same events in every mode. Then, with the 20 pages open, Route ->
page delay: routes paced every 50 ms, each timed
from just before the Route call to the arrival of its ``assigned`` event at an SSE client
in this process (an SSE client, not a browser: the browser's rendering is not in it).
Prints one JSON record.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fenliu.client import AsyncClient, Status

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import process_cpu_s  # noqa: E402
from watch import SHOP, drive  # noqa: E402 - the same Route + end load as the watcher bench

BIN = Path(sys.executable).parent


class Child:
    """A child process; waits for the stderr line naming its port."""

    def __init__(self, args: list[str], ready: str) -> None:
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        found = threading.Event()
        self.port = 0
        lines: list[str] = []

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                lines.append(line)
                match = re.search(ready, line)
                if match and not found.is_set():
                    self.port = int(match.group(1))
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(30) or not self.port:
            self.stop()
            raise SystemExit(f"{args[0]} did not start:\n{''.join(lines)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_fenliu(data_dir: str = "") -> Child:
    args = [str(BIN / "fenliu-server"), "--port", "0", "--data-dir", data_dir, "--shards", "4"]
    return Child(args, r"fenliu serving on 127\.0\.0\.1:(\d+)$")


def start_dashboard(target: str, linger: float = 0.0, nice: int = 0) -> Child:
    args = ["nice", "-n", str(nice)] if nice else []
    args += [str(BIN / "fenliu-dashboard"), "--fenliu", target, "--port", "0"]
    args += ["--linger", str(linger)]
    return Child(args, r"serving on http://127\.0\.0\.1:(\d+) ")


# ---------------------------------------------------------------- SSE clients


_WRITERS: list[asyncio.StreamWriter] = []  # a dropped writer closes its connection


async def open_sse(port: int, shop: str) -> asyncio.StreamReader:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
    _WRITERS.append(writer)
    writer.write(
        f"GET /shops/{shop}/events HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    return reader


async def messages(reader: asyncio.StreamReader) -> Any:
    """(event, data) of each SSE message (chunked transfer framing skipped)."""
    kind = ""
    while True:
        line = await reader.readline()
        if not line:
            return
        text = line.decode().rstrip("\r\n")
        if text.startswith("event: "):
            kind = text[7:]
        elif text.startswith("data: "):
            yield kind, text[6:]


async def readers(port: int, shop: str, n: int, limit: float) -> None:
    """The reader process: ``n`` SSE clients; prints "ready" once each has the state, and
    a JSON line of what they read when stdin closes (or after ``limit`` seconds)."""
    counts = [0] * n
    ready = [asyncio.Event() for _ in range(n)]

    async def one(i: int) -> None:
        async for kind, data in messages(await open_sse(port, shop)):
            json.loads(data)  # parsed, as a page does
            counts[i] += 1
            if kind == "state":
                ready[i].set()

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.gather(*(r.wait() for r in ready))
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    done = loop.run_in_executor(None, sys.stdin.read)
    await asyncio.wait([asyncio.ensure_future(done)], timeout=limit)
    print(json.dumps({"messages": sum(counts)}), flush=True)
    for task in tasks:
        task.cancel()
    os._exit(0)


class Pages:
    """The reader process with ``n`` open pages, for one mode's rounds."""

    def __init__(self, port: int, n: int) -> None:
        args = [sys.executable, __file__, "readers", "--port", str(port), "--n", str(n)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], 30)[0]:
            self.proc.kill()
            raise SystemExit("the SSE readers did not connect within 30 s")
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise SystemExit(f"the SSE readers did not start: {line!r}")

    def close(self) -> int:
        out, _ = self.proc.communicate("", timeout=30)
        return int(json.loads(out.strip().splitlines()[-1])["messages"])


# ---------------------------------------------------------------- routing


async def paced(target: str, seconds: float, rate: float, workers: int, ids: Any) -> int:
    """Route + end pairs at ``rate`` a second (open loop, ``workers`` callers) for
    ``seconds``: the same events in every mode, so the dashboard's CPU compares."""
    done = 0
    tickets = itertools.count()
    async with AsyncClient(target) as fenliu:
        start = time.perf_counter()

        async def worker() -> None:
            nonlocal done
            while (due := start + next(tickets) / rate) < start + seconds:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                decision = await fenliu.route(SHOP, f"p{next(ids)}")
                await fenliu.end_sessions(SHOP, [decision.session_id])
                done += 1

        await asyncio.gather(*(worker() for _ in range(workers)))
    return done


async def delays(target: str, port: int, samples: int, pace: float) -> list[float]:
    """Route -> arrival of its assigned event at an SSE client, in ms."""
    sent: dict[str, float] = {}
    got: dict[str, float] = {}
    stream = await open_sse(port, SHOP)
    ready = asyncio.Event()

    async def listen() -> None:
        async for kind, data in messages(stream):
            if kind == "state":
                ready.set()
            elif kind == "events":
                now = time.perf_counter()
                for e in json.loads(data):
                    if e["kind"] == "assigned" and e["buyer"] in sent:
                        got.setdefault(e["buyer"], now)

    listener = asyncio.create_task(listen())
    await asyncio.wait_for(ready.wait(), 10)
    async with AsyncClient(target) as fenliu:
        for n in range(samples):
            buyer = f"lat{n}"
            sent[buyer] = time.perf_counter()
            decision = await fenliu.route(SHOP, buyer)
            await fenliu.end_sessions(SHOP, [decision.session_id])
            await asyncio.sleep(pace)
    deadline = time.perf_counter() + 5
    while len(got) < samples and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    listener.cancel()
    return [(got[b] - sent[b]) * 1000 for b in sent if b in got]


cpu_s = process_cpu_s


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def bench(args: argparse.Namespace) -> None:
    load_before = os.getloadavg()
    server = start_fenliu()
    target = f"127.0.0.1:{server.port}"
    board = start_dashboard(target, nice=args.dashboard_nice)
    try:

        async def setup() -> None:
            async with AsyncClient(target) as fenliu:
                for i in range(20):
                    await fenliu.register_agent(
                        SHOP, f"agent{i:02d}", max_concurrent=10_000, status=Status.ONLINE
                    )

        asyncio.run(setup())
        ids = itertools.count()
        modes = (0, 1, args.pages)
        rates: dict[int, list[float]] = {m: [] for m in modes}
        delivered = []
        cpu: dict[str, dict[str, list[float]]] = {}
        per_decision: dict[str, list[int]] = {}
        every: dict[str, dict[str, list[int]]] = {}  # mode -> process -> CPU us per decision
        for _ in range(args.rounds):
            for pages in modes:  # interleaved, so drift hits every mode alike
                opened = Pages(board.port, pages) if pages else None
                procs = {"fenliu": server.proc.pid, "dashboard": board.proc.pid}
                if opened is not None:
                    procs["sse_readers"] = opened.proc.pid
                procs["load_generator"] = os.getpid()
                before = {k: cpu_s(v) for k, v in procs.items()}
                n = asyncio.run(drive(target, args.seconds, args.workers, ids))
                mode = f"{pages}_pages"
                for k, v in procs.items():
                    spent = cpu_s(v) - before[k]
                    cores = round(spent / args.seconds, 2)
                    cpu.setdefault(mode, {}).setdefault(k, []).append(cores)
                    spent_us = round(spent / max(n, 1) * 1e6)
                    every.setdefault(mode, {}).setdefault(k, []).append(spent_us)
                    if k == "fenliu":
                        per_decision.setdefault(mode, []).append(spent_us)
                rates[pages].append(n / args.seconds)
                if opened is not None:
                    delivered.append(opened.close())
                time.sleep(0.5)  # the feed retires (--linger 0) before the next 0-page round
        # The same paced load in every mode: what the dashboard and the pages cost per
        # second at a rate fenliu keeps up with (fenliu then has CPU to spare).
        at_rate: dict[str, dict[str, list[float]]] = {}
        for _ in range(args.rounds if args.rate else 0):
            for pages in modes:
                opened = Pages(board.port, pages) if pages else None
                procs = {"fenliu": server.proc.pid, "dashboard": board.proc.pid}
                if opened is not None:
                    procs["sse_readers"] = opened.proc.pid
                before = {k: cpu_s(v) for k, v in procs.items()}
                n = asyncio.run(paced(target, args.seconds, args.rate, args.workers, ids))
                mode = f"{pages}_pages"
                for k, v in procs.items():
                    cores = (cpu_s(v) - before[k]) / args.seconds
                    at_rate.setdefault(mode, {}).setdefault(k, []).append(round(cores, 3))
                at_rate[mode].setdefault("decisions_per_s", []).append(round(n / args.seconds))
                if opened is not None:
                    opened.close()
                time.sleep(0.5)
        opened = Pages(board.port, args.pages)
        try:
            measured = asyncio.run(delays(target, board.port, args.samples, args.pace))
        finally:
            opened.close()
    finally:
        board.stop()
        server.stop()
    medians = {k: statistics.median(v) for k, v in rates.items()}
    # CPU per decision by process (medians of the rounds): steadier than the rates on a
    # shared machine, and it says who pays. On 2 saturated cores the rate goes as 1 / the
    # CPU of every process per decision; with the dashboard (and its pages) elsewhere, as
    # 1 / fenliu's and the load generator's.
    cpu_us = {mode: {k: statistics.median(v) for k, v in c.items()} for mode, c in every.items()}
    base = cpu_us["0_pages"]
    routing = ("fenliu", "load_generator")
    modelled = {
        mode: {
            "same_2_cores": round(sum(base.values()) / sum(c.values()), 3),
            "dashboard_elsewhere": round(
                sum(base[k] for k in routing) / sum(c[k] for k in routing), 3
            ),
            "fenliu_alone": round(base["fenliu"] / c["fenliu"], 3),
        }
        for mode, c in cpu_us.items()
    }
    record = {
        "seconds": args.seconds,
        "rounds": args.rounds,
        "workers": args.workers,
        "decisions_per_s": {f"{k}_pages": round(v) for k, v in medians.items()},
        "rounds_per_s": {f"{k}_pages": [round(r) for r in v] for k, v in rates.items()},
        "ratio_to_0_pages": {f"{k}_pages": round(v / medians[0], 3) for k, v in medians.items()},
        "sse_messages_read_per_round": delivered,
        "cores_used_while_routing": cpu,
        "fenliu_cpu_us_per_decision": per_decision,
        "cpu_us_per_decision_by_process": cpu_us,
        "cores_at_a_fixed_rate": {
            "rate": args.rate,
            **{m: {k: statistics.median(v) for k, v in c.items()} for m, c in at_rate.items()},
        },
        "ratio_by_cpu": modelled,
        "route_to_page_ms": {
            "via": "an SSE client in the bench process, with the pages open",
            "samples": len(measured),
            "p50": round(percentile(measured, 50), 1),
            "p99": round(percentile(measured, 99), 1),
            "max": round(max(measured), 1),
        },
        "dashboard_nice": args.dashboard_nice,
        "load_average_before": load_before,
        "load_average": os.getloadavg(),
    }
    print(json.dumps(record, indent=2))


# ---------------------------------------------------------------- the README's picture


async def create(target: str) -> None:
    async with AsyncClient(target) as f:
        await f.register_agent("shop1", "xiaomei", status=Status.ONLINE)


async def burst(target: str) -> None:
    """A shop through a busy minute: most agents full, some on a break, a queue with
    groups, channels and a priority buyer, left messages, replies for the 2-minute rate."""
    async with AsyncClient(target) as f:
        await f.set_shop_policy(
            "shop1", priority_crowds=["vip"], priority_may_exceed_capacity=False, queue_limit=14
        )
        team = [
            ("xiaomei", 4, ["presale"], Status.ONLINE),
            ("ajie", 4, ["presale", "aftersale"], Status.ONLINE),
            ("lili", 3, ["aftersale"], Status.ONLINE),
            ("dawei", 5, ["presale"], Status.ONLINE),
            ("fangfang", 4, ["aftersale"], Status.ONLINE),
            ("wanglei", 3, ["presale"], Status.ONLINE),
            ("chenjing", 4, ["presale"], Status.ONLINE),
        ]
        for agent, most, groups, status in team:
            await f.register_agent(
                "shop1", agent, max_concurrent=most, groups=groups, status=status
            )
        groups, channels = ["presale", "aftersale"], ["app", "web", "mini-program"]
        for n in range(70):
            group, channel = groups[n % 2], channels[n % 3]
            crowds = ["vip"] if n % 17 == 5 else []
            d = await f.route("shop1", f"buyer{n:03d}", group=group, channel=channel, crowds=crowds)
            if d.agent_id and n % 3:
                await f.reply("shop1", d.agent_id, d.session_id)
            if d.agent_id and n % 4 == 0 and n < 50:
                await f.end_sessions("shop1", [d.session_id])
            if n == 40:
                await f.set_status("shop1", "wanglei", Status.SUSPENDED)
                await f.set_status("shop1", "chenjing", Status.SUSPENDED)
            await asyncio.sleep(0.15)


def screenshot(path: str, width: int = 1440, height: int = 900) -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as data:
        server = start_fenliu(data)
        target = f"127.0.0.1:{server.port}"
        board = start_dashboard(target, linger=60)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path="/usr/bin/chromium",
                    args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic"],
                )
                page = browser.new_page(viewport={"width": width, "height": height})
                # Playwright's sync API runs a loop in this thread: the SDK runs in another.
                worker = threading.Thread(target=asyncio.run, args=(create(target),))
                worker.start()
                worker.join()
                page.goto(f"http://127.0.0.1:{board.port}/shops/shop1")
                page.wait_for_selector("#link[data-state=live]")
                worker = threading.Thread(target=asyncio.run, args=(burst(target),))
                worker.start()
                while worker.is_alive():
                    page.wait_for_timeout(200)
                page.wait_for_timeout(2500)
                page.screenshot(path=path)
                browser.close()
        finally:
            board.stop()
            server.stop()
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    shot = sub.add_parser("screenshot")
    shot.add_argument("path")
    shot.add_argument("--viewport", default="1440x900", help="WIDTHxHEIGHT")
    read = sub.add_parser("readers")
    read.add_argument("--port", type=int, required=True)
    read.add_argument("--n", type=int, required=True)
    read.add_argument("--limit", type=float, default=600)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--pace", type=float, default=0.05)
    parser.add_argument(
        "--rate", type=float, default=1000, help="decisions/s of the paced rounds (0: none)"
    )
    parser.add_argument("--dashboard-nice", type=int, default=0, help="run it under nice -n N")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # the children are stopped too
    if args.command == "screenshot":
        width, height = (int(n) for n in args.viewport.split("x"))
        screenshot(args.path, width, height)
    elif args.command == "readers":
        asyncio.run(readers(args.port, SHOP, args.n, args.limit))
    else:
        bench(args)


if __name__ == "__main__":
    main()

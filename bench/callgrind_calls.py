"""User-space instructions per call of each kind, the server under callgrind (issue 12).

    python bench/callgrind_calls.py                        # 2,000 calls a kind, ~2 min
    python bench/callgrind_calls.py --calls 500 --top 30   # shorter; more functions

Throughput and even CPU time on a shared 2-core machine mostly measure the neighbours;
instruction counts do not. The server (``fenliu-server``, journal off) runs under
``valgrind --tool=callgrind``; a world of a few shops is built, then each kind is sent
(``--concurrency`` unary calls in flight, or one RouteStream, or RouteBatches of 1,000)
between a ``callgrind_control --zero`` and a ``--dump``, so each dump holds that kind's
calls and the server's own background work over the same seconds (measured alone as
``idle``: small). Prints one JSON record: instructions per call (per decision for
batches and streams) and, for ``route_new`` and ``route_open``, the functions whose
instructions per call grew the most over ``echo``, and every kind's top functions
(exclusive counts).

Kernel time (the context switches, epoll waits and page faults that ``perf`` shows as
half of the server's CPU) is not counted: this is the user-space share only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cpu  # noqa: E402
import grpc.aio  # noqa: E402
import loadgen  # noqa: E402
from core_world import cache_options  # noqa: E402

from fenliu.client._pb import fenliu_pb2 as pb  # noqa: E402

KINDS = ("idle", "echo", "route_new", "route_open", "stream_new", "batch_new")
SHOPS, AGENTS, OPEN_BUYERS = 10, 4, 200


def start_server(
    out: Path, python: str = sys.executable, freeze: float | None = None, cache_sim: bool = False
) -> tuple[subprocess.Popen[bytes], str, Any]:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is missing: apt-get install -y valgrind")
    log = tempfile.NamedTemporaryFile(prefix="fenliu-callgrind-", suffix=".log")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.out",
           python, "-m", "fenliu.server", "--host", "127.0.0.1", "--port", "0",
           "--data-dir", "", "--grace", "0.2"]  # fmt: skip
    if freeze is not None:
        cmd += ["--gc-freeze-interval", str(freeze)]
    if cache_sim:  # valgrind's simulated L1 and last-level caches (sysfs's): misses, not time
        cmd[2:2] = ["--cache-sim=yes", *cache_options()]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        found = re.search(
            r"fenliu serving on \S+:(\d+)", Path(log.name).read_text(errors="replace")
        )
        if found:
            return proc, f"127.0.0.1:{found.group(1)}", log
        if proc.poll() is not None:
            raise RuntimeError(Path(log.name).read_text(errors="replace"))
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not start under valgrind")


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


async def drive(
    pid: int, target: str, kind: str, calls: int, concurrency: int, shops: int = SHOPS,
    batch_items: int = 3000, open_buyers: int = OPEN_BUYERS,
) -> int:  # fmt: skip
    """Send ``kind`` between a zero and a dump; returns how many decisions (or calls)."""
    job = {"kind": kind, "shops": shops, "tag": kind[:3], "proc": 0, "procs": 1,
           "open_buyers": open_buyers}  # fmt: skip
    count = batch_items if kind.startswith("batch") else calls
    reqs = [] if kind in ("idle", "echo") else cpu.requests(job, count)
    async with grpc.aio.insecure_channel(target) as ch:
        echo = ch.unary_unary(loadgen.ECHO)
        size = len(cpu.requests({**job, "kind": "route_new"}, 1)[0].SerializeToString())
        body = pb.EchoMessage(payload=b"x" * size).SerializeToString()
        await echo(body, timeout=60)  # the channel is up before counting starts
        control(pid, "--zero")
        await asyncio.sleep(0.5)  # callgrind acts on the command between two calls
        if kind == "idle":
            await asyncio.sleep(2.0)
        elif kind in ("echo", "route_new", "route_open"):
            call = echo if kind == "echo" else ch.unary_unary(loadgen.ROUTE)
            bodies = iter(
                [body] * count if kind == "echo" else [r.SerializeToString() for r in reqs]
            )

            async def caller() -> None:
                for data in bodies:
                    await call(data, timeout=120)

            await asyncio.gather(*(caller() for _ in range(concurrency)))
        elif kind.startswith("stream"):
            stream = ch.stream_stream(cpu.ROUTE_STREAM)()
            items = [pb.RouteStreamRequest(request=r).SerializeToString() for r in reqs]

            async def write() -> None:
                for data in items:
                    await stream.write(data)
                await stream.done_writing()

            writer = asyncio.ensure_future(write())
            async for _ in stream:
                pass
            await writer
        else:
            batch = ch.unary_unary(loadgen.ROUTE_BATCH)
            for i in range(0, len(reqs), 1000):
                data = pb.RouteBatchRequest(requests=reqs[i : i + 1000]).SerializeToString()
                await batch(data, timeout=300)
        control(pid, "--dump", kind)
        await asyncio.sleep(0.5)
    return 1 if kind == "idle" else count


def exclusive(path: Path) -> collections.Counter[str]:
    """Instructions by function (exclusive) in one callgrind dump."""
    names: dict[str, str] = {}
    cost: collections.Counter[str] = collections.Counter()
    fn, callee_line = "", False
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("fn=", "cfn=")):
            found = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
            if found:
                if found.group(2):
                    names[found.group(1)] = found.group(2)
                if line.startswith("fn="):
                    fn = names.get(found.group(1), found.group(1))
        elif line.startswith("calls="):
            callee_line = True  # the next cost line is the callee's, inclusive
        elif line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if not callee_line and fn and len(parts) >= 2 and parts[1].isdigit():
                cost[fn] += int(parts[1])
            callee_line = False
    return cost


def totals(path: Path) -> dict[str, int]:
    """Every event's total in one callgrind dump (``events:`` names, ``summary:`` or
    ``totals:`` counts): Ir alone, or with ``--cache-sim`` the reads, writes and misses."""
    text = path.read_text(errors="replace")
    names = re.search(r"^events: (.*)$", text, re.M)
    counts = re.search(r"^(?:summary|totals): (.*)$", text, re.M)
    if not names or not counts:
        return {}
    return dict(zip(names.group(1).split(), map(int, counts.group(1).split()), strict=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="unary calls / stream items")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--python", default=sys.executable,
                        help="the server's interpreter (another build's, for an A/B)")  # fmt: skip
    parser.add_argument("--shops", type=int, default=SHOPS)
    parser.add_argument("--gc-freeze-interval", type=float, default=None,
                        help="the server's (1 s by default): under valgrind ~50x slower, "
                             "so 50 s makes as many decisions between freezes as 1 s at "
                             "full speed")  # fmt: skip
    parser.add_argument("--open-buyers", type=int, default=OPEN_BUYERS)
    parser.add_argument("--cache-sim", action="store_true",
                        help="valgrind's cache simulation: L1 and last-level misses a call "
                             "(events_per_call), ~2x slower")  # fmt: skip
    parser.add_argument("--batch-items", type=int, default=3000,
                        help="RouteBatch decisions (in batches of 1,000)")  # fmt: skip
    parser.add_argument("--keep", default="",
                        help="copy each kind's dump here (callgrind.out.KIND), for "
                             "callgrind_annotate --inclusive=yes")  # fmt: skip
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    with tempfile.TemporaryDirectory(prefix="fenliu-cg-") as tmp:
        out = Path(tmp)
        proc, target, log = start_server(out, args.python, args.gc_freeze_interval,
                                         args.cache_sim)  # fmt: skip
        counts: dict[str, int] = {}
        try:
            world = loadgen.run_in_process(
                cpu.build_world, target, args.shops, AGENTS, args.open_buyers
            )
            for kind in kinds:
                counts[kind] = asyncio.run(
                    drive(
                        proc.pid,
                        target,
                        kind,
                        args.calls,
                        args.concurrency,
                        args.shops,
                        args.batch_items,
                        args.open_buyers,
                    )
                )
        finally:
            proc.terminate()
            proc.wait(timeout=120)
            log.close()
        dumps, events = {}, {}
        for path in out.glob("callgrind.out.*"):
            found = re.search(r"^desc: Trigger: dump (\S+)", path.read_text(errors="replace"), re.M)
            if found:
                dumps[found.group(1)] = exclusive(path)
                events[found.group(1)] = totals(path)
                if args.keep:
                    Path(args.keep).mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, Path(args.keep) / f"callgrind.out.{found.group(1)}")
    per_call = {k: round(sum(dumps[k].values()) / counts[k]) for k in kinds if k in dumps}
    record: dict[str, Any] = {
        "calls": args.calls, "concurrency": args.concurrency, "world": world,
        "python": args.python, "gc_freeze_interval": args.gc_freeze_interval,
        "loadavg": round(os.getloadavg()[0], 2), "instructions_per_call": per_call,
    }  # fmt: skip
    if args.cache_sim:
        record["events_per_call"] = {
            k: {e: round(v / counts[k], 1) for e, v in events[k].items()}
            for k in kinds
            if events.get(k)
        }
    record["top"] = {
        kind: {f[:80]: round(v / counts[kind]) for f, v in dumps[kind].most_common(args.top)}
        for kind in kinds
        if kind in dumps and kind != "idle"
    }
    if "echo" in dumps:
        echo = dumps["echo"]
        for kind in ("route_new", "route_open"):
            if kind not in dumps:
                continue
            record[f"{kind}_over_echo"] = round(per_call[kind] / per_call["echo"], 3)
            grew = {f: dumps[kind][f] / counts[kind] - echo[f] / counts["echo"]
                    for f in set(dumps[kind]) | set(echo)}  # fmt: skip
            top = sorted(grew.items(), key=lambda item: -item[1])[: args.top]
            record[f"{kind}_grew_most"] = {f[:80]: round(v) for f, v in top}
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()

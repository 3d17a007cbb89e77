"""What the call guard (auth, metrics, call logs) costs Route and Echo over gRPC, on loopback.

    python bench/guard.py --seconds 2 --concurrency 32 --rounds 2

Starts ``fenliu-server`` (in memory, no journal) once per mode, in its own process, and
drives it from this one with ``concurrency`` grpc.aio coroutines for ``seconds``: Route
(the same buyer, a new request id each time: rule 2) and Diagnostics.Echo. Prints calls
per second and the server process's CPU time per call (steadier than the rate on a
shared machine), the best of ``rounds``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc.aio

from fenliu.client._pb import fenliu_pb2 as pb, fenliu_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import free_port, process_cpu_s  # noqa: E402

TOKEN = "bench-token-123"
MODES = {
    "off (no guard)": "",
    "auth (scoped token)": f'[[auth.tokens]]\ntoken = "{TOKEN}"\nshops = ["bench"]\n',
    "metrics": "metrics_port = {metrics}\n",
    "auth + metrics + access log": (
        "metrics_port = {metrics}\naccess_log = true\n"
        f'[[auth.tokens]]\ntoken = "{TOKEN}"\nshops = ["bench"]\n'
    ),
}


def start(config: str, directory: Path) -> tuple[subprocess.Popen[str], int]:
    path = directory / "bench.toml"
    path.write_text('port = 0\ndata_dir = ""\n' + config.replace("{metrics}", str(free_port())))
    process = subprocess.Popen(
        [sys.executable, "-m", "fenliu.server", "--config", str(path)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    for line in process.stderr:
        found = re.search(r"fenliu serving on 127\.0\.0\.1:(\d+)", line)
        if found:  # from here on a thread drains the log (the access log would fill the pipe)
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, int(found.group(1))
    raise RuntimeError("the server did not start")


cpu_seconds = process_cpu_s


async def drive(
    port: int, pid: int, seconds: float, concurrency: int
) -> dict[str, tuple[float, float]]:
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        presence, routing = pb_grpc.PresenceStub(channel), pb_grpc.RoutingStub(channel)
        echo = pb_grpc.DiagnosticsStub(channel).Echo
        await presence.RegisterAgent(
            pb.RegisterAgentRequest(shop_id="bench", agent_id="a", max_concurrent=10,
                                    status=pb.AGENT_STATUS_ONLINE), metadata=metadata,
        )  # fmt: skip
        ids = itertools.count()

        async def route() -> None:
            request = pb.RouteRequest(shop_id="bench", buyer_id="b", request_id=f"r{next(ids)}")
            await routing.Route(request, metadata=metadata)

        async def ping() -> None:
            await echo(pb.EchoMessage(payload=b"x" * 16), metadata=metadata)

        rates = {}
        for name, call in (("Route", route), ("Echo", ping)):
            cpu = cpu_seconds(pid)
            calls, elapsed = await rate(call, seconds, concurrency)
            rates[name] = (calls / elapsed, (cpu_seconds(pid) - cpu) / calls * 1e6)
        return rates


async def rate(
    call: Callable[[], Awaitable[None]], seconds: float, concurrency: int
) -> tuple[int, float]:
    """Calls made by ``concurrency`` coroutines calling ``call`` for ``seconds``, and the time."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    best: dict[str, dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(args.rounds):
            for mode, config in MODES.items():
                process, port = start(config, Path(directory))
                try:
                    rates = asyncio.run(drive(port, process.pid, args.seconds, args.concurrency))
                finally:
                    process.terminate()
                    process.wait(10)
                for name, (per_s, cpu_us) in rates.items():
                    old = best.setdefault(mode, {}).get(name, (0.0, float("inf")))
                    best[mode][name] = (max(old[0], per_s), min(old[1], cpu_us))
    print(f"{'mode':28} {'Route/s':>8} {'µs CPU':>7} {'Echo/s':>8} {'µs CPU':>7}  Route/Echo")
    for mode, rates in best.items():
        (route, route_cpu), (echo, echo_cpu) = rates["Route"], rates["Echo"]
        print(
            f"{mode:28} {route:8.0f} {route_cpu:7.1f} {echo:8.0f} {echo_cpu:7.1f}  "
            f"{route / echo:10.2f}"
        )
    print("(calls/s: best round; µs CPU: the server process's CPU time per call, best round)")


if __name__ == "__main__":
    main()

"""fenliu load harness: one entry point, several subcommands.

    python bench/run.py serve [--data-dir DIR] [--no-fsync]     # a server to point load at
    python bench/run.py load  [--target H:P] --kind route|echo --mode open|closed ...
    python bench/run.py batch [--target H:P] ...                # RouteBatch vs its echo floor
    python bench/run.py h2load [--target H:P] ...               # raw throughput with h2load
    python bench/run.py all --out bench/results ...             # the full report
    python bench/run.py quick                                   # server CPU per call, < 1 min
    python bench/run.py cpu --rounds 5 ...                      # the same, longer (bench/cpu.py)

Without ``--target`` each subcommand starts a fresh server process itself (journal off
unless told otherwise) and builds the world first. ``all`` writes one JSON record, a
markdown table and two PNG plots into ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import multiprocessing
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
import loadgen  # noqa: E402
from loadgen import Histogram, LoadSpec, Result, Schedule, World  # noqa: E402

from fenliu.client._pb import fenliu_pb2 as pb  # noqa: E402

# -- the server process ----------------------------------------------------------------


class ServerProcess:
    """``fenliu-server`` in its own process (so it gets its own core), on a free
    loopback port; ready once it logs ``fenliu serving on HOST:PORT``."""

    def __init__(
        self,
        data_dir: str = "",
        fsync: bool = True,
        shards: int | None = None,
        gc_freeze_interval: float | None = None,
    ) -> None:
        self.args = [sys.executable, "-m", "fenliu.server", "--host", "127.0.0.1", "--port", "0"]
        self.args += ["--data-dir", data_dir, "--grace", "0.2"]  # no drain needed here
        if gc_freeze_interval is not None:  # 0: CPython's default GC (the A/B baseline)
            self.args += ["--gc-freeze-interval", str(gc_freeze_interval)]
        if data_dir and not fsync:
            self.args.append("--no-fsync")
        if shards:
            self.args += ["--shards", str(shards)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.target = ""
        self._log = tempfile.NamedTemporaryFile(prefix="fenliu-bench-server-", suffix=".log")

    def start(self, timeout: float = 30.0) -> str:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = Path(self._log.name).read_text(errors="replace")
            found = re.search(r"fenliu serving on (\S+):(\d+)", text)
            if found:
                self.target = f"127.0.0.1:{found.group(2)}"
                return self.target
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("server did not become ready")

    def rss_kib(self) -> int:
        assert self.proc is not None
        return rss_kib(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def rss_kib(pid: int) -> int:
    """Process ``pid``'s resident set (``VmRSS``), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


BUILDS: list[dict[str, Any]] = []  # every world this process built: size, seconds, errors


@contextlib.contextmanager
def server_for(
    args: argparse.Namespace, data_dir: str = "", fsync: bool = True
) -> Iterator[tuple[str, ServerProcess | None]]:
    """A target: ``--target`` as given, or a fresh server with the world built on it."""
    if getattr(args, "target", None):
        yield args.target, None
        return
    server = ServerProcess(data_dir=data_dir, fsync=fsync, gc_freeze_interval=args.gc_freeze)
    try:
        target = server.start()
        built = loadgen.run_in_process(loadgen.build_world, target, world_of(args))
        BUILDS.append(built)
        progress(
            f"world on {target}: {built['shops']} shops, {built['agents']} agents "
            f"in {built['seconds']} s, errors {built['errors']}"
        )
        yield target, server
    finally:
        server.stop()


# -- helpers ---------------------------------------------------------------------------


def progress(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def world_of(args: argparse.Namespace) -> World:
    return World.make(args.shops, args.max_agents, args.zipf, args.seed, args.max_concurrent)


def _drive_worker(spec: LoadSpec) -> dict[str, Any]:
    result = loadgen.run_in_process(loadgen.drive, spec)
    return result.to_wire()  # type: ignore[no-any-return]


def _batch_worker(kwargs: dict[str, Any]) -> dict[str, Any]:
    return loadgen.run_in_process(loadgen.drive_batch, *kwargs["args"])  # type: ignore[no-any-return]


_POOLS: dict[int, Any] = {}


def pool(procs: int) -> Any:
    """``procs`` load processes, started once and reused by every load of the run (each
    task runs its own event loop and channels, so nothing carries over between loads)."""
    if procs not in _POOLS:
        _POOLS[procs] = multiprocessing.get_context("spawn").Pool(procs)
    return _POOLS[procs]


def close_pools() -> None:
    for p in _POOLS.values():
        p.close()
        p.join()
    _POOLS.clear()


def run_load(spec: LoadSpec, procs: int) -> Result:
    """``spec`` split over ``procs`` load processes (rate and concurrency divided)."""
    share = replace(spec.schedule, base_rate=spec.schedule.base_rate / procs)
    specs = [
        replace(
            spec,
            proc=i,
            schedule=share,
            concurrency=max(1, spec.concurrency // procs),
            status_churn_per_s=spec.status_churn_per_s / procs,
        )
        for i in range(procs)
    ]
    wires = pool(procs).map(_drive_worker, specs)
    total = Result()
    for w in wires:
        total.merge(Result.from_wire(w))
    return total


def figures(result: Result) -> dict[str, Any]:
    seconds = result.seconds or 1.0
    return {
        "sent": result.sent,
        "completed": result.completed,
        "seconds": round(seconds, 3),
        "throughput_per_s": round(result.completed / seconds, 1),
        "latency_ms": result.histogram.summary(),
        "errors": dict(result.errors),
        "outcomes": dict(result.outcomes),
        "churn": dict(result.churn),
    }


def timeline(result: Result) -> list[dict[str, float]]:
    return [
        {
            "t_s": k / 1000.0,
            "count": h.total,
            "p50_ms": h.percentile_ms(50),
            "p99_ms": h.percentile_ms(99),
            "max_ms": h.max_us / 1000.0,
        }
        for k, h in sorted(result.windows.items())
    ]


def burst_recovery(
    tl: list[dict[str, float]], bursts: Sequence[float], limit_ms: float, window_s: float = 0.1
) -> list[float | None]:
    """Per burst: seconds after the burst's end until the windowed p99 is back under
    ``limit_ms`` (0 if it never left; None if it never came back)."""
    out: list[float | None] = []
    for start in bursts:
        end = start + 1.0
        after = [w for w in tl if w["t_s"] >= end - window_s / 2]
        back: float | None = None
        for i, w in enumerate(after):
            if all(x["p99_ms"] <= limit_ms for x in after[i : i + 5]):
                back = max(0.0, round(w["t_s"] - end, 3))
                break
        out.append(back)
    return out


def machine() -> dict[str, Any]:
    import grpc as g
    import msgspec
    from google import protobuf

    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = ""
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "grpcio": g.__version__,
        "protobuf": protobuf.__version__,
        "msgspec": msgspec.__version__,
        "commit": commit,
    }


# -- h2load ----------------------------------------------------------------------------


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: flag 0 (uncompressed), 4-byte big-endian length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def h2load_bodies(world: World) -> dict[str, bytes]:
    # One fixed body (h2load alone sends the same bytes every time): after the first call
    # every Route is a retry answered from the idempotency cache (rule 0), not a decision.
    # Real decisions through h2load: ``bench/run.py cpu`` (its shim, bench/h2distinct.c,
    # makes every body distinct).
    route = pb.RouteRequest(
        shop_id="s0", buyer_id="b-h2load", request_id="h2load", channel="item_page"
    )
    route_bytes = route.SerializeToString()
    return {
        "route": route_bytes,
        "echo": pb.EchoMessage(payload=b"x" * len(route_bytes)).SerializeToString(),
    }


def check_grpc_status(target: str, path: str, body: bytes) -> str:
    """The grpc-status of one call carrying exactly h2load's body (h2load itself only
    checks the HTTP status)."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(path)
        try:
            call(body, timeout=5)
            return "OK"
        except grpc.RpcError as exc:
            return str(exc.code().name)  # type: ignore[attr-defined]


def run_h2load(
    target: str, world: World, requests: int, clients: int, streams: int, threads: int
) -> dict[str, Any]:
    exe = shutil.which("h2load")
    if exe is None:
        return {"skipped": "h2load not installed (apt-get install nghttp2-client)"}
    out: dict[str, Any] = {"requests": requests, "clients": clients, "streams": streams}
    paths = {"route": loadgen.ROUTE, "echo": loadgen.ECHO}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, message in h2load_bodies(world).items():
            body = Path(tmp, f"{kind}.bin")
            body.write_bytes(grpc_frame(message))
            cmd = [
                exe,
                "-n",
                str(requests),
                "-c",
                str(clients),
                "-m",
                str(streams),
                "-t",
                str(threads),
                "-d",
                str(body),
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                f"http://{target}{paths[kind]}",
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            text = proc.stdout
            rps = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", text)
            status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
            succeeded = re.search(r"requests: .*?(\d+) succeeded, (\d+) failed", text)
            lat = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", text)
            out[kind] = {
                "req_per_s": float(rps.group(1)) if rps else None,
                "http_2xx": int(status.group(1)) if status else None,
                "succeeded": int(succeeded.group(1)) if succeeded else None,
                "failed": int(succeeded.group(2)) if succeeded else None,
                "request_time_min_max_mean_sd": list(lat.groups()) if lat else None,
                "grpc_status_check": check_grpc_status(target, paths[kind], message),
                "command": " ".join(cmd),
            }
    if out["echo"]["req_per_s"] and out["route"]["req_per_s"]:
        out["route_vs_echo"] = round(out["route"]["req_per_s"] / out["echo"]["req_per_s"], 3)
    return out


# -- subcommands -----------------------------------------------------------------------


def schedule_of(args: argparse.Namespace) -> Schedule:
    return Schedule(args.rate, args.seconds, tuple(args.bursts), 1.0, args.burst_factor)


def spec_of(
    args: argparse.Namespace, target: str, kind: str, mode: str, churn: bool = True
) -> LoadSpec:
    return LoadSpec(
        target=target,
        kind=kind,
        mode=mode,
        schedule=schedule_of(args),
        world=world_of(args),
        concurrency=args.concurrency,
        inflight_cap=args.inflight_cap,
        buyers=args.buyers,
        hold_s=args.hold,
        churn=churn and not args.no_churn,
        status_churn_per_s=args.status_churn,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    server = ServerProcess(
        data_dir=args.data_dir, fsync=not args.no_fsync, gc_freeze_interval=args.gc_freeze
    )
    target = server.start()
    built = loadgen.run_in_process(loadgen.build_world, target, world_of(args))
    print(f"serving on {target}; world {built}", flush=True)
    try:
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    with server_for(args) as (target, _):
        result = run_load(spec_of(args, target, args.kind, args.mode), args.procs)
    print(json.dumps({"kind": args.kind, "mode": args.mode, **figures(result)}, indent=1))
    return 0


def batch_round(target: str, args: argparse.Namespace, kind: str) -> dict[str, Any]:
    world = world_of(args)
    jobs = [
        {
            "args": (
                target,
                kind,
                world,
                args.batch_seconds,
                args.batch_size,
                args.batch_concurrency,
                args.buyers,
                i,
            )
        }
        for i in range(args.procs)
    ]
    parts = pool(args.procs).map(_batch_worker, jobs)
    decisions = sum(p["decisions"] for p in parts)
    seconds = max(p["seconds"] for p in parts)
    errors: dict[str, int] = {}
    for p in parts:
        for k, v in p["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "kind": kind,
        "per_s": round(decisions / seconds, 1),
        "decisions": decisions,
        "seconds": round(seconds, 3),
        "errors": errors,
        "body_bytes": parts[0]["body_bytes"],
        "call_latency_ms_p50": [p["call_latency"]["p50_ms"] for p in parts],
    }


def cmd_batch(args: argparse.Namespace) -> int:
    with server_for(args) as (target, _):
        out = {k: batch_round(target, args, k) for k in ("echo", "route")}
    print(json.dumps(out, indent=1))
    return 0


def cmd_h2load(args: argparse.Namespace) -> int:
    with server_for(args) as (target, _):
        out = run_h2load(
            target,
            world_of(args),
            args.h2_requests,
            args.h2_clients,
            args.h2_streams,
            args.h2_threads,
        )
    print(json.dumps(out, indent=1))
    return 0


def median_of(rounds: list[dict[str, Any]], path: Sequence[str]) -> float:
    values = []
    for r in rounds:
        v: Any = r
        for p in path:
            v = v[p]
        values.append(float(v))
    return float(statistics.median(values))


def cmd_all(args: argparse.Namespace) -> int:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    gc.collect()
    record: dict[str, Any] = {
        "label": args.label,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "command": " ".join(["python", "bench/run.py", *sys.argv[1:]]),
        "parameters": {k: v for k, v in vars(args).items() if k != "func"},
        "world": {},
        "rounds": [],
    }
    world = world_of(args)
    record["world"] = {
        "shops": len(world.sizes),
        "agents": world.agents,
        "largest_shop": world.sizes[0],
        "zipf_s": world.zipf_s,
        "max_concurrent": world.max_concurrent,
    }
    open_results: dict[str, Result] = {}
    with server_for(args) as (target, server):
        rss0 = server.rss_kib() if server else 0
        for i in range(args.rounds):
            rnd: dict[str, Any] = {}
            for kind in ("echo", "route"):
                progress(
                    f"round {i + 1}/{args.rounds}: closed loop {kind}, "
                    f"{args.procs} procs x {args.concurrency // args.procs} callers, "
                    f"{args.seconds} s"
                )
                res = run_load(spec_of(args, target, kind, "closed", churn=False), args.procs)
                rnd[f"closed_{kind}"] = figures(res)
                progress(
                    f"  {kind}: {rnd[f'closed_{kind}']['throughput_per_s']:.0f}/s, "
                    f"p99 {res.histogram.percentile_ms(99):.2f} ms, errors {dict(res.errors)}"
                )
            for kind in ("echo", "route"):
                progress(
                    f"round {i + 1}/{args.rounds}: open loop {kind}, {args.rate}/s Poisson, "
                    f"10x bursts at {args.bursts}, {args.seconds} s"
                )
                res = run_load(spec_of(args, target, kind, "open"), args.procs)
                rnd[f"open_{kind}"] = figures(res)
                tl = timeline(res)
                rnd[f"open_{kind}"]["recovery_s"] = burst_recovery(tl, args.bursts, 20.0)
                open_results[kind] = res
                progress(
                    f"  {kind}: p99 {res.histogram.percentile_ms(99):.2f} ms, "
                    f"max {res.histogram.max_us / 1000:.1f} ms, errors {dict(res.errors)}"
                )
            for kind in ("echo", "route"):
                progress(f"round {i + 1}/{args.rounds}: batch {kind}, {args.batch_size} per call")
                rnd[f"batch_{kind}"] = batch_round(target, args, kind)
                progress(f"  {kind}: {rnd[f'batch_{kind}']['per_s']:.0f} decisions/s")
            record["rounds"].append(rnd)
        if server:
            record["server_rss_delta_kib"] = server.rss_kib() - rss0
        if args.h2load:
            progress(f"h2load: {args.h2_requests} requests, {args.h2_clients} connections")
            record["h2load"] = run_h2load(
                target, world, args.h2_requests, args.h2_clients, args.h2_streams, args.h2_threads
            )
            progress(
                "  h2load req/s: "
                + ", ".join(
                    f"{k} {v.get('req_per_s')}"
                    for k, v in record["h2load"].items()
                    if isinstance(v, dict)
                )
            )
    if args.journal and not args.target:
        record["journal"] = journal_rounds(args)
    record["world"]["builds"] = BUILDS
    record["timeline"] = {k: timeline(v) for k, v in open_results.items()}
    record["percentiles"] = {k: percentile_curve(v.histogram) for k, v in open_results.items()}
    record["summary"] = summarize(record, args)
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (out_dir / "record.json").write_text(json.dumps(record, indent=1) + "\n")
    table = markdown(record)
    (out_dir / "report.md").write_text(table)
    if args.plots:
        plot(record, out_dir, args)
    print(table)
    return 0


def journal_rounds(args: argparse.Namespace) -> dict[str, Any]:
    """Closed-loop Route throughput with the journal off, on without fsync, on with fsync:
    each its own fresh server, same world, same load."""
    out: dict[str, Any] = {}
    for mode, data, fsync in (
        ("off", False, True),
        ("no_fsync", True, False),
        ("fsync", True, True),
    ):
        runs = []
        with tempfile.TemporaryDirectory(prefix="fenliu-bench-journal-") as tmp:
            with server_for(args, data_dir=tmp if data else "", fsync=fsync) as (target, _):
                for i in range(args.rounds):
                    progress(f"journal {mode} round {i + 1}/{args.rounds}: closed loop route")
                    res = run_load(
                        spec_of(args, target, "route", "closed", churn=False), args.procs
                    )
                    runs.append(figures(res))
                    progress(f"  {runs[-1]['throughput_per_s']:.0f}/s, errors {dict(res.errors)}")
        out[mode] = {
            "throughput_per_s": [r["throughput_per_s"] for r in runs],
            "median_per_s": statistics.median(r["throughput_per_s"] for r in runs),
            "p99_ms": [r["latency_ms"]["p99_ms"] for r in runs],
            "errors": [r["errors"] for r in runs],
        }
    off = out["off"]["median_per_s"]
    for mode in ("no_fsync", "fsync"):
        out[mode]["cost"] = round(1 - out[mode]["median_per_s"] / off, 3) if off else None
    return out


def percentile_curve(h: Histogram) -> list[tuple[float, float]]:
    qs = [0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100]
    return [(q, h.percentile_ms(q) if q < 100 else h.max_us / 1000.0) for q in qs]


def summarize(record: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    rounds = record["rounds"]
    s: dict[str, Any] = {}
    echo = median_of(rounds, ["closed_echo", "throughput_per_s"])
    route = median_of(rounds, ["closed_route", "throughput_per_s"])
    s["closed_echo_per_s"] = echo
    s["closed_route_per_s"] = route
    # ratios are taken within each round (same minute, same machine noise), then the median
    s["closed_route_vs_echo_by_round"] = [
        round(r["closed_route"]["throughput_per_s"] / r["closed_echo"]["throughput_per_s"], 3)
        for r in rounds
    ]
    s["closed_route_vs_echo"] = statistics.median(s["closed_route_vs_echo_by_round"])
    for k in ("echo", "route"):
        s[f"closed_{k}_p99_ms"] = median_of(rounds, [f"closed_{k}", "latency_ms", "p99_ms"])
        for q in ("p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms"):
            s[f"open_{k}_{q}"] = median_of(rounds, [f"open_{k}", "latency_ms", q])
        s[f"open_{k}_errors"] = sum(sum(r[f"open_{k}"]["errors"].values()) for r in rounds)
        s[f"open_{k}_recovery_s"] = [r[f"open_{k}"]["recovery_s"] for r in rounds]
        s[f"batch_{k}_per_s"] = median_of(rounds, [f"batch_{k}", "per_s"])
    s["batch_route_vs_echo_by_round"] = [
        round(r["batch_route"]["per_s"] / r["batch_echo"]["per_s"], 4) for r in rounds
    ]
    s["batch_route_vs_echo"] = statistics.median(s["batch_route_vs_echo_by_round"])
    s["batch_route_per_s_by_round"] = [r["batch_route"]["per_s"] for r in rounds]
    return s


def rounds_of(record: dict[str, Any], key: str) -> str:
    return ", ".join(f"{r[key]['latency_ms']['p99_ms']:.1f}" for r in record["rounds"]) + " ms"


def recovery_text(per_round: list[list[float | None]]) -> str:
    """``[[0.2, None], ...]`` as ``0.2/never; ...``: one group per round, one value per burst."""
    return "; ".join(
        "/".join("never" if v is None else f"{v:g}" for v in bursts) for bursts in per_round
    )


def markdown(record: dict[str, Any]) -> str:
    s = record["summary"]
    w = record["world"]
    m = record["machine"]
    p = record["parameters"]
    lines = [
        f"Run `{record['label']}` {record['started']} on {m['cores']} cores ({m['cpu']}), "
        f"load average {m['loadavg'][0]:.1f} at start, "
        f"Python {m['python']}, grpcio {m['grpcio']}, commit {m['commit']}; "
        f"world {w['shops']:,} shops / {w['agents']:,} agents (largest {w['largest_shop']}), "
        f"Zipf s={w['zipf_s']}; {p['procs']} load processes; medians of {p['rounds']} rounds.",
        "",
        "| figure | Route | Echo floor | Route / floor | target |",
        "|---|---|---|---|---|",
        f"| closed loop throughput ({p['concurrency']} callers) "
        f"| {s['closed_route_per_s']:,.0f} /s "
        f"| {s['closed_echo_per_s']:,.0f} /s | {s['closed_route_vs_echo']} "
        f"(rounds: {', '.join(map(str, s['closed_route_vs_echo_by_round']))}) | ≥ 0.90 |",
        f"| closed loop p99 | {s['closed_route_p99_ms']:.2f} ms | {s['closed_echo_p99_ms']:.2f} ms "
        f"| | |",
    ]
    for q, name in (
        ("p50_ms", "p50"),
        ("p90_ms", "p90"),
        ("p99_ms", "p99"),
        ("p99_9_ms", "p99.9"),
        ("max_ms", "max"),
    ):
        target = "≤ 20 ms" if q == "p99_ms" else ""
        r, e = s[f"open_route_{q}"], s[f"open_echo_{q}"]
        lines.append(
            f"| open loop {p['rate']}/s + 10× bursts, {name} | {r:.2f} ms | {e:.2f} ms "
            f"| {r / e if e else 0:.2f} | {target} |"
        )
    lines.append(
        f"| open loop errors (all rounds) | {s['open_route_errors']} "
        f"| {s['open_echo_errors']} | | 0 |"
    )
    lines.append(
        f"| open loop p99 by round | {rounds_of(record, 'open_route')} "
        f"| {rounds_of(record, 'open_echo')} | | |"
    )
    lines.append(
        f"| p99 back ≤ 20 ms after each burst, s (per round) "
        f"| {recovery_text(s['open_route_recovery_s'])} "
        f"| {recovery_text(s['open_echo_recovery_s'])} | | ≤ 1 s |"
    )
    lines.append(
        f"| RouteBatch ({p['batch_size']} per call) decisions/s | "
        f"{s['batch_route_per_s']:,.0f} | {s['batch_echo_per_s']:,.0f} "
        f"| {s['batch_route_vs_echo']} | ≥ 150,000 |"
    )
    lines.append(
        "| RouteBatch decisions/s by round | "
        f"{', '.join(f'{v:,.0f}' for v in s['batch_route_per_s_by_round'])} | | | |"
    )
    h2 = record.get("h2load")
    if h2 and "route" in h2:
        lines.append(
            f"| h2load raw throughput ({h2['clients']} conns × {h2['streams']} streams) "
            f"| {h2['route']['req_per_s']:,.0f} /s | {h2['echo']['req_per_s']:,.0f} /s "
            f"| {h2.get('route_vs_echo')} | ≥ 0.90 |"
        )
        lines.append(
            f"| h2load grpc-status check | {h2['route']['grpc_status_check']} "
            f"| {h2['echo']['grpc_status_check']} | | OK |"
        )
    j = record.get("journal")
    if j:
        lines += [
            "",
            "| journal | Route closed-loop /s (median) | cost vs off | target |",
            "|---|---|---|---|",
            f"| off | {j['off']['median_per_s']:,.0f} | — | |",
            f"| on, no fsync | {j['no_fsync']['median_per_s']:,.0f} "
            f"| {j['no_fsync']['cost']:.1%} | ≤ 15% |",
            f"| on, fsync | {j['fsync']['median_per_s']:,.0f} | {j['fsync']['cost']:.1%} | ≤ 15% |",
        ]
    return "\n".join(lines) + "\n"


def plot(record: dict[str, Any], out_dir: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for kind, color in (("route", "tab:red"), ("echo", "tab:blue")):
        tl = record["timeline"].get(kind, [])
        ts = [w["t_s"] for w in tl]
        ax.plot(ts, [w["p99_ms"] for w in tl], color=color, label=f"{kind} p99 (100 ms windows)")
        ax.plot(
            ts,
            [w["max_ms"] for w in tl],
            color=color,
            alpha=0.35,
            linestyle=":",
            label=f"{kind} max",
        )
        ax.plot(
            ts,
            [w["p50_ms"] for w in tl],
            color=color,
            alpha=0.6,
            linestyle="--",
            label=f"{kind} p50",
        )
    for start in args.bursts:
        ax.axvspan(start, start + 1.0, color="orange", alpha=0.15)
    ax.axhline(20.0, color="gray", linewidth=0.8, linestyle="-.", label="20 ms target")
    ax.set_yscale("log")
    ax.set_xlabel("time since start of the run, s (shaded: 10× bursts)")
    ax.set_ylabel("latency from scheduled send, ms")
    ax.set_title(f"Open loop {args.rate}/s Poisson with 10× bursts (last round)")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(out_dir / "latency_over_time.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for kind, color in (("route", "tab:red"), ("echo", "tab:blue")):
        curve = record["percentiles"].get(kind, [])
        xs = [1.0 / (1.0 - q / 100.0) if q < 100 else 1e5 for q, _ in curve]
        ax.plot(xs, [v for _, v in curve], marker="o", markersize=3, color=color, label=kind)
    ticks = [1, 2, 10, 100, 1000, 10000, 100000]
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ticks, ["0", "50", "90", "99", "99.9", "99.99", "max"])
    ax.axhline(20.0, color="gray", linewidth=0.8, linestyle="-.", label="20 ms target")
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency, ms")
    ax.set_title("Latency by percentile, open loop with bursts (last round)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "latency_percentiles.png", dpi=110)
    plt.close(fig)


# -- command line ----------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    sub = root.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--target",
            default="",
            help="HOST:PORT of a running server (default: start a fresh one and build the world)",
        )
        p.add_argument("--shops", type=int, default=10_000)
        p.add_argument("--max-agents", type=int, default=1_000)
        p.add_argument("--max-concurrent", type=int, default=10)
        p.add_argument("--zipf", type=float, default=1.0, help="Zipf s of traffic over shops")
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--buyers", type=int, default=1_000_000, help="buyer id space")
        p.add_argument("--procs", type=int, default=2, help="load processes")
        p.add_argument("--rate", type=float, default=100.0, help="open loop base rate, /s")
        p.add_argument(
            "--bursts", type=float, nargs="*", default=[3.0, 7.0], help="burst start times, s"
        )
        p.add_argument("--burst-factor", type=float, default=10.0)
        p.add_argument("--seconds", type=float, default=10.0, help="per load run")
        p.add_argument("--concurrency", type=int, default=128, help="closed loop callers")
        p.add_argument("--inflight-cap", type=int, default=5000, help="per load process")
        p.add_argument("--no-churn", action="store_true", help="Route calls only")
        p.add_argument("--hold", type=float, default=1.0, help="s before churn ends a session")
        p.add_argument("--status-churn", type=float, default=20.0, help="status flips per s")
        p.add_argument("--batch-size", type=int, default=1000)
        p.add_argument("--batch-seconds", type=float, default=5.0)
        p.add_argument("--batch-concurrency", type=int, default=4, help="per load process")
        p.add_argument("--h2-requests", type=int, default=50_000)
        p.add_argument("--h2-clients", type=int, default=8)
        p.add_argument("--h2-streams", type=int, default=32)
        p.add_argument("--h2-threads", type=int, default=1)
        p.add_argument(
            "--gc-freeze", type=float, default=None, metavar="S",
            help="the server's --gc-freeze-interval (default: the server's, 1; "
            "0: CPython's default GC, the pre-fix baseline)",
        )  # fmt: skip

    p = sub.add_parser("serve", help="start a server, build the world, wait")
    common(p)
    p.add_argument("--data-dir", default="")
    p.add_argument("--no-fsync", action="store_true")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("load", help="one load run (open or closed loop)")
    common(p)
    p.add_argument("--kind", choices=["route", "echo"], default="route")
    p.add_argument("--mode", choices=["open", "closed"], default="open")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("batch", help="RouteBatch decisions/s vs an Echo of the same size")
    common(p)
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("h2load", help="raw throughput of Route vs Echo with h2load")
    common(p)
    p.set_defaults(func=cmd_h2load)

    import cpu

    for name, quick in (("quick", True), ("cpu", False)):
        p = sub.add_parser(name, help="server CPU per call of every kind (bench/cpu.py)")
        cpu.add_arguments(p, quick=quick)
        p.set_defaults(func=cpu.main)

    p = sub.add_parser("all", help="everything: JSON record, markdown table, plots")
    common(p)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--label", default="full")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-h2load", dest="h2load", action="store_false")
    p.add_argument("--no-journal", dest="journal", action="store_false")
    p.add_argument("--no-plots", dest="plots", action="store_false")
    p.set_defaults(func=cmd_all)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    finally:
        close_pools()


if __name__ == "__main__":
    sys.exit(main())

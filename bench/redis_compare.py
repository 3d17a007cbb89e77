"""fenliu against a gRPC + Redis-Lua router on the same proto (SPEC §8).

SPEC §8 asks for ≥ 2× the router's decisions in memory, ≥ 1.3× with durability on both.

    python bench/redis_compare.py --rounds 5 --seconds 3
    python bench/redis_compare.py --rounds 1 --seconds 1 --shops 20   # a smoke run

The baseline is ``bench/redis_router.py`` (grpc.aio on uvloop, one EVALSHA a Route) in
front of a ``redis-server`` of its own (Debian's; installed with apt-get when missing):
``--save '' --appendonly no`` in memory, ``--appendonly yes --appendfsync always`` durable
(Redis answers a write once its AOF is fsynced, its writes of a loop turn in one fsync).
fenliu is ``fenliu-server`` with its journal off in memory, and with a data dir (fsynced,
its default) durable. Both get the world of ``bench/cpu.py`` built through the same RPCs
and the same closed-loop load of distinct requests (``cpu.drive``, 64 callers a load
process; a sample's decision reason is checked, so no retry is counted as a decision).

Every round runs each kind on both systems in turn, each on fresh processes (the world
is the build and that kind's own sessions), so a ratio is taken within one round and then
the median. Two figures each: decisions/s (fenliu / Redis) and server CPU per decision
(Redis's router + redis-server / fenliu's server): the machine has 2 shared cores, and
the Redis side runs two server processes against fenliu's one, so read the CPU ratio
first.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cpu  # noqa: E402
import loadgen  # noqa: E402
from run import ServerProcess, progress, rss_kib  # noqa: E402

HERE = Path(__file__).resolve().parent
KINDS = ("route_new", "route_open", "batch_new", "batch_open", "stream_new", "stream_open")
TARGETS = {"memory": 2.0, "durable": 1.3}
"""SPEC §8: fenliu's Route against the Redis-Lua router's, each mode."""
REDIS_MODES = {
    "memory": ["--save", "", "--appendonly", "no"],
    "durable": ["--save", "", "--appendonly", "yes", "--appendfsync", "always"],
}


def redis_server_binary() -> str:
    """Debian's redis-server, installed with apt-get when missing."""
    found = shutil.which("redis-server")
    if found is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env)
        found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("apt-get installed no redis-server")
    return found


def wait_port(
    port: int, proc: subprocess.Popen[bytes], what: str, log: Any, timeout: float = 30
) -> None:
    """Until ``proc`` listens on ``port``; if it exits first, an error with the tail of
    ``log`` (the file its output goes to)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{what} exited {proc.returncode}:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port}")


class RedisRouterProcess:
    """``redis-server`` (in ``mode``, files under ``data``) and ``bench/redis_router.py``
    in front of it, each on a free loopback port: ``ServerProcess``'s interface, with
    ``pids`` for ``cpu.measure`` (the router first)."""

    def __init__(self, mode: str, data: Path) -> None:
        self.mode, self.data = mode, data
        self.redis: subprocess.Popen[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []
        self.target = ""
        self._log: Any = None  # a start's file of both processes' output

    def start(self) -> str:
        self.data.mkdir(parents=True, exist_ok=True)
        self._log = tempfile.TemporaryFile(prefix="fenliu-bench-redis-")
        port = loadgen.free_port()
        self.redis = subprocess.Popen(
            [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
             "--dir", str(self.data), "--daemonize", "no", "--logfile", "",
             "--protected-mode", "yes", *REDIS_MODES[self.mode]],
            stdout=self._log, stderr=self._log,
        )  # fmt: skip
        try:
            wait_port(port, self.redis, "redis-server", self._log)
            router_port = loadgen.free_port()
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "redis_router.py"), "--redis", f"127.0.0.1:{port}",
                 "--port", str(router_port)],
                stdout=self._log, stderr=self._log,
            )  # fmt: skip
            wait_port(router_port, self.proc, "redis_router.py", self._log)
        except BaseException:
            self.stop()
            raise
        self.pids = [self.proc.pid, self.redis.pid]
        self.target = f"127.0.0.1:{router_port}"
        return self.target

    def rss_kib(self) -> int:
        return sum(rss_kib(pid) for pid in self.pids)

    def stop(self) -> None:
        for proc in (self.proc, self.redis):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


@contextlib.contextmanager
def serving(system: str, mode: str, tmp: Path, args: argparse.Namespace) -> Iterator[Any]:
    """A fresh ``system`` (fenliu or redis) in ``mode``, the world built on it."""
    data = tmp / f"{system}-{next(STARTS)}"
    if system == "fenliu":
        server: Any = ServerProcess(data_dir=str(data) if mode == "durable" else "")
        server.args += args.fenliu_args.split()
    else:
        server = RedisRouterProcess(mode, data)
    try:
        target = server.start()
        world = loadgen.run_in_process(cpu.build_world, target, args.shops, args.agents,
                                       args.open_buyers)  # fmt: skip
        if world["open_sessions"] != args.open_buyers * 2:
            raise RuntimeError(f"{system}: the world opened {world['open_sessions']} sessions "
                               f"of {args.open_buyers * 2}")  # fmt: skip
        yield server, target
    finally:
        server.stop()


STARTS = itertools.count()


def run(args: argparse.Namespace) -> dict[str, Any]:
    record: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parameters": vars(args), "redis": redis_version(), "modes": {},
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True, cwd=HERE).stdout.strip(),
    }  # fmt: skip
    base = {"shops": args.shops, "open_buyers": args.open_buyers, "seconds": args.seconds,
            "concurrency": args.concurrency, "batch": args.batch_size,
            "streams": args.streams, "window": args.window, "max_rate": args.max_rate}  # fmt: skip
    tags = itertools.count()
    budget_rates: dict[str, float] = {}  # per kind: what its load processes pre-build a second
    pool = multiprocessing.get_context("spawn").Pool(args.procs)
    try:
        with tempfile.TemporaryDirectory(prefix="fenliu-redis-") as tmp:
            for mode in args.modes:
                rounds: list[dict[str, dict[str, Any]]] = []
                for i in range(args.rounds):
                    rnd: dict[str, dict[str, Any]] = {}
                    for kind, system in itertools.product(args.kinds, ("fenliu", "redis")):
                        with serving(system, mode, Path(tmp), args) as (server, target):
                            job = {**base, "target": target, "kind": kind,
                                   "tag": f"t{next(tags)}"}  # fmt: skip
                            if kind.startswith("batch"):
                                job["concurrency"] = args.batch_concurrency
                            f = measure(server, pool, job, args, budget_rates)
                            f["rss_mib"] = round(server.rss_kib() / 1024, 1)
                        rnd[f"{system}_{kind}"] = f
                        progress(f"{mode} round {i + 1}/{args.rounds} {kind} ({system}): "
                                 f"{f['per_s']:,.0f}/s, {f['cpu_us_per_call']} µs server CPU a "
                                 f"decision {f['server_cpu_s_by_process']}, load "
                                 f"{f['loadavg']}" + (f", errors {f['errors']}" if f["errors"]
                                                      else ""))  # fmt: skip
                    rounds.append(rnd)
                summary = summarize(rounds, args.kinds, mode)
                record["modes"][mode] = {"rounds": rounds, "summary": summary}
    finally:
        pool.close()
        pool.join()
    return record


def measure(
    server: Any,
    pool: Any,
    job: dict[str, Any],
    args: argparse.Namespace,
    budget_rates: dict[str, float],
) -> dict[str, Any]:
    """``cpu.measure``, again with a larger budget of pre-built requests when the load ran
    out of them (as bench/cpu.py's ``run``); the next rounds pre-build for twice the
    fastest rate a kind made on either system."""
    kind = job["kind"]
    for attempt in range(cpu.BUDGET_ATTEMPTS):
        job = {**job, "budget_rate": budget_rates.get(kind)}
        f = cpu.measure(server, pool, job, args.procs)
        budget_rates[kind] = max(budget_rates.get(kind) or 0.0, 2 * f["per_s"] / args.procs)
        if not f["exhausted"] or attempt == cpu.BUDGET_ATTEMPTS - 1:
            return f
        progress(f"{kind}: ran out of its {f['budget']:,} pre-built requests at "
                 f"{f['per_s']:,.0f}/s; measuring it again")  # fmt: skip
        job["tag"] += "r"
    raise AssertionError("unreachable")


def summarize(rounds: list[dict[str, Any]], kinds: list[str], mode: str) -> dict[str, Any]:
    """Per kind the medians of each round's ratios, met or not against ``TARGETS[mode]``,
    and warnings: a sample not the expected decision, failed calls, rounds that disagree."""
    s: dict[str, Any] = {"target": TARGETS[mode], "warnings": [], "kinds": {}}
    for kind in kinds:
        pairs = [(r[f"fenliu_{kind}"], r[f"redis_{kind}"]) for r in rounds]
        by_rate = [f["per_s"] / b["per_s"] for f, b in pairs]
        by_cpu = [b["cpu_us_per_call"] / f["cpu_us_per_call"] for f, b in pairs]
        k = s["kinds"][kind] = {
            "fenliu_per_s": statistics.median(f["per_s"] for f, _ in pairs),
            "redis_per_s": statistics.median(b["per_s"] for _, b in pairs),
            "fenliu_cpu_us": statistics.median(f["cpu_us_per_call"] for f, _ in pairs),
            "redis_cpu_us": statistics.median(b["cpu_us_per_call"] for _, b in pairs),
            "redis_cpu_us_router_redis": [
                round(statistics.median(b["server_cpu_s_by_process"][j] / b["done"] * 1e6
                                        for _, b in pairs), 2) for j in (0, 1)],
            "by_throughput": round(statistics.median(by_rate), 3),
            "by_cpu": round(statistics.median(by_cpu), 3),
            "by_throughput_rounds": [round(v, 3) for v in by_rate],
            "by_cpu_rounds": [round(v, 3) for v in by_cpu],
            "loadavg": [min(f["loadavg"] for p in pairs for f in p),
                        max(f["loadavg_end"] for p in pairs for f in p)],
        }  # fmt: skip
        k["met"] = k["by_throughput"] >= TARGETS[mode] and k["by_cpu"] >= TARGETS[mode]
        for name in ("by_throughput", "by_cpu"):
            values = k[f"{name}_rounds"]
            if len(values) > 1 and cpu.spread(values) > cpu.SPREAD:
                s["warnings"].append(f"{kind} {name}: rounds disagree by "
                                     f"{cpu.spread(values):.0%}: {values}")  # fmt: skip
        for f in itertools.chain.from_iterable(pairs):
            if f["real_decisions"] is not True:
                s["warnings"].append(f"{kind}: a sample was not the expected decision: "
                                     f"{f['reasons_sampled']}")  # fmt: skip
            if f["errors"] or f["exhausted"]:
                s["warnings"].append(f"{kind}: errors {f['errors']}, ran out of requests "
                                     f"{f['exhausted']}")  # fmt: skip
    return s


def redis_version() -> str:
    out = subprocess.run([redis_server_binary(), "--version"], capture_output=True, text=True)
    return out.stdout.strip()


def markdown(record: dict[str, Any]) -> str:
    p = record["parameters"]
    lines = [f"fenliu vs gRPC + Redis-Lua ({record['redis']}), commit {record['commit']}, "
             f"{p['rounds']} rounds of {p['seconds']} s a kind, {p['shops']} shops x "
             f"{p['agents']} agents, {p['open_buyers'] * 2:,} open sessions, {p['procs']} load "
             f"process(es) x {p['concurrency']} callers (RouteBatch {p['batch_concurrency']} "
             f"x {p['batch_size']}, RouteStream {p['streams']} x {p['window']} unanswered)"
             + (f", fenliu-server {p['fenliu_args']}" if p["fenliu_args"] else ""), "",
             "| mode | kind | fenliu /s | Redis /s | by throughput | fenliu µs CPU | Redis µs "
             "CPU (router + redis) | by CPU | target | met? | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for mode, m in record["modes"].items():
        s = m["summary"]
        for kind, k in s["kinds"].items():
            router, redis = k["redis_cpu_us_router_redis"]
            lines.append(
                f"| {mode} | {kind} | {k['fenliu_per_s']:,.0f} | {k['redis_per_s']:,.0f} | "
                f"**{k['by_throughput']}** ({min(k['by_throughput_rounds'])}–"
                f"{max(k['by_throughput_rounds'])}) | {k['fenliu_cpu_us']} | {k['redis_cpu_us']}"
                f" ({router} + {redis}) | **{k['by_cpu']}** ({min(k['by_cpu_rounds'])}–"
                f"{max(k['by_cpu_rounds'])}) | ≥ {s['target']} | "
                f"{'yes' if k['met'] else 'no'} | {k['loadavg'][0]}–{k['loadavg'][1]} |"
            )
    for mode, m in record["modes"].items():
        lines += [f"- WARNING ({mode}): {w}" for w in m["summary"]["warnings"]]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0, help="per kind and system")
    p.add_argument("--modes", type=lambda s: s.split(","), default=["memory", "durable"])
    p.add_argument("--kinds", type=lambda s: s.split(","), default=list(KINDS))
    cpu.add_load_arguments(p)
    p.add_argument("--fenliu-args", default="",
                   help="more fenliu-server options, e.g. '--commit-delay 0'")  # fmt: skip
    p.add_argument("--out", default="", help="write redis_compare.json and .md here")
    return p


def main() -> int:
    p = parser()
    args = p.parse_args()
    unknown = set(args.modes) - set(TARGETS) or set(args.kinds) - set(KINDS)
    if unknown:
        p.error(f"unknown: {', '.join(sorted(unknown))}")
    record = run(args)
    table = markdown(record)
    cpu.write_out(args.out, "redis_compare", record, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

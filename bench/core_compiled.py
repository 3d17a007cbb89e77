"""The core compiled by mypyc against the pure-Python core, in one run (issue 12).

    python bench/core_compiled.py              # timing + callgrind, both cores
    python bench/core_compiled.py --no-callgrind

Two decisions, each in the shop of core_loop.py (10 agents, one shard, GC on as in the
server): a new buyer's Route that the strategy assigns (rule 6), and a message on an open
session (rule 2, a new request id each). Per core and decision:

- the median over ``--reps`` batches of ``--n`` decisions of the wall-clock µs per
  decision (``time.perf_counter``; the machine is shared: read the load average printed
  with it, and the ratios);
- the instructions per decision counted by ``valgrind --tool=callgrind``: the same worker
  run twice after the same set-up, making ``--calls`` commands and executing them or not,
  the difference divided by ``--calls`` (instruction counts do not depend on the load).

The pure core is the source tree (``.ci/typecheck`` maps it to ``fenliu.server``), the
compiled one the installed package when it is compiled (``pip install .``), otherwise
(or with ``--build``) one built for this run with ``pip install --no-deps --target
build/bench-compiled .``.
Prints a table and one JSON record.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000_000
KINDS = ("new_buyer", "rule2")
TARGETS_US = {"new_buyer": 2.0, "rule2": 1.0}


# ---------------------------------------------------------------- the worker


def _setup(agents: int) -> tuple[object, object]:
    from fenliu.server.core.dispatcher import Dispatcher
    from fenliu.server.core.types import RegisterAgent, Status

    d = Dispatcher(shards=1)
    for a in range(agents):
        d.execute(
            RegisterAgent(
                at=T0, shop_id="shop0", agent_id=f"a{a}", max_concurrent=10_000,
                status=Status.ONLINE,
            )
        )  # fmt: skip
    return d, d.execute


def _commands(kind: str, start: int, n: int) -> list[object]:
    from fenliu.server.core.types import Route

    if kind == "new_buyer":
        return [
            Route(at=T0, shop_id="shop0", buyer_id=f"b{i}", request_id=f"r{i}")
            for i in range(start, start + n)
        ]
    return [
        Route(at=T0, shop_id="shop0", buyer_id=f"x{i % 10}", request_id=f"m{i}")
        for i in range(start, start + n)
    ]


def _prepare(kind: str, agents: int) -> tuple[object, object]:
    """The dispatcher, warmed: 2,000 decisions of the kind (and the 10 open sessions)."""
    d, execute = _setup(agents)
    from fenliu.server.core.types import Route

    for b in range(10):
        execute(Route(at=T0, shop_id="shop0", buyer_id=f"x{b}", request_id=f"first{b}"))
    for command in _commands(kind, 10_000_000, 2_000):
        execute(command)
    d.drain_events()  # type: ignore[attr-defined]
    return d, execute


def worker_time(kind: str, agents: int, n: int, reps: int) -> dict[str, object]:
    from fenliu.server import core

    d, execute = _prepare(kind, agents)
    per: list[float] = []
    for rep in range(reps):
        commands = _commands(kind, rep * n, n)
        start = time.perf_counter()
        for command in commands:
            execute(command)  # type: ignore[operator]
        per.append((time.perf_counter() - start) / n * 1e6)
        d.drain_events()  # type: ignore[attr-defined]
    return {"compiled": core.COMPILED, "median_us": statistics.median(per), "all_us": per}


def worker_count(kind: str, agents: int, calls: int, execute_them: bool) -> None:
    """The measured part of a callgrind run: ``calls`` commands made, and executed or not
    (the baseline): the difference is the decisions alone."""
    d, execute = _prepare(kind, agents)
    commands = _commands(kind, 0, calls)
    if execute_them:
        for command in commands:
            execute(command)  # type: ignore[operator]
    else:
        for command in commands:
            type(command)  # the loop itself, without the call
    d.drain_events()  # type: ignore[attr-defined]


# ---------------------------------------------------------------- the driver


def _compiled_path(build: bool) -> str | None:
    """A sys.path entry whose fenliu.server.core is compiled; None: the installed one is."""
    probe = "import fenliu.server.core as c; print(c.COMPILED)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=_env(None)
    )
    if out.stdout.strip() == "True" and not build:
        return None
    target = ROOT / "build" / "bench-compiled"
    print(f"building the compiled core of {ROOT} into {target}", file=sys.stderr)
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(ROOT)],
        check=True, env={**os.environ, "FENLIU_PURE": ""},
    )  # fmt: skip
    return str(target)


def _env(path: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONHASHSEED"] = "0"  # the same instructions run after run
    if path is not None:
        env["PYTHONPATH"] = path
    return env


def _run(path: str | None, args: list[str], prefix: list[str] = ()) -> str:  # type: ignore[assignment]
    out = subprocess.run(
        [*prefix, sys.executable, __file__, *args],
        capture_output=True, text=True, env=_env(path), check=True,
    )  # fmt: skip
    return out.stdout + out.stderr


def _instructions(path: str | None, kind: str, agents: int, calls: int) -> tuple[int, bool]:
    with tempfile.TemporaryDirectory() as tmp:
        counts = []
        for run in ("--baseline", "--execute"):
            output = _run(
                path,
                ["--worker", "count", "--kind", kind, "--agents", str(agents),
                 "--calls", str(calls), run],
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out"],
            )  # fmt: skip
            match = re.search(r"Collected : (\d+)", output)
            if match is None:
                raise RuntimeError(f"no instruction count in valgrind's output:\n{output}")
            counts.append(int(match.group(1)))
    return (counts[1] - counts[0]) // calls, True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--n", type=int, default=5_000, help="decisions per timed batch")
    parser.add_argument("--reps", type=int, default=21, help="timed batches per core")
    parser.add_argument("--calls", type=int, default=2_000, help="decisions under callgrind")
    parser.add_argument("--no-callgrind", action="store_true")
    parser.add_argument(
        "--build",
        action="store_true",
        help="build this tree's compiled core even if one is installed",
    )
    parser.add_argument("--worker", choices=("time", "count"), help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--execute", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "time":
        print(json.dumps(worker_time(args.kind, args.agents, args.n, args.reps)))
        return
    if args.worker == "count":
        worker_count(args.kind, args.agents, args.calls, args.execute)
        return

    compiled = _compiled_path(args.build)
    cores = {"pure": str(ROOT / ".ci" / "typecheck"), "compiled": compiled}
    load_before = os.getloadavg()
    results: dict[str, dict[str, dict[str, object]]] = {k: {} for k in KINDS}
    for kind in KINDS:
        # interleaved: pure, compiled, pure, compiled (two timing workers per core)
        medians: dict[str, list[float]] = {"pure": [], "compiled": []}
        for _ in range(2):
            for name, path in cores.items():
                record = json.loads(
                    _run(path, ["--worker", "time", "--kind", kind, "--agents",
                                str(args.agents), "--n", str(args.n), "--reps",
                                str(args.reps)]).splitlines()[-1]
                )  # fmt: skip
                if record["compiled"] != (name == "compiled"):
                    raise RuntimeError(f"the {name} worker ran the other core")
                medians[name].append(record["median_us"])
        for name, path in cores.items():
            entry: dict[str, object] = {
                "median_us": round(statistics.median(medians[name]), 3),
                "rounds_us": [round(m, 3) for m in medians[name]],
            }
            if not args.no_callgrind:
                entry["instructions"] = _instructions(path, kind, args.agents, args.calls)[0]
            results[kind][name] = entry
    load_after = os.getloadavg()

    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    print(f"{'decision':<12}{'core':<10}{'median µs':>10}{'rounds':>18}{'instr.':>10}")
    for kind in KINDS:
        for name in ("pure", "compiled"):
            e = results[kind][name]
            rounds = "/".join(f"{r:.2f}" for r in e["rounds_us"])  # type: ignore[attr-defined]
            print(
                f"{kind:<12}{name:<10}{e['median_us']:>10.2f}{rounds:>18}"
                f"{e.get('instructions', '-'):>10}"
            )
        pure, comp = results[kind]["pure"], results[kind]["compiled"]
        ratio_t = float(pure["median_us"]) / float(comp["median_us"])  # type: ignore[arg-type]
        line = f"  {kind}: compiled is {ratio_t:.2f}x faster by time"
        if "instructions" in comp:
            ratio_i = int(pure["instructions"]) / int(comp["instructions"])  # type: ignore[call-overload]
            results[kind]["instruction_ratio"] = {"pure/compiled": round(ratio_i, 2)}
            line += f", {ratio_i:.2f}x fewer instructions"
        for name in ("pure", "compiled"):
            rounds_us = results[kind][name]["rounds_us"]
            low, high = min(rounds_us), max(rounds_us)  # type: ignore[type-var]
            if high > 1.2 * low:
                print(f"  warning: {kind} {name}: the rounds disagree ({low:.2f}-{high:.2f} µs)")
        met = float(comp["median_us"]) <= TARGETS_US[kind]  # type: ignore[arg-type]
        line += f"; target ≤ {TARGETS_US[kind]} µs: {'met' if met else 'NOT met'}"
        results[kind]["time_ratio"] = {"pure/compiled": round(ratio_t, 2)}
        results[kind]["target_met"] = {"compiled": met}
        print(line)
    print(
        json.dumps(
            {
                "agents": args.agents,
                "python": sys.version.split()[0],
                "load_average": [round(load_before[0], 2), round(load_after[0], 2)],
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()

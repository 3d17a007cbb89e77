"""What an idempotency key costs a non-Route command in the core (issue 11).

    python bench/keyed.py                      # this tree's cores, pure and compiled
    python bench/keyed.py --before REV         # and the core of git revision REV (before keys)
    python bench/keyed.py --no-callgrind --reps 3 --n 1000

The command: ``SetStatus`` of one of 10 agents (no sessions), alternating ONLINE and
INVISIBLE, in one shard; per core and case:

- ``plain``: without a key (``request_id`` ""), the path every command took before keys;
- ``keyed``: a fresh key each (remembered with the outcome: the cost of a first call);
- ``retry``: a key already remembered, the same command again (the remembered answer);

the median over ``--reps`` batches of ``--n`` commands of the wall-clock µs per command
(shared machine: the load average is printed; compare within a run), and the instructions
per command counted by ``valgrind --tool=callgrind`` (the same worker run twice, making
``--calls`` commands and executing them or not; the difference divided by ``--calls``).

``--before REV``: the same ``plain`` case on the core of ``REV`` (a temporary git
worktree; its pure core, and its compiled core built with ``pip install --target``), so
the "before" figure is the code before keys existed, not only today's unkeyed path.
Also the memory a remembered key holds (tracemalloc; 50,000 keyed commands less as many
unkeyed ones). Prints a table and one JSON record.
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
CASES = ("plain", "keyed", "retry")
AGENTS = 10


# ---------------------------------------------------------------- the worker


def _prepare(case: str, n: int) -> tuple[object, object, list[object]]:
    from fenliu.server.core.dispatcher import Dispatcher
    from fenliu.server.core.types import RegisterAgent, SetStatus, Status

    d = Dispatcher(shards=1)
    execute = d.execute
    for a in range(AGENTS):
        execute(RegisterAgent(at=T0, shop_id="shop0", agent_id=f"a{a}", status=Status.ONLINE))

    def make(i: int) -> object:
        status = Status.INVISIBLE if (i // AGENTS) % 2 == 0 else Status.ONLINE
        fields = {"at": T0, "shop_id": "shop0", "agent_id": f"a{i % AGENTS}", "status": status}
        if case != "plain":
            fields["request_id"] = f"k{i}"
        return SetStatus(**fields)  # type: ignore[arg-type]

    commands = [make(i) for i in range(n)]
    if case == "retry":
        for command in commands:
            execute(command)  # remembered: the measured calls are retries
    else:
        for i in range(2_000):  # warm-up, other keys
            execute(make(10_000_000 + i))
    d.drain_events()
    return d, execute, commands


def worker_time(case: str, n: int, reps: int) -> dict[str, object]:
    from fenliu.server import core

    per: list[float] = []
    for _rep in range(reps):
        d, execute, commands = _prepare(case, n)
        start = time.perf_counter()
        for command in commands:
            execute(command)  # type: ignore[operator]
        per.append((time.perf_counter() - start) / n * 1e6)
        del d
    compiled = getattr(core, "COMPILED", False)
    return {"compiled": compiled, "median_us": statistics.median(per), "all_us": per}


def worker_count(case: str, calls: int, execute_them: bool) -> None:
    d, execute, commands = _prepare(case, calls)
    if execute_them:
        for command in commands:
            execute(command)  # type: ignore[operator]
    else:
        for command in commands:
            type(command)
    d.drain_events()  # type: ignore[attr-defined]


def worker_memory(n: int) -> dict[str, object]:
    """Bytes a remembered key holds (its command, outcome and table entry), per key:
    ``n`` keyed commands made and executed one by one, traced, less the same unkeyed."""
    import gc
    import tracemalloc

    from fenliu.server.core.types import SetStatus, Status

    per: dict[str, float] = {}
    for case in ("plain", "keyed"):
        d, execute, _ = _prepare(case, 0)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            status = Status.INVISIBLE if (i // AGENTS) % 2 == 0 else Status.ONLINE
            key = f"k{i}" if case == "keyed" else ""
            execute(  # type: ignore[operator]
                SetStatus(at=T0, shop_id="shop0", agent_id=f"a{i % AGENTS}", status=status,
                          request_id=key)
            )  # fmt: skip
        d.drain_events()  # type: ignore[attr-defined]
        gc.collect()
        per[case] = (tracemalloc.get_traced_memory()[0] - before) / n
        tracemalloc.stop()
        del d
    return {"bytes_per_key": round(per["keyed"] - per["plain"])}


# ---------------------------------------------------------------- the driver


def _env(path: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONHASHSEED"] = "0"
    if path is not None:
        env["PYTHONPATH"] = path
    return env


def _run(path: str | None, args: list[str], prefix: tuple[str, ...] = ()) -> str:
    out = subprocess.run(
        [*prefix, sys.executable, __file__, *args],
        capture_output=True, text=True, env=_env(path), check=True,
    )  # fmt: skip
    return out.stdout + out.stderr


def _build(tree: Path, target: Path) -> str:
    print(f"building the compiled core of {tree} into {target}", file=sys.stderr)
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(tree)],
        check=True, env={**os.environ, "FENLIU_PURE": ""},
    )  # fmt: skip
    return str(target)


def _instructions(path: str | None, case: str, calls: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        counts = []
        for run in ("--baseline", "--execute"):
            output = _run(
                path,
                ["--worker", "count", "--case", case, "--calls", str(calls), run],
                ("valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out"),
            )
            match = re.search(r"Collected : (\d+)", output)
            if match is None:
                raise RuntimeError(f"no instruction count in valgrind's output:\n{output}")
            counts.append(int(match.group(1)))
    return (counts[1] - counts[0]) // calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5_000, help="commands per timed batch")
    parser.add_argument("--reps", type=int, default=15, help="timed batches per core and case")
    parser.add_argument("--calls", type=int, default=2_000, help="commands under callgrind")
    parser.add_argument("--no-callgrind", action="store_true")
    parser.add_argument("--before", metavar="REV", help="also the core of this git revision")
    parser.add_argument("--worker", choices=("time", "count", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--execute", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "time":
        print(json.dumps(worker_time(args.case, args.n, args.reps)))
        return
    if args.worker == "count":
        worker_count(args.case, args.calls, args.execute)
        return
    if args.worker == "memory":
        print(json.dumps(worker_memory(args.n)))
        return

    work = Path(tempfile.mkdtemp(prefix="fenliu-keyed-"))
    cores: dict[str, tuple[str, tuple[str, ...]]] = {
        "pure": (str(ROOT / ".ci" / "typecheck"), CASES),
        "compiled": (_build(ROOT, work / "compiled"), CASES),
    }
    old: Path | None = None
    if args.before:
        old = work / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old),
                        args.before], check=True)  # fmt: skip
        cores["before-pure"] = (str(old / ".ci" / "typecheck"), ("plain",))
        cores["before-compiled"] = (_build(old, work / "before-compiled"), ("plain",))
    try:
        load_before = os.getloadavg()
        results: dict[str, dict[str, dict[str, object]]] = {name: {} for name in cores}
        for _round in range(2):  # interleaved rounds: the load moves under both alike
            for name, (path, cases) in cores.items():
                for case in cases:
                    record = json.loads(_run(path, ["--worker", "time", "--case", case, "--n",
                                                    str(args.n), "--reps", str(args.reps)]
                                             ).splitlines()[-1])  # fmt: skip
                    if record["compiled"] != name.endswith("compiled"):
                        raise RuntimeError(f"the {name} worker ran the other core")
                    entry = results[name].setdefault(case, {"rounds_us": []})
                    entry["rounds_us"].append(round(record["median_us"], 3))  # type: ignore[attr-defined]
        for name, (path, cases) in cores.items():
            for case in cases:
                entry = results[name][case]
                entry["median_us"] = round(statistics.median(entry["rounds_us"]), 3)  # type: ignore[arg-type]
                if not args.no_callgrind:
                    entry["instructions"] = _instructions(path, case, args.calls)
        load_after = os.getloadavg()
        memory = {
            name: json.loads(_run(cores[name][0], ["--worker", "memory", "--n", "50000"]
                                  ).splitlines()[-1])["bytes_per_key"]
            for name in ("pure", "compiled")
        }  # fmt: skip
    finally:
        if old is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                           check=False)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)

    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    print(f"{'core':<17}{'case':<8}{'median µs':>10}{'rounds':>16}{'instr.':>10}")
    for name, per_case in results.items():
        for case, e in per_case.items():
            rounds = "/".join(f"{r:.2f}" for r in e["rounds_us"])  # type: ignore[attr-defined]
            print(f"{name:<17}{case:<8}{e['median_us']:>10.2f}{rounds:>16}"
                  f"{e.get('instructions', '-'):>10}")  # fmt: skip
    print(f"a remembered key holds {memory['pure']} B (pure core), {memory['compiled']} B "
          "(compiled) until it expires")  # fmt: skip
    print(json.dumps({"python": sys.version.split()[0], "before": args.before,
                      "bytes_per_key": memory,
                      "load_average": [round(load_before[0], 2), round(load_after[0], 2)],
                      "results": results}))  # fmt: skip


if __name__ == "__main__":
    main()

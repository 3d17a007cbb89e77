"""A new buyer's decision in a small and in a big world, in-process (issue 12): does the
core's cost per decision grow with the number of open sessions, and is it instructions
(something scans or grows) or memory (the same instructions, slower)?

    python bench/core_world.py                               # 45,000 vs 450,000 sessions
    python bench/core_world.py --worlds 45000,450000 --reps 5 --no-callgrind
    python bench/core_world.py --world-shape realistic       # SPEC §8's sessions per agent

The world is the core's ``Dispatcher`` (16 shards, no gRPC) with ``--shops`` shops of
``--agents`` agents each; ``--world`` sessions are opened first by new buyers spread over
the shops as bench/cpu.py's RouteBatch spreads them (``n * 7919 % shops``), or with
``--fill random`` each to a shop drawn at random (seeded), so that the shops' and agents'
dicts are not all at one fill level (spread evenly, every shop's dicts reach a resize at
the same measured buyer, which a live process never sees at once). Shapes:

- ``cpu``: bench/cpu.py's world: 400 shops of 4 agents, max_concurrent 10,000, every
  session stays open: 450,000 sessions are ~281 open sessions per agent.
- ``realistic``: SPEC §8's ratio (100,000 agents, 1,000,000 sessions: 10 per agent): as
  many shops of ``--agents`` agents as the world needs for ``--per-agent`` (10) open
  sessions an agent after the build, max_concurrent 100 (room for the measured buyers).

Then ``--n`` more new buyers are measured, each a rule-6 decision the strategy assigns
(or, with ``--kind open``, ``--n`` messages of the world's open sessions, each a rule-2
decision, buyers in the order they were opened):

- time: ``time.thread_time`` over each of ``--reps`` batches of ``--n`` decisions, the
  server's GC settings (a freeze after the build, no automatic full collection); the
  median and the rounds, with the load average. Each world in its own process,
  interleaved small, big, small, big.
- instructions: the same process under ``valgrind --tool=callgrind``, collecting only
  inside ``operator.call`` (``--toggle-collect=_operator_call``), which runs the measured
  decisions and nothing else: instructions per decision, load-independent.
- ``--cache-sim``: callgrind simulates this machine's caches too (L1 and last level as
  sysfs gives them: valgrind's own guess on this VM was a 256 MiB direct-mapped LL), and
  the table lists the functions that take the most last-level misses a decision (reads
  and writes, exclusive: the code that touched the cold line), ``--top`` of them.
  valgrind simulates two levels; ``--last-level 2`` makes L2 the last, so that with
  ``--flush`` its misses are the lines a cold decision fetches from beyond L2.
- ``--cold-code``: code is cold too, as in a unary call (grpc's and the event loop's code
  runs between two decisions, and the flush, a tiny loop, leaves the simulated 64 KiB I1
  as it was): a 1 KiB I1 sends every instruction line to the last level, which the flush
  emptied, so its instruction misses (ILmr) are the code lines a cold decision fetches
  from beyond L2; the table counts them with the data's, by function.

``--entry`` is how a decision enters the core: ``command`` (the default) a Route given to
``Dispatcher.execute``, as RouteBatch does; ``unary-route`` a unary Route as the server
handled it until 2026-12-04 (the wire codec's ``RouteFields`` made a Route, then
executed); ``unary-fields`` as it does now (``Node.submit_route``: its tuple handed to
``Shard.apply_route`` as it is). Both unary entries are one interpreted frame, as the
node's is, and the ``RouteFields`` are made before, as the wire codec's reader makes them.

``--flush KIB`` runs each measured decision cold, as a unary call does: between two
decisions it writes a byte of every cache line of a ``KIB`` KiB buffer, as the ~500,000
instructions of grpc and the event loop around one unary Route do to the caches (and
RouteBatch's decision before does not). The flush is neither timed (each decision is
timed alone then) nor counted (it runs outside ``operator.call``), but the cache
simulation sees its lines evict the core's.

    python bench/core_world.py --kind open --worlds 10000 --flush 0 --cache-sim
    python bench/core_world.py --kind open --worlds 10000 --flush 4096 --cache-sim
    python bench/core_world.py --kind open --worlds 10000 --flush 4096 --cache-sim \
        --last-level 2 --cold-code        # the lines, code and data, a cold decision fetches

Prints a table and one JSON record.
"""

from __future__ import annotations

import argparse
import gc
import json
import operator
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

T0 = 1_700_000_000_000
NO_AUTOMATIC_FULL = 1 << 30  # fenliu.server.rpc.app's (not imported: older builds lack it)


def shape(args: argparse.Namespace, world: int) -> tuple[int, int, int]:
    """(shops, agents per shop, max_concurrent) of a world of ``world`` sessions."""
    if args.world_shape == "cpu":
        return args.shops, args.agents, 10_000
    per_shop = args.agents * args.per_agent
    return max(1, -(-world // per_shop)), args.agents, 100


def build(args: argparse.Namespace, world: int) -> tuple[Any, list[str], list[str]]:
    """The world's dispatcher, its shop ids, and each open buyer's shop (``o{n}``'s)."""
    from fenliu.server.core.dispatcher import Dispatcher
    from fenliu.server.core.types import RegisterAgent, Route, Status

    shops, agents, most = shape(args, world)
    d = Dispatcher()
    ids = [f"c{s:05d}" for s in range(shops)]
    for shop in ids:
        for a in range(agents):
            d.execute(RegisterAgent(at=T0, shop_id=shop, agent_id=f"a{a}",
                                    max_concurrent=most, status=Status.ONLINE))  # fmt: skip
    draw = random.Random(0).randrange
    shop_of = []
    for n in range(world):
        shop = ids[n * 7919 % shops] if args.fill == "spread" else ids[draw(shops)]
        shop_of.append(shop)
        d.execute(Route(at=T0 + n // 100, shop_id=shop, buyer_id=f"o{n}",
                        request_id=f"o{n}"))  # fmt: skip
        if n % 1000 == 999:
            d.drain_events()
    d.drain_events()
    return d, ids, shop_of


def measured(
    kind: str, ids: list[str], shop_of: list[str], start: int, n: int, at: int
) -> list[Any]:
    """``n`` distinct Routes from the ``start``-th: new buyers, or (``open``) messages of
    the open buyers in turn, each with a request id of its own (never a retry)."""
    from fenliu.server.core.types import Route

    if kind == "open":
        opened = len(shop_of)
        return [
            Route(at=at, shop_id=shop_of[i % opened], buyer_id=f"o{i % opened}", request_id=f"m{i}")
            for i in range(start, start + n)
        ]
    shops = len(ids)
    return [
        Route(at=at, shop_id=ids[i * 7919 % shops], buyer_id=f"n{i}", request_id=f"n{i}")
        for i in range(start, start + n)
    ]


def entry_of(args: argparse.Namespace, d: Any, at: int) -> tuple[Any, Any]:
    """(the callable a decision is, what turns a measured Route into its argument)."""
    if args.entry == "command":
        return d.execute, None
    from fenliu.server.rpc.wire import RouteFields

    def parsed(command: Any) -> Any:  # what the wire codec's reader hands the handler
        return RouteFields(msgspec.structs.astuple(command)[:8])

    if args.entry == "unary-route":

        def unary_route(request: Any) -> Any:
            return d.execute(request.route(at))

        return unary_route, parsed
    shards, index_of = d.shards, d.index_of

    def unary_fields(request: Any) -> Any:
        fields = request.fields
        return shards[index_of(fields[0])].apply_route(fields, at)

    return unary_fields, parsed


def flusher(kib: int) -> Any:
    """A call that writes a byte of each 64-byte line of a ``kib`` KiB buffer (None: 0)."""
    if not kib:
        return None
    buffer = bytearray(kib * 1024)
    marks = [bytes([v]) * len(range(0, len(buffer), 64)) for v in (1, 2)]
    turn = [0]

    def flush() -> None:
        turn[0] ^= 1
        buffer[::64] = marks[turn[0]]

    return flush


def worker(args: argparse.Namespace, world: int, count: bool) -> dict[str, Any]:
    from fenliu.server import core

    d, ids, shop_of = build(args, world)
    gc.collect()
    gc.freeze()  # the server's freeze (README "Garbage collection")
    before = gc.get_threshold()
    gc.set_threshold(before[0], before[1], NO_AUTOMATIC_FULL)  # as fenliu-server
    at = T0 + world // 100 + 1
    execute, convert = entry_of(args, d, at)

    def arguments(start: int, n: int) -> list[Any]:  # the measured Routes, as entered
        commands = measured(args.kind, ids, shop_of, start, n, at)
        return commands if convert is None else [convert(c) for c in commands]

    call = operator.call
    flush = flusher(args.flush)
    if count:
        commands = arguments(0, args.calls)
        for command in commands:
            if flush is not None:
                flush()
            call(execute, command)  # collected: only inside operator.call
        d.drain_events()
        return {"compiled": core.COMPILED}
    per: list[float] = []
    clock = time.perf_counter_ns  # a decision timed alone: wall time, less two reads' cost
    pair = min(-clock() + clock() for _ in range(1000)) if flush is not None else 0
    for rep in range(args.reps):
        commands = arguments(rep * args.n, args.n)
        if flush is None:
            t0 = time.thread_time()
            for command in commands:
                execute(command)
            per.append((time.thread_time() - t0) / args.n * 1e6)
        else:  # each decision timed alone, after the flush
            spent = 0
            for command in commands:
                flush()
                t0 = clock()
                execute(command)
                spent += clock() - t0 - pair
            per.append(spent / args.n / 1000)
        d.drain_events()
    reason = execute(arguments(10**8, 1)[0]).reason.name
    return {"compiled": core.COMPILED, "median_us": statistics.median(per), "rounds_us": per,
            "reason": reason}  # fmt: skip


def cache_options(
    caches: Path = Path("/sys/devices/system/cpu/cpu0/cache"), last: int = 0
) -> list[str]:
    """valgrind's --I1/--D1/--LL from sysfs (size, ways, line), what this CPU has; the LL
    is the highest level, or level ``last`` (2: count what misses L2, a cold line).

    valgrind simulates only caches of 2^n sets: a cache of another count (a 260 MiB
    20-way L3 has 212,992) is simulated with its sets rounded down to a power of two,
    the same ways and line (160 MiB there), never more cache than the CPU has."""
    found: dict[str, str] = {}
    for index in sorted(caches.glob("index*")):
        level, kind, size, ways, line = (
            (index / name).read_text().strip()
            for name in ("level", "type", "size", "ways_of_associativity", "coherency_line_size")
        )  # fmt: skip
        set_bytes = int(ways) * int(line)
        sets = int(size.rstrip("K")) * 1024 // set_bytes
        value = f"{(1 << (sets.bit_length() - 1)) * set_bytes},{ways},{line}"
        if level == "1":
            found["--I1" if kind == "Instruction" else "--D1"] = value
        elif not last or int(level) == last:
            found["--LL"] = value  # the highest level listed last
    return [f"{name}={value}" for name, value in found.items()]


COLD_I1 = "--I1=1024,2,64"  # --cold-code: every instruction line a decision runs misses


def misses_by_function(path: Path, calls: int, top: int, code: bool = False) -> dict[str, float]:
    """Last-level data misses (reads + writes; ``code``: and instruction misses) a
    decision, by the function that took them (exclusive cost lines of a callgrind.out
    file; a call's inclusive line is skipped)."""
    names: dict[str, str] = {}
    totals: dict[str, int] = {}
    wanted: list[int] = []  # the columns counted (none without --cache-sim)
    names_wanted = ("ILmr", "DLmr", "DLmw") if code else ("DLmr", "DLmw")
    current, skip = "", False
    with path.open() as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
                wanted = [events.index(e) for e in names_wanted if e in events]
            elif line.startswith(("fn=", "cfn=")):  # "(id) name" once, then "(id)"
                ref, _, name = line.partition("=")[2].strip().partition(" ")
                if name:
                    names[ref] = name
                if line[0] == "f":
                    current = names.get(ref, ref)
            elif line.startswith("calls="):
                skip = True  # the next cost line is the call's inclusive cost
            elif line[:1].isdigit() or line[:1] in "+-*":
                if skip:
                    skip = False
                    continue
                costs = line.split()[1:]  # after the position; trailing zeros left out
                count = sum(int(costs[i]) for i in wanted if i < len(costs))
                totals[current] = totals.get(current, 0) + count
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return {name: round(count / calls, 1) for name, count in ranked if count}


def run_worker(args: argparse.Namespace, world: int, count: bool) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", str(world), "--world-shape", args.world_shape,
           "--fill", args.fill, "--top", str(args.top),
           "--kind", args.kind, "--flush", str(args.flush), "--entry", args.entry,
           "--shops", str(args.shops), "--agents", str(args.agents), "--per-agent",
           str(args.per_agent), "--n", str(args.n), "--reps", str(args.reps), "--calls",
           str(args.calls)]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if not count:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        return json.loads(out.stdout.splitlines()[-1])  # type: ignore[no-any-return]
    sim = ["--cache-sim=yes", *cache_options(last=args.last_level)] if args.cache_sim else []
    if sim and args.cold_code:
        sim = [o for o in sim if not o.startswith("--I1=")] + [COLD_I1]
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out", *sim,
             "--collect-atstart=no", "--toggle-collect=_operator_call", *cmd, "--count"],
            capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
        by_function = misses_by_function(
            Path(tmp) / "cg.out", args.calls, args.top, code=args.cache_sim and args.cold_code
        )
    events = re.search(r"Events *: ([\w ]+)", out.stderr)
    found = re.search(r"Collected : ([\d ]+)", out.stderr)
    if found is None or events is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{out.stderr}")
    counts = dict(zip(events.group(1).split(), map(int, found.group(1).split()), strict=True))
    record = {"instructions": counts["Ir"] // args.calls}
    if args.cache_sim:  # per decision: L1 data misses, last-level misses (code; data reads, writes)
        record["cache_misses"] = {name: round(counts[name] / args.calls, 1)
                                  for name in ("D1mr", "D1mw", "ILmr", "DLmr", "DLmw")}  # fmt: skip
        record["misses_by_function"] = by_function
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worlds", default="45000,450000",
                        help="open sessions before the measured decisions")  # fmt: skip
    parser.add_argument("--world-shape", choices=("cpu", "realistic"), default="cpu")
    parser.add_argument("--fill", choices=("spread", "random"), default="spread",
                        help="how the world's sessions are spread over the shops")  # fmt: skip
    parser.add_argument("--kind", choices=("new", "open"), default="new",
                        help="new buyers (rule 6) or open-session messages (rule 2)")  # fmt: skip
    parser.add_argument("--entry", choices=("command", "unary-route", "unary-fields"),
                        default="command", help="how a decision enters the core")  # fmt: skip
    parser.add_argument("--flush", type=int, default=0, metavar="KIB",
                        help="KiB written between two decisions (cold, as unary)")  # fmt: skip
    parser.add_argument("--shops", type=int, default=400, help="cpu shape")
    parser.add_argument("--agents", type=int, default=4, help="per shop")
    parser.add_argument("--per-agent", type=int, default=10, help="realistic shape")
    parser.add_argument("--n", type=int, default=20_000, help="decisions per timed batch")
    parser.add_argument("--reps", type=int, default=5, help="timed batches per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per world")
    parser.add_argument("--calls", type=int, default=5_000, help="decisions under callgrind")
    parser.add_argument("--no-callgrind", action="store_true")
    parser.add_argument("--cache-sim", action="store_true",
                        help="callgrind simulates the caches too: misses per decision")  # fmt: skip
    parser.add_argument("--last-level", type=int, default=0, metavar="N",
                        help="with --cache-sim: simulate level N as the last (2: L2)")  # fmt: skip
    parser.add_argument("--cold-code", action="store_true",
                        help="with --cache-sim: a 1 KiB I1, code lines counted too")  # fmt: skip
    parser.add_argument("--top", type=int, default=12,
                        help="with --cache-sim: functions listed by their misses")  # fmt: skip
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args, args.worker, args.count)))
        return
    worlds = [int(w) for w in args.worlds.split(",") if w]
    load = [os.getloadavg()[0]]
    results: dict[int, dict[str, Any]] = {w: {"rounds_us": []} for w in worlds}
    for _ in range(args.rounds):
        for world in worlds:
            record = run_worker(args, world, count=False)
            results[world]["rounds_us"] += [round(r, 3) for r in record["rounds_us"]]
            results[world]["reason"] = record["reason"]
            results[world]["compiled"] = record["compiled"]
    load.append(os.getloadavg()[0])
    for world in worlds:
        shops, agents, most = shape(args, world)
        entry = results[world]
        entry.update(shops=shops, agents_per_shop=agents, max_concurrent=most,
                     sessions_per_agent=round(world / (shops * agents), 1),
                     median_us=round(statistics.median(entry["rounds_us"]), 3))  # fmt: skip
        if not args.no_callgrind:
            entry.update(run_worker(args, world, count=True))
    load.append(os.getloadavg()[0])
    core = "compiled" if results[worlds[0]]["compiled"] else "pure"
    flushed = f", {args.flush} KiB written between decisions" if args.flush else ""
    print(f"{core} core, {args.kind} buyers, {args.entry} entry, {args.world_shape} world, "
          f"{args.fill} fill"
          f"{flushed}; load average (1 min) "
          f"{' -> '.join(f'{x:.2f}' for x in load)}")  # fmt: skip
    print(f"{'sessions':>10}{'shops':>7}{'agents':>7}{'per agent':>10}{'median µs':>11}"
          f"{'instr.':>9}  rounds µs")  # fmt: skip
    for world in worlds:
        e = results[world]
        print(f"{world:>10,}{e['shops']:>7}{e['agents_per_shop']:>7}{e['sessions_per_agent']:>10}"
              f"{e['median_us']:>11.2f}{e.get('instructions', '-'):>9}  "
              f"{'/'.join(f'{r:.2f}' for r in e['rounds_us'])}")  # fmt: skip
        if "cache_misses" in e:
            print(f"{'':>10}cache misses a decision (callgrind's simulated caches): "
                  f"{e['cache_misses']}")  # fmt: skip
            what = "code and data" if args.cold_code else "data"
            print(f"{'':>10}last-level misses ({what}) a decision, by the function that took them:")
            for name, count in e["misses_by_function"].items():
                print(f"{'':>12}{count:>6.1f}  {name}")
    print(json.dumps({"shape": args.world_shape, "fill": args.fill, "core": core,
                      "kind": args.kind, "flush_kib": args.flush, "entry": args.entry,
                      "cold_code": args.cache_sim and args.cold_code,
                      "load_average": load, "python": sys.version.split()[0],
                      "results": {str(w): r for w, r in results.items()}}))  # fmt: skip


if __name__ == "__main__":
    main()

"""The unary Route's own path in-process, by instructions per call (issue 12).

    python bench/route_path.py                  # callgrind: new buyers and open sessions
    python bench/route_path.py --no-callgrind   # CPU time only (no valgrind needed)

What a Route call runs besides grpc's per-call machinery, which Echo runs too: the request
decoded from its bytes, ``convert.route``, ``Node.submit`` (the shard's decision, the
event published to the watch hub, no storage: journal off, as in bench/cpu.py) and the
reply built by ``convert.decision`` and serialized. The world is bench/cpu.py's: 100 shops
of 4 agents, 5,000 open sessions; ``new`` routes a buyer never seen (rule 6), ``open`` a
message on an open session (rule 2), each with a request id of its own.

With callgrind the same worker runs under ``valgrind --tool=callgrind``, zeroed before the
calls and dumped after them, so the count holds the calls alone (the server's echo-level
work is bench/callgrind_calls.py's). Instruction counts do not depend on the machine's
load; the CPU time printed beside them does. Prints one JSON record.
"""

from __future__ import annotations

import argparse
import gc
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

T0 = 1_700_000_000_000
KINDS = ("new", "open")
SHOPS, AGENTS, OPEN = 100, 4, 5000


def worker(kind: str, calls: int, callgrind: bool, opened: int = OPEN) -> float:
    """Run ``calls`` Routes of ``kind``; their CPU seconds (between callgrind's zero and
    dump when ``callgrind``)."""
    from fenliu.client._pb import fenliu_pb2 as pb
    from fenliu.server.core import types as t
    from fenliu.server.core.dispatcher import Dispatcher
    from fenliu.server.node import Node
    from fenliu.server.rpc import convert
    from fenliu.server.rpc.watch import Hub

    dispatcher = Dispatcher(shards=16)
    hub = Hub()
    node = Node(dispatcher, lambda: T0, hub.publish, undo=hub)
    node.open(None)
    for s in range(SHOPS):
        for a in range(AGENTS):
            dispatcher.execute(t.RegisterAgent(
                at=T0, shop_id=f"c{s:03d}", agent_id=f"a{a}", max_concurrent=10_000,
                status=t.Status.ONLINE,
            ))  # fmt: skip
    for j in range(opened):
        dispatcher.execute(
            t.Route(at=T0, shop_id=f"c{j % SHOPS:03d}", buyer_id=f"o{j}", request_id=f"open{j}")
        )
    if kind == "new":  # a buyer never seen, in shops spread as bench/cpu.py spreads them
        shops = [i * 7919 % SHOPS for i in range(calls)]
        buyers = [f"nx{i}" for i in range(calls)]
    else:  # the open sessions' buyers, round after round
        shops = [i % opened % SHOPS for i in range(calls)]
        buyers = [f"o{i % opened}" for i in range(calls)]
    made = [
        pb.RouteRequest(shop_id=f"c{s:03d}", buyer_id=b, request_id=f"x{i}", channel="im")
        for i, (s, b) in enumerate(zip(shops, buyers, strict=True))
    ]
    bodies = [m.SerializeToString() for m in made]
    expected = pb.REASON_STRATEGY if kind == "new" else pb.REASON_OPEN_SESSION
    parse = pb.RouteRequest.FromString
    gc.collect()
    gc.freeze()  # the set-up is the server's recovered state: frozen (app.freeze_heap)
    if callgrind:
        control("--zero")
    started = time.process_time()
    last = b""
    for data in bodies:
        result, _ = node.submit(convert.route(parse(data), node.now()))
        last = convert.decision(result).SerializeToString()
    spent = time.process_time() - started
    if callgrind:
        control(f"--dump={kind}")
    if calls and pb.Decision.FromString(last).reason != expected:
        raise SystemExit(f"{kind}: the last decision was not {pb.Reason.Name(expected)}")
    return spent


def control(arg: str) -> None:
    subprocess.run(["callgrind_control", arg, str(os.getpid())], check=True, capture_output=True)
    time.sleep(0.3)  # callgrind acts on the command between two of its time slices


def under_callgrind(kind: str, calls: int, opened: int) -> int:
    """Instructions per call of ``kind``, the worker under callgrind."""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is missing: apt-get install -y valgrind")
    with tempfile.TemporaryDirectory(prefix="fenliu-route-path-") as tmp:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out",
               sys.executable, __file__, "--worker", kind, "--calls", str(calls),
               "--open-sessions", str(opened)]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
        for path in Path(tmp).glob("cg.out*"):
            text = path.read_text(errors="replace")
            if re.search(rf"^desc: Trigger: dump {kind}$", text, re.M):
                found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
                assert found is not None, path
                return round(int(found.group(1)) / calls)
    raise RuntimeError(f"no callgrind dump for {kind}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--open-sessions", type=int, default=OPEN, help="in the world")
    parser.add_argument("--no-callgrind", dest="callgrind", action="store_false")
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.calls, callgrind=True, opened=args.open_sessions)
        return
    record: dict[str, Any] = {"calls": args.calls, "loadavg": round(os.getloadavg()[0], 2)}
    for kind in KINDS:
        spent = worker_in_child(kind, args.calls, args.open_sessions)
        record[f"{kind}_cpu_us"] = round(spent / args.calls * 1e6, 2)
        if args.callgrind:
            record[f"{kind}_instructions"] = under_callgrind(kind, args.calls, args.open_sessions)
    print(json.dumps(record, indent=1))


def worker_in_child(kind: str, calls: int, opened: int) -> float:
    """The CPU time of a fresh process's calls (each kind's world built anew)."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import route_path; "
            f"print(route_path.worker({kind!r}, {calls}, False, {opened}))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.split()[-1])


if __name__ == "__main__":
    main()

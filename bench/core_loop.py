"""Decision costs in a tight loop, timed in process CPU time (steadier than pytest-benchmark
when other processes share the cores): best of ``--reps`` runs of ``--n`` commands each.

    python bench/core_loop.py                  # 10 agents, 15 x 20,000
    python bench/core_loop.py --agents 1000

Figures per command: a new buyer's Route that the strategy assigns, the EndSessions of
that session, and a message on an open session (rule 2). Prints one JSON record.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.types import EndSessions, RegisterAgent, Route, Status

T0 = 1_700_000_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    d = Dispatcher()
    for a in range(args.agents):
        d.execute(
            RegisterAgent(
                at=T0,
                shop_id="shop0",
                agent_id=f"a{a}",
                max_concurrent=10_000,
                status=Status.ONLINE,
            )
        )
    execute = d.execute
    ids = itertools.count()
    route = end = rule2 = float("inf")
    for _ in range(args.reps):
        routes = [
            Route(at=T0, shop_id="shop0", buyer_id=f"b{n}", request_id=f"r{n}")
            for n in itertools.islice(ids, args.n)
        ]
        start = time.process_time()
        decisions = [execute(command) for command in routes]
        route = min(route, time.process_time() - start)
        ends = [EndSessions(at=T0, shop_id="shop0", session_ids=(x.session_id,)) for x in decisions]
        start = time.process_time()
        for command in ends:
            execute(command)
        end = min(end, time.process_time() - start)
        d.drain_events()
    for b in range(10):
        execute(Route(at=T0, shop_id="shop0", buyer_id=f"x{b}", request_id=f"first{b}"))
    for rep in range(args.reps):
        messages = [
            Route(at=T0, shop_id="shop0", buyer_id=f"x{n % 10}", request_id=f"m{rep}-{n}")
            for n in range(args.n)
        ]
        start = time.process_time()
        for command in messages:
            execute(command)
        rule2 = min(rule2, time.process_time() - start)
    d.drain_events()
    us = {"new_buyer_route": route, "end_session": end, "open_session_message": rule2}
    print(
        json.dumps(
            {"agents": args.agents, "us": {k: round(v / args.n * 1e6, 2) for k, v in us.items()}}
        )
    )


if __name__ == "__main__":
    main()

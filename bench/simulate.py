"""The what-if simulator's speed and its model check (issue 14).

    python bench/simulate.py                  # speed: a day of a 50-agent shop, 20,000 sessions
    python bench/simulate.py --honesty        # the model check on the load harness's world

Speed: a synthetic day (50 agents, 20,000 sessions, the daily profile and a burst) run
through the real core under its own policy, agents from the lognormal model: wall time of
the run, median of ``--rounds``; then the verbatim replay of the journal it wrote (what
``fenliu simulate`` does first with a recording). The bound is 10 s for the run.

Honesty: shops of the load harness's world (``bench/loadgen.py``'s ``World``: Pareto
team sizes, max reception 10, Zipf traffic, bursts at 10x, agents' statuses flipping to
SUSPENDED / OFFLINE and back) on a minutes clock, the harness's agents (80% acknowledged
and answered at about half the hold, all ended at about the hold; each agent a little
slower or faster) recorded; the model is fitted to the recording and the recording
simulated under its own policy. The check: the 2-minute rate within 5 points, the mean
wait within 20%.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fenliu.server import sim  # noqa: E402
from fenliu.server.core.types import MINUTE  # noqa: E402


def speed(rounds: int) -> None:
    model = sim.Model(agents=50, sessions=20_000, hours=24.0, max_concurrent=5)
    traffic = sim.traffic(model)
    runs, replays = [], []
    summary: dict[str, object] = {}
    for _ in range(rounds):
        started = time.perf_counter()
        summary, journal = sim.simulate(traffic, sim.Parametric(), record=True)
        runs.append(time.perf_counter() - started)
        assert journal is not None
        started = time.perf_counter()
        sim.analyse(journal)
        replays.append(time.perf_counter() - started)
    load = os.getloadavg()
    print(f"a day, 50 agents, {summary['sessions']} sessions, {summary['commands']} commands")
    print(
        f"simulate: median {statistics.median(runs):.2f} s of {rounds} "
        f"(min {min(runs):.2f}, max {max(runs):.2f}); bound 10 s"
    )
    print(f"verbatim replay + fit: median {statistics.median(replays):.2f} s")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")


def honesty(shops: int, seeds: int) -> None:
    from loadgen import World

    world = World.make(shops=1000, max_agents=50, seed=1)
    print(
        "| shop | agents | sessions | 2-min rate recorded | simulated | gap (points) "
        "| mean wait recorded (s) | simulated (s) | gap |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    worst_rate = worst_wait = 0.0
    # shops across the ranking: the biggest, and smaller teams further down
    ranks = sorted({0, *(i for i, n in enumerate(world.sizes) if n in (20, 8, 3))})
    for shop in [r for r in ranks if r == 0 or world.sizes[r] != world.sizes[r - 1]][:shops]:
        agents = world.sizes[shop]
        hold_min = 3
        per_hour = agents * world.max_concurrent * 60 / hold_min  # sessions an hour at capacity
        for seed in range(1, seeds + 1):
            model = sim.Model(
                shop_id=f"s{shop}",
                agents=agents,
                max_concurrent=world.max_concurrent,
                sessions=int(per_hour * 6 * 0.85),
                hours=6,
                flat=True,
                bursts=((1.0, 15.0), (3.5, 10.0)),
                burst_factor=10**0.5 if agents > 5 else 2,
                status_churn_per_hour=agents * 2.0,
                followups=0.5,
                patience_s=900,
                seed=seed,
            )
            truth = sim.Harness(hold_ms=hold_min * MINUTE, seed=seed)
            _, journal = sim.simulate(sim.traffic(model), truth, record=True)
            assert journal is not None
            analysis = sim.analyse(journal)
            rec = analysis.recorded
            base, _ = sim.simulate(analysis.traffic, analysis.behaviour, seed=seed)
            gap = (base["fast_reply_rate"] - rec["fast_reply_rate"]) * 100
            wait = (base["wait_mean_s"] / rec["wait_mean_s"] - 1) * 100 if rec["wait_mean_s"] else 0
            worst_rate, worst_wait = max(worst_rate, abs(gap)), max(worst_wait, abs(wait))
            print(
                f"| s{shop} (seed {seed}) | {agents} | {rec['sessions']} "
                f"| {rec['fast_reply_rate']:.1%} | {base['fast_reply_rate']:.1%} | {gap:+.1f} "
                f"| {rec['wait_mean_s']:.1f} | {base['wait_mean_s']:.1f} | {wait:+.0f}% |"
            )
    print(f"\nworst: {worst_rate:.1f} points, {worst_wait:.0f}% (bounds 5 points, 20%)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--honesty", action="store_true")
    p.add_argument("--shops", type=int, default=4)
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args()
    if args.honesty:
        honesty(args.shops, args.seeds)
    else:
        speed(args.rounds)


if __name__ == "__main__":
    main()

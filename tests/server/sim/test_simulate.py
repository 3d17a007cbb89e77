"""The what-if simulator on synthetic and scripted traffic (the real core, no server)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from fenliu.server import sim
from fenliu.server.core import types as t
from fenliu.server.sim.engine import Traffic
from fenliu.server.sim.model import Script

SMALL = "agents=8,max=3,sessions=1500,hours=3,flat=1,bursts=1@20m,burst_factor=4,churn=6,vip=0.1"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fenliu.client._cli", "simulate", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_same_seed_gives_the_same_report_and_another_seed_another(tmp_path: Path) -> None:
    variants = ["--variant", "max=+1", "--variant", "more:agents=+2,strategy=least-load"]
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        done = _cli(
            "--synthetic",
            SMALL,
            *variants,
            "--seed",
            seed,
            "--out",
            name,
            "--no-plot",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
    a, b, c = ((tmp_path / n / "report.json").read_bytes() for n in "abc")
    assert a == b
    assert (tmp_path / "a" / "report.md").read_bytes() == (
        tmp_path / "b" / "report.md"
    ).read_bytes()
    assert a != c  # the seed decides the agents' draws
    runs = json.loads(a)["runs"]
    assert set(runs) == {"baseline", "max=+1", "more"}


class Fixed:
    """Every agent acknowledges at 10 s, replies at 30 s and ends at 4 min."""

    def script(self, agent_id: str, rng: random.Random) -> Script:
        return Script(10_000, (30_000,), 240_000)


def _scripted() -> Traffic:
    """3 agents of max 2; 60 buyers in bursts of 12 every 5 minutes, nobody gives up."""
    start = 1_700_000_000_000
    shop = "s"
    commands: list[t.Command] = [t.SetPolicy(at=start, shop_id=shop, change=t.PolicyChange())]
    for i in range(3):
        commands.append(
            t.RegisterAgent(
                at=start, shop_id=shop, agent_id=f"a{i}", max_concurrent=2, status=t.Status.ONLINE
            )
        )
    for burst in range(5):
        for k in range(12):
            at = start + burst * 5 * t.MINUTE + k * 1000
            n = burst * 12 + k
            commands.append(t.Route(at=at, shop_id=shop, buyer_id=f"b{n}", request_id=f"r{n}"))
    return Traffic(shop, start, start + 2 * t.HOUR, commands)


@pytest.mark.parametrize("spec", ["max=+1", "max=+3", "agents=+1", "agents=+4", "max.a0=6"])
def test_more_capacity_never_waits_longer(spec: str) -> None:
    traffic = _scripted()
    base, _ = sim.simulate(traffic, Fixed())
    more, _ = sim.simulate(traffic, Fixed(), sim.parse_variant(spec))
    assert base["wait_mean_s"] > 0  # the scenario does queue
    for key in ("wait_mean_s", "wait_p50_s", "wait_p90_s", "wait_p99_s", "wait_max_s"):
        assert more[key] <= base[key], (key, more[key], base[key])
    assert more["fast_reply_rate"] >= base["fast_reply_rate"]
    assert more["queue_max"] <= base["queue_max"]
    assert more["wait_mean_s"] < base["wait_mean_s"]  # the capacity was used


def test_less_capacity_waits_longer() -> None:
    traffic = _scripted()
    base, _ = sim.simulate(traffic, Fixed())
    less, _ = sim.simulate(traffic, Fixed(), sim.parse_variant("agents=-1"))
    assert less["wait_mean_s"] > base["wait_mean_s"]


def test_the_core_invariants_hold_at_every_step() -> None:
    model = sim.parse_model(SMALL + ",followups=1.5,patience=300")
    traffic = sim.traffic(model)
    steps = 0

    def check(core: object, shop_id: str) -> None:
        nonlocal steps
        steps += 1
        sim.check_invariants(core, shop_id)  # type: ignore[arg-type]

    for spec in (
        "",
        "max=-1,priority_crowds=vip",
        "agents=+3,queue_order=lifo,accept_timeout=1m",
        "queue_wait_limit=2m,strategy=round-robin",
    ):
        variant = sim.parse_variant(spec) if spec else None
        summary, journal = sim.simulate(
            traffic, sim.Parametric(), variant, check=check, record=True
        )
        assert summary["sessions"] > 1000
        assert journal is not None
    assert steps > 10_000
    # and through a verbatim replay of what was recorded
    analysis = sim.analyse(journal, check=sim.check_invariants)
    assert analysis.recorded["sessions"] == summary["sessions"]


def test_a_broken_invariant_is_caught() -> None:
    traffic = _scripted()

    def corrupt(core: object, shop_id: str) -> None:
        shop = core.shards[0].shops.get(shop_id)  # type: ignore[attr-defined]
        if shop is not None:
            for agent in shop.agents.values():
                if agent.first is not None:
                    agent.load += 1  # what a bug in the core would look like
                    break
        sim.check_invariants(core, shop_id)  # type: ignore[arg-type]

    with pytest.raises(AssertionError, match="load"):
        sim.simulate(traffic, Fixed(), check=corrupt)


def test_the_model_reproduces_a_recording_under_its_own_policy(tmp_path: Path) -> None:
    """The honesty check, small: record a day driven by the harness's agents, fit the model
    to the recording, simulate it under its own policy."""
    model = sim.parse_model("agents=12,max=4,sessions=3000,hours=6,churn=10,bursts=2@30m")
    truth = sim.Harness(hold_ms=4 * t.MINUTE)  # answers at about 2 minutes
    _, journal = sim.simulate(sim.traffic(model), truth, record=True)
    assert journal is not None
    journal.write(tmp_path / "day.flrec")
    analysis = sim.analyse(sim.Recording.read(tmp_path / "day.flrec"))
    recorded = analysis.recorded
    baseline, _ = sim.simulate(analysis.traffic, analysis.behaviour)
    assert recorded["wait_mean_s"] > 5  # a day with queues, or the check says nothing
    assert abs(baseline["fast_reply_rate"] - recorded["fast_reply_rate"]) <= 0.05
    assert abs(baseline["wait_mean_s"] / recorded["wait_mean_s"] - 1) <= 0.20


def test_a_recording_cut_to_a_range_starts_from_the_shop_at_its_start(tmp_path: Path) -> None:
    model = sim.parse_model("agents=5,max=3,sessions=600,hours=4,flat=1")
    whole, journal = sim.simulate(sim.traffic(model), sim.Parametric(), record=True)
    assert journal is not None
    start = journal.start + t.HOUR
    cut = sim.recording.cut(journal.shop_id, journal.commands, start, start + t.HOUR)
    assert all(start <= c.at <= start + t.HOUR for c in cut.commands)
    cut.write(tmp_path / "hour.flrec")
    cut = sim.Recording.read(tmp_path / "hour.flrec")
    registered = {c.agent_id for c in cut.setup() if type(c) is t.RegisterAgent}
    assert registered == {f"a{i}" for i in range(5)}
    analysis = sim.analyse(cut)
    assert 100 < analysis.recorded["sessions"] < 250
    assert analysis.recorded["refused_actions"] == 0  # the session ids line up
    assert not analysis.traffic.dropped
    assert analysis.behaviour.summary()["holdings"] > 100
    baseline, _ = sim.simulate(analysis.traffic, analysis.behaviour)
    assert baseline["refused_actions"] == 0
    assert abs(baseline["sessions"] - analysis.recorded["sessions"]) < 20


@pytest.mark.parametrize(
    "spec, field",
    [
        ("max=lots", "max"),
        ("strategy=fastest", "strategy"),
        ("accept_timeout=soon", "accept_timeout"),
        ("agents=3", "agents"),
        ("colour=red", "colour"),
        ("max", "max"),
    ],
)
def test_a_bad_variant_names_its_field(spec: str, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        sim.parse_variant(spec)


def test_the_cli_reports_bad_input_and_exits_nonzero(tmp_path: Path) -> None:
    done = _cli(str(tmp_path / "nowhere"), cwd=tmp_path)
    assert done.returncode == 1 and "nowhere" in done.stderr
    done = _cli("--synthetic", "agents=x", cwd=tmp_path)
    assert done.returncode == 1 and "agents" in done.stderr
    done = _cli(cwd=tmp_path)
    assert done.returncode == 2 and "--synthetic" in done.stderr
    done = _cli("--synthetic", "agents=2,sessions=10,hours=1", "--variant", "max=x", cwd=tmp_path)
    assert done.returncode == 1 and "max" in done.stderr


def test_the_simulator_needs_neither_grpc_nor_matplotlib_to_import() -> None:
    code = (
        "import sys, fenliu.server.sim.cli; "
        "print('grpc' in sys.modules, 'matplotlib' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "False"], done.stderr

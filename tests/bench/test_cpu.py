"""Smoke test of the server-CPU benchmark (``bench/run.py quick``, bench/cpu.py): a tiny
run of every kind against a real server process, h2load with its distinct-request shim
included. Asserts that every figure is there and measured real decisions, never speed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("echo", "route_new", "route_open", "batch_new", "batch_open", "stream_new", "stream_open",
         "stream_new_single")  # fmt: skip


def _install(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True)


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    _install("h2load", "nghttp2-client")
    _install("cc", "gcc")
    out = tmp_path_factory.mktemp("cpu")
    cmd = [
        sys.executable, str(ROOT / "bench" / "run.py"), "quick", "--rounds", "2",
        "--seconds", "0.3", "--shops", "20", "--open-buyers", "1000", "--h2-requests", "600",
        "--batch-size", "100", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "cpu.json").read_text()), (out / "cpu.md").read_text()


def test_every_kind_made_real_decisions_and_has_its_server_cpu(
    record: tuple[dict[str, Any], str],
) -> None:
    data, _ = record
    assert len(data["rounds"]) == 2
    for rnd in data["rounds"]:
        for kind in KINDS:
            figure = rnd[kind]
            assert figure["done"] > 0 and figure["errors"] == {}, (kind, figure)
            assert figure["cpu_us_per_call"] > 0 and figure["loadavg"] >= 0, kind
            if kind != "echo":
                assert figure["real_decisions"] is True, (kind, figure["reasons_sampled"])
        for kind in ("h2load_echo", "h2load_route_new", "h2load_route_open"):
            assert rnd[kind]["done"] == 600 and rnd[kind]["failed"] == 0, rnd[kind]
        # h2load's requests were distinct decisions, not retries of one body
        assert rnd["h2load_route_new"]["real_decisions"] is True
        assert rnd["h2load_route_new"]["sample_reasons"] == ["REASON_STRATEGY"] * 2
        assert rnd["h2load_route_open"]["real_decisions"] is True
        assert rnd["h2load_route_open"]["sample_reasons"] == ["REASON_OPEN_SESSION"] * 2
    assert data["summary"]["real_decisions"] is True
    assert data["summary"]["paced_stream"]["latency_ms"]["count"] > 0


ATTRIBUTION = ("user_us", "system_us", "main_thread_us", "other_threads_us", "minflt", "vcsw",
               "ivcsw")  # fmt: skip


def test_each_figure_says_where_the_servers_cpu_went(record: tuple[dict[str, Any], str]) -> None:
    """Per kind (h2load's too): the server's user and system µs a call, its main thread's
    and the other threads' µs, minor faults and context switches a call, each thread
    name's µs; the summary's medians and Route's differences from Echo, and their table."""
    data, table = record
    for rnd in data["rounds"]:
        for kind in (*KINDS, "h2load_echo", "h2load_route_new", "h2load_route_open"):
            per_call = rnd[kind]["per_call"]
            assert set(ATTRIBUTION) <= set(per_call), (kind, per_call)
            assert per_call["main_thread_us"] > 0 and per_call["threads"] >= 1, (kind, per_call)
            assert per_call["user_us"] + per_call["system_us"] > 0, (kind, per_call)
            assert per_call["vcsw"] >= 0 and per_call["minflt"] >= 0, (kind, per_call)
            assert "python" in per_call["threads_us"], (kind, per_call)  # the main thread
    attribution = data["summary"]["attribution"]
    rows = (*KINDS, "h2load_echo", "route_new - echo", "route_open - echo",
            "h2load_route_new - h2load_echo", "h2load_route_open - h2load_echo")  # fmt: skip
    for name in rows:
        assert set(attribution[name]) == set(ATTRIBUTION), name
        assert f"| {name} | " in table, name
    assert "| kind | user µs | system µs | main thread µs | other threads µs " in table


def test_the_table_says_which_targets_are_met(record: tuple[dict[str, Any], str]) -> None:
    _, table = record
    for target in ("Route/Echo by server CPU per call, new buyers", "RouteStream/Route",
                   "RouteBatch of new buyers", "RouteStream p99 at half its max rate",
                   "h2load Route/Echo by server CPU per call, open-session messages"):  # fmt: skip
        line = next(line for line in table.splitlines() if target in line)
        assert line.rstrip().endswith(("| met |", "| NOT met |")), line
    assert "load average" in table


def test_a_kind_that_runs_out_of_requests_is_measured_again_with_more(
    tmp_path: Path,
) -> None:
    """With a budget far too small (``--max-rate 30``: 9 requests a second of 0.3 s, plus
    one per caller), every closed loop of Routes runs out at once: the harness says so and
    measures that kind again with twice the rate it reached, and a figure that still ran
    short is named in the warnings. The paced stream's budget follows its rate: it never
    runs out."""
    cmd = [
        sys.executable, str(ROOT / "bench" / "run.py"), "quick", "--rounds", "1",
        "--seconds", "0.3", "--shops", "20", "--open-buyers", "1000", "--no-h2load",
        "--batch-size", "100", "--max-rate", "30", "--out", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "cpu.json").read_text())
    summary = data["summary"]
    rerun = {r["kind"] for r in summary["reruns"]}
    assert {"route_new", "route_open", "stream_new", "stream_open"} <= rerun, summary["reruns"]
    assert "ran out of its" in proc.stderr + proc.stdout
    warned = " ".join(summary["warnings"])
    for kind in KINDS:
        figure = data["rounds"][0][kind]
        assert figure["done"] > 0 and figure["errors"] == {}, (kind, figure)
        if figure["exhausted"]:
            assert kind in warned, (kind, summary["warnings"])
    assert summary["paced_stream"]["exhausted"] is False
    assert "the paced stream" not in warned


def test_a_paced_streams_budget_covers_every_send_its_rate_allows() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import cpu  # noqa: PLC0415 - bench/ is not a package

    for rate, seconds, streams in ((3_478.5, 3.0, 2), (0.5, 0.3, 1), (60_000.0, 1.5, 4)):
        job = {"kind": "stream_new", "rate": rate, "seconds": seconds, "streams": streams}
        # each writer sends at most one request per 1/rate s before the deadline, plus one
        assert cpu.request_budget(job) >= rate * seconds + streams


def test_a_paced_stream_stalled_past_its_deadline_still_sends_every_request_due() -> None:
    """A load process that gets no CPU for longer than its whole run (a loaded machine: a
    paced stream at 220/s once sent nothing) queues, at its first tick, every request whose
    time came before the deadline, each counted late by the stall, and a real server
    answers them all: what it sends is set by the rate and the run's length, not by when
    the process got a core."""
    sys.path.insert(0, str(ROOT / "bench"))
    import cpu  # noqa: PLC0415 - bench/ is not a package
    import grpc.aio  # noqa: PLC0415
    import loadgen  # noqa: PLC0415

    from fenliu.client._pb import fenliu_pb2 as pb  # noqa: PLC0415
    from fenliu.server.config import Config  # noqa: PLC0415
    from fenliu.server.rpc.app import ServerThread  # noqa: PLC0415

    rate, seconds, stall = 200.0, 0.3025, 0.4  # one due every 5 ms: 60 before the deadline
    reasons: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    hist, late = loadgen.Histogram(), loadgen.Histogram()

    def note(decision: Any, error: Any = None) -> None:
        reasons[pb.Reason.Name(decision.reason)] += 1

    async def scenario(target: str) -> bool:
        await cpu.build_world(target, 2, 1, 0)
        job = {"kind": "stream_new", "tag": "stall", "proc": 0, "procs": 1, "shops": 2}
        items = iter(cpu.framed(r) for r in cpu.requests(job, 70))
        async with grpc.aio.insecure_channel(target) as channel:
            await channel.channel_ready()
            start = time.perf_counter()
            time.sleep(stall)  # noqa: ASYNC251 - the process off its core: nothing runs
            return await cpu.stream(channel, items, 2000, start + seconds, rate, hist,
                                    note, errors, True, late, start)  # fmt: skip

    with ServerThread(Config(shards=2)) as server:
        ran_out = loadgen.run_in_process(scenario, server.target)
    assert ran_out is False
    assert (hist.total, late.total, dict(errors)) == (60, 60, {})
    assert late.percentile_ms(0) >= 99.0  # the last was due 0.3 s in, queued after 0.4 s
    assert dict(reasons) == {"REASON_STRATEGY": 1}  # a sample: every 97th answer


def test_the_paced_stream_is_paced_by_every_load_process_and_at_each_set_rate(
    tmp_path: Path,
) -> None:
    """``--procs 2``: each load process paces its share on its own stream, the latency of
    both merged; each process's CPU share and how late it queued requests are reported,
    for the half-max rate and each of ``--paced-rates``, in the JSON and the table."""
    cmd = [
        sys.executable, str(ROOT / "bench" / "run.py"), "quick", "--rounds", "1",
        "--seconds", "0.5", "--shops", "20", "--open-buyers", "1000", "--no-h2load",
        "--batch-size", "100", "--procs", "2", "--paced-rates", "400,1000", "--out",
        str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "cpu.json").read_text())["summary"]
    every = [summary["paced_stream"], *summary["paced_rates"]]
    assert [f["rate"] for f in every[1:]] == [400.0, 1000.0]
    for figure in every:
        assert len(figure["load_cpu"]) == 2 and all(c > 0 for c in figure["load_cpu"]), figure
        assert figure["latency_ms"]["count"] == figure["done"] > 0, figure
        assert figure["errors"] == {} and figure["exhausted"] is False, figure
        assert figure["late_ms"]["count"] >= figure["done"], figure
        # latency counts from each request's scheduled time: queued on time or after it
        assert figure["latency_ms"]["p50_ms"] > 0, figure
    table = (tmp_path / "cpu.md").read_text()
    assert "| paced (2 load processes, 1 streams each)" in table
    assert sum(1 for line in table.splitlines() if line.startswith("| set rate |")) == 2


def test_each_kind_runs_on_a_fresh_server_of_each_build_interleaved(tmp_path: Path) -> None:
    """``--world per-kind`` (the ``cpu`` preset's default): every kind of every round on a
    server of its own, so no kind's world holds an earlier kind's sessions; with
    ``--ab-python`` each kind also runs on a server of that interpreter, and the table
    has both builds' CPU a call and their ratio by round."""
    cmd = [
        sys.executable, str(ROOT / "bench" / "run.py"), "cpu", "--rounds", "2",
        "--seconds", "0.3", "--shops", "20", "--open-buyers", "500", "--no-h2load",
        "--no-paced", "--batch-size", "100", "--kinds", "echo,route_new,batch_new",
        "--ab-python", sys.executable, "--out", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "cpu.json").read_text())
    table = (tmp_path / "cpu.md").read_text()
    kinds = ("echo", "route_new", "batch_new")
    assert data["kinds"] == list(kinds)
    pids = []
    for rounds in (data["rounds"], data["ab"]["rounds"]):
        assert len(rounds) == 2
        for rnd in rounds:
            assert set(k for k in rnd if k != "reruns") == set(kinds)
            for kind in kinds:
                figure = rnd[kind]
                assert figure["done"] > 0 and figure["errors"] == {}, (kind, figure)
                assert kind == "echo" or figure["real_decisions"] is True, figure
                pids.append(figure["server_pid"])
    assert len(set(pids)) == len(pids) == 12  # a server per kind, round and build
    assert data["world_bound"].startswith("a fresh server per kind")
    assert "World: a fresh server per kind" in table
    ab = data["summary"]["ab"]
    for kind in kinds:
        assert ab[kind]["this_cpu_us"] > 0 and ab[kind]["base_cpu_us"] > 0
        assert len(ab[kind]["ratio_by_round"]) == 2
        assert f"| {kind} | {ab[kind]['this_cpu_us']:.2f} |" in table
    assert "A/B, the same rounds" in table

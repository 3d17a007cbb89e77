"""The Redis-Lua baseline (bench/redis_router.py) and its comparison run (bench/redis_compare.py),
against real redis-server and fenliu-server processes: the baseline makes fenliu's decisions on
the same requests, keeps them across a SIGKILL when durable, refuses bad input as fenliu does,
and the comparison's smoke run measures real decisions of every kind on both. Never a ratio."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fenliu.client._pb import fenliu_pb2 as pb, fenliu_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import redis_compare  # noqa: E402
from run import ServerProcess  # noqa: E402

SHOP = "shop-r"


@pytest.fixture
def fenliu() -> Iterator[str]:
    server = ServerProcess()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def redis_router(tmp_path: Path) -> Iterator[redis_compare.RedisRouterProcess]:
    router = redis_compare.RedisRouterProcess("durable", tmp_path / "redis")
    try:
        router.start()
        yield router
    finally:
        router.stop()


def script(target: str) -> list[tuple[Any, ...]]:
    """Two agents of room 2, six new buyers, a retry, two messages on open sessions (one
    queued), a shop nobody works for: each decision as (outcome, reason, agent, position,
    state); then Route and a RouteBatch item with a bad buyer_id: (code, field)."""
    with grpc.insecure_channel(target) as channel:
        presence, routing = pb_grpc.PresenceStub(channel), pb_grpc.RoutingStub(channel)
        for agent in ("a1", "a2"):
            presence.RegisterAgent(pb.RegisterAgentRequest(
                shop_id=SHOP, agent_id=agent, max_concurrent=2, status=pb.AGENT_STATUS_ONLINE,
            ))  # fmt: skip
        presence.RegisterAgent(pb.RegisterAgentRequest(shop_id="shop-off", agent_id="z"))
        asks = [(SHOP, f"b{i}", f"r{i}") for i in range(6)]
        asks += [
            (SHOP, "b0", "r0"),
            (SHOP, "b0", "r6"),
            (SHOP, "b5", "r7"),
            ("shop-off", "b9", "r8"),
        ]
        out: list[tuple[Any, ...]] = []
        for shop, buyer, request_id in asks:
            d = routing.Route(pb.RouteRequest(shop_id=shop, buyer_id=buyer, request_id=request_id))
            out.append((d.outcome, d.reason, d.agent_id, d.queue_position, d.state, d.buyer_id))
        with pytest.raises(grpc.RpcError) as failed:
            routing.Route(pb.RouteRequest(shop_id=SHOP, buyer_id="b 1", request_id="r9"))
        out.append((failed.value.code(), "buyer_id" in (failed.value.details() or "")))
        reply = routing.RouteBatch(pb.RouteBatchRequest(requests=[
            pb.RouteRequest(shop_id=SHOP, buyer_id="b1", request_id="r10"),
            pb.RouteRequest(shop_id=SHOP, buyer_id="", request_id="r11"),
        ]))  # fmt: skip
        first, second = reply.results
        out.append((first.decision.reason, first.decision.agent_id))
        out.append((second.error.code, second.error.field.endswith("buyer_id")))
    return out


def test_the_redis_router_decides_as_fenliu_does(
    fenliu: str, redis_router: redis_compare.RedisRouterProcess
) -> None:
    ours, theirs = script(fenliu), script(redis_router.target)
    assert theirs == ours
    # and what that is: the strategy's spread, the queue, the retry, rule 2, a left message
    assert [d[1] for d in ours[:10]] == [pb.REASON_STRATEGY] * 4 + [pb.REASON_ALL_BUSY] * 2 + [
        pb.REASON_STRATEGY, pb.REASON_OPEN_SESSION, pb.REASON_OPEN_SESSION, pb.REASON_ALL_OFFLINE,
    ]  # fmt: skip
    assert [d[2] for d in ours[:4]] == ["a1", "a2", "a1", "a2"]
    assert ours[4][3] == 1 and ours[5][3] == 2 and ours[8][3] == 2
    assert ours[10] == (grpc.StatusCode.INVALID_ARGUMENT, True)
    assert ours[12] == (grpc.StatusCode.INVALID_ARGUMENT.value[0], True)


def test_the_durable_baseline_keeps_an_answered_session_across_a_kill(
    redis_router: redis_compare.RedisRouterProcess,
) -> None:
    def route(request_id: str) -> pb.Decision:
        with grpc.insecure_channel(redis_router.target) as channel:
            return pb_grpc.RoutingStub(channel).Route(
                pb.RouteRequest(shop_id=SHOP, buyer_id="kept", request_id=request_id)
            )

    with grpc.insecure_channel(redis_router.target) as channel:
        pb_grpc.PresenceStub(channel).RegisterAgent(pb.RegisterAgentRequest(
            shop_id=SHOP, agent_id="a1", max_concurrent=5, status=pb.AGENT_STATUS_ONLINE,
        ))  # fmt: skip
    first = route("k1")
    assert first.reason == pb.REASON_STRATEGY
    assert redis_router.redis is not None
    redis_router.redis.send_signal(signal.SIGKILL)
    redis_router.redis.wait()
    redis_router.stop()
    redis_router.start()  # the same directory: the AOF replayed
    again = route("k2")
    assert (again.reason, again.session_id, again.agent_id) == (
        pb.REASON_OPEN_SESSION, first.session_id, "a1",
    )  # fmt: skip


def test_the_comparison_measures_real_decisions_of_every_kind_on_both(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "bench" / "redis_compare.py"), "--rounds", "1",
           "--seconds", "0.3", "--shops", "10", "--open-buyers", "200", "--batch-size", "50",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "redis_compare.json").read_text())
    assert set(record["modes"]) == {"memory", "durable"}
    for mode, m in record["modes"].items():
        (rnd,) = m["rounds"]
        for kind in redis_compare.KINDS:
            for system in ("fenliu", "redis"):
                f = rnd[f"{system}_{kind}"]
                assert f["done"] > 0 and f["errors"] == {}, (mode, system, kind, f)
                assert f["real_decisions"] is True, (mode, system, kind, f["reasons_sampled"])
            # the baseline's CPU is its router's and its redis-server's, both working
            assert all(c > 0 for c in rnd[f"redis_{kind}"]["server_cpu_s_by_process"])
            k = m["summary"]["kinds"][kind]
            assert k["by_cpu"] > 0 and k["by_throughput"] > 0 and isinstance(k["met"], bool)
    table = (out / "redis_compare.md").read_text()
    assert table.count("| memory |") == len(redis_compare.KINDS)
    assert table.count("| durable |") == len(redis_compare.KINDS)

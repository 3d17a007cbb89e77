"""The server around the services: health, reflection, ticker, events, start and stop."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from fenliu.client._pb import fenliu_pb2 as pb
from fenliu.server.config import Config
from fenliu.server.core import types as t
from fenliu.server.rpc.app import SERVICE_NAMES, Server, ServerThread
from fenliu.server.snapshots import Snapshotter
from tests._procs import MARKER, marked, stop_marked

from .conftest import Api, FakeClock, rpc_error

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FENLIU_SERVICES = {
    "fenliu.v1.Presence",
    "fenliu.v1.Routing",
    "fenliu.v1.Queue",
    "fenliu.v1.Monitor",
    "fenliu.v1.Diagnostics",
    "fenliu.v1.Cluster",
}


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ---------------------------------------------------------------- health and reflection


@pytest.mark.parametrize("service", ["", *sorted(FENLIU_SERVICES)])
def test_health_says_serving(channel: grpc.Channel, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=service))
    assert reply.status == SERVING


def test_reflection_lists_the_fenliu_services(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    assert FENLIU_SERVICES <= set(database.get_services())
    assert set(SERVICE_NAMES) == FENLIU_SERVICES
    routing = database.FindFileContainingSymbol("fenliu.v1.Routing")
    assert routing.package == "fenliu.v1"


# ---------------------------------------------------------------- ticker and events


def test_ticker_fires_timers_by_the_clock() -> None:
    clock = FakeClock()
    config = Config(shards=2, tick_interval_s=0.01)
    with ServerThread(config, now_ms=clock) as server, grpc.insecure_channel(server.target) as ch:
        api = Api(ch)
        api.agent("shop", "a1")
        api.agent("shop", "a2")
        session_id = api.route("shop", "b1").session_id
        time.sleep(0.05)  # ticks at an unmoved clock fire nothing
        assert api.session("shop", session_id).agent_id == "a1"
        # When the clock passes the accept timeout, expect a tick to reassign the session
        clock.advance(minutes=11)
        _eventually(lambda: api.session("shop", session_id).agent_id == "a2")
        assert api.session("shop", session_id).reason == pb.REASON_ACCEPT_TIMEOUT


def test_events_go_to_the_sink_and_do_not_pile_up() -> None:
    received: list[t.Event] = []
    with ServerThread(Config(shards=2), events=received.extend) as server:
        with grpc.insecure_channel(server.target) as channel:
            api = Api(channel)
            api.agent("shop", "a1")
            decision = api.route("shop", "b1")
        # Every shard's outbox is empty once the calls are answered
        assert server.call(server.dispatcher.drain_events) == []
    assigned = [e for e in received if e.kind == "assigned"]
    assert [(e.agent_id, e.session_id) for e in assigned] == [("a1", decision.session_id)]


def test_a_failing_event_sink_does_not_fail_the_call(caplog: pytest.LogCaptureFixture) -> None:
    def explode(events: list[t.Event]) -> None:
        raise RuntimeError("sink down")

    with ServerThread(Config(shards=2), events=explode) as server:
        with grpc.insecure_channel(server.target) as channel:
            agent = Api(channel).agent("shop", "a1")
    assert agent.agent_id == "a1"
    assert "sink down" in caplog.text


def test_server_thread_executes_on_its_loop() -> None:
    clock = FakeClock()
    with ServerThread(Config(shards=2, tick_interval_s=3600), now_ms=clock) as server:
        server.execute(
            t.RegisterAgent(at=clock.now, shop_id="shop", agent_id="a1", max_concurrent=1)
        )
        [agent] = server.call(
            lambda: server.dispatcher.read(t.ListTeam(at=clock.now, shop_id="shop"))
        )
        assert (agent.agent_id, server.target) == ("a1", f"127.0.0.1:{server.port}")


# ---------------------------------------------------------------- lifecycle in-process


def test_server_binds_port_zero_serves_and_drains() -> None:
    async def scenario() -> None:
        server = Server(Config(port=0, shards=2, grace_s=0.2))
        port = server.bind()
        assert port > 0 and server.port == port
        async with server, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service="fenliu.v1.Routing"))
            assert (await watch.read()).status == SERVING
            stopping = asyncio.create_task(server.stop())
            # While draining: health says NOT_SERVING to those watching, new calls are refused
            assert (await watch.read()).status == NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            await stopping
        assert watch.done()

    asyncio.run(scenario())


def test_server_refuses_a_port_in_use(server: ServerThread) -> None:
    async def scenario() -> None:
        taken = Server(Config(port=server.port, shards=1))
        with pytest.raises(OSError, match=f"127.0.0.1:{server.port}"):
            taken.bind()
        await taken.stop()

    asyncio.run(scenario())


def test_server_thread_reports_a_failed_start(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fail(self: Server) -> None:
        raise OSError("no sockets today")

    monkeypatch.setattr(Server, "start", fail)
    with pytest.raises(RuntimeError, match="did not start") as info:
        ServerThread(Config(shards=1), timeout=5).start()
    assert isinstance(info.value.__cause__, OSError)


# ---------------------------------------------------------------- a real process


@pytest.fixture
def process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``python -m fenliu.server --port 0``, and the port it logs once ready."""
    args = [sys.executable, "-m", "fenliu.server", "--port", "0", "--grace", "30"]
    args += ["--data-dir", str(tmp_path / "data")]
    child = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    try:
        yield child, _logged_port(child)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(5)
        assert child.stderr is not None
        child.stderr.close()


def _logged_port(child: subprocess.Popen[str]) -> int:
    assert child.stderr is not None
    for line in child.stderr:  # ends when the process does
        found = re.search(r"fenliu serving on 127\.0\.0\.1:(\d+)$", line.strip())
        if found:
            return int(found.group(1))
    raise AssertionError(f"the server exited with {child.wait()} before logging its port")


@pytest.mark.slow
def test_process_serves_and_exits_0_on_sigterm(process: tuple[subprocess.Popen[str], int]) -> None:
    child, port = process
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == SERVING
        agent = Api(channel).agent("shop", "a1")
        assert agent.agent_id == "a1"
    started = time.monotonic()
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 0
    assert time.monotonic() - started < 5  # nothing in flight: no need to wait out the grace


@pytest.mark.slow
def test_process_second_signal_exits_at_once(process: tuple[subprocess.Popen[str], int]) -> None:
    child, port = process
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        # A watch stream stays in flight, so the drain would last the whole 30 s grace
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == SERVING
        child.send_signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING  # draining
        assert child.poll() is None
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=5) == 128 + signal.SIGINT
        error = rpc_error(lambda _: next(watch), None)
        assert error.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)  # type: ignore[attr-defined]


@pytest.mark.parametrize("step", ["snapshotter", "grpc"])
def test_a_start_cancelled_inside_a_step_stops_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """A second signal while starting cancels Server.start wherever it is: inside the
    spawn of the snapshotter or the start of the gRPC server, the step still ends, so the
    stop that follows closes everything (no InvalidStateError, no snapshotter left)."""
    marker = uuid.uuid4().hex
    monkeypatch.setenv(MARKER, marker)  # the snapshotter inherits it

    async def scenario() -> None:
        config = Config(shards=2, host="127.0.0.1", port=0, data_dir=str(tmp_path / "data"))
        server = Server(config)
        entered = asyncio.Event()
        owner: Any = Snapshotter if step == "snapshotter" else server._grpc
        real = owner.start

        async def start(*args: Any) -> None:
            entered.set()
            await real(*args)

        monkeypatch.setattr(owner, "start", start)
        starting = asyncio.create_task(server.start())
        await entered.wait()  # the step is under way
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        await server.stop(0)

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert marked(marker) == []


@pytest.mark.slow
@pytest.mark.parametrize("signals", [1, 2])
def test_process_signalled_while_starting_stops(tmp_path: Path, signals: int) -> None:
    """SIGTERM as soon as it says it is starting (recovering its data directory, spawning
    its snapshotter): it exits as documented, never says it serves after "draining", and
    leaves nothing running (cluster mode: tests/cluster/test_start_signal.py)."""
    log, marker = tmp_path / "server.log", uuid.uuid4().hex
    args = [sys.executable, "-m", "fenliu.server", "--port", "0", "--data-dir",
            str(tmp_path / "data")]  # fmt: skip
    with open(log, "wb") as out:
        child = subprocess.Popen(args, stderr=out, env={**os.environ, MARKER: marker})
    try:
        deadline = time.monotonic() + 30
        for line in ("starting;", "draining")[:signals]:
            while line not in log.read_text():
                assert child.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.001)
            child.send_signal(signal.SIGTERM)
        code = child.wait(timeout=15)
        text = log.read_text()
        assert code == (0 if signals == 1 else 128 + signal.SIGTERM), text
        assert "fenliu serving on" not in text.split("draining", 1)[1], text
        assert marked(marker) == []
    finally:
        left = stop_marked(marker, grace=5.0)
        child.wait(10)
        assert not left, f"left running: {left}"


def test_main_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    from fenliu.server.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["--port", "70000"])
    assert info.value.code == 2
    assert "port must be an integer in 0..65535" in capsys.readouterr().err

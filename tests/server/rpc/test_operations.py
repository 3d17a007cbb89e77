"""What an operator sees (issue 15): the licence, the start and stop lines of the log, and
build, process and watch metrics, on real servers (a process for the log)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from fenliu.client import Client, FellBehind, FellBehindCause, RouteItem, Started, Status
from fenliu.client._version import version
from fenliu.server.config import Config
from fenliu.server.rpc.app import ServerThread

from .test_metrics import free_port, scrape, value

ROOT = Path(__file__).resolve().parents[3]
SECRET = "gateway-secret-very-private"


def test_the_project_is_apache_2_licensed() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0")
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]


@pytest.mark.slow
def test_the_log_shows_the_effective_configuration_and_a_shutdown_line(tmp_path: Path) -> None:
    config = tmp_path / "fenliu.toml"
    config.write_text(
        f'shards = 3\n[[auth.tokens]]\nname = "gateway"\ntoken = "{SECRET}"\nshops = ["*"]\n'
    )
    log = tmp_path / "server.log"
    args = [sys.executable, "-m", "fenliu.server", "--port", "0", "--config", str(config)]
    args += ["--data-dir", str(tmp_path / "data"), "--grace", "1"]
    with log.open("wb") as sink:
        child = subprocess.Popen(args, stderr=sink)
    try:
        deadline = time.monotonic() + 60
        while "serving on" not in log.read_text():
            assert child.poll() is None, log.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    text = log.read_text()
    started = re.search(r"fenliu (\S+) starting; effective configuration: (.*)", text)
    assert started, text
    assert started.group(1) == version()
    settings = started.group(2)
    assert "shards=3" in settings and "port=0" in settings and "fsync=True" in settings
    assert "tokens=[gateway:*]" in settings
    assert SECRET not in text
    assert re.search(r"fenliu stopped after \d+\.\ds of service, exit code 0", text), text


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    config = Config(shards=2, tick_interval_s=3600, grace_s=1, metrics_port=free_port())
    with ServerThread(config) as server:
        yield server


def test_metrics_show_the_build_the_process_and_open_watchers(server: ServerThread) -> None:
    assert server.metrics_port is not None
    with Client(server.target) as fenliu:
        fenliu.register_agent("ops-shop", "alice", max_concurrent=1, status=Status.ONLINE)
        stream = fenliu.watch_shop("ops-shop")
        assert isinstance(next(stream), Started)
        samples = scrape(server.metrics_port)
        stream.close()  # type: ignore[attr-defined]
    assert value(samples, "fenliu_build_info", version=version()) == 1
    assert value(samples, "process_resident_memory_bytes") > 1_000_000
    assert value(samples, "process_open_fds") > 0
    assert value(samples, "fenliu_watchers") == 1


def test_metrics_count_watchers_that_fell_behind_by_cause(server: ServerThread) -> None:
    assert server.metrics_port is not None
    before = scrape(server.metrics_port)
    with Client(server.target) as fenliu:
        fenliu.register_agent("ops-behind", "alice", max_concurrent=10_000, status=Status.ONLINE)
        for i in range(3):
            fenliu.route("ops-behind", f"early-{i}")
        resumed = fenliu.watch_shop("ops-behind", after_seq=1)  # not kept: nobody watched
        assert isinstance(next(resumed), Started)
        behind = next(resumed)
        assert isinstance(behind, FellBehind) and behind.cause is FellBehindCause.NOT_KEPT
        # One batch publishes 600 events at once: more than a watcher's 256-item buffer.
        fenliu.route_batch([RouteItem("ops-behind", f"b{i}") for i in range(600)])
        overflowed = False
        for item in resumed:
            if isinstance(item, FellBehind) and item.cause is FellBehindCause.OVERFLOW:
                overflowed = True
            if overflowed or (not isinstance(item, FellBehind) and item.seq >= 600):
                break
        resumed.close()  # type: ignore[attr-defined]
    after = scrape(server.metrics_port)
    name = "fenliu_watch_fell_behind_total"
    assert value(after, name, cause="not_kept") == value(before, name, cause="not_kept") + 1
    assert overflowed
    assert value(after, name, cause="overflow") >= value(before, name, cause="overflow") + 1

"""The server's Config: defaults, and each bad field refused by name."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from fenliu.server.__main__ import parse_config
from fenliu.server.config import Config


def test_defaults() -> None:
    config = Config()
    assert (config.host, config.port, config.shards) == ("127.0.0.1", 50051, 16)
    assert (config.tick_interval_s, config.grace_s) == (1.0, 5.0)


def test_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        pytest.param({"host": ""}, "host", id="host-empty"),
        pytest.param({"host": " 127.0.0.1"}, "host", id="host-space"),
        pytest.param({"port": -1}, "port", id="port-negative"),
        pytest.param({"port": 65_536}, "port", id="port-too-big"),
        pytest.param({"port": "80"}, "port", id="port-str"),
        pytest.param({"port": True}, "port", id="port-bool"),
        pytest.param({"shards": 0}, "shards", id="shards-0"),
        pytest.param({"shards": 4097}, "shards", id="shards-too-many"),
        pytest.param({"tick_interval_s": 0}, "tick_interval_s", id="tick-0"),
        pytest.param({"tick_interval_s": float("nan")}, "tick_interval_s", id="tick-nan"),
        pytest.param({"grace_s": -0.5}, "grace_s", id="grace-negative"),
        pytest.param({"grace_s": float("inf")}, "grace_s", id="grace-inf"),
        pytest.param({"commit_delay_s": -0.001}, "commit_delay_s", id="commit-delay-negative"),
        pytest.param({"commit_delay_s": 0.5}, "commit_delay_s", id="commit-delay-too-long"),
        pytest.param({"commit_delay_s": "2ms"}, "commit_delay_s", id="commit-delay-str"),
    ],
)
def test_bad_field_is_named(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        Config(**fields)


def test_the_commit_delay_reaches_the_node() -> None:
    """--commit-delay (node.py's commit hold): 0 turns it off; the default is the node's."""
    from fenliu.server.node import COMMIT_DELAY_S
    from fenliu.server.rpc.app import Server

    assert Config().commit_delay_s == COMMIT_DELAY_S
    assert parse_config(["--commit-delay", "0.004"]).commit_delay_s == 0.004
    assert Config(commit_delay_s=0).commit_delay_s == 0

    async def main() -> tuple[float, float]:
        server = Server(Config(port=0, commit_delay_s=0.004))
        off = Server(Config(port=0, commit_delay_s=0))
        return server.node.commit_delay, off.node.commit_delay

    assert asyncio.run(main()) == (0.004, 0.0)


def test_edges_are_allowed() -> None:
    config = Config(port=0, shards=1, tick_interval_s=0.001, grace_s=0)
    assert (config.port, config.grace_s) == (0, 0)


def test_command_line() -> None:
    argv = [
        "--host",
        "::1",
        "--port",
        "0",
        "--shards",
        "2",
        "--tick-interval",
        "0.5",
        "--grace",
        "1",
        "--data-dir",
        "/var/lib/fenliu",
        "--no-fsync",
        "--snapshot-interval",
        "10",
    ]
    assert parse_config(argv) == Config(
        host="::1", port=0, shards=2, tick_interval_s=0.5, grace_s=1,
        data_dir="/var/lib/fenliu", fsync=False, snapshot_interval_s=10, gc_freeze_interval_s=1,
    )  # fmt: skip
    # The program keeps its state in ./data and freezes the GC heap; the library default
    # (tests) is memory only and the process's GC left alone.
    assert parse_config([]) == Config(data_dir="data", gc_freeze_interval_s=1)

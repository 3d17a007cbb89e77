"""Log lines: JSON objects carrying the call's method and shop, never request contents."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from fenliu.client import Client, NotFound, Status
from fenliu.server import logs
from fenliu.server.config import Config
from fenliu.server.rpc.app import ServerThread


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The ``fenliu`` loggers' lines, formatted as ``log_format = json`` formats them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.CallContext())
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("fenliu")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def test_access_lines_name_method_shop_and_code_only(json_lines: io.StringIO) -> None:
    config = Config(shards=1, tick_interval_s=3600, grace_s=1, access_log=True, log_format="json")
    with ServerThread(config) as server, Client(server.target, retries=0) as fenliu:
        fenliu.register_agent("log-shop", "alice", max_concurrent=2, status=Status.ONLINE)
        fenliu.route("log-shop", "secret-buyer-77", crowds=["vip-crowd"], channel="ch-9")
        with pytest.raises(NotFound):
            fenliu.list_team("no-such-shop")
    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    calls = [line for line in lines if line["logger"] == "fenliu.access"]
    assert [(c["method"], c["shop_id"], c["code"]) for c in calls] == [
        ("/fenliu.v1.Presence/RegisterAgent", "log-shop", "OK"),
        ("/fenliu.v1.Routing/Route", "log-shop", "OK"),
        ("/fenliu.v1.Presence/ListTeam", "no-such-shop", "NOT_FOUND"),
    ]
    for line in lines:
        assert {"time", "level", "logger", "message", "method", "shop_id"} <= set(line)
    assert all(isinstance(c["duration_ms"], float) for c in calls)
    text = json_lines.getvalue()
    for content in ("secret-buyer-77", "vip-crowd", "ch-9"):
        assert content not in text


def test_text_lines_carry_the_call_too() -> None:
    record = logging.LogRecord("fenliu.access", logging.INFO, "", 0, "done", None, None)
    token = logs.call_method.set("/fenliu.v1.Routing/Route")
    try:
        logs.CallContext().filter(record)
    finally:
        logs.call_method.reset(token)
    record.code = "OK"
    assert logs.TextFormatter().format(record).endswith("done [/fenliu.v1.Routing/Route code=OK]")
    outside = logging.LogRecord("fenliu", logging.INFO, "", 0, "plain", None, None)
    logs.CallContext().filter(outside)
    assert logs.TextFormatter().format(outside).endswith("INFO plain")

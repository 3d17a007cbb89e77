"""The dashboard's own access rules, over plain HTTP to the real process, and that it is a
client of fenliu only (it never loads the server's code)."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fenliu.client import Client, Status

from .conftest import BIN, Process, dashboard, fenliu_server

pytestmark = pytest.mark.slow

TOKEN = "page-secret-123"


def request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: str = "",
    *,
    stream: bool = False,
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body (a stream's first line only)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        content = response.readline() if stream else response.read()
        return response.status, dict(response.getheaders()), content
    finally:
        connection.close()


@pytest.fixture(scope="module")
def guarded(target: str) -> Process:
    args = [str(BIN / "fenliu-dashboard"), "--fenliu", target, "--port", "0", "--token", TOKEN]
    process = Process(args, r"fenliu-dashboard serving on http://127\.0\.0\.1:(\d+) ").start()
    yield process  # type: ignore[misc]
    process.stop()


def test_a_token_guards_the_page_when_set(guarded: Process) -> None:
    port = guarded.port
    status, _, body = request(port, "GET", "/shops/s1")
    assert status == 401 and b"token" in body
    status, _, _ = request(port, "GET", "/shops/s1", {"Cookie": "fenliu_dashboard_token=wrong1234"})
    assert status == 401
    # ?token= once: kept in a cookie, and dropped from the address
    status, headers, _ = request(port, "GET", f"/shops/s1?token={TOKEN}")
    assert status == 303 and headers["Location"] == "/shops/s1"
    assert f"fenliu_dashboard_token={TOKEN}" in headers["Set-Cookie"]
    assert "HttpOnly" in headers["Set-Cookie"]
    cookie = {"Cookie": f"fenliu_dashboard_token={TOKEN}"}
    status, _, body = request(port, "GET", "/shops/s1", cookie)
    assert status == 200 and b"dashboard.js" in body
    status, _, _ = request(port, "GET", "/", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200


def test_actions_only_as_same_origin_json(board: Process) -> None:
    port = board.port
    body = json.dumps({"agent": "a", "status": "online"})
    status, _, reply = request(
        port, "POST", "/api/shops/s1/status", {"Content-Type": "text/plain"}, body
    )
    assert status == 415
    status, _, reply = request(
        port,
        "POST",
        "/api/shops/s1/status",
        {"Content-Type": "application/json", "Origin": "http://evil.example"},
        body,
    )
    assert status == 403 and json.loads(reply)["error"]["field"] == "origin"
    # A bad body names its field; nothing reaches fenliu
    bad = json.dumps({"agent": "a", "status": "asleep"})
    status, _, reply = request(
        port, "POST", "/api/shops/s1/status", {"Content-Type": "application/json"}, bad
    )
    assert status == 400 and json.loads(reply)["error"]["field"] == "status"


def test_without_a_token_only_loopback_names_are_served(board: Process) -> None:
    status, _, _ = request(board.port, "GET", "/", {"Host": "attacker.example:8080"})
    assert status == 403  # DNS rebinding: a foreign name pointing at 127.0.0.1
    status, _, _ = request(board.port, "GET", "/", {"Host": f"localhost:{board.port}"})
    assert status == 200


def test_an_unknown_shop_is_refused_with_fenliu_error(board: Process) -> None:
    status, _, reply = request(board.port, "GET", "/shops/no-such-shop/events")
    assert status == 404
    assert json.loads(reply)["error"]["code"] == "NOT_FOUND"


def test_off_loopback_it_will_not_start_without_a_token() -> None:
    args = [str(BIN / "fenliu-dashboard"), "--host", "0.0.0.0", "--port", "0"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--host 0.0.0.0 is not loopback: give the page a --token" in done.stderr


def test_the_dashboard_never_loads_the_server() -> None:
    code = (
        "import sys, fenliu.client.dashboard as d\n"
        "loaded = [m for m in sys.modules if m.startswith('fenliu.server')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_dashboard_talks_to_fenliu_with_its_own_token(tmp_path: Path) -> None:
    config = tmp_path / "fenliu.toml"
    config.write_text(
        '[[auth.tokens]]\nname = "dashboard"\ntoken = "dash-token-1234"\nshops = ["*"]\n'
    )
    server = fenliu_server(tmp_path / "data")
    server.args += ["--config", str(config)]
    server.start()
    target = f"127.0.0.1:{server.port}"
    with_token = dashboard(target)
    with_token.args += ["--fenliu-token", "dash-token-1234"]
    without = dashboard(target)
    try:
        with Client(target, token="dash-token-1234") as fenliu:
            fenliu.register_agent("s1", "alice", status=Status.ONLINE)
        with_token.start()
        without.start()
        status, _, body = request(with_token.port, "GET", "/shops/s1/events", stream=True)
        assert (status, body) == (200, b"retry: 1000\n")
        status, _, body = request(without.port, "GET", "/shops/s1/events")
        assert status == 502  # fenliu refused the dashboard, not the page
        assert json.loads(body)["error"]["code"] == "UNAUTHENTICATED"
    finally:
        with_token.stop()
        without.stop()
        server.stop()

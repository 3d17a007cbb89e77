"""The ``fenliu`` command line against a real server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fenliu.client import Client
from fenliu.client._cli import main
from fenliu.server.config import Config, Token
from fenliu.server.rpc.app import ServerThread
from tests.server.rpc.test_tls import self_signed


def run(target: str, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--target", target, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_tour_of_the_commands(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(target, capsys, "agent", "register", "cli", "main", "--role", "main",
               "--max", "1", "--status", "online")[0] == 0  # fmt: skip
    code, out, _ = run(target, capsys, "--json", "route", "cli", "b1", "--channel", "item_page")
    decision = json.loads(out)
    assert code == 0 and decision["outcome"] == "ASSIGNED" and decision["agent_id"] == "main"
    code, out, _ = run(target, capsys, "route", "cli", "b2")
    assert code == 0 and "QUEUED" in out
    code, out, _ = run(target, capsys, "team", "cli")
    assert out.splitlines()[0].split()[:3] == ["agent_id", "role", "groups"]
    assert "main" in out.splitlines()[1]
    code, out, _ = run(target, capsys, "queue", "list", "cli")
    assert "b2" in out and "(1 in all)" in out
    assert run(target, capsys, "ack", "cli", "main", decision["session_id"])[0] == 0
    code, out, _ = run(target, capsys, "--json", "end", "cli", decision["session_id"])
    assert json.loads(out)["moved"][0]["buyer_id"] == "b2"
    code, out, _ = run(target, capsys, "--json", "policy", "set", "cli", "--strategy",
                       "least-load", "--priority-crowds", "vip,gold")  # fmt: skip
    policy = json.loads(out)
    assert policy["strategy"] == "LEAST_LOAD" and policy["priority_crowds"] == ["vip", "gold"]


def test_a_refused_request_names_the_field_and_exits_1(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(target, capsys, "team", "no-such-shop")
    assert code == 1 and out == ""
    assert err.startswith("fenliu: NOT_FOUND: shop_id")
    assert err.rstrip().endswith("[SHOP_NOT_FOUND]")  # the reason, for scripts to match on


def test_an_unreachable_server_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run("127.0.0.1:1", capsys, "--timeout", "0.5", "team", "x")
    assert code == 2 and "cannot reach 127.0.0.1:1" in err


def test_a_bad_enum_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["agent", "status", "s", "a", "sleepy"])
    assert exit_info.value.code == 2
    assert (
        "'sleepy' is not one of: online, invisible, suspended, offline" in capsys.readouterr().err
    )


def test_the_installed_console_script(target: str) -> None:
    script = str(Path(sys.executable).parent / "fenliu")
    for args in (["agent", "register", "script", "main"], ["policy", "get", "script"]):
        done = subprocess.run(
            [script, "--target", target, "--json", *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["time_zone"] == "Asia/Shanghai"


def test_stats_and_watch(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(target, capsys, "agent", "register", "cli-watch", "a", "--max", "1",
               "--status", "online")[0] == 0  # fmt: skip
    with Client(target) as fenliu:
        keep = fenliu.watch_shop("cli-watch")
        next(keep)  # started: from here on the shop's events are kept for a resume
        run(target, capsys, "route", "cli-watch", "b1")
        run(target, capsys, "route", "cli-watch", "b2")
        code, out, _ = run(target, capsys, "--json", "watch", "cli-watch", "--after", "1",
                           "--count", "2")  # fmt: skip
        keep.close()  # type: ignore[attr-defined]
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [(x["type"], x.get("seq"), x.get("kind")) for x in lines] == [
        ("Started", None, None),
        ("Event", 2, "ASSIGNED"),
        ("Event", 3, "QUEUE_CHANGED"),
    ]
    code, out, _ = run(target, capsys, "stats", "cli-watch")
    assert code == 0
    # one output style (issue 15): the record's lines, nested counts as dotted keys, then
    # the agents' table under its name
    assert re.search(r"^queue_length +1$", out, re.M) and re.search(
        r"^today\.assigned +1$", out, re.M
    )
    assert re.search(r"^today\.fast_reply_rate +0\.0%$", out, re.M)  # first reply within 2 min
    assert out.splitlines()[-3:-1] == ["agents:", "agent_id  status  load  served_today"]
    code, out, _ = run(target, capsys, "--json", "stats", "cli-watch", "--window", "5")
    assert json.loads(out)["window"]["assigned"] == 1
    code, _, err = run(target, capsys, "stats", "cli-watch", "--window", "61")
    assert code == 1 and "window_minutes" in err


def test_token_and_tls_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key, _ = self_signed(tmp_path, "server")
    token = Token("ops", "ops-secret-123", frozenset({"cli-auth"}))
    config = Config(shards=1, grace_s=1, tls_cert=str(cert), tls_key=str(key), tokens=(token,))
    with ServerThread(config) as server:
        target = server.target
        code, _, err = run(target, capsys, "--tls-ca", str(cert), "team", "cli-auth")
        assert code == 1 and "UNAUTHENTICATED" in err
        monkeypatch.setenv("FENLIU_TOKEN", token.secret)  # read when the parser is built
        code, _, _ = run(
            target, capsys, "--tls-ca", str(cert), "agent", "register", "cli-auth", "a1"
        )
        code, out, _ = run(target, capsys, "--tls-ca", str(cert), "--json", "team", "cli-auth")
        assert code == 0 and [a["agent_id"] for a in json.loads(out)] == ["a1"]
        code, _, err = run(target, capsys, "--tls-ca", str(cert), "team", "other-shop")
        assert code == 1 and "PERMISSION_DENIED" in err
        code, _, err = run(target, capsys, "--tls-ca", str(tmp_path / "nope.pem"), "team", "x")
        assert code == 2 and "cannot read --tls-ca" in err


def test_agent_update_changes_only_the_flags_given(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(target, capsys, "agent", "register", "cli-upd", "m", "--role", "main",
               "--max", "2", "--groups", "pre")[0] == 0  # fmt: skip
    code, out, _ = run(target, capsys, "--json", "agent", "update", "cli-upd", "m", "--max", "3")
    agent = json.loads(out)
    assert code == 0
    assert (agent["role"], agent["groups"], agent["max_concurrent"]) == ("MAIN", ["pre"], 3)
    code, out, _ = run(target, capsys, "--json", "agent", "update", "cli-upd", "m", "--groups", "")
    assert json.loads(out)["groups"] == [] and json.loads(out)["max_concurrent"] == 3
    code, _, err = run(target, capsys, "agent", "update", "cli-upd", "ghost", "--max", "1")
    assert code == 1 and "AGENT_NOT_FOUND" in err


def test_registering_an_existing_agent_needs_replace(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(target, capsys, "agent", "register", "cli-rep", "a", "--max", "2")[0] == 0
    code, _, err = run(target, capsys, "agent", "register", "cli-rep", "a", "--max", "5")
    assert code == 1 and "AGENT_EXISTS" in err  # nothing replaced by accident
    code, out, _ = run(target, capsys, "--json", "agent", "register", "cli-rep", "a", "--max",
                       "5", "--replace")  # fmt: skip
    assert code == 0 and json.loads(out)["max_concurrent"] == 5

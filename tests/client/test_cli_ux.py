"""The ``fenliu`` and ``fenliu-server`` command lines as a new user meets them (issue 15):
versions, client certificates, readable times, a closed pipe, suggestions for typos."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fenliu.client import Client, Status
from fenliu.client._cli import _duration, main
from fenliu.server.config import Config
from fenliu.server.rpc.app import ServerThread
from tests.server.rpc.test_tls import self_signed

BIN = Path(sys.executable).parent
ISO = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def run(target: str, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--target", target, *args])
    out, err = capsys.readouterr()
    return code, out, err


def usage_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("script", ["fenliu", "fenliu-server"])
def test_both_commands_print_their_version(script: str) -> None:
    done = subprocess.run(
        [str(BIN / script), "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(rf"{script} \d+\.\d+\.\d+\S*\n", done.stdout)


def test_client_certificate_flags_and_variables_speak_mutual_tls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key, _ = self_signed(tmp_path, "server")
    client_cert, client_key, _ = self_signed(tmp_path, "client")
    config = Config(shards=1, grace_s=1, tls_cert=str(cert), tls_key=str(key),
                    tls_client_ca=str(client_cert))  # fmt: skip
    with ServerThread(config) as server:
        t = server.target
        code, _, err = run(t, capsys, "--timeout", "2", "--tls-ca", str(cert), "team", "m")
        assert code == 2  # no certificate: the handshake fails
        mtls = ("--tls-ca", str(cert), "--tls-cert", str(client_cert), "--tls-key", str(client_key))
        code, out, err = run(t, capsys, *mtls, "agent", "register", "m", "a1")
        assert code == 0, err
        monkeypatch.setenv("FENLIU_CLIENT_CERT", str(client_cert))
        monkeypatch.setenv("FENLIU_CLIENT_KEY", str(client_key))
        monkeypatch.setenv("FENLIU_TLS_CA", str(cert))
        code, out, err = run(t, capsys, "--json", "team", "m")
        assert code == 0 and [a["agent_id"] for a in json.loads(out)] == ["a1"]
        monkeypatch.delenv("FENLIU_CLIENT_KEY")
        code, _, err = run(t, capsys, "team", "m")
        assert code == 2 and "--tls-cert and --tls-key go together" in err
        code, _, err = run(t, capsys, "--tls-key", str(tmp_path / "nope.key"), "team", "m")
        assert code == 2 and "cannot read --tls-key" in err


def test_times_read_in_the_shop_time_zone_and_durations_in_units(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with Client(target) as fenliu:
        fenliu.set_shop_policy("cli-tz", time_zone="Asia/Tokyo", accept_timeout_ms=90_000,
                               queue_wait_limit_ms=0)  # fmt: skip
        fenliu.register_agent("cli-tz", "a", max_concurrent=0, status=Status.ONLINE)
        fenliu.route("cli-tz", "b1")  # queued: nobody has room
    code, out, _ = run(target, capsys, "queue", "position", "cli-tz", "b1")
    assert code == 0
    assert re.search(rf"^created_at +{ISO}\+09:00$", out, re.M), out
    assert re.search(r"^first_reply_at +-$", out, re.M)  # not yet: no time, not 1970
    code, out, _ = run(target, capsys, "policy", "get", "cli-tz")
    assert re.search(r"^accept_timeout +1m 30s$", out, re.M)
    assert re.search(r"^queue_wait_limit +off$", out, re.M)
    assert re.search(r"^recent_contact_ttl +180d$", out, re.M)
    code, out, _ = run(target, capsys, "queue", "list", "cli-tz")
    assert out.splitlines()[0].split()[:3] == ["session_id", "buyer_id", "position"]
    assert re.search(r"\bwaited\b", out.splitlines()[0])
    code, out, _ = run(target, capsys, "--json", "queue", "position", "cli-tz", "b1")
    assert isinstance(json.loads(out)["created_at_ms"], int)  # machines get the numbers
    assert [_duration(ms) for ms in (850, 12_500, 90_000, 7_500_000, 86_400_000)] == [
        "850ms", "12.5s", "1m 30s", "2h 5m", "1d",
    ]  # fmt: skip


def test_global_options_may_follow_the_command_and_get_prints_fields(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with Client(target) as fenliu:
        fenliu.register_agent("cli-get", "a", max_concurrent=3, status=Status.ONLINE)
    code, out, _ = run(target, capsys, "team", "cli-get", "--json")
    assert code == 0 and json.loads(out)[0]["agent_id"] == "a"
    code, out, _ = run(target, capsys, "--get", "agent_id,session_id", "route", "cli-get", "b1")
    assert code == 0 and out == "a s1\n"
    err = usage_error(capsys, "--target", target, "--get", "agent", "route", "cli-get", "b1")
    assert "no field 'agent' (did you mean 'agent_id'?)" in err


def test_a_closed_pipe_ends_the_command_quietly(target: str) -> None:
    with Client(target) as fenliu:  # a team long enough to fill the pipe
        for i in range(1_500):
            fenliu.register_agent("cli-pipe", f"agent-{i:04d}", max_concurrent=1)
    script = f"set -o pipefail; {BIN / 'fenliu'} --target {target} team cli-pipe | head -1"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.split()[:2] == ["agent_id", "role"]
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    assert done.stderr == "" and done.returncode == 0


def test_a_mistyped_command_flag_or_choice_gets_a_suggestion(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert "(did you mean 'route'?)" in usage_error(capsys, "rout", "shop1", "b1")
    assert "(did you mean 'register'?)" in usage_error(capsys, "agent", "regster", "s", "a")
    err = usage_error(capsys, "agent", "register", "s", "a", "--maxx", "3")
    assert "unrecognized arguments: --maxx 3 (did you mean '--max'?)" in err
    assert "(did you mean 'online'?)" in usage_error(capsys, "agent", "status", "s", "a", "onlin")
    assert "did you mean" not in usage_error(capsys, "zzzzzz")

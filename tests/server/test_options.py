"""Settings from defaults, a TOML file, the environment and flags; bad ones named."""

from __future__ import annotations

from pathlib import Path

import pytest

from fenliu.server.__main__ import parse_config
from fenliu.server.config import Config, Token
from fenliu.server.options import KEYS, ConfigError, load, parser


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "fenliu.toml"
    path.write_text(text)
    return str(path)


def test_no_file_no_env_no_flags_is_the_quick_start() -> None:
    assert load([], {}) == Config(data_dir="data", gc_freeze_interval_s=1.0)
    assert load([], {}).auth is False


def test_flags_beat_env_beat_file_beat_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, 'port = 7000\nshards = 2\nlog_format = "json"\ngrace_s = 2\n')
    env = {"FENLIU_CONFIG": path, "FENLIU_PORT": "7001", "FENLIU_SHARDS": "3"}
    config = load(["--port", "7002", "--no-fsync"], env)
    assert (config.port, config.shards, config.log_format) == (7002, 3, "json")
    assert (config.grace_s, config.fsync, config.host) == (2.0, False, "127.0.0.1")


def test_config_flag_beats_config_env(tmp_path: Path) -> None:
    first = write(tmp_path, "port = 1\n")
    second = tmp_path / "other.toml"
    second.write_text("port = 2\n")
    assert load(["--config", str(second)], {"FENLIU_CONFIG": first}).port == 2


def test_env_booleans_and_numbers() -> None:
    env = {"FENLIU_FSYNC": "off", "FENLIU_ACCESS_LOG": "yes", "FENLIU_TICK_INTERVAL_S": "0.25"}
    config = load([], env)
    assert (config.fsync, config.access_log, config.tick_interval_s) == (False, True, 0.25)


@pytest.mark.parametrize(
    ("text", "env", "argv", "expected"),
    [
        pytest.param("prot = 1\n", {}, [], r"unknown key 'prot' in config file", id="unknown-key"),
        pytest.param(
            'port = "80"\n', {}, [], r"^port must be an integer .*config file", id="file-type"
        ),
        pytest.param(
            "port = 70000\n", {}, [], r"^port must be .*0\.\.65535.*config file", id="file-range"
        ),
        pytest.param(
            "", {"FENLIU_PORT": "x"}, [], r"^port must be an integer .*env FENLIU_PORT", id="env"
        ),
        pytest.param(
            "", {"FENLIU_FSYNC": "maybe"}, [], r"^fsync must be true or false", id="env-bool"
        ),
        pytest.param("", {}, ["--shards", "0"], r"^shards must be .*flag --shards", id="flag"),
        pytest.param(
            "", {}, ["--log-format", "xml"], r"^log_format must be one of text, json", id="choice"
        ),
        pytest.param(
            'tls_cert = "c.pem"\n', {}, [], r"^tls_key must be set with tls_cert", id="tls-pair"
        ),
        pytest.param("port = \n", {}, [], r"is not valid TOML", id="toml-syntax"),
        pytest.param("[auth]\ntoken = 1\n", {}, [], r"unknown key 'auth\.token'", id="auth-key"),
    ],
)
def test_a_bad_setting_names_its_key_and_source(
    tmp_path: Path, text: str, env: dict[str, str], argv: list[str], expected: str
) -> None:
    env = {"FENLIU_CONFIG": write(tmp_path, text), **env}
    with pytest.raises(ConfigError, match=expected):
        load(argv, env)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the config file .*nope\.toml"):
        load(["--config", str(tmp_path / "nope.toml")], {})


def test_the_program_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config(["--metrics-port", "-5"], {})
    assert info.value.code == 2
    assert "metrics_port must be an integer in 0..65535" in capsys.readouterr().err


def test_help_lists_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for key in KEYS:
        assert f"key {key.name}," in text
        assert f"FENLIU_{key.name.upper()}" in text
    assert "[[auth.tokens]]" in text


TOKENS = """
[[auth.tokens]]
name = "gateway"
token_env = "GW_SECRET"
shops = ["*"]

[[auth.tokens]]
name = "desk"
token_file = "{secret_file}"
shops = ["shop1", "shop2"]

[[auth.tokens]]
token = "inline-secret-3"
shops = ["shop3"]
"""


def test_tokens_from_the_file_env_and_secret_files(tmp_path: Path) -> None:
    secret_file = tmp_path / "desk.secret"
    secret_file.write_text("desk-secret-2\n")
    path = write(tmp_path, TOKENS.format(secret_file=secret_file))
    config = load(["--config", path], {"GW_SECRET": "gateway-secret-1"})
    assert config.tokens == (
        Token("gateway", "gateway-secret-1", None),
        Token("desk", "desk-secret-2", frozenset({"shop1", "shop2"})),
        Token("token2", "inline-secret-3", frozenset({"shop3"})),
    )
    assert config.auth
    assert "secret" not in repr(config.tokens).replace("token_file", "")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        pytest.param('token = "abcdefgh"', r"auth\.tokens\[0\]\.shops must be", id="no-shops"),
        pytest.param(
            'shops = ["*"]', r"exactly one of token, token_env, token_file", id="no-token"
        ),
        pytest.param('token = "short"\nshops = ["*"]', r"at least 8 characters", id="short"),
        pytest.param(
            'token_env = "UNSET_VAR"\nshops = ["*"]', r"UNSET_VAR is not set", id="env-unset"
        ),
        pytest.param(
            'token = "abcdefgh"\nshops = ["*"]\nscope = 1',
            r"unknown key 'auth\.tokens\[0\]\.scope'",
            id="unknown",
        ),
    ],
)
def test_a_bad_token_is_named(tmp_path: Path, entry: str, expected: str) -> None:
    path = write(tmp_path, f"[[auth.tokens]]\n{entry}\n")
    with pytest.raises(ConfigError, match=expected):
        load(["--config", path], {})


def test_token_values_must_be_unique(tmp_path: Path) -> None:
    entry = '[[auth.tokens]]\ntoken = "same-secret"\nshops = ["*"]\n'
    with pytest.raises(ConfigError, match=r"token values must be unique .*config file"):
        load(["--config", write(tmp_path, entry * 2)], {})

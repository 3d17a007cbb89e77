"""Where a ``Config`` comes from: defaults < TOML file < environment < command-line flags.

Every key has one name: the TOML key, ``FENLIU_<KEY>`` in the environment and a flag
(listed with its key by ``fenliu-server --help``). The file is ``--config PATH`` or
``FENLIU_CONFIG``. Bearer tokens live only in the file, under ``[[auth.tokens]]``; a
token's secret is given inline (``token``), by an environment variable (``token_env``)
or by a file (``token_file``), so secrets need not sit in the config file.

An unknown key in the file, a value of the wrong type or out of range is an error that
names the key and where it came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from fenliu.client._version import version

from .config import ALL_SHOPS, LOG_FORMATS, LOG_LEVELS, Config, Token

ENV_PREFIX = "FENLIU_"
CONFIG_ENV = "FENLIU_CONFIG"
# the library's defaults are memory and the process's GC left alone
PROGRAM_DEFAULTS: dict[str, Any] = {"data_dir": "data", "gc_freeze_interval_s": 1.0}


class ConfigError(ValueError):
    """A bad configuration; the message names the key and its source."""


class Key(NamedTuple):
    name: str  # the Config field, the TOML key
    kind: type
    flag: str
    help: str


KEYS: tuple[Key, ...] = (
    Key("host", str, "--host", "address to listen on"),
    Key("port", int, "--port", "gRPC port; 0 picks a free one"),
    Key("shards", int, "--shards", "state partitions (fixed for a data directory)"),
    Key("tick_interval_s", float, "--tick-interval", "seconds between timer ticks"),
    Key("grace_s", float, "--grace", "seconds running calls get on shutdown"),
    Key("data_dir", str, "--data-dir", "journal and snapshots; '' keeps state in memory"),
    Key("fsync", bool, "--fsync", "fsync before acknowledging; off: benchmarks only"),
    Key(
        "commit_delay_s",
        float,
        "--commit-delay",
        "under load, s an append waits for more calls to share its fsync; 0: none",
    ),
    Key("snapshot_interval_s", float, "--snapshot-interval", "seconds between snapshots"),
    Key(
        "truncate_corrupt_journal",
        bool,
        "--truncate-corrupt-journal",
        "start on a journal damaged mid-way by dropping it from there (logged)",
    ),
    Key("gc_freeze_interval_s", float, "--gc-freeze-interval", "s between GC freezes; 0: none"),
    Key("metrics_host", str, "--metrics-host", "metrics address; '' is the host key's"),
    Key("metrics_port", int, "--metrics-port", "Prometheus metrics over HTTP; 0 is off"),
    Key("log_format", str, "--log-format", "/".join(LOG_FORMATS)),
    Key("log_level", str, "--log-level", "/".join(LOG_LEVELS)),
    Key("access_log", bool, "--access-log", "log one line per call"),
    Key("tls_cert", str, "--tls-cert", "PEM certificate chain (TLS with tls_key)"),
    Key("tls_key", str, "--tls-key", "PEM private key"),
    Key("tls_client_ca", str, "--tls-client-ca", "PEM CA bundle: require client certificates"),
    Key("cluster_nats", str, "--cluster-nats", "cluster mode: NATS URLs, comma-separated"),
    Key("cluster_etcd", str, "--cluster-etcd", "cluster mode: etcd host:port, comma-separated"),
    Key("cluster_name", str, "--cluster-name", "cluster mode: the cluster's name"),
    Key("node_id", str, "--node-id", "cluster mode: this node's id; '' is host:port"),
    Key("advertise", str, "--advertise", "cluster mode: host:port clients call; '' is host:port"),
    Key("lease_ttl_s", int, "--lease-ttl", "cluster mode: seconds a dead node's shards wait"),
    Key("replicas", int, "--replicas", "cluster mode: replicas of each shard's stream"),
)
_BY_NAME = {key.name: key for key in KEYS}
_BOOLS = {"true": True, "1": True, "yes": True, "on": True}
_BOOLS |= {"false": False, "0": False, "no": False, "off": False}
_TOKEN_KEYS = {"name", "token", "token_env", "token_file", "shops"}


def parser() -> argparse.ArgumentParser:
    """The command line: every key as a flag, with its default, env name and key."""
    defaults = {**dataclasses.asdict(Config()), **PROGRAM_DEFAULTS}
    p = argparse.ArgumentParser(
        prog="fenliu-server",
        description="Run one fenliu server process. Settings: defaults < --config file < "
        "FENLIU_<KEY> environment < flags.",
        epilog="Bearer tokens are set in the config file: [[auth.tokens]] with name, "
        "token (or token_env / token_file) and shops = ['*'] or a list of shop ids. "
        "See the README's Operations section.",
    )
    p.add_argument("--version", action="version", version=f"fenliu-server {version()}")
    p.add_argument(
        "--config", metavar="PATH", help=f"TOML config file (env {CONFIG_ENV})", default=None
    )
    for key in KEYS:
        where = (
            f"[key {key.name}, env {ENV_PREFIX}{key.name.upper()}, default {defaults[key.name]!r}]"
        )
        if key.kind is bool:
            p.add_argument(
                key.flag, dest=key.name, action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS, help=f"{key.help} {where}",
            )  # fmt: skip
        else:
            p.add_argument(
                key.flag, dest=key.name, metavar=key.kind.__name__.upper(),
                default=argparse.SUPPRESS, help=f"{key.help} {where}",
            )  # fmt: skip
    return p


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The configuration of this process.

    Raises:
        ConfigError: a key is unknown or its value is bad; the message names both.
    """
    env = os.environ if environ is None else environ
    args = vars(parser().parse_args(argv))
    values: dict[str, Any] = dict(PROGRAM_DEFAULTS)
    sources: dict[str, str] = {}
    path = args.pop("config") or env.get(CONFIG_ENV)
    if path:
        file_values, tokens = _read_file(Path(path), env)
        values.update(file_values)
        sources.update(dict.fromkeys(file_values, f"config file {path}"))
        values["tokens"] = tokens
        sources["tokens"] = f"config file {path}"
    for key in KEYS:
        variable = ENV_PREFIX + key.name.upper()
        if variable in env:
            values[key.name] = _parse(key, env[variable], f"env {variable}")
            sources[key.name] = f"env {variable}"
    for name, raw in args.items():
        key = _BY_NAME[name]
        values[name] = raw if key.kind is bool else _parse(key, raw, f"flag {key.flag}")
        sources[name] = f"flag {key.flag}"
    try:
        return Config(**values)
    except ValueError as exc:
        message = str(exc)
        first = message.split()[0].split("[")[0].split(".")[0]
        source = sources.get("tokens" if first == "auth" else first)
        raise ConfigError(f"{message} (from {source})" if source else message) from None


def _parse(key: Key, raw: str, source: str) -> Any:
    """A string from the environment or a flag as the key's type."""
    try:
        if key.kind is bool:
            return _BOOLS[raw.strip().lower()]
        return key.kind(raw)
    except (KeyError, ValueError):
        kind = {bool: "true or false", int: "an integer", float: "a number"}[key.kind]
        raise ConfigError(f"{key.name} must be {kind} (got {raw!r}) (from {source})") from None


def _read_file(path: Path, env: Mapping[str, str]) -> tuple[dict[str, Any], tuple[Token, ...]]:
    source = f"config file {path}"
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    auth = data.pop("auth", {})
    values: dict[str, Any] = {}
    for name, value in data.items():
        key = _BY_NAME.get(name)
        if key is None:
            raise ConfigError(f"unknown key {name!r} in {source}")
        values[name] = _typed(key, value, source)
    return values, _tokens(auth, source, env)


def _typed(key: Key, value: Any, source: str) -> Any:
    """A TOML value, if it has the key's type (an integer may stand for a float)."""
    ok = isinstance(value, key.kind) and not (key.kind is int and isinstance(value, bool))
    if key.kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
        raise ConfigError(f"{key.name} must be {kind[key.kind]} (got {value!r}) (from {source})")
    return value


def _tokens(auth: Any, source: str, env: Mapping[str, str]) -> tuple[Token, ...]:
    if not isinstance(auth, dict):
        raise ConfigError(f"auth must be a table (from {source})")
    unknown = set(auth) - {"tokens"}
    if unknown:
        raise ConfigError(f"unknown key 'auth.{sorted(unknown)[0]}' in {source}")
    entries = auth.get("tokens", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"auth.tokens must be an array of tables [[auth.tokens]] (from {source})")
    return tuple(_token(i, entry, source, env) for i, entry in enumerate(entries))


def _token(index: int, entry: dict[str, Any], source: str, env: Mapping[str, str]) -> Token:
    where = f"auth.tokens[{index}]"

    def fail(message: str) -> ConfigError:
        return ConfigError(f"{where}.{message} (from {source})")

    unknown = set(entry) - _TOKEN_KEYS
    if unknown:
        raise ConfigError(f"unknown key '{where}.{sorted(unknown)[0]}' in {source}")
    given = [k for k in ("token", "token_env", "token_file") if k in entry]
    if len(given) != 1:
        raise fail("token: give exactly one of token, token_env, token_file")
    name = entry.get("name", f"token{index}")
    shops = entry.get("shops")
    if not isinstance(shops, list) or not shops or not all(isinstance(s, str) for s in shops):
        raise fail("shops must be a non-empty list of shop ids, or ['*'] for every shop")
    secret = _secret(given[0], entry[given[0]], env, fail)
    try:
        return Token(
            name=name, secret=secret,
            shops=None if ALL_SHOPS in shops else frozenset(shops),
        )  # fmt: skip
    except ValueError as exc:
        raise ConfigError(f"{exc} (from {source})") from None


def _secret(
    kind: str, value: Any, env: Mapping[str, str], fail: Callable[[str], ConfigError]
) -> str:
    if not isinstance(value, str) or not value:
        raise fail(f"{kind} must be a non-empty string")
    if kind == "token":
        return value
    if kind == "token_env":
        secret = env.get(value)
        if not secret:
            raise fail(f"token_env: the environment variable {value} is not set")
        return secret
    try:
        return Path(value).read_text().strip()
    except OSError as exc:
        raise fail(f"token_file: cannot read {value}: {exc.strerror}") from None

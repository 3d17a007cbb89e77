"""The server's settings: a frozen dataclass checked field by field when it is built.

``options.py`` builds one from defaults, a TOML file, the environment and flags.
"""

from __future__ import annotations

import dataclasses
import math

MAX_PORT = 65_535
MAX_SHARDS = 4096
MAX_COMMIT_DELAY_S = 0.1  # every caller under load may wait this long
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
ALL_SHOPS = "*"


@dataclasses.dataclass(frozen=True)
class Token:
    """A caller's bearer token and the shops it may touch (``None``: every shop).

    The secret never appears in a repr or a log line; ``name`` does.
    """

    name: str
    secret: str = dataclasses.field(repr=False)
    shops: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"auth.tokens name must be a non-empty string (got {self.name!r})")
        if not isinstance(self.secret, str) or len(self.secret) < 8:
            raise ValueError(f"auth.tokens[{self.name}] token must be at least 8 characters")
        if self.secret != self.secret.strip() or not self.secret.isprintable():
            raise ValueError(
                f"auth.tokens[{self.name}] token must be printable, not padded with spaces"
            )
        if self.shops is not None and not self.shops:
            raise ValueError(f"auth.tokens[{self.name}] shops must name a shop or '*'")

    def allows(self, shop_id: str) -> bool:
        return self.shops is None or shop_id in self.shops


@dataclasses.dataclass(frozen=True)
class Config:
    """How to run one fenliu server process.

    Raises:
        ValueError: a field is out of range; the message starts with the field's name.
    """

    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port
    shards: int = 16
    tick_interval_s: float = 1.0  # how often the timers are fired
    grace_s: float = 5.0  # how long a graceful shutdown lets running calls finish
    data_dir: str = ""  # the journal and snapshots; "" keeps state in memory only
    fsync: bool = True  # off only for benchmarks: an acknowledged change may then be lost
    # under load, how long an append may wait for more calls to share its fsync (node.py's
    # commit hold): latency under load for CPU per call; 0 appends at once
    commit_delay_s: float = 0.004
    snapshot_interval_s: float = 300.0  # how often each shard is snapshotted
    # start on a journal damaged in the middle by dropping it from the damage on (logged)
    truncate_corrupt_journal: bool = False
    # collect + gc.freeze() at start and this often (README "Garbage collection"); 0 leaves
    # the process's GC alone: the library's default, fenliu-server's is 1
    gc_freeze_interval_s: float = 0.0
    metrics_host: str = ""  # "" listens on ``host``
    metrics_port: int = 0  # Prometheus metrics over HTTP; 0 is off
    log_format: str = "text"  # or "json": one object per line
    log_level: str = "info"
    access_log: bool = False  # one line per call: method, shop, code, duration
    tls_cert: str = ""  # PEM certificate chain; with tls_key the port speaks TLS only
    tls_key: str = ""
    tls_client_ca: str = ""  # PEM CA bundle: clients must present a certificate it signed
    tokens: tuple[Token, ...] = ()  # none: auth is off
    # Cluster mode (issue 11, docs/cluster.md): both set, or neither (one process, files).
    # The log is NATS JetStream, ownership etcd leases; ``shards`` is the virtual shard
    # count, fixed when the cluster is created; data_dir is not used.
    cluster_nats: str = ""  # NATS URLs, comma-separated
    cluster_etcd: str = ""  # etcd endpoints host:port, comma-separated
    cluster_name: str = "fenliu"  # streams, buckets and keys are named after it
    node_id: str = ""  # unique in the cluster; "" is host:port
    advertise: str = ""  # host:port clients call this node at; "" is host:port
    lease_ttl_s: int = 3  # etcd lease: a dead node's shards move after about this long
    replicas: int = 3  # each shard stream's and bucket's replicas

    def __post_init__(self) -> None:
        _check_host(self.host, "host")
        _check_int(self.port, "port", 0, MAX_PORT)
        _check_int(self.shards, "shards", 1, MAX_SHARDS)
        _check_seconds(self.tick_interval_s, "tick_interval_s", positive=True)
        _check_seconds(self.grace_s, "grace_s", positive=False)
        _check_seconds(self.snapshot_interval_s, "snapshot_interval_s", positive=True)
        _check_seconds(self.gc_freeze_interval_s, "gc_freeze_interval_s", positive=False)
        _check_seconds(self.commit_delay_s, "commit_delay_s", positive=False)
        if self.commit_delay_s > MAX_COMMIT_DELAY_S:
            raise ValueError(f"commit_delay_s must be at most {MAX_COMMIT_DELAY_S} "
                             f"(got {self.commit_delay_s!r})")  # fmt: skip
        for name in ("data_dir", "tls_cert", "tls_key", "tls_client_ca"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a path (got {getattr(self, name)!r})")
        for name in ("fsync", "access_log", "truncate_corrupt_journal"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false (got {getattr(self, name)!r})")
        if self.metrics_host:
            _check_host(self.metrics_host, "metrics_host")
        _check_int(self.metrics_port, "metrics_port", 0, MAX_PORT)
        _check_choice(self.log_format, "log_format", LOG_FORMATS)
        _check_choice(self.log_level, "log_level", LOG_LEVELS)
        if bool(self.tls_cert) != bool(self.tls_key):
            missing = "tls_key" if self.tls_cert else "tls_cert"
            raise ValueError(
                f"{missing} must be set with {'tls_cert' if self.tls_cert else 'tls_key'}"
            )
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca needs tls_cert and tls_key (mutual TLS is TLS)")
        _check_tokens(self.tokens)
        _check_cluster(self)

    def effective(self) -> str:
        """Every setting as ``key=value``, for the start-up log line. Token secrets never
        appear: a token shows as its name and its shops (``gateway:*``, ``desk:2 shops``)."""
        parts = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "tokens":
                shown = ",".join(
                    f"{t.name}:{'*' if t.shops is None else f'{len(t.shops)} shops'}" for t in value
                )
                parts.append(f"tokens=[{shown}]")
            else:
                parts.append(f"{field.name}={value!r}")
        return " ".join(parts)

    @property
    def auth(self) -> bool:
        """Whether callers must present a token."""
        return bool(self.tokens)

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def cluster(self) -> bool:
        """Cluster mode: NATS and etcd are configured."""
        return bool(self.cluster_nats)


def _check_cluster(c: Config) -> None:
    for name in ("cluster_nats", "cluster_etcd", "node_id", "advertise"):
        if not isinstance(getattr(c, name), str):
            raise ValueError(f"{name} must be a string (got {getattr(c, name)!r})")
    if bool(c.cluster_nats) != bool(c.cluster_etcd):
        missing = "cluster_etcd" if c.cluster_nats else "cluster_nats"
        raise ValueError(f"{missing} must be set too: cluster mode needs NATS and etcd")
    for url in filter(None, c.cluster_nats.split(",")):
        if not url.strip().startswith(("nats://", "tls://")):
            raise ValueError(f"cluster_nats must be nats:// URLs, comma-separated (got {url!r})")
    for endpoint in filter(None, c.cluster_etcd.split(",")):
        host, _, port = endpoint.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"cluster_etcd must be host:port, comma-separated (got {endpoint!r})")
    if not isinstance(c.cluster_name, str) or not c.cluster_name.isidentifier():
        raise ValueError(f"cluster_name must be letters, digits and _ (got {c.cluster_name!r})")
    _check_int(c.lease_ttl_s, "lease_ttl_s", 2, 60)
    _check_int(c.replicas, "replicas", 1, 5)


def _check_tokens(tokens: tuple[Token, ...]) -> None:
    if not isinstance(tokens, tuple) or not all(isinstance(t, Token) for t in tokens):
        raise ValueError("tokens must be a tuple of Token")
    names = [t.name for t in tokens]
    if len(set(names)) != len(names):
        raise ValueError("auth.tokens names must be unique")
    if len({t.secret for t in tokens}) != len(tokens):
        raise ValueError("auth.tokens token values must be unique")


def _check_host(value: str, field: str) -> None:
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise ValueError(f"{field} must be a non-empty name or address (got {value!r})")


def _check_int(value: int, field: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{field} must be an integer in {low}..{high} (got {value!r})")


def _check_choice(value: str, field: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{field} must be one of {', '.join(choices)} (got {value!r})")


def _check_seconds(value: float, field: str, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number of seconds (got {value!r})")
    if value < 0 or (positive and value == 0):
        rule = "greater than 0" if positive else "at least 0"
        raise ValueError(f"{field} must be {rule} (got {value!r})")

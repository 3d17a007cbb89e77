"""The server's settings: a frozen dataclass checked field by field when it is built."""

from __future__ import annotations

import dataclasses
import math

MAX_PORT = 65_535
MAX_SHARDS = 4096


@dataclasses.dataclass(frozen=True)
class Config:
    """How to run one fenliu server process.

    Raises:
        ValueError: a field is out of range; the message names the field.
    """

    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port
    shards: int = 16
    tick_interval_s: float = 1.0  # how often the timers are fired
    grace_s: float = 5.0  # how long a graceful shutdown lets running calls finish
    data_dir: str = ""  # the journal and snapshots; "" keeps state in memory only
    fsync: bool = True  # off only for benchmarks: an acknowledged change may then be lost
    snapshot_interval_s: float = 300.0  # how often each shard is snapshotted

    def __post_init__(self) -> None:
        _check_host(self.host)
        _check_int(self.port, "port", 0, MAX_PORT)
        _check_int(self.shards, "shards", 1, MAX_SHARDS)
        _check_seconds(self.tick_interval_s, "tick_interval_s", positive=True)
        _check_seconds(self.grace_s, "grace_s", positive=False)
        _check_seconds(self.snapshot_interval_s, "snapshot_interval_s", positive=True)
        if not isinstance(self.data_dir, str):
            raise ValueError(f"data_dir must be a path (got {self.data_dir!r})")


def _check_host(value: str) -> None:
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise ValueError(f"host must be a non-empty name or address (got {value!r})")


def _check_int(value: int, field: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{field} must be an integer in {low}..{high} (got {value!r})")


def _check_seconds(value: float, field: str, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number of seconds (got {value!r})")
    if value < 0 or (positive and value == 0):
        rule = "greater than 0" if positive else "at least 0"
        raise ValueError(f"{field} must be {rule} (got {value!r})")

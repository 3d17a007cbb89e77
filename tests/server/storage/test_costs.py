"""Issue 10, costs independent of the shard count: a tick writes nothing when no timer is
due (today one Tick record goes to every shard's journal every tick). Real server, real
files: the data directory must not grow while the server idles.

Issue 10's acceptance test: it failed on the code before issue 10.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fenliu.client import Client, Status

from .procs import running

pytestmark = pytest.mark.slow


def size(data: Path) -> int:
    return sum(p.stat().st_size for p in data.rglob("*") if p.is_file())


def test_ticks_with_no_timer_due_write_nothing(tmp_path: Path) -> None:
    """16 shards ticking every 0.1 s for 2 s, one shop with a session whose timers are
    minutes away: today 16 x ~20 Tick records are journaled."""
    data = tmp_path / "data"
    with running(data, tmp_path / "server.log", shards=16, tick=0.1) as (_, target):
        with Client(target) as fenliu:
            fenliu.register_agent("idle-a", "a1", max_concurrent=2, status=Status.ONLINE)
            fenliu.route("idle-a", "b1")  # an accept timer, due in 10 minutes
            time.sleep(0.5)  # a tick or two may be under way
            before = size(data)
            time.sleep(2.0)
            grown = size(data) - before
            assert grown == 0, f"{grown} bytes written in 2 s of ticks with no timer due"
            assert fenliu.get_position("idle-a", "b1").buyer_id == "b1"

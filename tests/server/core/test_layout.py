"""Memory layout the compiled core's hot path relies on (bench/core_world.py --cache-sim).

A routing decision reads every agent of the scope (``AgentHeap.scanned``): its refcount
(mypyc increfs it) and its first five fields. Compiled, an agent is a 192-byte pymalloc
block, whose object starts on a cache line, so all of that is one line. A field added to
``Agent`` moves it to the next size class and this fails: take a padding field out then.
"""

from __future__ import annotations

import pytest

from fenliu.server import core
from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.state import Agent
from fenliu.server.core.types import RegisterAgent, Status

from .conftest import T0

pytestmark = pytest.mark.skipif(not core.COMPILED, reason="the layout of the compiled core")

LINE = 64
GC_HEADER = 16  # CPython's PyGC_Head before every object the collector tracks


def test_an_agent_fills_a_block_of_three_cache_lines() -> None:
    size = Agent.__basicsize__ + GC_HEADER
    assert 176 < size <= 192, f"Agent's block is {size} bytes: not pymalloc's 192-byte class"


def test_every_agent_header_and_scanned_fields_share_one_cache_line() -> None:
    d = Dispatcher()
    for shop in range(50):
        for n in range(8):
            d.execute(
                RegisterAgent(
                    at=T0,
                    shop_id=f"shop{shop}",
                    agent_id=f"a{n}",
                    max_concurrent=5,
                    status=Status.ONLINE,
                )
            )
    agents = [a for shard in d.shards for s in shard.shops.values() for a in s.agents.values()]
    assert len(agents) == 400
    offsets = sorted({id(agent) % LINE for agent in agents})  # id is the address in CPython
    assert offsets == [0], f"agents start at these offsets in their lines: {offsets}"

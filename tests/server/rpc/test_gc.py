"""The server's GC policy: freeze the recovered heap before serving, then periodically."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from fenliu.server import options
from fenliu.server.config import Config
from fenliu.server.core import types as t
from fenliu.server.core.state import Agent
from fenliu.server.rpc.app import Server, freeze_heap

AT = 1_000


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """The GC is the process's: start and leave every test with nothing frozen."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def is_frozen(obj: object) -> bool:
    """Tracked by the GC but in no generation: in the permanent (frozen) one."""
    return gc.is_tracked(obj) and not any(o is obj for o in gc.get_objects())


def agent_of(server: Server, shop_id: str, agent_id: str) -> Agent:
    for shard in server.dispatcher.shards:
        if shop_id in shard.shops:
            agent: Agent = shard.shops[shop_id].agents[agent_id]
            return agent
    raise AssertionError(f"no shop {shop_id}")


def register(shop_id: str, agent_id: str) -> t.RegisterAgent:
    return t.RegisterAgent(at=AT, shop_id=shop_id, agent_id=agent_id, max_concurrent=1)


def test_the_recovered_state_is_frozen_before_serving(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Server(Config(port=0, shards=2, data_dir=str(tmp_path))) as first:
            await first.node.execute(register("shop", "a1"))
        assert gc.get_freeze_count() == 0  # the library's default leaves the GC alone
        config = Config(port=0, shards=2, data_dir=str(tmp_path), gc_freeze_interval_s=3600)
        server = Server(config)
        assert gc.get_freeze_count() == 0  # recovery runs in start(), which also freezes
        async with server:
            assert gc.get_freeze_count() > 0
            assert is_frozen(agent_of(server, "shop", "a1"))

    asyncio.run(scenario())


def test_state_built_while_serving_is_frozen_by_the_next_freeze() -> None:
    async def scenario() -> None:
        async with Server(Config(port=0, shards=2, gc_freeze_interval_s=0.05)) as server:
            await server.node.execute(register("shop", "a2"))
            agent = agent_of(server, "shop", "a2")
            for _ in range(200):  # a wait for the periodic freeze, not a timing check
                if is_frozen(agent):
                    break
                await asyncio.sleep(0.02)
            assert is_frozen(agent)

    asyncio.run(scenario())


def test_a_freeze_first_collects_cyclic_garbage() -> None:
    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    async def scenario() -> None:
        async with Server(Config(port=0, shards=1, gc_freeze_interval_s=0.05)):
            gc.disable()  # only the server's freeze may collect it
            try:
                a, b = Node(), Node()
                a.other, b.other = b, a
                ids = {id(a), id(b)}
                del a, b
                for _ in range(200):
                    await asyncio.sleep(0.02)
                    if not any(id(o) in ids and isinstance(o, Node) for o in gc.get_objects()):
                        break
                else:
                    raise AssertionError("the cycle was not collected")
                # nor was it frozen: the permanent generation holds live objects only
                gc.unfreeze()
                assert not any(isinstance(o, Node) for o in gc.get_objects())
            finally:
                gc.enable()

    asyncio.run(scenario())


def test_gc_freeze_interval_is_a_setting() -> None:
    assert options.load([], {}).gc_freeze_interval_s == 1.0  # fenliu-server freezes
    assert options.load(["--gc-freeze-interval", "0"], {}).gc_freeze_interval_s == 0.0
    env = {"FENLIU_GC_FREEZE_INTERVAL_S": "30"}
    assert options.load([], env).gc_freeze_interval_s == 30.0
    with pytest.raises(ValueError, match="gc_freeze_interval_s"):
        Config(gc_freeze_interval_s=-1)


class Cyclic:
    """Half of a reference cycle, weakly referenceable to see when it is freed."""

    def __init__(self) -> None:
        self.other: Cyclic | None = None


def test_only_a_full_freeze_reclaims_cyclic_garbage_that_was_frozen() -> None:
    gc.disable()  # only the freezes below may collect
    try:
        a, b = Cyclic(), Cyclic()
        a.other, b.other = b, a
        alive = weakref.ref(a)
        freeze_heap()  # frozen while alive (an RPC in flight at a freeze, say)
        del a, b
        freeze_heap()  # an ordinary one does not walk the permanent generation
        assert alive() is not None
        freeze_heap(full=True)  # about hourly: a full collection
        assert alive() is None
        assert gc.get_freeze_count() > 0  # and the survivors are frozen again
    finally:
        gc.enable()


def test_while_freezing_no_automatic_full_collection_runs_and_the_thresholds_come_back() -> None:
    """Between two freezes CPython's own full collections would walk the survivors since
    the last freeze again and again (a growing world); the next freeze freezes them anyway.
    So while a server freezes, generation 2 never starts by itself: with 300,000 tracked
    survivors made between freezes (CPython's defaults start a full collection after
    ~70,000), the only generation-2 collection is the server's own full freeze at start.
    Stopped, the process's thresholds are as they were."""
    before = gc.get_threshold()
    full: list[int] = []

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(1)

    async def scenario() -> None:
        async with Server(Config(port=0, shards=1, gc_freeze_interval_s=3600)):
            assert gc.get_threshold()[:2] == before[:2]
            gc.callbacks.append(watch)
            try:
                kept = []
                for _ in range(30):
                    kept.append([[i] for i in range(10_000)])  # tracked, surviving
                    await asyncio.sleep(0)
            finally:
                gc.callbacks.remove(watch)
            assert len(kept) == 30
        assert gc.get_threshold() == before

    asyncio.run(scenario())
    assert full == []

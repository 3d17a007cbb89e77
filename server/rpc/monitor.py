"""The Monitor servicer: watch streams per shop and per agent, and the shop stats.

A watch stream starts with ``WatchStarted`` (the shop's seq now), then what the watcher
missed (when it passed ``after_seq``), then live events from the hub (``watch.py``). The
stream ends when the client goes away or the server stops (``Hub.close``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc.aio

from fenliu.client._pb import fenliu_pb2 as pb, fenliu_pb2_grpc as pb_grpc

from ..core import types as t
from ..node import Node
from . import convert
from .service import Context
from .status import abort_on_error
from .watch import Behind, Hub, Item

# A batched stream waits this long after each message before taking what came meanwhile
# (less once half its buffer is full): under load each message then carries the events of
# 20 ms, not of one loop iteration. A message costs the server a write whatever it
# carries: with 20 dashboards open, routing went from 0.64 to 0.80-0.91 of none (bench/README).
BATCH_LINGER_S = 0.02


class MonitorService(pb_grpc.MonitorServicer):
    """Events as server streams, and the shop stats."""

    def __init__(self, node: Node, hub: Hub) -> None:
        self._node = node
        self._hub = hub

    async def WatchShop(
        self, request: pb.WatchShopRequest, context: Context
    ) -> AsyncIterator[pb.WatchMessage]:
        after = request.after_seq if request.HasField("after_seq") else None
        async for message in self._watch(request.shop_id, None, after, request.batch, context):
            yield message

    async def WatchAgent(
        self, request: pb.WatchAgentRequest, context: Context
    ) -> AsyncIterator[pb.WatchMessage]:
        after = request.after_seq if request.HasField("after_seq") else None
        messages = self._watch(request.shop_id, request.agent_id, after, request.batch, context)
        async for message in messages:
            yield message

    async def GetShopStats(self, request: pb.GetShopStatsRequest, context: Context) -> pb.ShopStats:
        async with abort_on_error(context):
            query = convert.get_shop_stats(request, self._node.now())
            return convert.shop_stats(self._node.read(query))

    async def _watch(
        self,
        shop_id: str,
        agent_id: str | None,
        after: int | None,
        batch: bool,
        context: Context,
    ) -> AsyncIterator[pb.WatchMessage]:
        """One watch stream; ``agent_id`` None watches the whole shop; ``batch``: the
        events ready at one moment go as one message."""
        async with abort_on_error(context):
            head = self._node.watch_head(shop_id)  # NOT_FOUND
            if agent_id is not None:  # NOT_FOUND, or INVALID_ARGUMENT when malformed
                self._node.dispatcher.shard_for(shop_id).shop(shop_id).agent(agent_id)
        # No await between reading the head and subscribing: no event slips in between.
        watcher, missed = self._hub.subscribe(shop_id, agent_id or "", head, after)
        try:
            yield convert.watch_started(head)
            messages = _batched if batch else _each
            for message in messages(missed):
                yield message
            while items := await watcher.take():
                for message in messages(items):
                    yield message
                if batch:  # the next events after a quiet spell go at once; under load,
                    await watcher.linger(BATCH_LINGER_S)  # one message per linger
        finally:
            self._hub.unsubscribe(watcher)


def _each(items: list[Item]) -> Iterator[pb.WatchMessage]:
    return map(_message, items)


def _batched(items: list[Item]) -> Iterator[pb.WatchMessage]:
    """Runs of events as one message each; a FellBehind between them as its own."""
    events: list[t.Event] = []
    for item in items:
        if isinstance(item, Behind):
            if events:
                yield convert.watch_events(events)
                events = []
            yield _message(item)
        else:
            events.append(item)
    if events:
        yield convert.watch_events(events)


def _message(item: Item) -> pb.WatchMessage:
    if isinstance(item, Behind):
        return convert.fell_behind(item.seq, item.cause)
    assert isinstance(item, t.Event)
    return convert.watch_event(item)


def add_monitor(server: grpc.aio.Server, node: Node, hub: Hub) -> None:
    """Register the Monitor servicer on ``server``, fed by ``hub``."""
    pb_grpc.add_MonitorServicer_to_server(MonitorService(node, hub), server)

"""The write path, in-process over in-memory storage: nothing is seen before it is durable."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from fenliu.server.core import types as t
from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.errors import InvalidArgument, Unavailable
from fenliu.server.core.shard import Shard
from fenliu.server.node import Node
from fenliu.server.rpc.watch import UNDONE, Behind, Hub
from fenliu.server.storage.memory import MemoryStorage

from .core.test_invariants import dump

T0 = 1_700_000_000_000
SHARDS = 2
SHOP = "shop"


class Recorder:
    """An event sink and undo sink that remembers what it was told, in order."""

    def __init__(self) -> None:
        self.events: list[t.Event] = []
        self.undone: list[tuple[str, int]] = []

    def __call__(self, events: list[t.Event]) -> None:
        self.events.extend(events)


class Undo:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def undone(self, shop_id: str, seq: int) -> None:
        self.recorder.undone.append((shop_id, seq))


def node_with(storage: MemoryStorage | None) -> tuple[Node, Recorder]:
    recorder = Recorder()
    node = Node(Dispatcher(SHARDS), lambda: T0, recorder, undo=Undo(recorder))
    node.open(storage)
    return node, recorder


def register(agent: str, at: int = T0) -> t.RegisterAgent:
    return t.RegisterAgent(
        at=at, shop_id=SHOP, agent_id=agent, max_concurrent=5, status=t.Status.ONLINE
    )


def route(buyer: str, at: int = T0) -> t.Route:
    return t.Route(at=at, shop_id=SHOP, buyer_id=buyer, request_id=f"r-{buyer}")


def index_of(node: Node) -> int:
    return node.dispatcher.index_of(SHOP)


def test_events_are_published_only_once_their_change_is_durable() -> None:
    async def main() -> tuple[list[int], list[int]]:
        node, seen = node_with(MemoryStorage(SHARDS))
        await node.execute(register("a1"))
        pending = asyncio.ensure_future(node.execute(route("b1")))
        await asyncio.sleep(0)  # applied and staged; the append is scheduled, not done
        before = [e.seq for e in seen.events]
        await pending
        return before, [e.seq for e in seen.events]

    before, after = asyncio.run(main())
    assert before == [1]  # a1's status_changed; b1's assigned not yet
    assert after == [1, 2]


def test_a_refused_change_publishes_no_event_and_reissues_no_seen_seq() -> None:
    async def main() -> tuple[Recorder, object, object, Any]:
        storage = MemoryStorage(SHARDS)
        node, seen = node_with(storage)
        await node.execute(register("a1"))
        durable = dump(node.dispatcher)
        storage.logs[index_of(node)].failures = 1  # the next append fails: a full disk
        with pytest.raises(Unavailable, match="could not be made durable"):
            await node.execute(route("b-lost"))
        undone = dump(node.dispatcher)
        decision = await node.execute(route("b-next"))
        return seen, durable, undone, decision

    seen, durable, undone, decision = asyncio.run(main())
    assert undone == durable  # memory holds nothing the log does not
    assert [(e.seq, e.buyer_id) for e in seen.events] == [(1, ""), (2, "b-next")]
    assert seen.undone == [(SHOP, 1)]  # watchers were told to re-read after seq 1
    assert decision.session_id == "s1"  # b-lost's session id was never seen either


@pytest.mark.parametrize("batch", [False, True], ids=["calls", "batch"])
def test_what_was_staged_behind_a_failed_append_fails_with_it(batch: bool) -> None:
    """Three routes behind one append that fails, as three calls or as one batch (its
    items sharing a waiter): every one refused, nothing kept."""

    async def main() -> tuple[list[object], object, object]:
        storage = MemoryStorage(SHARDS)
        node, _ = node_with(storage)
        await node.execute(register("a1"))
        durable = dump(node.dispatcher)
        storage.logs[index_of(node)].failures = 1
        commands = [route(f"b{i}") for i in range(3)]
        if batch:
            outcomes = await node.execute_each(commands)
        else:
            outcomes = await asyncio.gather(
                *(node.execute(c) for c in commands), return_exceptions=True
            )
        return outcomes, durable, dump(node.dispatcher)

    outcomes, durable, after = asyncio.run(main())
    assert all(isinstance(o, Unavailable) for o in outcomes)  # one batch, refused whole
    assert after == durable


def test_a_watcher_starts_after_the_last_published_seq_not_the_last_applied() -> None:
    async def main() -> tuple[int, int]:
        node, _ = node_with(MemoryStorage(SHARDS))
        await node.execute(register("a1"))
        pending = asyncio.ensure_future(node.execute(route("b1")))
        await asyncio.sleep(0)
        head_in_flight = node.watch_head(SHOP)
        await pending
        return head_in_flight, node.watch_head(SHOP)

    assert asyncio.run(main()) == (1, 2)


class _Buggy(Shard):
    __slots__ = ()  # the layout of Shard: __class__ can be assigned, compiled too

    def apply(self, command: Any) -> Any:
        if getattr(command, "buyer_id", "") == "boom":
            self.now = command.at + 1  # half-way: something changed
            self.shops[SHOP].next_seq += 1
            raise RuntimeError("a bug")
        return super().apply(command)


def test_an_unexpected_exception_restores_the_shard_from_durable_state() -> None:
    async def main() -> tuple[object, object, object]:
        node, seen = node_with(MemoryStorage(SHARDS))
        await node.execute(register("a1"))
        durable = dump(node.dispatcher)
        node.dispatcher.shards[index_of(node)].__class__ = _Buggy
        with pytest.raises(RuntimeError, match="a bug"):
            await node.execute(route("boom"))
        restored = dump(node.dispatcher)
        decision = await node.execute(route("b1"))
        return durable, restored, decision

    durable, restored, decision = asyncio.run(main())
    assert restored == durable
    assert decision.session_id == "s1"


def test_a_batch_answers_each_item_and_publishes_only_once_durable() -> None:
    """``execute_each`` with storage: a refused item answers its error, the others their
    decisions once durable (one waiter a shard, however many items), in their order."""

    async def main() -> tuple[list[Any], list[int], list[Any], list[int]]:
        storage = MemoryStorage(SHARDS)
        node, seen = node_with(storage)
        await node.execute(register("a1"))
        nobody = t.Route(at=T0, shop_id=SHOP, buyer_id="", request_id="x")  # refused
        batch = [route("b1"), route("b2"), nobody, route("b3")]
        pending = asyncio.ensure_future(node.execute_each(batch))
        await asyncio.sleep(0)  # applied and staged, not yet appended
        before = [e.seq for e in seen.events]
        results = await pending
        return results, before, [e.seq for e in seen.events], [len(g.records) for g in storage.logs]

    results, before, after, records = asyncio.run(main())
    assert [getattr(r, "session_id", None) for r in results] == ["s1", "s2", None, "s3"]
    assert isinstance(results[2], InvalidArgument)
    assert before == [1]
    assert after == [1, 2, 3, 4]
    assert sorted(records) == [0, 4]  # the register and three routes


def test_a_batch_item_failing_half_way_undoes_its_shards_items_before_it_not_after() -> None:
    """The items staged before the failure are undone with the shard (Unavailable); the
    shard, restored at once, serves the items after it: their waiter is a new one, not
    the failed one of the items before."""

    async def main() -> tuple[list[Any], list[int]]:
        storage = MemoryStorage(SHARDS)
        node, _ = node_with(storage)
        await node.execute(register("a1"))
        node.dispatcher.shards[index_of(node)].__class__ = _Buggy
        results = await node.execute_each([route("b0"), route("boom"), route("b1")])
        return results, [len(g.records) for g in storage.logs]

    results, records = asyncio.run(main())
    assert isinstance(results[0], Unavailable)
    assert isinstance(results[1], RuntimeError)
    assert results[2].session_id == "s1"  # b0's s1 was undone: never seen
    assert sorted(records) == [0, 2]  # the register and b1's route


def test_ticks_go_only_to_shards_with_a_timer_due() -> None:
    async def main() -> tuple[list[t.Tick], list[t.Tick], list[int]]:
        storage = MemoryStorage(SHARDS)
        node = Node(Dispatcher(SHARDS), lambda: T0)
        node.open(storage)
        idle = node.due_ticks()  # nothing registered: no timer anywhere
        await node.execute(register("a1"))
        await node.execute(route("b1"))  # an accept timer, 10 minutes out
        node.now = lambda: T0 + 11 * t.MINUTE
        due = node.due_ticks()
        for tick in due:
            await node.execute(tick)
        return idle, due, [len(log.records) for log in storage.logs]

    idle, due, records = asyncio.run(main())
    assert idle == []
    assert due == [t.Tick(at=T0 + 11 * t.MINUTE, shard=Dispatcher(SHARDS).index_of(SHOP))]
    assert sorted(records) == [0, 3]  # register, route, one tick; the other shard nothing


def test_the_watch_hub_tells_watchers_of_an_undone_shop_to_reread() -> None:
    hub = Hub()
    watcher, _ = hub.subscribe(SHOP, "", head=4, after=None)
    other, _ = hub.subscribe("elsewhere", "", head=0, after=None)
    hub.undone(SHOP, 4)
    assert list(watcher.buffer) == [Behind(4, UNDONE)]
    assert list(other.buffer) == []


def _fields(command: t.Route) -> tuple[Any, ...]:
    """A Route as the wire codec hands a unary Route over: its first eight fields."""
    return msgspec.structs.astuple(command)[:8]


@pytest.mark.parametrize("stored", [False, True], ids=["memory", "journaled"])
def test_a_route_submitted_as_its_fields_is_the_route_submitted(stored: bool) -> None:
    """``submit_route`` (unary Route with the wire codec) against ``submit`` of the same
    Routes on a twin node: the same answers and refusals, events, state and (journaled)
    records; a refused one moves no clock."""
    routes = [
        route("b1"),
        route("b1", at=T0 + 5),  # a retry of r-b1: rule 0
        t.Route(at=T0 + 9, shop_id=SHOP, buyer_id="b1", request_id="r-b1-2"),  # rule 2
        t.Route(at=T0 + 20, shop_id=SHOP, buyer_id="b 2", request_id="r-x"),  # bad buyer_id
        t.Route(at=T0 + 30, shop_id="nowhere", buyer_id="b3", request_id="r-y"),  # no shop
        route("b4", at=T0 + 12),  # earlier than the refused ones: their times left no trace
    ]

    async def run(by_fields: bool) -> tuple[list[Any], list[t.Event], Any, list[list[bytes]]]:
        storage = MemoryStorage(SHARDS) if stored else None
        node, seen = node_with(storage)
        await node.execute(register("a1"))
        answers: list[Any] = []
        for command in routes:
            try:
                if by_fields:
                    result, durable = node.submit_route(_fields(command), command.at)
                else:
                    result, durable = node.submit(command)
                if durable is not None:
                    await durable
                answers.append(result)
            except Exception as exc:  # noqa: BLE001 - compared as an answer
                answers.append((type(exc).__name__, str(exc)))
        records = [list(log.replay(0)) for log in storage.logs] if storage else []
        return answers, seen.events, dump(node.dispatcher), records

    by_route, by_fields = asyncio.run(run(False)), asyncio.run(run(True))
    assert by_fields == by_route
    answers, events, _, records = by_fields
    assert [type(a).__name__ for a in answers] == ["Decision"] * 3 + ["tuple"] * 2 + ["Decision"]
    assert [a.reason for a in (answers[0], answers[1], answers[2])] == [
        t.Reason.STRATEGY, t.Reason.STRATEGY, t.Reason.OPEN_SESSION
    ]  # fmt: skip
    assert answers[3][0] == "InvalidArgument" and "buyer_id" in answers[3][1]
    assert answers[4][0] == "NotFound"
    assert [e.at for e in events if e.kind == "assigned"] == [T0, T0 + 12]
    assert sum(map(len, records)) == (5 if stored else 0)  # a1, then b1, its retry, b1, b4

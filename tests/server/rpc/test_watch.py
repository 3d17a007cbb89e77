"""The watch hub on its own: rings, resume, bounded buffers, idle rings."""

from __future__ import annotations

import asyncio

import pytest

from fenliu.server.core.types import Event
from fenliu.server.rpc.watch import NOT_KEPT, OVERFLOW, Behind, Hub


def events(shop: str, seqs: range, agent: str = "a") -> list[Event]:
    return [Event(kind="assigned", shop_id=shop, at=0, agent_id=agent, seq=n) for n in seqs]


def seqs(items: list[Event | Behind]) -> list[object]:
    return [i.seq if isinstance(i, Event) else i for i in items]


def test_unwatched_shops_keep_nothing() -> None:
    hub = Hub()
    hub.publish(events("s", range(1, 4)))
    assert hub.rings == {} and hub.watchers == {}


def test_resume_gets_what_was_missed_from_the_ring() -> None:
    hub = Hub(ring_size=4)
    first, missed = hub.subscribe("s", "", head=0, after=None)
    assert missed == []
    hub.publish(events("s", range(1, 6)))
    assert list(hub.rings["s"]) == events("s", range(2, 6))  # the ring keeps the last 4
    _, missed = hub.subscribe("s", "", head=5, after=2)
    assert seqs(missed) == [3, 4, 5]
    _, missed = hub.subscribe("s", "", head=5, after=1)
    assert seqs(missed) == [2, 3, 4, 5]
    _, missed = hub.subscribe("s", "", head=5, after=0)
    assert missed == [Behind(5, NOT_KEPT)]  # 1 is gone
    _, missed = hub.subscribe("s", "", head=5, after=5)
    assert missed == []  # nothing missed
    _, missed = hub.subscribe("s", "", head=5, after=9)
    assert missed == [Behind(5, NOT_KEPT)]  # a seq the shop never reached
    assert seqs(list(first.buffer)) == [1, 2, 3, 4, 5]


def test_a_first_watcher_cannot_resume_from_before_the_ring_existed() -> None:
    hub = Hub()
    _, missed = hub.subscribe("s", "", head=7, after=3)
    assert missed == [Behind(7, NOT_KEPT)]
    _, missed = hub.subscribe("t", "", head=7, after=7)
    assert missed == []  # e.g. after a restart with nothing new: nothing lost


def test_an_agent_watcher_gets_only_its_agents_events() -> None:
    hub = Hub()
    watcher, _ = hub.subscribe("s", "b", head=0, after=None)
    hub.publish([*events("s", range(1, 3), "a"), *events("s", range(3, 5), "b")])
    assert seqs(list(watcher.buffer)) == [3, 4]
    _, missed = hub.subscribe("s", "a", head=4, after=0)
    assert seqs(missed) == [1, 2]


def test_a_full_buffer_becomes_one_fell_behind_marker_and_stays_bounded() -> None:
    hub = Hub(buffer_size=3)
    watcher, _ = hub.subscribe("s", "", head=0, after=None)
    hub.publish(events("s", range(1, 4)))
    assert seqs(list(watcher.buffer)) == [1, 2, 3]
    hub.publish(events("s", range(4, 6)))
    assert seqs(list(watcher.buffer)) == [Behind(4, OVERFLOW), 5]
    hub.publish(events("s", range(6, 1000)))
    assert len(watcher.buffer) <= 3 and watcher.overflows > 1
    first = watcher.buffer[0]
    assert isinstance(first, Behind)
    assert seqs(list(watcher.buffer))[1:] == list(range(first.seq + 1, 1000))


def test_idle_rings_are_dropped_oldest_first() -> None:
    hub = Hub(idle_rings=1)
    a, _ = hub.subscribe("a", "", head=0, after=None)
    b, _ = hub.subscribe("b", "", head=0, after=None)
    hub.unsubscribe(a)
    assert set(hub.rings) == {"a", "b"}  # a is kept for a reconnect
    hub.unsubscribe(b)
    assert set(hub.rings) == {"b"}
    hub.subscribe("b", "", head=0, after=None)  # watched again: no longer idle
    hub.unsubscribe(b)  # a second unsubscribe of the same watcher changes nothing
    assert set(hub.rings) == {"b"}


def test_take_waits_for_items_and_returns_nothing_once_closed() -> None:
    async def run() -> None:
        hub = Hub()
        watcher, _ = hub.subscribe("s", "", head=0, after=None)
        waiting = asyncio.create_task(watcher.take())
        await asyncio.sleep(0)
        assert not waiting.done()
        hub.publish(events("s", range(1, 3)))
        assert seqs(await waiting) == [1, 2]
        waiting = asyncio.create_task(watcher.take())
        await asyncio.sleep(0)
        hub.close()
        assert await waiting == []
        late, _ = hub.subscribe("s", "", head=2, after=None)
        assert await late.take() == []  # a stream opened while stopping ends at once

    asyncio.run(run())


def test_sizes_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Hub(ring_size=0)


def test_a_linger_ends_early_once_the_buffer_is_half_full() -> None:
    async def main() -> tuple[bool, bool, list[object]]:
        hub = Hub(buffer_size=8)
        watcher, _ = hub.subscribe("s", "", head=0, after=None)
        lingering = asyncio.ensure_future(watcher.linger(60.0))
        hub.publish(events("s", range(1, 4)))  # 3 of 8: not yet
        await asyncio.sleep(0.05)
        early = lingering.done()
        hub.publish(events("s", range(4, 5)))  # 4 of 8: half full
        await asyncio.wait_for(lingering, 30.0)
        items = await watcher.take()
        again = asyncio.ensure_future(watcher.linger(60.0))  # an empty buffer lingers again
        await asyncio.sleep(0.05)
        still = not again.done()
        watcher.close()  # and a close ends it
        await asyncio.wait_for(again, 30.0)
        return early, still, seqs(items)

    early, still, taken = asyncio.run(main())
    assert not early and still
    assert taken == [1, 2, 3, 4]


def test_a_replayed_shard_lets_watchers_resume_after_their_last_seq() -> None:
    """Cluster mode: a new owner's replay keeps each shop's events (idle rings, bounded),
    so a watcher from the old owner resumes with no gap and no duplicate."""
    hub = Hub(ring_size=4, idle_rings=1)
    hub.replayed(events("s", range(1, 7)) + events("t", range(1, 3)))
    assert list(hub.rings) == ["t"]  # one idle ring kept: the newest
    hub.replayed(events("s", range(1, 7)))
    _, missed = hub.subscribe("s", "", head=6, after=3)
    assert seqs(missed) == [4, 5, 6]
    _, missed = hub.subscribe("s", "", head=6, after=1)
    assert missed == [Behind(6, NOT_KEPT)]  # older than the ring keeps: re-read


def test_a_read_back_delivers_only_what_its_watchers_never_got() -> None:
    hub = Hub()
    watcher, _ = hub.subscribe("s", "", head=0, after=None)
    hub.publish(events("s", range(1, 3)))
    hub.replayed(events("s", range(1, 5)))  # 3 and 4 were durable, never published
    assert seqs(list(watcher.buffer)) == [1, 2, 3, 4]
    hub.replayed(events("s", range(7, 9)))  # a gap: the ring was stale
    assert seqs(list(watcher.buffer))[4:] == [Behind(6, NOT_KEPT), 7, 8]
    assert [e.seq for e in hub.rings["s"]] == [7, 8]


def test_forgotten_shops_end_their_watch_streams() -> None:
    hub = Hub()
    watcher, _ = hub.subscribe("s", "", head=0, after=None)
    hub.subscribe("t", "", head=0, after=None)
    hub.forget(["s"])
    assert watcher.closed and "s" not in hub.rings and list(hub.watchers) == ["t"]

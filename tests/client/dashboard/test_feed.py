"""The feed's SSE messages: a lone event goes out at once, a burst is coalesced into one
message per ``FLUSH_DELAY`` (each message costs a write per open page), every event once
and in order; a page's writer sends what queued up meanwhile in one write.

Each case runs in a process of its own: importing the dashboard here would add it to the
SDK package's names (``test_client``'s check of ``__all__`` runs in this process)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fenliu.client import AsyncClient, Event, EventKind, Reason

if TYPE_CHECKING:
    from fenliu.client.dashboard._feed import Subscriber

ROOT = Path(__file__).resolve().parents[3]


def in_a_process(case: str) -> Any:
    """``case()`` of this module run by another interpreter; what it returned (JSON)."""
    code = f"import json, tests.client.dashboard.test_feed as t; print(json.dumps(t.{case}()))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def event(seq: int) -> Event:
    return Event(
        seq=seq, kind=EventKind.ASSIGNED, shop_id="shop1", at_ms=1_700_000_000_000 + seq,
        agent_id="a1", session_id=f"s{seq}", buyer_id=f"b{seq}", reason=Reason.STRATEGY,
        status=None,
    )  # fmt: skip


def events_in(sub: Subscriber) -> list[list[int]]:
    """The seqs of every ``events`` message queued for the page, message by message."""
    found = []
    while not sub.queue.empty():
        message = sub.queue.get_nowait()
        assert message is not None
        kind, data = message.decode().split("\n")[-4:-2]
        if kind == "event: events":
            found.append([e["seq"] for e in json.loads(data.removeprefix("data: "))])
    return found


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def lone_and_burst() -> list[list[list[int]]]:
    from fenliu.client.dashboard import _feed

    # Long enough that no stall of a loaded machine reaches them: the case waits on
    # nothing but the loop's own turns.
    _feed.FLUSH_DELAY = 60.0
    _feed.QUIET = 30.0

    async def main() -> list[list[list[int]]]:
        fenliu = AsyncClient("127.0.0.1:1")  # never called: the feed is fed by hand
        try:
            feed = _feed.ShopFeed(fenliu, "shop1")
            sub = feed.subscribe(None)
            seen = [events_in(sub)]
            feed._on_item(event(1))  # after a quiet spell (none before): at once
            await turns()
            seen.append(events_in(sub))
            feed._on_item(event(2))  # a burst: held for FLUSH_DELAY
            feed._on_item(event(3))
            await turns()
            seen.append(events_in(sub))
            feed._last_event -= 31.0  # as if 31 s passed without an event
            feed._on_item(event(4))  # after a quiet spell again: at once, with 2 and 3
            await turns()
            seen.append(events_in(sub))
            return seen
        finally:
            await fenliu.close()

    return asyncio.run(main())


def test_a_lone_event_goes_at_once_and_a_burst_waits_for_the_flush_delay() -> None:
    hello, lone, burst, quiet = in_a_process("lone_and_burst")
    assert hello == []
    assert lone == [[1]]
    assert burst == []
    assert quiet == [[2, 3, 4]]


def drained() -> list[Any]:
    from fenliu.client.dashboard._app import _drain

    async def main() -> list[Any]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        for message in (b"b", b"c"):
            queue.put_nowait(message)
        chunks, end = _drain(queue, b"a")
        queue.put_nowait(b"e")
        queue.put_nowait(None)
        queue.put_nowait(b"after the end")
        last, closed = _drain(queue, b"d")
        return [[c.decode() for c in chunks], end, [c.decode() for c in last], closed]

    return asyncio.run(main())


def test_a_page_writer_takes_everything_queued_in_one_write() -> None:
    chunks, end, last, closed = in_a_process("drained")
    assert (chunks, end) == (["a", "b", "c"], False)
    assert (last, closed) == (["d", "e"], True)


def wire_and_sdk() -> list[Any]:
    from fenliu.client._pb import fenliu_pb2 as pb
    from fenliu.client._types import Event as SdkEvent
    from fenliu.client.dashboard._feed import event_bytes, event_json

    out = []
    for status in (0, 3):  # no status (the wire's 0), then SUSPENDED
        wire = pb.Event(
            seq=7, kind=6 if status else 1, shop_id="shop1", at_ms=1_700_000_000_007,
            agent_id="a1", session_id="s7", buyer_id="买家7", reason=5, status=status,
        )  # fmt: skip
        sdk = SdkEvent.from_pb(wire)
        out.append([json.loads(event_bytes(wire)), json.loads(event_bytes(sdk)), event_json(sdk)])
    return out


def test_an_event_read_off_the_wire_gives_the_page_what_an_sdk_event_gives() -> None:
    for wire, sdk, reference in in_a_process("wire_and_sdk"):
        assert wire == sdk == reference
    (plain, *_), (changed, *_) = in_a_process("wire_and_sdk")
    assert plain["kind"] == "assigned" and "status" not in plain
    assert plain["reason"] == "addressed" and plain["buyer"] == "买家7"
    assert changed["kind"] == "status_changed" and changed["status"] == "suspended"


def state_with_events() -> list[list[str]]:
    from fenliu.client.dashboard import _feed

    _feed.FLUSH_DELAY = 60.0
    _feed.QUIET = 30.0

    def kinds(sub: Subscriber) -> list[list[str]]:
        found = []  # per queued message (one put), the SSE kinds it carries
        while not sub.queue.empty():
            message = sub.queue.get_nowait()
            assert message is not None
            found.append([ln[7:] for ln in message.decode().split("\n") if ln[:7] == "event: "])
        return found

    async def main() -> list[list[str]]:
        fenliu = AsyncClient("127.0.0.1:1")  # never called: the feed is fed by hand
        try:
            feed = _feed.ShopFeed(fenliu, "shop1")
            sub = feed.subscribe(None)
            kinds(sub)
            feed._on_item(event(1))  # at once
            await turns()
            feed._on_item(event(2))  # held for the flush
            await turns()
            # A re-read while events wait for their flush: it goes with them, after them.
            feed.state = _feed.sse("state", {"seq": 2})
            feed._state_due = True
            assert feed._flush_handle is not None
            feed._flush_handle.cancel()
            feed._flush()
            return kinds(sub)
        finally:
            await fenliu.close()

    return asyncio.run(main())


def test_a_state_re_read_goes_to_a_page_in_one_piece_with_the_events_of_its_flush() -> None:
    assert in_a_process("state_with_events") == [["events"], ["events", "state"]]


def batch_and_one_by_one() -> list[Any]:
    from fenliu.client._pb import fenliu_pb2 as pb
    from fenliu.client._types import watch_items
    from fenliu.client.dashboard import _feed

    message = pb.WatchMessage()
    for seq in range(1, 6):
        message.events.events.add(
            seq=seq, kind=1 + seq % 2, shop_id="shop1", at_ms=1_700_000_000_000 + seq,
            agent_id="a1", session_id=f"s{seq}", buyer_id=f"b{seq}", reason=seq % 3,
        )  # fmt: skip
    wire = pb.WatchMessage.FromString(message.SerializeToString())

    async def main() -> list[Any]:
        fenliu = AsyncClient("127.0.0.1:1")  # never called: the feeds are fed by hand
        try:
            out = []
            for items in (_feed._wire_items(wire), watch_items(wire)):
                feed = _feed.ShopFeed(fenliu, "shop1")
                sub = feed.subscribe(None)
                sub.queue.get_nowait()  # hello
                for item in items:
                    feed._on_item(item)
                await turns()
                out.append([len(items), feed.last_seq, events_in(sub), list(feed.ring_seqs)])
            return out
        finally:
            await fenliu.close()

    return asyncio.run(main())


def test_a_watch_message_read_as_one_batch_gives_the_pages_what_its_events_one_by_one_do() -> None:
    (n_wire, *wire), (n_sdk, *sdk) = in_a_process("batch_and_one_by_one")
    assert (n_wire, n_sdk) == (1, 5)  # one item for the batch, five SDK Events
    assert wire == sdk == [5, [[1, 2, 3, 4, 5]], [1, 2, 3, 4, 5]]

"""Resuming: a page (or any SSE client) that reconnects gets what it missed once, and the
page recovers when fenliu restarts, re-reading when fenliu says it fell behind."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from fenliu.client import Client, Status

from .conftest import Process, dashboard, fenliu_server

pytestmark = pytest.mark.slow


class Sse:
    """A plain HTTP client of the dashboard's event stream (one message at a time)."""

    def __init__(self, port: int, shop: str, last_event_id: int | None = None) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self.connection.request("GET", f"/shops/{shop}/events", headers=headers)
        self.response = self.connection.getresponse()
        assert self.response.status == 200
        assert self.response.getheader("Content-Type") == "text/event-stream"

    def next(self) -> tuple[str, int | None, Any]:
        """The next message: (event, id or None, data)."""
        kind, event_id, data = "message", None, None
        while True:
            line = self.response.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "" and data is not None:
                return kind, event_id, data

    def until(self, kind: str) -> Iterator[tuple[str, int | None, Any]]:
        """Messages up to and including the first of ``kind``."""
        while True:
            message = self.next()
            yield message
            if message[0] == kind:
                return

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def streams() -> Iterator[list[Sse]]:
    """Opened Sse clients go in this list; all are closed after the test, failed or not."""
    opened: list[Sse] = []
    yield opened
    for stream in opened:
        stream.close()


def event_seqs(messages: list[tuple[str, int | None, Any]]) -> list[int]:
    return [e["seq"] for kind, _, data in messages if kind == "events" for e in data]


def test_an_sse_client_resumes_after_its_last_event_id_without_gap_or_duplicate(
    board: Process, fenliu: Client, shop: str, streams: list[Sse]
) -> None:
    fenliu.register_agent(shop, "alice", max_concurrent=50, status=Status.ONLINE)
    first = Sse(board.port, shop)
    streams.append(first)
    opening = list(first.until("state"))
    assert opening[0][0] == "hello"
    last = opening[0][1]
    assert last is not None
    for n in range(3):
        fenliu.route(shop, f"b{n}")
    seen: list[int] = []
    while len(seen) < 3:
        kind, event_id, data = first.next()
        if kind == "events":
            seen += [e["seq"] for e in data]
            assert event_id == data[-1]["seq"]  # the SSE id is the last seq it carries
            last = event_id
    first.close()
    assert seen == list(range(seen[0], seen[0] + 3))
    # Three more while it is away
    for n in range(3, 6):
        fenliu.route(shop, f"b{n}")
    again = Sse(board.port, shop, last_event_id=last)
    streams.append(again)
    messages = list(again.until("state"))
    while not event_seqs(messages) or max(event_seqs(messages)) < last + 3:
        messages.append(again.next())  # an event not yet flushed comes with the next batch
    events = [e for kind, _, data in messages if kind == "events" for e in data]
    assert [e["seq"] for e in events] == [last + 1, last + 2, last + 3]
    assert [e["buyer"] for e in events] == ["b3", "b4", "b5"]
    assert not [m for m in messages if m[0] in ("reset", "hello")]
    again.close()
    # From further back than the dashboard keeps: told so (reset), then the state
    old = Sse(board.port, shop, last_event_id=0)
    streams.append(old)
    kinds = [m[0] for m in old.until("state")]
    old.close()
    assert kinds[0] == "reset" and "events" not in kinds


def test_the_page_resumes_across_a_dashboard_restart(
    page: Page, target: str, fenliu: Client, shop: str
) -> None:
    board = dashboard(target).start()
    port = board.port
    try:
        fenliu.register_agent(shop, "alice", max_concurrent=50, status=Status.ONLINE)
        page.goto(f"http://127.0.0.1:{port}/shops/{shop}")
        expect(page.locator("#link")).to_have_attribute("data-state", "live")
        for n in range(3):
            fenliu.route(shop, f"before{n}")
        expect(page.locator("#log li[data-kind=assigned]")).to_have_count(3)
        # When the dashboard restarts, with events in between
        board.stop()
        expect(page.locator("#link")).to_have_attribute("data-state", "down")
        for n in range(3):
            fenliu.route(shop, f"between{n}")
        board = dashboard(target, port=port).start()
        # Then the page reconnects by itself (Last-Event-ID) and shows each event once
        expect(page.locator("#log li[data-kind=assigned]")).to_have_count(6, timeout=10_000)
        expect(page.locator("#link")).to_have_attribute("data-state", "live")
        fenliu.route(shop, "after")
        expect(page.locator("#log li[data-kind=assigned]", has_text="after")).to_be_visible()
        seqs = page.evaluate("window.fenliu.seqs")
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
        expect(page.locator("#log li.note")).to_have_count(0)
    finally:
        board.stop()


def test_the_page_recovers_after_fenliu_restarts(page: Page, tmp_path: Path, shop: str) -> None:
    data = tmp_path / "data"
    server = fenliu_server(data).start()
    port = server.port
    board = dashboard(f"127.0.0.1:{port}").start()
    try:
        with Client(f"127.0.0.1:{port}") as own:
            own.register_agent(shop, "alice", max_concurrent=5, status=Status.ONLINE)
            own.route(shop, "b1")
        page.goto(f"http://127.0.0.1:{board.port}/shops/{shop}")
        load = page.locator("#team tr[data-agent=alice] [data-c=load]")
        expect(load).to_have_text("1 / 5")
        # fenliu stops: the page says so
        server.stop()
        expect(page.locator("#link")).to_have_attribute("data-state", "down", timeout=10_000)
        expect(page.locator("#link")).to_contain_text("fenliu unreachable")
        # It comes back on the same data directory: live again, state kept, events resume
        server = fenliu_server(data, port=port).start()
        expect(page.locator("#link")).to_have_attribute("data-state", "live", timeout=15_000)
        with Client(f"127.0.0.1:{port}") as own:
            own.route(shop, "b2")
        expect(page.locator("#log li[data-kind=assigned]", has_text="b2")).to_be_visible()
        expect(load).to_have_text("2 / 5")
        expect(page.locator("#log li.note")).to_have_count(0)  # nothing was lost
        seqs = page.evaluate("window.fenliu.seqs")
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
        # Now events happen while the dashboard cannot see them (fenliu served elsewhere,
        # unwatched, so it keeps none of them): on reconnect fenliu says FellBehind, and
        # the page notes it and shows the state re-read
        server.stop()
        elsewhere = fenliu_server(data).start()
        with Client(f"127.0.0.1:{elsewhere.port}") as own:
            own.route(shop, "b3")
        elsewhere.stop()
        server = fenliu_server(data, port=port).start()
        note = page.locator("#log li.note", has_text="fell behind")
        expect(note).to_be_visible(timeout=15_000)
        expect(load).to_have_text("3 / 5")
        with Client(f"127.0.0.1:{port}") as own:
            own.route(shop, "b4")
        expect(page.locator("#log li[data-kind=assigned]", has_text="b4")).to_be_visible()
        expect(page.locator("#log li[data-kind=assigned]", has_text="b3")).to_have_count(0)
    finally:
        board.stop()
        server.stop()


def test_a_page_opened_while_fenliu_is_down_goes_live_when_it_is_back(
    page: Page, tmp_path: Path, shop: str
) -> None:
    data = tmp_path / "data"
    server = fenliu_server(data).start()
    port = server.port
    with Client(f"127.0.0.1:{port}") as own:
        own.register_agent(shop, "alice", max_concurrent=5, status=Status.ONLINE)
    server.stop()
    board = dashboard(f"127.0.0.1:{port}").start()
    try:
        page.goto(f"http://127.0.0.1:{board.port}/shops/{shop}")
        expect(page.locator("#notice")).to_contain_text("Watching the shop refused: UNAVAILABLE")
        expect(page.locator("#link")).to_have_text("fenliu unreachable, retrying…")
        server = fenliu_server(data, port=port).start()
        expect(page.locator("#link")).to_have_attribute("data-state", "live", timeout=15_000)
        expect(page.locator("#team tr[data-agent=alice]")).to_be_visible()
    finally:
        board.stop()
        server.stop()

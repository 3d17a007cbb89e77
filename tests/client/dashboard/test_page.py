"""The dashboard page in real headless Chromium, against a real fenliu-server process and
the real fenliu-dashboard process: live updates, filters and sorts, supervisor actions."""

from __future__ import annotations

import datetime
import re
import time
import zoneinfo

import pytest
from playwright.sync_api import Page, expect

from fenliu.client import Client, QueueSort, Role, SessionState, Status

from .conftest import Process

pytestmark = pytest.mark.slow


def open_page(page: Page, board: Process, shop: str) -> None:
    page.goto(f"http://127.0.0.1:{board.port}/shops/{shop}")
    expect(page.locator("#shop")).to_have_text(shop, timeout=10_000)
    expect(page.locator("#link")).to_have_attribute("data-state", "live")


def agent_row(page: Page, agent: str) -> object:
    return page.locator(f"#team tr[data-agent='{agent}']")


def ticks(page: Page, selector: str) -> None:
    """The element's "Ns" goes up by 2 while the page stays open (no reload)."""
    script = "([sel, n]) => parseInt(document.querySelector(sel).textContent) >= n + 2"
    start = int(page.locator(selector).inner_text().rstrip("s"))
    page.wait_for_function(script, arg=[selector, start], timeout=6_000)


def queue_buyers(page: Page, table: str = "#queue") -> list[str]:
    return page.locator(f"{table} tbody tr[data-buyer]").evaluate_all(
        "rows => rows.map(r => r.dataset.buyer)"
    )


def test_a_route_appears_on_the_page_within_a_second(
    page: Page, board: Process, fenliu: Client, shop: str
) -> None:
    # Given a shop with one agent (in New York), and its page open
    fenliu.set_shop_policy(shop, time_zone="America/New_York")
    fenliu.register_agent(shop, "alice", max_concurrent=2, status=Status.ONLINE)
    open_page(page, board, shop)
    expect(page.locator("#zone")).to_have_text("America/New_York")
    expect(agent_row(page, "alice").locator("[data-c=load]")).to_have_text("0 / 2")
    # When a buyer is routed
    decision = fenliu.route(shop, "buyer-r1")
    assert decision.agent_id == "alice"
    # Then, without a reload, the event and the agent's new load show within 1 s
    event = page.locator("#log li[data-kind=assigned]", has_text="buyer-r1")
    expect(event).to_be_visible(timeout=1_000)
    expect(event).to_contain_text("alice")
    expect(agent_row(page, "alice").locator("[data-c=load]")).to_have_text("1 / 2", timeout=1_000)
    expect(agent_row(page, "alice").locator("[data-c=new]")).to_have_text("1")
    expect(page.locator("#t-today")).to_contain_text("1")
    # Its time is the shop's
    created = fenliu.get_session(shop, decision.session_id).created_at_ms / 1000
    local = datetime.datetime.fromtimestamp(created, zoneinfo.ZoneInfo("America/New_York"))
    expect(event.locator(".t")).to_have_text(local.strftime("%H:%M:%S"))


def test_a_status_change_shows_with_its_time_and_the_break_banner(
    page: Page, board: Process, fenliu: Client, shop: str
) -> None:
    fenliu.set_shop_policy(shop, route_when_all_suspended=False)
    fenliu.register_agent(shop, "alice", max_concurrent=1, status=Status.ONLINE)
    fenliu.register_agent(shop, "bob", max_concurrent=1, status=Status.ONLINE)
    open_page(page, board, shop)
    expect(page.locator("#banner")).to_be_hidden()
    # When alice goes on a break
    fenliu.set_status(shop, "alice", Status.SUSPENDED)
    row = agent_row(page, "alice")
    expect(row.locator("[data-c=status]")).to_have_text("suspended", timeout=2_000)
    expect(page.locator("#log li[data-kind=status_changed]", has_text="alice")).to_be_visible()
    # Its time in status is known from the event (no "at least" sign) and ticks
    since = row.locator("[data-c=since]")
    expect(since).to_have_text(re.compile(r"^\d+s$"))
    ticks(page, "#team tr[data-agent='alice'] [data-c=since]")
    # And when a buyer then waits, the banner names the agent on a break
    fenliu.route(shop, "b1")  # bob takes it: now full
    queued = fenliu.route(shop, "b2")
    assert queued.state == SessionState.QUEUED
    banner = page.locator("#banner")
    expect(banner).to_be_visible(timeout=2_000)
    expect(banner).to_contain_text("1 buyer waiting")
    expect(banner).to_contain_text("on a break: alice")
    # Its button brings alice back, which takes the buyer; the banner goes
    banner.locator("button[data-agent=alice]").click()
    expect(banner).to_be_hidden(timeout=2_000)
    assert fenliu.get_session(shop, queued.session_id).agent_id == "alice"
    expect(row.locator("[data-c=status]")).to_have_text("online")


def test_a_queue_entry_shows_with_its_wait_ticking(
    page: Page, board: Process, fenliu: Client, shop: str
) -> None:
    fenliu.register_agent(shop, "alice", max_concurrent=1, groups=["presale"], status=Status.ONLINE)
    fenliu.route(shop, "first")
    open_page(page, board, shop)
    decision = fenliu.route(shop, "waiting", group="presale", channel="app")
    assert decision.state == SessionState.QUEUED
    row = page.locator("#queue tbody tr[data-buyer=waiting]")
    expect(row).to_be_visible(timeout=1_000)
    expect(row.locator("[data-c=group]")).to_have_text("presale")
    expect(row.locator("[data-c=channel]")).to_have_text("app")
    expect(row.locator("[data-c=pos]")).to_have_text("1")
    expect(page.locator("#t-queue")).to_have_text("1")
    expect(row.locator("[data-c=wait]")).to_have_text(re.compile(r"^\d+s$"))
    ticks(page, "#queue tbody tr[data-buyer=waiting] [data-c=wait]")


def test_a_pick_from_the_page_assigns_in_fenliu(
    page: Page, board: Process, fenliu: Client, shop: str
) -> None:
    # Given a full agent, a queued buyer, a left message (the queue holds one), and carol
    # on a break, so that nothing reaches her by itself
    fenliu.set_shop_policy(shop, auto_assign_left_messages=False, queue_limit=1)
    fenliu.register_agent(shop, "alice", max_concurrent=1, status=Status.ONLINE)
    fenliu.register_agent(shop, "carol", max_concurrent=3, status=Status.SUSPENDED)
    fenliu.route(shop, "b0")
    queued = fenliu.route(shop, "b1")
    assert queued.state == SessionState.QUEUED
    left = fenliu.route(shop, "b2")
    assert left.state == SessionState.LEFT_MESSAGE
    open_page(page, board, shop)
    # When the supervisor picks the queued buyer for carol
    page.select_option("#pick-agent", "carol")
    page.locator("#queue tbody tr[data-buyer=b1] [data-c=pick]").click()
    expect(page.locator("#notice")).to_contain_text("carol picked buyer b1")
    # Then fenliu assigned it to carol, and the page shows it
    session = fenliu.get_session(shop, queued.session_id)
    assert (session.agent_id, session.state) == ("carol", SessionState.ACTIVE)
    expect(page.locator("#queue tbody tr[data-buyer=b1]")).to_have_count(0, timeout=2_000)
    expect(agent_row(page, "carol").locator("[data-c=load]")).to_have_text("1 / 3")
    # And a left message too
    page.locator("#left tbody tr[data-buyer=b2] [data-c=pick]").click()
    expect(page.locator("#notice")).to_contain_text("carol picked buyer b2")
    assert fenliu.get_session(shop, left.session_id).agent_id == "carol"
    expect(page.locator("#left tbody tr[data-buyer=b2]")).to_have_count(0, timeout=2_000)


def test_filters_and_sorts_of_the_queue(
    page: Page, board: Process, fenliu: Client, shop: str
) -> None:
    fenliu.set_shop_policy(shop, priority_crowds=["vip"], priority_may_exceed_capacity=False)
    groups = ["presale", "aftersale"]
    fenliu.register_agent(shop, "alice", max_concurrent=1, groups=groups, status=Status.ONLINE)
    fenliu.route(shop, "first")
    # Given four waiting buyers, arriving in this order (the vip one last)
    for buyer, group, channel in [
        ("q1", "presale", "app"),
        ("q2", "aftersale", "web"),
        ("q3", "presale", "web"),
    ]:
        fenliu.route(shop, buyer, group=group, channel=channel)
        time.sleep(0.02)  # distinct arrival milliseconds
    fenliu.route(shop, "vip1", group="aftersale", channel="app", crowds=["vip"])
    listed = fenliu.list_queue(shop, sort=QueueSort.QUEUE_ORDER)
    assert [e.buyer_id for e in listed.entries] == ["vip1", "q1", "q2", "q3"]
    open_page(page, board, shop)
    expect(page.locator("#queue tbody tr[data-buyer]")).to_have_count(4)
    assert queue_buyers(page) == ["vip1", "q1", "q2", "q3"]  # fenliu's queue order
    expect(page.locator("#queue tbody tr[data-buyer=vip1] [data-c=priority]")).to_have_text(
        "priority"
    )
    # Sorts: longest wait first, newest arrival first
    page.select_option("#f-sort", "wait")
    assert queue_buyers(page) == ["q1", "q2", "q3", "vip1"]
    page.select_option("#f-sort", "arrival")
    assert queue_buyers(page) == ["vip1", "q3", "q2", "q1"]
    # Filters: group, channel, priority, and together
    page.select_option("#f-group", "presale")
    assert queue_buyers(page) == ["q3", "q1"]
    page.select_option("#f-channel", "web")
    assert queue_buyers(page) == ["q3"]
    expect(page.locator("#queue-count")).to_have_text("1 shown of 4")
    page.select_option("#f-group", "")
    assert queue_buyers(page) == ["q3", "q2"]
    page.select_option("#f-channel", "")
    page.select_option("#f-priority", "yes")
    assert queue_buyers(page) == ["vip1"]
    page.select_option("#f-priority", "no")
    page.select_option("#f-sort", "order")
    assert queue_buyers(page) == ["q1", "q2", "q3"]
    # A filter holds while the queue changes live
    fenliu.route(shop, "q4", group="presale", channel="web")
    expect(page.locator("#queue tbody tr[data-buyer=q4]")).to_be_visible(timeout=2_000)
    assert queue_buyers(page) == ["q1", "q2", "q3", "q4"]


def test_status_max_and_end_from_the_page(
    page: Page, board: Process, fenliu: Client, shop: str
) -> None:
    fenliu.register_agent(shop, "alice", role=Role.MAIN, max_concurrent=2, groups=["presale"],
                          status=Status.ONLINE)  # fmt: skip
    one = fenliu.route(shop, "b1")
    two = fenliu.route(shop, "b2")
    open_page(page, board, shop)
    row = agent_row(page, "alice")
    # Set status
    row.locator("[data-c=set-status]").select_option("suspended")
    expect(page.locator("#notice")).to_contain_text("alice is now suspended")
    assert fenliu.list_team(shop)[0].status == Status.SUSPENDED
    expect(row.locator("[data-c=status]")).to_have_text("suspended", timeout=2_000)
    # Set max reception: role and groups are kept
    row.locator("[data-c=max-input]").fill("5")
    row.locator("[data-c=set-max]").click()
    expect(page.locator("#notice")).to_contain_text("alice now takes up to 5")
    agent = fenliu.list_team(shop)[0]
    assert (agent.max_concurrent, agent.role, agent.groups) == (5, Role.MAIN, ("presale",))
    expect(row.locator("[data-c=load]")).to_have_text("2 / 5", timeout=2_000)
    # End sessions: from the agent's session list
    row.locator("[data-c=sessions]").click()
    panel = page.locator("#sessions")
    expect(panel.locator(f"tr[data-session='{one.session_id}']")).to_be_visible()
    panel.locator(f"input[value='{one.session_id}']").check()
    panel.locator("#end-selected").click()
    expect(page.locator("#notice")).to_contain_text("(1 ended)")
    open_sessions = [s.session_id for s in fenliu.list_agent_sessions(shop, "alice")]
    assert open_sessions == [two.session_id]
    # fenliu answers an ended session ENDED (issue 15), and the page drops it
    assert fenliu.get_session(shop, one.session_id).state == SessionState.ENDED
    expect(panel.locator(f"tr[data-session='{one.session_id}']")).to_have_count(0)
    expect(row.locator("[data-c=load]")).to_have_text("1 / 5", timeout=2_000)


def test_a_refused_action_shows_fenliu_error(
    page: Page, board: Process, fenliu: Client, shop: str
) -> None:
    fenliu.register_agent(shop, "alice", max_concurrent=1, status=Status.ONLINE)
    fenliu.register_agent(shop, "off", max_concurrent=1, status=Status.OFFLINE)
    fenliu.route(shop, "b0")
    queued = fenliu.route(shop, "b1")
    open_page(page, board, shop)
    # A pick for an OFFLINE agent: FAILED_PRECONDITION, and nothing changes
    page.select_option("#pick-agent", "off")
    page.locator("#queue tbody tr[data-buyer=b1] [data-c=pick]").click()
    notice = page.locator("#notice")
    expect(notice).to_have_class("error")
    expect(notice).to_contain_text("Pick refused: FAILED_PRECONDITION AGENT_OFFLINE")
    assert fenliu.get_session(shop, queued.session_id).state == SessionState.QUEUED
    # A max out of range: INVALID_ARGUMENT naming the field
    row = agent_row(page, "alice")
    row.locator("[data-c=max-input]").fill("20000")
    row.locator("[data-c=set-max]").click()
    expect(notice).to_contain_text("Set max reception refused: INVALID_ARGUMENT")
    expect(notice).to_contain_text("field max_concurrent")
    assert fenliu.list_team(shop)[0].max_concurrent == 1

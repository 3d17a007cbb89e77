"""Idempotency keys through the real SDK and a real server (issue 11).

Every mutating call is made once with a key of the test's own, then again with the same
key: the same answer (a result, or the same error), and the change is applied once. Each
call is chosen so that applying it twice would show: a registration later removed, a
status or a max later changed back, a session ended, picked, left or transferred (a plain
second call would be refused or do something else). The same holds across a restart of
the server from its data directory, after a SIGKILL (the journal replayed) and after a
SIGTERM (the snapshot read). A key reused by another request is FAILED_PRECONDITION
naming ``request_id``.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fenliu.client import Client, FailedPrecondition, FenliuError, Status
from fenliu.client._client import new_request_id

from .test_restart import start

Call = Callable[[Client], Any]


def outcome(call: Call, f: Client) -> Any:
    """What a call answered: its result, or its error's class and message."""
    try:
        return call(f)
    except FenliuError as exc:
        return (type(exc).__name__, str(exc))


def holder(f: Client, shop: str, session_id: str) -> str:
    return f.get_session(shop, session_id).agent_id


def scenario(f: Client, shop: str) -> list[tuple[str, Call, Any]]:
    """Every mutating call once, keyed: (label, the call, what it answered)."""
    done: list[tuple[str, Call, Any]] = []

    def keyed(label: str, make: Callable[[Client, str], Any]) -> Any:
        key = f"{shop}-{label}"

        def call(client: Client) -> Any:
            return make(client, key)

        answer = outcome(call, f)
        done.append((label, call, answer))
        return answer

    keyed("policy", lambda f, k: f.set_shop_policy(shop, queue_limit=5, request_id=k))
    for agent in ("a1", "a2"):
        keyed(f"reg-{agent}", lambda f, k, a=agent: f.register_agent(  # type: ignore[misc]
            shop, a, max_concurrent=1, status=Status.ONLINE, request_id=k))  # fmt: skip
    keyed("reg-tmp", lambda f, k: f.register_agent(shop, "tmp", request_id=k))
    keyed("rm-tmp", lambda f, k: f.remove_agent(shop, "tmp", request_id=k))
    keyed("status-off", lambda f, k: f.set_status(shop, "a2", Status.OFFLINE, request_id=k))
    f.set_status(shop, "a2", Status.ONLINE)
    keyed("update", lambda f, k: f.update_agent(shop, "a2", max_concurrent=2, request_id=k))
    f.update_agent(shop, "a2", max_concurrent=1)
    s1 = f.route(shop, "b1").session_id
    s2 = f.route(shop, "b2").session_id
    f.route(shop, "b3")  # queued: both agents are full
    h1 = holder(f, shop, s1)
    keyed("ack", lambda f, k: f.acknowledge(shop, h1, s1, request_id=k))
    keyed("reply", lambda f, k: f.reply(shop, h1, s1, request_id=k))
    keyed("star", lambda f, k: f.star_session(shop, h1, s1, request_id=k))
    f.star_session(shop, h1, s1, starred=False)
    keyed("end", lambda f, k: f.end_sessions(shop, [s2], request_id=k))  # b3 takes its place
    s4 = f.route(shop, "b4").session_id  # queued again
    keyed("pick", lambda f, k: f.pick(shop, "a1", s4, force=True, request_id=k))
    f.route(shop, "b5")
    keyed("leave", lambda f, k: f.leave_queue(shop, "b5", request_id=k))
    other = "a2" if h1 == "a1" else "a1"
    keyed("transfer", lambda f, k: f.transfer(
        shop, s1, agent_id=h1, to_agent_id=other, force=True, request_id=k))  # fmt: skip
    keyed("priv-add", lambda f, k: f.add_private_contact(shop, "b9", request_id=k))
    keyed("priv-rm", lambda f, k: f.remove_private_contact(shop, "b9", request_id=k))
    keyed("ghost", lambda f, k: f.set_status(shop, "ghost", Status.ONLINE, request_id=k))
    f.register_agent(shop, "ghost")  # the refused call would succeed now, if applied again
    return done


def state(f: Client, shop: str) -> Any:
    """What the scenario's changes left, as reads show it."""
    team = {a.agent_id: (a.status, a.max_concurrent, a.load) for a in f.list_team(shop)}
    held = {
        a: sorted((s.buyer_id, s.state.name, s.starred) for s in f.list_agent_sessions(shop, a))
        for a in team
    }
    queue = f.list_queue(shop)
    return team, held, [e.buyer_id for e in queue.entries], f.get_shop_policy(shop).queue_limit


def check_the_scenario_state(f: Client, shop: str) -> None:
    team, held, queue, limit = state(f, shop)
    assert set(team) == {"a1", "a2", "ghost"}  # tmp registered and removed once
    assert team["a2"][:2] == (Status.ONLINE, 1)  # set OFFLINE and max 2 once, then back
    assert team["ghost"][0] is Status.OFFLINE  # the refused SetStatus never applied
    assert limit == 5 and queue == []
    buyers = {b for sessions in held.values() for b, _, _ in sessions}
    assert buyers == {"b1", "b3", "b4"}  # b2 ended, b5 left the queue
    assert not any(starred for sessions in held.values() for _, _, starred in sessions)


def retry_all(f: Client, done: list[tuple[str, Call, Any]]) -> None:
    for label, call, first in done:
        assert outcome(call, f) == first, label


@pytest.fixture
def fenliu(target: str) -> Iterator[Client]:
    with Client(target, timeout=30) as client:
        yield client


def test_every_mutating_call_repeated_with_its_key_answers_the_same_and_applies_once(
    fenliu: Client,
) -> None:
    shop = f"keyed-{new_request_id()[:8]}"
    done = scenario(fenliu, shop)
    assert len({label for label, _, _ in done}) == len(done)
    assert {type(first).__name__ for _, _, first in done} >= {"tuple"}  # a refusal is in it
    check_the_scenario_state(fenliu, shop)
    before = state(fenliu, shop)
    retry_all(fenliu, done)
    assert state(fenliu, shop) == before
    check_the_scenario_state(fenliu, shop)


def test_a_key_reused_by_another_request_is_failed_precondition(fenliu: Client) -> None:
    shop = f"keyed-{new_request_id()[:8]}"
    fenliu.register_agent(shop, "a1", request_id="the-key")
    with pytest.raises(FailedPrecondition) as raised:
        fenliu.register_agent(shop, "a1", max_concurrent=3, request_id="the-key")
    assert raised.value.field == "request_id"
    assert raised.value.reason == "REQUEST_ID_REUSED"
    with pytest.raises(FailedPrecondition):
        fenliu.set_status(shop, "a1", Status.ONLINE, request_id="the-key")
    assert fenliu.list_team(shop)[0].max_concurrent == 0
    assert fenliu.list_team(shop)[0].status is Status.OFFLINE
    # another shop's key space is its own
    fenliu.register_agent(f"{shop}-2", "a1", max_concurrent=3, request_id="the-key")


def test_the_sdk_sends_a_fresh_key_on_every_mutating_call(fenliu: Client) -> None:
    shop = f"keyed-{new_request_id()[:8]}"
    fenliu.register_agent(shop, "a1", status=Status.ONLINE, max_concurrent=2)
    for status in (Status.OFFLINE, Status.ONLINE, Status.OFFLINE):  # three changes, not one
        assert fenliu.set_status(shop, "a1", status).agent.status is status


@pytest.mark.slow
def test_keys_survive_a_restart_from_the_data_directory(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "server.log"
    children: list[subprocess.Popen[bytes]] = []
    try:
        child, port = start(data, log)
        children.append(child)
        with Client(f"127.0.0.1:{port}", timeout=30) as f:
            done = scenario(f, "shop-r")
            before = state(f, "shop-r")
        child.send_signal(signal.SIGKILL)  # no final snapshot: the journal is replayed
        child.wait(30)
        for how in (signal.SIGTERM, None):  # then a snapshot is read
            child, port = start(data, log, port)
            children.append(child)
            with Client(f"127.0.0.1:{port}", timeout=30) as f:
                assert state(f, "shop-r") == before
                retry_all(f, done)
                assert state(f, "shop-r") == before
                check_the_scenario_state(f, "shop-r")
            if how is not None:
                child.send_signal(how)
                assert child.wait(60) == 0, log.read_text()
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
            c.wait(30)

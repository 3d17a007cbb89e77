"""Idempotency keys on every mutating command but Route (issue 11): ``Shard.keyed_apply``.

A hypothesis state machine drives keyed commands of every kind (new keys, retries of a
remembered one, a key reused by another command) with Routes and ticks between them:
- a retry answers the first outcome (a result, or the same error) and changes nothing,
  the key table included;
- a key reused by another command is FAILED_PRECONDITION naming ``request_id`` and
  changes nothing;
- replaying what was applied on a fresh dispatcher, with snapshots taken and restored at
  random points, gives the same state, the key table included.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fenliu.server.core import image
from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.errors import FailedPrecondition, FenliuError, NotFound
from fenliu.server.core.shop import IDEMPOTENCY_WINDOW_MS
from fenliu.server.core.types import (
    Acknowledge,
    AddPrivateContact,
    EndSessions,
    LeaveQueue,
    Pick,
    PolicyChange,
    Refused,
    RegisterAgent,
    RemoveAgent,
    RemovePrivateContact,
    Reply,
    Role,
    Route,
    SetPolicy,
    SetStatus,
    StarSession,
    Status,
    Tick,
    Transfer,
    UpdateAgent,
)

from .test_invariants import dump

SHOPS = ["shop-a", "shop-b"]
AGENTS = ["main", "a1", "a2"]
BUYERS = [f"b{i}" for i in range(5)]
SESSIONS = [f"s{i}" for i in range(1, 9)]
MINUTE = 60_000
T0 = 1_700_000_000_000


def full_dump(d: Dispatcher) -> Any:
    """The state ``dump`` compares, and every shard's key table (in its order)."""
    return dump(d), [list(shard.keyed.items()) for shard in d.shards]


shops = st.sampled_from(SHOPS)
agents = st.sampled_from(AGENTS)
sessions = st.sampled_from(SESSIONS)


@st.composite
def keyed_commands(draw: Any) -> Any:
    """A mutating command of any kind but Route (its key is set by the machine)."""
    shop, agent, session = draw(shops), draw(agents), draw(sessions)
    buyer = draw(st.sampled_from(BUYERS))
    kind = draw(st.integers(0, 13))
    if kind == 0:
        change = PolicyChange(queue_limit=draw(st.integers(0, 3)), accept_timeout_ms=MINUTE)
        return SetPolicy(at=0, shop_id=shop, change=change)
    if kind == 1:
        return RegisterAgent(
            at=0,
            shop_id=shop,
            agent_id=agent,
            role=Role.MAIN if agent == "main" else Role.SUB,
            max_concurrent=draw(st.integers(0, 2)),
            status=draw(st.sampled_from(list(Status))),
            replace=draw(st.sampled_from([None, True, False])),
        )
    if kind == 2:
        return UpdateAgent(
            at=0, shop_id=shop, agent_id=agent, max_concurrent=draw(st.integers(0, 3))
        )
    if kind == 3:
        return StarSession(at=0, shop_id=shop, agent_id=agent, session_id=session)
    if kind == 4:
        return RemoveAgent(at=0, shop_id=shop, agent_id=agent)
    if kind == 5:
        return SetStatus(
            at=0, shop_id=shop, agent_id=agent, status=draw(st.sampled_from(list(Status)))
        )
    if kind == 6:
        return AddPrivateContact(at=0, shop_id=shop, buyer_id=buyer)
    if kind == 7:
        return RemovePrivateContact(at=0, shop_id=shop, buyer_id=buyer)
    if kind == 8:
        return Acknowledge(at=0, shop_id=shop, agent_id=agent, session_id=session)
    if kind == 9:
        return Reply(at=0, shop_id=shop, agent_id=agent, session_id=session)
    if kind == 10:
        return Transfer(at=0, shop_id=shop, session_id=session, to_agent_id=agent, force=True)
    if kind == 11:
        return EndSessions(at=0, shop_id=shop, session_ids=(session,))
    if kind == 12:
        return Pick(
            at=0, shop_id=shop, agent_id=agent, session_id=draw(st.sampled_from(["", session]))
        )
    return LeaveQueue(at=0, shop_id=shop, buyer_id=buyer)


class KeyedMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.d = Dispatcher(shards=2)
        self.now = T0
        self.log: list[Any] = []  # what was applied (a journal)
        self.keys = 0
        self.first: dict[tuple[str, str], tuple[Any, Any, int]] = {}  # key -> (cmd, outcome, at)
        self.routes = 0

    def stamped(self, command: Any, key: str) -> Any:
        return msgspec.structs.replace(command, at=self.now, request_id=key)

    @rule(command=keyed_commands())
    def new_key(self, command: Any) -> None:
        self.keys += 1
        command = self.stamped(command, f"k{self.keys}")
        before = full_dump(self.d)
        try:
            outcome = self.d.execute(command)
        except FenliuError:
            assert full_dump(self.d) == before, "a raised error changed the state"
            return
        self.log.append(command)
        self.d.drain_events()
        self.first[command.shop_id, command.request_id] = (command, outcome, self.now)

    @rule(data=st.data())
    def retry(self, data: Any) -> None:
        if not self.first:
            return
        key = data.draw(st.sampled_from(sorted(self.first)))
        command, outcome, at = self.first[key]
        if self.now - at >= IDEMPOTENCY_WINDOW_MS:
            del self.first[key]  # forgotten (maybe not yet: no tick since), not asserted
            return
        retried = self.stamped(command, key[1])
        before = full_dump(self.d)
        again = self.d.execute(retried)
        assert again == outcome
        if type(outcome) is Refused:
            assert type(again.exception()) is type(outcome.exception())
        assert full_dump(self.d) == before, f"a retry of {command!r} changed the state"
        self.log.append(retried)  # a retry is journaled too: replay must give the same

    @rule(data=st.data(), other=keyed_commands())
    def reuse(self, data: Any, other: Any) -> None:
        if not self.first:
            return
        key = data.draw(st.sampled_from(sorted(self.first)))
        command, _, at = self.first[key]
        other = self.stamped(msgspec.structs.replace(other, shop_id=key[0]), key[1])
        if msgspec.structs.replace(other, at=0) == msgspec.structs.replace(command, at=0):
            return
        if self.now - at >= IDEMPOTENCY_WINDOW_MS:
            return
        before = full_dump(self.d)
        with pytest.raises(FailedPrecondition) as raised:
            self.d.execute(other)
        assert raised.value.field == "request_id"
        assert raised.value.reason == "REQUEST_ID_REUSED"
        assert full_dump(self.d) == before

    @rule(shop=shops, buyer=st.sampled_from(BUYERS))
    def route(self, shop: str, buyer: str) -> None:
        self.routes += 1
        command = Route(at=self.now, shop_id=shop, buyer_id=buyer, request_id=f"r{self.routes}")
        try:
            self.d.execute(command)
        except FenliuError:
            return
        self.log.append(command)
        self.d.drain_events()

    @rule(minutes=st.sampled_from([0, 1, 4, 11]))
    def advance(self, minutes: int) -> None:
        self.now += minutes * MINUTE
        command = Tick(at=self.now)
        self.d.execute(command)
        self.log.append(command)
        self.d.drain_events()
        horizon = self.now - IDEMPOTENCY_WINDOW_MS
        for shard in self.d.shards:  # a tick forgets what is past the window
            assert all(at > horizon for at, _, _ in shard.keyed.values())

    @rule()
    def snapshot_and_restore(self) -> None:
        before = full_dump(self.d)
        for i, shard in enumerate(self.d.shards):
            restored, _ = image.decode(image.encode(shard, len(self.log)))
            self.d.shards[i] = restored
        assert full_dump(self.d) == before

    @invariant()
    def keys_are_per_shop_and_in_time_order(self) -> None:
        for shard in self.d.shards:
            times = [at for at, _, _ in shard.keyed.values()]
            assert times == sorted(times)
            for (shop_id, request_id), (_, command, _) in shard.keyed.items():
                assert (command.shop_id, command.request_id) == (shop_id, request_id)

    def teardown(self) -> None:
        fresh = Dispatcher(shards=2)
        for command in self.log:
            try:
                fresh.execute(command)
            except FenliuError:
                pytest.fail(f"replaying {command!r} raised")
        fresh.drain_events()
        assert full_dump(fresh) == full_dump(self.d)


TestKeyed = KeyedMachine.TestCase
TestKeyed.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_a_refusal_is_remembered_and_raised_again_as_its_class() -> None:
    d = Dispatcher(shards=1)
    missing = SetStatus(at=T0, shop_id="s", agent_id="a", status=Status.ONLINE, request_id="k")
    with pytest.raises(NotFound):
        d.execute(msgspec.structs.replace(missing, request_id=""))  # unkeyed: raised
    refused = d.execute(missing)
    assert type(refused) is Refused and type(refused.exception()) is NotFound
    assert refused.exception().field == "shop_id"
    d.execute(SetPolicy(at=T0 + 1, shop_id="s", change=PolicyChange()))
    d.execute(RegisterAgent(at=T0 + 2, shop_id="s", agent_id="a"))
    # the same key again: the same refusal, though the agent exists now
    assert d.execute(msgspec.structs.replace(missing, at=T0 + 3)) == refused
    assert d.shards[0].shops["s"].agents["a"].status is Status.OFFLINE
    # past the window the key is forgotten: the same command applies
    later = T0 + IDEMPOTENCY_WINDOW_MS + 1
    d.execute(Tick(at=later))
    result = d.execute(msgspec.structs.replace(missing, at=later))
    assert result.agent.status is Status.ONLINE


def test_a_bad_key_is_invalid_argument_and_remembers_nothing() -> None:
    d = Dispatcher(shards=1)
    with pytest.raises(FenliuError) as raised:
        d.execute(SetPolicy(at=T0, shop_id="s", change=PolicyChange(), request_id="a b"))
    assert raised.value.field == "request_id"
    assert not d.shards[0].keyed and not d.shards[0].shops

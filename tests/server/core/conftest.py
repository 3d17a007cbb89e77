"""A small world for scenario tests: one shop on a Dispatcher, driven by a fake clock.

Time only moves when a test says so: ``w.advance(minutes=...)`` moves the clock and sends
the Tick that fires due timers (the core never reads a clock; SPEC §7).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.errors import NotFound
from fenliu.server.core.types import (
    MINUTE,
    Acknowledge,
    AddPrivateContact,
    AgentView,
    Decision,
    EndResult,
    EndSessions,
    GetPolicy,
    GetPosition,
    GetSession,
    LeaveQueue,
    ListAgentSessions,
    ListLeftMessages,
    ListQueue,
    ListTeam,
    Moved,
    Outcome,
    Pick,
    PolicyChange,
    RegisterAgent,
    Reply,
    Role,
    Route,
    SessionView,
    SetPolicy,
    SetStatus,
    State,
    Status,
    StatusResult,
    Tick,
    Transfer,
)

SHOP = "shop-1"
# 2024-03-01 10:00 in Asia/Shanghai, the default shop time zone: far from midnight.
T0 = int(datetime(2024, 3, 1, 10, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp() * 1000)


class World:
    """One shop on a (4-shard) Dispatcher, with a fake clock at ``now`` (ms)."""

    def __init__(self, shop: str = SHOP, d: Dispatcher | None = None) -> None:
        self.d = d or Dispatcher(shards=4)
        self.shop = shop
        self.now = T0
        self.session_ids: set[str] = set()
        self._requests = 0

    # ------------------------------------------------------------ plumbing

    def do(self, command: type, **fields: Any) -> Any:
        """Execute a command of this shop at ``now``."""
        result = self.d.execute(command(at=self.now, shop_id=self.shop, **fields))
        self._remember(result)
        return result

    def ask(self, query: type, **fields: Any) -> Any:
        """Read a query of this shop at ``now``."""
        return self.d.read(query(at=self.now, shop_id=self.shop, **fields))

    def _remember(self, result: Any) -> None:
        decisions: tuple[Decision, ...] = ()
        if isinstance(result, Decision):
            decisions = (result,)
        elif isinstance(result, (Moved, StatusResult, EndResult)):
            decisions = result.moved
        for decision in decisions:
            if decision.session_id:
                self.session_ids.add(decision.session_id)

    # ------------------------------------------------------------ time

    def advance(self, minutes: float = 0, seconds: float = 0, hours: float = 0) -> Moved:
        """Move the clock forward and send a Tick at the new time."""
        self.now += int(hours * 60 * MINUTE + minutes * MINUTE + seconds * 1000)
        result: Moved = self.d.execute(Tick(at=self.now))
        self._remember(result)
        return result

    # ------------------------------------------------------------ shop and agents

    def policy(self, **change: Any) -> Any:
        return self.do(SetPolicy, change=PolicyChange(**change))

    def agent(
        self,
        agent_id: str,
        status: Status = Status.ONLINE,
        max: int = 5,
        groups: tuple[str, ...] = (),
        role: Role = Role.SUB,
    ) -> AgentView:
        """Register (or update: status is then ignored) an agent; ONLINE with room for 5."""
        return self.do(
            RegisterAgent,
            agent_id=agent_id,
            status=status,
            max_concurrent=max,
            groups=groups,
            role=role,
        )

    def status(self, agent_id: str, status: Status) -> StatusResult:
        return self.do(SetStatus, agent_id=agent_id, status=status)

    def private(self, buyer: str) -> Any:
        return self.do(AddPrivateContact, buyer_id=buyer)

    def team(self) -> dict[str, AgentView]:
        return {a.agent_id: a for a in self.ask(ListTeam)}

    # ------------------------------------------------------------ buyers and sessions

    def route(self, buyer: str, request_id: str | None = None, **fields: Any) -> Decision:
        """A buyer message; a fresh request id unless one is given."""
        if request_id is None:
            self._requests += 1
            request_id = f"req-{self._requests}"
        return self.do(Route, buyer_id=buyer, request_id=request_id, **fields)

    def ack(self, agent_id: str, session_id: str) -> SessionView:
        return self.do(Acknowledge, agent_id=agent_id, session_id=session_id)

    def reply(self, agent_id: str, session_id: str) -> SessionView:
        return self.do(Reply, agent_id=agent_id, session_id=session_id)

    def end(self, *session_ids: str) -> EndResult:
        return self.do(EndSessions, session_ids=session_ids)

    def pick(self, agent_id: str, session_id: str = "", force: bool = False) -> Decision:
        return self.do(Pick, agent_id=agent_id, session_id=session_id, force=force)

    def transfer(self, session_id: str, **fields: Any) -> Decision:
        return self.do(Transfer, session_id=session_id, **fields)

    def leave_queue(self, buyer: str) -> SessionView:
        return self.do(LeaveQueue, buyer_id=buyer)

    def serve(self, buyer: str, agent_id: str) -> None:
        """The agent serves the buyer once (addressed, acknowledged, ended): a recent contact."""
        decision = self.route(buyer, addressed_agent_id=agent_id)
        assert (decision.outcome, decision.agent_id) == (Outcome.ASSIGNED, agent_id)
        self.ack(agent_id, decision.session_id)
        self.end(decision.session_id)

    def session(self, session_id: str) -> SessionView:
        return self.ask(GetSession, session_id=session_id)

    def state(self, session_id: str) -> State:
        """The session's state; ENDED once the core has dropped it (README: dropped)."""
        try:
            return self.session(session_id).state
        except NotFound:
            return State.ENDED

    def sessions_of(self, agent_id: str) -> dict[str, State]:
        """Buyer -> state of the agent's sessions (ASSIGNED, ACTIVE and backlog)."""
        return {
            s.buyer_id: s.state for s in self.ask(ListAgentSessions, agent_id=agent_id).sessions
        }

    def queue(self, **fields: Any) -> list[str]:
        """Buyers in the shop queue, in the order asked for (queue order by default)."""
        return [e.buyer_id for e in self.ask(ListQueue, **fields).entries]

    def left_messages(self) -> dict[str, str]:
        """Buyer -> the agent a left message is for ("" = the shop)."""
        return {e.buyer_id: e.agent_id for e in self.ask(ListLeftMessages).entries}

    def position(self, buyer: str) -> int:
        return self.ask(GetPosition, buyer_id=buyer).queue_position

    def snapshot(self) -> dict[str, Any]:
        """Everything the queries can see of the shop: compared before/after a rejection."""
        team = self.ask(ListTeam)
        by_id = {}
        for session_id in sorted(self.session_ids):
            try:
                by_id[session_id] = self.session(session_id)
            except NotFound:
                by_id[session_id] = None
        return {
            "policy": self.ask(GetPolicy),
            "team": team,
            "agent_sessions": {
                a.agent_id: self.ask(ListAgentSessions, agent_id=a.agent_id) for a in team
            },
            "queue": self.ask(ListQueue, limit=1000),
            "left": self.ask(ListLeftMessages, limit=1000),
            "sessions": by_id,
        }


@pytest.fixture
def w() -> Iterator[World]:
    """A fresh world: shop ``SHOP`` exists (its policy is set to the defaults), no agents."""
    world = World()
    world.policy()
    yield world

"""The core's mutable records. Plain ``__slots__`` classes: millions of them live at once."""

from __future__ import annotations

from typing import Final

from mypy_extensions import mypyc_attr

from .types import Reason, Role, State, Status

_QUEUED: Final = State.QUEUED
_STRATEGY: Final = Reason.STRATEGY  # enum attributes are slow on 3.11


class Agent:
    """One customer-service account of a shop, with its sessions and backlog."""

    # The fields a routing decision reads (``AgentHeap.scanned`` reads the first six of
    # every agent of the scope, ``assign`` and ``touch`` the next two) first and together:
    # in a big world each agent is a cache miss, and adjacent fields share its lines
    # (compiled, the attributes are laid out in the order ``__init__`` assigns them).
    # Compiled, ``pad0`` makes the object 168 bytes (+16 of GC header: pymalloc's
    # 192-byte blocks, which start at 48 mod 64 in their pools), so that every agent's
    # header (the refcount a scan's incref writes) and its first five fields (status to
    # last_assign) are one cache line; in 176-byte blocks they straddled two lines for
    # three agents in four (bench/core_world.py --cache-sim; tests/server/core/test_layout.py).
    __slots__ = (
        "status",
        "load",
        "max_concurrent",
        "new_count",
        "last_assign",
        "reg",
        "version",
        "last",
        "agent_id",
        "role",
        "groups",
        "backlog",
        "served_day",
        "served_count",
        "ended",
        "starred",
        "first",
        "pad0",
    )

    def __init__(
        self,
        agent_id: str,
        role: Role,
        groups: tuple[str, ...],
        max_concurrent: int,
        status: Status,
        reg: int,
    ) -> None:
        self.status = status
        self.load = 0  # ASSIGNED + ACTIVE sessions
        self.max_concurrent = max_concurrent
        self.new_count = 0  # ASSIGNED sessions
        self.last_assign = 0  # the shop's assignment counter at the last assignment
        self.reg = reg  # registration order: the last tie-break
        self.version = 0  # bumped on every change; heap entries of older versions are stale
        # ASSIGNED + ACTIVE sessions, oldest first: a list linked through the sessions
        # (``Session.before``/``after``), not a dict of the agent's: taking one in or out
        # touches its neighbours, not a table that grows and is rebuilt (a cold line each
        # in a big world). ``open_sessions()`` lists them.
        self.last: Session | None = None
        self.agent_id = agent_id
        self.role = role
        self.groups = groups
        self.backlog: dict[str, Session] = {}  # FIFO: dicts keep insertion order
        self.served_day = 0
        self.served_count = 0
        # Created on first use: most agents never need them (memory, SPEC §8).
        self.ended: dict[str, Ended] | None = None  # recently ended sessions, oldest first
        self.starred: dict[str, tuple[str, int]] | None = None  # session -> (buyer, at)
        self.first: Session | None = None  # the oldest of the open sessions (see ``last``)
        self.pad0 = 0  # the size of a pymalloc block of 3 cache lines (see above)

    def hold(self, session: Session) -> None:
        """Add ``session`` to the agent's open sessions, as the newest."""
        last = self.last
        session.before = last
        session.after = None
        if last is None:
            self.first = session
        else:
            last.after = session
        self.last = session

    def release(self, session: Session) -> None:
        """Take ``session`` out of the agent's open sessions."""
        before = session.before
        after = session.after
        if before is None:
            self.first = after
        else:
            before.after = after
        if after is None:
            self.last = before
        else:
            after.before = before
        session.before = session.after = None

    def open_sessions(self) -> list[Session]:
        """The ASSIGNED and ACTIVE sessions the agent holds, oldest first."""
        sessions = []
        session = self.first
        while session is not None:
            sessions.append(session)
            session = session.after
        return sessions

    @property
    def scopes(self) -> tuple[str, ...]:
        """The routing scopes the agent belongs to: "" (the whole shop) and its groups."""
        return ("", *self.groups)


class Session:
    """One buyer's open conversation with the shop."""

    __slots__ = (
        "session_id",
        "seq",
        "buyer_id",
        "state",
        "agent",
        "group",
        "priority",
        "channel",
        "created_at",
        "entered_at",
        "assigned_at",
        "awaiting_since",
        "last_buyer_at",
        "last_activity",
        "first_reply_at",
        "excluded",
        "reason",
        "timer_due",
        "left_for",
        "private",
        "before",
        "after",
    )

    def __init__(
        self, seq: int, buyer_id: str, group: str, priority: bool, channel: str, at: int
    ) -> None:
        self.session_id = f"s{seq}"
        self.seq = seq
        self.buyer_id = buyer_id
        self.state = _QUEUED
        self.agent: Agent | None = None  # the holder when ASSIGNED/ACTIVE/BACKLOG
        self.group = group
        self.priority = priority
        self.channel = channel
        self.created_at = at  # the original request time: the queue place
        self.entered_at = at  # entering the queue or a backlog
        self.assigned_at = 0
        self.awaiting_since: int | None = at  # the buyer's first unanswered message
        self.last_buyer_at = at  # the buyer's latest message
        self.last_activity = at
        self.first_reply_at = 0
        self.excluded: set[str] | None = None  # agents it timed out on
        self.reason = _STRATEGY
        self.timer_due: int | None = None  # due time of its live timer-heap entry
        self.left_for = ""  # a left message only this agent (MAIN) may take
        self.private = False  # a private contact's session: it stays MAIN's (rule 3)
        # its neighbours among its agent's open sessions (``Agent.hold``), while it is one
        self.before: Session | None = None
        self.after: Session | None = None


# A plain class even when compiled: its ``__slots__`` name its fields (tests compare them
# one by one); it is made once per ended session, off the routing path.
@mypyc_attr(native_class=False)
class Ended:
    """What an agent's list keeps of a session that ended (seed 003's 已结束会话)."""

    __slots__ = (
        "session_id",
        "buyer_id",
        "channel",
        "group",
        "priority",
        "created_at",
        "assigned_at",
        "last_buyer_at",
        "last_activity",
        "first_reply_at",
        "ended_at",
        "reason",
    )

    def __init__(self, session: Session, ended_at: int) -> None:
        self.session_id = session.session_id
        self.buyer_id = session.buyer_id
        self.channel = session.channel
        self.group = session.group
        self.priority = session.priority
        self.created_at = session.created_at
        self.assigned_at = session.assigned_at or session.entered_at
        self.last_buyer_at = session.last_buyer_at
        self.last_activity = session.last_activity
        self.first_reply_at = session.first_reply_at
        self.ended_at = ended_at
        self.reason = session.reason

"""The SDK's typed results, built from the wire messages (``from_pb``)."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator
from typing import Any

import grpc
from google.rpc import error_details_pb2 as ed

from ._errors import FenliuError, InvalidArgument, error_for, unpack
from ._pb import fenliu_pb2 as pb


class Named(enum.IntEnum):
    """An SDK enum: prints as its name (``ASSIGNED``), compares as the wire's number, and
    ``Status("online")`` finds a member by name (case, dashes and spaces forgiven)."""

    def __str__(self) -> str:
        return self.name

    def __format__(self, spec: str) -> str:
        return (
            format(self.name, spec)
            if not spec or spec[-1] not in "bcdoxXn"
            else format(int(self), spec)
        )

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if isinstance(value, str):
            return cls.__members__.get(value.strip().upper().replace("-", "_").replace(" ", "_"))
        return None


class Status(Named):
    ONLINE = 1
    INVISIBLE = 2
    SUSPENDED = 3
    OFFLINE = 4


class Role(Named):
    SUB = 1
    MAIN = 2


class Strategy(Named):
    LEAST_NEW = 1
    LEAST_LOAD = 2
    ROUND_ROBIN = 3


class QueueOrder(Named):
    FIFO = 1
    LIFO = 2


class OnQueueFull(Named):
    LEAVE_MESSAGE = 1
    REJECT = 2


class Outcome(Named):
    UNSPECIFIED = 0
    ASSIGNED = 1
    BACKLOG = 2
    QUEUED = 3
    LEFT_MESSAGE = 4
    TEAM_DELIVERY = 5


class Reason(Named):
    UNSPECIFIED = 0
    TEAM_MESSAGE = 1
    OPEN_SESSION = 2
    PRIVATE_CONTACT = 3
    RECENT_CONTACT = 4
    ADDRESSED = 5
    PRIORITY_CROWD = 6
    PRIORITY_OVERFLOW = 7
    STRATEGY = 8
    ALL_SUSPENDED = 9
    ALL_BUSY = 10
    QUEUE_FULL = 11
    ALL_OFFLINE = 12
    ACCEPT_TIMEOUT = 13
    REPLY_TIMEOUT = 14
    AGENT_OFFLINE = 15
    TRANSFER = 16
    MANUAL_PICK = 17
    CAPACITY_FREED = 18
    QUEUE_WAIT_LIMIT = 19
    CROWD_GROUP = 20


class PriorityNotice(enum.IntEnum):
    """Which notice a priority buyer gets (seed 004); NONE: no notice. ``text`` is its wording."""

    NONE = 0
    SKIPPED_QUEUE = 1
    ARRANGED = 2
    MEMBER_SKIPPED_QUEUE = 3
    MEMBER_ARRANGED = 4

    @property
    def text(self) -> str:
        """The buyer's notice: title (member or not) and text (how the shop routes)."""
        return _NOTICE_TEXT[self]


_NOTICE_TEXT = {
    PriorityNotice.NONE: "",
    PriorityNotice.SKIPPED_QUEUE: "优先接待生效: 已跳过排队直连人工",
    PriorityNotice.ARRANGED: "优先接待生效: 已安排优先接待",
    PriorityNotice.MEMBER_SKIPPED_QUEUE: "会员专属客服: 已跳过排队直连人工",
    PriorityNotice.MEMBER_ARRANGED: "会员专属客服: 已安排优先接待",
}


class SessionSort(enum.IntEnum):
    """The orders of an agent's list (seed 003)."""

    LATEST_MESSAGE = 1  # the buyer's latest message, newest first
    LONGEST_WAIT = 2  # waiting for a reply, longest first; then answered, latest first
    ACCESS_TIME = 3  # reached the agent, newest first


class MessageFilter(enum.IntEnum):
    ANY = 0
    WAITING = 1  # the buyer waits for a reply
    ANSWERED = 2  # the agent spoke last


class SessionState(Named):
    UNSPECIFIED = 0
    QUEUED = 1
    BACKLOG = 2
    ASSIGNED = 3
    ACTIVE = 4
    LEFT_MESSAGE = 5
    ENDED = 6


class QueueSort(Named):
    QUEUE_ORDER = 0
    LONGEST_WAIT = 1
    SHORTEST_WAIT = 2


def member(kind: type[Named], value: Any, param: str) -> Any:
    """``value`` as a member of ``kind``: a member, its name (any case) or its number.

    Raises:
        InvalidArgument (also a ValueError): anything else; the message names ``param``.
    """
    if isinstance(value, kind):
        return value
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        try:
            return kind(value)  # type: ignore[arg-type]  # a name: Named._missing_
        except ValueError:
            pass
    names = ", ".join(m.name.lower() for m in kind if m.value or kind is QueueSort)
    raise invalid(param, f"{value!r} is not a {kind.__name__} (one of: {names})")


def strings(value: Any, param: str) -> list[str]:
    """``value``, an iterable of strings, as a list.

    Raises:
        TypeError: a bare string (or bytes), which would be split into its characters, or
            not an iterable of strings; the message names ``param``.
    """
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{param} must be a list of strings, not one string: [{value!r}]?")
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{param} must be a list of strings (got {type(value).__name__})") from None
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{param} must hold strings (got {type(item).__name__})")
    return items


def invalid(param: str, problem: str) -> InvalidArgument:
    """The error for a bad argument caught before any call, as the server would say it."""
    details = [
        ed.ErrorInfo(reason="INVALID_FIELD", domain="fenliu", metadata={"field": param}),
        ed.BadRequest(
            field_violations=[ed.BadRequest.FieldViolation(field=param, description=problem)]
        ),
    ]
    return InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT, f"{param}: {problem}", param, details)


def _enum(kind: type[enum.IntEnum], value: int) -> Any:
    """A known member, or the raw int from a newer server."""
    try:
        return kind(value)
    except ValueError:
        return value


_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """Where a buyer's message went and which rule decided."""

    outcome: Outcome
    reason: Reason
    buyer_id: str
    agent_id: str
    session_id: str
    queue_position: int
    state: SessionState
    priority_notice: bool  # notice is not NONE
    notice: PriorityNotice = PriorityNotice.NONE

    @classmethod
    def from_pb(cls, m: pb.Decision) -> Decision:
        return cls(
            outcome=_enum(Outcome, m.outcome),
            reason=_enum(Reason, m.reason),
            buyer_id=m.buyer_id,
            agent_id=m.agent_id,
            session_id=m.session_id,
            queue_position=m.queue_position,
            state=_enum(SessionState, m.state),
            priority_notice=m.priority_notice,
            notice=_enum(PriorityNotice, m.notice),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Agent:
    agent_id: str
    role: Role
    groups: tuple[str, ...]
    max_concurrent: int
    status: Status
    load: int
    new_count: int
    backlog_size: int
    served_today: int
    over_capacity: bool = False  # load > max_concurrent: end sessions or raise the max

    @classmethod
    def from_pb(cls, m: pb.Agent) -> Agent:
        return cls(
            agent_id=m.agent_id,
            role=_enum(Role, m.role),
            groups=tuple(m.groups),
            max_concurrent=m.max_concurrent,
            status=_enum(Status, m.status),
            load=m.load,
            new_count=m.new_count,
            backlog_size=m.backlog_size,
            served_today=m.served_today,
            over_capacity=m.over_capacity,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    buyer_id: str
    state: SessionState
    agent_id: str
    group: str
    channel: str
    priority: bool
    queue_position: int
    created_at_ms: int
    first_reply_at_ms: int
    reason: Reason
    assigned_at_ms: int = 0  # reached its agent (接入时间); backlog: entered it
    last_buyer_message_at_ms: int = 0
    waiting_since_ms: int = 0  # the first unanswered buyer message; 0: answered
    last_message_at_ms: int = 0
    ended_at_ms: int = 0
    starred: bool = False

    @classmethod
    def from_pb(cls, m: pb.Session) -> Session:
        return cls(
            session_id=m.session_id,
            buyer_id=m.buyer_id,
            state=_enum(SessionState, m.state),
            agent_id=m.agent_id,
            group=m.group,
            channel=m.channel,
            priority=m.priority,
            queue_position=m.queue_position,
            created_at_ms=m.created_at_ms,
            first_reply_at_ms=m.first_reply_at_ms,
            reason=_enum(Reason, m.reason),
            assigned_at_ms=m.assigned_at_ms,
            last_buyer_message_at_ms=m.last_buyer_message_at_ms,
            waiting_since_ms=m.waiting_since_ms,
            last_message_at_ms=m.last_message_at_ms,
            ended_at_ms=m.ended_at_ms,
            starred=m.starred,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class AgentSessions:
    """An agent's list (seed 003): ``sessions`` in progress and recently ``ended``.

    Iterating, indexing and ``len`` go over the sessions in progress, as the tuple this
    call returned before did.
    """

    sessions: tuple[Session, ...]
    ended: tuple[Session, ...]
    load: int
    max_concurrent: int
    over_capacity: bool  # load > max_concurrent (seed 003's warning)

    def __iter__(self) -> Iterator[Session]:
        return iter(self.sessions)

    def __len__(self) -> int:
        return len(self.sessions)

    def __getitem__(self, index: int) -> Session:
        return self.sessions[index]

    @classmethod
    def from_pb(cls, m: pb.ListSessionsReply) -> AgentSessions:
        return cls(
            sessions=tuple(Session.from_pb(s) for s in m.sessions),
            ended=tuple(Session.from_pb(s) for s in m.ended),
            load=m.load,
            max_concurrent=m.max_concurrent,
            over_capacity=m.over_capacity,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class RecentContact:
    buyer_id: str
    agent_id: str
    last_at_ms: int

    @classmethod
    def from_pb(cls, m: pb.RecentContact) -> RecentContact:
        return cls(buyer_id=m.buyer_id, agent_id=m.agent_id, last_at_ms=m.last_at_ms)


@dataclasses.dataclass(frozen=True, slots=True)
class StarredSession:
    session_id: str
    buyer_id: str
    starred_at_ms: int
    state: SessionState  # ENDED once it is no longer open

    @classmethod
    def from_pb(cls, m: pb.StarredSession) -> StarredSession:
        return cls(
            session_id=m.session_id,
            buyer_id=m.buyer_id,
            starred_at_ms=m.starred_at_ms,
            state=_enum(SessionState, m.state),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class QueueEntry:
    session_id: str
    buyer_id: str
    position: int
    priority: bool
    group: str
    channel: str
    waited_ms: int
    agent_id: str

    @classmethod
    def from_pb(cls, m: pb.QueueEntry) -> QueueEntry:
        return cls(
            session_id=m.session_id,
            buyer_id=m.buyer_id,
            position=m.position,
            priority=m.priority,
            group=m.group,
            channel=m.channel,
            waited_ms=m.waited_ms,
            agent_id=m.agent_id,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class QueueList:
    entries: tuple[QueueEntry, ...]
    total: int

    @classmethod
    def from_pb(cls, m: pb.ListQueueReply) -> QueueList:
        return cls(entries=tuple(QueueEntry.from_pb(e) for e in m.entries), total=m.total)


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """A shop's routing policy (durations in milliseconds; 0 is off)."""

    strategy: Strategy
    queue_order: QueueOrder
    queue_limit: int
    on_queue_full: OnQueueFull
    priority_crowds: tuple[str, ...]
    priority_may_exceed_capacity: bool
    notice_interval_ms: int
    route_when_all_suspended: bool
    auto_assign_left_messages: bool
    accept_timeout_ms: int
    reply_timeout_ms: int
    idle_end_timeout_ms: int
    queue_wait_limit_ms: int
    sticky_window_ms: int
    recent_contact_ttl_ms: int
    time_zone: str
    member_crowd: str = ""
    group_crowds: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_pb(cls, m: pb.ShopPolicy) -> Policy:
        return cls(
            strategy=_enum(Strategy, m.strategy),
            queue_order=_enum(QueueOrder, m.queue_order),
            queue_limit=m.queue_limit,
            on_queue_full=_enum(OnQueueFull, m.on_queue_full),
            priority_crowds=tuple(m.priority_crowds),
            priority_may_exceed_capacity=m.priority_may_exceed_capacity,
            notice_interval_ms=m.notice_interval_ms,
            route_when_all_suspended=m.route_when_all_suspended,
            auto_assign_left_messages=m.auto_assign_left_messages,
            accept_timeout_ms=m.accept_timeout_ms,
            reply_timeout_ms=m.reply_timeout_ms,
            idle_end_timeout_ms=m.idle_end_timeout_ms,
            queue_wait_limit_ms=m.queue_wait_limit_ms,
            sticky_window_ms=m.sticky_window_ms,
            recent_contact_ttl_ms=m.recent_contact_ttl_ms,
            time_zone=m.time_zone,
            member_crowd=m.member_crowd,
            group_crowds={g.group: tuple(g.crowds) for g in m.group_crowds},
        )


@dataclasses.dataclass(frozen=True, slots=True)
class StatusResult:
    """The agent after a status change, and the sessions the change moved."""

    agent: Agent
    moved: tuple[Decision, ...]

    @classmethod
    def from_pb(cls, m: pb.SetStatusReply) -> StatusResult:
        return cls(agent=Agent.from_pb(m.agent), moved=tuple(Decision.from_pb(d) for d in m.moved))


@dataclasses.dataclass(frozen=True, slots=True)
class EndResult:
    ended: int
    already_ended: int
    moved: tuple[Decision, ...]

    @classmethod
    def from_pb(cls, m: pb.EndSessionsReply) -> EndResult:
        return cls(
            ended=m.ended,
            already_ended=m.already_ended,
            moved=tuple(Decision.from_pb(d) for d in m.moved),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class RouteResult:
    """One item of a batch: its decision, or the error it got (exactly one is set)."""

    decision: Decision | None
    error: FenliuError | None

    @classmethod
    def from_pb(cls, m: pb.RouteResult) -> RouteResult:
        if m.HasField("decision"):
            return cls(decision=Decision.from_pb(m.decision), error=None)
        code = _CODES.get(m.error.code, grpc.StatusCode.UNKNOWN)
        error = error_for(code, m.error.message, m.error.field, unpack(m.error.details))
        return cls(decision=None, error=error)


@dataclasses.dataclass(frozen=True, slots=True)
class RouteItem:
    """One message for ``route_batch`` (``route``'s parameters); ``route_request`` builds
    one with a fresh request id, and ``route_batch`` gives one to an item without."""

    shop_id: str
    buyer_id: str
    request_id: str = ""
    addressed_agent_id: str = ""
    crowds: tuple[str, ...] = ()
    group: str = ""
    channel: str = ""
    from_team_member: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "crowds", tuple(strings(self.crowds, "crowds")))

    def to_pb(self) -> pb.RouteRequest:
        return pb.RouteRequest(
            shop_id=self.shop_id,
            buyer_id=self.buyer_id,
            request_id=self.request_id,
            addressed_agent_id=self.addressed_agent_id,
            crowds=self.crowds,
            group=self.group,
            channel=self.channel,
            from_team_member=self.from_team_member,
        )


# ---------------------------------------------------------------- watch and stats


class EventKind(Named):
    UNSPECIFIED = 0
    ASSIGNED = 1
    REASSIGNED_AWAY = 2
    TRANSFERRED = 3
    BACKLOG_CHANGED = 4
    QUEUE_CHANGED = 5
    STATUS_CHANGED = 6
    TIMEOUT = 7
    ENDED = 8
    LEFT_MESSAGE = 9


class FellBehindCause(Named):
    UNSPECIFIED = 0
    NOT_KEPT = 1  # resumed from further back than the server keeps
    OVERFLOW = 2  # read too slowly: the watcher's buffer overflowed
    UNDONE = 3  # a storage failure undid changes after seq (never sent): re-read


@dataclasses.dataclass(frozen=True, slots=True)
class Started:
    """A watch stream (re)connected; ``head_seq`` was the shop's latest event then."""

    head_seq: int


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened in a shop; ``seq`` numbers the shop's events."""

    seq: int
    kind: EventKind
    shop_id: str
    at_ms: int
    agent_id: str
    session_id: str
    buyer_id: str
    reason: Reason
    status: Status | None  # STATUS_CHANGED only

    @classmethod
    def from_pb(cls, m: pb.Event) -> Event:
        return cls(
            seq=m.seq,
            kind=_enum(EventKind, m.kind),
            shop_id=m.shop_id,
            at_ms=m.at_ms,
            agent_id=m.agent_id,
            session_id=m.session_id,
            buyer_id=m.buyer_id,
            reason=_enum(Reason, m.reason),
            status=_enum(Status, m.status) if m.status else None,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class FellBehind:
    """Events were lost: re-read the state; the events that follow come after ``seq``."""

    seq: int
    cause: FellBehindCause


WatchItem = Started | Event | FellBehind


def watch_items(m: pb.WatchMessage) -> list[WatchItem]:
    """The items of one watch message (several for a batch of events)."""
    if m.WhichOneof("message") == "events":
        return [Event.from_pb(e) for e in m.events.events]
    return [watch_item(m)]


def watch_item(m: pb.WatchMessage) -> WatchItem:
    which = m.WhichOneof("message")
    if which == "event":
        return Event.from_pb(m.event)
    if which == "fell_behind":
        behind = m.fell_behind
        return FellBehind(seq=behind.resume_after_seq, cause=_enum(FellBehindCause, behind.cause))
    return Started(head_seq=m.started.head_seq)


@dataclasses.dataclass(frozen=True, slots=True)
class StatsCounts:
    """Counts over one period; ``fast_reply_rate`` = fast_first_replies / (first_replies +
    unreplied), the share of first replies within 2 minutes of the request."""

    assigned: int
    reassigned: int
    transferred: int
    timeouts: int
    first_replies: int
    fast_first_replies: int
    unreplied: int
    fast_reply_rate: float

    @classmethod
    def from_pb(cls, m: pb.StatsCounts) -> StatsCounts:
        return cls(
            assigned=m.assigned,
            reassigned=m.reassigned,
            transferred=m.transferred,
            timeouts=m.timeouts,
            first_replies=m.first_replies,
            fast_first_replies=m.fast_first_replies,
            unreplied=m.unreplied,
            fast_reply_rate=m.fast_reply_rate,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class AgentStats:
    agent_id: str
    status: Status
    load: int
    served_today: int


@dataclasses.dataclass(frozen=True, slots=True)
class ShardOwner:
    """Who serves one virtual shard: ``node_id`` "" while nobody does (it is moving)."""

    shard: int
    node_id: str
    address: str
    epoch: int  # the owner's fencing token: grows with every change of owner
    # messages of the shard's stream its owner has not applied yet (normally 0, or the
    # batch in flight; large while a new owner replays): only with cluster_map(with_lag=
    # True); None: unknown (not asked, nobody owns it, its owner or stream did not answer)
    lag: int | None = None


def _lag(m: pb.ShardOwner) -> int | None:
    return m.lag if m.HasField("lag") else None


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterNode:
    node_id: str
    address: str


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterMap:
    """Cluster mode: every shard's owner (a shop's shard is crc32(shop_id) % shards), the
    live nodes, and the node that answered. Outside cluster mode: cluster "", no owners."""

    cluster: str
    shards: int
    node_id: str
    nodes: tuple[ClusterNode, ...]
    owners: tuple[ShardOwner, ...]

    @classmethod
    def from_pb(cls, m: pb.ClusterMap) -> ClusterMap:
        return cls(
            cluster=m.cluster,
            shards=m.shards,
            node_id=m.node_id,
            nodes=tuple(ClusterNode(n.node_id, n.address) for n in m.nodes),
            owners=tuple(
                ShardOwner(o.shard, o.node_id, o.address, o.epoch, _lag(o)) for o in m.owners
            ),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class ShopStats:
    shop_id: str
    at_ms: int
    queue_length: int
    longest_wait_ms: int
    left_messages: int
    open_sessions: int
    today: StatsCounts
    window: StatsCounts
    window_minutes: int
    agents: tuple[AgentStats, ...]
    event_seq: int

    @classmethod
    def from_pb(cls, m: pb.ShopStats) -> ShopStats:
        return cls(
            shop_id=m.shop_id,
            at_ms=m.at_ms,
            queue_length=m.queue_length,
            longest_wait_ms=m.longest_wait_ms,
            left_messages=m.left_messages,
            open_sessions=m.open_sessions,
            today=StatsCounts.from_pb(m.today),
            window=StatsCounts.from_pb(m.window),
            window_minutes=m.window_minutes,
            agents=tuple(
                AgentStats(a.agent_id, _enum(Status, a.status), a.load, a.served_today)
                for a in m.agents
            ),
            event_seq=m.event_seq,
        )

"""The core's vocabulary: enums, the shop policy, commands in, results out.

Enum values equal the protobuf ones (``protos/fenliu/v1/fenliu.proto``) so the adapter
converts by value. Commands are msgspec structs: every state change is one of them,
carries its own timestamp ``at`` (milliseconds since the epoch) and can be journaled.
"""

from __future__ import annotations

import enum

import msgspec

from .errors import ERRORS, FenliuError

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR


class Status(enum.IntEnum):
    ONLINE = 1
    INVISIBLE = 2
    SUSPENDED = 3
    OFFLINE = 4


class Role(enum.IntEnum):
    SUB = 1
    MAIN = 2


class Strategy(enum.IntEnum):
    LEAST_NEW = 1
    LEAST_LOAD = 2
    ROUND_ROBIN = 3


class QueueOrder(enum.IntEnum):
    FIFO = 1
    LIFO = 2


class OnQueueFull(enum.IntEnum):
    LEAVE_MESSAGE = 1
    REJECT = 2


class Outcome(enum.IntEnum):
    ASSIGNED = 1
    BACKLOG = 2
    QUEUED = 3
    LEFT_MESSAGE = 4
    TEAM_DELIVERY = 5


class Reason(enum.IntEnum):
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
    """Which buyer notice a priority reception shows (seed 004); NONE: no notice.

    The title is by the member crowd (会员专属客服 / 优先接待生效), the text by how the shop
    routes: with a queue, 已跳过排队直连人工; without, 已安排优先接待.
    """

    NONE = 0
    SKIPPED_QUEUE = 1
    ARRANGED = 2
    MEMBER_SKIPPED_QUEUE = 3
    MEMBER_ARRANGED = 4


class State(enum.IntEnum):
    QUEUED = 1
    BACKLOG = 2
    ASSIGNED = 3
    ACTIVE = 4
    LEFT_MESSAGE = 5
    ENDED = 6


class QueueSort(enum.IntEnum):
    QUEUE_ORDER = 0
    LONGEST_WAIT = 1
    SHORTEST_WAIT = 2


class SessionSort(enum.IntEnum):
    """The three orders of an agent's reception list (seed 003)."""

    LATEST_MESSAGE = 1  # the buyer's latest message, newest first
    LONGEST_WAIT = 2  # waiting for a reply, longest first; then answered, latest message first
    ACCESS_TIME = 3  # when the session reached the agent, newest first


class MessageFilter(enum.IntEnum):
    ANY = 0
    WAITING = 1  # the buyer waits for a reply
    ANSWERED = 2  # the agent spoke last


LIT_CHANNELS = frozenset({"item_page", "order_page", "shop_home"})
"""Seed 004's "lit" entries (亮灯分流): the only channels a priority notice is shown on."""


RECEIVING = (Status.ONLINE, Status.INVISIBLE)


class Policy(msgspec.Struct, kw_only=True):
    """A shop's routing policy; the defaults apply until the shop sets its own."""

    strategy: Strategy = Strategy.LEAST_NEW
    queue_order: QueueOrder = QueueOrder.FIFO
    queue_limit: int = 1000
    on_queue_full: OnQueueFull = OnQueueFull.LEAVE_MESSAGE
    priority_crowds: tuple[str, ...] = ()
    priority_may_exceed_capacity: bool = True
    notice_interval_ms: int = 8 * HOUR
    route_when_all_suspended: bool = True
    auto_assign_left_messages: bool = True
    accept_timeout_ms: int = 10 * MINUTE
    reply_timeout_ms: int = 30 * MINUTE
    idle_end_timeout_ms: int = 15 * MINUTE
    queue_wait_limit_ms: int = 0
    sticky_window_ms: int = DAY
    recent_contact_ttl_ms: int = 180 * DAY
    time_zone: str = "Asia/Shanghai"
    member_crowd: str = ""  # the crowd whose priority notice has the member wording
    # group -> the crowds it serves (seed 004's 人群接待范围); a buyer in one of them is
    # routed within the group first
    group_crowds: dict[str, tuple[str, ...]] = msgspec.field(default_factory=dict)


class PolicyChange(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The fields of a SetPolicy; ``None`` leaves a field as it is."""

    strategy: Strategy | None = None
    queue_order: QueueOrder | None = None
    queue_limit: int | None = None
    on_queue_full: OnQueueFull | None = None
    priority_crowds: tuple[str, ...] | None = None
    priority_may_exceed_capacity: bool | None = None
    notice_interval_ms: int | None = None
    route_when_all_suspended: bool | None = None
    auto_assign_left_messages: bool | None = None
    accept_timeout_ms: int | None = None
    reply_timeout_ms: int | None = None
    idle_end_timeout_ms: int | None = None
    queue_wait_limit_ms: int | None = None
    sticky_window_ms: int | None = None
    recent_contact_ttl_ms: int | None = None
    time_zone: str | None = None
    member_crowd: str | None = None
    group_crowds: dict[str, tuple[str, ...]] | None = None


# ---------------------------------------------------------------- commands (journaled)


class Command(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    """A state change. ``at`` is its time in ms; the core never reads a clock.

    Commands are the journal's records, so their schema is on disk: every command names its
    tag explicitly (never derived from the class name), fields are the attribute names
    below, and fields with their default value are left out. Evolve by adding fields with
    defaults; never rename a tag or a field (``tests/server/storage/test_schema.py`` pins
    them).

    Every command but Tick may carry an idempotency key, ``request_id`` (Route's is
    required and keeps only its decision, rule 0; see ``Shard.apply`` for the others').
    """

    at: int


class SetPolicy(Command, tag="SetPolicy"):
    shop_id: str
    change: PolicyChange
    request_id: str = ""  # idempotency key (issue 11): see Shard.apply


class RegisterAgent(Command, tag="RegisterAgent"):
    shop_id: str
    agent_id: str
    role: Role = Role.SUB
    groups: tuple[str, ...] = ()
    max_concurrent: int = 0
    status: Status = Status.OFFLINE  # for a new agent only
    # An existing agent: True replaces its role, groups and max_concurrent; False refuses
    # (ALREADY_EXISTS) unless they are the same (a retried registration). None: a journal
    # record from before this field, applied as it was then (create or replace).
    replace: bool | None = None
    request_id: str = ""  # idempotency key (issue 11): see Shard.apply


class UpdateAgent(Command, tag="UpdateAgent"):
    """Change only the fields given (None leaves one as it is)."""

    shop_id: str
    agent_id: str
    role: Role | None = None
    groups: tuple[str, ...] | None = None
    max_concurrent: int | None = None
    request_id: str = ""  # idempotency key (issue 11): see Shard.apply


class StarSession(Command, tag="StarSession"):
    """Star (or unstar) a session in the agent's list (seed 003's 星标)."""

    shop_id: str
    agent_id: str
    session_id: str
    starred: bool = True
    request_id: str = ""  # idempotency key (issue 11): see Shard.apply


class RemoveAgent(Command, tag="RemoveAgent"):
    shop_id: str
    agent_id: str
    request_id: str = ""  # idempotency key (issue 11): see Shard.apply


class SetStatus(Command, tag="SetStatus"):
    shop_id: str
    agent_id: str
    status: Status
    request_id: str = ""  # idempotency key (issue 11): see Shard.apply


class AddPrivateContact(Command, tag="AddPrivateContact"):
    shop_id: str
    buyer_id: str
    request_id: str = ""  # idempotency key (issue 11): see Shard.apply


class RemovePrivateContact(Command, tag="RemovePrivateContact"):
    shop_id: str
    buyer_id: str
    request_id: str = ""  # idempotency key (issue 11): see Shard.apply


class Route(Command, tag="Route"):
    shop_id: str
    buyer_id: str
    request_id: str
    addressed_agent_id: str = ""
    crowds: tuple[str, ...] = ()
    group: str = ""
    channel: str = ""
    from_team_member: bool = False


class Acknowledge(Command, tag="Acknowledge"):
    shop_id: str
    agent_id: str
    session_id: str
    request_id: str = ""  # idempotency key (issue 11): see Shard.apply


class Reply(Command, tag="Reply"):
    shop_id: str
    agent_id: str
    session_id: str
    request_id: str = ""  # idempotency key (issue 11): see Shard.apply


class Transfer(Command, tag="Transfer"):
    shop_id: str
    session_id: str
    agent_id: str = ""
    to_agent_id: str = ""
    to_group: str = ""
    force: bool = False
    request_id: str = ""  # idempotency key (issue 11): see Shard.apply


class EndSessions(Command, tag="EndSessions"):
    shop_id: str
    session_ids: tuple[str, ...]
    request_id: str = ""  # idempotency key (issue 11): see Shard.apply


class Pick(Command, tag="Pick"):
    shop_id: str
    agent_id: str
    session_id: str = ""
    force: bool = False
    request_id: str = ""  # idempotency key (issue 11): see Shard.apply


class LeaveQueue(Command, tag="LeaveQueue"):
    shop_id: str
    buyer_id: str
    request_id: str = ""  # idempotency key (issue 11): see Shard.apply


class Tick(Command, tag="Tick"):
    """Fires every timer of shard ``shard`` due at ``at``; the server sends one to a shard
    only when one of its timers is due. ``shard`` -1 (records of format 3 and before, and
    tests) ticks every shard."""

    shard: int = -1


AnyCommand = (
    SetPolicy
    | RegisterAgent
    | UpdateAgent
    | StarSession
    | RemoveAgent
    | SetStatus
    | AddPrivateContact
    | RemovePrivateContact
    | Route
    | Acknowledge
    | Reply
    | Transfer
    | EndSessions
    | Pick
    | LeaveQueue
    | Tick
)


# ---------------------------------------------------------------- queries (not journaled)


class Query(msgspec.Struct, tag=True, kw_only=True):
    at: int
    shop_id: str


class GetPolicy(Query):
    pass


class ListTeam(Query):
    pass


class GetSession(Query):
    session_id: str


class ListAgentSessions(Query):
    """The agent's reception list: in progress (ASSIGNED, ACTIVE, backlog) and ended."""

    agent_id: str
    sort: SessionSort = SessionSort.LATEST_MESSAGE
    channel: str = ""
    messages: MessageFilter = MessageFilter.ANY


class ListRecentContacts(Query):
    """Buyers the agent served last, newest first, within recent_contact_ttl."""

    agent_id: str
    limit: int = 100


class ListStarred(Query):
    """The agent's starred sessions, newest star first, within recent_contact_ttl."""

    agent_id: str
    limit: int = 100


class ListQueue(Query):
    priority_only: bool = False
    group: str = ""
    channel: str = ""
    sort: QueueSort = QueueSort.QUEUE_ORDER
    limit: int = 100


class GetPosition(Query):
    buyer_id: str


class ListLeftMessages(Query):
    limit: int = 100


class GetShopStats(Query):
    """The shop's stats; ``window_minutes`` 0 means the longest window (60)."""

    window_minutes: int = 0


AnyQuery = (
    GetPolicy
    | ListTeam
    | GetSession
    | ListAgentSessions
    | ListRecentContacts
    | ListStarred
    | ListQueue
    | GetPosition
    | ListLeftMessages
    | GetShopStats
)


# ---------------------------------------------------------------- results


class Decision(msgspec.Struct, frozen=True, gc=False):
    """Where a buyer's message (or a moved session) went, and which rule decided.

    Not kw_only: the core builds one per decision positionally, in field order (a call
    with keywords costs ~300 instructions more); elsewhere name the fields."""

    outcome: Outcome
    reason: Reason
    buyer_id: str
    agent_id: str = ""
    session_id: str = ""
    queue_position: int = 0
    state: State | None = None
    priority_notice: bool = False  # notice is not NONE (for clients before PriorityNotice)
    notice: PriorityNotice = PriorityNotice.NONE


class AgentView(msgspec.Struct, kw_only=True, frozen=True):
    agent_id: str
    role: Role
    groups: tuple[str, ...]
    max_concurrent: int
    status: Status
    load: int
    new_count: int
    backlog_size: int
    served_today: int
    over_capacity: bool = False  # load > max_concurrent (seed 003's warning)


class SessionView(msgspec.Struct, kw_only=True, frozen=True):
    session_id: str
    buyer_id: str
    state: State
    agent_id: str
    group: str
    channel: str
    priority: bool
    queue_position: int
    created_at: int
    first_reply_at: int
    reason: Reason
    assigned_at: int = 0  # reached its current agent (接入时间); backlog: entered it
    last_buyer_at: int = 0  # the buyer's latest message
    waiting_since: int = 0  # the buyer's first unanswered message; 0: answered
    last_message_at: int = 0  # the latest message either way
    ended_at: int = 0
    starred: bool = False  # starred by the agent holding (or last holding) it


class AgentSessionsView(msgspec.Struct, kw_only=True, frozen=True):
    """The agent's list: sessions in progress and recently ended ones, both sorted."""

    sessions: tuple[SessionView, ...]
    ended: tuple[SessionView, ...]
    load: int
    max_concurrent: int
    over_capacity: bool  # load > max_concurrent: nothing new until it is below


class ContactView(msgspec.Struct, kw_only=True, frozen=True):
    buyer_id: str
    agent_id: str
    last_at: int  # the agent's last act for the buyer (or the end of that session)


class StarredView(msgspec.Struct, kw_only=True, frozen=True):
    session_id: str
    buyer_id: str
    starred_at: int
    state: State  # ENDED once it is no longer open


class QueueEntryView(msgspec.Struct, kw_only=True, frozen=True):
    session_id: str
    buyer_id: str
    position: int
    priority: bool
    group: str
    channel: str
    waited_ms: int
    agent_id: str = ""


class QueueList(msgspec.Struct, kw_only=True, frozen=True):
    entries: tuple[QueueEntryView, ...]
    total: int


class StatusResult(msgspec.Struct, kw_only=True, frozen=True):
    agent: AgentView
    moved: tuple[Decision, ...]


class Moved(msgspec.Struct, kw_only=True, frozen=True):
    """Sessions a command moved elsewhere (RemoveAgent, Tick)."""

    moved: tuple[Decision, ...]


class EndResult(msgspec.Struct, kw_only=True, frozen=True):
    ended: int
    already_ended: int
    moved: tuple[Decision, ...]


class CountsView(msgspec.Struct, kw_only=True, frozen=True):
    """A shop's counts over one period (today, or the sliding window).

    ``fast_reply_rate`` = fast_first_replies / (first_replies + unreplied): sessions whose
    first reply came within 2 minutes of the request, among those whose first reply came,
    ended without one, or is already more than 2 minutes late. 0 when there are none.
    """

    assigned: int
    reassigned: int
    transferred: int
    timeouts: int
    first_replies: int
    fast_first_replies: int
    unreplied: int
    fast_reply_rate: float


class AgentStatsView(msgspec.Struct, kw_only=True, frozen=True):
    agent_id: str
    status: Status
    load: int
    served_today: int


class ShopStatsView(msgspec.Struct, kw_only=True, frozen=True):
    shop_id: str
    at: int
    queue_length: int
    longest_wait_ms: int
    left_messages: int
    open_sessions: int
    today: CountsView
    window: CountsView
    window_minutes: int
    agents: tuple[AgentStatsView, ...]
    event_seq: int


class Done(msgspec.Struct, frozen=True):
    """The result of a command with nothing to report."""


class Refused(msgspec.Struct, kw_only=True, frozen=True):
    """The result of a keyed command (``request_id`` set, not a Route) the core refused.

    A keyed command is remembered with its outcome, an error included, so a retry answers
    the same; remembering it is a change (it is journaled, and in the shard's image), so
    instead of raising the core returns this, and the adapter raises ``exception()``.
    ``error`` is the ``FenliuError`` class name (``errors.ERRORS``).
    """

    error: str
    message: str
    field: str = ""
    reason: str = ""
    subject: str = ""

    def exception(self) -> FenliuError:
        return ERRORS.get(self.error, FenliuError)(
            self.message, self.field, reason=self.reason, subject=self.subject
        )


# ---------------------------------------------------------------- events (for watchers)


class Event(msgspec.Struct, frozen=True, gc=False):
    """Something a workstation or dashboard watching the shop wants to know.

    kind is one of: assigned, reassigned_away, transferred, backlog_changed,
    queue_changed, status_changed, timeout, ended, left_message. ``seq`` counts the
    shop's events from 1 without gaps; ``status`` is the agent's new status
    (status_changed only). Not kw_only, as ``Decision``: ``Shop.emit`` builds it
    positionally, in field order.
    """

    kind: str
    shop_id: str
    at: int
    agent_id: str = ""
    session_id: str = ""
    buyer_id: str = ""
    reason: Reason | None = None
    seq: int = 0
    status: Status | None = None

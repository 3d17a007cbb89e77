"""fenliu's Python SDK: ``Client`` (blocking) and ``AsyncClient``, typed results and errors.

from fenliu.client import Client, Status
with Client("127.0.0.1:50051") as fenliu:
    decision = fenliu.route("shop1", "buyer1")
"""

from ._client import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    AsyncClient,
    Client,
    new_request_id,
    route_request,
)
from ._errors import (
    DeadlineExceeded,
    FailedPrecondition,
    FenliuError,
    FieldViolation,
    InternalError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PreconditionViolation,
    QueueFull,
    QuotaViolation,
    ResourceInfo,
    Unauthenticated,
    Unavailable,
)
from ._types import (
    Agent,
    AgentStats,
    Decision,
    EndResult,
    Event,
    EventKind,
    FellBehind,
    FellBehindCause,
    OnQueueFull,
    Outcome,
    Policy,
    QueueEntry,
    QueueList,
    QueueOrder,
    QueueSort,
    Reason,
    Role,
    RouteItem,
    RouteResult,
    Session,
    SessionState,
    ShopStats,
    Started,
    StatsCounts,
    Status,
    StatusResult,
    Strategy,
    WatchItem,
)
from ._version import version as _version
from ._watch import WatchStream

__version__ = _version()

__all__ = [
    # clients
    "AsyncClient",
    "Client",
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "new_request_id",
    "route_request",
    # results and enums
    "Agent",
    "Decision",
    "EndResult",
    "OnQueueFull",
    "Outcome",
    "Policy",
    "QueueEntry",
    "QueueList",
    "QueueOrder",
    "QueueSort",
    "Reason",
    "Role",
    "RouteItem",
    "RouteResult",
    "Session",
    "SessionState",
    "Status",
    "StatusResult",
    "Strategy",
    # watch and stats
    "AgentStats",
    "Event",
    "EventKind",
    "FellBehind",
    "FellBehindCause",
    "ShopStats",
    "Started",
    "StatsCounts",
    "WatchItem",
    "WatchStream",
    # errors
    "DeadlineExceeded",
    "FailedPrecondition",
    "FenliuError",
    "InternalError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "QueueFull",
    "Unauthenticated",
    "Unavailable",
    # error details
    "FieldViolation",
    "PreconditionViolation",
    "QuotaViolation",
    "ResourceInfo",
]

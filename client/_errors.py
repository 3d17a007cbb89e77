"""The SDK's errors: callers catch these, never a raw ``grpc.RpcError``.

FenliuError                 any failed call; .code, .message, .field and the details below
├── InvalidArgument         malformed input (INVALID_ARGUMENT); .field names it, .violations
├── NotFound                unknown shop, agent or session (NOT_FOUND); .resource
├── AlreadyExists           registering an agent that exists (ALREADY_EXISTS); .resource
├── FailedPrecondition      the state does not allow it (FAILED_PRECONDITION); .preconditions
├── QueueFull               the shop queue is full and says REJECT (RESOURCE_EXHAUSTED);
│                           .quota_violations
├── Unauthenticated         no or a wrong token (UNAUTHENTICATED)
├── PermissionDenied        the token may not touch this shop (PERMISSION_DENIED)
├── Unavailable             the server cannot be reached or is draining (UNAVAILABLE)
├── DeadlineExceeded        no answer within the deadline (DEADLINE_EXCEEDED)
└── InternalError           anything else (INTERNAL, UNKNOWN, ...)

Every error has these attributes, read from the call's rich status (``google.rpc.Status``
in the ``grpc-status-details-bin`` trailing metadata) or a batch item's ``Error.details``;
each is empty (or None) when the server sent no such detail (an older server, a proxy, a
transport error):

    .field              the input at fault, e.g. "agent_id" or "session_ids[1]" ("" if none)
    .reason             a stable UPPER_SNAKE_CASE code, e.g. "AGENT_OFFLINE" (ErrorInfo)
    .subject            the resource it is about, e.g. "shops/s1/agents/a1" (ErrorInfo)
    .violations         tuple[FieldViolation(field, description)]         (BadRequest)
    .preconditions      tuple[PreconditionViolation(type, subject, description)]
                                                                          (PreconditionFailure)
    .resource           ResourceInfo(resource_type, resource_name, owner, description) | None
    .quota_violations   tuple[QuotaViolation(subject, description)]       (QuotaFailure)
    .details            every detail message as decoded (google.rpc.error_details_pb2 types;
                        an unknown type stays a google.protobuf.Any)

A program branches on ``type(error)`` and ``error.reason``, never on the message text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import grpc
import grpc.aio
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2 as ed, status_pb2

FIELD_KEY = "fenliu-field"
DETAILS_KEY = "grpc-status-details-bin"
LOCAL_WRITE_FAILURE = "Internal error from Core"  # grpc.aio's details, never a server's

# The google.rpc detail types the SDK decodes (error_details.proto); others stay Any.
_DETAIL_TYPES: dict[str, type[Message]] = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (
        ed.ErrorInfo,
        ed.BadRequest,
        ed.PreconditionFailure,
        ed.ResourceInfo,
        ed.QuotaFailure,
        ed.RetryInfo,
        ed.DebugInfo,
        ed.RequestInfo,
        ed.Help,
        ed.LocalizedMessage,
    )
}


@dataclasses.dataclass(frozen=True, slots=True)
class FieldViolation:
    """One malformed request field (BadRequest.FieldViolation)."""

    field: str
    description: str


@dataclasses.dataclass(frozen=True, slots=True)
class PreconditionViolation:
    """One state that does not allow the request (PreconditionFailure.Violation).

    ``type`` is the reason code (e.g. "AGENT_FULL"), ``subject`` the resource name.
    """

    type: str
    subject: str
    description: str


@dataclasses.dataclass(frozen=True, slots=True)
class ResourceInfo:
    """The resource that was not found: ``resource_type`` "shop", "agent", "session" or
    "buyer", ``resource_name`` like "shops/s1/agents/a1", ``owner`` its shop ("shops/s1")."""

    resource_type: str
    resource_name: str
    owner: str
    description: str


@dataclasses.dataclass(frozen=True, slots=True)
class QuotaViolation:
    """One exhausted limit (QuotaFailure.Violation); ``subject`` names the shop."""

    subject: str
    description: str


class FenliuError(Exception):
    """A call failed; ``code`` is the gRPC status, ``field`` the input at fault (or "").

    ``details`` are the decoded google.rpc detail messages; the other attributes (see the
    module docstring) are read from them.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field: str = "",
        details: Sequence[Message] = (),
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.details = tuple(details)
        self.reason = ""
        self.subject = ""
        self.violations: tuple[FieldViolation, ...] = ()
        self.preconditions: tuple[PreconditionViolation, ...] = ()
        self.resource: ResourceInfo | None = None
        self.quota_violations: tuple[QuotaViolation, ...] = ()
        for detail in self.details:
            self._read(detail)
        self.field = field or self._field_from_details()

    def _read(self, detail: Message) -> None:
        if isinstance(detail, ed.ErrorInfo):
            self.reason = self.reason or detail.reason
            self.subject = self.subject or detail.metadata.get("subject", "")
        elif isinstance(detail, ed.BadRequest):
            self.violations += tuple(
                FieldViolation(v.field, v.description) for v in detail.field_violations
            )
        elif isinstance(detail, ed.PreconditionFailure):
            self.preconditions += tuple(
                PreconditionViolation(v.type, v.subject, v.description) for v in detail.violations
            )
        elif isinstance(detail, ed.ResourceInfo) and self.resource is None:
            self.resource = ResourceInfo(
                detail.resource_type, detail.resource_name, detail.owner, detail.description
            )
        elif isinstance(detail, ed.QuotaFailure):
            self.quota_violations += tuple(
                QuotaViolation(v.subject, v.description) for v in detail.violations
            )

    def _field_from_details(self) -> str:
        for detail in self.details:
            if isinstance(detail, ed.ErrorInfo) and detail.metadata.get("field"):
                return detail.metadata["field"]
        return self.violations[0].field if self.violations else ""


class InvalidArgument(FenliuError, ValueError):
    """A request field is malformed; ``field`` names it, ``violations`` say how.

    Also a ``ValueError``: the SDK raises it before any call for an argument it can tell
    is wrong (an enum name that does not exist, say), naming the parameter in ``field``."""


class NotFound(FenliuError):
    """The shop, agent or session named by ``field`` does not exist; see ``resource``."""


class AlreadyExists(FenliuError):
    """RegisterAgent of an existing agent: use update_agent, or replace=True."""


class FailedPrecondition(FenliuError):
    """The request is well formed but the current state does not allow it; see ``reason``."""


class QueueFull(FenliuError):
    """The shop queue holds queue_limit entries and the shop rejects new buyers."""


class Unauthenticated(FenliuError):
    """The call carried no token or a wrong one."""


class PermissionDenied(FenliuError):
    """The token may not touch this shop."""


class Unavailable(FenliuError):
    """The server could not be reached or is shutting down (retried for idempotent calls)."""


class DeadlineExceeded(FenliuError):
    """The server did not answer within the deadline."""


class InternalError(FenliuError):
    """The server failed in a way the caller cannot fix."""


_BY_CODE: dict[grpc.StatusCode, type[FenliuError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: QueueFull,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def error_for(
    code: grpc.StatusCode, message: str, field: str = "", details: Sequence[Message] = ()
) -> FenliuError:
    """The typed error for a status code."""
    return _BY_CODE.get(code, InternalError)(code, message, field, details)


def unpack(details: Iterable[any_pb2.Any]) -> list[Message]:
    """Decode packed details: the google.rpc types; anything else stays an ``Any``."""
    decoded: list[Message] = []
    for packed in details:
        cls = _DETAIL_TYPES.get(packed.TypeName())
        message = cls() if cls is not None else None
        decoded.append(message if message is not None and packed.Unpack(message) else packed)
    return decoded


def from_rpc_error(exc: grpc.aio.AioRpcError | grpc.RpcError) -> FenliuError:
    """Translate a failed call: code, message, ``fenliu-field`` and the rich status.

    Works for ``grpc.aio.AioRpcError`` and a blocking stub's error (a ``grpc.Call``) alike.
    A status whose code or message differs from the call's (rewritten on the way, say) is
    ignored, as ``grpc_status.rpc_status.from_call`` would refuse it; so is a corrupt one.
    """
    call: Any = exc
    code: grpc.StatusCode = call.code()
    message: str = call.details() or ""
    if code is grpc.StatusCode.INTERNAL and message == LOCAL_WRITE_FAILURE:
        # grpc.aio's own status for a stream write that failed because the call had ended
        # (the server stopping, say): it overwrites the status the call ended with
        # (grpc/grpc#36066). The stream broke; what ended it is unknown: UNAVAILABLE.
        return Unavailable(grpc.StatusCode.UNAVAILABLE, f"the stream broke: {message}")
    field = ""
    raw = b""
    for key, value in call.trailing_metadata() or ():
        if key == FIELD_KEY:
            field = value if isinstance(value, str) else value.decode()
        elif key == DETAILS_KEY and isinstance(value, bytes):
            raw = value
    return error_for(code, message, field, _status_details(raw, code, message))


def server_went_away(exc: grpc.aio.AioRpcError, error: FenliuError) -> bool:
    """Whether the failed call ``exc`` (read as ``error``) means the server is unreachable
    or went away: UNAVAILABLE, or a CANCELLED status, with which a stopping server cuts
    its calls off (our own task's cancellation raises CancelledError instead)."""
    return isinstance(error, Unavailable) or exc.code() == grpc.StatusCode.CANCELLED


def _status_details(raw: bytes, code: grpc.StatusCode, message: str) -> list[Message]:
    if not raw:
        return []
    try:
        status = status_pb2.Status.FromString(raw)
    except DecodeError:
        return []
    if status.code != code.value[0] or status.message != message:
        return []
    return unpack(status.details)

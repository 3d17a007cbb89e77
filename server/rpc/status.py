"""Core errors -> gRPC statuses with rich error details: the one place where the mapping lives.

    FenliuError subclass  grpc.StatusCode      google.rpc details (after an ErrorInfo)
    InvalidArgument       INVALID_ARGUMENT     BadRequest.FieldViolation(field, message)
    NotFound              NOT_FOUND            ResourceInfo(type, subject, owner, message)
    AlreadyExists         ALREADY_EXISTS       ResourceInfo(type, subject, owner, message)
    FailedPrecondition    FAILED_PRECONDITION  PreconditionFailure.Violation(reason, subject, ..)
    ResourceExhausted     RESOURCE_EXHAUSTED   QuotaFailure.Violation(subject, message)
    Unavailable           UNAVAILABLE          none more (the journal could not be written)
      NotOwner            UNAVAILABLE          none more; ErrorInfo reason NOT_OWNER, metadata
                                               {"owner", "address", "epoch"} (cluster mode)
    anything else         INTERNAL, logged, with a generic message and no details

    AccessError subclass   (refused before the call runs; not core errors)
    Unauthenticated        UNAUTHENTICATED (no token, or an unknown one)
    PermissionDenied       PERMISSION_DENIED (a shop outside the token's scope)

Every core error also gets an ErrorInfo first: ``reason`` (the core error's stable
code), ``domain`` "fenliu", ``metadata`` {"field", "subject"} when set. The details travel
as a ``google.rpc.Status`` in the ``grpc-status-details-bin`` trailing metadata (and in
``Error.details`` for RouteBatch items); the field also travels, as before, in the
trailing metadata under ``fenliu-field``. All of it is built only when a call fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any, NamedTuple

import grpc
import grpc.aio
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2 as ed, status_pb2
from grpc_status import rpc_status

from fenliu.client._pb import fenliu_pb2 as pb

from ..core import errors

log = logging.getLogger(__name__)

FIELD_KEY = "fenliu-field"
DOMAIN = "fenliu"
INTERNAL_MESSAGE = "internal error; the server has logged it"
MAX_ECHO = 300
"""UTF-8 bytes of a field name or subject an error echoes (a valid subject is at most 270)."""
MAX_MESSAGE = 600
"""UTF-8 bytes of an error's message. Message and details travel in headers, which grpc
limits to 8 KB by default: clipped, the largest failure stays near 5 KB."""


def clip(text: str, limit: int = MAX_ECHO) -> str:
    """``text`` cut to ``limit`` UTF-8 bytes (saying how much was cut): what errors and logs
    echo of a caller's input, so a 100 KB id gives a short message, never an oversized header."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    head = data[: max(0, limit - 32)].decode("utf-8", "ignore")
    return f"{head}...({len(text) - len(head)} more characters)"


class Echo(NamedTuple):
    """An error's parts as a caller is told them: each clipped."""

    reason: str
    message: str
    field: str
    subject: str

    @classmethod
    def of(cls, exc: errors.FenliuError) -> Echo:
        return cls(exc.reason, clip(exc.message, MAX_MESSAGE), clip(exc.field), clip(exc.subject))


CODES: dict[type[errors.FenliuError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.NotOwner: grpc.StatusCode.UNAVAILABLE,
}

# The resource types of ResourceInfo, by the collection in a subject's name.
_RESOURCE_TYPES = {"agents": "agent", "sessions": "session", "buyers": "buyer", "groups": "group"}


def _bad_request(exc: Echo) -> list[Message]:
    violation = ed.BadRequest.FieldViolation(field=exc.field, description=exc.message)
    return [ed.BadRequest(field_violations=[violation])]


def _resource_info(exc: Echo) -> list[Message]:
    parts = exc.subject.split("/")  # shops/<shop>[/<collection>/<id>], or "" if unknown
    kind, owner = "", ""
    if len(parts) == 4:
        kind, owner = _RESOURCE_TYPES.get(parts[2], parts[2]), "/".join(parts[:2])
    elif len(parts) == 2:
        kind = "shop"
    return [
        ed.ResourceInfo(
            resource_type=kind, resource_name=exc.subject, owner=owner, description=exc.message
        )
    ]


def _precondition_failure(exc: Echo) -> list[Message]:
    violation = ed.PreconditionFailure.Violation(
        type=exc.reason, subject=exc.subject, description=exc.message
    )
    return [ed.PreconditionFailure(violations=[violation])]


def _quota_failure(exc: Echo) -> list[Message]:
    violation = ed.QuotaFailure.Violation(subject=exc.subject, description=exc.message)
    return [ed.QuotaFailure(violations=[violation])]


def _no_more(exc: Echo) -> list[Message]:
    return []


DETAILS: dict[type[errors.FenliuError], Callable[[Echo], list[Message]]] = {
    errors.InvalidArgument: _bad_request,
    errors.NotFound: _resource_info,
    errors.AlreadyExists: _resource_info,
    errors.FailedPrecondition: _precondition_failure,
    errors.ResourceExhausted: _quota_failure,
    errors.Unavailable: _no_more,
    errors.NotOwner: _no_more,
}
"""The code-specific details of each class in ``CODES`` (the same keys)."""


class AccessError(Exception):
    """A caller refused by the call guard: ``message`` says why, ``field`` names the shop's."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class Unauthenticated(AccessError):
    pass


class PermissionDenied(AccessError):
    pass


ACCESS_CODES: dict[type[AccessError], grpc.StatusCode] = {
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


class Failure(NamedTuple):
    """What a client is told about an error."""

    code: grpc.StatusCode
    message: str
    field: str
    details: tuple[Message, ...] = ()


def code_for(exc: BaseException) -> grpc.StatusCode | None:
    """The code of the most specific class of ``exc`` in ``CODES``; None if none matches."""
    for cls in type(exc).__mro__:
        code = CODES.get(cls)
        if code is not None:
            return code
    return None


def details_for(exc: errors.FenliuError, echo: Echo | None = None) -> tuple[Message, ...]:
    """ErrorInfo, then the details of the most specific class of ``exc`` in ``DETAILS``."""
    echo = echo or Echo.of(exc)
    metadata = {"field": echo.field, "subject": echo.subject}
    if isinstance(exc, errors.NotOwner):  # where the shard is served (cluster mode)
        metadata |= {"owner": exc.owner, "address": exc.address, "epoch": str(exc.epoch or "")}
    info = ed.ErrorInfo(
        reason=echo.reason, domain=DOMAIN, metadata={k: v for k, v in metadata.items() if v}
    )
    for cls in type(exc).__mro__:
        more = DETAILS.get(cls)
        if more is not None:
            return (info, *more(echo))
    return (info,)


def failure(exc: Exception) -> Failure:
    """A core or access error as it is (what it echoes clipped: ``clip``); anything else
    logged and hidden behind INTERNAL."""
    if isinstance(exc, AccessError):
        return Failure(ACCESS_CODES[type(exc)], clip(exc.message, MAX_MESSAGE), clip(exc.field))
    code = code_for(exc)
    if code is None or not isinstance(exc, errors.FenliuError):
        log.error("unexpected error while serving a call", exc_info=exc)
        return Failure(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, "")
    echo = Echo.of(exc)
    return Failure(code, echo.message, echo.field, details_for(exc, echo))


def _packed(details: tuple[Message, ...]) -> list[any_pb2.Any]:
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)
        packed.append(item)
    return packed


def rich_status(failed: Failure) -> status_pb2.Status:
    """``failed`` as a ``google.rpc.Status``."""
    return status_pb2.Status(
        code=failed.code.value[0], message=failed.message, details=_packed(failed.details)
    )


def error_message(exc: Exception) -> pb.Error:
    """``exc`` as a RouteBatch item's ``Error``."""
    failed = failure(exc)
    return pb.Error(
        code=failed.code.value[0],
        message=failed.message,
        field=failed.field,
        details=_packed(failed.details),
    )


def trailing_metadata(failed: Failure) -> tuple[tuple[str, str | bytes], ...]:
    """``fenliu-field`` (when there is a field) and the rich status (when there are details)."""
    metadata: tuple[tuple[str, str | bytes], ...] = (
        ((FIELD_KEY, failed.field),) if failed.field else ()
    )
    if failed.details:
        metadata += tuple(rpc_status.to_status(rich_status(failed)).trailing_metadata)
    return metadata


class abort_on_error:
    """``async with abort_on_error(context):`` aborts the call with ``failure(exc)``.

    Only for exceptions the body raises; cancellation and grpc's own aborts pass through untouched.
    """

    __slots__ = ("_context",)

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._context = context

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not isinstance(exc, Exception) or isinstance(exc, grpc.aio.AbortError):
            return
        await abort(self._context, exc)


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
    """End the call with ``failure(exc)``: its code, message, ``fenliu-field`` and details."""
    failed = failure(exc)
    await context.abort(failed.code, failed.message, trailing_metadata(failed))

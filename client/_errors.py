"""The SDK's errors: callers catch these, never a raw ``grpc.RpcError``.

FenliuError                 any failed call; .code, .message, .field
├── InvalidArgument         malformed input (INVALID_ARGUMENT); .field names it
├── NotFound                unknown shop, agent or session (NOT_FOUND)
├── FailedPrecondition      the state does not allow it (FAILED_PRECONDITION)
├── QueueFull               the shop queue is full and says REJECT (RESOURCE_EXHAUSTED)
├── Unauthenticated         no or a wrong token (UNAUTHENTICATED)
├── PermissionDenied        the token may not touch this shop (PERMISSION_DENIED)
├── Unavailable             the server cannot be reached or is draining (UNAVAILABLE)
├── DeadlineExceeded        no answer within the deadline (DEADLINE_EXCEEDED)
└── InternalError           anything else (INTERNAL, UNKNOWN, ...)
"""

from __future__ import annotations

from typing import Any

import grpc

FIELD_KEY = "fenliu-field"


class FenliuError(Exception):
    """A call failed; ``code`` is the gRPC status, ``field`` the input at fault (or "")."""

    def __init__(self, code: grpc.StatusCode, message: str, field: str = "") -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field = field


class InvalidArgument(FenliuError):
    """A request field is malformed; ``field`` names it."""


class NotFound(FenliuError):
    """The shop, agent or session named by ``field`` does not exist."""


class FailedPrecondition(FenliuError):
    """The request is well formed but the current state does not allow it."""


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
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: QueueFull,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def error_for(code: grpc.StatusCode, message: str, field: str = "") -> FenliuError:
    """The typed error for a status code."""
    return _BY_CODE.get(code, InternalError)(code, message, field)


def from_rpc_error(exc: grpc.aio.AioRpcError) -> FenliuError:
    """Translate a failed call, reading the field from the trailing metadata."""
    field = ""
    metadata: Any = exc.trailing_metadata() or ()
    for key, value in metadata:
        if key == FIELD_KEY:
            field = value if isinstance(value, str) else value.decode()
    return error_for(exc.code(), exc.details() or "", field)

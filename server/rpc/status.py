"""Core errors -> gRPC status codes: the one place where the mapping lives.

    FenliuError subclass   grpc.StatusCode
    InvalidArgument        INVALID_ARGUMENT
    NotFound               NOT_FOUND
    FailedPrecondition     FAILED_PRECONDITION
    ResourceExhausted      RESOURCE_EXHAUSTED
    Unavailable            UNAVAILABLE (the journal could not be written)
    anything else          INTERNAL, logged, with a generic message

    AccessError subclass   (refused before the call runs; not core errors)
    Unauthenticated        UNAUTHENTICATED (no token, or an unknown one)
    PermissionDenied       PERMISSION_DENIED (a shop outside the token's scope)

A core error's message names the field; the field itself travels in the trailing
metadata under ``fenliu-field`` (and in ``Error.field`` for RouteBatch items).
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any, NamedTuple

import grpc
import grpc.aio

from fenliu.client._pb import fenliu_pb2 as pb

from ..core import errors

log = logging.getLogger(__name__)

FIELD_KEY = "fenliu-field"
INTERNAL_MESSAGE = "internal error; the server has logged it"

CODES: dict[type[errors.FenliuError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


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


def code_for(exc: BaseException) -> grpc.StatusCode | None:
    """The code of the most specific class of ``exc`` in ``CODES``; None if none matches."""
    for cls in type(exc).__mro__:
        code = CODES.get(cls)
        if code is not None:
            return code
    return None


def failure(exc: Exception) -> Failure:
    """A core or access error as it is; anything else logged and hidden behind INTERNAL."""
    if isinstance(exc, AccessError):
        return Failure(ACCESS_CODES[type(exc)], exc.message, exc.field)
    code = code_for(exc)
    if code is None or not isinstance(exc, errors.FenliuError):
        log.error("unexpected error while serving a call", exc_info=exc)
        return Failure(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, "")
    return Failure(code, exc.message, exc.field)


def error_message(exc: Exception) -> pb.Error:
    """``exc`` as a RouteBatch item's ``Error``."""
    code, message, field = failure(exc)
    return pb.Error(code=code.value[0], message=message, field=field)


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
    """End the call with ``failure(exc)``: its code, message and ``fenliu-field``."""
    code, message, field = failure(exc)
    metadata = ((FIELD_KEY, field),) if field else ()
    await context.abort(code, message, metadata)

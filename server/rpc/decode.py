"""Requests whose bytes are not the message they claim to be: INVALID_ARGUMENT, quietly.

grpc decodes a request before any handler (or the call guard's auth) runs. Left alone, a
deserializer's ``DecodeError`` becomes UNKNOWN with protobuf's internal text, and grpc
logs a traceback per request: a fuzzer or a broken client writes megabytes of log.

``DecodeGuard`` stands in for the grpc server while the services are added to it: every
method handler gets a deserializer that returns a ``Malformed`` marker instead of raising,
and a behaviour that answers a marker with INVALID_ARGUMENT (``errors.InvalidArgument``,
reason ``MALFORMED_REQUEST``, mapped in ``status.py`` like every other error). Such
requests are logged at most once per ``LOG_INTERVAL_S`` with a count, never with a
traceback. A well-formed request costs one identity check on the way in. A streaming
handler marked ``accepts_malformed`` (RouteStream) gets the marker as an item instead, and
answers it with that error without ending the stream.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from ..core import errors
from .status import abort

log = logging.getLogger("fenliu.server")

LOG_INTERVAL_S = 10.0
REASON = "MALFORMED_REQUEST"


class Malformed:
    """What a request decodes to when its bytes are not a ``type_name`` message."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def error(self) -> errors.InvalidArgument:
        return errors.InvalidArgument(
            f"the request is not a valid {self.type_name} message", reason=REASON
        )


class RateLimitedLog:
    """One warning per ``interval`` seconds at most, counting the ones it held back."""

    def __init__(
        self, interval: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ):
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self.held = 0  # occurrences since the last line

    def note(self, method: str) -> None:
        now = self._clock()
        self.held += 1
        if self._last is not None and now - self._last < self.interval:
            return
        log.warning(
            "malformed request bytes (answered INVALID_ARGUMENT): %d since the last such "
            "line, the latest for %s",
            self.held,
            method,
        )
        self._last, self.held = now, 0


MALFORMED_LOG = RateLimitedLog()


def _tolerant(deserializer: Callable[[bytes], Any] | None, type_name: str) -> Any:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, RuntimeWarning, ValueError):
            return Malformed(type_name)

    return decode


def _noted(decode: Any, method: str) -> Any:
    """``decode`` that logs (rate-limited) each request it finds malformed."""
    if decode is None:
        return None

    def noted(data: bytes) -> Any:
        request = decode(data)
        if request.__class__ is Malformed:
            MALFORMED_LOG.note(method)
        return request

    return noted


def _type_name(deserializer: Any) -> str:
    owner = getattr(deserializer, "__self__", None)  # Message.FromString is a classmethod
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "request"))


async def _reject(method: str, context: grpc.aio.ServicerContext[Any, Any], bad: Malformed) -> None:
    MALFORMED_LOG.note(method)
    await abort(context, bad.error())


async def _checked_stream(
    method: str, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[Any]:
    async for request in requests:
        if request.__class__ is Malformed:
            await _reject(method, context, request)
        yield request


def guarded(method: str, handler: Any) -> Any:
    """``handler`` (a grpc RpcMethodHandler) with malformed requests answered as above.

    A behaviour with a ``wire_codec`` (Route's and RouteBatch's, ``wire.py``) gets its
    requests from the codec's reader and gives its answers to the codec's serializer
    instead of upb's."""
    inner = handler.unary_unary or handler.unary_stream or handler.stream_unary
    inner = inner or handler.stream_stream
    read, serialize = handler.request_deserializer, handler.response_serializer
    wire_codec = getattr(inner, "wire_codec", None)
    if wire_codec is not None:
        read, serialize = wire_codec
    decode = _tolerant(read, _type_name(handler.request_deserializer))
    codec = {"request_deserializer": decode, "response_serializer": serialize}
    if handler.unary_unary is not None or handler.unary_stream is not None:
        if inspect.isasyncgenfunction(inner):

            async def unary_gen(request: Any, context: Any) -> AsyncIterator[Any]:
                if request.__class__ is Malformed:
                    await _reject(method, context, request)
                async for response in inner(request, context):
                    yield response

            behaviour: Any = unary_gen
        else:

            async def unary(request: Any, context: Any) -> Any:
                if request.__class__ is Malformed:
                    await _reject(method, context, request)
                return await inner(request, context)

            behaviour = unary
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(behaviour, **codec)
        return grpc.unary_stream_rpc_method_handler(behaviour, **codec)
    if getattr(inner, "accepts_malformed", False):  # answers each malformed item itself
        stream_codec = {**codec, "request_deserializer": _noted(decode, method)}
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(inner, **stream_codec)
        return grpc.stream_stream_rpc_method_handler(inner, **stream_codec)

    if inspect.isasyncgenfunction(inner):

        async def stream_gen(requests: Any, context: Any) -> AsyncIterator[Any]:
            async for response in inner(_checked_stream(method, requests, context), context):
                yield response

        behaviour = stream_gen
    else:

        async def stream(requests: Any, context: Any) -> Any:
            return await inner(_checked_stream(method, requests, context), context)

        behaviour = stream
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(behaviour, **codec)
    return grpc.stream_stream_rpc_method_handler(behaviour, **codec)


class _Generic(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """A generic handler whose method handlers are guarded (each built once)."""

    def __init__(self, inner: Any, built: dict[str, Any]) -> None:
        self._inner = inner
        self._built = built

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        built = self._built.get(method)
        if built is None or built[0] is not handler:
            built = self._built[method] = (handler, guarded(method, handler))
        return built[1]


class DecodeGuard:
    """Pass this where grpc's ``add_*_to_server`` functions want the server."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server: Any = server  # add_registered_method_handlers: not in grpc-stubs
        self._built: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(tuple(_Generic(h, self._built) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        wrapped = {}
        for name, handler in handlers.items():
            method = f"/{service}/{name}"
            built = self._built.get(method)
            if built is None or built[0] is not handler:
                built = self._built[method] = (handler, guarded(method, handler))
            wrapped[name] = built[1]
        self._server.add_registered_method_handlers(service, wrapped)

"""The call guard: one grpc.aio server interceptor for auth, metrics and call logging.

It is installed only when one of them is on (``Config.tokens``, ``metrics_port``,
``log_format = json``, ``access_log``): with all off a call goes straight to its servicer.
For each call it

- authenticates the ``authorization: Bearer <token>`` metadata (UNAUTHENTICATED),
- checks every ``shop_id`` of the request against the token's shops (PERMISSION_DENIED,
  naming the field; RouteBatch checks each item's),
- sets ``method`` and ``shop_id`` for every log line of the call,
- counts the call by method and code, times it, and counts the decisions it returned.

Health and reflection stay open and unmeasured. Server-streaming handlers (watch streams)
are checked the same way, on their one request; a client-streaming handler's requests
cannot be checked up front, so it needs a token for every shop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from ..config import Token
from ..logs import call_method, call_shop
from .auth import Authenticator, check_scope, shops_of
from .metrics import Metrics
from .status import ACCESS_CODES, AccessError, PermissionDenied, Unauthenticated, abort

access = logging.getLogger("fenliu.access")

OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
MAX_SHOPS_LOGGED = 5


class CallGuard(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """See the module docstring; ``authenticator`` None is auth off, ``metrics`` None off."""

    def __init__(
        self,
        *,
        authenticator: Authenticator | None = None,
        metrics: Metrics | None = None,
        access_log: bool = False,
    ) -> None:
        self._auth = authenticator
        self._metrics = metrics
        self._access_log = access_log

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        token: Token | None = None
        refusal: AccessError | None = None
        if self._auth is not None:
            try:
                token = self._auth.authenticate(handler_call_details.invocation_metadata)
            except Unauthenticated as exc:
                refusal = exc
        call = _Call(self, method, token, refusal)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                call.unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                call.unary_stream(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if refusal is None and token is not None and token.shops is not None:
            refusal = PermissionDenied(
                f"{method} streams requests: it needs a token for every shop", "shop_id"
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                call.unary(handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            call.unary_stream(handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class _Call:
    """One call being guarded: what it is, who made it, and how it ended."""

    __slots__ = ("guard", "method", "token", "refusal", "started", "code")

    def __init__(
        self, guard: CallGuard, method: str, token: Token | None, refusal: AccessError | None
    ) -> None:
        self.guard = guard
        self.method = method
        self.token = token
        self.refusal = refusal
        self.started = 0.0
        self.code = "OK"

    def unary(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self._begin(request)
            try:
                self._admit(request)
                response = await inner(request, context)
                if self.guard._metrics is not None:
                    self.guard._metrics.observe_response(response)
                return response
            except AccessError as exc:
                self.code = ACCESS_CODES[type(exc)].name
                await abort(context, exc)
            except BaseException as exc:
                self.code = _code_of(exc, context)
                raise
            finally:
                self._end()

        return guarded

    def unary_stream(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(inner):  # writes with context.write
            return self.unary(inner)

        async def guarded(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            self._begin(request)
            try:
                self._admit(request)
                async for response in inner(request, context):
                    yield response
            except AccessError as exc:
                self.code = ACCESS_CODES[type(exc)].name
                await abort(context, exc)
            except BaseException as exc:
                self.code = _code_of(exc, context)
                raise
            finally:
                self._end()

        return guarded

    def _begin(self, request: Any) -> None:
        self.started = time.perf_counter()
        call_method.set(self.method)  # each call runs in its own task: its own context
        if hasattr(request, "DESCRIPTOR"):
            shops = dict.fromkeys(shop for _, shop in shops_of(request))
            if shops:
                call_shop.set(",".join(list(shops)[:MAX_SHOPS_LOGGED]))

    def _admit(self, request: Any) -> None:
        if self.refusal is not None:
            raise self.refusal
        token = self.token
        if token is not None and token.shops is not None and hasattr(request, "DESCRIPTOR"):
            check_scope(token, shops_of(request))

    def _end(self) -> None:
        seconds = time.perf_counter() - self.started
        guard = self.guard
        if guard._metrics is not None:
            guard._metrics.observe_call(self.method, self.code, seconds)
        if guard._access_log:
            extra: dict[str, Any] = {"code": self.code, "duration_ms": round(seconds * 1e3, 3)}
            if self.token is not None:
                extra["token"] = self.token.name
            access.info("%s %s", self.method, self.code, extra=extra)


def _code_of(exc: BaseException, context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The status a call that raised ``exc`` ends with, by name."""
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    if isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        if isinstance(code, grpc.StatusCode):
            return code.name
        return _CODE_NAMES.get(code, "UNKNOWN") if isinstance(code, int) else "UNKNOWN"
    return "UNKNOWN"

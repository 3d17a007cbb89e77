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
import contextvars
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
from .decode import Malformed
from .metrics import Metrics
from .status import ACCESS_CODES, AccessError, PermissionDenied, Unauthenticated, abort, clip

access = logging.getLogger("fenliu.access")

OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
MAX_SHOPS_LOGGED = 5

_caller: contextvars.ContextVar[Token | AccessError | None] = contextvars.ContextVar(
    "fenliu_caller", default=None
)


class CallGuard(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """See the module docstring; ``authenticator`` None is auth off, ``metrics`` None off.

    Per call, ``intercept_service`` only authenticates and notes the caller in a context
    variable (grpc.aio runs the interceptor and the handler in the call's one task); the
    wrapped handler of each method is built once.
    """

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
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

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
        if self._auth is not None:
            try:
                _caller.set(self._auth.authenticate(handler_call_details.invocation_metadata))
            except Unauthenticated as exc:
                _caller.set(exc)
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            wrapped: grpc.RpcMethodHandler[Any, Any] = self._wrap(method, handler)
            cached = self._wrapped[method] = (handler, wrapped)
        return cached[1]

    def _wrap(self, method: str, handler: Any) -> Any:
        """``handler`` with its behaviour guarded, the (de)serializers kept."""
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            guarded = self._unary(method, handler.unary_unary, True)
            return grpc.unary_unary_rpc_method_handler(guarded, **codec)
        if handler.unary_stream is not None:
            guarded = self._streaming(method, handler.unary_stream, True)
            return grpc.unary_stream_rpc_method_handler(guarded, **codec)
        if handler.stream_unary is not None:
            guarded = self._unary(method, handler.stream_unary, False)
            return grpc.stream_unary_rpc_method_handler(guarded, **codec)
        guarded = self._streaming(method, handler.stream_stream, False)
        return grpc.stream_stream_rpc_method_handler(guarded, **codec)

    def _unary(self, method: str, inner: Callable[..., Any], checked: bool) -> Callable[..., Any]:
        """``inner`` guarded; ``checked``: its one request can be checked up front."""
        metrics = self._metrics

        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            code = "OK"
            caller = _caller.get()
            try:
                self._admit(method, request if checked else None, caller)
                response = await inner(request, context)
                if metrics is not None:
                    metrics.observe_response(response)
                return response
            except AccessError as exc:
                # counted before the refusal is sent: the caller may act on it at once
                code = ACCESS_CODES[type(exc)].name
                self._end(method, code, started, caller)
                code = ""
                await abort(context, exc)
            except BaseException as exc:
                code = _code_of(exc, context)
                raise
            finally:
                if code:
                    self._end(method, code, started, caller)

        return guarded

    def _streaming(
        self, method: str, inner: Callable[..., Any], checked: bool
    ) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(inner):  # writes with context.write
            return self._unary(method, inner, checked)

        async def guarded(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            started = time.perf_counter()
            code = "OK"
            caller = _caller.get()
            try:
                self._admit(method, request if checked else None, caller)
                async for response in inner(request, context):
                    yield response
            except AccessError as exc:
                # counted before the refusal is sent: the caller may act on it at once
                code = ACCESS_CODES[type(exc)].name
                self._end(method, code, started, caller)
                code = ""
                await abort(context, exc)
            except BaseException as exc:
                code = _code_of(exc, context)
                raise
            finally:
                if code:
                    self._end(method, code, started, caller)

        return guarded

    def _admit(self, method: str, request: Any, caller: Token | AccessError | None) -> None:
        """Set the call's log context; raise if the caller may not make this call."""
        call_method.set(method)
        if request.__class__ is Malformed:
            return  # answered INVALID_ARGUMENT by the decode guard, whoever asks
        shops = shops_of(request) if request is not None else []
        if shops:
            unique = list(dict.fromkeys(shop for _, shop in shops))[:MAX_SHOPS_LOGGED]
            call_shop.set(",".join(clip(shop) for shop in unique))
        if caller is None:
            if self._auth is not None:  # unreachable: auth on always notes the caller
                raise Unauthenticated("no credentials")
            return
        if isinstance(caller, AccessError):
            raise caller
        if caller.shops is not None:
            if request is None:
                raise PermissionDenied(
                    f"{method} streams requests: it needs a token for every shop", "shop_id"
                )
            check_scope(caller, shops)

    def _end(
        self, method: str, code: str, started: float, caller: Token | AccessError | None
    ) -> None:
        seconds = time.perf_counter() - started
        if self._metrics is not None:
            self._metrics.observe_call(method, code, seconds)
        if self._access_log:
            extra: dict[str, Any] = {"code": code, "duration_ms": round(seconds * 1e3, 3)}
            if isinstance(caller, Token):
                extra["token"] = caller.name
            access.info("%s %s", method, code, extra=extra)


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

"""``WatchStream``: a watch RPC as an async iterator that reconnects and resumes by itself."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from ._errors import FenliuError, Unavailable, from_rpc_error, server_went_away
from ._types import Started, WatchItem, watch_items

DEFAULT_GIVE_UP_AFTER = 30.0
MAX_BACKOFF = 1.0


class WatchStream:
    """``async for item in fenliu.watch_shop(shop_id):`` yields ``Started`` when (re)connected,
    then ``Event`` items in seq order, and ``FellBehind`` when events were lost (re-read the
    state then).

    When the server goes away or stops (UNAVAILABLE, or the stream cut off with CANCELLED),
    it reconnects with backoff and resumes after ``last_seq``, the seq of the last item it
    yielded (in cluster mode on the shop's owner now: a node that took the shard over
    replays its recent events, so a watcher following a shop across a failover sees no gap
    and no duplicate, or a ``FellBehind``); after
    ``give_up_after`` seconds of failed attempts in a row it raises ``Unavailable``. Other
    errors (NotFound, ...) end it.
    Close it with ``aclose()`` or ``async with``. ``connected`` says whether a stream is
    open now (between a ``Started`` and the end of that stream). ``decode`` turns one wire
    message into the items yielded (``watch_items``); a reader that needs less than an
    ``Event`` may set its own before iterating (each item must have ``seq``, or be a
    ``Started``).
    """

    def __init__(
        self,
        open_stream: Callable[[int | None], Any],
        after_seq: int | None,
        *,
        backoff: float,
        give_up_after: float = DEFAULT_GIVE_UP_AFTER,
        reroute: Callable[[FenliuError | None], Awaitable[None]] | None = None,
    ) -> None:
        """``reroute(error)``, when given, runs before each reconnection (``error`` None:
        the stream ended), so that it goes to the node serving the shop now."""
        self.last_seq = after_seq
        self.reconnects = 0
        self.connected = False
        self.decode: Callable[[Any], list[Any]] = watch_items
        self._open = open_stream
        self._backoff = backoff
        self._give_up_after = give_up_after
        self._reroute = reroute
        self._items = self._run()

    def __aiter__(self) -> WatchStream:
        return self

    async def __anext__(self) -> WatchItem:
        return await self._items.__anext__()

    async def aclose(self) -> None:
        await self._items.aclose()

    async def __aenter__(self) -> WatchStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _run(self) -> AsyncGenerator[WatchItem, None]:
        loop = asyncio.get_running_loop()
        failing_since: float | None = None
        attempt = 0
        while True:
            call = self._open(self.last_seq)
            failure: FenliuError | None = None
            try:
                async for message in call:
                    failing_since, attempt = None, 0
                    self.connected = True
                    for item in self.decode(message):  # (a batch holds several events)
                        if not isinstance(item, Started):
                            self.last_seq = item.seq
                        elif self.last_seq is None:
                            self.last_seq = item.head_seq  # a reconnect resumes from here
                        yield item
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc)
                if not server_went_away(exc, error):
                    raise error from None
                failure = error
            finally:
                self.connected = False
                call.cancel()
            # The server stopped (the stream ended) or cannot be reached: try again.
            now = loop.time()
            if failing_since is None:
                failing_since = now
            elif now - failing_since > self._give_up_after:
                raise Unavailable(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the watch stream could not reconnect for {self._give_up_after:g} s",
                )
            pause = min(self._backoff * 2**attempt, MAX_BACKOFF)
            await asyncio.sleep(pause * (0.5 + random.random()))
            attempt += 1
            self.reconnects += 1
            if self._reroute is not None:
                await self._reroute(failure)

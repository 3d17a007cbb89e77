"""Building, running and stopping a fenliu server.

Server        the grpc.aio server with the fenliu services, health, reflection and
              the ticker; build it, ``bind`` it, then ``async with`` it (or start/stop)
serve         runs a Server until SIGTERM/SIGINT: the first drains, the second exits
ServerThread  a real Server on 127.0.0.1, a free port, in a background thread (tests)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fenliu.client._pb import fenliu_pb2 as pb
from fenliu.client._version import version

from ..config import Config
from ..core import types as t
from ..core.dispatcher import Dispatcher
from ..storage.journal import Journal
from .auth import Authenticator
from .decode import DecodeGuard
from .guard import CallGuard
from .metrics import Metrics
from .monitor import add_monitor
from .reflection import add_reflection
from .service import Clock, Core, EventSink, add_services, discard
from .watch import Hub

log = logging.getLogger("fenliu.server")

SERVICE_NAMES: tuple[str, ...] = tuple(s.full_name for s in pb.DESCRIPTOR.services_by_name.values())
"""The fenliu services, by full name (``fenliu.v1.Presence``, ...)."""
_OPTIONS = [
    ("grpc.so_reuseport", 0),  # a taken port is an error, not a shared one
    # Keepalive: ping idle connections every minute so dead watch streams are dropped, and
    # accept the SDK's pings every 30 s on a quiet stream (grpc's default 5 min would
    # answer them with GOAWAY too_many_pings).
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
    ("grpc.http2.max_ping_strikes", 2),
]
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

T = TypeVar("T")


def wall_clock_ms() -> int:
    """The real time in ms since the epoch: the default clock."""
    return time.time_ns() // 1_000_000


def _open_journal(config: Config, dispatcher: Dispatcher) -> Journal | None:
    """With a data directory: the journal, the state recovered from it."""
    if not config.data_dir:
        log.warning("no data directory: state lives in memory and a restart loses it")
        return None
    if not config.fsync:
        log.warning("fsync is OFF: a crash may lose acknowledged changes (benchmarks only)")
    journal = Journal(dispatcher, Path(config.data_dir), fsync=config.fsync)
    journal.recover()
    return journal


# About this often a periodic freeze is a full one (README "Garbage collection").
FULL_FREEZE_INTERVAL_S = 3600.0


def freeze_heap(*, full: bool = False) -> float:
    """Collect garbage, then move every surviving object to the permanent generation.

    Later collections skip frozen objects, so they cost what was allocated since the last
    freeze, not the whole core. An ordinary freeze collects the young generations only and
    freezes the rest unexamined: it costs what is young, and cyclic garbage it freezes
    (objects in flight at that instant) waits for the next ``full`` one, which unfreezes
    everything and walks the whole heap once. Returns the seconds it took.
    """
    started = time.perf_counter()
    if full:
        gc.unfreeze()
        gc.collect()
    else:
        gc.collect(1)
    gc.freeze()
    return time.perf_counter() - started


class Server:
    """The fenliu services over one dispatcher, with health, reflection and the ticker.

    Build it inside a running event loop; ``bind`` then ``start`` (or ``async with``).
    Health says NOT_SERVING until started, SERVING while running, NOT_SERVING once stopping.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        dispatcher: Dispatcher | None = None,
        now_ms: Clock = wall_clock_ms,
        events: EventSink = discard,
    ) -> None:
        self.config = config or Config()
        self.dispatcher = dispatcher or Dispatcher(self.config.shards)
        self.journal = _open_journal(self.config, self.dispatcher)
        self.hub = Hub()  # watch streams; ``events`` gets every event too
        self.core = Core(self.dispatcher, now_ms, self.hub.tee(events), self.journal)
        self._snapshotter: asyncio.Task[None] | None = None
        self._freezer: asyncio.Task[None] | None = None
        self.snapshotting = False  # a snapshot (perhaps a forked child) is under way
        self.port: int | None = None
        self._health: Any = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.metrics = Metrics(self.dispatcher, self.hub) if self.config.metrics_port else None
        if self.metrics is not None and self.journal is not None:
            self.journal.observe_fsync(self.metrics.fsync.observe)
        self._grpc = grpc.aio.server(interceptors=_interceptors(self.config, self.metrics),
                                     options=_OPTIONS)  # fmt: skip
        self._ticker: asyncio.Task[None] | None = None
        # Every service through the decode guard: malformed bytes are INVALID_ARGUMENT.
        self._services = cast(grpc.aio.Server, DecodeGuard(self._grpc))  # its add_* methods
        add_services(self._services, self.core)
        add_monitor(self._services, self.core, self.hub)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._services)
        add_reflection(self._services, (*SERVICE_NAMES, health.SERVICE_NAME))

    def add_generic_rpc_handlers(
        self, handlers: tuple[grpc.GenericRpcHandler[Any, Any], ...]
    ) -> None:
        """Serve more services (before ``start``); the call and decode guards cover them too."""
        self._services.add_generic_rpc_handlers(handlers)

    def bind(self) -> int:
        """Listen on the configured host and port; returns the port (the one picked for 0).

        Raises:
            OSError: the address cannot be bound.
        """
        host, port = self.config.host, self.config.port
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            if self.config.tls:
                bound = self._grpc.add_secure_port(address, _credentials(self.config))
            else:
                bound = self._grpc.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address}: {exc}") from None
        if not bound:
            raise OSError(f"cannot listen on {address}")
        self.port = bound
        return bound

    async def start(self) -> None:
        """Bind if not bound yet, start serving and ticking, then report SERVING."""
        if self.port is None:
            self.bind()
        if self.metrics is not None and self.metrics.port is None:
            host = self.config.metrics_host or self.config.host
            try:
                self.metrics.serve(host, self.config.metrics_port)
            except OSError as exc:
                raise OSError(f"metrics cannot listen on {host}:{self.config.metrics_port}: "
                              f"{exc.strerror}") from None  # fmt: skip
            log.info("metrics on http://%s:%d/metrics", host, self.metrics.port)
        await self._set_health(_NOT_SERVING)
        if self.config.gc_freeze_interval_s:  # the recovered state is never traversed again
            log.info("gc: froze the recovered heap in %.3fs", freeze_heap(full=True))
            self._freezer = asyncio.create_task(self._freeze_forever(), name="fenliu-gc")
        await self._grpc.start()
        self._ticker = asyncio.create_task(self._tick_forever(), name="fenliu-ticker")
        if self.journal is not None:
            self._snapshotter = asyncio.create_task(self._snapshot_forever(), name="fenliu-snap")
        await self._set_health(_SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls, give running ones ``grace`` seconds.

        ``grace`` defaults to ``config.grace_s``. Calling it again with a shorter grace
        (0 cancels running calls now) cuts a running drain short.
        """
        await self._health.enter_graceful_shutdown()
        self.hub.close()  # watch streams end now: a drain must not wait for them
        await self._grpc.stop(self.config.grace_s if grace is None else grace)
        for task in (self._ticker, self._snapshotter, self._freezer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._ticker = self._snapshotter = self._freezer = None
        journal, self.journal = self.journal, None  # a second stop() must not close it twice
        if journal is not None:
            await self._snapshot(journal)  # a quick start next time
            journal.close()
        if self.metrics is not None:  # off the loop: a scrape in progress may wait on it
            await asyncio.to_thread(self.metrics.close)

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _set_health(self, status: int) -> None:
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, status)

    async def _tick_forever(self) -> None:
        interval = self.config.tick_interval_s
        while True:
            await asyncio.sleep(interval)
            await self.tick()

    async def tick(self) -> None:
        """Fire the timers due now: one ``Tick`` command, stamped by the clock."""
        try:
            await self.core.execute(t.Tick(at=self.core.now()))
        except Exception:
            log.exception("a tick failed")

    async def _freeze_forever(self) -> None:
        interval = self.config.gc_freeze_interval_s
        full_every = max(1, round(FULL_FREEZE_INTERVAL_S / interval))
        since_full = 0
        while True:
            await asyncio.sleep(interval)
            since_full += 1
            # A full collection writes every object's GC header: while a forked snapshot
            # child shares the heap copy-on-write, that would copy every page. It waits.
            full = since_full >= full_every and not self.snapshotting
            if full:
                since_full = 0
            seconds = freeze_heap(full=full)
            if self.metrics is not None:
                self.metrics.gc_freeze.observe(seconds)

    async def _snapshot_forever(self) -> None:
        assert self.journal is not None
        while True:
            await asyncio.sleep(self.config.snapshot_interval_s)
            try:
                seconds = await self._snapshot(self.journal, fork=True)
            except OSError as exc:
                log.error("a snapshot failed: %s", exc)
                continue
            log.info("snapshot of all shards took %.3fs", seconds)

    async def _snapshot(self, journal: Journal, *, fork: bool = False) -> float:
        """Snapshot every shard; returns (and with metrics, records) how long it took."""
        started = time.perf_counter()
        self.snapshotting = True
        try:
            await journal.snapshot(fork=fork)
        finally:
            self.snapshotting = False
        seconds = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.snapshot.observe(seconds)
        return seconds


def _interceptors(config: Config, metrics: Metrics | None) -> list[CallGuard] | None:
    """The call guard, if anything needs it; with nothing on (None), a call pays for nothing."""
    if config.auth:
        log.info("auth is on: %d tokens; health and reflection stay open", len(config.tokens))
    else:
        log.warning("auth is OFF: any caller may touch any shop (configure [[auth.tokens]])")
    if not (config.auth or metrics or config.access_log or config.log_format == "json"):
        return None
    authenticator = Authenticator(config.tokens) if config.auth else None
    return [CallGuard(authenticator=authenticator, metrics=metrics, access_log=config.access_log)]


def _credentials(config: Config) -> grpc.ServerCredentials:
    """TLS from the PEM files; with ``tls_client_ca`` clients must present a certificate.

    Raises:
        OSError: a file cannot be read; the message names its key.
    """
    pem: dict[str, bytes] = {}
    for key in ("tls_cert", "tls_key", "tls_client_ca"):
        path = getattr(config, key)
        if path:
            try:
                pem[key] = Path(path).read_bytes()
            except OSError as exc:
                raise OSError(f"{key}: cannot read {path}: {exc.strerror}") from None
    return grpc.ssl_server_credentials(
        [(pem["tls_key"], pem["tls_cert"])],
        root_certificates=pem.get("tls_client_ca"),
        require_client_auth="tls_client_ca" in pem,
    )


class _Signals:
    """Two-stage exit: the first SIGTERM/SIGINT asks to drain, the second to stop now."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.drain = asyncio.Event()
        self.hurry = asyncio.Event()
        self.exit_code = 0
        self._loop = asyncio.get_running_loop()
        for signum in self.SIGNALS:
            self._loop.add_signal_handler(signum, self._received, signum)

    def _received(self, signum: int) -> None:
        if not self.drain.is_set():
            log.info("received %s: draining; send it again to stop now", signal.strsignal(signum))
            self.drain.set()
        else:
            self.exit_code = 128 + signum
            self.hurry.set()

    def close(self) -> None:
        for signum in self.SIGNALS:
            self._loop.remove_signal_handler(signum)


async def serve(
    config: Config,
    *,
    now_ms: Clock = wall_clock_ms,
    events: EventSink = discard,
) -> int:
    """Run a server until SIGTERM or SIGINT; returns the process exit code.

    Logs ``fenliu serving on HOST:PORT`` once ready. The first signal stops intake and
    drains for up to ``config.grace_s`` (exit 0); a second one cancels what is left
    and exits with 128 + its number.
    """
    signals = _Signals()
    started = time.monotonic()
    log.info("fenliu %s starting; effective configuration: %s", version(), config.effective())
    try:
        server = Server(config, now_ms=now_ms, events=events)
        await server.start()
        if config.tls:
            log.info("TLS is on%s", " with client certificates" if config.tls_client_ca else "")
        log.info("fenliu serving on %s:%d", config.host, server.port)
        await signals.drain.wait()
        await _drain(server, signals)
        log.info("fenliu stopped after %.1fs of service, exit code %d",
                 time.monotonic() - started, signals.exit_code)  # fmt: skip
        return signals.exit_code
    finally:
        signals.close()


async def _drain(server: Server, signals: _Signals) -> None:
    drain = asyncio.create_task(server.stop())
    hurry = asyncio.create_task(signals.hurry.wait())
    await asyncio.wait((drain, hurry), return_when=asyncio.FIRST_COMPLETED)
    hurry.cancel()
    if not drain.done():
        await server.stop(0)
    await drain


class ServerThread:
    """A real server on 127.0.0.1 and a free port, in a thread with its own event loop.

    ``with ServerThread() as server:`` gives ``server.port``, ``server.target``
    (``"127.0.0.1:PORT"``), ``server.dispatcher`` and, with metrics on,
    ``server.metrics_port``. ``config`` supplies everything else (shards, tick interval,
    grace, auth, metrics, TLS); its host and port are replaced by 127.0.0.1 and 0.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        dispatcher: Dispatcher | None = None,
        now_ms: Clock = wall_clock_ms,
        events: EventSink = discard,
        timeout: float = 10.0,
    ) -> None:
        self.config = dataclasses.replace(config or Config(), host="127.0.0.1", port=0)
        self.dispatcher = dispatcher or Dispatcher(self.config.shards)
        self.port = 0
        self.target = ""
        self.metrics_port: int | None = None
        self._now_ms = now_ms
        self._events = events
        self._timeout = timeout
        self._thread = threading.Thread(target=self._run, name="fenliu-server", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._server: Server | None = None

    def start(self) -> None:
        """Start the thread and wait until the server serves.

        Raises:
            RuntimeError: it did not start within ``timeout`` seconds (or failed: chained).
        """
        self._thread.start()
        if not self._ready.wait(self._timeout) or self._error is not None:
            self.stop()
            raise RuntimeError("the fenliu server thread did not start") from self._error

    def stop(self) -> None:
        """Stop the server (running calls get the config's grace) and join the thread."""
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(self._timeout + self.config.grace_s)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the server's event loop (between calls) and return its result."""
        if self._loop is None:
            raise RuntimeError("the server is not running")

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(self._timeout)

    def execute(self, command: t.AnyCommand) -> Any:
        """Apply ``command`` on the server's loop, as a servicer would (events to the sink)."""
        server = self._server
        if server is None:
            raise RuntimeError("the server is not running")
        if self._loop is None:
            raise RuntimeError("the server is not running")
        coroutine = server.core.execute(command)
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(self._timeout)

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start(); a thread must not die loudly
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = Server(
            self.config, dispatcher=self.dispatcher, now_ms=self._now_ms, events=self._events
        )
        async with server:
            self._server = server
            self.port = server.port or 0
            self.target = f"127.0.0.1:{self.port}"
            self.metrics_port = server.metrics.port if server.metrics is not None else None
            self._ready.set()
            await self._stopping.wait()

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
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fenliu.client._pb import fenliu_pb2 as pb
from fenliu.client._version import version

from ..config import Config
from ..core import types as t
from ..core.dispatcher import Dispatcher
from ..node import Clock, EventSink, Node, discard
from ..snapshots import Snapshotter, snapshot_in_process
from ..storage.files import FilesStorage
from .auth import Authenticator
from .cluster import add_cluster
from .decode import DecodeGuard
from .guard import CallGuard
from .metrics import Metrics
from .monitor import add_monitor
from .reflection import add_reflection
from .service import add_services
from .watch import Hub

if TYPE_CHECKING:
    from ..cluster.runtime import ClusterRuntime

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


def _open_storage(config: Config) -> FilesStorage | None:
    """With a data directory: its files, locked and checked (the state is not read yet).

    Raises:
        StorageError: the directory is locked, or made with another shard count.
    """
    if not config.data_dir:
        log.warning("no data directory: state lives in memory and a restart loses it")
        return None
    if not config.fsync:
        log.warning("fsync is OFF: a crash may lose acknowledged changes (benchmarks only)")
    return FilesStorage(
        Path(config.data_dir),
        config.shards,
        fsync=config.fsync,
        truncate_corrupt=config.truncate_corrupt_journal,
        created_by=f"fenliu {_version()}",
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fenliu")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


SNAPSHOT_RETRY_S = 10.0
"""A failed snapshot is tried again this soon (or at the interval, if shorter)."""

# About this often a periodic freeze is a full one (README "Garbage collection").
FULL_FREEZE_INTERVAL_S = 3600.0

NO_AUTOMATIC_FULL: Final = 1 << 30
"""Generation 2's threshold while the server freezes: CPython's own full collections never
start. Between freezes one would walk only what was allocated since the last freeze (the
permanent generation is skipped), which the next freeze freezes unexamined anyway; under a
growing world they ran again and again over the same second's survivors (a RouteBatch of
new buyers: 5 of them a 3 s run, half the server's GC time)."""


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
        self.storage: FilesStorage | None = None  # opened, the state recovered, by start()
        self.snapshotter: Snapshotter | None = None
        self.hub = Hub()  # watch streams; ``events`` gets every durable event too
        self.node = Node(self.dispatcher, now_ms, self.hub.tee(events), undo=self.hub,
                         commit_delay=self.config.commit_delay_s)  # fmt: skip
        self._snapshots: asyncio.Task[None] | None = None
        self.cluster: ClusterRuntime | None = None  # cluster mode: started by start()
        self._freezer: asyncio.Task[None] | None = None
        self._gc_threshold: tuple[int, int, int] | None = None  # the process's, while frozen
        self.port: int | None = None
        self._health: Any = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.metrics = Metrics(self.dispatcher, self.hub) if self.config.metrics_port else None
        self._grpc = grpc.aio.server(interceptors=_interceptors(self.config, self.metrics),
                                     options=_OPTIONS)  # fmt: skip
        self._ticker: asyncio.Task[None] | None = None
        # Every service through the decode guard: malformed bytes are INVALID_ARGUMENT.
        self._services = cast(grpc.aio.Server, DecodeGuard(self._grpc))  # its add_* methods
        add_services(self._services, self.node)
        add_monitor(self._services, self.node, self.hub)
        add_cluster(self._services, self.config, lambda: self.cluster)
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
        """Open the data directory and recover the state from it, bind if not bound yet,
        start serving and ticking, then report SERVING.

        Raises:
            StorageError, FormatError: the data directory cannot be used as it is.
            OSError: an address cannot be bound.
        """
        if self.config.data_dir and self.storage is None and not self.config.cluster:
            storage = _open_storage(self.config)
            try:
                self.node.open(storage)
            except BaseException:
                if storage is not None:
                    storage.close()
                raise
            self.storage = storage
            if storage is not None:
                if self.metrics is not None:
                    storage.on_fsync = self.metrics.fsync.observe
                # Started before gRPC's threads are (a spawn, not a fork of this process).
                self.snapshotter = Snapshotter(storage.root, self.config.shards)
                await self.snapshotter.start()
        if self.port is None:
            self.bind()
        if self.config.cluster and self.cluster is None:
            from ..cluster.runtime import ClusterRuntime  # cluster mode's packages only then

            address = self.config.advertise or f"{self.config.host}:{self.port}"
            cluster = ClusterRuntime(self.config, self.node, address, self.hub)
            if self.metrics is not None:
                from ..cluster.metrics import ClusterMetrics

                cluster.metrics = ClusterMetrics(
                    self.metrics.registry, lambda: self.cluster, self.node
                )
            await cluster.start()
            self.cluster = cluster
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
            if self._gc_threshold is None:
                self._gc_threshold = gc.get_threshold()
                young, middle, _ = self._gc_threshold
                gc.set_threshold(young, middle, NO_AUTOMATIC_FULL)
            self._freezer = asyncio.create_task(self._freeze_forever(), name="fenliu-gc")
        await _whole(self._grpc.start())
        self._ticker = asyncio.create_task(self._tick_forever(), name="fenliu-ticker")
        if self.storage is not None:
            self._snapshots = asyncio.create_task(self._snapshot_forever(), name="fenliu-snap")
        await self._set_health(_SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls, give running ones ``grace`` seconds.

        ``grace`` defaults to ``config.grace_s``. Calling it again with a shorter grace
        (0 cancels running calls now) cuts a running drain short.
        """
        await self._health.enter_graceful_shutdown()
        cluster, self.cluster = self.cluster, None
        if cluster is not None:  # a planned hand-off: the next owners take the shards now
            await cluster.stop()
        self.hub.close()  # watch streams end now: a drain must not wait for them
        await self._grpc.stop(self.config.grace_s if grace is None else grace)
        for task in (self._ticker, self._snapshots, self._freezer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._ticker = self._snapshots = self._freezer = None
        if self._gc_threshold is not None:  # the GC is the process's: give it back as it was
            gc.set_threshold(*self._gc_threshold)
            self._gc_threshold = None
        storage, self.storage = self.storage, None  # a second stop() must not close it twice
        if storage is not None:
            try:
                if not await self._snapshot(storage):  # a quick start next time
                    log.warning("snapshotting in-process instead")
                    await snapshot_in_process(self.node, storage)
            finally:
                if self.snapshotter is not None:
                    await self.snapshotter.close()
                storage.close()
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
        """Fire the timers due now: a ``Tick`` for each shard with one due, stamped by the
        clock (a shard with none due journals nothing); retry restoring failed shards."""
        self.node.retry_restores()
        ticks = self.node.due_ticks()
        outcomes = await asyncio.gather(
            *(self.node.execute(tick) for tick in ticks), return_exceptions=True
        )
        for tick, outcome in zip(ticks, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.error("the tick of shard %d failed: %s", tick.shard, outcome)

    async def _freeze_forever(self) -> None:
        interval = self.config.gc_freeze_interval_s
        full_every = max(1, round(FULL_FREEZE_INTERVAL_S / interval))
        since_full = 0
        while True:
            await asyncio.sleep(interval)
            since_full += 1
            full = since_full >= full_every
            if full:
                since_full = 0
            seconds = freeze_heap(full=full)
            if self.metrics is not None:
                self.metrics.gc_freeze.observe(seconds)

    async def _snapshot_forever(self) -> None:
        assert self.storage is not None
        interval = self.config.snapshot_interval_s
        wait = interval
        while True:
            await asyncio.sleep(wait)
            ok = await self._snapshot(self.storage)
            # A failed snapshot is tried again soon, not at the next interval.
            wait = interval if ok else min(interval, SNAPSHOT_RETRY_S)

    async def _snapshot(self, storage: FilesStorage) -> bool:
        """Every shard's snapshot by the snapshotter, logged and (with metrics) timed and
        counted; whether it was stored."""
        assert self.snapshotter is not None
        started = time.perf_counter()
        ok = await self.snapshotter.snapshot(storage)
        seconds = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.snapshot.observe(seconds)
            if not ok:
                self.metrics.snapshot_failures.inc()
        if ok:
            log.info("snapshot of all shards took %.3fs", seconds)
        else:
            log.error("the snapshot FAILED after %.3fs; retrying in %.0fs", seconds,
                      min(self.config.snapshot_interval_s, SNAPSHOT_RETRY_S))  # fmt: skip
        return ok


async def _whole(step: Awaitable[T]) -> T:
    """``step`` run to its end even if the start is cancelled meanwhile (a second signal
    while starting), the cancel raised once it is: a gRPC server cancelled half-way
    through its start fails its stop (InvalidStateError out of grpc, and the storage and
    snapshotter it would have closed next left open). Other steps need none: a cancelled
    spawn of the snapshotter kills the child, the cluster's start leaves the cluster."""
    task = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


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
    """Two-stage exit: the first SIGTERM/SIGINT asks to drain, the second to stop now
    (installed before the server starts: a signal while starting is one of these too)."""

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

    A signal while starting: the first lets the start end (in cluster mode its shards
    claimed), then stops as above without ever logging ``serving on`` (exit 0); a second
    one cancels the start where it is and exits with 128 + its number (what was opened is
    closed; in cluster mode the lease is revoked, its shards free at once).
    """
    signals = _Signals()
    started = time.monotonic()
    log.info("fenliu %s starting; effective configuration: %s", version(), config.effective())
    try:
        server = Server(config, now_ms=now_ms, events=events)
        if not await _start(server, signals):
            log.info("fenliu stopped while starting, exit code %d", signals.exit_code)
            return signals.exit_code
        if config.tls:
            log.info("TLS is on%s", " with client certificates" if config.tls_client_ca else "")
        if signals.drain.is_set():
            log.info("fenliu signalled while starting: stopping without serving")
        else:
            log.info("fenliu serving on %s:%d", config.host, server.port)
        await signals.drain.wait()
        await _drain(server, signals)
        log.info("fenliu stopped after %.1fs of service, exit code %d",
                 time.monotonic() - started, signals.exit_code)  # fmt: skip
        return signals.exit_code
    finally:
        signals.close()


async def _start(server: Server, signals: _Signals) -> bool:
    """Start ``server`` unless a second signal comes first: then the start is cancelled
    and what it opened closed (False)."""
    start = asyncio.create_task(server.start())
    hurry = asyncio.create_task(signals.hurry.wait())
    await asyncio.wait((start, hurry), return_when=asyncio.FIRST_COMPLETED)
    hurry.cancel()
    if start.done():
        start.result()  # its error, if it failed
        return True
    start.cancel()
    try:
        await start
    except asyncio.CancelledError:
        pass
    except Exception as exc:  # noqa: BLE001 - stopping anyway: said, not raised
        log.warning("the start failed as it was cancelled: %r", exc)
    await server.stop(0)
    return False


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
        coroutine = server.node.execute(command)
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

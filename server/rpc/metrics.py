"""Prometheus metrics on their own HTTP port (``metrics_port``; 0 is off).

    fenliu_rpc_requests_total{service,method,code}    calls finished, by status code
    fenliu_rpc_duration_seconds{service,method}       call latency (histogram)
    fenliu_route_decisions_total{outcome,reason}      decisions returned by Route, RouteBatch,
                                                      Transfer and Pick (not timer moves)
    fenliu_shops, fenliu_sessions,                    gauges summed over every shop, computed
    fenliu_queued_buyers, fenliu_left_messages        on the event loop at scrape time
    fenliu_journal_fsync_seconds                      one group commit: write + fsync (histogram)
    fenliu_snapshot_duration_seconds                  one snapshot of every shard (histogram)
    fenliu_snapshot_failures_total                    snapshots that failed (each is retried)
    fenliu_gc_freeze_seconds                          one periodic collect + gc.freeze(): the
                                                      loop stalls that long (histogram)
    fenliu_build_info{version}                        1, labelled with the running version
    fenliu_watchers                                   open watch streams (gauge)
    fenliu_watch_fell_behind_total{cause}             FellBehind sent: overflow (a slow
                                                      reader), not_kept (resumed too far back),
                                                      undone (a storage failure undid changes)
    process_resident_memory_bytes, process_open_fds,  the process (prometheus_client's
    process_cpu_seconds_total, ...                    ProcessCollector, Linux /proc)

Each server has its own registry, so two servers in one process (tests) do not mix.
No label carries a shop id: 100,000 shops would be 100,000 series.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from fenliu.client._pb import fenliu_pb2 as pb
from fenliu.client._version import version

from ..core.dispatcher import Dispatcher
from ..core.types import Decision
from . import wire
from .watch import Hub

log = logging.getLogger(__name__)

RPC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
               0.5, 1.0, 2.5)  # fmt: skip
FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
SNAPSHOT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
SCRAPE_TIMEOUT_S = 5.0


class Metrics:
    """The server's metrics; ``serve`` exposes them over HTTP until ``close``."""

    def __init__(self, dispatcher: Dispatcher, hub: Hub | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        build = Gauge("fenliu_build_info", "The running fenliu", ["version"], registry=r)
        build.labels(version()).set(1)
        ProcessCollector(registry=r)
        self.rpcs = Counter(
            "fenliu_rpc_requests", "RPCs finished, by method and status code",
            ["service", "method", "code"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "fenliu_rpc_duration_seconds", "RPC latency, by method",
            ["service", "method"], buckets=RPC_BUCKETS, registry=r,
        )  # fmt: skip
        self.decisions = Counter(
            "fenliu_route_decisions", "Routing decisions returned, by outcome and reason",
            ["outcome", "reason"], registry=r,
        )  # fmt: skip
        self.fsync = Histogram(
            "fenliu_journal_fsync_seconds", "One journal group commit: write and fsync",
            buckets=FSYNC_BUCKETS, registry=r,
        )  # fmt: skip
        self.snapshot = Histogram(
            "fenliu_snapshot_duration_seconds", "One snapshot of every shard",
            buckets=SNAPSHOT_BUCKETS, registry=r,
        )  # fmt: skip
        self.snapshot_failures = Counter(
            "fenliu_snapshot_failures_total",
            "Shard snapshots that failed (each is retried)",
            registry=r,
        )
        self.gc_freeze = Histogram(
            "fenliu_gc_freeze_seconds", "One collect + gc.freeze() (the event loop waits)",
            buckets=FSYNC_BUCKETS, registry=r,
        )  # fmt: skip
        self.state = StateCollector(dispatcher, hub)
        r.register(self.state)
        self._calls: dict[str, Any] = {}
        self._codes: dict[tuple[str, str], Any] = {}
        self._decisions: dict[tuple[int, int], Any] = {}
        self._http: Any = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def observe_call(self, method: str, code: str, seconds: float) -> None:
        """Count one finished call of ``method`` ("/pkg.Service/Method") and its latency."""
        counter = self._codes.get((method, code))
        if counter is None:
            service, name = _split(method)
            counter = self._codes[(method, code)] = self.rpcs.labels(service, name, code)
        counter.inc()
        histogram = self._calls.get(method)
        if histogram is None:
            histogram = self._calls[method] = self.latency.labels(*_split(method))
        histogram.observe(seconds)

    def observe_response(self, response: Any) -> None:
        """Count the decisions in a reply (a Decision, or RouteBatch's results)."""
        kind = type(response)
        if kind is pb.Decision:
            self._decision(response)
        elif kind is pb.RouteBatchReply:
            for result in response.results:
                if result.HasField("decision"):
                    self._decision(result.decision)
        elif kind is Decision:  # Route's with the wire codec: the core's
            self._count(int(response.outcome), int(response.reason))
        elif kind is wire.RouteResults:  # RouteBatch's with the wire codec: core results
            for (outcome, reason), count in response.counts().items():
                self._count(outcome, reason, count)

    def _decision(self, decision: pb.Decision) -> None:
        self._count(decision.outcome, decision.reason)

    def _count(self, outcome: int, reason: int, count: int = 1) -> None:
        """``count`` more decisions of this outcome and reason (the proto's numbers)."""
        key = (outcome, reason)
        counter = self._decisions.get(key)
        if counter is None:
            counter = self._decisions[key] = self.decisions.labels(
                pb.Outcome.Name(outcome).removeprefix("OUTCOME_"),  # type: ignore[arg-type]
                pb.Reason.Name(reason).removeprefix("REASON_"),  # type: ignore[arg-type]
            )
        counter.inc(count)

    def serve(self, host: str, port: int) -> int:
        """Listen for scrapes on ``host:port`` in a thread; returns the port (0 picks one).

        Raises:
            OSError: the address cannot be bound.
        """
        self.state.loop = asyncio.get_running_loop()
        self._http, self._thread = start_http_server(port, host, self.registry)
        self.port = int(self._http.server_port)
        return self.port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._thread is not None:
            self._thread.join()
        self._http = self._thread = None


class StateCollector(Collector):
    """Gauges over the whole dispatcher, computed on the event loop when scraped."""

    def __init__(self, dispatcher: Dispatcher, hub: Hub | None = None) -> None:
        self.dispatcher = dispatcher
        self.hub = hub
        self.loop: asyncio.AbstractEventLoop | None = None

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        figures = self._figures()
        if figures is None:
            return
        docs = {
            "fenliu_shops": "Shops in this process",
            "fenliu_sessions": "Sessions not yet ended, in any state",
            "fenliu_queued_buyers": "Buyers waiting in shop queues",
            "fenliu_left_messages": "Left messages not yet taken",
        }
        for name, doc in docs.items():
            yield GaugeMetricFamily(name, doc, value=figures[name])
        if "fenliu_watchers" in figures:
            yield GaugeMetricFamily(
                "fenliu_watchers", "Open watch streams", value=figures["fenliu_watchers"]
            )
            behind = CounterMetricFamily(
                "fenliu_watch_fell_behind", "FellBehind markers sent, by cause", labels=["cause"]
            )
            behind.add_metric(["overflow"], figures["overflow"])
            behind.add_metric(["not_kept"], figures["not_kept"])
            behind.add_metric(["undone"], figures["undone"])
            yield behind

    def _figures(self) -> dict[str, int] | None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return None

        async def count() -> dict[str, int]:
            figures = state_figures(self.dispatcher)
            if self.hub is not None:
                figures["fenliu_watchers"] = self.hub.watching()
                figures["overflow"] = self.hub.fell_behind.overflow
                figures["not_kept"] = self.hub.fell_behind.not_kept
                figures["undone"] = self.hub.fell_behind.undone
            return figures

        try:
            future = asyncio.run_coroutine_threadsafe(count(), loop)
            return future.result(SCRAPE_TIMEOUT_S)
        except Exception as exc:  # a stopping loop: scrape the counters without the gauges
            log.warning("state gauges skipped: %r", exc)
            return None


def state_figures(dispatcher: Dispatcher) -> dict[str, int]:
    """Totals over every shop (run on the loop: the core is not thread-safe)."""
    shops = sessions = queued = left = 0
    for shard in dispatcher.shards:
        for shop in shard.shops.values():
            shops += 1
            sessions += len(shop.sessions)
            queued += len(shop.queue)
            left += len(shop.left)
    return {
        "fenliu_shops": shops,
        "fenliu_sessions": sessions,
        "fenliu_queued_buyers": queued,
        "fenliu_left_messages": left,
    }


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name

"""Keepalive on watch streams: a connection that silently stops carrying bytes (a NAT or
firewall dropped it; nothing is closed) is noticed, and the stream reconnects.

A TCP proxy on loopback sits between the SDK and a real server; ``blackhole()`` makes the
connections it carries swallow every byte from then on, while new connections still
pass. Without keepalive pings the watch stream would wait forever on the dead connection.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from fenliu.client import Client, Event, Started, Status
from fenliu.client._client import KEEPALIVE_S, channel_options
from fenliu.client.testing import running_server

WAIT_S = 30.0
DETECT_WITHIN_S = 20.0


class Proxy:
    """Forwards 127.0.0.1:port to ``target``; ``blackhole()`` kills the open connections."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._dead: set[int] = set()
        self._open: list[tuple[int, socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        number = 0
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            number += 1
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._open.append((number, client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(number, source, sink), daemon=True
                ).start()

    def _pump(self, number: int, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if number not in self._dead:
                    sink.sendall(data)
        except OSError:
            pass

    def blackhole(self) -> None:
        with self._lock:
            self._dead.update(number for number, _, _ in self._open)

    def close(self) -> None:
        self._closing = True
        self._listener.close()
        with self._lock:
            for _, a, b in self._open:
                for s in (a, b):
                    s.close()


@pytest.fixture
def proxy() -> Iterator[tuple[Proxy, str]]:
    with running_server() as target:
        proxy = Proxy(target)
        yield proxy, target
        proxy.close()


def test_a_watch_stream_notices_a_dead_connection_and_reconnects(
    proxy: tuple[Proxy, str],
) -> None:
    relay, target = proxy
    with Client(target) as direct:
        direct.register_agent("ka-shop", "alice", max_concurrent=5, status=Status.ONLINE)
    # 1 s pings here to keep the test short (the default is 30 s); the timeout is 1 s too.
    with Client(f"127.0.0.1:{relay.port}", keepalive=1.0) as fenliu:
        stream = fenliu.watch_shop("ka-shop", give_up_after=WAIT_S)
        assert isinstance(next(stream), Started)
        relay.blackhole()  # from now on the stream's connection carries nothing
        with Client(target) as direct:
            direct.route("ka-shop", "buyer1")  # an event the dead connection cannot carry
        # The pings go unanswered, the channel drops the connection, the stream
        # reconnects through the proxy (a new connection) and resumes after its seq.
        items = []
        began = time.monotonic()
        for item in stream:
            items.append(item)
            if isinstance(item, Event):
                break
        stream.close()  # type: ignore[attr-defined]
        waited = time.monotonic() - began
    # A bound far above the ~1-2 s it takes, far below the minute grpc needs without the
    # SDK's keepalive and ping timeout (or forever: a dead link with nothing in flight).
    assert waited < DETECT_WITHIN_S
    assert isinstance(items[0], Started)  # reconnected
    assert isinstance(items[-1], Event) and items[-1].buyer_id == "buyer1"


def test_the_default_channel_pings_every_30_seconds_while_a_call_is_open() -> None:
    options = dict(channel_options())
    assert options["grpc.keepalive_time_ms"] == int(KEEPALIVE_S * 1000) == 30_000
    assert options["grpc.http2.max_pings_without_data"] == 0  # a quiet stream keeps pinging
    assert "grpc.keepalive_permit_without_calls" not in options  # idle channels stay quiet
    assert "grpc.keepalive_time_ms" not in dict(channel_options(0))

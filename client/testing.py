"""Helpers for testing code that uses the SDK against a real in-process fenliu server.

from fenliu.client import Client
from fenliu.client.testing import running_server

with running_server() as target, Client(target) as fenliu:
    ...
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def running_server(shards: int = 4) -> Iterator[str]:
    """A real fenliu server on 127.0.0.1 and a free port, in memory; yields its target."""
    from fenliu.server.config import Config
    from fenliu.server.rpc.app import ServerThread

    with ServerThread(Config(shards=shards)) as server:
        yield server.target

"""Helpers for the storage tests: a data directory's durable state, and a node on it."""

from __future__ import annotations

from pathlib import Path

from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.node import Node
from fenliu.server.storage.base import recover
from fenliu.server.storage.files import FilesStorage

T0 = 1_700_000_000_000


def load(data: Path, shards: int, *, truncate_corrupt: bool = False) -> Dispatcher:
    """What the files hold, recovered in-process as a server would at start."""
    storage = FilesStorage(data, shards, fsync=False, truncate_corrupt=truncate_corrupt)
    try:
        d = Dispatcher(shards)
        for i in range(shards):
            d.install(i, recover(i, storage.logs[i], storage.snapshots[i]))
        return d
    finally:
        storage.close()


def open_node(data: Path, shards: int, *, fsync: bool = False) -> tuple[Node, FilesStorage]:
    """A node serving from files under ``data`` (call inside a running loop); close the
    storage when done."""
    storage = FilesStorage(data, shards, fsync=fsync)
    node = Node(Dispatcher(shards), lambda: T0)
    node.open(storage)
    return node, storage

"""The snapshotter: a process of its own that keeps a replica of every shard and writes
their snapshots, so the serving process never forks and never encodes an image.

    python -m fenliu.server.storage.snapshotter DATA_DIR SHARDS

It loads the shards as the server does (newest snapshots, then the log), then follows the
server's write-ahead log (``wal.Follower``) and takes orders on its standard input, one
JSON line each; it answers each on its standard output:

    {"to": [p0, p1, ...]}      the positions durable now (the server's): bring the replica
                               to exactly them and store every shard's snapshot there
    -> {"ok": [p0, p1, ...]}   stored (the server prunes)
    -> {"failed": "why"}       nothing stored; the replica is as good as before

It reads only what the server says is durable, never truncates or deletes a file (the
server alone prunes), and exits when its input closes. Where there are two cores the
images are encoded by two processes at once: this one forks (it has no threads and no
gRPC, so a fork here is safe).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ..core import image
from . import codec
from .base import StorageError, apply_record, load_snapshot
from .files import ShardSnapshots
from .wal import Wal

log = logging.getLogger("fenliu.snapshotter")

PROCESSES = max(1, min(2, os.cpu_count() or 1))


class Replica:
    """Every shard, kept up to date from the log by another process's orders."""

    def __init__(self, root: Path, shards: int) -> None:
        self.wal = Wal(root, shards, reader=True)  # the server's: never dropped here
        self.snapshots = [ShardSnapshots(root, i, fsync=True) for i in range(shards)]
        found = [load_snapshot(i, self.snapshots[i], self.wal.start(i)) for i in range(shards)]
        self.shards = [shard for shard, _ in found]
        self.follower = self.wal.follow([position for _, position in found])

    def advance(self, targets: Sequence[int]) -> None:
        for index, payload in self.follower.advance(targets):
            apply_record(self.shards[index], payload)

    def store(self, targets: Sequence[int]) -> None:
        """Every shard's snapshot at ``targets`` (the replica is there), written by up to
        ``PROCESSES`` processes."""
        jobs = list(range(len(self.shards)))
        children = []
        share = jobs[::PROCESSES]
        for k in range(1, min(PROCESSES, len(jobs))):
            pid = os.fork()
            if pid == 0:
                _store_and_exit(self, jobs[k::PROCESSES], targets)
            children.append(pid)
        try:
            for i in share:
                self.snapshots[i].save(image.encode(self.shards[i], targets[i]), targets[i])
        finally:
            failed = [pid for pid in children if _exit_code(pid) != 0]
        if failed:
            raise OSError(f"{len(failed)} encoding processes failed")


def _store_and_exit(replica: Replica, shards: list[int], targets: Sequence[int]) -> NoReturn:
    code = 1
    try:
        for i in shards:
            replica.snapshots[i].save(image.encode(replica.shards[i], targets[i]), targets[i])
        code = 0
    finally:
        os._exit(code)


def _exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def serve(root: Path, shards: int) -> int:
    """Take orders on stdin until it closes; returns the exit code."""
    gc.disable()  # a replica of long-lived objects: nothing here is cyclic garbage
    replica = Replica(root, shards)
    answer({"ready": True})
    for line in sys.stdin:
        order = json.loads(line)
        targets = order["to"]
        try:
            replica.advance(targets)
            replica.store(targets)
        except (OSError, StorageError, codec.FormatError) as exc:
            log.error("a snapshot failed: %s", exc)
            answer({"failed": str(exc)})
            if isinstance(exc, StorageError):
                return 1  # the replica may be behind or broken: the server starts another
            continue
        answer({"ok": targets})
    return 0


def answer(message: object) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s snapshotter %(message)s"
    )
    return serve(Path(args[0]), int(args[1]))


if __name__ == "__main__":
    sys.exit(main())

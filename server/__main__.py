"""``python -m fenliu.server`` / ``fenliu-server``: run one fenliu server process.

Logs ``fenliu serving on HOST:PORT`` to stderr once ready (with ``--port 0`` that is how
a parent process learns the port). SIGTERM or SIGINT drains and exits 0; a second one
exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from .config import Config
from .rpc.app import serve

log = logging.getLogger("fenliu.server")


def parse_config(argv: Sequence[str] | None = None) -> Config:
    """The command line as a ``Config``; a bad value exits 2 with the field named."""
    defaults = Config()
    parser = argparse.ArgumentParser(prog="fenliu-server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=defaults.host, help="address to listen on")
    parser.add_argument("--port", type=int, default=defaults.port, help="0 picks a free port")
    parser.add_argument("--shards", type=int, default=defaults.shards)
    parser.add_argument(
        "--tick-interval", type=float, default=defaults.tick_interval_s, help="seconds"
    )
    parser.add_argument(
        "--grace", type=float, default=defaults.grace_s, help="drain time on shutdown, seconds"
    )
    parser.add_argument(
        "--data-dir",
        default="data",
        help="journal and snapshots (default ./data, created if missing; '' keeps no state)",
    )
    parser.add_argument(
        "--no-fsync", action="store_true", help="benchmarks only: acknowledged changes may be lost"
    )
    parser.add_argument(
        "--snapshot-interval", type=float, default=defaults.snapshot_interval_s, help="seconds"
    )
    args = parser.parse_args(argv)
    try:
        return Config(
            host=args.host,
            port=args.port,
            shards=args.shards,
            tick_interval_s=args.tick_interval,
            grace_s=args.grace,
            data_dir=args.data_dir,
            fsync=not args.no_fsync,
            snapshot_interval_s=args.snapshot_interval,
        )
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until it is signalled; returns the exit code."""
    config = parse_config(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        return _run(serve(config))
    except OSError as exc:
        log.error("fenliu cannot start: %s", exc)
        return 1


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(main)
    return int(uvloop.run(main))


if __name__ == "__main__":
    sys.exit(main())

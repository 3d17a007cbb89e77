"""``fenliu-dashboard``: serve the live supervisor dashboard, a client of fenliu via the SDK.

Logs ``fenliu-dashboard serving on http://HOST:PORT`` to stderr once ready (with
``--port 0`` that is how a parent process learns the port). SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from aiohttp import web

from fenliu.client import DEFAULT_TARGET, AsyncClient

from ._app import Dashboard, is_loopback

log = logging.getLogger("fenliu.dashboard")

GC_THRESHOLD = 10_000
"""Allocations between two young collections (CPython's default: 700)."""


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="fenliu-dashboard",
        description="A live supervisor dashboard for fenliu shops, in the browser.",
    )
    parser.add_argument(
        "--fenliu",
        default=env.get("FENLIU_TARGET", DEFAULT_TARGET),
        help="fenliu's address (FENLIU_TARGET; default %(default)s)",
    )
    parser.add_argument(
        "--fenliu-token",
        default=env.get("FENLIU_DASHBOARD_FENLIU_TOKEN", env.get("FENLIU_TOKEN")),
        help="the token the dashboard sends to fenliu "
        "(FENLIU_DASHBOARD_FENLIU_TOKEN, else FENLIU_TOKEN)",
    )
    parser.add_argument("--tls", action="store_true", help="talk to fenliu over TLS")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve the page on (default %(default)s)"
    )
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument(
        "--token",
        default=env.get("FENLIU_DASHBOARD_TOKEN"),
        help="the page's own token (FENLIU_DASHBOARD_TOKEN); required off loopback",
    )
    parser.add_argument(
        "--linger",
        type=float,
        default=60.0,
        help="seconds a shop stays watched after its last page closed (default %(default)s)",
    )
    parser.add_argument(
        "--shop", action="append", default=[], help="a shop to list on / (repeatable)"
    )
    args = parser.parse_args(argv)
    if not is_loopback(args.host) and not args.token:
        parser.error(f"--host {args.host} is not loopback: give the page a --token")
    if args.token is not None and len(args.token) < 8:
        parser.error("--token must be at least 8 characters")
    return args


async def serve(args: argparse.Namespace) -> None:
    # No retry budget: the page shows at once that fenliu is unreachable, and the feed and
    # the page's own reconnects try again by themselves.
    fenliu = AsyncClient(args.fenliu, token=args.fenliu_token, tls=args.tls, retry_budget=0)
    dashboard = Dashboard(fenliu, token=args.token, shops=tuple(args.shop), linger=args.linger)
    runner = web.AppRunner(dashboard.app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, shutdown_timeout=1.0)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host, port = runner.addresses[0][:2]
    shown = f"[{host}]" if ":" in host else host
    # What is loaded now lives as long as the process: out of the collector's way, and
    # young collections rarer (the feed allocates a dict per event; a collection scanning
    # the rings of every feed took ~10% of this process's CPU under a burst).
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    log.info("fenliu-dashboard serving on http://%s:%d (fenliu at %s)", shown, port, args.fenliu)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await fenliu.close()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    run(serve(args))


def run(main: Coroutine[Any, Any, None]) -> None:
    """On uvloop where it is installed (as the server: its sockets and callbacks cost less
    than asyncio's own loop, which took ~45% of this process's CPU feeding 20 pages)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        asyncio.run(main)
        return
    uvloop.run(main)


if __name__ == "__main__":  # pragma: no cover
    main()

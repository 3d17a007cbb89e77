"""``python -m fenliu.server`` / ``fenliu-server``: run one fenliu server process.

Logs ``fenliu serving on HOST:PORT`` to stderr once ready (with ``--port 0`` that is how
a parent process learns the port). SIGTERM or SIGINT drains and exits 0; a second one
exits at once with 128 + its number (143 for SIGTERM, 130 for SIGINT). Signalled while
still starting, it finishes the start, never logs ``serving on`` and stops as above (exit
0); a second signal then cancels the start and exits 128 + its number. Settings come from
defaults, a TOML file, the environment and flags (``options.py``; ``--help`` lists every
key).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from . import logs, options
from .config import Config
from .rpc.app import serve
from .storage.base import StorageError
from .storage.codec import FormatError

log = logging.getLogger("fenliu.server")


def parse_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """The settings of this process; a bad one exits 2 with the key and its source named."""
    try:
        return options.load(argv, environ)
    except options.ConfigError as exc:
        options.parser().error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until it is signalled; returns the exit code."""
    config = parse_config(argv)
    logs.configure(config.log_format, config.log_level)
    try:
        return _run(serve(config))
    except (OSError, StorageError, FormatError) as exc:
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

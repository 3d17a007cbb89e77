"""Ctrl-C for a README command (tests/test_readme.py): run it, send it SIGINT some seconds
after it is ready, exit as it did. A script of its own (no import from ``tests``): the
README blocks run it by path from a scratch directory."""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO


def ctrl_c(argv: Sequence[str]) -> int:
    """``SECONDS [--ready REGEX] -- CMD...``: run CMD, SIGINT it SECONDS after it is
    ready (at once, or once a line of its stdout or stderr matches REGEX), and exit as it did (128 +
    the signal's number if a signal ended it), like ``timeout --preserve-status -s INT``."""
    parser = argparse.ArgumentParser(prog="tests/_ctrl_c.py")
    parser.add_argument("after", type=float)
    parser.add_argument("--ready", default=None)
    parser.add_argument("--ready-timeout", type=float, default=150.0)
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    ready = threading.Event()
    pumps: list[threading.Thread] = []
    if args.ready is None:
        child = subprocess.Popen(args.command)
        ready.set()
    else:
        child = subprocess.Popen(args.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        pattern = re.compile(args.ready)

        def pump(source: IO[bytes], sink: IO[bytes]) -> None:  # passed on, and watched
            for raw in source:
                sink.write(raw)
                sink.flush()
                if pattern.search(raw.decode(errors="replace")):
                    ready.set()

        assert child.stdout is not None and child.stderr is not None
        pumps = [
            threading.Thread(target=pump, args=(child.stdout, sys.stdout.buffer), daemon=True),
            threading.Thread(target=pump, args=(child.stderr, sys.stderr.buffer), daemon=True),
        ]
        for thread in pumps:
            thread.start()
    deadline = time.monotonic() + args.ready_timeout
    while not ready.wait(0.1) and child.poll() is None and time.monotonic() < deadline:
        pass
    if not ready.is_set() and child.poll() is None:
        print(f"_ctrl_c.py: not ready after {args.ready_timeout}s (no line matching "
              f"{args.ready!r}); Ctrl-C now", file=sys.stderr, flush=True)  # fmt: skip
    try:
        code = child.wait(args.after)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGINT)
        code = child.wait()
    for thread in pumps:
        thread.join(10)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(ctrl_c(sys.argv[1:]))

"""Run a module with the process's wall clock set back (or forward) to a given moment.

    python clock.py START_MS -m fenliu.server ARGS...

``time.time``, ``time.time_ns`` and ``time.clock_gettime[_ns](CLOCK_REALTIME)`` then
start at ``START_MS`` (ms since the epoch) and advance in real time (``datetime.now`` is
not shifted); the monotonic clocks, and so every timeout and sleep, are untouched.
The golden tests start today's real server this way at the moment the golden data was
read by the commit that wrote it, so what depends on the date (served_today, the stats'
day and window) reads the same. Standard library only: it runs under old commits too.
"""

from __future__ import annotations

import runpy
import sys
import time


def main() -> None:
    start_ms = int(sys.argv[1])
    if sys.argv[2] != "-m":
        raise SystemExit("usage: clock.py START_MS -m MODULE [ARGS...]")
    module = sys.argv[3]
    offset_ns = time.time_ns() - start_ms * 1_000_000
    real_ns, real_s = time.time_ns, time.time
    real_clock_ns, real_clock = time.clock_gettime_ns, time.clock_gettime
    time.time_ns = lambda: real_ns() - offset_ns
    time.time = lambda: real_s() - offset_ns / 1e9

    def clock_gettime_ns(clock: int) -> int:
        shift = offset_ns if clock == time.CLOCK_REALTIME else 0
        return real_clock_ns(clock) - shift

    def clock_gettime(clock: int) -> float:
        shift = offset_ns if clock == time.CLOCK_REALTIME else 0
        return real_clock(clock) - shift / 1e9

    time.clock_gettime_ns = clock_gettime_ns
    time.clock_gettime = clock_gettime
    sys.argv = [module, *sys.argv[4:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

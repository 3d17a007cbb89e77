"""``python inject.py -m fenliu.server ARGS...``: a real server whose core raises an
unexpected error (RuntimeError, not a FenliuError) in the middle of any command that
places the session of buyer ``boom``, after that command has changed state.

The injection point is the core's event emission (``Shop.emit``), called once a session
has been assigned, queued, backlogged or left as a message. It is the one place in the
issue-10 tests that names core internals: if the core is rewritten, move it to whatever
is called after a command's first change.
"""

from __future__ import annotations

import runpy
import sys
from typing import Any

from fenliu.server.core import shop

_emit = shop.Shop.emit


def emit(self: Any, kind: str, agent_id: str = "", session: Any = None, *a: Any, **k: Any) -> None:
    if session is not None and getattr(session, "buyer_id", "") == "boom":
        raise RuntimeError("injected: an unexpected error in the middle of a command")
    _emit(self, kind, agent_id, session, *a, **k)


shop.Shop.emit = emit  # type: ignore[method-assign]

if __name__ == "__main__":
    if sys.argv[1] != "-m":
        raise SystemExit("usage: inject.py -m fenliu.server ARGS...")
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)

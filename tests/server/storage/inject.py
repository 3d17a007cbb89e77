"""``python inject.py -m fenliu.server ARGS...``: a real server whose core raises an
unexpected error (RuntimeError, not a FenliuError) in the middle of any command that
places the session of buyer ``boom``, after that command has changed state.

The injection point is the core's event record (``types.Event``, made by ``Shop.emit``
once a session has been assigned, queued, backlogged or left as a message): a subclass
whose ``__post_init__`` raises, put in place before the core's other modules import it.
It works on the pure and the mypyc-compiled core alike (a compiled class's methods cannot
be replaced, its calls between them are direct; ``types.py`` stays interpreted). It is the
one place in the issue-10 tests that names core internals: if the core is rewritten, move
it to whatever is called after a command's first change.
"""

from __future__ import annotations

import runpy
import sys

from fenliu.server.core import types

if "fenliu.server.core.shop" in sys.modules:
    raise SystemExit("inject.py: the core was imported before the injection")


class _Event(types.Event, frozen=True, gc=False):
    def __post_init__(self) -> None:
        if self.buyer_id == "boom":
            raise RuntimeError("injected: an unexpected error in the middle of a command")


_Event.__name__ = _Event.__qualname__ = "Event"
types.Event = _Event  # type: ignore[misc]

if __name__ == "__main__":
    if sys.argv[1] != "-m":
        raise SystemExit("usage: inject.py -m fenliu.server ARGS...")
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)

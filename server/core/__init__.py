"""The routing core. ``COMPILED``: whether its modules run compiled by mypyc (setup.py)."""

from importlib.machinery import EXTENSION_SUFFIXES
from importlib.util import find_spec

_spec = find_spec(f"{__name__}.shard")
COMPILED: bool = bool(_spec and _spec.origin and _spec.origin.endswith(tuple(EXTENSION_SUFFIXES)))

"""The routing core. ``COMPILED``: whether its modules run compiled by mypyc (setup.py)."""

from importlib.machinery import EXTENSION_SUFFIXES
from importlib.util import find_spec


def compiled(module: str) -> bool:
    """Whether ``module`` (a module of the package, by its full name) is a compiled one."""
    spec = find_spec(module)
    return bool(spec and spec.origin and spec.origin.endswith(tuple(EXTENSION_SUFFIXES)))


COMPILED: bool = compiled(f"{__name__}.shard")

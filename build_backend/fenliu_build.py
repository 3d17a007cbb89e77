"""The build backend: setuptools, plus mypy (and msgspec, for its types) as build
requirements only when ``setup.py`` compiles the core with mypyc.

Compiling is the default for wheels (``pip install .``); ``FENLIU_PURE=1`` builds the
pure-Python package. Editable installs (``pip install -e .``) are pure unless
``FENLIU_COMPILE=1``: compiled modules would hide edits to the sources until rebuilt.
"""

from __future__ import annotations

import os
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 (the rest of the PEP 517/660 hooks)

# mypy 2.4's mypyc compiles librt.strings.BytesWriter (the wire codec's writer) to inline
# appends; an older one would call it as a Python object.
_COMPILE_REQUIRES = ["mypy>=2.4", "msgspec>=0.18", "librt>=0.16"]


def _compiling(editable: bool) -> bool:
    if os.environ.get("FENLIU_PURE", "") not in ("", "0"):
        return False
    if editable:
        return os.environ.get("FENLIU_COMPILE", "") not in ("", "0")
    return True


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    requires = list(_setuptools.get_requires_for_build_wheel(config_settings))
    return requires + (_COMPILE_REQUIRES if _compiling(editable=False) else [])


def get_requires_for_build_editable(config_settings: Any = None) -> list[str]:
    requires = list(_setuptools.get_requires_for_build_editable(config_settings))
    return requires + (_COMPILE_REQUIRES if _compiling(editable=True) else [])


def build_editable(
    wheel_directory: str, config_settings: Any = None, metadata_directory: str | None = None
) -> str:
    if not _compiling(editable=True):
        os.environ["FENLIU_PURE"] = "1"  # setup.py reads it: no extension modules
    return str(_setuptools.build_editable(wheel_directory, config_settings, metadata_directory))

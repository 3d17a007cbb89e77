"""The suite runs on whichever core is installed: compiled by mypyc or pure Python.

The header says which. ``FENLIU_EXPECT_CORE=compiled`` (or ``pure``) makes the run fail
at once when the other one is installed (CI runs the suite on both).
"""

from __future__ import annotations

import os

import pytest

from fenliu.server import core


def _core() -> str:
    return "compiled" if core.COMPILED else "pure"


def pytest_report_header() -> str:
    kind = "compiled by mypyc" if core.COMPILED else "pure Python"
    return f"fenliu core: {kind} ({os.path.dirname(core.__file__)})"


def pytest_configure(config: pytest.Config) -> None:
    expected = os.environ.get("FENLIU_EXPECT_CORE", "")
    if expected and expected != _core():
        raise pytest.UsageError(
            f"FENLIU_EXPECT_CORE={expected} but the {_core()} core is installed"
        )

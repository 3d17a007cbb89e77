from __future__ import annotations

from collections.abc import Iterator

import pytest

from fenliu.client import Client
from fenliu.client.testing import running_server


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    with running_server() as target:
        yield target


@pytest.fixture
def fenliu(target: str) -> Iterator[Client]:
    with Client(target) as client:
        yield client

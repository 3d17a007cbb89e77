"""A shard refused in cluster mode (``Node.refuse``) answers its error to every call, and
the error raised again and again stays the same size (its traceback does not pile up)."""

from __future__ import annotations

import traceback

import pytest

from fenliu.server.core import types as t
from fenliu.server.core.dispatcher import Dispatcher
from fenliu.server.core.errors import NotOwner
from fenliu.server.core.shard import Shard
from fenliu.server.node import Node

T0 = 1_700_000_000_000


def test_a_refused_shard_answers_its_error_and_a_served_one_serves() -> None:
    node = Node(Dispatcher(2), lambda: T0)
    node.attach(object(), restorer=lambda index: None)
    index = node.dispatcher.index_of("s")
    node.refuse(index, NotOwner("served by n2", shard=index, owner="n2", address="h:1"))
    depths = []
    for _ in range(3):
        with pytest.raises(NotOwner) as refused:
            node.read(t.ListTeam(at=T0, shop_id="s"))
        depths.append(len(traceback.extract_tb(refused.value.__traceback__)))
    assert refused.value.address == "h:1" and node.refused == 3
    assert depths[0] == depths[-1], f"the traceback grows with every refusal: {depths}"
    node.serve(index, Shard(index))
    with pytest.raises(Exception) as unknown:
        node.read(t.ListTeam(at=T0, shop_id="s"))
    assert not isinstance(unknown.value, NotOwner)  # served: the core answers (no shop)

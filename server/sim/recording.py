"""A shop's recorded traffic: the commands its journal holds, for one shop and a time range.

Two sources, one form (``Recording``):

- a data directory (snapshot + journal), read read-only, so it may be the live one of a
  running server (the snapshotter reads it the same way): ``from_data_dir``;
- a recording file, written from a data directory by ``fenliu simulate export`` (the
  export path: the commands of one shop and range, framed as the journal frames them,
  so a recording can leave the server's machine without the whole data directory):
  ``read`` / ``write``.

Commands before the range that make the shop what it is at the range's start (policy,
team, statuses, private contacts) are kept, at the start's time; the rest before it
(routes, agents' actions, ticks) are dropped. When the journal was pruned (its first
record follows a snapshot), the shop's policy and team come from the newest snapshot and
the commands after it; the sessions open in that snapshot are not part of the recording.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from ..core import image, types as t
from ..core.dispatcher import shard_index
from ..storage import codec
from ..storage.files import MANIFEST, ShardSnapshots
from ..storage.wal import Wal

MAGIC = b"FLREC1"
"""The first bytes of a recording file (then the journal's frames)."""

_SETUP = (
    t.SetPolicy,
    t.RegisterAgent,
    t.UpdateAgent,
    t.RemoveAgent,
    t.SetStatus,
    t.AddPrivateContact,
    t.RemovePrivateContact,
)


class _Meta(msgspec.Struct, kw_only=True):
    shop_id: str
    start: int
    end: int


@dataclass
class Recording:
    """One shop's commands in time order, from ``start`` to ``end`` (ms since the epoch).

    ``Tick`` commands are the ones the server sent to the shop's shard (they keep a
    verbatim replay exact); the simulator drops them and fires timers itself.
    """

    shop_id: str
    start: int
    end: int
    commands: list[t.Command] = field(default_factory=list)

    def write(self, path: Path) -> None:
        with open(path, "wb") as f:
            f.write(MAGIC)
            meta = _Meta(shop_id=self.shop_id, start=self.start, end=self.end)
            f.write(codec.frame(msgspec.msgpack.encode(meta)))
            for command in self.commands:
                f.write(codec.frame(codec.encode_command(command)))

    @classmethod
    def read(cls, path: Path) -> Recording:
        data = path.read_bytes()
        if not data.startswith(MAGIC):
            raise ValueError(f"{path}: not a fenliu recording (fenliu simulate export writes one)")
        frames = codec.frames(data, len(MAGIC))
        first = next(frames, None)
        if first is None:
            raise ValueError(f"{path}: the recording has no header frame")
        meta = msgspec.msgpack.decode(first[0], type=_Meta)
        commands = [codec.decode_command(payload) for payload, _ in frames]
        return cls(meta.shop_id, meta.start, meta.end, commands)


def load(
    source: Path, shop_id: str | None = None, start: int | None = None, end: int | None = None
) -> Recording:
    """A recording from a data directory or a recording file (then cut to the range)."""
    if source.is_dir():
        return from_data_dir(source, shop_id, start, end)
    rec = Recording.read(source)
    if shop_id is not None and shop_id != rec.shop_id:
        raise ValueError(f"--shop: {source} records shop {rec.shop_id!r}, not {shop_id!r}")
    return cut(rec.shop_id, rec.commands, start, end)


def from_data_dir(
    root: Path, shop_id: str | None = None, start: int | None = None, end: int | None = None
) -> Recording:
    """The recording of ``shop_id`` (the only shop, or the busiest, when None) in a data
    directory, read without changing anything in it."""
    manifest = root / MANIFEST
    if not manifest.exists():
        raise ValueError(f"{root}: not a fenliu data directory (no {MANIFEST})")
    shards = int(json.loads(manifest.read_text())["shards"])
    wal = Wal(root, shards, read_only=True)
    after = [0] * shards
    seeds: dict[int, list[t.Command]] = {}
    for i in range(shards):
        if wal.start(i) > 0:  # pruned: start from the snapshot
            found = ShardSnapshots(root, i, fsync=False).load()
            if found is not None:
                shard, position = image.decode(found[0])
                after[i] = position
                seeds[i] = [
                    c for shop in shard.shops.values() for c in _shop_setup(shop, shard.now)
                ]
    by_shard: dict[int, list[t.Command]] = {i: list(c) for i, c in seeds.items()}
    for index, payload in wal.replay(after):
        by_shard.setdefault(index, []).append(codec.decode_command(payload))
    wal.close()
    if shop_id is None:
        counts: dict[str, int] = {}
        for commands in by_shard.values():
            for c in commands:
                if type(c) is t.Route:
                    counts[c.shop_id] = counts.get(c.shop_id, 0) + 1
        if not counts:
            raise ValueError(f"{root}: no shop has routed a buyer; nothing to simulate")
        shop_id = max(counts, key=lambda s: (counts[s], s))
    index = shard_index(shop_id, shards)
    own = [c for c in by_shard.get(index, []) if type(c) is t.Tick or c.shop_id == shop_id]  # type: ignore[attr-defined]
    if not any(type(c) is not t.Tick for c in own):
        raise ValueError(f"--shop: no shop {shop_id!r} in {root}")
    return cut(shop_id, own, start, end)


def cut(
    shop_id: str, commands: Iterable[t.Command], start: int | None, end: int | None
) -> Recording:
    """``commands`` from ``start`` to ``end``: the setup before ``start`` moved to it."""
    listed = list(commands)
    if not listed:
        raise ValueError(f"shop {shop_id!r}: the recording is empty")
    first = listed[0].at if start is None else start
    last = listed[-1].at if end is None else end
    if last < first:
        raise ValueError("--to: the range ends before it starts")
    out: list[t.Command] = []
    for c in listed:
        if c.at < first:
            if isinstance(c, _SETUP):
                out.append(msgspec.structs.replace(c, at=first))
        elif c.at <= last:
            out.append(c)
    return Recording(shop_id, first, last, out)


def _shop_setup(shop: object, now: int) -> Iterator[t.Command]:
    """Commands that make a shop's policy and team as a snapshot holds them."""
    from ..core.shop import Shop

    assert isinstance(shop, Shop)
    change = t.PolicyChange(**msgspec.structs.asdict(shop.policy))
    yield t.SetPolicy(at=now, shop_id=shop.shop_id, change=change)
    for agent in shop.agents.values():
        yield t.RegisterAgent(
            at=now,
            shop_id=shop.shop_id,
            agent_id=agent.agent_id,
            role=agent.role,
            groups=agent.groups,
            max_concurrent=agent.max_concurrent,
            status=agent.status,
            replace=True,
        )
    for buyer in sorted(shop.private):
        yield t.AddPrivateContact(at=now, shop_id=shop.shop_id, buyer_id=buyer)

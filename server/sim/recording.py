"""A shop's recorded traffic: the commands its journal holds, for one shop and a time range.

Two sources, one form (``Recording``):

- a data directory (snapshot + journal), read read-only, so it may be the live one of a
  running server (the snapshotter reads it the same way): ``from_data_dir``;
- a recording file, written from a data directory by ``fenliu simulate export`` (the
  export path: the commands of one shop and range, framed as the journal frames them,
  so a recording can leave the server's machine without the whole data directory):
  ``read`` / ``write``.

What comes before the range is replayed to the shop's state at the range's start, kept as
the recording's ``base`` (a shard image holding only that shop): a verbatim replay starts
from it, so the recorded session ids are the replay's; a simulation starts a fresh shop
from the base's policy, team and statuses (the sessions open at the start are not part of
it). When the journal was pruned (its first record follows a snapshot), the base is the
oldest kept snapshot the journal continues, and the commands after it.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from ..core import image, types as t
from ..core.dispatcher import Dispatcher, shard_index
from ..core.errors import FenliuError
from ..core.shard import Shard
from ..storage import codec
from ..storage.files import MANIFEST, ShardSnapshots
from ..storage.wal import Wal

MAGIC = b"FLREC1"
"""The first bytes of a recording file (then the journal's frames)."""


class _Meta(msgspec.Struct, kw_only=True):
    shop_id: str
    start: int
    end: int
    base: bytes | None = None


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
    base: bytes | None = None
    """The shop as it was at ``start`` (a shard image holding only it), when the recording
    does not begin with the shop's first command: a verbatim replay starts from it, so the
    recorded session ids are the replay's; a simulation starts from its policy and team."""

    def base_shard(self) -> Shard | None:
        return None if self.base is None else image.decode(self.base)[0]

    def setup(self) -> list[t.Command]:
        """Commands making a fresh shop what the base holds (policy, team, statuses)."""
        shard = self.base_shard()
        if shard is None or self.shop_id not in shard.shops:
            return []
        return list(_shop_setup(shard.shops[self.shop_id], self.start))

    def write(self, path: Path) -> None:
        with open(path, "wb") as f:
            f.write(MAGIC)
            meta = _Meta(shop_id=self.shop_id, start=self.start, end=self.end, base=self.base)
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
        return cls(meta.shop_id, meta.start, meta.end, commands, meta.base)


def load(
    source: Path, shop_id: str | None = None, start: int | None = None, end: int | None = None
) -> Recording:
    """A recording from a data directory or a recording file (then cut to the range)."""
    if source.is_dir():
        return from_data_dir(source, shop_id, start, end)
    rec = Recording.read(source)
    if shop_id is not None and shop_id != rec.shop_id:
        raise ValueError(f"--shop: {source} records shop {rec.shop_id!r}, not {shop_id!r}")
    return cut(rec.shop_id, rec.commands, start, end, rec.base)


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
    bases: dict[int, Shard] = {}
    for i in range(shards):
        if wal.start(i) > 0:  # pruned: start from a snapshot
            found = _oldest_snapshot(root, i, wal.start(i))
            if found is not None:
                bases[i], after[i] = image.decode(found[0])
    by_shard: dict[int, list[t.Command]] = {}
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
    own = [c for c in by_shard.get(index, []) if type(c) is t.Tick or _shop(c) == shop_id]
    base = None
    if index in bases and shop_id in bases[index].shops:
        base = _only(bases[index], shop_id)
    elif not any(type(c) is not t.Tick for c in own):
        raise ValueError(f"--shop: no shop {shop_id!r} in {root}")
    return cut(shop_id, own, start, end, base)


def _shop(c: t.Command) -> str:
    return getattr(c, "shop_id", "")


def _only(shard: Shard, shop_id: str) -> bytes:
    """The image of a shard holding only ``shop_id`` (as shard 0), its timers with it."""
    one = Shard(0)
    one.now, one.timer_seq = shard.now, shard.timer_seq
    shop = shard.shops[shop_id]
    one.shops[shop_id] = shop
    one.timers = [entry for entry in shard.timers if entry[3] is shop]
    heapq.heapify(one.timers)
    return image.encode(one, 0)


def _oldest_snapshot(root: Path, index: int, start: int) -> tuple[bytes, int] | None:
    """Shard ``index``'s oldest intact snapshot that the journal continues (position at or
    after its first kept record): the most of the journal is then replayed. The newest,
    as the server loads it, when none is older."""
    paths = sorted((root / f"shard-{index:03d}").glob("snapshot-*.snap"))
    for path in paths:
        position = int(path.stem.split("-")[1])
        if position < start:
            continue
        data = path.read_bytes()
        codec.check_header(data, str(path))
        for payload, _ in codec.frames(data, codec.HEADER_SIZE):
            return payload, position
    return ShardSnapshots(root, index, fsync=False).load()


def cut(
    shop_id: str,
    commands: Iterable[t.Command],
    start: int | None,
    end: int | None,
    base: bytes | None = None,
) -> Recording:
    """``commands`` from ``start`` to ``end``. What comes before ``start`` is replayed
    (from ``base``, if given) to the shop's state at ``start``: the new base."""
    listed = list(commands)
    if not listed and base is None:
        raise ValueError(f"shop {shop_id!r}: the recording is empty")
    first = (listed[0].at if listed else 0) if start is None else start
    last = (listed[-1].at if listed else first) if end is None else end
    if last < first:
        raise ValueError("--to: the range ends before it starts")
    before = [c for c in listed if c.at < first]
    if before:
        core = Dispatcher(1)
        if base is not None:
            core.install(0, image.decode(base)[0])
        for c in before:
            try:
                core.execute(msgspec.structs.replace(c, shard=0) if type(c) is t.Tick else c)  # type: ignore[arg-type]
            except FenliuError:
                pass  # as it was when recorded: refused then, refused now
        core.drain_events()
        shard = core.shards[0]
        base = _only(shard, shop_id) if shop_id in shard.shops else None
    kept = [c for c in listed if first <= c.at <= last]
    return Recording(shop_id, first, last, kept, base)


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

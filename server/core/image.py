"""A shard's image: its whole state as bytes (msgpack), and the shard rebuilt from them.

The core owns this form, so storage only frames and stores bytes. The image keeps
everything that decides future behaviour exactly (orders of dicts that are iterated, the
timer heap with its sequence numbers); what is derived (scope members and counters, heaps,
the queue's sorted list, buyer index) is rebuilt here on load. Its schema is positional
(``array_like``): evolve by appending fields with defaults. The history of its formats is
``storage/codec.py``'s ``FORMAT_VERSION``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from operator import attrgetter
from typing import Any

import msgspec

from . import types as t
from .shard import Shard
from .shop import T_RECENT, T_REQUEST, T_SESSION, Shop
from .state import Agent, Ended, Session
from .stats import FIELDS, ShopCounters


class EndedImage(msgspec.Struct, array_like=True, gc=False):
    """An agent list's ended session (issue 15)."""

    session_id: str
    buyer_id: str
    channel: str
    group: str
    priority: bool
    created_at: int
    assigned_at: int
    last_buyer_at: int
    last_activity: int
    first_reply_at: int
    ended_at: int
    reason: t.Reason


class AgentImage(msgspec.Struct, array_like=True, gc=False):
    agent_id: str
    role: t.Role
    groups: tuple[str, ...]
    max_concurrent: int
    status: t.Status
    sessions: list[str]  # ASSIGNED + ACTIVE, in order
    backlog: list[str]  # FIFO
    last_assign: int
    reg: int
    served_day: int
    served_count: int
    # Trailing, issue 15 (absent in older images): the agent's list's ended part, oldest
    # first, and its stars (session id -> (buyer id, time)).
    ended: list[EndedImage] | None = None
    starred: dict[str, tuple[str, int]] | None = None


class SessionImage(msgspec.Struct, array_like=True, gc=False):
    seq: int
    buyer_id: str
    state: t.State
    agent_id: str | None  # informational (the agents' lists decide); nil: none since format 3
    group: str
    priority: bool
    channel: str
    created_at: int
    entered_at: int
    assigned_at: int
    awaiting_since: int | None
    last_activity: int
    first_reply_at: int
    excluded: list[str] | None
    reason: t.Reason
    timer_due: int | None
    left_for: str
    private: bool
    last_buyer_at: int | None = None  # issue 15; absent in older images: last_activity


class CountersImage(msgspec.Struct, array_like=True, gc=False):
    day: int
    today: list[int]
    minute: int
    current: list[int]
    buckets: list[tuple[int, list[int]]]  # oldest first


class ShopImage(msgspec.Struct, array_like=True):
    shop_id: str
    policy: t.Policy
    agents: list[AgentImage]
    main: str
    sessions: list[SessionImage]  # in the shop's order
    left: list[str]  # left messages, oldest first
    recent: dict[str, tuple[str, int]]
    private: list[str]
    notices: dict[str, int]
    requests: dict[str, tuple[t.Decision, int]]
    next_seq: int
    assign_seq: int
    reg_seq: int
    event_seq: int = 0  # since format 2
    counters: CountersImage | None = None  # since format 2


class KeyedImage(msgspec.Struct, array_like=True, gc=False):
    """A keyed command the shard remembers (format 5, issue 11): ``Shard.keyed``."""

    shop_id: str
    request_id: str
    at: int
    command: t.AnyCommand
    refused: bool  # the outcome is a Refused, else the command's own result type
    outcome: msgspec.Raw


class ShardImage(msgspec.Struct, array_like=True):
    index: int
    position: int  # journal records this image covers
    now: int
    timer_seq: int
    timers: list[tuple[int, int, int, str, str]]  # due, seq, kind, shop, key (session id)
    shops: list[ShopImage]
    keyed: list[KeyedImage] | None = None  # since format 5, oldest first


# The result type of each keyed command: how its remembered outcome decodes.
_RESULTS: dict[type, Any] = {
    t.SetPolicy: t.Policy,
    t.RegisterAgent: t.AgentView,
    t.UpdateAgent: t.AgentView,
    t.StarSession: t.SessionView,
    t.RemoveAgent: t.Moved,
    t.SetStatus: t.StatusResult,
    t.AddPrivateContact: t.Done,
    t.RemovePrivateContact: t.Done,
    t.Acknowledge: t.SessionView,
    t.Reply: t.SessionView,
    t.Transfer: t.Decision,
    t.EndSessions: t.EndResult,
    t.Pick: t.Decision,
    t.LeaveQueue: t.SessionView,
}
_outcome_encoder = msgspec.msgpack.Encoder()
_outcome_decoders: dict[type | None, msgspec.msgpack.Decoder[Any]] = {
    kind: msgspec.msgpack.Decoder(result) for kind, result in _RESULTS.items()
}
_outcome_decoders[None] = msgspec.msgpack.Decoder(t.Refused)


def _keyed_images(shard: Shard) -> list[KeyedImage] | None:
    if not shard.keyed:
        return None
    encode = _outcome_encoder.encode
    return [
        KeyedImage(
            shop_id,
            request_id,
            at,
            command,
            type(outcome) is t.Refused,
            msgspec.Raw(encode(outcome)),
        )  # fmt: skip
        for (shop_id, request_id), (at, command, outcome) in shard.keyed.items()
    ]


def _restore_keyed(shard: Shard, images: list[KeyedImage] | None) -> None:
    for k in images or ():
        decoder = _outcome_decoders[None if k.refused else type(k.command)]
        shard.keyed[k.shop_id, k.request_id] = (k.at, k.command, decoder.decode(k.outcome))


def _live_key(obj: Any) -> str:
    """The id standing for a live object met while encoding (enc_hook): a session's holder."""
    if type(obj) is Agent:
        return obj.agent_id  # type: ignore[no-any-return]
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_image_encoder = msgspec.msgpack.Encoder(enc_hook=_live_key)
_image_decoder = msgspec.msgpack.Decoder(ShardImage)
# A SessionImage's fields, read in C: the live Session encodes as that array directly
# (its holder through _live_key, its excluded set as an array), no image object per session.
_session_fields: Callable[[Session], Any] = attrgetter(
    *SessionImage.__struct_fields__[:3], "agent", *SessionImage.__struct_fields__[4:]
)


def encode(shard: Shard, position: int) -> bytes:
    """The shard's whole state, covering the first ``position`` journal records.

    Built for speed (a snapshot of a million sessions must take seconds, SPEC §8): the
    sessions go to the encoder as tuples of the live objects' fields read in C (their
    holders become ids through the encoder's hook), instead of through per-item image
    structs, and the timer heap as it is.
    """
    image = ShardImage(
        index=shard.index,
        position=position,
        now=shard.now,
        timer_seq=shard.timer_seq,
        # In heap order, ended sessions' inert entries included (dropped on load): a
        # comprehension is twice as fast as the encoder's hook for the objects in them.
        timers=[
            (due, seq, kind, shop.shop_id, key if kind != T_SESSION else key.session_id)
            for due, seq, kind, shop, key in shard.timers
        ],
        shops=[_shop_image(shop) for shop in shard.shops.values()],
        keyed=_keyed_images(shard),
    )
    return _image_encoder.encode(image)


def decode(payload: bytes) -> tuple[Shard, int]:
    """A shard rebuilt from its image, and the journal position the image covers."""
    image = _image_decoder.decode(payload)
    shard = Shard(image.index)
    shard.now = image.now
    shard.timer_seq = image.timer_seq
    for shop_image in image.shops:
        shard.shops[shop_image.shop_id] = _restore_shop(shard, shop_image)
    _restore_keyed(shard, image.keyed)
    first: dict[tuple[str, int], tuple[int, int]] = {}  # the earliest table timer per shop
    dropped = False
    for due, seq, kind, shop_id, key in image.timers:
        if (kind == T_RECENT or kind == T_REQUEST) and key:  # a version 1 image
            first[shop_id, kind] = min(first.get((shop_id, kind), (due, seq)), (due, seq))
            continue
        shop = shard.shops[shop_id]
        target: Any = key
        if kind == T_SESSION:
            target = shop.sessions.get(key)
            if target is None:  # an ended session's entry (format 3): inert, left out
                dropped = True
                continue
        shard.timers.append((due, seq, kind, shop, target))  # heap order kept
    if first:  # version 1: one timer per shop and table stands for all its entries
        for (shop_id, kind), (due, seq) in first.items():
            shard.timers.append((due, seq, kind, shard.shops[shop_id], ""))
    if first or dropped:
        heapq.heapify(shard.timers)
    return shard, image.position


def _shop_image(shop: Shop) -> ShopImage:
    return ShopImage(
        shop_id=shop.shop_id,
        policy=shop.policy,
        agents=[
            AgentImage(
                a.agent_id,
                a.role,
                a.groups,
                a.max_concurrent,
                a.status,
                [s.session_id for s in a.open_sessions()],
                list(a.backlog),
                a.last_assign,
                a.reg,
                a.served_day,
                a.served_count,
                None if a.ended is None else [_ended_image(e) for e in a.ended.values()],
                None if a.starred is None else dict(a.starred),
            )  # fmt: skip
            for a in shop.agents.values()
        ],
        main=shop.main.agent_id if shop.main is not None else "",
        sessions=list(map(_session_fields, shop.sessions.values())),
        left=list(shop.left),
        recent=shop.recent_contacts(),
        private=sorted(shop.private),
        notices=dict(shop.notices),
        requests=shop.request_table(),
        next_seq=shop.next_seq,
        assign_seq=shop.assign_seq,
        reg_seq=shop.reg_seq,
        event_seq=shop.event_seq,
        counters=_counters_image(shop.counters),
    )


_ENDED_FIELDS = EndedImage.__struct_fields__
_ended_fields: Callable[[Ended], Any] = attrgetter(*_ENDED_FIELDS)


def _ended_image(e: Ended) -> EndedImage:
    return EndedImage(*_ended_fields(e))


def _restore_ended(image: EndedImage) -> Ended:
    e = Ended.__new__(Ended)
    for name in _ENDED_FIELDS:
        setattr(e, name, getattr(image, name))
    return e


def _counters_image(c: ShopCounters | None) -> CountersImage | None:
    if c is None:
        return None
    return CountersImage(c.day, c.today, c.minute, c.current, list(c.buckets.items()))


def _restore_counters(shop: Shop, image: CountersImage | None) -> None:
    if image is None:
        return
    c = shop.counters = ShopCounters()
    c.day, c.minute = image.day, image.minute
    c.set_counts(_padded(image.today), _padded(image.current))
    c.buckets = {minute: _padded(counts) for minute, counts in image.buckets}


def _padded(counts: list[int]) -> list[int]:
    """Counts as this version keeps them (an older image may hold fewer fields)."""
    return counts + [0] * (FIELDS - len(counts))


def _restore_shop(shard: Shard, image: ShopImage) -> Shop:
    shop = Shop(shard, image.shop_id)
    shop.policy = image.policy
    shop.priority_crowds = frozenset(image.policy.priority_crowds)
    shop.set_crowd_groups()
    for heap in shop.heaps.values():
        heap.strategy = image.policy.strategy
    for s in image.sessions:
        session = Session(s.seq, s.buyer_id, s.group, s.priority, s.channel, s.created_at)
        session.state = s.state
        session.entered_at, session.assigned_at = s.entered_at, s.assigned_at
        session.awaiting_since, session.last_activity = s.awaiting_since, s.last_activity
        session.first_reply_at, session.reason = s.first_reply_at, s.reason
        session.excluded = set(s.excluded) if s.excluded else None
        session.timer_due, session.left_for, session.private = s.timer_due, s.left_for, s.private
        session.last_buyer_at = s.last_activity if s.last_buyer_at is None else s.last_buyer_at
        shop.sessions[session.session_id] = session
        shop.by_buyer[session.buyer_id] = session
    for a in image.agents:
        agent = Agent(a.agent_id, a.role, a.groups, a.max_concurrent, a.status, a.reg)
        agent.last_assign, agent.served_day, agent.served_count = (
            a.last_assign, a.served_day, a.served_count,
        )  # fmt: skip
        if a.ended is not None:
            agent.ended = {e.session_id: _restore_ended(e) for e in a.ended}
        if a.starred is not None:
            agent.starred = dict(a.starred)
        for sid in a.sessions:
            session = shop.sessions[sid]
            session.agent = agent
            agent.hold(session)
            agent.load += 1
            agent.new_count += session.state is t.State.ASSIGNED
        for sid in a.backlog:
            shop.sessions[sid].agent = agent
            agent.backlog[sid] = shop.sessions[sid]
        shop.agents[agent.agent_id] = agent
        shop.join(agent)
        shop.touch(agent)
    shop.main = shop.agents.get(image.main)
    for sid in image.left:
        session = shop.sessions[sid]
        shop.left[sid] = session
        shop.reserved_left += bool(session.left_for)
    shop.queue = sorted(
        (*shop.queue_key(s), s) for s in shop.sessions.values() if s.state is t.State.QUEUED
    )
    # Oldest first (version 1 images kept the first insertion's place: sort, stably).
    contacts = sorted(image.recent.items(), key=lambda item: item[1][1])
    shop.recent = {buyer: shop.pack_contact(agent_id, at) for buyer, (agent_id, at) in contacts}
    shop.private = set(image.private)
    shop.notices = dict(image.notices)
    shop.load_requests(image.requests)
    shop.next_seq, shop.assign_seq, shop.reg_seq = image.next_seq, image.assign_seq, image.reg_seq
    shop.event_seq = image.event_seq
    _restore_counters(shop, image.counters)
    return shop

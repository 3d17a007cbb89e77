"""Cluster storage on NATS JetStream: one replicated stream per virtual shard, snapshots in
a replicated object store, every append fenced by the stream's last sequence.

    stream FENLIU_<cluster>_<shard>   subject fenliu.<cluster>.log.<shard>   R3, file storage
      message = one packed group-commit batch: codec frames of the batch's records
        Fenliu-Kind: batch | takeover      Fenliu-Epoch: the owner's epoch (etcd revision)
        Nats-Expected-Last-Sequence: the stream's last sequence as the owner knows it
        Nats-Msg-Id: unique per batch, the same on every retry of it (de-duplicated)
    object store fenliu_<cluster>_snap   shard-<n>.a / shard-<n>.b: the two newest images
    key-value fenliu_<cluster>_meta      "shards": the virtual shard count, set once

A position is a stream sequence: ``position`` is the sequence of the owner's last durable
message, a snapshot is saved at one, and the log is replayed after one. (A local log
counts records; here a message holds a batch of them, and ``replay`` yields each record.)

Fencing. Ownership of a shard (``cluster/ownership.py``) comes with an epoch. A new owner
first appends a takeover message fenced on the stream's current last sequence, retrying
until one lands; from then on every append of an older owner is refused
(``wrong last sequence``), because its expected sequence is before the takeover. The new
owner then replays up to its takeover message, which includes everything the old owner
ever had acknowledged. Only one batch of a shard is in flight (the write path's rule),
so a refused append has no pipelined followers that could land after the takeover.
``Nats-Expected-Last-Msg-Id`` is never used (it wedges R3 streams on nats-server
2.14.0–2.15.1), nor nats-py's ``publish_async`` (a refused one's future never resolves,
nats.py #985): each message is a request with a timeout, retried with the same
``Nats-Msg-Id`` until the stream answers (a leader election takes 5–7 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from ..core import image
from ..core.shard import Shard
from ..core.types import Event
from . import codec
from .base import StorageError, apply_record

log = logging.getLogger(__name__)
T = TypeVar("T")

WRONG_LAST_SEQUENCE = 10071  # JetStream's err_code for a refused expected last sequence
NO_PLACEMENT = 10005  # "no suitable peers for placement": a member not yet seen online
# "duplicate message id is in process": a retry arrived while the stream still proposes an
# earlier attempt with the same Nats-Msg-Id; asked again later, it answers that one's ack
DUPLICATE_IN_PROCESS = 10158
KIND_BATCH = "batch"
KIND_TAKEOVER = "takeover"
KIND_IMAGE = "image"  # a leaving owner's last message: the shard's whole image after it
H_KIND = "Fenliu-Kind"
H_EPOCH = "Fenliu-Epoch"
H_EXPECTED = "Nats-Expected-Last-Sequence"
H_MSG_ID = "Nats-Msg-Id"
MAX_MESSAGE = 768 * 1024  # under nats-server's 1 MB max_payload: a bigger batch is split
ATTEMPT_TIMEOUT_S = 2.0
SNAPSHOT_CHUNK = 512 * 1024  # an image's chunks (nats-py's default 128 KB: a round trip each)
DIRECT_READ_MAX = 16  # a replay of at most this many messages reads each (no consumer)
LAG_TIMEOUT_S = 1.0  # a shard's lag is unknown if its stream's leader does not answer by then
APPEND_DEADLINE_S = 20.0  # outlasts a stream leader election (4.6–6.9 s measured)
_SNAP_HEAD = struct.Struct("<QII")  # position, crc32 of the image, epoch
# a hand-over image message: position, crc32 of the rest, epoch, the image's length; then
# the image, then the shard's recent events (msgpack: watchers resume from them)
_IMAGE_HEAD = struct.Struct("<QIII")
_EVENTS = msgspec.msgpack.Decoder(list[Event])


class AppendRefused(OSError):
    """The append was refused: another owner has written to the shard's stream (fenced),
    or this node's ownership of it is no longer valid. Nothing of it is durable."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPERM, message)


class AppendFailed(OSError):
    """The stream did not answer within the deadline: the batch's outcome is unknown
    (it may be durable); the shard must be read back before it is written again."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


@dataclass
class Entry:
    """One message of a shard's stream."""

    seq: int
    kind: str
    epoch: int
    records: list[bytes]
    image: bytes = b""  # a KIND_IMAGE message's payload (its records are empty)


def _entry(seq: int, headers: dict[str, str] | None, data: bytes | None, where: str) -> Entry:
    headers = headers or {}
    kind = headers.get(H_KIND, KIND_BATCH)
    epoch = int(headers.get(H_EPOCH, "0"))
    if kind == KIND_IMAGE:
        return Entry(seq, kind, epoch, [], data or b"")
    return Entry(seq, kind, epoch, unpack(data or b"", where))


def encode_image(shard: Shard, position: int, epoch: int, events: Sequence[Event]) -> bytes:
    """A hand-over image message: ``shard`` after message ``position``, and its recent
    (published) events."""
    body = image.encode(shard, position)
    rest = body + msgspec.msgpack.encode(list(events))
    return _IMAGE_HEAD.pack(position, zlib.crc32(rest), epoch, len(body)) + rest


def decode_image(data: bytes, index: int, seq: int) -> tuple[Shard, list[Event]]:
    """The shard of a KIND_IMAGE message at ``seq`` (its image is at ``seq - 1``) and the
    recent events it carries."""
    if len(data) < _IMAGE_HEAD.size:
        raise StorageError(f"shard {index}: the image at message {seq} is truncated")
    position, crc, _, size = _IMAGE_HEAD.unpack_from(data)
    rest = data[_IMAGE_HEAD.size :]
    if zlib.crc32(rest) != crc or position != seq - 1 or size > len(rest):
        raise StorageError(f"shard {index}: the image at message {seq} is damaged")
    shard, image_position = image.decode(rest[:size])
    if shard.index != index or image_position != position:
        raise StorageError(f"shard {index}: the image at message {seq} holds another shard")
    return shard, _EVENTS.decode(rest[size:])


def pack(records: Sequence[bytes]) -> bytes:
    return b"".join(codec.frame(r) for r in records)


def unpack(data: bytes, where: str) -> list[bytes]:
    records = []
    end = 0
    for payload, stop in codec.frames(data, 0):
        records.append(payload)
        end = stop
    if end != len(data):
        raise StorageError(f"{where}: a damaged record at byte {end}")
    return records


def chunks(records: Sequence[bytes], limit: int = MAX_MESSAGE) -> list[list[bytes]]:
    """Records split into messages of at most ``limit`` packed bytes (one record each at
    least, whatever its size)."""
    out: list[list[bytes]] = [[]]
    size = 0
    for record in records:
        framed = len(record) + 8
        if out[-1] and size + framed > limit:
            out.append([])
            size = 0
        out[-1].append(record)
        size += framed
    return out


def steps(marks: Sequence[tuple[str, float]]) -> str:
    """``stream +0.001 fenced +0.120 ...``: each step's time since the one before."""
    return " ".join(f"{name} +{at - marks[i][1]:.3f}" for i, (name, at) in
                    enumerate(marks[1:]))  # fmt: skip


class ShardLog:
    """One shard's stream, as its owner sees it."""

    def __init__(self, storage: JetStreamStorage, index: int) -> None:
        self.index = index
        self.stream = f"FENLIU_{storage.cluster}_{index:04d}"
        self.subject = f"fenliu.{storage.cluster}.log.{index}"
        self.position = 0  # the owner's last durable message (0: not taken over yet)
        self.start = 0  # the sequence before the first one kept (the stream was purged to)
        self.epoch = 0  # the owner's epoch, 0 while not owned
        self.stale = 0  # messages of an older epoch after a takeover (fencing: always 0)
        self.failures = 0  # appends that failed (refused, or of unknown outcome)
        # the position of the image in each snapshot slot (None: empty), as this node last
        # read or wrote them: a save needs no read (a new owner reads both at its takeover)
        self.slots: dict[str, int | None] = {}

    def __repr__(self) -> str:
        return f"ShardLog({self.index}, position={self.position}, epoch={self.epoch})"


class JetStreamStorage:
    """Every virtual shard's stream and snapshots on one NATS JetStream cluster.

    ``await JetStreamStorage.connect(urls, shards=256)``; a shard is written only after
    ``take_over(index, epoch)``. ``allowed(index)`` (from the ownership layer) is asked
    before every message: an owner whose lease may have expired stops appending.
    """

    def __init__(
        self,
        nc: NatsClient,
        cluster: str,
        shards: int,
        *,
        replicas: int = 3,
        allowed: Callable[[int], bool] | None = None,
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
        deadline_s: float = APPEND_DEADLINE_S,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=attempt_timeout_s)
        self.cluster = cluster
        self.shards = shards
        self.replicas = replicas
        self.allowed = allowed
        self.attempt_timeout_s = attempt_timeout_s
        self.deadline_s = deadline_s
        self.logs = [ShardLog(self, i) for i in range(shards)]
        self._ids = itertools.count(1)
        self._nonce = f"{os.getpid():x}{time.time_ns():x}"
        self._streams: set[int] = set()
        self._snap: ObjectStore | None = None
        # replay consumers being deleted, snapshot reads no longer needed: let finish
        self._cleanups: set[asyncio.Future[Any]] = set()
        self.retries = 0  # attempts after a first one timed out (metrics, tests)
        self.on_append: Callable[[float], None] | None = None  # seconds of each shard's

    # ------------------------------------------------------------ set-up

    @classmethod
    async def connect(
        cls,
        urls: Sequence[str],
        *,
        cluster: str = "fenliu",
        shards: int = 256,
        replicas: int = 3,
        allowed: Callable[[int], bool] | None = None,
        **options: float,
    ) -> JetStreamStorage:
        """Connect, and record the virtual shard count in the cluster's metadata (the first
        node to start sets it; every later one must agree).

        Raises:
            StorageError: the cluster was created with another shard count.
        """
        if not cluster.isidentifier():
            raise ValueError(f"cluster must be a name of letters, digits, _ (got {cluster!r})")
        nc = await nats.connect(
            servers=list(urls), max_reconnect_attempts=-1, reconnect_time_wait=0.2,
            connect_timeout=2, name=f"fenliu-{cluster}",
        )  # fmt: skip
        storage = cls(nc, cluster, shards, replicas=replicas, allowed=allowed, **options)
        try:
            await storage._setup()
        except BaseException:
            await nc.close()
            raise
        return storage

    async def _setup(self) -> None:
        meta = await self._retry(self._meta_bucket)

        async def record_count() -> None:
            try:
                await meta.create("shards", str(self.shards).encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                pass  # set already (perhaps by an attempt of ours that timed out): it must agree

        # A bucket just created may not answer at once: its stream's leader is still being
        # elected, or this server has not yet heard of it (no responders).
        await self._retry(record_count)
        entry = await self._retry(lambda: meta.get("shards"))
        found = int(entry.value or b"0")
        if found != self.shards:
            raise StorageError(
                f"the cluster {self.cluster!r} has {found} virtual shards; this node was "
                f"started with {self.shards}: the count is fixed when a cluster is created"
            )
        self._snap = await self._retry(self._snapshot_bucket)

    async def _meta_bucket(self) -> KeyValue:
        return await self.js.create_key_value(
            api.KeyValueConfig(bucket=f"fenliu_{self.cluster}_meta", replicas=self.replicas)
        )

    async def _snapshot_bucket(self) -> ObjectStore:
        return await self.js.create_object_store(
            f"fenliu_{self.cluster}_snap",
            api.ObjectStoreConfig(replicas=self.replicas, storage=api.StorageType.FILE),
        )

    async def _stream_info(self, index: int) -> api.StreamInfo:
        """Shard ``index``'s stream as its leader knows it now, created if it is missing
        (one round trip when it exists: no stream create through the meta leader)."""
        log_ = self.logs[index]
        if index not in self._streams:
            try:
                info = await self._retry(lambda: self.js.stream_info(log_.stream))
            except nats.js.errors.NotFoundError:
                await self._ensure_stream(index)
            else:
                self._streams.add(index)
                return info
        return await self._retry(lambda: self.js.stream_info(log_.stream))

    async def lag(self, indexes: Sequence[int], timeout_s: float = LAG_TIMEOUT_S) -> dict[int, int]:
        """How many messages of each shard's stream its owner here has not applied: the
        stream's last sequence (its leader asked now, once per shard, concurrently) minus
        ``position``. A shard whose leader does not answer within ``timeout_s`` (an election,
        NATS away) is left out: its lag is unknown. Never raises for one shard's failure."""

        async def one(index: int) -> int | None:
            log_ = self.logs[index]
            try:
                info = await asyncio.wait_for(self.js.stream_info(log_.stream), timeout_s)
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                log.debug("shard %d: no stream info for its lag (%r)", index, exc)
                return None
            last = int(info.state.last_seq or 0)
            # read after the answer: an append acknowledged meanwhile may put the position
            # past the last sequence the leader reported: nothing is missing then (0)
            return max(0, last - log_.position)

        found = await asyncio.gather(*(one(i) for i in indexes))
        return {i: lag for i, lag in zip(indexes, found, strict=True) if lag is not None}

    async def _ensure_stream(self, index: int) -> None:
        if index in self._streams:
            return
        log_ = self.logs[index]
        config = api.StreamConfig(
            name=log_.stream,
            subjects=[log_.subject],
            num_replicas=self.replicas,
            storage=api.StorageType.FILE,
            duplicate_window=120.0,
            allow_direct=True,
            deny_delete=True,
        )
        await self._retry(lambda: self.js.add_stream(config))
        self._streams.add(index)

    async def close(self) -> None:
        if self._cleanups:
            await asyncio.wait(set(self._cleanups), timeout=1.0)
        await self.nc.close()

    async def _retry(self, call: Callable[[], Awaitable[T]], deadline_s: float | None = None) -> T:
        """``call()`` (a coroutine function) until it answers, while the cluster elects."""
        give_up = time.monotonic() + (deadline_s or self.deadline_s)
        while True:
            try:
                return await call()
            except (
                nats.errors.TimeoutError,
                nats.errors.NoRespondersError,
                nats.js.errors.NoStreamResponseError,
                nats.js.errors.ServiceUnavailableError,
            ):
                if time.monotonic() > give_up:
                    raise
            except nats.js.errors.BadRequestError as exc:
                # No suitable peers for placement: the meta leader has not yet heard from
                # a member that (re)started, so an R3 stream cannot be placed for a moment.
                if exc.err_code != NO_PLACEMENT or time.monotonic() > give_up:
                    raise
            await asyncio.sleep(0.2)

    # ------------------------------------------------------------ ownership

    async def take_over(self, index: int, epoch: int, events: list[Event] | None = None) -> Shard:
        """Become shard ``index``'s writer at ``epoch``: fence every older owner off its
        stream (a takeover message), then rebuild the shard from the newest snapshot and
        the messages up to the takeover. The events of the records replayed (their
        seqs as first issued) are added to ``events`` when given: watchers resume with them.

        Raises:
            AppendRefused: ``allowed`` says this node does not own the shard (any more).
            StorageError: the stream cannot be rebuilt (pruned past every snapshot,
                damaged), or codec.FormatError.
        """
        marks = [("begun", time.perf_counter())]
        log_ = self.logs[index]
        log_.epoch = 0  # nothing appends while the takeover runs
        # The newest snapshot is read while the stream is fenced (independent round trips):
        # any image an older owner saves meanwhile is at a position before the takeover,
        # and it purges only below the image already kept, so what is read stays replayable.
        snapshot = asyncio.ensure_future(self._load_snapshot(index))
        handed: asyncio.Future[Entry | None] | None = None
        try:
            while True:
                info = await self._stream_info(index)
                assert info.state is not None
                if marks[-1][0] == "begun":
                    marks.append(("stream", time.perf_counter()))
                last = info.state.last_seq
                if handed is not None:
                    handed.cancel()
                # the message the takeover follows, read meanwhile: a hand-over image?
                handed = asyncio.ensure_future(self._last_message(log_, last))
                try:
                    seq = await self._publish(index, [], KIND_TAKEOVER, epoch, last)
                    break
                except AppendRefused as exc:
                    if "wrong last sequence" not in str(exc):
                        raise
                    continue  # an older owner's append landed meanwhile: fence after it too
            marks.append(("fenced", time.perf_counter()))
            previous = await handed
            if previous is not None and previous.kind == KIND_IMAGE:
                # the old owner's last word: the whole shard after it; nothing to replay
                shard, handed_events = decode_image(previous.image, index, previous.seq)
                position = previous.seq
                if events is not None:
                    events.extend(handed_events)
                self._background(snapshot)  # not needed: left to finish (not cancelled in
                # the middle of an object read, which would leave its subscription behind)
            else:
                shard, position = await snapshot
        except BaseException:
            for task in (snapshot, handed):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
            raise
        marks.append(("snapshot", time.perf_counter()))
        log_.start = max(0, (info.state.first_seq or 1) - 1)
        if position < log_.start:
            raise StorageError(
                f"shard {index}: no usable snapshot, and its stream starts after message "
                f"{log_.start}: the shard cannot be rebuilt"
            )
        stale = 0
        newest = 0
        messages = 0
        # up to the message before the takeover (the takeover itself holds no records)
        async for entry in self.read(index, position, seq - 1, marks):
            messages += 1
            if entry.epoch < newest:
                stale += 1  # written after a newer takeover: fencing failed; never applied
                log.error("shard %d: message %d of epoch %d after epoch %d's takeover",
                          index, entry.seq, entry.epoch, newest)  # fmt: skip
                continue
            if entry.kind == KIND_TAKEOVER:
                newest = entry.epoch
                continue
            if entry.kind == KIND_IMAGE:  # a hand-over: the whole shard after it (its
                shard, _ = decode_image(entry.image, index, entry.seq)  # events: replayed)
                continue
            for record in entry.records:
                apply_record(shard, record, events)
        marks.append(("replayed", time.perf_counter()))
        log_.stale = stale
        log_.position = seq
        log_.epoch = epoch
        log.info("shard %d: takeover steps %s (%d messages between the snapshot at %d and "
                 "the takeover at %d)", index, steps(marks), messages, position, seq)  # fmt: skip
        return shard

    async def hand_over_image(
        self, index: int, shard: Shard, events: Sequence[Event] = ()
    ) -> int | None:
        """As the owner's last message of shard ``index``: its whole image after its last
        durable message (fenced as any append), so the next owner starts from it and
        replays nothing, and the shard's recent ``events`` (published), which the next
        owner keeps for the watchers that follow their shops there. ``shard`` must be
        exactly the durable state (nothing staged or in flight). Its sequence, or None
        when the image is too big for one message.

        Raises:
            AppendRefused, AppendFailed: as an append (then nothing is known of it).
        """
        log_ = self.logs[index]
        if not log_.epoch:
            raise AppendRefused(f"shard {index} is not owned by this node")
        data = encode_image(shard, log_.position, log_.epoch, events)
        if len(data) > MAX_MESSAGE and events:
            data = encode_image(shard, log_.position, log_.epoch, [])
        if len(data) > MAX_MESSAGE:
            return None
        log_.position = await self._publish_raw(index, data, KIND_IMAGE, log_.epoch, log_.position)
        return log_.position

    def release(self, index: int) -> None:
        """Stop writing shard ``index`` (handed over or lost)."""
        self.logs[index].epoch = 0

    # ------------------------------------------------------------ the write path

    def append(self, batches: Sequence[tuple[int, Sequence[bytes]]]) -> asyncio.Future[None]:
        """Append each (shard, records) batch as one message of its shard's stream (split
        only past ``MAX_MESSAGE``); resolves once all are durable (acknowledged by the
        stream's quorum). Fails with ``AppendRefused`` or ``AppendFailed`` if any is not: the
        others may be durable, so every shard in the call must be read back (at most
        one batch of a shard is in flight: the caller's rule, checked here)."""
        return asyncio.ensure_future(self._append_all(batches))

    def append_each(
        self, batches: Sequence[tuple[int, Sequence[bytes]]]
    ) -> list[asyncio.Future[None]]:
        """As ``append``, with one future per shard's batch: a shard whose stream is
        electing a leader holds only its own callers (the node's cluster mode uses it)."""
        return [asyncio.ensure_future(self._append_shard(i, records)) for i, records in batches]

    async def _append_all(self, batches: Sequence[tuple[int, Sequence[bytes]]]) -> None:
        outcomes = await asyncio.gather(
            *(self._append_shard(i, records) for i, records in batches), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _append_shard(self, index: int, records: Sequence[bytes]) -> None:
        log_ = self.logs[index]
        started = time.perf_counter()
        try:
            for part in chunks(records):
                if not log_.epoch:
                    raise AppendRefused(f"shard {index} is not owned by this node")
                log_.position = await self._publish(
                    index, part, KIND_BATCH, log_.epoch, log_.position
                )
        except BaseException:
            log_.failures += 1
            raise
        if self.on_append is not None:
            self.on_append(time.perf_counter() - started)

    async def _publish(
        self, index: int, records: Sequence[bytes], kind: str, epoch: int, expected: int
    ) -> int:
        """One message after sequence ``expected``; its sequence once durable."""
        return await self._publish_raw(index, pack(records), kind, epoch, expected)

    async def _publish_raw(
        self, index: int, payload: bytes, kind: str, epoch: int, expected: int
    ) -> int:
        log_ = self.logs[index]
        msg_id = f"{self._nonce}-{epoch}-{next(self._ids)}"
        headers = {
            H_KIND: kind,
            H_EPOCH: str(epoch),
            H_EXPECTED: str(expected),
            H_MSG_ID: msg_id,
        }
        give_up = time.monotonic() + self.deadline_s
        attempt = 0
        while True:
            if self.allowed is not None and not self.allowed(index):
                if attempt == 0:
                    raise AppendRefused(f"shard {index}: this node's ownership is not valid now")
                # a retry: the first attempt may have landed; only reading tells
                raise AppendFailed(f"shard {index}: ownership lapsed while retrying an append")
            attempt += 1
            try:
                ack = await self.js.publish(
                    log_.subject, payload, timeout=self.attempt_timeout_s, headers=dict(headers)
                )
                return ack.seq
            except nats.js.errors.APIError as exc:
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    if attempt > 1 and await self._landed(log_, expected + 1, msg_id):
                        return expected + 1  # ours, from an earlier attempt
                    raise AppendRefused(
                        f"shard {index}: append refused, wrong last sequence (expected "
                        f"{expected}): another owner wrote to the stream"
                    ) from exc
                if exc.err_code != DUPLICATE_IN_PROCESS and not isinstance(
                    exc, nats.js.errors.ServiceUnavailableError
                ):
                    raise AppendFailed(f"shard {index}: append refused: {exc}") from exc
            except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError):
                pass
            except nats.errors.ConnectionClosedError as exc:
                raise AppendFailed(f"shard {index}: the NATS connection is closed") from exc
            if time.monotonic() > give_up:
                raise AppendFailed(
                    f"shard {index}: the stream did not acknowledge in {self.deadline_s:.0f}s"
                )
            self.retries += 1
            await asyncio.sleep(0.05)

    async def _landed(self, log_: ShardLog, seq: int, msg_id: str) -> bool:
        try:
            found = await self._retry(lambda: self.js.get_msg(log_.stream, seq), 5.0)
        except nats.js.errors.NotFoundError:
            return False
        assert isinstance(found, api.RawStreamMsg)
        return bool(found.headers and found.headers.get(H_MSG_ID) == msg_id)

    # ------------------------------------------------------------ reading

    async def read(
        self, index: int, after: int, upto: int, marks: list[tuple[str, float]] | None = None
    ) -> AsyncIterator[Entry]:
        """Shard ``index``'s messages after sequence ``after`` up to ``upto``, in order
        (``marks``: when the consumer was created and the first fetch answered)."""
        if upto <= after:
            return
        log_ = self.logs[index]
        if upto - after <= DIRECT_READ_MAX:  # a few: each read at once, no consumer
            found = await asyncio.gather(*(self._message(log_, seq) for seq in
                                           range(after + 1, upto + 1)))  # fmt: skip
            if marks is not None:
                marks.append(("fetched", time.perf_counter()))
            for entry in found:
                yield entry
            return
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after + 1,
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=30.0,
            mem_storage=True,
            num_replicas=1,
        )
        sub = await self._retry(
            lambda: self.js.pull_subscribe(log_.subject, stream=log_.stream, config=config)
        )
        assert isinstance(sub, JetStreamContext.PullSubscription)
        if marks is not None:
            marks.append(("consumer", time.perf_counter()))
        expected = after + 1
        give_up = time.monotonic() + 3 * self.deadline_s
        try:
            while expected <= upto:
                try:
                    msgs = await sub.fetch(min(1000, upto - expected + 1), timeout=2)
                except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
                    if time.monotonic() > give_up:
                        raise
                    continue
                if marks is not None and marks[-1][0] == "consumer":
                    marks.append(("fetched", time.perf_counter()))
                for msg in msgs:
                    seq = msg.metadata.sequence.stream
                    if seq < expected:
                        continue
                    if seq > upto:
                        return
                    expected = seq + 1
                    yield _entry(seq, msg.headers, msg.data, f"{log_.stream} message {seq}")
        finally:
            if marks is not None:
                marks.append(("read", time.perf_counter()))
            # deleted off the takeover's path (two more round trips nobody waits for)
            self._background(asyncio.ensure_future(self._delete_consumer(log_, sub)))

    def _background(self, task: asyncio.Future[Any]) -> None:
        """Let ``task`` finish on its own (kept referenced; its outcome ignored)."""

        def done(task: asyncio.Future[Any]) -> None:
            self._cleanups.discard(task)
            if not task.cancelled():
                task.exception()  # retrieved: nobody waits for it

        self._cleanups.add(task)
        task.add_done_callback(done)

    async def _delete_consumer(
        self, log_: ShardLog, sub: JetStreamContext.PullSubscription
    ) -> None:
        try:
            await sub.unsubscribe()
            await self.js.delete_consumer(log_.stream, (await sub.consumer_info()).name)
        except Exception:  # noqa: BLE001 - an ephemeral consumer expires on its own
            pass

    async def _message(self, log_: ShardLog, seq: int) -> Entry:
        """Message ``seq`` of a shard's stream, from its leader."""
        try:
            msg = await self._retry(lambda: self.js.get_msg(log_.stream, seq))
        except nats.js.errors.NotFoundError as exc:
            raise StorageError(f"{log_.stream}: message {seq} is missing") from exc
        assert isinstance(msg, api.RawStreamMsg)
        return _entry(seq, msg.headers, msg.data, f"{log_.stream} message {seq}")

    async def _last_message(self, log_: ShardLog, seq: int) -> Entry | None:
        """Message ``seq`` if the stream still holds it (None: empty, or purged)."""
        if seq <= 0:
            return None
        try:
            return await self._message(log_, seq)
        except StorageError:
            return None

    # ------------------------------------------------------------ snapshots

    def _slots(self, index: int) -> tuple[str, str]:
        return f"shard-{index:04d}.a", f"shard-{index:04d}.b"

    async def _get_snapshot(self, name: str) -> tuple[bytes, int, int] | None:
        assert self._snap is not None
        store = self._snap
        try:
            got = await self._retry(lambda: store.get(name))
        except nats.js.errors.ObjectNotFoundError:
            return None
        data = got.data or b""  # type: ignore[attr-defined]
        if len(data) < _SNAP_HEAD.size:
            return None
        position, crc, epoch = _SNAP_HEAD.unpack_from(data)
        body = data[_SNAP_HEAD.size :]
        if zlib.crc32(body) != crc:
            log.error("snapshot %s is damaged: skipped", name)
            return None
        return body, position, epoch

    async def _load_snapshot(self, index: int) -> tuple[Shard, int]:
        """The newest image of shard ``index`` (both slots read at once) and its position
        (an empty shard at 0 when there is none)."""
        names = self._slots(index)
        got = await asyncio.gather(*(self._get_snapshot(n) for n in names))
        self.logs[index].slots = {n: g[1] if g else None for n, g in zip(names, got, strict=True)}
        found = [g for g in got if g]
        if not found:
            return Shard(index), 0
        body, position, _ = max(found, key=lambda s: s[1])
        shard, image_position = image.decode(body)
        if shard.index != index or image_position != position:
            raise StorageError(f"shard {index}: its snapshot holds shard {shard.index}")
        return shard, position

    async def save_snapshot(
        self, index: int, shard: Shard, position: int, *, purge: bool = True
    ) -> None:
        """Store ``shard`` as it is after message ``position`` (over the older of the two
        kept images), then (``purge``) purge the stream up to the older kept one."""
        body = image.encode(shard, position)
        log_ = self.logs[index]
        names = self._slots(index)
        if set(log_.slots) != set(names):  # not read since this node took the shard over
            got = await asyncio.gather(*(self._get_snapshot(n) for n in names))
            log_.slots = {n: g[1] if g else None for n, g in zip(names, got, strict=True)}
        found = dict(log_.slots)
        older = min(found, key=lambda n: found[n] or -1)  # an empty slot first
        head = _SNAP_HEAD.pack(position, zlib.crc32(body), log_.epoch)
        assert self._snap is not None
        store = self._snap
        log_.slots = {}  # unknown until the put answers (it may land, or not)
        meta = api.ObjectMeta(
            name=older, options=api.ObjectMetaOptions(max_chunk_size=SNAPSHOT_CHUNK)
        )
        await self._retry(lambda: store.put(older, head + body, meta))
        found[older] = position
        log_.slots = found
        other = next(n for n in found if n != older)
        kept = found[other]
        if purge and kept is not None and kept > log_.start:
            keep_from = kept + 1  # purge below: the older kept image covers them
            await self._retry(lambda: self.js.purge_stream(log_.stream, seq=keep_from))
            log_.start = kept

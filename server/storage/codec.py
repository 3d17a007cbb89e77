"""Pure encoding of what goes to disk: file headers, frames, journal records (msgspec).

A journal record is ``[u32 length][u32 crc32][payload]`` (little endian), the payload a
msgpack-encoded command (its schema: ``core/types.py``, pinned by
``tests/server/storage/test_schema.py``). A snapshot is the same frame around one shard
image, which the core encodes itself (``core/image.py``). Both files start with ``MAGIC``
and a format version; a newer version is refused, never read.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import msgspec

from ..core import types as t

MAGIC = b"FENLIU"
FORMAT_VERSION = 5
"""1: the first format. 2: shop images end with the event seq and the stats counters (a
version-1 image reads as seq 0 and empty counters), and the T_RECENT / T_REQUEST timers are
one per shop (key "") for the oldest entry of its table instead of one per buyer / request
id (a version-1 image's are merged on load). 3: encoded straight from the live objects
(issue 5, snapshot speed): a session without a holder has agent_id nil instead of "", its
excluded agents are in no particular order, and the timer heap is written whole, so it may
hold the inert entries of ended sessions, which are dropped on load. 4: journal records
leave out fields at their default and carry explicit tags (issue 10), a Tick names the one
shard it ticks, and the data directory has a MANIFEST; images are as in 3. 5: every
mutating command may carry an idempotency key (``request_id``, issue 11) and a shard image
ends with the keyed commands it remembers, each with its outcome (a version-4 image has
none)."""
_HEADER = struct.Struct("<6sH")  # magic, version
_FRAME = struct.Struct("<II")  # payload length, crc32 of the payload
HEADER_SIZE = _HEADER.size


class FormatError(Exception):
    """A file this version cannot read: not ours, or written by a newer format."""


def file_header() -> bytes:
    return _HEADER.pack(MAGIC, FORMAT_VERSION)


def check_header(data: bytes, name: str) -> None:
    if len(data) < HEADER_SIZE:
        raise FormatError(f"{name}: too short for a header")
    magic, version = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FormatError(f"{name}: not a fenliu file")
    if version > FORMAT_VERSION:
        raise FormatError(
            f"{name}: written by format version {version}; this fenliu reads up to "
            f"{FORMAT_VERSION}. Upgrade fenliu to read it."
        )


def frame(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def frames(data: bytes, offset: int) -> Iterator[tuple[bytes, int]]:
    """(payload, end offset) of each intact frame from ``offset``; stops at the first torn
    or corrupt one (a crash mid-write: it was never acknowledged). No payload is empty, so
    a zero-length frame is a hole of zeros (whose crc32 would match), not a frame."""
    size = len(data)
    while offset + _FRAME.size <= size:
        length, crc = _FRAME.unpack_from(data, offset)
        start = offset + _FRAME.size
        end = start + length
        if end > size or not length:
            return
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            return
        yield payload, end
        offset = end


_command_encoder = msgspec.msgpack.Encoder()
_command_decoder = msgspec.msgpack.Decoder(t.AnyCommand)


def encode_command(command: t.Command) -> bytes:
    return _command_encoder.encode(command)


def decode_command(payload: bytes) -> t.Command:
    return _command_decoder.decode(payload)  # type: ignore[no-any-return]

"""Input checks of SPEC §6; each failure names the field and the rule it broke."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import InvalidArgument

MAX_ID: Final = 128
MAX_CROWDS: Final = 10
MAX_PRIORITY_CROWDS: Final = 10
MAX_GROUPS: Final = 32
MAX_CONCURRENT: Final = 10_000
MAX_BATCH: Final = 1000
MAX_LIST: Final = 1000
MAX_DURATION_MS: Final = 366 * 24 * 3600 * 1000
MAX_QUEUE_LIMIT: Final = 1_000_000
MAX_CROWD_GROUPS: Final = 32

_ID: Final = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
_ID_MATCH: Final = _ID.fullmatch
_ID_RULE: Final = f"must be 1-{MAX_ID} characters of [A-Za-z0-9._:@-]"
# str.isascii has no mypyc primitive: ``value.isascii()`` compiled is a method lookup on
# str's type and a call (~210 instructions); the descriptor called directly skips the lookup.
_isascii: Final = str.isascii


def check_id(value: str, field: str) -> None:
    """A required id: shop, agent, buyer, request, session, group or crowd."""
    # Fast path first: plain ASCII letters and digits (C string methods, no regex).
    if not (value.isalnum() and _isascii(value) and len(value) <= MAX_ID) and (
        _ID_MATCH(value) is None
    ):
        raise InvalidArgument(f"{field} {_ID_RULE} (got {_show(value)})", field)


def check_optional_id(value: str, field: str) -> None:
    """An id that may be empty (a Route's group and channel): check_id's fast path first,
    as the regex costs ~1,200 instructions a call compiled (a channel on every Route)."""
    if (
        value
        and not (value.isalnum() and _isascii(value) and len(value) <= MAX_ID)
        and _ID_MATCH(value) is None
    ):
        raise InvalidArgument(f"{field} {_ID_RULE} when set (got {_show(value)})", field)


def check_ids(values: Iterable[str], field: str, limit: int) -> None:
    values = tuple(values)
    if len(values) > limit:
        raise InvalidArgument(f"{field} holds {len(values)} items; at most {limit}", field)
    for i, value in enumerate(values):
        check_id(value, f"{field}[{i}]")


def check_range(value: int, field: str, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidArgument(f"{field} must be in {low}..{high} (got {value})", field)


def check_batch(size: int, field: str = "requests") -> None:
    if size > MAX_BATCH:
        raise InvalidArgument(f"{field} holds {size} items; at most {MAX_BATCH}", field)


MAX_TIME_ZONE: Final = 255


def check_time_zone(name: str, field: str = "policy.time_zone") -> None:
    """An IANA zone name. A directory of the zone database ("America", "Etc") or a name too
    long for the file system makes ZoneInfo raise OSError, not ZoneInfoNotFoundError."""
    if not name or len(name) > MAX_TIME_ZONE:
        raise InvalidArgument(
            f"{field} must be an IANA time zone name of 1-{MAX_TIME_ZONE} characters "
            f"(got {len(name)})",
            field,
        )
    try:
        zone(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidArgument(
            f"{field} is not a known IANA time zone (got {_show(name)})", field
        ) from None


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def show(value: str) -> str:
    """A value as an error message quotes it: repr, cut to 40 characters."""
    return _show(value)


def _show(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "...")

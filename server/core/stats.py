"""Per-shop counters for the shop stats (SPEC §5): today (shop time zone) and a window.

The hot path only increments integers: ``Shop.emit`` counts the events it emits
(assigned, reassigned away, transferred, timeout), ``Shard.reply`` counts first replies
and ``Shop.end`` sessions ended without any. Counts go to today's tally and to the
current minute's bucket; the last ``WINDOW_MINUTES`` buckets make the sliding window.
Only minutes with activity keep a bucket; a shop gets its counters with its first count.
"""

from __future__ import annotations

from typing import Final

from .types import MINUTE as _TYPES_MINUTE, CountsView

MINUTE: Final = _TYPES_MINUTE  # a module static when compiled, not a globals lookup

ASSIGNED: Final = 0
REASSIGNED: Final = 1
TRANSFERRED: Final = 2
TIMEOUTS: Final = 3
REPLIED: Final = 4
REPLIED_FAST: Final = 5
ENDED_UNREPLIED: Final = 6
FIELDS: Final = 7
WINDOW_MINUTES: Final = 60
"""The longest sliding window a stats query may ask for, in minutes."""
FAST_REPLY_MS: Final = 2 * MINUTE
"""A first reply within this time of the buyer's request (queue time included) is fast."""

COUNTED_EVENTS: Final = {
    "assigned": ASSIGNED,
    "reassigned_away": REASSIGNED,
    "transferred": TRANSFERRED,
    "timeout": TIMEOUTS,
}


class ShopCounters:
    """Today's counts and per-minute buckets of one shop.

    ``counts`` holds today's (``[:FIELDS]``) and the current minute's (``[FIELDS:]``)
    together: a count touches one list, not two (in a big world each is cold lines)."""

    __slots__ = ("day", "minute", "counts", "buckets")

    def __init__(self) -> None:
        self.day = 0  # the local day (ordinal) today's counts count
        self.minute = 0  # the minute (ms // MINUTE) the current minute's counts count
        self.counts = [0] * (2 * FIELDS)
        self.buckets: dict[int, list[int]] = {}  # earlier minutes with activity, oldest first

    @property
    def today(self) -> list[int]:
        return self.counts[:FIELDS]

    @property
    def current(self) -> list[int]:
        return self.counts[FIELDS:]

    def set_counts(self, today: list[int], current: list[int]) -> None:
        """Put back today's and the current minute's counts (an image's)."""
        self.counts = [*today, *current]

    def add(self, index: int, day: int, now: int) -> None:
        """Count one ``index`` at ``now`` (ms), on local ``day``."""
        counts = self.counts
        if day != self.day:
            self.day = day
            counts[:FIELDS] = _ZEROS
        count: int = counts[index]  # typed: compiled, a native add, not PyNumber_InPlaceAdd
        counts[index] = count + 1
        minute = now // MINUTE
        if minute != self.minute:
            self.roll(minute)
        count = counts[FIELDS + index]
        counts[FIELDS + index] = count + 1

    def roll(self, minute: int) -> None:
        """Start counting ``minute``: the current minute's counts join the older ones."""
        counts = self.counts
        if any(counts[FIELDS:]):
            self.buckets[self.minute] = counts[FIELDS:]
            counts[FIELDS:] = _ZEROS
        buckets = self.buckets
        oldest = minute - WINDOW_MINUTES
        while buckets:
            first = next(iter(buckets))
            if first > oldest:
                break
            del buckets[first]
        self.minute = minute

    def window(self, now: int, minutes: int) -> list[int]:
        """The counts of the last ``minutes`` minutes up to ``now`` (the current one included)."""
        total = [0] * FIELDS
        newest = now // MINUTE
        oldest = newest - minutes
        for minute, counts in (*self.buckets.items(), (self.minute, self.current)):
            if oldest < minute <= newest:
                for i, n in enumerate(counts):
                    total[i] += n
        return total

    def today_counts(self, day: int) -> list[int]:
        return self.today if day == self.day else [0] * FIELDS


_ZEROS: Final = (0,) * FIELDS


def counts_view(counts: list[int], overdue: int) -> CountsView:
    """The view of one period; ``overdue`` open sessions still wait for a late first reply."""
    unreplied = counts[ENDED_UNREPLIED] + overdue
    judged = counts[REPLIED] + unreplied
    fast = counts[REPLIED_FAST]
    return CountsView(
        assigned=counts[ASSIGNED],
        reassigned=counts[REASSIGNED],
        transferred=counts[TRANSFERRED],
        timeouts=counts[TIMEOUTS],
        first_replies=counts[REPLIED],
        fast_first_replies=fast,
        unreplied=unreplied,
        fast_reply_rate=fast / judged if judged else 0.0,
    )

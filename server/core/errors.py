"""Errors raised by the core. Each one means the command changed nothing.

    FenliuError
    ├── InvalidArgument      malformed input (names the field and the rule)
    ├── NotFound             unknown shop, agent or session
    ├── FailedPrecondition   the state does not allow it
    ├── ResourceExhausted    the shop queue is full and the policy says REJECT
    └── Unavailable          the change could not be made durable (raised by storage)

The adapter maps these to gRPC status codes in exactly one place (``rpc/status.py``).
"""

from __future__ import annotations


class FenliuError(Exception):
    """Base of every error the core raises; ``field`` names the input at fault, if any."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidArgument(FenliuError):
    """A field is malformed: wrong characters, too long, too many items, out of range."""


class NotFound(FenliuError):
    """The shop, agent or session named by ``field`` does not exist."""


class FailedPrecondition(FenliuError):
    """The request is well formed but the current state does not allow it."""


class ResourceExhausted(FenliuError):
    """The shop queue holds ``queue_limit`` entries and ``on_queue_full`` is REJECT."""


class Unavailable(FenliuError):
    """The change could not be journaled (disk full, I/O error): it was undone; retry."""

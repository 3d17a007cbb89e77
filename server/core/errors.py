"""Errors raised by the core. Each one means the command changed nothing.

    FenliuError
    ├── InvalidArgument      malformed input (names the field and the rule)
    ├── NotFound             unknown shop, agent or session
    ├── AlreadyExists        registering an agent that exists, without replace
    ├── FailedPrecondition   the state does not allow it
    ├── ResourceExhausted    the shop queue is full and the policy says REJECT
    └── Unavailable          the change could not be made durable (raised by storage)

Besides the message, an error carries data a program can act on: ``field`` (the input
at fault), ``reason`` (an UPPER_SNAKE_CASE code, stable across releases, e.g.
``AGENT_OFFLINE``; each class has a default) and ``subject`` (the resource it is about,
as a name like ``shops/s1/agents/a1``; see ``resource_name``). The adapter maps these to gRPC
status codes and error details in exactly one place (``rpc/status.py``).
"""

from __future__ import annotations

from typing import ClassVar


class FenliuError(Exception):
    """Base of every error the core raises; ``field`` names the input at fault, if any."""

    default_reason: ClassVar[str] = "ERROR"

    def __init__(
        self, message: str, field: str = "", *, reason: str = "", subject: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.reason = reason or self.default_reason
        self.subject = subject


class InvalidArgument(FenliuError):
    """A field is malformed: wrong characters, too long, too many items, out of range."""

    default_reason = "INVALID_FIELD"


class NotFound(FenliuError):
    """The shop, agent or session named by ``field`` does not exist."""

    default_reason = "NOT_FOUND"


class AlreadyExists(FenliuError):
    """RegisterAgent of an existing agent with other fields, not asked to replace it."""

    default_reason = "AGENT_EXISTS"


class FailedPrecondition(FenliuError):
    """The request is well formed but the current state does not allow it."""

    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(FenliuError):
    """The shop queue holds ``queue_limit`` entries and ``on_queue_full`` is REJECT."""

    default_reason = "QUEUE_FULL"


class Unavailable(FenliuError):
    """The change could not be journaled (disk full, I/O error): it was undone; retry."""

    default_reason = "NOT_DURABLE"


class NotOwner(Unavailable):
    """Cluster mode: this node does not own the shop's shard; ``owner`` (its node id) and
    ``address`` (where to call it; both "" while nobody owns it) and its ``epoch``."""

    default_reason = "NOT_OWNER"

    def __init__(
        self,
        message: str,
        field: str = "",
        *,
        reason: str = "",
        subject: str = "",
        shard: int = -1,
        owner: str = "",
        address: str = "",
        epoch: int = 0,
    ) -> None:
        subject = subject or (f"shards/{shard}" if shard >= 0 else "")
        super().__init__(message, field, reason=reason, subject=subject)
        self.shard = shard
        self.owner = owner
        self.address = address
        self.epoch = epoch


ERRORS: dict[str, type[FenliuError]] = {
    cls.__name__: cls
    for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, ResourceExhausted)
}
"""The errors a command can be refused with, by name: a remembered refusal (``types.Refused``)
is raised again as its own class."""


def resource_name(shop_id: str, collection: str = "", item_id: str = "") -> str:
    """A resource name: ``shops/<shop>`` or ``shops/<shop>/<collection>/<id>``.

    Unambiguous because ids never hold a ``/``; ``collection`` is one of ``agents``,
    ``sessions``, ``buyers`` or ``groups``.
    """
    if not collection:
        return f"shops/{shop_id}"
    return f"shops/{shop_id}/{collection}/{item_id}"

"""Bearer tokens: who is calling, and which shops a request touches.

A caller sends ``authorization: Bearer <token>``. Tokens are looked up by their SHA-256
digest and then compared with ``hmac.compare_digest``, so neither the lookup nor the
comparison depends on how much of a wrong token matches a right one.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from ..config import Token
from . import wire
from .status import PermissionDenied, Unauthenticated

METADATA_KEY = "authorization"
SCHEME = "bearer"

Shops: TypeAlias = Callable[[Message], list[tuple[str, str]]]
"""A request's (field path, shop id) pairs."""


class Authenticator:
    """The configured tokens; ``authenticate`` finds the caller's."""

    def __init__(self, tokens: Sequence[Token]) -> None:
        self._by_digest = {_digest(t.secret): t for t in tokens}

    def authenticate(self, metadata: Any) -> Token:
        """The token presented in ``metadata``.

        Raises:
            Unauthenticated: no ``authorization`` entry, not ``Bearer``, or an unknown token.
        """
        value = ""
        for key, item in metadata or ():
            if key == METADATA_KEY:
                value = item if isinstance(item, str) else ""
                break
        if not value:
            raise Unauthenticated("this server needs 'authorization: Bearer <token>' metadata")
        scheme, _, presented = value.strip().partition(" ")
        if scheme.lower() != SCHEME or not presented.strip():
            raise Unauthenticated("authorization must be 'Bearer <token>'")
        presented = presented.strip()
        token = self._by_digest.get(_digest(presented))
        if token is None or not hmac.compare_digest(token.secret.encode(), presented.encode()):
            raise Unauthenticated("the token is not valid")
        return token


def check_scope(token: Token, shops: list[tuple[str, str]]) -> None:
    """Raises PermissionDenied, naming the field, for a shop outside ``token``'s scope."""
    if token.shops is None:
        return
    for field, shop_id in shops:
        if shop_id not in token.shops:
            raise PermissionDenied(
                f"{field}: token {token.name!r} may not touch shop {shop_id!r}", field
            )


_extractors: dict[type[Message], Shops] = {}


def shops_of(request: Message | wire.RouteItems | wire.RouteFields) -> list[tuple[str, str]]:
    """Every shop id in ``request``: its ``shop_id`` and its messages' (RouteBatch items)."""
    if isinstance(request, (wire.RouteItems, wire.RouteFields)):  # read by the wire codec
        return request.shop_fields()
    extract = _extractors.get(type(request))
    if extract is None:
        extract = _extractors[type(request)] = _extractor(request.DESCRIPTOR)
    return extract(request)


def _extractor(descriptor: Any) -> Shops:
    direct = "shop_id" in descriptor.fields_by_name
    nested = [
        (f.name, _is_repeated(f))
        for f in descriptor.fields
        if f.message_type is not None and "shop_id" in f.message_type.fields_by_name
    ]

    def extract(request: Message) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        if direct:
            found.append(("shop_id", request.shop_id))  # type: ignore[attr-defined]
        for name, repeated in nested:
            if repeated:
                for i, item in enumerate(getattr(request, name)):
                    found.append((f"{name}[{i}].shop_id", item.shop_id))
            elif request.HasField(name):
                found.append((f"{name}.shop_id", getattr(request, name).shop_id))
        return found

    return extract


def _is_repeated(field: Any) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 6; label before
    return bool(field.label == FieldDescriptor.LABEL_REPEATED if repeated is None else repeated)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()

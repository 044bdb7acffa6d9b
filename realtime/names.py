"""Collection names the service accepts (shared by REST and WebSocket)."""

from __future__ import annotations

import re

__all__ = ["COLLECTION_PATTERN", "IDEMPOTENCY_COLLECTION", "check_collection"]

#: The service's own records of ``Idempotency-Key`` responses (never exposed: the
#: name does not match :data:`COLLECTION_PATTERN`; the feed does not watch it).
IDEMPOTENCY_COLLECTION = "_realtime_idempotency"

COLLECTION_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
_COLLECTION_RE = re.compile(COLLECTION_PATTERN)


def check_collection(name: object) -> str:
    """Return ``name`` if it is a collection name this service may expose.

    Raises:
        ValueError: with a message saying why the name is refused.
    """
    if not isinstance(name, str):
        raise ValueError("collection must be a string")
    if not _COLLECTION_RE.fullmatch(name):
        raise ValueError(
            f"collection name {name[:80]!r} must match {COLLECTION_PATTERN}"
        )
    if name.lower().startswith("system"):
        raise ValueError("system collections are not exposed")
    return name

"""The scale-out stream's wire format: subjects, headers, ticks and control messages.

Pure functions, no I/O. The relay (:mod:`realtime.relay`) publishes every
change of the database once into one JetStream stream; edges
(:mod:`realtime.sources.broker`) read back only the subjects their
subscriptions need. Everything both sides must agree on is here:

- **Subjects**: ``rt.<collection>.<tenant>`` for a change, where ``<tenant>`` is
  the document's tenant field (:func:`tenant_token`), or ``_`` when it has none
  (or one that is not a string: no tenant-scoped credential can see such a
  document). Collection names (``^[A-Za-z][A-Za-z0-9_-]{0,63}$``) are valid
  subject tokens as they are; tenants are escaped when they are not.
- **System subjects** ``rt._sys.tick`` and ``rt._sys.resync`` (no collection
  starts with ``_``), which every edge consumes.
- **Headers**: ``Nats-Msg-Id`` (the event id, for de-duplication),
  ``Nats-Expected-Last-Sequence`` (the fence, :mod:`realtime.fencing`), and
  :data:`TOKEN_HEADER`, the resume token after the message: where a relay
  resumes its change stream when the message is the stream's last.
- **Payloads**: a change is the raw change-stream event as BSON, so an edge
  normalises exactly what the relay read (:func:`realtime.events.normalise`);
  a tick and a resync are small JSON objects (:class:`Tick`, :class:`Resync`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

__all__ = [
    "EXPECTED_SEQ_HEADER",
    "MSG_ID_HEADER",
    "NO_TENANT",
    "PREFIX",
    "RESYNC_SUBJECT",
    "SYSTEM_SUBJECTS",
    "TICK_SUBJECT",
    "TOKEN_HEADER",
    "Resync",
    "Tick",
    "WireError",
    "collection_of",
    "decode_resync",
    "decode_tick",
    "encode_resync",
    "encode_tick",
    "headers",
    "subject",
    "subjects_of_change",
    "tenant_of",
    "tenant_token",
]

#: The first token of every subject of the stream.
PREFIX: Final = "rt"
#: The tenant token of a document without a (string) tenant.
NO_TENANT: Final = "_"
#: Periodic ticks: the relay's position and cluster time when nothing else is published.
TICK_SUBJECT: Final = f"{PREFIX}._sys.tick"
#: History lost / invalidated at the relay: subscriptions resync.
RESYNC_SUBJECT: Final = f"{PREFIX}._sys.resync"
#: What every edge consumes besides its subscriptions' subjects.
SYSTEM_SUBJECTS: Final = f"{PREFIX}._sys.>"

MSG_ID_HEADER: Final = "Nats-Msg-Id"
EXPECTED_SEQ_HEADER: Final = "Nats-Expected-Last-Sequence"
#: The resume token after this message (an event's own id; a tick's post-batch token).
TOKEN_HEADER: Final = "Rt-Token"  # noqa: S105 - a header name

#: Characters a subject token may hold as they are (everything else is escaped).
_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


class WireError(ValueError):
    """A message of the stream does not have the expected shape."""


def tenant_token(tenant: Any) -> str:
    """The subject token of a document's tenant value.

    A string of letters, digits, ``_`` and ``-`` is its own token (except ``_``
    itself, the token of "no tenant"); any other string is ``~`` followed by
    the hex of its UTF-8 bytes (never ambiguous: ``~`` is not a safe character);
    anything but a non-empty string is :data:`NO_TENANT`.
    """
    if not isinstance(tenant, str) or not tenant:
        return NO_TENANT
    if tenant != NO_TENANT and _SAFE.match(tenant):
        return tenant
    return "~" + tenant.encode().hex()


def subject(collection: str, tenant: Any = None) -> str:
    """The subject of a change of ``collection`` for a document of ``tenant``."""
    return f"{PREFIX}.{collection}.{tenant_token(tenant)}"


def collection_of(subject_: str) -> str | None:
    """The collection of a change subject (None for system and foreign subjects)."""
    parts = subject_.split(".")
    if len(parts) != 3 or parts[0] != PREFIX or parts[1].startswith("_"):
        return None
    return parts[1]


def tenant_of(doc: Mapping[str, Any] | None, field: str) -> Any:
    """The tenant value of ``doc`` (None without a document)."""
    return None if doc is None else doc.get(field)


def subjects_of_change(collection: str, document: Mapping[str, Any] | None,
                       before: Mapping[str, Any] | None, tenant_field: str) -> list[str]:
    """The subjects one change goes to: its document's tenant, and its former one.

    A change goes to the subject of the document's tenant after the change (its
    pre-image's for a delete, where there is no document). When the pre-image
    is known and belonged to another tenant (the document moved), the change
    also goes to the former tenant's subject, so that tenant's subscriptions
    see the ``leave``; an edge that consumes both subjects delivers it once (by
    event id).
    """
    after = tenant_of(document, tenant_field) if document is not None else None
    first = subject(collection, after if document is not None
                    else tenant_of(before, tenant_field))
    if document is None or before is None:
        return [first]
    former = subject(collection, tenant_of(before, tenant_field))
    return [first] if former == first else [first, former]


def headers(msg_id: str, token: str, expected_seq: int) -> dict[str, str]:
    """The headers of a fenced publish: de-duplication id, fence, resume token."""
    return {MSG_ID_HEADER: msg_id, EXPECTED_SEQ_HEADER: str(expected_seq),
            TOKEN_HEADER: token}


@dataclass(frozen=True, slots=True)
class Tick:
    """The relay's position when it published this: every change up to ``ct`` is before it.

    ``token`` is the change stream's post-batch resume token (an event id is
    one too), ``ct`` its cluster time ``(seconds, increment)``, ``wall`` the
    relay's clock (Unix seconds) when the batch ended.
    """

    token: str
    ct: tuple[int, int]
    wall: float


@dataclass(frozen=True, slots=True)
class Resync:
    """The relay lost history (``history_lost``) or a collection was dropped (``invalidated``).

    ``collection`` None: every subscription.
    """

    reason: str
    collection: str | None


def encode_tick(tick: Tick) -> bytes:
    """A tick's payload."""
    return orjson.dumps({"token": tick.token, "ct": list(tick.ct), "wall": tick.wall})


def decode_tick(data: bytes) -> Tick:
    """Parse a tick's payload.

    Raises:
        WireError: not a tick.
    """
    try:
        value = orjson.loads(data)
        token, (seconds, inc), wall = value["token"], value["ct"], value["wall"]
        if not (isinstance(token, str) and isinstance(seconds, int) and isinstance(inc, int)
                and isinstance(wall, int | float)):
            raise TypeError("types")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise WireError(f"not a tick: {exc}") from None
    return Tick(token, (seconds, inc), float(wall))


def encode_resync(resync: Resync) -> bytes:
    """A resync's payload."""
    return orjson.dumps({"reason": resync.reason, "collection": resync.collection})


def decode_resync(data: bytes) -> Resync:
    """Parse a resync's payload.

    Raises:
        WireError: not a resync.
    """
    try:
        value = orjson.loads(data)
        reason, collection = value["reason"], value.get("collection")
        if not isinstance(reason, str) or not (collection is None or isinstance(collection, str)):
            raise TypeError("types")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise WireError(f"not a resync: {exc}") from None
    return Resync(reason, collection)

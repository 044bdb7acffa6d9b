"""WebSocket protocol v1: parse client messages, render server messages.

Sans-I/O: pure functions over ``str``/``bytes``, no sockets, no database.
The ``/ws`` endpoint reads a text frame, calls :func:`parse_client_message`,
and sends the strings the ``render_*`` functions return as text frames.

Change events are serialized once: :func:`encode_event_body`
encodes the part of a change message shared by every subscriber, once per
event; :func:`change_prefix` is computed once per subscription; and
:func:`render_change` only concatenates the two around the ``op``, so the
fan-out never encodes an event a second time.

JSON objects in client messages: JSON ``null`` for an optional field means
the same as leaving the field out. Unknown fields are refused.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Final, NoReturn, TypeAlias

import orjson

from realtime import aggregate, names, projection, query

__all__ = [
    "CHANGE_OPS",
    "DEFAULT_LIMIT",
    "FEED_DOWN",
    "FEED_LIVE",
    "FEED_RETRYING",
    "FEED_STATES",
    "MAX_FRAME_BYTES",
    "MAX_SINCE_LENGTH",
    "MAX_SUBSCRIPTIONS",
    "MAX_SUB_LENGTH",
    "PROTOCOL_VERSION",
    "Auth",
    "ClientMessage",
    "CloseCode",
    "ErrorCode",
    "Ping",
    "ProtocolError",
    "ResyncReason",
    "Subscribe",
    "Unsubscribe",
    "change_prefix",
    "encode_event_body",
    "encode_stream_change",
    "leave_body",
    "parse_client_message",
    "parse_time",
    "render_aggregate",
    "render_authenticated",
    "render_change",
    "render_error",
    "render_pong",
    "render_resync",
    "render_snapshot",
    "render_status",
    "render_subscribed",
    "render_welcome",
    "text_frame",
]

PROTOCOL_VERSION: Final = 1

#: Largest frame accepted from a client (default; settings may override).
MAX_FRAME_BYTES: Final = 64 * 1024
#: Most subscriptions per connection (default; settings may override).
MAX_SUBSCRIPTIONS: Final = 100
#: Snapshot size when a subscribe message gives no ``limit``.
DEFAULT_LIMIT: Final = 100
#: Longest subscription id, in characters.
MAX_SUB_LENGTH: Final = 128
#: Longest ``since`` event id, in characters.
MAX_SINCE_LENGTH: Final = 512

#: The ``op`` values of a ``change`` message.
CHANGE_OPS: Final = frozenset({"insert", "update", "replace", "delete", "leave"})

_SINCE_RE: Final = re.compile(rf"[0-9A-Fa-f]{{1,{MAX_SINCE_LENGTH}}}")
# Cluster times count seconds since 1970 in 32 bits.
_MAX_TIME: Final = 2**32
#: RFC 3339 ``date-time``: a time zone is required; ``T``/``t``/space separate.
_RFC3339_RE: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})")
# How much of a client-supplied name an error message quotes.
_QUOTE_CHARS: Final = 64


class CloseCode(IntEnum):
    """WebSocket close codes used by the service."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011
    OVERLOADED = 1013
    UNAUTHENTICATED = 4401
    FORBIDDEN = 4403
    SLOW_CONSUMER = 4408


class ErrorCode(StrEnum):
    """The ``code`` of an ``error`` message."""

    #: The frame is not valid JSON (or not valid UTF-8).
    BAD_JSON = "bad_json"
    #: Not an object; a field is missing, has the wrong type, or is unknown.
    BAD_MESSAGE = "bad_message"
    #: ``op`` is not one the server knows.
    UNKNOWN_OP = "unknown_op"
    #: The subscription filter is not in the filter language.
    BAD_FILTER = "bad_filter"
    #: The collection name is refused.
    BAD_COLLECTION = "bad_collection"
    #: ``since`` is not an event id, or ``since_time`` not an RFC 3339 timestamp.
    BAD_SINCE = "bad_since"
    #: ``subscribe`` with a ``sub`` already active on the connection.
    DUPLICATE_SUB = "duplicate_sub"
    #: ``unsubscribe`` of a ``sub`` that is not active.
    UNKNOWN_SUB = "unknown_sub"
    #: More than the per-connection subscription limit.
    TOO_MANY_SUBS = "too_many_subs"
    #: A live aggregate has more groups than ``REALTIME_AGGREGATE_MAX_GROUPS``;
    #: the subscription has ended.
    TOO_MANY_GROUPS = "too_many_groups"
    #: The credentials do not allow this.
    FORBIDDEN = "forbidden"
    #: A server-side failure.
    INTERNAL = "internal"


class ResyncReason(StrEnum):
    """Why a subscription must reload (``resync`` message)."""

    HISTORY_LOST = "history_lost"
    INVALIDATED = "invalidated"
    OVERFLOW = "overflow"


#: ``status`` message: the change stream is open; changes arrive as they are committed.
FEED_LIVE: Final = "live"
#: ``status`` message: the server lost its change stream (the database restarts, a
#: network error) and reconnects with backoff. Nothing is lost: the changes committed
#: meanwhile follow the next ``live``, in commit order, once each.
FEED_RETRYING: Final = "retrying"
#: ``status`` message: the database is down: the server has retried for a while
#: (10 s) without getting its change stream back, or it knows the database process
#: has exited. It keeps retrying; the next ``status`` is ``live`` once it is back.
FEED_DOWN: Final = "down"
#: The values of a ``status`` message's ``feed``.
FEED_STATES: Final = frozenset({FEED_LIVE, FEED_RETRYING, FEED_DOWN})


class ProtocolError(Exception):
    """A client message the server refuses.

    ``code`` is an :class:`ErrorCode` value, ``message`` a sentence for the
    client (it never quotes a token), and ``sub`` the subscription id when the
    message named a valid one, so the ``error`` reply can name it.
    ``str(error)`` is ``message``.
    """

    def __init__(self, code: str, message: str, sub: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.sub = sub

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.message, self.sub))

    def __repr__(self) -> str:
        return f"ProtocolError(code={self.code!r}, message={self.message!r}, sub={self.sub!r})"


@dataclass(frozen=True, slots=True)
class Subscribe:
    """``{"op":"subscribe", ...}``: start a live query on a collection."""

    sub: str
    collection: str
    filter: dict[str, Any]
    snapshot: bool
    limit: int
    since: str | None
    #: Replay every change committed at or after this time (aware, UTC), then live.
    since_time: dt.datetime | None = None
    #: The projection's paths (``projection.check_fields``); None: whole documents.
    fields: tuple[str, ...] | None = None
    #: A live aggregate instead of documents (``aggregate.parse_spec``).
    aggregate: aggregate.AggregateSpec | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """``{"op":"unsubscribe","sub":...}``: stop a subscription."""

    sub: str


@dataclass(frozen=True, slots=True)
class Ping:
    """``{"op":"ping","ref":...}``: ask for a ``pong`` echoing ``ref``."""

    ref: str | int | None


@dataclass(frozen=True, slots=True)
class Auth:
    """``{"op":"auth","token":...}``: authenticate with an API key or JWT."""

    token: str


ClientMessage: TypeAlias = Subscribe | Unsubscribe | Ping | Auth

_FIELDS: Final[dict[str, frozenset[str]]] = {
    "subscribe": frozenset({"op", "sub", "collection", "filter", "snapshot", "limit", "since",
                            "since_time", "fields", "aggregate"}),
    "unsubscribe": frozenset({"op", "sub"}),
    "ping": frozenset({"op", "ref"}),
    "auth": frozenset({"op", "token"}),
}


# ---------------------------------------------------------------------------
# Parsing


def _quote(value: str) -> str:
    """``repr`` of a client-supplied string, cut short for error messages."""
    if len(value) > _QUOTE_CHARS:
        return repr(value[:_QUOTE_CHARS]) + "..."
    return repr(value)


def _bad(message: str, sub: str | None = None) -> NoReturn:
    raise ProtocolError(ErrorCode.BAD_MESSAGE, message, sub)


def _check_fields(op: str, obj: dict[str, Any], sub: str | None) -> None:
    unknown = [key for key in obj if key not in _FIELDS[op]]
    if not unknown:
        return
    listed = ", ".join(_quote(key) for key in unknown[:5])
    if len(unknown) > 5:
        listed += ", ..."
    plural = "s" if len(unknown) > 1 else ""
    _bad(f"unknown field{plural} {listed} in {op} message", sub)


def _sub_field(op: str, obj: dict[str, Any]) -> str:
    if "sub" not in obj:
        _bad(f"{op} message needs a 'sub' field")
    sub = obj["sub"]
    if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_LENGTH:
        _bad(f"'sub' must be a non-empty string of at most {MAX_SUB_LENGTH} characters")
    return sub


def _parse_subscribe(obj: dict[str, Any], max_limit: int) -> Subscribe:
    sub = _sub_field("subscribe", obj)
    _check_fields("subscribe", obj, sub)

    if "collection" not in obj:
        _bad("subscribe message needs a 'collection' field", sub)
    collection = obj["collection"]
    if not isinstance(collection, str):
        _bad("'collection' must be a string", sub)
    try:
        collection = names.check_collection(collection)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.BAD_COLLECTION, str(exc), sub) from None

    raw_filter = obj.get("filter")
    if raw_filter is None:
        raw_filter = {}
    elif not isinstance(raw_filter, dict):
        _bad("'filter' must be an object", sub)
    try:
        filter_ = query.validate(raw_filter)
    except query.FilterError as exc:
        raise ProtocolError(ErrorCode.BAD_FILTER, str(exc), sub) from None

    snapshot = obj.get("snapshot")
    if snapshot is None:
        snapshot = False
    elif not isinstance(snapshot, bool):
        _bad("'snapshot' must be true or false", sub)

    limit = obj.get("limit")
    if limit is None:
        limit = min(DEFAULT_LIMIT, max_limit)
    elif isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= max_limit:
        _bad(f"'limit' must be an integer from 1 to {max_limit}", sub)

    since = obj.get("since")
    if since is not None and not (isinstance(since, str) and _SINCE_RE.fullmatch(since)):
        raise ProtocolError(
            ErrorCode.BAD_SINCE,
            f"'since' must be an event id: 1 to {MAX_SINCE_LENGTH} hexadecimal digits",
            sub,
        )

    since_time = obj.get("since_time")
    if since_time is not None:
        since_time = _since_time(since_time, sub)
        if since is not None:
            _bad("'since' and 'since_time' exclude each other", sub)
        if snapshot:
            _bad("'since_time' replays changes: it cannot be combined with 'snapshot'", sub)

    fields = obj.get("fields")
    if fields is not None:
        try:
            fields = projection.check_fields(fields)
        except ValueError as exc:
            _bad(f"'fields' {exc}", sub)

    spec = obj.get("aggregate")
    if spec is not None:
        try:
            spec = aggregate.parse_spec(spec)
        except ValueError as exc:
            _bad(str(exc), sub)
        clash = [name for name in ("snapshot", "limit", "since", "since_time", "fields")
                 if obj.get(name) is not None]
        if clash:
            _bad(f"'aggregate' cannot be combined with {_quote(clash[0])}", sub)

    return Subscribe(
        sub=sub,
        collection=collection,
        filter=filter_,
        snapshot=snapshot,
        limit=limit,
        since=since,
        since_time=since_time,
        fields=fields,
        aggregate=spec,
    )


def parse_time(value: Any) -> dt.datetime:
    """An RFC 3339 timestamp (``2026-01-01T09:00:00Z``, an offset, or fractions) in UTC.

    Raises:
        ValueError: ``value`` is not a string holding an RFC 3339 date-time
            with a time zone (``Z`` or an offset), or it is before 1970 or past
            the 32-bit seconds of the database's cluster time (2106).
    """
    if not isinstance(value, str) or not _RFC3339_RE.fullmatch(value):
        raise ValueError("not an RFC 3339 timestamp like 2026-01-01T09:00:00Z")
    try:
        parsed = dt.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("not a valid date and time") from None
    if not 0 <= parsed.timestamp() < _MAX_TIME:
        raise ValueError("outside the database's clock (1970-01-01 to 2106-02-07)")
    return parsed.astimezone(dt.UTC)


def _since_time(value: Any, sub: str) -> dt.datetime:
    try:
        return parse_time(value)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.BAD_SINCE, f"'since_time' is {exc}", sub) from None


def _parse_unsubscribe(obj: dict[str, Any]) -> Unsubscribe:
    sub = _sub_field("unsubscribe", obj)
    _check_fields("unsubscribe", obj, sub)
    return Unsubscribe(sub=sub)


def _parse_ping(obj: dict[str, Any]) -> Ping:
    _check_fields("ping", obj, None)
    ref = obj.get("ref")
    if ref is not None and (isinstance(ref, bool) or not isinstance(ref, str | int)):
        _bad("'ref' must be a string or an integer")
    return Ping(ref=ref)


def _parse_auth(obj: dict[str, Any]) -> Auth:
    _check_fields("auth", obj, None)
    if "token" not in obj:
        _bad("auth message needs a 'token' field")
    token = obj["token"]
    if not isinstance(token, str) or not token:
        _bad("'token' must be a non-empty string")
    return Auth(token=token)


def parse_client_message(data: str | bytes, *, max_limit: int = 1000) -> ClientMessage:
    """Parse one client frame into a :data:`ClientMessage`.

    ``data`` is the frame's payload (text, or bytes that must be UTF-8).
    ``max_limit`` caps a subscription's ``limit`` (its default is
    ``min(DEFAULT_LIMIT, max_limit)``).

    Raises:
        ProtocolError: for every frame that is not a valid message, and for
            nothing else: ``bad_json`` (not JSON or not UTF-8),
            ``bad_message`` (not an object; missing, wrongly typed, out of
            range or unknown field), ``unknown_op``, ``bad_collection``,
            ``bad_filter``, ``bad_since``. For a ``subscribe`` or
            ``unsubscribe`` whose ``sub`` is valid, ``error.sub`` is it.
        ValueError: if ``max_limit`` is less than 1 (a programming error).
    """
    if max_limit < 1:
        raise ValueError(f"max_limit must be at least 1, not {max_limit}")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"message is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        _bad("message must be a JSON object")
    if "op" not in obj:
        _bad("message needs an 'op' field")
    op = obj["op"]
    if not isinstance(op, str):
        _bad("'op' must be a string")
    if op == "subscribe":
        return _parse_subscribe(obj, max_limit)
    if op == "unsubscribe":
        return _parse_unsubscribe(obj)
    if op == "ping":
        return _parse_ping(obj)
    if op == "auth":
        return _parse_auth(obj)
    known = ", ".join(_FIELDS)
    raise ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {_quote(op)}; expected one of {known}")


# ---------------------------------------------------------------------------
# Rendering
#
# Every renderer returns compact JSON text. Values are encoded with orjson,
# which raises orjson.JSONEncodeError (a TypeError) for a value it cannot
# encode, e.g. a str with a lone surrogate.


_PONG: Final = '{"type":"pong"}'
_AUTHENTICATED: Final = '{"type":"authenticated"}'


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def render_welcome(server: str, heartbeat: float) -> str:
    """``{"type":"welcome","protocol":1,"server":...,"heartbeat":...}``.

    ``heartbeat`` (seconds) is written as an integer when it is one.

    Raises:
        ValueError: if ``heartbeat`` is NaN or infinite.
        TypeError: if a value cannot be encoded as JSON.
    """
    if isinstance(heartbeat, float):
        if not math.isfinite(heartbeat):
            raise ValueError(f"heartbeat must be finite, not {heartbeat}")
        if heartbeat.is_integer():
            heartbeat = int(heartbeat)
    return _json(
        {"type": "welcome", "protocol": PROTOCOL_VERSION, "server": server, "heartbeat": heartbeat}
    )


def render_subscribed(sub: str, head: str | None) -> str:
    """``{"type":"subscribed","sub":...,"head":...}``; ``head`` is ``null`` if None.

    Raises:
        TypeError: if a value cannot be encoded as JSON.
    """
    return _json({"type": "subscribed", "sub": sub, "head": head})


def render_snapshot(sub: str, documents: Sequence[str], head: str | None) -> str:
    """``{"type":"snapshot","sub":...,"documents":[...],"head":...}``.

    ``documents`` are already-encoded JSON objects, one string per document;
    they are spliced in as they are, never decoded or re-encoded.

    Raises:
        TypeError: if ``sub`` or ``head`` cannot be encoded as JSON, or a
            document is not a ``str``.
    """
    return (
        '{"type":"snapshot","sub":'
        + _json(sub)
        + ',"documents":['
        + ",".join(documents)
        + '],"head":'
        + _json(head)
        + "}"
    )


def render_aggregate(sub: str, groups: str, full: bool = False) -> str:
    """``{"type":"aggregate","sub":...,"full":...,"groups":[...]}``: a live aggregate's
    groups, all of them (``full``, the first message) or those that changed.

    ``groups`` is the already-encoded JSON array of the groups, spliced in as it is.

    Raises:
        TypeError: if ``sub`` cannot be encoded as JSON.
    """
    return ('{"type":"aggregate","sub":' + _json(sub) + ',"full":'
            + ("true" if full else "false") + ',"groups":' + groups + "}")


def render_resync(sub: str, reason: str) -> str:
    """``{"type":"resync","sub":...,"reason":...}``.

    Raises:
        ValueError: if ``reason`` is not a :class:`ResyncReason` value.
        TypeError: if ``sub`` cannot be encoded as JSON.
    """
    reason = ResyncReason(reason)
    return _json({"type": "resync", "sub": sub, "reason": reason.value})


def render_error(code: str, message: str, sub: str | None = None) -> str:
    """``{"type":"error","sub":...,"code":...,"message":...}``; no ``sub`` if None.

    Raises:
        TypeError: if a value cannot be encoded as JSON.
    """
    if sub is None:
        return _json({"type": "error", "code": str(code), "message": message})
    return _json({"type": "error", "sub": sub, "code": str(code), "message": message})


def render_pong(ref: str | int | None) -> str:
    """``{"type":"pong","ref":...}``; no ``ref`` if None.

    Raises:
        TypeError: if ``ref`` cannot be encoded as JSON.
    """
    if ref is None:
        return _PONG
    return _json({"type": "pong", "ref": ref})


def render_status(feed: str) -> str:
    """``{"type":"status","feed":...}``: the state of the server's change stream.

    Sent to every connection when the state changes, and right after
    ``welcome`` when it is not :data:`FEED_LIVE`. ``feed`` is one of
    :data:`FEED_LIVE`, :data:`FEED_RETRYING`, :data:`FEED_DOWN`.

    Raises:
        ValueError: if ``feed`` is not one of :data:`FEED_STATES`.
    """
    if feed not in FEED_STATES:
        raise ValueError(f"feed must be one of {sorted(FEED_STATES)}, not {feed!r}")
    return '{"type":"status","feed":"' + feed + '"}'


def render_authenticated() -> str:
    """``{"type":"authenticated"}``, the answer to a successful ``auth``."""
    return _AUTHENTICATED


def encode_event_body(
    *,
    id: str,
    collection: str,
    key: Any,
    document: str | None,
    updated: str | None,
    removed: list[str] | None,
    ts: str,
) -> str:
    """Encode the part of a ``change`` message shared by every subscriber.

    Returns ``"id":...,"collection":...,"key":...,"document":...,"updated":
    ...,"removed":[...],"ts":...}``: everything after the ``op``, including
    the closing brace, without the opening one. ``document`` and ``updated``
    are already-encoded JSON objects, spliced in as they are; each of
    ``document``, ``updated`` and ``removed`` is left out when None. ``key``
    is any value orjson encodes (a ``str`` or ``int`` ``_id``). Call once per
    event, then :func:`render_change` per subscription.

    Raises:
        TypeError: if ``id``, ``collection``, ``key``, ``removed`` or ``ts``
            cannot be encoded as JSON.
    """
    parts = [
        '"id":',
        _json(id),
        ',"collection":',
        _json(collection),
        ',"key":',
        _json(key),
    ]
    if document is not None:
        parts += (',"document":', document)
    if updated is not None:
        parts += (',"updated":', updated)
    if removed is not None:
        parts += (',"removed":', _json(removed))
    parts += (',"ts":', _json(ts), "}")
    return "".join(parts)


def encode_stream_change(*, op: str, id: str, collection: str, ts: str) -> str:
    """``{"op":<drop|rename|dropDatabase|invalidate>,"id":...,"collection":...,"ts":...}``:
    an event that ends a collection's history, in a page of the REST changes feed.

    Raises:
        TypeError: if a value cannot be encoded as JSON.
    """
    return _json({"op": op, "id": id, "collection": collection, "ts": ts})


def leave_body(
    *,
    id: str,
    collection: str,
    key: Any,
    ts: str,
) -> str:
    """The shared body of a ``leave`` change, which carries no document.

    Raises:
        TypeError: if a value cannot be encoded as JSON.
    """
    return encode_event_body(
        id=id, collection=collection, key=key, document=None, updated=None, removed=None, ts=ts
    )


def change_prefix(sub: str) -> str:
    """``{"type":"change","sub":<sub>,"op":"`` (compute once per subscription).

    Raises:
        TypeError: if ``sub`` cannot be encoded as JSON.
    """
    return '{"type":"change","sub":' + _json(sub) + ',"op":"'


def render_change(prefix: str, op: str, body: str) -> str:
    """Splice a ``change`` message: ``prefix + op + '",' + body``.

    ``prefix`` comes from :func:`change_prefix`, ``body`` from
    :func:`encode_event_body` or :func:`leave_body`.

    Raises:
        ValueError: if ``op`` is not one of :data:`CHANGE_OPS`.
    """
    if op not in CHANGE_OPS:
        raise ValueError(f"op must be one of {sorted(CHANGE_OPS)}, not {op!r}")
    return prefix + op + '",' + body


def text_frame(payload: bytes) -> bytes:
    """A complete, unmasked WebSocket text frame (server to client) carrying ``payload``.

    RFC 6455 §5.2: FIN + opcode 1, then the length in 7, 7+16 or 7+64 bits.
    ``payload`` must be UTF-8 (e.g. ``str.encode()``); valid only on a
    connection that negotiated no extension.
    """
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload

"""BSON <-> JSON through one codec (orjson).

ObjectId becomes its hex string, datetime ISO-8601 with milliseconds and ``Z``,
Decimal128 a decimal string, bytes base64. Incoming JSON is checked to be a
storable document: no field name starting with ``$``, containing ``.`` or NUL.

The server-managed operation id ``_op`` (:data:`OP_FIELD`, see
:mod:`realtime.store`) stays in the database: :func:`dumps` and
:func:`dumps_str` leave a top-level ``_op`` out of a dict, so no REST
response, change event (document or ``updated``) or snapshot shows it. The
check costs one dict lookup per encoded value; only a document that has the
field is copied.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from bson import Binary, Decimal128, ObjectId, Timestamp

from realtime.errors import BadRequest, InvalidDocument

__all__ = [
    "OP_FIELD",
    "check_document",
    "dumps",
    "dumps_str",
    "format_datetime",
    "key_to_json",
    "loads",
    "parse_id",
]

#: The server-managed field with the id of the operation that wrote a document last.
OP_FIELD = "_op"

_HEX24 = re.compile(r"^[0-9a-fA-F]{24}$")
_OPTS = orjson.OPT_PASSTHROUGH_DATETIME


def format_datetime(value: dt.datetime) -> str:
    """ISO-8601 in UTC with milliseconds and ``Z`` (naive values are UTC)."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    # (isoformat truncates to milliseconds; a third of strftime's cost, on every event)
    return value.isoformat(timespec="milliseconds") + "Z"


def _default(value: Any) -> Any:
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, dt.datetime):
        return format_datetime(value)
    if isinstance(value, Decimal128):
        return str(value)
    if isinstance(value, Binary) and value.subtype in (3, 4) and len(value) == 16:
        return str(uuid.UUID(bytes=bytes(value)))
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Timestamp):
        return {"t": value.time, "i": value.inc}
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(value: Any) -> bytes:
    """Encode a BSON-decoded value as JSON bytes.

    A top-level ``_op`` of a dict is left out (it is server-internal).

    Raises:
        TypeError: a value of a BSON type with no JSON form (e.g. a regex).
    """
    if isinstance(value, dict) and OP_FIELD in value:
        value = {k: v for k, v in value.items() if k != OP_FIELD}
    return orjson.dumps(value, default=_default, option=_OPTS)


def dumps_str(value: Any) -> str:
    """Like :func:`dumps`, as ``str``."""
    return dumps(value).decode()


def loads(body: bytes | str) -> Any:
    """Decode a JSON request body.

    Raises:
        BadRequest: the body is not valid JSON.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None


def parse_id(value: Any) -> Any:
    """A 24-hex string is an ObjectId; any other string or number is itself."""
    if isinstance(value, str) and _HEX24.match(value):
        return ObjectId(value)
    return value


def key_to_json(value: Any) -> Any:
    """The JSON form of a document ``_id``."""
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return value
    return orjson.loads(dumps(value))


def _check_value(value: Any, path: str, depth: int) -> None:
    if depth > 100:
        raise InvalidDocument(f"document nested deeper than 100 levels at {path!r}")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or not key:
                raise InvalidDocument(f"empty field name at {path or 'top level'!r}")
            if key.startswith("$"):
                raise InvalidDocument(f"field name {key!r} must not start with '$'")
            if "." in key:
                raise InvalidDocument(f"field name {key!r} must not contain '.'")
            if "\x00" in key:
                raise InvalidDocument(f"field name {key!r} must not contain NUL")
            _check_value(item, f"{path}.{key}" if path else key, depth + 1)
            if _too_big(item):
                value[key] = float(item)  # type: ignore[index]
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_value(item, f"{path}.{index}", depth + 1)
            if _too_big(item):
                value[index] = float(item)


def _too_big(value: Any) -> bool:
    """An integer BSON cannot store (int64): stored as a double, as MongoDB's tools do.

    (orjson already decodes integers beyond 64 bits as doubles; this covers
    2**63 .. 2**64 - 1, which it decodes as int and the driver cannot encode.)
    """
    return isinstance(value, int) and not isinstance(value, bool) and \
        not -(2**63) <= value < 2**63


def check_document(value: Any) -> dict[str, Any]:
    """Return ``value`` as a document if it may be stored.

    The ``_id`` (if present) is converted with :func:`parse_id`; ``_version``
    and ``_op`` are server-managed and removed.

    Raises:
        InvalidDocument: not a JSON object, or a field name is not storable.
    """
    if not isinstance(value, dict):
        raise InvalidDocument("a document must be a JSON object")
    _check_value(value, "", 0)
    doc = dict(value)
    doc.pop("_version", None)
    doc.pop(OP_FIELD, None)
    if "_id" in doc:
        if isinstance(doc["_id"], dict | list) or doc["_id"] is None:
            raise InvalidDocument("_id must be a string or a number")
        doc["_id"] = parse_id(doc["_id"])
    return doc

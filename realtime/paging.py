"""Keyset paging: sort specs, opaque ``after`` cursors, and a page of a listing.

Sans I/O (a :class:`Page` reads any async iterator of documents).
Lists are keyset-paginated. The ``after`` cursor is urlsafe base64 (no
padding) of a JSON object ``{"s": [[field, direction], ...], "k": [value,
...]}``: the full sort (including the ``_id`` tie-break) and the last
document's value for each sort key. Values keep their BSON type through a
small tagged form (see :func:`encode_cursor`). The next page is "everything
strictly after those values in the sort order", built as an ``$or`` of
equality prefixes and one strict comparison, where a strict comparison
follows MongoDB's cross-type order (null/missing < numbers < strings <
objects < binary < ObjectId < bool < date < ...): ``$gt`` only compares
within one type, so the types that sort after a value are added with
``$type``. A missing field sorts as null. Sort keys whose values are arrays
are not supported for exact paging (MongoDB sorts an array by its smallest or
largest element).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import bson
import orjson
from bson import Binary, Decimal128, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.code import Code
from bson.errors import BSONError

from realtime.errors import BadRequest

__all__ = [
    "MAX_CURSOR_LENGTH",
    "MAX_SORT_KEYS",
    "Page",
    "SortSpec",
    "decode_cursor",
    "encode_cursor",
    "keyset_condition",
    "parse_sort",
]

MAX_SORT_KEYS = 8
MAX_CURSOR_LENGTH = 16_384
#: Sort keys and directions (1 or -1); the last key is always ``_id``.
SortSpec = tuple[tuple[str, int], ...]


# ------------------------------------------------------------------------- sort

_SEGMENT = re.compile(r"^[^$\x00.][^\x00.]*$")


def _check_field(path: str) -> str:
    if not path:
        raise BadRequest("empty sort field")
    if len(path) > 256:
        raise BadRequest("sort field longer than 256 characters")
    for segment in path.split("."):
        if not _SEGMENT.match(segment):
            raise BadRequest(f"invalid sort field {path[:80]!r}: path segments must be "
                             "non-empty, must not start with '$' or contain NUL")
    return path


def parse_sort(text: str | None) -> SortSpec:
    """Parse ``-ts,name`` (``-`` descending, ``+`` or nothing ascending).

    The ``_id`` tie-break is appended in the direction of the last key
    (ascending if there is no sort); keys after an explicit ``_id`` are dropped
    since ``_id`` is unique.

    Raises:
        BadRequest: an empty or invalid field, a duplicate, more than 8 keys.
    """
    keys: list[tuple[str, int]] = []
    if text is not None and text.strip():
        for raw in text.split(","):
            item = raw.strip()
            direction = 1
            if item[:1] in ("-", "+"):
                direction = -1 if item[0] == "-" else 1
                item = item[1:].strip()
            _check_field(item)
            if any(item == k for k, _ in keys):
                raise BadRequest(f"sort field {item!r} given twice")
            keys.append((item, direction))
            if item == "_id":
                break
    if len(keys) > MAX_SORT_KEYS:
        raise BadRequest(f"at most {MAX_SORT_KEYS} sort fields")
    if not keys or keys[-1][0] != "_id":
        keys.append(("_id", keys[-1][1] if keys else 1))
    return tuple(keys)


# ----------------------------------------------------------------------- cursor


def _tag(value: Any) -> Any:
    """The tagged JSON form of a BSON value (JSON scalars stay as they are)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else {"f": repr(value)}
    if isinstance(value, ObjectId):
        return {"o": str(value)}
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        return {"t": delta // dt.timedelta(milliseconds=1)}
    if isinstance(value, Decimal128):
        return {"m": str(value)}
    if isinstance(value, Binary):
        return {"b": base64.b64encode(value).decode("ascii"), "st": value.subtype}
    if isinstance(value, bytes):
        return {"b": base64.b64encode(value).decode("ascii"), "st": 0}
    if isinstance(value, list):
        return {"a": [_tag(v) for v in value]}
    if isinstance(value, Mapping):
        return {"d": [[str(k), _tag(v)] for k, v in value.items()]}
    # Rare types (Timestamp, Regex, MinKey, Code, ...) travel as BSON.
    raw = bson.encode({"v": value})
    return {"x": base64.b64encode(raw).decode("ascii")}


def _untag(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise ValueError("integer out of range")
    if value is None or isinstance(value, bool | str | int | float):
        return value
    if not isinstance(value, dict) or len(value) not in (1, 2):
        raise ValueError("bad tagged value")
    if "o" in value:
        return ObjectId(value["o"])
    if "t" in value:
        ms = value["t"]
        if not isinstance(ms, int) or isinstance(ms, bool):
            raise ValueError("bad date")
        return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)
    if "m" in value:
        return Decimal128(str(value["m"]))
    if "f" in value:
        if value["f"] not in ("nan", "inf", "-inf"):
            raise ValueError("bad float")
        return float(value["f"])
    if "b" in value:
        subtype = value.get("st", 0)
        if not isinstance(subtype, int) or not 0 <= subtype <= 255:
            raise ValueError("bad binary subtype")
        data = base64.b64decode(value["b"], validate=True)
        return data if subtype == 0 else Binary(data, subtype)
    if "a" in value and isinstance(value["a"], list):
        return [_untag(v) for v in value["a"]]
    if "d" in value and isinstance(value["d"], list):
        out: dict[str, Any] = {}
        for pair in value["d"]:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
                raise ValueError("bad object member")
            out[pair[0]] = _untag(pair[1])
        return out
    if "x" in value:
        return bson.decode(base64.b64decode(value["x"], validate=True))["v"]
    raise ValueError("unknown tag")


def encode_cursor(sort: SortSpec, values: Sequence[Any]) -> str:
    """The opaque ``after`` cursor for the document whose sort values are ``values``."""
    payload = {"s": [list(k) for k in sort], "k": [_tag(v) for v in values]}
    raw = orjson.dumps(payload)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(token: str, sort: SortSpec) -> list[Any]:
    """The sort values in ``token``.

    Raises:
        BadRequest: the cursor is malformed or was made for a different sort.
    """
    if len(token) > MAX_CURSOR_LENGTH:
        raise BadRequest("malformed cursor: too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = orjson.loads(raw)
        if not isinstance(payload, dict) or not isinstance(payload.get("k"), list):
            raise ValueError("not a cursor")
        made_for = payload.get("s")
        values = [_untag(v) for v in payload["k"]]
    except (ValueError, TypeError, KeyError, ArithmeticError, RecursionError,
            binascii.Error, BSONError):
        raise BadRequest("malformed cursor (use the `next` value of the previous page)") from None
    if made_for != [list(k) for k in sort] or len(values) != len(sort):
        raise BadRequest("the cursor was made for a different sort")
    return values


def _path_value(doc: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path; missing (or through a non-object) is None."""
    value: Any = doc
    for segment in path.split("."):
        if not isinstance(value, Mapping) or segment not in value:
            return None
        value = value[segment]
    return value


# MongoDB's cross-type sort order (arrays sort by their elements: not listed).
_NULL = 1
_CLASSES: tuple[tuple[int, tuple[str, ...]], ...] = (
    (0, ("minKey",)),
    (2, ("double", "int", "long", "decimal")),
    (3, ("string", "symbol")),
    (4, ("object",)),
    (6, ("binData",)),
    (7, ("objectId",)),
    (8, ("bool",)),
    (9, ("date",)),
    (10, ("timestamp",)),
    (11, ("regex",)),
    (12, ("javascript",)),
    (13, ("maxKey",)),
)


def _type_class(value: Any) -> int:
    checks: tuple[tuple[type | tuple[type, ...], int], ...] = (
        (bool, 8),
        ((int, float, Decimal128), 2),
        (str, 3),
        (Mapping, 4),
        (list, 5),
        (bytes, 6),
        (ObjectId, 7),
        (dt.datetime, 9),
        (Timestamp, 10),
        ((Regex, re.Pattern), 11),
        (Code, 12),
        (MinKey, 0),
        (MaxKey, 13),
    )
    if value is None:
        return _NULL
    for kind, rank in checks:
        if isinstance(value, kind):
            return rank
    return _NULL


def _beyond(path: str, value: Any, direction: int) -> dict[str, Any]:
    """Documents whose ``path`` sorts strictly after ``value`` in ``direction``."""
    rank = _type_class(value)
    comparable = rank not in (_NULL, 0, 13)
    terms: list[dict[str, Any]] = []
    if direction > 0:
        if comparable:
            terms.append({path: {"$gt": value}})
        later = [t for r, types in _CLASSES if r > rank for t in types]
        if later:
            terms.append({path: {"$type": later}})
    else:
        if comparable:
            terms.append({path: {"$lt": value}})
        earlier = [t for r, types in _CLASSES if r < rank for t in types]
        if earlier:
            terms.append({path: {"$type": earlier}})
        if rank > _NULL:
            terms.append({path: {"$eq": None}})
    if not terms:
        return {path: {"$in": []}}
    return terms[0] if len(terms) == 1 else {"$or": terms}


def keyset_condition(sort: SortSpec, values: Sequence[Any]) -> dict[str, Any]:
    """The query for documents strictly after ``values`` in the order ``sort``."""
    branches: list[dict[str, Any]] = []
    for i, (path, direction) in enumerate(sort):
        terms = [{p: {"$eq": v}} for (p, _), v in zip(sort[:i], values[:i], strict=True)]
        terms.append(_beyond(path, values[i], direction))
        branches.append(terms[0] if len(terms) == 1 else {"$and": terms})
    return branches[0] if len(branches) == 1 else {"$or": branches}


# ------------------------------------------------------------------------- page


class Page:
    """One page of a listing, streamed from the server cursor.

    Iterate it (once) for at most ``limit`` documents; afterwards :attr:`next`
    is the cursor of the following page, or None on the last page. Always
    :meth:`aclose` it. :meth:`prefetch` fetches the first document, so
    database errors surface before a response starts.
    """

    def __init__(self, docs: AsyncIterator[dict[str, Any]], sort: SortSpec, limit: int) -> None:
        self._docs = docs
        self._sort = sort
        self._limit = limit
        self._head: list[dict[str, Any]] = []
        self.next: str | None = None

    async def prefetch(self) -> None:
        """Fetch the first document now, so database errors surface before a response."""
        async for doc in self._docs:
            self._head.append(doc)
            break

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        """Yield the page's documents, then set :attr:`next`.

        Raises:
            DatabaseUnavailable: the database went away mid-page.
        """
        count = 0
        last: dict[str, Any] | None = None
        for doc in self._head:
            count += 1
            last = doc
            yield doc
        self._head.clear()
        if count == 0:
            return
        async for doc in self._docs:
            if count == self._limit:  # the (limit+1)-th document: there is a next page
                assert last is not None  # noqa: S101 - count > 0
                self.next = encode_cursor(self._sort,
                                          [_path_value(last, p) for p, _ in self._sort])
                return
            count += 1
            last = doc
            yield doc

    async def aclose(self) -> None:
        """Close the server cursor."""
        aclose = getattr(self._docs, "aclose", None)
        if aclose is not None:
            await aclose()

"""``query.matches`` agrees with a real database's ``find(query.to_mongo(filter))``.

Hypothesis generates small collections (fields ``a``/``b``/``c`` holding scalars of
many BSON types, sub-documents and arrays, or missing) and filters of the whole
language; each example is inserted into a fresh collection of a SecantusDB server
started for this module, and the ids ``find`` returns must be exactly the ids of
the stored documents (as PyMongo reads them back) that ``matches`` accepts.

Corners left out of generation, where SecantusDB 0.7.0b3 differs from MongoDB
(``realtime.query`` follows MongoDB; see the unit tests in ``test_query.py``):

- null-matching conditions (``null`` with ``$eq``/``$ne``/``$in``/``$nin``/
  ``$gte``/``$lte`` or as a literal) on a path with an array index component.
  MongoDB's path iterator reaches *nothing* through an index past the end of an
  array (``{"a.5": null}`` does not match ``{"a": [1]}``) or through a scalar
  element followed by more path (``{"a.0.b": null}`` does not match
  ``{"a": [5]}``); SecantusDB reads both as a missing field and matches.
- path components with leading zeros (``a.00``): MongoDB compares an index
  component with the array's field names as strings, so ``00`` indexes
  nothing; SecantusDB reads it as index 0.
- ``Decimal128`` values that are not exactly a double (``Decimal128("0.1")``):
  MongoDB compares a decimal with a double exactly (``0.1`` the double is
  0.1000000000000000055...), SecantusDB through the double's shortest repr, so
  it finds ``Decimal128("0.1")`` for ``{"a": 0.1}``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import count
from typing import Any

import pymongo
import pytest
from bson import Decimal128, ObjectId
from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo.collection import Collection
from pymongo.database import Database

from realtime import query
from realtime.embedded import EmbeddedServer

pytestmark = pytest.mark.driver_blind

# ----------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def database() -> Iterator[Database[dict[str, Any]]]:
    """A fresh in-memory SecantusDB server on a free port, for this module."""
    server = EmbeddedServer(":memory:", sync_on_commit=False)
    server.start()
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(server.uri)
    try:
        yield client["query_property"]
    finally:
        client.close()
        server.stop()


_collections = count()


@contextmanager
def fresh_collection(database: Database[dict[str, Any]]) -> Iterator[Collection[dict[str, Any]]]:
    """An empty collection of its own (one per hypothesis example), dropped afterwards."""
    coll = database[f"c{next(_collections)}"]
    try:
        yield coll
    finally:
        coll.drop()


# ----------------------------------------------------------------------------- documents

KEYS = ["a", "b", "c"]
NESTED_KEYS = ["a", "b", "c", "0", "1"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([2**31, 2**53, 2**53 + 1, 2**63 - 1, -(2**63)]),
    st.sampled_from([0.0, -0.0, 0.5, 1.0, 2.5, -1.5, 1e300, 2.0**53, math.inf, -math.inf]),
    st.just(math.nan),
    st.sampled_from(["", "a", "ab", "b", "B", "é", "1", "z"]),
    # Decimal128 only with values that are exactly doubles (see the module docstring).
    st.sampled_from(["1", "1.0", "2.5", "-0", "3", "NaN", "Infinity", "-Infinity"]).map(Decimal128),
    st.just(dt.datetime(2020, 1, 1, 12, 0, 0)),  # BSON dates decode naive (UTC)
    st.just(ObjectId("0123456789abcdef01234567")),
    st.just(b"\x01"),
)

values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(NESTED_KEYS), inner, max_size=3),
    ),
    max_leaves=6,
)

documents = st.lists(
    st.dictionaries(st.sampled_from(KEYS), values, max_size=3),
    min_size=2,
    max_size=8,
)

# ----------------------------------------------------------------------------- filters

PLAIN_PATHS = ["a", "b", "c", "a.b", "a.c", "b.a", "a.b.c", "c.a.b"]
INDEX_PATHS = ["a.0", "a.1", "b.0", "a.0.b", "a.b.0", "c.1.a", "a.2"]
PATHS = PLAIN_PATHS + INDEX_PATHS + ["_id"]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([2**53, 2**53 + 1, 2**63 - 1]),
    st.sampled_from([0.0, 0.5, 1.0, 2.5, -1.5, 1e300, 2.0**53]),
    st.sampled_from(["", "a", "ab", "b", "é", "1"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(NESTED_KEYS), inner, max_size=2),
    ),
    max_leaves=4,
)
range_operands = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.5, 2.5, -1.5, 2.0**53, 2**53 + 1]),
    st.sampled_from(["", "a", "ab", "b", "é"]),
)


def _json_form(value: Any) -> bool:
    """Whether ``value`` could come from a JSON filter."""
    if value is None or isinstance(value, bool | str):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_json_form(item) for item in value)
    if isinstance(value, dict):
        return all(_json_form(item) for item in value.values())
    return False


def seen_values(docs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Path -> the JSON-expressible values the documents hold there, so filters hit often.

    Arrays are walked both by index (``a.0``) and implicitly (``a`` for each
    element, and on into the element's fields), as the query language does.
    """
    seen: dict[str, list[Any]] = {"_id": list(range(len(docs)))}

    def walk(path: str, value: Any, depth: int) -> None:
        if _json_form(value):
            seen.setdefault(path, []).append(value)
        if depth == 3:
            return
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{path}.{key}", item, depth + 1)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(f"{path}.{index}", item, depth + 1)
                if isinstance(item, dict):
                    for key, sub in item.items():
                        walk(f"{path}.{key}", sub, depth + 1)
                elif _json_form(item):
                    seen.setdefault(path, []).append(item)

    for doc in docs:
        for key, value in doc.items():
            walk(key, value, 1)
    return seen


@st.composite
def conditions(draw: st.DrawFn, path: str, seen: dict[str, list[Any]]) -> Any:
    """A condition for ``path``: a literal, or an object of 1-2 operators."""
    value = json_values
    bound = range_operands
    here = seen.get(path) or [v for values in seen.values() for v in values]
    if here:
        value = st.one_of(json_values, st.sampled_from(here), st.sampled_from(here))
        scalars_here = [v for v in here if not isinstance(v, list | dict)]
        if scalars_here:
            bound = st.one_of(
                range_operands, st.sampled_from(scalars_here), st.sampled_from(scalars_here)
            )
    if any(part.isdigit() for part in path.split(".")):
        # The excluded corner: no null-matching operand on a path with an index.
        value = value.filter(lambda v: v is not None)
        bound = bound.filter(lambda v: v is not None)
    if draw(st.booleans()):
        return draw(value)
    ops = draw(
        st.lists(
            st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"]),
            min_size=1,
            max_size=2,
            unique=True,
        )
    )
    out: dict[str, Any] = {}
    for op in ops:
        if op in ("$eq", "$ne"):
            out[op] = draw(value)
        elif op in ("$in", "$nin"):
            out[op] = draw(st.lists(value, max_size=4))
        elif op == "$exists":
            out[op] = draw(st.booleans())
        else:
            out[op] = draw(bound)
    return out


@st.composite
def filters(draw: st.DrawFn, seen: dict[str, list[Any]], depth: int = 0) -> dict[str, Any]:
    """A filter over paths of ``PATHS`` or where ``seen`` found values."""
    paths = st.one_of(st.sampled_from(PATHS), st.sampled_from(sorted(seen)))
    keys = st.one_of(paths, paths, paths, paths, paths, st.sampled_from(["$and", "$or", "$nor"]))
    out: dict[str, Any] = {}
    for key in draw(st.lists(keys if depth < 2 else paths, min_size=1, max_size=2, unique=True)):
        if key.startswith("$"):
            out[key] = draw(st.lists(filters(seen, depth + 1), min_size=1, max_size=3))
        else:
            out[key] = draw(conditions(key, seen))
    return out


# ----------------------------------------------------------------------------- the property


def _parts(filt: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The filter, each of its clauses alone, and so on down every logical operator."""
    yield filt
    if len(filt) > 1:
        for key, value in filt.items():
            yield {key: value}
    for key, value in filt.items():
        if key in ("$and", "$or", "$nor"):
            for sub in value:
                yield from _parts(sub)


def _check(coll: Collection[dict[str, Any]], raw_filter: dict[str, Any]) -> None:
    """``find`` and ``matches`` agree on the filter and on every part of it."""
    stored = list(coll.find({}))
    for part in _parts(raw_filter):
        filt = query.validate(part)
        predicate = query.compile(filt)
        expected = {doc["_id"] for doc in stored if predicate(doc)}
        assert expected == {doc["_id"] for doc in stored if query.matches(filt, doc)}
        found = {doc["_id"] for doc in coll.find(query.to_mongo(filt), {"_id": 1})}
        assert found == expected, (
            f"filter {filt!r}: the database found {sorted(found)}, "
            f"matches() {sorted(expected)}; documents: {stored!r}"
        )


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_matches_agrees_with_find(database: Database[dict[str, Any]], data: st.DataObject) -> None:
    docs = data.draw(documents, label="documents")
    raw_filter = data.draw(filters(seen_values(docs)), label="filter")
    with fresh_collection(database) as coll:
        if docs:
            coll.insert_many([{"_id": i, **doc} for i, doc in enumerate(docs)])
        _check(coll, raw_filter)


ID_HEX = "0123456789abcdef01234567"
ID_HEX2 = "fedcba9876543210fedcba98"
id_operands = st.sampled_from([ID_HEX, ID_HEX2, ID_HEX.upper(), "plain", "", 7])


@settings(max_examples=60, deadline=None)
@given(
    raw_filter=st.one_of(
        id_operands.map(lambda v: {"_id": v}),
        st.tuples(st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"]), id_operands).map(
            lambda t: {"_id": {t[0]: t[1]}}
        ),
        st.tuples(st.sampled_from(["$in", "$nin"]), st.lists(id_operands, max_size=3)).map(
            lambda t: {"_id": {t[0]: t[1]}}
        ),
    )
)
def test_id_translation_agrees_with_find(
    database: Database[dict[str, Any]], raw_filter: dict[str, Any]
) -> None:
    """24-hex strings compared against ``_id`` mean ObjectIds, on both sides."""
    with fresh_collection(database) as coll:
        coll.insert_many(
            [
                {"_id": ObjectId(ID_HEX)},
                {"_id": ObjectId(ID_HEX2)},
                {"_id": ID_HEX},
                {"_id": "plain"},
                {"_id": 7},
            ]
        )
        _check(coll, raw_filter)

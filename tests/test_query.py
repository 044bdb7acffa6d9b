"""Unit tests of the filter language: validate, to_mongo, matches/compile, fields.

Agreement with a real database is proved by ``test_query_property.py``; the
cases here pin MongoDB's semantics one by one, including the corners where the
test database (SecantusDB) answers differently.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from typing import Any

import bson
import pytest
from bson import Binary, Decimal128, Int64, ObjectId, Regex
from bson.raw_bson import RawBSONDocument
from bson.son import SON

from realtime import query
from realtime.query import FilterError

pytestmark = pytest.mark.driver_blind

HEX = "0123456789abcdef01234567"
OID = ObjectId(HEX)

# ----------------------------------------------------------------------------- validate

VALID = [
    {},
    {"a": 1},
    {"a.b.c": "x"},
    {"a": None},
    {"a": [1, "x", None, [2], {"b": 1}]},
    {"a": {"b": 1, "c": [1, 2]}},
    {"a": {}},
    {"a": []},
    {"a": {"$eq": {"b": 1}}},
    {"a": {"$ne": [1, 2]}},
    {"a": {"$gt": 1, "$lt": 2.5}},
    {"a": {"$gte": "x", "$lte": "y"}},
    {"a": {"$gt": None}},
    {"a": {"$gte": True}},
    {"a": {"$in": [1, None, "x", [1], {"b": 2}]}},
    {"a": {"$nin": []}},
    {"a": {"$exists": False}},
    {"$and": [{"a": 1}, {"b": 2}]},
    {"$or": [{"a": 1}, {"$nor": [{"b": 2}]}], "c": 3},
    {"_id": HEX},
    {"a.0.b": 1},
    {"a": "with\x00nul is a fine value"},
    {"a": 2**63 - 1, "b": -(2**63)},
    {"a": 1e308},
]


@pytest.mark.parametrize("filt", VALID, ids=repr)
def test_validate_accepts(filt: dict[str, Any]) -> None:
    out = query.validate(filt)
    assert out == filt
    assert out is not filt


def test_validate_returns_a_copy() -> None:
    filt = {"a": {"$in": [1, 2]}, "$or": [{"b": {"c": 1}}]}
    out = query.validate(filt)
    out["a"]["$in"].append(3)
    out["$or"][0]["b"]["c"] = 2
    assert filt == {"a": {"$in": [1, 2]}, "$or": [{"b": {"c": 1}}]}


@pytest.mark.parametrize(("arg", "expected"), [(True, True), (0, False), (1, True), (0.5, True)])
def test_validate_normalizes_exists(arg: object, expected: bool) -> None:
    assert query.validate({"a": {"$exists": arg}}) == {"a": {"$exists": expected}}


def test_filter_error_is_a_value_error() -> None:
    assert issubclass(FilterError, ValueError)


REJECTED_OPERATORS = [
    "$where",
    "$expr",
    "$function",
    "$regex",
    "$options",
    "$not",
    "$elemMatch",
    "$text",
    "$jsonSchema",
    "$mod",
    "$size",
    "$all",
    "$type",
    "$comment",
    "$near",
    "$geoWithin",
    "$bitsAllSet",
    "$sampleRate",
    "$unknown",
    "$",
]


@pytest.mark.parametrize("op", REJECTED_OPERATORS)
def test_validate_rejects_operator_at_top_level(op: str) -> None:
    with pytest.raises(FilterError, match=f"operator {re.escape(op)} is not allowed"):
        query.validate({op: "x"})


@pytest.mark.parametrize("op", REJECTED_OPERATORS)
def test_validate_rejects_operator_on_a_field(op: str) -> None:
    with pytest.raises(FilterError, match=f"operator {re.escape(op)} is not allowed"):
        query.validate({"a": {op: "x"}})


@pytest.mark.parametrize("op", REJECTED_OPERATORS)
def test_validate_rejects_operator_nested_in_logical(op: str) -> None:
    with pytest.raises(FilterError, match=f"operator {re.escape(op)} is not allowed"):
        query.validate({"$or": [{"a": 1}, {"$and": [{"b": {"$gt": 1, op: 1}}]}]})


@pytest.mark.parametrize(
    ("filt", "message"),
    [
        ([], "a filter must be a JSON object, not array"),
        ("a", "a filter must be a JSON object, not string"),
        (None, "a filter must be a JSON object, not null"),
        (1, "a filter must be a JSON object, not number"),
        ({"$gt": 1}, r"operator \$gt must be applied to a field"),
        ({"$exists": True}, r"operator \$exists must be applied to a field"),
        ({"a": {"$or": [{"b": 1}]}}, r"operator \$or is only allowed at the top level"),
        ({"a": {"$and": [{"b": 1}]}}, r"operator \$and is only allowed at the top level"),
        ({"a": {"$in": 1}}, r"\$in needs an array"),
        ({"a": {"$in": {"b": 1}}}, r"\$in needs an array"),
        ({"a": {"$nin": "x"}}, r"\$nin needs an array"),
        ({"$and": []}, r"\$and needs a non-empty array of filters"),
        ({"$or": {"a": 1}}, r"\$or needs a non-empty array of filters"),
        ({"$nor": None}, r"\$nor needs a non-empty array of filters"),
        ({"$or": [1]}, r"\$or entries must be objects, not number"),
        ({"$and": [[{"a": 1}]]}, r"\$and entries must be objects, not array"),
        ({"a": {"$gt": [1]}}, r"\$gt needs a number, string, boolean or null, not array"),
        ({"a": {"$lte": {"b": 1}}}, r"\$lte needs a number, string, boolean or null, not object"),
        ({"a": {"$exists": "yes"}}, r"\$exists needs a boolean, not string"),
        ({"a": {"$exists": None}}, r"\$exists needs a boolean, not null"),
        ({"a": {"$gt": 1, "b": 2}}, "cannot mix operators"),
        ({"a": {"b": 2, "$gt": 1}}, "cannot mix operators"),
        ({"": 1}, "field names must not be empty"),
        ({"a\x00b": 1}, "field names must not contain NUL"),
        ({"a..b": 1}, "has an empty component"),
        ({"a.": 1}, "has an empty component"),
        ({".a": 1}, "has an empty component"),
        ({"a.$b": 1}, "field names must not start with '\\$'"),
        ({"a.$": 1}, "field names must not start with '\\$'"),
        ({"a": {"b": {"$gt": 1}}}, "field names must not start with '\\$'"),
        ({"a": [{"$gt": 1}]}, "field names must not start with '\\$'"),
        ({"a": {"$eq": {"$gt": 1}}}, "field names must not start with '\\$'"),
        ({"a": {"$in": [{"$regex": "x"}]}}, "field names must not start with '\\$'"),
        ({"a": {"b": {"": 1}}}, "field names must not be empty"),
        ({"a": {"b\x00": 1}}, "field names must not contain NUL"),
        ({"a": 2**63}, "does not fit in 64 bits"),
        ({"a": {"$in": [-(2**63) - 1]}}, "does not fit in 64 bits"),
        ({"a": math.nan}, "NaN is not allowed"),
        ({"a": {"$gt": math.nan}}, "NaN is not allowed"),
        ({"a": {1, 2}}, "unsupported value of type set"),
        ({"a": b"x"}, "unsupported value of type bytes"),
        ({"a": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)}, "unsupported value of type datetime"),
        ({"a": OID}, "unsupported value of type ObjectId"),
        ({1: 1}, "field names must be strings"),
        ({"a": {1: 1}}, "field names must be strings"),
    ],
    ids=repr,
)
def test_validate_rejects(filt: object, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        query.validate(filt)


def _nested_and(levels: int) -> dict[str, Any]:
    """A filter ``levels`` $and levels deep: each adds an object and an array (2 levels)."""
    filt: dict[str, Any] = {"a": 1}
    for _ in range(levels):
        filt = {"$and": [filt]}
    return filt


def test_validate_depth_limit() -> None:
    # {"$and": [...]} x 7 = 14 levels, plus {"a": 1} = 15; {"a": {"$eq": [1]}} = 17.
    query.validate(_nested_and(7))
    query.validate({"$and": [_nested_and(6)], "x": {"$in": [[[[[[[[[[[[1]]]]]]]]]]]]}})
    with pytest.raises(FilterError, match="filter nesting deeper than 16"):
        query.validate(_nested_and(8))
    deep: Any = 1
    for _ in range(15):
        deep = [deep]
    query.validate({"a": deep})  # object + 15 arrays = 16 levels
    with pytest.raises(FilterError, match="filter nesting deeper than 16"):
        query.validate({"a": [deep]})
    with pytest.raises(FilterError, match="filter nesting deeper than 16"):
        query.validate({"a": {"$in": deep}})


def test_validate_custom_depth_limit() -> None:
    query.validate({"a": {"$gt": 1}}, max_depth=2)
    with pytest.raises(FilterError, match="filter nesting deeper than 1"):
        query.validate({"a": {"$gt": 1}}, max_depth=1)
    with pytest.raises(FilterError, match="filter nesting deeper than 3"):
        query.validate(_nested_and(2), max_depth=3)


def test_validate_size_limit() -> None:
    query.validate({"a": {"$in": list(range(254))}})  # a, $in, 254 items = 256 nodes
    with pytest.raises(FilterError, match="filter has more than 256 nodes"):
        query.validate({"a": {"$in": list(range(255))}})
    query.validate({f"f{i}": i for i in range(256)})
    with pytest.raises(FilterError, match="more than 256 nodes"):
        query.validate({f"f{i}": i for i in range(257)})
    with pytest.raises(FilterError, match="more than 10 nodes"):
        query.validate({"$or": [{"a": {"b": [1, 2, 3]}}] * 2}, max_size=10)
    query.validate({"$or": [{"a": {"b": [1, 2, 3]}}]}, max_size=10)


def test_validate_deeply_nested_input_fails_fast() -> None:
    deep: Any = 1
    for _ in range(5_000):  # beyond the recursion limit
        deep = {"a": deep}
    with pytest.raises(FilterError, match="deeper than 16"):
        query.validate({"a": deep})


# ----------------------------------------------------------------------------- to_mongo


@pytest.mark.parametrize(
    ("filt", "expected"),
    [
        ({"_id": HEX}, {"_id": OID}),
        ({"_id": HEX.upper()}, {"_id": OID}),
        ({"_id": HEX[:-1]}, {"_id": HEX[:-1]}),
        ({"_id": HEX + "0"}, {"_id": HEX + "0"}),
        ({"_id": "z" * 24}, {"_id": "z" * 24}),
        ({"_id": 5}, {"_id": 5}),
        ({"_id": {"$eq": HEX}}, {"_id": {"$eq": OID}}),
        ({"_id": {"$ne": HEX}}, {"_id": {"$ne": OID}}),
        ({"_id": {"$gt": HEX, "$lte": "x"}}, {"_id": {"$gt": OID, "$lte": "x"}}),
        ({"_id": {"$gte": HEX, "$lt": HEX}}, {"_id": {"$gte": OID, "$lt": OID}}),
        ({"_id": {"$in": [HEX, "x", 1]}}, {"_id": {"$in": [OID, "x", 1]}}),
        ({"_id": {"$nin": [HEX]}}, {"_id": {"$nin": [OID]}}),
        (
            {"$or": [{"_id": HEX}, {"$and": [{"_id": HEX}]}]},
            {"$or": [{"_id": OID}, {"$and": [{"_id": OID}]}]},
        ),
        ({"$nor": [{"_id": {"$in": [HEX]}}]}, {"$nor": [{"_id": {"$in": [OID]}}]}),
        # Only values compared against ``_id`` itself.
        ({"a": HEX}, {"a": HEX}),
        ({"_id.x": HEX}, {"_id.x": HEX}),
        ({"a": {"_id": HEX}}, {"a": {"_id": HEX}}),
        ({"_id": [HEX]}, {"_id": [HEX]}),
        ({"_id": {"$in": [[HEX]]}}, {"_id": {"$in": [[HEX]]}}),
        ({"a": {"$in": [HEX]}}, {"a": {"$in": [HEX]}}),
        ({"a": {"$exists": 1}}, {"a": {"$exists": True}}),
    ],
    ids=repr,
)
def test_to_mongo(filt: dict[str, Any], expected: dict[str, Any]) -> None:
    before = repr(filt)
    out = query.to_mongo(filt)
    assert out == expected
    assert _types(out) == _types(expected)
    assert repr(filt) == before  # the input is left alone


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_types(v) for v in value]
    return type(value)


def test_to_mongo_is_idempotent() -> None:
    once = query.to_mongo({"_id": {"$in": [HEX]}})
    assert query.to_mongo(once) == once


def test_to_mongo_rejects_invalid_filters() -> None:
    with pytest.raises(FilterError, match=r"operator \$where is not allowed"):
        query.to_mongo({"$where": "true"})


def test_to_mongo_output_is_bson_encodable() -> None:
    out = query.to_mongo({"_id": HEX, "a": {"$in": [1, 2.5, None, "x", [1], {"b": True}]}})
    assert bson.decode(bson.encode(out)) == out


# ----------------------------------------------------------------------------- matches

NAN = math.nan
INF = math.inf
DATE = dt.datetime(2020, 1, 1)  # PyMongo decodes BSON dates as naive UTC

# (filter, document, expected)
CASES: list[tuple[dict[str, Any], dict[str, Any], bool]] = [
    # empty filter
    ({}, {}, True),
    ({}, {"a": 1}, True),
    # equality of scalars
    ({"a": 1}, {"a": 1}, True),
    ({"a": 1}, {"a": 2}, False),
    ({"a": 1}, {}, False),
    ({"a": 1}, {"a": 1.0}, True),
    ({"a": 1.0}, {"a": 1}, True),
    ({"a": 1}, {"a": Int64(1)}, True),
    ({"a": 1}, {"a": Decimal128("1")}, True),
    ({"a": 1}, {"a": Decimal128("1.000")}, True),
    ({"a": 2.5}, {"a": Decimal128("2.5")}, True),
    ({"a": 0.1}, {"a": Decimal128("0.1")}, False),  # the double is 0.1000000000000000055...
    ({"a": 0.1}, {"a": 0.1}, True),
    ({"a": 0}, {"a": -0.0}, True),
    ({"a": 0}, {"a": Decimal128("-0")}, True),
    ({"a": 2**53 + 1}, {"a": float(2**53)}, False),
    ({"a": 2**53}, {"a": float(2**53)}, True),
    ({"a": 1}, {"a": True}, False),  # bool is not a number
    ({"a": True}, {"a": 1}, False),
    ({"a": False}, {"a": 0}, False),
    ({"a": True}, {"a": True}, True),
    ({"a": False}, {"a": None}, False),
    ({"a": 1}, {"a": "1"}, False),
    ({"a": "1"}, {"a": 1}, False),
    ({"a": "x"}, {"a": "x"}, True),
    ({"a": "x"}, {"a": "X"}, False),
    ({"a": "x"}, {"a": b"x"}, False),
    ({"a": "x"}, {"a": bson.Code("x")}, False),
    ({"a": HEX}, {"a": OID}, False),  # only _id values are ObjectIds
    ({"a": 1}, {"a": NAN}, False),
    ({"a": 1}, {"a": Decimal128("NaN")}, False),
    ({"a": 1}, {"a": DATE}, False),
    ({"a": 1}, {"a": Regex("1")}, False),
    # null equality: explicit null or missing
    ({"a": None}, {"a": None}, True),
    ({"a": None}, {}, True),
    ({"a": None}, {"a": 0}, False),
    ({"a": None}, {"a": False}, False),
    ({"a": None}, {"a": []}, False),
    ({"a": None}, {"a": [None]}, True),
    ({"a": None}, {"a": [1, None]}, True),
    ({"a.b": None}, {"a": 1}, True),  # the path walks into a scalar: missing
    ({"a.b": None}, {"a": {"c": 1}}, True),
    ({"a.b": None}, {"a": {"b": None}}, True),
    ({"a.b": None}, {"a": {"b": 1}}, False),
    ({"a.b": None}, {"a": [{"c": 1}]}, True),  # an element without b
    ({"a.b": None}, {"a": [{"b": 1}, {"c": 1}]}, True),
    ({"a.b": None}, {"a": [{"b": 1}]}, False),
    ({"a.b": None}, {"a": [1, 2]}, False),  # scalar elements reach nothing
    ({"a.b": None}, {"a": []}, False),
    ({"a.b": None}, {"a": [[{"c": 1}]]}, False),
    # documents: exact, field-order-sensitive equality
    ({"a": {"x": 1, "y": 2}}, {"a": {"x": 1, "y": 2}}, True),
    ({"a": {"x": 1, "y": 2}}, {"a": {"y": 2, "x": 1}}, False),
    ({"a": {"x": 1, "y": 2}}, {"a": {"x": 1}}, False),
    ({"a": {"x": 1}}, {"a": {"x": 1, "y": 2}}, False),
    ({"a": {"x": 1}}, {"a": {"x": 1.0}}, True),
    ({"a": {"x": 1}}, {"a": {"x": True}}, False),
    ({"a": {"x": None}}, {"a": {}}, False),
    ({"a": {}}, {"a": {}}, True),
    ({"a": {}}, {"a": []}, False),
    ({"a": {}}, {}, False),
    ({"a": {"x": 1}}, {"a": [{"x": 1}]}, True),  # an element equals it
    ({"a": {"x": 1}}, {"a": SON([("x", 1)])}, True),
    ({"a": {"x": [1, {"y": None}]}}, {"a": {"x": [1, {"y": None}]}}, True),
    # arrays: the array itself or any element
    ({"a": 1}, {"a": [1, 2]}, True),
    ({"a": 3}, {"a": [1, 2]}, False),
    ({"a": [1, 2]}, {"a": [1, 2]}, True),
    ({"a": [1, 2]}, {"a": [2, 1]}, False),
    ({"a": [1, 2]}, {"a": [1, 2, 3]}, False),
    ({"a": [1, 2]}, {"a": [[1, 2], 3]}, True),
    ({"a": [1, 2]}, {"a": [1.0, 2.0]}, True),
    ({"a": [1]}, {"a": [True]}, False),
    ({"a": [1]}, {"a": 1}, False),
    ({"a": 1}, {"a": [[1]]}, False),  # one level only
    ({"a": []}, {"a": []}, True),
    ({"a": []}, {"a": [[]]}, True),
    ({"a": []}, {"a": [1]}, False),
    ({"a": []}, {}, False),
    ({"a": [None]}, {}, False),
    # dotted paths
    ({"a.b": 1}, {"a": {"b": 1}}, True),
    ({"a.b": 1}, {"a": {"b": [0, 1]}}, True),
    ({"a.b": 1}, {"a": [{"b": 1}, {"b": 2}]}, True),
    ({"a.b": 2}, {"a": [{"b": 1}, {"b": 2}]}, True),
    ({"a.b": 3}, {"a": [{"b": 1}, {"b": 2}]}, False),
    ({"a.b": 1}, {"a": [{"b": [1]}]}, True),
    ({"a.b": [1]}, {"a": [{"b": [1]}]}, True),
    ({"a.b": 1}, {"a": [[{"b": 1}]]}, False),  # nested arrays are not traversed
    ({"a.b": 1}, {"a": {"b": [[1]]}}, False),
    ({"a.b.c": 1}, {"a": [{"b": [{"c": 1}]}]}, True),
    ({"a.b.c": 1}, {"a": [{"b": {"c": [1]}}]}, True),
    ({"a.b.c": 1}, {"a": {"b": [[{"c": 1}]]}}, False),
    ({"a.b": 1}, {"a.b": 1}, False),  # a field named "a.b" is not the path
    ({"a.b": 1}, {"a": 1}, False),
    # numeric components: an array index and a field name
    ({"a.0": 1}, {"a": [1, 2]}, True),
    ({"a.1": 1}, {"a": [1, 2]}, False),
    ({"a.1": 2}, {"a": [1, 2]}, True),
    ({"a.0": 1}, {"a": {"0": 1}}, True),
    ({"a.0": 1}, {"a": [{"0": 1}]}, True),
    ({"a.0": 1}, {"a": [[1]]}, False),  # an element reached by index is not expanded
    ({"a.0": [1]}, {"a": [[1]]}, True),
    ({"a.0": 1}, {"a": [[1, 2]]}, False),
    ({"a.0.b": 1}, {"a": [{"b": 1}]}, True),
    ({"a.0.b": 1}, {"a": [{"0": {"b": 1}}]}, True),
    ({"a.0.b": 1}, {"a": [[{"b": 1}]]}, True),
    ({"a.1.b": 1}, {"a": [{"b": 1}]}, False),
    ({"a.0.0": 1}, {"a": [[1, 2]]}, True),
    ({"a.0.1": 2}, {"a": [[1, 2]]}, True),
    ({"a.0.b": None}, {"a": [{"b": 1}]}, True),  # element 0 has no field "0"
    ({"a.0": None}, {"a": [{"x": 1}]}, True),
    ({"a.0": None}, {"a": [None]}, True),
    # Where SecantusDB differs from MongoDB (MongoDB reaches *nothing* here):
    ({"a.5": None}, {"a": [1]}, False),
    ({"a.5": None}, {"a": []}, False),
    ({"a.0.b": None}, {"a": [5]}, False),
    ({"a.00": 1}, {"a": [1]}, False),  # "00" is not the array's field name "0"
    ({"a.00": 1}, {"a": {"00": 1}}, True),
    ({"a.5": None}, {"a": 1}, True),  # a scalar, not an array: missing
    ({"a.5": None}, {"a": {"b": 1}}, True),
    ({"a.5": {"$exists": False}}, {"a": [1]}, True),
    # $eq / $ne
    ({"a": {"$eq": 1}}, {"a": [0, 1]}, True),
    ({"a": {"$eq": None}}, {}, True),
    ({"a": {"$eq": {"b": 1}}}, {"a": {"b": 1}}, True),
    ({"a": {"$eq": [1]}}, {"a": [[1]]}, True),
    ({"a": {"$ne": 1}}, {"a": 2}, True),
    ({"a": {"$ne": 1}}, {"a": 1}, False),
    ({"a": {"$ne": 1}}, {}, True),
    ({"a": {"$ne": 1}}, {"a": [1, 2]}, False),
    ({"a": {"$ne": 1}}, {"a": [2, 3]}, True),
    ({"a": {"$ne": 1}}, {"a": True}, True),
    ({"a": {"$ne": None}}, {}, False),
    ({"a": {"$ne": None}}, {"a": None}, False),
    ({"a": {"$ne": None}}, {"a": 0}, True),
    ({"a": {"$ne": None}}, {"a": [1, None]}, False),
    ({"a": {"$ne": None}}, {"a": []}, True),
    ({"a.b": {"$ne": 1}}, {"a": [{"b": 1}, {"b": 2}]}, False),
    ({"a.b": {"$ne": None}}, {"a": [1]}, True),
    ({"a": {"$ne": [1]}}, {"a": [1]}, False),
    ({"a": {"$ne": [1]}}, {"a": [[1], 2]}, False),
    # ranges: numbers
    ({"a": {"$gt": 1}}, {"a": 2}, True),
    ({"a": {"$gt": 1}}, {"a": 1}, False),
    ({"a": {"$gte": 1}}, {"a": 1}, True),
    ({"a": {"$lt": 1}}, {"a": 0.5}, True),
    ({"a": {"$lte": 1}}, {"a": 1.0}, True),
    ({"a": {"$gt": 1}}, {"a": 1.0000001}, True),
    ({"a": {"$gt": 1}}, {"a": Int64(2)}, True),
    ({"a": {"$gt": 1}}, {"a": Decimal128("1.5")}, True),
    ({"a": {"$lt": 0.1}}, {"a": Decimal128("0.1")}, True),  # 0.1 < 0.1000000000000000055...
    ({"a": {"$gt": 0.1}}, {"a": Decimal128("0.1")}, False),
    ({"a": {"$gt": 1}}, {"a": Decimal128("Infinity")}, True),
    ({"a": {"$lt": 1}}, {"a": Decimal128("-Infinity")}, True),
    ({"a": {"$lt": 1}}, {"a": -INF}, True),
    ({"a": {"$gt": 1e308}}, {"a": INF}, True),
    ({"a": {"$gt": 2**53}}, {"a": float(2**53)}, False),
    ({"a": {"$lt": 2**53 + 1}}, {"a": float(2**53)}, True),
    ({"a": {"$gte": 2**63 - 1}}, {"a": 2.0**63}, True),
    # NaN compares false with everything
    ({"a": {"$gt": 1}}, {"a": NAN}, False),
    ({"a": {"$lt": 1}}, {"a": NAN}, False),
    ({"a": {"$lte": 1}}, {"a": NAN}, False),
    ({"a": {"$lt": 1}}, {"a": Decimal128("NaN")}, False),
    ({"a": {"$gte": 1}}, {"a": Decimal128("NaN")}, False),
    ({"a": {"$ne": 1}}, {"a": NAN}, True),
    # ranges only within a type bracket
    ({"a": {"$gt": 1}}, {"a": "x"}, False),
    ({"a": {"$lt": "x"}}, {"a": 1}, False),
    ({"a": {"$gt": 0}}, {"a": True}, False),
    ({"a": {"$gte": 0}}, {"a": None}, False),
    ({"a": {"$gte": 0}}, {}, False),
    ({"a": {"$lt": 5}}, {"a": DATE}, False),
    ({"a": {"$gt": 0}}, {"a": OID}, False),
    ({"a": {"$gt": 0}}, {"a": {"b": 1}}, False),
    ({"a": {"$gt": 0}}, {"a": b"\x01"}, False),
    ({"a": {"$gt": ""}}, {"a": b"x"}, False),
    ({"a": {"$gt": ""}}, {"a": bson.Code("x")}, False),
    ({"a": {"$gt": "a"}}, {"a": "b"}, True),
    ({"a": {"$gt": "a"}}, {"a": "ab"}, True),
    ({"a": {"$lt": "a"}}, {"a": ""}, True),
    ({"a": {"$lt": "a"}}, {"a": "B"}, True),  # binary order: "B" < "a"
    ({"a": {"$gt": "z"}}, {"a": "é"}, True),
    ({"a": {"$gt": "\uffff"}}, {"a": "\U0001f600"}, True),  # UTF-8 byte order
    ({"a": {"$gt": False}}, {"a": True}, True),
    ({"a": {"$lt": True}}, {"a": False}, True),
    ({"a": {"$gt": True}}, {"a": True}, False),
    ({"a": {"$gte": True}}, {"a": 1}, False),
    # ranges over arrays: any element (not the array itself)
    ({"a": {"$gt": 1}}, {"a": [0, 2]}, True),
    ({"a": {"$gt": 5}}, {"a": [0, 2]}, False),
    ({"a": {"$gt": 1, "$lt": 2}}, {"a": [0, 3]}, True),  # each operator on its own
    ({"a": {"$gt": 1, "$lt": 2}}, {"a": [0, 0]}, False),
    ({"a": {"$gt": 1}}, {"a": [[2]]}, False),
    ({"a": {"$gt": 1}}, {"a": []}, False),
    ({"a.b": {"$gt": 1}}, {"a": [{"b": 0}, {"b": [5]}]}, True),
    # several operators on one field: each on its own
    ({"a": {"$exists": False, "$ne": 1}}, {}, True),
    ({"a": {"$exists": True, "$ne": 1}}, {}, False),
    ({"a": {"$in": [None], "$ne": None}}, {}, False),
    ({"a": {"$gte": None, "$exists": True}}, {"a": None}, True),
    ({"a": {"$gte": None, "$exists": True}}, {}, False),
    ({"a": {"$in": [], "$exists": False}}, {}, False),
    ({"a": {"$nin": [], "$exists": True}}, {"a": 1}, True),
    ({"a": {"$eq": [1], "$ne": 1}}, {"a": [1]}, False),
    ({"a": {"$eq": [1], "$ne": 1}}, {"a": [[1]]}, True),
    ({"a": {"$in": [1, 5], "$nin": [5]}}, {"a": [1, 2]}, True),
    ({"a": {"$in": [1, 5], "$nin": [5]}}, {"a": [1, 5]}, False),
    ({"a": {"$gt": None, "$exists": True}}, {"a": 1}, False),
    ({"a.b": {"$gt": 1, "$lt": 2}}, {"a": [{"b": 0}, {"b": 3}]}, True),
    ({"a.b": {"$gt": 1, "$lt": 2}}, {"a": [{"b": 0}, {"b": 0}]}, False),
    ({"a.b": {"$exists": False, "$ne": 1}}, {"a": [{"c": 1}]}, True),
    # ranges with null
    ({"a": {"$gte": None}}, {"a": None}, True),
    ({"a": {"$gte": None}}, {}, True),
    ({"a": {"$lte": None}}, {}, True),
    ({"a": {"$lte": None}}, {"a": [1, None]}, True),
    ({"a": {"$gte": None}}, {"a": 1}, False),
    ({"a": {"$gte": None}}, {"a": []}, False),
    ({"a": {"$gt": None}}, {"a": None}, False),
    ({"a": {"$gt": None}}, {}, False),
    ({"a": {"$lt": None}}, {"a": None}, False),
    ({"a": {"$lt": None}}, {"a": 1}, False),
    # $in / $nin
    ({"a": {"$in": [1, 2]}}, {"a": 2}, True),
    ({"a": {"$in": [1, 2]}}, {"a": 3}, False),
    ({"a": {"$in": [1, 2]}}, {"a": 2.0}, True),
    ({"a": {"$in": [1]}}, {"a": True}, False),
    ({"a": {"$in": [True]}}, {"a": 1}, False),
    ({"a": {"$in": [True]}}, {"a": True}, True),
    ({"a": {"$in": [0]}}, {"a": False}, False),
    ({"a": {"$in": [1]}}, {"a": Int64(1)}, True),
    ({"a": {"$in": [1.5]}}, {"a": Decimal128("1.5")}, True),
    ({"a": {"$in": [0.1]}}, {"a": Decimal128("0.1")}, False),
    ({"a": {"$in": ["x", 1]}}, {"a": "x"}, True),
    ({"a": {"$in": ["1"]}}, {"a": 1}, False),
    ({"a": {"$in": [1, 2]}}, {"a": [0, 2]}, True),
    ({"a": {"$in": [1, 2]}}, {}, False),
    ({"a": {"$in": []}}, {"a": 1}, False),
    ({"a": {"$in": []}}, {}, False),
    ({"a": {"$in": [None]}}, {}, True),
    ({"a": {"$in": [None]}}, {"a": None}, True),
    ({"a": {"$in": [None, 1]}}, {"a": 1}, True),
    ({"a": {"$in": [None]}}, {"a": [1]}, False),
    ({"a": {"$in": [None]}}, {"a": [1, None]}, True),
    ({"a": {"$in": [[1, 2]]}}, {"a": [1, 2]}, True),
    ({"a": {"$in": [[1, 2]]}}, {"a": [[1, 2]]}, True),
    ({"a": {"$in": [[1, 2]]}}, {"a": 1}, False),
    ({"a": {"$in": [{"b": 1}]}}, {"a": {"b": 1}}, True),
    ({"a": {"$in": [{"b": 1}]}}, {"a": [{"b": 1}]}, True),
    ({"a": {"$in": [{"b": 1}]}}, {"a": {"b": 1, "c": 2}}, False),
    ({"a": {"$in": [HEX]}}, {"a": OID}, False),
    ({"a.b": {"$in": [2]}}, {"a": [{"b": 1}, {"b": 2}]}, True),
    ({"a": {"$nin": [1, 2]}}, {"a": 3}, True),
    ({"a": {"$nin": [1, 2]}}, {"a": 1}, False),
    ({"a": {"$nin": [1, 2]}}, {}, True),
    ({"a": {"$nin": [1, 2]}}, {"a": [3, 2]}, False),
    ({"a": {"$nin": [None]}}, {}, False),
    ({"a": {"$nin": [None]}}, {"a": 1}, True),
    ({"a": {"$nin": []}}, {}, True),
    ({"a": {"$nin": []}}, {"a": 1}, True),
    # $exists
    ({"a": {"$exists": True}}, {"a": None}, True),
    ({"a": {"$exists": True}}, {"a": []}, True),
    ({"a": {"$exists": True}}, {"a": 0}, True),
    ({"a": {"$exists": True}}, {}, False),
    ({"a": {"$exists": False}}, {}, True),
    ({"a": {"$exists": False}}, {"a": None}, False),
    ({"a.b": {"$exists": True}}, {"a": [1, {"b": None}]}, True),
    ({"a.b": {"$exists": True}}, {"a": [1, {"c": 1}]}, False),
    ({"a.b": {"$exists": True}}, {"a": []}, False),
    ({"a.b": {"$exists": False}}, {"a": []}, True),
    ({"a.b": {"$exists": False}}, {"a": 5}, True),
    ({"a.0": {"$exists": True}}, {"a": [None]}, True),
    ({"a.0": {"$exists": True}}, {"a": []}, False),
    ({"a": {"$exists": True, "$ne": None}}, {"a": None}, False),
    ({"a": {"$exists": True, "$ne": None}}, {"a": 1}, True),
    # $and / $or / $nor
    ({"$and": [{"a": 1}, {"b": 2}]}, {"a": 1, "b": 2}, True),
    ({"$and": [{"a": 1}, {"b": 2}]}, {"a": 1}, False),
    ({"$or": [{"a": 1}, {"b": 2}]}, {"b": 2}, True),
    ({"$or": [{"a": 1}, {"b": 2}]}, {"c": 3}, False),
    ({"$nor": [{"a": 1}, {"b": 2}]}, {"c": 3}, True),
    ({"$nor": [{"a": 1}, {"b": 2}]}, {"a": 1}, False),
    ({"$nor": [{"a": None}]}, {}, False),
    ({"$or": [{"a": 1}], "b": 2}, {"a": 1}, False),
    ({"$or": [{"a": 1}], "b": 2}, {"a": 1, "b": 2}, True),
    ({"$and": [{"a": {"$gt": 1}}, {"a": {"$lt": 3}}]}, {"a": [0, 5]}, True),
    (
        {"$or": [{"$and": [{"a": 1}, {"b": 1}]}, {"$nor": [{"c": {"$exists": True}}]}]},
        {"a": 1},
        True,
    ),
    (
        {"$or": [{"$and": [{"a": 1}, {"b": 1}]}, {"$nor": [{"c": {"$exists": True}}]}]},
        {"c": 1},
        False,
    ),
    ({"$and": [{}]}, {"a": 1}, True),
    ({"$nor": [{}]}, {"a": 1}, False),
    # _id: 24-hex strings mean ObjectIds
    ({"_id": HEX}, {"_id": OID}, True),
    ({"_id": HEX.upper()}, {"_id": OID}, True),
    ({"_id": HEX}, {"_id": HEX}, False),
    ({"_id": "plain"}, {"_id": "plain"}, True),
    ({"_id": 7}, {"_id": 7}, True),
    ({"_id": {"$in": [HEX, "plain"]}}, {"_id": OID}, True),
    ({"_id": {"$in": [HEX, "plain"]}}, {"_id": "plain"}, True),
    ({"_id": {"$nin": [HEX]}}, {"_id": OID}, False),
    ({"_id": {"$ne": HEX}}, {"_id": HEX}, True),
    ({"_id": {"$gt": "0" * 24}}, {"_id": OID}, True),
    ({"_id": {"$lt": "0" * 24}}, {"_id": OID}, False),
    ({"_id": {"$gte": HEX, "$lte": HEX}}, {"_id": OID}, True),
    ({"_id": {"$gt": "0" * 24}}, {"_id": "zzz"}, False),
    ({"_id": {"$gt": "a"}}, {"_id": "b"}, True),
    # other BSON values never equal JSON values
    ({"a": "AQ=="}, {"a": Binary(b"\x01", 4)}, False),
    ({"a": {"$ne": "x"}}, {"a": Binary(b"x", 0)}, True),
    ({"a": "2020-01-01T00:00:00.000Z"}, {"a": DATE}, False),
    ({"a": {"$exists": True}}, {"a": Regex("x")}, True),
]


@pytest.mark.parametrize(("filt", "doc", "expected"), CASES, ids=repr)
def test_matches(filt: dict[str, Any], doc: dict[str, Any], expected: bool) -> None:
    valid = query.validate(filt)
    assert query.matches(valid, doc) is expected
    assert query.compile(valid)(doc) is expected


@pytest.mark.parametrize(("filt", "doc", "expected"), CASES, ids=repr)
def test_matches_raw_bson_documents(
    filt: dict[str, Any], doc: dict[str, Any], expected: bool
) -> None:
    """The same answers for documents PyMongo decodes lazily (``RawBSONDocument``)."""
    raw = RawBSONDocument(bson.encode(doc))
    assert query.compile(query.validate(filt))(raw) is expected


def test_compile_is_reusable() -> None:
    pred = query.compile(query.validate({"a": {"$in": [1, 2]}, "b.c": {"$exists": False}}))
    docs: list[Mapping[str, Any]] = [
        {"a": 1},
        {"a": 3},
        {"a": [2], "b": {"c": 1}},
        {"a": 2, "b": 1},
    ]
    assert [pred(d) for d in docs] == [True, False, False, True]
    assert [pred(d) for d in docs] == [True, False, False, True]


def test_compile_is_not_affected_by_later_changes_to_the_filter() -> None:
    filt = query.validate({"a": {"$in": [1]}})
    pred = query.compile(filt)
    filt["a"]["$in"].append(2)
    assert not pred({"a": 2})


def test_compile_rejects_invalid_filters() -> None:
    with pytest.raises(FilterError, match=r"operator \$regex is not allowed"):
        query.compile({"a": {"$regex": "x"}})
    with pytest.raises(FilterError, match=r"\$in needs an array"):
        query.matches({"a": {"$in": 1}}, {})


def test_compile_applies_no_size_or_depth_bound() -> None:
    """Filters the service builds (a tenant ``$and`` around a client filter) still compile."""
    client = query.validate({"a": {"$in": list(range(254))}})
    wrapped = {"$and": [client, {"tenant": "t1"}]}
    with pytest.raises(FilterError):
        query.validate(wrapped)
    assert query.matches(wrapped, {"a": 5, "tenant": "t1"})
    assert not query.matches(wrapped, {"a": 5, "tenant": "t2"})


def test_matches_does_not_modify_the_document() -> None:
    doc = {"a": [{"b": [1, 2]}, 3], "_id": OID}
    before = repr(doc)
    assert query.matches({"a.b": 2, "_id": HEX}, doc)
    assert repr(doc) == before


# ----------------------------------------------------------------------------- fields


@pytest.mark.parametrize(
    ("filt", "expected"),
    [
        ({}, set()),
        ({"a": 1}, {"a"}),
        ({"a.b": 1, "$or": [{"c": 1}]}, {"a", "c"}),
        ({"a.b.c": 1, "a.d": {"$gt": 1}}, {"a"}),
        ({"$and": [{"$nor": [{"x.0": 1}]}, {"y": {"$exists": True}}]}, {"x", "y"}),
        ({"_id": HEX, "a": {"b": 1}}, {"_id", "a"}),
    ],
    # (sets print in hash order, which differs between processes: ids from sorted)
    ids=lambda v: repr(sorted(v)) if isinstance(v, set) else repr(v),
)
def test_fields(filt: dict[str, Any], expected: set[str]) -> None:
    assert query.fields(filt) == frozenset(expected)


def test_fields_rejects_non_filters() -> None:
    with pytest.raises(FilterError):
        query.fields([])  # type: ignore[arg-type]
    with pytest.raises(FilterError):
        query.fields({"$or": {"a": 1}})
    with pytest.raises(FilterError):
        query.fields({"$where": "1"})

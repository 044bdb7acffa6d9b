"""Tests for realtime.codec: BSON values as JSON, document checks, ids."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from typing import Any

import orjson
import pytest
from bson import Binary, Decimal128, ObjectId, Regex, Timestamp

from realtime.codec import (
    check_document,
    dumps,
    dumps_str,
    format_datetime,
    key_to_json,
    loads,
    parse_id,
)
from realtime.errors import BadRequest, InvalidDocument

pytestmark = pytest.mark.driver_blind

OID = ObjectId("65a1b2c3d4e5f60718293a4b")


def roundtrip(value: Any) -> Any:
    return orjson.loads(dumps(value))


# ------------------------------------------------------------------------ dumps


def test_objectid_is_hex() -> None:
    assert roundtrip({"_id": OID}) == {"_id": "65a1b2c3d4e5f60718293a4b"}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (dt.datetime(2026, 1, 2, 3, 4, 5, 678_999, tzinfo=dt.UTC), "2026-01-02T03:04:05.678Z"),
        (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "2026-01-02T03:04:05.000Z"),
        # naive values are UTC
        (dt.datetime(2026, 1, 2, 3, 4, 5, 1000), "2026-01-02T03:04:05.001Z"),
        # other zones are converted to UTC
        (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
         "2026-01-02T01:04:05.000Z"),
    ],
)
def test_datetime_iso_ms_z(value: dt.datetime, text: str) -> None:
    assert roundtrip({"ts": value}) == {"ts": text}
    assert format_datetime(value) == text


def test_decimal128_is_string() -> None:
    assert roundtrip([Decimal128("1.10"), Decimal128("-0"), Decimal128("1E+5")]) == [
        "1.10", "-0", "1E+5"]


def test_bytes_base64() -> None:
    raw = bytes(range(256))
    expected = base64.b64encode(raw).decode()
    assert roundtrip({"b": raw, "bin": Binary(raw, 0), "ba": bytearray(raw)}) == {
        "b": expected, "bin": expected, "ba": expected}


def test_uuid_binary_and_uuid() -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert roundtrip([Binary(u.bytes, 4), u]) == [str(u), str(u)]


def test_timestamp() -> None:
    assert roundtrip(Timestamp(1700000000, 7)) == {"t": 1700000000, "i": 7}


def test_nested() -> None:
    doc = {
        "_id": OID,
        "a": [{"when": dt.datetime(2020, 5, 6, tzinfo=dt.UTC), "ids": [OID, OID]}],
        "m": {"d": Decimal128("3.14"), "n": None, "t": True, "f": 1.5, "i": 10**15},
        "unicode": "naïve ☃",
    }
    assert roundtrip(doc) == {
        "_id": str(OID),
        "a": [{"when": "2020-05-06T00:00:00.000Z", "ids": [str(OID), str(OID)]}],
        "m": {"d": "3.14", "n": None, "t": True, "f": 1.5, "i": 10**15},
        "unicode": "naïve ☃",
    }
    assert dumps_str(doc) == dumps(doc).decode()


def test_unencodable_raises_type_error() -> None:
    with pytest.raises(TypeError, match="Regex"):
        dumps({"r": Regex("^a")})


# ------------------------------------------------------------------------ loads


def test_loads_roundtrip() -> None:
    doc = {"a": [1, 2.5, "x", None, True], "b": {"c": "d"}}
    assert loads(orjson.dumps(doc)) == doc
    assert loads(orjson.dumps(doc).decode()) == doc


@pytest.mark.parametrize("body", [b"", b"{", b"{'a': 1}", b"[1,]", b"\xff\xfe", b"NaN", b"{}x"])
def test_loads_malformed(body: bytes) -> None:
    with pytest.raises(BadRequest, match="malformed JSON"):
        loads(body)


# ------------------------------------------------------------------ check_document


def test_check_document_accepts_and_converts_id() -> None:
    doc = check_document({"_id": str(OID), "a": {"b": [{"c": 1}]}, "_version": 99})
    assert doc == {"_id": OID, "a": {"b": [{"c": 1}]}}
    assert check_document({"_id": "plain"})["_id"] == "plain"
    assert check_document({"_id": 7})["_id"] == 7


def test_check_document_does_not_mutate() -> None:
    value = {"_id": str(OID), "_version": 3}
    check_document(value)
    assert value == {"_id": str(OID), "_version": 3}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "JSON object"),
        ("x", "JSON object"),
        (None, "JSON object"),
        (1, "JSON object"),
        ({"$set": 1}, "must not start with '\\$'"),
        ({"a": {"$gt": 1}}, "must not start with '\\$'"),
        ({"a": [{"$x": 1}]}, "must not start with '\\$'"),
        ({"a.b": 1}, "must not contain '.'"),
        ({"a": {"b.c": 1}}, "must not contain '.'"),
        ({"a\x00b": 1}, "NUL"),
        ({"": 1}, "empty field name"),
        ({"_id": None}, "_id must be"),
        ({"_id": {"a": 1}}, "_id must be"),
        ({"_id": [1]}, "_id must be"),
    ],
)
def test_check_document_rejects(value: Any, message: str) -> None:
    with pytest.raises(InvalidDocument, match=message):
        check_document(value)


def test_check_document_rejects_deep_nesting() -> None:
    value: Any = 1
    for _ in range(150):
        value = {"a": value}
    with pytest.raises(InvalidDocument, match="deeper"):
        check_document(value)


# ------------------------------------------------------------------------ ids


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("65a1b2c3d4e5f60718293a4b", OID),
        ("65A1B2C3D4E5F60718293A4B", OID),
        ("65a1b2c3d4e5f60718293a4", "65a1b2c3d4e5f60718293a4"),  # 23 hex
        ("65a1b2c3d4e5f60718293a4bb", "65a1b2c3d4e5f60718293a4bb"),  # 25 hex
        ("65a1b2c3d4e5f60718293a4g", "65a1b2c3d4e5f60718293a4g"),
        ("order-1", "order-1"),
        (5, 5),
    ],
)
def test_parse_id(value: Any, expected: Any) -> None:
    parsed = parse_id(value)
    assert parsed == expected
    assert type(parsed) is type(expected)


def test_key_to_json() -> None:
    assert key_to_json(OID) == str(OID)
    assert key_to_json("k") == "k"
    assert key_to_json(3) == 3
    assert key_to_json(dt.datetime(2020, 1, 1, tzinfo=dt.UTC)) == "2020-01-01T00:00:00.000Z"

"""Tests for realtime.protocol: parse client messages, render server messages."""

from __future__ import annotations

import json
import pickle
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime import protocol
from realtime.protocol import (
    Auth,
    ErrorCode,
    Ping,
    ProtocolError,
    Subscribe,
    Unsubscribe,
    change_prefix,
    encode_event_body,
    leave_body,
    parse_client_message,
    render_authenticated,
    render_change,
    render_error,
    render_pong,
    render_resync,
    render_snapshot,
    render_status,
    render_subscribed,
    render_welcome,
)

pytestmark = pytest.mark.driver_blind

HEX = "8263A1B2C3000000012B022C0100296E5A1004" + "AB" * 10 + "463C5F6964003C" + "0" * 8


def msg(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def sub_msg(**fields: Any) -> bytes:
    base: dict[str, Any] = {"op": "subscribe", "sub": "s1", "collection": "orders"}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not _DROP})


_DROP = object()


def parse_error(data: str | bytes, **kwargs: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(data, **kwargs)
    return info.value


# ---------------------------------------------------------------------------
# Codes


def test_error_codes_are_strings_that_encode_as_their_value() -> None:
    for code in ErrorCode:
        assert isinstance(code, str)
        assert orjson.dumps(code) == orjson.dumps(code.value)
        assert orjson.loads(render_error(code, "m"))["code"] == code.value


# ---------------------------------------------------------------------------
# ProtocolError


def test_protocol_error_attributes() -> None:
    error = ProtocolError(ErrorCode.BAD_SINCE, "nope", "s1")
    assert error.code == "bad_since"
    assert error.message == "nope"
    assert error.sub == "s1"
    assert str(error) == "nope"
    assert "bad_since" in repr(error)
    assert ProtocolError("bad_json", "x").sub is None


def test_protocol_error_pickles() -> None:
    error = pickle.loads(pickle.dumps(ProtocolError("bad_filter", "why", "s")))  # noqa: S301
    assert (error.code, error.message, error.sub, str(error)) == ("bad_filter", "why", "s", "why")


# ---------------------------------------------------------------------------
# Parsing: valid messages


def test_subscribe_minimal_defaults() -> None:
    assert parse_client_message(sub_msg()) == Subscribe(
        sub="s1", collection="orders", filter={}, snapshot=False, limit=100, since=None
    )


def test_subscribe_all_fields() -> None:
    data = sub_msg(filter={"status": "open"}, snapshot=True, limit=7, since=HEX)
    assert parse_client_message(data) == Subscribe(
        sub="s1",
        collection="orders",
        filter={"status": "open"},
        snapshot=True,
        limit=7,
        since=HEX,
    )


def test_subscribe_design_example() -> None:
    text = (
        '{"op":"subscribe","sub":"s1","collection":"orders","filter":{"status":"open"},\n'
        ' "snapshot":true,"limit":100,"since":"82ab"}'
    )
    message = parse_client_message(text)
    assert isinstance(message, Subscribe)
    assert (message.sub, message.collection, message.filter) == ("s1", "orders", {"status": "open"})
    assert (message.snapshot, message.limit, message.since) == (True, 100, "82ab")


def test_subscribe_null_optional_fields_mean_absent() -> None:
    data = sub_msg(filter=None, snapshot=None, limit=None, since=None)
    assert parse_client_message(data) == Subscribe(
        sub="s1", collection="orders", filter={}, snapshot=False, limit=100, since=None
    )


@pytest.mark.parametrize(
    "sub", ["a", "x" * 128, 'q"uo\\te', "événement", "日本語", "😀", " ", "\n"]
)
def test_subscribe_sub_values(sub: str) -> None:
    message = parse_client_message(sub_msg(sub=sub))
    assert isinstance(message, Subscribe)
    assert message.sub == sub


@pytest.mark.parametrize("limit", [1, 50, 1000])
def test_subscribe_limit_in_range(limit: int) -> None:
    message = parse_client_message(sub_msg(limit=limit))
    assert isinstance(message, Subscribe)
    assert message.limit == limit


def test_subscribe_max_limit() -> None:
    message = parse_client_message(sub_msg(limit=5000), max_limit=5000)
    assert isinstance(message, Subscribe)
    assert message.limit == 5000
    assert parse_error(sub_msg(limit=11), max_limit=10).code == "bad_message"


def test_subscribe_default_limit_respects_small_max_limit() -> None:
    message = parse_client_message(sub_msg(), max_limit=10)
    assert isinstance(message, Subscribe)
    assert message.limit == 10


def test_max_limit_below_one_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="max_limit"):
        parse_client_message(sub_msg(), max_limit=0)


@pytest.mark.parametrize("since", ["0", "a", "F", "0123456789abcdefABCDEF", "f" * 512])
def test_subscribe_since_values(since: str) -> None:
    message = parse_client_message(sub_msg(since=since))
    assert isinstance(message, Subscribe)
    assert message.since == since


@pytest.mark.parametrize("snapshot", [True, False])
def test_subscribe_snapshot(snapshot: bool) -> None:
    message = parse_client_message(sub_msg(snapshot=snapshot))
    assert isinstance(message, Subscribe)
    assert message.snapshot is snapshot


def test_subscribe_is_frozen() -> None:
    message = parse_client_message(b'{"op":"unsubscribe","sub":"s1"}')
    assert isinstance(message, Unsubscribe)
    with pytest.raises(AttributeError):
        message.sub = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"op":"unsubscribe","sub":"s1"}', Unsubscribe(sub="s1")),
        ('{"op":"unsubscribe","sub":"s1"}', Unsubscribe(sub="s1")),
        (b'{"op":"ping","ref":"7"}', Ping(ref="7")),
        (b'{"op":"ping","ref":7}', Ping(ref=7)),
        (b'{"op":"ping","ref":-9223372036854775808}', Ping(ref=-9223372036854775808)),
        (b'{"op":"ping","ref":""}', Ping(ref="")),
        (b'{"op":"ping"}', Ping(ref=None)),
        (b'{"op":"ping","ref":null}', Ping(ref=None)),
        (b'{"op":"auth","token":"abc.def.ghi"}', Auth(token="abc.def.ghi")),
        (b' \n\t{"op":"ping"}\r\n ', Ping(ref=None)),
        ('{"op":"ping","ref":"\u00e9"}', Ping(ref="é")),
        (b'{"op":"ping","ref":"\\u00e9"}', Ping(ref="é")),
    ],
)
def test_other_ops(data: str | bytes, expected: object) -> None:
    assert parse_client_message(data) == expected


# ---------------------------------------------------------------------------
# Parsing: errors


@pytest.mark.parametrize(
    "data",
    [
        b"",
        "",
        b"   ",
        b"{",
        b'{"op":"ping"',
        b"{'op':'ping'}",
        b'{"op":"ping",}',
        b"not json",
        b'{"op":"ping","ref":NaN}',
        b'{"op":"ping","ref":1e400}',
        b"\xff\xfe",
        b'{"op":"ping","ref":"\xff"}',
        b'{"op":"ping","ref":"\\ud800"}',
        '{"op":"ping","ref":"\ud800"}',
        b"\xef\xbb\xbf{}",
        b"[" * 2000 + b"]" * 2000,
        b'{"op":"ping"} {"op":"ping"}',
    ],
)
def test_bad_json(data: str | bytes) -> None:
    error = parse_error(data)
    assert error.code == "bad_json"
    assert error.sub is None
    assert error.message


@pytest.mark.parametrize("value", [[], [1], 1, 1.5, "s", True, None])
def test_not_an_object(value: object) -> None:
    error = parse_error(orjson.dumps(value))
    assert error.code == "bad_message"
    assert "object" in error.message


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"{}", "'op'"),
        (b'{"sub":"s1"}', "'op'"),
        (b'{"op":null}', "'op'"),
        (b'{"op":1}', "'op'"),
        (b'{"op":["ping"]}', "'op'"),
    ],
)
def test_bad_op_field(data: bytes, needle: str) -> None:
    error = parse_error(data)
    assert error.code == "bad_message"
    assert needle in error.message


@pytest.mark.parametrize("op", ["", "Subscribe", "PING", "publish", " ping", "ping\x00", "x" * 500])
def test_unknown_op(op: str) -> None:
    error = parse_error(msg(op=op))
    assert error.code == "unknown_op"
    assert error.sub is None
    assert len(error.message) < 200


# (message, expected code, expected .sub, text the error message contains)
SUBSCRIBE_ERRORS: list[tuple[bytes, str, str | None, str]] = [
    # sub
    (sub_msg(sub=_DROP), "bad_message", None, "'sub'"),
    (sub_msg(sub=""), "bad_message", None, "'sub'"),
    (sub_msg(sub="x" * 129), "bad_message", None, "'sub'"),
    (sub_msg(sub=1), "bad_message", None, "'sub'"),
    (sub_msg(sub=None), "bad_message", None, "'sub'"),
    (sub_msg(sub=["s1"]), "bad_message", None, "'sub'"),
    # unknown fields
    (sub_msg(extra=1), "bad_message", "s1", "'extra'"),
    (sub_msg(Sub="s1"), "bad_message", "s1", "'Sub'"),
    (sub_msg(token="t"), "bad_message", "s1", "'token'"),
    (sub_msg(a=1, b=2), "bad_message", "s1", "'a', 'b'"),
    # collection
    (sub_msg(collection=_DROP), "bad_message", "s1", "'collection'"),
    (sub_msg(collection=None), "bad_message", "s1", "'collection'"),
    (sub_msg(collection=5), "bad_message", "s1", "'collection'"),
    (sub_msg(collection=["orders"]), "bad_message", "s1", "'collection'"),
    (sub_msg(collection=""), "bad_collection", "s1", ""),
    (sub_msg(collection="system.users"), "bad_collection", "s1", "system"),
    (sub_msg(collection="system"), "bad_collection", "s1", "system"),
    (sub_msg(collection="systemx"), "bad_collection", "s1", "system"),
    (sub_msg(collection="1orders"), "bad_collection", "s1", ""),
    (sub_msg(collection="_orders"), "bad_collection", "s1", ""),
    (sub_msg(collection="or ders"), "bad_collection", "s1", ""),
    (sub_msg(collection="orders\n"), "bad_collection", "s1", ""),
    (sub_msg(collection="a.b"), "bad_collection", "s1", ""),
    (sub_msg(collection="a" * 65), "bad_collection", "s1", ""),
    (sub_msg(collection="commandes_é"), "bad_collection", "s1", ""),
    # filter
    (sub_msg(filter=[]), "bad_message", "s1", "'filter'"),
    (sub_msg(filter="status=open"), "bad_message", "s1", "'filter'"),
    (sub_msg(filter=1), "bad_message", "s1", "'filter'"),
    (sub_msg(filter={"$where": "sleep(1000)"}), "bad_filter", "s1", "$where"),
    (sub_msg(filter={"a": {"$regex": "^x"}}), "bad_filter", "s1", "$regex"),
    (sub_msg(filter={"$expr": {"$eq": [1, 1]}}), "bad_filter", "s1", "$expr"),
    # snapshot
    (sub_msg(snapshot="true"), "bad_message", "s1", "'snapshot'"),
    (sub_msg(snapshot=1), "bad_message", "s1", "'snapshot'"),
    (sub_msg(snapshot=0), "bad_message", "s1", "'snapshot'"),
    (sub_msg(snapshot={}), "bad_message", "s1", "'snapshot'"),
    # limit
    (sub_msg(limit=0), "bad_message", "s1", "'limit'"),
    (sub_msg(limit=-1), "bad_message", "s1", "'limit'"),
    (sub_msg(limit=1001), "bad_message", "s1", "'limit'"),
    (sub_msg(limit=True), "bad_message", "s1", "'limit'"),
    (sub_msg(limit=False), "bad_message", "s1", "'limit'"),
    (sub_msg(limit=10.0), "bad_message", "s1", "'limit'"),
    (sub_msg(limit=1.5), "bad_message", "s1", "'limit'"),
    (sub_msg(limit="10"), "bad_message", "s1", "'limit'"),
    (sub_msg(limit=2**64 - 1), "bad_message", "s1", "'limit'"),
    # since
    (sub_msg(since=""), "bad_since", "s1", "'since'"),
    (sub_msg(since="xyz"), "bad_since", "s1", "'since'"),
    (sub_msg(since="0x12"), "bad_since", "s1", "'since'"),
    (sub_msg(since="12 34"), "bad_since", "s1", "'since'"),
    (sub_msg(since="abc\n"), "bad_since", "s1", "'since'"),
    (sub_msg(since="\u0661\u0662"), "bad_since", "s1", "'since'"),  # Arabic-Indic digits
    (sub_msg(since="\uff21"), "bad_since", "s1", "'since'"),  # fullwidth A
    (sub_msg(since="f" * 513), "bad_since", "s1", "'since'"),
    (sub_msg(since=123), "bad_since", "s1", "'since'"),
    (sub_msg(since=True), "bad_since", "s1", "'since'"),
    (sub_msg(since=["ab"]), "bad_since", "s1", "'since'"),
    (sub_msg(since={"_data": "ab"}), "bad_since", "s1", "'since'"),
    # since_time
    (sub_msg(since_time="2026-01-01T09:00:00"), "bad_since", "s1", "'since_time'"),  # no zone
    (sub_msg(since_time="2026-01-01"), "bad_since", "s1", "'since_time'"),
    (sub_msg(since_time="09:00Z"), "bad_since", "s1", "'since_time'"),
    (sub_msg(since_time="2026-02-30T09:00:00Z"), "bad_since", "s1", "not a valid date"),
    (sub_msg(since_time="1969-12-31T23:59:59Z"), "bad_since", "s1", "1970"),
    (sub_msg(since_time="2200-01-01T00:00:00Z"), "bad_since", "s1", "2106"),
    (sub_msg(since_time=1767258000), "bad_since", "s1", "RFC 3339"),
    (sub_msg(since_time=True), "bad_since", "s1", "RFC 3339"),
    (sub_msg(since_time="2026-01-01T09:00:00Z", since="ab"), "bad_message", "s1",
     "exclude each other"),
    (sub_msg(since_time="2026-01-01T09:00:00Z", snapshot=True), "bad_message", "s1",
     "'snapshot'"),
]


@pytest.mark.parametrize(("value", "expected"), [
    ("2026-01-01T09:00:00Z", "2026-01-01T09:00:00+00:00"),
    ("2026-01-01t09:00:00.5z", "2026-01-01T09:00:00.500000+00:00"),
    ("2026-01-01 10:30:00.123456789+01:30", "2026-01-01T09:00:00.123456+00:00"),
])
def test_subscribe_since_time_is_an_rfc3339_time_in_utc(value: str, expected: str) -> None:
    message = parse_client_message(sub_msg(since_time=value))
    assert isinstance(message, Subscribe)
    assert message.since_time is not None
    assert message.since_time.isoformat() == expected
    assert parse_client_message(sub_msg(since_time=None)) == parse_client_message(sub_msg())


@pytest.mark.parametrize(("data", "code", "sub", "needle"), SUBSCRIBE_ERRORS)
def test_subscribe_errors(data: bytes, code: str, sub: str | None, needle: str) -> None:
    error = parse_error(data)
    assert (error.code, error.sub) == (code, sub)
    assert needle in error.message
    assert str(error) == error.message


def test_bad_filter_carries_query_message() -> None:
    from realtime import query

    bad = {"a": {"$where": "x"}}
    with pytest.raises(query.FilterError) as info:
        query.validate(bad)
    error = parse_error(sub_msg(filter=bad))
    assert (error.code, error.message, error.sub) == ("bad_filter", str(info.value), "s1")


def test_deep_and_large_filters_are_bad_filter() -> None:
    # 801 levels: below orjson's nesting limit (1024), far above the filter's.
    deep = '{"$and":[' * 400 + '{"a":1}' + "]}" * 400
    text = '{"op":"subscribe","sub":"s1","collection":"orders","filter":' + deep + "}"
    error = parse_error(text)
    assert (error.code, error.sub) == ("bad_filter", "s1")
    error = parse_error(sub_msg(filter={"$or": [{"a": i} for i in range(5000)]}))
    assert (error.code, error.sub) == ("bad_filter", "s1")


def test_error_carries_unicode_sub() -> None:
    sub = 'naïve "quoted" \\ 😀'
    error = parse_error(sub_msg(sub=sub, since="nothex"))
    assert (error.code, error.sub) == ("bad_since", sub)


def test_long_unknown_field_name_is_cut_short() -> None:
    error = parse_error(sub_msg(**{"f" * 10_000: 1}))
    assert error.code == "bad_message"
    assert len(error.message) < 200


def test_many_unknown_fields_are_listed_briefly() -> None:
    error = parse_error(sub_msg(**{f"field{i}": i for i in range(50)}))
    assert error.code == "bad_message"
    assert "'field0'" in error.message
    assert "'field49'" not in error.message


@pytest.mark.parametrize(
    ("data", "sub", "needle"),
    [
        (b'{"op":"unsubscribe"}', None, "'sub'"),
        (b'{"op":"unsubscribe","sub":""}', None, "'sub'"),
        (b'{"op":"unsubscribe","sub":7}', None, "'sub'"),
        (b'{"op":"unsubscribe","sub":null}', None, "'sub'"),
        (msg(op="unsubscribe", sub="x" * 129), None, "'sub'"),
        (b'{"op":"unsubscribe","sub":"s1","collection":"orders"}', "s1", "'collection'"),
        (b'{"op":"ping","ref":true}', None, "'ref'"),
        (b'{"op":"ping","ref":1.5}', None, "'ref'"),
        (b'{"op":"ping","ref":[1]}', None, "'ref'"),
        (b'{"op":"ping","ref":{}}', None, "'ref'"),
        (b'{"op":"ping","sub":"s1"}', None, "'sub'"),
        (b'{"op":"auth"}', None, "'token'"),
        (b'{"op":"auth","token":""}', None, "'token'"),
        (b'{"op":"auth","token":null}', None, "'token'"),
        (b'{"op":"auth","token":123}', None, "'token'"),
        (b'{"op":"auth","token":"t","scope":"x"}', None, "'scope'"),
    ],
)
def test_other_op_errors(data: bytes, sub: str | None, needle: str) -> None:
    error = parse_error(data)
    assert (error.code, error.sub) == ("bad_message", sub)
    assert needle in error.message


@pytest.mark.parametrize(
    "data",
    [
        b'{"op":"auth","token":"s3cr3t-token","extra":1}',
        b'{"op":"subscribe","sub":"s1","collection":"orders","token":"s3cr3t-token"}',
        b'{"op":"auth","token":"s3cr3t-token",',
    ],
)
def test_errors_never_quote_a_token(data: bytes) -> None:
    assert "s3cr3t" not in parse_error(data).message


# ---------------------------------------------------------------------------
# Fuzz: parse_client_message raises ProtocolError and nothing else

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

interesting = (
    json_values
    | st.sampled_from(["s1", "orders", "system.users", "", HEX, "ab", "0", "$where"])
    | st.integers(min_value=-2, max_value=1002)
    | st.dictionaries(st.sampled_from(["a", "b.c", "$or", "$and", "$eq"]), json_values)
)

near_messages = st.fixed_dictionaries(
    {"op": st.sampled_from(["subscribe", "unsubscribe", "ping", "auth", "pong"]) | json_values},
    optional={
        "sub": interesting,
        "collection": interesting,
        "filter": interesting,
        "snapshot": interesting,
        "limit": interesting,
        "since": interesting,
        "ref": interesting,
        "token": interesting,
        "extra": interesting,
    },
)


def parses_or_protocol_error(data: str | bytes) -> None:
    error: ProtocolError | None = None
    try:
        message = parse_client_message(data)
    except ProtocolError as exc:
        error = exc
    else:
        assert isinstance(message, Subscribe | Unsubscribe | Ping | Auth)
        return
    assert error.code in set(ErrorCode)
    assert isinstance(error.message, str)
    assert error.message
    assert error.sub is None or isinstance(error.sub, str)
    # every error can be rendered
    orjson.loads(render_error(error.code, error.message, error.sub))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_fuzz_bytes(data: bytes) -> None:
    parses_or_protocol_error(data)


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(exclude_categories=()), max_size=64))
def test_fuzz_text(data: str) -> None:
    parses_or_protocol_error(data)


@settings(max_examples=300, deadline=None)
@given(json_values, st.booleans())
def test_fuzz_json_values(value: object, ascii_only: bool) -> None:
    parses_or_protocol_error(json.dumps(value, ensure_ascii=ascii_only))


@settings(max_examples=500, deadline=None)
@given(near_messages, st.booleans())
def test_fuzz_near_messages(value: dict[str, Any], as_bytes: bool) -> None:
    text = json.dumps(value)
    parses_or_protocol_error(text.encode() if as_bytes else text)


valid_subscribes: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {
        "op": st.just("subscribe"),
        "sub": st.text(min_size=1, max_size=128),
        "collection": st.from_regex(r"[A-RT-Za-rt-z][A-Za-z0-9_-]{0,63}", fullmatch=True),
        "filter": st.dictionaries(
            st.from_regex(r"[a-z]{1,8}", fullmatch=True),
            st.text(max_size=8) | st.integers(-1000, 1000) | st.booleans(),
            max_size=3,
        ),
        "snapshot": st.booleans(),
        "limit": st.integers(1, 1000),
        "since": st.from_regex(r"[0-9A-Fa-f]{1,512}", fullmatch=True),
    }
)


@settings(max_examples=200, deadline=None)
@given(valid_subscribes)
def test_valid_subscribe_round_trip(value: dict[str, Any]) -> None:
    message = parse_client_message(orjson.dumps(value))
    assert message == Subscribe(
        sub=value["sub"],
        collection=value["collection"],
        filter=value["filter"],
        snapshot=value["snapshot"],
        limit=value["limit"],
        since=value["since"],
    )


# ---------------------------------------------------------------------------
# Rendering

SUBS = ["s1", 'say "hi"', "back\\slash", "naïve", "日本", "😀", "</script>", "tab\tnl\n\x00", ""]


def assert_compact(text: str, expected: dict[str, Any]) -> None:
    assert isinstance(text, str)
    assert orjson.loads(text) == expected
    # compact: identical to orjson's own encoding of the parsed value
    assert text == orjson.dumps(orjson.loads(text)).decode()


def test_render_welcome() -> None:
    text = render_welcome("realtime/0.1.0", 25)
    assert text == '{"type":"welcome","protocol":1,"server":"realtime/0.1.0","heartbeat":25}'
    assert render_welcome("realtime/0.1.0", 25.0) == text
    assert_compact(
        render_welcome("r", 2.5),
        {"type": "welcome", "protocol": 1, "server": "r", "heartbeat": 2.5},
    )


@pytest.mark.parametrize("heartbeat", [float("nan"), float("inf"), float("-inf")])
def test_render_welcome_rejects_non_finite(heartbeat: float) -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        render_welcome("r", heartbeat)


@pytest.mark.parametrize("sub", SUBS)
@pytest.mark.parametrize("head", [HEX, None])
def test_render_subscribed(sub: str, head: str | None) -> None:
    assert_compact(render_subscribed(sub, head), {"type": "subscribed", "sub": sub, "head": head})


def test_render_subscribed_exact() -> None:
    assert render_subscribed("s1", "82ab") == '{"type":"subscribed","sub":"s1","head":"82ab"}'


@pytest.mark.parametrize("sub", SUBS)
@pytest.mark.parametrize("head", [HEX, None])
def test_render_snapshot(sub: str, head: str | None) -> None:
    documents = [
        orjson.dumps({"_id": "a", "n": 1, "s": sub}).decode(),
        orjson.dumps({"_id": 2, "nested": {"x": [1, 2.5, None, True]}}).decode(),
    ]
    assert_compact(
        render_snapshot(sub, documents, head),
        {
            "type": "snapshot",
            "sub": sub,
            "documents": [orjson.loads(document) for document in documents],
            "head": head,
        },
    )


def test_render_snapshot_empty() -> None:
    assert render_snapshot("s1", [], None) == (
        '{"type":"snapshot","sub":"s1","documents":[],"head":null}'
    )


def test_render_snapshot_splices_documents_verbatim() -> None:
    # Re-encoding would drop the spaces, unescape \u00e9 and reorder nothing;
    # the documents must come through byte for byte.
    documents = ['{"b": 1, "a": "\\u00e9"}', '{"_id":"x"}']
    text = render_snapshot("s1", documents, "ab")
    assert '[{"b": 1, "a": "\\u00e9"},{"_id":"x"}]' in text
    assert orjson.loads(text)["documents"] == [{"b": 1, "a": "é"}, {"_id": "x"}]


def test_render_snapshot_accepts_any_sequence() -> None:
    text = render_snapshot("s1", ('{"a":1}',), None)
    assert orjson.loads(text)["documents"] == [{"a": 1}]


@pytest.mark.parametrize("sub", SUBS)
@pytest.mark.parametrize("reason", ["history_lost", "invalidated", "overflow"])
def test_render_resync(sub: str, reason: str) -> None:
    assert_compact(render_resync(sub, reason), {"type": "resync", "sub": sub, "reason": reason})


def test_render_resync_accepts_enum_and_rejects_unknown() -> None:
    assert orjson.loads(render_resync("s", protocol.ResyncReason.OVERFLOW))["reason"] == "overflow"
    with pytest.raises(ValueError, match="gone"):
        render_resync("s", "gone")


@pytest.mark.parametrize("sub", SUBS)
def test_render_error_with_sub(sub: str) -> None:
    assert_compact(
        render_error("bad_filter", 'unknown operator "$where"', sub),
        {"type": "error", "sub": sub, "code": "bad_filter", "message": 'unknown operator "$where"'},
    )


def test_render_error_without_sub() -> None:
    text = render_error(ErrorCode.BAD_JSON, "message is not valid JSON")
    assert text == '{"type":"error","code":"bad_json","message":"message is not valid JSON"}'
    assert "sub" not in orjson.loads(render_error("internal", "x", None))


def test_render_error_from_protocol_error() -> None:
    error = parse_error(sub_msg(sub="s9", limit=0))
    assert orjson.loads(render_error(error.code, error.message, error.sub)) == {
        "type": "error",
        "sub": "s9",
        "code": "bad_message",
        "message": error.message,
    }


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("7", {"type": "pong", "ref": "7"}),
        ("", {"type": "pong", "ref": ""}),
        ('"q"', {"type": "pong", "ref": '"q"'}),
        (7, {"type": "pong", "ref": 7}),
        (-(2**63), {"type": "pong", "ref": -(2**63)}),
        (None, {"type": "pong"}),
    ],
)
def test_render_pong(ref: str | int | None, expected: dict[str, Any]) -> None:
    assert_compact(render_pong(ref), expected)


def test_ping_pong_round_trip() -> None:
    for data in (b'{"op":"ping","ref":"7"}', b'{"op":"ping","ref":18446744073709551615}'):
        message = parse_client_message(data)
        assert isinstance(message, Ping)
        assert orjson.loads(render_pong(message.ref))["ref"] == orjson.loads(data)["ref"]


def test_render_authenticated() -> None:
    assert render_authenticated() == '{"type":"authenticated"}'


@pytest.mark.parametrize("feed", ["live", "retrying", "down"])
def test_render_status(feed: str) -> None:
    assert_compact(render_status(feed), {"type": "status", "feed": feed})


def test_status_states_are_the_three_constants() -> None:
    assert protocol.FEED_STATES == {protocol.FEED_LIVE, protocol.FEED_RETRYING,
                                    protocol.FEED_DOWN} == {"live", "retrying", "down"}


@pytest.mark.parametrize("feed", ["starting", "LIVE", "", "stopped"])
def test_render_status_refuses_an_unknown_state(feed: str) -> None:
    with pytest.raises(ValueError, match="feed must be one of"):
        render_status(feed)


def test_renderers_raise_type_error_for_unencodable_values() -> None:
    with pytest.raises(TypeError):
        render_subscribed("\ud800", None)
    with pytest.raises(TypeError):
        change_prefix("\udfff")
    with pytest.raises(TypeError):
        encode_event_body(
            id="1", collection="c", key=object(), document=None, updated=None, removed=None, ts="t"
        )


# ---------------------------------------------------------------------------
# Change events (serialize once)

TS = "2026-01-01T00:00:00.000Z"
DOC = orjson.dumps({"_id": "k1", "status": "open", "n": 3, "_version": 2}).decode()
UPDATED = orjson.dumps({"status": "open", "n": 3}).decode()

# (op, key, document, updated, removed)
CHANGE_CASES: list[tuple[str, Any, str | None, str | None, list[str] | None]] = [
    ("insert", "k1", DOC, None, None),
    ("insert", 42, DOC, None, None),
    ("update", "k1", DOC, UPDATED, ["old", "gone.field"]),
    ("update", "k1", DOC, UPDATED, []),
    ("update", "k1", DOC, UPDATED, None),
    ("update", "k1", None, UPDATED, ["old"]),
    ("update", "k1", DOC, None, None),
    ("replace", "k1", DOC, None, None),
    ("delete", "k1", None, None, None),
    ("delete", "65a1b2c3d4e5f60718293a4b", None, None, None),
    ("leave", "k1", None, None, None),
]


def expected_change(
    sub: str,
    op: str,
    key: Any,
    document: str | None,
    updated: str | None,
    removed: list[str] | None,
) -> dict[str, Any]:
    expected: dict[str, Any] = {
        "type": "change",
        "sub": sub,
        "id": HEX,
        "op": op,
        "collection": "orders",
        "key": key,
    }
    if document is not None:
        expected["document"] = orjson.loads(document)
    if updated is not None:
        expected["updated"] = orjson.loads(updated)
    if removed is not None:
        expected["removed"] = removed
    expected["ts"] = TS
    return expected


@pytest.mark.parametrize("sub", SUBS)
@pytest.mark.parametrize(("op", "key", "document", "updated", "removed"), CHANGE_CASES)
def test_render_change(
    sub: str,
    op: str,
    key: Any,
    document: str | None,
    updated: str | None,
    removed: list[str] | None,
) -> None:
    body = encode_event_body(
        id=HEX,
        collection="orders",
        key=key,
        document=document,
        updated=updated,
        removed=removed,
        ts=TS,
    )
    text = render_change(change_prefix(sub), op, body)
    assert_compact(text, expected_change(sub, op, key, document, updated, removed))
    # the keys a client sees, in the documented order apart from "op"
    keys = list(orjson.loads(text))
    assert keys[:3] == ["type", "sub", "op"]
    assert keys[-1] == "ts"


def test_encode_event_body_shape() -> None:
    body = encode_event_body(
        id="82ab",
        collection="orders",
        key="k1",
        document='{"_id":"k1"}',
        updated='{"a":1}',
        removed=["b"],
        ts=TS,
    )
    assert body == (
        '"id":"82ab","collection":"orders","key":"k1","document":{"_id":"k1"},'
        '"updated":{"a":1},"removed":["b"],"ts":"2026-01-01T00:00:00.000Z"}'
    )
    assert not body.startswith("{")
    assert body.endswith("}")


def test_encode_event_body_omits_missing_fields() -> None:
    body = encode_event_body(
        id="82ab", collection="orders", key=5, document=None, updated=None, removed=None, ts=TS
    )
    assert body == '"id":"82ab","collection":"orders","key":5,"ts":"2026-01-01T00:00:00.000Z"}'


def test_encode_event_body_splices_document_verbatim() -> None:
    document = '{"_id": "k1", "s": "\\u00e9"}'
    updated = '{"s": "\\u00e9"}'
    body = encode_event_body(
        id="82ab",
        collection="orders",
        key="k1",
        document=document,
        updated=updated,
        removed=None,
        ts=TS,
    )
    assert f'"document":{document},' in body
    assert f'"updated":{updated},' in body


def test_leave_body() -> None:
    body = leave_body(id=HEX, collection="orders", key="k1", ts=TS)
    assert body == encode_event_body(
        id=HEX, collection="orders", key="k1", document=None, updated=None, removed=None, ts=TS
    )
    assert orjson.loads(render_change(change_prefix("s1"), "leave", body)) == {
        "type": "change",
        "sub": "s1",
        "op": "leave",
        "id": HEX,
        "collection": "orders",
        "key": "k1",
        "ts": TS,
    }


def test_change_prefix_exact() -> None:
    assert change_prefix("s1") == '{"type":"change","sub":"s1","op":"'
    assert change_prefix('a"b') == '{"type":"change","sub":"a\\"b","op":"'


def test_one_body_many_subscribers() -> None:
    body = encode_event_body(
        id=HEX, collection="orders", key="k1", document=DOC, updated=None, removed=None, ts=TS
    )
    prefixes = {sub: change_prefix(sub) for sub in SUBS}
    for sub, prefix in prefixes.items():
        message = orjson.loads(render_change(prefix, "insert", body))
        assert message["sub"] == sub
        assert message["document"] == orjson.loads(DOC)


@pytest.mark.parametrize("op", ["", "INSERT", "drop", 'insert","sub":"evil', "insert\\"])
def test_render_change_rejects_unknown_op(op: str) -> None:
    with pytest.raises(ValueError, match="op"):
        render_change(change_prefix("s1"), op, leave_body(id="1", collection="c", key=1, ts=TS))


@settings(max_examples=200, deadline=None)
@given(
    sub=st.text(max_size=20),
    op=st.sampled_from(sorted(protocol.CHANGE_OPS)),
    key=st.text(max_size=20) | st.integers(-(2**63), 2**64 - 1),
    document=st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    updated=st.none()
    | st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), max_size=3),
    removed=st.none() | st.lists(st.text(max_size=5), max_size=3),
    ts=st.text(max_size=30),
)
def test_render_change_property(
    sub: str,
    op: str,
    key: str | int,
    document: dict[str, str] | None,
    updated: dict[str, int] | None,
    removed: list[str] | None,
    ts: str,
) -> None:
    document_json = None if document is None else orjson.dumps(document).decode()
    updated_json = None if updated is None else orjson.dumps(updated).decode()
    body = encode_event_body(
        id=HEX,
        collection="orders",
        key=key,
        document=document_json,
        updated=updated_json,
        removed=removed,
        ts=ts,
    )
    expected: dict[str, Any] = {
        "type": "change",
        "sub": sub,
        "op": op,
        "id": HEX,
        "collection": "orders",
        "key": key,
    }
    if document is not None:
        expected["document"] = document
    if updated is not None:
        expected["updated"] = updated
    if removed is not None:
        expected["removed"] = removed
    expected["ts"] = ts
    assert orjson.loads(render_change(change_prefix(sub), op, body)) == expected

"""Fuzzing: schemathesis on the REST API, hypothesis on WebSocket messages.

- REST: schemathesis generates requests from the OpenAPI schema of a running
  server (a real ``realtime serve`` subprocess in mode apikey, a tenant-bound
  admin key) and checks every response: never a 5xx, status codes, content
  types, headers and bodies as the schema declares them, and credentials
  actually enforced.
- WebSocket: hypothesis sends random JSON, random ops and filters, wrong
  types, oversize and binary frames, to authenticated and unauthenticated
  sockets: the server answers with ``error`` or a documented close code
  (never 1011), and keeps serving a bystander subscription throughout.

Bounded for CI: ``REALTIME_FUZZ_EXAMPLES`` examples per REST operation
(default 30) and ``REALTIME_WS_FUZZ_EXAMPLES`` WebSocket examples (default
150); raise them for a longer local run.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from realtime.config import Settings
from realtime.embedded import EmbeddedServer, free_port
from tests.helpers import (
    LiveServer,
    ServerProcess,
    apikey_settings,
    asgi_client,
    bearer,
    live_server,
    sha,
)

REST_EXAMPLES = int(os.environ.get("REALTIME_FUZZ_EXAMPLES", "30"))
WS_EXAMPLES = int(os.environ.get("REALTIME_WS_FUZZ_EXAMPLES", "150"))
FUZZ_KEY = "fuzz-key-" + "f" * 24
#: The plain-text answer of uvicorn's HTTP parser to a request it cannot parse.
_PARSER_400 = "Invalid HTTP request received."

# ------------------------------------------------------------------------ REST


@pytest.fixture(scope="module")
def fuzz_server(mongo: EmbeddedServer) -> Iterator[str]:
    """``realtime serve`` in mode apikey: one admin key bound to tenant ``fuzz``."""
    keys = [{"sha256": sha(FUZZ_KEY), "scopes": ["admin"], "tenant": "fuzz"}]
    server = ServerProcess({
        "REALTIME_MONGODB_URI": mongo.uri,
        "REALTIME_DATABASE": f"fuzz_{uuid.uuid4().hex[:12]}",
        "REALTIME_AUTH": "apikey",
        "REALTIME_API_KEYS": orjson.dumps(keys).decode(),
        "REALTIME_RATE_LIMIT_PER_SECOND": "0",
        "REALTIME_HEARTBEAT_SECONDS": "5",
    }, port=free_port())
    server.spawn()
    try:
        server.ready()
        yield server.url
    finally:
        assert server.terminate() == 0


@pytest.fixture(scope="module")
def api_schema(fuzz_server: str) -> Any:
    """The OpenAPI schema the running server serves."""
    schema = schemathesis.openapi.from_url(f"{fuzz_server}/openapi.json")
    schema.config.update(base_url=fuzz_server)
    # Valid requests may still meet the state: a failed If-Match (412).
    checks = schema.config.checks
    checks.positive_data_acceptance.expected_statuses = [
        *checks.positive_data_acceptance.expected_statuses, "412"]
    # Invalid requests may be refused for their size first (413: over 1000 bulk items).
    checks.negative_data_rejection.expected_statuses = [
        *checks.negative_data_rejection.expected_statuses, "413"]
    return schema


def _operations(schema: Any) -> list[Any]:
    operations = []
    for result in schema.get_all_operations():
        operations.append(result.ok())
    return operations


#: Operations whose query languages JSON Schema cannot fully describe (a ``filter``
#: must be a JSON filter, ``sort`` a field list, ``after`` a cursor the server made):
#: a schema-valid request may still be refused (400), so only here the
#: positive-data-acceptance check is left out. Every other check runs everywhere.
_QUERY_LANGUAGES = {"GET /api/collections/{collection}/documents",
                    "GET /api/collections/{collection}/documents:count",
                    # exactly one of since / since_time, an RFC 3339 time, an event id
                    # the oplog still holds (else 410)
                    "GET /api/collections/{collection}/changes"}


def _fuzz(operation: Any, mode: GenerationMode, session: requests.Session,
          seen: dict[str, int]) -> None:
    label = operation.label
    excluded = [positive_data_acceptance] if label in _QUERY_LANGUAGES else []

    @settings(max_examples=REST_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        seen[label] = seen.get(label, 0) + 1
        if mode is GenerationMode.POSITIVE and case.headers and "Idempotency-Key" in case.headers:
            # A generated key may repeat across cases with other bodies, which the
            # server rightly refuses (422): each positive case is a new request.
            case.headers["Idempotency-Key"] = uuid.uuid4().hex
        response = case.call(session=session)
        if response.status_code == 400 and response.text == _PARSER_400:
            return  # uvicorn's HTTP parser refused the request itself (never reached the app)
        case.validate_response(response, excluded_checks=excluded)

    try:
        run()
    except Unsatisfiable:
        # Nothing to negate: no parameters and no body (GET /api/collections).
        assert mode is GenerationMode.NEGATIVE, label
        assert label not in seen, label


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_fuzz(api_schema: Any, mode: GenerationMode) -> None:
    """Every operation, ``REST_EXAMPLES`` cases each: schema-valid (positive) or not.

    Checks (schemathesis defaults): no 5xx; status codes, content types, headers
    and bodies as declared; schema-valid requests accepted, invalid ones refused;
    requests without credentials refused (``ignored_auth``).
    """
    operations = _operations(api_schema)
    assert len(operations) >= 9, [op.label for op in operations]
    seen: dict[str, int] = {}
    with requests.Session() as session:
        session.headers.update(bearer(FUZZ_KEY))
        for operation in operations:
            _fuzz(operation, mode, session, seen)
    assert sum(seen.values()) >= REST_EXAMPLES * 5, seen


# ------------------------------------------------------------------- WebSocket

TENANT_KEY = "ws-tenant-key-" + "t" * 20
ADMIN_KEY = "ws-admin-key-" + "a" * 20
OVERSIZE = "x" * (70 * 1024)
#: Close codes a fuzzed connection may see: too big, unauthenticated. Never 1011.
ALLOWED_CLOSES = {1009, 4401}
SERVER_TYPES = {"welcome", "authenticated", "subscribed", "snapshot", "change", "resync",
                "error", "pong", "aggregate"}
ERROR_CODES = {"bad_json", "bad_message", "unknown_op", "bad_filter", "bad_collection",
               "bad_since", "duplicate_sub", "unknown_sub", "too_many_subs", "forbidden",
               "internal", "too_many_groups"}

json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=16)
filter_keys = st.sampled_from([
    "$and", "$or", "$nor", "$not", "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin",
    "$exists", "$where", "$regex", "$expr", "$elemMatch", "a", "a.b", "a.0", "tenant", "_id",
    "v", "", ".", "a..b", "$"]) | st.text(max_size=6)
filters = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(filter_keys, inner, max_size=3),
    max_leaves=14)
collections = st.sampled_from(["orders", "watch", "system.x", "", "a" * 70, "Orders-1",
                               "fuzz"]) | st.text(max_size=10)
messages = st.fixed_dictionaries(
    {"op": st.sampled_from(["subscribe", "unsubscribe", "ping", "auth", "bogus"]) | json_scalars},
    optional={
        "sub": st.sampled_from(["s1", "s2", ""]) | json_values,
        "collection": collections | json_values,
        "filter": filters,
        "snapshot": st.booleans() | json_scalars,
        "limit": st.integers(-5, 2000) | json_scalars,
        "since": st.text("0123456789abcdefABCDEF", max_size=60) | json_scalars,
        "since_time": st.sampled_from(["2026-01-01T09:00:00Z", "1970-01-01T00:00:00Z",
                                       "2999-12-31T23:59:59.999+01:00", "2026-01-01",
                                       "2026-02-30T00:00:00Z"]) | json_scalars,
        "fields": st.lists(st.sampled_from(["a", "a.b", "tenant", "_id", "v.b", "", "$x",
                                            "a..b"]) | json_scalars, max_size=4)
                  | json_values,
        "aggregate": st.fixed_dictionaries({}, optional={
            "group_by": st.sampled_from(["a", "tenant", "v.b", "$x", ""]) | json_values,
            "count": st.booleans() | json_scalars,
            "sum": st.lists(st.sampled_from(["a", "v.b", "a..b"]), max_size=3) | json_scalars,
            "avg": st.just(["a"]) | json_scalars,
            "min": st.just(["a"]) | json_scalars,
            "max": st.just(["v"]) | json_scalars,
            "throttle_ms": st.integers(-1, 70_000) | json_scalars,
            "extra": json_values,
        }) | json_values,
        "ref": json_values,
        "token": st.sampled_from([TENANT_KEY, ADMIN_KEY, "nope", ""]) | json_values,
        "extra": json_values,
    })
frames = st.one_of(
    messages.map(lambda m: json.dumps(m)),
    json_values.map(lambda v: json.dumps(v)),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.just(OVERSIZE),
)


@pytest.fixture
async def ws_fuzz_server(settings: Settings) -> AsyncIterator[LiveServer]:
    keys = {TENANT_KEY: {"scopes": ["read:*", "write:*"], "tenant": "t1"},
            ADMIN_KEY: {"scopes": ["admin"]}}
    async with live_server(apikey_settings(settings, keys, auth_timeout_seconds=2,
                                           max_subscriptions=20)) as server:
        # Documents of two tenants, so snapshots and filters have something to leak.
        docs = [{"_id": f"{tenant}-{i}", "tenant": tenant, "a": i, "v": {"b": [i, str(i)]}}
                for tenant in ("t1", "t2") for i in range(5)]
        async with httpx.AsyncClient(base_url=server.url) as http:
            for collection in ("orders", "fuzz"):
                r = await http.post(f"/api/collections/{collection}/documents:bulk", json=docs,
                                    headers=bearer(ADMIN_KEY))
                assert r.status_code == 200, r.text
        yield server


async def _read_until_pong(ws: ClientConnection, ref: str) -> list[dict[str, Any]]:
    """Messages up to our pong (checked), or until the server closes (ConnectionClosed)."""
    seen = []
    async with asyncio.timeout(10):
        while True:
            raw = await ws.recv()
            assert isinstance(raw, str), "the server sends text frames only"
            message = orjson.loads(raw)
            assert isinstance(message, dict), message
            assert message.get("type") in SERVER_TYPES, message
            if message["type"] == "error":
                assert message["code"] in ERROR_CODES, message
            seen.append(message)
            if message == {"type": "pong", "ref": ref}:
                return seen


@settings(max_examples=WS_EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(auth=st.sampled_from(["tenant", "admin", "first-message"]),
       sent=st.lists(frames, min_size=1, max_size=5))
async def test_websocket_fuzz(ws_fuzz_server: LiveServer, auth: str, sent: list[str | bytes]
                              ) -> None:
    """Random frames never crash the server, never close with 1011."""
    headers = {"tenant": bearer(TENANT_KEY), "admin": bearer(ADMIN_KEY)}.get(auth, {})
    async with connect(ws_fuzz_server.ws_url, additional_headers=headers, max_size=None,
                       ping_interval=None, open_timeout=10) as ws:
        messages: list[dict[str, Any]] = []
        closed: tuple[int | None] | None = None
        try:
            for frame in sent:
                await ws.send(frame)
            ref = f"fuzz-{uuid.uuid4().hex[:8]}"
            await ws.send(json.dumps({"op": "ping", "ref": ref}))
            messages = await _read_until_pong(ws, ref)
        except ConnectionClosed as exc:
            closed = (exc.rcvd.code if exc.rcvd is not None else None,)
    if closed is not None:
        assert closed[0] in ALLOWED_CLOSES, closed
        if closed[0] == 1009:
            assert any(isinstance(f, str) and len(f) > 64 * 1024 for f in sent)
        return
    kinds = [m["type"] for m in messages]
    if auth == "first-message":
        # Only a valid auth message opens the connection, and welcome follows it.
        assert kinds[:2] == ["authenticated", "welcome"], kinds
    else:
        assert kinds[0] == "welcome", kinds
    if auth == "tenant":  # a tenant never sees another tenant's document
        for m in messages:
            for document in m.get("documents") or [m.get("document")]:
                if document is not None:  # (projected: maybe without its tenant field)
                    assert document.get("tenant", "t1") == "t1", m
                    assert str(document["_id"]).startswith("t1-"), m


async def test_websocket_fuzz_left_the_server_serving(ws_fuzz_server: LiveServer) -> None:
    """A bystander subscribes, a burst of hostile connections runs, the bystander still works."""
    url = ws_fuzz_server.ws_url
    async with connect(url, additional_headers=bearer(ADMIN_KEY), ping_interval=None) as by:
        assert orjson.loads(await by.recv())["type"] == "welcome"
        await by.send(json.dumps({"op": "subscribe", "sub": "w", "collection": "watch"}))
        assert orjson.loads(await by.recv())["type"] == "subscribed"

        async def hostile(i: int) -> int | None:
            """Garbage, a subscription, a ping: the close code, or None if still open."""
            async with connect(url, additional_headers=bearer(TENANT_KEY),
                               ping_interval=None, max_size=None) as ws:
                try:
                    await ws.send(OVERSIZE if i % 3 == 0 else "{" * (i + 1))
                    await ws.send(json.dumps({"op": "subscribe", "sub": "x",
                                              "collection": "watch",
                                              "filter": {"$and": [{"a": {"$in": [[1]]}}]}}))
                    await ws.send(json.dumps({"op": "ping", "ref": i}))
                    async with asyncio.timeout(10):
                        while orjson.loads(await ws.recv()) != {"type": "pong", "ref": i}:
                            pass
                except ConnectionClosed as exc:
                    return exc.rcvd.code if exc.rcvd is not None else None
                return None

        codes = await asyncio.gather(*(hostile(i) for i in range(12)))
        assert 1011 not in codes
        assert codes.count(1009) == 4
        async with httpx.AsyncClient(base_url=ws_fuzz_server.url) as http:
            r = await http.post("/api/collections/watch/documents", json={"after": "fuzz"},
                                headers=bearer(ADMIN_KEY))
            assert r.status_code == 201
        change = orjson.loads(await asyncio.wait_for(by.recv(), 10))
        assert change["type"] == "change"
        assert change["document"]["after"] == "fuzz"


async def test_regression_integers_beyond_int64(settings: Settings) -> None:
    """Found while fuzzing: 2**63 .. 2**64-1 crashed the driver (500); now a double."""
    big = b'{"_id": "big", "a": 10000000000000000000, "b": [18446744073709551615]}'
    async with asgi_client(settings) as client:
        r = await client.post("/api/collections/nums/documents", content=big,
                              headers={"content-type": "application/json"})
        assert r.status_code == 201, r.text
        assert r.json()["a"] == 1e19
        r = await client.patch("/api/collections/nums/documents/big",
                               content=b'{"c": {"d": 9223372036854775808}}',
                               headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        r = await client.post("/api/collections/nums/documents:bulk",
                              content=b'[{"n": 12345678901234567890}]',
                              headers={"content-type": "application/json"})
        assert r.json()["inserted"] == 1, r.text

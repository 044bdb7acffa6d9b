"""Live aggregates: the spec, the groups kept per change (sans I/O), and the live
result against a fresh ``$group`` in the database (a real server and database).

Builders: :func:`state` (an aggregate state from a spec's keyword arguments) and
:func:`group` (one group of a rendered result by its key).
"""

from __future__ import annotations

import asyncio
import itertools
import math
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import AsyncMongoClient

from realtime import protocol
from realtime.aggregate import (
    AggregateState,
    TooManyGroups,
    canonical,
    parse_spec,
    pipeline,
)
from realtime.config import Settings
from tests.helpers import LiveServer, WSClient, ws_client


def state(max_groups: int = 100, **spec: Any) -> AggregateState:
    return AggregateState(parse_spec(spec), max_groups)


def group(groups: list[dict[str, Any]], **key: Any) -> dict[str, Any]:
    (found,) = [g for g in groups if g["key"] == key]
    return found


# ------------------------------------------------------------------ the spec

@pytest.mark.driver_blind
@pytest.mark.parametrize(("spec", "says"), [
    ([], "must be an object"),
    ({}, "must compute something"),
    ({"count": 1}, "'count' must be true or false"),
    ({"count": True, "group_by": ["a", "b", "c", "d"]}, "at most 3"),
    ({"count": True, "group_by": 3}, "field path or a list"),
    ({"sum": ["$x"]}, "not a field path"),
    ({"sum": ["a..b"]}, "not a field path"),
    ({"min": [""]}, "paths of 1 to 256"),
    ({"sum": [f"f{i}" for i in range(17)]}, "at most 16"),
    ({"count": True, "throttle_ms": -1}, "'throttle_ms'"),
    ({"count": True, "throttle_ms": 60_001}, "'throttle_ms'"),
    ({"count": True, "throttle_ms": True}, "'throttle_ms'"),
    ({"count": True, "having": 1}, "unknown key 'having'"),
])
def test_bad_specs_are_refused(spec: Any, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_spec(spec)


@pytest.mark.driver_blind
def test_subscribe_takes_an_aggregate_alone() -> None:
    message = protocol.parse_client_message(orjson.dumps(
        {"op": "subscribe", "sub": "s", "collection": "c", "filter": {"k": 1},
         "aggregate": {"group_by": "status", "count": True, "sum": "total"}}))
    assert isinstance(message, protocol.Subscribe)
    assert message.aggregate is not None
    assert (message.aggregate.group_by, message.aggregate.sum) == (("status",), ("total",))
    assert message.aggregate.throttle_ms == 100
    for clash in ({"snapshot": True}, {"since": "ab"}, {"fields": ["a"]}, {"limit": 5},
                  {"since_time": "2026-01-01T00:00:00Z"}):
        with pytest.raises(protocol.ProtocolError) as info:
            protocol.parse_client_message(orjson.dumps(
                {"op": "subscribe", "sub": "s", "collection": "c",
                 "aggregate": {"count": True}, **clash}))
        assert (info.value.code, info.value.sub) == ("bad_message", "s")
        assert "cannot be combined" in info.value.message


# ------------------------------------------------------------------ the groups

@pytest.mark.driver_blind
def test_documents_moving_between_groups_update_both_and_an_empty_group_is_removed() -> None:
    s = state(group_by="g", count=True, sum=["v"], avg=["v"], min=["v"], max=["v"])
    s.apply(None, {"g": "a", "v": 1})
    s.apply(None, {"g": "a", "v": 5})
    s.apply(None, {"g": "b", "v": 2.5})
    full = s.result()
    assert group(full, g="a") == {"key": {"g": "a"}, "count": 2, "sum": {"v": 6},
                                  "avg": {"v": 3.0}, "min": {"v": 1}, "max": {"v": 5}}
    s.apply({"g": "a", "v": 5}, {"g": "b", "v": 5})  # moves from a to b
    s.apply({"g": "a", "v": 1}, None)  # leaves (deleted, or out of the filter)
    changes = s.take_changes()
    assert changes == [{"key": {"g": "a"}, "removed": True},
                       {"key": {"g": "b"}, "count": 2, "sum": {"v": 7.5}, "avg": {"v": 3.75},
                        "min": {"v": 2.5}, "max": {"v": 5}}]
    assert s.take_changes() == []


@pytest.mark.driver_blind
def test_min_and_max_follow_the_extremes_as_they_leave() -> None:
    s = state(count=True, min=["v"], max=["v"])
    docs = [{"v": v} for v in (3, 1, 4, 1, 5, "s", True, None)]
    for doc in docs:
        s.apply(None, doc)
    assert s.result()[0]["min"] == {"v": 1}
    assert s.result()[0]["max"] == {"v": True}  # booleans sort after strings and numbers
    s.apply({"v": True}, None)
    s.apply({"v": "s"}, None)
    s.apply({"v": 1}, None)
    assert s.result()[0]["min"] == {"v": 1}  # the other 1
    s.apply({"v": 1}, None)
    (only,) = s.result()
    assert (only["min"], only["max"], only["count"]) == ({"v": 3}, {"v": 5}, 4)


@pytest.mark.driver_blind
def test_sums_are_exact_integers_until_a_double_joins_and_ignore_non_numbers() -> None:
    s = state(sum=["v"], avg=["v"])
    for v in (2**62, 2**62, "x", True, None):
        s.apply(None, {"v": v})
    s.apply(None, {})
    assert s.result() == [{"key": {}, "sum": {"v": 2.0**63}, "avg": {"v": 2.0**62}}]
    s.apply({"v": 2**62}, None)
    assert s.result()[0]["sum"] == {"v": 2**62}  # back in 64 bits: an integer again
    for v in (0.1, 0.2):
        s.apply(None, {"v": v})
    for v in (0.1, 0.2):
        s.apply({"v": v}, None)
    assert s.result()[0]["sum"] == {"v": 2**62}  # exact: no drift
    empty = state(avg=["v"])
    empty.apply(None, {"v": "text"})
    assert empty.result() == [{"key": {}, "avg": {"v": None}}]


@pytest.mark.driver_blind
def test_equal_numbers_are_one_group_booleans_and_missing_are_their_own() -> None:
    s = state(group_by="g", count=True)
    for g in (1, 1.0, True, None):
        s.apply(None, {"g": g})
    s.apply(None, {})
    keys = sorted((canonical(g["key"]["g"]), g["count"]) for g in s.result())
    assert keys == [(("bool", True), 1), (("null",), 2), (("num", 1), 2)]


@pytest.mark.driver_blind
def test_group_by_a_path_through_an_array_groups_by_the_array_of_values() -> None:
    s = state(group_by="a.b", count=True)
    s.apply(None, {"a": [{"b": 1}, 7, {"b": 2}]})
    s.apply(None, {"a": [{"b": 1}, {"b": 2}]})
    assert s.result() == [{"key": {"a.b": [1, 2]}, "count": 2}]


@pytest.mark.driver_blind
def test_a_group_past_the_limit_raises() -> None:
    s = state(max_groups=2, group_by="g", count=True)
    s.apply(None, {"g": 1})
    s.apply(None, {"g": 2})
    with pytest.raises(TooManyGroups):
        s.apply(None, {"g": 3})
    with pytest.raises(TooManyGroups):
        s.load([{"_id": {"k0": i}, "count": 1} for i in range(3)])


@pytest.mark.driver_blind
def test_the_pipeline_groups_by_each_path_with_null_for_missing() -> None:
    spec = parse_spec({"group_by": ["a", "b.c"], "count": True, "avg": ["v"], "max": ["w"]})
    stages = pipeline(spec, {"keep": True}, 10)
    assert stages[0] == {"$match": {"keep": True}}
    assert stages[1]["$group"]["_id"] == {"k0": {"$ifNull": ["$a", None]},
                                          "k1": {"$ifNull": ["$b.c", None]}}
    assert stages[1]["$group"]["p0"] == {"$push": "$w"}
    assert stages[2] == {"$limit": 11}


# ------------------------------------------------------------------ end to end

_collections = itertools.count()
GROUPS = st.sampled_from(["a", "b", 1, 1.0, True, None, "missing"])
VALUES = st.sampled_from([0, 1, -2, 7, 0.5, 1.25, -3.75, 0.1, "s", "t", False, None, "missing"])
docs = st.fixed_dictionaries({"g": GROUPS, "v": VALUES, "keep": st.booleans()})
ops = st.lists(st.tuples(st.sampled_from(["insert", "put", "patch", "delete"]),
                         st.integers(0, 5), docs), min_size=1, max_size=15)
SPEC = {"group_by": "g", "count": True, "sum": ["v"], "avg": ["v"], "min": ["v"],
        "max": ["v"], "throttle_ms": 0}


def _body(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if v != "missing"}


async def _write(http: httpx.AsyncClient, collection: str, op: str, n: int,
                 doc: dict[str, Any]) -> None:
    base, key = f"/api/collections/{collection}/documents", f"d{n}"
    if op == "insert":
        r = await http.post(base, json={"_id": key, **_body(doc)})
    elif op == "put":
        r = await http.put(f"{base}/{key}", json=_body(doc))
    elif op == "patch":  # a merge patch: null removes the field
        r = await http.patch(f"{base}/{key}",
                             json={k: (None if v == "missing" else v) for k, v in doc.items()})
    else:
        r = await http.delete(f"{base}/{key}")
    assert r.status_code in (200, 201, 204, 404, 409), r.text


def _canon_row(key: Any, count: int, total: Any, avg: Any, low: Any, high: Any
               ) -> tuple[Any, ...]:
    return (canonical(key), count, total, avg, canonical(low), canonical(high))


def _same(ours: dict[Any, tuple[Any, ...]], theirs: dict[Any, tuple[Any, ...]]) -> bool:
    if ours.keys() != theirs.keys():
        return False
    for key, (_, count, total, avg, low, high) in ours.items():
        _, count2, total2, avg2, low2, high2 = theirs[key]
        if (count, low, high) != (count2, low2, high2):
            return False
        if type(total) is not type(total2) or not math.isclose(total, total2, abs_tol=1e-9):
            return False
        if (avg is None) != (avg2 is None) or (
                avg is not None and not math.isclose(avg, avg2, abs_tol=1e-9)):
            return False
    return True


async def _expected(settings: Settings, collection: str) -> dict[Any, tuple[Any, ...]]:
    """A fresh ``$group`` of the collection, written independently of realtime.aggregate."""
    db: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri)
    try:
        cursor = await db[settings.database][collection].aggregate([
            {"$match": {"keep": True}},
            {"$group": {"_id": "$g", "count": {"$sum": 1}, "sum": {"$sum": "$v"},
                        "avg": {"$avg": "$v"}, "min": {"$min": "$v"}, "max": {"$max": "$v"}}}])
        rows = await cursor.to_list()
    finally:
        await db.close()
    out = {}
    for row in rows:
        canon = _canon_row(row["_id"], row["count"], row["sum"], row["avg"], row["min"],
                           row["max"])
        out[canon[0]] = canon
    return out


async def _follow(c: WSClient, held: dict[Any, tuple[Any, ...]],
                  expected: dict[Any, tuple[Any, ...]], within: float) -> None:
    """Apply ``aggregate`` messages to ``held`` until it equals ``expected``."""
    deadline = asyncio.get_running_loop().time() + within
    while not _same(held, expected):
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise AssertionError(f"live {held} != database {expected}")
        try:
            message = await c.recv(timeout=left)
        except TimeoutError:
            continue
        assert message["type"] == "aggregate", message
        if message["full"]:
            held.clear()
        for g in message["groups"]:
            key = canonical(g["key"]["g"])
            if g.get("removed"):
                held.pop(key)
            else:
                held[key] = _canon_row(g["key"]["g"], g["count"], g["sum"]["v"],
                                       g["avg"]["v"], g["min"]["v"], g["max"]["v"])


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(before=ops, during=ops, after=ops)
async def test_the_live_aggregate_equals_a_fresh_group_in_the_database(
        live: LiveServer, http: httpx.AsyncClient, settings: Settings,
        before: list[tuple[str, int, dict[str, Any]]],
        during: list[tuple[str, int, dict[str, Any]]],
        after: list[tuple[str, int, dict[str, Any]]]) -> None:
    """Writes before the subscription, while its first result is read (the hand-over),
    and after: the live groups end equal to the database's own ``$group``."""
    collection = f"agg{next(_collections)}"
    for op, n, doc in before:
        await _write(http, collection, op, n, doc)
    held: dict[Any, tuple[Any, ...]] = {}
    async with ws_client(live.ws_url) as c:
        await c.send({"op": "subscribe", "sub": "s", "collection": collection,
                      "filter": {"keep": True}, "aggregate": SPEC})
        for op, n, doc in during:  # racing the first result
            await _write(http, collection, op, n, doc)
        assert (await c.recv())["type"] == "subscribed"
        first = await c.recv()
        assert (first["type"], first["full"]) == ("aggregate", True)
        for g in first["groups"]:
            held[canonical(g["key"]["g"])] = _canon_row(
                g["key"]["g"], g["count"], g["sum"]["v"], g["avg"]["v"], g["min"]["v"],
                g["max"]["v"])
        for op, n, doc in after:
            await _write(http, collection, op, n, doc)
        await _follow(c, held, await _expected(settings, collection), within=10)


async def test_changes_are_coalesced_per_throttle_window(live: LiveServer,
                                                         http: httpx.AsyncClient) -> None:
    async with ws_client(live.ws_url) as c:
        await c.subscribe("s", "burst", aggregate={"count": True, "sum": ["n"],
                                                   "throttle_ms": 400})
        first = await c.expect("aggregate")
        assert first["groups"] == []
        r = await http.post("/api/collections/burst/documents:bulk",
                            json=[{"n": i} for i in range(200)])
        assert r.status_code == 200
        messages = []
        while not messages or messages[-1]["groups"][0]["count"] < 200:
            messages.append(await c.expect("aggregate"))
        # 200 changes, a message at most every 400 ms: a handful, not 200.
        assert len(messages) <= 10, len(messages)
        assert messages[-1]["groups"] == [{"key": {}, "count": 200, "sum": {"n": 19900}}]


async def test_too_many_groups_ends_the_subscription_with_an_error(
        settings: Settings) -> None:
    from tests.helpers import live_server

    async with live_server(settings.model_copy(update={"aggregate_max_groups": 3})) as server, \
            httpx.AsyncClient(base_url=server.url) as http, ws_client(server.ws_url) as c:
        for g in range(3):
            await http.post("/api/collections/many/documents", json={"g": g})
        await c.subscribe("s", "many", aggregate={"group_by": "g", "count": True})
        assert len((await c.expect("aggregate"))["groups"]) == 3
        await http.post("/api/collections/many/documents", json={"g": 99})
        error = await c.expect("error")
        assert (error["code"], error["sub"]) == ("too_many_groups", "s")
        await http.post("/api/collections/many/documents", json={"g": 100})
        assert await c.drain_until_marker(http) == []  # ended: nothing more
        await c.subscribe("t", "many", aggregate={"group_by": "g", "count": True})
        error = await c.expect("error")  # over the limit from the start
        assert (error["code"], error["sub"]) == ("too_many_groups", "t")


async def test_subscribers_of_one_aggregate_share_it_and_a_late_one_gets_the_groups_at_once(
        live: LiveServer, http: httpx.AsyncClient) -> None:
    hub = live.app.state.services.hub
    spec = {"group_by": "g", "count": True, "throttle_ms": 0}
    await http.post("/api/collections/shared/documents", json={"g": "a"})
    async with ws_client(live.ws_url) as first, ws_client(live.ws_url) as late, \
            ws_client(live.ws_url) as other:
        await first.subscribe("s", "shared", aggregate=spec)
        (first_conn,) = [c for c, subs in hub.connections.items() if "s" in subs]
        assert (await first.expect("aggregate"))["groups"] == [{"key": {"g": "a"}, "count": 1}]
        await http.post("/api/collections/shared/documents", json={"g": "b"})
        assert (await first.expect("aggregate"))["groups"] == [{"key": {"g": "b"}, "count": 1}]
        await late.subscribe("x", "shared", aggregate=spec)
        joined = await late.expect("aggregate")
        assert (joined["sub"], joined["full"]) == ("x", True)
        assert sorted(g["key"]["g"] for g in joined["groups"]) == ["a", "b"]
        await other.subscribe("o", "shared", aggregate={**spec, "throttle_ms": 1})
        await other.expect("aggregate")
        assert len(hub._aggregates) == 2  # another spec: another aggregate
        assert sum(len(index) for index in hub._indexes.values()) == 2  # one leader each
        assert hub.subscription_count() == 3  # the subscribers
        await http.post("/api/collections/shared/documents", json={"g": "a"})
        for c, sub in ((first, "s"), (late, "x")):
            message = await c.expect("aggregate")
            assert (message["sub"], message["groups"]) == (sub, [{"key": {"g": "a"},
                                                                  "count": 2}])
        await first.send({"op": "unsubscribe", "sub": "s"})
        await http.post("/api/collections/shared/documents", json={"g": "b"})
        assert (await late.expect("aggregate"))["groups"] == [{"key": {"g": "b"}, "count": 2}]
        assert await first.drain_until_marker(http) == []
        await late.send({"op": "unsubscribe", "sub": "x"})
        await late.drain_until_marker(http)
        assert len(hub._aggregates) == 1  # the last member gone, it went too
        assert all(isinstance(conn, type(first_conn)) for conn in hub.connections)


@pytest.mark.driver_blind
def test_a_subscription_moves_contributions_and_breaks_without_a_pre_image() -> None:
    from realtime.subscription import Subscription
    from tests.helpers import change_event

    class Nowhere:
        max_backlog = 100
        backlog = 0

        def send(self, message: str) -> None:
            raise AssertionError(message)

        def send_change(self, ev: Any, prefix: str, op: str) -> None:
            raise AssertionError(op)

        def close(self, code: int, reason: str = "") -> None:
            raise AssertionError(code)

    told: list[str | None] = []
    s = Subscription(Nowhere(), "s", "c", {"keep": True},
                     aggregate=state(group_by="g", count=True, sum=["v"]))
    s.notify = lambda sub: told.append(sub.broken)

    def deliver(ev: Any) -> None:
        op = s.decide(ev)
        if op is not None:
            s.send(op, ev)

    deliver(change_event(1, "insert", key="a", doc={"keep": True, "g": 1, "v": 2}))
    assert s.aggregate is not None
    assert s.aggregate.result() == [{"key": {"g": 1}, "count": 1, "sum": {"v": 2}}]
    deliver(change_event(2, "update", key="a", doc={"keep": True, "g": 2, "v": 3},
                         before={"keep": True, "g": 1, "v": 2}))
    deliver(change_event(3, "update", key="a", doc={"keep": False, "g": 2, "v": 3},
                         before={"keep": True, "g": 2, "v": 3}))  # leaves the filter
    deliver(change_event(4, "insert", key="b", doc={"keep": False, "g": 9, "v": 1}))  # outside
    # g1 was shown, then emptied; g2 came and went unseen: only g1 is reported.
    assert s.aggregate.take_changes() == [{"key": {"g": 1}, "removed": True}]
    assert told == [None, None, None]
    deliver(change_event(5, "insert", key="c", doc={"keep": True, "g": 1, "v": 1}))
    deliver(change_event(6, "update", key="c", doc={"keep": True, "g": 1, "v": 5}))
    assert told[-1] == "no_pre_image"  # the hub sends resync: the client reloads
    deliver(change_event(7, "insert", key="d", doc={"keep": True, "g": 1, "v": 1}))
    assert len(told) == 5  # broken: nothing more is applied


async def test_a_feed_resync_makes_every_member_reload_the_aggregate(
        live: LiveServer, http: httpx.AsyncClient) -> None:
    hub = live.app.state.services.hub
    spec = {"count": True, "throttle_ms": 0}
    await http.post("/api/collections/lost/documents", json={"n": 1})
    async with ws_client(live.ws_url) as a, ws_client(live.ws_url) as b:
        for c in (a, b):
            await c.subscribe("s", "lost", aggregate=spec)
            await c.expect("aggregate")
        assert hub.resync(protocol.ResyncReason.HISTORY_LOST, "lost") == 2
        for c in (a, b):
            assert await c.expect("resync") == {"type": "resync", "sub": "s",
                                                "reason": "history_lost"}
        assert not hub._aggregates
        await a.send({"op": "unsubscribe", "sub": "s"})
        await a.subscribe("t", "lost", aggregate=spec)
        assert (await a.expect("aggregate"))["groups"] == [{"key": {}, "count": 1}]

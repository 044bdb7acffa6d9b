"""The Python client against real servers: live queries, resume, resync, restarts."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from realtime.client import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    WRITE_ATTEMPTS,
    Aggregate,
    AggregateView,
    Change,
    Client,
    ConnectError,
    ConnectionRejected,
    ConnectionState,
    Event,
    LiveView,
    Reset,
    Snapshot,
    StateChange,
    Subscribed,
    Subscription,
    SubscriptionError,
    WriteError,
    apply_delta,
    backoff_delay,
    connect,
    http_url,
    ws_url,
)
from realtime.config import Settings
from realtime.embedded import EmbeddedServer, free_port
from tests.helpers import (
    UNAVAILABLE,
    LiveServer,
    ReplyDropper,
    ServerProcess,
    bearer,
    flaky_server,
    hs256,
    jwt_settings,
    live_server,
)

DOCS = "/api/collections/{}/documents"


async def post(http: httpx.AsyncClient, coll: str, doc: dict[str, Any],
               base: str = "") -> dict[str, Any]:
    r = await http.post(base + DOCS.format(coll), json=doc)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def next_event(sub: Subscription, within: float = 10.0) -> Event:
    return await asyncio.wait_for(anext(sub), within)


async def until(sub: Subscription, predicate: Callable[[Event], bool],
                within: float = 15.0) -> list[Event]:
    """Events up to and including the first that satisfies ``predicate``."""
    seen: list[Event] = []
    async with asyncio.timeout(within):
        async for event in sub:
            seen.append(event)
            if predicate(event):
                return seen
    raise AssertionError(f"subscription ended before the condition; saw {seen}")


async def database_state(http: httpx.AsyncClient, coll: str, base: str = "",
                         filter: str | None = None) -> dict[Any, dict[str, Any]]:
    params: dict[str, Any] = {"limit": 1000}
    if filter is not None:
        params["filter"] = filter
    r = await http.get(base + DOCS.format(coll), params=params)
    assert r.status_code == 200, r.text
    return {d["_id"]: d for d in r.json()["documents"]}


class StateLog:
    """Collects the client's state changes; lets a test wait for one."""

    def __init__(self) -> None:
        self.changes: list[StateChange] = []
        self._changed = asyncio.Event()

    def __call__(self, change: StateChange) -> None:
        self.changes.append(change)
        self._changed.set()

    async def wait_for(self, state: ConnectionState, within: float = 15.0) -> StateChange:
        """Wait until the client's latest state is ``state``; return that change."""
        async with asyncio.timeout(within):
            while not (self.changes and self.changes[-1].state is state):
                self._changed.clear()
                await self._changed.wait()
        return self.changes[-1]


# ---------------------------------------------------------------------------
# Pure parts


def test_backoff_bounds() -> None:
    assert backoff_delay(0, lambda: 0.0) == 0.0
    for attempt in range(0, 60):
        ceiling = min(BACKOFF_MAX, BACKOFF_MIN * 2**attempt)
        assert backoff_delay(attempt, lambda: 0.999999) == pytest.approx(ceiling * 0.999999)
        for _ in range(20):
            assert 0.0 <= backoff_delay(attempt) < ceiling
    assert backoff_delay(0, lambda: 0.999999) < 0.5
    assert backoff_delay(6, lambda: 0.999999) == pytest.approx(20.0, rel=1e-5)
    assert backoff_delay(10_000, random.random) < 20.0


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/ws"),
        ("http://127.0.0.1:8000/", "ws://127.0.0.1:8000/ws"),
        ("https://example.org/realtime/", "wss://example.org/realtime/ws"),
        ("http://h/ws", "ws://h/ws"),
        ("ws://h:1/ws", "ws://h:1/ws"),
        ("wss://h/x/ws", "wss://h/x/ws"),
    ],
)
def test_ws_url(given: str, expected: str) -> None:
    assert ws_url(given) == expected


def test_ws_url_refuses_other_schemes() -> None:
    with pytest.raises(ValueError, match="ws"):
        ws_url("ftp://h/")


def test_live_view_rules() -> None:
    view = LiveView()
    assert view.apply(Snapshot([{"_id": "a", "_version": 2, "n": 1}], head="h")) == "reset"
    change = {"collection": "c", "id": "1", "ts": ""}
    assert view.apply(Change("leave", key="zz", **change)) is None  # unknown: no-op
    assert view.apply(Change("delete", key="zz", **change)) is None
    assert view.apply(Change("update", key="b", document={"_id": "b", "_version": 5},
                             **change)) == "insert"  # entering the filter
    assert view.apply(Change("update", key="a", document={"_id": "a", "_version": 2, "n": 9},
                             **change)) is None  # not newer than held
    assert view.documents["a"]["n"] == 1
    assert view.apply(Change("replace", key="a", document={"_id": "a", "_version": 3},
                             **change)) == "update"
    assert view.apply(Change("leave", key="b", **change)) == "remove"
    assert view.apply(Subscribed(head="h", resumed=False)) is None
    assert view.apply(Reset("history_lost")) is None
    assert view.documents == {"a": {"_id": "a", "_version": 3}}


def test_live_view_applies_the_deltas_of_a_projected_subscription() -> None:
    view = LiveView()
    view.apply(Snapshot([{"_id": "a", "_version": 1, "c": {"n": "x", "t": 1}, "g": 0}],
                        head="h"))
    change = {"collection": "c", "id": "1", "ts": ""}
    assert view.apply(Change("update", key="a", updated={"_version": 2, "c.t": 2, "d.e": 3},
                             removed=["g"], **change)) == "update"
    assert view.documents["a"] == {"_id": "a", "_version": 2, "c": {"n": "x", "t": 2},
                                   "d": {"e": 3}}
    assert view.apply(Change("update", key="a", updated={"_version": 2, "c.t": 9},
                             removed=[], **change)) is None  # not newer
    assert view.apply(Change("update", key="zz", updated={"_version": 4, "x": 1},
                             removed=[], **change)) is None  # not held: cannot apply
    assert "zz" not in view.documents
    with pytest.raises(ValueError, match="not an object"):
        apply_delta({"a": 1}, {"a.b": 2}, [])


async def test_connect_error_when_unreachable() -> None:
    with pytest.raises(ConnectError, match="cannot connect"):
        async with connect(f"http://127.0.0.1:{free_port()}", open_timeout=2):
            pass


# ---------------------------------------------------------------------------
# Against a live server (in-process uvicorn)


async def test_snapshot_then_live_query(live: LiveServer, http: httpx.AsyncClient) -> None:
    for i in range(4):
        await post(http, "orders", {"_id": f"o{i}", "status": "open" if i % 2 else "new"})
    async with connect(live.url) as client, \
            client.subscribe("orders", filter={"status": "open"}, snapshot=True) as sub:
        first = await next_event(sub)
        assert isinstance(first, Subscribed)
        assert not first.resumed
        snap = await next_event(sub)
        assert isinstance(snap, Snapshot)
        assert [d["_id"] for d in snap.documents] == ["o1", "o3"]
        assert snap.head == first.head
        view = LiveView()
        view.apply(snap)

        await post(http, "orders", {"_id": "o4", "status": "open"})  # insert
        r = await http.patch(f"{DOCS.format('orders')}/o0", json={"status": "open"})  # enters
        assert r.status_code == 200
        r = await http.patch(f"{DOCS.format('orders')}/o1", json={"status": "done"})  # leaves
        assert r.status_code == 200
        r = await http.delete(f"{DOCS.format('orders')}/o3")  # deleted
        assert r.status_code == 204

        events = [await next_event(sub) for _ in range(4)]
        assert all(isinstance(e, Change) for e in events)
        changes = [e for e in events if isinstance(e, Change)]
        assert [(c.op, c.key) for c in changes] == [
            ("insert", "o4"), ("update", "o0"), ("leave", "o1"), ("delete", "o3")]
        assert changes[0].document is not None
        assert changes[0].document["_version"] == 1
        assert changes[1].updated is not None
        assert sub.since == changes[-1].id
        for event in events:
            view.apply(event)
        assert view.documents == await database_state(http, "orders",
                                                      filter='{"status":"open"}')


async def test_resume_with_since_after_a_dropped_connection(
        live: LiveServer, http: httpx.AsyncClient) -> None:
    """The client resumes from the last event id: writes made while it was away arrive."""
    states = StateLog()
    async with connect(live.url, on_state=states, delay=lambda attempt: 3600.0) as client, \
            client.subscribe("log", filter={"keep": True}) as sub:
        subscribed = await next_event(sub)
        assert isinstance(subscribed, Subscribed)
        assert sub.since == subscribed.head
        await post(http, "log", {"_id": "a", "keep": True})
        seen = await next_event(sub)
        assert isinstance(seen, Change)
        assert seen.key == "a"

        live.app.state.services.hub.close_all(1011, "test drop")
        lost = await states.wait_for(ConnectionState.RECONNECTING)
        assert (lost.code, lost.delay) == (1011, 3600.0)  # waits until reconnect_now()
        for key, keep in (("b", True), ("c", False), ("d", True)):
            await post(http, "log", {"_id": key, "keep": keep})
        client.reconnect_now()
        await states.wait_for(ConnectionState.OPEN)

        resumed = await next_event(sub)
        assert isinstance(resumed, Subscribed)
        assert resumed.resumed
        replayed = [await next_event(sub) for _ in range(2)]
        assert [(e.op, e.key) for e in replayed if isinstance(e, Change)] == [
            ("insert", "b"), ("insert", "d")]
        # and live again afterwards
        await post(http, "log", {"_id": "e", "keep": True})
        live_again = await next_event(sub)
        assert isinstance(live_again, Change)
        assert live_again.key == "e"


async def test_resync_reloads_with_a_snapshot(live: LiveServer, http: httpx.AsyncClient) -> None:
    await post(http, "items", {"_id": "x", "n": 1})
    await post(http, "items", {"_id": "y", "n": 2})
    unknown = "82" + "0" * 40
    async with connect(live.url) as client, client.subscribe("items", since=unknown) as sub:
        events = await until(sub, lambda e: isinstance(e, Snapshot))
        kinds = [type(e).__name__ for e in events]
        assert kinds == ["Subscribed", "Reset", "Subscribed", "Snapshot"]
        assert isinstance(events[0], Subscribed)
        assert events[0].resumed
        assert events[1] == Reset("history_lost")
        snap = events[3]
        assert isinstance(snap, Snapshot)
        assert snap.reload
        assert [d["_id"] for d in snap.documents] == ["x", "y"]
        assert sub.since == snap.head
        await post(http, "items", {"_id": "z", "n": 3})
        change = await next_event(sub)
        assert isinstance(change, Change)
        assert change.key == "z"


async def test_since_time_replays_then_resumes_by_id_across_a_reconnect(
        live: LiveServer, http: httpx.AsyncClient) -> None:
    states = StateLog()
    async with connect(live.url) as client, client.subscribe("log") as watch:
        await next_event(watch)
        for key in "abc":
            await post(http, "log", {"_id": key})
        seen = [await next_event(watch) for _ in range(3)]
    ts = dt.datetime.fromisoformat(seen[1].ts.replace("Z", "+00:00"))  # b's commit
    expected = [e.key for e in seen if e.ts >= seen[1].ts]
    async with connect(live.url, on_state=states, delay=lambda attempt: 3600.0) as client, \
            client.subscribe("log", since_time=ts) as sub:
        first = await next_event(sub)
        assert isinstance(first, Subscribed)
        assert first.resumed
        replayed = [await next_event(sub) for _ in expected]
        assert [e.key for e in replayed if isinstance(e, Change)] == expected
        assert sub.since_time is None  # from now on it resumes by event id
        live.app.state.services.hub.close_all(1011, "test drop")
        await states.wait_for(ConnectionState.RECONNECTING)
        await post(http, "log", {"_id": "d"})
        client.reconnect_now()
        events = await until(sub, lambda e: isinstance(e, Change))
        assert [type(e).__name__ for e in events] == ["Subscribed", "Change"]
        assert isinstance(events[-1], Change)
        assert events[-1].key == "d"
    with pytest.raises(ValueError, match="aware"):
        async with connect(live.url) as client:
            client.subscribe("log", since_time=dt.datetime(2026, 1, 1))


async def test_a_live_aggregate_is_kept_and_reloaded_in_full_after_a_reconnect(
        live: LiveServer, http: httpx.AsyncClient) -> None:
    states = StateLog()
    await post(http, "sales", {"_id": "a", "region": "eu", "amount": 3})
    spec = {"group_by": "region", "count": True, "sum": ["amount"], "throttle_ms": 0}
    async with connect(live.url, on_state=states, delay=lambda attempt: 3600.0) as client, \
            client.subscribe("sales", aggregate=spec) as sub:
        view = AggregateView()
        events = await until(sub, lambda e: isinstance(e, Aggregate))
        assert view.apply(events[-1])
        assert list(view.groups.values()) == [
            {"key": {"region": "eu"}, "count": 1, "sum": {"amount": 3}}]
        await post(http, "sales", {"_id": "b", "region": "us", "amount": 4})
        changed = await next_event(sub)
        assert changed == Aggregate(groups=[{"key": {"region": "us"}, "count": 1,
                                             "sum": {"amount": 4}}], full=False)
        view.apply(changed)
        live.app.state.services.hub.close_all(1011, "test drop")
        await states.wait_for(ConnectionState.RECONNECTING)
        await http.delete(f"{DOCS.format('sales')}/a")
        client.reconnect_now()
        events = await until(sub, lambda e: isinstance(e, Aggregate))
        assert [type(e).__name__ for e in events] == ["Subscribed", "Aggregate"]
        view.apply(events[-1])
        assert list(view.groups.values()) == [
            {"key": {"region": "us"}, "count": 1, "sum": {"amount": 4}}]
    with pytest.raises(ValueError, match="aggregate excludes"):
        async with connect(live.url) as client:
            client.subscribe("sales", aggregate=spec, snapshot=True)


async def test_subscription_errors_end_the_iteration(live: LiveServer) -> None:
    async with connect(live.url) as client:
        sub = client.subscribe("orders", filter={"$where": "1"})
        with pytest.raises(SubscriptionError) as info:
            await next_event(sub)
        assert info.value.code == "bad_filter"
        assert sub.closed
        # the connection is still good
        ok = client.subscribe("orders")
        assert isinstance(await next_event(ok), Subscribed)


async def test_close_ends_iteration(live: LiveServer) -> None:
    client = connect(live.url)
    await client.open()
    sub = client.subscribe("orders")
    assert isinstance(await next_event(sub), Subscribed)
    await client.close()
    assert client.state is ConnectionState.CLOSED
    with pytest.raises(StopAsyncIteration):
        await next_event(sub)


# ---------------------------------------------------------------------------
# Credentials: a token provider and the 4401 rule (JWT mode, real expiry)


def soon() -> int:
    """An ``exp`` 1 to 2 s ahead: PyJWT compares ``int(exp)`` with the clock, so a
    fractional ``exp`` could leave a token well under a second of validity."""
    return int(time.time()) + 2


async def test_token_provider_renews_an_expired_jwt(settings: Settings) -> None:
    """The token expires, the server closes 4401, the provider gives a fresh token:
    the client reconnects at once with it and replays what was written meanwhile."""
    calls = 0
    asked_again = asyncio.Event()
    gate = asyncio.Event()

    async def provider() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            return hs256({"scope": "read:*", "sub": "first", "exp": soon()})
        asked_again.set()
        await gate.wait()  # the test writes while the client waits for its token
        return hs256({"scope": "read:*", "sub": "renewed"})

    states = StateLog()
    writer = bearer(hs256({"scope": "write:*"}))
    async with live_server(jwt_settings(settings, jwt_leeway_seconds=0)) as server, \
            httpx.AsyncClient(base_url=server.url, headers=writer, timeout=10) as http, \
            connect(server.url, token=provider, on_state=states,
                    delay=lambda attempt: 3600.0) as client, \
            client.subscribe("orders") as sub:
        subscribed = await next_event(sub)
        assert isinstance(subscribed, Subscribed)
        await post(http, "orders", {"_id": "a"})
        first = await next_event(sub)
        assert isinstance(first, Change)
        assert first.key == "a"

        await asyncio.wait_for(asked_again.wait(), 10)  # expired: 4401, the provider is asked
        lost = states.changes[-1]
        assert (lost.state, lost.code, lost.delay) == (ConnectionState.RECONNECTING, 4401, 0.0)
        assert lost.reason == "token expired"
        for key in ("b", "c"):
            await post(http, "orders", {"_id": key})
        gate.set()
        await states.wait_for(ConnectionState.OPEN)

        events = await until(sub, lambda e: isinstance(e, Change) and e.key == "c")
        assert isinstance(events[0], Subscribed)
        assert events[0].resumed
        assert [(e.op, e.key) for e in events[1:] if isinstance(e, Change)] == [
            ("insert", "b"), ("insert", "c")]
        assert len(events) == 3
        await post(http, "orders", {"_id": "d"})
        last = await next_event(sub)
        assert isinstance(last, Change)
        assert last.key == "d"
        assert calls == 2  # once per connect, once after the 4401
        assert [c.state for c in states.changes] == [
            ConnectionState.CONNECTING, ConnectionState.OPEN, ConnectionState.RECONNECTING,
            ConnectionState.OPEN]


async def test_token_provider_without_a_new_token_stays_closed(settings: Settings) -> None:
    """After a 4401 the provider is asked once more: the same token, or a new one the
    server refuses as well, closes the client for good."""
    async with live_server(jwt_settings(settings, jwt_leeway_seconds=0)) as server:
        # The same (expired) token again: closed, the subscription raises.
        token = hs256({"scope": "read:*", "exp": soon()})
        calls = 0

        def same() -> str:
            nonlocal calls
            calls += 1
            return token

        states = StateLog()
        async with connect(server.url, token=same, on_state=states,
                           delay=lambda attempt: 3600.0) as client:
            sub = client.subscribe("orders")
            assert isinstance(await next_event(sub), Subscribed)
            with pytest.raises(ConnectionRejected) as info:
                await next_event(sub)
            assert info.value.code == 4401
            assert client.state is ConnectionState.CLOSED
            assert calls == 2
            assert [(c.state, c.code) for c in states.changes] == [
                (ConnectionState.CONNECTING, None), (ConnectionState.OPEN, None),
                (ConnectionState.RECONNECTING, 4401), (ConnectionState.CLOSED, 4401)]

        # New tokens that are all refused: one retry, then ConnectionRejected.
        counter = itertools.count()

        def garbage() -> str:
            return f"not-a-jwt-{next(counter)}"

        with pytest.raises(ConnectionRejected) as info:
            async with connect(server.url, token=garbage):
                pass
        assert info.value.code == 4401
        assert next(counter) == 2


# ---------------------------------------------------------------------------
# Against a server process that dies and comes back




@pytest.mark.parametrize("how", ["kill", "terminate"])
async def test_restart_mid_stream_loses_nothing(server: ServerProcess, mongo: EmbeddedServer,
                                                how: str) -> None:
    """Kill (or stop) the server mid-stream, write while it is down, restart it:
    the subscriber ends with exactly the database's documents."""
    states = StateLog()
    db_name = server.env["REALTIME_DATABASE"]
    async with httpx.AsyncClient(timeout=10) as http, \
            AsyncMongoClient(mongo.uri) as direct, \
            connect(server.url, on_state=states, delay=lambda attempt: 0.1) as client, \
            client.subscribe("orders", snapshot=True) as sub:
        view = LiveView()
        for event in await until(sub, lambda e: isinstance(e, Snapshot)):
            view.apply(event)
        for i in range(5):
            await post(http, "orders", {"_id": f"o{i}", "n": i}, base=server.url)
        for event in await until(sub, lambda e: isinstance(e, Change) and e.key == "o4"):
            view.apply(event)
        assert sorted(view.documents) == [f"o{i}" for i in range(5)]

        if how == "kill":
            server.kill()
        else:
            server.terminate()
        await states.wait_for(ConnectionState.RECONNECTING)

        # Writes while the server is down go straight to the database.
        coll = direct[db_name]["orders"]
        await coll.insert_many([{"_id": f"o{i}", "n": i, "_version": 1} for i in range(5, 8)])
        await coll.update_one({"_id": "o0"}, {"$set": {"n": 100}, "$inc": {"_version": 1}})
        await coll.delete_one({"_id": "o1"})

        await server.start()
        await states.wait_for(ConnectionState.OPEN, within=30)
        # One more write through the restarted server, to know when we are caught up.
        await post(http, "orders", {"_id": "last"}, base=server.url)
        events = await until(sub, lambda e: isinstance(e, Change) and e.key == "last", 30)
        for event in events:
            view.apply(event)
        # The restarted server either resumes from our last event id (the missed changes
        # are replayed) or cannot (reset, then a snapshot): either way nothing is lost.
        assert any(isinstance(e, Reset) for e in events) or any(
            isinstance(e, Subscribed) and e.resumed for e in events)
        expected = await database_state(http, "orders", base=server.url)
        assert view.documents == expected
        assert expected["o0"]["n"] == 100
        assert "o1" not in expected
        assert {"o5", "o6", "o7", "last"} <= set(expected)


# -- writes: one Idempotency-Key per logical write, retried -----------------------------
def no_wait(attempt: int) -> float:
    return 0.0


async def changes_until_marker(sub: Subscription, client: Client, collection: str) -> list[Change]:
    """The changes ``sub`` gets up to a marker document written now (excluded)."""
    marker = await client.insert(collection, {"marker": True})
    seen = await until(sub, lambda e: isinstance(e, Change) and e.key == marker["_id"])
    return [e for e in seen[:-1] if isinstance(e, Change)]


async def test_writes_round_trip_and_reach_subscribers(live: LiveServer) -> None:
    async with connect(live.url) as client, client.subscribe("w") as sub:
        assert isinstance(await next_event(sub), Subscribed)
        doc = await client.insert("w", {"_id": "a", "n": 1})
        assert doc == {"_id": "a", "_version": 1, "n": 1}
        doc = await client.replace("w", "a", {"n": 2}, if_version=1)
        assert doc == {"_id": "a", "_version": 2, "n": 2}
        doc = await client.patch("w", "a", {"m": 3, "n": None}, if_version=2)
        assert doc == {"_id": "a", "_version": 3, "m": 3}
        assert await client.delete("w", "a", if_version=3) is None
        got = await changes_until_marker(sub, client, "w")
        assert [(c.op, c.key) for c in got] == [
            ("insert", "a"), ("replace", "a"), ("update", "a"), ("delete", "a")]


async def test_a_refused_write_raises_with_the_problem(live: LiveServer) -> None:
    async with connect(live.url) as client:
        await client.insert("w", {"_id": "b"})
        with pytest.raises(WriteError) as conflict:
            await client.insert("w", {"_id": "b"})
        assert conflict.value.status == 409
        with pytest.raises(WriteError) as stale:
            await client.replace("w", "b", {"n": 1}, if_version=7)
        assert stale.value.status == 412
        with pytest.raises(WriteError) as missing:
            await client.patch("w", "nope", {"n": 1})
        assert missing.value.status == 404
        assert missing.value.problem["status"] == 404
        with pytest.raises(WriteError) as bad:
            await client.insert("no such/collection", {"n": 1})
        assert bad.value.status in (404, 422)
        assert bad.value.detail


@pytest.mark.parametrize("kind", ["insert", "replace", "patch", "delete"])
async def test_a_write_whose_reply_is_lost_is_retried_and_applied_once(
        live: LiveServer, kind: str) -> None:
    """The server applied the write; the reply never came: the retry, with the same
    key, gets the original answer and the change happens once."""
    async with ReplyDropper("127.0.0.1", live.port) as proxy, \
            connect(live.url) as watcher, watcher.subscribe("w") as sub, \
            connect(proxy.url, write_delay=no_wait) as client:
        assert isinstance(await next_event(sub), Subscribed)
        await watcher.insert("w", {"_id": "a", "n": 1})
        proxy.drop = 1
        if kind == "insert":
            result = await client.insert("w", {"_id": "b", "n": 1})
            assert result == {"_id": "b", "_version": 1, "n": 1}  # not a 409
        elif kind == "replace":
            result = await client.replace("w", "a", {"n": 2}, if_version=1)
            assert result == {"_id": "a", "_version": 2, "n": 2}  # not a 412
        elif kind == "patch":
            result = await client.patch("w", "a", {"n": 2}, if_version=1)
            assert result == {"_id": "a", "_version": 2, "n": 2}
        else:
            assert await client.delete("w", "a", if_version=1) is None  # not a 404
        assert proxy.dropped == 1
        got = await changes_until_marker(sub, watcher, "w")
        assert [c.op for c in got] == ["insert", {"insert": "insert", "replace": "replace",
                                                  "patch": "update", "delete": "delete"}[kind]]


@pytest.mark.driver_blind
async def test_a_503_is_retried_with_one_key_then_given_up() -> None:
    stored = (201, b'{"_id":"a","_version":1,"n":1}')
    client = Client("http://127.0.0.1:1", write_delay=no_wait)
    try:
        with flaky_server([UNAVAILABLE, UNAVAILABLE, stored]) as (url, seen):
            client.http_url = url
            assert await client.insert("w", {"n": 1}) == {"_id": "a", "_version": 1, "n": 1}
        assert [m for m, _ in seen] == ["POST"] * 3
        assert len({k for _, k in seen}) == 1  # one logical write, one key
        with flaky_server([UNAVAILABLE]) as (url, seen):
            other = Client(url, write_delay=no_wait)
            try:
                with pytest.raises(WriteError) as down:
                    await other.delete("w", "a")
            finally:
                await other.close()
        assert down.value.status == 503
        assert down.value.detail == "database down"
        assert len(seen) == WRITE_ATTEMPTS
        assert len({k for _, k in seen}) == 1
    finally:
        await client.close()


@pytest.mark.driver_blind
async def test_a_server_that_never_answers_is_a_write_error_after_every_attempt() -> None:
    client = Client(f"http://127.0.0.1:{free_port()}", write_delay=no_wait)
    try:
        with pytest.raises(WriteError) as unreachable:
            await client.insert("w", {"n": 1})
    finally:
        await client.close()
    assert unreachable.value.status == 0
    assert "no answer from http://127.0.0.1:" in str(unreachable.value)


def test_http_url_is_the_rest_base_of_a_ws_or_http_url() -> None:
    assert http_url("ws://h:8000/ws") == "http://h:8000"
    assert http_url("wss://h/rt/ws") == "https://h/rt"
    assert http_url("http://h:8000/") == "http://h:8000"
    with pytest.raises(ValueError, match="not an http"):
        http_url("ftp://h")

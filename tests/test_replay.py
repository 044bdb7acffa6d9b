"""Replay from a point in time, end to end: ``since_time`` over WebSocket and the
REST changes feed, against a real server and database.

The point in time is always the ``ts`` of a change the test saw (the commit's
wall time, as the server reports it), never the test's own clock.
"""

from __future__ import annotations

from typing import Any

import httpx

from realtime import protocol
from tests.helpers import LiveServer, WSClient, ws_client


async def _write(http: httpx.AsyncClient, collection: str, n: int, **fields: Any) -> None:
    for i in range(n):
        r = await http.post(f"/api/collections/{collection}/documents",
                            json={"n": i, **fields})
        assert r.status_code == 201, r.text


async def _history(c: WSClient, http: httpx.AsyncClient, collection: str,
                   n: int) -> list[dict[str, Any]]:
    """Write ``n`` documents while ``c`` watches: their changes, in commit order."""
    await c.subscribe("watch", collection)
    await _write(http, collection, n, keep=True)
    return await c.changes(n)


def _from(changes: list[dict[str, Any]], ts: str) -> list[str]:
    """The ids of the changes committed at or after ``ts``."""
    return [ch["id"] for ch in changes if ch["ts"] >= ts]


async def test_since_time_replays_what_was_committed_from_then_then_goes_live(
        live: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(live.ws_url) as watcher, ws_client(live.ws_url) as c:
        past = await _history(watcher, http, "orders", 8)
        ts = past[3]["ts"]
        await c.subscribe("s", "orders", since_time=ts)
        await _write(http, "orders", 3, keep=False)  # live, during or after the replay
        later = await watcher.changes(3)
        got = await c.changes(len(_from(past, ts)) + 3)
        assert [ch["id"] for ch in got] == _from(past, ts) + [ch["id"] for ch in later]
        assert {ch["sub"] for ch in got} == {"s"}
        assert await c.drain_until_marker(http) == []  # nothing twice


async def test_since_time_applies_the_filter(live: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(live.ws_url) as watcher, ws_client(live.ws_url) as c:
        past = await _history(watcher, http, "items", 4)
        await _write(http, "items", 2, keep=False)
        await watcher.changes(2)
        await c.subscribe("s", "items", filter={"keep": True}, since_time=past[0]["ts"])
        got = await c.changes(len(_from(past, past[0]["ts"])))
        assert [ch["id"] for ch in got] == _from(past, past[0]["ts"])
        assert await c.drain_until_marker(http) == []


async def test_since_time_older_than_the_oplog_gets_resync_history_lost(
        live: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(live.ws_url) as c:
        await c.subscribe("s", "orders", since_time="1970-01-01T00:00:00Z")
        message = await c.expect("resync")
        assert message == {"type": "resync", "sub": "s",
                           "reason": protocol.ResyncReason.HISTORY_LOST}
        await _write(http, "orders", 1)
        (change,) = await c.changes(1)  # live after the resync
        assert change["op"] == "insert"


async def test_a_bad_since_time_is_refused_with_an_error(live: LiveServer) -> None:
    async with ws_client(live.ws_url) as c:
        for value, code in (("yesterday", "bad_since"), ("2026-01-01T09:00:00", "bad_since")):
            await c.send({"op": "subscribe", "sub": "s", "collection": "x",
                          "since_time": value})
            message = await c.expect("error")
            assert (message["code"], message["sub"]) == (code, "s")
        await c.send({"op": "subscribe", "sub": "s", "collection": "x", "snapshot": True,
                      "since_time": "2026-01-01T09:00:00Z"})
        assert (await c.expect("error"))["code"] == "bad_message"


async def test_rest_changes_pages_follow_next_then_a_subscription_goes_live_from_it(
        live: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(live.ws_url) as watcher, ws_client(live.ws_url) as c:
        past = await _history(watcher, http, "orders", 7)
        ts = past[2]["ts"]
        pages, got = 0, []
        params: dict[str, Any] = {"since_time": ts, "limit": 2}
        while True:
            r = await http.get("/api/collections/orders/changes", params=params)
            assert r.status_code == 200, r.text
            body = r.json()
            assert isinstance(body["next"], str)
            if not body["changes"]:
                break
            assert len(body["changes"]) <= 2
            got += body["changes"]
            pages += 1
            params = {"since": body["next"], "limit": 2}
        assert [ch["id"] for ch in got] == _from(past, ts)
        assert [ch["document"]["n"] for ch in got] == [ch["document"]["n"] for ch in past
                                                       if ch["ts"] >= ts]
        assert {ch["op"] for ch in got} == {"insert"}
        assert pages >= 3
        await c.subscribe("s", "orders", since=params["since"])
        await _write(http, "orders", 1)
        (change,) = await c.changes(1)
        assert change["document"]["n"] == 0
        assert await c.drain_until_marker(http) == []


async def test_rest_changes_apply_the_filter_and_show_updates_and_leaves(
        live: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(live.ws_url) as watcher:
        await watcher.subscribe("w", "tasks")
        r = await http.post("/api/collections/tasks/documents",
                            json={"_id": "t1", "state": "open"})
        assert r.status_code == 201
        (first,) = await watcher.changes(1)
        for state in ("open", "done"):
            r = await http.patch("/api/collections/tasks/documents/t1",
                                 json={"state": state, "touched": True})
            assert r.status_code == 200
        await watcher.changes(2)
    r = await http.get("/api/collections/tasks/changes",
                       params={"since_time": first["ts"], "filter": '{"state":"open"}'})
    assert r.status_code == 200, r.text
    ops = [(ch["op"], ch["key"]) for ch in r.json()["changes"]]
    assert ops == [("insert", "t1"), ("update", "t1"), ("leave", "t1")]


async def test_rest_changes_refuse_bad_parameters_and_lost_history(
        http: httpx.AsyncClient) -> None:
    url = "/api/collections/orders/changes"
    for params in ({}, {"since_time": "2026-01-01T00:00:00Z", "since": "ab"},
                   {"since_time": "noon"}, {"since": "not-hex"}, {"since_time": "x",
                                                                   "limit": 0}):
        r = await http.get(url, params=params)
        assert r.status_code == 400, (params, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    r = await http.get(url, params={"since_time": "1970-01-01T00:00:00Z"})
    assert r.status_code == 410, r.text
    assert r.headers["content-type"] == "application/problem+json"
    for params in ({"since_time": "2999-01-01T00:00:00Z"}, {"since": "ab"}):
        r = await http.get(url, params=params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["detail"].startswith(("since_time is outside", "'since' is not"))


async def test_rest_changes_from_a_time_not_reached_yet_give_no_cursor(
        http: httpx.AsyncClient) -> None:
    r = await http.get("/api/collections/orders/changes",
                       params={"since_time": "2100-01-01T00:00:00Z"})
    assert r.status_code == 200, r.text
    assert r.json() == {"changes": [], "next": None}

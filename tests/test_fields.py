"""Projected subscriptions end to end: a real server, real WebSocket clients, the
database's own projection as the reference.

The property: whatever REST writes happen (inserts, replaces, merge patches,
deletes, documents moving in and out of the filter), a client that applies a
projected subscription's snapshot and changes (``LiveView``, deltas included)
holds exactly what ``find(filter, projection)`` returns (``_version`` aside: an
update that changes no projected field sends nothing, so the client's
``_version`` may lag).
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import AsyncMongoClient

from realtime.client import Change, LiveView, Snapshot
from realtime.config import Settings
from realtime.projection import Projection, check_fields
from tests.helpers import LiveServer, ws_client

FIELDS = ["total", "cust.name"]
_collections = itertools.count()

bodies = st.fixed_dictionaries({}, optional={
    "status": st.sampled_from(["open", "done"]),
    "total": st.integers(0, 3),
    "note": st.sampled_from(["x", "y"]),
    "cust": st.fixed_dictionaries({}, optional={"name": st.sampled_from(["A", "B"]),
                                                "tel": st.integers(0, 2)}),
})
operations = st.lists(st.tuples(st.sampled_from(["insert", "put", "patch", "delete"]),
                                st.sampled_from(["k0", "k1", "k2"]), bodies),
                      min_size=1, max_size=12)


async def _apply(http: httpx.AsyncClient, collection: str, op: str, key: str,
                 body: dict[str, Any]) -> None:
    base = f"/api/collections/{collection}/documents"
    if op == "insert":
        r = await http.post(base, json={"_id": key, **body})
    elif op == "put":
        r = await http.put(f"{base}/{key}", json=body)
    elif op == "patch":
        r = await http.patch(f"{base}/{key}", json=body)
    else:
        r = await http.delete(f"{base}/{key}")
    assert r.status_code in (200, 201, 204, 404, 409), r.text


def _event(message: dict[str, Any]) -> Snapshot | Change:
    if message["type"] == "snapshot":
        return Snapshot(documents=message["documents"], head=message["head"], reload=False)
    return Change(op=message["op"], collection=message["collection"], key=message["key"],
                  id=message["id"], ts=message["ts"], document=message.get("document"),
                  updated=message.get("updated"), removed=message.get("removed"))


def _unversioned(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(({k: v for k, v in d.items() if k != "_version"} for d in docs),
                  key=lambda d: str(d["_id"]))


@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(before=operations, after=operations)
async def test_a_client_applying_projected_changes_holds_the_projected_database_documents(
        live: LiveServer, http: httpx.AsyncClient, settings: Settings,
        before: list[tuple[str, str, dict[str, Any]]],
        after: list[tuple[str, str, dict[str, Any]]]) -> None:
    collection = f"proj{next(_collections)}"
    for op, key, body in before:
        await _apply(http, collection, op, key, body)
    view = LiveView()
    async with ws_client(live.ws_url) as c:
        await c.subscribe("s", collection, filter={"status": "open"}, fields=FIELDS,
                          snapshot=True)
        for op, key, body in after:
            await _apply(http, collection, op, key, body)
        for message in await c.drain_until_marker(http):
            assert message["type"] in ("snapshot", "change"), message
            if message["type"] == "change" and message["op"] == "update" \
                    and "document" not in message:
                assert set(message) >= {"updated", "removed"}
            view.apply(_event(message))
    projection = Projection(check_fields(FIELDS))
    db: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri)
    try:
        expected = await db[settings.database][collection].find(
            {"status": "open"}, projection.mongo()).to_list()
    finally:
        await db.close()
    assert _unversioned(list(view.documents.values())) == _unversioned(expected)


async def test_snapshot_and_insert_carry_only_the_fields_and_an_unrelated_update_nothing(
        live: LiveServer, http: httpx.AsyncClient) -> None:
    docs = "/api/collections/orders/documents"
    await http.post(docs, json={"_id": "o1", "total": 5, "note": "a", "cust": {"name": "A",
                                                                            "tel": 1}})
    async with ws_client(live.ws_url) as c:
        await c.subscribe("s", "orders", fields=FIELDS, snapshot=True)
        snapshot = await c.expect("snapshot")
        assert snapshot["documents"] == [{"_id": "o1", "total": 5, "cust": {"name": "A"},
                                          "_version": 1}]
        await http.patch(f"{docs}/o1", json={"note": "b", "cust": {"tel": 2}})  # nothing
        await http.patch(f"{docs}/o1", json={"total": 6})
        (update,) = await c.changes(1)
        assert (update["op"], update["updated"], update["removed"]) == (
            "update", {"_version": 3, "total": 6}, [])
        assert "document" not in update
        await http.post(docs, json={"_id": "o2", "total": 1, "note": "c"})
        (insert,) = await c.changes(1)
        assert insert["document"] == {"_id": "o2", "total": 1, "_version": 1}
        assert await c.drain_until_marker(http) == []


async def test_rest_lists_and_changes_take_fields(live: LiveServer,
                                                 http: httpx.AsyncClient) -> None:
    docs = "/api/collections/people/documents"
    async with ws_client(live.ws_url) as c:
        head = (await c.subscribe("w", "people"))["head"]
    r = await http.post(docs, json={"_id": "p1", "name": "Ann", "age": 3,
                                    "addr": {"city": "X", "zip": "1"}})
    assert r.status_code == 201
    r = await http.get(docs, params={"fields": "name, addr.city"})
    assert r.status_code == 200, r.text
    assert r.json()["documents"] == [{"_id": "p1", "name": "Ann", "addr": {"city": "X"},
                                      "_version": 1}]
    for bad in ("", "a,,b", "$x"):
        r = await http.get(docs, params={"fields": bad})
        assert r.status_code == 400, (bad, r.text)
        assert orjson.loads(r.content)["invalid_params"][0]["name"] == "fields"
    await http.patch(f"{docs}/p1", json={"age": 4})  # no projected field
    await http.patch(f"{docs}/p1", json={"name": "Bo"})
    r = await http.get("/api/collections/people/changes", params={"since": head,
                                                                   "fields": "name"})
    assert r.status_code == 200, r.text
    changes = r.json()["changes"]
    assert [(ch["op"], ch.get("document"), ch.get("updated")) for ch in changes] == [
        ("insert", {"_id": "p1", "name": "Ann", "_version": 1}, None),
        ("update", None, {"_version": 3, "name": "Bo"})]

"""Tests for the REST API (realtime.api.rest + realtime.store) on a real SecantusDB."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from bson import ObjectId

from realtime.codec import key_to_json
from realtime.config import Settings
from realtime.paging import decode_cursor, encode_cursor, parse_sort
from tests.helpers import apikey_settings, asgi_client, bearer, running_app

DOCS = "/api/collections/things/documents"
HEX24 = re.compile(r"^[0-9a-f]{24}$")


# ---------------------------------------------------------------------- helpers


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    """Assert ``r`` is an RFC 9457 problem with ``status``; return its body."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json", r.headers
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:realtime:problem:")
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert "Traceback" not in r.text
    return body


async def count(app: Any, collection: str = "things") -> int:
    n = 0
    async for _ in app.state.services.db.collection(collection).find({}):
        n += 1
    return n


async def raw_docs(app: Any, collection: str, query: dict[str, Any] | None = None,
                   sort: Any = None) -> list[dict[str, Any]]:
    coll = app.state.services.db.collection(collection)
    return [d async for d in coll.find(query or {}, sort=sort, batch_size=1000)]


async def post(client: httpx.AsyncClient, doc: Any, path: str = DOCS) -> dict[str, Any]:
    r = await client.post(path, json=doc)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def etag(r: httpx.Response) -> str:
    return r.headers["etag"]


# ------------------------------------------------------------------------- CRUD


async def test_insert_then_get(client: httpx.AsyncClient) -> None:
    r = await client.post(DOCS, json={"name": "a", "n": 1, "tags": ["x"], "m": {"k": None}})
    assert r.status_code == 201, r.text
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert HEX24.match(doc["_id"])
    assert doc == {"_id": doc["_id"], "_version": 1, "name": "a", "n": 1, "tags": ["x"],
                   "m": {"k": None}}
    assert r.headers["location"] == f"{DOCS}/{doc['_id']}"
    assert etag(r) == '"1"'

    g = await client.get(r.headers["location"])
    assert g.status_code == 200
    assert g.json() == doc
    assert etag(g) == '"1"'


async def test_insert_with_ids(client: httpx.AsyncClient, app: Any) -> None:
    oid = str(ObjectId())
    r = await client.post(DOCS, json={"_id": oid, "v": 1})
    assert r.status_code == 201
    assert r.json()["_id"] == oid
    stored = await raw_docs(app, "things", {"_id": ObjectId(oid)})
    assert len(stored) == 1, "a 24-hex _id is stored as an ObjectId"

    for key in ("order-1", "a b/c?d#e%f", "ünï", "x" * 1024):
        r = await client.post(DOCS, json={"_id": key})
        assert r.status_code == 201, r.text
        assert r.headers["location"] == f"{DOCS}/{quote(key, safe='')}"
        g = await client.get(r.headers["location"])
        assert g.status_code == 200, (key, g.text)
        assert g.json() == {"_id": key, "_version": 1}


async def test_insert_duplicate_is_409(client: httpx.AsyncClient, app: Any) -> None:
    await post(client, {"_id": "dup", "n": 1})
    body = problem(await client.post(DOCS, json={"_id": "dup", "n": 2}), 409)
    assert "already exists" in body["detail"]
    assert (await client.get(f"{DOCS}/dup")).json()["n"] == 1
    assert await count(app) == 1


async def test_client_cannot_set_version(client: httpx.AsyncClient) -> None:
    doc = await post(client, {"_id": "v", "_version": 42})
    assert doc["_version"] == 1
    r = await client.put(f"{DOCS}/v", json={"_version": 99, "a": 1})
    assert r.json()["_version"] == 2


async def test_get_missing_is_404(client: httpx.AsyncClient) -> None:
    problem(await client.get(f"{DOCS}/nope"), 404)
    problem(await client.get(f"{DOCS}/{ObjectId()}"), 404)


async def test_put_upsert_then_replace(client: httpx.AsyncClient, app: Any) -> None:
    r = await client.put(f"{DOCS}/p1", json={"a": 1, "b": {"c": 2}})
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"{DOCS}/p1"
    assert etag(r) == '"1"'
    assert r.json() == {"_id": "p1", "_version": 1, "a": 1, "b": {"c": 2}}

    r = await client.put(f"{DOCS}/p1", json={"_id": "p1", "z": True})
    assert r.status_code == 200, r.text
    assert etag(r) == '"2"'
    assert r.json() == {"_id": "p1", "_version": 2, "z": True}
    assert (await client.get(f"{DOCS}/p1")).json() == r.json()

    oid = ObjectId()
    r = await client.put(f"{DOCS}/{oid}", json={"x": 1})
    assert r.status_code == 201
    assert r.json()["_id"] == str(oid)
    assert await raw_docs(app, "things", {"_id": oid})


async def test_put_body_id_must_match_path(client: httpx.AsyncClient, app: Any) -> None:
    body = problem(await client.put(f"{DOCS}/p1", json={"_id": "other"}), 422)
    assert "differs" in body["detail"]
    problem(await client.put(f"{DOCS}/{ObjectId()}", json={"_id": str(ObjectId())}), 422)
    assert await count(app) == 0


async def test_if_match_on_put(client: httpx.AsyncClient, app: Any) -> None:
    url = f"{DOCS}/im"
    # If-Match on an absent document: 412, nothing created
    problem(await client.put(url, json={"a": 1}, headers={"If-Match": '"1"'}), 412)
    problem(await client.put(url, json={"a": 1}, headers={"If-Match": "*"}), 412)
    assert await count(app) == 0

    await client.put(url, json={"a": 1})
    await client.put(url, json={"a": 2})  # version 2
    problem(await client.put(url, json={"a": 3}, headers={"If-Match": '"1"'}), 412)
    assert (await client.get(url)).json() == {"_id": "im", "_version": 2, "a": 2}

    r = await client.put(url, json={"a": 3}, headers={"If-Match": '"2"'})
    assert r.status_code == 200
    assert etag(r) == '"3"'
    r = await client.put(url, json={"a": 4}, headers={"If-Match": 'W/"3"'})
    assert r.status_code == 200
    assert etag(r) == '"4"'
    r = await client.put(url, json={"a": 5}, headers={"If-Match": "4"})
    assert r.status_code == 200
    assert etag(r) == '"5"'
    r = await client.put(url, json={"a": 6}, headers={"If-Match": "*"})
    assert r.status_code == 200
    assert etag(r) == '"6"'

    for bad in ("abc", '"1", "2"', '"-1"', '""', "W/", '"1'):
        problem(await client.put(url, json={"a": 0}, headers={"If-Match": bad}), 400)
    assert (await client.get(url)).json()["a"] == 6


async def test_patch_merge_semantics(client: httpx.AsyncClient) -> None:
    await client.put(f"{DOCS}/m", json={
        "title": "Goodbye!",
        "author": {"givenName": "John", "familyName": "Doe"},
        "tags": ["example", "sample"],
        "content": "This will be unchanged",
    })
    # The example of RFC 7396 section 3.
    r = await client.patch(
        f"{DOCS}/m",
        content=orjson.dumps({"title": "Hello!", "phoneNumber": "+01-123-456-7890",
                              "author": {"familyName": None}, "tags": ["example"]}),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 200, r.text
    assert etag(r) == '"2"'
    assert r.json() == {
        "_id": "m", "_version": 2,
        "title": "Hello!",
        "author": {"givenName": "John"},
        "tags": ["example"],
        "content": "This will be unchanged",
        "phoneNumber": "+01-123-456-7890",
    }
    assert (await client.get(f"{DOCS}/m")).json() == r.json()

    # nested objects merge, new nested objects lose their nulls, top-level null removes
    r = await client.patch(f"{DOCS}/m", json={"author": {"x": {"y": 1, "z": None}},
                                              "content": None, "absent": None})
    assert r.status_code == 200
    body = r.json()
    assert body["author"] == {"givenName": "John", "x": {"y": 1}}
    assert "content" not in body
    assert "absent" not in body
    assert body["_version"] == 3

    # a patch that changes nothing writes nothing
    r = await client.patch(f"{DOCS}/m", json={"title": "Hello!", "nothing": None})
    assert r.status_code == 200
    assert r.json()["_version"] == 3
    # _version in the patch is ignored; the same _id is fine
    r = await client.patch(f"{DOCS}/m", json={"_version": 100, "_id": "m", "k": 1})
    assert r.json()["_version"] == 4
    assert r.json()["k"] == 1
    # types matter: 1 -> 1.0 -> true are all changes
    for value, version in ((1.0, 5), (True, 6), (1, 7)):
        r = await client.patch(f"{DOCS}/m", json={"k": value})
        assert r.json()["_version"] == version
        assert type(r.json()["k"]) is type(value)


async def test_patch_errors(client: httpx.AsyncClient) -> None:
    problem(await client.patch(f"{DOCS}/nope", json={"a": 1}), 404)
    problem(await client.patch(f"{DOCS}/nope", json={"a": 1}, headers={"If-Match": '"1"'}),
            412)
    await client.put(f"{DOCS}/p", json={"a": 1})
    body = problem(await client.patch(f"{DOCS}/p", json={"_id": "q"}), 422)
    assert "_id" in body["detail"]
    problem(await client.patch(f"{DOCS}/p", json={"_id": None}), 422)
    problem(await client.patch(f"{DOCS}/p", json=[{"op": "add"}]), 422)
    problem(await client.patch(f"{DOCS}/p", json="x"), 422)
    problem(await client.patch(f"{DOCS}/p", json={"a": {"$set": 1}}), 422)
    body = problem(await client.patch(
        f"{DOCS}/p", content=b'[{"op":"add","path":"/a","value":1}]',
        headers={"Content-Type": "application/json-patch+json"}), 415)
    assert "merge-patch" in body["detail"]
    problem(await client.patch(f"{DOCS}/p", json={"a": 2}, headers={"If-Match": '"7"'}), 412)
    r = await client.patch(f"{DOCS}/p", json={"a": 2}, headers={"If-Match": '"1"'})
    assert r.status_code == 200
    assert etag(r) == '"2"'
    assert (await client.get(f"{DOCS}/p")).json() == {"_id": "p", "_version": 2, "a": 2}


async def test_patch_is_an_update_in_the_change_stream(client: httpx.AsyncClient,
                                                       app: Any) -> None:
    db = app.state.services.db
    await client.put(f"{DOCS}/cs", json={"a": 1, "b": {"c": 1}, "gone": True})
    stream = await db.watch([{"$match": {"ns.coll": "things"}}], max_await_time_ms=100)
    try:
        r = await client.patch(f"{DOCS}/cs", json={"a": 2, "b": {"d": 2}, "gone": None})
        assert r.status_code == 200
        async with asyncio.timeout(10):
            event = None
            while event is None:
                event = await stream.try_next()
    finally:
        await stream.close()
    assert event["operationType"] == "update"
    desc = event["updateDescription"]
    assert isinstance(desc["updatedFields"].pop("_op"), str)  # the operation id
    assert desc["updatedFields"] == {"a": 2, "b": {"c": 1, "d": 2}, "_version": 2}
    assert desc["removedFields"] == ["gone"]


async def test_delete(client: httpx.AsyncClient, app: Any) -> None:
    await client.put(f"{DOCS}/d", json={"a": 1})
    await client.put(f"{DOCS}/d", json={"a": 2})
    problem(await client.delete(f"{DOCS}/d", headers={"If-Match": '"1"'}), 412)
    assert await count(app) == 1
    r = await client.delete(f"{DOCS}/d", headers={"If-Match": '"2"'})
    assert r.status_code == 204
    assert r.content == b""
    problem(await client.get(f"{DOCS}/d"), 404)
    problem(await client.delete(f"{DOCS}/d"), 404)
    problem(await client.delete(f"{DOCS}/d", headers={"If-Match": "*"}), 412)
    await client.put(f"{DOCS}/d", json={})
    assert (await client.delete(f"{DOCS}/d")).status_code == 204
    assert await count(app) == 0


async def test_documents_without_version_count_as_version_zero(
        client: httpx.AsyncClient, app: Any) -> None:
    coll = app.state.services.db.collection("things")
    await coll.insert_one({"_id": "legacy", "a": 1})
    r = await client.get(f"{DOCS}/legacy")
    assert etag(r) == '"0"'
    r = await client.patch(f"{DOCS}/legacy", json={"b": 2}, headers={"If-Match": '"0"'})
    assert r.status_code == 200, r.text
    assert r.json() == {"_id": "legacy", "a": 1, "_version": 1, "b": 2}
    await coll.insert_one({"_id": "legacy2"})
    r = await client.put(f"{DOCS}/legacy2", json={"x": 1})
    assert r.status_code == 200
    assert r.json()["_version"] == 1


async def test_concurrent_patches_lose_nothing(client: httpx.AsyncClient) -> None:
    await client.put(f"{DOCS}/race", json={})
    n = 12
    results = await asyncio.gather(*(
        client.patch(f"{DOCS}/race", json={f"f{i}": i}) for i in range(n)))
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    doc = (await client.get(f"{DOCS}/race")).json()
    assert doc["_version"] == n + 1
    assert all(doc[f"f{i}"] == i for i in range(n))
    assert sorted(r.json()["_version"] for r in results) == list(range(2, n + 2))


async def test_concurrent_puts_each_get_a_version(client: httpx.AsyncClient) -> None:
    n = 10
    results = await asyncio.gather(*(
        client.put(f"{DOCS}/race2", json={"i": i}) for i in range(n)))
    assert sorted(r.status_code for r in results) == [200] * (n - 1) + [201]
    assert sorted(r.json()["_version"] for r in results) == list(range(1, n + 1))
    assert (await client.get(f"{DOCS}/race2")).json()["_version"] == n


# ------------------------------------------------------------------------- bulk


async def test_bulk_all_inserted(client: httpx.AsyncClient, app: Any) -> None:
    r = await client.post(f"{DOCS}:bulk", json=[{"_id": "a"}, {"n": 2}, {"_id": str(ObjectId())}])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["inserted"] == 3
    assert body["failed"] == 0
    assert [i["status"] for i in body["items"]] == [201, 201, 201]
    assert [i["index"] for i in body["items"]] == [0, 1, 2]
    assert body["items"][0]["_id"] == "a"
    assert HEX24.match(body["items"][1]["_id"])
    assert all(i["_version"] == 1 for i in body["items"])
    assert await count(app) == 3
    r = await client.get(f"{DOCS}/{body['items'][1]['_id']}")
    assert r.json() == {"_id": body["items"][1]["_id"], "_version": 1, "n": 2}


async def test_bulk_duplicate_in_the_middle(client: httpx.AsyncClient, app: Any) -> None:
    await post(client, {"_id": "x"})
    docs = [{"_id": "a"}, {"_id": "b"}, {"_id": "x", "n": 1}, {"_id": "c"}, {"_id": "d"}]
    r = await client.post(f"{DOCS}:bulk", json=docs)
    assert r.status_code == 207, r.text
    body = r.json()
    assert body["inserted"] == 2
    assert body["failed"] == 3
    statuses = [(i["index"], i["status"]) for i in body["items"]]
    assert statuses == [(0, 201), (1, 201), (2, 409), (3, 424), (4, 424)]
    assert "already exists" in body["items"][2]["detail"]
    assert "not attempted" in body["items"][3]["detail"]
    ids = sorted(d["_id"] for d in await raw_docs(app, "things"))
    assert ids == ["a", "b", "x"]
    # a duplicate inside the batch itself
    r = await client.post(f"{DOCS}:bulk", json=[{"_id": "e"}, {"_id": "e"}])
    assert [i["status"] for i in r.json()["items"]] == [201, 409]


async def test_bulk_invalid_item(client: httpx.AsyncClient, app: Any) -> None:
    r = await client.post(f"{DOCS}:bulk", json=[{"a": 1}, {"$bad": 1}, {"b": 2}])
    assert r.status_code == 207
    items = r.json()["items"]
    assert [i["status"] for i in items] == [201, 422, 424]
    assert "$" in items[1]["detail"]
    r = await client.post(f"{DOCS}:bulk", json=[[1], {"b": 2}])
    assert [i["status"] for i in r.json()["items"]] == [422, 424]
    assert await count(app) == 1


async def test_bulk_limits(client: httpx.AsyncClient, app: Any) -> None:
    problem(await client.post(f"{DOCS}:bulk", json={"a": 1}), 422)
    problem(await client.post(f"{DOCS}:bulk", json=[{}] * 1001), 413)
    r = await client.post(f"{DOCS}:bulk", json=[])
    assert r.status_code == 200
    assert r.json() == {"inserted": 0, "failed": 0, "items": []}
    assert await count(app) == 0
    r = await client.post(f"{DOCS}:bulk", json=[{"i": i} for i in range(1000)])
    assert r.status_code == 200
    assert r.json()["inserted"] == 1000
    problem(await client.get(f"{DOCS}:bulk"), 405)


# ------------------------------------------------------------------ collections


async def test_collections_listed(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/collections")
    assert r.status_code == 200
    assert r.json() == {"collections": []}
    await post(client, {"a": 1}, "/api/collections/zeta/documents")
    await post(client, {"a": 1}, "/api/collections/alpha/documents")
    await client.put("/api/collections/Mid-dle_1/documents/x", json={})
    r = await client.get("/api/collections")
    assert r.json() == {"collections": ["Mid-dle_1", "alpha", "zeta"]}


async def test_collections_allow_list(settings: Settings) -> None:
    limited = settings.model_copy(update={"collections": ["orders", "items"]})
    async with running_app(limited) as app, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        r = await c.get("/api/collections")
        assert r.json() == {"collections": ["items", "orders"]}
        assert (await c.post("/api/collections/orders/documents", json={})).status_code == 201
        body = problem(await c.post("/api/collections/other/documents", json={}), 404)
        assert "not exposed" in body["detail"]
        problem(await c.get("/api/collections/other/documents"), 404)
        problem(await c.get("/api/collections/other/documents/x"), 404)
        assert await count(app, "other") == 0


# ------------------------------------------------------------------- pagination


async def seed(client: httpx.AsyncClient, n: int) -> list[dict[str, Any]]:
    """``n`` documents: half with string ids, half with ObjectIds; ``g`` has many
    duplicates, is missing in 10 % and null in ~6 %, a few are strings or floats
    equal to ints; ``m.k`` is a dotted path, often missing."""
    docs: list[dict[str, Any]] = []
    for i in range(n):
        doc: dict[str, Any] = {"i": i, "h": i % 3, "name": f"n{i % 50:02d}"}
        if i % 2:
            doc["_id"] = f"s{(i * 7919) % n:05d}"
        if i % 10 == 3:
            pass  # g missing
        elif i % 17 == 5:
            doc["g"] = None
        elif i % 41 == 7:
            doc["g"] = f"str{i % 3}"
        elif i % 23 == 1:
            doc["g"] = float(i % 13)  # sorts equal to the int
        else:
            doc["g"] = i % 13
        if i % 4 == 0:
            doc["m"] = {"k": i % 5}
        elif i % 4 == 1:
            doc["m"] = 7  # m.k missing through a non-object
        docs.append(doc)
    for start in range(0, n, 1000):
        r = await client.post(f"{DOCS}:bulk", json=docs[start:start + 1000])
        assert r.status_code == 200, r.text
    return docs


async def read_pages(client: httpx.AsyncClient, limit: int,
                     **params: Any) -> tuple[list[dict[str, Any]], int]:
    out: list[dict[str, Any]] = []
    pages = 0
    after: str | None = None
    while True:
        query = {"limit": limit, **params}
        if after is not None:
            query["after"] = after
        r = await client.get(DOCS, params=query)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["documents"]) <= limit
        out.extend(body["documents"])
        pages += 1
        after = body["next"]
        if after is None:
            return out, pages
        assert len(body["documents"]) == limit
        assert pages <= 10_000


def keys(docs: list[dict[str, Any]]) -> list[Any]:
    return [key_to_json(d["_id"]) for d in docs]


def as_filter(value: dict[str, Any]) -> str:
    return orjson.dumps(value).decode()


Case = tuple[dict[str, Any], list[tuple[str, int]], dict[str, Any]]

ALL_CASES: list[Case] = [
    ({"sort": "g"}, [("g", 1), ("_id", 1)], {}),
    ({"sort": "-g,+name"}, [("g", -1), ("name", 1), ("_id", 1)], {}),
    ({"sort": "-g", "filter": as_filter({"h": {"$in": [0, 2]}})},
     [("g", -1), ("_id", -1)], {"h": {"$in": [0, 2]}}),
    ({"sort": "-g"}, [("g", -1), ("_id", -1)], {}),
    ({"sort": "g", "filter": as_filter({"h": 1, "i": {"$gte": 100}})},
     [("g", 1), ("_id", 1)], {"h": 1, "i": {"$gte": 100}}),
    ({"sort": "m.k,-g"}, [("m.k", 1), ("g", -1), ("_id", -1)], {}),
    ({"sort": "-m.k"}, [("m.k", -1), ("_id", -1)], {}),
    ({"sort": "name,-g"}, [("name", 1), ("g", -1), ("_id", -1)], {}),
    ({"sort": "-_id"}, [("_id", -1)], {}),
    ({}, [("_id", 1)], {}),
]


async def check_pages(client: httpx.AsyncClient, app: Any, cases: list[Case],
                      limit: int) -> None:
    """Every case visits each matching document exactly once, in the database's order."""
    for params, sort, query in cases:
        got, pages = await read_pages(client, limit, **params)
        expected = await raw_docs(app, "things", query, sort)
        assert len(got) == len(expected), params
        assert len(set(keys(got))) == len(got), f"duplicates with {params}"
        assert keys(got) == keys(expected), f"order differs with {params}"
        assert pages == max(1, -(-len(expected) // limit)), params


async def test_keyset_pagination_2500_documents(client: httpx.AsyncClient, app: Any) -> None:
    n = 2500
    await seed(client, n)
    assert await count(app) == n
    # ascending, descending on two keys, descending with a filter; 2,500 / 500 is an
    # exact number of pages, so the last page must say there is no next one.
    # (Page boundaries at every position: test_keyset_pagination_mixed_types.)
    await check_pages(client, app, ALL_CASES[:3], 500)


async def test_keyset_pagination_mixed_types(client: httpx.AsyncClient, app: Any) -> None:
    await seed(client, 120)
    await check_pages(client, app, ALL_CASES, 7)
    await check_pages(client, app, ALL_CASES[:1], 1)  # every document is a page boundary
    await check_pages(client, app, ALL_CASES[:2], 120)


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_keyset_pagination_stress(client: httpx.AsyncClient, app: Any) -> None:
    await seed(client, 2500)
    await check_pages(client, app, ALL_CASES, 100)


async def test_skip_with_and_without_after(client: httpx.AsyncClient) -> None:
    for i in range(30):
        await client.put(f"{DOCS}/k{i:02d}", json={"g": i % 4})
    r = await client.get(DOCS, params={"limit": 5, "skip": 3})
    assert keys(r.json()["documents"]) == [f"k{i:02d}" for i in range(3, 8)]
    first = (await client.get(DOCS, params={"limit": 5})).json()
    r = await client.get(DOCS, params={"limit": 5, "skip": 2, "after": first["next"]})
    assert keys(r.json()["documents"]) == [f"k{i:02d}" for i in range(7, 12)]
    r = await client.get(DOCS, params={"limit": 5, "skip": 100})
    assert r.json() == {"documents": [], "next": None}


async def test_list_empty_and_unknown_collection(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/collections/neverwritten/documents")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"documents": [], "next": None}


async def test_list_filter_by_object_id(client: httpx.AsyncClient) -> None:
    oid = str(ObjectId())
    await post(client, {"_id": oid, "a": 1})
    await post(client, {"a": 2})
    r = await client.get(DOCS, params={"filter": orjson.dumps({"_id": oid}).decode()})
    assert keys(r.json()["documents"]) == [oid]
    r = await client.get(DOCS, params={"filter": '{"a": {"$gt": 1}}'})
    assert [d["a"] for d in r.json()["documents"]] == [2]


async def test_count_matches_the_list(client: httpx.AsyncClient) -> None:
    """``documents:count`` counts what the list pages through, with the same filter."""
    count_url = f"{DOCS}:count"
    assert (await client.get(count_url)).json() == {"count": 0}
    r = await client.post(f"{DOCS}:bulk", json=[{"n": i, "odd": i % 2 == 1} for i in range(25)])
    assert r.status_code == 200
    r = await client.get(count_url)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"count": 25}
    r = await client.get(count_url, params={"filter": '{"odd": true, "n": {"$gte": 10}}'})
    assert r.json() == {"count": 7}
    listed, _ = await read_pages(client, 1000, filter='{"odd": true, "n": {"$gte": 10}}')
    assert len(listed) == 7
    assert (await client.get("/api/collections/neverwritten/documents:count")).json() == {
        "count": 0}
    assert "not valid JSON" in problem(await client.get(count_url, params={"filter": "{"}), 400)[
        "detail"]
    assert "$where" in problem(await client.get(count_url, params={"filter": '{"$where": "1"}'}),
                               400)["detail"]
    problem(await client.get(count_url, params={"limit": "3"}), 400)  # not a count parameter
    problem(await client.get("/api/collections/system.x/documents:count"), 400)


async def test_count_is_tenant_and_scope_checked(settings: Settings) -> None:
    keys_ = {"ka": {"scopes": ["read:*", "write:*"], "tenant": "a"},
             "kb": {"scopes": ["read:orders"], "tenant": "b"},
             "logs": {"scopes": ["read:logs", "write:logs"]},
             "root": {"scopes": ["read:*", "write:*"]}}
    limited = apikey_settings(settings, keys_, collections=["orders", "logs"])
    async with asgi_client(limited) as c:
        orders = "/api/collections/orders/documents"
        for i in range(3):
            assert (await c.post(orders, json={"i": i}, headers=bearer("ka"))).status_code == 201
        await c.post(orders, json={"i": 9, "tenant": "b"}, headers=bearer("root"))
        await c.post(orders, json={"i": 10}, headers=bearer("root"))
        assert (await c.get(f"{orders}:count", headers=bearer("ka"))).json() == {"count": 3}
        assert (await c.get(f"{orders}:count", headers=bearer("kb"))).json() == {"count": 1}
        escape = '{"$or": [{"tenant": "a"}, {"tenant": {"$ne": "zzz"}}]}'
        r = await c.get(f"{orders}:count", params={"filter": escape}, headers=bearer("kb"))
        assert r.json() == {"count": 1}
        assert (await c.get(f"{orders}:count", headers=bearer("root"))).json() == {"count": 5}
        problem(await c.get(f"{orders}:count"), 401)
        problem(await c.get(f"{orders}:count", headers=bearer("logs")), 403)
        problem(await c.get("/api/collections/other/documents:count", headers=bearer("root")),
                404)


def test_cursor_roundtrip_keeps_bson_types() -> None:
    import datetime as dt

    from bson import Binary, Decimal128, Regex

    sort = parse_sort("a,-b,c,d,e,f,g")
    values = [ObjectId(), dt.datetime(2020, 1, 2, 3, 4, 5, 6000, tzinfo=dt.UTC),
              Decimal128("1.5"), b"\x00\xff", Binary(b"ab", 4), {"x": [1, 2.5, None]},
              Regex("^a"), "id"]
    token = encode_cursor(sort, values)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    back = decode_cursor(token, sort)
    assert back[:6] == values[:6]
    assert [type(v) for v in back[:6]] == [type(v) for v in values[:6]]
    assert back[6].pattern == "^a"
    assert back[7] == "id"
    assert decode_cursor(encode_cursor(parse_sort(None), [float("nan")]),
                         parse_sort(None))[0] != 0


# -------------------------------------------------------------------- bad input

NUL_KEY = b'{"a\\u0000b": 1}'


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status"),
    [
        ("POST", DOCS, {}, b'{"a": 1', 400),
        ("POST", DOCS, {}, b"{'a': 1}", 400),
        ("POST", DOCS, {}, b"", 400),
        ("POST", DOCS, {}, b"\xff\xfe{}", 400),
        ("POST", DOCS, {}, b"[1, 2]", 422),
        ("POST", DOCS, {}, b'"a string"', 422),
        ("POST", DOCS, {}, b"null", 422),
        ("POST", DOCS, {}, b'{"$set": {"a": 1}}', 422),
        ("POST", DOCS, {}, b'{"a": {"$gt": 1}}', 422),
        ("POST", DOCS, {}, b'{"a.b": 1}', 422),
        ("POST", DOCS, {}, b'{"a": [{"b.c": 1}]}', 422),
        ("POST", DOCS, {}, NUL_KEY, 422),
        ("POST", DOCS, {}, b'{"_id": 5}', 422),
        ("POST", DOCS, {}, b'{"_id": ""}', 422),
        ("POST", DOCS, {}, b'{"_id": {"a": 1}}', 422),
        ("POST", DOCS, {}, b'{"_id": null}', 422),
        ("POST", DOCS, {"Content-Type": "text/plain"}, b'{"a": 1}', 415),
        ("POST", DOCS, {"Content-Type": "application/x-www-form-urlencoded"}, b"a=1", 415),
        ("POST", DOCS, {"Content-Type": "application/json; charset=latin-1"}, b"{}", 415),
        ("POST", DOCS, {"Content-Type": ""}, b"{}", 415),
        ("POST", DOCS, {"Content-Type": "application/jsonx"}, b"{}", 415),
        ("POST", f"{DOCS}:bulk", {"Content-Type": "text/csv"}, b"[]", 415),
        ("POST", f"{DOCS}:bulk", {}, b"[{}, ", 400),
        ("PUT", f"{DOCS}/x", {}, b"{", 400),
        ("PUT", f"{DOCS}/x", {}, b"[]", 422),
        ("PUT", f"{DOCS}/x", {}, NUL_KEY, 422),
        ("PUT", f"{DOCS}/x", {"Content-Type": "text/plain"}, b"{}", 415),
        ("PUT", f"{DOCS}/x", {"If-Match": "nope"}, b"{}", 400),
        ("PUT", f"{DOCS}/{'x' * 1025}", {}, b"{}", 400),
        ("PUT", f"{DOCS}/a%00b", {}, b"{}", 400),
        ("PATCH", f"{DOCS}/x", {}, b"{", 400),
        ("GET", f"{DOCS}/{'y' * 1025}", {}, None, 400),
        ("DELETE", f"{DOCS}/{'y' * 1025}", {}, None, 400),
        ("DELETE", f"{DOCS}/", {}, None, 400),
        ("GET", "/api/collections/1abc/documents", {}, None, 400),
        ("POST", "/api/collections/1abc/documents", {}, b"{}", 400),
        ("POST", "/api/collections/system.users/documents", {}, b"{}", 400),
        ("GET", "/api/collections/system.users/documents", {}, None, 400),
        ("GET", "/api/collections/system.users/documents/x", {}, None, 400),
        ("PUT", "/api/collections/system.users/documents/x", {}, b"{}", 400),
        ("POST", "/api/collections/system/documents", {}, b"{}", 400),
        ("POST", "/api/collections/a$b/documents", {}, b"{}", 400),
        ("POST", f"/api/collections/{'c' * 65}/documents", {}, b"{}", 400),
        ("POST", "/api/collections/a%20b/documents", {}, b"{}", 400),
        ("POST", f"{DOCS}:bulk", {}, b'{"a": 1}', 422),
        ("POST", "/api/collections/things/nothing", {}, b"{}", 404),
    ],
)
async def test_bad_input(client: httpx.AsyncClient, app: Any, method: str, path: str,
                         headers: dict[str, str], body: bytes | None, status: int) -> None:
    headers = {"Content-Type": "application/json", **headers} if body is not None else headers
    r = await client.request(method, path, content=body, headers=headers)
    problem(r, status)
    assert await count(app) == 0
    assert (await client.get("/api/collections")).json() == {"collections": []}


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"filter": '{"$where": "this.a == 1"}'}, "$where"),
        ({"filter": '{"a": {"$regex": "^x"}}'}, "$regex"),
        ({"filter": '{"$expr": {"$eq": ["$a", 1]}}'}, "$expr"),
        ({"filter": '{"a": {"$function": {}}}'}, "$function"),
        ({"filter": "{not json"}, "JSON"),
        ({"filter": "[1]"}, ""),
        ({"sort": "$a"}, "sort"),
        ({"sort": "a..b"}, "sort"),
        ({"sort": "a,,b"}, "sort"),
        ({"sort": "a,a"}, "twice"),
        ({"limit": "0"}, ""),
        ({"limit": "1001"}, ""),
        ({"limit": "x"}, ""),
        ({"skip": "-1"}, ""),
        ({"after": "not a cursor!"}, "cursor"),
        ({"after": "e30"}, "cursor"),  # base64 of {}
    ],
)
async def test_bad_list_parameters(client: httpx.AsyncClient, params: dict[str, str],
                                   fragment: str) -> None:
    body = problem(await client.get(DOCS, params=params), 400)
    assert fragment in orjson.dumps(body).decode()


async def test_cursor_for_another_sort_is_400(client: httpx.AsyncClient) -> None:
    for i in range(3):
        await post(client, {"g": i})
    r = await client.get(DOCS, params={"limit": 1, "sort": "g"})
    cursor = r.json()["next"]
    assert cursor
    body = problem(await client.get(DOCS, params={"limit": 1, "sort": "-g", "after": cursor}),
                   400)
    assert "different sort" in body["detail"]


async def test_huge_body_is_413(client: httpx.AsyncClient, app: Any, settings: Settings) -> None:
    big = b'{"a": "' + b"x" * settings.max_body_bytes + b'"}'
    problem(await client.post(DOCS, content=big,
                              headers={"Content-Type": "application/json"}), 413)
    problem(await client.put(f"{DOCS}/x", content=big,
                             headers={"Content-Type": "application/json"}), 413)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"a": "'
        for _ in range(settings.max_body_bytes // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    problem(await client.post(DOCS, content=chunks(),
                              headers={"Content-Type": "application/json"}), 413)
    problem(await client.post(DOCS, content=b"{}", headers={
        "Content-Type": "application/json", "Content-Length": "abc"}), 400)
    assert await count(app) == 0
    # just under the limit is fine
    ok = b'{"a": "' + b"x" * (settings.max_body_bytes - 20) + b'"}'
    r = await client.post(DOCS, content=ok, headers={"Content-Type": "application/json"})
    assert r.status_code == 201


async def test_json_media_types_accepted(client: httpx.AsyncClient) -> None:
    for ctype in ("application/json", "application/json; charset=utf-8",
                  "Application/JSON", "application/vnd.example+json"):
        r = await client.post(DOCS, content=b"{}", headers={"Content-Type": ctype})
        assert r.status_code == 201, (ctype, r.text)


# ---------------------------------------------------------------------- OpenAPI


async def test_openapi_lists_routes_and_problems(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    docs = paths["/api/collections/{collection}/documents"]
    one = paths["/api/collections/{collection}/documents/{id}"]
    bulk = paths["/api/collections/{collection}/documents:bulk"]
    assert set(docs) == {"get", "post"}
    assert set(one) == {"get", "put", "patch", "delete"}
    assert set(bulk) == {"post"}
    assert set(paths["/api/collections/{collection}/documents:count"]) == {"get"}
    assert "get" in paths["/api/collections"]
    for op in [*docs.values(), *one.values(), *bulk.values()]:
        assert "503" in op["responses"]
        assert "Retry-After" in op["responses"]["503"]["headers"]
        for code, response in op["responses"].items():
            if code.startswith(("4", "5")) and "application/problem+json" in response.get(
                    "content", {}):
                schema = response["content"]["application/problem+json"]["schema"]
                assert schema["required"] == ["type", "title", "status", "detail"]
            elif code.startswith(("4", "5")):
                assert code == "422", (code, response)  # FastAPI's own (mapped to 400)
        assert "400" in op["responses"] or op is paths["/api/collections"]["get"]
    assert set(docs["post"]["responses"]) >= {"201", "400", "409", "413", "415", "422"}
    assert set(one["put"]["responses"]) >= {"200", "201", "412"}
    assert "application/merge-patch+json" in one["patch"]["requestBody"]["content"]
    params = {p["name"] for p in docs["get"]["parameters"]}
    assert params >= {"filter", "sort", "limit", "after", "skip"}

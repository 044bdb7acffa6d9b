"""``Idempotency-Key`` and exactly-once writes, with real faults.

- every write kind through the REST API while a :class:`tests.helpers.WireProxy`
  loses the database's reply after the commit (and hides the driver's retry
  from the database): one success, ``_version`` +1, one change event;
- a keyed request replayed after ``realtime serve`` restarts (a subprocess)
  gets the original response with ``Idempotent-Replayed: true``;
- the same key with another body → 422; a second request while the first is
  in flight → 409; a malformed key → 400;
- :class:`realtime.idempotency.Idempotency` with an injected clock: locks of
  dead requests expire, records expire after the TTL.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from realtime.config import Settings
from realtime.db import Database
from realtime.embedded import EmbeddedServer
from realtime.idempotency import (
    COLLECTION,
    LOCK_SECONDS,
    Claim,
    Idempotency,
    KeyInFlight,
    KeyReused,
    StoredResponse,
    fingerprint,
    record_id,
)
from realtime.store import Store
from tests.helpers import (
    LiveServer,
    ServerProcess,
    WireProxy,
    apikey_settings,
    asgi_client,
    bearer,
    derive,
    live_server,
    wire_proxy,
    ws_client,
)

pytestmark = pytest.mark.timeout(120)

DOCS = "/api/collections/docs/documents"
PROBLEM = "application/problem+json"


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


@pytest.fixture
async def proxy(mongo: EmbeddedServer) -> AsyncIterator[WireProxy]:
    async with wire_proxy(mongo.host, mongo.port) as p:
        yield p


@pytest.fixture
async def faulty(settings: Settings, proxy: WireProxy) -> AsyncIterator[LiveServer]:
    """A live server whose database connection goes through ``proxy``."""
    async with live_server(derive(settings, mongodb_uri=proxy.uri)) as server:
        try:
            yield server
        finally:
            # The proxy runs in this event loop: close it before Motor's close()
            # blocks the loop waiting for monitor reads through it (PyMongo's async
            # client closes in the loop, and leaks a socket if cut first).
            if settings.driver == "motor":
                await proxy.close()


# ------------------------------------------------------------- lost replies


@pytest.mark.parametrize("keyed", [False, True], ids=["no-key", "key"])
async def test_every_write_kind_is_applied_once_when_the_reply_is_lost(
        faulty: LiveServer, proxy: WireProxy, keyed: bool) -> None:
    async with httpx.AsyncClient(base_url=faulty.url, timeout=30) as http, \
            ws_client(faulty.ws_url) as ws:
        await ws.subscribe("s", "docs")
        await ws.drain_until_marker(http)
        headers = key if keyed else dict

        proxy.lose_reply("insert", "docs")
        r = await http.post(DOCS, json={"_id": "a", "n": 1}, headers=headers())
        assert proxy.lost.is_set()
        assert proxy.forgotten == 1
        assert (r.status_code, r.headers["etag"], r.json()["n"]) == (201, '"1"', 1), r.text
        assert "_op" not in r.json()

        proxy.lose_reply("findAndModify", "docs")
        r = await http.put(f"{DOCS}/a", json={"n": 2}, headers=headers())
        assert proxy.lost.is_set()
        assert (r.status_code, r.headers["etag"]) == (200, '"2"'), r.text

        proxy.lose_reply("findAndModify", "docs")
        r = await http.patch(f"{DOCS}/a", json={"m": 3},
                             headers={"If-Match": '"2"', **headers()})
        assert proxy.lost.is_set()
        assert (r.status_code, r.headers["etag"], r.json()) == (
            200, '"3"', {"_id": "a", "_version": 3, "n": 2, "m": 3}), r.text

        proxy.lose_reply("delete", "docs")
        r = await http.delete(f"{DOCS}/a", headers=headers())
        assert proxy.lost.is_set()
        assert r.status_code == 204, r.text

        changes = await ws.drain_until_marker(http)
        assert [(c["op"], (c.get("document") or {}).get("_version")) for c in changes] == [
            ("insert", 1), ("replace", 2), ("update", 3), ("delete", None)]
        assert all("_op" not in (c.get("document") or {}) and "_op" not in c.get("updated", {})
                   for c in changes)


async def test_lost_bulk_reply_inserts_each_document_once(
        faulty: LiveServer, proxy: WireProxy) -> None:
    async with httpx.AsyncClient(base_url=faulty.url, timeout=30) as http:
        proxy.lose_reply("insert", "docs")
        r = await http.post(f"{DOCS}:bulk", json=[{"_id": "a"}, {"_id": "b"}], headers=key())
        assert proxy.lost.is_set()
        assert (r.status_code, r.json()["inserted"]) == (200, 2), r.text
        count = await http.get(f"{DOCS}:count")
        assert count.json() == {"count": 2}


# ------------------------------------------------------------------ replays


async def test_replay_after_a_server_restart_gets_the_original_response(
        server: ServerProcess) -> None:
    headers = key()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        first = await http.post(DOCS, json={"n": 1}, headers=headers)
        assert first.status_code == 201, first.text
        assert "idempotent-replayed" not in first.headers
        patched = await http.patch(f"{DOCS}/{first.json()['_id']}", json={"n": 2},
                                   headers={"Idempotency-Key": "patch-1"})
        assert patched.status_code == 200
    assert server.terminate() == 0
    await server.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        again = await http.post(DOCS, json={"n": 1}, headers=headers)
        assert again.status_code == 201
        assert again.headers["idempotent-replayed"] == "true"
        assert again.content == first.content
        for name in ("etag", "location", "content-type"):
            assert again.headers[name] == first.headers[name]
        repatched = await http.patch(f"{DOCS}/{first.json()['_id']}", json={"n": 2},
                                     headers={"Idempotency-Key": "patch-1"})
        assert (repatched.status_code, repatched.content) == (200, patched.content)
        assert repatched.headers["idempotent-replayed"] == "true"
        assert (await http.get(f"{DOCS}:count")).json() == {"count": 1}
        current = await http.get(f"{DOCS}/{first.json()['_id']}")
        assert current.json()["_version"] == 2


async def test_every_write_kind_replays(client: httpx.AsyncClient) -> None:
    requests = [("POST", DOCS, {"_id": "a"}), ("POST", f"{DOCS}:bulk", [{"_id": "b"}]),
                ("PUT", f"{DOCS}/a", {"n": 1}), ("PATCH", f"{DOCS}/a", {"m": 1}),
                ("DELETE", f"{DOCS}/b", None)]
    for method, url, body in requests:
        headers = key()
        first = await client.request(method, url, json=body, headers=headers)
        assert first.status_code < 300, first.text
        again = await client.request(method, url, json=body, headers=headers)
        assert (again.status_code, again.content) == (first.status_code, first.content)
        assert again.headers["idempotent-replayed"] == "true"
    assert (await client.get(f"{DOCS}/a")).json()["_version"] == 3


async def test_keys_are_scoped_to_the_method_and_path(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "same"}
    a = await client.put(f"{DOCS}/a", json={"n": 1}, headers=headers)
    b = await client.put(f"{DOCS}/b", json={"n": 1}, headers=headers)
    assert (a.status_code, b.status_code) == (201, 201)
    assert "idempotent-replayed" not in b.headers


async def test_an_error_is_not_kept(client: httpx.AsyncClient) -> None:
    headers = key()
    r = await client.patch(f"{DOCS}/a", json={"n": 1}, headers=headers)
    assert r.status_code == 404
    await client.post(DOCS, json={"_id": "a"})
    r = await client.patch(f"{DOCS}/a", json={"n": 1}, headers=headers)
    assert r.status_code == 200
    assert "idempotent-replayed" not in r.headers


# ------------------------------------------------------------------ misuse


async def test_same_key_with_another_body_is_422(client: httpx.AsyncClient) -> None:
    headers = key()
    assert (await client.post(DOCS, json={"n": 1}, headers=headers)).status_code == 201
    r = await client.post(DOCS, json={"n": 2}, headers=headers)
    assert r.status_code == 422
    assert r.headers["content-type"] == PROBLEM
    assert "different request" in r.json()["detail"]
    r = await client.put(f"{DOCS}/x", json={"n": 1}, headers=headers)
    assert r.status_code == 201  # another path: another key
    r = await client.put(f"{DOCS}/x", json={"n": 1}, headers={**headers, "If-Match": '"1"'})
    assert r.status_code == 422  # If-Match is part of the request


@pytest.mark.parametrize("bad", ["", "a b", "x" * 256, 'say"hi"', "é"])
async def test_malformed_key_is_400(client: httpx.AsyncClient, bad: str) -> None:
    r = await client.post(DOCS, json={"n": 1},
                          headers={b"Idempotency-Key": bad.encode()})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["invalid_params"][0]["name"] == "Idempotency-Key"
    assert (await client.get(f"{DOCS}:count")).json() == {"count": 0}


async def test_concurrent_requests_with_one_key_one_runs_one_gets_409(
        settings: Settings, proxy: WireProxy) -> None:
    async with asgi_client(derive(settings, mongodb_uri=proxy.uri)) as http:
        try:
            headers = key()
            proxy.hold("insert", "docs")
            first = asyncio.create_task(http.post(DOCS, json={"n": 1}, headers=headers))
            await asyncio.wait_for(proxy.held.wait(), 10)
            second = await http.post(DOCS, json={"n": 1}, headers=headers)
            assert second.status_code == 409
            assert second.headers["content-type"] == PROBLEM
            assert "still being processed" in second.json()["detail"]
            proxy.release()
            r = await asyncio.wait_for(first, 10)
            assert r.status_code == 201
            third = await http.post(DOCS, json={"n": 1}, headers=headers)
            assert (third.status_code, third.content) == (201, r.content)
            assert (await http.get(f"{DOCS}:count")).json() == {"count": 1}
        finally:
            if settings.driver == "motor":  # see ``faulty``
                await proxy.close()


async def test_openapi_documents_the_header(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    for path, method in [(DOCS, "post"), (f"{DOCS}:bulk", "post"), (f"{DOCS}/{{id}}", "put"),
                         (f"{DOCS}/{{id}}", "patch"), (f"{DOCS}/{{id}}", "delete")]:
        op = schema["paths"][path.replace("/docs/", "/{collection}/")][method]
        names = [p["name"] for p in op.get("parameters", [])]
        assert "Idempotency-Key" in names, (path, method)
        assert {"409", "422"} <= set(op["responses"]), (path, method)


# ------------------------------------------------------------ the records


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def records(settings: Settings, mongo: EmbeddedServer
                  ) -> AsyncIterator[tuple[Idempotency, Store, Clock]]:
    db = Database(settings, mongo.uri)
    clock = Clock()
    try:
        yield Idempotency(db, settings, clock), Store(db, settings), clock
    finally:
        await db.close()


async def test_a_dead_requests_key_is_taken_over_and_its_write_not_repeated(
        records: tuple[Idempotency, Store, Clock]) -> None:
    keeper, store, clock = records
    id = record_id("anonymous", "POST", DOCS, "k")
    claim = await keeper.begin(id, "print")
    assert isinstance(claim, Claim)
    assert not claim.retaken
    written = await store.insert("docs", {"n": 1}, op=claim.op)  # then the process dies
    with pytest.raises(KeyInFlight):
        await keeper.begin(id, "print")
    clock.now += timedelta(seconds=LOCK_SECONDS + 1)
    retry = await keeper.begin(id, "print")
    assert isinstance(retry, Claim)
    assert retry.retaken
    assert retry.op == claim.op
    assert await store.insert("docs", {"_id": written["_id"], "n": 1}, op=retry.op) == written
    await keeper.finish(retry, StoredResponse(201, {"etag": '"1"'}, b"{}"))
    assert await keeper.begin(id, "print") == StoredResponse(201, {"etag": '"1"'}, b"{}")
    with pytest.raises(KeyReused):
        await keeper.begin(id, "another")


async def test_records_expire_after_the_ttl(records: tuple[Idempotency, Store, Clock],
                                            settings: Settings) -> None:
    keeper, _, clock = records
    claim = await keeper.begin("r1", "print")
    assert isinstance(claim, Claim)
    await keeper.finish(claim, StoredResponse(200, {}, b"{}"))
    clock.now += timedelta(seconds=settings.idempotency_ttl_seconds - 1)
    assert isinstance(await keeper.begin("r1", "print"), StoredResponse)
    clock.now += timedelta(seconds=2)
    fresh = await keeper.begin("r1", "other body is fine now")
    assert isinstance(fresh, Claim)
    assert not fresh.retaken


async def test_large_and_failed_responses_free_the_key(
        records: tuple[Idempotency, Store, Clock], settings: Settings) -> None:
    keeper, _, _ = records
    for response in (StoredResponse(503, {}, b"{}"),
                     StoredResponse(200, {}, b"x" * (settings.idempotency_max_response_bytes + 1))):
        claim = await keeper.begin("r2", "print")
        assert isinstance(claim, Claim)
        assert not claim.retaken
        await keeper.finish(claim, response)


# ------------------------------------------- the crash window, through the API


async def _dead_request(app: Any, method: str, path: str, key: str, body: bytes,
                        content_type: str | None) -> str:
    """The record a request leaves when its server dies mid-way (lock expired); its op id."""
    id = record_id("anonymous", method, path, key)
    past = datetime.now(UTC) - timedelta(seconds=LOCK_SECONDS + 1)
    await app.state.services.db.collection(COLLECTION).insert_one(
        {"_id": id, "fingerprint": fingerprint(body, None, content_type), "state": "pending",
         "locked_until": past, "created": past, "expires": past + timedelta(days=1)})
    return id


async def test_insert_whose_server_died_after_the_write_answers_201(
        app: Any, client: httpx.AsyncClient) -> None:
    body = b'{"_id":"a","n":1}'
    op = await _dead_request(app, "POST", DOCS, "k1", body, "application/json")
    await app.state.services.store.insert("docs", {"_id": "a", "n": 1}, op=op)  # it wrote
    r = await client.post(DOCS, content=body, headers={"Idempotency-Key": "k1",
                                                       "Content-Type": "application/json"})
    assert (r.status_code, r.json()) == (201, {"_id": "a", "_version": 1, "n": 1})
    assert "idempotent-replayed" not in r.headers
    again = await client.post(DOCS, content=body, headers={"Idempotency-Key": "k1",
                                                           "Content-Type": "application/json"})
    assert again.headers["idempotent-replayed"] == "true"


async def test_delete_whose_server_died_after_the_write_answers_204(
        app: Any, client: httpx.AsyncClient) -> None:
    await _dead_request(app, "DELETE", f"{DOCS}/gone", "k2", b"", None)
    r = await client.delete(f"{DOCS}/gone", headers={"Idempotency-Key": "k2"})
    assert r.status_code == 204
    r = await client.delete(f"{DOCS}/gone", headers={"Idempotency-Key": "k3"})
    assert r.status_code == 404  # a fresh key: nothing to delete


async def test_keys_are_scoped_to_the_credential(settings: Settings) -> None:
    keys = {"ka": {"scopes": ["write:docs", "read:docs"]},
            "kb": {"scopes": ["write:docs", "read:docs"]}}
    async with asgi_client(apikey_settings(settings, keys)) as http:
        headers = {"Idempotency-Key": "shared"}
        a = await http.put(f"{DOCS}/x", json={"n": 1}, headers={**headers, **bearer("ka")})
        b = await http.put(f"{DOCS}/x", json={"n": 1}, headers={**headers, **bearer("kb")})
        assert (a.status_code, b.status_code) == (201, 200)
        assert "idempotent-replayed" not in b.headers
        assert b.json()["_version"] == 2

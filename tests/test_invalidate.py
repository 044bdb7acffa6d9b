"""Drops, invalidation and what /readyz says about the feed."""

from __future__ import annotations

from typing import Any

import httpx
import pymongo

from realtime.embedded import EmbeddedServer
from tests.helpers import LiveServer, ws_client

DOCS = "/api/collections/{}/documents"


async def test_drop_collection_resyncs_its_subscribers(
        live: LiveServer, http: httpx.AsyncClient, mongo: EmbeddedServer) -> None:
    async with ws_client(live.ws_url) as c:
        await c.subscribe("gone", "gone")
        await c.subscribe("kept", "kept")
        await http.post(DOCS.format("gone"), json={"_id": "a"})
        assert (await c.expect("change"))["key"] == "a"
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo.uri)
        client[live.settings.database].drop_collection("gone")
        client.close()
        assert await c.expect("resync") == {"type": "resync", "sub": "gone",
                                            "reason": "invalidated"}
        await http.post(DOCS.format("kept"), json={"_id": "k"})
        change = await c.expect("change")
        assert (change["sub"], change["key"]) == ("kept", "k")


async def test_drop_database_invalidates_and_the_feed_restarts_after_it(
        live: LiveServer, http: httpx.AsyncClient, mongo: EmbeddedServer) -> None:
    feed = live.app.state.services.feed
    async with ws_client(live.ws_url) as c:
        await c.subscribe("s", "items")
        await http.post(DOCS.format("items"), json={"_id": "before"})
        assert (await c.expect("change"))["key"] == "before"
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo.uri)
        client.drop_database(live.settings.database)
        client.close()
        reasons = {(await c.expect("resync"))["reason"]}
        assert reasons == {"invalidated"}
        await feed.wait_live(15)
        r = await http.post(DOCS.format("items"), json={"_id": "after"})
        assert r.status_code == 201, r.text
        while True:  # a second resync (drop + invalidate) may precede it
            message = await c.recv(timeout=15)
            if message["type"] == "change":
                assert message["key"] == "after"
                break
            assert message == {"type": "resync", "sub": "s", "reason": "invalidated"}


async def test_readyz_reports_feed_state_and_lag(live: LiveServer,
                                                 http: httpx.AsyncClient) -> None:
    r = await http.get("/readyz")
    assert r.status_code == 200
    feed = r.json()["checks"]["feed"]
    assert feed["status"] == "live"
    assert feed["lag_seconds"] is None  # no event yet
    async with ws_client(live.ws_url) as c:
        await c.subscribe("s", "lag")
        await http.post(DOCS.format("lag"), json={"_id": "x"})
        await c.expect("change")
    feed = (await http.get("/readyz")).json()["checks"]["feed"]
    assert isinstance(feed["lag_seconds"], float)
    assert 0 <= feed["lag_seconds"] < 60
    assert feed["restarts"] == 0

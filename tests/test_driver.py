"""The driver seam (realtime.db) with both drivers: Motor and PyMongo's async API.

These tests run each driver explicitly (parametrised), whatever ``REALTIME_DRIVER``
says; the rest of the suite runs on the driver ``REALTIME_DRIVER`` selects (CI runs
the database-facing tests a second time with ``REALTIME_DRIVER=pymongo``).
"""

from __future__ import annotations

import ast
import asyncio
import gc
import uuid
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import AsyncMongoClient

from realtime.config import Settings
from realtime.db import Database, token_order
from realtime.embedded import EmbeddedServer, free_port
from realtime.errors import DatabaseUnavailable, DuplicateKey, HistoryLost
from tests.helpers import fail_point, running_app

pytestmark = pytest.mark.driver_blind


def _driver_tasks() -> list[asyncio.Task[Any]]:
    """Unfinished tasks running PyMongo's code (its monitors and connection attempts)."""
    return [t for t in asyncio.all_tasks()
            if not t.done() and "pymongo" in repr(t.get_coro())]

DRIVERS = ["motor", "pymongo"]
PACKAGE = Path(__file__).resolve().parent.parent / "realtime"


def settings_for(mongo: EmbeddedServer, driver: str, **extra: Any) -> Settings:
    return Settings(mongodb_uri=mongo.uri, database=f"d_{uuid.uuid4().hex[:12]}",
                    driver=driver, server_selection_timeout_ms=1500, **extra)


@pytest.fixture(params=DRIVERS)
async def db(request: pytest.FixtureRequest, mongo: EmbeddedServer) -> AsyncIterator[Database]:
    database = Database(settings_for(mongo, request.param), mongo.uri)
    try:
        yield database
    finally:
        await database.close()


def test_only_the_seam_imports_a_driver() -> None:
    """Only realtime/db.py imports motor or pymongo (bson is the codec's)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "db.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(PACKAGE)}: {n}" for n in names
                          if n.split(".")[0] in ("motor", "pymongo")]
    assert offenders == []


@pytest.mark.parametrize(("driver", "client_class"),
                         [("motor", AsyncIOMotorClient), ("pymongo", AsyncMongoClient)])
async def test_setting_picks_the_client(mongo: EmbeddedServer, driver: str,
                                        client_class: type) -> None:
    database = Database(settings_for(mongo, driver), mongo.uri)
    try:
        assert database.driver == driver
        assert isinstance(database._client, client_class)
        await database.ping()
    finally:
        await database.close()


def test_default_driver_is_motor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REALTIME_DRIVER", raising=False)
    assert Settings().driver == "motor"
    monkeypatch.setenv("REALTIME_DRIVER", "pymongo")
    assert Settings().driver == "pymongo"
    monkeypatch.setenv("REALTIME_DRIVER", "asyncio-thing")
    with pytest.raises(ValueError, match="driver"):
        Settings()


async def test_crud_through_the_seam(db: Database) -> None:
    coll = db.collection("things")
    await db.prepare_collection("things")
    await db.prepare_collection("things")  # idempotent
    assert "things" in await db.list_collection_names()
    key = await coll.insert_one({"_id": "a", "n": 1})
    assert key == "a"
    with pytest.raises(DuplicateKey):
        await coll.insert_one({"_id": "a"})
    ids, errors = await coll.insert_many([{"_id": "b"}, {"_id": "a"}, {"_id": "c"}])
    assert ids == ["b"]
    assert [(e.index, e.code) for e in errors] == [(1, 11000)]
    assert await coll.find_one({"_id": "a"}) == {"_id": "a", "n": 1}
    replaced = await coll.find_one_and_replace({"_id": "a"}, {"n": 2})
    assert replaced == {"_id": "a", "n": 2}
    updated = await coll.find_one_and_update({"_id": "z"}, {"$set": {"n": 9}}, upsert=True)
    assert updated == {"_id": "z", "n": 9}
    docs = [d async for d in coll.find({}, sort=[("_id", 1)], limit=2, batch_size=1)]
    assert [d["_id"] for d in docs] == ["a", "b"]
    assert await coll.delete_one({"_id": "b"}) == 1
    assert await coll.delete_one({"_id": "b"}) == 0


async def test_change_stream_through_the_seam(db: Database) -> None:
    await db.prepare_collection("watched")
    stream = await db.watch([{"$match": {"ns.coll": "watched"}}], max_await_time_ms=100)
    try:
        # The post-batch token is known before any event (the feed's head).
        assert stream.resume_token is not None
        await db.collection("watched").insert_one({"_id": 1, "v": "x"})
        event = None
        async with asyncio.timeout(10):
            while event is None:
                event = await stream.try_next()
        assert event["operationType"] == "insert"
        assert event["fullDocument"] == {"_id": 1, "v": "x"}
        token = event["_id"]
    finally:
        await stream.close()
    # Resume after the event: the next change, not the same one again.
    await db.collection("watched").insert_one({"_id": 2})
    resumed = await db.watch([{"$match": {"ns.coll": "watched"}}], resume_after=token,
                             max_await_time_ms=100)
    try:
        event = None
        async with asyncio.timeout(10):
            while event is None:
                event = await resumed.try_next()
        assert event["documentKey"] == {"_id": 2}
    finally:
        await resumed.close()


async def test_a_burst_comes_through_the_seam_whole_and_in_order(db: Database) -> None:
    """Motor reads a batch per worker-thread hop: each event still comes once, in order,
    and the post-batch token read after the burst is past its last event."""
    await db.prepare_collection("burst")
    stream = await db.watch([{"$match": {"ns.coll": "burst"}}], max_await_time_ms=100)
    try:
        await db.collection("burst").insert_many([{"_id": i} for i in range(300)])
        seen: list[int] = []
        last = None
        async with asyncio.timeout(20):
            while len(seen) < 300:
                event = await stream.try_next()
                if event is not None:
                    seen.append(event["documentKey"]["_id"])
                    last = event["_id"]
        assert seen == list(range(300))
        async with asyncio.timeout(10):
            assert await stream.try_next() is None
        assert last is not None
        assert token_order(str(stream.resume_token["_data"])) >= token_order(str(last["_data"]))
    finally:
        await stream.close()


async def test_a_stream_closes_clean_under_a_read_cancelled_mid_wait(db: Database) -> None:
    """A read cancelled while its getMore waits goes on in the driver (it cannot be
    stopped); closing the stream then waits for it instead of closing the cursor
    under it (the feed closes a stream whose read it cancelled)."""
    await db.prepare_collection("cancelled")
    stream = await db.watch([{"$match": {"ns.coll": "cancelled"}}], max_await_time_ms=300)
    try:
        read = asyncio.ensure_future(stream.try_next())
        done, _ = await asyncio.wait({read}, timeout=0.05)  # (its getMore now waits)
        assert not done
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read
    finally:
        await stream.close()
    # The database still serves a new stream on the same client.
    again = await db.watch([{"$match": {"ns.coll": "cancelled"}}], max_await_time_ms=100)
    try:
        await db.collection("cancelled").insert_one({"_id": "after"})
        event = None
        async with asyncio.timeout(10):
            while event is None:
                event = await again.try_next()
        assert event["documentKey"] == {"_id": "after"}
    finally:
        await again.close()


async def test_history_lost_is_translated(db: Database, mongo: EmbeddedServer) -> None:
    async with fail_point(mongo.uri, data={"failCommands": ["aggregate"], "errorCode": 286}):
        with pytest.raises(HistoryLost):
            await db.watch([], max_await_time_ms=100)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_unreachable_database_is_unavailable(driver: str) -> None:
    uri = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    settings = Settings(mongodb_uri=uri, driver=driver, server_selection_timeout_ms=200,
                        connect_timeout_ms=200)
    database = Database(settings, uri)
    try:
        with pytest.raises(DatabaseUnavailable):
            await database.ping()
        with pytest.raises(DatabaseUnavailable):
            await database.collection("x").insert_one({"a": 1})
        with pytest.raises(DatabaseUnavailable):
            await database.watch([])
    finally:
        await database.close()
        # PyMongo's async monitor (4.20) does not close a socket whose connect() is
        # cancelled by close() (the cancelled task's traceback keeps it): drop the
        # client and collect the socket here rather than in a later test.
        del database
        tasks = _driver_tasks()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


@pytest.mark.parametrize("driver", DRIVERS)
async def test_app_serves_on_each_driver(mongo: EmbeddedServer, driver: str) -> None:
    """The whole app (lifespan, feed, REST) on each driver; /metrics names it."""
    async with running_app(settings_for(mongo, driver)) as app:
        assert app.state.services.feed.live
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            r = await http.post("/api/collections/orders/documents", json={"n": 1})
            assert r.status_code == 201, r.text
            r = await http.get(f"/api/collections/orders/documents/{r.json()['_id']}")
            assert r.json()["n"] == 1
            metrics = (await http.get("/metrics")).text
        assert f'realtime_info{{driver="{driver}",version=' in metrics

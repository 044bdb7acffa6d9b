"""Several realtime processes on one database: the scale-out shape of production.

Each server is a real subprocess (``python -m realtime serve``) with its own
change stream on the session's SecantusDB; nothing is shared between them but
the database. Subprocesses inherit ``REALTIME_DRIVER``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from realtime.embedded import EmbeddedServer
from tests.helpers import ServerProcess, WSClient, server_process, ws_client

DOCS = "/api/collections/orders/documents"


@pytest.fixture
def env(mongo: EmbeddedServer) -> dict[str, str]:
    """Environment of every server of one test: same database, loopback, no auth."""
    return {"REALTIME_MONGODB_URI": mongo.uri,
            "REALTIME_DATABASE": f"m_{uuid.uuid4().hex[:12]}",
            "REALTIME_HEARTBEAT_SECONDS": "5"}


@pytest.fixture
async def pair(env: dict[str, str]) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    """Two servers, started side by side."""
    a, b = ServerProcess(env), ServerProcess(env)
    try:
        a.spawn()
        b.spawn()
        await asyncio.gather(a.wait_ready(), b.wait_ready())
        yield a, b
    finally:
        a.kill()
        b.kill()


async def post(url: str, body: dict[str, object]) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        r = await http.post(DOCS, json=body)
    assert r.status_code == 201, r.text
    key: str = r.json()["_id"]
    return key


async def keys(client: WSClient, n: int) -> list[str]:
    return [str(change["key"]) for change in await client.changes(n)]


async def test_a_write_through_either_reaches_subscribers_of_both(
        pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    async with ws_client(a.ws_url) as on_a, ws_client(b.ws_url) as on_b:
        await on_a.subscribe("s", "orders")
        await on_b.subscribe("s", "orders")
        via_a = await post(a.url, {"via": "a"})
        via_b = await post(b.url, {"via": "b"})
        assert await keys(on_a, 2) == [via_a, via_b]
        assert await keys(on_b, 2) == [via_a, via_b]


async def test_killing_one_does_not_affect_the_other(
        pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    async with ws_client(a.ws_url) as on_a, ws_client(b.ws_url) as on_b:
        await on_a.subscribe("s", "orders")
        await on_b.subscribe("s", "orders")
        first = await post(b.url, {"n": 1})
        assert await keys(on_b, 1) == [first]
        assert await keys(on_a, 1) == [first]
        a.kill()  # SIGKILL: no goodbye to anyone
        written = [await post(b.url, {"n": n}) for n in range(2, 12)]
        assert await keys(on_b, 10) == written
        async with httpx.AsyncClient(base_url=b.url) as http:
            assert (await http.get("/readyz")).status_code == 200


async def test_a_client_moving_to_another_server_misses_nothing(
        pair: tuple[ServerProcess, ServerProcess], env: dict[str, str]) -> None:
    """Resume with ``since`` on another process: from its ring, or by catch-up stream."""
    a, b = pair
    async with ws_client(a.ws_url) as client:
        await client.subscribe("s", "orders")
        seen = [await post(a.url, {"n": n}) for n in range(3)]
        changes = await client.changes(3)
        assert [str(c["key"]) for c in changes] == seen
        last = changes[-1]["id"]
    a.kill()
    # Written while the client is away, through the surviving server.
    missed = [await post(b.url, {"n": n}) for n in range(3, 8)]

    # (1) b was running: it replays from its in-memory ring.
    async with ws_client(b.ws_url) as client:
        await client.subscribe("s", "orders", since=last)
        replayed = await client.changes(5)
        assert [str(c["key"]) for c in replayed] == missed
        async with httpx.AsyncClient(base_url=b.url) as http:
            assert await client.drain_until_marker(http) == []

    # (2) c starts after the writes: its ring is empty, so it opens a catch-up
    # change stream from the client's token and hands over to live.
    async with server_process(env) as c, ws_client(c.ws_url) as client:
        await client.subscribe("s", "orders", since=last)
        caught_up = await client.changes(5)
        assert [str(x["key"]) for x in caught_up] == missed
        assert [x["id"] for x in caught_up] == [x["id"] for x in replayed]
        live = await post(b.url, {"n": "live"})  # written through another process
        assert await keys(client, 1) == [live]

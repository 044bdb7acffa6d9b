"""The REST API while the database is down: 503 + Retry-After, fast; nothing lost after.

A SecantusDB server of the test's own (``--sync-on-commit``, on disk) is killed
with SIGKILL and restarted on the same storage path and port.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from realtime.config import Settings
from realtime.embedded import EmbeddedServer
from tests.helpers import running_app, wait_until

DOCS = "/api/collections/things/documents"
#: "Within ~3 s" with a little slack for a loaded machine. The test's own
#: server-selection timeout (0.5 s, below the fixture's 1.5 s) keeps its ten
#: refused requests quick; one retry of a retryable operation still fits.
WITHIN = 3.5
SELECTION_MS = 500


async def start_server(path: Path, port: int = 0) -> EmbeddedServer:
    server = EmbeddedServer(path, port=port, sync_on_commit=True)
    server.spawn()
    try:
        await server.wait_ready_async(30)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[list[EmbeddedServer]]:
    """The servers a test starts; all killed at the end (a clean stop takes seconds)."""
    started: list[EmbeddedServer] = []
    try:
        yield started
    finally:
        for server in started:
            await asyncio.to_thread(server.kill)
            server.stop()  # reaps nothing now; closes the log file


@pytest.mark.timeout(240)
async def test_database_outage(tmp_path: Path, settings: Settings,
                               servers: list[EmbeddedServer]) -> None:
    path = tmp_path / "db"
    first = await start_server(path)
    servers.append(first)
    config = settings.model_copy(update={"mongodb_uri": first.uri,
                                         "server_selection_timeout_ms": SELECTION_MS})
    async with running_app(config) as app, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=30) as c:

        async def ready() -> bool:
            return (await c.get("/readyz")).status_code == 200

        await app.state.services.feed.wait_live(30)  # (the lifespan waited for it)
        assert await ready(), "/readyz 200 before the outage"

        # Acknowledged writes of every kind.
        expected: dict[str, dict[str, Any]] = {}
        for i in range(20):
            r = await c.post(DOCS, json={"_id": f"d{i:02d}", "i": i})
            assert r.status_code == 201, r.text
            expected[f"d{i:02d}"] = r.json()
        r = await c.post(f"{DOCS}:bulk", json=[{"_id": f"b{i}", "i": i} for i in range(10)])
        assert r.status_code == 200, r.text
        for item in r.json()["items"]:
            expected[item["_id"]] = {"_id": item["_id"], "_version": 1,
                                     "i": int(item["_id"][1:])}
        r = await c.put(f"{DOCS}/d00", json={"replaced": True})
        expected["d00"] = r.json()
        r = await c.patch(f"{DOCS}/d01", json={"patched": [1, 2]})
        expected["d01"] = r.json()
        assert (await c.delete(f"{DOCS}/d02")).status_code == 204
        del expected["d02"]

        await asyncio.to_thread(first.kill)

        attempts: list[tuple[str, str, Any]] = [
            ("POST", DOCS, {"_id": "down-post"}),
            ("GET", f"{DOCS}/d03", None),
            ("GET", DOCS, None),
            ("PUT", f"{DOCS}/d04", {"down": True}),
            ("PUT", f"{DOCS}/down-put", {"down": True}),
            ("PATCH", f"{DOCS}/d05", {"down": True}),
            ("DELETE", f"{DOCS}/d06", None),
            ("POST", f"{DOCS}:bulk", [{"_id": "down-bulk"}]),
            ("GET", "/api/collections", None),
        ]
        for method, url, body in attempts:
            started = time.monotonic()
            async with asyncio.timeout(30):  # a hang fails here, not at the test timeout
                r = await c.request(method, url, json=body)
            elapsed = time.monotonic() - started
            assert r.status_code == 503, (method, url, r.status_code, r.text)
            assert r.headers["retry-after"] == str(config.retry_after_seconds)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["status"] == 503
            assert elapsed < WITHIN, (method, url, elapsed)

        started = time.monotonic()
        async with asyncio.timeout(30):
            r = await c.get("/readyz")
        assert r.status_code == 503, r.text
        assert "retry-after" in r.headers
        assert time.monotonic() - started < WITHIN

        second = await start_server(path, port=first.port)
        servers.append(second)

        async def serves() -> bool:
            r = await c.get(f"{DOCS}/d03")
            assert r.status_code in (200, 503), r.text
            return r.status_code == 200

        await wait_until(serves, 30, "a read after the restart")
        await wait_until(ready, 30, "/readyz 200 after the restart")

        r = await c.get(DOCS, params={"limit": 1000})
        assert r.status_code == 200
        stored = {d["_id"]: d for d in r.json()["documents"]}
        assert stored == expected, "acknowledged writes lost or failed writes applied"

        # and it takes writes again
        r = await c.post(DOCS, json={"_id": "after"})
        assert r.status_code == 201, r.text

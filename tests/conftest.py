"""Shared fixtures: a real SecantusDB server, the app, a real uvicorn server.

One SecantusDB (``:memory:``) serves the whole run; each test gets its own
database name, so tests are isolated without restarting the server. Fault tests
start servers of their own (:class:`realtime.embedded.EmbeddedServer`). The
helpers the fixtures use live in :mod:`tests.helpers`.

Servers started by tests do not warm their ring at start-up
(``REALTIME_RING_WARM_SECONDS=0``) unless the test is about it: the warm-up
reads the shared server's last 10,000 oplog entries, every other test's
writes, and costs a second or more per start on the embedded database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from realtime.config import Settings
from realtime.embedded import EmbeddedServer
from tests.helpers import LiveServer, ServerProcess, live_server, running_app, server_process

os.environ.setdefault("PYTHONASYNCIODEBUG", "1")
os.environ.setdefault("REALTIME_RING_WARM_SECONDS", "0")  # subprocess servers too


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--stress", action="store_true", help="run the long stress variants")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--stress"):
        return
    skip = pytest.mark.skip(reason="stress variant: run with --stress")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mongo() -> Iterator[EmbeddedServer]:
    """One SecantusDB server for the whole run (test commands enabled)."""
    server = EmbeddedServer(":memory:", sync_on_commit=False, test_commands=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(mongo: EmbeddedServer) -> Settings:
    """Settings pointing at the session server with a database of the test's own.

    The driver is ``REALTIME_DRIVER`` (motor by default): CI runs the database-facing
    tests once more with ``REALTIME_DRIVER=pymongo``; subprocess servers inherit it.
    """
    return Settings(
        mongodb_uri=mongo.uri,
        database=f"t_{uuid.uuid4().hex[:12]}",
        port=0,
        heartbeat_seconds=5,
        server_selection_timeout_ms=1500,
        ring_warm_seconds=0,
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Any]:
    async with running_app(settings) as application:
        yield application


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client calling the app in-process (ASGI transport)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[LiveServer]:
    """A real uvicorn server running the app (for WebSocket tests)."""
    async with live_server(settings) as server:
        yield server


@pytest.fixture
async def http(live: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the live server over a real socket."""
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as c:
        yield c


@pytest.fixture
async def server(mongo: EmbeddedServer) -> AsyncIterator[ServerProcess]:
    """``realtime serve`` as a subprocess, on a database of the test's own."""
    async with server_process({"REALTIME_MONGODB_URI": mongo.uri,
                               "REALTIME_DATABASE": f"p_{uuid.uuid4().hex[:12]}"}) as proc:
        yield proc

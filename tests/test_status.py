"""The ``status`` message and honest errors: what a user sees while the database is down.

The hub tells every connection when the feed's state changes (sans I/O); a
feed against a database that is not there goes ``retrying`` then ``down``, and
``live`` once a real database starts on that port; a connection opened during
the outage hears ``status`` right after ``welcome``; REST, ``/readyz``, the
Python client and ``realtime tail`` say what happened in words, never with a
driver's exception class.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo.errors import (
    AutoReconnect,
    ConfigurationError,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
    WTimeoutError,
)

from realtime import protocol
from realtime.client import connect
from realtime.config import Settings
from realtime.db import Database, translate
from realtime.embedded import EmbeddedServer, free_port
from realtime.hub import Hub
from realtime.sources.changestream import Feed, FeedState
from tests.helpers import LiveServer, live_server, until, ws_client

#: An exception class name: a CamelCase word ending in Error or Exception.
CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z0-9]*(?:Error|Exception)\b")
DOCS = "/api/collections/things/documents"


class Conn:
    """A connection that records what the hub sends it."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.arrived = asyncio.Condition()

    def send(self, message: str) -> None:
        self.messages.append(message)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self.arrived:
            self.arrived.notify_all()

    def statuses(self) -> list[str]:
        return [m.split('"feed":"')[1].rstrip('"}') for m in self.messages
                if m.startswith('{"type":"status"')]

    async def wait_for(self, *states: str, timeout: float = 30.0) -> None:
        """Until the statuses received end with ``states``."""
        async with asyncio.timeout(timeout), self.arrived:
            await self.arrived.wait_for(lambda: tuple(self.statuses()[-len(states):]) == states)


def dead_uri() -> str:
    """A database nobody serves (yet)."""
    return f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"


def outage_settings(settings: Settings, uri: str, **more: Any) -> Settings:
    return settings.model_copy(update={
        "mongodb_uri": uri, "server_selection_timeout_ms": 300, "connect_timeout_ms": 300,
        "retry_base_seconds": 0.05, "retry_cap_seconds": 0.3, "startup_wait_seconds": 0,
        **more})


# -- the hub, sans I/O ------------------------------------------------------------------
@pytest.mark.driver_blind
async def test_hub_tells_every_connection_each_change_once() -> None:
    hub = Hub()
    a, b = Conn(), Conn()
    hub.attach(a)  # type: ignore[arg-type]
    assert hub.status("live") == 0, "a hub starts live: nothing to say"
    hub.attach(b)  # type: ignore[arg-type]
    assert hub.status("retrying") == 2
    assert hub.status("retrying") == 0
    assert hub.status("down") == 2
    assert hub.status("live") == 2
    for conn in (a, b):
        assert conn.messages == [protocol.render_status(s) for s in ("retrying", "down", "live")]
    assert hub.feed_status == "live"


@pytest.mark.driver_blind
def test_hub_refuses_an_unknown_status() -> None:
    hub = Hub()
    with pytest.raises(ValueError, match="feed must be one of"):
        hub.status("starting")
    assert hub.feed_status == "live"


# -- driver errors in words -------------------------------------------------------------
@pytest.mark.driver_blind
@pytest.mark.parametrize(("exc", "detail"), [
    (ServerSelectionTimeoutError("localhost:1: [Errno 111] refused, Timeout: 1.5s"),
     "database unavailable: the database did not answer within 1.5 s"),
    (AutoReconnect("localhost:1: connection closed"),
     "database unavailable: the connection to the database was lost"),
    (NetworkTimeout("localhost:1: timed out"),
     "database unavailable: the database took too long to reply"),
    (WTimeoutError("waiting for replication timed out", 64),
     "database unavailable: a majority of the database's members did not confirm the write "
     "in time"),
    (OperationFailure("not primary", 10107),
     "database unavailable: the database is not the primary right now (an election may be "
     "under way)"),
    (OperationFailure("interrupted at shutdown", 11600),
     "database unavailable: the database is shutting down or restarting"),
    (OperationFailure("no", 13, {"errmsg": "not authorized on realtime", "code": 13}),
     "database error: the database refused the operation (code 13: not authorized on "
     "realtime)"),
    (ConfigurationError("bad option"),
     "database error: the database driver failed (see the server log)"),
])
def test_driver_errors_are_said_in_words(exc: Exception, detail: str) -> None:
    error = translate(exc, 1.5)
    assert error.detail == detail
    assert not CLASS_NAME.search(error.detail)


# -- the feed against a real (absent, then present) database ----------------------------
@pytest.mark.timeout(90)
async def test_feed_goes_retrying_then_down_then_live_and_says_why(
        tmp_path: Path, settings: Settings) -> None:
    port = free_port()
    config = outage_settings(settings, f"mongodb://127.0.0.1:{port}/?directConnection=true")
    db = Database(config, config.mongodb_uri or "")
    hub = Hub()
    conn = Conn()
    hub.attach(conn)  # type: ignore[arg-type]
    feed = Feed(db, hub, config, down_after=0.5)
    feed.start()
    server = EmbeddedServer(tmp_path / "db", port=port, sync_on_commit=True)
    try:
        await conn.wait_for("retrying", "down")
        assert feed.state is FeedState.DOWN
        assert feed.last_error == "database unavailable: the database did not answer within " \
                                  "0.3 s"
        assert feed.retrying_since is not None

        await asyncio.to_thread(server.start)  # a database on that port, at last
        await conn.wait_for("retrying", "down", "live")
        assert feed.live
        assert feed.last_error is None
        assert feed.retrying_since is None

        feed.database_gone("the embedded database was killed by SIGKILL; restarting it")
        await conn.wait_for("down")
        assert feed.last_error == "the embedded database was killed by SIGKILL; restarting it"
        feed.database_back()  # (it never went): the stream answers, so live again
        await conn.wait_for("down", "live")
        assert conn.statuses() == ["retrying", "down", "live", "down", "live"]
    finally:
        await feed.stop()
        await db.close()
        await asyncio.to_thread(server.stop)


# -- what a user sees during an outage --------------------------------------------------
@pytest.fixture
async def outage(settings: Settings) -> AsyncIterator[LiveServer]:
    """A real server whose database is not there."""
    async with live_server(outage_settings(settings, dead_uri())) as live:
        yield live


async def test_a_connection_opened_during_an_outage_hears_status_after_welcome(
        outage: LiveServer) -> None:
    async with ws_client(outage.ws_url) as c:
        assert await c.recv() == {"type": "status", "feed": "retrying"}
        await c.send({"op": "ping", "ref": 1})
        assert await c.recv() == {"type": "pong", "ref": 1}


async def test_rest_write_with_the_database_stopped_says_why_in_words(
        outage: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=outage.url, timeout=30) as http:
        r = await http.post(DOCS, json={"_id": "x"})
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == str(outage.settings.retry_after_seconds)
        detail = r.json()["detail"]
        assert detail == "database unavailable: the database did not answer within 0.3 s"
        assert not CLASS_NAME.search(r.text), r.text

        r = await http.get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert not CLASS_NAME.search(r.text), r.text
        assert body["reason"] == "database unavailable: the database did not answer within 0.3 s"
        assert body["checks"]["feed"]["status"] in ("starting", "retrying")


class StatusLog:
    """An ``on_status`` callback that records what the client said."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self.told = asyncio.Event()

    def __call__(self, feed: str) -> None:
        self.said.append(feed)
        self.told.set()


async def test_python_client_surfaces_the_status(outage: LiveServer) -> None:
    log = StatusLog()
    async with connect(outage.url, on_status=log) as client:
        await asyncio.wait_for(log.told.wait(), 10)
        assert client.feed == "retrying"
        assert log.said == ["retrying"], "never a 'live' the server did not say"


async def test_python_client_is_live_with_a_live_server(live: LiveServer) -> None:
    log = StatusLog()
    said = log.said
    async with connect(live.url, on_status=log) as client:
        await asyncio.wait_for(log.told.wait(), 10)
        assert client.feed == "live"
        live.app.state.services.hub.status("down")
        await until(lambda: said[-1] == "down", 10, "status down")
        assert client.feed == "down"
    assert said == ["live", "down"]


async def test_tail_prints_a_notice_when_the_status_changes(outage: LiveServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "realtime", "tail", "things", "--url", outage.url,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "200"})
    try:
        assert proc.stderr is not None
        lines: list[str] = []
        async with asyncio.timeout(30):
            while not any("server retrying" in line for line in lines):
                raw = await proc.stderr.readline()
                assert raw, f"tail ended: {lines}"
                lines.append(raw.decode())
        notice = next(line for line in lines if "server retrying" in line)
        assert notice.strip() == ("realtime: server retrying: the server lost its database "
                                  "connection and is retrying; changes will follow, none lost")
        assert not any("server live" in line for line in lines)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0

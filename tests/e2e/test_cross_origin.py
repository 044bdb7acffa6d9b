"""Cross-origin attempts from a real browser (Playwright + Debian's Chromium).

A page served by another origin (a second HTTP server on another port) tries
to open the realtime WebSocket and call the REST API: refused (close 1008,
CORS) unless the origin is in ``REALTIME_ALLOWED_ORIGINS``; then the browser
authenticates with ``realtime.js`` (first message) or the ``bearer.<token>``
subprotocol. Without Chromium or Playwright the tests skip, except under
``CI=true``, where they fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from realtime.config import Settings
from realtime.server import RealtimeServer
from tests.helpers import (
    LiveServer,
    apikey_settings,
    derive,
    live_server,
    serving,
)

pytestmark = pytest.mark.browser

KEY = "browser-key-" + "b" * 20

OPEN_SOCKET = """async ([url, protocols]) => await new Promise((resolve) => {
  const got = [];
  let opened = false;
  const ws = protocols ? new WebSocket(url, protocols) : new WebSocket(url);
  ws.onopen = () => { opened = true; };
  ws.onmessage = (e) => {
    got.push(JSON.parse(e.data).type);
    if (got.includes("welcome")) ws.close(1000);
  };
  ws.onclose = (e) => resolve({code: e.code, opened, got, protocol: ws.protocol});
  setTimeout(() => resolve({timeout: ws.readyState, got}), 8000);
})"""

FETCH = """async ([url, headers]) => {
  try {
    const r = await fetch(url, {headers});
    return {status: r.status, body: await r.text()};
  } catch (err) {
    return {blocked: String(err)};
  }
}"""


async def _blank(request: Request) -> HTMLResponse:
    return HTMLResponse("<!doctype html><title>another origin</title><p>elsewhere</p>")


@pytest.fixture
async def other_origin() -> AsyncIterator[str]:
    """A plain HTTP server on another port of 127.0.0.1: another origin."""
    app = Starlette(routes=[Route("/", _blank)])
    # log_config=None: leave the process's logging configuration alone.
    server = RealtimeServer(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off",
                                           log_config=None))
    async with serving(server, 10) as port:
        yield f"http://127.0.0.1:{port}"


async def test_cross_origin_websocket_is_refused(page: Any, live: LiveServer,
                                                 other_origin: str) -> None:
    await page.goto(other_origin + "/")
    result = await page.evaluate(OPEN_SOCKET, [live.ws_url, None])
    assert result["code"] == 1008, result
    assert result["got"] == [], "not a single message reaches a foreign page"
    # REST: no CORS headers for a foreign origin, so the browser blocks the read.
    fetched = await page.evaluate(FETCH, [live.url + "/api/collections", {}])
    assert "blocked" in fetched, fetched
    # Another host name is another origin, even on loopback.
    await page.goto(other_origin.replace("127.0.0.1", "localhost") + "/")
    result = await page.evaluate(OPEN_SOCKET, [live.ws_url, None])
    assert result["code"] == 1008, result
    # The server's own page connects.
    await page.goto(live.url + "/")
    result = await page.evaluate(OPEN_SOCKET, [live.ws_url, None])
    assert result["got"] == ["welcome"], result


async def test_allowed_origin_authenticates(page: Any, settings: Settings,
                                            other_origin: str) -> None:
    keyed = apikey_settings(settings, {KEY: {"scopes": ["read:orders", "write:orders"]}},
                            allowed_origins=[other_origin])
    async with live_server(keyed) as server:
        await page.goto(other_origin + "/")
        # The bearer subprotocol: a browser cannot set headers on a WebSocket.
        result = await page.evaluate(OPEN_SOCKET, [server.ws_url, ["realtime", f"bearer.{KEY}"]])
        assert result["got"] == ["welcome"], result
        assert result["protocol"] == "realtime"
        result = await page.evaluate(OPEN_SOCKET, [server.ws_url, ["realtime", "bearer.nope"]])
        assert result["code"] == 4401, result
        # REST with CORS: the preflight allows the origin and the Authorization header.
        fetched = await page.evaluate(FETCH, [server.url + "/api/collections",
                                              {"Authorization": f"Bearer {KEY}"}])
        assert fetched.get("status") == 200, fetched
        # realtime.js (loaded cross-origin) authenticates with its first message.
        events = await page.evaluate("""async ([base, ws, token]) => {
          const {connect} = await import(base + "/static/realtime.js");
          const client = connect(ws, {token});
          const got = await new Promise((resolve, reject) => {
            const stop = client.subscribe("orders", {snapshot: true}, (ev) => {
              if (ev.type === "snapshot") { resolve(ev); stop(); }
              if (ev.type === "error") reject(new Error(ev.code));
            });
            setTimeout(() => reject(new Error("no snapshot")), 8000);
          });
          client.close();
          const bad = connect(ws, {token: "wrong"});
          const closed = await new Promise((resolve) => bad.on("closed", resolve));
          return {snapshot: got.type, closed: closed.code};
        }""", [server.url, server.ws_url, KEY])
        assert events == {"snapshot": "snapshot", "closed": 4401}


async def test_listed_origin_without_auth_mode(page: Any, settings: Settings,
                                               other_origin: str) -> None:
    """Mode none with an explicit allow-list: the listed page connects, others do not."""
    async with live_server(derive(settings, allowed_origins=[other_origin])) as server:
        await page.goto(other_origin + "/")
        result = await page.evaluate(OPEN_SOCKET, [server.ws_url, None])
        assert result["got"] == ["welcome"], result
        await page.goto(other_origin.replace("127.0.0.1", "localhost") + "/")
        result = await page.evaluate(OPEN_SOCKET, [server.ws_url, None])
        assert result["code"] == 1008, result

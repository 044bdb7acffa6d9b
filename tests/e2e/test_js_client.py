"""realtime.js imported from the server by a real browser (Playwright + Debian's Chromium).

The client package (clients/js, npm ``realtime-mongo-client``) is the file every
server serves at ``/static/realtime.js``. A page of the server's own imports it and
does a subscribe, write, change round trip; a page of another origin imports it
with ``<script type="module">`` (CORS: ``Access-Control-Allow-Origin: *``,
``Cross-Origin-Resource-Policy: cross-origin``) while the dashboard's other assets
stay unreadable there, its WebSocket is refused unless the origin is allowed, and
an allowed origin does the whole round trip. Without Chromium or Playwright the
tests skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import json
import uuid
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
from tests.helpers import LiveServer, derive, live_server, serving

pytestmark = pytest.mark.browser

#: Subscribe with a snapshot, write through REST, collect the changes: the round trip.
#: ``rt`` is the imported module, ``base`` the server's URL.
ROUND_TRIP = """async function roundTrip(rt, base, collection) {
  const client = rt.connect(base);
  const events = [];
  const docs = new Map();
  const write = (method, path, body) => fetch(base + "/api/collections/" + collection +
      "/documents" + path, {method, headers: {"Content-Type": "application/json"},
      body: body === undefined ? undefined : JSON.stringify(body)})
    .then((r) => { if (!r.ok) throw new Error(method + " " + r.status); });
  try {
    await new Promise((resolve, reject) => {
      setTimeout(() => reject(new Error("timed out: " + JSON.stringify(events))), 8000);
      client.subscribe(collection, {snapshot: true}, (ev) => {
        rt.applyEvent(docs, ev);
        events.push(ev.type === "change" ? ev.op + " " + ev.key : ev.type);
        if (ev.type === "snapshot") {
          write("POST", "", {_id: "d1", n: 1})
            .then(() => write("PATCH", "/d1", {n: 2}))
            .then(() => write("DELETE", "/d1"))
            .then(() => write("POST", "", {_id: "d2", n: 1}))
            .catch(reject);
        }
        if (ev.type === "error") reject(new Error(ev.code));
        if (ev.type === "change" && ev.key === "d2") setTimeout(resolve, 0);
      });
    });
  } finally {
    client.close();
  }
  return {events, docs: Object.fromEntries(docs), state: client.state};
}"""

#: What the round trip sees for a fresh collection.
EXPECTED = {
    "events": ["subscribed", "snapshot", "insert d1", "update d1", "delete d1", "insert d2"],
    "docs": {'"d2"': {"_id": "d2", "n": 1, "_version": 1}},
    "state": "closed",
}

#: Another origin's page: a module script importing the client from the server.
IMPORTING_PAGE = """<!doctype html><title>elsewhere</title>
<script type="module" onerror="window.failed = 'the module graph did not load'">
import * as rt from {module};
window.rt = rt;
{round_trip}
window.roundTrip = roundTrip;
window.imported = true;
</script>
<script>window.addEventListener("error", (e) => {{ window.failed = String(e.message); }});</script>
"""


async def _importing_page(request: Request) -> HTMLResponse:
    module = request.query_params["server"] + "/static/realtime.js"
    return HTMLResponse(IMPORTING_PAGE.format(module=json.dumps(module), round_trip=ROUND_TRIP))


@pytest.fixture
async def other_origin() -> AsyncIterator[str]:
    """Another origin (another port of 127.0.0.1) whose page imports the client module."""
    app = Starlette(routes=[Route("/", _importing_page)])
    server = RealtimeServer(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off",
                                           log_config=None))
    async with serving(server, 10) as port:
        yield f"http://127.0.0.1:{port}"


async def _open_importing_page(page: Any, origin: str, server: str) -> None:
    await page.goto(f"{origin}/?server={server}")
    await page.wait_for_function("window.imported === true || window.failed !== undefined")
    assert await page.evaluate("window.failed") is None


def _collection() -> str:
    return f"js_{uuid.uuid4().hex[:10]}"


async def test_round_trip_from_the_servers_own_page(page: Any, live: LiveServer) -> None:
    await page.goto(live.url + "/healthz")
    result = await page.evaluate(f"""async ([base, collection]) => {{
      {ROUND_TRIP}
      const rt = await import("/static/realtime.js");
      return await roundTrip(rt, base, collection);
    }}""", [live.url, _collection()])
    assert result == EXPECTED


async def test_imported_by_another_origin(page: Any, live: LiveServer, other_origin: str) -> None:
    """Any page may import the client; the data stays behind the origin checks."""
    await _open_importing_page(page, other_origin, live.url)
    assert await page.evaluate("[rt.PROTOCOL, rt.wsUrl(location.origin)]") == [
        1, other_origin.replace("http:", "ws:") + "/ws"]
    # Only the client module is readable from here: the dashboard's script is not,
    # neither with CORS (no Access-Control-Allow-Origin) nor without (CORP same-origin).
    reads = await page.evaluate("""async (base) => {
      const read = (path, mode) => fetch(base + path, {mode})
        .then((r) => r.type, (err) => "blocked");
      const module = "/static/realtime.js", app = "/static/app.js";
      return [await read(module, "cors"), await read(module, "no-cors"),
              await read(app, "cors"), await read(app, "no-cors")];
    }""", live.url)
    assert reads == ["cors", "opaque", "blocked", "blocked"]
    # Its origin is not allowed: the WebSocket is refused (1008), and the client stays closed.
    closed = await page.evaluate("""async (base) => {
      const client = rt.connect(base);
      return await new Promise((resolve) => client.on("closed", resolve));
    }""", live.url)
    assert closed["code"] == 1008


async def test_round_trip_from_an_allowed_origin(page: Any, settings: Settings,
                                                 other_origin: str) -> None:
    async with live_server(derive(settings, allowed_origins=[other_origin])) as server:
        await _open_importing_page(page, other_origin, server.url)
        result = await page.evaluate("([base, collection]) => roundTrip(rt, base, collection)",
                                     [server.url, _collection()])
        assert result == EXPECTED

"""The dashboard and realtime.js in a real browser (Playwright + Debian's Chromium).

Real servers, a real browser, no mocks and no sleeps: every wait is for a
condition in the page, with a timeout. Without Chromium or Playwright the tests
skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from realtime.config import Settings
from realtime.embedded import EmbeddedServer
from tests.helpers import (
    BROWSER_TIMEOUT_MS,
    LiveServer,
    ServerProcess,
    apikey_settings,
    bearer,
    hs256,
    jwt_settings,
    live_server,
)

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
DOCS = "/api/collections/{}/documents"


class Page:
    """A browser page plus what it reported: uncaught errors, CSP violations.

    index.html carries ``Content-Security-Policy: default-src 'self'`` (a meta
    tag), so any inline script or style would show up here as a violation.
    """

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.csp: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text:
            self.csp.append(message.text)

    def check(self) -> None:
        assert self.errors == [], f"uncaught errors in the page: {self.errors}"
        assert self.csp == [], f"CSP violations: {self.csp}"


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(BROWSER_TIMEOUT_MS)
    wrapped = Page(await context.new_page())
    try:
        yield wrapped
    finally:
        await context.close()
    wrapped.check()


def expect(locator: Any) -> Any:
    from playwright.async_api import expect as pw_expect

    return pw_expect(locator)


def row(page: Page, key: str) -> Any:
    return page.page.locator(f'#docs tbody tr[data-key="{key}"]:not([data-leaving])')


async def post(http: httpx.AsyncClient, coll: str, doc: dict[str, Any]) -> dict[str, Any]:
    r = await http.post(DOCS.format(coll), json=doc)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def database_versions(http: httpx.AsyncClient, coll: str) -> dict[str, int]:
    r = await http.get(DOCS.format(coll), params={"limit": 1000})
    assert r.status_code == 200, r.text
    return {str(d["_id"]): d["_version"] for d in r.json()["documents"]}


TABLE_IS = """(expected) => {
  const rows = document.querySelectorAll('#docs tbody tr[data-key]:not([data-leaving])');
  const got = {};
  for (const tr of rows) got[tr.dataset.key] = Number(tr.dataset.version);
  const a = JSON.stringify(Object.entries(got).sort());
  const b = JSON.stringify(Object.entries(expected).sort());
  return a === b;
}"""
TABLE = """() => Object.fromEntries([...document.querySelectorAll(
  '#docs tbody tr[data-key]:not([data-leaving])')].map(
  (tr) => [tr.dataset.key, Number(tr.dataset.version)]))"""


async def wait_table_is(page: Page, expected: dict[str, int], timeout_ms: int = 15_000) -> None:
    """Wait until the table shows exactly ``expected`` (key -> _version)."""
    try:
        await page.page.wait_for_function(TABLE_IS, arg=expected, timeout=timeout_ms)
    except Exception as exc:
        actual = await page.page.evaluate(TABLE)
        raise AssertionError(f"table {actual} never became {expected}") from exc


# ---------------------------------------------------------------------------
# The dashboard


async def test_dashboard_follows_rest_writes(page: Page, live: LiveServer,
                                             http: httpx.AsyncClient) -> None:
    await post(http, "orders", {"_id": "o1", "status": "open", "total": 12.5})
    await post(http, "orders", {"_id": "o2", "status": "new", "total": 3})
    await post(http, "users", {"_id": "ada"})
    p = page.page
    await p.goto(live.url + "/")
    status = p.locator("#status")
    await expect(status).to_have_attribute("data-state", "open")
    await expect(status).to_have_text("live")
    await expect(p.locator("#collection-select option")).to_have_count(3)  # (choose) + 2

    # Choose a collection: the snapshot fills the table.
    await p.select_option("#collection-select", "orders")
    await p.click("#watch")
    await expect(row(page, "o1")).to_have_count(1)
    await expect(row(page, "o2")).to_have_count(1)
    await expect(p.locator("#docs thead th")).to_have_text(
        ["_id", "status", "total", "_version"])

    # Insert, update, delete through REST: the table follows.
    await post(http, "orders", {"_id": "o3", "status": "open", "total": 99})
    await expect(row(page, "o3")).to_have_count(1)
    await expect(row(page, "o3").locator('td[data-col="total"]')).to_have_text("99")
    r = await http.patch(f"{DOCS.format('orders')}/o1", json={"status": "paid"})
    assert r.status_code == 200
    await expect(row(page, "o1").locator('td[data-col="status"]')).to_have_text("paid")
    await expect(row(page, "o1")).to_have_attribute("data-version", "2")
    r = await http.delete(f"{DOCS.format('orders')}/o2")
    assert r.status_code == 204
    await expect(row(page, "o2")).to_have_count(0)
    await expect(p.locator('#docs tbody tr[data-key="o2"]')).to_have_count(0)  # faded out
    await wait_table_is(page, await database_versions(http, "orders"))
    await expect(p.locator("#log li.log-insert")).not_to_have_count(0)
    await expect(p.locator("#log li.log-delete")).to_have_count(1)
    # The sparkline counts the events of the last completed seconds.
    await p.wait_for_function("() => Number(document.getElementById('rate').dataset.max) >= 1")

    # The write form: insert, patch, replace and delete through the REST API.
    await p.fill("#doc-id", "o9")
    await p.fill("#doc-body", '{"status": "open", "total": 1}')
    await p.click('[data-testid="do-insert"]')
    await expect(p.locator("#editor-result")).to_have_class("ok")
    await expect(row(page, "o9")).to_have_count(1)
    await p.fill("#doc-body", '{"total": 2}')
    await p.click('[data-testid="do-patch"]')
    await expect(row(page, "o9").locator('td[data-col="total"]')).to_have_text("2")
    await expect(row(page, "o9").locator('td[data-col="status"]')).to_have_text("open")
    await p.fill("#doc-body", '{"total": 3}')
    await p.click('[data-testid="do-put"]')
    await expect(row(page, "o9").locator('td[data-col="status"]')).to_have_text("")
    await expect(row(page, "o9")).to_have_attribute("data-version", "3")
    # An error shows the problem's detail.
    await p.click('[data-testid="do-insert"]')
    await expect(p.locator("#editor-result")).to_have_class("error")
    await expect(p.locator("#editor-result")).to_contain_text("409")
    await p.click('[data-testid="do-delete"]')
    await expect(row(page, "o9")).to_have_count(0)
    # Clicking a row loads it into the form.
    await row(page, "o3").click()
    await expect(p.locator("#doc-id")).to_have_value("o3")
    assert '"total": 99' in await p.input_value("#doc-body")

    # A filter: documents enter and leave the live query.
    await p.fill("#filter", '{"status": "open"}')
    await p.click("#watch")
    await wait_table_is(page, {"o3": 1})
    r = await http.patch(f"{DOCS.format('orders')}/o1", json={"status": "open"})  # enters
    assert r.status_code == 200
    await expect(row(page, "o1")).to_have_count(1)
    r = await http.patch(f"{DOCS.format('orders')}/o3", json={"status": "shipped"})  # leaves
    assert r.status_code == 200
    await expect(row(page, "o3")).to_have_count(0)
    await wait_table_is(page, {"o1": 3})
    # A bad filter is reported, not thrown.
    await p.fill("#filter", '{"status": ')
    await p.click("#watch")
    await expect(p.locator("#watch-error")).to_contain_text("not JSON")
    await p.fill("#filter", '{"$where": "1"}')
    await p.click("#watch")
    await expect(p.locator("#watch-error")).not_to_be_empty()

    # A new collection typed by hand.
    await p.fill("#filter", "")
    await p.fill("#collection-new", "fresh")
    await p.click("#watch")
    await expect(p.locator("#docs-empty")).to_be_visible()
    await post(http, "fresh", {"_id": "f1", "hello": "world"})
    await expect(row(page, "f1")).to_have_count(1)
    assert p.url.endswith("#collection=fresh")

    # A screenshot of a populated dashboard, for humans and the README.
    await p.fill("#collection-new", "")
    await p.select_option("#collection-select", "orders")
    await p.click("#watch")
    demo = [("Ada", "open", 42.0), ("Grace", "paid", 7.5), ("Linus", "new", 19.9),
            ("Barbara", "open", 120.0), ("Ken", "shipped", 64.25), ("Margaret", "new", 5.0)]
    for i, (name, status_, total) in enumerate(demo):
        await post(http, "orders", {"_id": f"demo{i}", "customer": {"name": name},
                                    "status": status_, "total": total, "items": i % 3 + 1})
    r = await http.patch(f"{DOCS.format('orders')}/demo1", json={"status": "shipped"})
    assert r.status_code == 200
    await wait_table_is(page, await database_versions(http, "orders"))
    ARTIFACTS.mkdir(exist_ok=True)
    await p.screenshot(path=ARTIFACTS / "dashboard.png")

    # Phone width: nothing overflows sideways, the table is still there.
    await p.set_viewport_size({"width": 390, "height": 844})
    await expect(row(page, "demo0")).to_be_visible()
    overflow = await p.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0
    await p.screenshot(path=ARTIFACTS / "dashboard-phone.png", full_page=True)


DASHBOARD_KEY = "dashboard-key-" + "d" * 24
STORED_TOKEN = "() => sessionStorage.getItem('realtime.token')"


async def test_dashboard_asks_for_a_key(page: Page, settings: Settings) -> None:
    """REALTIME_AUTH=apikey: the page asks for the key, refuses a wrong one, and with
    the right one loads the collections (REST) and the documents and follows changes."""
    keyed = apikey_settings(settings, {DASHBOARD_KEY: {"scopes": ["read:*", "write:*"]}})
    async with live_server(keyed) as server, \
            httpx.AsyncClient(base_url=server.url, headers=bearer(DASHBOARD_KEY),
                              timeout=10) as http:
        await post(http, "orders", {"_id": "o1", "status": "open"})
        await post(http, "orders", {"_id": "o2", "status": "new"})
        p = page.page
        await p.goto(server.url + "/#collection=orders")
        form = p.locator("#auth")
        key = p.locator("#auth-token")
        await expect(form).to_be_visible()
        await expect(key).to_have_attribute("type", "password")
        await expect(key).to_be_focused()
        await expect(p.get_by_label("API key or token")).to_have_count(1)
        await expect(p.locator("#status")).to_have_text("key needed")
        await expect(p.locator("#forget-key")).to_be_hidden()
        await expect(p.locator("#docs tbody tr")).to_have_count(0)

        # A wrong key: refused, the form comes back with the server's reason.
        await key.fill("not-the-key")
        await p.click("#auth-submit")
        await expect(p.locator("#auth-error")).to_contain_text("unknown API key")
        await expect(form).to_be_visible()
        assert await p.evaluate(STORED_TOKEN) is None
        ARTIFACTS.mkdir(exist_ok=True)
        await p.screenshot(path=ARTIFACTS / "dashboard-key.png")

        # The right key: collections from REST, the snapshot, then live changes.
        await key.fill(DASHBOARD_KEY)
        await p.click("#auth-submit")
        await expect(form).to_be_hidden()
        await expect(p.locator("#status")).to_have_attribute("data-state", "open")
        await expect(p.locator("#collection-select option")).to_have_count(2)  # (choose) + 1
        await wait_table_is(page, {"o1": 1, "o2": 1})
        await post(http, "orders", {"_id": "o3", "status": "open"})
        await expect(row(page, "o3")).to_have_count(1)
        # The write form sends the key as well.
        await p.fill("#doc-id", "o4")
        await p.fill("#doc-body", '{"status": "new"}')
        await p.click('[data-testid="do-insert"]')
        await expect(p.locator("#editor-result")).to_have_class("ok")
        await wait_table_is(page, {"o1": 1, "o2": 1, "o3": 1, "o4": 1})
        await expect(p.locator("#forget-key")).to_be_visible()

        # The key is in this tab's sessionStorage, not in the URL, not in the log.
        assert await p.evaluate(STORED_TOKEN) == DASHBOARD_KEY
        assert DASHBOARD_KEY not in p.url
        log = await p.locator("#log").inner_text()
        assert DASHBOARD_KEY not in log
        assert "not-the-key" not in log

        # Forget it: the documents leave the screen and the form comes back.
        await p.click("#forget-key")
        await expect(form).to_be_visible()
        await expect(p.locator("#docs tbody tr")).to_have_count(0)
        await expect(p.locator("#forget-key")).to_be_hidden()
        assert await p.evaluate(STORED_TOKEN) is None


@pytest.fixture
async def server(mongo: EmbeddedServer) -> AsyncIterator[ServerProcess]:
    """``realtime serve`` as a subprocess on the session database server."""
    proc = ServerProcess({"REALTIME_MONGODB_URI": mongo.uri,
                          "REALTIME_DATABASE": f"e2e_{uuid.uuid4().hex[:12]}"})
    try:
        await proc.start()
        yield proc
    finally:
        proc.kill()


async def test_dashboard_recovers_after_server_restart(page: Page, server: ServerProcess,
                                                       mongo: EmbeddedServer) -> None:
    """kill -9 the server under an open page, write while it is down, restart it:
    the page shows reconnecting, then the exact contents of the database."""
    p = page.page
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http, \
            AsyncMongoClient(mongo.uri) as direct:
        for i in range(4):
            await post(http, "orders", {"_id": f"o{i}", "n": i})
        await p.goto(server.url + "/#collection=orders")  # the URL names the collection
        await expect(p.locator("#status")).to_have_attribute("data-state", "open")
        await wait_table_is(page, {f"o{i}": 1 for i in range(4)})
        await post(http, "orders", {"_id": "o4", "n": 4})
        await expect(row(page, "o4")).to_have_count(1)

        server.kill()
        await expect(p.locator("#status")).to_have_attribute("data-state", "reconnecting")
        await expect(p.locator("#status")).to_contain_text("reconnecting")
        await expect(p.locator("#retry")).to_be_visible()
        ARTIFACTS.mkdir(exist_ok=True)
        await p.screenshot(path=ARTIFACTS / "dashboard-reconnecting.png")

        # Writes while the server is down: straight to the database.
        coll = direct[server.env["REALTIME_DATABASE"]]["orders"]
        await coll.insert_many([{"_id": "down1", "n": 10, "_version": 1},
                                {"_id": "down2", "n": 11, "_version": 1}])
        await coll.update_one({"_id": "o0"}, {"$set": {"n": 100}, "$inc": {"_version": 1}})
        await coll.delete_one({"_id": "o1"})

        await server.start()
        # and through the restarted server, right away
        await post(http, "orders", {"_id": "up1", "n": 20})
        r = await http.patch(f"{DOCS.format('orders')}/o2", json={"n": 200})
        assert r.status_code == 200

        await expect(p.locator("#status")).to_have_attribute("data-state", "open",
                                                             timeout=30_000)
        expected = await database_versions(http, "orders")
        assert expected["o0"] == 2
        assert expected["o2"] == 2
        assert "o1" not in expected
        await wait_table_is(page, expected)
        await expect(p.locator("#retry")).to_be_hidden()
        # Whether the restarted server resumed or made the page resync: live again.
        await post(http, "orders", {"_id": "after", "n": 30})
        await expect(row(page, "after")).to_have_count(1)


# ---------------------------------------------------------------------------
# realtime.js, unit by unit, in the browser against the real server

IMPORT = "async () => { window.rt = await import('/static/realtime.js'); return true; }"


async def test_realtime_js_pure_functions(page: Page, live: LiveServer) -> None:
    p = page.page
    await p.goto(live.url + "/healthz")
    await p.evaluate(IMPORT)
    result = await p.evaluate("""() => {
      const out = {bounds: [], max: [], zero: [], samples: []};
      for (let a = 0; a <= 40; a++) {
        const ceiling = Math.min(rt.BACKOFF_MAX_MS, rt.BACKOFF_MIN_MS * 2 ** a);
        out.bounds.push(ceiling);
        out.max.push(rt.backoffDelay(a, () => 0.999999));
        out.zero.push(rt.backoffDelay(a, () => 0));
        let ok = true;
        for (let i = 0; i < 200; i++) {
          const d = rt.backoffDelay(a);
          if (!(d >= 0 && d < ceiling)) ok = false;
        }
        out.samples.push(ok);
      }
      return out;
    }""")
    assert result["bounds"][0] == 500
    assert result["bounds"][6:] == [20000] * 35
    for ceiling, top, zero, ok in zip(result["bounds"], result["max"], result["zero"],
                                      result["samples"], strict=True):
        assert ceiling * 0.999 <= top < ceiling
        assert zero == 0
        assert ok
    urls = await p.evaluate("""() => [
      rt.wsUrl('http://h:1'), rt.wsUrl('https://h/'), rt.wsUrl('ws://h/ws'), rt.wsUrl('/ws'),
      rt.wsUrl()]""")
    host = live.url.removeprefix("http://")
    assert urls == ["ws://h:1/ws", "wss://h/ws", "ws://h/ws", f"ws://{host}/ws",
                    f"ws://{host}/ws"]
    view = await p.evaluate("""() => {
      const docs = new Map();
      const log = [];
      const c = (op, key, doc) => ({type: 'change', op, key, document: doc});
      log.push(rt.applyEvent(docs, {type: 'snapshot', documents: [{_id: 'a', _version: 2}]}));
      log.push(rt.applyEvent(docs, c('leave', 'zz')));
      log.push(rt.applyEvent(docs, c('delete', 'zz')));
      log.push(rt.applyEvent(docs, c('update', 'b', {_id: 'b', _version: 4})));
      log.push(rt.applyEvent(docs, c('update', 'a', {_id: 'a', _version: 2, x: 1})));
      log.push(rt.applyEvent(docs, c('replace', 'a', {_id: 'a', _version: 3})));
      log.push(rt.applyEvent(docs, c('leave', 'b')));
      log.push(rt.applyEvent(docs, c('insert', 1, {_id: 1, _version: 1})));
      log.push(rt.applyEvent(docs, c('insert', '1', {_id: '1', _version: 1})));
      return {log, docs: Object.fromEntries(docs)};
    }""")
    assert view["log"] == ["reset", None, None, "insert", None, "update", "remove", "insert",
                           "insert"]
    assert view["docs"] == {'"a"': {"_id": "a", "_version": 3}, "1": {"_id": 1, "_version": 1},
                            '"1"': {"_id": "1", "_version": 1}}


SETUP = """async ({url, collection, options}) => {
  window.rt = await import('/static/realtime.js');
  const t = window.t = {events: [], sent: [], states: []};
  t.client = rt.connect(url, {delay: () => 3600000, autoConnect: false});
  t.client.on('send', (m) => t.sent.push(m));
  t.client.on('state', (s, d) => t.states.push({state: s, code: d.code ?? null}));
  t.client.open();
  t.stop = t.client.subscribe(collection, options, (ev) => t.events.push(ev));
  return true;
}"""


async def test_realtime_js_resubscribes_with_since(page: Page, live: LiveServer,
                                                   http: httpx.AsyncClient) -> None:
    p = page.page
    await p.goto(live.url + "/healthz")
    await p.evaluate(SETUP, {"url": live.url, "collection": "log",
                             "options": {"filter": {"keep": True}}})
    await p.wait_for_function("() => t.events.some((e) => e.type === 'subscribed')")
    head = await p.evaluate("() => t.events[0].head")
    assert await p.evaluate("() => t.client.positions()[0].since") == head
    await post(http, "log", {"_id": "a", "keep": True})
    await p.wait_for_function("() => t.events.some((e) => e.key === 'a')")
    first_id = await p.evaluate("() => t.events.find((e) => e.key === 'a').id")
    assert await p.evaluate("() => t.client.positions()[0].since") == first_id

    # The server drops the connection; the client waits (an hour, in this test).
    live.app.state.services.hub.close_all(1011, "test drop")
    await p.wait_for_function("() => t.client.state === 'reconnecting'")
    for key, keep in (("b", True), ("c", False), ("d", True)):
        await post(http, "log", {"_id": key, "keep": keep})
    await p.evaluate("() => t.client.reconnectNow()")
    await p.wait_for_function("() => t.events.some((e) => e.key === 'd')")

    subscribes = await p.evaluate("() => t.sent.filter((m) => m.op === 'subscribe')")
    assert len(subscribes) == 2
    assert subscribes[0]["filter"] == {"keep": True}
    assert "since" not in subscribes[0]
    assert subscribes[1]["since"] == first_id
    assert subscribes[1]["filter"] == {"keep": True}
    assert "snapshot" not in subscribes[1]
    events = await p.evaluate("() => t.events.map((e) => [e.type, e.key ?? e.resumed ?? null])")
    assert events == [["subscribed", False], ["change", "a"], ["subscribed", True],
                      ["change", "b"], ["change", "d"]]
    states = await p.evaluate("() => t.states")
    assert [s["state"] for s in states] == ["connecting", "open", "reconnecting",
                                            "reconnecting", "open"]
    assert states[2]["code"] == 1011

    # unsubscribe stops the events; close() is final.
    await p.evaluate("() => t.stop()")
    assert (await p.evaluate("() => t.sent.at(-1)"))["op"] == "unsubscribe"
    await p.evaluate("() => t.client.close()")
    assert await p.evaluate("() => t.client.state") == "closed"


async def test_realtime_js_resync_reloads_snapshot(page: Page, live: LiveServer,
                                                   http: httpx.AsyncClient) -> None:
    await post(http, "items", {"_id": "x", "n": 1})
    await post(http, "items", {"_id": "y", "n": 2})
    p = page.page
    await p.goto(live.url + "/healthz")
    unknown = "82" + "0" * 40
    await p.evaluate(SETUP, {"url": live.url, "collection": "items",
                             "options": {"since": unknown}})
    await p.wait_for_function("() => t.events.some((e) => e.type === 'snapshot')")
    events = await p.evaluate("() => t.events")
    assert [e["type"] for e in events] == ["subscribed", "reset", "subscribed", "snapshot"]
    assert events[0]["resumed"] is True
    assert events[1]["reason"] == "history_lost"
    assert events[3]["reload"] is True
    assert [d["_id"] for d in events[3]["documents"]] == ["x", "y"]
    sent = await p.evaluate("() => t.sent")
    assert [m["op"] for m in sent] == ["subscribe", "unsubscribe", "subscribe"]
    assert sent[0]["since"] == unknown
    assert sent[1]["sub"] == sent[0]["sub"]
    assert sent[2]["snapshot"] is True
    assert "since" not in sent[2]
    assert sent[2]["sub"] != sent[0]["sub"]
    # the position is now the snapshot's head, and live changes follow
    assert await p.evaluate("() => t.client.positions()[0].since") == events[3]["head"]
    await post(http, "items", {"_id": "z", "n": 3})
    await p.wait_for_function("() => t.events.some((e) => e.key === 'z')")
    await p.evaluate("() => t.client.close()")



TOKEN_FUNCTION = """async ({url, first, renewed, stale}) => {
  window.rt = await import('/static/realtime.js');
  const t = window.t = {events: [], states: [], calls: 0, staleCalls: 0, staleStates: []};
  let release;
  const gate = new Promise((resolve) => { release = resolve; });
  t.release = () => release();
  // An async token function: the first token expires soon; asked again after the 4401,
  // it waits for the test (which writes meanwhile), then returns a fresh one.
  t.client = rt.connect(url, {delay: () => 3600000, autoConnect: false, token: async () => {
    t.calls += 1;
    if (t.calls === 1) return first;
    await gate;
    return renewed;
  }});
  t.client.on('state', (s, d) => t.states.push({state: s, code: d.code ?? null}));
  t.client.subscribe('orders', {}, (ev) => t.events.push(ev));
  t.client.open();
  // A sync token function that has nothing newer: closed after the 4401.
  t.stale = rt.connect(url, {delay: () => 3600000, autoConnect: false,
                             token: () => { t.staleCalls += 1; return stale; }});
  t.stale.on('state', (s, d) => t.staleStates.push({state: s, code: d.code ?? null}));
  t.stale.open();
  return true;
}"""


async def test_realtime_js_token_function_renews_after_4401(page: Page,
                                                             settings: Settings) -> None:
    writer = bearer(hs256({"scope": "write:*"}))
    async with live_server(jwt_settings(settings, jwt_leeway_seconds=0)) as server, \
            httpx.AsyncClient(base_url=server.url, headers=writer, timeout=10) as http:
        p = page.page
        await p.goto(server.url + "/healthz")
        # Minted now that the server and the page are up; an integral exp (PyJWT
        # compares int(exp)) 2 to 3 s ahead, time enough to see change "a" first.
        soon = int(time.time()) + 3
        tokens = {"first": hs256({"scope": "read:*", "sub": "first", "exp": soon}),
                  "renewed": hs256({"scope": "read:*", "sub": "renewed"}),
                  "stale": hs256({"scope": "read:*", "sub": "stale", "exp": soon})}
        await p.evaluate(TOKEN_FUNCTION, {"url": server.url, **tokens})
        await p.wait_for_function("() => t.events.some((e) => e.type === 'subscribed')")
        await post(http, "orders", {"_id": "a"})
        await p.wait_for_function("() => t.events.some((e) => e.key === 'a')")

        # The first token expires: 4401, the function is asked again (and waits).
        await p.wait_for_function("() => t.calls === 2")
        for key in ("b", "c"):
            await post(http, "orders", {"_id": key})
        await p.evaluate("() => t.release()")
        await p.wait_for_function("() => t.events.some((e) => e.key === 'c')")
        await post(http, "orders", {"_id": "d"})
        await p.wait_for_function("() => t.events.some((e) => e.key === 'd')")
        events = await p.evaluate(
            "() => t.events.map((e) => [e.type, e.key ?? e.resumed ?? null])")
        assert events == [["subscribed", False], ["change", "a"], ["subscribed", True],
                          ["change", "b"], ["change", "c"], ["change", "d"]]
        assert await p.evaluate("() => t.states") == [
            {"state": "connecting", "code": None}, {"state": "open", "code": None},
            {"state": "reconnecting", "code": 4401}, {"state": "reconnecting", "code": None},
            {"state": "open", "code": None}]
        assert await p.evaluate("() => t.calls") == 2

        # The same token again: closed for good (no backoff loop), asked exactly twice.
        await p.wait_for_function("() => t.stale.state === 'closed'")
        assert await p.evaluate("() => t.staleStates") == [
            {"state": "connecting", "code": None}, {"state": "open", "code": None},
            {"state": "reconnecting", "code": 4401}, {"state": "closed", "code": 4401}]
        assert await p.evaluate("() => t.staleCalls") == 2
        await p.evaluate("() => { t.client.close(); t.stale.close(); }")

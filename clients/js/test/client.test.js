// The package against a real realtime server (`node --test test/`, `npm test`).
//
// Environment:
//   REALTIME_URL         a running server, e.g. http://127.0.0.1:8000 (without it the
//                        server tests skip)
//   REALTIME_TEST_SERVE  a JSON array: the command that starts another server (its
//                        REALTIME_PORT is set here), for the kill -9 test; the server
//                        must share REALTIME_URL's database (REALTIME_MONGODB_URI and
//                        REALTIME_DATABASE in the environment). Without it that test skips.
//   REALTIME_TEST_STRICT=1  fail instead of skipping (tests/test_js_client.py sets it).
//
// Node.js 20 has no global WebSocket: every client here is given the `ws` package's.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { WebSocket } from "ws";

import * as realtime from "realtime-mongo-client";

const { applyEvent, connect, keyOf, RealtimeClient } = realtime;

const BASE = process.env.REALTIME_URL?.replace(/\/+$/, "");
const SERVE = process.env.REALTIME_TEST_SERVE;
const STRICT = process.env.REALTIME_TEST_STRICT === "1";
const TIMEOUT_MS = 15_000;
const NEVER = () => 3_600_000; // reconnect only when the test says so (reconnectNow)

/** `false` (run), or why the test cannot run: a failure under REALTIME_TEST_STRICT=1. */
function needs(value, reason) {
  if (value) return false;
  if (STRICT) throw new Error(`REALTIME_TEST_STRICT=1 but ${reason}`);
  return reason;
}
const NO_SERVER = needs(BASE, "REALTIME_URL is not set (the URL of a running realtime server)");
const NO_SERVE = needs(BASE && SERVE, "REALTIME_URL and REALTIME_TEST_SERVE are not both set");

const clients = [];
const processes = [];
after(() => {
  for (const client of clients) client.close();
  for (const child of processes) if (child.exitCode === null) child.kill("SIGKILL");
});

/** A client on the `ws` package's WebSocket, closed after the tests. */
function open(url, options = {}) {
  const client = connect(url, { WebSocket, ...options });
  clients.push(client);
  return client;
}

/** A fresh collection name. */
function collection(prefix) {
  return `${prefix}_${Math.random().toString(36).slice(2, 10)}`;
}

/** One REST call; the parsed body (null for 204). */
async function rest(base, method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = method === "PATCH" ? "application/merge-patch+json"
      : "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(`${base}/api/collections/${path}`, init);
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}
const post = (base, coll, doc) => rest(base, "POST", `${coll}/documents`, doc);
const patch = (base, coll, id, doc) => rest(base, "PATCH", `${coll}/documents/${id}`, doc);
const del = (base, coll, id) => rest(base, "DELETE", `${coll}/documents/${id}`);

/** Events in arrival order, consumed by `until`. */
class Inbox {
  constructor() {
    this.items = [];
    this.pos = 0;
    this.wake = null;
  }

  push = (item) => {
    this.items.push(item);
    this.wake?.();
  };

  /** The items up to and including the first (from the last position) matching `pred`. */
  async until(pred, what, ms = TIMEOUT_MS) {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = this.items.findIndex((item, index) => index >= this.pos && pred(item));
      if (i >= 0) {
        const taken = this.items.slice(this.pos, i + 1);
        this.pos = i + 1;
        return taken;
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`${what} not received in ${ms} ms; got ${JSON.stringify(
          this.items.slice(this.pos))}`);
      }
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => { clearTimeout(timer); resolve(); };
      });
      this.wake = null;
    }
  }
}

/** The states a client goes through, as `{state, ...detail}`. */
function stateLog(client) {
  const inbox = new Inbox();
  client.on("state", (state, detail) => inbox.push({ state, ...detail }));
  return inbox;
}

const isChange = (key) => (ev) => ev.type === "change" && ev.key === key;
/** `op key` of each change, for readable assertions. */
const summary = (events) => events.filter((ev) => ev.type === "change")
  .map((ev) => `${ev.op} ${ev.key}`);

/** A free TCP port on the loopback interface. */
async function freePort() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Start the REALTIME_TEST_SERVE server on `port`; resolves when /readyz answers 200. */
async function startServer(port) {
  const [command, ...args] = JSON.parse(SERVE);
  const child = spawn(command, args, {
    env: { ...process.env, REALTIME_PORT: String(port) },
    stdio: ["ignore", "inherit", "inherit"],
  });
  processes.push(child);
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}`);
    try {
      if ((await fetch(`${url}/readyz`)).status === 200) return { child, url };
    } catch { /* not listening yet */ }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  child.kill("SIGKILL");
  throw new Error(`server on port ${port} not ready in 60 s`);
}

async function killHard(child) {
  if (child.exitCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGKILL");
  await exited;
}

// ------------------------------------------------------------------ without a server

test("every export of realtime.js is declared in realtime.d.ts, and only those", () => {
  const dts = readFileSync(new URL("../realtime.d.ts", import.meta.url), "utf8");
  const declared = [...dts.matchAll(/^export declare (?:const|function|class) (\w+)/gm)]
    .map((m) => m[1]).sort();
  assert.deepEqual(Object.keys(realtime).sort(), declared);
  const body = dts.slice(dts.indexOf("export declare class RealtimeClient"));
  const methods = [...body.matchAll(/^ {2}(\w+)(?:<[^>]*>)?\(/gm)].map((m) => m[1])
    .filter((name) => name !== "constructor").sort();
  const publicMethods = Object.getOwnPropertyNames(RealtimeClient.prototype)
    .filter((name) => name !== "constructor" && !name.startsWith("_")).sort();
  assert.deepEqual(methods, publicMethods);
  const fields = [...body.matchAll(/^ {2}(?:readonly )?(\w+): /gm)].map((m) => m[1]).sort();
  const client = new RealtimeClient("ws://127.0.0.1:9/ws", { WebSocket });
  const publicFields = Object.keys(client).filter((name) => !name.startsWith("_")).sort();
  assert.deepEqual(fields, publicFields);
});

test("the pure functions", () => {
  assert.equal(realtime.wsUrl("http://h:1"), "ws://h:1/ws");
  assert.equal(realtime.wsUrl("https://h/"), "wss://h/ws");
  assert.equal(realtime.wsUrl("ws://h/x"), "ws://h/x");
  assert.equal(realtime.wsUrl(), "ws://127.0.0.1:8000/ws"); // no page: the default server
  assert.equal(realtime.backoffDelay(0, () => 0.5), 250);
  assert.equal(realtime.backoffDelay(40, () => 0.5), realtime.BACKOFF_MAX_MS / 2);
  assert.equal(keyOf(1) === keyOf("1"), false);
  const docs = new Map();
  assert.equal(applyEvent(docs, { type: "snapshot", documents: [{ _id: "a", _version: 2 }] }),
    "reset");
  assert.equal(applyEvent(docs, { type: "change", op: "update", key: "a",
    document: { _id: "a", _version: 1 } }), null, "an older version is ignored");
  assert.equal(applyEvent(docs, { type: "change", op: "leave", key: "zz" }), null);
  assert.equal(applyEvent(docs, { type: "change", op: "delete", key: "a" }), "remove");
  // A projected subscription's update: the delta only.
  applyEvent(docs, { type: "snapshot", documents: [{ _id: "p", _version: 1, c: { n: "x" }, g: 0 }] });
  assert.equal(applyEvent(docs, { type: "change", op: "update", key: "p",
    updated: { _version: 2, "c.t": 2, "d.e": 3 }, removed: ["g"] }), "update");
  assert.deepEqual(docs.get(keyOf("p")), { _id: "p", _version: 2, c: { n: "x", t: 2 }, d: { e: 3 } });
  assert.equal(applyEvent(docs, { type: "change", op: "update", key: "zz",
    updated: { _version: 3, x: 1 }, removed: [] }), null, "not held: cannot apply");
  assert.throws(() => realtime.applyDelta({ a: 1 }, { "a.b": 2 }, []), TypeError);
});

test("without a WebSocket the constructor says what to pass", () => {
  const saved = Object.getOwnPropertyDescriptor(globalThis, "WebSocket");
  delete globalThis.WebSocket;
  try {
    assert.throws(() => connect("http://127.0.0.1:9"), {
      name: "TypeError", message: /pass one as the `WebSocket` option/,
    });
  } finally {
    if (saved) Object.defineProperty(globalThis, "WebSocket", saved);
  }
});

// ------------------------------------------------------------------ against the server

test("the server serves this package's realtime.js, importable from any origin",
  { skip: NO_SERVER }, async () => {
    const r = await fetch(`${BASE}/static/realtime.js`, { headers: { origin: "https://elsewhere.example" } });
    assert.equal(r.status, 200);
    assert.match(r.headers.get("content-type"), /^(text|application)\/javascript/);
    assert.equal(r.headers.get("cross-origin-resource-policy"), "cross-origin");
    assert.equal(r.headers.get("access-control-allow-origin"), "*");
    const served = Buffer.from(await r.arrayBuffer());
    const packaged = readFileSync(new URL("../realtime.js", import.meta.url));
    assert.ok(served.equals(packaged),
      "clients/js/realtime.js differs from the server's: run `npm run sync`");
    const other = await fetch(`${BASE}/static/app.js`);
    assert.equal(other.headers.get("cross-origin-resource-policy"), "same-origin");
    assert.equal(other.headers.get("access-control-allow-origin"), null);
  });

test("a snapshot, then insert, update, leave and delete as they happen",
  { skip: NO_SERVER, timeout: 60_000 }, async () => {
    const coll = collection("js_live");
    await post(BASE, coll, { _id: "a1", status: "open", total: 1 });
    await post(BASE, coll, { _id: "a2", status: "closed", total: 2 });

    const client = open(BASE);
    const states = stateLog(client);
    const inbox = new Inbox();
    const docs = new Map();
    const stop = client.subscribe(coll, { filter: { status: "open" }, snapshot: true }, (ev) => {
      applyEvent(docs, ev);
      inbox.push(ev);
    });
    await states.until((s) => s.state === "open", "open");
    assert.equal(client.welcome.protocol, realtime.PROTOCOL);
    const first = await inbox.until((ev) => ev.type === "snapshot", "snapshot");
    assert.deepEqual(first.map((ev) => ev.type), ["subscribed", "snapshot"]);
    assert.equal(first[0].resumed, false);
    assert.deepEqual(first[1].documents.map((d) => d._id), ["a1"]);
    assert.equal(first[1].reload, false);

    await post(BASE, coll, { _id: "a3", status: "open", total: 3 });
    await patch(BASE, coll, "a1", { total: 5 });
    await patch(BASE, coll, "a3", { status: "paid" }); // leaves the filter
    await patch(BASE, coll, "a2", { status: "open" }); // enters it
    await del(BASE, coll, "a1");
    await post(BASE, coll, { _id: "marker", status: "open" });
    const events = await inbox.until(isChange("marker"), "the marker");
    assert.deepEqual(summary(events),
      ["insert a3", "update a1", "leave a3", "update a2", "delete a1", "insert marker"]);
    assert.ok(events.every((ev) => ev.type === "change" && ev.collection === coll));
    const [insert, update, leave, enter, deletion] = events;
    assert.deepEqual(insert.document, { _id: "a3", status: "open", total: 3, _version: 1 });
    assert.equal(update.document.total, 5);
    assert.equal(update.updated.total, 5);
    assert.equal(leave.document, undefined);
    assert.equal(enter.document.total, 2);
    assert.equal(deletion.document, undefined);
    assert.ok(events.every((ev) => typeof ev.id === "string" && typeof ev.ts === "string"));
    assert.equal(new Set(events.map((ev) => ev.id)).size, events.length);

    // The live view is the database's answer to the same query.
    const listed = await rest(BASE, "GET",
      `${coll}/documents?filter=${encodeURIComponent('{"status":"open"}')}`);
    assert.deepEqual(Object.fromEntries(docs),
      Object.fromEntries(listed.documents.map((d) => [keyOf(d._id), d])));
    assert.deepEqual(client.positions(), [{ collection: coll, since: events.at(-1).id }]);

    // A refused subscription ends with an error event.
    const refused = new Inbox();
    client.subscribe(coll, { filter: { $where: "1" } }, refused.push);
    const [error] = await refused.until((ev) => ev.type === "error", "error");
    assert.equal(error.code, "bad_filter");
    stop();
    client.close();
    const closed = await states.until((s) => s.state === "closed", "closed");
    assert.equal(closed.at(-1).code, 1000);
  });

test("the server closes the socket: the client resumes with since, every missed change once",
  { skip: NO_SERVER, timeout: 60_000 }, async () => {
    const coll = collection("js_resume");
    await post(BASE, coll, { _id: "b1", n: 1 });
    const client = open(BASE, { delay: NEVER });
    const states = stateLog(client);
    const sent = [];
    client.on("send", (msg) => sent.push(msg));
    const inbox = new Inbox();
    client.subscribe(coll, { snapshot: true }, inbox.push);
    await inbox.until((ev) => ev.type === "snapshot", "snapshot");
    await post(BASE, coll, { _id: "b2", n: 2 });
    const [seen] = await inbox.until(isChange("b2"), "insert b2");

    // A frame over the server's 64 KiB limit: it closes the connection (1009).
    client.socket.send("x".repeat(70 * 1024));
    const lost = await states.until((s) => s.state === "reconnecting", "reconnecting");
    assert.equal(lost.at(-1).code, 1009);

    // Written while the client is away.
    await post(BASE, coll, { _id: "b3", n: 3 });
    await patch(BASE, coll, "b1", { n: 10 });
    await del(BASE, coll, "b2");
    sent.length = 0;
    client.reconnectNow();
    await states.until((s) => s.state === "open", "open again");
    await post(BASE, coll, { _id: "marker" });
    const events = await inbox.until(isChange("marker"), "the marker");
    assert.equal(events[0].type, "subscribed");
    assert.equal(events[0].resumed, true);
    assert.deepEqual(summary(events), ["insert b3", "update b1", "delete b2", "insert marker"]);
    assert.equal(events.length, 5, "nothing but the missed changes, once");
    const resubscribe = sent.find((msg) => msg.op === "subscribe");
    assert.equal(resubscribe.since, seen.id);
    assert.equal(resubscribe.snapshot, undefined);
    client.close();
  });

test("sinceTime replays the changes committed from then on, then live",
  { skip: NO_SERVER, timeout: 60_000 }, async () => {
    const coll = collection("js_since_time");
    const watcher = open(BASE);
    const watched = new Inbox();
    watcher.subscribe(coll, {}, watched.push);
    await watched.until((ev) => ev.type === "subscribed", "subscribed");
    for (const id of ["t1", "t2", "t3"]) await post(BASE, coll, { _id: id });
    const seen = (await watched.until(isChange("t3"), "t3")).filter((ev) => ev.type === "change");
    watcher.close();
    const from = seen[1].ts;
    const expected = seen.filter((ev) => ev.ts >= from).map((ev) => `insert ${ev.key}`);

    const client = open(BASE);
    const sent = [];
    client.on("send", (msg) => sent.push(msg));
    const inbox = new Inbox();
    client.subscribe(coll, { sinceTime: new Date(from) }, inbox.push);
    await post(BASE, coll, { _id: "t4" });
    const events = await inbox.until(isChange("t4"), "t4");
    assert.equal(events[0].type, "subscribed");
    assert.equal(events[0].resumed, true);
    assert.deepEqual(summary(events), [...expected, "insert t4"]);
    assert.equal(sent.find((msg) => msg.op === "subscribe").since_time, from);
    client.close();
  });

test("fields: a projected snapshot, then the changed fields only, applied in place",
  { skip: NO_SERVER, timeout: 60_000 }, async () => {
    const coll = collection("js_fields");
    await post(BASE, coll, { _id: "f1", title: "T", body: "B", meta: { owner: "ann", n: 1 } });
    const client = open(BASE);
    const inbox = new Inbox();
    const docs = new Map();
    client.subscribe(coll, { snapshot: true, fields: ["title", "meta.owner"] }, (ev) => {
      applyEvent(docs, ev);
      inbox.push(ev);
    });
    const [snapshot] = (await inbox.until((ev) => ev.type === "snapshot", "snapshot")).slice(-1);
    assert.deepEqual(snapshot.documents,
      [{ _id: "f1", title: "T", meta: { owner: "ann" }, _version: 1 }]);
    await patch(BASE, coll, "f1", { body: "C" }); // no projected field: nothing
    await patch(BASE, coll, "f1", { title: "U", meta: { owner: "bob" } });
    const [update] = (await inbox.until(isChange("f1"), "update")).slice(-1);
    assert.equal(update.document, undefined);
    assert.deepEqual(update.updated, { _version: 3, title: "U", "meta.owner": "bob" });
    assert.deepEqual(docs.get(keyOf("f1")),
      { _id: "f1", title: "U", meta: { owner: "bob" }, _version: 3 });
    client.close();
  });

test("aggregate: the full result, then the changed groups, kept by applyAggregate",
  { skip: NO_SERVER, timeout: 60_000 }, async () => {
    const coll = collection("js_agg");
    await post(BASE, coll, { _id: "o1", status: "open", total: 5 });
    await post(BASE, coll, { _id: "o2", status: "open", total: 7 });
    const client = open(BASE);
    const inbox = new Inbox();
    const groups = new Map();
    client.subscribe(coll, { aggregate: { group_by: "status", count: true, sum: ["total"],
      max: ["total"], throttle_ms: 0 } }, (ev) => {
      realtime.applyAggregate(groups, ev);
      inbox.push(ev);
    });
    const [first] = (await inbox.until((ev) => ev.type === "aggregate", "full")).slice(-1);
    assert.equal(first.full, true);
    assert.deepEqual(first.groups,
      [{ key: { status: "open" }, count: 2, sum: { total: 12 }, max: { total: 7 } }]);
    await patch(BASE, coll, "o2", { status: "paid" });
    await inbox.until(() => groups.size === 2 &&
      groups.get(realtime.groupKey({ status: "open" })).count === 1, "o2 moved to paid");
    assert.deepEqual(groups.get(realtime.groupKey({ status: "paid" })),
      { key: { status: "paid" }, count: 1, sum: { total: 7 }, max: { total: 7 } });
    await del(BASE, coll, "o1");
    await inbox.until(() => groups.size === 1, "the open group removed");
    client.close();
  });

test("kill -9 of the server, writes elsewhere, restart: every missed change once",
  { skip: NO_SERVE, timeout: 120_000 }, async () => {
    const port = await freePort();
    let server = await startServer(port);
    const coll = collection("js_restart");
    const client = open(server.url, { delay: NEVER });
    const states = stateLog(client);
    const inbox = new Inbox();
    const docs = new Map();
    client.subscribe(coll, { snapshot: true }, (ev) => {
      applyEvent(docs, ev);
      inbox.push(ev);
    });
    await inbox.until((ev) => ev.type === "snapshot", "snapshot");
    await post(server.url, coll, { _id: "c1", n: 1 });
    await inbox.until(isChange("c1"), "insert c1");

    await killHard(server.child);
    await states.until((s) => s.state === "reconnecting", "reconnecting");
    // While it is down, another server of the same database takes the writes.
    await post(BASE, coll, { _id: "c2", n: 2 });
    await patch(BASE, coll, "c1", { n: 11 });
    await post(BASE, coll, { _id: "c3", n: 3 });
    await del(BASE, coll, "c2");

    server = await startServer(port);
    client.reconnectNow();
    await states.until((s) => s.state === "open", "open again", 30_000);
    await post(server.url, coll, { _id: "marker" });
    const events = await inbox.until(isChange("marker"), "the marker", 30_000);
    assert.equal(events[0].type, "subscribed");
    assert.equal(events[0].resumed, true, "resumed from its last event id, not reloaded");
    assert.deepEqual(summary(events),
      ["insert c2", "update c1", "insert c3", "delete c2", "insert marker"]);
    assert.equal(events.length, 6);
    const listed = await rest(server.url, "GET", `${coll}/documents`);
    assert.deepEqual(Object.fromEntries(docs),
      Object.fromEntries(listed.documents.map((d) => [keyOf(d._id), d])));
    client.close();
    await killHard(server.child);
  });

test("Node.js's own WebSocket (22+), without the option",
  { skip: typeof globalThis.WebSocket === "undefined" ? "no global WebSocket (Node.js < 22)"
    : NO_SERVER, timeout: 30_000 }, async () => {
    const client = connect(BASE);
    clients.push(client);
    const inbox = new Inbox();
    client.subscribe(collection("js_native"), { snapshot: true }, inbox.push);
    const [, snapshot] = await inbox.until((ev) => ev.type === "snapshot", "snapshot");
    assert.deepEqual(snapshot.documents, []);
    client.close();
  });

// -- writes: one Idempotency-Key per logical write, retried -------------------------
const NO_WAIT = () => 0;

/** An HTTP server answering `replies` ([status, body]) in turn; records method and key. */
async function flakyServer(replies) {
  const { createServer: createHttpServer } = await import("node:http");
  const seen = [];
  const server = createHttpServer((req, res) => {
    req.resume();
    req.on("end", () => {
      seen.push([req.method, req.headers["idempotency-key"] ?? ""]);
      const [status, body] = replies[Math.min(seen.length, replies.length) - 1];
      res.writeHead(status, { "content-type": status >= 400 ? "application/problem+json"
        : "application/json" });
      res.end(body);
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${server.address().port}`;
  return { url, seen, close: () => new Promise((resolve) => server.close(resolve)) };
}

/** A TCP proxy to `base` that loses the next `drop` replies (resetting the connection). */
async function replyDropper(base) {
  const target = new URL(base);
  const { connect: tcpConnect } = await import("node:net");
  const proxy = { drop: 0, dropped: 0 };
  const sockets = new Set();
  const server = createServer((client) => {
    const upstream = tcpConnect(Number(target.port), target.hostname);
    sockets.add(client).add(upstream);
    client.on("data", (data) => upstream.write(data));
    upstream.on("data", (data) => {
      if (proxy.drop > 0) {
        proxy.drop -= 1;
        proxy.dropped += 1;
        client.resetAndDestroy();
        upstream.destroy();
        return;
      }
      client.write(data);
    });
    for (const [a, b] of [[client, upstream], [upstream, client]]) {
      a.on("close", () => b.destroy());
      a.on("error", () => b.destroy());
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  proxy.url = `http://127.0.0.1:${server.address().port}`;
  proxy.close = () => {
    for (const s of sockets) s.destroy();
    return new Promise((resolve) => server.close(resolve));
  };
  return proxy;
}

test("writes: insert, replace, patch and delete reach the subscribers once each",
  { skip: NO_SERVER, timeout: 60_000 }, async () => {
    const coll = collection("js_writes");
    const client = open(BASE);
    const inbox = new Inbox();
    client.subscribe(coll, {}, inbox.push);
    await inbox.until((ev) => ev.type === "subscribed", "subscribed");
    assert.deepEqual(await client.insert(coll, { _id: "w1", n: 1 }),
      { _id: "w1", n: 1, _version: 1 });
    assert.deepEqual(await client.replace(coll, "w1", { n: 2 }, { ifVersion: 1 }),
      { _id: "w1", n: 2, _version: 2 });
    assert.deepEqual(await client.patch(coll, "w1", { m: 3, n: null }, { ifVersion: 2 }),
      { _id: "w1", m: 3, _version: 3 });
    assert.equal(await client.delete(coll, "w1", { ifVersion: 3 }), undefined);
    await client.insert(coll, { _id: "marker" });
    const events = await inbox.until(isChange("marker"), "the marker");
    assert.deepEqual(summary(events),
      ["insert w1", "replace w1", "update w1", "delete w1", "insert marker"]);

    const refusal = await client.insert(coll, { _id: "marker" }).catch((err) => err);
    assert.ok(refusal instanceof realtime.RealtimeWriteError);
    assert.equal(refusal.status, 409);
    assert.equal(refusal.problem.status, 409);
    const stale = await client.replace(coll, "marker", {}, { ifVersion: 9 }).catch((e) => e);
    assert.equal(stale.status, 412);
  });

test("a write whose reply is lost is retried with its key and applied once",
  { skip: NO_SERVER, timeout: 60_000 }, async () => {
    const coll = collection("js_lost");
    const proxy = await replyDropper(BASE);
    try {
      const watcher = open(BASE);
      const inbox = new Inbox();
      watcher.subscribe(coll, {}, inbox.push);
      await inbox.until((ev) => ev.type === "subscribed", "subscribed");
      const writer = new RealtimeClient(proxy.url, { WebSocket, writeDelay: NO_WAIT });
      proxy.drop = 1;
      assert.deepEqual(await writer.insert(coll, { _id: "x", n: 1 }),
        { _id: "x", n: 1, _version: 1 }); // not a 409 for its own write
      proxy.drop = 1;
      assert.deepEqual(await writer.patch(coll, "x", { n: 2 }, { ifVersion: 1 }),
        { _id: "x", n: 2, _version: 2 }); // not a 412
      assert.equal(proxy.dropped, 2);
      await watcher.insert(coll, { _id: "marker" });
      const events = await inbox.until(isChange("marker"), "the marker");
      assert.deepEqual(summary(events), ["insert x", "update x", "insert marker"]);
    } finally {
      await proxy.close();
    }
  });

test("a 503 is retried with one Idempotency-Key, then given up", async () => {
  const unavailable = [503, '{"title":"Service Unavailable","status":503,"detail":"database down"}'];
  const flaky = await flakyServer([unavailable, unavailable, [201, '{"_id":"a","_version":1}']]);
  try {
    const client = new RealtimeClient(flaky.url, { WebSocket, writeDelay: NO_WAIT });
    assert.deepEqual(await client.insert("c", { n: 1 }), { _id: "a", _version: 1 });
    assert.deepEqual(flaky.seen.map(([method]) => method), ["POST", "POST", "POST"]);
    assert.equal(new Set(flaky.seen.map(([, key]) => key)).size, 1);
    assert.match(flaky.seen[0][1], /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  } finally {
    await flaky.close();
  }
  const down = await flakyServer([unavailable]);
  try {
    const client = new RealtimeClient(down.url, { WebSocket, writeDelay: NO_WAIT });
    const err = await client.delete("c", "a").catch((e) => e);
    assert.ok(err instanceof realtime.RealtimeWriteError);
    assert.equal(err.status, 503);
    assert.equal(err.detail, "database down");
    assert.equal(down.seen.length, realtime.WRITE_ATTEMPTS);
  } finally {
    await down.close();
  }
});

test("httpUrl is the REST base of a WebSocket or HTTP URL", () => {
  assert.equal(realtime.httpUrl("ws://h:8000/ws"), "http://h:8000");
  assert.equal(realtime.httpUrl("wss://h/rt/ws"), "https://h/rt");
  assert.equal(realtime.httpUrl("http://h:8000/"), "http://h:8000");
});

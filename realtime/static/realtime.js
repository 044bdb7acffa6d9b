// realtime.js: the JavaScript client of the realtime WebSocket protocol v1.
//
// A plain ES module with no dependencies and no build step. Every realtime
// server serves it at /static/realtime.js (importable from any origin); the same
// file is the npm package realtime-mongo-client (clients/js/, with TypeScript
// declarations). This file is the one source: the package copies it when packed.
//
//   import { connect } from "/static/realtime.js";   // or from "realtime-mongo-client"
//   const client = connect("/ws");
//   client.on("state", (state) => console.log(state));
//   const stop = client.subscribe("orders", { filter: { status: "open" }, snapshot: true },
//     (ev) => console.log(ev));
//
// The client reconnects by itself (exponential backoff with full jitter,
// 500 ms -> 20 s), resumes every subscription from the last event it saw
// (`since`), and when the server cannot resume (`resync`) reloads a snapshot.
// See the JSDoc of `RealtimeClient#subscribe` for the events a subscriber gets.
//
// Writes: `client.insert`, `replace`, `patch` and `delete` call the same server's
// REST API. Each logical write carries one `Idempotency-Key`; a 503 or a network
// error (a reply lost after the server applied the write) is retried with that
// key after a backoff, and the server applies the write once.
//
// With authentication on, pass `token`: a string, or a function (sync or async)
// that returns the current token and is called on every (re)connect, so an
// expired JWT is replaced by a fresh one (see `ConnectOptions`).
//
// Outside a browser it needs a WebSocket: Node.js 22+ has one built in; on older
// versions pass one, e.g. `connect(url, { WebSocket })` with `import { WebSocket }
// from "ws"`.

/** Smallest backoff ceiling, in milliseconds (the first retry waits 0..500 ms). */
export const BACKOFF_MIN_MS = 500;
/** Largest backoff ceiling, in milliseconds. */
export const BACKOFF_MAX_MS = 20000;
/** The protocol version this client speaks. */
export const PROTOCOL = 1;

/** Close codes after which reconnecting cannot help (auth / policy). */
const FATAL_CLOSE_CODES = new Set([1008, 4401, 4403]);
/** The close code of missing, invalid or expired credentials. */
const UNAUTHENTICATED = 4401;
/** Attempts of one write, all with its one `Idempotency-Key`. */
export const WRITE_ATTEMPTS = 4;
/** Largest backoff ceiling between the attempts of a write, in milliseconds. */
export const WRITE_BACKOFF_MAX_MS = 4000;
/** How long one attempt of a write may take, in milliseconds. */
const WRITE_TIMEOUT_MS = 10000;

/**
 * The delay before reconnect attempt `attempt` (0-based): exponential backoff
 * with full jitter, a uniform draw from `[0, min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2**attempt))`.
 *
 * @param {number} attempt how many attempts failed before this one (0 for the first retry)
 * @param {() => number} [random] a source of numbers in [0, 1) (default `Math.random`)
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, random = Math.random) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.max(0, attempt));
  return random() * ceiling;
}

/**
 * The WebSocket URL of a realtime server: `ws(s)://host/ws` from an `http(s)://`
 * base URL, a relative path (resolved against the page), or a `ws(s)://` URL as is.
 * An `http(s)` URL whose path is `/` (or empty) gets `/ws` appended.
 *
 * @param {string} [url] default: the page's own origin
 * @returns {string}
 */
export function wsUrl(url) {
  const base = typeof location !== "undefined" ? location.href : "http://127.0.0.1:8000/";
  const u = new URL(url ?? "/ws", base);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  if (u.pathname === "/" || u.pathname === "") u.pathname = "/ws";
  return u.toString();
}

/**
 * The base URL of a realtime server's REST API: `http(s)://host[/path]` from a
 * `ws(s)://host[/path]/ws` URL, a relative path (resolved against the page) or an
 * `http(s)://` URL; no trailing `/`.
 *
 * @param {string} [url] default: the page's own origin
 * @returns {string}
 */
export function httpUrl(url) {
  const base = typeof location !== "undefined" ? location.href : "http://127.0.0.1:8000/";
  const u = new URL(url ?? "/", base);
  if (u.protocol === "ws:") u.protocol = "http:";
  else if (u.protocol === "wss:") u.protocol = "https:";
  u.pathname = u.pathname.replace(/\/ws\/?$/, "");
  u.search = "";
  u.hash = "";
  return u.toString().replace(/\/+$/, "");
}

/**
 * A write the server refused (`status` its HTTP status, `problem` its
 * problem+json body), or that got no answer in any attempt (`status` 0).
 */
export class RealtimeWriteError extends Error {
  /**
   * @param {number} status
   * @param {string} detail
   * @param {object | null} [problem]
   */
  constructor(status, detail, problem = null) {
    super(status ? `${status} ${detail}` : detail);
    this.name = "RealtimeWriteError";
    this.status = status;
    this.detail = detail;
    this.problem = problem;
  }
}

// A random UUID (v4) for an Idempotency-Key; `crypto.randomUUID` needs a secure
// context, `getRandomValues` does not.
function newKey() {
  const c = globalThis.crypto;
  if (typeof c.randomUUID === "function") return c.randomUUID();
  const b = c.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// The RealtimeWriteError of a response with a status of 400 or more.
async function writeError(response) {
  let problem = null;
  try { problem = await response.json(); } catch { /* no JSON body */ }
  const detail = (problem && (problem.detail || problem.title)) || response.statusText ||
    "refused";
  return new RealtimeWriteError(response.status, String(detail), problem);
}

function documentsPath(collection, id) {
  const path = `/api/collections/${encodeURIComponent(collection)}/documents`;
  return id === undefined ? path : `${path}/${encodeURIComponent(id)}`;
}

/**
 * Apply one subscription event to a `Map` of documents keyed by `_id`
 * (the key's JSON text, so `1` and `"1"` differ), following the protocol's
 * live-query rules: a snapshot replaces everything; `insert`/`update`/`replace`
 * of an unknown key inserts; `leave`/`delete` of an unknown key does nothing;
 * a change whose `document._version` is not newer than the held one is ignored.
 *
 * @param {Map<string, object>} docs the documents, changed in place
 * @param {SubscriptionEvent} ev
 * @returns {"reset"|"insert"|"update"|"remove"|null} what happened to `docs`
 */
export function applyEvent(docs, ev) {
  if (ev.type === "snapshot") {
    docs.clear();
    for (const doc of ev.documents) docs.set(keyOf(doc._id), doc);
    return "reset";
  }
  if (ev.type !== "change") return null;
  const k = keyOf(ev.key);
  if (ev.op === "leave" || ev.op === "delete") {
    return docs.delete(k) ? "remove" : null;
  }
  const held = docs.get(k);
  const version = ev.document ? ev.document._version : ev.updated?._version;
  if (held && typeof version === "number" && typeof held._version === "number" &&
      version <= held._version) {
    return null;
  }
  if (!ev.document) {
    // A projected subscription's update: the changed fields only.
    if (!held || !ev.updated) return null;
    docs.set(k, applyDelta(held, ev.updated, ev.removed ?? []));
    return "update";
  }
  docs.set(k, ev.document);
  return held ? "update" : "insert";
}

/**
 * A copy of `doc` with an update's delta applied: each `removed` dotted path
 * unset, then each `updated` path set (objects created as needed). What
 * {@link applyEvent} does with the `update` of a subscription with `fields`.
 * @param {object} doc
 * @param {Record<string, unknown>} updated
 * @param {string[]} removed
 * @returns {object}
 */
export function applyDelta(doc, updated, removed) {
  const copy = (value) => {
    const out = {};
    for (const [k, v] of Object.entries(value)) {
      out[k] = v !== null && typeof v === "object" && !Array.isArray(v) ? copy(v) : v;
    }
    return out;
  };
  const out = copy(doc);
  for (const path of removed) {
    const names = path.split(".");
    const last = names.pop();
    let node = out;
    for (const name of names) node = node !== null && typeof node === "object" ? node[name] : undefined;
    if (node !== null && typeof node === "object" && !Array.isArray(node)) delete node[last];
  }
  for (const [path, value] of Object.entries(updated)) {
    const names = path.split(".");
    const last = names.pop();
    let node = out;
    for (const name of names) {
      if (!(name in node)) node[name] = {};
      node = node[name];
      if (node === null || typeof node !== "object" || Array.isArray(node)) {
        throw new TypeError(`${path} goes through a value that is not an object`);
      }
    }
    node[last] = value;
  }
  return out;
}

/**
 * Apply an `aggregate` event to a map of groups keyed by the JSON of their `key`:
 * a `full` one replaces everything, others update the groups they name and drop
 * the `removed` ones. Returns true if it was an `aggregate` event.
 * @param {Map<string, object>} groups
 * @param {object} ev
 * @returns {boolean}
 */
export function applyAggregate(groups, ev) {
  if (ev.type !== "aggregate") return false;
  if (ev.full) groups.clear();
  for (const group of ev.groups) {
    const k = groupKey(group.key);
    if (group.removed) groups.delete(k);
    else groups.set(k, group);
  }
  return true;
}

/**
 * The map key of a group as {@link applyAggregate} uses it: its `key` as JSON,
 * object fields sorted.
 * @param {object} key
 * @returns {string}
 */
export function groupKey(key) {
  const sorted = (v) => (v !== null && typeof v === "object" && !Array.isArray(v)
    ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, sorted(v[k])]))
    : Array.isArray(v) ? v.map(sorted) : v);
  return JSON.stringify(sorted(key ?? {}));
}

/**
 * `sinceTime` as the protocol sends it (RFC 3339), or null.
 * @param {string|Date|undefined|null} value
 * @returns {string|null}
 */
function sinceTimeOf(value) {
  if (value === undefined || value === null) return null;
  if (value instanceof Date) {
    if (Number.isNaN(value.getTime())) throw new TypeError("sinceTime is an invalid Date");
    return value.toISOString();
  }
  return String(value);
}

/**
 * The map key of a document `_id` as {@link applyEvent} uses it.
 * @param {unknown} key
 * @returns {string}
 */
export function keyOf(key) {
  return JSON.stringify(key);
}

/**
 * @typedef {object} SubscribeOptions
 * @property {object} [filter] a filter in the service's filter language (MongoDB syntax)
 * @property {boolean} [snapshot] start with the matching documents (a `snapshot` event)
 * @property {number} [limit] most documents in a snapshot (server default 100)
 * @property {string} [since] resume after this event id instead of starting now
 * @property {object} [aggregate] a live aggregate instead of documents, e.g.
 *   `{group_by: "status", count: true, sum: ["total"], throttle_ms: 100}`:
 *   `aggregate` events (the full result first, then the changed groups)
 * @property {string[]} [fields] only these dotted paths of each document (`_id`
 *   and `_version` always come); an update carries only the changed ones
 * @property {string|Date} [sinceTime] replay every change committed from this time
 *   (an RFC 3339 string or a Date) from the oplog, then go live; not with
 *   `since` or `snapshot`
 */

/**
 * What a subscriber's callback receives (`ev.type`):
 * - `subscribed` `{head, resumed}`: the server accepted the (re)subscription;
 *   `resumed` is true when it was sent with `since`.
 * - `snapshot` `{documents, head, reload}`: the matching documents; replace your
 *   state with them (`reload` is true when it follows a `reset`).
 * - `change` `{op, key, id, collection, document, updated, removed, ts}`: `op` is
 *   `insert|update|replace|delete|leave`.
 * - `reset` `{reason}`: the server could not resume (`history_lost`,
 *   `invalidated`, `overflow`) or the client had no position to resume from;
 *   a `snapshot` that replaces your state follows.
 * - `error` `{code, message}`: the server refused the subscription; it has ended.
 * @typedef {object} SubscriptionEvent
 * @property {"subscribed"|"snapshot"|"change"|"reset"|"error"} type
 */

/**
 * The credentials of a connection: an API key or JWT, or a function (sync or
 * async) that returns one. A function is called before every connect and
 * reconnect; returning `null` or `""` connects without credentials.
 * @typedef {string | (() => (string | null | Promise<string | null>))} TokenOption
 */

/**
 * @typedef {object} ConnectOptions
 * @property {TokenOption} [token] API key or JWT, sent as the first message
 *   (`{"op":"auth"}`, never in the URL). When the server closes with 4401
 *   (credentials missing, invalid or expired) and `token` is a function, it is
 *   called once more: if it yields a token other than the one just used, the
 *   client reconnects at once with it (resuming every subscription); otherwise,
 *   or if that fresh token is refused with 4401 too before `welcome`, the client
 *   stays `closed` (detail `{code: 4401, reason}`). A string token, and the close
 *   codes 1008 (policy/origin) and 4403 (forbidden), always end in `closed`.
 * @property {(attempt: number) => number} [delay] reconnect delay in ms (default {@link backoffDelay})
 * @property {(attempt: number) => number} [writeDelay] delay in ms before retrying a write
 *   (default {@link backoffDelay} up to {@link WRITE_BACKOFF_MAX_MS})
 * @property {string} [httpUrl] the REST API's base URL (default: from `url`, {@link httpUrl})
 * @property {typeof fetch} [fetch] the fetch function for writes (default the global one)
 * @property {boolean} [autoConnect] connect at once (default true)
 * @property {typeof WebSocket} [WebSocket] the WebSocket constructor (default the global
 *   one; required where there is none, e.g. `WebSocket` of the `ws` package on Node.js < 22)
 */

/**
 * Connect to a realtime server.
 *
 * @param {string} [url] `ws(s)://host/ws`, `http(s)://host`, or a path like `/ws`
 *   (default: this page's server)
 * @param {ConnectOptions} [options]
 * @returns {RealtimeClient}
 */
export function connect(url, options = {}) {
  const client = new RealtimeClient(url, options);
  if (options.autoConnect !== false) client.open();
  return client;
}

/**
 * A connection to a realtime server that survives disconnects.
 *
 * States (`client.state`, and the `state` event): `idle` before `open()`,
 * `connecting` (first attempt), `open`, `reconnecting` (connection lost; waiting
 * or retrying), `closed` (by `close()`, or by the server for auth/policy reasons).
 */
export class RealtimeClient {
  /**
   * @param {string} [url]
   * @param {ConnectOptions} [options]
   */
  constructor(url, options = {}) {
    /** The WebSocket URL. */
    this.url = wsUrl(url);
    /** The REST API's base URL (writes). */
    this.httpUrl = httpUrl(options.httpUrl ?? url);
    this._writeDelay = options.writeDelay ??
      ((attempt) => Math.min(WRITE_BACKOFF_MAX_MS, backoffDelay(attempt)));
    this._fetch = options.fetch ?? ((...args) => globalThis.fetch(...args));
    /** @type {TokenOption | null} the credentials option (may be replaced before a reconnect) */
    this.token = options.token ?? null;
    this._delay = options.delay ?? ((attempt) => backoffDelay(attempt));
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError("realtime: no WebSocket in this environment; pass one as the " +
        "`WebSocket` option (on Node.js before 22: `import { WebSocket } from \"ws\"`)");
    }
    /** @type {"idle"|"connecting"|"open"|"reconnecting"|"closed"} */
    this.state = "idle";
    /** The server's `welcome` message on the current connection, or null. */
    this.welcome = null;
    /**
     * The server's change feed as last reported on this connection (a `status`
     * message): `"live"`, or `"retrying"`/`"down"` while the database is
     * unavailable; null when not reported (yet) on this connection.
     * @type {"live"|"retrying"|"down"|string|null}
     */
    this.feed = null;
    /** Failed attempts since the last successful open. */
    this.attempt = 0;
    /** The current WebSocket (diagnostics; do not send on it). */
    this.socket = null;
    this._listeners = new Map();
    this._subs = new Set();
    this._wire = new Map(); // wire sub id -> subscription
    this._nextSub = 1;
    this._timer = null;
    this._watchdog = null;
    this._lastSeen = 0;
    this._gen = 0; // bumped by every connect and close: a stale async token is dropped
    this._usedToken = null; // the token of the current (or last) connection attempt
    this._authRetry = false; // reconnecting with a token fetched after a 4401, no welcome yet
  }

  /**
   * Listen to a client event; returns a function that removes the listener.
   * Events: `state` `(state, detail)`; one event per state name (`connecting`,
   * `open`, `reconnecting`, `closed`) `(detail)`; `message` `(msg)` for every
   * server message; `send` `(msg)` for every client message; `error` `(err)`
   * for connection-level errors; `status` `(feed, msg)` when the server reports
   * its change feed's state (`live`, `retrying`, `down`; see {@link RealtimeClient#feed}).
   *
   * @param {string} type
   * @param {(...args: any[]) => void} fn
   * @returns {() => void}
   */
  on(type, fn) {
    let set = this._listeners.get(type);
    if (!set) this._listeners.set(type, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  _emit(type, ...args) {
    const set = this._listeners.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (err) {
        console.error("realtime: listener failed", err);
      }
    }
  }

  _setState(state, detail = {}) {
    this.state = state;
    this._emit("state", state, detail);
    this._emit(state, detail);
  }

  /**
   * Subscribe to a live query. The subscription survives reconnects: it is
   * resumed with `since` (the last event id it received, or the `head` of its
   * last `subscribed`/`snapshot`), and reloaded with a snapshot (after a
   * `reset` event) when the server cannot resume.
   *
   * @param {string} collection
   * @param {SubscribeOptions} options
   * @param {(ev: SubscriptionEvent) => void} onEvent
   * @returns {() => void} unsubscribe
   */
  subscribe(collection, options, onEvent) {
    const sub = {
      collection,
      filter: options?.filter ?? null,
      snapshot: Boolean(options?.snapshot),
      limit: options?.limit ?? null,
      since: options?.since ?? null,
      sinceTime: sinceTimeOf(options?.sinceTime),
      fields: options?.fields ?? null,
      aggregate: options?.aggregate ?? null,
      onEvent,
      wire: null,
      awaitingSnapshot: false,
      resumed: false,
      active: true,
      everSubscribed: false,
      reload: false,
    };
    this._subs.add(sub);
    if (this.state === "open") this._sendSubscribe(sub, false);
    return () => {
      if (!sub.active) return;
      sub.active = false;
      this._subs.delete(sub);
      if (sub.wire !== null) {
        this._wire.delete(sub.wire);
        if (this.state === "open") this._send({ op: "unsubscribe", sub: sub.wire });
        sub.wire = null;
      }
    };
  }

  /** The resume positions of the active subscriptions (for diagnostics). */
  positions() {
    return [...this._subs].map((s) => ({ collection: s.collection, since: s.since }));
  }

  /** Start connecting (called by {@link connect} unless `autoConnect` is false). */
  open() {
    if (this.state !== "idle" && this.state !== "closed") return;
    this.attempt = 0;
    this._authRetry = false;
    this._connect("connecting");
  }

  /** Skip the current backoff wait and reconnect now (no-op unless reconnecting). */
  reconnectNow() {
    if (this.state !== "reconnecting" || this._timer === null) return;
    clearTimeout(this._timer);
    this._timer = null;
    this._connect("reconnecting");
  }

  /** Close for good: no reconnect; subscriptions stay registered but idle. */
  close() {
    this._gen += 1; // a token still being fetched is dropped
    clearTimeout(this._timer);
    this._timer = null;
    this._stopWatchdog();
    const ws = this.socket;
    this.socket = null;
    this._wire.clear();
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(1000, "client closed"); } catch { /* already closed */ }
    }
    this._setState("closed", { code: 1000, reason: "client closed" });
  }

  /**
   * Insert a document (its `_id`, if any, is kept).
   *
   * @param {string} collection
   * @param {object} document
   * @returns {Promise<object>} the stored document, with `_id` and `_version`
   * @throws {RealtimeWriteError} refused (409 `_id` exists, 422 invalid, ...) or no answer
   */
  insert(collection, document) {
    return this._request("POST", documentsPath(collection), document);
  }

  /**
   * Replace (or create) document `id`.
   *
   * @param {string} collection
   * @param {string} id
   * @param {object} document
   * @param {{ifVersion?: number}} [options] only if its `_version` is this (412 otherwise)
   * @returns {Promise<object>} the stored document
   * @throws {RealtimeWriteError}
   */
  replace(collection, id, document, options = {}) {
    return this._request("PUT", documentsPath(collection, id), document, options.ifVersion);
  }

  /**
   * Merge `patch` into document `id` (JSON merge patch: `null` removes a field).
   *
   * @param {string} collection
   * @param {string} id
   * @param {object} patch
   * @param {{ifVersion?: number}} [options]
   * @returns {Promise<object>} the stored document
   * @throws {RealtimeWriteError} 404 when there is no such document, 412, ...
   */
  patch(collection, id, patch, options = {}) {
    return this._request("PATCH", documentsPath(collection, id), patch, options.ifVersion,
      "application/merge-patch+json");
  }

  /**
   * Delete document `id`.
   *
   * @param {string} collection
   * @param {string} id
   * @param {{ifVersion?: number}} [options]
   * @returns {Promise<void>}
   * @throws {RealtimeWriteError} 404 when there is no such document, 412, ...
   */
  async delete(collection, id, options = {}) {
    await this._request("DELETE", documentsPath(collection, id), undefined, options.ifVersion);
  }

  // One logical write: one Idempotency-Key, retried on a 503 or a network error.
  async _request(method, path, body, ifVersion, contentType = "application/json") {
    const headers = { "Idempotency-Key": newKey() };
    const token = typeof this.token === "function" ? await this.token() : this.token;
    if (token) headers.Authorization = `Bearer ${token}`;
    if (ifVersion !== undefined && ifVersion !== null) headers["If-Match"] = `"${ifVersion}"`;
    let content;
    if (body !== undefined) {
      content = JSON.stringify(body);
      headers["Content-Type"] = contentType;
    }
    for (let attempt = 0; ; attempt += 1) {
      let failure;
      let response = null;
      try {
        response = await this._fetch(this.httpUrl + path, {
          method, headers, body: content, signal: AbortSignal.timeout(WRITE_TIMEOUT_MS),
        });
      } catch (err) {
        failure = new RealtimeWriteError(0, `no answer from ${this.httpUrl} (${err?.message ?? err})`);
      }
      if (response !== null) {
        if (response.status !== 503) {
          if (response.status >= 400) throw await writeError(response);
          return response.status === 204 ? undefined : response.json();
        }
        failure = await writeError(response);
      }
      if (attempt >= WRITE_ATTEMPTS - 1) throw failure;
      await new Promise((resolve) => setTimeout(resolve, this._writeDelay(attempt)));
    }
  }

  // Resolve the token (unless `token` is given), then open a socket with it.
  _connect(state, token) {
    const gen = ++this._gen;
    this._setState(state, { attempt: this.attempt });
    if (gen !== this._gen) return; // a listener closed the client
    if (token !== undefined) {
      this._openSocket(token);
      return;
    }
    this._withToken(gen, (value) => this._openSocket(value), (err) => {
      this._emit("error", err);
      this._lost({ code: 1006, reason: "token provider failed" });
    });
  }

  // Call `ok(token)` with the current token (the `token` option, or what its
  // function returns), or `failed(err)`; synchronously unless the function
  // returns a promise. Nothing is called if `close()` or another connect came
  // in between (`gen` is no longer current).
  _withToken(gen, ok, failed) {
    const normal = (value) => (value === undefined || value === null || value === "" ? null
      : String(value));
    let value;
    try {
      value = typeof this.token === "function" ? this.token() : this.token;
    } catch (err) {
      failed(err);
      return;
    }
    if (value && typeof value.then === "function") {
      value.then(
        (resolved) => { if (gen === this._gen) ok(normal(resolved)); },
        (err) => { if (gen === this._gen) failed(err); },
      );
    } else {
      ok(normal(value));
    }
  }

  _openSocket(token) {
    this._usedToken = token;
    let ws;
    try {
      ws = new this._WebSocket(this.url);
    } catch (err) {
      this._emit("error", err);
      this._lost({ code: 1006, reason: String(err) });
      return;
    }
    this.socket = ws;
    this.welcome = null;
    ws.onopen = () => {
      if (token) this._send({ op: "auth", token });
    };
    ws.onmessage = (e) => this._onMessage(e.data);
    ws.onerror = () => { /* a close event follows */ };
    ws.onclose = (e) => {
      if (this.socket !== ws) return;
      this._lost({ code: e.code, reason: e.reason });
    };
  }

  _lost({ code, reason }) {
    this.socket = null;
    this.welcome = null;
    this._wire.clear();
    for (const sub of this._subs) sub.wire = null;
    this._stopWatchdog();
    if (code === UNAUTHENTICATED && typeof this.token === "function" && !this._authRetry) {
      this._refreshAfterUnauthenticated(code, reason);
      return;
    }
    if (FATAL_CLOSE_CODES.has(code)) {
      this._setState("closed", { code, reason });
      return;
    }
    const delay = Math.max(0, this._delay(this.attempt));
    this.attempt += 1;
    this._setState("reconnecting", { code, reason, attempt: this.attempt, delay });
    if (this.state !== "reconnecting") return; // a listener closed the client
    this._timer = setTimeout(() => {
      this._timer = null;
      this._connect("reconnecting");
    }, delay);
  }

  // A 4401 with a token function: ask it once more; reconnect at once if the
  // token changed (an expired JWT was renewed), else stay closed.
  _refreshAfterUnauthenticated(code, reason) {
    const used = this._usedToken;
    this._authRetry = true;
    const gen = ++this._gen;
    this._setState("reconnecting", { code, reason, attempt: this.attempt, delay: 0 });
    if (gen !== this._gen) return; // a listener closed the client
    const stay = () => this._setState("closed", { code, reason });
    this._withToken(gen, (token) => {
      if (token === null || token === used) stay();
      else this._connect("reconnecting", token);
    }, (err) => {
      this._emit("error", err);
      stay();
    });
  }

  _send(msg) {
    const ws = this.socket;
    if (!ws || ws.readyState !== 1) return false;
    // Listeners (e.g. an event log) never see a credential.
    this._emit("send", msg.op === "auth" ? { ...msg, token: "[redacted]" } : msg);
    ws.send(JSON.stringify(msg));
    return true;
  }

  _sendSubscribe(sub, reload) {
    const wire = `s${this._nextSub++}`;
    const msg = { op: "subscribe", sub: wire, collection: sub.collection };
    if (sub.filter && Object.keys(sub.filter).length) msg.filter = sub.filter;
    if (sub.aggregate !== null) {
      msg.aggregate = sub.aggregate;
      sub.awaitingSnapshot = false;
      sub.resumed = false;
      sub.reload = reload;
      sub.wire = wire;
      this._wire.set(wire, sub);
      this._send(msg);
      return;
    }
    if (sub.limit !== null) msg.limit = sub.limit;
    if (sub.fields !== null) msg.fields = sub.fields;
    if (sub.since !== null) {
      msg.since = sub.since;
      sub.awaitingSnapshot = false;
      sub.resumed = true;
    } else if (sub.sinceTime !== null) {
      msg.since_time = sub.sinceTime;
      sub.awaitingSnapshot = false;
      sub.resumed = true;
    } else {
      msg.snapshot = sub.snapshot || reload;
      sub.awaitingSnapshot = msg.snapshot;
      sub.resumed = false;
    }
    sub.reload = reload;
    sub.wire = wire;
    this._wire.set(wire, sub);
    this._send(msg);
  }

  _onMessage(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      this._emit("error", new Error("server sent invalid JSON"));
      return;
    }
    this._lastSeen = Date.now();
    this._emit("message", msg);
    switch (msg.type) {
      case "welcome":
        this.welcome = msg;
        this.feed = typeof msg.feed === "string" ? msg.feed : null;
        this.attempt = 0;
        this._authRetry = false;
        this._setState("open", { welcome: msg });
        this._startWatchdog(msg.heartbeat);
        for (const sub of this._subs) {
          if (sub.since === null && sub.sinceTime === null && sub.aggregate === null &&
              sub.everSubscribed) {
            // We were subscribed but never learnt a position: reload.
            this._deliver(sub, { type: "reset", reason: "no_position" });
            this._sendSubscribe(sub, true);
          } else {
            this._sendSubscribe(sub, false);
          }
        }
        return;
      case "subscribed":
      case "snapshot":
      case "aggregate":
      case "change":
      case "resync":
      case "error":
        if (msg.sub !== undefined) {
          this._onSubMessage(msg);
        } else if (msg.type === "error") {
          this._emit("error", new Error(`${msg.code}: ${msg.message}`));
        }
        return;
      case "status":
        this.feed = typeof msg.feed === "string" ? msg.feed : null;
        this._emit("status", this.feed, msg);
        return;
      default:
        return; // pong, authenticated, future types
    }
  }

  _onSubMessage(msg) {
    const sub = this._wire.get(msg.sub);
    if (!sub || !sub.active) return; // an old wire id (after resync/unsubscribe)
    switch (msg.type) {
      case "subscribed":
        sub.everSubscribed = true;
        if (!sub.resumed && !sub.awaitingSnapshot) sub.since = msg.head ?? null;
        this._deliver(sub, { type: "subscribed", head: msg.head ?? null, resumed: sub.resumed });
        return;
      case "snapshot":
        sub.awaitingSnapshot = false;
        sub.since = msg.head ?? null;
        this._deliver(sub, {
          type: "snapshot", documents: msg.documents, head: msg.head ?? null,
          reload: Boolean(sub.reload),
        });
        return;
      case "aggregate":
        this._deliver(sub, { type: "aggregate", groups: msg.groups ?? [], full: Boolean(msg.full) });
        return;
      case "change": {
        sub.since = msg.id;
        sub.sinceTime = null;
        const { type, sub: _wire, ...rest } = msg;
        this._deliver(sub, { type: "change", ...rest });
        return;
      }
      case "resync":
        // The server cannot resume this subscription: drop it, reload with a snapshot.
        this._wire.delete(msg.sub);
        this._send({ op: "unsubscribe", sub: msg.sub });
        sub.since = null;
        sub.sinceTime = null;
        this._deliver(sub, { type: "reset", reason: msg.reason });
        if (sub.active && this.state === "open") this._sendSubscribe(sub, true);
        return;
      case "error":
        this._wire.delete(msg.sub);
        sub.active = false;
        sub.wire = null;
        this._subs.delete(sub);
        this._deliver(sub, { type: "error", code: msg.code, message: msg.message });
        return;
      default:
    }
  }

  _deliver(sub, ev) {
    try {
      sub.onEvent(ev);
    } catch (err) {
      console.error("realtime: subscriber failed", err);
    }
  }

  // Application-level heartbeat: ping every `heartbeat` s; a server silent
  // for two intervals is presumed gone and the socket is closed (reconnect).
  _startWatchdog(heartbeat) {
    this._stopWatchdog();
    const seconds = typeof heartbeat === "number" && heartbeat > 0 ? heartbeat : 25;
    let ref = 0;
    this._watchdog = setInterval(() => {
      if (Date.now() - this._lastSeen > 2 * seconds * 1000) {
        const ws = this.socket;
        if (ws) {
          try { ws.close(4000, "heartbeat timeout"); } catch { /* ignore */ }
          if (this.socket === ws) {
            ws.onclose = null;
            this._lost({ code: 1006, reason: "heartbeat timeout" });
          }
        }
        return;
      }
      this._send({ op: "ping", ref: String(++ref) });
    }, seconds * 1000);
  }

  _stopWatchdog() {
    if (this._watchdog !== null) clearInterval(this._watchdog);
    this._watchdog = null;
  }
}

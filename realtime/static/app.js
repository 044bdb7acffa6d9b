// The dashboard: watch a collection live, write documents through the REST API.
// Plain ES module, no framework, no inline script (CSP `default-src 'self'`).
// With authentication on (REALTIME_AUTH=apikey|jwt) it asks for an API key or
// token when the server wants one (a REST 401, a WebSocket close 4401/4403).

import { applyEvent, connect, keyOf } from "/static/realtime.js";

const $ = (id) => document.getElementById(id);
const MAX_LOG = 200;
const MAX_COLUMNS = 8;
const SNAPSHOT_LIMIT = 1000;
const FLASH_MS = 900;

const ui = {
  status: $("status"),
  retry: $("retry"),
  rate: $("rate"),
  spark: $("sparkline"),
  watchForm: $("watch-form"),
  select: $("collection-select"),
  newName: $("collection-new"),
  filter: $("filter"),
  watchError: $("watch-error"),
  table: $("docs"),
  head: $("docs").tHead.rows[0],
  body: $("docs").tBodies[0],
  empty: $("docs-empty"),
  caption: $("docs-caption"),
  editor: $("editor"),
  docId: $("doc-id"),
  docBody: $("doc-body"),
  result: $("editor-result"),
  log: $("log"),
  forget: $("forget-key"),
  auth: $("auth"),
  authForm: $("auth-form"),
  authToken: $("auth-token"),
  authError: $("auth-error"),
};

// --------------------------------------------------------------- credentials
// The key (or JWT) lives in sessionStorage: this tab only, never in the URL,
// never logged. REST calls send it as `Authorization: Bearer`, the WebSocket
// as its first message (the `token` option of realtime.js, read on every
// connect).

const TOKEN_KEY = "realtime.token";
let memoryToken = null; // if sessionStorage is unavailable

const credentials = {
  get() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) ?? memoryToken;
    } catch {
      return memoryToken;
    }
  },
  set(token) {
    memoryToken = token;
    try { sessionStorage.setItem(TOKEN_KEY, token); } catch { /* memory only */ }
  },
  clear() {
    memoryToken = null;
    try { sessionStorage.removeItem(TOKEN_KEY); } catch { /* memory only */ }
  },
};
ui.forget.hidden = !credentials.get();

// --------------------------------------------------------------- connection

const client = connect("/ws", { autoConnect: false, token: () => credentials.get() });
let reconnectTimer = null;

client.on("state", (state, detail) => {
  ui.status.dataset.state = state;
  clearInterval(reconnectTimer);
  ui.retry.hidden = state !== "reconnecting";
  if (state === "reconnecting" && detail.delay !== undefined) {
    const until = Date.now() + detail.delay;
    const show = () => {
      const s = Math.max(0, (until - Date.now()) / 1000);
      ui.status.textContent = s > 0.05
        ? `reconnecting in ${s.toFixed(1)} s (attempt ${detail.attempt})`
        : `reconnecting (attempt ${detail.attempt})`;
    };
    show();
    reconnectTimer = setInterval(show, 200);
  } else if (state === "open") {
    ui.status.textContent = "live";
  } else {
    ui.status.textContent = state;
  }
  if (state === "reconnecting" && detail.code !== undefined) {
    logLine("conn", `connection lost (${detail.code}${detail.reason ? ` ${detail.reason}` : ""})`);
  } else if (state === "open") {
    logLine("conn", `connected to ${detail.welcome?.server ?? "server"}`);
  } else if (state === "closed" && detail.code !== undefined && detail.code !== 1000) {
    logLine("conn", `closed (${detail.code}${detail.reason ? ` ${detail.reason}` : ""})`);
  }
  if (state === "closed" && (detail.code === 4401 || detail.code === 4403)) {
    credentialsRefused(detail.reason || `closed ${detail.code}`, credentials.get());
  }
});
ui.retry.addEventListener("click", () => client.reconnectNow());
client.open();

// ------------------------------------------------------------ the key form

let authNeeded = false;
let reloads = 0;

/** Show the key form (with `error`, if any) and stop the connection. */
function askForKey(error) {
  authNeeded = true;
  if (client.state !== "closed" && client.state !== "idle") client.close();
  ui.status.textContent = "key needed";
  ui.forget.hidden = !credentials.get();
  if (error) ui.authError.textContent = error;
  const wasHidden = ui.auth.hidden;
  ui.auth.hidden = false;
  if (wasHidden || error) ui.authToken.focus();
}

/**
 * The server refused the credentials `used` (null: none were sent) with `detail`.
 * An answer about a key that has been replaced since is ignored.
 */
function credentialsRefused(detail, used) {
  if ((used ?? null) !== credentials.get()) return;
  if (used) {
    credentials.clear(); // a refused (or expired) key is not sent again
    logLine("auth", `key refused: ${detail}`);
    askForKey(`The server refused this key: ${detail}`);
  } else {
    askForKey("");
  }
}

/** Reconnect with the current credentials; load the collections and the watched query again. */
async function reload() {
  const run = ++reloads;
  authNeeded = false;
  if (client.state !== "closed" && client.state !== "idle") client.close();
  ui.forget.hidden = !credentials.get();
  await loadCollections();
  if (run !== reloads || authNeeded) return;
  client.open();
  if (watching) watch(watching.collection, watching.filter, watching.filterText);
}

ui.authForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const token = ui.authToken.value.trim();
  ui.authToken.value = "";
  if (!token) {
    ui.authError.textContent = "Enter an API key or token.";
    return;
  }
  credentials.set(token);
  ui.authError.textContent = "";
  ui.auth.hidden = true;
  logLine("auth", "key entered: reconnecting");
  reload();
});

ui.forget.addEventListener("click", () => {
  credentials.clear();
  docs.clear();
  renderAll(); // the documents were read with the key: take them off the screen
  logLine("auth", "key forgotten");
  reload();
});

/** `fetch` with the stored credentials; a 401 brings up the key form. */
async function api(url, init = {}) {
  const token = credentials.get();
  const headers = { Accept: "application/json", ...init.headers };
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(url, { ...init, headers });
  if (r.status === 401) credentialsRefused(await problemDetail(r.clone()), token);
  return r;
}

// ------------------------------------------------------------------- state

/** @type {Map<string, object>} documents of the current subscription */
const docs = new Map();
let columns = [];
let unsubscribe = null;
let watching = null; // {collection, filter}
const removals = new Map(); // key -> timer of a row fading out

// ------------------------------------------------------------------ rendering

function cellText(value) {
  if (value === undefined) return "";
  if (value === null) return "null";
  if (typeof value === "object") {
    const text = JSON.stringify(value);
    return text.length > 80 ? `${text.slice(0, 79)}…` : text;
  }
  return String(value);
}

function computeColumns() {
  const counts = new Map();
  for (const doc of docs.values()) {
    for (const field of Object.keys(doc)) {
      if (field === "_id" || field === "_version") continue;
      counts.set(field, (counts.get(field) ?? 0) + 1);
    }
  }
  const fields = [...counts.entries()]
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .slice(0, MAX_COLUMNS)
    .map(([field]) => field)
    .sort();
  return ["_id", ...fields, "_version"];
}

function renderHead() {
  ui.head.replaceChildren(...columns.map((c) => {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = c;
    return th;
  }));
}

function fillRow(tr, doc) {
  tr.dataset.key = String(doc._id);
  tr.dataset.version = doc._version ?? "";
  tr.replaceChildren(...columns.map((c) => {
    const td = document.createElement("td");
    td.dataset.col = c;
    td.textContent = cellText(doc[c]);
    return td;
  }));
}

/** @type {Map<string, HTMLTableRowElement>} table rows by document key */
const rows = new Map();

function rowOf(k) {
  return rows.get(k) ?? null;
}

function flash(tr, kind) {
  tr.classList.remove("flash-insert", "flash-update", "flash-leave");
  void tr.offsetWidth; // restart the animation
  tr.classList.add(`flash-${kind}`);
}

function updateCaption() {
  const n = docs.size;
  ui.caption.textContent = watching
    ? `${watching.collection}${watching.filterText ? ` ${watching.filterText}` : ""} · ${n} document${n === 1 ? "" : "s"}`
    : "";
  ui.caption.dataset.count = String(n);
  ui.empty.hidden = n > 0 || removals.size > 0;
  ui.empty.textContent = watching ? "No matching documents." : "No collection watched yet.";
}

function renderAll() {
  for (const timer of removals.values()) clearTimeout(timer);
  removals.clear();
  columns = computeColumns();
  renderHead();
  rows.clear();
  for (const [k, doc] of docs) {
    const tr = document.createElement("tr");
    tr.dataset.k = k;
    fillRow(tr, doc);
    rows.set(k, tr);
  }
  ui.body.replaceChildren(...rows.values());
  updateCaption();
}

function upsertRow(k, doc, kind) {
  const wanted = computeColumns();
  if (wanted.join("\u0000") !== columns.join("\u0000")) {
    renderAll();
    const tr = rowOf(k);
    if (tr) flash(tr, kind);
    return;
  }
  let tr = rowOf(k);
  const timer = removals.get(k);
  if (timer !== undefined) {
    clearTimeout(timer);
    removals.delete(k);
    if (tr) delete tr.dataset.leaving;
  }
  if (!tr) {
    tr = document.createElement("tr");
    tr.dataset.k = k;
    rows.set(k, tr);
    ui.body.append(tr);
  }
  fillRow(tr, doc);
  flash(tr, kind);
  updateCaption();
}

function removeRow(k) {
  const tr = rowOf(k);
  if (!tr || tr.dataset.leaving !== undefined) return;
  tr.dataset.leaving = "";
  flash(tr, "leave");
  removals.set(k, setTimeout(() => {
    removals.delete(k);
    if (rows.get(k) === tr) rows.delete(k);
    tr.remove();
    updateCaption();
  }, FLASH_MS / 2));
  updateCaption();
}

// ------------------------------------------------------------------- event log

function logLine(kind, text) {
  const li = document.createElement("li");
  li.className = `log-${kind}`;
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString([], { hour12: false });
  const what = document.createElement("b");
  what.textContent = kind;
  const rest = document.createElement("span");
  rest.textContent = text;
  li.append(time, what, rest);
  ui.log.prepend(li);
  while (ui.log.children.length > MAX_LOG) ui.log.lastElementChild.remove();
}

// ------------------------------------------------------------------ sparkline

const buckets = new Array(60).fill(0);
let bucketStart = Math.floor(Date.now() / 1000);

function countEvent() {
  rollBuckets();
  buckets[buckets.length - 1] += 1;
}

function rollBuckets() {
  const now = Math.floor(Date.now() / 1000);
  const steps = Math.min(buckets.length, now - bucketStart);
  for (let i = 0; i < steps; i++) {
    buckets.shift();
    buckets.push(0);
  }
  bucketStart = now;
}

function drawSparkline() {
  rollBuckets();
  const canvas = ui.spark;
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 120;
  const h = canvas.clientHeight || 28;
  if (canvas.width !== Math.round(w * ratio)) {
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const complete = buckets.slice(0, -1); // the current second is not over yet
  const max = Math.max(1, ...complete);
  const color = getComputedStyle(canvas).color || "#2a7";
  ctx.beginPath();
  complete.forEach((v, i) => {
    const x = (i / (complete.length - 1)) * (w - 2) + 1;
    const y = h - 2 - (v / max) * (h - 4);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.stroke();
  const last = complete[complete.length - 1];
  ui.rate.textContent = `${last}/s`;
  ui.rate.dataset.max = String(max);
}

setInterval(drawSparkline, 1000);
drawSparkline();

// --------------------------------------------------------------- subscription

function onEvent(ev) {
  switch (ev.type) {
    case "subscribed":
      logLine("sub", ev.resumed ? "resumed" : "subscribed");
      return;
    case "snapshot": {
      const before = new Map(docs);
      applyEvent(docs, ev);
      renderAll();
      if (ev.reload) {
        // Show what changed while we were away.
        for (const [k, doc] of docs) {
          const old = before.get(k);
          if (!old) flash(rows.get(k), "insert");
          else if (old._version !== doc._version) flash(rows.get(k), "update");
        }
      }
      logLine("snapshot", `${ev.documents.length} document${ev.documents.length === 1 ? "" : "s"}` +
        (ev.reload ? " (reloaded)" : ""));
      if (ev.documents.length >= SNAPSHOT_LIMIT) {
        logLine("note", `showing the first ${SNAPSHOT_LIMIT} documents`);
      }
      return;
    }
    case "reset":
      logLine("resync", `${ev.reason}: reloading`);
      return;
    case "change": {
      countEvent();
      const k = keyOf(ev.key);
      const what = applyEvent(docs, ev);
      if (what === "insert" || what === "update") {
        upsertRow(k, docs.get(k), what === "insert" ? "insert" : "update");
      } else if (what === "remove") {
        removeRow(k);
      }
      logLine(ev.op, `${cellText(ev.key)}${ev.document ? ` v${ev.document._version ?? "?"}` : ""}`);
      return;
    }
    case "error":
      ui.watchError.textContent = ev.message;
      logLine("error", `${ev.code}: ${ev.message}`);
      return;
    default:
  }
}

function watch(collection, filter, filterText) {
  if (unsubscribe) unsubscribe();
  docs.clear();
  watching = { collection, filter, filterText };
  renderAll();
  ui.table.dataset.collection = collection;
  logLine("watch", `${collection}${filterText ? ` ${filterText}` : ""}`);
  unsubscribe = client.subscribe(collection, { filter, snapshot: true, limit: SNAPSHOT_LIMIT },
    onEvent);
  const params = new URLSearchParams({ collection });
  if (filterText) params.set("filter", filterText);
  history.replaceState(null, "", `#${params}`);
}

ui.watchForm.addEventListener("submit", (e) => {
  e.preventDefault();
  ui.watchError.textContent = "";
  const collection = ui.newName.value.trim() || ui.select.value;
  if (!collection) {
    ui.watchError.textContent = "Choose a collection or type a new name.";
    return;
  }
  if (!/^[A-Za-z][A-Za-z0-9_-]{0,63}$/.test(collection)) {
    ui.watchError.textContent = "A collection name is a letter then up to 63 letters, digits, _ or -.";
    return;
  }
  const filterText = ui.filter.value.trim();
  let filter = null;
  if (filterText) {
    try {
      filter = JSON.parse(filterText);
    } catch (err) {
      ui.watchError.textContent = `Filter is not JSON: ${err.message}`;
      return;
    }
    if (filter === null || typeof filter !== "object" || Array.isArray(filter)) {
      ui.watchError.textContent = "Filter must be a JSON object.";
      return;
    }
  }
  watch(collection, filter, filterText);
});

ui.select.addEventListener("change", () => {
  if (ui.select.value) ui.newName.value = "";
});

// Clicking a row loads it into the editor.
ui.body.addEventListener("click", (e) => {
  const tr = e.target.closest("tr");
  if (!tr) return;
  const doc = docs.get(tr.dataset.k);
  if (!doc) return;
  const { _id, _version, ...rest } = doc;
  ui.docId.value = String(_id);
  ui.docBody.value = JSON.stringify(rest, null, 2);
  ui.docId.focus();
});

// --------------------------------------------------------------- collections

async function loadCollections() {
  try {
    const r = await api("/api/collections");
    if (r.status === 401) return []; // the key form is up
    if (!r.ok) throw new Error(await problemDetail(r));
    const { collections } = await r.json();
    const current = ui.select.value;
    ui.select.replaceChildren(new Option("(choose)", ""),
      ...collections.map((c) => new Option(c, c)));
    if (collections.includes(current)) ui.select.value = current;
    return collections;
  } catch (err) {
    logLine("error", `collections: ${err.message}`);
    return [];
  }
}

// ------------------------------------------------------------------ editor

async function problemDetail(r) {
  try {
    const body = await r.json();
    return body.detail || body.title || `${r.status} ${r.statusText}`;
  } catch {
    return `${r.status} ${r.statusText}`;
  }
}

function say(text, ok) {
  ui.result.textContent = text;
  ui.result.className = ok ? "ok" : "error";
}

ui.editor.addEventListener("submit", async (e) => {
  e.preventDefault();
  const action = e.submitter?.dataset.action ?? "insert";
  const collection = watching?.collection ?? (ui.newName.value.trim() || ui.select.value);
  if (!collection) {
    say("Watch a collection first.", false);
    return;
  }
  const id = ui.docId.value.trim();
  if (action !== "insert" && !id) {
    say(`${action === "put" ? "Replace" : action === "patch" ? "Patch" : "Delete"} needs an id.`, false);
    return;
  }
  let body;
  if (action !== "delete") {
    try {
      body = JSON.parse(ui.docBody.value || "{}");
    } catch (err) {
      say(`Document is not JSON: ${err.message}`, false);
      return;
    }
    if (body === null || typeof body !== "object" || Array.isArray(body)) {
      say("Document must be a JSON object.", false);
      return;
    }
    if (action === "insert" && id) body = { ...body, _id: id };
  }
  const base = `/api/collections/${encodeURIComponent(collection)}/documents`;
  const url = action === "insert" ? base : `${base}/${encodeURIComponent(id)}`;
  const method = { insert: "POST", put: "PUT", patch: "PATCH", delete: "DELETE" }[action];
  const headers = {};
  if (body !== undefined) {
    headers["Content-Type"] = action === "patch" ? "application/merge-patch+json" : "application/json";
  }
  try {
    const r = await api(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (!r.ok) {
      say(`${r.status}: ${await problemDetail(r)}`, false);
      return;
    }
    if (r.status === 204) {
      say(`deleted ${id}`, true);
    } else {
      const doc = await r.json();
      say(`${method} ok: ${doc._id} v${doc._version}`, true);
      if (action === "insert") ui.docId.value = String(doc._id);
    }
    if (!watching) loadCollections();
  } catch (err) {
    say(`request failed: ${err.message}`, false);
  }
});

// --------------------------------------------------------------------- start

(async () => {
  const collections = await loadCollections();
  const params = new URLSearchParams(location.hash.slice(1));
  const collection = params.get("collection");
  if (collection) {
    if (collections.includes(collection)) ui.select.value = collection;
    else ui.newName.value = collection;
    ui.filter.value = params.get("filter") ?? "";
    ui.watchForm.requestSubmit();
  }
  document.body.dataset.ready = "true";
})();

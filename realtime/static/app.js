// The dashboard: browse a collection live, write documents through the REST API.
// Plain ES module, no framework, no inline script or style (CSP `default-src 'self'`;
// styles are set only through the CSSOM: `element.style.height`).
//
// How it stays responsive (docs/clients.md#dashboard-browser):
// - every WebSocket event and every REST page is applied to an in-memory model
//   (`model`); the screen is rendered at most once per animation frame (`schedule`);
// - the table is virtualised: fixed row height, only the visible rows plus a small
//   overscan are in the DOM, two spacer rows stand for the others;
// - the columns are kept from per-field counts updated per document, never
//   recomputed over all documents;
// - the displayed order (`view`) is updated incrementally: binary insertion of new
//   rows, one filter pass per frame for removals; a full sort only when the sort or
//   the search changes.
// With authentication on (REALTIME_AUTH=apikey|jwt) it asks for an API key or
// token when the server wants one (a REST 401, a WebSocket close 4401/4403).

import { applyAggregate, applyDelta, connect, groupKey, keyOf } from "/static/realtime.js";

const $ = (id) => document.getElementById(id);
const MAX_LOG = 200;
const MAX_COLUMNS = 8;
const PAGE_SIZE = 1000;
const OVERSCAN = 8;
const FLASH_MS = 900;
const MAX_FLASHES = 500;
const RECOUNT_QUIET_MS = 800;
const RECOUNT_MAX_WAIT_MS = 5000;
/**
 * The most rows the browser holds (loaded pages plus live inserts). Pages stop
 * loading there; a live insert beyond it drops the oldest loaded row, and the
 * caption says how many were dropped. `?max_rows=N` lowers it (10..100,000).
 */
const MAX_ROWS = (() => {
  const asked = Number(new URLSearchParams(location.search).get("max_rows"));
  return Number.isInteger(asked) && asked >= 10 && asked < 100_000 ? asked : 100_000;
})();
/** The snapshot: the first page (the server sends at most 1,000). */
const SNAPSHOT_LIMIT = Math.min(1000, MAX_ROWS);
const fmt = new Intl.NumberFormat("en-US");

const ui = {
  status: $("status"),
  countdown: $("countdown"),
  retry: $("retry"),
  rate: $("rate"),
  spark: $("sparkline"),
  watchForm: $("watch-form"),
  select: $("collection-select"),
  newName: $("collection-new"),
  filter: $("filter"),
  fields: $("fields"),
  picker: $("field-picker"),
  replayFrom: $("replay-from"),
  watchError: $("watch-error"),
  aggForm: $("agg-form"),
  aggGroup: $("agg-group"),
  aggOp: $("agg-op"),
  aggField: $("agg-field"),
  aggStop: $("agg-stop"),
  aggError: $("agg-error"),
  aggCaption: $("agg-caption"),
  aggChart: $("agg-chart"),
  caption: $("docs-caption"),
  quick: $("quick"),
  loadMore: $("load-more"),
  loadAll: $("load-all"),
  loadStop: $("load-stop"),
  scroller: $("docs-scroll"),
  table: $("docs"),
  cols: $("docs").querySelector("colgroup"),
  head: $("docs").tHead.rows[0],
  body: $("docs").tBodies[0],
  topSpacer: $("docs").tBodies[0].rows[0],
  bottomSpacer: $("docs").tBodies[0].rows[1],
  empty: $("docs-empty"),
  inspector: $("inspector"),
  inspectorKey: $("inspector-key"),
  inspectorMeta: $("inspector-meta"),
  inspectorJson: $("inspector-json"),
  inspectorTextLabel: $("inspector-text-label"),
  inspectorText: $("inspector-text"),
  inspectorEdit: $("inspector-edit"),
  inspectorSave: $("inspector-save"),
  inspectorCancel: $("inspector-cancel"),
  inspectorClose: $("inspector-close"),
  inspectorConflict: $("inspector-conflict"),
  inspectorConflictText: $("inspector-conflict-text"),
  inspectorReload: $("inspector-reload"),
  inspectorResult: $("inspector-result"),
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

// ------------------------------------------------------------ the state pill
// One polite live region (#status) that changes only when the state changes:
// live, database unavailable (the server's feed is retrying or down), reconnecting,
// offline (the browser has no network). The reconnect countdown is outside it.

const client = connect("/ws", { autoConnect: false, token: () => credentials.get() });
let authNeeded = false;
let countdownTimer = null;
// After `welcome` the pill waits for the next message: a server whose feed is not
// live says so right away (`status`), so the pill never announces a "live" that
// is not. Without any message (nothing subscribed) it settles after 300 ms.
let feedSettled = true;
let settleTimer = null;

function settleFeed() {
  clearTimeout(settleTimer);
  settleTimer = null;
  if (feedSettled) return;
  feedSettled = true;
  updatePill();
}

function pillState() {
  if (authNeeded) return ["key", "key needed"];
  if (navigator.onLine === false) return ["offline", "offline"];
  switch (client.state) {
    case "open":
      if (!feedSettled) return null; // keep what it says until the feed is known
      return client.feed && client.feed !== "live"
        ? ["db-down", "database unavailable"] : ["open", "live"];
    case "connecting":
      return ["connecting", "connecting"];
    case "reconnecting":
      return ["reconnecting", "reconnecting"];
    case "closed":
      return ["closed", "disconnected"];
    default:
      return ["idle", "idle"];
  }
}

function updatePill() {
  const said = pillState();
  if (said === null) return;
  const [state, label] = said;
  if (ui.status.dataset.state !== state) ui.status.dataset.state = state;
  if (ui.status.textContent !== label) ui.status.textContent = label;
  ui.status.title = state === "db-down"
    ? `the server cannot reach its database (feed ${client.feed}); changes resume when it is back`
    : "";
}

function showCountdown(detail) {
  clearInterval(countdownTimer);
  countdownTimer = null;
  if (client.state !== "reconnecting" || detail.delay === undefined) {
    ui.countdown.hidden = true;
    ui.countdown.textContent = "";
    return;
  }
  const until = Date.now() + detail.delay;
  const show = () => {
    const s = Math.max(0, (until - Date.now()) / 1000);
    ui.countdown.textContent = s > 0.05
      ? `next try in ${s.toFixed(1)} s (attempt ${detail.attempt})`
      : `trying (attempt ${detail.attempt})`;
    if (s <= 0.05) {
      clearInterval(countdownTimer);
      countdownTimer = null;
    }
  };
  ui.countdown.hidden = false;
  show();
  countdownTimer = setInterval(show, 200);
}

client.on("state", (state, detail) => {
  clearTimeout(settleTimer);
  feedSettled = state !== "open" || client.feed !== null;
  if (!feedSettled) settleTimer = setTimeout(settleFeed, 300);
  updatePill();
  showCountdown(detail);
  ui.retry.hidden = state !== "reconnecting";
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
client.on("message", (msg) => {
  if (!feedSettled && msg.type !== "welcome" && msg.type !== "status") settleFeed();
});
client.on("status", (feed) => {
  feedSettled = true;
  clearTimeout(settleTimer);
  updatePill();
  logLine("conn", feed === "live" ? "database feed live again" : `database unavailable (feed ${feed})`);
});
ui.retry.addEventListener("click", () => client.reconnectNow());
window.addEventListener("offline", updatePill);
window.addEventListener("online", () => {
  updatePill();
  client.reconnectNow();
});

// ------------------------------------------------------------ the key form

let reloads = 0;

/** Show the key form (with `error`, if any) and stop the connection. */
function askForKey(error) {
  authNeeded = true;
  if (client.state !== "closed" && client.state !== "idle") client.close();
  updatePill();
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
  updatePill();
  ui.forget.hidden = !credentials.get();
  await loadCollections();
  if (run !== reloads || authNeeded) return;
  client.open();
  if (watching) watch(watching.collection, watching.filter, watching.filterText, watching.fields);
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
  // The documents were read with the key: take them off the screen.
  paging.gen += 1;
  model.reset([]);
  closeInspector(false);
  renderNow();
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

async function problemDetail(r) {
  try {
    const body = await r.json();
    return body.detail || body.title || `${r.status} ${r.statusText}`;
  } catch {
    return `${r.status} ${r.statusText}`;
  }
}

// ------------------------------------------------------------------- the model
// The loaded documents by key (`keyOf(_id)`), each with a load sequence number
// (its place in load order), per-field counts for the columns, and the changes
// since the last frame (applied to the view by `render`).

const model = {
  docs: new Map(),
  seq: new Map(),
  order: [], // keys in load order; an entry is stale if its key was removed or re-added
  orderSeq: [],
  orderStart: 0,
  nextSeq: 0,
  fields: new Map(),
  fieldsChanged: true,
  added: new Set(),
  removed: new Set(),
  changed: new Set(),
  wasReset: true,
  dropped: 0,

  reset(documents) {
    this.docs.clear();
    this.seq.clear();
    this.order = [];
    this.orderSeq = [];
    this.orderStart = 0;
    this.fields.clear();
    this.fieldsChanged = true;
    this.added.clear();
    this.removed.clear();
    this.changed.clear();
    this.wasReset = true;
    this.dropped = 0;
    for (const doc of documents) this.put(keyOf(doc._id), doc);
    this.added.clear();
  },

  put(k, doc) {
    const old = this.docs.get(k);
    this.docs.set(k, doc);
    if (old === undefined) {
      const seq = this.nextSeq++;
      this.seq.set(k, seq);
      this.order.push(k);
      this.orderSeq.push(seq);
      // Removed and re-added keys leave stale entries: keep them bounded.
      if (this.order.length - this.orderStart > 2 * this.docs.size + 1024) this.keysInOrder();
      this.count(doc, 1);
      this.added.add(k);
    } else {
      this.count(old, -1);
      this.count(doc, 1);
      this.changed.add(k);
    }
  },

  remove(k) {
    const old = this.docs.get(k);
    if (old === undefined) return false;
    this.docs.delete(k);
    this.seq.delete(k);
    this.count(old, -1);
    this.removed.add(k);
    this.added.delete(k);
    this.changed.delete(k);
    return true;
  },

  /** Drop the `n` rows loaded first (the row cap); returns how many were dropped. */
  dropOldest(n) {
    let done = 0;
    while (done < n && this.orderStart < this.order.length) {
      const i = this.orderStart++;
      const k = this.order[i];
      if (this.seq.get(k) === this.orderSeq[i] && this.remove(k)) done += 1;
    }
    if (this.orderStart > 50_000 && this.orderStart * 2 > this.order.length) {
      this.order = this.order.slice(this.orderStart);
      this.orderSeq = this.orderSeq.slice(this.orderStart);
      this.orderStart = 0;
    }
    this.dropped += done;
    return done;
  },

  /** The keys in load order. */
  keysInOrder() {
    const out = [];
    for (let i = this.orderStart; i < this.order.length; i++) {
      const k = this.order[i];
      if (this.seq.get(k) === this.orderSeq[i]) out.push(k);
    }
    if (out.length * 2 < this.order.length - this.orderStart || this.orderStart > 50_000) {
      // Mostly stale entries: compact.
      this.order = out.slice();
      this.orderSeq = out.map((k) => this.seq.get(k));
      this.orderStart = 0;
    }
    return out;
  },

  count(doc, delta) {
    for (const field in doc) {
      if (field === "_id" || field === "_version") continue;
      const value = doc[field];
      if (isNested(value)) {
        for (const sub in value) this.bump(`${field}.${sub}`, delta);
      } else {
        this.bump(field, delta);
      }
    }
    // With more fields than columns, any count may change which ones are shown.
    if (this.fields.size > MAX_COLUMNS) this.fieldsChanged = true;
  },

  bump(column, delta) {
    const n = (this.fields.get(column) ?? 0) + delta;
    if (n > 0) this.fields.set(column, n);
    else this.fields.delete(column);
    if (n <= 0 || n === delta) this.fieldsChanged = true; // a column appeared or went
  },
};

/** A sub-document shown as columns of its own (`customer.name`, `customer.city`). */
function isNested(value) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return false;
  for (const _ in value) return true;
  return false;
}

/** The value of a column: a field, or `field.sub` of a sub-document. */
function valueAt(doc, column) {
  const dot = column.indexOf(".");
  if (dot < 0) return doc[column];
  const outer = doc[column.slice(0, dot)];
  return isNested(outer) ? outer[column.slice(dot + 1)] : undefined;
}

function versionOf(doc) {
  return typeof doc?._version === "number" ? doc._version : -1;
}

// ------------------------------------------------------------------- the view
// `view`: the keys on screen, in display order (the sort, else load order),
// narrowed by the quick search.

let view = [];
let viewChanged = true; // since the last render
let viewDirty = true; // rebuild it (sort or search changed, or a reset)
let sortCol = null;
let sortDir = 1;
let query = "";
const searchText = new WeakMap();

function matches(k) {
  if (!query) return true;
  const doc = model.docs.get(k);
  let text = searchText.get(doc);
  if (text === undefined) {
    text = JSON.stringify(doc).toLowerCase();
    searchText.set(doc, text);
  }
  return text.includes(query);
}

/** MongoDB-like order of types: missing/null, numbers, strings, objects, arrays, booleans. */
function sortKey(v) {
  if (v === undefined || v === null) return [0, 0];
  switch (typeof v) {
    case "number": return [1, v];
    case "string": return [2, v];
    case "boolean": return [5, v ? 1 : 0];
    default: return [Array.isArray(v) ? 4 : 3, JSON.stringify(v)];
  }
}

function compareSortKeys(a, b) {
  if (a[0] !== b[0]) return a[0] - b[0];
  return a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0;
}

function compareKeys(ka, kb) {
  if (sortCol !== null) {
    const c = compareSortKeys(sortKey(valueAt(model.docs.get(ka), sortCol)),
      sortKey(valueAt(model.docs.get(kb), sortCol)));
    if (c !== 0) return sortDir * c;
  }
  return model.seq.get(ka) - model.seq.get(kb);
}

function rebuildView() {
  let keys = model.keysInOrder();
  if (query) keys = keys.filter(matches);
  if (sortCol !== null) {
    const n = keys.length;
    const sk = new Array(n);
    for (let i = 0; i < n; i++) sk[i] = sortKey(valueAt(model.docs.get(keys[i]), sortCol));
    const idx = new Array(n);
    for (let i = 0; i < n; i++) idx[i] = i;
    idx.sort((a, b) => sortDir * compareSortKeys(sk[a], sk[b]) || a - b);
    keys = idx.map((i) => keys[i]);
  }
  view = keys;
}

function insertSorted(k) {
  let lo = 0;
  let hi = view.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (compareKeys(view[mid], k) <= 0) lo = mid + 1;
    else hi = mid;
  }
  view.splice(lo, 0, k);
}

/** Apply the model's changes since the last frame to `view`. */
function updateView() {
  const { added, removed, changed } = model;
  if (model.wasReset || viewDirty) {
    rebuildView();
  } else if (added.size || removed.size || changed.size) {
    const reposition = sortCol !== null || query ? changed : null;
    if (removed.size || (reposition && reposition.size)) {
      view = view.filter((k) => !removed.has(k) && !(reposition && reposition.has(k)));
    }
    const incoming = [];
    for (const k of added) if (model.docs.has(k) && matches(k)) incoming.push(k);
    if (reposition) {
      for (const k of reposition) if (!added.has(k) && model.docs.has(k) && matches(k)) incoming.push(k);
    }
    if (incoming.length) {
      const lastSeq = view.length ? model.seq.get(view[view.length - 1]) : -1;
      if (sortCol === null && !reposition?.size && model.seq.get(incoming[0]) > lastSeq) {
        for (const k of incoming) view.push(k); // new rows in load order: append
      } else if (incoming.length > 256 && incoming.length * 4 > view.length) {
        rebuildView();
      } else {
        for (const k of incoming) insertSorted(k);
      }
    }
  } else {
    return false;
  }
  model.wasReset = false;
  viewDirty = false;
  added.clear();
  removed.clear();
  changed.clear();
  viewChanged = true;
  return true;
}

// ------------------------------------------------------------------ columns

let columns = [];
let columnsSig = 0;

function cellText(value) {
  if (value === undefined) return "";
  if (value === null) return "null";
  if (typeof value === "object") {
    if (Array.isArray(value)) {
      const text = JSON.stringify(value);
      return text.length > 60 ? `[${value.length} items] ${text.slice(0, 50)}…` : text;
    }
    const text = JSON.stringify(value);
    return text.length > 80 ? `${text.slice(0, 79)}…` : text;
  }
  return String(value);
}

function wantedColumns() {
  const fields = [...model.fields.entries()]
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
    .slice(0, MAX_COLUMNS)
    .map(([field]) => field)
    .sort();
  return ["_id", ...fields, "_version"];
}

function updateColumns() {
  if (!model.fieldsChanged) return false;
  model.fieldsChanged = false;
  const wanted = watching ? wantedColumns() : [];
  if (wanted.join("\u0000") === columns.join("\u0000")) return false;
  columns = wanted;
  columnsSig += 1;
  if (sortCol !== null && !columns.includes(sortCol)) {
    sortCol = null;
    viewDirty = true;
  }
  return true;
}

function renderHead() {
  // Widths from a sample of the rows: the table layout is fixed (rows never reflow).
  const sample = view.length ? view.slice(0, 200) : [...model.docs.keys()].slice(0, 200);
  const widths = columns.map((c) => {
    let len = c.length + 2;
    for (const k of sample) {
      const doc = model.docs.get(k);
      if (doc) len = Math.max(len, cellText(valueAt(doc, c)).length);
    }
    return Math.min(28, Math.max(c === "_version" ? 9 : c === "_id" ? 10 : 6, len)) + 3;
  });
  ui.cols.replaceChildren(...widths.map((w) => {
    const col = document.createElement("col");
    col.style.width = `${w}ch`;
    return col;
  }));
  ui.table.style.minWidth = `${widths.reduce((a, b) => a + b, 0)}ch`;
  ui.head.replaceChildren(...columns.map((c, i) => {
    const th = document.createElement("th");
    th.scope = "col";
    th.setAttribute("aria-colindex", String(i + 1));
    const button = document.createElement("button");
    button.type = "button";
    button.className = "sort";
    button.dataset.col = c;
    button.textContent = c;
    th.append(button);
    return th;
  }));
  ui.table.setAttribute("aria-colcount", String(columns.length));
  for (const spacer of [ui.topSpacer, ui.bottomSpacer]) spacer.cells[0].colSpan = columns.length || 1;
  updateSortIndicators();
}

function updateSortIndicators() {
  for (const th of ui.head.cells) {
    const c = th.firstChild.dataset.col;
    if (c === sortCol) th.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
    else th.removeAttribute("aria-sort");
    th.firstChild.title = c === sortCol
      ? `sorted ${sortDir > 0 ? "ascending" : "descending"}; click to ${sortDir > 0 ? "sort descending" : "restore load order"}`
      : "sort the loaded rows by this column";
  }
}

ui.head.addEventListener("click", (e) => {
  const button = e.target.closest("button.sort");
  if (!button) return;
  const c = button.dataset.col;
  if (sortCol !== c) {
    sortCol = c;
    sortDir = 1;
  } else if (sortDir > 0) {
    sortDir = -1;
  } else {
    sortCol = null;
  }
  viewDirty = true;
  updateSortIndicators();
  schedule();
});

// ------------------------------------------------------------------ the grid

let rowHeight = 28;
let headHeight = 32;
let viewportHeight = 400;
let activeKey = null;
let activeIndex = -1;
const slots = []; // {tr, k, doc, sig, index}
const flashes = new Map(); // key -> {kind, t, shown}

function readRowHeight() {
  const css = getComputedStyle(document.documentElement);
  const px = (name, fallback) => {
    const v = parseFloat(css.getPropertyValue(name));
    return Number.isFinite(v) && v > 0 ? v : fallback;
  };
  rowHeight = px("--row-h", 28);
  headHeight = px("--head-h", 32);
}
readRowHeight();

new ResizeObserver(() => {
  viewportHeight = ui.scroller.clientHeight;
  readRowHeight();
  schedule();
}).observe(ui.scroller);
let scrollTop = 0; // read in the scroll event, so rendering never forces a layout
ui.scroller.addEventListener("scroll", () => {
  scrollTop = ui.scroller.scrollTop;
  schedule();
}, { passive: true });

function scrollTo(top) {
  ui.scroller.scrollTop = top;
  scrollTop = ui.scroller.scrollTop;
}

function makeSlot() {
  const tr = document.createElement("tr");
  tr.className = "doc-row";
  tr.addEventListener("animationend", () => tr.classList.remove("flash-insert", "flash-update"));
  const slot = { tr, k: null, doc: null, sig: -1, index: -1 };
  return slot;
}

function fillSlot(slot, index, k, now) {
  const doc = model.docs.get(k);
  const tr = slot.tr;
  if (slot.k !== k) tr.classList.remove("flash-insert", "flash-update");
  if (slot.k !== k || slot.doc !== doc || slot.sig !== columnsSig) {
    if (slot.sig !== columnsSig) {
      tr.replaceChildren(...columns.map((c, i) => {
        const td = document.createElement("td");
        td.dataset.col = c;
        td.setAttribute("aria-colindex", String(i + 1));
        return td;
      }));
    }
    const cells = tr.cells;
    for (let i = 0; i < columns.length; i++) {
      const text = cellText(valueAt(doc, columns[i]));
      if (cells[i].textContent !== text) cells[i].textContent = text;
    }
    tr.dataset.k = k;
    tr.dataset.key = String(doc._id);
    tr.dataset.version = doc._version ?? "";
    slot.k = k;
    slot.doc = doc;
    slot.sig = columnsSig;
    const flash = flashes.get(k);
    if (flash && !flash.shown && now - flash.t < FLASH_MS) {
      flash.shown = true;
      tr.classList.remove("flash-insert", "flash-update");
      tr.classList.add(`flash-${flash.kind}`);
    }
  }
  if (slot.index !== index) {
    slot.index = index;
    tr.setAttribute("aria-rowindex", String(index + 2));
  }
  const active = k === activeKey;
  if (active !== tr.classList.contains("active")) tr.classList.toggle("active", active);
  if (active) {
    if (tr.id !== "docs-active") tr.id = "docs-active";
    tr.setAttribute("aria-selected", "true");
  } else if (tr.id) {
    tr.removeAttribute("id");
    tr.removeAttribute("aria-selected");
  }
}

function renderRows() {
  const n = view.length;
  const headH = headHeight;
  const visible = Math.ceil(viewportHeight / rowHeight) + 1;
  const first = Math.max(0, Math.floor((scrollTop - headH) / rowHeight));
  const start = Math.max(0, Math.min(first - OVERSCAN, n - visible - 2 * OVERSCAN));
  const end = Math.min(n, first + visible + OVERSCAN);
  if (viewChanged && activeKey !== null) activeIndex = view.indexOf(activeKey);

  ui.topSpacer.cells[0].style.height = `${start * rowHeight}px`;
  ui.bottomSpacer.cells[0].style.height = `${(n - end) * rowHeight}px`;
  const want = Math.max(0, end - start);
  while (slots.length < want) {
    const slot = makeSlot();
    slots.push(slot);
    ui.body.insertBefore(slot.tr, ui.bottomSpacer);
  }
  while (slots.length > want) slots.pop().tr.remove();
  const now = performance.now();
  for (let i = 0; i < want; i++) fillSlot(slots[i], start + i, view[start + i], now);

  ui.table.setAttribute("aria-rowcount", String(n + 1));
  const activeShown = activeIndex >= start && activeIndex < end;
  if (activeShown) ui.table.setAttribute("aria-activedescendant", "docs-active");
  else ui.table.removeAttribute("aria-activedescendant");

  // Infinite scroll: near the end of the loaded rows, fetch the next page.
  if (scrollTop > 0 && end >= n - OVERSCAN && !query && canLoadMore() && !paging.loading) {
    loadMore();
  }
}

function scrollToIndex(index) {
  const headH = headHeight;
  const top = index * rowHeight;
  const viewTop = ui.scroller.scrollTop;
  const viewH = ui.scroller.clientHeight - headH;
  if (top < viewTop) scrollTo(top);
  else if (top + rowHeight > viewTop + viewH) scrollTo(top + rowHeight - viewH);
}

function setActive(index) {
  if (!view.length) return;
  const i = Math.max(0, Math.min(view.length - 1, index));
  activeIndex = i;
  activeKey = view[i];
  scrollToIndex(i);
  schedule();
}

ui.table.addEventListener("keydown", (e) => {
  if (e.target !== ui.table || !view.length) return;
  const page = Math.max(1, Math.floor((ui.scroller.clientHeight - headHeight) / rowHeight) - 1);
  const at = activeIndex >= 0 ? activeIndex : -1;
  let next = null;
  switch (e.key) {
    case "ArrowDown": next = at + 1; break;
    case "ArrowUp": next = Math.max(0, at - 1); break;
    case "PageDown": next = at + page; break;
    case "PageUp": next = at - page; break;
    case "Home": next = 0; break;
    case "End": next = view.length - 1; break;
    case "Enter":
    case " ":
      if (activeKey !== null && model.docs.has(activeKey)) openInspector(activeKey, true);
      e.preventDefault();
      return;
    default:
      return;
  }
  e.preventDefault();
  setActive(next);
});

ui.table.addEventListener("focus", () => {
  if (activeKey === null || !model.docs.has(activeKey)) {
    const headH = headHeight;
    const first = Math.max(0, Math.floor((ui.scroller.scrollTop - headH + rowHeight / 2) / rowHeight));
    if (view.length) setActive(Math.min(first, view.length - 1));
  }
});

ui.body.addEventListener("click", (e) => {
  const tr = e.target.closest("tr.doc-row");
  if (!tr || !model.docs.has(tr.dataset.k)) return;
  activeKey = tr.dataset.k;
  activeIndex = view.indexOf(activeKey);
  openInspector(activeKey, false);
  schedule();
});

// ----------------------------------------------------------- frame scheduling

let frame = 0;

function schedule() {
  if (!frame) frame = requestAnimationFrame(render);
}

function renderNow() {
  if (frame) cancelAnimationFrame(frame);
  render();
}

/** Everything the screen shows, once per animation frame. */
function render() {
  frame = 0;
  const columnsChanged = updateColumns();
  updateView();
  if (columnsChanged) {
    renderHead(); // widths from the updated view
    renderPicker();
  }
  const watchingSomething = watching !== null;
  ui.table.hidden = !watchingSomething || columns.length === 0;
  renderRows();
  viewChanged = false;
  updateCaption();
  updateLoadControls();
  flushLog();
  if (inspector.k !== null) renderInspector();
  if (flashes.size) {
    const now = performance.now();
    for (const [k, f] of flashes) {
      if (now - f.t < FLASH_MS) break; // insertion order = time order
      flashes.delete(k);
    }
  }
}

// ------------------------------------------------------------------ caption

function displayTotal() {
  if (paging.complete) return model.docs.size + model.dropped;
  if (paging.total === null) return null;
  return Math.max(paging.total + paging.delta, model.docs.size);
}

function updateCaption() {
  const cap = ui.caption;
  if (!watching) {
    if (cap.textContent) cap.textContent = "";
    ui.empty.hidden = false;
    ui.empty.textContent = "No collection watched yet.";
    return;
  }
  const loaded = model.docs.size;
  const total = paging.snapshotPending ? null : displayTotal();
  let text = `${watching.collection}${watching.filterText ? ` ${watching.filterText}` : ""} · `;
  if (watching.fields) text += `fields ${watching.fields.join(", ")} · `;
  if (watching.since) {
    text += `changed since ${watching.since.toLocaleString()} · ${fmt.format(loaded)} shown`;
  } else if (paging.snapshotPending) text += "loading the first page…";
  else if (total === null) text += `${fmt.format(loaded)} loaded (counting…)`;
  else text += `${fmt.format(loaded)} of ${fmt.format(total)} loaded`;
  if (query) text += ` · ${fmt.format(view.length)} match “${ui.quick.value.trim()}”`;
  if (model.dropped) {
    text += ` · ${fmt.format(model.dropped)} oldest dropped (at most ${fmt.format(MAX_ROWS)} rows)`;
  } else if (loaded >= MAX_ROWS && !paging.complete) {
    text += ` · limit of ${fmt.format(MAX_ROWS)} rows reached`;
  }
  if (paging.loading) text += " · loading…";
  if (paging.error) text += ` · ${paging.error}`;
  if (cap.textContent !== text) cap.textContent = text;
  cap.dataset.loaded = String(loaded);
  cap.dataset.total = total === null ? "" : String(total);
  cap.dataset.shown = String(view.length);
  cap.dataset.dropped = String(model.dropped);
  cap.dataset.complete = String(paging.complete);
  const emptyNow = view.length === 0 && !paging.snapshotPending;
  ui.empty.hidden = !emptyNow;
  if (emptyNow) {
    ui.empty.textContent = query && loaded ? "No loaded row matches the search."
      : "No matching documents.";
  }
}

// -------------------------------------------------------------------- paging
// The snapshot is the first page (by _id, like the REST list). Further pages come
// from GET .../documents?limit=1000&after=<cursor> with the same filter; the first
// cursor comes from a one-document probe at the snapshot's last position (or, if the
// collection moved meanwhile, from the first REST page). A page never overrides a
// document that a live event touched while it was in flight.

const paging = {
  gen: 0,
  cursor: null,
  snapshotCount: 0,
  lastSnapshotKey: null,
  loading: false,
  all: false,
  snapshotPending: false,
  complete: true,
  total: null,
  delta: 0,
  error: "",
  inflight: 0,
  touched: new Set(),
  countTimer: null,
  countFirstAsk: 0,
  counting: false,
  countAgain: false,
};

function docsUrl(extra = "", params = {}) {
  const q = new URLSearchParams(params);
  if (watching.filterText) q.set("filter", JSON.stringify(watching.filter));
  if (watching.fields) q.set("fields", watching.fields.join(","));
  const qs = q.toString();
  return `/api/collections/${encodeURIComponent(watching.collection)}/documents${extra}${qs ? `?${qs}` : ""}`;
}

function resetPaging(snapshot) {
  paging.gen += 1;
  paging.cursor = null;
  paging.loading = false;
  paging.all = false;
  paging.error = "";
  paging.inflight = 0;
  paging.touched.clear();
  paging.delta = 0;
  paging.total = null;
  clearTimeout(paging.countTimer);
  paging.countTimer = null;
  paging.countFirstAsk = 0;
  paging.snapshotCount = snapshot ? snapshot.length : 0;
  paging.lastSnapshotKey = snapshot && snapshot.length ? keyOf(snapshot[snapshot.length - 1]._id) : null;
  paging.snapshotPending = snapshot === null;
  paging.complete = snapshot ? snapshot.length < SNAPSHOT_LIMIT : false;
  if (snapshot && !paging.complete) recount();
}

function canLoadMore() {
  return watching !== null && !paging.snapshotPending && !paging.complete &&
    model.docs.size < MAX_ROWS;
}

async function fetchJson(url) {
  const r = await api(url);
  if (!r.ok) throw new Error(`${r.status}: ${await problemDetail(r)}`);
  return r.json();
}

/** Count the matching documents (GET .../documents:count). */
async function recount() {
  clearTimeout(paging.countTimer);
  paging.countTimer = null;
  paging.countFirstAsk = 0;
  if (!watching || paging.complete) return;
  if (paging.counting) {
    paging.countAgain = true;
    return;
  }
  const gen = paging.gen;
  paging.counting = true;
  paging.countAgain = false;
  try {
    const { count } = await fetchJson(docsUrl(":count"));
    if (gen !== paging.gen) return;
    paging.total = count;
    paging.delta = 0;
  } catch (err) {
    if (gen === paging.gen) logLine("error", `count: ${err.message}`);
  } finally {
    paging.counting = false;
    if (gen === paging.gen && paging.countAgain) scheduleRecount();
    schedule();
  }
}

/** Count again after a quiet moment (live changes of unloaded documents are ambiguous). */
function scheduleRecount() {
  if (paging.complete) return;
  if (paging.counting) {
    paging.countAgain = true;
    return;
  }
  const now = Date.now();
  if (!paging.countFirstAsk) paging.countFirstAsk = now;
  clearTimeout(paging.countTimer);
  const wait = Math.max(0, Math.min(RECOUNT_QUIET_MS, paging.countFirstAsk + RECOUNT_MAX_WAIT_MS - now));
  paging.countTimer = setTimeout(recount, wait);
}

/** Merge a REST page into the model. */
function mergePage(documents) {
  for (const doc of documents) {
    const k = keyOf(doc._id);
    if (paging.touched.has(k)) continue; // a live event is newer than this page
    const held = model.docs.get(k);
    if (held !== undefined && versionOf(held) >= versionOf(doc)) continue;
    if (held === undefined && model.docs.size >= MAX_ROWS) break;
    model.put(k, doc);
  }
}

/** The first cursor: after the snapshot's last document. */
async function firstCursor(gen) {
  const probe = await fetchJson(docsUrl("", { limit: "1", skip: String(paging.snapshotCount - 1) }));
  if (gen !== paging.gen) return;
  const doc = probe.documents[0];
  if (doc !== undefined && keyOf(doc._id) === paging.lastSnapshotKey) {
    paging.cursor = probe.next;
    if (probe.next === null) markComplete();
    return;
  }
  // The collection changed since the snapshot: start over from the first page.
  const page = await fetchJson(docsUrl("", { limit: String(PAGE_SIZE) }));
  if (gen !== paging.gen) return;
  mergePage(page.documents);
  paging.cursor = page.next;
  if (page.next === null) markComplete();
}

function markComplete() {
  paging.complete = true;
  paging.all = false;
  clearTimeout(paging.countTimer);
  paging.countTimer = null;
}

/** Load the next page (1,000 documents). */
async function loadMore() {
  if (!canLoadMore() || paging.loading) return;
  const gen = paging.gen;
  paging.loading = true;
  paging.error = "";
  paging.inflight += 1;
  schedule();
  try {
    if (paging.cursor === null) await firstCursor(gen);
    if (gen !== paging.gen || paging.complete || paging.cursor === null) return;
    const page = await fetchJson(docsUrl("", { limit: String(PAGE_SIZE), after: paging.cursor }));
    if (gen !== paging.gen) return;
    mergePage(page.documents);
    paging.cursor = page.next;
    if (page.next === null) markComplete();
  } catch (err) {
    if (gen === paging.gen) {
      paging.error = `loading failed: ${err.message}`;
      paging.all = false;
      logLine("error", paging.error);
    }
  } finally {
    if (gen === paging.gen) {
      paging.loading = false;
      paging.inflight -= 1;
      if (paging.inflight === 0) paging.touched.clear();
      schedule();
    }
  }
}

/** Load pages back to back until everything (or the row cap) is loaded, or Stop. */
async function loadAll() {
  const gen = paging.gen;
  paging.all = true;
  schedule();
  while (paging.all && gen === paging.gen && canLoadMore()) {
    if (paging.loading) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      continue;
    }
    await loadMore();
    if (paging.error) break;
    // Let a frame render between pages.
    await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
  }
  if (gen === paging.gen) paging.all = false;
  schedule();
}

function updateLoadControls() {
  const more = canLoadMore();
  ui.loadMore.hidden = !more || paging.all;
  ui.loadAll.hidden = !more || paging.all;
  ui.loadStop.hidden = !paging.all;
  ui.loadMore.disabled = paging.loading;
}

ui.loadMore.addEventListener("click", () => loadMore());
ui.loadAll.addEventListener("click", () => loadAll());
ui.loadStop.addEventListener("click", () => {
  paging.all = false;
  schedule();
});

// -------------------------------------------------------------- quick search

let quickTimer = null;
ui.quick.addEventListener("input", () => {
  clearTimeout(quickTimer);
  quickTimer = setTimeout(() => {
    const q = ui.quick.value.trim().toLowerCase();
    if (q === query) return;
    query = q;
    viewDirty = true;
    scrollTo(0);
    schedule();
  }, 120);
});

// ------------------------------------------------------------ the document panel
// One document as formatted JSON; Edit replaces it with PUT + If-Match: "<_version>",
// so a document that changed meanwhile is never overwritten (412: "changed meanwhile").

const inspector = { k: null, shown: null, editing: false, baseVersion: null };

function openInspector(k, focus) {
  if (inspector.editing && inspector.k !== k) cancelEdit();
  inspector.k = k;
  inspector.shown = null;
  ui.inspector.hidden = false;
  ui.inspectorResult.textContent = "";
  ui.inspectorResult.className = "";
  ui.inspectorConflict.hidden = true;
  renderInspector();
  if (focus) ui.inspectorJson.focus();
}

function closeInspector(focusGrid) {
  inspector.k = null;
  inspector.shown = null;
  inspector.editing = false;
  ui.inspector.hidden = true;
  setEditing(false);
  if (focusGrid && !ui.table.hidden) ui.table.focus();
}

function renderInspector() {
  const doc = model.docs.get(inspector.k);
  if (doc === inspector.shown && inspector.shown !== null) return;
  if (doc === undefined) {
    if (inspector.shown !== undefined) {
      ui.inspectorMeta.textContent = "No longer in this view (deleted, or it left the filter).";
      ui.inspectorEdit.disabled = true;
      inspector.shown = undefined;
    }
    return;
  }
  inspector.shown = doc;
  ui.inspectorKey.textContent = cellText(doc._id);
  const fields = Object.keys(doc).filter((f) => f !== "_id" && f !== "_version").length;
  const stale = inspector.editing && doc._version !== inspector.baseVersion
    ? ` (you are editing version ${inspector.baseVersion})` : "";
  ui.inspectorMeta.textContent = `version ${doc._version ?? "?"}${stale} · ${fields} field${fields === 1 ? "" : "s"}`;
  ui.inspectorJson.textContent = JSON.stringify(doc, null, 2);
  ui.inspectorEdit.disabled = false;
}

function bodyOf(doc) {
  const { _id, _version, ...rest } = doc;
  return rest;
}

function setEditing(on) {
  inspector.editing = on;
  ui.inspectorText.hidden = !on;
  ui.inspectorTextLabel.hidden = !on;
  ui.inspectorSave.hidden = !on;
  ui.inspectorCancel.hidden = !on;
  ui.inspectorEdit.hidden = on;
  ui.inspectorJson.hidden = on;
}

function startEdit(doc) {
  inspector.baseVersion = doc._version;
  inspector.shown = null; // the meta line says which version is being edited
  ui.inspectorText.value = JSON.stringify(bodyOf(doc), null, 2);
  ui.inspectorConflict.hidden = true;
  setEditing(true);
  ui.inspectorText.focus();
}

function cancelEdit() {
  setEditing(false);
  ui.inspectorConflict.hidden = true;
}

function inspectorSay(text, ok) {
  ui.inspectorResult.textContent = text;
  ui.inspectorResult.className = ok ? "ok" : "error";
}

function docUrl(doc) {
  return `/api/collections/${encodeURIComponent(watching.collection)}/documents/${encodeURIComponent(String(doc._id))}`;
}

ui.inspectorEdit.addEventListener("click", () => {
  const doc = model.docs.get(inspector.k);
  if (doc) startEdit(doc);
});
ui.inspectorCancel.addEventListener("click", () => {
  cancelEdit();
  ui.inspectorEdit.focus();
});
ui.inspectorClose.addEventListener("click", () => closeInspector(true));
ui.inspector.addEventListener("keydown", (e) => {
  if (e.key === "Escape") {
    e.preventDefault();
    closeInspector(true);
  }
});

ui.inspectorSave.addEventListener("click", async () => {
  const doc = model.docs.get(inspector.k) ?? inspector.shown;
  if (!doc || !watching) return;
  let body;
  try {
    body = JSON.parse(ui.inspectorText.value);
  } catch (err) {
    inspectorSay(`Not JSON: ${err.message}`, false);
    return;
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    inspectorSay("A document is a JSON object.", false);
    return;
  }
  if ("_id" in body && JSON.stringify(body._id) !== JSON.stringify(doc._id)) {
    inspectorSay("_id cannot be changed.", false);
    return;
  }
  const { _id, _version, ...content } = body;
  try {
    const r = await api(docUrl(doc), {
      method: "PUT",
      headers: { "Content-Type": "application/json", "If-Match": `"${inspector.baseVersion}"` },
      body: JSON.stringify(content),
    });
    if (r.status === 412) {
      ui.inspectorConflictText.textContent = `Changed meanwhile: this document is no longer at ` +
        `version ${inspector.baseVersion}, so your edit was not saved. Reload shows the ` +
        `current version (your edit is discarded).`;
      ui.inspectorConflict.hidden = false;
      inspectorSay("412: changed meanwhile", false);
      ui.inspectorReload.focus();
      return;
    }
    if (!r.ok) {
      inspectorSay(`${r.status}: ${await problemDetail(r)}`, false);
      return;
    }
    const saved = await r.json();
    const k = keyOf(saved._id);
    if (versionOf(saved) > versionOf(model.docs.get(k))) {
      if (model.docs.has(k)) model.put(k, saved);
    }
    setEditing(false);
    inspector.shown = null;
    inspectorSay(`saved: version ${saved._version}`, true);
    schedule();
  } catch (err) {
    inspectorSay(`request failed: ${err.message}`, false);
  }
});

ui.inspectorReload.addEventListener("click", async () => {
  const doc = model.docs.get(inspector.k) ?? inspector.shown;
  if (!doc || !watching) return;
  try {
    const r = await api(docUrl(doc));
    if (r.status === 404) {
      inspectorSay("It was deleted meanwhile.", false);
      ui.inspectorConflict.hidden = true;
      return;
    }
    if (!r.ok) {
      inspectorSay(`${r.status}: ${await problemDetail(r)}`, false);
      return;
    }
    const fresh = await r.json();
    const k = keyOf(fresh._id);
    if (model.docs.has(k) && versionOf(fresh) > versionOf(model.docs.get(k))) model.put(k, fresh);
    inspector.shown = null;
    startEdit(fresh);
    inspectorSay(`reloaded: version ${fresh._version}`, true);
    schedule();
  } catch (err) {
    inspectorSay(`request failed: ${err.message}`, false);
  }
});

// ------------------------------------------------------------------- event log
// Lines are buffered and written once per frame (a burst writes only the last 200).

const pendingLog = [];

function logLine(kind, text) {
  pendingLog.push({ kind, text, time: Date.now() });
  if (pendingLog.length > 2 * MAX_LOG) pendingLog.splice(0, pendingLog.length - MAX_LOG);
  schedule();
}

const clock = new Intl.DateTimeFormat([], {
  hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
});
let clockSecond = -1;
let clockText = "";

/** The time of day of `ms` (formatted once per second: a burst logs thousands). */
function timeOfDay(ms) {
  const second = Math.floor(ms / 1000);
  if (second !== clockSecond) {
    clockSecond = second;
    clockText = clock.format(ms);
  }
  return clockText;
}

function flushLog() {
  if (!pendingLog.length) return;
  const lines = pendingLog.splice(0).slice(-MAX_LOG);
  const fragment = document.createDocumentFragment();
  for (let i = lines.length - 1; i >= 0; i--) {
    const { kind, text, time } = lines[i];
    const li = document.createElement("li");
    li.className = `log-${kind}`;
    const t = document.createElement("time");
    t.textContent = timeOfDay(time);
    const what = document.createElement("b");
    what.textContent = kind;
    const rest = document.createElement("span");
    rest.textContent = text;
    li.append(t, what, rest);
    fragment.append(li);
  }
  if (lines.length >= MAX_LOG) {
    ui.log.replaceChildren(fragment);
  } else {
    ui.log.prepend(fragment);
    while (ui.log.children.length > MAX_LOG) ui.log.lastElementChild.remove();
  }
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
  const color = getComputedStyle(canvas).color || "#157a52";
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

let unsubscribe = null;
let watching = null; // {collection, filter, filterText}

function flash(k, kind) {
  if (flashes.has(k)) flashes.delete(k);
  flashes.set(k, { kind, t: performance.now(), shown: false });
  if (flashes.size > MAX_FLASHES) flashes.delete(flashes.keys().next().value);
}

/** Apply a change event to the model; returns "insert" | "update" | "remove" | null. */
function applyChange(k, ev) {
  if (ev.op === "leave" || ev.op === "delete") return model.remove(k) ? "remove" : null;
  const held = model.docs.get(k);
  let doc = ev.document;
  if (!doc && ev.updated && held !== undefined) {
    // A subscription with fields: an update carries the changed fields only.
    if (typeof ev.updated._version === "number" && typeof held._version === "number" &&
        ev.updated._version <= held._version) return null;
    doc = applyDelta(held, ev.updated, ev.removed ?? []);
  }
  if (!doc) return null;
  if (held !== undefined && typeof doc._version === "number" &&
      typeof held._version === "number" && doc._version <= held._version) {
    return null;
  }
  if (held === undefined && model.docs.size >= MAX_ROWS) model.dropOldest(1);
  model.put(k, doc);
  return held === undefined ? "insert" : "update";
}

function onEvent(ev) {
  switch (ev.type) {
    case "subscribed":
      logLine("sub", ev.resumed ? "resumed" : "subscribed");
      return;
    case "snapshot": {
      const before = ev.reload ? new Map(model.docs) : null;
      model.reset(ev.documents);
      viewDirty = true;
      resetPaging(ev.documents);
      if (before) {
        // Show what changed while we were away.
        for (const [k, doc] of model.docs) {
          const old = before.get(k);
          if (!old) flash(k, "insert");
          else if (old._version !== doc._version) flash(k, "update");
        }
      }
      logLine("snapshot", `${fmt.format(ev.documents.length)} document${ev.documents.length === 1 ? "" : "s"}` +
        (ev.reload ? " (reloaded)" : ""));
      schedule();
      return;
    }
    case "reset":
      logLine("resync", `${ev.reason}: reloading`);
      return;
    case "change": {
      countEvent();
      const k = keyOf(ev.key);
      if (paging.inflight > 0) paging.touched.add(k);
      const had = model.docs.has(k);
      const what = applyChange(k, ev);
      if (what === "insert" || what === "update") flash(k, what);
      if (!paging.complete) {
        if (ev.op === "insert" && what === "insert") paging.delta += 1;
        else if (had && what === "remove") paging.delta -= 1;
        if (!had) scheduleRecount(); // a change of a document not loaded: count again
      }
      const version = ev.document?._version ?? ev.updated?._version;
      logLine(ev.op, `${cellText(ev.key)}${version !== undefined ? ` v${version}` : ""}`);
      schedule();
      return;
    }
    case "error":
      ui.watchError.textContent = ev.message;
      logLine("error", `${ev.code}: ${ev.message}`);
      return;
    default:
  }
}

function watch(collection, filter, filterText, fields = null, since = null) {
  if (unsubscribe) unsubscribe();
  if (watching?.collection !== collection) knownFields.clear();
  watching = { collection, filter, filterText, fields, since };
  model.reset([]);
  resetPaging(since ? [] : null);
  viewDirty = true;
  activeKey = null;
  activeIndex = -1;
  closeInspector(false);
  scrollTo(0);
  ui.table.dataset.collection = collection;
  const extra = `${fields ? ` fields ${fields.join(",")}` : ""}${since ? ` since ${since.toISOString()}` : ""}`;
  logLine("watch", `${collection}${filterText ? ` ${filterText}` : ""}${extra}`);
  const options = since
    ? { filter, sinceTime: since } // the changes since then (no snapshot), then live
    : { filter, snapshot: true, limit: SNAPSHOT_LIMIT };
  if (fields) options.fields = fields;
  unsubscribe = client.subscribe(collection, options, onEvent);
  const params = new URLSearchParams({ collection });
  if (filterText) params.set("filter", filterText);
  if (fields) params.set("fields", fields.join(","));
  history.replaceState(null, "", `${location.search}#${params}`);
  if (aggregate) stopAggregate();
  schedule();
}

// ------------------------------------------------------------- field picker
// Checkboxes of the fields seen in the watched collection (kept across
// re-watches of it, so a projection does not hide the others); ticking one
// edits the Fields input, which the next Watch uses.

const knownFields = new Set();
let pickerSig = "";

function parseFields(text) {
  const fields = text.split(",").map((f) => f.trim()).filter(Boolean);
  for (const f of fields) {
    if (f.split(".").some((name) => !name || name.startsWith("$"))) {
      throw new Error(`${JSON.stringify(f)} is not a field path (dotted names, none starting with $)`);
    }
  }
  return fields.length ? fields : null;
}

function renderPicker() {
  for (const field of model.fields.keys()) knownFields.add(field);
  const fields = [...knownFields].sort().slice(0, 40);
  const sig = fields.join("\u0000");
  if (sig === pickerSig) return;
  pickerSig = sig;
  let chosen;
  try {
    chosen = new Set(parseFields(ui.fields.value) ?? []);
  } catch {
    chosen = new Set();
  }
  ui.picker.replaceChildren(ui.picker.firstElementChild, ...fields.map((field) => {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = field;
    box.checked = chosen.has(field);
    box.dataset.field = field;
    label.append(box, field);
    return label;
  }));
  ui.picker.hidden = fields.length === 0;
}

ui.picker.addEventListener("change", (e) => {
  const box = e.target.closest("input[type=checkbox]");
  if (!box) return;
  let chosen;
  try {
    chosen = parseFields(ui.fields.value) ?? [];
  } catch {
    chosen = [];
  }
  chosen = chosen.filter((f) => f !== box.value);
  if (box.checked) chosen.push(box.value);
  ui.fields.value = chosen.join(", ");
});

// --------------------------------------------------------------- live aggregate
// A bar per group, updated in place: each group keeps its row (keyed by
// groupKey), whose label, value and bar width change as `aggregate` events come.

let aggregate = null; // {stop, groups: Map, rows: Map, op, field, groupBy}

function aggregateValue(group) {
  const { op, field } = aggregate;
  return op === "count" ? group.count : group[op]?.[field];
}

function renderAggregate() {
  if (!aggregate) return;
  const { groups, rows, groupBy } = aggregate;
  for (const [k, rowEl] of rows) {
    if (!groups.has(k)) {
      rowEl.remove();
      rows.delete(k);
    }
  }
  const values = [...groups.values()].map(aggregateValue);
  const numbers = values.filter((v) => typeof v === "number" && Number.isFinite(v));
  const max = Math.max(0, ...numbers.map(Math.abs));
  const entries = [...groups.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  let previous = null;
  for (const [k, group] of entries) {
    let rowEl = rows.get(k);
    if (!rowEl) {
      rowEl = document.createElement("li");
      rowEl.className = "bar-row";
      rowEl.dataset.key = k;
      const label = document.createElement("span");
      label.className = "bar-label";
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      bar.append(fill);
      const value = document.createElement("span");
      value.className = "bar-value";
      rowEl.append(label, bar, value);
      rows.set(k, rowEl);
    }
    const labelText = groupBy ? cellText(group.key[groupBy]) : "(all)";
    const value = aggregateValue(group);
    const valueText = typeof value === "number" ? fmt.format(value) : cellText(value);
    const [label, bar, valueEl] = rowEl.children;
    if (label.textContent !== labelText) label.textContent = labelText;
    if (valueEl.textContent !== valueText) valueEl.textContent = valueText;
    rowEl.dataset.value = String(value);
    const pct = typeof value === "number" && max > 0 ? (Math.abs(value) / max) * 100 : 0;
    bar.firstChild.style.width = `${pct.toFixed(2)}%`;
    // In key order; a row already in place is not moved (no re-layout, no flicker).
    const expected = previous ? previous.nextSibling : ui.aggChart.firstChild;
    if (expected !== rowEl) ui.aggChart.insertBefore(rowEl, expected);
    previous = rowEl;
  }
  ui.aggCaption.textContent = `${aggregate.describe} · ${fmt.format(groups.size)} group${groups.size === 1 ? "" : "s"}`;
  ui.aggCaption.dataset.groups = String(groups.size);
}

function stopAggregate() {
  if (!aggregate) return;
  aggregate.stop();
  aggregate = null;
  ui.aggChart.replaceChildren();
  ui.aggCaption.textContent = "";
  delete ui.aggCaption.dataset.groups;
  ui.aggStop.hidden = true;
}

ui.aggForm.addEventListener("submit", (e) => {
  e.preventDefault();
  ui.aggError.textContent = "";
  if (!watching) {
    ui.aggError.textContent = "Watch a collection first.";
    return;
  }
  const groupBy = ui.aggGroup.value.trim();
  const op = ui.aggOp.value;
  const field = ui.aggField.value.trim();
  if (op !== "count" && !field) {
    ui.aggError.textContent = `Give the field to compute the ${op} of.`;
    return;
  }
  stopAggregate();
  const spec = { count: true, throttle_ms: 100 };
  if (groupBy) spec.group_by = groupBy;
  if (op !== "count") spec[op] = [field];
  const describe = `${op === "count" ? "count" : `${op} of ${field}`}${groupBy ? ` by ${groupBy}` : ""}`;
  const state = { groups: new Map(), rows: new Map(), op, field, groupBy, describe, stop: null };
  aggregate = state;
  state.stop = client.subscribe(watching.collection, { filter: watching.filter, aggregate: spec }, (ev) => {
    if (aggregate !== state) return;
    if (ev.type === "error") {
      ui.aggError.textContent = ev.message;
      logLine("error", `aggregate ${ev.code}: ${ev.message}`);
      return;
    }
    if (applyAggregate(state.groups, ev)) renderAggregate();
  });
  ui.aggStop.hidden = false;
  logLine("watch", `aggregate ${describe}`);
});

ui.aggStop.addEventListener("click", stopAggregate);

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
  let fields = null;
  try {
    fields = parseFields(ui.fields.value);
  } catch (err) {
    ui.watchError.textContent = `Fields: ${err.message}`;
    return;
  }
  let since = null;
  if (ui.replayFrom.value) {
    since = new Date(ui.replayFrom.value); // the browser's local time
    if (Number.isNaN(since.getTime())) {
      ui.watchError.textContent = "Replay from: not a date and time.";
      return;
    }
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
  watch(collection, filter, filterText, fields, since);
});

ui.select.addEventListener("change", () => {
  if (ui.select.value) ui.newName.value = "";
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
  client.open();
  updatePill();
  const collections = await loadCollections();
  const params = new URLSearchParams(location.hash.slice(1));
  const collection = params.get("collection");
  if (collection) {
    if (collections.includes(collection)) ui.select.value = collection;
    else ui.newName.value = collection;
    ui.filter.value = params.get("filter") ?? "";
    ui.fields.value = params.get("fields") ?? "";
    ui.watchForm.requestSubmit();
  }
  schedule();
  document.body.dataset.ready = "true";
})();

// Type declarations of realtime-mongo-client: realtime.js, the client of the realtime
// WebSocket protocol v1. Written by hand; test/types/ checks them with `tsc --noEmit`.
// They need no DOM library: a WebSocket is described by its shape (WebSocketLike).

// ------------------------------------------------------------------ documents and events

/**
 * A document as the server sends it: its `_id` and, for documents written through
 * the REST API, a server-managed `_version` (1 on insert, +1 on every write).
 * Subscriptions and {@link applyEvent} take your own document type as `D`.
 */
export interface Document {
  _id: unknown;
  _version?: number;
  [field: string]: unknown;
}

/** An event id: the change stream's resume token (opaque, ordered, valid across restarts). */
export type EventId = string;

/** The operation of a `change` event. `leave`: an update or replace moved the document out of the filter. */
export type ChangeOp = "insert" | "update" | "replace" | "delete" | "leave";

/**
 * Why a subscription is reloaded: the server's `resync` reasons, or `no_position`
 * (the client reconnected before it learnt any position to resume from).
 */
export type ResetReason = "history_lost" | "invalidated" | "overflow" | "no_position";

/** The server accepted the (re)subscription. */
export interface SubscribedEvent {
  type: "subscribed";
  /** The event id the subscription is live from (null on a server without history). */
  head: EventId | null;
  /** True when it was sent with `since` (resuming); false for a fresh subscription. */
  resumed: boolean;
}

/** The matching documents (sorted by `_id`, at most `limit`): replace your state with them. */
export interface SnapshotEvent<D = Document> {
  type: "snapshot";
  documents: D[];
  head: EventId | null;
  /** True when it follows a `reset` (the server could not resume). */
  reload: boolean;
}

/** One change of a document inside (or leaving) the subscription's filter. */
export interface ChangeEvent<D = Document> {
  type: "change";
  op: ChangeOp;
  /** The event id; the client resumes after the last one it delivered. */
  id: EventId;
  collection: string;
  /** The document's `_id`. */
  key: unknown;
  /**
   * The document after the change (only the subscription's `fields`, if it has
   * some); absent for `delete` and `leave`, and for an `update` of a subscription
   * with `fields` whose document the client holds (then `updated`/`removed` carry
   * the changed projected fields only).
   */
  document?: D;
  /** For an `update`: the fields it set (dotted paths). */
  updated?: Record<string, unknown>;
  /** For an `update`: the fields it removed. */
  removed?: string[];
  /** When the change was committed (RFC 3339, UTC, milliseconds). */
  ts: string;
}

/** The server could not resume the subscription; a `snapshot` with `reload: true` follows. */
export interface ResetEvent {
  type: "reset";
  reason: ResetReason;
}

/** The server refused the subscription (e.g. `bad_filter`, `forbidden`); it has ended. */
export interface SubscriptionErrorEvent {
  type: "error";
  /** The protocol's error code, e.g. `bad_filter`, `bad_collection`, `forbidden`, `too_many_subs`. */
  code: string;
  message: string;
}

/** What a subscriber's callback receives; switch on `type`. */
export type SubscriptionEvent<D = Document> =
  | SubscribedEvent
  | SnapshotEvent<D>
  | ChangeEvent<D>
  | ResetEvent
  | AggregateEvent
  | SubscriptionErrorEvent;

/** A live aggregate's groups: all of them when `full`, else those that changed. */
export interface AggregateEvent {
  type: "aggregate";
  groups: AggregateGroup[];
  full: boolean;
}

/** What {@link applyEvent} did to the map. */
export type ApplyResult = "reset" | "insert" | "update" | "remove" | null;

// ------------------------------------------------------------------ wire messages

/** The first message of every connection. */
export interface WelcomeMessage {
  type: "welcome";
  protocol: number;
  /** `realtime/<version>`. */
  server: string;
  /** Seconds between heartbeats; a peer silent for two intervals is closed. */
  heartbeat: number;
}

/** The server's change feed: `live`, or the database unavailable (`retrying`, `down`). */
export type FeedStatus = "live" | "retrying" | "down";

/** `status`: the server's change feed changed state (or is not live at connect). */
export interface StatusMessage {
  type: "status";
  feed: FeedStatus;
}

/** A server message, as the `message` event passes it (before the client handles it). */
export type ServerMessage =
  | WelcomeMessage
  | StatusMessage
  | { type: "subscribed"; sub: string; head: EventId | null }
  | { type: "snapshot"; sub: string; documents: Document[]; head: EventId | null }
  | ({ sub: string } & Omit<ChangeEvent, "type"> & { type: "change" })
  | { type: "aggregate"; sub: string; full: boolean; groups: AggregateGroup[] }
  | { type: "resync"; sub: string; reason: "history_lost" | "invalidated" | "overflow" }
  | { type: "error"; sub?: string; code: string; message: string }
  | { type: "pong"; ref?: string | number }
  | { type: "authenticated" };

/** A client message, as the `send` event passes it (an `auth` token is `"[redacted]"`). */
export type ClientMessage =
  | {
      op: "subscribe";
      sub: string;
      collection: string;
      filter?: Record<string, unknown>;
      snapshot?: boolean;
      limit?: number;
      since?: EventId;
      since_time?: string;
      fields?: string[];
      aggregate?: AggregateSpec;
    }
  | { op: "unsubscribe"; sub: string }
  | { op: "ping"; ref: string }
  | { op: "auth"; token: string };

// ------------------------------------------------------------------ options

/** Options of {@link RealtimeClient.subscribe}. */
export interface SubscribeOptions {
  /** A filter in the service's filter language (MongoDB syntax), e.g. `{ status: "open" }`. */
  filter?: Record<string, unknown> | null;
  /** Start with the matching documents (a `snapshot` event). */
  snapshot?: boolean;
  /** Most documents in a snapshot (server default 100, at most `REALTIME_SNAPSHOT_MAX`). */
  limit?: number | null;
  /** Resume after this event id instead of starting now. */
  since?: EventId | null;
  /**
   * Replay every change committed from this time (an RFC 3339 string with a time
   * zone, or a `Date`) from the oplog, then go live; not with `since` or `snapshot`.
   * After the first change the subscription resumes by event id; a time the
   * oplog no longer reaches back to gives a `reset` (`history_lost`) and a snapshot.
   */
  sinceTime?: string | Date | null;
  /**
   * Only these dotted paths of each document (`_id` and `_version` always come):
   * snapshots, inserts and replaces carry them, an update only the changed ones,
   * and an update that changes none of them sends nothing.
   */
  fields?: string[] | null;
  /**
   * A live aggregate instead of documents: `aggregate` events, the database's full
   * result first (and again after every reconnect), then the changed groups, at
   * most one message per `throttle_ms` (default 100). Not with the options above.
   */
  aggregate?: AggregateSpec | null;
}

/** What a live aggregate computes (docs/protocol.md, "Live aggregates"). */
export interface AggregateSpec {
  /** Up to 3 dotted paths; without it, one group (key `{}`). */
  group_by?: string | string[];
  count?: boolean;
  sum?: string | string[];
  avg?: string | string[];
  min?: string | string[];
  max?: string | string[];
  /** Coalescing window in ms, 0 to 60000 (default 100). */
  throttle_ms?: number;
}

/** One group of a live aggregate. */
export interface AggregateGroup {
  /** Each `group_by` path's value (`null` when missing). */
  key: Record<string, unknown>;
  /** The group has no document left (then only `key` is present). */
  removed?: true;
  count?: number;
  sum?: Record<string, number>;
  avg?: Record<string, number | null>;
  min?: Record<string, unknown>;
  max?: Record<string, unknown>;
}

/**
 * The credentials: an API key or JWT, or a function (sync or async) that returns
 * one, called before every connect and reconnect (and once more after a 4401).
 * `null` or `""` connects without credentials.
 */
export type TokenOption =
  | string
  | (() => string | null | undefined | PromiseLike<string | null | undefined>);

/**
 * What the client needs of a WebSocket. The browser's `WebSocket`, Node.js 22's
 * global one and the `ws` package's `WebSocket` all fit.
 */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** A WebSocket constructor (`new WebSocket(url)`). */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Options of {@link connect} and the {@link RealtimeClient} constructor. */
export interface ConnectOptions {
  /**
   * API key or JWT, sent as the first message (`{"op":"auth"}`, never in the URL).
   * After a close with 4401 a function is called once more: a different token
   * reconnects at once (resuming every subscription); the same one, `null`, or a
   * second 4401 before `welcome` leaves the client `closed`. A string token, and
   * the close codes 1008 and 4403, always end in `closed`.
   */
  token?: TokenOption | null;
  /** Reconnect delay in ms for a 0-based attempt (default {@link backoffDelay}). */
  delay?: (attempt: number) => number;
  /** Delay in ms before retrying a write, for a 0-based attempt (default {@link backoffDelay} up to {@link WRITE_BACKOFF_MAX_MS}). */
  writeDelay?: (attempt: number) => number;
  /** The REST API's base URL (default: derived from the client's URL, {@link httpUrl}). */
  httpUrl?: string;
  /** The fetch function for writes (default `globalThis.fetch`). */
  fetch?: typeof fetch;
  /** Connect at once (default true); otherwise call {@link RealtimeClient.open}. */
  autoConnect?: boolean;
  /**
   * The WebSocket constructor (default `globalThis.WebSocket`). Required where
   * there is none, e.g. on Node.js before 22: `import { WebSocket } from "ws"`.
   */
  WebSocket?: WebSocketConstructor;
}

// ------------------------------------------------------------------ client events

/** The connection states; `idle` only before the first {@link RealtimeClient.open}. */
export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** Detail of `connecting`. */
export interface ConnectingDetail {
  attempt: number;
}

/** Detail of `open`. */
export interface OpenDetail {
  welcome: WelcomeMessage;
}

/**
 * Detail of `reconnecting`: when the connection was lost, its close `code` and
 * `reason` and the `delay` (ms) before the next attempt; when that attempt
 * starts, `attempt` only.
 */
export interface ReconnectingDetail {
  attempt: number;
  code?: number;
  reason?: string;
  delay?: number;
}

/** Detail of `closed`: 1000 after `close()`; 1008, 4401 or 4403 when the server refused. */
export interface ClosedDetail {
  code: number;
  reason: string;
}

/** The detail of each state. */
export interface StateDetails {
  connecting: ConnectingDetail;
  open: OpenDetail;
  reconnecting: ReconnectingDetail;
  closed: ClosedDetail;
}

/** Listener signatures of {@link RealtimeClient.on}, by event name. */
export interface ClientEventMap {
  /** Every state change, with the state's detail. */
  state: (
    ...args: { [S in keyof StateDetails]: [state: S, detail: StateDetails[S]] }[keyof StateDetails]
  ) => void;
  connecting: (detail: ConnectingDetail) => void;
  open: (detail: OpenDetail) => void;
  reconnecting: (detail: ReconnectingDetail) => void;
  closed: (detail: ClosedDetail) => void;
  /** Every server message. */
  message: (message: ServerMessage) => void;
  /** Every client message (an `auth` token redacted). */
  send: (message: ClientMessage) => void;
  /** A connection-level error: invalid JSON, a token function that threw, a WebSocket that could not be created, a server `error` without `sub`. */
  error: (error: unknown) => void;
  /** The server reported its change feed's state (see {@link RealtimeClient.feed}). */
  status: (feed: FeedStatus | null, message: StatusMessage) => void;
}

/** The resume position of one subscription. */
export interface Position {
  collection: string;
  since: EventId | null;
}

// ------------------------------------------------------------------ the module

/** Smallest backoff ceiling in ms (the first retry waits 0..500 ms). */
export declare const BACKOFF_MIN_MS: 500;
/** Largest backoff ceiling in ms. */
export declare const BACKOFF_MAX_MS: 20000;
/** The protocol version this client speaks. */
export declare const PROTOCOL: 1;

/**
 * The delay before reconnect attempt `attempt` (0-based): exponential backoff with
 * full jitter, uniform in `[0, min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt))`.
 * @param random a source of numbers in [0, 1) (default `Math.random`)
 * @returns milliseconds
 */
export declare function backoffDelay(attempt: number, random?: () => number): number;

/**
 * The WebSocket URL of a server: `ws(s)://host/ws` from an `http(s)://` URL (a path
 * of `/` gets `/ws`), a path resolved against the page (outside a browser against
 * `http://127.0.0.1:8000/`), or a `ws(s)://` URL as is.
 */
export declare function wsUrl(url?: string): string;

/** The map key of a document `_id` as {@link applyEvent} uses it (its JSON text: `1` and `"1"` differ). */
export declare function keyOf(key: unknown): string;

/**
 * Apply one subscription event to a map of documents keyed by {@link keyOf}(`_id`):
 * a snapshot replaces everything; `insert`/`update`/`replace` of an unknown key
 * inserts; `leave`/`delete` of an unknown key does nothing; a change whose
 * `document._version` is not newer than the held one is ignored; an `update`
 * without a document (a subscription with `fields`) applies its delta to the
 * held document ({@link applyDelta}). Other events change nothing (`null`).
 */
export declare function applyEvent<D = Document>(
  docs: Map<string, D>,
  ev: SubscriptionEvent<D>,
): ApplyResult;

/** Attempts of one write, all with its one `Idempotency-Key`. */
export declare const WRITE_ATTEMPTS: 4;
/** Largest backoff ceiling between the attempts of a write, in milliseconds. */
export declare const WRITE_BACKOFF_MAX_MS: 4000;

/** The REST API's base URL of a server given by its WebSocket, HTTP or relative URL. */
export declare function httpUrl(url?: string): string;

/** A write the server refused, or that got no answer in any attempt (`status` 0). */
export declare class RealtimeWriteError extends Error {
  constructor(status: number, detail: string, problem?: Record<string, unknown> | null);
  /** The HTTP status, or 0 when no answer came. */
  readonly status: number;
  /** The problem's `detail` (or `title`), or why no answer came. */
  readonly detail: string;
  /** The problem+json body, if any. */
  readonly problem: Record<string, unknown> | null;
}

/** Options of a conditional write. */
export interface WriteOptions {
  /** Only if the document's `_version` is this (else 412). */
  ifVersion?: number | undefined;
}

/**
 * A copy of `doc` with an update's delta applied: each `removed` dotted path unset,
 * then each `updated` path set (objects created as needed). Throws a `TypeError`
 * for a path through a value that is not an object.
 */
export declare function applyDelta<D = Document>(
  doc: D,
  updated: Record<string, unknown>,
  removed: string[],
): D;

/**
 * Apply an `aggregate` event to a map of groups keyed by {@link groupKey}: a `full`
 * one replaces everything, others update the groups they name and drop the
 * `removed` ones. Returns true if `ev` was an `aggregate` event.
 */
export declare function applyAggregate<D = Document>(
  groups: Map<string, AggregateGroup>,
  ev: SubscriptionEvent<D>,
): boolean;

/** The map key of a group's `key` as {@link applyAggregate} uses it (JSON, fields sorted). */
export declare function groupKey(key: Record<string, unknown>): string;

/** Create a {@link RealtimeClient} and, unless `autoConnect` is false, open it. */
export declare function connect(url?: string, options?: ConnectOptions): RealtimeClient;

/** A connection to a realtime server that survives disconnects. */
export declare class RealtimeClient {
  /**
   * @param url `ws(s)://host/ws`, `http(s)://host`, or a path like `/ws` (default: the page's server)
   * @throws TypeError when there is no WebSocket (none given, no global one)
   */
  constructor(url?: string, options?: ConnectOptions);
  /** The WebSocket URL. */
  readonly url: string;
  /** The REST API's base URL (writes). */
  readonly httpUrl: string;
  /** The credentials option; may be replaced before a reconnect. */
  token: TokenOption | null;
  /** The current state. */
  readonly state: ConnectionState;
  /** The server's `welcome` on the current connection, or null. */
  readonly welcome: WelcomeMessage | null;
  /** Failed attempts since the last successful open. */
  readonly attempt: number;
  /** The current WebSocket (diagnostics; do not send on it). */
  readonly socket: WebSocketLike | null;
  /**
   * The server's change feed as last reported on this connection (a `status`
   * message): `live`, or `retrying`/`down` while the database is unavailable;
   * null when not reported (yet) on this connection.
   */
  readonly feed: FeedStatus | null;

  /** Listen to a client event; returns a function that removes the listener. */
  on<K extends keyof ClientEventMap>(type: K, listener: ClientEventMap[K]): () => void;

  /**
   * Subscribe to a live query. It survives reconnects: resumed with `since` (the
   * last event id delivered, or the last `head`), reloaded with a snapshot after a
   * `reset` when the server cannot resume. Returns a function that unsubscribes.
   */
  subscribe<D = Document>(
    collection: string,
    options: SubscribeOptions | null | undefined,
    onEvent: (ev: SubscriptionEvent<D>) => void,
  ): () => void;

  /** The resume positions of the active subscriptions (diagnostics). */
  positions(): Position[];

  /** Start connecting (done by {@link connect} unless `autoConnect` is false); no-op unless idle or closed. */
  open(): void;

  /** Skip the current backoff wait and reconnect now (no-op unless reconnecting). */
  reconnectNow(): void;

  /** Close for good: no reconnect; subscriptions stay registered but idle until `open()`. */
  close(): void;

  /**
   * Insert a document; resolves to the stored one (with `_id` and `_version`).
   * Each write carries one `Idempotency-Key` and is retried on a 503 or a network
   * error; the server applies it once. Rejects with {@link RealtimeWriteError}.
   */
  insert<D = Document>(collection: string, document: Partial<D> & object): Promise<D>;
  /** Replace (or create) document `id`; resolves to the stored document. */
  replace<D = Document>(collection: string, id: string, document: object,
    options?: WriteOptions): Promise<D>;
  /** Merge `patch` into document `id` (`null` removes a field); resolves to the stored document. */
  patch<D = Document>(collection: string, id: string, patch: object,
    options?: WriteOptions): Promise<D>;
  /** Delete document `id`. */
  delete(collection: string, id: string, options?: WriteOptions): Promise<void>;
}

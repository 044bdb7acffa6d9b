// A typed usage example in a browser: `tsc -p test/types` (npm run types) checks that
// realtime.d.ts covers the module's API and rejects misuse (@ts-expect-error lines).
// Imported by the package's own name, so `exports` and `types` are checked too.
import {
  applyAggregate,
  applyEvent,
  BACKOFF_MAX_MS,
  BACKOFF_MIN_MS,
  backoffDelay,
  connect,
  groupKey,
  keyOf,
  PROTOCOL,
  RealtimeClient,
  wsUrl,
} from "realtime-mongo-client";
import type {
  AggregateGroup,
  ApplyResult,
  ChangeEvent,
  ClientMessage,
  ConnectionState,
  ConnectOptions,
  Document,
  Position,
  ServerMessage,
  SubscribeOptions,
  SubscriptionEvent,
  TokenOption,
  WebSocketConstructor,
} from "realtime-mongo-client";

interface Order {
  _id: string;
  _version?: number;
  status: "open" | "paid";
  total: number;
}

const min: 500 = BACKOFF_MIN_MS;
const max: 20000 = BACKOFF_MAX_MS;
const protocol: 1 = PROTOCOL;
const delays: number[] = [backoffDelay(0), backoffDelay(3, () => 0.5), min, max, protocol];
const url: string = wsUrl("https://realtime.example.com");
const key: string = keyOf("o1");

// The browser's own WebSocket fits the option.
const Native: WebSocketConstructor = WebSocket;

const getToken = async (): Promise<string | null> => sessionStorage.getItem("token");
const token: TokenOption = getToken;
const options: ConnectOptions = { token, delay: (attempt) => 1000 * attempt, autoConnect: false,
  WebSocket: Native };
const client: RealtimeClient = connect("/ws", options);
const other = new RealtimeClient(url, { token: "api-key" });
other.close();

const stopState = client.on("state", (state, detail) => {
  const s: ConnectionState = state;
  switch (state) {
    case "open":
      console.log(s, detail.welcome.server, detail.welcome.heartbeat);
      break;
    case "reconnecting":
      console.log(detail.attempt, detail.delay ?? 0, detail.code ?? 0);
      break;
    case "closed":
      console.log(detail.code, detail.reason);
      break;
    case "connecting":
      console.log(detail.attempt);
      break;
  }
});
client.on("open", ({ welcome }) => console.log(welcome.protocol));
client.on("connecting", ({ attempt }) => console.log(attempt));
client.on("reconnecting", ({ attempt, delay }) => console.log(attempt, delay));
client.on("closed", ({ code, reason }) => console.log(code, reason));
client.on("message", (message: ServerMessage) => {
  if (message.type === "change") console.log(message.sub, message.op, message.id);
  if (message.type === "resync") console.log(message.reason);
});
client.on("send", (message: ClientMessage) => {
  if (message.op === "subscribe") console.log(message.collection, message.since);
});
client.on("error", (error) => console.error(error));
// @ts-expect-error: not an event of the client
client.on("change", () => {});
// @ts-expect-error: `open` listeners get the detail, not a state
client.on("open", (state: ConnectionState) => state);

// A typed live view of open orders.
const orders = new Map<string, Order>();
const subscribeOptions: SubscribeOptions = { filter: { status: "open" }, snapshot: true, limit: 50 };
const stop = client.subscribe<Order>("orders", subscribeOptions, (ev) => {
  const what: ApplyResult = applyEvent(orders, ev);
  switch (ev.type) {
    case "subscribed":
      console.log(ev.head, ev.resumed, what);
      break;
    case "snapshot":
      console.log(ev.documents.map((order) => order.total), ev.reload);
      break;
    case "change": {
      const change: ChangeEvent<Order> = ev;
      console.log(change.op, change.key, change.document?.status, change.updated, change.removed,
        change.ts, change.collection);
      break;
    }
    case "reset":
      console.log(ev.reason);
      break;
    case "error":
      console.log(ev.code, ev.message);
      break;
  }
});
client.subscribe("logs", { since: "8263ab..." }, (ev: SubscriptionEvent) => {
  const docs = new Map<string, Document>();
  applyEvent(docs, ev);
});
client.subscribe("logs", { sinceTime: new Date(), filter: { level: "error" } }, () => {});
client.subscribe("logs", { sinceTime: "2026-01-01T09:00:00Z" }, () => {});
const groups = new Map<string, AggregateGroup>();
client.subscribe("orders", { aggregate: { group_by: "status", count: true, sum: ["total"] } },
  (ev: SubscriptionEvent) => {
    if (ev.type === "aggregate") console.log(ev.full, ev.groups.length);
    applyAggregate(groups, ev);
  });
console.log(groupKey({ status: "open" }));
client.subscribe("all", undefined, () => {});
// @ts-expect-error: the callback is required
client.subscribe("orders", {});
// @ts-expect-error: `snapshot` is a boolean
client.subscribe("orders", { snapshot: "yes" }, () => {});

const positions: Position[] = client.positions();
const state: ConnectionState = client.state;
console.log(positions, state, client.url, client.attempt, client.welcome?.server,
  client.socket?.readyState, delays, key, stopState);
client.token = () => "renewed";
client.open();
client.reconnectNow();
stop();
client.close();
// @ts-expect-error: the state is read-only
client.state = "open";

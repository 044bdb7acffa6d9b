// A typed usage example on Node.js with the `ws` package and no DOM library:
// `tsc -p test/types/tsconfig.node.json` (npm run types).
import { WebSocket } from "ws";
import { applyEvent, connect, RealtimeWriteError, type Document } from "realtime-mongo-client";

const client = connect("http://127.0.0.1:8000", {
  WebSocket,
  token: process.env.REALTIME_TOKEN ?? null,
});
const docs = new Map<string, Document>();
const stop = client.subscribe("orders", { snapshot: true }, (ev) => {
  applyEvent(docs, ev);
  if (ev.type === "change" && ev.op === "leave") console.log("left:", ev.key);
});
process.once("SIGINT", () => {
  stop();
  client.close();
});

// Writes: one Idempotency-Key per logical write, retried on 503 and network errors.
interface Order extends Document {
  status: string;
  total: number;
}
async function writes(): Promise<void> {
  const order = await client.insert<Order>("orders", { status: "open", total: 3 });
  const paid: Order = await client.patch<Order>("orders", String(order._id),
    { status: "paid" }, { ifVersion: order._version });
  await client.delete("orders", String(paid._id));
}
void writes().catch((err: unknown) => {
  if (err instanceof RealtimeWriteError) console.error(err.status, err.problem);
});

// A typed usage example on Node.js with the `ws` package and no DOM library:
// `tsc -p test/types/tsconfig.node.json` (npm run types).
import { WebSocket } from "ws";
import { applyEvent, connect, type Document } from "realtime-mongo-client";

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

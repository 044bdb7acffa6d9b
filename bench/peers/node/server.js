// The Node.js peer of the latency benchmark: the minimal fan-out server in Node.
//
// `ws` and the official `mongodb` driver: one change stream on the database,
// each change encoded once with JSON.stringify, sent to every subscribed socket.
// Same protocol shape as realtime for the load client: a socket's first frame
// is `{"op":"subscribe","sub":...,"collection":...}`, answered with
// `{"type":"subscribed",...}`; each change goes out as a `change` message whose
// `document` is the inserted document (the load client reads `seq` and `t`).
//
// Usage: node server.js PORT MONGODB_URI DATABASE (loopback only). Prints one JSON
// line, {"event":"listening","port":PORT}, once it listens and its change stream
// is open; exits when stdin closes.
"use strict";

const { WebSocketServer } = require("ws");
const { MongoClient } = require("mongodb");

async function main() {
  const [port, uri, database] = [Number(process.argv[2]), process.argv[3], process.argv[4]];
  const client = new MongoClient(uri, { directConnection: true });
  await client.connect();
  const clients = new Set();
  const wss = new WebSocketServer({ host: "127.0.0.1", port, perMessageDeflate: false });
  wss.on("connection", (ws) => {
    ws.once("message", (data) => {
      let sub = "s";
      try {
        sub = JSON.parse(data.toString()).sub || "s";
      } catch (err) {
        ws.close(1003, "bad subscribe");
        return;
      }
      clients.add(ws);
      ws.send(JSON.stringify({ type: "subscribed", sub, head: null }));
    });
    ws.on("close", () => clients.delete(ws));
    ws.on("error", () => clients.delete(ws));
  });
  await new Promise((resolve) => wss.once("listening", resolve));

  const stream = client.db(database).watch([], { fullDocument: "updateLookup" });
  // Open the server cursor before saying we listen (the driver opens it lazily).
  const first = await stream.tryNext();
  process.stdout.write(JSON.stringify({ event: "listening", port }) + "\n");

  const send = (change) => {
    const message = JSON.stringify({
      type: "change",
      sub: "s",
      op: change.operationType,
      id: change._id._data,
      collection: change.ns.coll,
      key: String(change.documentKey._id),
      document: change.fullDocument,
      ts: change.wallTime ? change.wallTime.toISOString() : null,
    });
    for (const ws of clients) {
      if (ws.readyState === 1) ws.send(message);
    }
  };
  if (first) send(first);

  process.stdin.on("data", () => {});
  process.stdin.on("end", async () => {
    await stream.close().catch(() => {});
    wss.close();
    await client.close().catch(() => {});
    process.exit(0);
  });

  for await (const change of stream) send(change);
}

main().catch((err) => {
  process.stderr.write(`node peer: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});

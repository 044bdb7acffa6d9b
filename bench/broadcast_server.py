"""The baseline: a bare ``websockets.broadcast`` server (the ceiling of a Python server).

No framework, no database: every connection that sends a subscribe frame is
answered ``{"type":"subscribed"}`` and joins the broadcast set. The runner then
sends, on stdin, ``{"cmd":"run","events":E,"template":T}``: the server
broadcasts E messages as fast as it can to every subscriber with
:func:`websockets.asyncio.server.broadcast`, each built from the template (a
real realtime change message whose ``"seq":0`` and ``"t":0`` are replaced by
the event's number and its send time, so the payload is byte-for-byte the same
shape and size as realtime's) and answers ``{"event":"done"}``.

``broadcast`` itself has no back-pressure; so that the measure is the
delivery ceiling rather than memory growth, the loop yields to the event loop
after every event and waits while any connection holds more than
``HIGH_WATER`` bytes in its write buffer (the same bound realtime's transports
pause at). Usage: ``python bench/broadcast_server.py PORT`` (loopback only).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, broadcast, serve

HIGH_WATER = 64 * 1024
SUBSCRIBED = '{"type":"subscribed","sub":"s","head":null}'


class Broadcaster:
    """The set of subscribers and the broadcast loop."""

    def __init__(self) -> None:
        self.clients: set[ServerConnection] = set()

    async def handler(self, ws: ServerConnection) -> None:
        """Answer the subscribe frame, then keep the connection in the set until it closes."""
        try:
            async for _message in ws:
                if ws not in self.clients:
                    self.clients.add(ws)
                    await ws.send(SUBSCRIBED)
        finally:
            self.clients.discard(ws)

    def _congested(self) -> bool:
        for ws in self.clients:
            transport = ws.transport
            if transport is not None and transport.get_write_buffer_size() > HIGH_WATER:
                return True
        return False

    async def run(self, events: int, template: str) -> dict[str, Any]:
        """Broadcast ``events`` messages built from ``template`` as fast as possible."""
        head, rest = template.split('"seq":0', 1)
        middle, tail = rest.split('"t":0', 1)
        head += '"seq":'
        middle += '"t":'
        clients = self.clients
        started = time.monotonic()
        waits = 0
        for seq in range(events):
            message = head + str(seq) + middle + str(time.monotonic_ns()) + tail
            broadcast(clients, message)
            await asyncio.sleep(0)
            while self._congested():
                waits += 1
                await asyncio.sleep(0.001)
        return {"event": "done", "events": events, "clients": len(clients),
                "seconds": time.monotonic() - started, "congested_waits": waits}


async def main() -> None:
    """Serve on 127.0.0.1:PORT and obey the runner's commands on stdin."""
    port = int(sys.argv[1])
    broadcaster = Broadcaster()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with serve(broadcaster.handler, "127.0.0.1", port, ping_interval=None,
                     compression=None, max_queue=None, backlog=4096):
        sys.stdout.write('{"event":"listening"}\n')
        sys.stdout.flush()
        while line := await reader.readline():
            command = orjson.loads(line)
            if command.get("cmd") == "run":
                answer = await broadcaster.run(int(command["events"]), str(command["template"]))
            else:
                answer = {"event": "error", "message": f"unknown command {command!r}"}
            sys.stdout.buffer.write(orjson.dumps(answer) + b"\n")
            sys.stdout.flush()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())

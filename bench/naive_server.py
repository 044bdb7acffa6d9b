"""The naive pattern: one MongoDB change stream per WebSocket (the tutorial way).

This is what realtime replaces, kept as small as the tutorials write it: a
FastAPI app, one Motor client made in the lifespan, and an endpoint that opens
``collection.watch()`` for its socket and forwards every change with
``send_text``. To be driven by the same load client as realtime, the socket's
first frame names the collection (``{"op":"subscribe","collection":...}``), the
server answers ``{"type":"subscribed"}`` once its change stream is open, and
each change goes out in realtime's message shape (a ``change`` message with the
document), encoded per socket, as a tutorial does.

Usage: ``python bench/naive_server.py PORT MONGODB_URI DATABASE`` (loopback only).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import uvicorn
from bson import json_util
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from motor.motor_asyncio import AsyncIOMotorClient


def create_app(uri: str, database: str) -> FastAPI:
    """The naive app: a change stream per WebSocket."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client: AsyncIOMotorClient[dict[str, Any]] = AsyncIOMotorClient(uri)
        app.state.db = client[database]
        yield
        client.close()

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        request = orjson.loads(await websocket.receive_text())
        collection = websocket.app.state.db[request["collection"]]
        sub = request.get("sub", "s")
        try:
            async with collection.watch(full_document="updateLookup") as stream:
                await websocket.send_text(
                    orjson.dumps({"type": "subscribed", "sub": sub, "head": None}).decode())
                async for change in stream:
                    message = {
                        "type": "change", "sub": sub, "op": change["operationType"],
                        "id": change["_id"]["_data"],
                        "collection": change["ns"]["coll"],
                        "key": str(change["documentKey"]["_id"]),
                        "document": orjson.loads(json_util.dumps(change.get("fullDocument"))),
                        "ts": change["wallTime"].isoformat() if "wallTime" in change else None,
                    }
                    await websocket.send_text(orjson.dumps(message).decode())
        except WebSocketDisconnect:
            pass

    return app


def main() -> None:
    """Serve the naive app on 127.0.0.1:PORT."""
    port, uri, database = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    uvicorn.run(create_app(uri, database), host="127.0.0.1", port=port, log_level="warning",
                ws="websockets-sansio", ws_ping_interval=None, lifespan="on",
                backlog=4096)


if __name__ == "__main__":
    main()

"""``/ws``: the WebSocket endpoint (protocol v1, DESIGN.md §5).

Ties the sans-I/O protocol to the hub: parses client messages, registers
subscriptions (live, snapshot-then-live, or resume with ``since``) and answers
pings. Outgoing messages all go through the connection's ordered outbox
(:class:`realtime.hub.Connection`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, WebSocket

from realtime import __version__, protocol, query
from realtime.api.deps import get_services
from realtime.codec import dumps_str, key_to_json
from realtime.errors import RealtimeError
from realtime.hub import Connection, Subscription
from realtime.server import WRITABLE_EXTENSION

if TYPE_CHECKING:
    from realtime.app import Services

__all__ = ["router"]

log = logging.getLogger("realtime.ws")

router = APIRouter()


def _connection(websocket: WebSocket, services: Services,
                closers: set[asyncio.Task[None]]) -> Connection:
    ext: dict[str, Any] | None = websocket.scope.get("extensions", {}).get(WRITABLE_EXTENSION)

    def close_later(code: int, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(websocket.close(code, reason))
        closers.add(task)
        task.add_done_callback(closers.discard)

    client = websocket.client
    name = f"{client.host}:{client.port}" if client else "?"
    if ext is not None:
        return Connection(send_async=websocket.send_text, close=ext["close_now"],
                          send_now=ext["send_now"], writable=ext["event"],
                          max_backlog=services.settings.send_backlog, name=name)
    return Connection(send_async=websocket.send_text, close=close_later,
                      max_backlog=services.settings.send_backlog, name=name)


async def _subscribe(services: Services, conn: Connection, msg: protocol.Subscribe) -> None:
    hub = services.hub
    settings = services.settings
    if msg.sub in conn.subscriptions:
        conn.send(protocol.render_error(protocol.ErrorCode.DUPLICATE_SUB,
                                        f"subscription {msg.sub!r} exists", msg.sub))
        return
    if len(conn.subscriptions) >= settings.max_subscriptions:
        conn.send(protocol.render_error(
            protocol.ErrorCode.TOO_MANY_SUBS,
            f"at most {settings.max_subscriptions} subscriptions per connection", msg.sub))
        return
    if settings.collections is not None and msg.collection not in settings.collections:
        conn.send(protocol.render_error(protocol.ErrorCode.BAD_COLLECTION,
                                        f"collection {msg.collection!r} is not exposed",
                                        msg.sub))
        return
    sub = Subscription(conn, msg.sub, msg.collection, msg.filter)

    if msg.since is not None:
        head = hub.head()
        conn.send(protocol.render_subscribed(msg.sub, head))
        if hub.can_replay(msg.since):
            hub.add(sub)
            hub.replay(sub, msg.since)
        else:
            # Older than the ring: a catch-up stream from the oplog, live held back.
            sub.pending = deque()
            hub.add(sub)
            services.feed.catch_up(sub, msg.since)
        return

    if not msg.snapshot:
        conn.send(protocol.render_subscribed(msg.sub, hub.head()))
        hub.add(sub)
        return

    # Snapshot then live: hold events back from the head on, read, send, flush.
    sub.pending = deque()
    head = hub.head()
    hub.add(sub)
    conn.send(protocol.render_subscribed(msg.sub, head))
    documents: list[str] = []
    versions: dict[Any, int] = {}
    try:
        cursor = services.db.collection(msg.collection).find(
            query.to_mongo(msg.filter), sort=[("_id", 1)], limit=msg.limit,
            batch_size=min(msg.limit, 1000))
        async for doc in cursor:
            documents.append(dumps_str(doc))
            version = doc.get("_version")
            if isinstance(version, int):
                versions[key_to_json(doc.get("_id"))] = version
    except RealtimeError as exc:
        hub.remove(sub)
        conn.send(protocol.render_error(protocol.ErrorCode.INTERNAL,
                                        f"snapshot failed: {exc.detail}", msg.sub))
        return
    if conn.subscriptions.get(msg.sub) is not sub:
        return  # unsubscribed or closed meanwhile
    sub.snapshot_versions = versions
    conn.send(protocol.render_snapshot(msg.sub, documents, head))
    sub.go_live()


@router.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    """Live subscriptions over WebSocket (protocol v1)."""
    services = get_services(websocket)
    settings = services.settings
    hub = services.hub
    await websocket.accept()
    closers: set[asyncio.Task[None]] = set()
    conn = _connection(websocket, services, closers)
    hub.attach(conn)
    conn.send(protocol.render_welcome(f"realtime/{__version__}", settings.heartbeat_seconds))
    try:
        while not conn.closed:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            try:
                parsed = protocol.parse_client_message(data, max_limit=settings.snapshot_max)
            except protocol.ProtocolError as exc:
                conn.send(protocol.render_error(exc.code, exc.message, exc.sub))
                continue
            if isinstance(parsed, protocol.Subscribe):
                await _subscribe(services, conn, parsed)
            elif isinstance(parsed, protocol.Unsubscribe):
                existing = conn.subscriptions.get(parsed.sub)
                if existing is None:
                    conn.send(protocol.render_error(protocol.ErrorCode.UNKNOWN_SUB,
                                                    f"no subscription {parsed.sub!r}",
                                                    parsed.sub))
                else:
                    hub.remove(existing)
            elif isinstance(parsed, protocol.Ping):
                conn.send(protocol.render_pong(parsed.ref))
            else:  # Auth: authentication is not configured
                conn.send(protocol.render_authenticated())
    except Exception:
        log.exception("WebSocket %s failed", conn.name)
        conn.close(protocol.CloseCode.INTERNAL, "internal error")
    finally:
        await hub.detach(conn)
        for task in list(closers):
            with contextlib.suppress(Exception):
                await task



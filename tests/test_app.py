"""realtime.app: ``/ws`` as a bare ASGI route, the same as through FastAPI's router."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest

from realtime.api import ws
from realtime.app import RealtimeApp
from realtime.config import Settings
from realtime.logs import current_request_id
from tests.helpers import running_app


async def _session(app: RealtimeApp, root_path: str,
                   headers: list[tuple[bytes, bytes]]) -> tuple[list[dict[str, Any]],
                                                                dict[str, Any]]:
    """Drive one WebSocket at the ASGI level: ping, a bad message, a server shutdown.

    Returns every message the app sent, and the scope (as the app left it).
    """
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: MutableMapping[str, Any]) -> None:
        await outbox.put(dict(message))

    async def next_sent() -> dict[str, Any]:
        message = await asyncio.wait_for(outbox.get(), 10)
        sent.append(message)
        return message

    scope: dict[str, Any] = {
        "type": "websocket", "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1", "scheme": "ws", "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000), "root_path": root_path, "path": f"{root_path}/ws",
        "raw_path": f"{root_path}/ws".encode(), "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), *headers], "subprotocols": [],
        "state": {}, "extensions": {},
    }
    sent: list[dict[str, Any]] = []
    task = asyncio.create_task(app(scope, receive, send))
    try:
        await inbox.put({"type": "websocket.connect"})
        assert (await next_sent())["type"] == "websocket.accept"
        assert orjson.loads((await next_sent())["text"])["type"] == "welcome"
        await inbox.put({"type": "websocket.receive", "text": '{"op":"ping","ref":"1"}'})
        await next_sent()
        await inbox.put({"type": "websocket.receive", "text": "not json"})
        await next_sent()
        app.state.services.hub.close_all(1001, "server shutdown")
        await next_sent()
        await inbox.put({"type": "websocket.disconnect", "code": 1001})
        await asyncio.wait_for(task, 10)
    finally:
        task.cancel()
    return sent, scope


@pytest.mark.parametrize("request_id", [None, "ws-7.a:b"])
async def test_bare_route_serves_like_the_router(settings: Settings,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 request_id: str | None) -> None:
    """``/ws`` skips FastAPI's stack, with the same messages and the request id bound."""
    seen: list[str | None] = []
    handle = ws._on_message

    async def spy(*args: Any) -> Any:
        seen.append(current_request_id())
        return await handle(*args)

    monkeypatch.setattr(ws, "_on_message", spy)
    headers = [] if request_id is None else [(b"x-request-id", request_id.encode())]
    async with running_app(settings) as app:
        bare, bare_scope = await _session(app, "", headers)
        routed, routed_scope = await _session(app, "/prefix", headers)
        assert not app.state.services.hub.connections
    assert "route" not in bare_scope  # served before the router
    assert "route" in routed_scope  # (a root_path takes the FastAPI way)
    assert bare == routed
    assert [m["type"] for m in bare] == ["websocket.accept", "websocket.send", "websocket.send",
                                         "websocket.send", "websocket.close"]
    assert orjson.loads(bare[2]["text"]) == {"type": "pong", "ref": "1"}
    assert orjson.loads(bare[3]["text"])["type"] == "error"
    assert (bare[4]["code"], bare[4]["reason"]) == (1001, "server shutdown")
    assert len(seen) == 6  # ping, bad message, disconnect; twice
    assert len(set(seen[:3])) == 1
    assert len(set(seen[3:])) == 1
    if request_id is None:
        assert all(rid is not None and len(rid) == 32 for rid in seen)
    else:
        assert set(seen) == {request_id}

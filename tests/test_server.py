"""realtime.server: the uvicorn WebSocket protocol subclass, per-connection state."""

from __future__ import annotations

import gc
import os
import weakref

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from realtime.server import RealtimeWebSocketProtocol, _forget_request
from tests.conftest import LiveServer
from tests.helpers import until, ws_client

HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             b"Sec-WebSocket-Version: 13\r\n\r\n")


def masked_text(text: str) -> bytes:
    """A client's (masked) text frame, payload under 126 bytes."""
    payload = text.encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    return (bytes([0x81, 0x80 | len(payload)]) + mask
            + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def _accepted(server: ServerProtocol, data: bytes) -> Request:
    server.receive_data(data)
    events = server.events_received()
    request = events[0]
    assert isinstance(request, Request)
    server.send_response(server.accept(request))
    server.data_to_send()
    return request


def test_handshake_request_is_released() -> None:
    """After the handshake the parser no longer holds the request; frames parse as before."""
    server = ServerProtocol()
    request = _accepted(server, HANDSHAKE)
    gone = weakref.ref(request)
    parser = server.parser
    _forget_request(server)
    assert server.parser is not parser
    del request
    gc.collect()
    assert gone() is None
    frame = masked_text('{"op":"ping","ref":"1"}')
    server.receive_data(frame[:3])  # a frame in pieces, then two at once
    server.receive_data(frame[3:] + frame)
    frames = server.events_received()
    assert [(f.opcode, f.data) for f in frames if isinstance(f, Frame)] == [
        (Opcode.TEXT, b'{"op":"ping","ref":"1"}')] * 2


def test_parser_inside_a_frame_is_kept() -> None:
    """A client that sent part of a frame with its request: nothing is lost."""
    server = ServerProtocol()
    frame = masked_text('{"op":"ping","ref":"2"}')
    _accepted(server, HANDSHAKE + frame[:4])
    parser = server.parser
    _forget_request(server)
    assert server.parser is parser
    server.receive_data(frame[4:])
    events = server.events_received()
    assert [getattr(e, "data", None) for e in events] == [b'{"op":"ping","ref":"2"}']


async def test_connection_state_lives_in_slots(live: LiveServer) -> None:
    """uvicorn's per-connection attributes are all slots: no instance dict table."""
    async with ws_client(live.ws_url) as c:
        await c.subscribe("s", "orders")
        protocols = [p for p in live.server.server_state.connections
                     if isinstance(p, RealtimeWebSocketProtocol)]
        assert len(protocols) == 1
        protocol = protocols[0]
        assert vars(protocol) == {}, f"attributes outside __slots__: {sorted(vars(protocol))}"
        # The handshake is over: its request and response are let go.
        assert protocol.request is None
        assert protocol.response is None
        assert protocol.conn.parser.gi_code is not ServerProtocol.parse.__code__
    await until(lambda: not live.app.state.services.hub.connections, 10)

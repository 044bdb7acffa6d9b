"""realtime._compat: every private API of a dependency realtime uses, and its fallback.

The first half fails loudly, naming the upstream package, its version and the
symbol, when an upstream release no longer has what realtime reaches into
(`make test-lowest` runs it on the lowest pinned versions too). The second
half makes each hook unavailable in-process, through the parameter or object
the hook is given (never by patching the library), and checks that the plain
path serves: one warning, and for the WebSocket hook a real uvicorn server on
its stock protocol serving a subscription end to end.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Iterator
from importlib import metadata
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from realtime import _compat
from realtime.app import create_app
from realtime.config import Settings
from realtime.embedded import EmbeddedServer
from realtime.server import HOOK, RealtimeServer, make_server, websocket_protocol
from tests.helpers import apikey_settings, bearer, serving, ws_client

pytestmark = pytest.mark.driver_blind

HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             b"Sec-WebSocket-Version: 13\r\n\r\n")
KEYS: dict[str, dict[str, Any]] = {"k": {"scopes": ["read:*", "write:*"]}}


def version(package: str) -> str:
    return f"{package} {metadata.version(package)}"


async def bare_app(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app for servers that never run."""


@pytest.fixture
def degraded(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fallback warnings captured, and forgotten after the test (one per process otherwise)."""
    monkeypatch.setattr(_compat, "_degraded", set())
    with caplog.at_level(logging.WARNING, logger="realtime.compat"):
        yield


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The fallback warnings logged so far."""
    return [r.getMessage() for r in caplog.records if r.name == "realtime.compat"]


# ------------------------------------------------------------------ uvicorn: the protocol hook


def test_uvicorn_sansio_protocol_has_what_the_hook_overrides() -> None:
    try:
        base = _compat.load_sansio_protocol()
    except ImportError as exc:
        pytest.fail(f"{version('uvicorn')}: uvicorn.protocols.websockets.websockets_sansio_impl"
                    f".WebSocketsSansIOProtocol cannot be imported: {exc}")
    problems = _compat.sansio_protocol_problems(base, HOOK)
    assert not problems, "\n".join(problems)


def test_uvicorn_client_disconnected_is_importable() -> None:
    try:
        disconnected = _compat.load_client_disconnected()
    except ImportError as exc:
        pytest.fail(f"{version('uvicorn')}: uvicorn.protocols.utils.ClientDisconnected: {exc}")
    assert issubclass(disconnected, Exception), (
        f"{version('uvicorn')}: uvicorn.protocols.utils.ClientDisconnected is not an exception")


def test_hook_is_installed_without_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="realtime.compat"):
        hooked = websocket_protocol()
    assert hooked is not None, f"{version('uvicorn')}: the hook fell back: {warnings_of(caplog)}"
    assert issubclass(hooked, _compat.load_sansio_protocol())


def test_uvicorn_stock_protocol_is_what_the_hook_subclasses() -> None:
    """The fallback, ``ws="auto"``, is the same sans-I/O protocol, minus the hook."""
    config = uvicorn.Config(bare_app, ws="auto", log_config=None)
    config.load()
    assert config.ws_protocol_class is _compat.load_sansio_protocol(), (
        f"{version('uvicorn')}: ws='auto' is no longer WebSocketsSansIOProtocol")


# ------------------------------------------------------------------ websockets: the parser swap


def accepted(server: ServerProtocol, data: bytes) -> Request:
    server.receive_data(data)
    request = server.events_received()[0]
    assert isinstance(request, Request)
    server.send_response(server.accept(request))
    server.data_to_send()
    return request


def masked_text(text: str) -> bytes:
    """A client's (masked) text frame, payload under 126 bytes."""
    payload = text.encode()
    assert len(payload) < 126
    mask = b"\x01\x02\x03\x04"
    return (bytes([0x81, 0x80 | len(payload)]) + mask
            + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def test_websockets_parser_internals() -> None:
    problems = _compat.parser_problems()
    assert not problems, "\n".join(problems)


def test_handshake_request_is_released(degraded: None,
                                       caplog: pytest.LogCaptureFixture) -> None:
    """After the handshake the parser no longer holds the request; frames parse as before."""
    import gc
    import weakref

    server = ServerProtocol()
    request = accepted(server, HANDSHAKE)
    gone = weakref.ref(request)
    parser = server.parser
    _compat.forget_request(server)
    assert not warnings_of(caplog)
    assert server.parser is not parser, (
        f"{version('websockets')}: ServerProtocol.parser was not swapped for Protocol.parse "
        "(no longer waiting in StreamReader.at_eof at a frame boundary?)")
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
    accepted(server, HANDSHAKE + frame[:4])
    parser = server.parser
    _compat.forget_request(server)
    assert server.parser is parser
    server.receive_data(frame[4:])
    events = server.events_received()
    assert [getattr(e, "data", None) for e in events] == [b'{"op":"ping","ref":"2"}']


def test_websockets_extensions_attribute() -> None:
    """``frames_ok`` reads ``Protocol.extensions`` (what the handshake negotiated)."""
    server = ServerProtocol()
    accepted(server, HANDSHAKE)
    assert server.extensions == [], f"{version('websockets')}: ServerProtocol.extensions changed"


# ------------------------------------------------------------------ uvicorn: the server


def test_uvicorn_server_has_what_realtime_server_overrides() -> None:
    problems = _compat.server_problems()
    assert not problems, "\n".join(problems)


def recorded_sigterm() -> tuple[list[int], Any]:
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: seen.append(sig))
    return seen, previous


def test_uvicorn_reraises_captured_signals() -> None:
    """Why :func:`_compat.forget_captured_signal` exists: plain uvicorn re-raises SIGTERM."""
    server = uvicorn.Server(uvicorn.Config(bare_app, log_config=None))
    seen, previous = recorded_sigterm()
    try:
        with server.capture_signals():
            server.handle_exit(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [signal.SIGTERM], (
        f"{version('uvicorn')}: Server.capture_signals no longer re-raises the captured "
        "signals (_captured_signals): RealtimeServer.handle_exit may no longer need to pop them")


def test_realtime_server_does_not_reraise_sigterm(degraded: None,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    server = RealtimeServer(uvicorn.Config(bare_app, log_config=None))
    seen, previous = recorded_sigterm()
    try:
        with server.capture_signals():
            server.handle_exit(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert server.should_exit
    assert seen == []
    assert not warnings_of(caplog)


# ------------------------------------------------------------------ FastAPI: native telemetry


def fastapi_has_telemetry() -> bool:
    import inspect

    from fastapi import FastAPI

    return "telemetry" in inspect.signature(FastAPI.__init__).parameters


def test_fastapi_telemetry_internals() -> None:
    problems = _compat.telemetry_problems()
    assert not problems, "\n".join(problems)


def test_fastapi_telemetry_on_reads_fastapi_decision(degraded: None,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from fastapi import FastAPI

    if not fastapi_has_telemetry():
        assert not _compat.fastapi_telemetry_on(FastAPI())
        pytest.skip(f"{version('fastapi')} has no native telemetry (0.142+)")
    from opentelemetry.trace import NoOpTracerProvider

    off = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})
    on = FastAPI(telemetry={"tracer_provider": NoOpTracerProvider()})
    assert not _compat.fastapi_telemetry_on(off)
    assert _compat.fastapi_telemetry_on(on), (
        f"{version('fastapi')}: FastAPI._native_telemetry.enabled() is False for an app "
        "with a tracer provider")
    assert not warnings_of(caplog)


# ------------------------------------------------------------------ Motor: the eager cursor


async def test_motor_change_stream_opens_at_watch(mongo: EmbeddedServer) -> None:
    """Entering Motor's change stream opens its cursor: the resume token is known at once."""
    from motor.motor_asyncio import AsyncIOMotorClient

    client: Any = AsyncIOMotorClient(mongo.uri, serverSelectionTimeoutMS=5000)
    try:
        stream = client["compat"].watch([])
        await _compat.open_motor_change_stream(stream)
        try:
            token = stream.resume_token
        except AttributeError:
            pytest.fail(f"{version('motor')}: AsyncIOMotorChangeStream.__aenter__ no longer "
                        "opens the cursor (resume_token unknown until the first read)")
        assert token is not None
        await stream.close()
    finally:
        client.close()


# ------------------------------------------------------------------ the fallbacks


def missing_module() -> type[Any]:
    raise ImportError("No module named 'uvicorn.protocols.websockets.websockets_sansio_impl'")


class OldProtocol(asyncio.Protocol):
    """A protocol class without what the hook overrides (like uvicorn before 0.52.1)."""

    def handle_connect(self, event: Any) -> None:
        self.conn = event


def old_protocol() -> type[Any]:
    return OldProtocol


@pytest.mark.parametrize("load", [missing_module, old_protocol])
def test_hook_unavailable_falls_back_with_one_warning(load: Any, degraded: None,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    assert websocket_protocol(load) is None
    assert websocket_protocol(load) is None
    make_server(create_app, Settings(port=0), load_ws_protocol=load)
    messages = warnings_of(caplog)
    assert len(messages) == 1, messages
    assert "uvicorn WebSocket protocol hook unavailable" in messages[0]
    assert "stock protocol" in messages[0]


@pytest.mark.parametrize("hooked", [True, False], ids=["hook", "stock"])
async def test_websocket_path_end_to_end(hooked: bool, settings: Settings,
                                         degraded: None,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """With or without the hook, a real server serves a subscription and closes sockets.

    Without it (uvicorn's stock protocol), the scope has no ``realtime.writable``
    extension: messages go through ``send_text`` and a server-side close runs in
    a task; a shutdown closes with uvicorn's 1012 instead of 1001.
    """
    keyed = apikey_settings(settings, KEYS)
    app = create_app(keyed)
    def missing() -> type[Any]:  # (a loader of this test's own: the result is cached per loader)
        return missing_module()

    load = _compat.load_sansio_protocol if hooked else missing
    server = make_server(app, keyed, load_ws_protocol=load)
    assert isinstance(server.config.ws, type) is hooked
    async with serving(server) as port:
        url = f"ws://127.0.0.1:{port}/ws"
        async with (httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10,
                                      headers=bearer("k")) as http,
                    ws_client(url, additional_headers=bearer("k")) as c,
                    ws_client(url, additional_headers=bearer("k")) as stays):
            await c.subscribe("s", "orders")
            protocols = list(server.server_state.connections)
            stock = _compat.load_sansio_protocol()
            kinds = {type(p) is stock for p in protocols if isinstance(p, stock)}
            assert kinds == {not hooked}
            r = await http.post("/api/collections/orders/documents", json={"n": 1})
            assert r.status_code == 201, r.text
            change = (await c.changes(1))[0]
            assert change["document"]["n"] == 1
            # A server-side close: credentials the server refuses, 4401.
            await c.send({"op": "auth", "token": "wrong"})
            with pytest.raises(ConnectionClosed) as closed:
                await c.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4401
            server.should_exit = True
            with pytest.raises(ConnectionClosed) as shutdown:
                await stays.recv(timeout=15)
            assert shutdown.value.rcvd is not None
            assert shutdown.value.rcvd.code == (1001 if hooked else 1012)
    messages = warnings_of(caplog)
    assert len(messages) == (0 if hooked else 1), messages


def test_signal_fallback(degraded: None, caplog: pytest.LogCaptureFixture) -> None:
    _compat.forget_captured_signal(object(), signal.SIGTERM)
    _compat.forget_captured_signal(object(), signal.SIGTERM)
    assert len(warnings_of(caplog)) == 1


def test_listening_sockets_fallback(degraded: None,
                                    caplog: pytest.LogCaptureFixture) -> None:
    assert _compat.listening_sockets(object()) == []
    assert len(warnings_of(caplog)) == 1


def test_listening_sockets() -> None:
    class Server:
        sockets = [socket.socket()]

    class Uvicorn:
        servers = [Server()]

    try:
        assert _compat.listening_sockets(Uvicorn()) == Server.sockets
    finally:
        Server.sockets[0].close()


def test_telemetry_fallback(degraded: None, caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def enabled(self) -> bool:
            raise AttributeError("'NativeTelemetry' object has no attribute 'config'")

    class App:
        _native_telemetry = Broken()

    assert _compat.fastapi_telemetry_on(App()) is False
    assert _compat.fastapi_telemetry_on(App()) is False
    assert len(warnings_of(caplog)) == 1
    # An app without the attribute: off (warned only where FastAPI has native telemetry).
    assert _compat.fastapi_telemetry_on(object()) is False


async def test_motor_fallback(degraded: None, caplog: pytest.LogCaptureFixture) -> None:
    await _compat.open_motor_change_stream(object())
    assert len(warnings_of(caplog)) == 1


def test_parser_swap_fallback(degraded: None, caplog: pytest.LogCaptureFixture) -> None:
    """A parser swap that fails leaves the parser as it was, and is not tried again."""

    class Conn:
        """Waits at a frame boundary, but lacks what ``Protocol.parse`` reads."""

        def __init__(self) -> None:
            self.parser = StreamReader().at_eof()
            next(self.parser)

    conn = Conn()
    parser = conn.parser
    _compat.forget_request(conn)
    assert conn.parser is parser
    _compat.forget_request(conn)
    assert len(warnings_of(caplog)) == 1
    parser.close()


def test_proxy_headers_rewrite_the_scope_of_a_trusted_peer_only() -> None:
    apply = _compat.proxy_headers("127.0.0.1")
    headers = [(b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-proto", b"https")]
    trusted: dict[str, Any] = {"type": "websocket", "client": ("127.0.0.1", 5000),
                               "scheme": "ws", "headers": headers}
    apply(trusted)
    assert trusted["client"] == ("203.0.113.7", 0)
    assert trusted["scheme"] == "wss"
    stranger: dict[str, Any] = {"type": "http", "client": ("192.0.2.1", 5000),
                                "scheme": "http", "headers": headers}
    apply(stranger)
    assert stranger["client"] == ("192.0.2.1", 5000)
    assert stranger["scheme"] == "http"


def test_motor_batch_reader_falls_back_for_a_stream_not_opened(
        degraded: None, caplog: pytest.LogCaptureFixture) -> None:
    class Unopened:
        delegate = None

    assert _compat.motor_batch_reader(Unopened()) is None
    assert any("batch" in w for w in warnings_of(caplog))


async def test_motor_batch_reader_hands_out_a_batch_then_raises_what_cut_it_short(
        degraded: None, caplog: pytest.LogCaptureFixture) -> None:
    """One read returns what the cursor holds; an error met after the first event
    comes with the next read, nothing lost before it."""
    from collections import deque

    class Cursor:
        def __init__(self) -> None:
            self._data: deque[Any] = deque()

    class Delegate:
        """PyMongo's change stream as the reader sees it: try_next over a buffer."""

        def __init__(self, batches: list[list[Any]]) -> None:
            self._cursor = Cursor()
            self.batches = batches

        def try_next(self) -> Any:
            if not self._cursor._data:
                if not self.batches:
                    return None
                self._cursor._data.extend(self.batches.pop(0))  # a getMore
                if not self._cursor._data:
                    return None
            item = self._cursor._data.popleft()
            if isinstance(item, Exception):
                raise item
            return item

    class Stream:
        def __init__(self, delegate: Delegate) -> None:
            self.delegate = delegate

    boom = RuntimeError("a bad event")
    read = _compat.motor_batch_reader(Stream(Delegate([[1, 2, 3], [4, boom, 5], []])))
    assert read is not None
    assert not warnings_of(caplog)
    assert await read() == [1, 2, 3]
    assert await read() == [4]
    with pytest.raises(RuntimeError, match="a bad event"):
        await read()
    assert await read() == [5]
    assert await read() == []

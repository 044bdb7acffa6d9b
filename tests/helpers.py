"""Test helpers shared by the test modules (fixtures stay in conftest.py).

- the app in-process (:func:`running_app`, :func:`asgi_client`) and on a real
  uvicorn server in the test's event loop (:class:`LiveServer`, :func:`serving`);
- ``python -m realtime serve`` as a subprocess (:class:`ServerProcess`);
- WebSocket clients (:class:`WSClient`, :class:`RawClient`);
- credentials and settings for the auth modes (:func:`apikey_settings`,
  :func:`jwt_settings`, :func:`hs256`, :func:`bearer`);
- a server fail point as a context manager (:func:`fail_point`);
- a TCP proxy to the database that loses the reply of one write after the
  database applied it, or holds a write (:class:`WireProxy`);
- waiting for a state with a timeout (:func:`wait_until`, :func:`until`,
  :func:`notified`), never for a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bson
import httpx
import jwt
import orjson
from bson import Timestamp
from bson.codec_options import CodecOptions
from bson.son import SON
from pymongo import AsyncMongoClient
from websockets.asyncio.client import ClientConnection, connect

from realtime.app import create_app
from realtime.config import Settings
from realtime.embedded import free_port
from realtime.events import Event, normalise
from realtime.server import RealtimeServer, make_server, wait_started

#: How long a browser test waits for a page condition (Playwright, milliseconds).
BROWSER_TIMEOUT_MS = 10_000

# ------------------------------------------------------------------ the app


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[Any]:
    """The app with its lifespan running (no socket)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@asynccontextmanager
async def asgi_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app (lifespan running) behind an in-process HTTP client."""
    async with running_app(settings) as application:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


@asynccontextmanager
async def serving(server: RealtimeServer, timeout: float = 30.0) -> AsyncIterator[int]:
    """Run a uvicorn server in this event loop for the block; yield the port it listens on.

    Raises:
        RuntimeError: the server stopped during start-up.
        TimeoutError: it did not listen within ``timeout`` seconds.
    """
    task = asyncio.create_task(server.serve())
    try:
        port = await wait_started(server, task, timeout)
    except BaseException:
        server.should_exit = True
        await asyncio.wait({task}, timeout=15)  # its error, if any, is the one raised
        raise
    try:
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


class OnLoopback:
    """A server on a loopback port: its HTTP and WebSocket URLs."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


class LiveServer(OnLoopback):
    """The app on a real uvicorn server on a free loopback port, in the test's event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.server = make_server(self.app, settings)
        self.port = 0


@asynccontextmanager
async def live_server(settings: Settings) -> AsyncIterator[LiveServer]:
    """A :class:`LiveServer` for ``settings``, listening for the block."""
    live = LiveServer(settings)
    async with serving(live.server) as port:
        live.port = port
        yield live


# ------------------------------------------------------------------ credentials

#: The HS256 secret of :func:`jwt_settings` and :func:`hs256`.
SECRET = "test-secret-" + "x" * 32


def sha(key: str) -> str:
    """The hex SHA-256 of an API key, as REALTIME_API_KEYS lists it."""
    return hashlib.sha256(key.encode()).hexdigest()


def derive(base: Settings, **overrides: Any) -> Settings:
    """``base`` with ``overrides``, validated again."""
    data = base.model_dump()
    data.update(overrides)
    return Settings(**data)


def apikey_settings(base: Settings, keys: dict[str, dict[str, Any]], **overrides: Any
                    ) -> Settings:
    """Mode apikey with ``keys``: {key: {"scopes": [...], "tenant": ...}}."""
    entries = [{"sha256": sha(key), **spec} for key, spec in keys.items()]
    return derive(base, auth="apikey", api_keys=entries, **overrides)


def hs256(claims: dict[str, Any], secret: str = SECRET, **headers: Any) -> str:
    """A HS256 JWT with ``exp`` one hour ahead unless given (JWT times are Unix times)."""
    body = {"exp": int(time.time()) + 3600, **claims}
    return jwt.encode(body, secret, algorithm="HS256", headers=headers or None)


def jwt_settings(base: Settings, **overrides: Any) -> Settings:
    """Mode jwt, HS256 with SECRET unless another key source is given."""
    return derive(base, **{"auth": "jwt", "jwt_secret": SECRET, **overrides})


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header carrying ``token``."""
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------ the database


@asynccontextmanager
async def fail_point(client_or_uri: str | AsyncMongoClient[Any], name: str = "failCommand", *,
                     data: Mapping[str, Any] | None = None,
                     mode: str | Mapping[str, Any] | None = None,
                     times: int = 1) -> AsyncIterator[None]:
    """The server's fail point ``name`` armed for the block, turned off on exit.

    Like PyMongo's own tests' ``fail_point``: ``mode`` is ``{"times": times}``
    unless given (``"alwaysOn"``, ``{"skip": n}``...), ``data`` the fail point's
    data (for ``failCommand``: ``failCommands``, ``errorCode``, ``appName``...).
    Given a URI, a client of its own is opened and closed; the server must run
    with test commands enabled.
    """
    own = isinstance(client_or_uri, str)
    client: AsyncMongoClient[Any] = (
        AsyncMongoClient(client_or_uri) if isinstance(client_or_uri, str) else client_or_uri)
    command: dict[str, Any] = {"configureFailPoint": name,
                               "mode": {"times": times} if mode is None else mode}
    if data is not None:
        command["data"] = dict(data)
    try:
        await client.admin.command(command)
        try:
            yield
        finally:
            await client.admin.command({"configureFailPoint": name, "mode": "off"})
    finally:
        if own:
            await client.close()


_OP_MSG = 2013


def _command_of(message: bytes) -> tuple[str, Any, bytes, int] | None:
    """An OP_MSG's command name, its first value, the body's bytes and its offset."""
    if int.from_bytes(message[12:16], "little") != _OP_MSG or message[20] != 0:
        return None
    size = int.from_bytes(message[21:25], "little")
    raw = message[21:21 + size]
    body = bson.decode(raw, CodecOptions(document_class=SON))
    name = next(iter(body), None)
    if name is None:
        return None
    return str(name), body[name], raw, 21


def _without_txn_number(message: bytes) -> bytes:
    """The OP_MSG ``message`` with ``txnNumber`` removed from its body (checksum dropped)."""
    parsed = _command_of(message)
    assert parsed is not None
    _, _, raw, offset = parsed
    body = bson.decode(raw, CodecOptions(document_class=SON))
    body.pop("txnNumber", None)
    flags = int.from_bytes(message[16:20], "little")
    end = len(message) - 4 if flags & 1 else len(message)
    rest = bson.encode(body) + message[offset + len(raw):end]
    out = message[4:16] + (flags & ~1).to_bytes(4, "little") + message[20:21] + rest
    return (len(out) + 4).to_bytes(4, "little") + out


class WireProxy:
    """A TCP proxy between the service and the database that injects write faults.

    - :meth:`lose_reply`: the next matching write is forwarded and applied, its
      reply is dropped and the client's connection closed: the driver sees a
      network error after the commit and retries. With ``forget_retry`` the
      retry's ``txnNumber`` is removed, so the database cannot recognise it as
      a retry: what happens when its retry record is lost (a crash, a failover).
    - :meth:`hold`: the next matching write waits in the proxy until
      :meth:`release` (to make a request stay in flight).

    A write matches by command name (``insert``, ``findAndModify``, ``delete``,
    ``update``) and collection.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._lose: tuple[str, str] | None = None
        self._forget: tuple[str, str] | None = None
        self._hold: tuple[str, str] | None = None
        self._released = asyncio.Event()
        #: Set once a reply was lost / a write is being held.
        self.lost = asyncio.Event()
        self.held = asyncio.Event()
        #: Retries forwarded without their ``txnNumber``.
        self.forgotten = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    async def start(self) -> WireProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def lose_reply(self, command: str, collection: str, *, forget_retry: bool = True) -> None:
        self.lost.clear()
        self._lose = (command, collection)
        self._forget = (command, collection) if forget_retry else None

    def hold(self, command: str, collection: str) -> None:
        self.held.clear()
        self._released.clear()
        self._hold = (command, collection)

    def release(self) -> None:
        self._released.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._released.set()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        drop = asyncio.Event()
        self._spawn(self._upstream(reader, up_writer, writer, drop))
        self._spawn(self._downstream(up_reader, writer, up_writer, drop))

    @staticmethod
    async def _message(reader: asyncio.StreamReader) -> bytes | None:
        try:
            head = await reader.readexactly(4)
            return head + await reader.readexactly(int.from_bytes(head, "little") - 4)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def _upstream(self, reader: asyncio.StreamReader, up: asyncio.StreamWriter,
                        client: asyncio.StreamWriter, drop: asyncio.Event) -> None:
        try:
            while (message := await self._message(reader)) is not None:
                parsed = _command_of(message)
                target = None if parsed is None else (parsed[0], parsed[1])
                if target is not None and target == self._hold:
                    self._hold = None
                    self.held.set()
                    await self._released.wait()
                if target is not None and target == self._lose:
                    self._lose = None
                    drop.set()
                elif target is not None and target == self._forget:
                    self._forget = None
                    self.forgotten += 1
                    message = _without_txn_number(message)
                up.write(message)
                await up.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            up.close()
            client.close()

    async def _downstream(self, up: asyncio.StreamReader, client: asyncio.StreamWriter,
                          up_writer: asyncio.StreamWriter, drop: asyncio.Event) -> None:
        try:
            while (message := await self._message(up)) is not None:
                if drop.is_set():
                    self.lost.set()  # applied by the database; the client never hears
                    break
                client.write(message)
                await client.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            client.close()
            up_writer.close()


@asynccontextmanager
async def wire_proxy(uri_host: str, port: int) -> AsyncIterator[WireProxy]:
    """A started :class:`WireProxy` to ``uri_host:port`` for the block."""
    proxy = await WireProxy(uri_host, port).start()
    try:
        yield proxy
    finally:
        await proxy.close()


# ------------------------------------------------------------------ HTTP faults


#: A 503 problem+json reply, as :func:`flaky_server` sends it.
UNAVAILABLE = (503, b'{"title":"Service Unavailable","status":503,"detail":"database down"}')


@contextlib.contextmanager
def flaky_server(replies: list[tuple[int, bytes]]) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """An HTTP server answering ``replies`` in turn; yields its URL and (method, key) seen."""
    seen: list[tuple[str, str]] = []

    class Flaky(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            seen.append((self.command, self.headers.get("Idempotency-Key", "")))
            status, body = replies[min(len(seen), len(replies)) - 1]
            self.send_response(status)
            content_type = "application/problem+json" if status >= 400 else "application/json"
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        def log_message(self, *args: Any) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Flaky) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
        finally:
            httpd.shutdown()
            thread.join(10)



class ReplyDropper:
    """A TCP proxy in front of an HTTP server that loses the next ``drop`` replies.

    A request is forwarded and handled; the first bytes of its reply are
    dropped and the client's connection is reset instead, so the client sees
    a network error after the server did the work (a reply lost on the way).
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Replies still to drop, and replies dropped so far.
        self.drop = 0
        self.dropped = 0

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> ReplyDropper:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._relay(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)

        async def requests() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()

        async def replies() -> None:
            while data := await up_reader.read(65536):
                if self.drop > 0:
                    self.drop -= 1
                    self.dropped += 1
                    writer.transport.abort()
                    return
                writer.write(data)
                await writer.drain()

        try:
            pumps = [asyncio.ensure_future(requests()), asyncio.ensure_future(replies())]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            up_writer.close()
            writer.close()


# ------------------------------------------------------------------ WebSocket clients


class WSClient:
    """A real WebSocket client speaking protocol v1, with timeouts everywhere."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] = {}
        self.marker_ready = False

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        if isinstance(message, dict):
            await self.ws.send(orjson.dumps(message).decode())
        else:
            await self.ws.send(message)

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        value: dict[str, Any] = orjson.loads(raw)
        return value

    async def expect(self, type_: str, timeout: float = 10.0) -> dict[str, Any]:
        message = await self.recv(timeout)
        assert message["type"] == type_, message
        return message

    async def subscribe(self, sub: str, collection: str, **fields: Any) -> dict[str, Any]:
        await self.send({"op": "subscribe", "sub": sub, "collection": collection, **fields})
        return await self.expect("subscribed")

    async def changes(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The next ``n`` messages, each asserted to be a change."""
        out = []
        for _ in range(n):
            out.append(await self.expect("change", timeout))
        return out

    async def drain_until_marker(self, http: httpx.AsyncClient,
                                 timeout: float = 10.0) -> list[dict[str, Any]]:
        """Everything the server sends before a marker write is seen.

        Proves the absence of messages without sleeping: the client has a
        subscription ``__marker__`` on the ``markers`` collection; one change stream
        delivers in commit order, so every change committed before the marker
        arrives before the marker's own change.
        """
        before = []
        if not self.marker_ready:
            await self.send({"op": "subscribe", "sub": "__marker__", "collection": "markers"})
            while True:
                message = await self.recv(timeout)
                if message.get("type") == "subscribed" and message["sub"] == "__marker__":
                    break
                before.append(message)
            self.marker_ready = True
        r = await http.post("/api/collections/markers/documents", json={"m": 1})
        assert r.status_code == 201, r.text
        key = r.json()["_id"]
        while True:
            message = await self.recv(timeout)
            if message.get("sub") == "__marker__":
                if message.get("key") == key:
                    return before
                continue
            before.append(message)


@asynccontextmanager
async def ws_client(url: str, **kwargs: Any) -> AsyncIterator[WSClient]:
    kwargs.setdefault("ping_interval", None)  # the server sends the heartbeats
    async with connect(url, max_size=None, open_timeout=10, **kwargs) as ws:
        client = WSClient(ws)
        client.welcome = await client.expect("welcome")
        yield client


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float,
                     what: str = "condition") -> None:
    """Wait for a state no event announces (the tests' one polling loop).

    ``predicate`` is checked every 20 ms; after ``timeout`` seconds, a predicate
    that hangs included, TimeoutError names ``what``.
    """
    try:
        async with asyncio.timeout(timeout):
            while not await predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise TimeoutError(f"{what} not reached in {timeout} s") from None


class Readiness:
    """A ``NOTIFY_SOCKET`` on which a server started with it says ``READY=1``.

    ``realtime serve`` sends it once it listens with the change stream open
    (systemd's readiness protocol): waiting for that datagram, or for the
    process to exit, is waiting for the event itself.
    """

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="realtime-notify-")
        self.path = os.path.join(self._dir, "notify")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)

    def wait(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """Block until ``READY=1`` arrives.

        Raises:
            RuntimeError: ``proc`` exited first.
            TimeoutError: neither within ``timeout`` seconds.
        """
        exited = os.pidfd_open(proc.pid)
        try:
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                readable = select.select([self._sock, exited], [], [], max(0.0, left))[0]
                if self._sock in readable and self._sock.recv(256) == b"READY=1":
                    return
                if exited in readable:
                    raise RuntimeError(f"server exited with {proc.wait()}")
                if not readable:
                    raise TimeoutError(f"server not ready within {timeout} s")
        finally:
            os.close(exited)

    def close(self) -> None:
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


class ServerProcess(OnLoopback):
    """``python -m realtime serve`` as a real subprocess."""

    def __init__(self, env: dict[str, str], port: int | None = None,
                 cwd: Path | None = None, args: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.env = {**os.environ, **env, "REALTIME_PORT": str(self.port)}
        self.cwd = cwd
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self._readiness: Readiness | None = None

    def spawn(self) -> None:
        self._close_readiness()
        self._readiness = Readiness()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "realtime", "serve", "--log-level", "warning", *self.args],
            env={**self.env, "NOTIFY_SOCKET": self._readiness.path}, cwd=self.cwd,
            stdin=subprocess.DEVNULL,
        )

    def ready(self, timeout: float = 30.0) -> None:
        """Block until the spawned server says it is ready (or raise if it exits)."""
        assert self.proc is not None
        assert self._readiness is not None
        try:
            self._readiness.wait(self.proc, timeout)
        finally:
            self._close_readiness()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        await asyncio.to_thread(self.ready, timeout)

    def _close_readiness(self) -> None:
        if self._readiness is not None:
            self._readiness.close()
            self._readiness = None

    async def start(self, timeout: float = 30.0) -> ServerProcess:
        self.spawn()
        await self.wait_ready(timeout)
        return self

    def terminate(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        self._close_readiness()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self._close_readiness()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@asynccontextmanager
async def server_process(env: dict[str, str], **kwargs: Any) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(env, **kwargs)
    try:
        await server.start()
        yield server
    finally:
        server.kill()


class RawClient:
    """A WebSocket client on a raw socket with a tiny receive buffer.

    It reads only when told to, so it models a peer that stopped reading: the
    kernel buffers fill and the server's transport pauses. Framing uses the
    ``websockets`` sans-I/O protocol.
    """

    def __init__(self, host: str, port: int) -> None:
        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        self.addr = (host, port)
        self.protocol = ClientProtocol(parse_uri(f"ws://{host}:{port}/ws"), max_size=None)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        self.sock.setblocking(False)

    async def _pump(self) -> bool:
        data = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        self.protocol.receive_data(data)
        return bool(data)

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_connect(self.sock, self.addr)
        request = self.protocol.connect()
        self.protocol.send_request(request)
        for chunk in self.protocol.data_to_send():
            await loop.sock_sendall(self.sock, chunk)
        from websockets.protocol import State

        async with asyncio.timeout(10):
            while self.protocol.state is State.CONNECTING:
                await self._pump()
        self.protocol.events_received()
        if self.protocol.handshake_exc is not None:
            raise self.protocol.handshake_exc

    async def send_text(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        for chunk in self.protocol.data_to_send():
            await asyncio.get_running_loop().sock_sendall(self.sock, chunk)

    async def read_until_closed(self, timeout: float = 30.0) -> tuple[int | None, int]:
        """Read everything; return the close code received and the text frames seen."""
        from websockets.frames import Opcode

        frames = 0
        async with asyncio.timeout(timeout):
            while True:
                alive = await self._pump()
                for event in self.protocol.events_received():
                    if getattr(event, "opcode", None) is Opcode.TEXT:
                        frames += 1
                if self.protocol.close_rcvd is not None:
                    return self.protocol.close_rcvd.code, frames
                if not alive:
                    return None, frames

    def close(self) -> None:
        self.sock.close()


async def notified(condition: asyncio.Condition, predicate: Callable[[], bool], timeout: float,
                   what: str = "condition") -> None:
    """Wait until ``predicate`` holds, rechecked whenever ``condition`` is notified."""
    try:
        async with asyncio.timeout(timeout), condition:
            await condition.wait_for(predicate)
    except TimeoutError:
        raise TimeoutError(f"{what} not reached in {timeout} s") from None


async def until(predicate: Callable[[], bool], timeout: float, what: str = "condition") -> None:
    """Wait until a condition on in-process state holds (polled; no fixed sleeps)."""
    async def check() -> bool:
        return predicate()
    await wait_until(check, timeout, what)


def change_event(t: int, op: str, key: str = "a", doc: Mapping[str, Any] | None = None,
                 before: Mapping[str, Any] | None = None,
                 changed: Iterable[str] | None = None, coll: str = "c") -> Event:
    """A normalised change event committed at cluster time ``(100, t)``, for sans-I/O tests.

    An update's description sets ``changed`` (every field of ``doc`` unless given)
    and removes what ``before`` has and ``doc`` has not.
    """
    raw: dict[str, Any] = {"_id": {"_data": f"{t:032x}"}, "operationType": op,
                           "ns": {"db": "b", "coll": coll}, "documentKey": {"_id": key},
                           "clusterTime": Timestamp(100, t)}
    if doc is not None:
        raw["fullDocument"] = {"_id": key, **doc}
    if before is not None:
        raw["fullDocumentBeforeChange"] = {"_id": key, **before}
    if op == "update":
        fields = list(doc or {}) if changed is None else list(changed)
        raw["updateDescription"] = {
            "updatedFields": {f: (doc or {}).get(f) for f in fields},
            "removedFields": [f for f in before or {} if f not in (doc or {})],
        }
    ev = normalise(raw)
    assert ev is not None
    return ev

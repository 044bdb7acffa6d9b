"""Running the app under uvicorn, with a small hook into its WebSocket protocol.

:class:`RealtimeWebSocketProtocol` subclasses uvicorn's sans-I/O WebSocket
protocol to (1) expose the connection's writability through the ASGI scope
extension ``realtime.writable``: a dict with ``event`` (an :class:`asyncio.Event`
set while the transport accepts writes), ``send_now`` (write one text frame
synchronously: a :class:`FrameWriter`, which can also write frames the hub
encoded once for many connections) and ``close_now`` (send a close frame at
once, even to a peer that stopped reading), so the hub can send inline to
writable connections and queue only for paused ones; (2) close connections with
1001 (going away) rather than 1012 when the server shuts down.

The server runs on uvloop with the httptools HTTP parser (both come with
``uvicorn[standard]``; uvicorn falls back to asyncio and h11 without them).
Text frames are framed here, not by ``websockets``, when the connection
negotiated no extension (the header is two to ten bytes, see
:func:`realtime.protocol.text_frame`): measured in ``bench/``, that is most of
the per-message CPU the server spends outside the ``send`` system call.

An idle connection's memory is mostly what this protocol keeps (DESIGN.md §8:
10,000 idle subscribers at 25 KB each at most): the protocol's attributes live
in slots, the handshake request is let go once answered (:func:`_forget_request`),
and the receive queue and writability flag are lighter than asyncio's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Mapping
from types import FrameType, GeneratorType
from typing import Any

import uvicorn
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from realtime.config import Settings
from realtime.protocol import text_frame

__all__ = ["WRITABLE_EXTENSION", "Flag", "FrameWriter", "Inbox", "RealtimeServer",
           "RealtimeWebSocketProtocol", "make_server", "notify_ready", "wait_started"]

log = logging.getLogger("realtime.server")

WRITABLE_EXTENSION = "realtime.writable"


class Flag:
    """An :class:`asyncio.Event` without a deque of waiters per instance.

    The connection's writability: set while the transport accepts writes. Ten
    thousand idle connections each hold one; ``asyncio.Event`` allocates a
    ``deque`` (~600 bytes) up front, this only when something waits.
    """

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[bool]] | None = None

    def is_set(self) -> bool:
        """True while set."""
        return self._set

    def set(self) -> None:
        """Set, and wake every waiter."""
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(True)

    def clear(self) -> None:
        """Clear."""
        self._set = False

    async def wait(self) -> bool:
        """Return True once set (at once if it is)."""
        if self._set:
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            return await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class Inbox:
    """uvicorn's receive queue (``put_nowait``/``get``/``empty``), lighter.

    The events a connection's app has not read yet; ``asyncio.Queue`` costs
    three deques (~2 KB) per connection, this a list and waiters made on demand.
    """

    __slots__ = ("_items", "_waiters")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiters: list[asyncio.Future[None]] | None = None

    def put_nowait(self, item: Any) -> None:
        """Append ``item`` and wake one waiter."""
        self._items.append(item)
        waiters = self._waiters
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                break

    def empty(self) -> bool:
        """True if no event waits."""
        return not self._items

    def qsize(self) -> int:
        """How many events wait."""
        return len(self._items)

    async def get(self) -> Any:
        """The oldest event, once there is one."""
        while not self._items:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if self._waiters is not None and waiter in self._waiters:
                    self._waiters.remove(waiter)
                if waiter.done() and not waiter.cancelled() and self._items:
                    self.put_nowait(self._items.pop(0))  # pass the wake-up on
                    raise
                raise
        return self._items.pop(0)


class FrameWriter:
    """The ``send_now`` of the ``realtime.writable`` extension, for one connection.

    Calling it writes one text frame now. :meth:`frames_ok` tells whether the
    connection negotiated no extension (no ``permessage-deflate``), in which
    case a frame is the same bytes for every connection, and :meth:`write`
    writes such ready-made frames (one or several, concatenated) in one go.
    """

    __slots__ = ("_protocol",)

    def __init__(self, protocol: RealtimeWebSocketProtocol) -> None:
        self._protocol = protocol

    def __call__(self, text: str) -> None:
        """Write one text frame now (the caller checked writability).

        Raises:
            ClientDisconnected: the connection is closed or closing.
        """
        self._protocol.send_now(text)

    def frames_ok(self) -> bool:
        """True if frames from :func:`realtime.protocol.text_frame` may be written as-is."""
        return not self._protocol.conn.extensions

    def write(self, data: bytes) -> None:
        """Write ready-made frames (only if :meth:`frames_ok`).

        Raises:
            ClientDisconnected: the connection is closed or closing.
        """
        self._protocol.write_frames(data)


def _forget_request(conn: ServerProtocol) -> None:
    """Let the handshake request go once it is parsed (it was kept alive for good).

    ``websockets`` parses the request and then the frames in one generator,
    whose frame holds the request (its headers: 2 to 3 KB) for the life of
    the connection. When that generator waits at a frame boundary, it is
    swapped for the frame parser alone, which reads the same buffer. (It always
    does under uvicorn, which hands the protocol the request alone; a parser
    inside a frame is kept as it is.)
    """
    parser = conn.parser
    inner: Any = parser
    while isinstance(inner, GeneratorType) and inner.gi_yieldfrom is not None:
        inner = inner.gi_yieldfrom
    if getattr(inner, "gi_code", None) is not _AT_EOF:
        return  # inside a frame (a client that did not wait): keep it
    fresh = Protocol.parse(conn)
    next(fresh)  # waits at the same boundary
    conn.parser = fresh
    parser.close()


_AT_EOF = StreamReader.at_eof.__code__


class RealtimeWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol with a writability hook and 1001 on shutdown.

    The attributes live in slots rather than in the instance dict (uvicorn sets
    over 30, which makes the dict a 1.6 KB table per connection); an attribute
    a later uvicorn adds still works, in the dict.
    """

    __slots__ = (
        "app", "app_state", "asgi_version", "client", "close_sent", "close_timeout",
        "close_timer", "config", "conn", "connections", "curr_msg_data_type",
        "default_headers", "disconnected", "frames", "handshake_complete",
        "handshake_initiated", "initial_response", "last_ping_rtt", "logger", "loop",
        "pending_ping_payload", "ping_interval", "ping_sent_at", "ping_timeout",
        "ping_timer", "pong_timer", "queue", "read_paused", "request", "response",
        "root_path", "scheme", "scope", "server", "tasks", "transport", "writable",
    )

    #: Seconds a closed connection may take to acknowledge before it is dropped.
    abort_after = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Lighter than asyncio's (an idle connection's memory is mostly such objects).
        self.queue = Inbox()  # type: ignore[assignment]
        writable = Flag()
        writable.set()
        self.writable = writable  # type: ignore[assignment]

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            self.request = None  # type: ignore[assignment]  # (the response answers it)
            _forget_request(self.conn)
            scope["extensions"][WRITABLE_EXTENSION] = {
                "event": self.writable,
                "send_now": FrameWriter(self),
                "close_now": self.close_now,
            }

    async def send(self, message: Any) -> None:
        await super().send(message)
        if self.handshake_complete and getattr(self, "response", None) is not None:
            # The handshake is done: its request and response are garbage now.
            self.request = self.response = None  # type: ignore[assignment]

    def send_now(self, text: str) -> None:
        """Write one text frame now (the caller checked writability).

        Raises:
            ClientDisconnected: the connection is closed or closing.
        """
        conn = self.conn
        if conn.extensions:  # e.g. permessage-deflate: websockets frames it
            self._check_open()
            conn.send_text(text.encode())
            self.transport.write(b"".join(conn.data_to_send()))
        else:
            self.write_frames(text_frame(text.encode()))

    def write_frames(self, data: bytes) -> None:
        """Write ready-made frames now.

        Raises:
            ClientDisconnected: the connection is closed or closing.
        """
        self._check_open()
        self.transport.write(data)

    def _check_open(self) -> None:
        if self.close_sent or self.disconnected or self.conn.state is not State.OPEN:
            raise ClientDisconnected()

    def close_now(self, code: int, reason: str = "") -> None:
        """Send a close frame now; drop the TCP connection if the peer does not answer."""
        if self.close_sent or self.disconnected or self.transport.is_closing():
            return
        self.stop_keepalive()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.abort_after, self.transport.abort)

    def shutdown(self) -> None:
        if self.handshake_complete and not self.close_sent and not self.transport.is_closing():
            self.stop_keepalive()
            self.queue.put_nowait({"type": "websocket.disconnect", "code": 1001})
            self.conn.send_close(1001, "server shutdown")
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            self.transport.close()
            return
        super().shutdown()


def notify_ready(environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``READY=1`` to ``$NOTIFY_SOCKET`` (systemd's readiness protocol), if set.

    Returns whether it was sent; a socket that cannot be reached is logged, not
    fatal (the server serves either way).
    """
    path = environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # @: abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(b"READY=1", address)
        except OSError as exc:
            log.warning("cannot notify readiness to NOTIFY_SOCKET %s: %s", path, exc)
            return False
    return True


class RealtimeServer(uvicorn.Server):
    """uvicorn's server: announces when it listens, exits 0 after a graceful stop.

    Once it listens, the app's lifespan has opened the change stream (``/readyz``
    answers 200): :attr:`listening` is set and, under a supervisor that sets
    ``NOTIFY_SOCKET`` (systemd ``Type=notify``), ``READY=1`` is sent. uvicorn
    re-raises the captured signal after shutting down, so without
    :meth:`handle_exit` the process would report death by signal although it
    stopped cleanly.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        #: Set once the server listens.
        self.listening = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.listening.set()
            notify_ready()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig in (signal.SIGTERM, signal.SIGINT) and self._captured_signals[-1:] == [sig]:
            self._captured_signals.pop()


def make_server(app: Any, settings: Settings, *, log_config: Any = None) -> RealtimeServer:
    """A uvicorn server for ``app`` configured from ``settings``."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # loop and http stay "auto": uvloop and httptools when installed (they are).
        ws=RealtimeWebSocketProtocol,
        ws_max_size=settings.max_frame_bytes,
        ws_ping_interval=settings.heartbeat_seconds,
        ws_ping_timeout=settings.heartbeat_seconds,
        lifespan="on",
        timeout_graceful_shutdown=3,
        log_config=log_config,
        access_log=False,
    )
    return RealtimeServer(config)


async def wait_started(server: RealtimeServer, task: asyncio.Task[None], timeout: float) -> int:
    """Wait until ``server`` listens; return its port (useful with port 0).

    Raises:
        RuntimeError: the server task ended during start-up.
        TimeoutError: it did not listen within ``timeout`` seconds.
    """
    listening = asyncio.ensure_future(server.listening.wait())
    try:
        await asyncio.wait({listening, task}, timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        listening.cancel()
    if not server.listening.is_set():
        if task.done():
            task.result()
            raise RuntimeError("server stopped during start-up")
        raise TimeoutError(f"the server did not listen within {timeout} s")
    sockets = [s for srv in server.servers for s in (srv.sockets or ())]
    port: int = sockets[0].getsockname()[1]
    return port

"""Running the app under uvicorn, with a small hook into its WebSocket protocol.

The hook (built by :func:`realtime._compat.websocket_protocol`, where every use
of uvicorn's and websockets' internals lives) subclasses uvicorn's sans-I/O
WebSocket protocol to (1) expose the connection's writability through the ASGI
scope extension ``realtime.writable``: a dict with ``event`` (a :class:`Flag`
set while the transport accepts writes), ``send_now`` (write one text frame
synchronously: a :class:`FrameWriter`, which can also write frames the hub
encoded once for many connections) and ``close_now`` (send a close frame at
once, even to a peer that stopped reading), so the hub can send inline to
writable connections and queue only for paused ones; (2) close connections with
1001 (going away) rather than 1012 when the server shuts down. If uvicorn's
protocol is not what the hook was written for, :func:`make_server` logs one
warning and serves with uvicorn's stock protocol: no extension, and
:mod:`realtime.api.ws` sends with ``send_text`` and closes in a task.

The server runs on uvloop with the httptools HTTP parser (both come with
``uvicorn[standard]``; uvicorn falls back to asyncio and h11 without them).
Text frames are framed here, not by ``websockets``, when the connection
negotiated no extension (the header is two to ten bytes, see
:func:`realtime.protocol.text_frame`): measured in ``bench/``, that is most of
the per-message CPU the server spends outside the ``send`` system call.

An idle connection's memory is mostly what this protocol keeps (docs/performance.md:
10,000 idle subscribers at 25 KB each at most): the protocol's attributes live
in slots, the handshake request is let go once answered
(:func:`realtime._compat.forget_request`), and the receive queue
(:class:`Inbox`) and writability flag (:class:`Flag`) are lighter than asyncio's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any, Protocol

import uvicorn

from realtime import _compat
from realtime.config import Settings
from realtime.protocol import text_frame
from realtime.timers import timers_of

__all__ = ["HOOK", "WRITABLE_EXTENSION", "Flag", "FrameWriter", "Inbox", "RealtimeServer",
           "make_server", "notify_ready", "wait_started", "websocket_protocol"]

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
        self._wake_one()

    def _wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                break

    def empty(self) -> bool:
        """True if no event waits."""
        return not self._items

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
                    self._wake_one()  # pass the wake-up on (the events keep their order)
                raise
        return self._items.pop(0)


class HookedProtocol(Protocol):
    """What the hooked uvicorn protocol offers the :class:`FrameWriter` and the extension."""

    writable: Flag

    def send_now(self, text: str) -> None:
        """Write one text frame now."""

    def write_frames(self, data: bytes) -> None:
        """Write ready-made frames now."""

    def frames_ok(self) -> bool:
        """True if the connection negotiated no extension."""

    def close_now(self, code: int, reason: str = "") -> None:
        """Send a close frame now."""


class FrameWriter:
    """The ``send_now`` of the ``realtime.writable`` extension, for one connection.

    Calling it writes one text frame now. :meth:`frames_ok` tells whether the
    connection negotiated no extension (no ``permessage-deflate``), in which
    case a frame is the same bytes for every connection, and :meth:`write`
    writes such ready-made frames (one or several, concatenated) in one go.
    """

    __slots__ = ("_protocol",)

    def __init__(self, protocol: HookedProtocol) -> None:
        self._protocol = protocol

    def __call__(self, text: str) -> None:
        """Write one text frame now (the caller checked writability).

        Raises:
            ClientDisconnected: (uvicorn's) the connection is closed or closing.
        """
        self._protocol.send_now(text)

    def frames_ok(self) -> bool:
        """True if frames from :func:`realtime.protocol.text_frame` may be written as-is."""
        return self._protocol.frames_ok()

    def write(self, data: bytes) -> None:
        """Write ready-made frames (only if :meth:`frames_ok`).

        Raises:
            ClientDisconnected: (uvicorn's) the connection is closed or closing.
        """
        self._protocol.write_frames(data)


def _exposed(protocol: HookedProtocol) -> dict[str, Any]:
    """The value of the ``realtime.writable`` scope extension for ``protocol``."""
    return {"event": protocol.writable, "send_now": FrameWriter(protocol),
            "close_now": protocol.close_now}


#: The hook installed into uvicorn's WebSocket protocol.
HOOK = _compat.ProtocolHook(WRITABLE_EXTENSION, inbox=Inbox, flag=Flag, exposed=_exposed,
                            frame=text_frame, timers=timers_of)


def websocket_protocol(
    load: Callable[[], type[Any]] = _compat.load_sansio_protocol,
) -> type[asyncio.Protocol] | None:
    """uvicorn's WebSocket protocol with :data:`HOOK`, or None if it cannot be installed.

    None comes after one warning (see :func:`realtime._compat.websocket_protocol`);
    ``load`` returns the uvicorn class to subclass (tests inject one that fails).
    """
    return _compat.websocket_protocol(HOOK, load)


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
        if sig in (signal.SIGTERM, signal.SIGINT):
            _compat.forget_captured_signal(self, sig)


def make_server(
    app: Any,
    settings: Settings,
    *,
    log_config: Any = None,
    load_ws_protocol: Callable[[], type[Any]] = _compat.load_sansio_protocol,
) -> RealtimeServer:
    """A uvicorn server for ``app`` configured from ``settings``.

    Its WebSocket protocol is uvicorn's with the writability hook, or, if the hook
    cannot be installed (one warning), uvicorn's stock protocol. ``load_ws_protocol``
    returns the uvicorn class the hook subclasses (tests inject one that fails). An
    app with ``trust_forwarded(hosts)`` (:class:`realtime.app.RealtimeApp`) is given
    uvicorn's trusted proxies (``FORWARDED_ALLOW_IPS``) instead of being wrapped in
    uvicorn's proxy-headers middleware, and one with ``dispatch`` (the same) is
    served through it, an ASGI 3 callable that returns what to await.

    Raises:
        ImportError: uvicorn moved its proxy-headers middleware.
    """
    # An app with a frameless ``dispatch`` (RealtimeApp) is served through it.
    dispatch = getattr(app, "dispatch", None)
    config = uvicorn.Config(
        dispatch if callable(dispatch) else app,
        interface="asgi3",
        host=settings.host,
        port=settings.port,
        # loop and http stay "auto": uvloop and httptools when installed (they are).
        ws=websocket_protocol(load_ws_protocol) or "auto",
        ws_max_size=settings.max_frame_bytes,
        ws_ping_interval=settings.heartbeat_seconds,
        ws_ping_timeout=settings.heartbeat_seconds,
        lifespan="on",
        timeout_graceful_shutdown=3,
        log_config=log_config,
        access_log=False,
    )
    trust_forwarded = getattr(app, "trust_forwarded", None)
    if callable(trust_forwarded):
        # The app applies uvicorn's proxy-header rules itself (no frame per WebSocket).
        trust_forwarded(config.forwarded_allow_ips)
        config.proxy_headers = False
    return RealtimeServer(config)


async def wait_started(server: RealtimeServer, task: asyncio.Task[None], timeout: float) -> int:
    """Wait until ``server`` listens; return its port (useful with port 0).

    Raises:
        RuntimeError: the server task ended during start-up, or uvicorn did not
            say on which socket it listens (see :func:`realtime._compat.listening_sockets`).
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
    sockets = _compat.listening_sockets(server)
    if not sockets:
        raise RuntimeError("the server listens, but on no socket realtime can see")
    port: int = sockets[0].getsockname()[1]
    return port

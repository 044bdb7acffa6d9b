"""Running the app under uvicorn, with a small hook into its WebSocket protocol.

:class:`RealtimeWebSocketProtocol` subclasses uvicorn's sans-I/O WebSocket
protocol to (1) expose the connection's writability through the ASGI scope
extension ``realtime.writable``: a dict with ``event`` (an :class:`asyncio.Event`
set while the transport accepts writes), ``send_now`` (write one text frame
synchronously) and ``close_now`` (send a close frame at once, even to a peer that
stopped reading), so the hub can send inline to writable connections and queue
only for paused ones; (2) close connections with 1001 (going away) rather than
1012 when the server shuts down.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from realtime.config import Settings

__all__ = ["WRITABLE_EXTENSION", "RealtimeServer", "RealtimeWebSocketProtocol", "make_server",
           "wait_started"]

log = logging.getLogger("realtime.server")

WRITABLE_EXTENSION = "realtime.writable"


class RealtimeWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol with a writability hook and 1001 on shutdown."""

    #: Seconds a closed connection may take to acknowledge before it is dropped.
    abort_after = 5.0

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][WRITABLE_EXTENSION] = {
                "event": self.writable,
                "send_now": self.send_now,
                "close_now": self.close_now,
            }

    def send_now(self, text: str) -> None:
        """Write one text frame now (the caller checked writability).

        Raises:
            ClientDisconnected: the connection is closed or closing.
        """
        if self.close_sent or self.disconnected:
            raise ClientDisconnected()
        self.conn.send_text(text.encode())
        self.transport.write(b"".join(self.conn.data_to_send()))

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


class RealtimeServer(uvicorn.Server):
    """uvicorn's server, exiting with status 0 after a graceful SIGTERM/SIGINT stop.

    (uvicorn re-raises the captured signal after shutting down, so the process
    would report death by signal although it stopped cleanly.)
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig in (signal.SIGTERM, signal.SIGINT) and self._captured_signals[-1:] == [sig]:
            self._captured_signals.pop()


def make_server(app: Any, settings: Settings, *, log_config: Any = None) -> uvicorn.Server:
    """A uvicorn server for ``app`` configured from ``settings``."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
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


async def wait_started(server: uvicorn.Server, task: asyncio.Task[None], timeout: float) -> int:
    """Wait until ``server`` listens; return its port (useful with port 0).

    Raises:
        RuntimeError: the server task ended or did not start in time.
    """
    async with asyncio.timeout(timeout):
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped during start-up")
            await asyncio.sleep(0.01)
    sockets = [s for srv in server.servers for s in (srv.sockets or ())]
    port: int = sockets[0].getsockname()[1]
    return port

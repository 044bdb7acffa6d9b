"""``/ws``: the WebSocket endpoint (protocol v1, docs/protocol.md).

Ties the sans-I/O protocol to the hub: parses client messages, registers
subscriptions (live, snapshot-then-live, or resume with ``since``) and answers
pings: it parses and calls the hub, which starts each subscription
(:meth:`realtime.hub.Hub.start`). Outgoing messages all go through the
connection's ordered outbox (:class:`realtime.outbox.Outbox`).

Security comes first (docs/security.md): a browser ``Origin`` that is not
allowed is closed with 1008; a client address over its connection limit with
1013. With authentication on, the credentials come from the ``Authorization:
Bearer`` header, a ``bearer.<token>`` subprotocol, or the first message
``{"op":"auth","token":...}`` within ``auth_timeout_seconds`` (answered with
``authenticated``); anything else closes with 4401, before ``welcome``. When the
feed is not live, ``welcome`` is followed at once by a ``status`` message (the
hub sends every later change of the feed's state to every connection). Each
subscription needs the collection's read scope (else an ``error`` with code
``forbidden``); a tenant is ANDed into its filter and checked on every event
(the tenant is the subscription's owner). When the credentials expire the
socket is closed with 4401; an ``auth`` message with a fresh token of the same tenant
extends the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, WebSocket

from realtime import __version__, protocol
from realtime.aggregate import AggregateState
from realtime.api.deps import get_services
from realtime.auth import (
    ANONYMOUS,
    Principal,
    Unauthenticated,
    bearer_token,
    token_from_subprotocols,
)
from realtime.limits import origin_allowed
from realtime.outbox import Outbox
from realtime.server import WRITABLE_EXTENSION
from realtime.services import Services
from realtime.subscription import Subscription

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

__all__ = ["WS_PATH", "router", "serve_websocket", "websocket_endpoint"]

log = logging.getLogger("realtime.ws")

router = APIRouter()

#: The WebSocket endpoint's path (protocol v1).
WS_PATH = "/ws"

#: Longest close reason (RFC 6455 allows 123 bytes).
_MAX_REASON = 120


def _payload(message: Mapping[str, Any]) -> str | bytes:
    """The text (or bytes) of a ``websocket.receive`` message."""
    text: str | None = message.get("text")
    return text if text is not None else message.get("bytes") or b""


def _reason(text: str) -> str:
    data = text.encode()[:_MAX_REASON]
    return data.decode(errors="ignore")


class _LateCloser:
    """``close`` for a server without the ``realtime.writable`` extension: a task per close.

    (Under realtime's own server, closes are written at once and this is not made.)
    """

    __slots__ = ("tasks", "websocket")

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.tasks: set[asyncio.Task[None]] = set()

    def __call__(self, code: int, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(self.websocket.close(code, reason))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def wait(self) -> None:
        """Wait for the closes under way (their errors are the peer's)."""
        for task in list(self.tasks):
            with contextlib.suppress(Exception):
                await task


def _outbox(websocket: WebSocket, services: Services) -> tuple[Outbox, _LateCloser | None]:
    ext: dict[str, Any] | None = websocket.scope.get("extensions", {}).get(WRITABLE_EXTENSION)
    client = websocket.client
    name = f"{client.host}:{client.port}" if client else "?"
    hub = services.hub
    if ext is not None:
        return hub.outbox(send_async=websocket.send_text, close=ext["close_now"],
                          send_now=ext["send_now"], writable=ext["event"],
                          max_backlog=services.settings.send_backlog, name=name), None
    closer = _LateCloser(websocket)
    return hub.outbox(send_async=websocket.send_text, close=closer,
                      max_backlog=services.settings.send_backlog, name=name), closer


async def _subscribe(services: Services, conn: Outbox, msg: protocol.Subscribe,
                     principal: Principal) -> None:
    hub = services.hub
    settings = services.settings
    if not principal.can("read", msg.collection):
        services.limits.reject("forbidden")
        conn.send(protocol.render_error(
            protocol.ErrorCode.FORBIDDEN,
            f"the credentials do not allow reading {msg.collection!r}", msg.sub))
        return
    if hub.subscription(conn, msg.sub) is not None:
        conn.send(protocol.render_error(protocol.ErrorCode.DUPLICATE_SUB,
                                        f"subscription {msg.sub!r} exists", msg.sub))
        return
    if len(hub.subscriptions_on(conn)) >= settings.max_subscriptions:
        conn.send(protocol.render_error(
            protocol.ErrorCode.TOO_MANY_SUBS,
            f"at most {settings.max_subscriptions} subscriptions per connection", msg.sub))
        return
    if settings.collections is not None and msg.collection not in settings.collections:
        conn.send(protocol.render_error(protocol.ErrorCode.BAD_COLLECTION,
                                        f"collection {msg.collection!r} is not exposed",
                                        msg.sub))
        return
    tenant = principal.tenant
    projection = None if msg.fields is None else hub.projection(msg.fields)
    aggregate = (None if msg.aggregate is None
                 else AggregateState(msg.aggregate, settings.aggregate_max_groups))
    sub = (Subscription(conn, msg.sub, msg.collection, msg.filter, projection=projection,
                        aggregate=aggregate)
           if tenant is None
           else Subscription(conn, msg.sub, msg.collection, tenant.restrict(msg.filter),
                             owner=tenant, projection=projection, aggregate=aggregate))
    await hub.start(sub, services.history, since=msg.since, snapshot=msg.snapshot,
                    limit=msg.limit, since_time=msg.since_time)


async def _refuse(websocket: WebSocket, code: int, reason: str,
                  subprotocol: str | None = None) -> None:
    """Accept only to close at once with ``code`` (so a browser sees the code)."""
    with contextlib.suppress(Exception):
        await websocket.accept(subprotocol=subprotocol)
        await websocket.close(code, _reason(reason))


async def _first_message_auth(websocket: WebSocket, services: Services) -> Principal | None:
    """Wait for ``{"op":"auth","token":...}``; None if the socket was closed instead."""
    limits = services.limits
    try:
        async with asyncio.timeout(services.settings.auth_timeout_seconds):
            message = await websocket.receive()
    except TimeoutError:
        limits.reject("unauthenticated")
        await websocket.close(protocol.CloseCode.UNAUTHENTICATED, "authentication timeout")
        return None
    if message["type"] == "websocket.disconnect":
        return None
    try:
        parsed = protocol.parse_client_message(_payload(message))
    except protocol.ProtocolError:
        parsed = None
    if not isinstance(parsed, protocol.Auth):
        limits.reject("unauthenticated")
        await websocket.close(protocol.CloseCode.UNAUTHENTICATED,
                              'authenticate first: {"op":"auth","token":...}')
        return None
    try:
        principal = services.auth.authenticate(parsed.token)
    except Unauthenticated as exc:
        limits.reject("unauthenticated")
        await websocket.close(protocol.CloseCode.UNAUTHENTICATED, _reason(exc.detail))
        return None
    await websocket.send_text(protocol.render_authenticated())
    return principal


def _handshake_headers(scope: Scope) -> tuple[str | None, str | None, str | None]:
    """``Origin``, ``Host`` and ``Authorization`` of the handshake (the first of each).

    Read from the raw ASGI headers rather than through ``websocket.headers``,
    which would keep a parsed copy for the connection's life.
    """
    found: dict[bytes, str] = {}
    for name, value in scope.get("headers", ()):
        if name in _READ_HEADERS and name not in found:
            found[name] = value.decode("latin-1")
    return found.get(b"origin"), found.get(b"host"), found.get(b"authorization")


_READ_HEADERS = frozenset({b"origin", b"host", b"authorization"})


def serve_websocket(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
    """:func:`websocket_endpoint` as a bare ASGI app (see :class:`realtime.app.RealtimeApp`).

    A plain function returning the endpoint's coroutine: one frame less per connection.
    """
    return websocket_endpoint(WebSocket(scope, receive, send), receive)


@router.websocket(WS_PATH)
async def websocket_route(websocket: WebSocket) -> None:
    """Live subscriptions over WebSocket (protocol v1), when the app's shortcut is not taken."""
    await websocket_endpoint(websocket, websocket.receive)


async def websocket_endpoint(websocket: WebSocket, receive: Receive) -> None:
    """Live subscriptions over WebSocket (protocol v1).

    ``receive`` reads the connection's next message once it is accepted: the
    ASGI ``receive`` itself (:func:`serve_websocket`), or ``websocket.receive``.
    The idle connection awaits it: without Starlette's wrapper in between, it
    holds one coroutine less (the disconnect message ends the loop either way).
    """
    services = get_services(websocket)
    settings = services.settings
    limits = services.limits
    offered: list[str] = list(websocket.scope.get("subprotocols") or ())
    sub_token, subprotocol = token_from_subprotocols(offered)
    origin, host, authorization = _handshake_headers(websocket.scope)
    if not origin_allowed(origin, host, settings):
        limits.reject("origin")
        await _refuse(websocket, protocol.CloseCode.POLICY, "origin not allowed", subprotocol)
        return
    client = websocket.client
    with limits.connection(client.host if client else "?") as admitted:
        if not admitted:
            await _refuse(websocket, protocol.CloseCode.OVERLOADED,
                          "too many connections from this address", subprotocol)
            return
        principal: Principal | None = ANONYMOUS
        if services.auth.enabled:
            try:
                token = bearer_token(authorization) or sub_token
                principal = None if token is None else services.auth.authenticate(token)
            except Unauthenticated as exc:
                limits.reject("unauthenticated")
                await _refuse(websocket, protocol.CloseCode.UNAUTHENTICATED, exc.detail,
                              subprotocol)
                return
        await websocket.accept(subprotocol=subprotocol)
        if principal is None:
            principal = await _first_message_auth(websocket, services)
            if principal is None:
                return
        await _serve(websocket, receive, services, principal)


async def _serve(websocket: WebSocket, receive: Receive, services: Services,
                 principal: Principal) -> None:
    """The authenticated connection: welcome, then client messages until it closes.

    An idle connection waits here for its next message, so what this frame holds
    is held per connection: no closures, and each message is handled (and let
    go) by :func:`_on_message`.
    """
    # The handshake's headers are read: the connection need not keep them for its life.
    websocket.scope["headers"] = []
    hub = services.hub
    conn, closer = _outbox(websocket, services)
    hub.attach(conn)
    expiry = _schedule_expiry(None, services, conn, principal)
    conn.send(protocol.render_welcome(f"realtime/{__version__}",
                                      services.settings.heartbeat_seconds))
    if hub.feed_status != protocol.FEED_LIVE:  # connecting during an outage: say so
        conn.send(protocol.render_status(hub.feed_status))
    try:
        while not conn.closed:
            renewed = await _on_message(services, conn, principal, await receive())
            if renewed is None:
                break
            if renewed is not principal:
                principal = renewed
                expiry = _schedule_expiry(expiry, services, conn, principal)
    except Exception:
        log.exception("WebSocket %s failed", conn.name)
        conn.close(protocol.CloseCode.INTERNAL, "internal error")
    finally:
        if expiry is not None:
            expiry.cancel()
        await hub.detach(conn)
        if closer is not None:
            await closer.wait()


async def _on_message(services: Services, conn: Outbox, principal: Principal,
                      message: Mapping[str, Any]) -> Principal | None:
    """Handle one client message; the principal from now on, or None to stop."""
    if message["type"] == "websocket.disconnect":
        return None
    try:
        parsed = protocol.parse_client_message(_payload(message),
                                               max_limit=services.settings.snapshot_max)
    except protocol.ProtocolError as exc:
        conn.send(protocol.render_error(exc.code, exc.message, exc.sub))
        return principal
    if isinstance(parsed, protocol.Subscribe):
        await _subscribe(services, conn, parsed, principal)
    elif isinstance(parsed, protocol.Unsubscribe):
        existing = services.hub.subscription(conn, parsed.sub)
        if existing is None:
            conn.send(protocol.render_error(protocol.ErrorCode.UNKNOWN_SUB,
                                            f"no subscription {parsed.sub!r}", parsed.sub))
        else:
            services.hub.remove(existing)
    elif isinstance(parsed, protocol.Ping):
        conn.send(protocol.render_pong(parsed.ref))
    else:
        return _reauthenticate(services, conn, principal, parsed)
    return principal


def _expire(services: Services, conn: Outbox) -> None:
    services.limits.reject("unauthenticated")
    conn.close(protocol.CloseCode.UNAUTHENTICATED, "token expired")


def _schedule_expiry(previous: asyncio.TimerHandle | None, services: Services, conn: Outbox,
                     principal: Principal) -> asyncio.TimerHandle | None:
    """Cancel ``previous``; close ``conn`` with 4401 when ``principal``'s credentials expire."""
    if previous is not None:
        previous.cancel()
    if principal.expires is None:
        return None
    delay = max(0.0, principal.expires - time.time())
    return asyncio.get_running_loop().call_later(delay, _expire, services, conn)


def _reauthenticate(services: Services, conn: Outbox, principal: Principal,
                    msg: protocol.Auth) -> Principal | None:
    """An ``auth`` message on an open connection: fresh credentials, same tenant.

    Returns the new principal, or None after closing the connection (4401 for
    bad credentials, 4403 for another tenant). Subscriptions the new scopes no
    longer allow end with an ``error`` (``forbidden``).
    """
    if not services.auth.enabled:
        conn.send(protocol.render_authenticated())
        return principal
    try:
        renewed = services.auth.authenticate(msg.token)
    except Unauthenticated as exc:
        services.limits.reject("unauthenticated")
        conn.close(protocol.CloseCode.UNAUTHENTICATED, _reason(exc.detail))
        return None
    if renewed.tenant != principal.tenant:
        services.limits.reject("forbidden")
        conn.close(protocol.CloseCode.FORBIDDEN, "the new credentials are for another tenant")
        return None
    for subscription in services.hub.subscriptions_on(conn):
        if not renewed.can("read", subscription.collection):
            services.hub.remove(subscription)
            conn.send(protocol.render_error(
                protocol.ErrorCode.FORBIDDEN,
                f"the new credentials do not allow reading {subscription.collection!r}",
                subscription.sub))
    conn.send(protocol.render_authenticated())
    return renewed

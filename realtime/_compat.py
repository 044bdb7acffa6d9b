"""Every use of a dependency's private API, each guarded with a fallback.

``realtime`` reaches into uvicorn, websockets, FastAPI and Motor in a few places
no public API covers. Each such use lives here, says which upstream releases it
was checked against, has a test in ``tests/test_compat.py`` that fails with the
package and symbol named when the upstream layout changes, and has a fallback
that keeps the server up: if a hook cannot be installed (import error, missing
attribute, changed signature or behaviour), ONE warning is logged and the plain
path runs.

The uses, what each is for, and its fallback:

- uvicorn's ``WebSocketsSansIOProtocol`` (a private module), subclassed with its
  internals overridden, with ``uvicorn.protocols.utils.ClientDisconnected`` and
  websockets' ``Protocol.extensions``: the writability hook of
  :func:`websocket_protocol` (inline sends, 1001 on shutdown, ~13 KB less per
  idle connection). Fallback: uvicorn's stock protocol (``ws="auto"``): no
  ``realtime.writable`` scope extension, so :mod:`realtime.api.ws` sends with
  ``send_text`` and closes in a task; 1012 on shutdown.
- websockets' ``Protocol.parse``, ``ServerProtocol.parser`` and
  ``StreamReader.at_eof``: :func:`forget_request` lets the handshake request go.
  Fallback: it is kept (2 to 3 KB more per connection).
- uvicorn's ``Server._captured_signals``: :func:`forget_captured_signal`, exit
  status 0 after a graceful stop. Fallback: the process exits by the signal.
- uvicorn's ``Server.servers`` (undocumented): :func:`listening_sockets`, the
  port of a port-0 server. Fallback: none known (tests only).
- FastAPI's ``FastAPI._native_telemetry``: :func:`fastapi_telemetry_on`, so
  ``/ws`` skips the router only while FastAPI's telemetry is off. Fallback:
  telemetry assumed off.
- Motor's ``AsyncIOMotorChangeStream.__aenter__`` (public, but that it opens the
  cursor is not documented): :func:`open_motor_change_stream`, the cursor open
  at ``watch()``. Fallback: it opens at the first read.

pyproject.toml pins each dependency to the releases named here; ``make
test-lowest`` runs the server and WebSocket tests on the lowest of them.

This module imports nothing from :mod:`realtime` and no dependency at import
time: each upstream symbol is looked up when first needed.
"""

from __future__ import annotations

import asyncio
import dis
import inspect
import itertools
import logging
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from types import CodeType, FunctionType, GeneratorType
from typing import Any

__all__ = [
    "CompatError",
    "ProtocolHook",
    "fastapi_telemetry_on",
    "forget_captured_signal",
    "forget_request",
    "listening_sockets",
    "load_client_disconnected",
    "load_sansio_protocol",
    "open_motor_change_stream",
    "parser_problems",
    "sansio_protocol_problems",
    "server_problems",
    "telemetry_problems",
    "websocket_protocol",
]

log = logging.getLogger("realtime.compat")

#: Upstream releases each use was checked against (the pins in pyproject.toml).
CHECKED = {
    "uvicorn": "0.52.1 to 0.54.x",
    "websockets": "13.0 to 17.x",
    "fastapi": "0.115 to 0.165 (native telemetry since 0.142)",
    "motor": "3.7",
    "pymongo": "4.11 to 4.20",
}

#: Features that fell back to the plain path (each warned about once per process).
_degraded: set[str] = set()


class CompatError(Exception):
    """An upstream package no longer has what realtime uses; the message names it."""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def _where(package: str) -> str:
    return f"{package} {_version(package)} (realtime checked {CHECKED[package]})"


def _degrade(feature: str, exc: BaseException, fallback: str) -> None:
    """Log ONE warning per process that ``feature`` is off and ``fallback`` runs instead."""
    if feature in _degraded:
        return
    _degraded.add(feature)
    log.warning("%s unavailable, %s: %s", feature, fallback, exc)


# --- uvicorn: the WebSocket protocol hook ----------------------------------------------


def load_sansio_protocol() -> type[Any]:
    """uvicorn's sans-I/O WebSocket protocol class.

    A private module (uvicorn 0.35 on); checked with uvicorn 0.52.1 to 0.54.x.

    Raises:
        ImportError: uvicorn moved or removed it.
    """
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    return WebSocketsSansIOProtocol


def load_client_disconnected() -> type[Exception]:
    """uvicorn's ``ClientDisconnected``: what its ``send`` raises and ``run_asgi`` swallows.

    Private (``uvicorn.protocols.utils``); checked with uvicorn 0.52.1 to 0.54.x.

    Raises:
        ImportError: uvicorn moved or removed it.
    """
    from uvicorn.protocols.utils import ClientDisconnected

    return ClientDisconnected


@dataclass(frozen=True, slots=True)
class ProtocolHook:
    """What :func:`websocket_protocol` puts into uvicorn's protocol (see :mod:`realtime.server`).

    ``inbox`` and ``flag`` replace uvicorn's receive queue and writability
    ``asyncio.Event`` (lighter per connection); ``exposed(protocol)`` is the value
    of the ASGI scope extension ``extension``; ``frame(payload)`` frames one text
    message (unmasked, no extension) for :meth:`send_now`; ``timers(loop)`` is the
    loop's shared timer (``schedule(delay, callback)`` returning a handle with
    ``cancel()``), for the keepalive pings (None: one loop timer per connection,
    uvicorn's way).
    """

    extension: str
    inbox: type[Any]
    flag: type[Any]
    exposed: Callable[[Any], dict[str, Any]]
    frame: Callable[[bytes], bytes]
    timers: Callable[[Any], Any] | None = None


#: The attributes the hooked protocol keeps in slots (uvicorn 0.52.1 to 0.54 sets
#: these; one a later uvicorn adds still works, in the instance dict).
_SLOTS = (
    "app", "app_state", "asgi_version", "client", "close_sent", "close_timeout",
    "close_timer", "config", "conn", "connections", "curr_msg_data_type",
    "default_headers", "disconnected", "frames", "handshake_complete",
    "handshake_initiated", "initial_response", "last_ping_rtt", "logger", "loop",
    "pending_ping_payload", "ping_interval", "ping_sent_at", "ping_timeout",
    "ping_timer", "pong_timer", "queue", "read_paused", "request", "response",
    "root_path", "scheme", "scope", "server", "tasks", "transport", "writable",
)

#: Methods the hook overrides or calls, with their parameters.
_METHODS: dict[str, tuple[str, ...]] = {
    "handle_connect": ("self", "event"),
    "send": ("self", "message"),
    "receive": ("self",),
    "shutdown": ("self",),
    "stop_keepalive": ("self",),
    "pause_writing": ("self",),
    "resume_writing": ("self",),
    "connection_lost": ("self", "exc"),
    "schedule_ping": ("self",),
    "send_keepalive_ping": ("self",),
}

#: Attributes of uvicorn's protocol the hook reads or writes: uvicorn must set each.
_STATE = ("conn", "transport", "loop", "queue", "writable", "read_paused", "close_sent",
          "close_timer", "disconnected", "handshake_complete", "request", "response", "scope",
          "ping_interval", "ping_timer", "last_ping_rtt", "server")


def _functions(cls: type[Any]) -> Iterator[FunctionType]:
    """The plain functions defined by ``cls`` and its bases (not asyncio's)."""
    for klass in cls.__mro__:
        if klass.__module__.startswith("asyncio") or klass is object:
            continue
        for value in vars(klass).values():
            if isinstance(value, FunctionType):
                yield value


def _instructions(functions: Iterable[FunctionType]) -> Iterator[list[dis.Instruction]]:
    for function in functions:
        yield [i for i in dis.get_instructions(function) if i.opname != "CACHE"]


def _stored(cls: type[Any]) -> set[str]:
    """Attribute names the code of ``cls`` assigns (``self.x = ...``)."""
    return {i.argval for code in _instructions(_functions(cls)) for i in code
            if i.opname == "STORE_ATTR"}


def _used_on(functions: Iterable[FunctionType], attribute: str) -> set[str]:
    """Names looked up on ``<something>.attribute`` in ``functions`` (``self.queue.get``)."""
    loads = ("LOAD_ATTR", "LOAD_METHOD")
    used: set[str] = set()
    for code in _instructions(functions):
        for first, second in itertools.pairwise(code):
            if (first.opname in loads and first.argval == attribute
                    and second.opname in loads):
                used.add(second.argval)
    return used


def sansio_protocol_problems(base: type[Any], hook: ProtocolHook) -> list[str]:
    """What ``base`` (uvicorn's protocol) lacks of what the hook overrides and relies on.

    Empty if the hook can be installed; else one line per problem, each naming
    uvicorn's version and the symbol.
    """
    where = _where("uvicorn")
    name = getattr(base, "__qualname__", repr(base))
    if not (isinstance(base, type) and issubclass(base, asyncio.Protocol)):
        return [f"{where}: {name} is not an asyncio.Protocol class"]
    problems: list[str] = []
    for method, params in _METHODS.items():
        function = getattr(base, method, None)
        if not callable(function):
            problems.append(f"{where}: {name}.{method} is missing")
            continue
        found = tuple(inspect.signature(function).parameters)
        if found != params:
            problems.append(f"{where}: {name}.{method}{found} is not {method}{params}")
    for method in ("send", "receive"):
        if callable(getattr(base, method, None)) and not inspect.iscoroutinefunction(
                getattr(base, method)):
            problems.append(f"{where}: {name}.{method} is no longer a coroutine function")
    missing = sorted(set(_STATE) - _stored(base))
    if missing:
        problems.append(f"{where}: {name} does not set {', '.join(missing)}")
    functions = list(_functions(base))
    for attribute, replacement in (("queue", hook.inbox), ("writable", hook.flag)):
        lacking = sorted(n for n in _used_on(functions, attribute)
                         if not hasattr(replacement, n))
        if lacking:
            problems.append(f"{where}: {name} uses self.{attribute}.{{{', '.join(lacking)}}}, "
                            f"which realtime's {replacement.__name__} lacks")
    for method, expected in (("pause_writing", {"clear"}), ("resume_writing", {"set"})):
        function = vars(base).get(method) or getattr(base, method, None)
        if isinstance(function, FunctionType) and _used_on([function], "writable") != expected:
            problems.append(f"{where}: {name}.{method} does not call "
                            f"self.writable.{next(iter(expected))}()")
    try:
        disconnected = load_client_disconnected()
    except ImportError as exc:
        problems.append(f"{where}: uvicorn.protocols.utils.ClientDisconnected: {exc}")
    else:
        if not (isinstance(disconnected, type) and issubclass(disconnected, Exception)):
            problems.append(f"{where}: uvicorn.protocols.utils.ClientDisconnected "
                            "is not an exception class")
    problems.extend(_extensions_problems())
    return problems


def _extensions_problems() -> list[str]:
    """``ServerProtocol().extensions`` (websockets, undocumented): the negotiated extensions."""
    try:
        from websockets.server import ServerProtocol

        extensions = ServerProtocol().extensions
    except Exception as exc:
        return [f"{_where('websockets')}: ServerProtocol().extensions: {exc!r}"]
    if not isinstance(extensions, list):
        return [f"{_where('websockets')}: ServerProtocol().extensions is not a list"]
    return []


@cache
def websocket_protocol(hook: ProtocolHook,
                       load: Callable[[], type[Any]] = load_sansio_protocol,
                       ) -> type[asyncio.Protocol] | None:
    """uvicorn's sans-I/O WebSocket protocol with ``hook`` installed, or None.

    The hook overrides ``handle_connect``, ``send`` and ``shutdown`` and uses
    the protocol's ``conn``, ``transport``, ``queue``, ``writable``,
    ``close_sent``, ``disconnected``, ``read_paused``, ``close_timer`` and
    ``stop_keepalive`` as uvicorn 0.52.1 to 0.54.x have them (see
    :func:`sansio_protocol_problems`). None (after one warning) if uvicorn's
    protocol is not what the hook was written for: then serve with uvicorn's
    stock protocol (``ws="auto"``).
    ``load`` returns the class to subclass (tests inject one that fails).
    """
    feature = "uvicorn WebSocket protocol hook"
    try:
        base = load()
        problems = sansio_protocol_problems(base, hook)
        if problems:
            raise CompatError("; ".join(problems))
        return _hooked(base, load_client_disconnected(), hook)
    except Exception as exc:
        _degrade(feature, exc, "serving WebSockets with uvicorn's stock protocol "
                 "(no realtime.writable extension)")
        return None


def _hooked(base: type[Any], disconnected: type[Exception],
            hook: ProtocolHook) -> type[asyncio.Protocol]:
    """Subclass uvicorn's protocol (``base``) with ``hook`` (checked by the caller)."""
    from websockets.protocol import State

    OPEN = State.OPEN
    #: The server's listening addresses, one tuple each (a few per process).
    addresses: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    extension, inbox, flag, exposed, frame, timers = (
        hook.extension, hook.inbox, hook.flag, hook.exposed, hook.frame, hook.timers)

    class RealtimeWebSocketProtocol(base):  # type: ignore[misc]
        """uvicorn's WebSocket protocol with a writability hook and 1001 on shutdown.

        The attributes live in slots rather than in the instance dict (uvicorn sets
        over 30, which makes the dict a 1.6 KB table per connection); an attribute a
        later uvicorn adds still works, in the dict.
        """

        __slots__ = _SLOTS

        close_sent: bool
        read_paused: bool
        disconnected: bool

        #: Seconds a closed connection may take to acknowledge before it is dropped.
        abort_after = 5.0

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Lighter than asyncio's (an idle connection's memory is mostly such objects).
            self.queue = inbox()
            writable = flag()
            writable.set()
            self.writable = writable

        def handle_connect(self, event: Any) -> None:
            super().handle_connect(event)
            scope = getattr(self, "scope", None)
            if scope is not None:
                self.request = None  # (the response answers it)
                forget_request(self.conn)
                scope["extensions"][extension] = exposed(self)
                # Every connection to one listening address shares one tuple of it.
                server = scope.get("server")
                if isinstance(server, tuple):
                    scope["server"] = self.server = addresses.setdefault(server, server)

        async def send(self, message: Any) -> None:
            await super().send(message)
            if self.handshake_complete and getattr(self, "response", None) is not None:
                # The handshake is done: its request and response are garbage now, and
                # so are the extensions it could have negotiated.
                self.request = self.response = None
                if isinstance(getattr(self.conn, "available_extensions", None), list):
                    self.conn.available_extensions = []

        if timers is not None:
            def schedule_ping(self: Any) -> None:
                # One loop timer for every connection's next ping (uvicorn: one each).
                delay = max(0.0, self.ping_interval - self.last_ping_rtt)
                self.ping_timer = timers(self.loop).schedule(delay, self.send_keepalive_ping)

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
                self.write_frames(frame(text.encode()))

        def write_frames(self, data: bytes) -> None:
            """Write ready-made frames now.

            Raises:
                ClientDisconnected: the connection is closed or closing.
            """
            self._check_open()
            self.transport.write(data)

        def frames_ok(self) -> bool:
            """True if the connection negotiated no extension: frames are the same bytes."""
            return not self.conn.extensions

        def _check_open(self) -> None:
            if self.close_sent or self.disconnected or self.conn.state is not OPEN:
                raise disconnected()

        def close_now(self, code: int, reason: str = "") -> None:
            """Send a close frame now; drop the TCP connection if the peer does not answer."""
            if self.close_sent or self.disconnected or self.transport.is_closing():
                return
            self.stop_keepalive()
            self.queue.put_nowait({"type": "websocket.disconnect", "code": code,
                                   "reason": reason})
            self.conn.send_close(code, reason)
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            if self.read_paused:
                self.read_paused = False
                self.transport.resume_reading()
            self.close_timer = self.loop.call_later(self.abort_after, self.transport.abort)

        def shutdown(self) -> None:
            if (self.handshake_complete and not self.close_sent
                    and not self.transport.is_closing()):
                self.stop_keepalive()
                self.queue.put_nowait({"type": "websocket.disconnect", "code": 1001})
                self.conn.send_close(1001, "server shutdown")
                self.transport.write(b"".join(self.conn.data_to_send()))
                self.close_sent = True
                self.transport.close()
                return
            super().shutdown()

    return RealtimeWebSocketProtocol


# --- websockets: let the handshake request go -----------------------------------------


@cache
def _parser_internals() -> tuple[Callable[[Any], Any], CodeType]:
    """websockets' frame parser (``Protocol.parse``) and ``StreamReader.at_eof``'s code.

    Raises:
        CompatError: websockets no longer has them as generator functions.
    """
    problems = parser_problems()
    if problems:
        raise CompatError("; ".join(problems))
    from websockets.protocol import Protocol
    from websockets.streams import StreamReader

    return Protocol.parse, StreamReader.at_eof.__code__


def parser_problems() -> list[str]:
    """What websockets lacks of what :func:`forget_request` relies on (empty if nothing)."""
    where = _where("websockets")
    try:
        from websockets.protocol import Protocol
        from websockets.server import ServerProtocol
        from websockets.streams import StreamReader
    except ImportError as exc:
        return [f"{where}: {exc}"]
    problems = []
    for owner, name in ((Protocol, "parse"), (StreamReader, "at_eof")):
        function = getattr(owner, name, None)
        if not inspect.isgeneratorfunction(function):
            problems.append(f"{where}: {owner.__name__}.{name} is no longer a generator "
                            "function")
    if not isinstance(getattr(ServerProtocol(), "parser", None), GeneratorType):
        problems.append(f"{where}: ServerProtocol().parser is no longer a generator")
    return problems


def forget_request(conn: Any) -> None:
    """Let the handshake request go once it is parsed (it was kept alive for good).

    ``websockets`` parses the request and then the frames in one generator
    (``ServerProtocol.parser``), whose frame holds the request (its headers: 2
    to 3 KB) for the life of the connection. When that generator waits at a
    frame boundary (innermost: ``StreamReader.at_eof``), it is swapped for the
    frame parser alone (``Protocol.parse``), which reads the same buffer. (It
    always does under uvicorn, which hands the protocol the request alone; a
    parser inside a frame is kept as it is.) Checked with websockets 13.0 to 17.x.

    Fallback: the request is kept (one warning).
    """
    feature = "websockets parser swap (releasing the handshake request)"
    if feature in _degraded:
        return
    try:
        parse, at_eof = _parser_internals()
        parser = conn.parser
        inner: Any = parser
        while isinstance(inner, GeneratorType) and inner.gi_yieldfrom is not None:
            inner = inner.gi_yieldfrom
        if getattr(inner, "gi_code", None) is not at_eof:
            return  # inside a frame (a client that did not wait): keep it
        fresh = parse(conn)
        next(fresh)  # waits at the same boundary
        conn.parser = fresh
        parser.close()
    except Exception as exc:
        _degrade(feature, exc, "keeping each connection's handshake request")


# --- uvicorn: proxy headers, without a frame per connection ---------------------------


async def _nothing_more(scope: Any, receive: Any, send: Any) -> None:
    """The app behind :func:`proxy_headers`' middleware: the scope is all it wanted."""


def proxy_headers(trusted_hosts: list[str] | str) -> Callable[[MutableMapping[str, Any]], None]:
    """uvicorn's ``X-Forwarded-For`` / ``-Proto`` rules, as a function that rewrites a scope.

    uvicorn's ``ProxyHeadersMiddleware`` rewrites the ``client`` and ``scheme`` of
    the scope it is given, then awaits its app, for as long as the connection
    lasts (a frame per open WebSocket). Given an app that returns at once, its
    coroutine never suspends: it is run to its end here, and the scope keeps the
    rewrite. The same rules (and ``FORWARDED_ALLOW_IPS``) as uvicorn's own; the
    middleware's behaviour, not its code, is relied on: checked with uvicorn
    0.52.1 to 0.54.x.

    Raises:
        ImportError: uvicorn moved the middleware.
        RuntimeError: (when applied) the middleware suspended after all.
    """
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    middleware = ProxyHeadersMiddleware(_nothing_more, trusted_hosts=trusted_hosts)

    def apply(scope: MutableMapping[str, Any]) -> None:
        step = middleware(scope, _nothing_more, _nothing_more)  # type: ignore[arg-type]
        try:
            step.send(None)
        except StopIteration:
            return
        step.close()
        raise RuntimeError("uvicorn's proxy-headers middleware suspended")

    return apply


# --- uvicorn: the server ---------------------------------------------------------------


def server_problems() -> list[str]:
    """What ``uvicorn.Server`` lacks of what :class:`realtime.server.RealtimeServer` uses.

    It overrides ``startup(sockets)`` (to tell when it listens) and
    ``handle_exit(sig, frame)``, reads ``started``, ``servers`` and
    ``_captured_signals``; tests set ``should_exit``. Empty if all is there.
    """
    import uvicorn

    where = _where("uvicorn")
    problems = []
    for method, params in (("startup", ("self", "sockets")), ("serve", ("self", "sockets")),
                           ("handle_exit", ("self", "sig", "frame"))):
        function = getattr(uvicorn.Server, method, None)
        if not callable(function):
            problems.append(f"{where}: Server.{method} is missing")
        elif tuple(inspect.signature(function).parameters) != params:
            problems.append(f"{where}: Server.{method} no longer takes {params}")
    # (The app is never loaded; no log_config: leave logging as it is.)
    server = uvicorn.Server(uvicorn.Config(app="realtime.app:create_app", log_config=None))
    for attribute, kind in (("started", bool), ("should_exit", bool),
                            ("_captured_signals", list)):
        if not isinstance(getattr(server, attribute, None), kind):
            problems.append(f"{where}: Server().{attribute} is not a {kind.__name__}")
    if "servers" not in _stored(uvicorn.Server):
        problems.append(f"{where}: Server does not set servers")
    return problems


def forget_captured_signal(server: Any, sig: int) -> None:
    """Keep uvicorn from re-raising ``sig`` after its graceful shutdown.

    uvicorn (0.29 on) records the signals it handled in ``Server._captured_signals``
    and raises them again once it has stopped, so a process stopped cleanly by
    SIGTERM would report death by signal. Checked with uvicorn 0.52.1 to 0.54.x.

    Fallback: the signal is re-raised (exit status 128 + signal; one warning).
    """
    captured = getattr(server, "_captured_signals", None)
    if not isinstance(captured, list):
        _degrade("uvicorn Server._captured_signals",
                 CompatError(f"{_where('uvicorn')}: Server._captured_signals is missing"),
                 "the process exits by the signal after a graceful stop")
        return
    if captured[-1:] == [sig]:
        captured.pop()


def listening_sockets(server: Any) -> list[socket.socket]:
    """The sockets a started uvicorn ``Server`` listens on (``Server.servers``, undocumented).

    Checked with uvicorn 0.52.1 to 0.54.x.

    Fallback: none (one warning); only :func:`realtime.server.wait_started`
    needs them, to tell the port of a port-0 server.
    """
    servers = getattr(server, "servers", None)
    if not isinstance(servers, list):
        _degrade("uvicorn Server.servers",
                 CompatError(f"{_where('uvicorn')}: Server.servers is missing"),
                 "the listening port cannot be told")
        return []
    return [s for srv in servers for s in (getattr(srv, "sockets", None) or ())]


# --- FastAPI: native telemetry -----------------------------------------------------------


@cache
def _fastapi_has_telemetry() -> bool:
    """Whether this FastAPI has native telemetry (public ``FastAPI(telemetry=...)``, 0.142+)."""
    from fastapi import FastAPI

    return "telemetry" in inspect.signature(FastAPI.__init__).parameters


def fastapi_telemetry_on(app: Any) -> bool:
    """True if FastAPI's own OpenTelemetry instrumentation would trace ``app``'s requests.

    FastAPI 0.142+ decides that per request with ``app._native_telemetry.enabled()``
    (private; checked with 0.142 to 0.165). Before 0.142 there is no native
    telemetry: False.

    Fallback: telemetry assumed off (one warning).
    """
    telemetry = getattr(app, "_native_telemetry", None)
    if telemetry is not None:
        try:
            return bool(telemetry.enabled())
        except Exception as exc:
            _degrade("FastAPI _native_telemetry.enabled()", exc, "telemetry assumed off")
            return False
    if _fastapi_has_telemetry():
        _degrade("FastAPI _native_telemetry",
                 CompatError(f"{_where('fastapi')}: FastAPI._native_telemetry is missing"),
                 "telemetry assumed off")
    return False


def telemetry_problems() -> list[str]:
    """What FastAPI lacks of what :func:`fastapi_telemetry_on` reads (empty if nothing)."""
    from fastapi import FastAPI

    if not _fastapi_has_telemetry():
        return []
    telemetry = getattr(FastAPI(), "_native_telemetry", None)
    where = _where("fastapi")
    if telemetry is None:
        return [f"{where}: FastAPI._native_telemetry is missing"]
    enabled = getattr(telemetry, "enabled", None)
    if not callable(enabled) or tuple(inspect.signature(enabled).parameters):
        return [f"{where}: FastAPI._native_telemetry.enabled() is missing or takes arguments"]
    return []


# --- Motor: open a change stream's cursor at once ------------------------------------------


async def open_motor_change_stream(stream: Any) -> None:
    """Open a Motor change stream's server cursor now, not at its first read.

    Motor runs ``watch`` lazily, on a worker thread, at the first ``next`` or
    ``try_next``. Entering the stream as an async context manager (public API)
    opens it on Motor's executor (Motor 3.6 and 3.7 alike:
    ``AgnosticChangeStream.__aenter__``), so driver errors surface here and the
    post-batch resume token is known at once. Its owner closes it (never
    ``__aexit__``).

    Fallback: the cursor opens at the first read (one warning).

    Raises:
        PyMongoError: opening the cursor failed.
    """
    enter = getattr(stream, "__aenter__", None)
    if enter is None:
        _degrade("Motor AsyncIOMotorChangeStream.__aenter__",
                 CompatError(f"{_where('motor')}: AsyncIOMotorChangeStream.__aenter__ "
                             "is missing"),
                 "the change stream's cursor opens at its first read")
        return
    await enter()



#: Events one :func:`motor_batch_reader` read takes at most.
MOTOR_BATCH = 1000


def motor_batch_reader(stream: Any) -> Callable[[], asyncio.Future[list[Any]]] | None:
    """Read a Motor change stream a batch at a time: one worker-thread hop per batch.

    Each call starts one read on the loop's default executor and returns its
    future (a cancelled waiter does not stop the thread: wait for the future
    before closing the stream).

    Motor's ``try_next`` hops to a worker thread (and back for the GIL) for every
    event, even one the last ``getMore`` already brought. The reader returned
    runs, in one hop, the stream's own (PyMongo) ``try_next`` once, which may
    run a ``getMore``, then again while the cursor holds buffered documents
    (PyMongo's private ``ChangeStream._cursor._data``; checked with PyMongo 4.11
    to 4.20), so no further call waits on the server. An error after the first
    event ends the batch; the next read raises it.

    Fallback, None: the stream is not opened yet or PyMongo keeps its buffer
    elsewhere (one warning); read it event by event.
    """
    feature = "reading Motor change streams a batch at a time"
    delegate = getattr(stream, "delegate", None)
    if delegate is None or not isinstance(getattr(getattr(delegate, "_cursor", None),
                                                  "_data", None), deque):
        _degrade(feature, CompatError(f"{_where('pymongo')}: ChangeStream._cursor._data is "
                                      "not a deque"), "one worker-thread hop per event")
        return None

    failed: list[Exception] = []

    def read() -> list[Any]:
        if failed:
            raise failed.pop()
        first = delegate.try_next()
        if first is None:
            return []
        batch = [first]
        try:
            while len(batch) < MOTOR_BATCH and delegate._cursor._data:
                more = delegate.try_next()
                if more is None:
                    break
                batch.append(more)
        except Exception as exc:  # raised by the next read, after this batch's events
            failed.append(exc)
        return batch

    def read_batch() -> asyncio.Future[list[Any]]:
        return asyncio.get_running_loop().run_in_executor(None, read)

    return read_batch

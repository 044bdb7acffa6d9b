"""Logging set-up: text or JSON lines, and a request id on every record of a request.

``realtime serve --log-format json`` (env ``REALTIME_LOG_FORMAT=json``) writes one
JSON object per line to stderr::

    {"ts": "2026-01-01T00:00:00.123Z", "level": "info", "logger": "realtime.access",
     "message": "POST /api/collections/orders/documents 201", "request_id": "4f1c...",
     "method": "POST", "path": "/api/collections/orders/documents", "status": 201,
     "duration_ms": 3.2}

:class:`RequestIdMiddleware` takes the request id from the ``X-Request-ID`` header
(when it is a short token, as set by nginx's ``$request_id`` or another proxy) or
makes one, returns it in the response's ``X-Request-ID`` header, and keeps it in
a context variable for the duration of the request, so every record logged while
serving it carries ``request_id`` (WebSocket connections too, for their whole
life). It also writes one ``realtime.access`` record per HTTP request at INFO
(DEBUG for ``/healthz``, ``/readyz`` and ``/metrics``, which probes poll).
Credentials are never logged: only method, path (no query string), status and
duration.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, Literal

import orjson

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "RequestIdFilter",
    "RequestIdMiddleware",
    "configure_logging",
    "current_request_id",
]

REQUEST_ID_HEADER = "X-Request-ID"
_HEADER = REQUEST_ID_HEADER.lower().encode()
_VALID_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: The id of the request being served in this context (None outside requests).
#: A context variable is per-task state by design, not a shared resource.
_request_id: ContextVar[str | None] = ContextVar("realtime_request_id", default=None)

access_log = logging.getLogger("realtime.access")

# Attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "request_id", "taskName", "color_message"}
#: Paths polled by probes and scrapers: their access records are DEBUG, not INFO.
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def current_request_id() -> str | None:
    """The request id of the request being served, if any."""
    return _request_id.get()


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (None outside a request) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate ``record``; never drops it."""
        record.request_id = _request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, request_id, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line (non-JSON extras become strings)."""
        ts = dt.datetime.fromtimestamp(record.created, dt.UTC)
        body: dict[str, Any] = {
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            body["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                body[key] = value
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            body["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(body, default=str).decode()


def configure_logging(level: str = "info", fmt: Literal["text", "json"] = "text") -> None:
    """Send every log record to stderr as text lines or JSON lines.

    Replaces the root logger's handlers (uvicorn's loggers propagate to it).

    Raises:
        ValueError: an unknown level name.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


#: Called once per HTTP request with its scope, status and duration in seconds.
OnResponse = Callable[["Scope", int, float], None]


class RequestIdMiddleware:
    """ASGI middleware: request ids in and out, an access record per HTTP request.

    It is the one place that times an HTTP request and sees its status:
    ``on_response`` (the REST latency histogram of :mod:`realtime.metrics`) is
    called with them when the request ends, a request that raised counting as
    500.
    """

    def __init__(self, app: ASGIApp, on_response: OnResponse | None = None) -> None:
        self.app = app
        self._on_response = on_response
        # New ids: a random prefix per process and a counter (uuid4 per request
        # read the system's random source every time, measurable at 100s of req/s).
        self._prefix = uuid.uuid4().hex[:16]
        self._next = itertools.count(1)

    def bind(self, scope: Scope) -> tuple[str, Token[str | None]]:
        """Bind the request id of ``scope`` (its ``X-Request-ID`` if valid, else a new one)
        to the current context; returns it and the token that resets it."""
        request_id = None
        for name, value in scope.get("headers", ()):
            if name == _HEADER:
                if _VALID_ID.match(value):
                    request_id = value.decode()
                break
        if request_id is None:
            request_id = f"{self._prefix}{next(self._next):016x}"
        return request_id, _request_id.set(request_id)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Bind the request id for the request (or WebSocket connection) and serve it."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id, token = self.bind(scope)
        try:
            if scope["type"] == "websocket":
                # No wrapper on WebSocket sends: they are the fan-out path.
                await self.app(scope, receive, send)
            else:
                await self._http(scope, receive, send, request_id.encode())
        finally:
            _request_id.reset(token)

    async def _http(self, scope: Scope, receive: Receive, send: Send, raw_id: bytes) -> None:
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", ()))
                headers.append((_HEADER, raw_id))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            if self._on_response is not None:
                self._on_response(scope, status, seconds)
            path = scope.get("path", "")
            level = logging.DEBUG if path in _QUIET_PATHS else logging.INFO
            if access_log.isEnabledFor(level):
                access_log.log(level, "%s %s %d", scope["method"], path, status,
                               extra={"method": scope["method"], "path": path,
                                      "status": status, "duration_ms": round(seconds * 1000, 3)})

"""The exception tree and its RFC 9457 ``application/problem+json`` mapping."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, ClassVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

__all__ = [
    "PROBLEM_JSON",
    "BadRequest",
    "Conflict",
    "DatabaseUnavailable",
    "DuplicateKey",
    "HistoryLost",
    "InvalidDocument",
    "NotFound",
    "PayloadTooLarge",
    "PreconditionFailed",
    "RealtimeError",
    "UnsupportedMediaType",
    "install_handlers",
    "problem_response",
]

PROBLEM_JSON = "application/problem+json"


class RealtimeError(Exception):
    """Base of every error the service reports to a client."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def headers(self) -> dict[str, str] | None:
        """Headers of the error's HTTP answer (none unless a subclass says)."""
        return None


class BadRequest(RealtimeError):
    """Malformed JSON, a bad filter, sort, cursor or parameter."""

    status = 400
    slug = "bad-request"


class NotFound(RealtimeError):
    """No such document (or route)."""

    status = 404
    slug = "not-found"


class Conflict(RealtimeError):
    """The write conflicts with existing data."""

    status = 409
    slug = "conflict"


class DuplicateKey(Conflict):
    """A document with this ``_id`` already exists."""

    slug = "duplicate-key"


class PreconditionFailed(RealtimeError):
    """``If-Match`` did not match the document's current version."""

    status = 412
    slug = "precondition-failed"


class PayloadTooLarge(RealtimeError):
    """The request body is over the configured limit."""

    status = 413
    slug = "payload-too-large"


class UnsupportedMediaType(RealtimeError):
    """The request body is not JSON."""

    status = 415
    slug = "unsupported-media-type"


class InvalidDocument(RealtimeError):
    """Well-formed JSON that is not an acceptable document."""

    status = 422
    slug = "invalid-document"


class DatabaseUnavailable(RealtimeError):
    """The database cannot be reached; the client should retry later."""

    status = 503
    slug = "database-unavailable"


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
    **extra: Any,
) -> Response:
    """Build an RFC 9457 problem response."""
    title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body: dict[str, Any] = {
        "type": f"urn:realtime:problem:{slug or title.lower().replace(' ', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON,
                    headers=headers)


def install_handlers(app: FastAPI, *, retry_after_seconds: int) -> None:
    """Map every error raised by a route to problem+json."""

    async def on_realtime(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, RealtimeError):  # pragma: no cover
            raise exc
        headers = exc.headers()
        if isinstance(exc, DatabaseUnavailable):
            headers = {"Retry-After": str(retry_after_seconds)}
        return problem_response(exc.status, exc.detail, slug=exc.slug, headers=headers,
                                instance=request.url.path, **exc.extra)

    async def on_validation(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, RequestValidationError):  # pragma: no cover
            raise exc
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        return problem_response(400, "invalid request parameters", slug="bad-request",
                                instance=request.url.path, errors=errors)

    async def on_http(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
            raise exc
        return problem_response(exc.status_code, str(exc.detail),
                                headers=dict(exc.headers or {}), instance=request.url.path)

    app.add_exception_handler(RealtimeError, on_realtime)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)


class HistoryLost(RealtimeError):
    """A resume token is no longer in the oplog (``ChangeStreamHistoryLost``)."""

    status = 410
    slug = "history-lost"

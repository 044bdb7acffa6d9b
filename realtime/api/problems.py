"""RFC 9457 ``application/problem+json``: how the HTTP layer reports every error."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from realtime.errors import DatabaseUnavailable, RealtimeError

__all__ = ["PROBLEM_JSON", "install_handlers", "problem_response"]

PROBLEM_JSON = "application/problem+json"


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
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
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

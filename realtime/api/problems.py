"""RFC 9457 ``application/problem+json``: how the HTTP layer reports every error.

A request whose parameters FastAPI refuses (path, query or header: REST bodies
are read by hand, see :mod:`realtime.api.rest`) is a 400, not FastAPI's 422.
Its ``detail`` names each bad parameter and what it must be, e.g.
``path parameter 'collection': must match ^[A-Za-z][A-Za-z0-9_-]{0,63}$ and
not start with 'system' — e.g. 'orders'``, and its one extension member,
``invalid_params`` (the member RFC 7807's example introduced), lists them as
``{"name", "in", "reason"}``, each parameter once. The OpenAPI schema says so:
:func:`install_handlers` replaces FastAPI's default 422 ``HTTPValidationError``
response with this 400.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any, Final

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic.fields import FieldInfo
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from realtime.errors import DatabaseUnavailable, RealtimeError
from realtime.names import COLLECTION_PATTERN

__all__ = [
    "PROBLEM_JSON",
    "PROBLEM_SCHEMA",
    "install_handlers",
    "invalid_params",
    "problem_response",
]

PROBLEM_JSON: Final = "application/problem+json"

#: One entry of ``invalid_params``: a parameter, where it was, what it must be.
INVALID_PARAM_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "The parameter (or header) name."},
        "in": {"type": "string", "enum": ["path", "query", "header", "cookie", "body"]},
        "reason": {"type": "string", "description": "What the value must be."},
    },
    "required": ["name", "in", "reason"],
}

#: The OpenAPI schema of every problem response.
PROBLEM_SCHEMA: Final[dict[str, Any]] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "invalid_params": {
            "type": "array", "items": INVALID_PARAM_SCHEMA,
            "description": "A 400 for bad parameters: each bad parameter once.",
        },
    },
    "required": ["type", "title", "status", "detail"],
}

_WHERE: Final = {"path": "path parameter", "query": "query parameter", "header": "header",
                 "cookie": "cookie", "body": "body"}
#: How many bad parameters ``detail`` spells out (``invalid_params`` has them all).
_DETAIL_MAX: Final = 5
_NAME_CHARS: Final = 64
_NUMBER_ERRORS: Final = frozenset({
    "int_parsing", "int_type", "int_from_float", "float_parsing", "float_type",
    "greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number",
})


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
    **extra: Any,
) -> Response:
    """Build an RFC 9457 problem response; ``extra`` are its extension members."""
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


# ------------------------------------------------------------ validation errors


def _bound(info: FieldInfo | None, name: str, ctx: Mapping[str, Any]) -> Any:
    """The ``ge``/``gt``/``le``/``lt`` constraint of a parameter, if it has one."""
    for item in info.metadata if info is not None else ():
        value = getattr(item, name, None)
        if value is not None:
            return value
    return ctx.get(name)


def _number(kind: str, info: FieldInfo | None, ctx: Mapping[str, Any]) -> str:
    """``an integer from 1 to 1000``: the number a parameter must be, with its range."""
    annotation = info.annotation if info is not None else None
    integer = annotation is int or (annotation is None and kind.startswith("int"))
    noun = "an integer" if integer else "a number"
    ge, gt = _bound(info, "ge", ctx), _bound(info, "gt", ctx)
    le, lt = _bound(info, "le", ctx), _bound(info, "lt", ctx)
    if ge is not None and le is not None:
        return f"{noun} from {ge} to {le}"
    limits = [text for text in (
        f"at least {ge}" if ge is not None else None,
        f"greater than {gt}" if gt is not None else None,
        f"at most {le}" if le is not None else None,
        f"less than {lt}" if lt is not None else None,
    ) if text]
    return noun + (", " + " and ".join(limits) if limits else "")


def _reason(error: Mapping[str, Any], info: FieldInfo | None) -> str:
    """What the parameter must be, from pydantic's error and the parameter's declaration."""
    kind = str(error.get("type", ""))
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    if kind == "missing":
        reason = "is required"
    elif kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern")
        reason = f"must match {pattern}"
        if pattern == COLLECTION_PATTERN:
            reason += " and not start with 'system'"
    elif kind == "string_too_short":
        size = ctx.get("min_length")
        reason = "must not be empty" if size == 1 else f"must be at least {size} characters"
    elif kind == "string_too_long":
        reason = f"must be at most {ctx.get('max_length')} characters"
    elif kind in _NUMBER_ERRORS:
        reason = "must be " + _number(kind, info, ctx)
    elif kind in ("bool_parsing", "bool_type"):
        reason = "must be true or false"
    else:
        message = str(error.get("msg") or "is not valid")
        reason = message[:1].lower() + message[1:]
    examples = info.examples if info is not None else None
    if examples:
        reason += " — e.g. " + " or ".join(repr(example) for example in examples[:2])
    return reason


def _declared(route: object) -> dict[tuple[str, str], FieldInfo]:
    """``(in, name)`` -> declaration of each parameter of ``route`` and its dependencies."""
    found: dict[tuple[str, str], FieldInfo] = {}
    pending = [getattr(route, "dependant", None)]
    while pending:
        dependant = pending.pop()
        if dependant is None:
            continue
        for where in ("path", "query", "header", "cookie"):
            for param in getattr(dependant, f"{where}_params", ()):
                info = getattr(param, "field_info", None)
                alias = getattr(param, "alias", None)
                if isinstance(info, FieldInfo) and isinstance(alias, str):
                    found.setdefault((where, alias), info)
        pending.extend(getattr(dependant, "dependencies", ()))
    return found


def invalid_params(errors: Iterable[Mapping[str, Any]],
                   declared: Mapping[tuple[str, str], FieldInfo] | None = None,
                   ) -> list[dict[str, str]]:
    """``invalid_params`` of a 400: ``{"name", "in", "reason"}`` per bad parameter, each once.

    ``errors`` are FastAPI's (pydantic's) validation errors; ``declared`` maps
    ``(in, name)`` to the parameter's declaration (its range and ``examples``
    make the reason precise). A parameter declared by an endpoint and by one of
    its dependencies (``collection``: the route and its scope check) is
    validated once by each: it is listed once.
    """
    seen: set[tuple[str, str, str]] = set()
    out: list[dict[str, str]] = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        where = loc[0] if loc and loc[0] in _WHERE else "body"
        name = ".".join(loc[1:] if loc and loc[0] in _WHERE else loc) or where
        name = name[:_NAME_CHARS]
        reason = _reason(error, (declared or {}).get((where, name)))
        if (key := (where, name, reason)) not in seen:
            seen.add(key)
            out.append({"name": name, "in": where, "reason": reason})
    return out


def _detail(params: list[dict[str, str]]) -> str:
    parts = [f"{_WHERE[p['in']]} {p['name']!r}: {p['reason']}" for p in params[:_DETAIL_MAX]]
    if len(params) > _DETAIL_MAX:
        parts.append(f"and {len(params) - _DETAIL_MAX} more (see invalid_params)")
    return "; ".join(parts) or "invalid request parameters"


# ---------------------------------------------------------------------- OpenAPI

_VALIDATION_REF: Final = "#/components/schemas/HTTPValidationError"


def _replace_validation_responses(schema: dict[str, Any]) -> None:
    """Swap FastAPI's default 422 ``HTTPValidationError`` for the 400 actually sent."""
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            responses = operation.get("responses") if isinstance(operation, dict) else None
            if not isinstance(responses, dict):
                continue
            default = responses.get("422", {})
            content = default.get("content", {}).get("application/json", {})
            if content.get("schema", {}).get("$ref") != _VALIDATION_REF:
                continue
            del responses["422"]
            responses.setdefault("400", {
                "description": "A bad parameter (`invalid_params` names it).",
                "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}},
            })
    schemas = schema.get("components", {}).get("schemas", {})
    if _VALIDATION_REF.encode() not in orjson.dumps(schema.get("paths", {})):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)


def _document_problems(app: FastAPI) -> None:
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _replace_validation_responses(build())
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]


# --------------------------------------------------------------------- handlers


def install_handlers(app: FastAPI, *, retry_after_seconds: int) -> None:
    """Map every error raised by a route to problem+json, and say so in the OpenAPI schema.

    A :class:`~realtime.errors.RealtimeError` answers its status; FastAPI's
    ``RequestValidationError`` a 400 with ``invalid_params``; Starlette's
    ``HTTPException`` (404 route, 405 method) its status.
    """

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
        params = invalid_params(exc.errors(), _declared(request.scope.get("route")))
        return problem_response(400, _detail(params), slug="bad-request",
                                instance=request.url.path, invalid_params=params)

    async def on_http(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
            raise exc
        return problem_response(exc.status_code, str(exc.detail),
                                headers=dict(exc.headers or {}), instance=request.url.path)

    app.add_exception_handler(RealtimeError, on_realtime)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    _document_problems(app)

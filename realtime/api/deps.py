"""``Annotated`` dependencies: how routes reach what the lifespan created."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from starlette.requests import HTTPConnection

from realtime.auth import Action, Forbidden, Principal, Unauthenticated, bearer_token
from realtime.config import Settings
from realtime.db import Database
from realtime.errors import BadRequest
from realtime.names import COLLECTION_PATTERN
from realtime.services import Services
from realtime.store import Store

__all__ = [
    "BEARER_SCHEME",
    "Caller",
    "CallerDep",
    "CollectionPath",
    "DbDep",
    "ReaderDep",
    "ServicesDep",
    "SettingsDep",
    "WriterDep",
    "declare_security",
    "get_services",
]


def get_services(conn: HTTPConnection) -> Services:
    """The lifespan's :class:`~realtime.services.Services`."""
    services: Services = conn.app.state.services
    return services


# Dependencies are ``async def``: FastAPI runs plain ``def`` ones on its threadpool,
# a thread hop per dependency per request for what is an attribute lookup.
async def _services(conn: HTTPConnection) -> Services:
    return get_services(conn)


async def _db(request: Request) -> Database:
    return get_services(request).db


async def _settings(request: Request) -> Settings:
    return get_services(request).settings


#: The ``{collection}`` path parameter (names starting with "system" are refused too).
CollectionPath = Annotated[str, Path(
    pattern=COLLECTION_PATTERN, description="A collection name (not `system*`).",
    examples=["orders"])]

#: The credentials every ``/api`` route takes, as the OpenAPI document declares them
#: (:func:`declare_security`); the routes read the header through :class:`Caller`.
BEARER_SCHEME: dict[str, Any] = {"type": "http", "scheme": "bearer",
                                 "description": "An API key or a JWT (docs/security.md)."}


def declare_security(schema: dict[str, Any], prefix: str = "/api") -> None:
    """Declare :data:`BEARER_SCHEME` as ``bearer`` on every operation under ``prefix``.

    (A security dependency would declare it too, at a cost on every request.)
    """
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = \
        BEARER_SCHEME
    for path, item in schema.get("paths", {}).items():
        if path.startswith(prefix + "/") or path == prefix:
            for operation in item.values():
                if isinstance(operation, dict):
                    operation["security"] = [{"bearer": []}]


def _known_query(request: Request) -> None:
    """Refuse query parameters the route does not declare (a typo like ``fitler=``
    would otherwise silently list everything).

    Raises:
        BadRequest: an unknown query parameter (400).
    """
    if not request.scope.get("query_string"):
        return
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:  # pragma: no cover - always an APIRoute here
        return
    known = list(dict.fromkeys(param.alias for param in _query_params(dependant)))
    unknown = sorted(set(request.query_params) - set(known))
    if unknown:
        listed = ", ".join(repr(name[:40]) for name in unknown[:5])
        takes = f"this operation takes {', '.join(known)}" if known else \
            "this operation takes no query parameters"
        raise BadRequest(
            f"unknown query parameter{'s' if len(unknown) > 1 else ''} {listed}; {takes}",
            invalid_params=[{"name": name[:64], "in": "query", "reason": f"unknown; {takes}"}
                            for name in unknown])


def _query_params(dependant: Any) -> list[Any]:
    params = list(dependant.query_params)
    for sub in dependant.dependencies:
        params += _query_params(sub)
    return params


def _authenticated(request: Request, services: Services) -> Principal:
    """The caller, from ``Authorization: Bearer <token>``, charged one request.

    Raises:
        Unauthenticated: missing or invalid credentials (401).
        TooManyRequests: over the credential's rate (429).
    """
    limits = services.limits
    try:
        principal = services.auth.authenticate(bearer_token(request.headers.get("authorization")))
    except Unauthenticated:
        limits.reject("unauthenticated")
        raise
    limits.charge(principal.id)
    return principal


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated caller of a document route, and the lifespan's services.

    One dependency per route rather than one per resource: FastAPI solves each
    dependency with its own bookkeeping (parameters, cache keys), which a
    profile of REST writes showed costing more than the route's own work.
    """

    principal: Principal
    services: Services

    @property
    def store(self) -> Store:
        """The document store."""
        return self.services.store

    @property
    def settings(self) -> Settings:
        """The settings the process started with."""
        return self.services.settings


def _caller(request: Request, action: Action | None, collection: str = "") -> Caller:
    """The checks of every ``/api`` route, in order: the query, the credentials, the right.

    Raises:
        BadRequest: an unknown query parameter (400).
        Unauthenticated: missing or invalid credentials (401).
        TooManyRequests: over the credential's rate (429).
        Forbidden: the credentials may not ``action`` the collection (403).
    """
    _known_query(request)
    services = get_services(request)
    principal = _authenticated(request, services)
    if action is not None:
        try:
            principal.require(action, collection)
        except Forbidden:
            services.limits.reject("forbidden")
            raise
    return Caller(principal, services)


async def _anyone(request: Request) -> Caller:
    return _caller(request, None)


async def _reader(request: Request, collection: CollectionPath) -> Caller:
    return _caller(request, "read", collection)


async def _writer(request: Request, collection: CollectionPath) -> Caller:
    return _caller(request, "write", collection)


ServicesDep = Annotated[Services, Depends(_services)]
DbDep = Annotated[Database, Depends(_db)]
SettingsDep = Annotated[Settings, Depends(_settings)]
#: The caller (else 400, 401 or 429).
CallerDep = Annotated[Caller, Depends(_anyone)]
#: The caller, allowed to read the path's ``{collection}`` (else 400, 401, 403 or 429).
ReaderDep = Annotated[Caller, Depends(_reader)]
#: The caller, allowed to write the path's ``{collection}`` (else 400, 401, 403 or 429).
WriterDep = Annotated[Caller, Depends(_writer)]

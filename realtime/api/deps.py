"""``Annotated`` dependencies: how routes reach what the lifespan created."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from realtime.auth import Action, Forbidden, Principal, Unauthenticated, bearer_token
from realtime.config import Settings
from realtime.db import Database
from realtime.names import COLLECTION_PATTERN
from realtime.services import Services
from realtime.store import Store

__all__ = [
    "CollectionPath",
    "DbDep",
    "PrincipalDep",
    "ReaderDep",
    "ServicesDep",
    "SettingsDep",
    "StoreDep",
    "WriterDep",
    "get_principal",
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


async def _store(request: Request) -> Store:
    return get_services(request).store


async def _settings(request: Request) -> Settings:
    return get_services(request).settings


#: The ``{collection}`` path parameter (names starting with "system" are refused too).
CollectionPath = Annotated[str, Path(
    pattern=COLLECTION_PATTERN, description="A collection name (not `system*`).",
    examples=["orders"])]

# Declares the scheme in the OpenAPI schema; the header is read by get_principal.
_bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                     description="An API key or a JWT (docs/security.md).")


async def get_principal(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from ``Authorization: Bearer <token>``, charged one request.

    Raises:
        Unauthenticated: missing or invalid credentials (401).
        TooManyRequests: over the credential's rate (429).
    """
    services = get_services(request)
    limits = services.limits
    try:
        principal = services.auth.authenticate(bearer_token(request.headers.get("authorization")))
    except Unauthenticated:
        limits.reject("unauthenticated")
        raise
    limits.charge(principal.id)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def _require(request: Request, principal: Principal, action: Action,
             collection: str) -> Principal:
    try:
        principal.require(action, collection)
    except Forbidden:
        get_services(request).limits.reject("forbidden")
        raise
    return principal


async def _reader(request: Request, collection: CollectionPath,
                  principal: PrincipalDep) -> Principal:
    return _require(request, principal, "read", collection)


async def _writer(request: Request, collection: CollectionPath,
                  principal: PrincipalDep) -> Principal:
    return _require(request, principal, "write", collection)


ServicesDep = Annotated[Services, Depends(_services)]
DbDep = Annotated[Database, Depends(_db)]
StoreDep = Annotated[Store, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(_settings)]
#: The caller, allowed to read the path's ``{collection}`` (else 403).
ReaderDep = Annotated[Principal, Depends(_reader)]
#: The caller, allowed to write the path's ``{collection}`` (else 403).
WriterDep = Annotated[Principal, Depends(_writer)]

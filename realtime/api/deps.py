"""``Annotated`` dependencies: how routes reach what the lifespan created."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from realtime.app import Services
from realtime.config import Settings
from realtime.db import Database
from realtime.store import Store

__all__ = ["DbDep", "ServicesDep", "SettingsDep", "StoreDep", "get_services"]


def get_services(conn: HTTPConnection) -> Services:
    """The lifespan's :class:`~realtime.app.Services`."""
    services: Services = conn.app.state.services
    return services


def _db(request: Request) -> Database:
    return get_services(request).db


def _store(request: Request) -> Store:
    return get_services(request).store


def _settings(request: Request) -> Settings:
    return get_services(request).settings


ServicesDep = Annotated[Services, Depends(get_services)]
DbDep = Annotated[Database, Depends(_db)]
StoreDep = Annotated[Store, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(_settings)]

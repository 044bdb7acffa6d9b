"""``create_app(settings)`` and the lifespan that starts and stops everything.

Nothing is created at import time: the database client, the embedded server,
the hub and the feed task all live in :class:`Services`, built in the lifespan
and reached by routes through :mod:`realtime.api.deps`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from realtime import __version__
from realtime.config import Settings
from realtime.db import Database
from realtime.embedded import EmbeddedServer
from realtime.errors import install_handlers
from realtime.feed import Feed
from realtime.hub import Hub
from realtime.protocol import CloseCode
from realtime.store import Store

__all__ = ["Services", "create_app"]

log = logging.getLogger("realtime.app")

STATIC_DIR = Path(__file__).parent / "static"


@dataclass(slots=True)
class Services:
    """Everything the lifespan creates, shared by the routes."""

    settings: Settings
    db: Database
    store: Store
    hub: Hub
    feed: Feed
    embedded: EmbeddedServer | None


async def _start_embedded(settings: Settings) -> EmbeddedServer:
    server = EmbeddedServer(
        settings.data_dir,
        port=settings.embedded_port,
        sync_on_commit=settings.embedded_sync_on_commit,
    )
    server.spawn()
    try:
        await server.wait_ready_async(30.0)
    except BaseException:
        server.stop()
        raise
    return server


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ASGI application; every resource is created in its lifespan."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        embedded = None
        uri = settings.mongodb_uri
        if uri is None:
            embedded = await _start_embedded(settings)
            uri = embedded.uri
        db = Database(settings, uri)
        hub = Hub(settings.ring_size)
        feed = Feed(db, hub, settings)
        app.state.services = Services(settings=settings, db=db, store=Store(db, settings),
                                      hub=hub, feed=feed, embedded=embedded)
        feed.start()
        try:
            try:
                # Serve once the feed is live, so no write after start-up is missed;
                # if the database is down, serve anyway (/readyz says why).
                await feed.wait_live(settings.startup_wait_seconds)
            except TimeoutError:
                log.warning("change stream not live after %.0f s; serving anyway",
                            settings.startup_wait_seconds)
            yield
        finally:
            hub.close_all(CloseCode.GOING_AWAY, "server shutdown")
            await feed.stop()
            db.close()
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)
            log.info("realtime stopped")

    app = FastAPI(
        title="realtime",
        version=__version__,
        summary="MongoDB writes as live updates over WebSocket, with a REST API for writers.",
        lifespan=lifespan,
    )
    install_handlers(app, retry_after_seconds=settings.retry_after_seconds)

    from realtime.api import health, rest, ws

    app.include_router(health.router)
    app.include_router(rest.router)
    app.include_router(ws.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    return app

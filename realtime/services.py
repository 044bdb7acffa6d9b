"""The service container and its lifespan: everything is created here, and stopped.

Nothing is created at import time: the database client, the embedded server,
the hub, the feed task and the catch-up tasks all live in :class:`Services`,
built by :func:`running` and reached by routes through :mod:`realtime.api.deps`.
Stopping closes every WebSocket with 1001, cancels and awaits every task,
closes the client and stops the embedded server.

The embedded server, when the lifespan starts it, comes with a lock on its
data directory (held until it stops: a second server on the directory fails
at once) and a supervisor task that restarts it when it dies unexpectedly and
tells the feed (``down`` until it is back).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from realtime.auth import Authenticator
from realtime.backoff import Backoff
from realtime.catchup import DatabaseHistory
from realtime.config import Settings
from realtime.db import Database, token_order
from realtime.embedded import DataDirLock, EmbeddedServer
from realtime.heap import settled_heap
from realtime.hub import Hub
from realtime.limits import Limits
from realtime.protocol import CloseCode
from realtime.sources.changestream import Feed
from realtime.store import Store
from realtime.tasks import cancel_and_wait

if TYPE_CHECKING:
    from realtime.sources.broker import BrokerHistory, BrokerSource

__all__ = ["Services", "running"]

log = logging.getLogger("realtime.services")


@dataclass(slots=True)
class Services:
    """Everything the lifespan creates, shared by the routes."""

    settings: Settings
    db: Database
    store: Store
    hub: Hub
    #: The change-stream feed, or an edge's JetStream source (REALTIME_BROKER_URL).
    feed: Feed | BrokerSource
    history: DatabaseHistory | BrokerHistory
    embedded: EmbeddedServer | None
    auth: Authenticator
    limits: Limits


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


@asynccontextmanager
async def running(settings: Settings, auth: Authenticator,
                  limits: Limits) -> AsyncIterator[Services]:
    """Start the database (embedded unless a URI is set), the hub and the feed; stop them after.

    Yields once the change stream is live, so no write after start-up is missed;
    if the database is down after ``startup_wait_seconds``, yields anyway
    (``/readyz`` says why).

    Raises:
        DataDirInUse: another realtime server uses the data directory.
        EmbeddedUnavailable: the embedded database could not start (the message
            quotes the last meaningful line of its log).
    """
    embedded = None
    lock = None
    uri = settings.mongodb_uri
    if uri is None:
        lock = DataDirLock(settings.data_dir)
        lock.acquire()  # before the database: a second server fails here, in one line
        try:
            embedded = await _start_embedded(settings)
        except BaseException:
            lock.release()
            raise
        uri = embedded.uri
    db = Database(settings, uri)
    hub = Hub(settings.ring_size, order=token_order)
    feed: Feed | BrokerSource
    history: DatabaseHistory | BrokerHistory
    if settings.broker_url is None:
        feed = Feed(db, hub, settings)
        history = DatabaseHistory(db, hub, settings, lambda: feed.polls)
    else:  # an edge: the relay's stream instead of a change stream of its own
        from realtime.jetstream import Broker
        from realtime.sources.broker import BrokerHistory, BrokerSource

        source = feed = BrokerSource(
            Broker(settings.broker_url, settings.broker_stream, name="realtime-edge",
                   replicas=settings.broker_replicas,
                   max_age=settings.broker_max_age_seconds), hub, settings)
        history = BrokerHistory(source, DatabaseHistory(db, hub, settings, lambda: 0),
                                hub, settings)
    services = Services(settings=settings, db=db, store=Store(db, settings), hub=hub,
                        feed=feed, history=history, embedded=embedded, auth=auth,
                        limits=limits)
    supervisor = None
    if embedded is not None:
        supervisor = asyncio.get_running_loop().create_task(
            embedded.supervise(on_exit=feed.database_gone, on_ready=feed.database_back,
                               backoff=Backoff(settings.retry_base_seconds,
                                               settings.retry_cap_seconds)),
            name="realtime-embedded-supervisor")
    feed.start()
    try:
        try:
            await feed.wait_live(settings.startup_wait_seconds)
        except TimeoutError:
            log.warning("change stream not live after %.0f s; serving anyway",
                        settings.startup_wait_seconds)
        with settled_heap():
            yield services
    finally:
        hub.close_all(CloseCode.GOING_AWAY, "server shutdown")
        await history.stop()
        await feed.stop()
        if not isinstance(feed, Feed):
            await feed.broker.close()
        await db.close()
        if supervisor is not None:  # first: a deliberate stop is no crash to repair
            try:
                await cancel_and_wait(supervisor)
            except Exception:
                log.exception("the embedded database's supervisor failed")
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        if lock is not None:
            lock.release()
        log.info("realtime stopped")

"""Reading the past from the database: snapshots, and catch-up beyond the ring.

:class:`DatabaseHistory` is the hub's :class:`~realtime.hub.History`. A
snapshot is one majority read that reports the cluster time it finished at. A
catch-up opens a change stream on one collection from the client's ``since``
and replays it to a CATCHING_UP subscription, then hands over to live: at an
event the ring holds (the ring replays the rest, :meth:`Hub.hand_over`), or
once it has caught up with the present (:meth:`Subscription.go_live` skips the
held events it already sent, by cluster time). At most ``catchup_concurrency``
run at once; others wait. Every task is awaited by :meth:`DatabaseHistory.stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from realtime import protocol, query
from realtime.backoff import Backoff
from realtime.config import Settings
from realtime.db import ChangeStream, Database, is_transient, token_time
from realtime.errors import HistoryLost, RealtimeError
from realtime.events import STREAM_OPS, cluster_time, normalise
from realtime.hub import Hub
from realtime.subscription import Cluster, Phase, Subscription

__all__ = ["DatabaseHistory", "collection_pipeline"]

log = logging.getLogger("realtime.catchup")


def collection_pipeline(collection: str) -> list[dict[str, Any]]:
    """The ``$match`` stage of a catch-up stream for one collection."""
    return [{"$match": {"ns.coll": collection,
                        "operationType": {"$in": ["insert", "update", "replace", "delete",
                                                  "drop", "rename", "invalidate"]}}}]


@dataclass(slots=True)
class _Progress:
    """How far a catch-up got: a retry resumes after ``token``; ``ct`` was sent."""

    token: str
    ct: Cluster | None = None


class DatabaseHistory:
    """Snapshots and catch-ups read from the database, for the hub."""

    def __init__(self, db: Database, hub: Hub, settings: Settings,
                 polls: Callable[[], int]) -> None:
        """``polls`` tells how many reads of its stream the feed has begun."""
        self._db = db
        self._hub = hub
        self._settings = settings
        self._polls = polls
        self._slots = asyncio.Semaphore(settings.catchup_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        #: Catch-ups begun, since start.
        self.catchups = 0

    async def snapshot(self, collection: str, filter: Mapping[str, Any],
                       limit: int) -> tuple[list[dict[str, Any]], Cluster | None]:
        """The first ``limit`` documents matching ``filter`` by ``_id``, and the read's time.

        Raises:
            DatabaseUnavailable: the database cannot be reached.
        """
        return await self._db.collection(collection).snapshot(
            query.to_mongo(dict(filter)), sort=[("_id", 1)], limit=limit)

    def next_poll(self) -> int:
        """The number of the feed's first read to begin from now on."""
        return self._polls() + 1

    def catch_up(self, subscription: Subscription, since: str) -> None:
        """Replay to ``subscription`` (CATCHING_UP) every change after ``since``, then live."""
        task = asyncio.get_running_loop().create_task(self._catch_up(subscription, since))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Cancel every catch-up and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _history_gone(self, since: str) -> bool:
        """True if the oplog no longer holds ``since`` (servers that prune lazily)."""
        when = token_time(since)
        if when is None:
            return False
        oldest = await self._db.oldest_oplog_time()
        return oldest is not None and when < oldest

    async def _catch_up(self, sub: Subscription, since: str) -> None:
        backoff = Backoff(self._settings.retry_base_seconds, self._settings.retry_cap_seconds)
        progress = _Progress(since)
        async with self._slots:
            self.catchups += 1
            while sub.phase is Phase.CATCHING_UP:
                stream: ChangeStream | None = None
                try:
                    if await self._history_gone(progress.token):
                        raise HistoryLost("the oplog no longer holds the resume point")
                    stream = await self._db.watch(collection_pipeline(sub.collection),
                                                  resume_after={"_data": progress.token},
                                                  max_await_time_ms=100)
                    await self._replay(sub, stream, progress)
                except RealtimeError as exc:
                    if isinstance(exc, HistoryLost) or not is_transient(exc):
                        sub.conn.send(protocol.render_resync(
                            sub.sub, protocol.ResyncReason.HISTORY_LOST))
                        sub.go_live()
                        return
                    await asyncio.sleep(backoff.next_delay())
                finally:
                    if stream is not None:
                        await stream.close()

    async def _replay(self, sub: Subscription, stream: ChangeStream,
                      progress: _Progress) -> None:
        """Replay from ``stream`` until the subscription is live, noting ``progress``.

        Raises:
            RealtimeError: the stream failed (``progress`` says how far it got).
        """
        hub = self._hub
        while sub.phase is Phase.CATCHING_UP:
            raw = await stream.try_next()
            if raw is None:
                # Caught up with the present: what the hub holds back is newer,
                # except events this stream already sent (same cluster time).
                sub.go_live(floor=progress.ct)
                break
            progress.token = str(raw["_id"]["_data"])
            progress.ct = cluster_time(raw)
            ev = normalise(raw)
            if ev is None:
                continue
            if ev.op in STREAM_OPS:
                sub.conn.send(protocol.render_resync(sub.sub, protocol.ResyncReason.INVALIDATED))
                sub.go_live(floor=progress.ct)
                break
            sub.replay(ev)
            if hub.has_event(ev.id):
                hub.hand_over(sub, ev.id)  # the ring holds everything after this event

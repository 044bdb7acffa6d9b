"""The change-stream watcher: one stream per process, resume, retry, backoff.

The feed watches the whole database (``$match`` on the exposed collections),
normalises each event once (:func:`realtime.events.normalise`) and publishes it
to the hub. On a transient error it retries with exponential backoff and full
jitter, resuming after the last event it published, so no event is lost and
none is published twice. A lost history or an ``invalidate`` restarts it from
now and tells the affected subscriptions to ``resync``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from realtime import protocol
from realtime.config import Settings
from realtime.db import ChangeStream, Database, is_transient, token_time
from realtime.errors import HistoryLost, RealtimeError
from realtime.events import STREAM_OPS, cluster_time, normalise
from realtime.hub import Hub, Subscription
from realtime.metrics import LatencyBuckets

__all__ = ["Backoff", "Feed", "FeedState"]

log = logging.getLogger("realtime.feed")


class Stalled(RealtimeError):
    """The change stream produced neither a batch nor a heartbeat in time."""


class FeedState(StrEnum):
    """Where the feed is."""

    STARTING = "starting"
    LIVE = "live"
    RETRYING = "retrying"
    STOPPED = "stopped"


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with full jitter: ``uniform(0, min(cap, base * 2**n))``."""

    base: float = 0.1
    cap: float = 10.0
    attempt: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt (and count the attempt)."""
        ceiling = min(self.cap, self.base * (2 ** self.attempt))
        self.attempt += 1
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not crypto

    def reset(self) -> None:
        """Forget past failures."""
        self.attempt = 0


def collection_pipeline(collection: str) -> list[dict[str, Any]]:
    """The ``$match`` stage of a catch-up stream for one collection."""
    return [{"$match": {"ns.coll": collection,
                        "operationType": {"$in": ["insert", "update", "replace", "delete",
                                                  "drop", "rename", "invalidate"]}}}]


def pipeline(collections: list[str] | None) -> list[dict[str, Any]]:
    """The ``$match`` stage of the feed's change stream."""
    ops = ["insert", "update", "replace", "delete", "drop", "rename", "dropDatabase",
           "invalidate"]
    match: dict[str, Any] = {"operationType": {"$in": ops}}
    if collections is not None:
        match = {"$and": [match, {"$or": [{"ns.coll": {"$in": list(collections)}},
                                          {"operationType": {"$in": ["dropDatabase",
                                                                     "invalidate"]}}]}]}
    return [{"$match": match}]


class Feed:
    """Watches the database and publishes every change to the hub."""

    def __init__(self, db: Database, hub: Hub, settings: Settings) -> None:
        self._db = db
        self._hub = hub
        self._settings = settings
        self._task: asyncio.Task[None] | None = None
        self._live = asyncio.Event()
        self.state = FeedState.STARTING
        self.last_error: str | None = None
        self.retrying_since: float | None = None
        self.restarts = 0
        self.catchups = 0
        self.last_event_wall: float | None = None
        #: Commit (the event's ``wallTime``) → fanned out to writable subscribers.
        self.publish_latency = LatencyBuckets()
        self._catchup_slots = asyncio.Semaphore(settings.catchup_concurrency)
        self._catchups: set[asyncio.Task[None]] = set()
        #: The resume token after the last published event (or post-batch token).
        self.token: Mapping[str, Any] | None = None
        #: Reads of the change stream begun (numbered from 1; see Hub.settle).
        self.polls = 0
        self._invalidated = False

    def start(self) -> None:
        """Start the watcher task."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="realtime-feed")

    async def stop(self) -> None:
        """Cancel the watcher task and every catch-up, and wait for them."""
        tasks = [t for t in (self._task, *self._catchups) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.state = FeedState.STOPPED

    @property
    def lag(self) -> float | None:
        """Seconds between the last event's commit and now (None before any event)."""
        if self.last_event_wall is None:
            return None
        return max(0.0, time.time() - self.last_event_wall)

    async def wait_live(self, timeout: float) -> None:
        """Wait until the stream is open (raises TimeoutError)."""
        await asyncio.wait_for(self._live.wait(), timeout)

    @property
    def live(self) -> bool:
        """True while the change stream is open."""
        return self.state is FeedState.LIVE

    async def _open(self) -> ChangeStream:
        after_invalidate = self._invalidated
        return await self._db.watch(
            pipeline(self._settings.collections),
            resume_after=None if after_invalidate else self.token,
            start_after=self.token if after_invalidate else None,
            max_await_time_ms=self._settings.feed_max_await_ms,
        )

    async def _run(self) -> None:
        backoff = Backoff(self._settings.retry_base_seconds, self._settings.retry_cap_seconds)
        while True:
            try:
                stream = await self._open()
            except HistoryLost as exc:
                self._history_lost(exc)
                continue
            except RealtimeError as exc:
                if not is_transient(exc):
                    log.error("change stream cannot open: %s", exc)
                await self._retry(backoff, exc)
                continue
            try:
                self._went_live(stream)
                backoff.reset()
                await self._pump(stream)
            except HistoryLost as exc:
                self._history_lost(exc)
            except RealtimeError as exc:
                if not is_transient(exc) and not isinstance(exc, Stalled):
                    # The stream cannot be resumed: start from now, and every
                    # subscriber reloads (never a restart loop on a dead token).
                    self._history_lost(exc)
                    await self._retry(backoff, exc)
                else:
                    await self._retry(backoff, exc)
            finally:
                await stream.close()

    def _went_live(self, stream: ChangeStream) -> None:
        if self.state is not FeedState.LIVE:
            log.info("change stream live%s", " (resumed)" if self.token else "")
        self.state = FeedState.LIVE
        self._invalidated = False
        self.retrying_since = None
        self.last_error = None
        self._live.set()
        token = stream.resume_token
        if token is not None:
            self.token = token
            self._hub.advance(str(token["_data"]))

    async def _retry(self, backoff: Backoff, exc: BaseException) -> None:
        delay = backoff.next_delay()
        self.restarts += 1
        if self.state is not FeedState.RETRYING:
            self.retrying_since = time.time()
        self.state = FeedState.RETRYING
        self._live.clear()
        self.last_error = f"{type(exc).__name__}: {exc}"
        log.warning("change stream failed (%s); retry %d in %.2f s", self.last_error,
                    backoff.attempt, delay)
        await asyncio.sleep(delay)

    def _history_lost(self, exc: BaseException) -> None:
        log.error("change stream history lost (%s); restarting from now", exc)
        self.restarts += 1
        self.token = None
        self._hub.resync("history_lost")

    async def _pump(self, stream: ChangeStream) -> None:
        hub = self._hub
        # No batch and no heartbeat (an empty batch) in this long means it stalled.
        stall_after = self._settings.feed_max_await_ms / 1000 * self._settings.stall_factor
        while True:
            self.polls += 1
            try:
                async with asyncio.timeout(stall_after):
                    raw = await stream.try_next()
            except TimeoutError:
                raise Stalled(f"no batch or heartbeat in {stall_after:.1f} s") from None
            if raw is None:
                token = stream.resume_token
                if token is not None and token != self.token:
                    self.token = token
                    hub.advance(str(token["_data"]))
                hub.quiet(self.polls)
                continue
            self.token = raw["_id"]
            ev = normalise(raw)
            if ev is None:
                continue
            if ev.op in STREAM_OPS:
                self._stream_event(ev.op, ev.collection, raw)
                if ev.op == "invalidate":
                    self._invalidated = True
                    return
                continue
            wall = raw.get("wallTime")
            self.last_event_wall = wall.timestamp() if wall is not None else time.time()
            hub.publish(ev)
            if wall is not None:
                self.publish_latency.observe(time.time() - self.last_event_wall)

    def _stream_event(self, op: str, collection: str, raw: Mapping[str, Any]) -> None:
        if op == "invalidate":
            log.warning("change stream invalidated; restarting after it")
            self._hub.resync("invalidated")
            return
        if op == "dropDatabase":
            self._hub.resync("invalidated")
        else:
            self._hub.resync("invalidated", collection)

    # -- catch-up: resume beyond the ring ----------------------------------------
    def catch_up(self, subscription: Subscription, since: str) -> asyncio.Task[None]:
        """Replay to ``subscription`` every change after ``since`` from the oplog.

        The subscription must already be registered with ``pending`` set, so live
        events are held back meanwhile. The catch-up stream is filtered to its
        collection; it hands over to live delivery when it meets an event the
        ring holds (the ring replays the rest) or when it has caught up with the
        present (held-back events it already delivered are skipped by cluster
        time). At most ``catchup_concurrency`` run at once; others wait.
        """
        task = asyncio.get_running_loop().create_task(self._catch_up(subscription, since))
        self._catchups.add(task)
        task.add_done_callback(self._catchups.discard)
        return task

    async def _history_gone(self, since: str) -> bool:
        """True if the oplog no longer holds ``since`` (servers that prune lazily)."""
        when = token_time(since)
        if when is None:
            return False
        oldest = await self._db.oldest_oplog_time()
        return oldest is not None and when < oldest

    async def _catch_up(self, sub: Subscription, since: str) -> None:
        conn = sub.conn
        backoff = Backoff(self._settings.retry_base_seconds, self._settings.retry_cap_seconds)
        async with self._catchup_slots:
            self.catchups += 1
            while not conn.closed:
                stream: ChangeStream | None = None
                try:
                    if await self._history_gone(since):
                        raise HistoryLost("the oplog no longer holds the resume point")
                    stream = await self._db.watch(collection_pipeline(sub.collection),
                                                  resume_after={"_data": since},
                                                  max_await_time_ms=100)
                    since, done = await self._replay(sub, stream)
                    if done:
                        return
                except RealtimeError as exc:
                    if isinstance(exc, HistoryLost) or not is_transient(exc):
                        self._catch_up_lost(sub)
                        return
                    await asyncio.sleep(backoff.next_delay())
                finally:
                    if stream is not None:
                        await stream.close()

    async def _replay(self, sub: Subscription, stream: ChangeStream) -> tuple[str, bool]:
        """Replay from ``stream``; return (the last token seen, handed over)."""
        hub = self._hub
        last_token = ""
        last_ct: tuple[int, int] | None = None
        while not sub.conn.closed:
            raw = await stream.try_next()
            if raw is None:
                # Caught up with the present: what the hub holds back is newer,
                # except events this stream already delivered (same cluster time).
                sub.floor = last_ct
                sub.go_live()
                return last_token, True
            last_token = str(raw["_id"]["_data"])
            last_ct = cluster_time(raw)
            ev = normalise(raw)
            if ev is None:
                continue
            if ev.op in STREAM_OPS:
                sub.conn.send(protocol.render_resync(sub.sub, protocol.ResyncReason.INVALIDATED))
                sub.floor = last_ct
                sub.go_live()
                return last_token, True
            sub.emit(ev)
            if hub.has_event(ev.id):
                # The ring holds everything after this event: hand over to it.
                sub.pending = None
                hub.replay(sub, ev.id)
                return last_token, True
        return last_token, True

    def _catch_up_lost(self, sub: Subscription) -> None:
        sub.conn.send(protocol.render_resync(sub.sub, protocol.ResyncReason.HISTORY_LOST))
        sub.go_live()

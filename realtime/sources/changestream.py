"""The feed: one change stream per process, resume, retry, backoff.

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
import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from realtime.backoff import Backoff
from realtime.config import Settings
from realtime.db import ChangeStream, Database, is_transient
from realtime.errors import HistoryLost, RealtimeError
from realtime.events import STREAM_OPS, normalise
from realtime.histogram import LatencyBuckets
from realtime.hub import Hub

__all__ = ["Feed", "FeedState", "pipeline"]

log = logging.getLogger("realtime.feed")


class Stalled(RealtimeError):
    """The change stream produced neither a batch nor a heartbeat in time."""


class FeedState(StrEnum):
    """Where the feed is."""

    STARTING = "starting"
    LIVE = "live"
    RETRYING = "retrying"
    STOPPED = "stopped"


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
        self.last_event_wall: float | None = None
        #: Commit (the event's ``wallTime``) → fanned out to writable subscribers.
        self.publish_latency = LatencyBuckets()
        #: The resume token after the last published event (or post-batch token).
        self.token: Mapping[str, Any] | None = None
        #: Reads of the change stream begun (numbered from 1; see Hub.settle).
        self.polls = 0
        self._invalidated = False

    def start(self) -> None:
        """Start the watcher task."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="realtime-feed")

    async def stop(self) -> None:
        """Cancel the watcher task and wait for it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
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

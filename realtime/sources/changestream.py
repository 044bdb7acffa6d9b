"""The feed: one change stream per process, resume, retry, backoff.

The feed watches the whole database (``$match`` on the exposed collections),
normalises each event once (:func:`realtime.events.normalise`) and publishes it
to the hub. On a transient error it retries with exponential backoff and full
jitter, resuming after the last event it published, so no event is lost and
none is published twice. A lost history or an ``invalidate`` restarts it from
now and tells the affected subscriptions to ``resync``.

The feed writes to a :class:`Sink`: the hub of a serving process, or the
relay's JetStream writer (:mod:`realtime.relay`), which reuses this resume,
retry and history-loss logic to publish the stream once for every edge.

Its state is a :class:`~realtime.sources.lifecycle.Lifecycle`, whose every
change goes to the hub (:meth:`Hub.status`), which tells every connection
(``status``): ``live`` while the stream is open, ``retrying`` while it
reconnects, ``down`` once it has retried for :data:`DOWN_AFTER_SECONDS` or when
the embedded database's supervisor reports that the process exited
(:meth:`Feed.database_gone`), until the stream is open again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Mapping
from typing import Any, Final, Protocol

from realtime.backoff import Backoff
from realtime.config import Settings
from realtime.db import ChangeStream, Database, is_transient
from realtime.errors import HistoryLost, RealtimeError
from realtime.events import STREAM_OPS, Event, normalise
from realtime.histogram import LatencyBuckets
from realtime.names import IDEMPOTENCY_COLLECTION
from realtime.sources.lifecycle import DOWN_AFTER_SECONDS, FeedState, Lifecycle, WithLifecycle
from realtime.tasks import cancel_and_wait

__all__ = ["DOWN_AFTER_SECONDS", "Feed", "FeedState", "Sink", "pipeline"]

log = logging.getLogger("realtime.feed")


class Sink(Protocol):
    """Where a source's events, positions and state go (the hub, or the relay's writer).

    :meth:`publish` and :meth:`quiet` may return an awaitable, which the feed
    awaits before it reads on (the relay waits for JetStream's acknowledgement);
    the hub returns None and costs nothing more.
    """

    def publish(self, ev: Event) -> Awaitable[None] | None:
        """One change, in commit order."""

    def advance(self, token: str) -> None:
        """A new stream position without an event (a post-batch token)."""

    def quiet(self, poll: int) -> Awaitable[None] | None:
        """The feed's read number ``poll`` returned no event."""

    def resync(self, reason: str, collection: str | None = None) -> int:
        """History lost or invalidated: the subscriptions (of ``collection``) reload."""

    def status(self, feed: str) -> int:
        """The feed's state as a ``status`` message says it (``protocol.FEED_*``)."""

    def warming(self) -> None:
        """The feed starts reading recent history (the hub's ring warm-up)."""

    def warmed(self) -> None:
        """The warm-up is over."""

    @property
    def is_warming(self) -> bool:
        """True while warming."""

    @property
    def warm_events(self) -> int:
        """Events read while warming."""


class Stalled(RealtimeError):
    """The change stream produced neither a batch nor a heartbeat in time."""


class _Watchdog:
    """A deadline on each read of the stream, without a timer per read.

    ``asyncio.timeout`` around every read schedules and cancels a timer per
    event: measured in ``python -m bench ingest``, a tenth of the feed's cost
    per event. Here one timer ticks every quarter of ``limit``; a read still in
    flight ``limit`` seconds after it began cancels the pump's task, and the
    pump turns that cancellation into :class:`Stalled` (:meth:`expired`).
    A stall is noticed between ``limit`` and 1.25 x ``limit`` after the read
    began. States: idle, reading, expired (the cancellation is on its way).
    """

    __slots__ = ("_began", "_expired", "_handle", "_loop", "_reading", "_task", "limit")

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._reading = False
        self._began = 0.0
        self._expired = False
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(limit / 4, self._tick)

    def reading(self) -> None:
        """A read begins."""
        self._began = self._loop.time()
        self._reading = True

    def idle(self) -> None:
        """The read returned."""
        self._reading = False

    def expired(self) -> bool:
        """True if the pump was cancelled for a stall (its cancellation is withdrawn)."""
        if not self._expired:
            return False
        self._expired = False
        # Cancelled by someone else as well (the feed stopping): let that through.
        return self._task is None or self._task.uncancel() == 0

    def _tick(self) -> None:
        if self._reading and self._loop.time() - self._began >= self.limit:
            self._handle = None
            if self._task is not None and not self._task.done():
                self._expired = True
                self._task.cancel()
            return
        self._handle = self._loop.call_later(self.limit / 4, self._tick)

    def stop(self) -> None:
        """Cancel the timer."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def pipeline(collections: list[str] | None) -> list[dict[str, Any]]:
    """The ``$match`` stage of the feed's change stream."""
    ops = ["insert", "update", "replace", "delete", "drop", "rename", "dropDatabase",
           "invalidate"]
    match: dict[str, Any] = {"operationType": {"$in": ops}}
    if collections is None:  # everything but the service's own idempotency records
        match = {"$and": [match, {"ns.coll": {"$ne": IDEMPOTENCY_COLLECTION}}]}
    else:
        match = {"$and": [match, {"$or": [{"ns.coll": {"$in": list(collections)}},
                                          {"operationType": {"$in": ["dropDatabase",
                                                                     "invalidate"]}}]}]}
    return [{"$match": match}]


class Feed(WithLifecycle):
    """Watches the database and publishes every change to the hub (or another sink).

    Its state (``state``, ``live``, ``status``, ``last_error``,
    ``retrying_since``, ``wait_live``) is its :attr:`lifecycle`'s.

    ``down_after``: seconds of retrying after which the state is ``DOWN``;
    ``keep_raw``: give each event its raw change (:attr:`Event.raw`) for a sink
    that passes it on.
    """

    #: The ``source`` label of what this process ingests (``realtime_feed_events_total``).
    source: Final = "changestream"

    def __init__(self, db: Database, hub: Sink, settings: Settings, *,
                 down_after: float = DOWN_AFTER_SECONDS, keep_raw: bool = False) -> None:
        self._db = db
        self._hub = hub
        self._keep_raw = keep_raw
        self._settings = settings
        self._task: asyncio.Task[None] | None = None
        #: Why the database is known to be gone (set by its supervisor), else None.
        self._gone: str | None = None
        #: Set to cut a backoff wait short (the database is back).
        self._wake = asyncio.Event()
        self.lifecycle = Lifecycle(hub.status, down_after=down_after,
                                   on_down_after=self._retried_too_long)
        self.restarts = 0
        self.last_event_wall: float | None = None
        #: Commit (the event's ``wallTime``) → fanned out to writable subscribers.
        self.publish_latency = LatencyBuckets()
        #: The resume token after the last published event (or post-batch token).
        self.token: Mapping[str, Any] | None = None
        #: Reads of the change stream begun (numbered from 1; see Hub.settle).
        self.polls = 0
        self._invalidated = False
        #: While warming the ring: the cluster time that ends it, and its timer.
        self._warm_until: tuple[int, int] | None = None
        self._warm_timer: asyncio.TimerHandle | None = None
        #: Where the first stream starts (None: now), chosen by :meth:`_warm_start`.
        self._start_at: tuple[int, int] | None = None

    def start(self) -> None:
        """Start the watcher task."""
        self._task = asyncio.get_running_loop().create_task(self.run(), name="realtime-feed")

    async def stop(self) -> None:
        """Cancel the watcher task and wait for it."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self.lifecycle.stop()
        self._warmed("stopped")

    @property
    def lag(self) -> float | None:
        """Seconds between the last event's commit and now (None before any event)."""
        if self.last_event_wall is None:
            return None
        return max(0.0, time.time() - self.last_event_wall)

    def database_gone(self, reason: str) -> None:
        """The database process exited (its supervisor says): ``down`` until live again.

        ``reason`` is a sentence for people (it becomes :attr:`last_error`).
        """
        self._gone = reason
        self.lifecycle.down(reason)

    def database_back(self) -> None:
        """The database process runs again: retry now rather than after the backoff."""
        self._gone = None
        self._wake.set()

    def _retried_too_long(self) -> None:
        log.error("change stream still down after %.0f s of retries (%s)",
                  self.lifecycle.down_after, self.last_error)

    async def _open(self) -> ChangeStream:
        after_invalidate = self._invalidated
        return await self._db.watch(
            pipeline(self._settings.collections),
            resume_after=None if after_invalidate else self.token,
            start_after=self.token if after_invalidate else None,
            start_at_operation_time=self._start_at if self.token is None else None,
            max_await_time_ms=self._settings.feed_max_await_ms,
        )

    async def _warm_start(self) -> None:
        """Start the first stream ``ring_size`` oplog entries back, warming the ring.

        Until the stream reaches the newest entry of now (or returns an empty
        batch, or ``ring_warm_seconds`` pass), the hub only records events and
        subscriptions wait: a client resuming after a restart then replays
        from memory what was written before and while the process was down.
        """
        seconds = self._settings.ring_warm_seconds
        if seconds <= 0:
            return
        window = await self._db.oplog_window(self._settings.ring_size)
        if window is None:
            return
        self._start_at, self._warm_until = window
        self._hub.warming()
        self._warm_timer = asyncio.get_running_loop().call_later(
            seconds, self._warmed, "timed out")

    def _warmed(self, why: str) -> None:
        """End the warm-up (``why``, for the log)."""
        if self._warm_timer is not None:
            self._warm_timer.cancel()
            self._warm_timer = None
        self._start_at = self._warm_until = None
        if self._hub.is_warming:
            log.info("ring warmed with %d events (%s)", self._hub.warm_events, why)
            self._hub.warmed()

    async def run(self) -> None:
        """Watch until cancelled (what :meth:`start` runs as a task).

        Raises:
            Exception: whatever the sink raises (a relay fenced out); database
                errors are retried, never raised.
        """
        backoff = Backoff(self._settings.retry_base_seconds, self._settings.retry_cap_seconds)
        await self._warm_start()
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
        self._invalidated = False
        self._gone = None
        self._wake.clear()
        self._back_live()
        token = stream.resume_token
        if token is not None:
            self.token = token
            self._hub.advance(str(token["_data"]))

    def _back_live(self) -> None:
        if not self.lifecycle.live:
            log.info("change stream live%s", " (resumed)" if self.token else "")
        self.lifecycle.went_live()

    async def _retry(self, backoff: Backoff, exc: RealtimeError) -> None:
        delay = backoff.next_delay()
        self.restarts += 1
        if self._gone is not None:
            self.lifecycle.down(self._gone)  # it cannot come back before its process
        else:
            self.lifecycle.retrying(exc.detail)
        # The driver's exception class is for the log only (last_error is in words).
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        log.warning("change stream failed (%s: %s); retry %d in %.2f s",
                    type(cause).__name__, exc.detail, backoff.attempt, delay)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()  # the database is back: no need to wait longer
        self._wake.clear()

    def _history_lost(self, exc: BaseException) -> None:
        log.error("change stream history lost (%s); restarting from now", exc)
        self.restarts += 1
        self.token = None
        self._warmed("history lost")  # and start at now, not at the warm-up's start
        self._hub.resync("history_lost")

    async def _pump(self, stream: ChangeStream) -> None:
        # No batch and no heartbeat (an empty batch) in this long means it stalled.
        stall_after = self._settings.feed_max_await_ms / 1000 * self._settings.stall_factor
        watchdog = _Watchdog(stall_after)
        try:
            await self._pump_with(stream, watchdog)
        finally:
            watchdog.stop()

    async def _pump_with(self, stream: ChangeStream, watchdog: _Watchdog) -> None:
        hub = self._hub
        lifecycle = self.lifecycle
        while True:
            self.polls += 1
            watchdog.reading()
            try:
                raw = await stream.try_next()
            except asyncio.CancelledError:
                if watchdog.expired():
                    raise Stalled(f"the change stream sent nothing (not even a heartbeat) "
                                  f"for {watchdog.limit:.1f} s") from None
                raise
            watchdog.idle()
            if lifecycle.state is not FeedState.LIVE and self._gone is None:
                self._back_live()  # the driver resumed the stream by itself
            if raw is None:
                token = stream.resume_token
                if token is not None and token != self.token:
                    self.token = token
                    hub.advance(str(token["_data"]))
                if self._warm_until is not None:
                    self._warmed("caught up")
                pending = hub.quiet(self.polls)
                if pending is not None:
                    await pending
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
            if self._keep_raw:
                ev.raw = raw
            pending = hub.publish(ev)
            if pending is not None:
                await pending
            if self._warm_until is not None:
                if ev.ct >= self._warm_until:
                    self._warmed("reached the present")
            elif wall is not None:
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

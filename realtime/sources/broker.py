"""An edge's source: the relay's JetStream stream, consumed by interest.

With ``REALTIME_BROKER_URL`` a serving process opens no change stream. Its
:class:`BrokerSource` reads the stream the relay writes (:mod:`realtime.relay`)
through one ephemeral pull consumer whose filter is exactly the subjects its
subscriptions need (:class:`~realtime.interest.Interest`, reference-counted:
the hub tells it of every subscription added and removed), plus the system
subjects (ticks, resyncs), and publishes to the same :class:`~realtime.hub.Hub`
as the change-stream feed. When the interest changes, the consumer is
replaced by one starting right after the last message read, so a subject
newly needed is read from the position its first subscriber was told.

- **Order and gaps.** The consumer's own sequence is contiguous; a jump is a
  lost message: the consumer is replaced from the last message read (repaired
  from JetStream, counted in :attr:`BrokerSource.gaps`), never skipped.
- **Ticks** move the head and settle snapshots (:meth:`Hub.passed`): the
  relay's cluster time plays the role the feed's empty reads play.
- **Resume** (:class:`BrokerHistory`): the ring (when it holds everything the
  subscription needs since ``since``), else a replay from JetStream starting
  after the stream's position of ``since``, else (the stream no longer holds
  it) a change-stream catch-up from the database, else ``resync:
  history_lost``.
- **NATS away**: the source is ``retrying`` (then ``down``), reconnects, and
  resumes after the last message read: the same
  :class:`~realtime.sources.lifecycle.Lifecycle` as the feed's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, Final

from realtime import stream
from realtime.aggregate import AggregateSpec
from realtime.backoff import Backoff
from realtime.catchup import ChangePage, DatabaseHistory
from realtime.config import Settings
from realtime.db import decode_change, token_order, token_time
from realtime.events import STREAM_OPS, normalise
from realtime.histogram import LatencyBuckets
from realtime.hub import Hub
from realtime.interest import Interest, pattern_of
from realtime.jetstream import Broker, BrokerUnavailable, Consumer, Message, Refused
from realtime.sources.lifecycle import DOWN_AFTER_SECONDS, Lifecycle, WithLifecycle
from realtime.subscription import Cluster, Phase, Subscription
from realtime.tasks import cancel_and_wait

__all__ = ["BrokerHistory", "BrokerSource"]

log = logging.getLogger("realtime.broker")

#: Seconds a fetch waits for messages when there are none (ticks come every second).
FETCH_SECONDS: Final = 2.0
#: Seconds without any message (not even a tick) after which the consumer is replaced.
STALL_SECONDS: Final = 3 * FETCH_SECONDS


class _Restart(Exception):
    """Replace the consumer: the interest changed, or a gap was seen."""


class BrokerSource(WithLifecycle):
    """Consumes the subjects the hub's subscriptions need and publishes them to the hub.

    Its state (``state``, ``live``, ``status``, ``last_error``,
    ``retrying_since``, ``wait_live``) is its :attr:`lifecycle`'s, as the feed's.
    """

    #: The ``source`` label of what this process ingests.
    source: Final = "broker"

    def __init__(self, broker: Broker, hub: Hub, settings: Settings, *,
                 down_after: float = DOWN_AFTER_SECONDS) -> None:
        self._broker = broker
        self._hub = hub
        self._settings = settings
        self._tenant_field = settings.tenant_key
        self.interest = Interest()
        #: Per pattern: the ring number after which the ring holds all of it.
        self._covered: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.lifecycle = Lifecycle(hub.status, down_after=down_after)
        hub.watcher = self
        #: The stream sequence of the last message read (the next consumer starts after it).
        self.seq = 0
        self.restarts = 0
        #: Consumer sequence jumps seen (each repaired from JetStream).
        self.gaps = 0
        self.ticks = 0
        self.consumers = 0
        self.last_event_wall: float | None = None
        #: Events ingested per subject (the fan-in of this process).
        self.subject_events: Counter[str] = Counter()
        #: Commit (``wallTime``) → fanned out by this edge.
        self.publish_latency = LatencyBuckets()
        #: Ticks read (an edge's analogue of the feed's reads, see BrokerHistory.next_poll).
        self.polls = 0

    # -- hub watcher -----------------------------------------------------------------
    def _pattern(self, subscription: Subscription) -> str:
        owner: Any = subscription.owner
        tenant = getattr(owner, "value", None) if owner is not None else None
        return pattern_of(subscription.collection, tenant, subscription.filter,
                          self._tenant_field)

    def added(self, subscription: Subscription) -> None:
        """Count the subscription's subject; consume it from now on if it is new."""
        pattern = self._pattern(subscription)
        if self.interest.add(pattern):
            self._covered[pattern] = self._hub.ring.seq
            self._changed.set()

    def removed(self, subscription: Subscription) -> None:
        """Count the subscription's subject down; stop consuming it when nobody needs it."""
        pattern = self._pattern(subscription)
        if self.interest.remove(pattern):
            self._covered.pop(pattern, None)
            self._changed.set()

    def covers(self, subscription: Subscription, seq: int) -> bool:
        """True if this edge consumed all ``subscription`` needs after ring number ``seq``.

        A subject consumed from ring number ``start`` on is complete only after
        events the ring numbers *after* ``start``: the ring numbers no events
        the edge did not consume, so what came between the event numbered
        ``start`` and the moment the subject was added is not in it.
        """
        pattern = self._pattern(subscription)
        starts = [self._covered[p] for p in (pattern, pattern.rsplit(".", 1)[0] + ".*")
                  if p in self._covered]
        return bool(starts) and seq > min(starts)

    # -- state (a Lifecycle, as the feed's) -------------------------------------------
    def start(self) -> None:
        """Start the consumer task."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="realtime-broker")

    async def stop(self) -> None:
        """Cancel the consumer task and wait for it."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self.lifecycle.stop()

    @property
    def lag(self) -> float | None:
        """Seconds between the last event's commit and now (None before any event)."""
        if self.last_event_wall is None:
            return None
        return max(0.0, time.time() - self.last_event_wall)

    def database_gone(self, reason: str) -> None:
        """The database is not this source's: nothing to do."""

    def database_back(self) -> None:
        """The database is not this source's: nothing to do."""

    def _went_live(self) -> None:
        if not self.lifecycle.live:
            log.info("reading the stream after sequence %d", self.seq)
        self.lifecycle.went_live()

    async def _retry(self, backoff: Backoff, exc: BaseException) -> None:
        self.restarts += 1
        error = exc.detail if isinstance(exc, BrokerUnavailable | Refused) else str(exc)
        self.lifecycle.retrying(error)
        delay = backoff.next_delay()
        log.warning("reading the stream failed (%s); retry in %.2f s", error, delay)
        await asyncio.sleep(delay)

    # -- the consumer loop -----------------------------------------------------------
    async def _run(self) -> None:
        settings = self._settings
        broker = self._broker
        backoff = Backoff(settings.retry_base_seconds, settings.retry_cap_seconds)
        started = False
        while True:
            consumer: Consumer | None = None
            try:
                if not broker.opened:
                    await broker.connect()
                if not started:
                    await broker.ensure_stream()
                    await self._start_at_tail()
                    started = True
                else:
                    await self._check_retention()
                self._changed.clear()
                consumer = await broker.consumer(self.interest.filters(), self.seq + 1)
                self.consumers += 1
                self._went_live()
                backoff.reset()
                await self._read(consumer)
            except _Restart:
                pass
            except (BrokerUnavailable, Refused) as exc:
                await self._retry(backoff, exc)
            finally:
                if consumer is not None:
                    await consumer.close()

    async def _check_retention(self) -> None:
        """Resync everyone if the stream dropped messages this edge had not read yet.

        The stream keeps ``broker_max_age_seconds``; an edge that fell further
        behind (or a stream purged meanwhile) cannot tell what it missed.
        """
        first, last = await self._broker.bounds()
        if last < self.seq:  # a new stream (its store was lost): sequences start again
            log.error("the stream restarted at sequence %d (was %d); every subscription "
                      "reloads", last, self.seq)
            self._hub.resync("history_lost")
            self.seq = last
        elif first > self.seq + 1 and last >= first:
            self.gaps += 1
            log.error("the stream no longer holds sequences %d to %d; every subscription "
                      "reloads", self.seq + 1, first - 1)
            self._hub.resync("history_lost")
            self.seq = first - 1

    async def _start_at_tail(self) -> None:
        """Begin after the stream's last message, at its position (the head)."""
        first, last = await self._broker.bounds()
        self.seq = last
        if last >= first and last > 0:
            msg = await self._broker.get(last)
            token = None if msg is None else msg.headers.get(stream.TOKEN_HEADER)
            if token:
                self._hub.advance(token)

    async def _read(self, consumer: Consumer) -> None:
        """Fetch and ingest until the interest changes or a gap is seen.

        Raises:
            _Restart: replace the consumer.
            BrokerUnavailable, Refused: the server is away.
        """
        batch = self._settings.broker_batch
        changed = self._changed
        expected = 1
        heard = time.monotonic()
        while True:
            fetch = asyncio.ensure_future(consumer.fetch(batch, FETCH_SECONDS))
            waiter = asyncio.ensure_future(changed.wait())
            try:
                await asyncio.wait((fetch, waiter), return_when=asyncio.FIRST_COMPLETED)
            finally:
                await cancel_and_wait(waiter, fetch)  # raises what the fetch raised
            if fetch.cancelled():
                raise _Restart  # the interest changed while nothing came
            msgs = fetch.result()
            if not msgs:
                if not self._broker.connected:
                    raise BrokerUnavailable("the connection to NATS is lost; reconnecting")
                if time.monotonic() - heard > STALL_SECONDS:
                    raise _Restart  # not even a tick: a consumer lost with its server?
            else:
                heard = time.monotonic()
            for msg in msgs:
                if msg.cseq != expected:
                    self.gaps += 1
                    log.warning("gap in the stream: consumer sequence %d after %d; "
                                "re-reading after stream sequence %d", msg.cseq, expected - 1,
                                self.seq)
                    raise _Restart
                expected += 1
                self._ingest(msg)
                self.seq = msg.seq
            if changed.is_set():
                raise _Restart

    def _ingest(self, msg: Message) -> None:
        subject = msg.subject
        hub = self._hub
        if subject == stream.TICK_SUBJECT:
            try:
                tick = stream.decode_tick(msg.data)
            except stream.WireError as exc:
                log.error("bad tick at sequence %d: %s", msg.seq, exc)
                return
            self.ticks += 1
            self.polls += 1
            hub.advance(tick.token)
            hub.passed(tick.ct)
            return
        if subject == stream.RESYNC_SUBJECT:
            try:
                resync = stream.decode_resync(msg.data)
            except stream.WireError as exc:
                log.error("bad resync at sequence %d: %s", msg.seq, exc)
                return
            hub.resync(resync.reason, resync.collection)
            return
        try:
            raw = decode_change(msg.data)
        except ValueError as exc:
            log.error("bad change at sequence %d: %s", msg.seq, exc)
            return
        ev = normalise(raw)
        if ev is None or ev.op in STREAM_OPS:
            return
        self.subject_events[subject] += 1
        if hub.has_event(ev.id):
            return  # the same change on a moved document's former tenant's subject
        wall = raw.get("wallTime")
        self.last_event_wall = wall.timestamp() if wall is not None else time.time()
        hub.publish(ev)
        if wall is not None:
            self.publish_latency.observe(time.time() - self.last_event_wall)

    # -- resume ----------------------------------------------------------------------
    async def locate(self, since: str) -> int | None:
        """The stream sequence of the first message after position ``since``.

        None when the stream may not hold every change after ``since`` (its
        first message is already after it): the caller reads the database.

        Raises:
            BrokerUnavailable, Refused: the stream cannot be read.
        """
        broker = self._broker
        first, last = await broker.bounds()
        after = token_order(since)

        async def key(seq: int) -> tuple[int, int, int, str] | None:
            msg = await broker.get(seq)
            token = None if msg is None else msg.headers.get(stream.TOKEN_HEADER)
            return None if not token else token_order(token)

        if last < first or last == 0:
            return None
        head = await key(first)
        if head is None or head > after:
            return None
        lo, hi = first, last + 1  # the first seq whose token sorts after `since`
        while lo < hi:
            mid = (lo + hi) // 2
            at = await key(mid)
            if at is not None and at > after:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def pattern(self, subscription: Subscription) -> str:
        """The subject pattern ``subscription`` needs."""
        return self._pattern(subscription)

    @property
    def broker(self) -> Broker:
        """The NATS connection."""
        return self._broker

    def status_checks(self) -> Mapping[str, Any]:
        """Facts for ``/readyz``."""
        return {**self._broker.status(), "seq": self.seq, "gaps": self.gaps,
                "subjects": self.interest.patterns()}


class BrokerHistory:
    """An edge's :class:`~realtime.hub.History`: snapshots from the database, resume from JetStream.

    Replays run one task per resuming subscription, at most
    ``catchup_concurrency`` at once; each is awaited by :meth:`stop`.
    """

    def __init__(self, source: BrokerSource, database: DatabaseHistory, hub: Hub,
                 settings: Settings) -> None:
        self._source = source
        self._database = database
        self._hub = hub
        self._settings = settings
        self._slots = asyncio.Semaphore(settings.catchup_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        #: Resumes served by a JetStream replay, and by the database.
        self.replays = 0
        self.catchups = 0

    @property
    def ring_catchups(self) -> int:
        """Resumes replayed from the ring, paced (by the database history's ring walker)."""
        return self._database.ring_catchups

    async def snapshot(self, collection: str, filter: Mapping[str, Any],
                       limit: int) -> tuple[list[dict[str, Any]], Cluster | None]:
        """The database's snapshot (see :meth:`DatabaseHistory.snapshot`).

        Raises:
            DatabaseUnavailable: the database cannot be reached.
        """
        return await self._database.snapshot(collection, filter, limit)

    async def aggregate(self, collection: str, filter: Mapping[str, Any], spec: AggregateSpec,
                        max_groups: int) -> tuple[list[dict[str, Any]], Cluster | None]:
        """The database's aggregate (see :meth:`DatabaseHistory.aggregate`).

        Raises:
            RealtimeError: the read failed.
        """
        return await self._database.aggregate(collection, filter, spec, max_groups)

    def replay_from(self, subscription: Subscription, when: dt.datetime) -> None:
        """Replay the oplog from ``when`` (the database's, as in the single-process mode)."""
        self._database.replay_from(subscription, when)

    async def page(self, viewer: Subscription, *, since: str | None = None,
                   when: dt.datetime | None = None, limit: int = 100) -> ChangePage:
        """The REST changes feed, read from the database's oplog.

        Raises:
            RealtimeError: as :meth:`DatabaseHistory.page`.
        """
        return await self._database.page(viewer, since=since, when=when, limit=limit)

    def next_poll(self) -> int:
        """Two ticks from now: a tick read then was made after the snapshot's read began."""
        return self._source.polls + 2

    def catch_up(self, subscription: Subscription, since: str) -> None:
        """Replay after ``since`` from the ring (paced), JetStream or the database, then live."""
        seq = self._hub.since_seq(since)
        if seq is not None and self._hub.covers(subscription, seq):
            self._database.catch_up(subscription, since)  # the ring, paced to the socket
            return
        task = asyncio.get_running_loop().create_task(
            self._replay(subscription, since), name="realtime-replay")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def join(self) -> None:
        """Wait for every replay begun so far (and the database's catch-ups)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._database.join()

    async def stop(self) -> None:
        """Cancel every replay and wait for them."""
        await cancel_and_wait(*self._tasks)
        await self._database.stop()

    async def _replay(self, subscription: Subscription, since: str) -> None:
        source = self._source
        async with self._slots:
            if subscription.phase is not Phase.CATCHING_UP:
                return
            try:
                start = await source.locate(since)
            except (BrokerUnavailable, Refused) as exc:
                log.warning("cannot replay from JetStream (%s); reading the database", exc)
                start = None
            if start is None:
                self.catchups += 1
                self._database.catch_up(subscription, since)
                return
            self.replays += 1
            floor = token_time(since)
            try:
                floor = await self._replay_from(subscription, start, floor)
            except (BrokerUnavailable, Refused) as exc:
                log.warning("JetStream replay failed (%s); reading the database", exc)
                self.catchups += 1
                self._database.catch_up(subscription, since)
                return
            subscription.go_live(floor=floor)

    async def _replay_from(self, subscription: Subscription, start: int,
                           floor: Cluster | None) -> Cluster | None:
        """Replay the subscription's subject from ``start`` to the stream's end.

        Returns the cluster time of the last change replayed (``floor`` if none).

        Raises:
            BrokerUnavailable, Refused: the stream cannot be read.
        """
        broker = self._source.broker
        pattern = self._source.pattern(subscription)
        seq = start - 1
        while subscription.phase is Phase.CATCHING_UP:
            consumer = await broker.consumer([pattern], seq + 1)
            try:
                expected = 1
                while subscription.phase is Phase.CATCHING_UP:
                    msgs = await consumer.fetch(self._settings.broker_batch, 0.5)
                    if not msgs:
                        return floor  # the end of the stream
                    for msg in msgs:
                        if msg.cseq != expected:
                            raise _Restart
                        expected += 1
                        seq = msg.seq
                        try:
                            ev = normalise(decode_change(msg.data))
                        except ValueError:
                            continue
                        if ev is None or ev.op in STREAM_OPS:
                            continue
                        subscription.replay(ev)
                        floor = ev.ct
                    if msgs[-1].pending == 0:
                        return floor
            except _Restart:
                self._source.gaps += 1
            finally:
                await consumer.close()
        return floor

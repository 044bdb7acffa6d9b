"""``realtime relay``: the change stream published once into NATS JetStream.

The relay reads the database's change stream with the same
:class:`~realtime.sources.changestream.Feed` a serving process uses (resume
after the last event, retry with backoff, history loss, stall watchdog) and
writes through a :class:`StreamWriter`, its :class:`~realtime.sources.
changestream.Sink`: every change goes, once and in commit order, to the subject
``rt.<collection>.<tenant>`` (:mod:`realtime.stream`) with its event id as
message id and the raw change as BSON; an idle relay appends a tick every
``relay_tick_seconds`` (post-batch token and cluster time), and a lost history
or an invalidation becomes a ``rt._sys.resync`` message.

Run two (or more) for failover. Each publish is fenced on the stream's last
sequence, so only one relay appends; a standby takes over when the stream has
not moved for ``relay_takeover_seconds`` (:mod:`realtime.fencing`). Whoever
takes over, or a relay that restarts, resumes the change stream from the
token of the stream's last message: nothing lost, nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from realtime import stream
from realtime.backoff import Backoff
from realtime.config import Settings
from realtime.db import Database, encode_change, token_time
from realtime.errors import RealtimeError
from realtime.events import Event
from realtime.fencing import WRONG_LAST_SEQUENCE, Fence, Fenced, Role, Takeover, landed
from realtime.histogram import LatencyBuckets
from realtime.jetstream import Broker, BrokerUnavailable, Refused
from realtime.sources.changestream import Feed
from realtime.tasks import cancel_and_wait

__all__ = ["FencedOut", "Relay", "StreamWriter", "Tail", "read_tail", "run_relay"]

log = logging.getLogger("realtime.relay")

#: How often a standby looks at the stream's last sequence, at most.
WATCH_SECONDS: Final = 0.25

#: Publishes in flight (sent, not acknowledged yet) at most.
WINDOW: Final = 256

#: Relay lag buckets (commit → acknowledged by JetStream), seconds.
LAG_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                      10.0, 30.0)


class FencedOut(Exception):
    """Another relay appended: this one steps down (raised through the feed)."""

    def __init__(self, fenced: Fenced) -> None:
        super().__init__(f"another relay appended at sequence {fenced.seq}")
        self.fenced = fenced


@dataclass(frozen=True, slots=True)
class Tail:
    """The stream's last message: where a relay resumes."""

    seq: int
    msg_id: str | None
    token: str | None


async def read_tail(broker: Broker) -> Tail:
    """The stream's last sequence, message id and resume token.

    Raises:
        BrokerUnavailable, Refused: the stream cannot be read.
    """
    first, last = await broker.bounds()
    if last == 0 or last < first:
        return Tail(last, None, None)
    msg = await broker.get(last)
    if msg is None:
        return Tail(last, None, None)
    return Tail(last, msg.headers.get(stream.MSG_ID_HEADER), msg.headers.get(stream.TOKEN_HEADER))


@dataclass(slots=True, eq=False)
class _Publish:
    """One message sent (or to send again) and not acknowledged yet."""

    subject: str
    data: bytes
    msg_id: str
    token: str
    #: The change's commit time (Unix seconds) for the lag histogram; None for ticks.
    wall: float | None = None
    #: Counts as a published change once acknowledged.
    change: bool = False
    #: Counted (published, lag) already.
    counted: bool = False
    future: asyncio.Future[Any] | None = None


class StreamWriter:
    """The relay's sink: fenced publishes in commit order, pipelined up to :data:`WINDOW`.

    Each publish expects the sequence of the one before it, so they can be sent
    without waiting for each acknowledgement: if one fails, every later one
    fails too, and :meth:`_recover` reads the stream's tail to tell how many
    landed (:func:`realtime.fencing.landed`) and sends the rest again, or steps
    down when another relay appended. The pipeline is drained at the end of
    every batch of the change stream (:meth:`quiet`) and whenever it is full.
    """

    def __init__(self, broker: Broker, settings: Settings, fence: Fence, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._broker = broker
        self._settings = settings
        self._fence = fence
        self._clock = clock
        self._wall = wall
        self._instance = uuid.uuid4().hex[:12]
        self._tenant_field = settings.tenant_key
        self._inflight: deque[_Publish] = deque()
        #: Queued in ``_inflight`` but not sent (resyncs, or after a failure).
        self._unsent = 0
        self._last_append = clock()
        self._ticks = 0
        #: The stream position (last event id or post-batch token).
        self.position: str | None = None
        self.last_ct: tuple[int, int] = (0, 0)
        self.published = 0
        self.ticks = 0
        self.resyncs = 0
        self.retries = 0
        #: Commit (``wallTime``) → acknowledged by JetStream.
        self.lag = LatencyBuckets(LAG_BUCKETS)
        self.feed_status: str | None = None

    # -- Sink ----------------------------------------------------------------------
    def publish(self, ev: Event) -> Awaitable[None]:
        """Send ``ev`` (the feed awaits only while the pipeline is full)."""
        return self._change(ev)

    def advance(self, token: str) -> None:
        """Note the post-batch token (the next tick carries it)."""
        self.position = token

    def quiet(self, poll: int) -> Awaitable[None] | None:
        """An empty read: wait for the acknowledgements, then append a tick if one is due."""
        if self._inflight or self._clock() - self._last_append >= self._settings.relay_tick_seconds:
            return self._idle()
        return None

    def resync(self, reason: str, collection: str | None = None) -> int:
        """Send a ``resync`` for the edges, in order with the changes."""
        payload = stream.encode_resync(stream.Resync(reason, collection))
        self._ticks += 1
        self._inflight.append(_Publish(stream.RESYNC_SUBJECT, payload,
                                       f"r.{self._instance}.{self._ticks}", self.position or ""))
        self._unsent += 1
        self.resyncs += 1
        return 0

    def status(self, feed: str) -> int:
        """Note the change stream's state (for logs and metrics)."""
        self.feed_status = feed
        return 0

    # A relay keeps no ring: its feed never warms one (ring_warm_seconds=0).
    def warming(self) -> None:
        """Never called (no warm-up)."""

    def warmed(self) -> None:
        """Nothing to end."""

    @property
    def is_warming(self) -> bool:
        """Never warming."""
        return False

    @property
    def warm_events(self) -> int:
        """None read."""
        return 0

    # -- appends -------------------------------------------------------------------
    async def _change(self, ev: Event) -> None:
        raw = ev.raw
        if raw is None:
            raise ValueError("the relay's feed must keep raw events")
        data = encode_change(raw)
        subjects = stream.subjects_of_change(ev.collection, ev.document, ev.before,
                                             self._tenant_field)
        wall = raw.get("wallTime")
        commit = wall.timestamp() if wall is not None else None
        for i, subject in enumerate(subjects):
            await self._push(_Publish(subject, data, ev.id if i == 0 else f"{ev.id}~{i}", ev.id,
                                      commit, change=i == 0))
        self.position = ev.id
        self.last_ct = ev.ct

    async def _idle(self) -> None:
        await self.drain()
        if self._clock() - self._last_append < self._settings.relay_tick_seconds:
            return
        position = self.position
        if position is None:
            return
        ct = token_time(position) or self.last_ct
        self._ticks += 1
        tick = stream.Tick(position, ct, self._wall())
        await self._push(_Publish(stream.TICK_SUBJECT, stream.encode_tick(tick),
                                  f"t.{self._instance}.{self._ticks}", position))
        await self.drain()
        self.ticks += 1

    async def _push(self, item: _Publish) -> None:
        inflight = self._inflight
        while len(inflight) >= WINDOW:
            await self._settle_oldest()
        if self._unsent:
            await self._send_pending()  # resyncs queued meanwhile go first
        inflight.append(item)
        await self._send(item, self._fence.seq + len(inflight) - 1)

    async def _send(self, item: _Publish, expected: int) -> None:
        try:
            item.future = await self._broker.send(
                item.subject, item.data, stream.headers(item.msg_id, item.token, expected))
        except BrokerUnavailable:
            item.future = None  # sent again by the recovery
            self._unsent += 1
            return
        if item.change:
            item.future.add_done_callback(lambda future: self._acked(item, future))

    def _acked(self, item: _Publish, future: asyncio.Future[Any]) -> None:
        """Count a change as soon as JetStream acknowledges it (before the pipeline drains)."""
        if not future.cancelled() and future.exception() is None:
            self._count(item)

    def _count(self, item: _Publish) -> None:
        if item.counted or not item.change:
            return
        item.counted = True
        self.published += 1
        if item.wall is not None:
            self.lag.observe(max(0.0, self._wall() - item.wall))

    async def _send_pending(self) -> None:
        """Send what is queued but not sent (resyncs), in order."""
        self._unsent = 0
        for index, item in enumerate(self._inflight):
            if item.future is None:
                await self._send(item, self._fence.seq + index)

    async def drain(self) -> None:
        """Wait until everything sent is acknowledged.

        Raises:
            FencedOut: another relay appended (this one must step down).
        """
        if self._unsent:
            await self._send_pending()
        while self._inflight:
            await self._settle_oldest()

    async def _settle_oldest(self) -> None:
        item = self._inflight[0]
        future = item.future
        try:
            if future is None:
                raise BrokerUnavailable("not sent")
            seq = self._broker.ack_of(future) if future.done() else \
                await self._broker.acked(future)
        except (BrokerUnavailable, Refused) as exc:
            await self._recover(exc)
            return
        self._inflight.popleft()
        self._landed(item, seq)

    def _landed(self, item: _Publish, seq: int) -> None:
        self._fence.appended(seq)
        self._last_append = self._clock()
        self._count(item)

    async def _recover(self, exc: RealtimeError) -> None:
        """After a failed publish: count what landed, send the rest again (or step down).

        Raises:
            FencedOut: another relay appended since.
        """
        self.retries += 1
        inflight = self._inflight
        for item in inflight:  # every later publish fails too: forget their futures
            future, item.future = item.future, None
            if future is not None and not future.done():
                future.cancel()
            elif future is not None and not future.cancelled():
                future.exception()  # retrieved: never "exception was never retrieved"
        backoff = Backoff(self._settings.retry_base_seconds, self._settings.retry_cap_seconds)
        if isinstance(exc, Refused) and exc.code != WRONG_LAST_SEQUENCE:
            log.error("JetStream refused a publish: %s; retrying", exc.detail)
            await asyncio.sleep(backoff.next_delay())
        elif isinstance(exc, BrokerUnavailable):
            log.warning("publish to NATS failed (%s); resuming after the stream's tail",
                        exc.detail)
        while True:
            try:
                tail = await read_tail(self._broker)
                break
            except (BrokerUnavailable, Refused) as err:
                delay = backoff.next_delay()
                log.debug("cannot read the stream's tail (%s); retry in %.2f s", err, delay)
                await asyncio.sleep(delay)
        count = landed(self._fence.seq, [i.msg_id for i in inflight], tail.seq, tail.msg_id)
        if isinstance(count, Fenced):
            raise FencedOut(count)
        for _ in range(count):
            self._landed(inflight.popleft(), self._fence.seq + 1)
        await self._send_pending()


class Relay:
    """One relay process: standby until the stream goes quiet, then active until fenced."""

    def __init__(self, settings: Settings, db: Database, broker: Broker, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._db = db
        self._broker = broker
        self._clock = clock
        self.role = Role.STANDBY
        self.takeovers = 0
        self.fenced = 0
        #: The writer of the current (or last) active term, for metrics.
        self.writer: StreamWriter | None = None
        self.feed: Feed | None = None
        self._active = asyncio.Event()
        #: Set once NATS answered and the stream exists.
        self.connected = asyncio.Event()
        self._published_before = 0
        self._ticks_before = 0

    @property
    def published(self) -> int:
        """Changes appended by this process, over all its active terms."""
        return self._published_before + (self.writer.published if self.writer else 0)

    @property
    def ticks(self) -> int:
        """Ticks appended by this process."""
        return self._ticks_before + (self.writer.ticks if self.writer else 0)

    @property
    def lag(self) -> LatencyBuckets:
        """Commit → acknowledged by JetStream, over the current active term."""
        return self.writer.lag if self.writer is not None else LatencyBuckets(LAG_BUCKETS)

    async def wait_active(self, timeout: float) -> None:
        """Wait until this relay appends (raises TimeoutError)."""
        await asyncio.wait_for(self._active.wait(), timeout)

    async def run(self) -> None:
        """Connect, then alternate between standby and active until cancelled."""
        await self._connect()
        self.connected.set()
        takeover = Takeover(self._settings.relay_takeover_seconds)
        while True:
            tail = await self._watch(takeover)
            await self._active_term(tail)
            takeover.reset()

    async def _connect(self) -> None:
        backoff = Backoff(self._settings.retry_base_seconds, self._settings.retry_cap_seconds)
        while True:
            try:
                if not self._broker.opened:
                    await self._broker.connect()
                await self._broker.ensure_stream()
                return
            except (BrokerUnavailable, Refused) as exc:
                delay = backoff.next_delay()
                log.warning("NATS not ready (%s); retry in %.2f s", exc.detail, delay)
                await asyncio.sleep(delay)

    async def _watch(self, takeover: Takeover) -> Tail:
        """Standby: return the stream's tail once the stream has stopped moving."""
        self.role = Role.STANDBY
        self._active.clear()
        step = min(WATCH_SECONDS, self._settings.relay_takeover_seconds / 4)
        while True:
            try:
                tail = await read_tail(self._broker)
            except (BrokerUnavailable, Refused) as exc:
                log.debug("cannot read the stream's tail: %s", exc)
                takeover.reset()  # nobody can append meanwhile: watch afresh when it is back
                await asyncio.sleep(step)
                continue
            if tail.seq == 0 or takeover.due(tail.seq, self._clock()):
                return tail
            await asyncio.sleep(step)

    async def _active_term(self, tail: Tail) -> None:
        settings = self._settings
        writer = StreamWriter(self._broker, settings, Fence(tail.seq))
        writer.position = tail.token
        if self.writer is not None:
            self._published_before += self.writer.published
            self._ticks_before += self.writer.ticks
        self.writer = writer
        # No ring warm-up: the relay resumes from the stream's tail, never from the past.
        feed = self.feed = Feed(self._db, writer,
                                settings.model_copy(update={"ring_warm_seconds": 0.0}),
                                keep_raw=True)
        if tail.token:
            feed.token = {"_data": tail.token}
        self.role = Role.ACTIVE
        self.takeovers += 1
        self._active.set()
        log.info("relay active: appending after sequence %d", tail.seq)
        try:
            await feed.run()
        except FencedOut as exc:
            self.fenced += 1
            log.warning("relay standing by: %s", exc)
        finally:
            self._active.clear()
            with contextlib.suppress(Exception):
                await feed.stop()


async def run_relay(settings: Settings, *, ready: Callable[[Relay], None] | None = None) -> None:
    """Run one relay until cancelled: its database client, NATS connection and terms.

    ``ready`` is called once NATS answered (e.g. to serve metrics and notify
    systemd). Everything is closed on the way out.
    """
    if settings.mongodb_uri is None or settings.broker_url is None:
        raise ValueError("a relay needs REALTIME_MONGODB_URI and REALTIME_BROKER_URL")
    db = Database(settings, settings.mongodb_uri)
    broker = Broker(settings.broker_url, settings.broker_stream, name="realtime-relay",
                    replicas=settings.broker_replicas, max_age=settings.broker_max_age_seconds)
    relay = Relay(settings, db, broker)
    task = asyncio.get_running_loop().create_task(relay.run(), name="realtime-relay")
    try:
        if ready is not None:
            connected = asyncio.ensure_future(relay.connected.wait())
            await asyncio.wait((task, connected), return_when=asyncio.FIRST_COMPLETED)
            connected.cancel()
            if relay.connected.is_set():
                ready(relay)
        await task
    finally:
        await cancel_and_wait(task)
        relay.role = Role.STOPPED
        await broker.close()
        await db.close()

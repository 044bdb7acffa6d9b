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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from realtime import stream
from realtime.backoff import Backoff
from realtime.config import Settings
from realtime.db import Database, encode_change, token_time
from realtime.events import Event
from realtime.fencing import (
    WRONG_LAST_SEQUENCE,
    Appended,
    Fence,
    Fenced,
    Role,
    Takeover,
    after_refusal,
)
from realtime.histogram import LatencyBuckets
from realtime.jetstream import Broker, BrokerUnavailable, Refused
from realtime.sources.changestream import Feed

__all__ = ["FencedOut", "Relay", "StreamWriter", "Tail", "read_tail", "run_relay"]

log = logging.getLogger("realtime.relay")

#: How often a standby looks at the stream's last sequence, at most.
WATCH_SECONDS: Final = 0.25

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


class StreamWriter:
    """The relay's sink: fenced, acknowledged publishes in commit order."""

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
        self._resyncs: list[stream.Resync] = []
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
        """Append ``ev`` (after any pending resync); the feed awaits it."""
        return self._change(ev)

    def advance(self, token: str) -> None:
        """Note the post-batch token (the next tick carries it)."""
        self.position = token

    def quiet(self, poll: int) -> Awaitable[None] | None:
        """An empty read: append the pending resyncs, and a tick if one is due."""
        if self._resyncs or self._clock() - self._last_append >= self._settings.relay_tick_seconds:
            return self._idle()
        return None

    def resync(self, reason: str, collection: str | None = None) -> int:
        """Queue a ``resync`` for the edges (appended before anything else)."""
        self._resyncs.append(stream.Resync(reason, collection))
        return 0

    def status(self, feed: str) -> int:
        """Note the change stream's state (for logs and metrics)."""
        self.feed_status = feed
        return 0

    # -- appends -------------------------------------------------------------------
    async def _change(self, ev: Event) -> None:
        await self._flush_resyncs()
        raw = ev.raw
        if raw is None:
            raise ValueError("the relay's feed must keep raw events")
        data = encode_change(raw)
        subjects = stream.subjects_of_change(ev.collection, ev.document, ev.before,
                                             self._tenant_field)
        for i, subject in enumerate(subjects):
            msg_id = ev.id if i == 0 else f"{ev.id}~{i}"
            await self._append(subject, data, msg_id, ev.id)
        self.position = ev.id
        self.last_ct = ev.ct
        self.published += 1
        wall = raw.get("wallTime")
        if wall is not None:
            self.lag.observe(max(0.0, self._wall() - wall.timestamp()))

    async def _idle(self) -> None:
        await self._flush_resyncs()
        if self._clock() - self._last_append < self._settings.relay_tick_seconds:
            return
        position = self.position
        if position is None:
            return
        ct = token_time(position) or self.last_ct
        self._ticks += 1
        tick = stream.Tick(position, ct, self._wall())
        await self._append(stream.TICK_SUBJECT, stream.encode_tick(tick),
                           f"t.{self._instance}.{self._ticks}", position)
        self.ticks += 1

    async def _flush_resyncs(self) -> None:
        while self._resyncs:
            resync = self._resyncs[0]
            self._ticks += 1
            await self._append(stream.RESYNC_SUBJECT, stream.encode_resync(resync),
                               f"r.{self._instance}.{self._ticks}", self.position or "")
            self._resyncs.pop(0)
            self.resyncs += 1

    async def _append(self, subject: str, data: bytes, msg_id: str, token: str) -> None:
        """Publish fenced on the last sequence; retry while NATS is away.

        Raises:
            FencedOut: another relay appended since (this one must step down).
        """
        backoff = Backoff(self._settings.retry_base_seconds, self._settings.retry_cap_seconds)
        broker, fence = self._broker, self._fence
        while True:
            try:
                seq = await broker.publish(subject, data, stream.headers(msg_id, token, fence.seq))
            except Refused as exc:
                if exc.code != WRONG_LAST_SEQUENCE:
                    log.error("JetStream refused a publish to %s: %s; retrying", subject, exc)
                    self.retries += 1
                    await asyncio.sleep(backoff.next_delay())
                    continue
                try:
                    tail = await read_tail(broker)
                except (BrokerUnavailable, Refused):
                    await asyncio.sleep(backoff.next_delay())
                    continue
                decision = after_refusal(msg_id, tail.seq, tail.msg_id)
                if isinstance(decision, Appended):
                    seq = decision.seq  # an earlier attempt landed; its ack was lost
                else:
                    raise FencedOut(decision) from None
            except BrokerUnavailable as exc:
                self.retries += 1
                delay = backoff.next_delay()
                log.warning("publish to NATS failed (%s); retry in %.2f s", exc.detail, delay)
                await asyncio.sleep(delay)
                continue
            fence.appended(seq)
            self._last_append = self._clock()
            return


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
        feed = self.feed = Feed(self._db, writer, settings, keep_raw=True)
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
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        relay.role = Role.STOPPED
        await broker.close()
        await db.close()

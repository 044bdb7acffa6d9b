"""Reading the past from the database: snapshots, and catch-up beyond the ring.

:class:`DatabaseHistory` is the hub's :class:`~realtime.hub.History`. A
snapshot is one majority read that reports the cluster time it finished at.

A catch-up replays every change after a client's ``since`` to a CATCHING_UP
subscription, then hands over to live, paced to the client's socket: a
replay comes out of memory or the oplog far faster than sockets take it, so
it waits while a member's backlog is over half its bound rather than close
it as a slow consumer.

**From the ring** when the ring still holds ``since`` (the feed warms it
from the oplog at start-up, so this is also the common case after a
restart): one task walks every such subscription's cursor through the ring
a chunk at a time, round-robin, and hands each over to live
(:meth:`Subscription.hand_over`) once it reaches the ring's end, with no
await in between, so nothing published meanwhile is lost or sent twice. A
cursor the ring leaves behind (it was too slow) goes on from the oplog.

**From the oplog** otherwise. Catch-ups are **shared**: one reader
(a change stream on one collection) at a time per collection, started from
the oldest ``since`` waiting for that collection, hands every event to each
of its members whose ``since`` is before the event (positions compare in
stream order, :func:`realtime.db.token_order`), so 2,000 clients resuming from
the same point cost one stream, not 2,000. A subscription that
arrives while its collection's reader runs joins it when its ``since`` is at
or after what the reader has read (it skips events up to its own ``since``);
otherwise it waits for the next reader, which starts from the oldest waiting
position once the running one ends. A member leaves the reader at an event
the ring holds (the ring replays the rest, as above), or when the reader has
caught up with the present (:meth:`Subscription.go_live` skips the held
events the reader already sent, by cluster time). At most
``catchup_concurrency`` readers run at once; others wait.

Before a reader starts, each member's ``since`` is checked against the oldest
oplog entry (servers that prune lazily resume silently from a pruned token):
that query is made at most once per :data:`HORIZON_WINDOW_SECONDS` and shared
by every caller (:class:`OplogHorizon`). Every task is awaited by
:meth:`DatabaseHistory.stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from realtime import protocol, query
from realtime.backoff import Backoff
from realtime.config import Settings
from realtime.db import ChangeStream, Database, is_transient, token_order, token_time
from realtime.errors import HistoryLost, RealtimeError
from realtime.events import STREAM_OPS, cluster_time, normalise
from realtime.hub import Hub
from realtime.subscription import Cluster, Phase, Subscription

__all__ = ["HORIZON_WINDOW_SECONDS", "RING_CHUNK", "DatabaseHistory", "OplogHorizon",
           "collection_pipeline"]

log = logging.getLogger("realtime.catchup")

#: How long the oldest oplog entry's time, once read, is reused.
HORIZON_WINDOW_SECONDS: Final = 1.0

#: How long a reader waits, at most, for a congested member to drain; and how often
#: it looks.
PACE_SECONDS: Final = 5.0
PACE_STEP_SECONDS: Final = 0.005

#: Events a ring catch-up examines for one subscription per turn of the loop.
RING_CHUNK: Final = 256

Position = tuple[int, int, int, str]


def collection_pipeline(collection: str) -> list[dict[str, Any]]:
    """The ``$match`` stage of a catch-up stream for one collection."""
    return [{"$match": {"ns.coll": collection,
                        "operationType": {"$in": ["insert", "update", "replace", "delete",
                                                  "drop", "rename", "invalidate"]}}}]


class OplogHorizon:
    """The cluster time of the oldest oplog entry, read at most once per ``window``.

    Concurrent callers share one query; its answer is reused for ``window``
    seconds of ``clock``.
    """

    def __init__(self, read: Callable[[], Awaitable[Cluster | None]], *,
                 window: float = HORIZON_WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._window = window
        self._clock = clock
        self._value: Cluster | None = None
        self._at: float | None = None
        self._pending: asyncio.Future[Cluster | None] | None = None
        #: Queries made, since start.
        self.reads = 0

    async def oldest(self) -> Cluster | None:
        """The oldest oplog entry's cluster time (None when it cannot be read)."""
        if self._at is not None and self._clock() - self._at < self._window:
            return self._value
        pending = self._pending
        if pending is None:
            pending = self._pending = asyncio.get_running_loop().create_future()
            self.reads += 1
            try:
                value = await self._read()
            except BaseException:
                self._pending = None
                pending.set_result(None)  # the others cannot tell either
                raise
            self._value, self._at, self._pending = value, self._clock(), None
            pending.set_result(value)
            return value
        return await asyncio.shield(pending)

    async def lost(self, since: str) -> bool:
        """True if the oplog no longer holds ``since`` (False when it cannot tell)."""
        when = token_time(since)
        if when is None:
            return False
        oldest = await self.oldest()
        return oldest is not None and when < oldest


@dataclass(slots=True, eq=False)
class _Member:
    """A subscription in a shared catch-up, and the position it resumes after."""

    sub: Subscription
    since: str
    after: Position
    #: True once the reader passed ``since``: events go to it from then on.
    active: bool = False


@dataclass(slots=True, eq=False)
class _Cursor:
    """A subscription replayed from the ring: the last event it has, by number and id."""

    sub: Subscription
    seq: int
    last: str


def _congested(sub: Subscription) -> bool:
    """True while ``sub``'s connection holds over half the backlog it may."""
    conn = sub.conn
    return conn.backlog * 2 > conn.max_backlog


@dataclass(slots=True, eq=False)
class _Reader:
    """One collection's catch-up stream and the subscriptions it replays to."""

    collection: str
    members: list[_Member] = field(default_factory=list)
    #: The last position read (None: not started yet, every waiting one may join).
    read: Position | None = None
    #: Where a retry resumes; the cluster time of the last event read.
    token: str = ""
    ct: Cluster | None = None


class DatabaseHistory:
    """Snapshots and shared catch-ups read from the database, for the hub."""

    def __init__(self, db: Database, hub: Hub, settings: Settings,
                 polls: Callable[[], int], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``polls`` tells how many reads of its stream the feed has begun."""
        self._db = db
        self._hub = hub
        self._settings = settings
        self._polls = polls
        self._slots = asyncio.Semaphore(settings.catchup_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        #: Per collection: subscriptions waiting for the next reader.
        self._waiting: dict[str, list[_Member]] = {}
        #: Per collection: the reader running (or waiting for a slot).
        self._readers: dict[str, _Reader] = {}
        #: Subscriptions replayed from the ring, and the task that walks them.
        self._cursors: list[_Cursor] = []
        self._walker: asyncio.Task[None] | None = None
        self.horizon = OplogHorizon(db.oldest_oplog_time, clock=clock)
        #: Catch-ups begun from the oplog and from the ring (subscriptions), and
        #: oplog readers opened, since start.
        self.catchups = 0
        self.ring_catchups = 0
        self.readers = 0

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
        seq = self._hub.since_seq(since)
        if seq is not None and self._hub.covers(subscription, seq):
            self.ring_catchups += 1
            self._from_ring(subscription, seq, since)
        else:
            self.catchups += 1
            self._from_oplog(subscription, since)

    def _from_ring(self, subscription: Subscription, seq: int, last: str) -> None:
        self._cursors.append(_Cursor(subscription, seq, last))
        if self._walker is None:
            task = self._walker = asyncio.get_running_loop().create_task(
                self._walk(), name="realtime-catchup-ring")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _walk(self) -> None:
        """Replay the ring to every cursor, a chunk at a time, round-robin, until all are live.

        Each chunk is followed by a turn of the loop, so the feed and the
        sockets run between chunks however many clients replay at once.
        """
        ring = self._hub.ring
        catching_up = Phase.CATCHING_UP
        try:
            while self._cursors:
                moved = False
                for cursor in list(self._cursors):
                    sub = cursor.sub
                    if sub.phase is not catching_up:
                        self._cursors.remove(cursor)
                        continue
                    if _congested(sub):
                        continue
                    events = ring.after(cursor.seq, RING_CHUNK)
                    if events is None:  # the ring moved on without it
                        self._cursors.remove(cursor)
                        self._from_oplog(sub, cursor.last)
                        continue
                    if not events:  # every event published so far was replayed
                        self._cursors.remove(cursor)
                        sub.hand_over()
                        continue
                    collection = sub.collection
                    for ev in events:
                        if ev.collection == collection:
                            sub.replay(ev)
                    cursor.seq, cursor.last = events[-1].seq, events[-1].id
                    moved = True
                    await asyncio.sleep(0)
                if not moved:
                    await asyncio.sleep(PACE_STEP_SECONDS)
        finally:
            self._walker = None

    def _from_oplog(self, subscription: Subscription, since: str) -> None:
        member = _Member(subscription, since, token_order(since))
        collection = subscription.collection
        reader = self._readers.get(collection)
        if reader is not None and reader.read is not None and member.after >= reader.read:
            reader.members.append(member)  # nothing after its since was read yet
            return
        self._waiting.setdefault(collection, []).append(member)
        if reader is None:
            self._readers[collection] = _Reader(collection)
            task = asyncio.get_running_loop().create_task(
                self._run(collection), name=f"realtime-catchup-{collection}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def join(self) -> None:
        """Wait until every catch-up begun so far (and any joining them) has ended."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Cancel every catch-up and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, collection: str) -> None:
        """Read for ``collection`` until nobody waits: one reader after another."""
        try:
            while self._waiting.get(collection):
                async with self._slots:
                    reader = self._readers[collection] = _Reader(collection)
                    await self._read_for(reader)
                    # Joined while the reader was closing: the next reader takes them.
                    if self._prune(reader):
                        for member in reader.members:
                            member.active = False
                        self._waiting.setdefault(collection, []).extend(reader.members)
        finally:
            self._readers.pop(collection, None)
            self._waiting.pop(collection, None)

    async def _read_for(self, reader: _Reader) -> None:
        horizon = self.horizon
        # Whoever arrives while the history is checked comes along.
        while members := self._waiting.pop(reader.collection, None):
            for member in members:
                if member.sub.phase is not Phase.CATCHING_UP:
                    continue
                if await horizon.lost(member.since):
                    self._resync(member, protocol.ResyncReason.HISTORY_LOST, None)
                else:
                    reader.members.append(member)
        backoff = Backoff(self._settings.retry_base_seconds, self._settings.retry_cap_seconds)
        while self._prune(reader):
            if reader.read is None:
                first = min(reader.members, key=lambda m: m.after)
                reader.token, reader.read = first.since, first.after
            stream: ChangeStream | None = None
            try:
                stream = await self._db.watch(collection_pipeline(reader.collection),
                                              resume_after={"_data": reader.token},
                                              max_await_time_ms=100)
                self.readers += 1
                await self._replay(reader, stream)
            except RealtimeError as exc:
                if isinstance(exc, HistoryLost) or not is_transient(exc):
                    if reader.ct is None:
                        # Refused at its start: the oldest since (lost, or not a
                        # token at all) fails alone; the others go on without it.
                        for member in reader.members:
                            if member.since == reader.token:
                                self._resync(member, protocol.ResyncReason.HISTORY_LOST, None)
                        reader.read = None
                        continue
                    # The reader's own position is gone: whoever it was still
                    # replaying to reloads.
                    for member in list(reader.members):
                        self._resync(member, protocol.ResyncReason.HISTORY_LOST, None)
                    reader.members.clear()
                    return
                await asyncio.sleep(backoff.next_delay())
            finally:
                if stream is not None:
                    await stream.close()

    @staticmethod
    def _prune(reader: _Reader) -> bool:
        """Drop the members no longer catching up; True if any remain."""
        reader.members = [m for m in reader.members if m.sub.phase is Phase.CATCHING_UP]
        return bool(reader.members)

    @staticmethod
    def _resync(member: _Member, reason: str, floor: Cluster | None) -> None:
        sub = member.sub
        sub.conn.send(protocol.render_resync(sub.sub, reason))
        sub.go_live(floor=floor)

    async def _replay(self, reader: _Reader, stream: ChangeStream) -> None:
        """Replay from ``stream`` until every member is live, noting progress in ``reader``.

        Raises:
            RealtimeError: the stream failed (``reader`` says how far it got).
        """
        hub = self._hub
        catching_up = Phase.CATCHING_UP
        while reader.members:
            raw = await stream.try_next()
            if raw is None:
                # Caught up with the present: what the hub holds back is newer,
                # except events this reader already sent (same cluster time).
                for member in reader.members:
                    member.sub.go_live(floor=reader.ct)
                reader.members.clear()
                return
            token = str(raw["_id"]["_data"])
            position = token_order(token)
            reader.token, reader.read, reader.ct = token, position, cluster_time(raw)
            ev = normalise(raw)
            if ev is None:
                continue
            if ev.op in STREAM_OPS:
                self._prune(reader)
                for member in reader.members:
                    self._resync(member, protocol.ResyncReason.INVALIDATED, reader.ct)
                reader.members.clear()
                return
            seq = hub.ring.seq_of(ev.id)
            handed: list[_Member] = []
            gone = congested = False
            for member in reader.members:
                sub = member.sub
                if _congested(sub):
                    congested = True
                if sub.phase is not catching_up:
                    gone = True
                    continue
                if not member.active:
                    if position <= member.after:
                        continue  # the client has it already
                    member.active = True
                sub.replay(ev)
                if seq is not None and sub.phase is catching_up and hub.covers(sub, seq):
                    handed.append(member)  # the ring holds everything after this event
            if handed and seq is not None:
                reader.members = [m for m in reader.members if m not in handed]
                for member in handed:
                    self._from_ring(member.sub, seq, ev.id)
            if gone:
                self._prune(reader)
            if congested:
                await self._drain(reader)

    @staticmethod
    async def _drain(reader: _Reader) -> None:
        """Pace the reader to its slowest members (never past :data:`PACE_SECONDS`).

        A replay comes out of the stream far faster than sockets take it: the
        reader waits while a member's backlog is over half its bound, so a
        burst of catch-up does not close it as a slow consumer. A member that
        does not drain in time is left to the outbox's own bound (4408).
        """
        for _ in range(round(PACE_SECONDS / PACE_STEP_SECONDS)):
            if not any(_congested(m.sub)
                       for m in reader.members if m.sub.phase is Phase.CATCHING_UP):
                return
            await asyncio.sleep(PACE_STEP_SECONDS)

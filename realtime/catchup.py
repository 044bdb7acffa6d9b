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
import datetime as dt
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from realtime import protocol, query
from realtime.aggregate import AggregateSpec, pipeline
from realtime.backoff import Backoff
from realtime.config import Settings
from realtime.db import ChangeStream, Database, is_transient, token_order, token_time
from realtime.errors import BadRequest, HistoryLost, RealtimeError
from realtime.events import STREAM_OPS, cluster_time, normalise
from realtime.hub import Hub
from realtime.subscription import Cluster, Phase, Subscription
from realtime.tasks import cancel_and_wait

__all__ = [
    "HORIZON_WINDOW_SECONDS",
    "MAX_SCAN_FACTOR",
    "RING_CHUNK",
    "ChangePage",
    "DatabaseHistory",
    "OplogHorizon",
    "collection_pipeline",
    "time_position",
]

log = logging.getLogger("realtime.catchup")

#: How long the oldest oplog entry's time, once read, is reused.
HORIZON_WINDOW_SECONDS: Final = 1.0

#: How long a reader waits, at most, for a congested member to drain; and how often
#: it looks.
PACE_SECONDS: Final = 5.0
PACE_STEP_SECONDS: Final = 0.005

#: Events a ring catch-up examines for one subscription per turn of the loop.
RING_CHUNK: Final = 256

#: A page of changes reads at most this many times its ``limit`` events (the others
#: did not match its filter) before it ends, so a selective filter over a long
#: history answers in bounded time; ``next`` then continues from where it stopped.
MAX_SCAN_FACTOR: Final = 10

Position = tuple[int, int, int, str]
#: Which reader a catch-up belongs to: its collection, and whether it replays by time.
ReaderKey = tuple[str, bool]


def time_position(when: dt.datetime) -> tuple[Position, int]:
    """Where a replay from ``when`` starts: a position just before its second, and
    ``when`` in milliseconds since the epoch (events before it in that second are
    skipped by their wall time).

    Cluster times count whole seconds: the replay starts at the first event of
    ``when``'s second.
    """
    ms = math.floor(when.timestamp() * 1000)
    return (ms // 1000, 0, -1, ""), ms


def _event_position(raw: Mapping[str, Any], by_time: bool) -> Position:
    if by_time:
        seconds, inc = cluster_time(raw)
        return (seconds, inc, 0, "")
    return token_order(str(raw["_id"]["_data"]))


def _wall_ms(raw: Mapping[str, Any]) -> int | None:
    wall = raw.get("wallTime")
    if isinstance(wall, dt.datetime):
        if wall.tzinfo is None:
            wall = wall.replace(tzinfo=dt.UTC)
        return math.floor(wall.timestamp() * 1000)
    return None


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
    #: A replay from a time: the events before this wall time (ms since the
    #: epoch) within ``after``'s second are skipped too.
    wall: int | None = None


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
    """One collection's catch-up stream and the subscriptions it replays to.

    A reader either resumes after event ids (``by_time`` False: positions are
    :func:`realtime.db.token_order` keys) or replays from points in time
    (``by_time`` True: positions are cluster times, which every database's
    events carry, whatever its token format).
    """

    collection: str
    by_time: bool = False
    members: list[_Member] = field(default_factory=list)
    #: The last position read (None: not started yet, every waiting one may join).
    read: Position | None = None
    #: Where a retry resumes; the cluster time of the last event read.
    token: str = ""
    ct: Cluster | None = None


@dataclass(slots=True)
class ChangePage:
    """A page of past changes: each a ``change`` message's JSON without ``type`` and
    ``sub``, and the event id the next page continues after."""

    changes: list[str]
    next: str | None


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
        #: Per collection (and kind): subscriptions waiting for the next reader.
        self._waiting: dict[ReaderKey, list[_Member]] = {}
        #: Per collection (and kind): the reader running (or waiting for a slot).
        self._readers: dict[ReaderKey, _Reader] = {}
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

    async def page(self, viewer: Subscription, *, since: str | None = None,
                   when: dt.datetime | None = None, limit: int = 100) -> ChangePage:
        """Up to ``limit`` changes on ``viewer``'s collection after ``since`` (an event
        id) or committed at or after ``when``, as ``viewer`` would receive them live
        (its filter, its tenant, its projection): the REST changes feed.

        ``next`` is the id of the last event read (or, when none was, the stream's
        position, or ``since``): the next page starts after it. It is None when
        nothing was read from a ``when`` the stream has not reached yet (in the
        future): ask again with ``when``. A page reads at
        most :data:`MAX_SCAN_FACTOR` times ``limit`` events.

        Raises:
            HistoryLost: the oplog no longer holds ``since`` or reaches back to ``when``.
            BadRequest: the database refuses ``since`` as a resume token.
            DatabaseUnavailable: the database cannot be reached.
            ValueError: neither or both of ``since`` and ``when`` given.
        """
        if (since is None) == (when is None):
            raise ValueError("give exactly one of since and when")
        pipeline = collection_pipeline(viewer.collection)
        wall: int | None = None
        if when is not None:
            after, wall = time_position(when)
            member = _Member(viewer, "", after, wall=wall)
            if await self._lost(member):
                raise HistoryLost("the oplog no longer reaches back to since_time")
            stream = await self._db.watch(pipeline, start_at_operation_time=after[:2],
                                          max_await_time_ms=100)
        else:
            assert since is not None  # noqa: S101 - checked above
            if await self.horizon.lost(since):
                raise HistoryLost("the oplog no longer holds the event 'since' names")
            try:
                stream = await self._db.watch(pipeline, resume_after={"_data": since},
                                              max_await_time_ms=100)
            except RealtimeError as exc:
                if isinstance(exc, HistoryLost) or is_transient(exc):
                    raise
                raise BadRequest("'since' is not an event id of this database") from None
        changes: list[str] = []
        next_id = since
        try:
            for _ in range(limit * MAX_SCAN_FACTOR):
                raw = await stream.try_next()
                if raw is None:
                    position = stream.resume_token
                    if position is not None and next_id == since:
                        token = str(position["_data"])
                        at = token_time(token)
                        if when is None or (at is not None and at >= after[:2]):
                            next_id = token  # (not before a since_time in the future)
                    break
                next_id = str(raw["_id"]["_data"])
                if wall is not None:
                    wall_at = _wall_ms(raw)
                    if wall_at is not None and wall_at < wall:
                        continue
                    wall = None  # the wall clock is checked until the start is passed
                ev = normalise(raw)
                if ev is None:
                    continue
                if ev.op in STREAM_OPS:
                    changes.append(protocol.encode_stream_change(
                        op=ev.op, id=ev.id, collection=ev.collection, ts=ev.ts))
                    break  # the collection's history ends (or restarts) here
                op = viewer.decide(ev)
                body = None if op is None else viewer.body(op, ev)
                if body is None:
                    continue
                changes.append('{"op":"' + str(op) + '",' + body)
                if len(changes) >= limit:
                    break
        finally:
            await stream.close()
        return ChangePage(changes, next_id)

    async def aggregate(self, collection: str, filter: Mapping[str, Any], spec: AggregateSpec,
                        max_groups: int) -> tuple[list[dict[str, Any]], Cluster | None]:
        """The rows of ``spec``'s ``$group`` over the documents matching ``filter``
        (at most ``max_groups + 1``), and the cluster time they reflect exactly.

        Raises:
            RealtimeError: the read failed.
        """
        return await self._db.collection(collection).aggregate_at(
            pipeline(spec, query.to_mongo(dict(filter)), max_groups))

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
        self._enlist(_Member(subscription, since, token_order(since)), by_time=False)
    def replay_from(self, subscription: Subscription, when: dt.datetime) -> None:
        """Replay to ``subscription`` (CATCHING_UP) every change committed at or after
        ``when`` (an aware datetime), then live; ``resync`` (``history_lost``) if the
        oplog no longer reaches back to it."""
        after, wall = time_position(when)
        self._enlist(_Member(subscription, "", after, wall=wall), by_time=True)

    def _enlist(self, member: _Member, *, by_time: bool) -> None:
        self.catchups += 1
        key = (member.sub.collection, by_time)
        reader = self._readers.get(key)
        if reader is not None and reader.read is not None and member.after >= reader.read:
            reader.members.append(member)  # nothing after its start was read yet
            return
        self._waiting.setdefault(key, []).append(member)
        if reader is None:
            self._readers[key] = _Reader(*key)
            name = f"realtime-catchup-{key[0]}{'-by-time' if by_time else ''}"
            task = asyncio.get_running_loop().create_task(self._run(key), name=name)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def join(self) -> None:
        """Wait until every catch-up begun so far (and any joining them) has ended."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Cancel every catch-up and wait for them."""
        await cancel_and_wait(*self._tasks)

    async def _run(self, key: ReaderKey) -> None:
        """Read for ``key``'s collection until nobody waits: one reader after another."""
        try:
            while self._waiting.get(key):
                async with self._slots:
                    reader = self._readers[key] = _Reader(*key)
                    await self._read_for(reader)
                    # Joined while the reader was closing: the next reader takes them.
                    if self._prune(reader):
                        for member in reader.members:
                            member.active = False
                        self._waiting.setdefault(key, []).extend(reader.members)
        finally:
            self._readers.pop(key, None)
            self._waiting.pop(key, None)

    async def _lost(self, member: _Member) -> bool:
        """True if the oplog no longer reaches back to ``member``'s start."""
        if member.wall is None:
            return await self.horizon.lost(member.since)
        # Entries before the oldest one were pruned: one of them could be at or after
        # the start unless the oldest is the first of the start's second or earlier.
        oldest = await self.horizon.oldest()
        return oldest is not None and (member.after[0], 1) < oldest

    async def _open(self, reader: _Reader) -> ChangeStream:
        """The reader's stream: after its last event, else from its first member's start.

        Raises:
            RealtimeError: the database refused or cannot be reached.
        """
        pipeline = collection_pipeline(reader.collection)
        if reader.by_time and reader.ct is None:
            seconds, inc = reader.read[:2] if reader.read is not None else (0, 0)
            return await self._db.watch(pipeline, start_at_operation_time=(seconds, inc),
                                        max_await_time_ms=100)
        return await self._db.watch(pipeline, resume_after={"_data": reader.token},
                                    max_await_time_ms=100)

    async def _read_for(self, reader: _Reader) -> None:
        key = (reader.collection, reader.by_time)
        # Whoever arrives while the history is checked comes along.
        while members := self._waiting.pop(key, None):
            for member in members:
                if member.sub.phase is not Phase.CATCHING_UP:
                    continue
                if await self._lost(member):
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
                stream = await self._open(reader)
                self.readers += 1
                await self._replay(reader, stream)
            except RealtimeError as exc:
                if isinstance(exc, HistoryLost) or not is_transient(exc):
                    if reader.ct is None:
                        # Refused at its start: the oldest since (lost, or not a
                        # token at all) fails alone; the others go on without it.
                        for member in reader.members:
                            if member.after == reader.read:
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
                # except events this reader already sent (same cluster time), and
                # for a replay from a time, events before that time.
                for member in reader.members:
                    floor = reader.ct
                    if member.wall is not None and (floor is None
                                                    or member.after[:2] > floor):
                        floor = (member.after[0], member.after[1])
                    member.sub.go_live(floor=floor)
                reader.members.clear()
                return
            token = str(raw["_id"]["_data"])
            position = _event_position(raw, reader.by_time)
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
                    if member.wall is not None:
                        wall = _wall_ms(raw)
                        if wall is not None and wall < member.wall:
                            continue  # in the start's second, but before it
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

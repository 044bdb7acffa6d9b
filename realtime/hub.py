"""The hub: subscriptions by connection and collection, the ring of recent events, the head.

The feed calls :meth:`Hub.publish` for each event, which records it in the
ring, asks the collection's :class:`~realtime.index.Index` for candidate
subscriptions and lets each decide and send (:class:`~realtime.subscription.
Subscription`), inside one :class:`~realtime.outbox.Batcher` bracket.

A subscription starts one of three ways (:meth:`Hub.start`): live from the
head; from ``since`` (replayed from the ring at once when few events follow
it, else caught up, paced, by the :class:`History`, from the ring or from the
oplog when the ring no longer holds it); or snapshot then live (held back
while the snapshot is read, then settled once the feed has passed the read, so
nothing is lost or sent twice).

While the feed warms the ring at start-up (:meth:`Hub.warming`),
subscriptions wait to start until it is done (:meth:`Hub.warmed`): a live or
snapshot one would otherwise receive that history as live, and a resuming one
caught up from the oplog meanwhile would hold every event the warm-up reads
(thousands, read faster than sent) until its backlog bound closed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol

from realtime import protocol
from realtime.aggregate import AggregateSpec, TooManyGroups
from realtime.aggregator import Members, SharedAggregate, aggregate_key
from realtime.codec import dumps_str, key_to_json
from realtime.errors import RealtimeError
from realtime.events import Event
from realtime.index import Index
from realtime.outbox import Batcher, BatchPolicy, Outbox
from realtime.projection import Projection
from realtime.ring import Ring
from realtime.subscription import Cluster, Phase, Subscription

__all__ = ["REPLAY_AT_ONCE", "History", "Hub", "Watcher"]

#: A ``since`` followed by at most this many events in the ring is replayed at
#: once; further back, the :class:`History` replays it paced to the socket.
REPLAY_AT_ONCE: Final = 200


class Watcher(Protocol):
    """Told which subscriptions are routed (an edge consumes the subjects they need)."""

    def added(self, subscription: Subscription) -> None:
        """``subscription`` starts being routed."""

    def removed(self, subscription: Subscription) -> None:
        """``subscription`` is no longer routed."""

    def covers(self, subscription: Subscription, seq: int) -> bool:
        """True if the ring holds every event ``subscription`` needs after ring number ``seq``."""


class History(Protocol):
    """What the ring does not hold, read from the database."""

    async def snapshot(self, collection: str, filter: Mapping[str, Any],
                       limit: int) -> tuple[list[dict[str, Any]], Cluster | None]:
        """The documents matching ``filter`` and the cluster time the read finished at.

        Raises:
            RealtimeError: the read failed.
        """

    async def aggregate(self, collection: str, filter: Mapping[str, Any], spec: AggregateSpec,
                        max_groups: int) -> tuple[list[dict[str, Any]], Cluster | None]:
        """The rows of ``spec``'s ``$group`` over ``filter``, and the cluster time they
        reflect exactly (every change at or before it, none after).

        Raises:
            RealtimeError: the read failed.
        """

    def next_poll(self) -> int:
        """The number of the feed's first read of its stream to begin from now on."""

    def catch_up(self, subscription: Subscription, since: str) -> None:
        """Replay every change after ``since`` to ``subscription`` (CATCHING_UP), then live."""

    def replay_from(self, subscription: Subscription, when: dt.datetime) -> None:
        """Replay the oplog from ``when`` on to ``subscription`` (CATCHING_UP), then live."""


class Hub:
    """Subscriptions indexed by connection and collection, the ring of recent events, the head."""

    def __init__(self, ring_size: int = 10_000, *, batch_policy: BatchPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 order: Callable[[str], Any] | None = None) -> None:
        """``order`` maps stream positions to keys that sort in stream order, so a
        ``since`` the ring neither holds nor marked is placed among its events."""
        self._indexes: dict[str, Index] = {}
        #: The last ``ring_size`` events, for ``since``.
        self.ring = Ring(ring_size)
        self._order = order
        #: The latest stream position (event id or post-batch token), or None.
        self.position: str | None = None
        #: Events published (fanned out), and events recorded while warming, since start.
        self.events = 0
        self.warm_events = 0
        #: Set unless the feed is warming the ring (subscriptions wait for it).
        self._warm = asyncio.Event()
        self._warm.set()
        #: Open connections and their subscriptions by id.
        self.connections: dict[Outbox, dict[str, Subscription]] = {}
        #: Connections closed for falling behind (4408), since start.
        self.slow_consumers = 0
        self.batcher = Batcher(batch_policy, clock)
        #: Messages sent by connections since detached, and messages they left unsent.
        self.sent_closed = 0
        self.dropped = 0
        #: The cluster time of the last event published.
        self.last_ct: Cluster = (0, 0)
        #: SETTLING subscriptions, each with the number of the feed's poll that will
        #: prove the feed passed its snapshot's read.
        self._settling: dict[Subscription, int] = {}
        #: What the last ``status`` said of the feed (``protocol.FEED_*``); a new
        #: connection is told after ``welcome`` unless it is live.
        self.feed_status: str = protocol.FEED_LIVE
        #: The latest cluster time up to which the source says every change was
        #: published (a relay's tick, :meth:`passed`).
        self.passed_ct: Cluster = (0, 0)
        #: Told of every subscription added and removed (an edge's interest), if set.
        self.watcher: Watcher | None = None
        #: The live aggregates, each shared by its subscribers (realtime.aggregator).
        self._aggregates: dict[tuple[Any, ...], SharedAggregate] = {}
        #: Projections by their paths, while a subscription holds them.
        self._projections: weakref.WeakValueDictionary[tuple[str, ...], Projection] = (
            weakref.WeakValueDictionary())

    # -- connections ---------------------------------------------------------------
    def outbox(self, **kwargs: Any) -> Outbox:
        """A new :class:`Outbox` (keyword arguments as its own) that batches with this hub."""
        return Outbox(batcher=self.batcher, **kwargs)

    def attach(self, conn: Outbox) -> None:
        """Register a connection (for shutdown, metrics and its subscriptions)."""
        self.connections.setdefault(conn, {})

    async def detach(self, conn: Outbox) -> None:
        """Remove a connection, its subscriptions and its drainer task."""
        for subscription in list(self.connections.get(conn, {}).values()):
            self.remove(subscription)
        self.connections.pop(conn, None)
        if conn.close_code == protocol.CloseCode.SLOW_CONSUMER:
            self.slow_consumers += 1
        await conn.aclose()
        self.sent_closed += conn.sent
        self.dropped += conn.dropped + conn.backlog

    def subscription(self, conn: Outbox, sub: str) -> Subscription | None:
        """The connection's subscription ``sub``, if any."""
        return self.connections.get(conn, {}).get(sub)

    def subscriptions_on(self, conn: Outbox) -> list[Subscription]:
        """The connection's subscriptions."""
        return list(self.connections.get(conn, {}).values())

    # -- subscriptions -------------------------------------------------------------
    def add(self, subscription: Subscription) -> None:
        """Start routing events of its collection to ``subscription`` (in its phase)."""
        self._index(subscription)
        conn: Any = subscription.conn
        self.connections.setdefault(conn, {})[subscription.sub] = subscription

    def _index(self, subscription: Subscription) -> None:
        index = self._indexes.get(subscription.collection)
        if index is None:
            index = self._indexes[subscription.collection] = Index()
        index.add(subscription)
        if self.watcher is not None:
            self.watcher.added(subscription)

    def remove(self, subscription: Subscription) -> None:
        """Stop routing events to ``subscription``; it ENDS."""
        subscription.end()
        self._settling.pop(subscription, None)
        shared = subscription.shared
        if shared is not None and shared.leader is not subscription and shared.leave(subscription):
            self._drop_aggregate(shared)  # its last member left
        index = self._indexes.get(subscription.collection)
        if index is not None and index.remove(subscription):
            if not index:
                del self._indexes[subscription.collection]
            if self.watcher is not None:
                self.watcher.removed(subscription)
        conn: Any = subscription.conn
        subs = self.connections.get(conn)
        if subs is not None and subs.get(subscription.sub) is subscription:
            del subs[subscription.sub]

    async def start(self, subscription: Subscription, history: History, *,
                    since: str | None = None, snapshot: bool = False, limit: int = 0,
                    since_time: dt.datetime | None = None) -> None:
        """Answer ``subscribe`` and start routing to ``subscription``, one of four ways.

        With ``since``: every event after it, replayed from the ring at once
        when at most :data:`REPLAY_AT_ONCE` follow it there, else caught up by
        ``history`` (paced, from the ring or the oplog). With ``since_time``:
        every event committed at or after it, caught up from the oplog. With
        ``snapshot``: the ``limit`` first
        matching documents, then every change after the head without a gap
        and without sending what the snapshot shows. Otherwise: live from the
        head. A snapshot that cannot be read ends the subscription with an
        ``error`` (code ``internal``). While the feed warms the ring, it first
        waits for that to end.
        """
        if not self._warm.is_set():
            await self._warm.wait()
            conn_: Any = subscription.conn
            if subscription.phase is Phase.ENDED or conn_ not in self.connections:
                return  # closed meanwhile
        conn = subscription.conn
        sub = subscription.sub
        if subscription.aggregate is not None:
            await self._start_aggregate(subscription, history)
            return
        if since_time is not None:
            conn.send(protocol.render_subscribed(sub, self.head()))
            subscription.catch_up()  # live events held back meanwhile
            self.add(subscription)
            history.replay_from(subscription, since_time)
            return
        if since is not None:
            conn.send(protocol.render_subscribed(sub, self.head()))
            seq = self.since_seq(since)
            if (seq is not None and self.ring.seq - seq <= REPLAY_AT_ONCE
                    and self.covers(subscription, seq)):
                self.add(subscription)
                self.replay(subscription, since)
            else:
                subscription.catch_up()  # live events held back meanwhile
                self.add(subscription)
                history.catch_up(subscription, since)
            return
        if not snapshot:
            conn.send(protocol.render_subscribed(sub, self.head()))
            self.add(subscription)
            return
        subscription.hold()
        head = self.head()
        self.add(subscription)
        conn.send(protocol.render_subscribed(sub, head))
        try:
            docs, horizon = await history.snapshot(subscription.collection, subscription.filter,
                                                   limit)
        except RealtimeError as exc:
            self.remove(subscription)
            conn.send(protocol.render_error(protocol.ErrorCode.INTERNAL,
                                            f"snapshot failed: {exc.detail}", sub))
            return
        poll = history.next_poll()
        if subscription.phase is Phase.ENDED:
            return  # unsubscribed or closed meanwhile
        documents: list[str] = []
        shown: dict[Any, Mapping[str, Any]] = {}
        for doc in docs:
            if subscription.owns(doc):
                documents.append(dumps_str(subscription.render(doc)))
                shown[key_to_json(doc.get("_id"))] = doc
        conn.send(protocol.render_snapshot(sub, documents, head))
        self.settle(subscription, shown, horizon, poll)

    async def _start_aggregate(self, member: Subscription, history: History) -> None:
        """``subscribed``, then the aggregate's groups (``aggregate``, ``full``), then live.

        Subscriptions to the same aggregate share one (:mod:`realtime.aggregator`):
        a member joining a live one gets its groups at once. The first member's
        leader reads the database's result at one cluster time: the events held
        meanwhile and those the feed publishes later at or before it are already
        counted, the others are applied (:meth:`Subscription.go_live` with that floor).
        """
        conn, sub = member.conn, member.sub
        head = self.head()
        registered: Any = conn
        self.connections.setdefault(registered, {})[sub] = member
        conn.send(protocol.render_subscribed(sub, head))
        key = aggregate_key(member)
        shared = self._aggregates.get(key)
        if shared is not None:
            shared.join(member)
            return
        state = member.aggregate
        assert state is not None  # noqa: S101 - the caller checked
        members = Members()
        leader = Subscription(members, "", member.collection, member.filter, owner=member.owner,
                              aggregate=state)
        shared = self._aggregates[key] = SharedAggregate(key, leader, members, self.batcher)
        leader.shared = shared
        shared.join(member)
        leader.hold()
        self._index(leader)  # (in the index only: it has no connection of its own)
        try:
            rows, horizon = await history.aggregate(leader.collection, leader.filter,
                                                    state.spec, state.max_groups)
        except RealtimeError as exc:
            why = f"aggregate failed: {exc.detail}"
            shared.tell(lambda s: protocol.render_error(protocol.ErrorCode.INTERNAL, why, s))
            self._end_aggregate(shared)
            return
        if leader.phase is Phase.ENDED:
            return  # every member left meanwhile
        try:
            state.load(rows)
        except TooManyGroups:
            self._too_many_groups(shared)
            return
        shared.broadcast(dumps_str(state.result()), True)
        shared.live = True
        shared.sent_at = asyncio.get_running_loop().time()
        leader.notify = self._aggregate_changed
        leader.go_live(floor=horizon)

    def _end_aggregate(self, shared: SharedAggregate) -> None:
        """Drop ``shared``: its leader leaves the index, its members end."""
        for member in list(shared.members.subs):
            self.remove(member)
        self._drop_aggregate(shared)

    def _drop_aggregate(self, shared: SharedAggregate) -> None:
        shared.stop()
        if self._aggregates.get(shared.key) is shared:
            del self._aggregates[shared.key]
        leader = shared.leader
        leader.end()
        index = self._indexes.get(leader.collection)
        if index is not None and index.remove(leader):
            if not index:
                del self._indexes[leader.collection]
            if self.watcher is not None:
                self.watcher.removed(leader)

    def _too_many_groups(self, shared: SharedAggregate) -> None:
        state = shared.leader.aggregate
        limit = state.max_groups if state is not None else 0
        shared.tell(lambda s: protocol.render_error(
            protocol.ErrorCode.TOO_MANY_GROUPS,
            f"the aggregate has more than {limit} groups (REALTIME_AGGREGATE_MAX_GROUPS); "
            "narrow the filter or group_by", s))
        self._end_aggregate(shared)

    def _aggregate_changed(self, leader: Subscription) -> None:
        """A live aggregate changed (or broke): tell its members, throttled."""
        shared: SharedAggregate = leader.shared
        broken = leader.broken
        if broken is None:
            shared.changed()
            return
        leader.notify = None
        # (Told during a fan-out over the index: the aggregate ends right after it.)
        loop = asyncio.get_running_loop()
        if broken == protocol.ErrorCode.TOO_MANY_GROUPS:
            loop.call_soon(self._too_many_groups, shared)
        else:
            # An update without its pre-image: the members reload the aggregate.
            shared.tell(lambda s: protocol.render_resync(s, protocol.ResyncReason.INVALIDATED))
            for member in list(shared.members.subs):
                shared.leave(member)
            loop.call_soon(self._drop_aggregate, shared)

    def settle(self, subscription: Subscription, shown: Mapping[Any, Mapping[str, Any]],
               horizon: Cluster | None, poll: int) -> None:
        """Take ``subscription`` live once the feed has passed its snapshot's read.

        The feed may still be behind the read: an event the snapshot shows can
        come after it. Events stay held back until one committed after
        ``horizon`` is published, or the feed's poll number ``poll`` (begun after
        the read) comes back empty (:meth:`quiet`); :meth:`Subscription.go_live`
        then skips what the snapshot shows.
        """
        subscription.settle(shown, horizon)
        if horizon is not None and (self.last_ct > horizon or self.passed_ct >= horizon):
            subscription.go_live()
        else:
            self._settling[subscription] = poll

    def quiet(self, poll: int) -> None:
        """The feed's poll number ``poll`` returned no event: it has caught up."""
        settling = self._settling
        for subscription, needed in list(settling.items()):
            if needed <= poll:
                del settling[subscription]
                subscription.go_live()

    def passed(self, ct: Cluster) -> None:
        """The source has published every change up to ``ct`` (a relay's tick).

        A SETTLING subscription whose snapshot was read at or before ``ct``
        goes live: every change its read could show came before.
        """
        if ct > self.passed_ct:
            self.passed_ct = ct
        settling = self._settling
        for subscription in list(settling):
            horizon = subscription.horizon
            if horizon is not None and horizon <= ct:
                del settling[subscription]
                subscription.go_live()

    def _settle(self, ct: Cluster) -> None:
        settling = self._settling
        for subscription in list(settling):
            horizon = subscription.horizon
            if horizon is not None and ct > horizon:
                del settling[subscription]
                subscription.go_live()

    def projection(self, paths: tuple[str, ...]) -> Projection:
        """The :class:`Projection` of ``paths`` (from ``projection.check_fields``), shared
        by every subscription asking for the same fields while any holds it."""
        projection = self._projections.get(paths)
        if projection is None:
            projection = self._projections[paths] = Projection(paths)
        return projection

    def subscription_count(self) -> int:
        """How many subscriptions are routed (a shared aggregate's members, not its leader)."""
        routed = sum(len(index) for index in self._indexes.values())
        aggregates = self._aggregates
        return routed - len(aggregates) + sum(len(shared) for shared in aggregates.values())

    # -- events --------------------------------------------------------------------
    def publish(self, ev: Event) -> None:
        """Record ``ev`` in the ring and deliver it to every matching subscription."""
        self.ring.append(ev)
        self.position = ev.id
        self.last_ct = ev.ct
        if self._warm.is_set():
            self.events += 1
        else:
            self.warm_events += 1
        if self._settling:
            self._settle(ev.ct)
        index = self._indexes.get(ev.collection)
        if index is None:
            return
        batcher = self.batcher
        started = batcher.begin()
        ev.caching(True)
        try:
            for subscription in index.targets(ev):
                subscription.deliver(ev)
        finally:
            batcher.end(started)
            ev.caching(False)

    def flush(self) -> None:
        """Write every message held by the current batch."""
        self.batcher.flush()

    def advance(self, token: str) -> None:
        """Note a new stream position without an event (a post-batch token)."""
        self.position = token

    def warming(self) -> None:
        """The feed starts reading recent history into the ring: hold subscriptions back."""
        self._warm.clear()

    def warmed(self) -> None:
        """The ring is warm (or warming gave up): subscriptions start."""
        self._warm.set()

    @property
    def is_warming(self) -> bool:
        """True while the feed warms the ring."""
        return not self._warm.is_set()

    def head(self) -> str | None:
        """The current position, remembered so a client may resume from it."""
        position = self.position
        if position is not None:
            self.ring.mark(position)
        return position

    def since_seq(self, since: str) -> int | None:
        """The ring's number after which every event follows ``since``, if it holds them all."""
        seq = self.ring.seq_of(since)
        order, position = self._order, self.position
        if seq is None and order is not None and position is not None:
            with contextlib.suppress(ValueError, TypeError):
                if order(since) <= order(position):  # the feed has passed it
                    seq = self.ring.seq_at(since, order)
        return seq

    def has_event(self, event_id: str) -> bool:
        """True if the event ``event_id`` is in the ring."""
        return event_id in self.ring

    def can_replay(self, since: str) -> bool:
        """True if every event after ``since`` is still in the ring."""
        return self.since_seq(since) is not None

    def covers(self, subscription: Subscription, seq: int) -> bool:
        """True if the ring holds every event ``subscription`` needs after ring number ``seq``.

        Always, unless an edge's :attr:`watcher` says otherwise: its ring holds
        only the subjects it consumed, and since when.
        """
        watcher = self.watcher
        return watcher is None or watcher.covers(subscription, seq)

    def replay(self, subscription: Subscription, since: str) -> int:
        """Deliver to ``subscription`` the ring's events after ``since``, all at once.

        Returns how many events were examined.

        Raises:
            KeyError: ``since`` is not replayable (check :meth:`can_replay` first).
        """
        seq = self.since_seq(since)
        events = None if seq is None else self.ring.after(seq)
        if events is None:
            raise KeyError(since)
        collection = subscription.collection
        for ev in events:
            if ev.collection == collection:
                subscription.deliver(ev)
        return len(events)

    def subscriptions_of(self, collection: str | None = None) -> Iterable[Subscription]:
        """Subscriptions of one collection (or of all)."""
        if collection is not None:
            index = self._indexes.get(collection)
            return list(index.all.values()) if index is not None else []
        return [s for index in self._indexes.values() for s in index.all.values()]

    def resync(self, reason: str, collection: str | None = None) -> int:
        """Send ``resync`` to the subscriptions of ``collection`` (or all)."""
        count = 0
        for subscription in self.subscriptions_of(collection):
            shared = subscription.shared
            if shared is not None and shared.leader is subscription:
                # A live aggregate's members reload it: it may have missed changes.
                count += len(shared)
                shared.tell(lambda s: protocol.render_resync(s, reason))
                for member in list(shared.members.subs):
                    shared.leave(member)
                self._drop_aggregate(shared)
                continue
            subscription.conn.send(protocol.render_resync(subscription.sub, reason))
            count += 1
        return count

    def status(self, feed: str) -> int:
        """Send ``status`` (``protocol.FEED_*``) to every connection if ``feed`` changed.

        Returns the number of connections told (0 when nothing changed).

        Raises:
            ValueError: ``feed`` is not one of ``protocol.FEED_STATES``.
        """
        message = protocol.render_status(feed)
        if feed == self.feed_status:
            return 0
        self.feed_status = feed
        for conn in list(self.connections):
            conn.send(message)
        return len(self.connections)

    def close_all(self, code: int, reason: str = "") -> None:
        """Close every connection (e.g. 1001 on shutdown), after writing any open batch."""
        self.flush()
        for conn in list(self.connections):
            conn.close(code, reason)

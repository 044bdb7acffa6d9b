"""Subscriptions, fan-out and per-connection back-pressure.

The hub is synchronous on its fast path: the feed calls :meth:`Hub.publish` for
each event, which matches the event against the subscriptions of its
collection and hands each matching connection a message built by splicing the
subscription's prefix onto the event's shared body. A connection whose
transport is writable sends inline; one whose transport is paused collects a
bounded backlog drained by its own task, and is closed with 4408 when the
backlog overflows. No task is woken per connection per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from itertools import islice
from typing import Any

from realtime import protocol, query
from realtime.events import Event

__all__ = ["Connection", "Hub", "Subscription"]

log = logging.getLogger("realtime.hub")

SendNow = Callable[[str], None]
SendAsync = Callable[[str], Awaitable[None]]
CloseNow = Callable[[int, str], None]


class Connection:
    """One client connection as the hub sees it: an ordered, bounded outbox."""

    __slots__ = (
        "_backlog",
        "_close",
        "_drainer",
        "_send_async",
        "_send_now",
        "_writable",
        "close_code",
        "closed",
        "max_backlog",
        "name",
        "sent",
        "subscriptions",
    )

    def __init__(
        self,
        *,
        send_async: SendAsync,
        close: CloseNow,
        max_backlog: int,
        send_now: SendNow | None = None,
        writable: asyncio.Event | None = None,
        name: str = "",
    ) -> None:
        self._send_now = send_now if writable is not None else None
        self._send_async = send_async
        self._writable = writable
        self._close = close
        self._backlog: deque[str] = deque()
        self._drainer: asyncio.Task[None] | None = None
        self.max_backlog = max_backlog
        self.closed = False
        self.close_code: int | None = None
        self.sent = 0
        self.name = name
        self.subscriptions: dict[str, Subscription] = {}

    @property
    def backlog(self) -> int:
        """Messages waiting for the transport."""
        return len(self._backlog)

    def send(self, message: str) -> None:
        """Send ``message`` now if the transport is writable, else queue it.

        Never blocks and never raises; a connection whose backlog exceeds
        ``max_backlog`` is closed with 4408 (slow consumer).
        """
        if self.closed:
            return
        if (self._send_now is not None and not self._backlog
                and self._writable is not None and self._writable.is_set()):
            try:
                self._send_now(message)
            except Exception:  # the peer is gone; the endpoint cleans up
                self.closed = True
                return
            self.sent += 1
            return
        if len(self._backlog) >= self.max_backlog:
            self.close(protocol.CloseCode.SLOW_CONSUMER, "slow consumer")
            return
        self._backlog.append(message)
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._backlog and not self.closed:
                if self._send_now is not None and self._writable is not None:
                    await self._writable.wait()
                    if self.closed:
                        break
                    self._send_now(self._backlog.popleft())
                else:
                    await self._send_async(self._backlog.popleft())
                self.sent += 1
        except Exception:  # the peer is gone
            self.closed = True
        finally:
            self._drainer = None

    def close(self, code: int, reason: str = "") -> None:
        """Close the connection now (pending messages are dropped)."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self._backlog.clear()
        try:
            self._close(code, reason)
        except Exception:  # pragma: no cover - already closed
            log.debug("close of %s failed", self.name, exc_info=True)

    async def aclose(self) -> None:
        """Stop the drainer task (if any) and wait for it."""
        self.closed = True
        task = self._drainer
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Subscription:
    """One ``subscribe``: a connection, a collection and a compiled filter."""

    __slots__ = ("collection", "conn", "fields", "filter", "floor", "match", "pending",
                 "prefix", "snapshot_versions", "sub")

    def __init__(self, conn: Connection, sub: str, collection: str,
                 filter: Mapping[str, Any]) -> None:
        self.conn = conn
        self.sub = sub
        self.collection = collection
        self.filter = dict(filter)
        self.match: Callable[[Mapping[str, Any]], bool] | None = (
            query.compile(self.filter) if self.filter else None
        )
        self.fields = query.fields(self.filter) if self.filter else None
        self.prefix = protocol.change_prefix(sub)
        #: Events held back while a snapshot is read (None once live).
        self.pending: deque[tuple[str, Event]] | None = None
        self.snapshot_versions: dict[Any, int] = {}
        #: After a catch-up: events at or before this cluster time were delivered.
        self.floor: tuple[int, int] | None = None

    def decide(self, ev: Event) -> str | None:
        """The ``op`` this subscription receives for ``ev``, or None.

        Live-query semantics: a document inside the filter gives its op; an update
        or replace that moves it out gives ``leave``; a delete goes to
        subscriptions that could see the document (by its pre-image when known).
        """
        match = self.match
        op = ev.op
        if op == "insert":
            doc = ev.document
            return "insert" if doc is not None and (match is None or match(doc)) else None
        if op == "update" or op == "replace":
            doc = ev.document
            if doc is not None and (match is None or match(doc)):
                return op
            if ev.before is not None:
                return "leave" if match is None or match(ev.before) else None
            if (doc is not None and op == "update" and ev.changed is not None
                    and self.fields is not None and not (ev.changed & self.fields)):
                return None  # the filter's fields did not change: it was outside before too
            return "leave"
        if op == "delete":
            if ev.before is not None and match is not None and not match(ev.before):
                return None
            return "delete"
        return None

    def deliver(self, ev: Event) -> None:
        """Send (or hold back, while a snapshot or catch-up runs) ``ev`` if it concerns us."""
        if self.floor is not None:
            if ev.ct <= self.floor:
                return  # already delivered by the catch-up stream
            self.floor = None
        op = self.decide(ev)
        if op is None:
            return
        pending = self.pending
        if pending is not None:
            if len(pending) >= self.conn.max_backlog:
                self.conn.close(protocol.CloseCode.SLOW_CONSUMER, "slow consumer")
                return
            pending.append((op, ev))
            return
        self.conn.send(protocol.render_change(self.prefix, op,
                                              ev.leave if op == "leave" else ev.body))

    def emit(self, ev: Event) -> None:
        """Send ``ev`` now if it concerns us, bypassing the hold-back (catch-up replay)."""
        op = self.decide(ev)
        if op is not None:
            self.conn.send(protocol.render_change(self.prefix, op,
                                                  ev.leave if op == "leave" else ev.body))

    def go_live(self) -> int:
        """Flush events held back during the snapshot and deliver live from now on.

        Events already reflected in the snapshot (same or older ``_version`` of
        a document it contained) are skipped. Returns how many were sent.
        """
        pending = self.pending
        sent = 0
        if pending is None:
            return 0
        versions = self.snapshot_versions
        floor = self.floor
        while pending:
            op, ev = pending.popleft()
            if floor is not None and ev.ct <= floor:
                continue
            if op != "delete" and op != "leave":
                seen = versions.get(ev.key)
                version = ev.version
                if seen is not None and version is not None and version <= seen:
                    continue
            self.conn.send(protocol.render_change(self.prefix, op,
                                                  ev.leave if op == "leave" else ev.body))
            sent += 1
        self.pending = None
        self.snapshot_versions = {}
        return sent


class Hub:
    """Subscriptions indexed by collection, the ring of recent events, the head."""

    def __init__(self, ring_size: int = 10_000) -> None:
        self._by_collection: dict[str, dict[int, Subscription]] = {}
        self._ring: deque[Event] = deque()
        self._ring_size = ring_size
        self._ids: dict[str, int] = {}
        self._marks: dict[str, int] = {}
        self._seq = 0
        #: The latest stream position (event id or post-batch token), or None.
        self.position: str | None = None
        self.events = 0
        self.connections: set[Connection] = set()
        #: Connections closed for falling behind (4408), since start.
        self.slow_consumers = 0

    # -- subscriptions -------------------------------------------------------
    def add(self, subscription: Subscription) -> None:
        """Start routing events of its collection to ``subscription``."""
        self._by_collection.setdefault(subscription.collection, {})[id(subscription)] = \
            subscription
        subscription.conn.subscriptions[subscription.sub] = subscription

    def remove(self, subscription: Subscription) -> None:
        """Stop routing events to ``subscription``."""
        subs = self._by_collection.get(subscription.collection)
        if subs is not None:
            subs.pop(id(subscription), None)
            if not subs:
                del self._by_collection[subscription.collection]
        if subscription.conn.subscriptions.get(subscription.sub) is subscription:
            del subscription.conn.subscriptions[subscription.sub]

    def attach(self, conn: Connection) -> None:
        """Register a connection (for shutdown and metrics)."""
        self.connections.add(conn)

    async def detach(self, conn: Connection) -> None:
        """Remove a connection, its subscriptions and its drainer task."""
        for subscription in list(conn.subscriptions.values()):
            self.remove(subscription)
        self.connections.discard(conn)
        if conn.close_code == protocol.CloseCode.SLOW_CONSUMER:
            self.slow_consumers += 1
        await conn.aclose()

    def subscription_count(self) -> int:
        """How many subscriptions are routed."""
        return sum(len(s) for s in self._by_collection.values())

    # -- events ----------------------------------------------------------------
    def publish(self, ev: Event) -> None:
        """Record ``ev`` in the ring and deliver it to every matching subscription."""
        self._seq += 1
        ev.seq = self._seq
        ring = self._ring
        if len(ring) >= self._ring_size:
            old = ring.popleft()
            self._ids.pop(old.id, None)
            if len(self._marks) > self._ring_size:
                floor = old.seq
                self._marks = {k: v for k, v in self._marks.items() if v >= floor}
        ring.append(ev)
        self._ids[ev.id] = ev.seq
        self.position = ev.id
        self.events += 1
        subs = self._by_collection.get(ev.collection)
        if subs:
            for subscription in subs.values():
                subscription.deliver(ev)

    def advance(self, token: str) -> None:
        """Note a new stream position without an event (a post-batch token)."""
        self.position = token

    def head(self) -> str | None:
        """The current position, remembered so a client may resume from it."""
        position = self.position
        if position is not None and position not in self._ids:
            self._marks[position] = self._seq
        return position

    def _since_seq(self, since: str) -> int | None:
        seq = self._ids.get(since)
        if seq is None:
            seq = self._marks.get(since)
        if seq is None:
            return None
        oldest = self._ring[0].seq if self._ring else self._seq + 1
        if seq < oldest - 1:
            return None
        return seq

    def has_event(self, event_id: str) -> bool:
        """True if the event ``event_id`` is in the ring."""
        return event_id in self._ids

    def can_replay(self, since: str) -> bool:
        """True if every event after ``since`` is still in the ring."""
        return self._since_seq(since) is not None

    def replay(self, subscription: Subscription, since: str) -> int:
        """Deliver to ``subscription`` the ring's events after ``since``.

        Returns how many events were examined; raises KeyError if ``since`` is
        not replayable (check :meth:`can_replay` first).
        """
        seq = self._since_seq(since)
        if seq is None:
            raise KeyError(since)
        ring = self._ring
        start = seq - ring[0].seq + 1 if ring else 0
        examined = 0
        for ev in islice(ring, max(start, 0), None):
            if ev.collection == subscription.collection:
                subscription.deliver(ev)
            examined += 1
        return examined

    def subscriptions_of(self, collection: str | None = None) -> Iterable[Subscription]:
        """Subscriptions of one collection (or of all)."""
        if collection is not None:
            return list(self._by_collection.get(collection, {}).values())
        return [s for subs in self._by_collection.values() for s in subs.values()]

    def resync(self, reason: str, collection: str | None = None) -> int:
        """Send ``resync`` to the subscriptions of ``collection`` (or all)."""
        count = 0
        for subscription in self.subscriptions_of(collection):
            subscription.conn.send(protocol.render_resync(subscription.sub, reason))
            count += 1
        return count

    def close_all(self, code: int, reason: str = "") -> None:
        """Close every connection (e.g. 1001 on shutdown)."""
        for conn in list(self.connections):
            conn.close(code, reason)

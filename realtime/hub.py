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
import bisect
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from itertools import islice
from typing import Any, Protocol, cast, runtime_checkable

from realtime import protocol, query
from realtime.events import Event

__all__ = ["Batch", "Connection", "FrameSink", "Hub", "Subscription"]

log = logging.getLogger("realtime.hub")

class Writable(Protocol):
    """A connection's writability: an :class:`asyncio.Event` or the server's lighter Flag."""

    def is_set(self) -> bool:
        """True while the transport accepts writes."""

    async def wait(self) -> bool:
        """Return once the transport accepts writes."""


SendNow = Callable[[str], None]
SendAsync = Callable[[str], Awaitable[None]]
CloseNow = Callable[[int, str], None]

#: Most messages a connection collects during one batch before it writes them.
MAX_BATCH = 256
#: A publish starting within this many seconds of the previous one's end finds
#: the feed busy (events queued behind each other): its sends are batched.
BUSY_GAP = 0.001
#: How long a batch collects messages before they are written (seconds): as long
#: as the previous batch took to write, within these bounds, so a busy hub spends
#: about as much time encoding as writing.
MIN_BATCH_DELAY = 0.001
MAX_BATCH_DELAY = 0.020
#: Share of the time between two events spent fanning out (smoothed) above which
#: the hub is loaded: it then also holds messages for events that arrive apart,
#: for about one inter-event gap, so each connection's next messages share one
#: write; below ``UNLOADED`` it sends inline again. Writes, not encoding, are
#: what a fan-out costs (one system call per connection and write).
LOADED = 0.4
UNLOADED = 0.2
#: Weight of the newest event in the smoothed load and inter-event gap.
SMOOTHING = 0.2


@runtime_checkable
class FrameSink(Protocol):
    """A ``send_now`` that can also write ready-made frames (the server's writer).

    :meth:`frames_ok` is True when the connection negotiated no extension, so a
    frame from :func:`realtime.protocol.text_frame` is valid on it as-is; then
    the hub encodes a change once per event and subscription id, and writes the
    same bytes to every connection.
    """

    def __call__(self, text: str) -> None:
        """Write one text frame now."""

    def frames_ok(self) -> bool:
        """True if ready-made frames may be written."""

    def write(self, data: bytes) -> None:
        """Write ready-made frames now."""


class Batch:
    """Messages held per connection while the feed is busy, written together.

    When events arrive back to back (the feed is behind), each connection's
    messages of the next ``delay`` seconds are written in one system call
    instead of one each: the send call, not the encoding, is what a fan-out
    spends its time on (see bench/). An idle feed sends inline, with no delay.
    """

    __slots__ = ("active", "busy", "delay", "dirty", "gap", "handle", "last_end", "last_start",
                 "load", "loaded", "opened")

    def __init__(self) -> None:
        #: True while the hub publishes in batch mode.
        self.active = False
        #: Connections holding messages for the next flush.
        self.dirty: list[Connection] = []
        self.handle: asyncio.TimerHandle | None = None
        #: When the previous publish began and ended, and when the open batch began.
        self.last_start = -1.0
        self.last_end = -1.0
        self.opened = 0.0
        self.delay = MIN_BATCH_DELAY
        #: Seconds spent fanning out (publishing and flushing) since the last event.
        self.busy = 0.0
        #: Smoothed share of time spent fanning out, and smoothed inter-event gap.
        self.load = 0.0
        self.gap = 1.0
        #: True while ``load`` says the hub is loaded (with hysteresis).
        self.loaded = False

    def observe(self, started: float) -> None:
        """Account for the event whose publish begins at ``started``."""
        if self.last_start >= 0:
            gap = max(started - self.last_start, 1e-6)
            self.gap += SMOOTHING * (gap - self.gap)
            self.load += SMOOTHING * (min(self.busy / gap, 1.0) - self.load)
            self.loaded = self.load >= (UNLOADED if self.loaded else LOADED)
        self.busy = 0.0
        self.last_start = started


class Connection:
    """One client connection as the hub sees it: an ordered, bounded outbox."""

    __slots__ = (
        "_backlog",
        "_batch",
        "_close",
        "_drainer",
        "_pending",
        "_send_async",
        "_writable",
        "_write",
        "close_code",
        "closed",
        "dropped",
        "framed",
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
        writable: Writable | None = None,
        name: str = "",
    ) -> None:
        if writable is None:
            send_now = None
        self._send_async = send_async
        self._writable = writable
        self._close = close
        #: Messages waiting for a paused transport (made on first use).
        self._backlog: deque[str | bytes] | None = None
        self._drainer: asyncio.Task[None] | None = None
        #: True if the connection takes ready-made frames (:meth:`send_frame`): the
        #: server's frame writer says they are valid (see FrameSink).
        self.framed = isinstance(send_now, FrameSink) and send_now.frames_ok()
        #: Writes one message now, while writable: ready-made frames on a framed
        #: connection, else text. None: no synchronous writer (``send_async`` only).
        self._write: Callable[[Any], None] | None = (
            send_now.write if isinstance(send_now, FrameSink) and self.framed else send_now)
        #: Frames held for the hub's next batch write (framed connections only).
        self._pending: list[bytes] | None = None
        self._batch: Batch | None = None
        self.max_backlog = max_backlog
        self.closed = False
        self.close_code: int | None = None
        self.sent = 0
        #: Messages discarded unsent when the connection was closed.
        self.dropped = 0
        self.name = name
        self.subscriptions: dict[str, Subscription] = {}

    @property
    def backlog(self) -> int:
        """Messages waiting for the transport."""
        return len(self._backlog) if self._backlog is not None else 0

    def send(self, message: str) -> None:
        """Send ``message`` now if the transport is writable, else queue it.

        Never blocks and never raises; a connection whose backlog exceeds
        ``max_backlog`` is closed with 4408 (slow consumer). While the hub
        batches (a busy feed), the message is held until the batch is written
        a moment later; order is always kept.
        """
        if self.framed:
            self.send_frame(protocol.text_frame(message.encode()))
            return
        self._send(message)

    def send_frame(self, frame: bytes) -> None:
        """Like :meth:`send`, with a ready-made frame (only on a ``framed`` connection)."""
        self._send(frame)

    def _send(self, message: Any) -> None:
        if self.closed:
            return
        pending = self._pending
        if pending is not None:
            pending.append(message)
            if len(pending) >= MAX_BATCH:
                self.flush()
            return
        write = self._write
        if (write is not None and not self._backlog
                and self._writable is not None and self._writable.is_set()):
            batch = self._batch
            if batch is not None and batch.active and self.framed:
                self._pending = [message]
                batch.dirty.append(self)
                return
            try:
                write(message)
            except Exception:  # the peer is gone; the endpoint cleans up
                self.closed = True
                return
            self.sent += 1
            return
        self._queue(message)

    def _queue(self, message: Any) -> None:
        backlog = self._backlog
        if backlog is None:
            backlog = self._backlog = deque()
        if len(backlog) >= self.max_backlog:
            self.close(protocol.CloseCode.SLOW_CONSUMER, "slow consumer")
            return
        backlog.append(message)
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

    def flush(self) -> None:
        """Write the messages held for a batch (the hub calls this; never raises)."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        if self.closed:
            return
        write = self._write  # (pending frames exist on framed connections only)
        if (write is not None and not self._backlog
                and self._writable is not None and self._writable.is_set()):
            try:
                write(pending[0] if len(pending) == 1 else b"".join(pending))
            except Exception:  # the peer is gone; the endpoint cleans up
                self.closed = True
                return
            self.sent += len(pending)
            return
        for message in pending:
            self._queue(message)
            if self.closed:
                return

    async def _drain(self) -> None:
        backlog = self._backlog
        try:
            while backlog and not self.closed:
                if self._write is not None and self._writable is not None:
                    await self._writable.wait()
                    if self.closed:
                        break
                    self._write(backlog.popleft())
                else:  # (frames only ever queue on framed connections, which have _write)
                    await self._send_async(cast(str, backlog.popleft()))
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
        self.dropped += self.backlog + len(self._pending or ())
        if self._backlog is not None:
            self._backlog.clear()
        self._pending = None
        try:
            self._close(code, reason)
        except Exception:  # pragma: no cover - already closed
            log.debug("close of %s failed", self.name, exc_info=True)

    async def aclose(self) -> None:
        """Stop the drainer task (if any) and wait for it."""
        self.closed = True
        self._pending = None
        task = self._drainer
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Subscription:
    """One ``subscribe``: a connection, a collection and a compiled filter."""

    __slots__ = ("collection", "conn", "fields", "filter", "floor", "horizon", "index_key",
                 "match", "pending", "prefix", "shown", "sub")

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
        #: Where the hub indexes it: ``("eq", field, value)``, ``("range", field, lo,
        #: hi)``, or None (evaluated for every event of its collection).
        self.index_key = _index_key(self.filter)
        #: Events held back while a snapshot is read (None once live).
        self.pending: deque[tuple[str, Event]] | None = None
        #: After a snapshot, until live: the documents it showed by key, and the
        #: cluster time its read finished at (None if unknown).
        self.shown: Mapping[Any, Mapping[str, Any]] | None = None
        self.horizon: tuple[int, int] | None = None
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
        self.send(op, ev)

    def send(self, op: str, ev: Event) -> None:
        """Send ``ev`` as ``op`` to the connection (encoded once per event and sub id)."""
        conn = self.conn
        if conn.framed:
            conn.send_frame(ev.frame(self.prefix, op))
        else:
            conn.send(protocol.render_change(self.prefix, op,
                                             ev.leave if op == "leave" else ev.body))

    def emit(self, ev: Event) -> None:
        """Send ``ev`` now if it concerns us, bypassing the hold-back (catch-up replay)."""
        op = self.decide(ev)
        if op is not None:
            self.send(op, ev)

    def go_live(self) -> int:
        """Flush the events held back and deliver live from now on.

        After a catch-up, events at or before ``floor`` are skipped. After a
        snapshot, an event the snapshot already shows is skipped: for each
        document, the held events up to the last one (at or before ``horizon``)
        whose outcome is the state the snapshot shows, so a delete and re-insert,
        or a read that saw some of a document's changes and not others, ends in
        the database's state with nothing sent twice. Returns how many were sent.
        """
        pending = self.pending
        if pending is None:
            return 0
        self.pending = None
        floor = self.floor
        held = [(op, ev) for op, ev in pending if floor is None or ev.ct > floor]
        shown = self.shown
        upto = {} if shown is None else _shown_upto(held, shown, self.horizon)
        self.shown = self.horizon = None
        sent = 0
        for i, (op, ev) in enumerate(held):
            if i <= upto.get(ev.key, -1):
                continue
            self.send(op, ev)
            sent += 1
        return sent


def _shown_upto(held: Sequence[tuple[str, Event]], shown: Mapping[Any, Mapping[str, Any]],
                horizon: tuple[int, int] | None) -> dict[Any, int]:
    """Per document key, the index of the last held event a snapshot already shows.

    The snapshot shows, for each document, its state after some prefix of the
    changes committed up to ``horizon``: the last event whose outcome (absent
    after ``delete``/``leave``, else the document) equals what it shows.
    """
    upto: dict[Any, int] = {}
    for i, (op, ev) in enumerate(held):
        if horizon is not None and ev.ct > horizon:
            break  # held in commit order: the rest came after the read
        doc = shown.get(ev.key)
        if (doc is None) if op in ("delete", "leave") else (doc is not None
                                                             and ev.document == doc):
            upto[ev.key] = i
    return upto


def _indexable(value: Any) -> bool:
    """A filter literal or document value the index may compare: str, int, finite float."""
    t = type(value)
    return t is str or t is int or (t is float and value == value and value not in _INF)


_INF = (float("inf"), float("-inf"))
_LOWER = frozenset({"$gte", "$gt"})
_UPPER = frozenset({"$lte", "$lt"})
_MISSING = object()


def _index_key(filter: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """How a filter can be indexed: one equality, or one bounded numeric range, on a field."""
    if len(filter) != 1:
        return None
    field, condition = next(iter(filter.items()))
    if field.startswith("$") or "." in field:
        return None
    if isinstance(condition, dict):
        if len(condition) == 1 and "$eq" in condition:
            condition = condition["$eq"]
        elif len(condition) == 2:
            lows = [op for op in condition if op in _LOWER]
            highs = [op for op in condition if op in _UPPER]
            if len(lows) == 1 and len(highs) == 1:
                lo, hi = condition[lows[0]], condition[highs[0]]
                if (type(lo) in (int, float) and type(hi) in (int, float)
                        and _indexable(lo) and _indexable(hi) and lo <= hi):
                    return ("range", field, lo, hi)
            return None
        else:
            return None
    return ("eq", field, condition) if _indexable(condition) else None


class _Ranges:
    """Bounded ranges on one field, sorted by lower bound: which contain a value?"""

    __slots__ = ("entries", "lows", "width")

    def __init__(self) -> None:
        self.lows: list[float] = []
        self.entries: list[tuple[float, float, Subscription]] = []
        self.width = 0.0

    def add(self, lo: float, hi: float, subscription: Subscription) -> None:
        i = bisect.bisect_right(self.lows, lo)
        self.lows.insert(i, lo)
        self.entries.insert(i, (lo, hi, subscription))
        self.width = max(self.width, hi - lo)

    def remove(self, lo: float, subscription: Subscription) -> None:
        i = bisect.bisect_left(self.lows, lo)
        while i < len(self.entries) and self.lows[i] == lo:
            if self.entries[i][2] is subscription:
                del self.lows[i]
                del self.entries[i]
                break
            i += 1
        if not self.entries:
            self.width = 0.0

    def containing(self, x: float, out: dict[int, Subscription]) -> None:
        """Add to ``out`` every range that may contain ``x`` (bounds taken inclusive)."""
        lows = self.lows
        start = bisect.bisect_left(lows, x - self.width)
        stop = bisect.bisect_right(lows, x)
        for _lo, hi, subscription in self.entries[start:stop]:
            if x <= hi:
                out[id(subscription)] = subscription

    def __len__(self) -> int:
        return len(self.entries)


class _Index:
    """One collection's subscriptions, those with an equality or a range filter indexed.

    Most of the cost of a fan-out to many filtered subscriptions is evaluating
    every filter for every event; a filter that is one equality (``{"room":
    "r1"}``) or one bounded numeric range (``{"price": {"$gte": 10, "$lt":
    20}}``) on a top-level field is found by the event's value instead. The
    index only picks candidates: each is still decided exactly
    (:meth:`Subscription.decide`), and whenever a value cannot be looked up
    (an array, a sub-document, another type) every subscription of that field
    is a candidate.
    """

    __slots__ = ("equal", "general", "ranges")

    def __init__(self) -> None:
        self.general: dict[int, Subscription] = {}
        self.equal: dict[str, dict[Any, dict[int, Subscription]]] = {}
        self.ranges: dict[str, _Ranges] = {}

    def add(self, subscription: Subscription) -> None:
        key = subscription.index_key
        if key is None:
            self.general[id(subscription)] = subscription
        elif key[0] == "eq":
            self.equal.setdefault(key[1], {}).setdefault(key[2], {})[id(subscription)] = \
                subscription
        else:
            self.ranges.setdefault(key[1], _Ranges()).add(key[2], key[3], subscription)

    def remove(self, subscription: Subscription) -> None:
        key = subscription.index_key
        if key is None:
            self.general.pop(id(subscription), None)
        elif key[0] == "eq":
            values = self.equal.get(key[1])
            if values is not None:
                subs = values.get(key[2])
                if subs is not None:
                    subs.pop(id(subscription), None)
                    if not subs:
                        del values[key[2]]
                if not values:
                    del self.equal[key[1]]
        else:
            ranges = self.ranges.get(key[1])
            if ranges is not None:
                ranges.remove(key[2], subscription)
                if not ranges:
                    del self.ranges[key[1]]

    @property
    def indexed(self) -> bool:
        """True if some subscription is indexed."""
        return bool(self.equal or self.ranges)

    def targets(self, ev: Event) -> Iterable[Subscription]:
        """The subscriptions that may receive ``ev``: the general ones, then candidates."""
        op = ev.op
        docs: tuple[Mapping[str, Any], ...] | None = None
        changed: frozenset[str] | None = None
        if op == "insert":
            docs = (ev.document,) if ev.document is not None else None
        elif op == "update" or op == "replace":
            if ev.document is not None:
                if ev.before is not None:
                    docs = (ev.document, ev.before)
                elif op == "update" and ev.changed is not None:
                    # Without a pre-image, a subscription on a changed field may get
                    # ``leave``: all of them are candidates (see Subscription.decide).
                    docs, changed = (ev.document,), ev.changed
        elif op == "delete" and ev.before is not None:
            docs = (ev.before,)
        candidates: dict[int, Subscription] = {}
        for field, values in self.equal.items():
            if docs is None or (changed is not None and field in changed):
                for subs in values.values():
                    candidates.update(subs)
                continue
            for doc in docs:
                value = doc.get(field, _MISSING)
                if value is _MISSING:
                    continue
                if _indexable(value):
                    found = values.get(value)
                    if found:
                        candidates.update(found)
                else:
                    for subs in values.values():
                        candidates.update(subs)
                    break
        for field, ranges in self.ranges.items():
            if docs is None or (changed is not None and field in changed):
                for _lo, _hi, subscription in ranges.entries:
                    candidates[id(subscription)] = subscription
                continue
            for doc in docs:
                value = doc.get(field, _MISSING)
                if value is _MISSING or type(value) is str:
                    continue  # a numeric range matches neither
                if _indexable(value):
                    ranges.containing(value, candidates)
                else:
                    for _lo, _hi, subscription in ranges.entries:
                        candidates[id(subscription)] = subscription
                    break
        if not candidates:
            return self.general.values()
        if not self.general:
            return candidates.values()
        return [*self.general.values(), *candidates.values()]


class Hub:
    """Subscriptions indexed by collection, the ring of recent events, the head."""

    def __init__(self, ring_size: int = 10_000) -> None:
        self._by_collection: dict[str, dict[int, Subscription]] = {}
        self._indexes: dict[str, _Index] = {}
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
        self._batch = Batch()
        #: Batches written, since start (a busy feed writes in batches).
        self.batches = 0
        #: Messages sent by connections since detached, and messages they left unsent.
        self.sent_closed = 0
        self.dropped = 0
        #: The cluster time of the last event published.
        self.last_ct: tuple[int, int] = (0, 0)
        #: Subscriptions past their snapshot, waiting for the feed to pass its read:
        #: each with the number of the feed's poll that will prove it did.
        self._settling: dict[Subscription, int] = {}

    # -- subscriptions -------------------------------------------------------
    def add(self, subscription: Subscription) -> None:
        """Start routing events of its collection to ``subscription``."""
        self._by_collection.setdefault(subscription.collection, {})[id(subscription)] = \
            subscription
        self._indexes.setdefault(subscription.collection, _Index()).add(subscription)
        subscription.conn.subscriptions[subscription.sub] = subscription

    def remove(self, subscription: Subscription) -> None:
        """Stop routing events to ``subscription``."""
        self._settling.pop(subscription, None)
        subs = self._by_collection.get(subscription.collection)
        if subs is not None:
            if subs.pop(id(subscription), None) is not None:
                self._indexes[subscription.collection].remove(subscription)
            if not subs:
                del self._by_collection[subscription.collection]
                self._indexes.pop(subscription.collection, None)
        if subscription.conn.subscriptions.get(subscription.sub) is subscription:
            del subscription.conn.subscriptions[subscription.sub]

    def settle(self, subscription: Subscription, shown: Mapping[Any, Mapping[str, Any]],
               horizon: tuple[int, int] | None, poll: int) -> None:
        """Take ``subscription`` live once the feed has passed its snapshot's read.

        The feed may still be behind the read: an event the snapshot shows can
        come after it. Events stay held back until one committed after
        ``horizon`` is published, or the feed's poll number ``poll`` (begun after
        the read) comes back empty (:meth:`quiet`); :meth:`Subscription.go_live`
        then skips what the snapshot shows.
        """
        subscription.shown = shown
        subscription.horizon = horizon
        if horizon is not None and self.last_ct > horizon:
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

    def _settle(self, ct: tuple[int, int]) -> None:
        settling = self._settling
        for subscription in list(settling):
            horizon = subscription.horizon
            if horizon is not None and ct > horizon:
                del settling[subscription]
                subscription.go_live()

    def attach(self, conn: Connection) -> None:
        """Register a connection (for shutdown, metrics and batched writes)."""
        self.connections.add(conn)
        conn._batch = self._batch

    async def detach(self, conn: Connection) -> None:
        """Remove a connection, its subscriptions and its drainer task."""
        for subscription in list(conn.subscriptions.values()):
            self.remove(subscription)
        self.connections.discard(conn)
        if conn.close_code == protocol.CloseCode.SLOW_CONSUMER:
            self.slow_consumers += 1
        await conn.aclose()
        self.sent_closed += conn.sent
        self.dropped += conn.dropped + conn.backlog

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
        self.last_ct = ev.ct
        if self._settling:
            self._settle(ev.ct)
        by_id = self._by_collection.get(ev.collection)
        if not by_id:
            return
        index = self._indexes[ev.collection]
        subs = index.targets(ev) if index.indexed else by_id.values()
        batch = self._batch
        started = time.monotonic()
        batch.observe(started)
        ev.caching(True)
        # Back to back with the previous event (the feed is behind), or the hub is
        # loaded: hold the messages a moment and write each connection's in one call.
        batching = (batch.handle is not None or batch.loaded
                    or started - batch.last_end < BUSY_GAP)
        try:
            batch.active = batching
            try:
                for subscription in subs:
                    subscription.deliver(ev)
            finally:
                batch.active = False
            if batching and batch.dirty:
                if batch.handle is None:
                    # The timer writes the batch if no event follows; a feed that does
                    # not yield to the loop between events meets the bound here.
                    delay = batch.delay
                    if batch.loaded:  # long enough for the next event to join
                        delay = min(MAX_BATCH_DELAY, max(delay, batch.gap))
                    batch.opened = started
                    batch.handle = asyncio.get_running_loop().call_later(delay, self.flush)
                elif time.monotonic() - batch.opened >= batch.delay:
                    # (an event arriving after the batch's own delay takes it along)
                    self.flush()
        finally:
            ev.caching(False)
        batch.last_end = time.monotonic()
        batch.busy += batch.last_end - started

    def flush(self) -> None:
        """Write every message held by the current batch (runs ``delay`` after it began)."""
        batch = self._batch
        if batch.handle is not None:
            batch.handle.cancel()
            batch.handle = None
        dirty, batch.dirty = batch.dirty, []
        if not dirty:
            return
        started = time.monotonic()
        for conn in dirty:
            conn.flush()
        self.batches += 1
        took = time.monotonic() - started
        batch.busy += took
        batch.delay = min(MAX_BATCH_DELAY, max(MIN_BATCH_DELAY, took))

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
        """Close every connection (e.g. 1001 on shutdown), after writing any open batch."""
        self.flush()
        for conn in list(self.connections):
            conn.close(code, reason)

"""One subscription: what it receives, and an explicit phase of its life.

Sans I/O. A subscription decides, for each change event, which ``op`` its
client receives (:meth:`Subscription.decide`: the live-query semantics), and
holds events back while its history is being read. Its :class:`Phase`:

``HOLDING``
    A snapshot is being read: events from the head on are held.
``SETTLING``
    The snapshot was sent; events stay held until the feed has passed the
    read (:meth:`Subscription.go_live` then drops what the snapshot shows).
``CATCHING_UP``
    A catch-up stream replays the oplog after ``since``
    (:meth:`Subscription.replay`); live events are held meanwhile.
``LIVE``
    Events are sent as they come (after a catch-up, those the catch-up
    already sent are skipped by cluster time).
``ENDED``
    Unsubscribed, or its connection closed: nothing more is sent.

Transitions, each a method: ``HOLDING → SETTLING`` (:meth:`settle`),
``HOLDING | SETTLING | CATCHING_UP → LIVE`` (:meth:`go_live`),
``CATCHING_UP → LIVE`` without the held events (:meth:`hand_over`, when the
ring replays the rest), any → ``ENDED`` (:meth:`end`). A method called in a
phase that does not allow it raises :class:`PhaseError`.

Sending goes through the subscription's :class:`Outlet` (the connection's
outbox), which decides how a change is framed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from typing import Any, Protocol

from realtime import protocol, query
from realtime.aggregate import AggregateState, TooManyGroups
from realtime.events import Event
from realtime.projection import Projection

__all__ = ["Outlet", "Owner", "Phase", "PhaseError", "Subscription"]

Cluster = tuple[int, int]


class Phase(Enum):
    """Where a subscription is in its life (see the module docstring)."""

    HOLDING = "holding"
    SETTLING = "settling"
    CATCHING_UP = "catching_up"
    LIVE = "live"
    ENDED = "ended"


#: The phases in which events are held back rather than sent.
HELD = frozenset({Phase.HOLDING, Phase.SETTLING, Phase.CATCHING_UP})
# (An enum member looked up once: ``Phase.LIVE`` costs a class attribute lookup
# per delivery on the fan-out path.)
_LIVE = Phase.LIVE
_ENDED = Phase.ENDED


class PhaseError(RuntimeError):
    """A transition that the subscription's current phase does not allow."""


class Outlet(Protocol):
    """Where a subscription's messages go: its connection's outbox."""

    @property
    def max_backlog(self) -> int:
        """Most messages the connection may hold for its client."""

    @property
    def backlog(self) -> int:
        """Messages held for the client because its transport is paused."""

    def send(self, message: str) -> None:
        """Send one server message (never blocks, never raises)."""

    def send_shared(self, message: str, frame: bytes) -> None:
        """Send ``message``, whose ready-made frame ``frame`` is shared with others."""

    def send_change(self, ev: Event, prefix: str, op: str) -> None:
        """Send ``ev`` as ``op`` to the subscription whose messages start with ``prefix``."""

    def close(self, code: int, reason: str = "") -> None:
        """Close the connection now."""


class Owner(Protocol):
    """A tenant: which documents a tenant-scoped subscription may see."""

    def owns(self, doc: Mapping[str, Any] | None) -> bool:
        """True if ``doc`` is known and belongs to the tenant."""


class Subscription:
    """One ``subscribe``: an outlet, a collection, a compiled filter and a phase.

    ``owner``, when given, confines it to one tenant's documents: an event is
    considered only if the tenant owns the document before or after the change
    (pre-image or post-image). A ``delete`` or ``leave`` whose pre-image is
    unknown is therefore not delivered: tenant isolation fails closed. (The
    caller also ANDs the tenant clause into ``filter``, so snapshots, replays
    and catch-ups go through it.)
    """

    __slots__ = ("_held", "aggregate", "broken", "collection", "conn", "fields", "filter",
                 "floor", "horizon", "match", "notify", "owner", "phase", "prefix",
                 "projection", "shared", "shown", "sub")

    def __init__(self, conn: Outlet, sub: str, collection: str, filter: Mapping[str, Any],
                 owner: Owner | None = None, projection: Projection | None = None,
                 aggregate: AggregateState | None = None) -> None:
        self.conn = conn
        self.sub = sub
        self.collection = collection
        self.filter = dict(filter)
        self.owner = owner
        self.match: Callable[[Mapping[str, Any]], bool] | None = (
            query.compile(self.filter) if self.filter else None
        )
        self.fields = query.fields(self.filter) if self.filter else None
        #: The fields the client receives (None: whole documents).
        self.projection = projection
        #: A live aggregate's groups, which changes update instead of being sent.
        self.aggregate = aggregate
        #: Told when the aggregate changed (the hub sends it, throttled), or broke.
        self.notify: Callable[[Subscription], None] | None = None
        #: Why the aggregate can no longer be kept (``too_many_groups`` or a missing
        #: pre-image), or None.
        self.broken: str | None = None
        #: The shared aggregate this subscription leads or is a member of.
        self.shared: Any = None
        self.prefix = protocol.change_prefix(sub)
        self.phase = Phase.LIVE
        #: Events held back, with the op each gives (HOLDING, SETTLING, CATCHING_UP).
        self._held: deque[tuple[str, Event]] | None = None
        #: SETTLING: the documents the snapshot showed by key, and the cluster time
        #: its read finished at (None if unknown).
        self.shown: Mapping[Any, Mapping[str, Any]] | None = None
        self.horizon: Cluster | None = None
        #: LIVE after a catch-up: events at or before this cluster time were sent.
        self.floor: Cluster | None = None

    def __repr__(self) -> str:
        return f"<Subscription {self.sub!r} on {self.collection!r} {self.phase.value}>"

    # -- what to send ------------------------------------------------------------
    def decide(self, ev: Event) -> str | None:
        """The ``op`` this subscription receives for ``ev``, or None.

        Live-query semantics: a document inside the filter gives its op; an update
        or replace that moves it out gives ``leave``; a delete goes to
        subscriptions that could see the document (by its pre-image when known).
        """
        owner = self.owner
        if owner is not None and not (
                owner.owns(ev.before) or (ev.op != "delete" and owner.owns(ev.document))):
            return None
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

    def owns(self, doc: Mapping[str, Any]) -> bool:
        """True if a snapshot may show ``doc`` to this subscription (its tenant's)."""
        return self.owner is None or self.owner.owns(doc)

    def deliver(self, ev: Event) -> None:
        """Send ``ev`` if it concerns us: now when LIVE, else hold it back."""
        phase = self.phase
        if phase is _LIVE:
            floor = self.floor
            if floor is not None:
                if ev.ct <= floor:
                    return  # already sent by the catch-up stream
                self.floor = None
            op = self.decide(ev)
            if op is not None:
                self.send(op, ev)
            return
        if phase is _ENDED:
            return
        op = self.decide(ev)
        if op is None:
            return
        held = self._held
        assert held is not None  # noqa: S101 - every held phase has one
        if len(held) >= self.conn.max_backlog:
            self.conn.close(protocol.CloseCode.SLOW_CONSUMER, "slow consumer")
            return
        held.append((op, ev))

    def replay(self, ev: Event) -> None:
        """CATCHING_UP: send ``ev`` from the catch-up stream now if it concerns us."""
        if self.phase is not Phase.CATCHING_UP:
            return
        op = self.decide(ev)
        if op is not None:
            self.send(op, ev)

    def send(self, op: str, ev: Event) -> None:
        """Send ``ev`` as ``op`` through the outlet (projected, if so asked: then an
        update that changes no projected field sends nothing)."""
        if self.aggregate is not None:
            self._aggregate(self.aggregate, op, ev)
            return
        projection = self.projection
        if projection is None:
            self.conn.send_change(ev, self.prefix, op)
            return
        made = ev.projected_frame(projection, op, op == "update" and self._had(ev), self.prefix)
        if made is not None:
            self.conn.send_shared(*made)

    def body(self, op: str, ev: Event) -> str | None:
        """The shared body of ``ev`` as ``op`` for this subscription (None: send nothing)."""
        projection = self.projection
        if projection is None:
            return ev.leave if op == "leave" else ev.body
        return ev.projected(projection, op, op == "update" and self._had(ev))

    def _aggregate(self, state: AggregateState, op: str, ev: Event) -> None:
        """The document's old version leaves the aggregate, its new one joins it."""
        if self.broken is not None:
            return
        before = ev.before
        if op == "insert":
            old = None
        elif before is None:
            self.broken = "no_pre_image"  # what it counted for is unknown
        else:
            old = before if self.match is None or self.match(before) else None
        if self.broken is None:
            new = ev.document if op in ("insert", "update", "replace") else None
            try:
                state.apply(old, new)
            except TooManyGroups:
                self.broken = protocol.ErrorCode.TOO_MANY_GROUPS
        if (self.broken is not None or state.dirty) and self.notify is not None:
            self.notify(self)

    def _had(self, ev: Event) -> bool:
        """True if the document was inside the filter before this update (the client
        holds it): by its pre-image, else because the update changed none of the
        filter's fields."""
        match = self.match
        if ev.before is not None:
            return match is None or match(ev.before)
        if match is None:
            return True
        changed, fields = ev.changed, self.fields
        return changed is not None and fields is not None and not changed & fields

    def render(self, doc: Mapping[str, Any]) -> Mapping[str, Any]:
        """``doc`` as a snapshot shows it to this subscription (projected)."""
        return doc if self.projection is None else self.projection.apply(doc)

    # -- transitions -------------------------------------------------------------
    def _expect(self, *phases: Phase) -> None:
        if self.phase not in phases:
            raise PhaseError(f"{self!r}: expected {' or '.join(p.value for p in phases)}")

    def hold(self) -> None:
        """LIVE → HOLDING: hold events back while a snapshot is read.

        Raises:
            PhaseError: not LIVE.
        """
        self._expect(Phase.LIVE)
        self.phase = Phase.HOLDING
        self._held = deque()

    def catch_up(self) -> None:
        """LIVE → CATCHING_UP: hold live events back while the oplog is replayed.

        Raises:
            PhaseError: not LIVE.
        """
        self._expect(Phase.LIVE)
        self.phase = Phase.CATCHING_UP
        self._held = deque()

    def settle(self, shown: Mapping[Any, Mapping[str, Any]], horizon: Cluster | None) -> None:
        """HOLDING → SETTLING: the snapshot showing ``shown`` was read up to ``horizon``.

        Raises:
            PhaseError: not HOLDING.
        """
        self._expect(Phase.HOLDING)
        self.phase = Phase.SETTLING
        self.shown = shown
        self.horizon = horizon

    def go_live(self, floor: Cluster | None = None) -> int:
        """Send the events held back and deliver live from now on.

        After a catch-up, ``floor`` is the cluster time of the last event it
        sent: held and later events at or before it are skipped. After a
        snapshot (SETTLING), an event the snapshot already shows is skipped:
        for each document, the held events up to the last one (at or before
        ``horizon``) whose outcome is the state the snapshot shows, so a delete
        and re-insert, or a read that saw some of a document's changes and not
        others, ends in the database's state with nothing sent twice. Returns
        how many were sent (0 if ENDED or already LIVE).
        """
        if self.phase not in HELD:
            return 0
        held = self._held or ()
        self._held = None
        self.phase = Phase.LIVE
        self.floor = floor
        pending = [(op, ev) for op, ev in held if floor is None or ev.ct > floor]
        shown = self.shown
        upto = {} if shown is None else _shown_upto(pending, shown, self.horizon)
        self.shown = self.horizon = None
        sent = 0
        for i, (op, ev) in enumerate(pending):
            if i <= upto.get(ev.key, -1):
                continue
            self.send(op, ev)
            sent += 1
        return sent

    def hand_over(self) -> None:
        """CATCHING_UP → LIVE, dropping the held events: the ring replays them.

        Raises:
            PhaseError: not CATCHING_UP.
        """
        self._expect(Phase.CATCHING_UP)
        self._held = None
        self.phase = Phase.LIVE

    def end(self) -> None:
        """Any phase → ENDED: drop what is held; nothing more is sent."""
        self.phase = Phase.ENDED
        self._held = None
        self.shown = None

    @property
    def held(self) -> int:
        """How many events are held back."""
        return len(self._held) if self._held is not None else 0


def _shown_upto(held: Sequence[tuple[str, Event]], shown: Mapping[Any, Mapping[str, Any]],
                horizon: Cluster | None) -> dict[Any, int]:
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

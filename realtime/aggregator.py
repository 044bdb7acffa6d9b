"""Shared live aggregates: one state per distinct aggregate, however many subscribe.

Every subscription to the same aggregate (same collection, filter, tenant and
spec) is a *member* of one :class:`SharedAggregate`. Its *leader*, an internal
:class:`~realtime.subscription.Subscription` in the hub's index, receives the
changes and keeps the :class:`~realtime.aggregate.AggregateState`; the members
are registered on their connections only (for ``unsubscribe`` and closing) and
receive what the leader computes. So a change costs one update of the groups
and one encoding of the changed groups per aggregate, not per subscriber (the
per-member part is a prefix with its ``sub``), like a change event's body is
encoded once for every subscriber.

A member that joins a live aggregate gets its current groups at once (no
database read: they include every change published so far, and every later
one follows); a member that joins while the first result is being read gets
it with the others. The changed groups go to every member at most once per
``throttle_ms`` (:meth:`SharedAggregate.changed` schedules, the event loop's
clock decides).
"""

from __future__ import annotations

import asyncio
from typing import Any

from realtime import protocol
from realtime.codec import dumps_str
from realtime.outbox import Batcher
from realtime.subscription import Subscription

__all__ = ["Members", "SharedAggregate", "aggregate_key"]


def aggregate_key(subscription: Subscription) -> tuple[Any, ...]:
    """What makes two subscriptions the same aggregate: collection, filter (with its
    tenant clause), tenant and spec."""
    state = subscription.aggregate
    owner: Any = subscription.owner
    if owner is not None:
        try:
            hash(owner)
        except TypeError:
            owner = id(owner)
    return (subscription.collection, dumps_str(subscription.filter), owner,
            None if state is None else state.spec)


class Members:
    """The leader's outlet: the members' connections (it never sends changes itself)."""

    #: The leader holds changes back only while the first result is read.
    max_backlog = 1_000_000
    backlog = 0

    def __init__(self) -> None:
        self.subs: dict[Subscription, None] = {}

    def send(self, message: str) -> None:
        """(Unused: the aggregate sends through :meth:`SharedAggregate.broadcast`.)"""

    def send_shared(self, message: str, frame: bytes) -> None:
        """(Unused, as :meth:`send`.)"""

    def send_change(self, ev: Any, prefix: str, op: str) -> None:
        """(Unused: an aggregate's changes update its groups.)"""

    def close(self, code: int, reason: str = "") -> None:
        """Close every member's connection."""
        for member in list(self.subs):
            member.conn.close(code, reason)


class SharedAggregate:
    """One live aggregate: its leader (and state), its members, its throttle."""

    def __init__(self, key: tuple[Any, ...], leader: Subscription, members: Members,
                 batcher: Batcher | None = None) -> None:
        """``batcher``: the hub's, which brackets each broadcast like an event's fan-out
        (busy connections get their messages in one write)."""
        self.key = key
        self.leader = leader
        self.members = members
        self.batcher = batcher
        #: True once the first result was sent (members joining get the groups at once).
        self.live = False
        self.timer: asyncio.TimerHandle | None = None
        self.sent_at = 0.0

    def __len__(self) -> int:
        return len(self.members.subs)

    def join(self, member: Subscription) -> None:
        """Add ``member``; if live, send it the current groups."""
        self.members.subs[member] = None
        member.shared = self
        state = self.leader.aggregate
        if self.live and state is not None:
            member.conn.send(protocol.render_aggregate(member.sub, dumps_str(state.snapshot()),
                                                       True))

    def leave(self, member: Subscription) -> bool:
        """Remove ``member``; True if none is left."""
        self.members.subs.pop(member, None)
        member.shared = None
        return not self.members.subs

    def broadcast(self, groups: str, full: bool) -> None:
        """Send the encoded ``groups`` to every member, each with its own ``sub``: the
        message and its frame are made once per distinct ``sub`` (clients number
        theirs ``s1``, ``s2``...), not once per member."""
        made: dict[str, tuple[str, bytes]] = {}
        batcher = self.batcher
        started = batcher.begin() if batcher is not None else 0.0
        try:
            for member in self.members.subs:
                sub = member.sub
                ready = made.get(sub)
                if ready is None:
                    text = protocol.render_aggregate(sub, groups, full)
                    ready = made[sub] = (text, protocol.text_frame(text.encode()))
                member.conn.send_shared(*ready)
        finally:
            if batcher is not None:
                batcher.end(started)

    def tell(self, message: Any) -> None:
        """Send every member a message made for its ``sub``: ``message(sub) -> str``."""
        for member in list(self.members.subs):
            member.conn.send(message(member.sub))

    def changed(self) -> None:
        """The groups changed: flush them now or when the throttle allows."""
        if self.timer is not None or not self.live:
            return
        state = self.leader.aggregate
        assert state is not None  # noqa: S101 - a leader has its state
        loop = asyncio.get_running_loop()
        due = self.sent_at + state.spec.throttle_ms / 1000
        self.timer = loop.call_at(max(due, loop.time()), self.flush)

    def flush(self) -> None:
        """Send the groups changed since the last flush to every member."""
        self.timer = None
        state = self.leader.aggregate
        if state is None or not state.dirty:
            return
        changes = state.take_changes()
        if changes:  # (not when every change was a group opened and closed unseen)
            self.sent_at = asyncio.get_running_loop().time()
            self.broadcast(dumps_str(changes), False)

    def stop(self) -> None:
        """Cancel a pending flush."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

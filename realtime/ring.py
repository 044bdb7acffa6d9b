"""The ring: the last events of the feed, numbered, found by id, read from any point.

A fixed-size circular buffer. Each appended event gets the next sequence
number (:attr:`Event.seq`); the ring finds an event's number by its id (a
resume token), and a *mark* remembers the number for a position that is not
an event (a post-batch token that was a client's head). A position neither
names nor marks (a head given by an earlier process) is placed among the
events by the order of positions in the stream (:meth:`Ring.seq_at`). Reading after a
number is O(events read), however far back it starts, so many clients
replaying from one point do not pay for the ring's length on every read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from realtime.events import Event

__all__ = ["Ring"]


class Ring:
    """The last ``size`` events in feed order.

    Raises:
        ValueError: ``size`` is below 1.
    """

    __slots__ = ("_ids", "_marks", "_size", "_slots", "seq")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a ring holds at least one event")
        self._size = size
        self._slots: list[Event | None] = [None] * size
        self._ids: dict[str, int] = {}
        self._marks: dict[str, int] = {}
        #: The number of the last event appended (0 before the first).
        self.seq = 0

    def __len__(self) -> int:
        return min(self.seq, self._size)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    @property
    def oldest(self) -> int:
        """The number of the oldest event held (``seq + 1`` while empty)."""
        return max(1, self.seq - self._size + 1)

    def append(self, ev: Event) -> None:
        """Number ``ev`` and hold it, forgetting the oldest event when full."""
        seq = self.seq + 1
        slot = seq % self._size
        old = self._slots[slot]
        if old is not None:
            if self._ids.get(old.id) == old.seq:
                del self._ids[old.id]
            if len(self._marks) > self._size:
                floor = old.seq
                self._marks = {k: v for k, v in self._marks.items() if v >= floor}
        ev.seq = seq
        self._slots[slot] = ev
        self._ids[ev.id] = seq
        self.seq = seq

    def mark(self, position: str) -> None:
        """Remember ``position`` (not an event's id) as "after the last event appended"."""
        if position not in self._ids:
            self._marks[position] = self.seq

    def seq_of(self, position: str) -> int | None:
        """The number after which every event follows ``position``, if all are held.

        None when ``position`` is unknown, or when events after it have already
        left the ring.
        """
        seq = self._ids.get(position)
        if seq is None:
            seq = self._marks.get(position)
        if seq is None or seq < self.oldest - 1:
            return None
        return seq

    def seq_at(self, position: str, order: Callable[[str], Any]) -> int | None:
        """The number of the last event at or before ``position`` by ``order``.

        ``order`` maps positions to keys that sort as the stream does. None
        when the ring is empty or its oldest event comes after ``position``
        (events between them may be gone). The caller makes sure the feed has
        passed ``position``: events after the newest are not known yet.
        """
        if not len(self):
            return None
        key = order(position)
        slots, size = self._slots, self._size
        lo, hi = self.oldest, self.seq
        if order(slots[lo % size].id) > key:  # type: ignore[union-attr]
            return None
        while lo <= hi:  # the first event after ``position`` is ``lo``
            mid = (lo + hi) // 2
            if order(slots[mid % size].id) > key:  # type: ignore[union-attr]
                hi = mid - 1
            else:
                lo = mid + 1
        return lo - 1

    def after(self, seq: int, limit: int | None = None) -> list[Event] | None:
        """The events numbered after ``seq`` (at most ``limit``), oldest first.

        None when the ring no longer holds the event right after ``seq``.
        """
        if seq < self.oldest - 1:
            return None
        end = self.seq if limit is None else min(self.seq, seq + limit)
        slots, size = self._slots, self._size
        return [slots[s % size] for s in range(seq + 1, end + 1)]  # type: ignore[misc]

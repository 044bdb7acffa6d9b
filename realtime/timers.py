"""Coarse timers: callbacks due at about the same time share one event-loop timer.

Every open WebSocket pings its peer every ``heartbeat_seconds``; one
``loop.call_later`` per connection keeps a ``TimerHandle`` (with its arguments
and context) alive per connection: 0.6 KB each, measured with ``tracemalloc``
at 2,000 idle subscribers. :class:`CoarseTimers` rounds each due time up to a
slot of ``resolution`` seconds and runs a whole slot from one loop timer; a
scheduled callback costs a :class:`Due` (two slots) and a list entry.

The loop is only asked for ``time()`` and ``call_at()``; the order of slots is
a heap, each slot a list in the order its callbacks were scheduled.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import weakref
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "CoarseTimers", "Due", "timers_of"]


class _Handle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What :class:`CoarseTimers` needs of an event loop."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> _Handle: ...


class Due:
    """A scheduled callback; :meth:`cancel` before it runs and it never does."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[], object]) -> None:
        self.callback: Callable[[], object] | None = callback

    def cancel(self) -> None:
        """Do not run it (nothing happens if it ran already)."""
        self.callback = None

    def cancelled(self) -> bool:
        """True once cancelled."""
        return self.callback is None


class CoarseTimers:
    """Run callbacks after a delay, rounded up to a multiple of ``resolution`` seconds.

    A callback never runs early; it runs at most ``resolution`` late (plus what the
    loop is late). Callbacks of one slot run in the order they were scheduled; one
    that raises does not keep the others from running (the loop's exception
    handler reports it).
    """

    def __init__(self, clock: Clock, resolution: float = 0.25) -> None:
        if resolution <= 0:
            raise ValueError("resolution must be positive")
        self._clock = clock
        self._resolution = resolution
        self._slots: dict[int, list[Due]] = {}
        self._order: list[int] = []
        self._armed: int | None = None
        self._timer: _Handle | None = None

    def __len__(self) -> int:
        """Callbacks waiting (cancelled ones too, until their slot comes)."""
        return sum(len(slot) for slot in self._slots.values())

    def schedule(self, delay: float, callback: Callable[[], object]) -> Due:
        """Run ``callback()`` in ``delay`` seconds (rounded up to the next slot)."""
        slot = math.ceil((self._clock.time() + max(0.0, delay)) / self._resolution)
        due = Due(callback)
        waiting = self._slots.get(slot)
        if waiting is None:
            self._slots[slot] = [due]
            heapq.heappush(self._order, slot)
            if self._armed is None or slot < self._armed:
                self._arm(slot)
        else:
            waiting.append(due)
        return due

    def _arm(self, slot: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = slot
        self._timer = self._clock.call_at(slot * self._resolution, self._fire)

    def _fire(self) -> None:
        armed, self._armed, self._timer = self._armed, None, None
        order = self._order
        ready: list[Due] = []
        while order and armed is not None and order[0] <= armed:
            ready += self._slots.pop(heapq.heappop(order))
        if order:
            self._arm(order[0])
        for due in ready:
            callback = due.callback
            if callback is not None:
                due.callback = None
                try:
                    callback()
                except Exception as exc:  # one connection's failure is not the others'
                    _report(exc)


def _report(exc: Exception) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # pragma: no cover - a loop runs the timers
        raise exc from None
    loop.call_exception_handler({"message": "a coarse timer's callback failed",
                                 "exception": exc})


_OF_LOOP: weakref.WeakKeyDictionary[object, CoarseTimers] = weakref.WeakKeyDictionary()


def timers_of(loop: Clock) -> CoarseTimers:
    """The loop's shared :class:`CoarseTimers` (made on first use, gone with the loop)."""
    timers = _OF_LOOP.get(loop)
    if timers is None:
        timers = _OF_LOOP[loop] = CoarseTimers(loop)
    return timers

"""A source's lifecycle: starting, live, retrying, down, stopped.

Both sources of a serving process, the change-stream feed
(:mod:`realtime.sources.changestream`) and an edge's JetStream source
(:mod:`realtime.sources.broker`), go through the same states, and every change
of state goes to the hub (``announce``, :meth:`Hub.status`), which tells every
connection (``status``): ``live`` while the source reads, ``retrying`` while it
reconnects, ``down`` once it has retried for ``down_after`` seconds or when it
is known that it cannot come back by itself (the embedded database exited),
until it is live again.

Transitions (every one announced, except to STOPPED)::

    STARTING, LIVE, RETRYING, DOWN --went_live--> LIVE
    STARTING, LIVE               --retrying---> RETRYING (the down timer starts)
    RETRYING                     --down timer-> DOWN
    STARTING, LIVE, RETRYING     --down-------> DOWN
    any                          --stop-------> STOPPED (the down timer cancelled)

No I/O and no clock of its own: the timer (``call_later``, by default the
running loop's) and the clock that stamps :attr:`Lifecycle.retrying_since`
are injected, so the machine is tested without waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Final, Protocol

from realtime.protocol import FEED_DOWN, FEED_LIVE, FEED_RETRYING

__all__ = ["DOWN_AFTER_SECONDS", "CallLater", "FeedState", "Lifecycle", "Timer", "WithLifecycle"]

#: Seconds of retrying after which a source is ``down``: not a blip any more.
DOWN_AFTER_SECONDS: Final = 10.0


class FeedState(StrEnum):
    """Where a source is."""

    STARTING = "starting"
    LIVE = "live"
    RETRYING = "retrying"
    #: Retrying for ``down_after`` seconds, or known to be gone (the database exited).
    DOWN = "down"
    STOPPED = "stopped"


#: What a ``status`` message says in each state (STOPPED is never announced).
STATUS: Final = {FeedState.STARTING: FEED_RETRYING, FeedState.LIVE: FEED_LIVE,
                 FeedState.RETRYING: FEED_RETRYING, FeedState.DOWN: FEED_DOWN,
                 FeedState.STOPPED: FEED_DOWN}


class Timer(Protocol):
    """A scheduled call (an :class:`asyncio.TimerHandle`)."""

    def cancel(self) -> None:
        """Do not make the call."""


#: Schedules a call in so many seconds (:meth:`asyncio.AbstractEventLoop.call_later`).
CallLater = Callable[[float, Callable[[], None]], Timer]


class Lifecycle:
    """The state of a source, its down timer, and why it is not live.

    ``announce`` gets the ``status`` word (``protocol.FEED_*``) of every state
    entered but STOPPED, the initial STARTING included (the hub ignores a word
    that does not change). ``down_after``: seconds of retrying after which the
    state is DOWN; ``on_down_after`` runs just before that happens (the
    source's log line). ``call_later`` schedules the down timer (None: the
    running loop's, looked up when the timer starts); ``clock`` stamps
    :attr:`retrying_since` (Unix seconds).
    """

    __slots__ = ("_announce", "_call_later", "_clock", "_down_timer", "_live",
                 "_on_down_after", "down_after", "last_error", "retrying_since", "state")

    def __init__(self, announce: Callable[[str], object], *,
                 down_after: float = DOWN_AFTER_SECONDS,
                 on_down_after: Callable[[], None] | None = None,
                 call_later: CallLater | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._announce = announce
        self.down_after = down_after
        self._on_down_after = on_down_after
        self._call_later = call_later
        self._clock = clock
        self._down_timer: Timer | None = None
        self._live = asyncio.Event()
        self.state = FeedState.STARTING
        #: Why the source is not live, in words for people (no exception class names).
        self.last_error: str | None = None
        #: When the source stopped being live (Unix seconds; None while live).
        self.retrying_since: float | None = None
        announce(STATUS[self.state])

    @property
    def live(self) -> bool:
        """True in LIVE."""
        return self.state is FeedState.LIVE

    @property
    def status(self) -> str:
        """What a ``status`` message says now: ``live``, ``retrying`` or ``down``."""
        return STATUS[self.state]

    async def wait_live(self, timeout: float) -> None:
        """Wait until the state is LIVE (raises TimeoutError)."""
        await asyncio.wait_for(self._live.wait(), timeout)

    def went_live(self) -> None:
        """The source reads again (or for the first time): LIVE, the error forgotten."""
        self.retrying_since = None
        self.last_error = None
        self._enter(FeedState.LIVE)
        self._live.set()

    def retrying(self, error: str) -> None:
        """The source failed with ``error`` (words for people) and retries.

        From STARTING or LIVE: RETRYING, and DOWN if still so after
        ``down_after`` seconds. In RETRYING or DOWN only the error changes.
        """
        self._live.clear()
        self.last_error = error
        if self.state not in (FeedState.RETRYING, FeedState.DOWN):
            self._began_retrying()
            self._enter(FeedState.RETRYING)
            call_later = self._call_later or asyncio.get_running_loop().call_later
            self._down_timer = call_later(self.down_after, self._retried_too_long)

    def down(self, reason: str) -> None:
        """The source is known not to come back by itself (``reason``, in words): DOWN.

        Only the error changes in DOWN or STOPPED.
        """
        self.last_error = reason
        if self.state in (FeedState.STOPPED, FeedState.DOWN):
            return
        self._live.clear()
        self._began_retrying()
        self._enter(FeedState.DOWN)

    def stop(self) -> None:
        """STOPPED (not announced): the down timer cancelled."""
        self._cancel_down_timer()
        self.state = FeedState.STOPPED

    def _began_retrying(self) -> None:
        if self.retrying_since is None:
            self.retrying_since = self._clock()

    def _enter(self, state: FeedState) -> None:
        if state is not FeedState.RETRYING:
            self._cancel_down_timer()
        self.state = state
        self._announce(STATUS[state])

    def _cancel_down_timer(self) -> None:
        if self._down_timer is not None:
            self._down_timer.cancel()
            self._down_timer = None

    def _retried_too_long(self) -> None:
        self._down_timer = None
        if self.state is FeedState.RETRYING:
            if self._on_down_after is not None:
                self._on_down_after()
            self._enter(FeedState.DOWN)


class WithLifecycle:
    """A source's state as the service reads it (``/readyz``, metrics): its :attr:`lifecycle`'s."""

    lifecycle: Lifecycle

    @property
    def state(self) -> FeedState:
        """Where the source is."""
        return self.lifecycle.state

    @property
    def last_error(self) -> str | None:
        """Why the source is not live, in words for people (no exception class names)."""
        return self.lifecycle.last_error

    @property
    def retrying_since(self) -> float | None:
        """When the source stopped being live (Unix seconds; None while live)."""
        return self.lifecycle.retrying_since

    @property
    def live(self) -> bool:
        """True while the source reads (the change stream is open, the stream is read)."""
        return self.lifecycle.live

    @property
    def status(self) -> str:
        """What a ``status`` message says now: ``live``, ``retrying`` or ``down``."""
        return self.lifecycle.status

    async def wait_live(self, timeout: float) -> None:
        """Wait until the source is live (raises TimeoutError)."""
        await self.lifecycle.wait_live(timeout)

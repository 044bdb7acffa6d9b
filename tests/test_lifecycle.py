"""A source's lifecycle: its transitions, what it announces, the down timer.

The timer and the clock are injected: a timer fires when the test says so,
never after a wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from realtime.protocol import FEED_DOWN, FEED_LIVE, FEED_RETRYING
from realtime.sources.lifecycle import FeedState, Lifecycle

pytestmark = pytest.mark.driver_blind


@dataclass
class Call:
    """A call scheduled by the lifecycle (what ``call_later`` returned)."""

    delay: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        """What the loop does when the delay is over (a cancelled call never fires)."""
        assert not self.cancelled
        self.callback()


class Machine:
    """A lifecycle wired to recorders: what it announced, scheduled and logged."""

    def __init__(self, down_after: float = 10.0) -> None:
        self.announced: list[str] = []
        self.calls: list[Call] = []
        self.down_logged = 0
        self.now = 1000.0
        self.lifecycle = Lifecycle(self.announced.append, down_after=down_after,
                                   on_down_after=self._down_after, call_later=self._call_later,
                                   clock=lambda: self.now)

    def _call_later(self, delay: float, callback: Callable[[], None]) -> Call:
        call = Call(delay, callback)
        self.calls.append(call)
        return call

    def _down_after(self) -> None:
        self.down_logged += 1

    @property
    def pending(self) -> list[Call]:
        return [c for c in self.calls if not c.cancelled]


def test_starts_announcing_retrying_until_live() -> None:
    m = Machine()
    lc = m.lifecycle
    assert lc.state is FeedState.STARTING
    assert (lc.status, lc.live, lc.last_error, lc.retrying_since) == (
        FEED_RETRYING, False, None, None)
    assert m.announced == [FEED_RETRYING]
    lc.went_live()
    assert (lc.state, lc.status, lc.live) == (FeedState.LIVE, FEED_LIVE, True)
    assert m.announced == [FEED_RETRYING, FEED_LIVE]
    assert m.calls == []


def test_retrying_starts_one_down_timer_and_keeps_the_first_failure_time() -> None:
    m = Machine(down_after=7.5)
    lc = m.lifecycle
    lc.went_live()
    lc.retrying("the database did not answer")
    assert (lc.state, lc.status, lc.live) == (FeedState.RETRYING, FEED_RETRYING, False)
    assert (lc.last_error, lc.retrying_since) == ("the database did not answer", 1000.0)
    assert [c.delay for c in m.calls] == [7.5]
    m.now = 1003.0
    lc.retrying("the connection was refused")  # still retrying: only the error changes
    assert lc.last_error == "the connection was refused"
    assert lc.retrying_since == 1000.0
    assert len(m.calls) == 1
    assert m.announced == [FEED_RETRYING, FEED_LIVE, FEED_RETRYING]


def test_the_down_timer_makes_it_down_while_retrying() -> None:
    m = Machine()
    lc = m.lifecycle
    lc.retrying("refused")  # from STARTING
    (timer,) = m.calls
    timer.fire()
    assert (lc.state, lc.status) == (FeedState.DOWN, FEED_DOWN)
    assert m.down_logged == 1
    assert m.announced == [FEED_RETRYING, FEED_RETRYING, FEED_DOWN]
    assert (lc.last_error, lc.retrying_since) == ("refused", 1000.0)
    lc.retrying("still refused")  # retries go on while down; no new timer
    assert lc.state is FeedState.DOWN
    assert len(m.calls) == 1
    lc.went_live()
    assert (lc.state, lc.last_error, lc.retrying_since) == (FeedState.LIVE, None, None)
    assert m.announced[-1] == FEED_LIVE


def test_live_again_cancels_the_down_timer() -> None:
    m = Machine()
    lc = m.lifecycle
    lc.went_live()
    lc.retrying("refused")
    (timer,) = m.calls
    lc.went_live()
    assert timer.cancelled
    assert m.pending == []
    # A timer the loop had already taken to run finds the source live: nothing happens.
    timer.callback()
    assert lc.state is FeedState.LIVE
    assert m.down_logged == 0
    assert m.announced == [FEED_RETRYING, FEED_LIVE, FEED_RETRYING, FEED_LIVE]


def test_stop_cancels_the_down_timer_and_is_not_announced() -> None:
    m = Machine()
    lc = m.lifecycle
    lc.retrying("refused")
    (timer,) = m.calls
    lc.stop()
    assert timer.cancelled
    assert (lc.state, lc.live) == (FeedState.STOPPED, False)
    assert m.announced == [FEED_RETRYING, FEED_RETRYING]
    timer.callback()
    assert lc.state is FeedState.STOPPED
    assert m.down_logged == 0


def test_down_goes_down_at_once_and_cancels_the_timer() -> None:
    m = Machine()
    lc = m.lifecycle
    lc.went_live()
    lc.retrying("the database did not answer")
    (timer,) = m.calls
    m.now = 1004.0
    lc.down("the embedded database was killed by SIGKILL; restarting it")
    assert timer.cancelled
    assert (lc.state, lc.status) == (FeedState.DOWN, FEED_DOWN)
    assert lc.last_error == "the embedded database was killed by SIGKILL; restarting it"
    assert lc.retrying_since == 1000.0  # since the first failure, not the second
    assert m.down_logged == 0  # the timer's log line is for retrying too long only
    announced = len(m.announced)
    lc.down("exited again")  # already down: only the reason changes
    assert (lc.state, lc.last_error) == (FeedState.DOWN, "exited again")
    assert len(m.announced) == announced


def test_down_from_live_stamps_when_it_stopped_being_live() -> None:
    m = Machine()
    lc = m.lifecycle
    lc.went_live()
    m.now = 1234.5
    lc.down("gone")
    assert (lc.state, lc.retrying_since) == (FeedState.DOWN, 1234.5)
    assert m.calls == []
    lc.stop()
    lc.down("gone after the stop")
    assert lc.state is FeedState.STOPPED
    assert m.announced == [FEED_RETRYING, FEED_LIVE, FEED_DOWN]


async def test_wait_live_returns_once_live_and_times_out_otherwise() -> None:
    m = Machine()
    lc = m.lifecycle
    with pytest.raises(TimeoutError):
        await lc.wait_live(0.01)
    lc.went_live()
    await lc.wait_live(1.0)
    lc.retrying("refused")
    with pytest.raises(TimeoutError):
        await lc.wait_live(0.01)


async def test_the_running_loop_schedules_the_down_timer_by_default() -> None:
    down = asyncio.Event()

    def announce(status: str) -> None:
        if status == FEED_DOWN:
            down.set()

    lc = Lifecycle(announce, down_after=0.0)
    lc.retrying("refused")
    assert lc.state is FeedState.RETRYING
    await asyncio.wait_for(down.wait(), 5.0)
    assert lc.state is FeedState.DOWN

"""The feed's stall watchdog: a change stream silent for too long is reopened.

A read of the stream still in flight ``feed_max_await_ms x stall_factor`` after
it began (no batch, not even an empty one) means the stream stalled: the feed
retries and opens it again. Reads that return, however slowly, never count as
a stall, and stopping the feed mid-read stops it (no retry). The database here
is a stand-in whose stream the test scripts: what is tested is the feed's state
machine, not a driver.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from realtime.config import Settings
from realtime.hub import Hub
from realtime.sources.changestream import Feed, FeedState
from tests.helpers import until

pytestmark = pytest.mark.driver_blind


class Stream:
    """A change stream whose reads take ``delay`` seconds each (None: never return)."""

    def __init__(self, delays: list[float | None]) -> None:
        self.delays = delays
        self.reads = 0
        self.resume_token: dict[str, Any] | None = None

    async def try_next(self) -> dict[str, Any] | None:
        delay = self.delays[min(self.reads, len(self.delays) - 1)]
        self.reads += 1
        if delay is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(delay)
        return None

    async def close(self) -> None:
        return None


class Database:
    """Hands out the scripted streams in turn; notes each opening."""

    def __init__(self, *streams: Stream) -> None:
        self.streams = list(streams)
        self.opened: list[Stream] = []
        self.changed = asyncio.Event()

    async def watch(self, pipeline: Any, **options: Any) -> Stream:
        stream = self.streams[min(len(self.opened), len(self.streams) - 1)]
        self.opened.append(stream)
        self.changed.set()
        return stream


def settings() -> Settings:
    # A stall is a read in flight for 0.2 s (100 ms x 2).
    return Settings(mongodb_uri="mongodb://unused", feed_max_await_ms=100, stall_factor=2,
                    retry_base_seconds=0.01, retry_cap_seconds=0.02)


async def opened(db: Database, count: int, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while len(db.opened) < count:
            db.changed.clear()
            await db.changed.wait()


async def test_a_silent_stream_is_reopened(caplog: pytest.LogCaptureFixture) -> None:
    stalled, fresh = Stream([0.0, None]), Stream([0.05])
    db = Database(stalled, fresh)
    caplog.set_level(logging.WARNING, "realtime.feed")
    feed = Feed(cast(Any, db), Hub(), settings())
    feed.start()
    try:
        await opened(db, 2)
        assert db.opened == [stalled, fresh]
        assert feed.restarts == 1
        await feed.wait_live(10)
        assert any("sent nothing (not even a heartbeat) for 0.2 s" in r.getMessage()
                   for r in caplog.records)
    finally:
        await feed.stop()


async def test_slow_reads_are_no_stall() -> None:
    # Each read takes a quarter of the limit: 20 reads, four limits, no restart.
    slow = Stream([0.05])
    db = Database(slow)
    feed = Feed(cast(Any, db), Hub(), settings())
    feed.start()
    try:
        await until(lambda: slow.reads >= 20, 30, "20 slow reads")
        assert feed.restarts == 0
        assert db.opened == [slow]
        assert feed.state is FeedState.LIVE
    finally:
        await feed.stop()


async def test_stopping_mid_read_stops() -> None:
    hung = Stream([None])
    db = Database(hung)
    feed = Feed(cast(Any, db), Hub(), settings())
    feed.start()
    await opened(db, 1)
    await feed.wait_live(10)
    await feed.stop()
    assert feed.state is FeedState.STOPPED
    assert db.opened == [hung]
    assert feed.restarts == 0

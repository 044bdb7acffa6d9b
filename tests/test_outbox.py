"""The outbox and its batcher: batched writes keep every message, in order.

Sans I/O but for the event loop: the sinks stand for the server's frame
writer, the clock is injected.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from realtime.events import normalise
from realtime.hub import Hub
from realtime.outbox import BatchPolicy
from realtime.server import Flag
from realtime.subscription import Subscription

pytestmark = pytest.mark.driver_blind


class FakeSink:
    """A server frame writer: records each write (one system call each)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.wrote = asyncio.Event()

    def __call__(self, text: str) -> None:
        raise AssertionError("framed connections write frames")

    def frames_ok(self) -> bool:
        return True

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.wrote.set()

    async def messages(self, n: int, timeout: float) -> None:
        """Wait until ``n`` text frames were written."""
        async with asyncio.timeout(timeout):
            while len(texts(self.writes)) < n:
                self.wrote.clear()
                await self.wrote.wait()


def texts(writes: list[bytes]) -> list[str]:
    """Split written bytes back into text frames (short, unmasked)."""
    out = []
    data = b"".join(writes)
    while data:
        assert data[0] == 0x81
        n = data[1]
        if n == 126:
            n, data = int.from_bytes(data[2:4], "big"), data[4:]
        else:
            data = data[2:]
        out.append(data[:n].decode())
        data = data[n:]
    return out


def event(seq: int) -> Any:
    doc = {"_id": f"d{seq}", "seq": seq}
    return normalise({"_id": {"_data": f"{seq:032x}"}, "operationType": "insert",
                      "ns": {"db": "b", "coll": "c"}, "documentKey": {"_id": doc["_id"]},
                      "fullDocument": doc})


class Clock:
    """A monotonic clock the test moves: each write to a :class:`SlowSink` costs time.

    It starts near zero, as on a machine booted a second ago.
    """

    def __init__(self) -> None:
        self.now = 1.0

    def monotonic(self) -> float:
        return self.now


async def test_busy_hub_batches_writes_in_order() -> None:
    """A busy hub holds messages and writes them in one call each; none lost or reordered."""
    clock = Clock()
    # Every publish after the first finds the hub busy; the batch stays open until flushed.
    hub = Hub(batch_policy=BatchPolicy(busy_gap=3600.0, min_delay=3600.0),
              clock=clock.monotonic)
    sinks, flags = [], []
    for i in range(3):
        sink, flag = FakeSink(), Flag()
        flag.set()

        async def send_async(message: str) -> None:
            raise AssertionError("not used")

        conn = hub.outbox(send_async=send_async, close=lambda code, reason: None,
                          max_backlog=100, send_now=sink, writable=flag, name=str(i))
        assert conn.framed
        hub.attach(conn)
        hub.add(Subscription(conn, "s", "c", {}))
        sinks.append(sink)
        flags.append(flag)
        if i == 2:
            replier = conn
    for seq in range(50):
        hub.publish(event(seq))
        if seq == 20:
            flags[1].clear()  # connection 1 pauses mid-batch: its messages queue
            replier.send('{"type":"pong"}')  # a reply keeps its place among the changes
    assert [len(sink.writes) for sink in sinks] == [1, 1, 1]  # the first event went inline
    hub.flush()
    assert [len(sink.writes) for sink in sinks] == [2, 1, 2]  # one call for 49 messages
    flags[1].set()
    await sinks[1].messages(50, 5)  # its backlog drains once it is writable
    for i, sink in enumerate(sinks):
        messages = [orjson.loads(t) for t in texts(sink.writes)]
        seqs = [m["document"]["seq"] for m in messages if m["type"] == "change"]
        assert seqs == list(range(50)), i
    kinds = [orjson.loads(t)["type"] for t in texts(sinks[2].writes)]
    assert kinds.index("pong") == 21


class SlowSink(FakeSink):
    def __init__(self, clock: Clock, cost: float) -> None:
        super().__init__()
        self.clock, self.cost = clock, cost

    def write(self, data: bytes) -> None:
        super().write(data)
        self.clock.now += self.cost


async def test_loaded_hub_shares_writes_between_spaced_events() -> None:
    """Events apart in time go inline until fanning out takes nearly all the time
    between them; then each connection's messages of consecutive events share a
    write, and inline sending comes back when the load drops. Nothing is lost or
    reordered."""
    clock = Clock()
    hub = Hub(clock=clock.monotonic)
    sinks = []
    for i in range(5):
        sink, flag = SlowSink(clock, 0.002), Flag()  # 5 writes: 10 ms per event
        flag.set()

        async def send_async(message: str) -> None:
            raise AssertionError("not used")

        conn = hub.outbox(send_async=send_async, close=lambda code, reason: None,
                          max_backlog=100, send_now=sink, writable=flag, name=str(i))
        hub.attach(conn)
        hub.add(Subscription(conn, "s", "c", {}))
        sinks.append(sink)

    def writes() -> int:
        return len(sinks[0].writes)

    seq = 0
    # Light load: an event every 20 ms, inline, one write per event.
    for _ in range(10):
        hub.publish(event(seq))
        seq += 1
        clock.now += 0.020
    assert writes() == seq
    # Heavy load: 1.5 ms after the previous fan-out ends (fanning out takes 87 % of the
    # time; at half of it, messages still go inline: the loop has slack).
    before, published = writes(), 0
    for _ in range(40):
        hub.publish(event(seq))
        seq += 1
        published += 1
        clock.now += 0.0015
    hub.flush()
    assert writes() - before < published * 0.7, (writes() - before, published)
    # Light again: back to inline once the smoothed load has decayed.
    for _ in range(20):
        hub.publish(event(seq))
        seq += 1
        clock.now += 0.020
    hub.flush()
    tail = writes()
    for _ in range(5):
        hub.publish(event(seq))
        seq += 1
        clock.now += 0.020
    assert writes() - tail == 5
    for i, sink in enumerate(sinks):
        got = [orjson.loads(t)["document"]["seq"] for t in texts(sink.writes)]
        assert got == list(range(seq)), i


async def test_hub_with_slack_sends_inline() -> None:
    """Fanning out half the time between events leaves the loop slack: every event
    goes inline, one write per connection per event, none held for a batch."""
    clock = Clock()
    hub = Hub(clock=clock.monotonic)
    sinks = []
    for i in range(5):
        sink, flag = SlowSink(clock, 0.0003), Flag()  # 5 writes: 1.5 ms per event
        flag.set()

        async def send_async(message: str) -> None:
            raise AssertionError("not used")

        conn = hub.outbox(send_async=send_async, close=lambda code, reason: None,
                          max_backlog=100, send_now=sink, writable=flag, name=str(i))
        hub.attach(conn)
        hub.add(Subscription(conn, "s", "c", {}))
        sinks.append(sink)
    for seq in range(40):
        hub.publish(event(seq))
        assert [len(sink.writes) for sink in sinks] == [seq + 1] * 5  # written at once
        clock.now += 0.0015
    assert not hub.batcher.dirty

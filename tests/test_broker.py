"""An edge's JetStream source against a scripted broker: gaps are re-read, never skipped.

The real broker is exercised end to end in tests/test_scaleout.py (real
nats-server); a consumer sequence that jumps cannot be provoked there on
demand, so here the broker is a script of what JetStream delivers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bson import Timestamp

from realtime import stream
from realtime.config import Settings
from realtime.db import encode_change
from realtime.hub import Hub
from realtime.jetstream import Message
from realtime.sources.broker import BrokerSource
from tests.helpers import until

pytestmark = pytest.mark.driver_blind


def change(seq: int, cseq: int) -> Message:
    token = f"{seq:032x}"
    raw: dict[str, Any] = {"_id": {"_data": token}, "operationType": "insert",
                           "ns": {"db": "b", "coll": "orders"}, "documentKey": {"_id": seq},
                           "clusterTime": Timestamp(100, seq),
                           "fullDocument": {"_id": seq, "_version": 1}}
    return Message(stream.subject("orders", None), encode_change(raw),
                   {stream.TOKEN_HEADER: token}, seq, cseq)


class Consumer:
    def __init__(self, batches: list[list[Message]]) -> None:
        self.batches = batches

    async def fetch(self, batch: int, timeout: float) -> list[Message]:
        if self.batches:
            return self.batches.pop(0)
        await asyncio.Event().wait()  # nothing more: wait like an idle stream
        return []

    async def close(self) -> None:
        pass


class ScriptedBroker:
    """Consumers in order; records where each started."""

    connected = True
    opened = True

    def __init__(self, consumers: list[list[list[Message]]],
                 bounds: list[tuple[int, int]] | None = None) -> None:
        self.consumers = consumers
        self.starts: list[int] = []
        self.bounds_ = bounds or [(1, 0)]

    async def ensure_stream(self) -> None:
        pass

    async def bounds(self) -> tuple[int, int]:
        return self.bounds_.pop(0) if len(self.bounds_) > 1 else self.bounds_[0]

    async def get(self, seq: int) -> Message | None:
        return None

    async def consumer(self, subjects: list[str], start: int) -> Consumer:
        self.starts.append(start)
        return Consumer(self.consumers.pop(0) if self.consumers else [])


async def run_until(source: BrokerSource, done: Any) -> None:
    source.start()
    try:
        await until(done, 5, "the source's work")
    finally:
        await source.stop()


async def test_a_consumer_sequence_jump_is_re_read_from_after_the_last_message() -> None:
    hub = Hub()
    published: list[int] = []
    hub.publish = lambda ev: published.append(ev.key)  # type: ignore[method-assign]
    hub.has_event = lambda event_id: False  # type: ignore[method-assign]
    broker = ScriptedBroker([
        [[change(1, 1), change(2, 2), change(4, 4)]],  # cseq 3 never came
        [[change(3, 1), change(4, 2)], [change(5, 3)]],
    ], bounds=[(1, 0), (1, 5)])
    source = BrokerSource(broker, hub, Settings(mongodb_uri="mongodb://x"))  # type: ignore[arg-type]
    await run_until(source, lambda: len(published) >= 5)
    assert published == [1, 2, 3, 4, 5]
    assert source.gaps == 1
    assert broker.starts == [1, 3]


async def test_messages_the_stream_dropped_before_the_edge_read_them_resync_everyone() -> None:
    hub = Hub()
    reasons: list[str] = []
    hub.resync = lambda reason, collection=None: reasons.append(reason) or 0  # type: ignore[method-assign]
    # The edge starts at the tail (10); its consumer jumps (a gap); meanwhile
    # retention removed everything up to 49.
    broker = ScriptedBroker([[[change(12, 2)]], []], bounds=[(1, 10), (50, 60)])
    source = BrokerSource(broker, hub, Settings(mongodb_uri="mongodb://x"))  # type: ignore[arg-type]
    await run_until(source, lambda: len(broker.starts) >= 2)
    assert reasons == ["history_lost"]
    assert broker.starts == [11, 50]

"""Shared catch-ups, sans I/O: a scripted oplog, a real hub, recording outlets.

Three tiny builders: :func:`entry` (a raw change-stream event at oplog position
``n``), :func:`token` (the resume token of position ``n``) and :func:`resumed`
(a subscription that resumes after a position through :meth:`Hub.start`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, cast

import bson
import orjson
import pytest
from bson import Timestamp

from realtime import protocol
from realtime.catchup import DatabaseHistory, OplogHorizon
from realtime.config import Settings
from realtime.db import Database, token_order
from realtime.errors import HistoryLost
from realtime.events import Event, normalise
from realtime.hub import REPLAY_AT_ONCE, Hub
from realtime.subscription import Cluster, Phase, Subscription

pytestmark = pytest.mark.driver_blind

Raw = dict[str, Any]


def token(n: int) -> str:
    """The resume token (``_data``) of oplog position ``n``, as SecantusDB makes it."""
    return bson.encode({"s": n, "t": Timestamp(100, n), "n": "db.c", "k": {}}).hex()


def entry(n: int, collection: str = "c", op: str = "insert") -> Raw:
    """The change at oplog position ``n``: an insert of document ``d<n>``."""
    raw: Raw = {"_id": {"_data": token(n)}, "operationType": op,
                "ns": {"db": "db", "coll": collection}, "documentKey": {"_id": f"d{n}"},
                "clusterTime": Timestamp(100, n),
                "wallTime": dt.datetime.fromtimestamp(100 + n / 1000, dt.UTC)}
    if op == "insert":
        raw["fullDocument"] = {"_id": f"d{n}", "n": n}
    return raw


def event(n: int, collection: str = "c") -> Event:
    ev = normalise(entry(n, collection))
    assert ev is not None
    return ev


class Outlet:
    """A connection that records the keys of the changes and the other messages it gets."""

    max_backlog = 100_000
    backlog = 0

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.messages: list[dict[str, Any]] = []

    def send(self, message: str) -> None:
        self.messages.append(orjson.loads(message))

    def send_change(self, ev: Event, prefix: str, op: str) -> None:
        self.keys.append(str(ev.key))

    def close(self, code: int, reason: str = "") -> None:
        raise AssertionError(f"closed {code} {reason}")

    def resyncs(self) -> list[str]:
        return [m["reason"] for m in self.messages if m["type"] == "resync"]


class Stream:
    """A change stream over a list of raw events; it may wait at a gate first."""

    def __init__(self, events: Sequence[Raw], gate: asyncio.Event | None, at: int) -> None:
        self._events = deque(events)
        self._gate, self._at, self._read = gate, at, 0
        self.resume_token = None

    async def try_next(self) -> Raw | None:
        if self._gate is not None and self._read == self._at:
            await self._gate.wait()
        self._read += 1
        return self._events.popleft() if self._events else None

    async def close(self) -> None:
        pass


class Oplog:
    """The database, as a catch-up sees it: ``watch`` from a token, the oldest entry."""

    def __init__(self, entries: Sequence[Raw], oldest: int = 0) -> None:
        self.entries = list(entries)
        self.oldest: Cluster = (100, oldest)
        self.watched: list[tuple[str, str]] = []
        self.oldest_reads = 0
        #: Streams opened wait at this gate after ``gate_at`` events.
        self.gate: asyncio.Event | None = None
        self.gate_at = 0
        #: Tokens the database refuses to resume from.
        self.refused: set[str] = set()

    async def watch(self, pipeline: Sequence[Mapping[str, Any]], *,
                    resume_after: Mapping[str, Any] | None = None,
                    start_at_operation_time: Cluster | None = None, **_: Any) -> Stream:
        collection = pipeline[0]["$match"]["ns.coll"]
        if start_at_operation_time is not None:
            self.watched.append((collection, f"@{start_at_operation_time}"))
            return Stream([e for e in self.entries if e["ns"]["coll"] == collection
                           and (e["clusterTime"].time, e["clusterTime"].inc)
                           >= start_at_operation_time], self.gate, self.gate_at)
        assert resume_after is not None
        after = token_order(resume_after["_data"])
        self.watched.append((collection, resume_after["_data"]))
        if resume_after["_data"] in self.refused:
            raise HistoryLost("resume point not found")
        return Stream([e for e in self.entries if e["ns"]["coll"] == collection
                       and token_order(e["_id"]["_data"]) > after], self.gate, self.gate_at)

    async def oldest_oplog_time(self) -> Cluster:
        self.oldest_reads += 1
        return self.oldest


def history(oplog: Oplog, hub: Hub, concurrency: int = 8) -> DatabaseHistory:
    settings = Settings(catchup_concurrency=concurrency)
    return DatabaseHistory(cast(Database, oplog), hub, settings, lambda: 0)


async def resumed(hub: Hub, store: DatabaseHistory, after: int, collection: str = "c",
                  name: str = "s") -> tuple[Subscription, Outlet]:
    """A subscription on ``collection`` resuming after oplog position ``after``."""
    outlet = Outlet()
    sub = Subscription(outlet, name, collection, {})
    await hub.start(sub, store, since=token(after))
    return sub, outlet


async def replayed(hub: Hub, store: DatabaseHistory, ms: float, collection: str = "c",
                   name: str = "s") -> tuple[Subscription, Outlet]:
    """A subscription on ``collection`` replaying from ``ms`` milliseconds after second 100
    (oplog position ``n`` was committed at ``n`` ms)."""
    outlet = Outlet()
    sub = Subscription(outlet, name, collection, {})
    when = dt.datetime.fromtimestamp(100 + ms / 1000, dt.UTC)
    await hub.start(sub, store, since_time=when)
    return sub, outlet


def keys(first: int, last: int) -> list[str]:
    return [f"d{n}" for n in range(first, last + 1)]


async def test_many_subscriptions_resuming_from_one_point_share_one_reader() -> None:
    oplog, hub = Oplog([entry(n) for n in range(1, 41)]), Hub()
    store = history(oplog, hub)
    subs = [await resumed(hub, store, 10) for _ in range(200)]
    await store.join()
    assert len(oplog.watched) == 1
    assert oplog.oldest_reads == 1
    for sub, outlet in subs:
        assert sub.phase is Phase.LIVE
        assert outlet.keys == keys(11, 40)


async def test_one_reader_from_the_oldest_position_gives_each_only_what_follows_its_since(
        ) -> None:
    oplog, hub = Oplog([entry(n) for n in range(1, 31)]), Hub()
    store = history(oplog, hub)
    subs = [(after, *await resumed(hub, store, after)) for after in (20, 5, 12, 30)]
    await store.join()
    assert oplog.watched == [("c", token(5))]
    for after, sub, outlet in subs:
        assert sub.phase is Phase.LIVE
        assert outlet.keys == keys(after + 1, 30)


async def test_a_subscription_arriving_mid_read_joins_if_nothing_after_its_since_was_read(
        ) -> None:
    oplog, hub = Oplog([entry(n) for n in range(1, 31)]), Hub()
    oplog.gate, oplog.gate_at = asyncio.Event(), 10  # the reader pauses after d10
    store = history(oplog, hub)
    first = await resumed(hub, store, 0)
    await asyncio.sleep(0)
    while len(first[1].keys) < 10:
        await asyncio.sleep(0)
    joiner = await resumed(hub, store, 15)  # after what was read: joins
    late = await resumed(hub, store, 3)  # d4..d10 were read already: the next reader
    oplog.gate.set()
    await store.join()
    assert oplog.watched == [("c", token(0)), ("c", token(3))]
    assert first[1].keys == keys(1, 30)
    assert joiner[1].keys == keys(16, 30)
    assert late[1].keys == keys(4, 30)
    assert {s.phase for s, _ in (first, joiner, late)} == {Phase.LIVE}


async def test_live_events_held_during_the_catch_up_follow_it_without_gap_or_duplicate(
        ) -> None:
    oplog, hub = Oplog([entry(n) for n in range(1, 21)]), Hub()
    oplog.gate, oplog.gate_at = asyncio.Event(), 5
    store = history(oplog, hub)
    subs = [await resumed(hub, store, 2) for _ in range(20)]
    for n in range(18, 26):  # the feed meanwhile (d18..d20 are in the oplog too)
        if n > 20:
            oplog.entries.append(entry(n))
        hub.publish(event(n))
    oplog.gate.set()
    await store.join()
    for _, outlet in subs:
        assert outlet.keys == keys(3, 25)


async def test_the_reader_hands_over_to_the_ring_at_an_event_it_holds() -> None:
    oplog, hub = Oplog([entry(n) for n in range(1, 31)]), Hub()
    for n in range(21, 31):
        hub.publish(event(n))  # the ring holds d21..d30
    store = history(oplog, hub)
    subs = [await resumed(hub, store, 4) for _ in range(5)]
    await store.join()
    for sub, outlet in subs:
        assert sub.phase is Phase.LIVE
        assert outlet.keys == keys(5, 30)


async def test_a_since_the_oplog_no_longer_holds_gets_resync_while_the_others_replay(
        ) -> None:
    oplog, hub = Oplog([entry(n) for n in range(10, 21)], oldest=10), Hub()
    store = history(oplog, hub)
    gone = await resumed(hub, store, 3)
    kept = await resumed(hub, store, 12)
    await store.join()
    assert gone[1].resyncs() == [protocol.ResyncReason.HISTORY_LOST]
    assert gone[1].keys == []
    assert gone[0].phase is Phase.LIVE
    assert kept[1].resyncs() == []
    assert kept[1].keys == keys(13, 20)
    assert oplog.watched == [("c", token(12))]


async def test_catchup_concurrency_bounds_readers_not_subscriptions() -> None:
    entries = [entry(n, coll) for n in range(1, 11) for coll in ("a", "b")]
    oplog, hub = Oplog(entries), Hub()
    oplog.gate, oplog.gate_at = asyncio.Event(), 2
    store = history(oplog, hub, concurrency=1)
    on_a = [await resumed(hub, store, 0, "a") for _ in range(10)]
    on_b = [await resumed(hub, store, 0, "b") for _ in range(10)]
    while not oplog.watched:
        await asyncio.sleep(0)
    for _ in range(5):
        await asyncio.sleep(0)
    assert oplog.watched == [("a", token(0))]  # one reader at a time, for 10 subscriptions
    oplog.gate.set()
    await store.join()
    assert [c for c, _ in oplog.watched] == ["a", "b"]
    for _, outlet in on_a + on_b:
        assert outlet.keys == keys(1, 10)


async def test_an_invalidating_event_sends_resync_to_every_member() -> None:
    oplog, hub = Oplog([entry(1), entry(2), entry(3, op="drop"), entry(4)]), Hub()
    store = history(oplog, hub)
    subs = [await resumed(hub, store, 0) for _ in range(3)]
    await store.join()
    for sub, outlet in subs:
        assert outlet.keys == keys(1, 2)
        assert outlet.resyncs() == [protocol.ResyncReason.INVALIDATED]
        assert sub.phase is Phase.LIVE


async def test_the_oldest_oplog_entry_is_read_once_per_window_and_shared() -> None:
    now = [0.0]
    reads = 0
    started = asyncio.Event()
    release = asyncio.Event()

    async def read() -> Cluster:
        nonlocal reads
        reads += 1
        started.set()
        await release.wait()
        return (100, 5)

    horizon = OplogHorizon(read, window=1.0, clock=lambda: now[0])
    waiting = [asyncio.create_task(horizon.lost(token(n))) for n in (1, 9, 3)]
    await started.wait()
    release.set()
    assert await asyncio.gather(*waiting) == [True, False, True]
    assert reads == 1
    now[0] = 0.9
    assert await horizon.oldest() == (100, 5)
    assert reads == 1
    now[0] = 1.5
    assert await horizon.oldest() == (100, 5)
    assert reads == 2


async def test_a_token_of_unknown_format_is_never_taken_for_lost() -> None:
    async def read() -> Cluster:
        raise AssertionError("not asked")

    assert await OplogHorizon(read).lost("82" + "00" * 20) is False


def test_tokens_order_as_the_stream() -> None:
    assert token_order(token(2)) < token_order(token(10)) < token_order(token(300))
    assert token_order("0a") < token_order("0b")


async def test_the_reader_waits_for_a_member_whose_backlog_is_over_half_full() -> None:
    oplog, hub = Oplog([entry(n) for n in range(1, 11)]), Hub()
    store = history(oplog, hub)
    slow = await resumed(hub, store, 0)
    fast = await resumed(hub, store, 0)
    slow[1].backlog = slow[1].max_backlog  # its transport is paused, its backlog full
    while not fast[1].keys:
        await asyncio.sleep(0)
    for _ in range(20):
        await asyncio.sleep(0)
    assert fast[1].keys == slow[1].keys == ["d1"]  # paced: nobody gets further meanwhile
    slow[1].backlog = 0  # drained
    await store.join()
    assert fast[1].keys == slow[1].keys == keys(1, 10)


async def test_a_since_the_database_refuses_fails_alone() -> None:
    oplog, hub = Oplog([entry(n) for n in range(1, 11)]), Hub()
    oplog.refused.add(token(2))
    store = history(oplog, hub)
    bad = await resumed(hub, store, 2)
    good = [await resumed(hub, store, 5) for _ in range(3)]
    await store.join()
    assert bad[1].resyncs() == [protocol.ResyncReason.HISTORY_LOST]
    assert bad[0].phase is Phase.LIVE
    for _, outlet in good:
        assert outlet.resyncs() == []
        assert outlet.keys == keys(6, 10)
    assert oplog.watched == [("c", token(2)), ("c", token(5))]


# -- catch-up from the ring ------------------------------------------------------------
def ringed(last: int, size: int = 10_000) -> Hub:
    """A hub whose ring was given d1..d<last>."""
    hub = Hub(ring_size=size)
    for n in range(1, last + 1):
        hub.publish(event(n))
    return hub


async def test_a_since_few_events_back_in_the_ring_is_replayed_at_once() -> None:
    oplog, hub = Oplog([]), ringed(300)
    store = history(oplog, hub)
    sub, outlet = await resumed(hub, store, 300 - REPLAY_AT_ONCE)
    assert sub.phase is Phase.LIVE  # no task: sent before start() returned
    assert outlet.keys == keys(301 - REPLAY_AT_ONCE, 300)
    assert (store.ring_catchups, store.catchups) == (0, 0)


async def test_a_since_far_back_in_the_ring_is_replayed_paced_from_memory() -> None:
    oplog, hub = Oplog([]), ringed(3000)
    store = history(oplog, hub)
    subs = [await resumed(hub, store, 10) for _ in range(50)]
    assert {s.phase for s, _ in subs} == {Phase.CATCHING_UP}
    await asyncio.sleep(0)
    for n in range(3001, 3011):  # the feed goes on meanwhile
        hub.publish(event(n))
        await asyncio.sleep(0)
    await store.join()
    hub.publish(event(3011))
    assert oplog.watched == []  # no catch-up stream
    assert (store.ring_catchups, store.catchups) == (50, 0)
    for sub, outlet in subs:
        assert sub.phase is Phase.LIVE
        assert outlet.keys == keys(11, 3011)  # every change once, in order


async def test_a_congested_client_does_not_hold_back_the_others() -> None:
    oplog, hub = Oplog([]), ringed(2000)
    store = history(oplog, hub)
    slow = await resumed(hub, store, 1)
    fast = await resumed(hub, store, 1)
    slow[1].backlog = slow[1].max_backlog  # its transport is paused
    while fast[0].phase is Phase.CATCHING_UP:
        await asyncio.sleep(0)
    assert fast[1].keys == keys(2, 2000)
    assert slow[1].keys == []  # paced: nothing more while it cannot take it
    slow[1].backlog = 0  # drained
    await store.join()
    assert slow[1].keys == keys(2, 2000)


async def test_a_client_the_ring_leaves_behind_goes_on_from_the_oplog() -> None:
    oplog = Oplog([entry(n) for n in range(1, 801)])
    hub = ringed(500, size=500)
    store = history(oplog, hub)
    sub, outlet = await resumed(hub, store, 50)
    outlet.backlog = outlet.max_backlog  # stalls before its first chunk
    await asyncio.sleep(0)
    for n in range(501, 801):  # the ring turns past d51
        hub.publish(event(n))
    outlet.backlog = 0
    await store.join()
    assert oplog.watched == [("c", token(50))]
    assert sub.phase is Phase.LIVE
    assert outlet.keys == keys(51, 800)  # from the oplog, then the ring again at d301


async def test_a_catch_up_from_the_oplog_goes_on_from_the_ring_paced() -> None:
    oplog = Oplog([entry(n) for n in range(1, 3001)])
    hub = Hub(ring_size=2500)
    for n in range(501, 3001):
        hub.publish(event(n))  # the ring holds d501..d3000
    store = history(oplog, hub)
    subs = [await resumed(hub, store, 100) for _ in range(20)]
    await store.join()
    assert len(oplog.watched) == 1
    assert (store.ring_catchups, store.catchups) == (0, 20)
    for sub, outlet in subs:
        assert sub.phase is Phase.LIVE
        assert outlet.keys == keys(101, 3000)


async def test_a_replay_from_a_time_sends_what_was_committed_from_then_on_then_live() -> None:
    oplog, hub = Oplog([entry(n) for n in range(1, 21)]), Hub()
    oplog.gate, oplog.gate_at = asyncio.Event(), 3
    store = history(oplog, hub)
    subs = [await replayed(hub, store, ms) for ms in (5, 5, 12)]
    for n in range(18, 26):  # the feed meanwhile (d18..d20 are in the oplog too)
        if n > 20:
            oplog.entries.append(entry(n))
        hub.publish(event(n))
    oplog.gate.set()
    await store.join()
    assert oplog.watched == [("c", "@(100, 0)")]  # one reader from the start of the second
    assert [outlet.keys for _, outlet in subs] == [keys(5, 25), keys(5, 25), keys(12, 25)]
    assert {sub.phase for sub, _ in subs} == {Phase.LIVE}


async def test_a_replay_from_a_time_in_the_future_sends_only_what_comes_after_it() -> None:
    oplog, hub = Oplog([entry(n) for n in range(1, 11)]), Hub()
    store = history(oplog, hub)
    sub, outlet = await replayed(hub, store, 1500)  # second 101.5: nothing yet
    hub.publish(event(9))  # committed before it (second 100): held, then dropped
    await store.join()
    assert sub.phase is Phase.LIVE
    assert outlet.keys == []


async def test_a_time_older_than_the_oplog_gets_resync_and_the_others_replay() -> None:
    oplog, hub = Oplog([entry(n) for n in range(1, 11)], oldest=1), Hub()
    store = history(oplog, hub)
    gone = await replayed(hub, store, -1)  # second 99: before the oldest entry
    kept = await replayed(hub, store, 4)
    await store.join()
    assert gone[1].resyncs() == [protocol.ResyncReason.HISTORY_LOST]
    assert gone[1].keys == []
    assert kept[1].resyncs() == []
    assert kept[1].keys == keys(4, 10)


async def test_replays_by_time_and_resumes_by_id_read_apart() -> None:
    oplog, hub = Oplog([entry(n) for n in range(1, 11)]), Hub()
    store = history(oplog, hub)
    by_id = await resumed(hub, store, 6)
    by_time = await replayed(hub, store, 3)
    await store.join()
    assert set(oplog.watched) == {("c", "@(100, 0)"), ("c", token(6))}
    assert by_id[1].keys == keys(7, 10)
    assert by_time[1].keys == keys(3, 10)

"""ingest: the change events per second one process can take from its feed and match.

The per-process figure of the scale-out capacity model (docs/performance.md).
SecantusDB on this box takes a few thousand writes/s, far below what the hub
matches, so the feed is driven by **recorded change events**: each driver
reads a backlog of real inserts from the database's change stream once (the
time that takes is the driver's read rate, shown too), and the events it
returned are replayed, many times over, through the service's own
:class:`realtime.sources.changestream.Feed` (normalise, the ring, the filter
index, deciding, encoding, the outboxes) into a hub holding 0, 1,000 or 10,000
filtered subscriptions, whose connections' writes do nothing. No network, no
database in the measured loop: events/s is the ceiling of the process's feed.

Filters: ``indexed`` are distinct ranges on ``k`` (one bounded range, found by
the filter index; 0.1 % of keys each, so 1 and 10 matches per event at 1,000
and 10,000 subscriptions); ``unindexed`` are the same ranges plus a second
condition (``{"k": ..., "pad": {"$exists": true}}``), which every event
evaluates one by one.

**From the database**, for comparison: the same Feed on the real driver reading
the recorded backlog from SecantusDB's change stream (resumed from before it),
into the hub with the indexed filters: bounded by the database's reads too.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from bench import report
from bench.harness import PAD, Options, Runs
from bench.report import Row, fmt
from bench.scenarios.filters import KEY_SPACE, range_filter

__all__ = ["RENDER", "ReplayDatabase", "run"]

#: Subscription counts (the issue's 0, 1,000 and 10,000).
SIZES = (0, 1000, 10_000)
#: Selectivity of each range filter.
SELECTIVITY = 0.001
#: Events recorded per driver.
RECORDED = 10_000


class _ReplayStream:
    """A change stream that returns recorded events, ``total`` of them, then waits."""

    def __init__(self, events: Sequence[Mapping[str, Any]], total: int,
                 done: asyncio.Event) -> None:
        self._events = events
        self._total = total
        self._done = done
        self._i = 0
        self.resume_token: Mapping[str, Any] | None = {"_data": "00"}

    async def try_next(self) -> dict[str, Any] | None:
        i = self._i
        if i >= self._total:
            self._done.set()
            await asyncio.Event().wait()  # until the feed is stopped
        self._i = i + 1
        raw = dict(self._events[i % len(self._events)])
        raw["_id"] = {"_data": f"{i:024x}"}  # distinct positions, as a real stream has
        return raw

    async def close(self) -> None:
        return None


class ReplayDatabase:
    """What :class:`~realtime.sources.changestream.Feed` needs of a database: ``watch``.

    Its stream replays recorded events; ``done`` is set once all were returned.
    """

    def __init__(self, events: Sequence[Mapping[str, Any]], total: int) -> None:
        self.events = events
        self.total = total
        self.done = asyncio.Event()

    async def watch(self, pipeline: Any, **options: Any) -> _ReplayStream:
        """A stream of the recorded events (arguments ignored)."""
        return _ReplayStream(self.events, self.total, self.done)


class _NullWriter:
    """A connection's frame writer whose writes go nowhere (a FrameSink); counts changes.

    (The feed's ``status`` messages to every connection are not counted.)
    """

    __slots__ = ("changes",)

    def __init__(self) -> None:
        self.changes = 0

    def __call__(self, text: str) -> None:
        return None

    def frames_ok(self) -> bool:
        return True

    def write(self, data: bytes) -> None:
        self.changes += data.count(b'{"type":"change"')


def _settings(uri: str, database: str, driver: str) -> Any:
    from realtime.config import Settings

    return Settings(mongodb_uri=uri, database=database,
                    driver="pymongo" if driver == "pymongo" else "motor")


async def _record(uri: str, database: str, driver: str, count: int) -> tuple[
        list[dict[str, Any]], float, Mapping[str, Any] | None]:
    """Insert ``count`` documents, read their change events back with ``driver``.

    Returns the raw events, the driver's read rate (events/s) of that backlog,
    and the resume token from before it.
    """
    from realtime.db import Database
    from realtime.sources.changestream import pipeline

    db = Database(_settings(uri, database, driver), uri)
    try:
        collection = f"ingest_{driver}"
        await db.prepare_collection(collection)
        stream = await db.watch(pipeline(None), max_await_time_ms=100)
        token = stream.resume_token
        await stream.close()
        rng = random.Random(11)
        docs = [{"_id": f"d{i}", "seq": i, "t": 0, "k": rng.randrange(KEY_SPACE), "pad": PAD}
                for i in range(count)]
        for lo in range(0, count, 500):
            await db.collection(collection).insert_many(docs[lo:lo + 500])
        events: list[dict[str, Any]] = []
        stream = await db.watch(pipeline(None), resume_after=token, max_await_time_ms=100)
        started = time.perf_counter()
        try:
            while len(events) < count:
                raw = await stream.try_next()
                if raw is not None and raw.get("operationType") == "insert":
                    events.append(raw)
        finally:
            await stream.close()
        took = time.perf_counter() - started
        return events, count / took, token
    finally:
        await db.close()


def _filter(i: int, n: int, indexed: bool) -> dict[str, Any]:
    f = range_filter(i, n, SELECTIVITY)
    if not indexed:
        f["pad"] = {"$exists": True}
    return f


def _hub(collection: str, subscriptions: int, indexed: bool) -> tuple[Any, _NullWriter]:
    """A hub with ``subscriptions`` filtered subscriptions on connections that write nothing."""
    from realtime.hub import Hub
    from realtime.subscription import Subscription

    hub = Hub()
    writer = _NullWriter()
    for i in range(subscriptions):

        async def send_async(message: str) -> None:
            return None

        writable = asyncio.Event()
        writable.set()
        conn = hub.outbox(send_async=send_async, close=lambda code, reason: None,
                          max_backlog=1 << 30, send_now=writer, writable=writable)
        hub.add(Subscription(conn, "s", collection, _filter(i, subscriptions, indexed)))
    return hub, writer


async def ingest(events: Sequence[Mapping[str, Any]], subscriptions: int, indexed: bool,
                 total: int) -> dict[str, Any]:
    """Replay ``total`` events through a Feed into a hub with ``subscriptions`` filters.

    Returns events/s, CPU µs per event and the messages written.
    """
    from realtime.config import Settings
    from realtime.sources.changestream import Feed

    hub, writer = _hub(events[0]["ns"]["coll"], subscriptions, indexed)
    replay = ReplayDatabase(events, total)
    feed = Feed(cast(Any, replay), hub, Settings(mongodb_uri="mongodb://unused"))
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    feed.start()
    try:
        await asyncio.wait_for(replay.done.wait(), 600)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        hub.flush()
    finally:
        with contextlib.suppress(Exception):
            await feed.stop()
    sent = writer.changes
    return {"events": total, "events_per_s": round(total / wall, 1),
            "cpu_us_per_event": round(cpu / total * 1e6, 2),
            # What one core's worth of CPU takes (the rate is lower when the
            # machine's other work takes part of the core).
            "events_per_core_s": round(total / cpu, 1) if cpu > 0 else None,
            "messages": sent, "matches_per_event": round(sent / total, 2)}


async def from_backlog(uri: str, database: str, driver: str, token: Mapping[str, Any] | None,
                       collection: str, count: int, subscriptions: int) -> float:
    """The real Feed on ``driver`` reading a backlog of ``count`` events; events/s.

    Bounded by the database's change-stream reads as well as by the process.
    """
    from realtime.db import Database
    from realtime.sources.changestream import Feed

    hub, _ = _hub(collection, subscriptions, True)
    settings = _settings(uri, database, driver)
    db = Database(settings, uri)
    feed = Feed(db, hub, settings)
    feed.token = token
    done = asyncio.Event()
    publish = hub.publish

    def counted(ev: Any) -> None:
        publish(ev)
        if hub.events >= count:
            done.set()

    hub.publish = counted
    try:
        started = time.perf_counter()
        feed.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 120)
        took = time.perf_counter() - started
    finally:
        await feed.stop()
        await db.close()
    return round(float(hub.events) / took, 1)


async def run(opts: Options) -> dict[str, Any]:
    """Run the scenario; return (and write) its report."""
    drivers = ("motor", "pymongo")
    recorded = 200 if opts.quick else RECORDED
    sizes = opts.sizes or ((0, 50) if opts.quick else SIZES)
    async with report.Measurement(opts, "ingest", RENDER) as measurement:
        stack, runs = measurement.stack, measurement.runs
        db = await stack.database()
        database = f"bench_{uuid.uuid4().hex[:8]}"
        for driver in drivers:
            events, read_rate, token = await _record(db.uri, database, driver, recorded)
            opts.log(f"ingest {driver}: recorded {len(events)} events, the driver read the "
                     f"backlog at {read_rate:,.0f} events/s")
            for n in sizes:
                for indexed in ((True,) if n == 0 else (True, False)):
                    total = 500 if opts.quick else (20_000 if indexed else
                                                    max(500, 2_000_000 // max(n, 1)))
                    result = await ingest(events, n, indexed, total)
                    result.update({"driver": driver, "subscriptions": n,
                                   "filters": "indexed" if indexed else "unindexed",
                                   "driver_read_events_per_s": round(read_rate, 1)})
                    if indexed:
                        result["from_database_events_per_s"] = await from_backlog(
                            db.uri, database, driver, token, f"ingest_{driver}",
                            len(events), n)
                    runs.append(result)
                    opts.log(f"ingest {driver:<7} {n:>6,} subs ({result['filters']}): "
                             f"{result['events_per_s']:>9,.0f} events/s, "
                             f"{result['cpu_us_per_event']} µs/event, "
                             f"{result['matches_per_event']} matches/event")
    return measurement.finish()


def table(runs: Runs) -> str:
    """The Markdown table of ``ingest.md``."""
    lines = ["Change events one process takes from its feed and matches, per second: "
             "recorded change events (read once from SecantusDB by the driver) replayed "
             "through the service's Feed into a hub with N filtered subscriptions whose "
             "writes do nothing. Indexed: one range on `k` per subscription (0.1 % of keys); "
             "unindexed: the same range plus `pad: {$exists: true}` (every filter evaluated "
             "per event). **events per CPU-second**: 1 ÷ the process's CPU per event, the "
             "rate with a whole core (events/s is lower when other work on the machine "
             "takes part of it). **driver read** is the rate the driver read the recorded backlog "
             "from the database's change stream (bounded by SecantusDB); **from the "
             "database** the real Feed reading that backlog into the same hub.", "",
             "| driver | subscriptions | filters | events/s (recorded) | CPU µs/event "
             "| events per CPU-second | matches/event | from the database events/s "
             "| driver read events/s |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r['driver']} | {r['subscriptions']:,} | {r['filters']} "
                     f"| {r['events_per_s']:,.0f} | {r['cpu_us_per_event']:,.1f} "
                     f"| {fmt(r.get('events_per_core_s'), 0)} | {r['matches_per_event']:.1f} "
                     f"| {fmt(r.get('from_database_events_per_s'), 0)} "
                     f"| {r['driver_read_events_per_s']:,.0f} |")
    return "\n".join(lines) + "\n"


def chart(runs: Runs, path: Path) -> None:
    """``ingest.png``: events/s by subscriptions, per driver and filter kind."""
    fig, (ax,) = report.figure()
    panel(ax, runs)
    report.save(fig, path)


def panel(ax: Any, runs: Runs) -> None:
    """events/s against subscriptions."""
    for driver in dict.fromkeys(r["driver"] for r in runs):
        for kind, style in (("indexed", "o-"), ("unindexed", "s--")):
            mine = [r for r in runs if r["driver"] == driver
                    and (r["filters"] == kind or r["subscriptions"] == 0)]
            if len(mine) > 1 or kind == "indexed":
                ax.plot([max(r["subscriptions"], 1) for r in mine],
                        [r["events_per_s"] for r in mine], style, label=f"{driver} {kind}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("filtered subscriptions (0 shown at 1)")
    ax.set_ylabel("events/s (one process)")
    ax.set_title("ingest ceiling of one process", fontsize=10)
    ax.legend(fontsize=7)


def summary(runs: Runs) -> list[Row]:
    """One row per driver and subscription count (indexed filters)."""
    return [(f"ingest, {r['subscriptions']:,} {r['filters']} subscriptions ({r['driver']})",
             f"{fmt(r['events_per_s'], 0)} events/s "
             f"({fmt(r.get('events_per_core_s'), 0)} per CPU-second)",
             "≥ 50k events/s at 1,000" if r["subscriptions"] == 1000 else "—")
            for r in runs if r["filters"] == "indexed"]


RENDER = report.Renderer(table=table, chart=chart, summary=summary, panel=panel)

"""filters: 1,000 subscribers with distinct range filters.

The hub's matching cost per event, measured in process (:func:`matching_cost`),
and the end-to-end event rate; every subscriber's count is checked against the
matches computed here.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench import report
from bench.harness import PAD, CpuWindow, DbWriter, Load, Options, Runs
from bench.report import Row, cpu_note

__all__ = ["KEY_SPACE", "RENDER", "matching_cost", "range_filter", "run"]

KEY_SPACE = 100_000
SELECTIVITIES = (0.001, 0.01, 0.1)


def range_filter(i: int, n: int, selectivity: float) -> dict[str, Any]:
    """Subscriber ``i`` of ``n``: a distinct range on ``k`` matching ``selectivity`` of keys."""
    width = max(1, round(selectivity * KEY_SPACE))
    lo = i * (KEY_SPACE - width) // max(1, n - 1) if n > 1 else 0
    return {"k": {"$gte": lo, "$lt": lo + width}}


def _key_of(keys: list[int]) -> Callable[[int], dict[str, Any]]:
    """The extra fields of document ``seq``: its key ``k``."""
    return lambda seq: {"k": keys[seq]}


def matching_cost(n: int, selectivity: float, events: int = 2000) -> dict[str, float]:
    """The hub's cost per event with ``n`` range-filtered subscriptions (in process, µs).

    ``match``: deciding every subscription; ``publish``: the whole fan-out, with
    connections whose send does nothing (so no I/O is counted).
    """
    from realtime.events import normalise
    from realtime.hub import Hub
    from realtime.subscription import Subscription

    hub = Hub(ring_size=events + 1)
    subs = []
    for i in range(n):

        async def send_async(message: str) -> None:
            return None

        writable = asyncio.Event()
        writable.set()
        conn = hub.outbox(send_async=send_async, close=lambda code, reason: None,
                          max_backlog=1 << 30, send_now=lambda message: None,
                          writable=writable)
        sub = Subscription(conn, "s", "bench", range_filter(i, n, selectivity))
        hub.add(sub)
        subs.append(sub)
    rng = random.Random(7)
    evs = []
    for seq in range(events):
        doc = {"_id": f"d{seq}", "seq": seq, "t": 0, "k": rng.randrange(KEY_SPACE), "pad": PAD}
        raw = {"_id": {"_data": f"{seq:032x}"}, "operationType": "insert",
               "ns": {"db": "bench", "coll": "bench"}, "documentKey": {"_id": doc["_id"]},
               "fullDocument": doc}
        ev = normalise(raw)
        if ev is not None:
            evs.append(ev)
    started = time.perf_counter()
    for ev in evs:
        for sub in subs:
            sub.decide(ev)
    match = (time.perf_counter() - started) / events * 1e6
    started = time.perf_counter()
    for ev in evs:
        hub.publish(ev)
    publish = (time.perf_counter() - started) / events * 1e6
    return {"match_us_per_event": round(match, 2), "publish_us_per_event": round(publish, 2),
            "match_ns_per_subscription": round(match * 1000 / n, 1)}


async def run(opts: Options) -> dict[str, Any]:
    """Run the scenario; return (and write) its report."""
    n = opts.sizes[0] if opts.sizes else (50 if opts.quick else 1000)
    events = 200 if opts.quick else 5000
    async with report.Measurement(opts, "filters", RENDER) as measurement:
        stack, runs = measurement.stack, measurement.runs
        db = await stack.database()
        database = f"bench_{uuid.uuid4().hex[:8]}"
        server = await stack.realtime(db.uri, database)
        for selectivity in SELECTIVITIES:
            collection = f"flt{round(selectivity * 1000)}"
            filters = [range_filter(i, n, selectivity) for i in range(n)]
            # One extra subscriber without a filter sees every event: its last
            # message marks the end of the run.
            subscribe = [[orjson.dumps({"op": "subscribe", "sub": "s", "collection": collection,
                                        "filter": f}).decode()] for f in filters]
            subscribe.append([orjson.dumps({"op": "subscribe", "sub": "all",
                                            "collection": collection}).decode()])
            rng = random.Random(round(selectivity * 1e6))
            keys = [rng.randrange(KEY_SPACE) for _ in range(events)]
            expected_counts = [sum(1 for k in keys if f["k"]["$gte"] <= k < f["k"]["$lt"])
                               for f in filters] + [events]
            expected = sum(expected_counts)
            load = await Load(stack, server.ws_url, subscribe, sample=[n]).start()
            writer = DbWriter(db.uri, database, collection)
            try:
                await load.reset()
                window = CpuWindow({"server": [server.pid], "database": [db.pid or 0],
                                    "load": load.pids})
                log = await writer.run(events, None, batch=100, extra=_key_of(keys))
                complete = await load.wait(expected, 120, idle=10)
                cpu = window.stop()
                got = await load.report()
            finally:
                await writer.close()
                await load.stop()
            span = (got.last_ns - log.started_ns) / 1e9
            cost = await asyncio.to_thread(matching_cost, n, selectivity)
            wrong = sum(1 for have, want in zip(got.counts, expected_counts, strict=False)
                        if have != want)
            result = {
                "subscribers": n, "selectivity": selectivity, "events": events,
                "expected": expected, "delivered": got.total,
                "complete": complete and got.total == expected and wrong == 0,
                "connections_with_wrong_count": wrong,
                "matches_per_event": round((expected - events) / events, 2),
                "events_per_s": round(events / span, 1) if span > 0 else 0.0,
                "deliveries_per_s": round(got.total / span, 1) if span > 0 else 0.0,
                "insert_rate": round(log.rate(), 1),
                "server_cpu_us_per_event": round(
                    cpu["cores"]["server"] * cpu["seconds"] / events * 1e6, 1),
                "client_cores": got.cpu_cores, "client_saturated": got.saturated,
                "cpu": cpu, **cost,
            }
            runs.append(result)
            opts.log(f"filters {selectivity:>6.1%}: match {cost['match_us_per_event']} µs/event,"
                     f" {result['events_per_s']:,.0f} events/s, "
                     f"{result['deliveries_per_s']:,.0f} deliveries/s, delivered "
                     f"{got.total}/{expected}; {cpu_note(cpu)}")
    return measurement.finish()


def table(runs: Runs) -> str:
    """The Markdown table of ``filters.md``."""
    lines = ["Distinct range filters `{\"k\": {\"$gte\": a, \"$lt\": b}}`, one per subscriber "
             "(plus one unfiltered subscriber that marks the end). Matching cost measured in "
             "process on the hub; events/s end to end (database inserts as fast as it takes "
             "them, through one change stream).", "",
             "| subscribers | selectivity | matches/event | match µs/event | ns/subscription "
             "| publish µs/event | events/s | deliveries/s | server CPU µs/event "
             "| delivered / expected |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        lines.append(
            f"| {r['subscribers']:,} | {r['selectivity']:.1%} | {r['matches_per_event']:.1f} "
            f"| {r['match_us_per_event']:.0f} | {r['match_ns_per_subscription']:.0f} "
            f"| {r['publish_us_per_event']:.0f} | {r['events_per_s']:,.0f} "
            f"| {r['deliveries_per_s']:,.0f} | {r['server_cpu_us_per_event']:,.0f} "
            f"| {r['delivered']:,} / {r['expected']:,} |")
    return "\n".join(lines) + "\n"


def chart(runs: Runs, path: Path) -> None:
    """``filters.png``."""
    fig, (ax1, ax2) = report.figure(2, 5.2)
    labels = [f"{r['selectivity']:.1%}" for r in runs]
    ax1.bar(labels, [r["match_us_per_event"] for r in runs], color="tab:blue", label="match")
    ax1.bar(labels, [r["publish_us_per_event"] - r["match_us_per_event"] for r in runs],
            bottom=[r["match_us_per_event"] for r in runs], color="tab:orange",
            label="render + send (no I/O)")
    ax1.set_ylabel("µs per event (in process)")
    ax1.set_xlabel("selectivity")
    ax1.set_title(f"hub cost per event, {runs[0]['subscribers']:,} filters" if runs else "")
    ax1.legend(fontsize=8)
    ax2.bar(labels, [r["events_per_s"] for r in runs], color="tab:green")
    ax2.set_ylabel("events/s end to end")
    ax2.set_xlabel("selectivity")
    ax2.set_title("throughput")
    report.save(fig, path)


def summary(runs: Runs) -> list[Row]:
    """One row per selectivity."""
    return [(f"filters, {r['subscribers']:,} distinct, {r['selectivity']:.1%}",
             f"hub {r['publish_us_per_event']:.0f} µs/event with the filter index "
             f"(evaluating every filter: {r['match_us_per_event']:.0f} µs); "
             f"{r['events_per_s']:,.0f} events/s end to end", "—")
            for r in runs]


RENDER = report.Renderer(table=table, chart=chart, summary=summary)

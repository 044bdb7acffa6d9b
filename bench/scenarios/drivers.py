"""drivers: the two drivers behind ``realtime.db`` side by side, Motor and PyMongo's async API.

Each round gives each driver a fresh SecantusDB (in memory); rounds alternate
which driver goes first:

- the seam, in this process through ``realtime.db`` only: ``insert_one``/s one
  at a time and 16 concurrent, and insert → change-stream event latency
  (``Database.watch`` in the same process, each event checked);
- the server, a ``realtime serve`` subprocess with ``REALTIME_DRIVER`` set:
  REST ``POST``/s through 16 keep-alive connections against ``insert_one``/s
  16 concurrent from this process, and REST write → WebSocket ``change``
  latency at 100 writes/s for one subscriber (the load client), with the REST
  acknowledgement at that pace against ``insert_one`` alone at the same pace
  (the floor, :func:`bench.harness.insert_floor`).

The REST figures are held against direct inserts made **while the server
runs**, alternating with the REST writes in :data:`CHUNKS` turns: the server's
change stream is then open on the database, as it always is under a REST
write. SecantusDB builds and sends each change event in the process that
takes the insert, so an open change stream makes every insert slower (the
seam's rates, with no stream open, show by how much); a floor measured without
one would charge that to the REST layer. Alternating keeps the database's
slowdown as its oplog grows out of the ratio.

With ``--profile``, a py-spy profile of each driver's server taking REST
writes flat out (``profile-rest-<driver>.*``): which layer costs what.

The table gives the medians over the rounds. ``--driver`` does not apply: both
drivers always run.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from bench import report
from bench.harness import (
    Load,
    Options,
    RestWriter,
    Runs,
    Stack,
    WriteLog,
    insert_floor,
    insert_times,
    latency_stats,
    percentiles,
    profile_server,
)
from bench.report import Row, fmt

if TYPE_CHECKING:
    from realtime.db import ChangeStream, Collection
    from realtime.embedded import EmbeddedServer

__all__ = ["DRIVERS", "RENDER", "medians", "run"]

Driver = Literal["motor", "pymongo"]
DRIVERS: tuple[Driver, ...] = ("motor", "pymongo")
#: Concurrent inserts (seam) and keep-alive connections (REST).
CONCURRENCY = 16
#: The paced REST writer's rate for the WebSocket latency (writes/s).
PACED_RATE = 100
#: Turns of direct inserts and REST writes, alternating, while the server runs.
CHUNKS = 4
#: Seconds to wait for one change-stream event.
EVENT_TIMEOUT = 10.0

#: The figures whose medians the table shows: key, then (for percentiles) the percentile.
FIGURES: tuple[tuple[str, str | None], ...] = (
    ("insert_seq_per_s", None), ("insert_c16_per_s", None),
    ("event_ms", "p50"), ("event_ms", "p99"), ("rest_c16_per_s", None),
    ("ws_ms", "p50"), ("ws_ms", "p99"), ("paced_insert_ms", "p50"), ("paced_ack_ms", "p50"),
    ("live_insert_c16_per_s", None), ("live_paced_insert_ms", "p50"))


async def run(opts: Options) -> dict[str, Any]:
    """Run the scenario; return (and write) its report."""
    rounds = opts.rounds or (1 if opts.quick else 3)
    inserts = 100 if opts.quick else 2000
    events = 20 if opts.quick else 200
    ws_writes = 20 if opts.quick else 600
    async with report.Measurement(opts, "drivers", RENDER) as measurement:
        stack, runs = measurement.stack, measurement.runs
        for r in range(rounds):
            for driver in DRIVERS if r % 2 == 0 else tuple(reversed(DRIVERS)):
                db = await stack.database()
                database = f"bench_{uuid.uuid4().hex[:8]}"
                row: dict[str, Any] = {"driver": driver, "round": r + 1}
                row |= await _seam(db.uri, database, driver, inserts, events)
                # The database's own insert at the REST writer's pace, no stream open.
                row["paced_insert_ms"] = await insert_floor(db.uri, database, driver,
                                                            PACED_RATE, ws_writes)
                profile = opts.profile and not opts.quick and r == 0
                row |= await _server(stack, db, database, driver, inserts, ws_writes,
                                     opts if profile else None)
                await asyncio.to_thread(db.stop)
                row["complete"] = (row["insert_failures"] == 0
                                   and row["live_insert_failures"] == 0
                                   and row["events_received"] == row["events_expected"]
                                   and row["rest_acked"] == row["rest_writes"]
                                   and row["ws_delivered"] == row["ws_expected"])
                runs.append(row)
                opts.log(f"drivers round {r + 1} {driver:<7}: insert_one "
                         f"{row['insert_seq_per_s']:,.0f}/s (1 at a time), "
                         f"{row['insert_c16_per_s']:,.0f}/s (16), insert → event p50 "
                         f"{fmt(row['event_ms']['p50'], 2)} ms; server running: REST "
                         f"{row['rest_c16_per_s']:,.0f}/s vs insert_one "
                         f"{row['live_insert_c16_per_s']:,.0f}/s (16), REST → WS p50 "
                         f"{fmt(row['ws_ms']['p50'], 2)} ms p99 {fmt(row['ws_ms']['p99'], 2)} ms; "
                         f"at {PACED_RATE}/s REST ack p50 {fmt(row['paced_ack_ms']['p50'], 2)} "
                         f"ms, insert_one alone {fmt(row['live_paced_insert_ms']['p50'], 2)} ms "
                         f"({fmt(row['paced_insert_ms']['p50'], 2)} ms with no stream open)")
    return measurement.finish(medians=medians(runs))


async def _next_event(stream: ChangeStream, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = await stream.try_next()
        if event is not None:
            return event
    return None


async def _seam(uri: str, database: str, driver: Driver, inserts: int,
                events: int) -> dict[str, Any]:
    """``insert_one`` rates and insert → event latency through ``realtime.db`` only."""
    from realtime.config import Settings
    from realtime.db import Database

    db = Database(Settings(mongodb_uri=uri, driver=driver, database=database), uri)
    failures = 0
    try:
        coll = db.collection("seam")
        await db.prepare_collection("seam")
        took: list[float] = []
        start = time.perf_counter()
        for i in range(inserts):
            t = time.perf_counter_ns()
            try:
                await coll.insert_one({"i": i})
            except Exception:  # counted: the run is then incomplete
                failures += 1
            took.append((time.perf_counter_ns() - t) / 1e6)
        sequential = inserts / (time.perf_counter() - start)
        concurrent, failed = await _concurrent_inserts(coll, inserts)
        failures += failed

        stream = await db.watch([{"$match": {"ns.coll": "lat"}}], max_await_time_ms=50)
        latency: list[float] = []
        wrong = 0
        try:
            lat = db.collection("lat")
            for i in range(events):
                sent = time.perf_counter()
                await lat.insert_one({"i": i})
                event = await _next_event(stream, EVENT_TIMEOUT)
                if event is None:
                    break
                if event.get("fullDocument", {}).get("i") != i:
                    wrong += 1
                    continue
                latency.append((time.perf_counter() - sent) * 1000)
        finally:
            await stream.close()
    finally:
        await db.close()
    return {"inserts": inserts, "insert_failures": failures,
            "insert_seq_per_s": round(sequential, 1), "insert_c16_per_s": round(concurrent, 1),
            "insert_ms": percentiles(took),
            "events_expected": events, "events_received": len(latency), "events_wrong": wrong,
            "event_ms": percentiles(latency, events - len(latency))}


async def _concurrent_inserts(coll: Collection, count: int) -> tuple[float, int]:
    """``insert_one``/s into ``coll`` with :data:`CONCURRENCY` in flight, and the failures."""
    failures = 0
    free = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        nonlocal failures
        async with free:
            try:
                await coll.insert_one({"c": i})
            except Exception:  # counted: the run is then incomplete
                failures += 1

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return count / (time.perf_counter() - start), failures


async def _alternating(uri: str, database: str, driver: Driver, writer: RestWriter,
                       chunk: int) -> dict[str, Any]:
    """Direct inserts (16 concurrent) and REST writes, :data:`CHUNKS` turns each, alternating.

    The direct client is closed before returning: the load client forks next, and
    a fork with PyMongo's async client open complains in the child.
    """
    from realtime.config import Settings
    from realtime.db import Database

    direct = Database(Settings(mongodb_uri=uri, driver=driver, database=database), uri)
    direct_s = rest_s = 0.0
    direct_failures = rest_acked = rest_failures = 0
    try:
        await direct.prepare_collection("direct")
        for turn in range(CHUNKS):
            # Who goes first alternates: the database slows as its oplog grows.
            for step in ("direct", "rest") if turn % 2 == 0 else ("rest", "direct"):
                if step == "direct":
                    rate, failed = await _concurrent_inserts(direct.collection("direct"), chunk)
                    direct_s += chunk / rate
                    direct_failures += failed
                else:
                    rest = await writer.run(chunk, None, first_seq=turn * chunk)
                    rest_s += rest.count / max(rest.rate(), 1e-9)
                    rest_acked += rest.count
                    rest_failures += rest.failures
    finally:
        await direct.close()
    total = chunk * CHUNKS
    return {"rest_writes": total, "rest_acked": rest_acked, "rest_failures": rest_failures,
            "rest_c16_per_s": round(rest_acked / rest_s, 1) if rest_s else 0.0,
            "live_inserts": total, "live_insert_failures": direct_failures,
            "live_insert_c16_per_s": round(total / direct_s, 1) if direct_s else 0.0}


async def _server(stack: Stack, db: EmbeddedServer, database: str, driver: Driver,
                  writes: int, ws_writes: int, profile: Options | None) -> dict[str, Any]:
    """REST write rate and REST write → WebSocket change latency on a real server.

    Direct inserts from this process are measured on the same database while the
    server runs, alternating with the REST writes (see the module's docstring).
    With ``profile`` (the options), a repeat of the flat-out writes is profiled.
    """
    server = await stack.realtime(db.uri, database, {"REALTIME_DRIVER": driver})
    chunk = max(1, writes // CHUNKS)
    try:
        writer = await RestWriter(server.port, "rest", connections=CONCURRENCY).open()
        try:
            rates = await _alternating(db.uri, database, driver, writer, chunk)
            if profile is not None:
                # (all the writes again: a few seconds, enough samples to say which
                # layer costs what)
                seconds = max(1.0, writes / max(rates["rest_c16_per_s"], 1.0))
                profiling = asyncio.ensure_future(profile_server(
                    server.pid, seconds, profile.results(), f"rest-{driver}", profile.log))
                await writer.run(writes, None, first_seq=writes)
                await profiling
        finally:
            await writer.close()
        sub = orjson.dumps({"op": "subscribe", "sub": "s", "collection": "lat"}).decode()
        load = await Load(stack, server.ws_url, [[sub]], sample=[0], processes=1).start()
        paced = await RestWriter(server.port, "lat", connections=4).open()
        try:
            # The floor at the same pace with the server's stream open (its subscriber
            # connected) and the paced REST writes, alternating in turns.
            await load.reset()
            took: list[float] = []
            log = WriteLog()
            per = max(1, ws_writes // CHUNKS)
            for turn in range(CHUNKS):
                for step in ("floor", "rest") if turn % 2 == 0 else ("rest", "floor"):
                    if step == "floor":
                        took += await insert_times(db.uri, database, driver, PACED_RATE, per)
                    else:
                        part = await paced.run(per, PACED_RATE, first_seq=turn * per)
                        log.sent |= part.sent
                        log.acked |= part.acked
                        log.failures += part.failures
            floor = percentiles(took)
            await load.wait(per * CHUNKS, 20, idle=10)
            got = await load.report()
        finally:
            await paced.close()
            await load.stop()
    finally:
        await server.stop()
    written = len(log.sent)
    stats = latency_stats(got, log, written, 1)
    return {**rates, "live_paced_insert_ms": floor,
            "ws_writes": written, "ws_write_failures": log.failures,
            "ws_expected": written, "ws_delivered": got.total,
            "ws_ms": stats["sent_to_received_ms"], "paced_ack_ms": log.ack_ms(),
            "client_cores": got.cpu_cores}


def _figure(row: dict[str, Any], key: str, pct: str | None) -> float | None:
    if key not in row:  # (reports from before the figure existed)
        return None
    value = row[key] if pct is None else row[key][pct]
    return None if value is None else float(value)


def medians(runs: Runs) -> dict[str, dict[str, float | None]]:
    """Per driver, the median of every figure over the rounds (None: never measured)."""
    result: dict[str, dict[str, float | None]] = {}
    for driver in DRIVERS:
        mine = [r for r in runs if r["driver"] == driver]
        if not mine:
            continue
        medians_of: dict[str, float | None] = {}
        for key, pct in FIGURES:
            values = [v for r in mine if (v := _figure(r, key, pct)) is not None]
            name = key if pct is None else f"{key.removesuffix('_ms')}_{pct}_ms"
            medians_of[name] = round(statistics.median(values), 3) if values else None
        result[driver] = medians_of
    return result


def _direct(m: dict[str, float | None]) -> float | None:
    """Direct inserts/s, 16 concurrent, while the server ran (older reports: without it)."""
    return m["live_insert_c16_per_s"] or m["insert_c16_per_s"]


def _floor(m: dict[str, float | None]) -> float | None:
    """insert_one p50 at 100/s while the server ran (older reports: without it)."""
    return m["live_paced_insert_p50_ms"] or m["paced_insert_p50_ms"]


def _ratio(m: dict[str, float | None]) -> float | None:
    rest, direct = m["rest_c16_per_s"], _direct(m)
    return rest / direct if rest and direct else None


def _over(m: dict[str, float | None]) -> float | None:
    """What a REST write adds to the database's own insert at 100/s (ms, medians)."""
    ack, insert = m["paced_ack_p50_ms"], _floor(m)
    return ack - insert if ack is not None and insert is not None else None


def table(runs: Runs) -> str:
    """The Markdown table of ``drivers.md``: medians over the rounds."""
    lines = ["The two drivers behind `realtime.db`, medians over the rounds (a fresh "
             "SecantusDB per driver and round). **No stream open**: in process, through "
             "`realtime.db` only, before the server starts (insert → event: one stream "
             "open in the same process). **Server running**: a `realtime serve` process "
             "on the same database, its change stream open; direct `insert_one` from the "
             "runner and REST writes alternate in 4 turns; REST: 16 keep-alive "
             "connections, against 16 concurrent direct inserts (target: ≥ 80 %); REST → "
             "WS: one subscriber, 100 writes/s, request sent → change received; at "
             "100/s: that writer's request → 201, against `insert_one` alone at the same "
             "pace with the server running (target: within 1 ms). An open change stream "
             "slows SecantusDB's every insert (it builds the event in the same process): "
             "compare the two insert_one columns. Checked: events, direct inserts, REST "
             "writes and WebSocket changes received ÷ sent, over every round.", "",
             "| driver | rounds | insert_one/s, no stream open (1 at a time / 16) "
             "| insert → event p50 / p99 ms | insert_one/s (16), server running "
             "| REST POST/s (16 connections) | REST ÷ insert_one "
             "| REST → WS change p50 / p99 ms "
             "| at 100/s: insert_one alone p50 ms, no stream / server running "
             "| REST ack p50 ms | REST - insert ms | checked |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for driver, m in medians(runs).items():
        mine = [r for r in runs if r["driver"] == driver]
        got = sum(r["events_received"] + r["rest_acked"] + r["ws_delivered"]
                  + r.get("live_inserts", 0) - r.get("live_insert_failures", 0) for r in mine)
        sent = sum(r["events_expected"] + r["rest_writes"] + r["ws_expected"]
                   + r.get("live_inserts", 0) for r in mine)
        ratio = _ratio(m)
        lines.append(
            f"| {driver} | {len(mine)} | {fmt(m['insert_seq_per_s'], 0)} "
            f"/ {fmt(m['insert_c16_per_s'], 0)} "
            f"| {fmt(m['event_p50_ms'], 2)} / {fmt(m['event_p99_ms'], 2)} "
            f"| {fmt(m['live_insert_c16_per_s'], 0)} "
            f"| {fmt(m['rest_c16_per_s'], 0)} | {'—' if ratio is None else f'{ratio:.0%}'} "
            f"| {fmt(m['ws_p50_ms'], 2)} / {fmt(m['ws_p99_ms'], 2)} "
            f"| {fmt(m['paced_insert_p50_ms'], 2)} / {fmt(m['live_paced_insert_p50_ms'], 2)} "
            f"| {fmt(m['paced_ack_p50_ms'], 2)} "
            f"| {fmt(_over(m), 2)} | {got:,} / {sent:,} |")
    return "\n".join(lines) + "\n"


def chart(runs: Runs, path: Path) -> None:
    """``drivers.png``: rates and latencies, one bar per driver."""
    fig, (ax1, ax2) = report.figure(2, 5.2)
    m = medians(runs)
    drivers = list(m)
    groups = (
        (ax1, (("insert_seq_per_s", "insert_one, 1 at a time"),
               ("insert_c16_per_s", "insert_one, 16 concurrent"),
               ("live_insert_c16_per_s", "insert_one, 16, server running"),
               ("rest_c16_per_s", "REST POST, 16 connections")), "per second"),
        (ax2, (("event_p50_ms", "insert → event p50"), ("event_p99_ms", "insert → event p99"),
               ("ws_p50_ms", "REST → WS p50"), ("ws_p99_ms", "REST → WS p99")), "ms"))
    for ax, figures, unit in groups:
        width = 0.8 / max(1, len(drivers))
        for k, driver in enumerate(drivers):
            xs = [i + (k - (len(drivers) - 1) / 2) * width for i in range(len(figures))]
            ax.bar(xs, [m[driver][key] or 0.0 for key, _ in figures], width, label=driver)
        ax.set_xticks(range(len(figures)), [label for _, label in figures], fontsize=7,
                      rotation=15)
        ax.set_ylabel(unit)
        ax.legend(fontsize=8)
    ax1.set_title("throughput (median over rounds)")
    ax2.set_title("latency (median over rounds)")
    report.save(fig, path)


def summary(runs: Runs) -> list[Row]:
    """REST writes/s against the driver's own, per driver."""
    rows: list[Row] = []
    for driver, m in medians(runs).items():
        ratio = _ratio(m)
        rows.append((f"REST writes/s vs driver writes/s ({driver}, 16 concurrent)",
                     f"{fmt(m['rest_c16_per_s'], 0)} / {fmt(_direct(m), 0)}"
                     f" = {'—' if ratio is None else f'{ratio:.0%}'}", "≥ 80 %"))
        rows.append((f"REST ack p50 at 100 writes/s over insert_one alone ({driver})",
                     f"{fmt(m['paced_ack_p50_ms'], 2)} - {fmt(_floor(m), 2)}"
                     f" = {fmt(_over(m), 2)} ms", "≤ 1 ms"))
    return rows


RENDER = report.Renderer(table=table, chart=chart, summary=summary)

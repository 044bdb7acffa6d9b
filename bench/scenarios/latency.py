"""latency: N subscribers x a REST writer at R writes/s; request sent → message received.

p50/p90/p99/max over the sampled connections, delivered/expected, the REST
acknowledgement and the database's own insert at the same pace (the floor).
Full runs measure the default driver over the whole grid, and the other driver
(motor vs pymongo) at 100 writes/s, the rate of the targets.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench import report
from bench.harness import (
    SAMPLED_CONNECTIONS,
    Child,
    CpuWindow,
    Load,
    Options,
    RestWriter,
    Runs,
    Stack,
    default_driver,
    insert_floor,
    latency_stats,
    other_driver,
    percentiles,
    profile_server,
    spread,
)
from bench.report import Row, cpu_note, fmt

__all__ = ["RENDER", "run"]


async def run(opts: Options) -> dict[str, Any]:
    """Run the scenario; return (and write) its report."""
    driver = opts.server_env.get("REALTIME_DRIVER") or default_driver()
    other = other_driver(driver)
    plan: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
    if opts.quick:
        plan = [(driver, opts.sizes or (20,), (100,))]
    else:
        plan = [(driver, opts.sizes or (100, 500, 1000), (10, 100, 500)),
                (other, tuple(n for n in (opts.sizes or (100, 500)) if n <= 500) or (100,),
                 (100,))]
    stack = Stack(opts)
    runs: Runs = []
    try:
        for drv, sizes, rates in plan:
            for n in sizes:
                # A fresh database and server per size: SecantusDB (a Python server)
                # slows down as its oplog grows, which would charge later runs.
                db = await stack.database()
                database = f"bench_{uuid.uuid4().hex[:8]}"
                server = await stack.realtime(db.uri, database, {"REALTIME_DRIVER": drv})
                await _size(opts, stack, db, database, server, drv, n, rates, runs)
                await server.stop()
                await asyncio.to_thread(db.stop)
    finally:
        await stack.close()
    return report.finish(opts, "latency", runs, RENDER, default_driver=driver)


async def _size(opts: Options, stack: Stack, db: Any, database: str, server: Child,
                driver: str, n: int, rates: Sequence[int], runs: Runs) -> None:
    collection = f"lat{n}{driver}"
    sub = orjson.dumps({"op": "subscribe", "sub": "s", "collection": collection}).decode()
    sample = spread(n, SAMPLED_CONNECTIONS)
    load = await Load(stack, server.ws_url, [[sub]] * n, sample=sample).start()
    writer = await RestWriter(server.port, collection).open()
    seq = 0
    try:
        for rate in rates:
            # The database's own insert at this pace (none at 500/s: one insert at
            # a time cannot keep that pace here), before the subscribers load it.
            floor = (await insert_floor(db.uri, database, driver, rate,
                                        30 if opts.quick else min(300, rate * 3))
                     if rate <= 100 else percentiles([]))
            # Warm up (connection pools, caches), then measure.
            warm = 10 if opts.quick else 20
            await load.settle(quiet=0.5)
            await load.reset()
            await writer.run(warm, rate, first_seq=seq)
            seq += warm
            await load.wait(warm * n, 30)
            await load.settle(quiet=0.3)
            await load.reset()
            # (500/s is more than the REST API takes here: keep those runs short)
            duration = (1.0 if opts.quick or rate >= 500
                        else min(8.0, max(2.0, 400_000 / (n * rate))))
            count = max(1, round(rate * duration))
            window = CpuWindow({"server": [server.pid], "database": [db.pid or 0],
                                "load": load.pids})
            log = await writer.run(count, rate, first_seq=seq)
            seq += count
            expected = count * n
            complete = await load.wait(expected, 20 + duration, idle=10)
            cpu = window.stop()
            got = await load.report()
            stats = latency_stats(got, log, count, len(sample))
            result = {
                "driver": driver, "subscribers": n, "rate": rate, "seconds": round(duration, 2),
                "writes": count, "write_failures": log.failures,
                "write_rate": round(log.rate(), 1),
                "writer_max_late_ms": round(log.max_late_ms, 2),
                "rest_ack_ms": log.ack_ms(),
                "db_insert_ms": floor,
                "expected": expected, "delivered": got.total,
                "complete": complete and got.total == expected,
                "deliveries_per_s": round(got.rate(), 1),
                "closes": got.closes, "client_cores": got.cpu_cores,
                "client_saturated": got.saturated, "cpu": cpu, **stats,
            }
            runs.append(result)
            lat = stats["sent_to_received_ms"]
            opts.log(f"latency {driver:<7} {n:>5} subs x {rate:>3}/s: p50 {fmt(lat['p50'], 2)}"
                     f" ms p99 {fmt(lat['p99'], 2)} ms, delivered {got.total}/{expected}, "
                     f"writes {log.rate():.0f}/s; {cpu_note(cpu)}")
            if opts.profile and not opts.quick and rate == 100 and n in (100, 500):
                # Profiled in a repeat of the same load, outside the measured window:
                # sampling costs CPU the measured run must not pay.
                await load.settle(quiet=0.3)
                profiling = asyncio.ensure_future(profile_server(
                    server.pid, duration, opts.results(), f"latency-{n}x{rate}-{driver}",
                    opts.log))
                await writer.run(count, rate, first_seq=seq)
                seq += count
                await profiling
                await load.settle(quiet=0.5)
                await load.reset()
    finally:
        await writer.close()
        await load.stop()


def table(runs: Runs) -> str:
    """The Markdown table of ``latency.md``."""
    lines = ["REST request sent → change received by the subscriber (sampled connections), "
             "through SecantusDB (in memory) and one change stream. writes/s is the rate the "
             "REST API took (below the target rate when the server could not keep up); "
             "ack → received is the part after the writer got its 201 (negative: the change "
             "arrived first), i.e. without the REST request's own queueing. DB insert "
             "alone is the floor under the REST write: `insert_one` straight into the "
             "database at the same pace, one at a time, before the subscribers connect.", "",
             "| driver | subscribers | writes/s | deliveries/s | p50 ms | p90 ms | p99 ms "
             "| max ms | delivered / expected | REST ack p50 ms | DB insert alone p50 ms "
             "| ack → received p50 / p99 ms | server cores | client cores "
             "| other load (cores) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lat = r["sent_to_received_ms"]
        lines.append(
            f"| {r.get('driver', '')} | {r['subscribers']:,} | {r['write_rate']:,.0f} "
            f"| {r['deliveries_per_s']:,.0f} "
            f"| {fmt(lat['p50'], 2)} | {fmt(lat['p90'], 2)} | {fmt(lat['p99'], 2)} "
            f"| {fmt(lat['max'], 1)} | {r['delivered']:,} / {r['expected']:,} "
            f"| {fmt(r['rest_ack_ms']['p50'], 2)} "
            f"| {fmt((r.get('db_insert_ms') or {}).get('p50'), 2)} "
            f"| {fmt(r['acked_to_received_ms']['p50'], 1)} / "
            f"{fmt(r['acked_to_received_ms']['p99'], 1)} | {r['cpu']['cores']['server']:.2f} "
            f"| {sum(r['client_cores']):.2f}{' (saturated)' if r['client_saturated'] else ''} "
            f"| {r['cpu']['other_cores']:.2f} |")
    return "\n".join(lines) + "\n"


def panel(ax: Any, runs: Runs) -> None:
    """p50 and p99 against the write rate, one line per subscriber count."""
    default = runs[0].get("driver") if runs else None
    for n in sorted({r["subscribers"] for r in runs}):
        mine = [r for r in runs if r["subscribers"] == n and r.get("driver") == default]
        xs = [r["rate"] for r in mine]
        for key, style in (("p50", "o-"), ("p99", "s--")):
            ys = [r["sent_to_received_ms"][key] or float("nan") for r in mine]
            ax.plot(xs, ys, style, label=f"{n:,} subs {key}")
    for r in runs:
        if r.get("driver") != default:
            for key, marker in (("p50", "^"), ("p99", "v")):
                value = r["sent_to_received_ms"][key]
                if value:
                    ax.plot([r["rate"]], [value], marker, color="black", ms=5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("writes/s (REST)")
    ax.set_ylabel("request sent → received (ms)")
    ax.set_title("write → subscriber latency")
    ax.legend(fontsize=7)


def chart(runs: Runs, path: Path) -> None:
    """``latency.png``."""
    fig, (ax,) = report.figure()
    panel(ax, runs)
    default = runs[0].get("driver") if runs else ""
    ax.set_title(f"realtime latency ({default}; ▲▼ other driver)", fontsize=10)
    report.save(fig, path)


def summary(runs: Runs) -> list[Row]:
    """The runs at 100 writes/s."""
    rows: list[Row] = []
    for r in runs:
        if r["rate"] == 100:
            s = r["sent_to_received_ms"]
            rows.append((f"latency, {r['subscribers']:,} subs x 100 writes/s "
                         f"({r.get('driver', '')})",
                         f"p50 {fmt(s['p50'], 1)} ms, p99 {fmt(s['p99'], 1)} ms",
                         "p50 and p99 at or below the Node `ws` peer's, same run"))
    return rows


RENDER = report.Renderer(table=table, chart=chart, summary=summary, panel=panel)

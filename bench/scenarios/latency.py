"""latency: realtime against a Node.js peer, then N subscribers x a REST writer at R writes/s.

Two parts. **Against the peer** (``mode: direct``): at each load of
:data:`PEER_LOADS` (subscribers x writes/s), a fresh database gets inserts
straight from the runner (so only the fan-out differs) while, one after the
other and in alternating order, realtime on each driver and the Node.js peer
(``bench/peers/node``: ``ws`` and the ``mongodb`` driver, one change stream,
``JSON.stringify`` once, a send to every socket) serve the same subscribers
with the same load client; insert sent → message received, and realtime ÷
peer for p50 and p99. **Through REST** (``mode: rest``): p50/p90/p99/max over
the sampled connections, delivered/expected, the REST acknowledgement and the
database's own insert at the same pace (the floor). Full runs measure the
default driver over the whole grid, and the other driver (motor vs pymongo) at
100 writes/s, the rate of the targets.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import statistics
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
    PacedInserter,
    RestWriter,
    Runs,
    Stack,
    insert_floor,
    latency_stats,
    other_driver,
    percentiles,
    profile_server,
    spread,
)
from bench.report import Row, cpu_note, fmt

__all__ = ["PEER_LOADS", "RENDER", "run"]

#: The loads (subscribers, writes/s) at which realtime is measured against the Node.js peer.
PEER_LOADS = ((100, 100), (500, 100), (1000, 50), (500, 200), (2000, 25))


async def run(opts: Options) -> dict[str, Any]:
    """Run the scenario; return (and write) its report."""
    measurement = report.Measurement(opts, "latency", RENDER)  # each part has its own stack
    runs = measurement.runs
    if opts.part != "rest":
        if opts.quick and shutil.which("node") is None:
            opts.log("latency: node is not installed; the quick run skips the Node.js peer")
        else:
            await _against_peer(opts, runs)
    if opts.part != "peer":
        await _through_rest(opts, runs)
    return measurement.finish(default_driver=opts.driver())


async def _against_peer(opts: Options, runs: Runs) -> None:
    """realtime (both drivers) and the Node.js peer at each of :data:`PEER_LOADS`.

    ``opts.rounds`` rounds (3; 1 quick), each load on a fresh database; who goes
    first alternates between loads and rounds. The table shows the medians.
    """
    if opts.quick:
        loads: tuple[tuple[int, int], ...] = ((opts.sizes or (20,))[0], 100),
    else:
        loads = tuple(load for load in PEER_LOADS if not opts.sizes or load[0] in opts.sizes)
    rounds = opts.rounds or (1 if opts.quick else 3)
    driver = opts.driver()
    servers = [f"realtime-{driver}", f"realtime-{other_driver(driver)}", "node"]
    if opts.quick:
        servers = [f"realtime-{driver}", "node"]
    stack = Stack(opts)
    try:
        for r in range(rounds):
            for turn, (n, rate) in enumerate(loads):
                db = await stack.database()
                database = f"bench_{uuid.uuid4().hex[:8]}"
                # Alternate who goes first: the database slows as its oplog grows.
                order = servers if (turn + r) % 2 == 0 else servers[::-1]
                measured: Runs = []
                for name in order:
                    profile = opts.profile and r == 0
                    one = await _direct(opts, stack, db, database, name, n, rate, profile)
                    one["round"] = r + 1
                    measured.append(one)
                peer = next(m for m in measured if m["server"] == "node")
                for m in measured:
                    if m is not peer:
                        m["ratio_to_peer"] = _ratios(m, peer)
                        opts.log(f"latency round {r + 1} {m['server']} ÷ node at {n} x {rate}/s:"
                                 f" p50 {fmt(m['ratio_to_peer']['p50'], 2)}, "
                                 f"p99 {fmt(m['ratio_to_peer']['p99'], 2)}")
                runs.extend(sorted(measured, key=lambda m: servers.index(m["server"])))
                await asyncio.to_thread(db.stop)
    finally:
        await stack.close()


def _ratios(mine: dict[str, Any], peer: dict[str, Any]) -> dict[str, float | None]:
    ratios: dict[str, float | None] = {}
    for key in ("p50", "p90", "p99"):
        a, b = mine["sent_to_received_ms"][key], peer["sent_to_received_ms"][key]
        ratios[key] = round(a / b, 3) if a is not None and b else None
    return ratios


def peer_medians(runs: Runs) -> Runs:
    """Per load and server, the median percentiles over the rounds, and realtime ÷ peer.

    A percentile not received in some round (None) counts as infinitely late.
    """
    groups: dict[tuple[int, int, str], Runs] = {}
    for r in runs:
        if r.get("mode") == "direct":
            groups.setdefault((r["subscribers"], r["rate"], r["server"]), []).append(r)
    rows: Runs = []
    for (n, rate, server), mine in groups.items():
        lat: dict[str, float | None] = {}
        for key in ("p50", "p90", "p99", "max"):
            values = [m["sent_to_received_ms"][key] for m in mine]
            ordered = sorted(v if v is not None else math.inf for v in values)
            middle = statistics.median(ordered)
            lat[key] = None if math.isinf(middle) else round(middle, 3)
        rows.append({"subscribers": n, "rate": rate, "server": server, "rounds": len(mine),
                     "sent_to_received_ms": lat,
                     "delivered": sum(m["delivered"] for m in mine),
                     "expected": sum(m["expected"] for m in mine),
                     "frames_per_read": statistics.median(
                         [m.get("frames_per_read") or 0.0 for m in mine]),
                     "server_cores": statistics.median(m["cpu"]["cores"]["server"]
                                                       for m in mine),
                     "client_cores": statistics.median(sum(m["client_cores"]) for m in mine),
                     "client_saturated": any(m["client_saturated"] for m in mine),
                     "other_cores": statistics.median(m["cpu"]["other_cores"] for m in mine)})
    for row in rows:
        peer = next((p for p in rows if p["server"] == "node"
                     and (p["subscribers"], p["rate"]) == (row["subscribers"], row["rate"])),
                    None)
        if peer is not None and row is not peer:
            row["ratio_to_peer"] = _ratios(row, peer)
    return rows


async def _direct(opts: Options, stack: Stack, db: Any, database: str, name: str, n: int,
                  rate: int, profile: bool) -> dict[str, Any]:
    """One server at ``n`` subscribers x ``rate`` inserts/s straight into the database."""
    collection = f"peer{n}x{rate}{name.replace('-', '')}"
    if name == "node":
        server = await stack.node_peer(db.uri, database)
    else:
        server = await stack.realtime(db.uri, database,
                                      {"REALTIME_DRIVER": name.removeprefix("realtime-")})
    sub = orjson.dumps({"op": "subscribe", "sub": "s", "collection": collection}).decode()
    sample = spread(n, SAMPLED_CONNECTIONS)
    writer = PacedInserter(db.uri, database, collection)
    load = await Load(stack, server.ws_url, [[sub]] * n, sample=sample).start()
    try:
        warm = 10 if opts.quick else 20
        await writer.run(warm, rate, first_seq=0)
        await load.wait(warm * n, 30)
        await load.settle(quiet=0.3)
        await load.reset()
        duration = 1.0 if opts.quick else min(8.0, max(3.0, 400_000 / (n * rate)))
        count = max(1, round(rate * duration))
        window = CpuWindow({"server": [server.pid], "database": [db.pid or 0],
                            "load": load.pids})
        log = await writer.run(count, rate, first_seq=warm)
        expected = count * n
        complete = await load.wait(expected, 20 + duration, idle=10)
        cpu = window.stop()
        got = await load.report()
        if profile and not opts.quick and name.startswith("realtime") and n == 500:
            # A repeat of the same load, profiled outside the measured window.
            await load.settle(quiet=0.3)
            profiling = asyncio.ensure_future(profile_server(
                server.pid, duration, opts.results(), f"latency-direct-{n}x{rate}-"
                f"{name.removeprefix('realtime-')}", opts.log))
            await writer.run(count, rate, first_seq=warm + count)
            await profiling
    finally:
        await load.stop()
        await writer.close()
        await server.stop()
    stats = latency_stats(got, log, count, len(sample))
    result = {
        "mode": "direct", "server": name, "subscribers": n, "rate": rate,
        "seconds": round(duration, 2), "writes": count, "write_failures": log.failures,
        "write_rate": round(log.rate(), 1), "writer_max_late_ms": round(log.max_late_ms, 2),
        "insert_ack_ms": log.ack_ms(), "expected": expected, "delivered": got.total,
        "complete": complete and got.total == expected,
        "deliveries_per_s": round(got.rate(), 1),
        "frames_per_read": round(got.total / got.reads, 2) if got.reads else None,
        "closes": got.closes, "client_cores": got.cpu_cores,
        "client_saturated": got.saturated, "cpu": cpu, **stats,
    }
    lat = stats["sent_to_received_ms"]
    opts.log(f"latency {name:<16} {n:>5} subs x {rate:>3}/s (direct): p50 "
             f"{fmt(lat['p50'], 2)} ms p99 {fmt(lat['p99'], 2)} ms, delivered "
             f"{got.total}/{expected}; {cpu_note(cpu)}")
    return result


async def _through_rest(opts: Options, runs: Runs) -> None:
    """The REST grid: realtime's own writer path, request sent → change received."""
    driver = opts.driver()
    other = other_driver(driver)
    plan: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
    if opts.quick:
        plan = [(driver, opts.sizes or (20,), (100,))]
    else:
        plan = [(driver, opts.sizes or (100, 500, 1000), (10, 100, 500)),
                (other, tuple(n for n in (opts.sizes or (100, 500)) if n <= 500) or (100,),
                 (100,))]
    stack = Stack(opts)
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
                "mode": "rest", "driver": driver, "subscribers": n, "rate": rate,
                "seconds": round(duration, 2),
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


def _direct_runs(runs: Runs) -> Runs:
    return [r for r in runs if r.get("mode") == "direct"]


def _rest_runs(runs: Runs) -> Runs:
    return [r for r in runs if r.get("mode", "rest") == "rest"]


def peer_table(runs: Runs) -> str:
    """The comparison with the Node.js peer (direct inserts), with realtime ÷ peer."""
    direct = peer_medians(runs)
    if not direct:
        return ""
    rounds = max(r["rounds"] for r in direct)
    lines = ["## Against the Node.js peer (inserts straight into the database)", "",
             "Insert sent → change received by the subscriber (sampled connections). The "
             "runner inserts into a fresh SecantusDB at the given pace; realtime on each "
             "driver and the Node.js peer (`bench/peers/node`: `ws` + the `mongodb` driver, "
             "one change stream, `JSON.stringify` once, a send to every socket) serve the "
             "same subscribers one after the other, in alternating order, with the same load "
             "client. **÷ node** is realtime's percentile over the peer's at the same load in "
             f"the same run (≤ 1.00: at or below the peer's). Medians over {rounds} "
             "round(s), each load on a fresh database (every round's figures are in the "
             "JSON); CPU columns: medians too.", "",
             "| load (subs x writes/s) | server | p50 ms | p90 ms | p99 ms | max ms "
             "| p50 ÷ node | p99 ÷ node | delivered / expected | frames/read "
             "| server cores | client cores | other load (cores) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in direct:
        lat = r["sent_to_received_ms"]
        ratio = r.get("ratio_to_peer") or {}
        lines.append(
            f"| {r['subscribers']:,} x {r['rate']} | {r['server']} "
            f"| {fmt(lat['p50'], 2)} | {fmt(lat['p90'], 2)} | {fmt(lat['p99'], 2)} "
            f"| {fmt(lat['max'], 1)} | {fmt(ratio.get('p50'), 2)} | {fmt(ratio.get('p99'), 2)} "
            f"| {r['delivered']:,} / {r['expected']:,} | {fmt(r.get('frames_per_read'), 2)} "
            f"| {r['server_cores']:.2f} "
            f"| {r['client_cores']:.2f}{' (saturated)' if r['client_saturated'] else ''} "
            f"| {r['other_cores']:.2f} |")
    return "\n".join(lines) + "\n"


def table(runs: Runs) -> str:
    """The Markdown table of ``latency.md``: against the peer, then through REST."""
    parts = [peer_table(runs)] if _direct_runs(runs) else []
    rest = _rest_runs(runs)
    if rest:
        parts.append(rest_table(rest))
    return "\n".join(parts)


def rest_table(runs: Runs) -> str:
    """The REST grid's table."""
    lines = ["## Through REST", "",
             "REST request sent → change received by the subscriber (sampled connections), "
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
    """p50 and p99 against the write rate, one line per subscriber count (REST)."""
    runs = _rest_runs(runs)
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
    if _direct_runs(runs):
        peer_panel(ax, runs)
        report.save(fig, path)
        return
    panel(ax, runs)
    default = runs[0].get("driver") if runs else ""
    ax.set_title(f"realtime latency ({default}; ▲▼ other driver)", fontsize=10)
    report.save(fig, path)


def peer_panel(ax: Any, runs: Runs) -> None:
    """p50 and p99 of each server at each load against the peer (medians over rounds)."""
    direct = peer_medians(runs)
    loads = list(dict.fromkeys((r["subscribers"], r["rate"]) for r in direct))
    servers = list(dict.fromkeys(r["server"] for r in direct))
    width = 0.8 / max(len(servers), 1)
    for i, server in enumerate(servers):
        mine = {(r["subscribers"], r["rate"]): r for r in direct if r["server"] == server}
        xs = [j + i * width for j in range(len(loads))]
        for key, alpha in (("p99", 0.35), ("p50", 1.0)):
            ys = [(mine[load]["sent_to_received_ms"][key] or float("nan")) if load in mine
                  else float("nan") for load in loads]
            ax.bar(xs, ys, width, alpha=alpha, color=f"C{i}",
                   label=f"{server} {key}")
    ax.set_xticks([j + width * (len(servers) - 1) / 2 for j in range(len(loads))])
    ax.set_xticklabels([f"{n:,}x{rate}" for n, rate in loads], fontsize=7)
    ax.set_xlabel("subscribers x inserts/s")
    ax.set_ylabel("insert sent → received (ms)")
    ax.set_title("latency vs the Node.js peer (p50 solid, p99 light)", fontsize=10)
    ax.legend(fontsize=6)


def summary(runs: Runs) -> list[Row]:
    """realtime ÷ the peer at each load, and the REST runs at 100 writes/s."""
    rows: list[Row] = []
    for r in peer_medians(runs):
        ratio = r.get("ratio_to_peer")
        if ratio:
            rows.append((f"latency ÷ Node.js peer, {r['subscribers']:,} x {r['rate']}/s "
                         f"({r['server']})",
                         f"p50 {fmt(ratio['p50'], 2)}, p99 {fmt(ratio['p99'], 2)}",
                         "≤ 1.00 (at or below the peer's), same run"))
    for r in _rest_runs(runs):
        if r["rate"] == 100:
            s = r["sent_to_received_ms"]
            rows.append((f"latency through REST, {r['subscribers']:,} subs x 100 writes/s "
                         f"({r.get('driver', '')})",
                         f"p50 {fmt(s['p50'], 1)} ms, p99 {fmt(s['p99'], 1)} ms",
                         "— (against the peer: the rows above)"))
    return rows


def summary_panel(ax: Any, runs: Runs) -> None:
    """The summary's latency panel: against the peer when measured, else the REST grid."""
    if _direct_runs(runs):
        peer_panel(ax, runs)
    else:
        panel(ax, runs)


RENDER = report.Renderer(table=table, chart=chart, summary=summary, panel=summary_panel)

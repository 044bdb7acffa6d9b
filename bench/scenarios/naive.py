"""naive: realtime vs one change stream per WebSocket (``bench/naive_server.py``).

The same workload against both, same database, writer and load client:
throughput (a burst of inserts) and p99 (100 inserts/s) at 10, 100 and 500
subscribers.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench import report
from bench.harness import (
    SAMPLED_CONNECTIONS,
    CpuWindow,
    DbWriter,
    Load,
    Options,
    Runs,
    latency_stats,
    spread,
)
from bench.report import Row, cpu_note, fmt

__all__ = ["DEADLINE", "RENDER", "run"]

#: Seconds a full run waits for a phase's messages.
DEADLINE = 10.0


async def run(opts: Options) -> dict[str, Any]:
    """Run the scenario; return (and write) its report."""
    sizes = opts.sizes or ((5,) if opts.quick else (10, 100, 500))
    paced_rate = 100
    paced_seconds = 1.0 if opts.quick else 3.0
    burst_messages = 500 if opts.quick else 200_000
    deadline = 30.0 if opts.quick else DEADLINE
    async with report.Measurement(opts, "naive", RENDER) as measurement:
        stack, runs = measurement.stack, measurement.runs
        db = await stack.database()
        database = f"bench_{uuid.uuid4().hex[:8]}"
        realtime_server = await stack.realtime(db.uri, database)
        naive_server = await stack.naive(db.uri, database)
        for n in sizes:
            for kind, server in (("realtime", realtime_server), ("naive", naive_server)):
                collection = f"nv{kind[0]}{n}"
                sub = orjson.dumps({"op": "subscribe", "sub": "s",
                                    "collection": collection}).decode()
                sample = spread(n, SAMPLED_CONNECTIONS)
                load = await Load(stack, server.ws_url, [[sub]] * n, sample=sample).start()
                writer = DbWriter(db.uri, database, collection)
                try:
                    # paced: 100 writes/s (latency)
                    await load.reset()
                    count = max(1, round(paced_rate * paced_seconds))
                    window = CpuWindow({"server": [server.pid], "database": [db.pid or 0],
                                        "load": load.pids})
                    log = await writer.run(count, paced_rate, batch=10)
                    paced_complete = await load.wait(count * n, deadline, idle=deadline)
                    paced_cpu = window.stop()
                    paced = await load.report()
                    stats = latency_stats(paced, log, count, len(sample))
                    if not paced_complete:  # let the rest arrive before the burst
                        await load.wait(count * n, deadline, idle=5)
                    # burst: as fast as the database takes the inserts (throughput)
                    events = max(1, min(2000, burst_messages // n))
                    await load.reset()
                    window = CpuWindow({"server": [server.pid], "database": [db.pid or 0],
                                        "load": load.pids})
                    log2 = await writer.run(events, None, batch=100, first_seq=count)
                    burst_complete = await load.wait(events * n, deadline, idle=deadline)
                    burst_cpu = window.stop()
                    burst = await load.report(samples=False)
                finally:
                    await writer.close()
                    await load.stop()
                end_ns = burst.last_ns if burst.last_ns else time.monotonic_ns()
                span = (end_ns - log2.started_ns) / 1e9
                result = {
                    "server": kind, "subscribers": n,
                    "paced_rate": paced_rate, "paced_writes": count,
                    "paced_expected": count * n, "paced_delivered": paced.total,
                    "paced_complete": paced_complete, "paced_cpu": paced_cpu,
                    **stats,
                    "burst_events": events, "burst_expected": events * n,
                    "burst_delivered": burst.total, "burst_complete": burst_complete,
                    "throughput": round(burst.total / span, 1) if span > 0 else 0.0,
                    "insert_rate": round(log2.rate(), 1), "burst_cpu": burst_cpu,
                    "client_cores": burst.cpu_cores, "client_saturated": burst.saturated,
                    "complete": paced_complete and burst_complete,
                }
                runs.append(result)
                lat = stats["sent_to_received_ms"]
                opts.log(f"naive-scenario {kind:>8} {n:>4} subs: {result['throughput']:>9,.0f} "
                         f"msg/s ({burst.total}/{events * n}), p50 {fmt(lat['p50'], 2)} ms "
                         f"p99 {fmt(lat['p99'], 2)} ms ({paced.total}/{count * n}); "
                         f"{cpu_note(burst_cpu)}")
            rt = next(r for r in runs if r["server"] == "realtime" and r["subscribers"] == n)
            nv = next(r for r in runs if r["server"] == "naive" and r["subscribers"] == n)
            rt["throughput_ratio"] = (round(rt["throughput"] / nv["throughput"], 2)
                                      if nv["throughput"] else None)
            rp99 = rt["sent_to_received_ms"]["p99"]
            np99 = nv["sent_to_received_ms"]["p99"]
            rt["p99_ratio"] = round(np99 / rp99, 2) if rp99 and np99 else None
            # The naive p99 not received within the deadline: the ratio is at least this.
            rt["p99_ratio_at_least"] = (round(deadline * 1000 / rp99, 1)
                                        if rp99 and np99 is None else None)
    return measurement.finish()


def _p99_at_least(runs: Runs) -> None:
    """Fill ``p99_ratio_at_least`` where the naive p99 was not received (older results)."""
    for r in runs:
        if r["server"] != "realtime" or r.get("p99_ratio") is not None:
            continue
        nv = next((x for x in runs if x["server"] == "naive"
                   and x["subscribers"] == r["subscribers"]), None)
        rp99 = r["sent_to_received_ms"]["p99"]
        if nv is not None and nv["sent_to_received_ms"]["p99"] is None and rp99:
            r.setdefault("p99_ratio_at_least", round(DEADLINE * 1000 / rp99, 1))


def table(runs: Runs) -> str:
    """The Markdown table of ``naive.md``."""
    lines = ["realtime (one change stream per process) vs the naive pattern (one change stream "
             "per WebSocket, `bench/naive_server.py`), same database, same writer, same load "
             "client. Throughput: a burst of inserts as fast as the database takes them, "
             "delivered messages ÷ (last delivery - first insert). Latency: 100 inserts/s, "
             "insert sent → received; — means the percentile was not received within the "
             "deadline.", "",
             "| subscribers | server | throughput msg/s | delivered / expected (burst) "
             "| p50 ms | p99 ms | delivered / expected (paced) | realtime ÷ naive throughput "
             "| naive p99 ÷ realtime p99 |",
             "|---:|---|---:|---|---:|---:|---|---:|---:|"]
    _p99_at_least(runs)
    for r in runs:
        lat = r["sent_to_received_ms"]
        tr = r.get("throughput_ratio")
        pr = r.get("p99_ratio")
        least = r.get("p99_ratio_at_least")
        lines.append(
            f"| {r['subscribers']:,} | {r['server']} | {r['throughput']:,.0f} "
            f"| {r['burst_delivered']:,} / {r['burst_expected']:,} | {fmt(lat['p50'], 2)} "
            f"| {fmt(lat['p99'], 2)} | {r['paced_delivered']:,} / {r['paced_expected']:,} "
            f"| {'' if tr is None else f'{tr:,.1f}x'} "
            f"| {f'{pr:,.1f}x' if pr is not None else (f'> {least:,.0f}x' if least else '')} |")
    return "\n".join(lines) + "\n"


def _lines(ax: Any, runs: Runs, value: str) -> None:
    sizes = sorted({r["subscribers"] for r in runs})
    for kind, color in (("realtime", "tab:blue"), ("naive", "tab:red")):
        mine = [next(r for r in runs if r["subscribers"] == n and r["server"] == kind)
                for n in sizes]
        ys = [(r["throughput"] if value == "throughput"
               else r["sent_to_received_ms"]["p99"] or float("nan")) for r in mine]
        ax.plot(sizes, ys, "o-", color=color, label=kind)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("subscribers")
    ax.legend(fontsize=8)


def panel(ax: Any, runs: Runs) -> None:
    """Throughput against subscribers, realtime and naive."""
    _lines(ax, runs, "throughput")
    ax.set_ylabel("delivered messages/s (burst)")
    ax.set_title("vs one change stream per WebSocket")


def chart(runs: Runs, path: Path) -> None:
    """``naive.png``."""
    fig, (ax1, ax2) = report.figure(2, 5.2)
    panel(ax1, runs)
    ax1.set_title("throughput")
    _lines(ax2, runs, "p99")
    ax2.set_ylabel("p99 ms at 100 inserts/s")
    ax2.set_title("p99 latency")
    report.save(fig, path)


def summary(runs: Runs) -> list[Row]:
    """The realtime run at each subscriber count, as ratios to the naive one."""
    _p99_at_least(runs)
    rows: list[Row] = []
    for r in runs:
        if r["server"] == "realtime":
            pr, least = r.get("p99_ratio"), r.get("p99_ratio_at_least")
            p99 = (f"{pr:,.1f}x lower p99" if pr is not None else
                   f"p99 > {least:,.0f}x lower (naive p99 not received)" if least else
                   "p99 not comparable")
            rows.append((f"vs naive, {r['subscribers']:,} subs",
                         f"{r.get('throughput_ratio') or 0:,.1f}x throughput, {p99}",
                         "≥ 50x"))
    return rows


RENDER = report.Renderer(table=table, chart=chart, summary=summary, panel=panel)

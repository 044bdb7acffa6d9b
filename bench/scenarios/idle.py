"""idle: 1,000 / 5,000 / 10,000 idle subscribers.

RSS per connection, subscribe time and heartbeat CPU at rest; one event
afterwards must reach every subscriber. With ``--profile``, a memory breakdown:
the server run under :mod:`tracemalloc` (``bench/memory_probe.py``) with
:data:`PROBED` idle subscribers, the source lines whose allocations hold each
connection's bytes (``memory-idle.md``).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench import report
from bench.harness import (
    BENCH_DIR,
    Child,
    CpuWindow,
    DbWriter,
    Load,
    Options,
    Runs,
    Stack,
    proc_rss,
    raise_fd_limit,
    wait_ready,
)
from bench.report import Row, cpu_note

__all__ = ["RENDER", "TARGET_KB", "run"]

#: The target: at most this much memory per idle subscriber (at 10,000).
TARGET_KB = 10
#: Idle subscribers of the memory breakdown (tracing slows every allocation).
PROBED = 2000


async def run(opts: Options) -> dict[str, Any]:
    """Run the scenario; return (and write) its report."""
    sizes = opts.sizes or ((200,) if opts.quick else (1000, 5000, 10000))
    heartbeat = 0.5 if opts.quick else 5.0
    rest = 1.0 if opts.quick else 10.0
    limit = raise_fd_limit()
    async with report.Measurement(opts, "idle", RENDER) as measurement:
        stack, runs = measurement.stack, measurement.runs
        db = await stack.database()
        for n in sizes:
            if n + 200 > limit:
                opts.log(f"idle {n}: skipped, the open-file limit is {limit}")
                continue
            database = f"bench_{uuid.uuid4().hex[:8]}"
            server = await stack.realtime(db.uri, database,
                                          {"REALTIME_HEARTBEAT_SECONDS": str(heartbeat)})
            sub = orjson.dumps({"op": "subscribe", "sub": "s", "collection": "idle"}).decode()
            if not opts.quick:  # import and allocate what the first connections need
                warm = await Load(stack, server.ws_url, [[sub]] * 10, processes=1).start()
                await warm.stop()
                await asyncio.sleep(0.5)
            rss_before = proc_rss(server.pid)
            load = await Load(stack, server.ws_url, [[sub]] * n).start()
            rss_after = proc_rss(server.pid)
            window = CpuWindow({"server": [server.pid], "load": load.pids})
            await asyncio.sleep(rest)
            cpu = window.stop()
            got = await load.report(samples=False)
            writer = DbWriter(db.uri, database, "idle")
            try:
                await load.reset()
                await writer.run(1)
                delivered = await load.wait(n, 60)
            finally:
                await writer.close()
            await load.stop()
            server_cores = cpu["cores"]["server"]
            result = {
                "subscribers": n, "rss_before_mib": round(rss_before / 2**20, 1),
                "rss_after_mib": round(rss_after / 2**20, 1),
                "rss_per_connection_kb": round((rss_after - rss_before) / n / 1000, 1),
                "subscribe_seconds": round(load.connect_seconds, 2),
                "subscribes_per_s": round(n / load.connect_seconds, 1),
                "heartbeat_seconds": heartbeat, "rest_seconds": rest,
                "rest_server_cores": server_cores,
                "heartbeat_us_per_connection": round(
                    server_cores * heartbeat / n * 1e6, 2),
                "closes": got.closes, "one_event_delivered_to_all": delivered,
                "complete": delivered, "cpu": cpu,
            }
            runs.append(result)
            opts.log(f"idle {n:>6}: {result['rss_per_connection_kb']} KB/connection, "
                     f"subscribed in {result['subscribe_seconds']} s, at rest "
                     f"{server_cores:.3f} cores (heartbeat {heartbeat:g} s); {cpu_note(cpu)}")
            await server.stop()
        if opts.profile and not opts.quick:
            await _breakdown(opts, stack, db.uri)
    return measurement.finish()


async def _breakdown(opts: Options, stack: Stack, uri: str) -> None:
    """Where an idle connection's Python memory goes: ``memory-idle.md`` (tracemalloc)."""
    from realtime.embedded import free_port

    port = free_port()
    child = Child(f"memory-probe-{port}", [sys.executable, str(BENCH_DIR / "memory_probe.py")],
                  env={**opts.server_env, "REALTIME_MONGODB_URI": uri,
                       "REALTIME_DATABASE": f"bench_{uuid.uuid4().hex[:8]}",
                       "REALTIME_PORT": str(port), "REALTIME_HEARTBEAT_SECONDS": "5"},
                  log_dir=stack.dir, port=port)
    await child.start()
    stack.on_stop(child.stop)
    sub = orjson.dumps({"op": "subscribe", "sub": "s", "collection": "idle"}).decode()
    await wait_ready(child, 120)  # tracing slows the start-up
    warm = await Load(stack, child.ws_url, [[sub]] * 10, processes=1).start()
    await warm.stop()
    await asyncio.sleep(0.5)
    await child.call({"cmd": "mark"}, 120)
    load = await Load(stack, child.ws_url, [[sub]] * PROBED).start()
    rss = proc_rss(child.pid)
    diff = await child.call({"cmd": "diff", "n": PROBED, "top": 45}, 300)
    await load.stop()
    await child.stop()
    lines = ["# Memory of an idle subscriber (tracemalloc)", "",
             f"{PROBED:,} idle subscribers (one subscription each) on a realtime server run "
             "with `tracemalloc` (`bench/memory_probe.py`); Python allocations that grew "
             "between before and after they connected, per connection, by source line. "
             f"Traced in all: **{diff['bytes_per_connection'] / 1000:.1f} KB per "
             "connection**; the rest of the RSS figure of `idle.md` is the allocator's "
             "overhead and native memory (uvloop's transports, the kernel's socket is not "
             f"RSS). RSS with tracing on: {rss / 2**20:.0f} MiB.", "",
             "| bytes / connection | blocks / connection | where |", "|---:|---:|---|"]
    for item in diff["top"]:
        lines.append(f"| {item['bytes_per_connection']:,.0f} "
                     f"| {item['blocks_per_connection']:.2f} | `{item['where']}` |")
    path = opts.results() / "memory-idle.md"
    await asyncio.to_thread(path.write_text, "\n".join(lines) + "\n")
    opts.log(f"memory breakdown: {diff['bytes_per_connection'] / 1000:.1f} KB traced per "
             f"idle connection, in {path}")


def table(runs: Runs) -> str:
    """The Markdown table of ``idle.md``."""
    lines = ["Idle subscribers, one subscription each, on one realtime process. RSS per "
             "connection = (RSS after - RSS before) ÷ N; heartbeat CPU measured at rest over "
             "two or more heartbeat intervals.", "",
             "| subscribers | RSS before MiB | RSS after MiB | KB/connection | subscribe s "
             "| subscribes/s | heartbeat s | server cores at rest | µs/connection/heartbeat |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(
            f"| {r['subscribers']:,} | {r['rss_before_mib']:.1f} | {r['rss_after_mib']:.1f} "
            f"| {r['rss_per_connection_kb']:.1f} | {r['subscribe_seconds']:.2f} "
            f"| {r['subscribes_per_s']:,.0f} | {r['heartbeat_seconds']:g} "
            f"| {r['rest_server_cores']:.3f} | {r['heartbeat_us_per_connection']:.1f} |")
    return "\n".join(lines) + "\n"


def panel(ax: Any, runs: Runs) -> None:
    """Bars of KB per idle connection, with the target."""
    ax.bar([f"{r['subscribers']:,}" for r in runs],
           [r["rss_per_connection_kb"] for r in runs], color="tab:blue")
    ax.axhline(TARGET_KB, color="grey", lw=0.8, ls=":", label=f"target {TARGET_KB} KB")
    ax.set_xlabel("idle subscribers")
    ax.set_ylabel("KB RSS / connection")
    ax.set_title("memory per idle subscriber")
    ax.legend(fontsize=8)


def chart(runs: Runs, path: Path) -> None:
    """``idle.png``."""
    fig, (ax1, ax2) = report.figure(2, 5.2)
    panel(ax1, runs)
    ax1.set_title("")
    ax2.bar([f"{r['subscribers']:,}" for r in runs], [r["subscribe_seconds"] for r in runs],
            color="tab:green")
    ax2.set_ylabel("connect + subscribe all (s)")
    ax2.set_xlabel("idle subscribers")
    report.save(fig, path)


def summary(runs: Runs) -> list[Row]:
    """One row per subscriber count."""
    return [(f"idle, {r['subscribers']:,} subs", f"{r['rss_per_connection_kb']:.1f} KB/connection",
             f"≤ {TARGET_KB} KB at 10,000") for r in runs]


RENDER = report.Renderer(table=table, chart=chart, summary=summary, panel=panel)

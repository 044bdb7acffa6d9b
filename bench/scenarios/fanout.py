"""fanout: N subscribers all matching, events offered faster than they can be delivered.

Delivered messages/s, against a bare ``websockets.broadcast`` server
(``bench/broadcast_server.py``) pushing the same payloads to the same load
client. Full runs also measure realtime with the other MongoDB driver (motor
vs pymongo): how the feed reads the change stream changes the ceiling.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench import report
from bench.harness import (
    SAMPLED_CONNECTIONS,
    BenchError,
    Child,
    CpuWindow,
    DbWriter,
    Load,
    LoadReport,
    Options,
    Runs,
    Stack,
    latency_stats,
    other_driver,
    profile_server,
    spread,
)
from bench.report import Row, cpu_note

__all__ = ["RENDER", "run"]

#: Messages/s offered to realtime: more than it can deliver.
OFFERED = 1_000_000


async def run(opts: Options) -> dict[str, Any]:
    """Run the scenario; return (and write) its report."""
    sizes = opts.sizes or ((20,) if opts.quick else (100, 500, 1000, 2000))
    messages = 2_000 if opts.quick else 1_500_000
    driver = opts.driver()
    other = other_driver(driver)
    async with report.Measurement(opts, "fanout", RENDER) as measurement:
        stack, runs = measurement.stack, measurement.runs
        db = await stack.database()
        database = f"bench_{uuid.uuid4().hex[:8]}"
        servers = [("realtime", driver, await stack.realtime(db.uri, database))]
        if not opts.quick:
            servers.append((f"realtime-{other}", other, await stack.realtime(
                db.uri, database, {"REALTIME_DRIVER": other})))
        baseline = await stack.broadcast()
        for n in sizes:
            events = max(1, messages // n)
            sub_msg = orjson.dumps({"op": "subscribe", "sub": "s", "collection": ""}).decode()
            sample = spread(n, SAMPLED_CONNECTIONS)
            example: str | None = None
            measured: Runs = []
            for label, drv, server in servers:
                collection = f"fan{n}{drv}"
                sub = sub_msg.replace('"collection":""', f'"collection":"{collection}"')
                load = await Load(stack, server.ws_url, [[sub]] * n, sample=sample).start()
                writer = DbWriter(db.uri, database, collection)
                try:
                    await writer.run(5, first_seq=0)
                    await load.wait(5 * n, 30)
                    example = example or (await load.report()).example
                    await load.reset()
                    window = CpuWindow({"server": [server.pid], "database": [db.pid or 0],
                                        "load": load.pids})
                    log = await writer.run(events, OFFERED / n, first_seq=5,
                                           batch=max(10, 5_000 // n))
                    complete = await load.wait(events * n, 120, idle=10)
                    cpu = window.stop()
                    got = await load.report()
                finally:
                    await writer.close()
                    await load.stop()
                mine = _run(label, n, events, got, cpu, complete)
                mine["driver"] = drv
                mine["write_rate"] = round(log.rate(), 1)
                mine.update(latency_stats(got, log, events, len(sample)))
                runs.append(mine)
                measured.append(mine)
                opts.log(f"fanout {label:<17} {n:>5} subs: {mine['rate']:>9,.0f} msg/s "
                         f"({got.total}/{events * n}), server "
                         f"{mine['server_us_per_message']} µs/msg, client "
                         f"{mine['client_us_per_message']} µs/msg, {mine['frames_per_read']} "
                         f"frames/read; {cpu_note(cpu)}")
            if example is None:
                raise BenchError("no example message from realtime")
            # the baseline: same payload shape and count, same load client
            sub = sub_msg.replace('"collection":""', '"collection":"baseline"')
            load = await Load(stack, baseline.ws_url, [[sub]] * n, sample=sample).start()
            try:
                await load.reset()
                window = CpuWindow({"server": [baseline.pid], "load": load.pids})
                done = await baseline.call({"cmd": "run", "events": events,
                                            "template": _template(example)}, 300)
                complete = await load.wait(events * n, 120, idle=10)
                cpu = window.stop()
                got = await load.report()
            finally:
                await load.stop()
            base = _run("broadcast", n, events, got, cpu, complete)
            base["congested_waits"] = done.get("congested_waits")
            runs.append(base)
            for mine in measured:
                mine["ratio_to_broadcast"] = (round(mine["rate"] / base["rate"], 3)
                                              if base["rate"] else 0.0)
            opts.log(f"fanout {'broadcast':<17} {n:>5} subs: {base['rate']:>9,.0f} msg/s "
                     f"({got.total}/{events * n}), server {base['server_us_per_message']} "
                     f"µs/msg, client {base['client_us_per_message']} µs/msg, "
                     f"{base['frames_per_read']} frames/read; ratios "
                     + ", ".join(f"{m['server']} {m['ratio_to_broadcast']:.2f}" for m in measured)
                     + f"; {cpu_note(cpu)}")
        if opts.profile and not opts.quick:
            await _profile(opts, stack, db.uri, database, servers[0][2])
    return measurement.finish(offered_messages_per_s=OFFERED, default_driver=driver)


def _template(example: str) -> str:
    """A realtime change message with its ``seq`` and ``t`` set to 0 (baseline template)."""
    text = re.sub(r'"seq":\d+', '"seq":0', example, count=1)
    return re.sub(r'"t":\d+', '"t":0', text, count=1)


def _run(server: str, n: int, events: int, got: LoadReport, cpu: dict[str, Any],
         complete: bool) -> dict[str, Any]:
    return {
        "server": server, "subscribers": n, "events": events, "expected": events * n,
        "delivered": got.total, "complete": complete and got.total == events * n,
        "rate": round(got.rate(), 1), "peak_rate_1s": round(got.peak_rate(), 1),
        "frames_per_read": round(got.total / got.reads, 2) if got.reads else None,
        "server_us_per_message": round(
            cpu["cores"]["server"] * cpu["seconds"] / max(got.total, 1) * 1e6, 2),
        "client_us_per_message": round(
            cpu["cores"]["load"] * cpu["seconds"] / max(got.total, 1) * 1e6, 2),
        "client_cores": got.cpu_cores, "client_saturated": got.saturated,
        "closes": got.closes, "cpu": cpu,
        "timeline": got.timeline, "timeline_step": got.timeline_step,
    }


async def _profile(opts: Options, stack: Stack, uri: str, database: str,
                   server: Child) -> None:
    """A py-spy profile of realtime fanning out to 500 subscribers at saturation."""
    n, events = 500, 1200
    collection = "fanprofile"
    sub = orjson.dumps({"op": "subscribe", "sub": "s", "collection": collection}).decode()
    load = await Load(stack, server.ws_url, [[sub]] * n).start()
    writer = DbWriter(uri, database, collection)
    try:
        writing = asyncio.ensure_future(writer.run(events, OFFERED / n, batch=10))
        summary_path = await profile_server(server.pid, 5, opts.results(), "fanout-500",
                                            opts.log)
        await writing
        await load.wait(events * n, 60, idle=10)
    finally:
        await writer.close()
        await load.stop()
    if summary_path:
        opts.log(f"profile: {summary_path}")


def table(runs: Runs) -> str:
    """The Markdown table of ``fanout.md``."""
    lines = ["Delivered messages/s at the subscribers (all matching): realtime vs a bare "
             "`websockets.broadcast` server pushing the same payloads to the same load client. "
             "µs/msg = CPU time per delivered message (server; load client).", "",
             "| subscribers | server | msg/s | ÷ broadcast | server µs/msg | client µs/msg "
             "| frames/read | server cores | client cores | delivered / expected |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in sorted(runs, key=lambda r: (r["subscribers"], r["server"] == "broadcast")):
        label = f"realtime ({r['driver']})" if r.get("driver") else r["server"]
        ratio = r.get("ratio_to_broadcast")
        sat = " (saturated)" if r["client_saturated"] else ""
        lines.append(
            f"| {r['subscribers']:,} | {label} | {r['rate']:,.0f} "
            f"| {'' if ratio is None else f'{ratio:.2f}'} | {r['server_us_per_message']:.1f} "
            f"| {r['client_us_per_message']:.1f} | {r['frames_per_read'] or 0:.1f} "
            f"| {r['cpu']['cores']['server']:.2f} | {sum(r['client_cores']):.2f}{sat} "
            f"| {r['delivered']:,} / {r['expected']:,} |")
    return "\n".join(lines) + "\n"


def panel(ax: Any, runs: Runs) -> None:
    """Bars of delivered messages/s per subscriber count, one per server."""
    sizes = sorted({r["subscribers"] for r in runs})
    series = sorted({r["server"] for r in runs}, key=lambda name: (name == "broadcast", name))
    width = 0.8 / max(1, len(series))
    colors = {"realtime": "tab:blue", "broadcast": "tab:grey"}
    for k, server in enumerate(series):
        ys = [next((r["rate"] for r in runs
                    if r["subscribers"] == n and r["server"] == server), 0) / 1000
              for n in sizes]
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(sizes))]
        driver = next((r.get("driver") for r in runs if r["server"] == server), None)
        label = ("bare websockets.broadcast" if server == "broadcast"
                 else f"realtime ({driver})")
        bars = ax.bar(xs, ys, width, label=label, color=colors.get(server, "tab:cyan"))
        ax.bar_label(bars, fmt="%.0fk", fontsize=7)
    ax.set_xticks(range(len(sizes)), [f"{n:,}" for n in sizes])
    ax.set_xlabel("subscribers")
    ax.set_ylabel("delivered messages/s (thousands)")
    ax.set_title("fan-out throughput")
    ax.legend(fontsize=8)


def chart(runs: Runs, path: Path) -> None:
    """``fanout.png``."""
    fig, (ax,) = report.figure()
    panel(ax, runs)
    ax.set_title("fan-out throughput, same load client, same run")
    report.save(fig, path)


def summary(runs: Runs) -> list[Row]:
    """Every realtime run against the bare broadcast server."""
    return [(f"fan-out, {r['subscribers']:,} subs ({r.get('driver', '')})",
             f"{r['rate']:,.0f} msg/s = {r.get('ratio_to_broadcast', 0):.2f} x "
             f"bare websockets.broadcast; {r['server_us_per_message']:.1f} µs server CPU/msg",
             "≥ 4 x (≤ 2.5 µs server CPU per message)")
            for r in runs if r["server"] != "broadcast"]


RENDER = report.Renderer(table=table, chart=chart, summary=summary, panel=panel)

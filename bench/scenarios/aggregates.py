"""aggregates: live aggregates and projections at N subscribers x R writes/s, vs plain.

Each mode on a fresh database and server, the same documents (a group ``g`` of
10, an ``amount``, the send time ``t``, ~800 bytes of ``note``), written through
the REST API at R/s to N subscribers of one collection:

- ``plain``: every subscriber receives every change (the baseline);
- ``aggregate``: ``{"group_by": "g", "count": true, "sum": ["amount"], "max":
  ["seq", "t"], "throttle_ms": 0}``: a message per change batch, the changed group;
- ``aggregate 100 ms``: the same, coalesced by the default ``throttle_ms`` 100;
- ``projected``: ``fields: ["g", "amount", "seq", "t"]``: the documents without
  their ``note``.

Figures: server CPU per write (µs: server cores x window / writes) and per
delivered message, latency (request sent → message received, sampled; for an
aggregate, the latest write of the group it reports), messages delivered, and
bytes per delivered message (payload). Plus the bytes of one update on the wire,
rendered by realtime's own code: a whole document with ``updated``/``removed``
vs a projected subscription's delta.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench import report
from bench.harness import (
    SAMPLED_CONNECTIONS,
    CpuWindow,
    Load,
    Options,
    RestWriter,
    Runs,
    latency_stats,
    spread,
)
from bench.report import Row, cpu_note, fmt

__all__ = ["RENDER", "run", "update_bytes"]

GROUPS = 10
NOTE = "x" * 800
#: Each mode's subscribe message (without ``sub`` and ``collection``), and its label.
MODES: dict[str, dict[str, Any]] = {
    "plain": {},
    "aggregate": {"aggregate": {"group_by": "g", "count": True, "sum": ["amount"],
                                "max": ["seq", "t"], "throttle_ms": 0}},
    "aggregate 100 ms": {"aggregate": {"group_by": "g", "count": True, "sum": ["amount"],
                                       "max": ["seq", "t"], "throttle_ms": 100}},
    "projected": {"fields": ["g", "amount", "seq", "t"]},
}


def _extra(seq: int) -> dict[str, Any]:
    return {"g": f"g{seq % GROUPS}", "amount": seq % 100, "note": NOTE}


async def run(opts: Options) -> dict[str, Any]:
    """Run the scenario; return (and write) its report."""
    n = (opts.sizes or (20,))[0] if opts.quick else (opts.sizes or (1000,))[0]
    rate = 100
    duration = 2.0 if opts.quick else 8.0
    async with report.Measurement(opts, "aggregates", RENDER) as measurement:
        stack, runs = measurement.stack, measurement.runs
        for mode, spec in MODES.items():
            db = await stack.database()
            database = f"bench_{uuid.uuid4().hex[:8]}"
            server = await stack.realtime(db.uri, database, {})
            collection = f"agg{uuid.uuid4().hex[:6]}"
            sub = orjson.dumps({"op": "subscribe", "sub": "s", "collection": collection,
                                **spec}).decode()
            sample = spread(n, SAMPLED_CONNECTIONS)
            load = await Load(stack, server.ws_url, [[sub]] * n, sample=sample).start()
            writer = await RestWriter(server.port, collection).open()
            try:
                warm = 20
                await writer.run(warm, rate, extra=_extra)
                await load.settle(quiet=0.5)
                await load.reset()
                count = round(rate * duration)
                window = CpuWindow({"server": [server.pid], "database": [db.pid or 0],
                                    "load": load.pids})
                log = await writer.run(count, rate, first_seq=warm, extra=_extra)
                await load.settle(quiet=0.5, timeout=60)
                cpu = window.stop()
                got = await load.report()
            finally:
                await writer.close()
                await load.stop()
                await server.stop()
                await asyncio.to_thread(db.stop)
            per_conn = count if mode in ("plain", "projected") else 0
            stats = latency_stats(got, log, per_conn, len(sample))
            server_seconds = cpu["cores"]["server"] * cpu["seconds"]
            result = {
                "mode": mode, "subscribers": n, "rate": rate, "writes": count,
                "write_failures": log.failures, "write_rate": round(log.rate(), 1),
                "delivered": got.total,
                "expected_plain": count * n,
                "bytes_per_message": round(got.bytes / got.total, 1) if got.total else None,
                "server_us_per_write": round(server_seconds / count * 1e6, 1),
                "server_us_per_message": (round(server_seconds / got.total * 1e6, 2)
                                          if got.total else None),
                "closes": got.closes, "client_cores": got.cpu_cores,
                "client_saturated": got.saturated, "cpu": cpu, **stats,
            }
            runs.append(result)
            lat = stats["sent_to_received_ms"]
            opts.log(f"aggregates {mode:<16} {n:>5} subs x {rate}/s: p50 {fmt(lat['p50'], 2)} "
                     f"ms p99 {fmt(lat['p99'], 2)} ms, {got.total} messages, "
                     f"{result['bytes_per_message']} B each, server "
                     f"{result['server_us_per_write']} µs/write; {cpu_note(cpu)}")
    return measurement.finish(update=update_bytes())


def update_bytes() -> dict[str, int]:
    """Bytes of one ``update`` message on the wire, whole vs projected delta.

    The document of the benchmark (``g``, ``amount``, ``seq``, ``t``, an 800-byte
    ``note``, ``_version``) after a merge patch of ``amount``: rendered by
    realtime's own code for a plain subscription and for one with ``fields:
    ["g", "amount"]`` (the delta of the projected fields).
    """
    from bson import Timestamp

    from realtime import protocol
    from realtime.events import normalise
    from realtime.projection import Projection, check_fields

    before = {"_id": "d1", "seq": 1, "t": 10**18, "pad": "p" * 64, "_version": 1,
              **_extra(1)}
    after = {**before, "amount": 42, "_version": 2}
    raw = {"_id": {"_data": "82" + "0" * 40}, "operationType": "update",
           "ns": {"db": "bench", "coll": "c"}, "documentKey": {"_id": "d1"},
           "clusterTime": Timestamp(100, 1), "fullDocument": after,
           "fullDocumentBeforeChange": before,
           "updateDescription": {"updatedFields": {"amount": 42, "_version": 2},
                                 "removedFields": []}}
    ev = normalise(raw)
    assert ev is not None
    prefix = protocol.change_prefix("s1")
    whole = protocol.render_change(prefix, "update", ev.body)
    body = ev.projected(Projection(check_fields(["g", "amount"])), "update", True)
    assert body is not None
    delta = protocol.render_change(prefix, "update", body)
    return {"whole": len(whole.encode()), "projected_delta": len(delta.encode())}


def table(runs: Runs) -> str:
    """The Markdown table of ``aggregates.md``."""
    lines = ["N subscribers of one collection, one REST writer at R writes/s (documents "
             "with ~800 bytes of `note`). Server µs per write: the realtime server's CPU "
             "over the window ÷ writes; per message: ÷ messages delivered. Latency: "
             "request sent → message received on sampled connections (for an aggregate, "
             "the latest write of the group it reports). Bytes: the payload of a "
             "delivered message.", "",
             "| mode | subscribers | writes/s | messages | bytes / message "
             "| server µs / write | server µs / message | p50 ms | p99 ms | server cores "
             "| client cores | other load (cores) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lat = r["sent_to_received_ms"]
        lines.append(
            f"| {r['mode']} | {r['subscribers']:,} | {r['write_rate']:,.0f} "
            f"| {r['delivered']:,} | {fmt(r['bytes_per_message'], 0)} "
            f"| {fmt(r['server_us_per_write'], 0)} | {fmt(r['server_us_per_message'], 2)} "
            f"| {fmt(lat['p50'], 2)} | {fmt(lat['p99'], 2)} "
            f"| {r['cpu']['cores']['server']:.2f} "
            f"| {sum(r['client_cores']):.2f}{' (saturated)' if r['client_saturated'] else ''} "
            f"| {r['cpu']['other_cores']:.2f} |")
    return "\n".join(lines) + "\n"


def panel(ax: Any, runs: Runs) -> None:
    """Server µs per write and p50 latency, per mode."""
    modes = [r["mode"] for r in runs]
    xs = range(len(runs))
    ax.bar(xs, [r["server_us_per_write"] for r in runs], color="#157a52")
    ax.set_xticks(list(xs), modes, fontsize=7)
    ax.set_ylabel("server CPU per write (µs)")
    twin = ax.twinx()
    twin.plot(list(xs), [r["sent_to_received_ms"]["p50"] or float("nan") for r in runs],
              "o-", color="#2458c6")
    twin.set_ylabel("p50 latency (ms)")
    n = runs[0]["subscribers"] if runs else 0
    ax.set_title(f"aggregates and projections, {n:,} subs x 100 writes/s", fontsize=9)


def chart(runs: Runs, path: Path) -> None:
    """``aggregates.png``."""
    fig, (ax,) = report.figure()
    panel(ax, runs)
    report.save(fig, path)


def summary(runs: Runs) -> list[Row]:
    """The aggregate modes against plain."""
    by = {r["mode"]: r for r in runs}
    plain = by.get("plain")
    rows: list[Row] = []
    for mode in ("aggregate", "aggregate 100 ms", "projected"):
        r = by.get(mode)
        if r is None or plain is None:
            continue
        lat, base = r["sent_to_received_ms"], plain["sent_to_received_ms"]
        rows.append((f"{mode}, {r['subscribers']:,} subs x 100 writes/s",
                     f"{fmt(r['server_us_per_write'], 0)} µs/write (plain "
                     f"{fmt(plain['server_us_per_write'], 0)}), p50 {fmt(lat['p50'], 1)} ms "
                     f"(plain {fmt(base['p50'], 1)}), {fmt(r['bytes_per_message'], 0)} B/msg "
                     f"(plain {fmt(plain['bytes_per_message'], 0)})",
                     "measured; no target yet"))
    return rows


RENDER = report.Renderer(table=table, chart=chart, summary=summary, panel=panel)

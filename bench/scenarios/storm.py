"""storm: thousands of clients resume with one ``since`` after a server restart.

A realtime server runs, is stopped, changes are written while it is down, and
a fresh server starts (warming its ring from the oplog); then N clients
subscribe at once with the ``since`` from before those changes (the head of a
stream opened then: a position, not an event id), on a database whose oplog
holds ≥ 50,000 entries. Measured: the time from the restart (the new
server's spawn) until every client holds every change, and each client's count
(which must equal the changes written, exactly: none lost, none twice). Each
size runs twice on the same database, with the ring warmed at start-up (the
default) and without (``REALTIME_RING_WARM_SECONDS=0``: every client is caught
up from the oplog by the shared readers).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Final

import orjson

from bench import report
from bench.harness import (
    BenchError,
    CpuWindow,
    DbWriter,
    Load,
    Options,
    Runs,
    Stack,
    raise_fd_limit,
)
from bench.report import Row, cpu_note

__all__ = ["RENDER", "TARGET_SECONDS", "run"]

#: The target: every client caught up within this many seconds of the restart.
TARGET_SECONDS: Final = 10.0


async def _oplog(uri: str, database: str) -> tuple[int, str]:
    """How many entries the oplog holds, and a resume token at its end (the ``since``)."""
    from realtime.config import Settings
    from realtime.db import Database

    db = Database(Settings(mongodb_uri=uri, database=database), uri)
    try:
        stream = await db.watch([])
        token = stream.resume_token
        await stream.close()
        if token is None:
            raise BenchError("the change stream reported no resume token")
        count = await db.oplog_entries()
        return count, str(token["_data"])
    finally:
        await db.close()


async def run(opts: Options) -> dict[str, Any]:
    """Run the scenario; return (and write) its report."""
    sizes = opts.sizes or ((50,) if opts.quick else (2000,))
    filler = 2_000 if opts.quick else 50_000
    changes = 50 if opts.quick else 250
    limit = raise_fd_limit()
    async with report.Measurement(opts, "storm", RENDER) as measurement:
        stack, runs = measurement.stack, measurement.runs
        db = await stack.database()
        for n in sizes:
            if n + 200 > limit:
                opts.log(f"storm {n}: skipped, the open-file limit is {limit}")
                continue
            database = f"bench_{uuid.uuid4().hex[:8]}"
            old = DbWriter(db.uri, database, "history")
            try:
                await old.run(filler, batch=1000)  # an oplog of ≥ `filler` entries
            finally:
                await old.close()
            for warm in (True, False):
                env = {"REALTIME_RING_WARM_SECONDS": "10" if warm else "0"}
                runs.append(await _restart(stack, opts, db.uri, database, n, changes, env))
    return measurement.finish()


async def _restart(stack: Stack, opts: Options, uri: str, database: str, n: int,
                   changes: int, env: dict[str, str]) -> dict[str, Any]:
    """Stop a server, write ``changes`` meanwhile, restart it (``env``) under ``n`` clients."""
    server = await stack.realtime(uri, database, env)
    await server.stop()
    oplog_before, since = await _oplog(uri, database)
    writer = DbWriter(uri, database, "storm")
    try:
        await writer.run(changes, batch=1000)  # while the server is down
    finally:
        await writer.close()
    restarted = time.monotonic()
    server = await stack.realtime(uri, database, env)
    ready = time.monotonic() - restarted
    window = CpuWindow({"server": [server.pid]})
    sub = orjson.dumps({"op": "subscribe", "sub": "s", "collection": "storm",
                        "since": since}).decode()
    load = await Load(stack, server.ws_url, [[sub]] * n).start()
    subscribed = time.monotonic() - restarted
    complete = await load.wait(n * changes, 120, idle=20)
    caught_up = time.monotonic() - restarted
    cpu = window.stop()
    await load.settle(quiet=1.0)  # anything sent twice arrives meanwhile
    got = await load.report(samples=False)
    await load.stop()
    await server.stop()
    wrong = sum(1 for c in got.counts if c != changes)
    warm = env["REALTIME_RING_WARM_SECONDS"] != "0"
    result = {
        "clients": n, "oplog_entries": oplog_before + changes, "warm_ring": warm,
        "changes_after_since": changes, "expected_per_client": changes,
        "delivered": got.total, "expected": n * changes,
        "min_per_client": min(got.counts), "max_per_client": max(got.counts),
        "clients_with_wrong_count": wrong,
        "ready_seconds": round(ready, 2), "subscribed_seconds": round(subscribed, 2),
        "caught_up_seconds": round(caught_up, 2),
        "complete": complete and wrong == 0 and got.total == n * changes,
        "closes": got.closes, "cpu": cpu,
    }
    opts.log(f"storm {n:>5} ({'warm ring' if warm else 'cold ring'}): all caught up "
             f"{caught_up:.2f} s after the restart (ready {ready:.2f} s, all subscribed "
             f"{subscribed:.2f} s); oplog {result['oplog_entries']:,} entries; per client "
             f"{result['min_per_client']}..{result['max_per_client']} of {changes}; "
             f"{cpu_note(cpu)}")
    return result


def _ring(r: dict[str, Any]) -> str:
    return "warmed" if r.get("warm_ring", False) else "cold"


def table(runs: Runs) -> str:
    """The Markdown table of ``storm.md``."""
    lines = ["Clients resuming with one `since` after a server restart (the changes since "
             "were written while it was down). Ring: warmed from the oplog at start-up (the "
             "default), or cold (`REALTIME_RING_WARM_SECONDS=0`: every client caught up from "
             "the oplog). Seconds from the new server's spawn.", "",
             "| clients | ring | oplog entries | changes per client | ready s | all subscribed s "
             "| all caught up s | per client min..max | wrong counts |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(
            f"| {r['clients']:,} | {_ring(r)} | {r['oplog_entries']:,} "
            f"| {r['expected_per_client']:,} "
            f"| {r['ready_seconds']:.2f} | {r['subscribed_seconds']:.2f} "
            f"| {r['caught_up_seconds']:.2f} | {r['min_per_client']}..{r['max_per_client']} "
            f"| {r['clients_with_wrong_count']} |")
    return "\n".join(lines) + "\n"


def panel(ax: Any, runs: Runs) -> None:
    """Bars of seconds until every client caught up, with the target."""
    ax.bar([f"{r['clients']:,}, {_ring(r)}" for r in runs],
           [r["caught_up_seconds"] for r in runs], color="tab:purple")
    ax.axhline(TARGET_SECONDS, color="grey", lw=0.8, ls=":",
               label=f"target {TARGET_SECONDS:g} s")
    ax.set_xlabel("clients resuming")
    ax.set_ylabel("s from restart to all caught up")
    ax.set_title("mass resume after a restart")
    ax.legend(fontsize=8)


def chart(runs: Runs, path: Path) -> None:
    """``storm.png``."""
    fig, (ax,) = report.figure(1, 5.2)
    panel(ax, runs)
    report.save(fig, path)


def summary(runs: Runs) -> list[Row]:
    """One row per client count."""
    return [(f"storm, {r['clients']:,} clients resume ({r['oplog_entries']:,} oplog entries, "
             f"{_ring(r)} ring)",
             f"{r['caught_up_seconds']:.1f} s to all caught up",
             f"≤ {TARGET_SECONDS:g} s") for r in runs]


RENDER = report.Renderer(table=table, chart=chart, summary=summary, panel=panel)

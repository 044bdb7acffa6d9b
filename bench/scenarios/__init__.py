"""The scenarios, one module each, and their registry.

Every scenario module has ``async def run(opts) -> dict`` (starts what it
needs in a :class:`bench.report.Measurement`, measures, returns the report it
wrote with :meth:`~bench.report.Measurement.finish`)
and ``RENDER``, its :class:`bench.report.Renderer`. docs/performance.md has the targets;
``bench/README.md`` explains every figure.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench.harness import Options
from bench.report import Renderer
from bench.scenarios import (
    aggregates,
    drivers,
    fanout,
    filters,
    idle,
    ingest,
    latency,
    naive,
    scaleout,
    storm,
)

__all__ = ["SCENARIOS", "Scenario", "renderers"]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A benchmark: how to run it, how to show its results."""

    name: str
    #: What it measures (one line, for ``--help``).
    about: str
    run: Callable[[Options], Awaitable[dict[str, Any]]]
    render: Renderer


#: The scenarios, in the order ``all`` runs them.
SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("latency", "REST write → subscriber latency at N subscribers x R writes/s",
             latency.run, latency.RENDER),
    Scenario("fanout", "delivered messages/s vs a bare websockets.broadcast server",
             fanout.run, fanout.RENDER),
    Scenario("filters", "distinct range filters: matching cost and event rate",
             filters.run, filters.RENDER),
    Scenario("ingest", "events/s one process's feed takes and matches (recorded events)",
             ingest.run, ingest.RENDER),
    Scenario("idle", "idle subscribers: memory, subscribe time, heartbeat CPU",
             idle.run, idle.RENDER),
    Scenario("naive", "vs one change stream per WebSocket (bench/naive_server.py)",
             naive.run, naive.RENDER),
    Scenario("drivers", "Motor vs PyMongo's async API behind realtime.db",
             drivers.run, drivers.RENDER),
    Scenario("storm", "N clients resume with one since after a server restart",
             storm.run, storm.RENDER),
    Scenario("aggregates", "live aggregates and projections vs plain: CPU, latency, bytes",
             aggregates.run, aggregates.RENDER),
    Scenario("scaleout", "1..4 edges by tenant over NATS JetStream vs every edge reading all",
             scaleout.run, scaleout.RENDER),
)}


def renderers() -> dict[str, Renderer]:
    """Every scenario's renderer, in order."""
    return {name: s.render for name, s in SCENARIOS.items()}

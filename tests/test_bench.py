"""``realtime bench SCENARIO --quick``: every scenario runs and delivers what it sent.

The smoke test of bench/ (CI runs it): each scenario starts its own database,
servers and load processes on loopback, with a few connections and events.
Only correctness counts are asserted (everything sent was received, every
filter got exactly its matches); never a time or a rate.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from realtime.bench import Options, run_scenario

pytest.importorskip("picows", reason="the bench load client needs picows (dev extra)")

pytestmark = pytest.mark.timeout(90)


async def quick(name: str, out: Path) -> dict[str, Any]:
    """Run scenario ``name`` in quick mode; check its report files exist."""
    data = await run_scenario(name, Options(quick=True, out=out, log=lambda text: None))
    assert (out / f"{name}.json").exists()
    assert (out / f"{name}.md").read_text().startswith(f"# {name} (quick)")
    assert (out / f"{name}.png").stat().st_size > 0
    assert data["runs"]
    return data


async def test_latency_quick(tmp_path: Path) -> None:
    data = await quick("latency", tmp_path)
    for run in data["runs"]:
        assert run["write_failures"] == 0
        assert run["delivered"] == run["expected"] == run["writes"] * run["subscribers"]
        assert run["missing_sampled"] == 0
        assert run["sent_to_received_ms"]["count"] > 0


async def test_fanout_quick(tmp_path: Path) -> None:
    data = await quick("fanout", tmp_path)
    servers = {run["server"] for run in data["runs"]}
    assert servers == {"realtime", "broadcast"}
    for run in data["runs"]:
        assert run["delivered"] == run["expected"] == run["events"] * run["subscribers"], run
        assert run["closes"] == {}
    assert "ratio_to_broadcast" in data["runs"][0]


async def test_filters_quick(tmp_path: Path) -> None:
    data = await quick("filters", tmp_path)
    assert [run["selectivity"] for run in data["runs"]] == [0.001, 0.01, 0.1]
    for run in data["runs"]:
        assert run["delivered"] == run["expected"]
        assert run["connections_with_wrong_count"] == 0
        assert run["match_us_per_event"] > 0


async def test_idle_quick(tmp_path: Path) -> None:
    data = await quick("idle", tmp_path)
    for run in data["runs"]:
        assert run["one_event_delivered_to_all"]
        assert run["closes"] == {}
        assert run["rss_after_mib"] >= run["rss_before_mib"] > 0


async def test_naive_quick(tmp_path: Path) -> None:
    data = await quick("naive", tmp_path)
    assert {run["server"] for run in data["runs"]} == {"realtime", "naive"}
    for run in data["runs"]:
        assert run["paced_delivered"] == run["paced_expected"], run
        assert run["burst_delivered"] == run["burst_expected"], run

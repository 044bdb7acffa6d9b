"""``python -m bench SCENARIO --quick``: every scenario runs and delivers what it sent.

The smoke test of bench/ (CI runs it): each scenario starts its own database,
servers and load processes on loopback, with a few connections and events.
Only correctness counts are asserted (everything sent was received, every
filter got exactly its matches); never a time or a rate. Also: quick runs never
write into the committed ``bench/results/``, and bad input is one line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.harness import RESULTS, Options, output_dir
from bench.runner import run_scenario
from bench.scenarios import SCENARIOS

pytest.importorskip("picows", reason="the bench load client needs picows (dev extra)")

pytestmark = [pytest.mark.timeout(90), pytest.mark.driver_blind]

ROOT = Path(__file__).resolve().parent.parent


async def quick(name: str, out: Path) -> dict[str, Any]:
    """Run scenario ``name`` in quick mode; check its report files exist."""
    data = await run_scenario(name, Options(quick=True, out=out, log=lambda text: None))
    assert (out / f"{name}.json").exists()
    assert (out / f"{name}.md").read_text().startswith(f"# {name} (quick)")
    assert (out / f"{name}.png").stat().st_size > 0
    assert data["runs"]
    return data


def bench(*args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    """``python -m bench ARGS`` from the source checkout, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONASYNCIODEBUG"}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


async def test_latency_quick(tmp_path: Path) -> None:
    data = await quick("latency", tmp_path)
    for run in data["runs"]:
        assert run["write_failures"] == 0
        assert run["delivered"] == run["expected"] == run["writes"] * run["subscribers"]
        assert run["missing_sampled"] == 0
        assert run["sent_to_received_ms"]["count"] > 0
    assert {r["mode"] for r in data["runs"]} >= {"rest"}
    if shutil.which("node") is not None:  # the Node.js peer, side by side with realtime
        direct = [r for r in data["runs"] if r["mode"] == "direct"]
        assert {r["server"] for r in direct} == {"node", f"realtime-{data['default_driver']}"}
        mine = next(r for r in direct if r["server"] != "node")
        assert set(mine["ratio_to_peer"]) == {"p50", "p90", "p99"}
        assert "÷ node" in (tmp_path / "latency.md").read_text()


async def test_ingest_quick(tmp_path: Path) -> None:
    """Every subscription count on both drivers, each match counted."""
    data = await quick("ingest", tmp_path)
    runs = data["runs"]
    assert {(r["driver"], r["subscriptions"]) for r in runs} == {
        (d, n) for d in ("motor", "pymongo") for n in (0, 50)}
    for run in runs:
        assert run["events_per_s"] > 0
        if run["subscriptions"] == 0:
            assert run["messages"] == 0
        else:  # 0.1 % of keys per filter: the recorded events' keys decide the matches
            assert run["messages"] > 0
        if run["filters"] == "indexed":
            assert run["from_database_events_per_s"] > 0


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


async def test_drivers_quick(tmp_path: Path) -> None:
    data = await quick("drivers", tmp_path)
    assert [run["driver"] for run in data["runs"]] == ["motor", "pymongo"]
    for run in data["runs"]:
        assert run["insert_failures"] == 0, run
        assert run["events_received"] == run["events_expected"] > 0, run
        assert run["events_wrong"] == 0, run
        assert run["rest_acked"] == run["rest_writes"] > 0, run
        assert run["rest_failures"] == 0, run
        assert run["ws_write_failures"] == 0, run
        assert run["ws_delivered"] == run["ws_expected"] > 0, run
        assert run["complete"]
    assert set(data["medians"]) == {"motor", "pymongo"}


async def test_storm_quick(tmp_path: Path) -> None:
    data = await quick("storm", tmp_path)
    assert [run["warm_ring"] for run in data["runs"]] == [True, False]
    for run in data["runs"]:
        assert run["delivered"] == run["expected"] == run["clients"] * run["changes_after_since"]
        assert run["min_per_client"] == run["max_per_client"] == run["expected_per_client"]
        assert run["clients_with_wrong_count"] == 0
        assert run["closes"] == {}
        assert run["oplog_entries"] > run["changes_after_since"]
        assert run["complete"]


async def test_scaleout_quick(tmp_path: Path) -> None:
    data = await quick("scaleout", tmp_path)
    for run in data["runs"]:
        assert run["delivered"] == run["expected"]
        # Each edge ingests its tenants' share; in the control, everything.
        expected_share = 1.0 if run["control"] else 1.0 / run["edges"]
        assert run["ingested_share"] == pytest.approx(expected_share)
        assert sum(run["ingested_per_edge"]) == run["events"] * (
            run["edges"] if run["control"] else 1)


async def test_aggregates_quick(tmp_path: Path) -> None:
    data = await quick("aggregates", tmp_path)
    runs = {run["mode"]: run for run in data["runs"]}
    assert set(runs) == {"plain", "aggregate", "aggregate 100 ms", "projected"}
    for run in runs.values():
        assert run["closes"] == {}
        assert run["write_failures"] == 0
    # Every change reaches every plain and projected subscriber; coalescing sends fewer.
    assert runs["plain"]["delivered"] == runs["projected"]["delivered"] \
        == runs["plain"]["expected_plain"]
    assert 0 < runs["aggregate 100 ms"]["delivered"] < runs["plain"]["delivered"]
    assert runs["projected"]["bytes_per_message"] < runs["plain"]["bytes_per_message"] / 2
    assert runs["aggregate"]["sent_to_received_ms"]["p50"] is not None
    assert data["update"]["projected_delta"] < data["update"]["whole"] / 4


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in directory.rglob("*") if p.is_file()}


def test_naive_quick_from_the_command_line() -> None:
    """`python -m bench naive --quick` writes to a fresh directory it names, not bench/results."""
    before = _snapshot(RESULTS)
    done = bench("naive", "--quick", timeout=80)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _snapshot(RESULTS) == before
    lines = [line for line in done.stdout.splitlines() if line.startswith("results go to ")]
    assert len(lines) == 1, done.stdout
    out = Path(lines[0].removeprefix("results go to "))
    try:
        assert out.resolve() != RESULTS
        assert RESULTS not in out.resolve().parents
        data = orjson.loads((out / "naive.json").read_bytes())
        assert data["quick"] is True
        assert {run["server"] for run in data["runs"]} == {"realtime", "naive"}
        for run in data["runs"]:
            assert run["paced_delivered"] == run["paced_expected"], run
            assert run["burst_delivered"] == run["burst_expected"], run
        assert (out / "summary.md").exists()
        # `report` re-renders from the JSON alone.
        (out / "naive.md").unlink()
        again = bench("report", "--out", str(out), timeout=60)
        assert again.returncode == 0, again.stdout + again.stderr
        assert (out / "naive.md").read_text().startswith("# naive (quick)")
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_output_directory() -> None:
    """Quick runs get a fresh temporary directory; full runs bench/results/; --out wins."""
    first, second = output_dir(quick=True), output_dir(quick=True)
    try:
        assert first != second
        for out in (first, second):
            assert out.is_dir()
            assert not any(out.iterdir())
            assert RESULTS not in out.resolve().parents
        assert output_dir(quick=False) == RESULTS
        assert output_dir(quick=True, out=Path("elsewhere")) == Path("elsewhere")
        assert Options(quick=False).results() == RESULTS
    finally:
        first.rmdir()
        second.rmdir()


@pytest.mark.parametrize("args", [
    ("nosuch",),
    (),
    ("latency", "--sizes", "500,many"),
    ("fanout", "--clients", "9"),
    ("idle", "--driver", "mongo"),
    ("naive", "--unknown-option"),
])
def test_bad_input_is_one_line(args: tuple[str, ...]) -> None:
    done = bench(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("python -m bench: error: ")
    assert "Traceback" not in done.stderr


def test_each_scenario_is_smoke_tested() -> None:
    tested = {name.removeprefix("test_").split("_quick")[0]
              for name in globals() if name.startswith("test_") and "_quick" in name}
    assert tested == set(SCENARIOS)

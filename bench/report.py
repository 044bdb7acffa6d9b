"""The report builder: one envelope, three files per scenario, and the summary.

A scenario runs inside a :class:`Measurement` (its processes, stopped at the
end, and its runs) and ends with :meth:`Measurement.finish` (:func:`finish`),
which writes to the results directory:

- ``<scenario>.json``: ``{"scenario", "quick", "machine", ...extra, "runs"}``;
- ``<scenario>.md``: a header (when, on what, the load average) and the
  scenario's Markdown table;
- ``<scenario>.png``: the scenario's matplotlib chart (skipped, with a note,
  when matplotlib is not installed).

How a scenario's runs are shown is its :class:`Renderer`: the table, the chart,
its rows in ``summary.md`` and its panel in ``summary.png``. :func:`write_summary`
builds those two from every ``<scenario>.json`` present; :func:`rerender`
rewrites every file from the JSON alone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.harness import Options, Runs, Stack, load_average

__all__ = [
    "Measurement",
    "Renderer",
    "Row",
    "cpu_note",
    "figure",
    "finish",
    "fmt",
    "machine",
    "rerender",
    "save",
    "summary_table",
    "write",
    "write_summary",
]

#: One row of ``summary.md``: benchmark, result, target.
Row = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Renderer:
    """How a scenario's runs are shown."""

    #: The Markdown table of ``<scenario>.md``.
    table: Callable[[Runs], str]
    #: Draws ``<scenario>.png`` at the given path.
    chart: Callable[[Runs, Path], None]
    #: The scenario's headline rows in ``summary.md``.
    summary: Callable[[Runs], list[Row]]
    #: Draws the scenario's panel of ``summary.png`` on a matplotlib axis (None: none).
    panel: Callable[[Any, Runs], None] | None = None


def machine() -> dict[str, Any]:
    """What the results were measured on."""
    from importlib import metadata

    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
                break
    try:
        from realtime import __version__ as version
    except ImportError:  # pragma: no cover - the runner needs realtime anyway
        version = ""
    versions: dict[str, str] = {}
    for dist in ("uvicorn", "websockets", "fastapi", "motor", "pymongo", "picows",
                 "uvloop", "httptools", "orjson", "secantusdb"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "realtime": version,
        "packages": versions,
        "load_average": load_average(),
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    """A number for a table: ``—`` when missing (not received), ``∞`` when infinite."""
    if value is None:
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:,.{digits}f}{unit}"


def cpu_note(cpu: dict[str, Any]) -> str:
    """A :class:`~bench.harness.CpuWindow` result as one line of the run log."""
    cores = cpu["cores"]
    parts = [f"{name} {value:.2f}" for name, value in cores.items()]
    return (", ".join(parts) + f"; others {cpu['other_cores']:.2f} "
            f"(machine {cpu['machine_busy_cores']:.2f} of {cpu['machine_cores']})")


def figure(ncols: int = 1, width: float = 6.4) -> tuple[Any, Any]:
    """A matplotlib figure with ``ncols`` axes side by side (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 4.2), squeeze=False)
    return fig, axes[0]


def save(fig: Any, path: Path) -> None:
    """Write ``fig`` as a PNG and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finish(opts: Options, scenario: str, runs: Runs, render: Renderer,
           **extra: Any) -> dict[str, Any]:
    """A scenario's results (the machine, ``extra``, its runs), written as a report."""
    data = {"scenario": scenario, "quick": opts.quick, "machine": machine(), **extra,
            "runs": runs}
    write(opts.results(), data, render, opts.log)
    return data


class Measurement:
    """One run of a scenario: the processes it starts and the runs it measures.

    ``async with Measurement(opts, scenario, render) as m`` gives :attr:`stack`
    (created when first used, every process in it stopped when the block
    ends, an exception or not) and :attr:`runs`; after the block,
    :meth:`finish` writes the report.
    """

    def __init__(self, opts: Options, scenario: str, render: Renderer) -> None:
        self.opts = opts
        self.scenario = scenario
        self.render = render
        #: One dict per measured run.
        self.runs: Runs = []
        self._stack: Stack | None = None

    @property
    def stack(self) -> Stack:
        """The scenario's processes (stopped at the end of the ``async with``)."""
        if self._stack is None:
            self._stack = Stack(self.opts)
        return self._stack

    async def __aenter__(self) -> Measurement:
        return self

    async def __aexit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.close()

    def finish(self, **extra: Any) -> dict[str, Any]:
        """The report (the machine, ``extra``, the runs), written (see :func:`finish`)."""
        return finish(self.opts, self.scenario, self.runs, self.render, **extra)


def write(out: Path, data: dict[str, Any], render: Renderer,
          log: Callable[[str], None]) -> None:
    """Write ``<scenario>.json``, ``.md`` and ``.png`` of ``data`` to ``out``."""
    scenario = data["scenario"]
    runs = data["runs"]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{scenario}.json").write_bytes(
        orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    m = data["machine"]
    header = (f"# {scenario}{' (quick)' if data.get('quick') else ''}\n\n"
              f"{m['when']} · {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
              f"Python {m['python']}, load average (1, 5, 15 min) at the end "
              f"{m['load_average']}\n\n")
    (out / f"{scenario}.md").write_text(header + render.table(runs) + "\n")
    try:
        render.chart(runs, out / f"{scenario}.png")
    except ImportError:
        log("matplotlib is not installed: no chart (pip install matplotlib)")


def _load(out: Path, renders: Mapping[str, Renderer]) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for name in renders:
        path = out / f"{name}.json"
        if path.exists():
            results[name] = orjson.loads(path.read_bytes())
    return results


def summary_table(results: Mapping[str, dict[str, Any]],
                  renders: Mapping[str, Renderer]) -> str:
    """The headline figures of every scenario found, as a Markdown table."""
    rows: list[Row] = []
    for name, render in renders.items():
        if name in results:
            rows += render.summary(results[name]["runs"])
    lines = ["| benchmark | result | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def write_summary(out: Path, renders: Mapping[str, Renderer]) -> None:
    """``summary.md`` and ``summary.png`` from every ``<scenario>.json`` in ``out``."""
    results = _load(out, renders)
    if not results:
        return
    m = next(iter(results.values()))["machine"]
    text = (f"# realtime benchmarks\n\n{m['when']} · {m['cores']} cores ({m['cpu']}), "
            f"{m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}\n\n"
            + summary_table(results, renders))
    (out / "summary.md").write_text(text)
    with contextlib.suppress(ImportError):
        _summary_chart(results, renders, out / "summary.png")


def _summary_chart(results: Mapping[str, dict[str, Any]], renders: Mapping[str, Renderer],
                   path: Path) -> None:
    panels = [(render.panel, results[name]["runs"]) for name, render in renders.items()
              if render.panel is not None and name in results]
    if not panels:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(11, 3.75 * rows), squeeze=False)
    cells = [ax for row in axes for ax in row]
    for ax, (panel, runs) in zip(cells, panels, strict=False):
        panel(ax, runs)
    for ax in cells[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def rerender(out: Path, renders: Mapping[str, Renderer], log: Callable[[str], None]) -> int:
    """Rewrite every table, chart and the summary from the JSON files in ``out``.

    Returns how many scenario reports were found.
    """
    results = _load(out, renders)
    for name, data in results.items():
        write(out, data, renders[name], log)
    write_summary(out, renders)
    return len(results)

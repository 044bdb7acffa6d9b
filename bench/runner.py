"""Running scenarios: one, ``all`` of them, or ``report`` (re-render the results).

``python -m bench`` (``bench/__main__.py``) parses the command line and calls
:func:`run`; tests call :func:`run_scenario`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import report
from bench.harness import Options, load_average, raise_fd_limit
from bench.scenarios import SCENARIOS, renderers

__all__ = ["incomplete", "run", "run_scenario"]


async def run_scenario(name: str, opts: Options) -> dict[str, Any]:
    """Run one scenario; return its results (also written to ``opts.results()``).

    Raises:
        ValueError: unknown scenario.
        BenchError: a process could not be started or a load client failed.
    """
    scenario = SCENARIOS.get(name)
    if scenario is None:
        raise ValueError(f"unknown scenario {name!r}; expected one of {', '.join(SCENARIOS)}")
    raise_fd_limit()
    return await scenario.run(opts)


def incomplete(data: dict[str, Any]) -> list[str]:
    """The runs of a report that did not receive everything that was sent."""
    problems = []
    for r in data["runs"]:
        if not r.get("complete", True):
            what = " ".join(str(r[k]) for k in ("server", "driver", "round") if k in r)
            subs = f" {r['subscribers']} subs" if "subscribers" in r else ""
            problems.append(f"{data['scenario']}: {what or 'realtime'}{subs}")
    return problems


def run(scenario: str, opts: Options) -> int:
    """Run ``scenario`` (or ``all``; ``report`` only re-renders); return an exit status.

    In ``--quick`` mode the status is 1 when a run did not deliver everything it
    sent (the smoke test); full runs report shortfalls (the naive server falls
    behind by design) without failing.

    Raises:
        ValueError: unknown scenario.
        BenchError: a process could not be started or a load client failed.
    """
    out = opts.results()
    if scenario == "report":
        found = report.rerender(out, renderers(), opts.log)
        opts.log(f"re-rendered {found} reports in {out}")
        return 0 if found else 1
    names = list(SCENARIOS) if scenario == "all" else [scenario]
    for name in names:
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}; "
                             f"expected all, report or one of {', '.join(SCENARIOS)}")
    if scenario == "all" and not opts.quick:
        opts.profile = True
    opts.log(f"results go to {out}")
    started = time.monotonic()
    problems: list[str] = []

    async def main() -> None:
        for name in names:
            opts.log(f"== {name}{' (quick)' if opts.quick else ''}; load average "
                     f"{load_average()}")
            data = await run_scenario(name, opts)
            problems.extend(incomplete(data))

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        asyncio.run(main())
    else:
        uvloop.run(main())
    report.write_summary(out, renderers())
    opts.log(f"results in {out} ({time.monotonic() - started:.0f} s)")
    if problems:
        opts.log("not everything sent was received: " + "; ".join(problems))
        return 1 if opts.quick else 0
    return 0

"""``python -m bench SCENARIO [options]``: run benchmarks, write their reports.

Bad input gets one line on stderr and exit status 2, never a traceback; a
benchmark that cannot run (a process failed to start) gets a message and 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from bench.harness import RESULTS, BenchError, Options, output_dir
from bench.runner import run
from bench.scenarios import SCENARIOS

__all__ = ["main", "parser"]

PROG = "python -m bench"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _clients(text: str) -> int:
    value = _count(text)
    if value > 8:
        raise argparse.ArgumentTypeError(f"at most 8 load processes, not {value}")
    return value


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(size) for size in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"numbers separated by commas, e.g. 500,1000, not {text!r}") from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"subscriber counts must be at least 1: {text!r}")
    return sizes


def _directory(text: str) -> Path:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    return path


def parser() -> argparse.ArgumentParser:
    """The command line."""
    scenarios = "\n".join(f"  {s.name:<9} {s.about}" for s in SCENARIOS.values())
    p = _Parser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Benchmarks of realtime with their baselines in the same run. Each\n"
                    "scenario starts its own database, servers and load processes on\n"
                    "loopback and writes JSON, a Markdown table and a PNG chart.",
        epilog=f"scenarios:\n{scenarios}\n  all       every scenario, in this order\n"
               "  report    re-render tables, charts and the summary from the JSON files\n\n"
               f"results: --out DIR, else {RESULTS} for full runs\n"
               "and a fresh temporary directory for --quick runs. See bench/README.md.")
    p.add_argument("scenario", metavar="SCENARIO", choices=[*SCENARIOS, "all", "report"],
                   help=f"{' | '.join(SCENARIOS)} | all | report")
    p.add_argument("--quick", action="store_true",
                   help="a few connections and events per scenario (the CI smoke test)")
    p.add_argument("--out", type=_directory, metavar="DIR", help="results directory")
    p.add_argument("--profile", action="store_true",
                   help="record a py-spy profile of the server (on with a full `all`)")
    p.add_argument("--clients", type=_clients, metavar="N",
                   help="load-client processes for large runs, 1 to 8 [1 or 2]")
    p.add_argument("--sizes", type=_sizes, metavar="N,N",
                   help="subscriber counts to run instead of the scenario's, e.g. 500,1000")
    p.add_argument("--driver", choices=("motor", "pymongo"),
                   help="REALTIME_DRIVER of the realtime servers [the default driver]")
    p.add_argument("--part", choices=("peer", "rest"),
                   help="latency: only the comparison with the Node.js peer, or only "
                        "the REST grid [both]")
    p.add_argument("--rounds", type=_count, metavar="N",
                   help="rounds of the drivers scenario and of the latency scenario's "
                        "comparison with the Node.js peer [3; 1 with --quick]")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run; return the exit status."""
    p = parser()
    args = p.parse_args(argv)
    if args.scenario != "report" and importlib.util.find_spec("picows") is None:
        p.exit(2, f"{PROG}: error: the load client needs picows: "
                  "pip install -e '.[embedded,bench]'\n")
    # `report` re-renders what is there: the committed results unless --out says otherwise.
    out = output_dir(args.quick and args.scenario != "report", args.out)
    opts = Options(quick=args.quick, out=out, profile=args.profile, clients=args.clients,
                   sizes=args.sizes, rounds=args.rounds, part=args.part)
    if args.driver:
        opts.server_env["REALTIME_DRIVER"] = args.driver
    try:
        return run(args.scenario, opts)
    except BenchError as exc:
        print(f"{PROG}: {args.scenario} could not run: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())

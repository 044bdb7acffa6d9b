"""``realtime serve`` with :mod:`tracemalloc` on: where an idle connection's memory goes.

Run by the idle scenario (``python -m bench idle --profile``), never by hand:
the realtime server runs in the main thread exactly as ``python -m realtime
serve`` (settings from ``REALTIME_*``); a second thread answers JSON lines on
stdin: ``{"cmd":"mark"}`` takes the baseline snapshot, ``{"cmd":"diff","n":N,
"top":K}`` answers the K source lines whose allocations grew most since the
mark, with the bytes each holds per connection (``N`` connections were opened
in between), and the total. Python objects only: the kernel's socket buffers
and the allocator's free lists are not in it (RSS is the idle scenario's
figure). Tracing slows allocation; the figures are sizes, never times.
"""

from __future__ import annotations

import sys
import threading
import tracemalloc
from typing import Any

import orjson


def _where(filename: str, lineno: int) -> str:
    """``filename:lineno`` without this machine's directories."""
    for marker in ("site-packages/", "/realtime/", "/python3."):
        at = filename.rfind(marker)
        if at >= 0:
            if marker == "/python3.":  # the standard library: from after the version
                filename = filename[filename.index("/", at + 1) + 1:]
            elif marker == "/realtime/":
                filename = filename[at + 1:]
            else:
                filename = filename[at + len(marker):]
            break
    return f"{filename}:{lineno}"


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
    sys.stdout.flush()


def _commands() -> None:
    base: tracemalloc.Snapshot | None = None
    for line in sys.stdin.buffer:
        command = orjson.loads(line)
        if command["cmd"] == "mark":
            base = tracemalloc.take_snapshot()
            _answer({"ok": True})
        elif command["cmd"] == "diff" and base is not None:
            n = max(1, int(command["n"]))
            now = tracemalloc.take_snapshot()
            stats = now.compare_to(base, "lineno")
            total = sum(s.size_diff for s in stats)
            top = [{"where": _where(s.traceback[0].filename, s.traceback[0].lineno),
                    "bytes_per_connection": round(s.size_diff / n, 1),
                    "blocks_per_connection": round(s.count_diff / n, 2)}
                   for s in stats[:int(command.get("top", 25))]]
            _answer({"bytes_per_connection": round(total / n, 1), "top": top})
        else:
            _answer({"error": f"unknown or early command {command!r}"})


def main() -> None:
    """Trace allocations, start the command thread, serve."""
    tracemalloc.start(1)
    threading.Thread(target=_commands, name="memory-probe", daemon=True).start()
    from realtime.cli import main as realtime_main

    sys.argv = ["realtime", "serve", "--log-level", "warning"]
    realtime_main()


if __name__ == "__main__":
    main()

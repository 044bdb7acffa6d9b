"""``realtime bench SCENARIO [--quick]``: benchmarks with their baselines in the same run.

Every scenario starts its own SecantusDB (in memory), its own server(s) and its
load processes (``bench/loadclient.py``, a picows client that counts every frame
and decodes only a sample), targets loopback only, is bounded in time, and
writes ``<scenario>.json``, ``<scenario>.md`` (a Markdown table) and
``<scenario>.png`` (a matplotlib chart) to the results directory
(``bench/results/`` by default). ``bench/README.md`` explains every figure.

Scenarios (DESIGN.md §8 has the targets):

- ``latency``: N subscribers x a REST writer at R writes/s; request sent →
  message received, p50/p90/p99/max, delivered/expected.
- ``fanout``: N subscribers all matching, events offered faster than they can
  be delivered; delivered messages/s, against a bare ``websockets.broadcast``
  server pushing the same payloads to the same load client.
- ``filters``: 1,000 subscribers with distinct range filters; the hub's matching
  cost per event (in process) and the end-to-end event rate.
- ``idle``: 1,000 / 5,000 / 10,000 idle subscribers; RSS per connection,
  subscribe time and heartbeat CPU at rest.
- ``naive``: the same workload against ``bench/naive_server.py`` (one change
  stream per WebSocket): throughput and p99 at 10, 100 and 500 subscribers.

``--quick`` runs a few connections and events per scenario (seconds each) and
only checks that everything sent was received: the CI smoke test. The load is
measured with Linux's ``/proc`` (CPU of every process involved and of the
whole machine), so the report says when the load client saturated or when
other work shared the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from realtime import __version__

__all__ = [
    "SCENARIOS",
    "BenchError",
    "Options",
    "default_bench_dir",
    "percentiles",
    "run",
    "run_scenario",
]

#: The scenarios, in the order ``all`` runs them.
SCENARIOS = ("latency", "fanout", "filters", "idle", "naive")

#: Connections whose change frames are decoded for latency (spread over all).
SAMPLED_CONNECTIONS = 20
#: Sustained CPU (cores) above which a load process counts as saturated.
SATURATED = 0.9
#: Seconds the naive scenario waits for a phase's messages (full runs).
NAIVE_DEADLINE = 10.0
#: Padding that brings a change message to ~300 bytes, like DESIGN.md §8's.
PAD = "x" * 64


class BenchError(RuntimeError):
    """A benchmark could not run (a process failed to start, a load client failed)."""


def default_bench_dir() -> Path:
    """The ``bench/`` directory of the source checkout (beside the package), else ./bench."""
    beside = Path(__file__).resolve().parent.parent / "bench"
    return beside if (beside / "loadclient.py").exists() else Path("bench").resolve()


@dataclass(slots=True)
class Options:
    """How a run is made."""

    quick: bool = False
    out: Path = field(default_factory=lambda: default_bench_dir() / "results")
    bench_dir: Path = field(default_factory=default_bench_dir)
    #: Record a py-spy profile of the realtime server (fanout at 500 subscribers).
    profile: bool = False
    #: Load processes for large runs (None: 1 below 200 connections, else 2).
    clients: int | None = None
    #: Subscriber counts to run instead of the scenario's own (e.g. ``(500,)``).
    sizes: tuple[int, ...] | None = None
    #: Environment for every realtime server (e.g. ``{"REALTIME_DRIVER": "pymongo"}``).
    server_env: dict[str, str] = field(default_factory=dict)
    log: Callable[[str], None] = field(default=lambda text: print(text, flush=True))


# ---------------------------------------------------------------------------
# Measuring: /proc (Linux)

def _ticks() -> int:
    return os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) used by process ``pid`` so far."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0.0
    fields = data[data.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _ticks()


def proc_rss(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def system_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    try:
        with open("/proc/stat", "rb") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return (0.0, 0.0)
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return ((total - idle) / _ticks(), total / _ticks())


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


class CpuWindow:
    """CPU used by named processes and by the whole machine over a time window."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self.start_wall = time.monotonic()
        self.start = {name: sum(proc_cpu(p) for p in ps) for name, ps in pids.items()}
        self.start_self = time.process_time()
        self.start_system = system_cpu()

    def stop(self) -> dict[str, Any]:
        """Cores used by each process group, by this runner, by the machine and by others."""
        wall = max(time.monotonic() - self.start_wall, 1e-9)
        cores: dict[str, float] = {}
        for name, ps in self.pids.items():
            used = sum(proc_cpu(p) for p in ps) - self.start[name]
            cores[name] = round(used / wall, 3)
        cores["runner"] = round((time.process_time() - self.start_self) / wall, 3)
        busy, _total = system_cpu()
        machine_busy = (busy - self.start_system[0]) / wall
        ncpu = os.cpu_count() or 1
        ours = sum(cores.values())
        return {
            "seconds": round(wall, 3),
            "cores": cores,
            "machine_busy_cores": round(machine_busy, 3),
            "other_cores": round(max(0.0, machine_busy - ours), 3),
            "machine_cores": ncpu,
        }


def machine() -> dict[str, Any]:
    """What the results were measured on."""
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
    versions: dict[str, str] = {}
    from importlib import metadata

    for dist in ("uvicorn", "websockets", "fastapi", "motor", "pymongo", "picows", "uvloop",
                 "httptools", "orjson", "secantusdb"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "realtime": __version__,
        "packages": versions,
        "load_average": load_average(),
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def percentiles(values: Sequence[float], missing: int = 0) -> dict[str, float | None]:
    """p50/p90/p99/max of ``values``; ``missing`` values count as infinitely late.

    A percentile that falls among the missing ones is ``None`` (not received).
    """
    ordered = sorted(values)
    n = len(ordered) + missing
    result: dict[str, float | None] = {}
    for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99)):
        if n == 0:
            result[name] = None
            continue
        rank = max(0, math.ceil(q * n) - 1)
        result[name] = ordered[rank] if rank < len(ordered) else None
    result["max"] = (ordered[-1] if ordered else None) if missing == 0 else None
    result["count"] = float(len(ordered))
    return result


def spread(n: int, k: int) -> list[int]:
    """``k`` indexes spread evenly over ``range(n)`` (all of them if ``n <= k``)."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


# ---------------------------------------------------------------------------
# Processes


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("REALTIME_") and k != "PYTHONASYNCIODEBUG"}
    env.update(extra or {})
    return env


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Child:
    """A child process; optionally driven by JSON lines on its stdin/stdout."""

    def __init__(self, name: str, args: list[str], *, env: dict[str, str] | None = None,
                 log_dir: Path, reads_stdin: bool = True, stop_timeout: float = 10.0) -> None:
        self.name = name
        #: True if the child exits when its stdin closes (load clients, the baseline).
        self.reads_stdin = reads_stdin
        self.stop_timeout = stop_timeout
        self.args = args
        self.env = _child_env(env)
        self.log_path = log_dir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        """The process id (0 before start)."""
        return self.proc.pid if self.proc is not None else 0

    async def start(self) -> Child:
        """Spawn the process (stdin/stdout pipes, stderr to a log file)."""
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                env=self.env, limit=1 << 28, start_new_session=True)
        finally:
            log.close()
        return self

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:]
        return ""

    def _pipes(self) -> tuple[asyncio.StreamWriter, asyncio.StreamReader]:
        proc = self.proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise BenchError(f"{self.name} is not running")
        return proc.stdin, proc.stdout

    async def send(self, message: dict[str, Any]) -> None:
        """Write one JSON line to the child's stdin."""
        stdin, _ = self._pipes()
        stdin.write(orjson.dumps(message) + b"\n")
        await stdin.drain()

    async def recv(self, timeout: float) -> dict[str, Any]:
        """Read one JSON line from the child's stdout.

        Raises:
            BenchError: the child exited or said nothing within ``timeout``.
        """
        _, stdout = self._pipes()
        try:
            line = await asyncio.wait_for(stdout.readline(), timeout)
        except TimeoutError:
            raise BenchError(f"{self.name} did not answer in {timeout:.0f} s") from None
        if not line:
            code = await asyncio.wait_for(self.proc.wait(), 5) if self.proc else None
            raise BenchError(f"{self.name} exited ({code}): {self._tail()}")
        value: dict[str, Any] = orjson.loads(line)
        return value

    async def call(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a command and return its answer."""
        await self.send(message)
        return await self.recv(timeout)

    async def stop(self) -> None:
        """Close stdin, then SIGTERM, then SIGKILL; always reaps the process."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        if self.reads_stdin:
            try:
                await asyncio.wait_for(proc.wait(), 2.0)
                return
            except TimeoutError:
                pass
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), self.stop_timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def _wait_port(port: int, child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if child.proc is not None and child.proc.returncode is not None:
            raise BenchError(f"{child.name} exited ({child.proc.returncode}): {child._tail()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"{child.name} did not listen in {timeout:.0f} s") from None
            await asyncio.sleep(0.05)


async def _http_get(port: int, path: str) -> int:
    """Status of ``GET path`` on 127.0.0.1:``port`` (0 if unreachable)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                     .encode())
        line = await asyncio.wait_for(reader.readline(), 5)
        parts = line.split()
        return int(parts[1]) if len(parts) > 1 else 0
    except (OSError, TimeoutError, ValueError):
        return 0
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class Stack:
    """Children and servers started by a scenario, stopped in reverse order."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.dir = Path(tempfile.mkdtemp(prefix="realtime-bench-"))
        self._stops: list[Callable[[], Awaitable[None]]] = []

    def on_stop(self, stop: Callable[[], Awaitable[None]]) -> None:
        """Register a coroutine function to run at :meth:`close`."""
        self._stops.append(stop)

    async def close(self) -> None:
        """Stop everything (reverse order), then remove the scratch directory."""
        while self._stops:
            stop = self._stops.pop()
            with contextlib.suppress(Exception):
                await stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    async def database(self) -> Any:
        """Start a SecantusDB server in memory (no sync on commit); returns it."""
        from realtime.embedded import EmbeddedServer

        server = EmbeddedServer(":memory:", sync_on_commit=False)
        server.spawn()
        self.on_stop(lambda: asyncio.to_thread(server.stop))
        await server.wait_ready_async(30.0)
        return server

    async def realtime(self, uri: str, database: str,
                       env: dict[str, str] | None = None) -> Child:
        """Start ``python -m realtime serve`` on a free port; wait until /readyz is 200."""
        from realtime.embedded import free_port

        port = free_port()
        child = Child(f"realtime-{port}", [sys.executable, "-m", "realtime", "serve",
                                           "--log-level", "warning"],
                      env={**self.opts.server_env, "REALTIME_MONGODB_URI": uri,
                           "REALTIME_DATABASE": database, "REALTIME_PORT": str(port),
                           **(env or {})}, log_dir=self.dir, reads_stdin=False,
                      stop_timeout=10.0)
        await child.start()
        self.on_stop(child.stop)
        child.port = port  # type: ignore[attr-defined]
        deadline = time.monotonic() + 60
        while await _http_get(port, "/readyz") != 200:
            if child.proc is not None and child.proc.returncode is not None:
                raise BenchError(f"realtime exited ({child.proc.returncode}): {child._tail()}")
            if time.monotonic() > deadline:
                raise BenchError("realtime was not ready in 60 s")
            await asyncio.sleep(0.05)
        return child

    async def naive(self, uri: str, database: str) -> Child:
        """Start ``bench/naive_server.py`` (one change stream per WebSocket)."""
        from realtime.embedded import free_port

        port = free_port()
        child = Child(f"naive-{port}", [sys.executable,
                                        str(self.opts.bench_dir / "naive_server.py"),
                                        str(port), uri, database], log_dir=self.dir,
                      reads_stdin=False, stop_timeout=2.0)
        await child.start()
        self.on_stop(child.stop)
        child.port = port  # type: ignore[attr-defined]
        await _wait_port(port, child, 60)
        return child

    async def broadcast(self) -> Child:
        """Start ``bench/broadcast_server.py`` (the bare websockets.broadcast baseline)."""
        from realtime.embedded import free_port

        port = free_port()
        child = Child(f"broadcast-{port}", [sys.executable,
                                            str(self.opts.bench_dir / "broadcast_server.py"),
                                            str(port)], log_dir=self.dir)
        await child.start()
        self.on_stop(child.stop)
        child.port = port  # type: ignore[attr-defined]
        answer = await child.recv(30)
        if answer.get("event") != "listening":
            raise BenchError(f"broadcast server said {answer}")
        return child


def _port(child: Child) -> int:
    port: int = child.port  # type: ignore[attr-defined]
    return port


# ---------------------------------------------------------------------------
# The load client (bench/loadclient.py, one or more processes)


@dataclass(slots=True)
class LoadReport:
    """What the load processes saw since their last reset."""

    total: int
    #: Socket reads that carried change frames (frames per read shows batching).
    reads: int
    counts: list[int]
    first_ns: int
    last_ns: int
    samples: list[tuple[int, int, int]]
    cpu_cores: list[float]
    closes: dict[str, int]
    other: dict[str, int]
    timeline: list[int]
    timeline_step: float
    example: str | None

    @property
    def saturated(self) -> bool:
        """True if a load process was (nearly) CPU-bound."""
        return any(c >= SATURATED for c in self.cpu_cores)

    def rate(self, messages: int | None = None) -> float:
        """Messages per second between the first and the last change received."""
        span = (self.last_ns - self.first_ns) / 1e9
        count = self.total if messages is None else messages
        return count / span if span > 0 else 0.0

    def peak_rate(self) -> float:
        """The highest delivered rate over one second of the timeline."""
        step = self.timeline_step
        window = max(1, round(1 / step))
        line = self.timeline
        best = 0.0
        for i in range(window, len(line)):
            best = max(best, (line[i] - line[i - window]) / (window * step))
        return best


class Load:
    """Load processes holding ``len(subscribe)`` connections between them."""

    def __init__(self, stack: Stack, url: str, subscribe: list[list[str]], *,
                 sample: Sequence[int] = (), processes: int | None = None) -> None:
        self.stack = stack
        self.url = url
        self.subscribe = subscribe
        self.sample = set(sample)
        n = len(subscribe)
        wanted = processes if processes is not None else stack.opts.clients
        self.processes = max(1, min(n, wanted if wanted is not None else (1 if n < 200 else 2)))
        self.children: list[Child] = []
        self.connect_seconds = 0.0

    async def start(self) -> Load:
        """Spawn the processes, connect and subscribe every connection.

        Raises:
            BenchError: a connection failed.
        """
        n = len(self.subscribe)
        bounds = [n * i // self.processes for i in range(self.processes + 1)]
        script = str(self.stack.opts.bench_dir / "loadclient.py")
        for i in range(self.processes):
            lo, hi = bounds[i], bounds[i + 1]
            child = Child(f"load-{uuid.uuid4().hex[:6]}", [sys.executable, script],
                          log_dir=self.stack.dir)
            await child.start()
            self.stack.on_stop(child.stop)
            self.children.append(child)
            await child.send({"url": self.url, "subscribe": self.subscribe[lo:hi],
                              "sample": [j - lo for j in self.sample if lo <= j < hi],
                              "concurrency": 100})
        started = time.monotonic()
        answers = await asyncio.gather(*(c.call({"cmd": "connect"}, 300)
                                         for c in self.children))
        self.connect_seconds = time.monotonic() - started
        failed = sum(int(a.get("failed", 0)) for a in answers)
        if failed:
            errors = [e for a in answers for e in a.get("errors", [])]
            raise BenchError(f"{failed} of {n} connections failed: {errors[:3]}")
        return self

    @property
    def pids(self) -> list[int]:
        """Process ids of the load processes."""
        return [c.pid for c in self.children]

    async def reset(self) -> None:
        """Zero the counters (and the CPU clocks) of every process."""
        await asyncio.gather(*(c.call({"cmd": "reset"}, 30) for c in self.children))

    async def total(self) -> int:
        """Change frames received since the last reset (all processes)."""
        answers = await asyncio.gather(*(c.call({"cmd": "wait", "total": 0, "timeout": 0}, 30)
                                         for c in self.children))
        return sum(int(a["total"]) for a in answers)

    async def wait(self, total: int, timeout: float, idle: float = 5.0) -> bool:
        """Wait until ``total`` change frames arrived; False on timeout or when stalled.

        Gives up early if nothing arrives for ``idle`` seconds.
        """
        deadline = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while True:
            got = await self.total()
            if got >= total:
                return True
            now = time.monotonic()
            if got != last:
                last, last_change = got, now
            elif now - last_change > idle:
                return False
            if now > deadline:
                return False
            await asyncio.sleep(0.05)

    async def settle(self, quiet: float = 1.0, timeout: float = 60.0) -> int:
        """Wait until no change frame arrived for ``quiet`` seconds; return the total."""
        deadline = time.monotonic() + timeout
        last = await self.total()
        since = time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            got = await self.total()
            if got != last:
                last, since = got, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last

    async def report(self, samples: bool = True) -> LoadReport:
        """Merge the reports of every process."""
        answers = await asyncio.gather(*(c.call({"cmd": "report", "samples": samples}, 120)
                                         for c in self.children))
        counts: list[int] = []
        merged_samples: list[tuple[int, int, int]] = []
        closes: dict[str, int] = {}
        other: dict[str, int] = {}
        timeline: list[int] = []
        example = None
        for a in answers:
            counts.extend(a["counts"])
            merged_samples.extend((int(s[0]), int(s[1]), int(s[2])) for s in a["samples"])
            for code, k in a["closes"].items():
                closes[str(code)] = closes.get(str(code), 0) + int(k)
            for kind, k in a["other"].items():
                other[kind] = other.get(kind, 0) + int(k)
            line = a["timeline"]
            if len(line) > len(timeline):
                timeline.extend([timeline[-1] if timeline else 0] * (len(line) - len(timeline)))
            for i in range(len(timeline)):
                timeline[i] += line[i] if i < len(line) else (line[-1] if line else 0)
            example = example or a.get("example")
        firsts = [int(a["first_ns"]) for a in answers if a["first_ns"]]
        return LoadReport(
            total=sum(int(a["total"]) for a in answers),
            reads=sum(int(a.get("reads", 0)) for a in answers),
            counts=counts,
            first_ns=min(firsts) if firsts else 0,
            last_ns=max(int(a["last_ns"]) for a in answers),
            samples=merged_samples,
            cpu_cores=[round(a["cpu_seconds"] / max(a["wall_seconds"], 1e-9), 3)
                       for a in answers],
            closes=closes,
            other=other,
            timeline=timeline,
            timeline_step=float(answers[0]["timeline_step"]),
            example=example,
        )

    async def stop(self) -> None:
        """Close every connection and end the processes."""
        for child in self.children:
            with contextlib.suppress(Exception):
                await child.call({"cmd": "close"}, 30)
        for child in self.children:
            await child.stop()
        self.children = []


# ---------------------------------------------------------------------------
# Writers


@dataclass(slots=True)
class WriteLog:
    """What a writer did: per sequence number, when it was sent and acknowledged."""

    sent: dict[int, int] = field(default_factory=dict)
    acked: dict[int, int] = field(default_factory=dict)
    failures: int = 0
    started_ns: int = 0
    finished_ns: int = 0
    #: The longest a write started after its scheduled time (ms).
    max_late_ms: float = 0.0

    @property
    def count(self) -> int:
        """Writes acknowledged."""
        return len(self.acked)

    def rate(self) -> float:
        """Writes acknowledged per second."""
        span = (self.finished_ns - self.started_ns) / 1e9
        return self.count / span if span > 0 else 0.0


def document(seq: int, t_ns: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The benchmark document: its sequence number, its send time, ~64 bytes of padding."""
    doc: dict[str, Any] = {"seq": seq, "t": t_ns}
    if extra:
        doc.update(extra)
    doc["pad"] = PAD
    return doc


class RestWriter:
    """POSTs documents to realtime's REST API at a fixed rate (HTTP/1.1 keep-alive).

    A minimal client on asyncio streams, so the writer costs little CPU; up to
    ``connections`` requests are in flight, and a write is never sent before its
    scheduled time (open loop: a slow server does not slow the schedule down
    until every connection is busy).
    """

    def __init__(self, port: int, collection: str, connections: int = 16) -> None:
        self.port = port
        self.path = f"/api/collections/{collection}/documents"
        self.connections = connections
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = \
            asyncio.Queue()
        self._all: list[asyncio.StreamWriter] = []

    async def open(self) -> RestWriter:
        """Open the keep-alive connections."""
        for _ in range(self.connections):
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self._all.append(writer)
            self._idle.put_nowait((reader, writer))
        return self

    async def close(self) -> None:
        """Close every connection."""
        for writer in self._all:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        self._all = []

    async def _post(self, body: bytes) -> int:
        reader, writer = await self._idle.get()
        try:
            for attempt in (1, 2):
                try:
                    return await self._exchange(reader, writer, body)
                except (OSError, RuntimeError, asyncio.IncompleteReadError):
                    # The server closed an idle keep-alive connection: reconnect once.
                    if attempt == 2:
                        raise
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    self._all.append(writer)
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            self._idle.put_nowait((reader, writer))

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        body: bytes) -> int:
        if writer.is_closing():
            raise ConnectionResetError("closed")
        writer.write(b"POST " + self.path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await reader.readexactly(length)
        return status

    async def run(self, count: int, rate: float, first_seq: int = 0,
                  extra: Callable[[int], dict[str, Any]] | None = None) -> WriteLog:
        """Write ``count`` documents at ``rate`` per second; return the log."""
        log = WriteLog()
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        log.started_ns = time.monotonic_ns()

        free = asyncio.Semaphore(self.connections)

        async def one(seq: int) -> None:
            t = time.monotonic_ns()
            log.sent[seq] = t
            body = orjson.dumps(document(seq, t, extra(seq) if extra else None))
            try:
                status = await self._post(body)
            except (OSError, RuntimeError, asyncio.IncompleteReadError, ValueError):
                log.failures += 1
                return
            if status == 201:
                log.acked[seq] = time.monotonic_ns()
            else:
                log.failures += 1

        for i in range(count):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                log.max_late_ms = max(log.max_late_ms, -delay * 1000)
            await free.acquire()  # a connection is free (at most `connections` in flight)
            task = asyncio.get_running_loop().create_task(one(first_seq + i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(lambda _: free.release())
        if tasks:
            await asyncio.gather(*tasks)
        log.finished_ns = time.monotonic_ns()
        return log


class DbWriter:
    """Inserts documents straight into the database (through ``realtime.db``), in batches.

    With a ``rate`` the batches are paced (every 10 ms, the documents due by then);
    without one, batches of ``batch`` documents go back to back (as fast as the
    database takes them).
    """

    def __init__(self, uri: str, database: str, collection: str) -> None:
        from realtime.config import Settings
        from realtime.db import Database

        self.db = Database(Settings(mongodb_uri=uri, database=database), uri)
        self.collection = self.db.collection(collection)
        self.prefix = uuid.uuid4().hex[:8]

    async def close(self) -> None:
        """Close the client."""
        await self.db.close()

    async def run(self, count: int, rate: float | None = None, *, batch: int = 100,
                  first_seq: int = 0,
                  extra: Callable[[int], dict[str, Any]] | None = None) -> WriteLog:
        """Insert ``count`` documents; return the log.

        Raises:
            BenchError: an insert failed.
        """
        log = WriteLog()
        start = time.monotonic()
        log.started_ns = time.monotonic_ns()
        done = 0
        while done < count:
            if rate is None:
                n = min(batch, count - done)
            else:
                due = min(count, math.floor((time.monotonic() - start) * rate) + 1)
                n = min(due - done, batch)
                if n <= 0:
                    await asyncio.sleep(0.01 - (time.monotonic() - start) % 0.01)
                    continue
            t = time.monotonic_ns()
            docs = []
            for i in range(done, done + n):
                seq = first_seq + i
                doc = document(seq, t, extra(seq) if extra else None)
                doc["_id"] = f"{self.prefix}-{seq}"
                docs.append(doc)
                log.sent[seq] = t
            _, errors = await self.collection.insert_many(docs)
            if errors:
                raise BenchError(f"insert failed: {errors[0]}")
            acked = time.monotonic_ns()
            for i in range(done, done + n):
                log.acked[first_seq + i] = acked
            done += n
        log.finished_ns = time.monotonic_ns()
        return log


async def insert_floor(uri: str, database: str, driver: str, rate: float,
                      count: int) -> dict[str, float | None]:
    """Latency of ``insert_one`` straight into the database, one at a time at ``rate``.

    The floor under a REST write at that pace: the same driver and write concern
    as the server, without HTTP or realtime in the path. (An idle gap slows a
    round trip to SecantusDB: paced inserts are slower than back-to-back ones.)
    """
    from realtime.config import Settings
    from realtime.db import Database

    settings = Settings(mongodb_uri=uri, database=database,
                        driver="pymongo" if driver == "pymongo" else "motor")
    db = Database(settings, uri)
    collection = db.collection("insert_floor")
    took: list[float] = []
    try:
        start = time.monotonic()
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            t = time.perf_counter_ns()
            await collection.insert_one({"seq": i})
            took.append((time.perf_counter_ns() - t) / 1e6)
    finally:
        await db.close()
    return percentiles(took)


# ---------------------------------------------------------------------------
# Profiling


async def profile_server(pid: int, seconds: float, out: Path, name: str,
                         log: Callable[[str], None]) -> Path | None:
    """Sample ``pid`` with py-spy for ``seconds``; save collapsed stacks and a summary.

    Returns the summary's path, or None when py-spy is not installed or cannot attach.
    """
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not await asyncio.to_thread(os.path.exists, exe):
        log("py-spy is not installed (pip install py-spy): no profile")
        return None
    raw = out / f"profile-{name}.txt"
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
        "--rate", "250", "--nonblocking", "--format", "raw", "--output", str(raw),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = await proc.communicate()
    return await asyncio.to_thread(_write_profile_summary, raw, out / f"profile-{name}.md",
                                   name, err, log)


def _write_profile_summary(raw: Path, summary: Path, name: str, err: bytes,
                           log: Callable[[str], None]) -> Path | None:
    if not raw.exists():
        log(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
        return None
    summary.write_text(summarise_profile(raw.read_text(), name))
    return summary


def summarise_profile(collapsed: str, name: str, top: int = 25) -> str:
    """A Markdown table of the heaviest functions in py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    lines = [f"# Profile: {name}", "",
             f"py-spy samples: {total} (250 Hz, all threads, idle included). "
             "Raw collapsed stacks: the .txt beside this file "
             "(open it in speedscope or flamegraph.pl).", "",
             "## Own time (the frame at the top of the stack)", "",
             "| % | function |", "|---:|---|"]
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {100 * count / max(total, 1):.1f} | `{frame}` |")
    lines += ["", "## Inclusive time", "", "| % | function |", "|---:|---|"]
    for frame, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {100 * count / max(total, 1):.1f} | `{frame}` |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Reports


def _fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:,.{digits}f}{unit}"


def _ms(ns_values: Iterator[int]) -> list[float]:
    return [v / 1e6 for v in ns_values]


def latency_stats(report: LoadReport, log: WriteLog, expected_per_conn: int,
                  sampled: int) -> dict[str, Any]:
    """Latency percentiles (ms) of the sampled connections' messages.

    ``sent`` is the write's send time carried in the document (request sent →
    received); ``acked`` uses the writer's acknowledgement time instead (may be
    negative: the change can arrive before the HTTP response).
    """
    seqs = [s for s in report.samples if s[0] in log.sent]
    missing = max(0, expected_per_conn * sampled - len(seqs))
    sent = _ms(recv - t for _, t, recv in seqs)
    acked = _ms(recv - log.acked[seq] for seq, _, recv in seqs if seq in log.acked)
    return {"sent_to_received_ms": percentiles(sent, missing),
            "acked_to_received_ms": percentiles(acked, missing),
            "sampled_messages": len(seqs), "missing_sampled": missing}


def finish_report(opts: Options, scenario: str, runs: list[dict[str, Any]],
           table: Callable[[list[dict[str, Any]]], str],
           chart: Callable[[list[dict[str, Any]], Path], None],
           **extra: Any) -> dict[str, Any]:
    """A scenario's results (the machine, ``extra``, its runs), written as a report."""
    data = {"scenario": scenario, "quick": opts.quick, "machine": machine(), **extra,
            "runs": runs}
    write_report(opts, scenario, data, table(runs), lambda path: chart(runs, path))
    return data


def write_report(opts: Options, scenario: str, data: dict[str, Any], table: str,
                 chart: Callable[[Path], None]) -> None:
    """Write ``<scenario>.json``, ``.md`` and ``.png`` to the results directory."""
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / f"{scenario}.json").write_bytes(
        orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    m = data["machine"]
    header = (f"# {scenario}{' (quick)' if opts.quick else ''}\n\n"
              f"{m['when']} · {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
              f"Python {m['python']}, load average (1, 5, 15 min) at the end "
              f"{m['load_average']}\n\n")
    (opts.out / f"{scenario}.md").write_text(header + table + "\n")
    try:
        chart(opts.out / f"{scenario}.png")
    except ImportError:
        opts.log("matplotlib is not installed: no chart (pip install matplotlib)")


def _figure(ncols: int = 1, width: float = 6.4) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 4.2), squeeze=False)
    return fig, axes[0]


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cpu_note(cpu: dict[str, Any]) -> str:
    cores = cpu["cores"]
    parts = [f"{name} {value:.2f}" for name, value in cores.items()]
    return (", ".join(parts) + f"; others {cpu['other_cores']:.2f} "
            f"(machine {cpu['machine_busy_cores']:.2f} of {cpu['machine_cores']})")


# ---------------------------------------------------------------------------
# Scenario: latency


async def scenario_latency(opts: Options) -> dict[str, Any]:
    """N subscribers on one collection; a REST writer at R writes/s; latency per message.

    Full runs measure the default driver over the whole grid, and the other
    driver (motor vs pymongo) at 100 writes/s, the rate of DESIGN.md's targets.
    """
    driver = opts.server_env.get("REALTIME_DRIVER") or default_driver()
    other = "pymongo" if driver == "motor" else "motor"
    plan: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
    if opts.quick:
        plan = [(driver, opts.sizes or (20,), (100,))]
    else:
        plan = [(driver, opts.sizes or (100, 500, 1000), (10, 100, 500)),
                (other, tuple(n for n in (opts.sizes or (100, 500)) if n <= 500) or (100,),
                 (100,))]
    stack = Stack(opts)
    runs: list[dict[str, Any]] = []
    try:
        for drv, sizes, rates in plan:
            for n in sizes:
                # A fresh database and server per size: SecantusDB (a Python server)
                # slows down as its oplog grows, which would charge later runs.
                db = await stack.database()
                database = f"bench_{uuid.uuid4().hex[:8]}"
                server = await stack.realtime(db.uri, database, {"REALTIME_DRIVER": drv})
                await _latency_size(opts, stack, db, database, server, drv, n, rates, runs)
                await server.stop()
                await asyncio.to_thread(db.stop)
    finally:
        await stack.close()
    return finish_report(opts, "latency", runs, _latency_table, _latency_chart,
                         default_driver=driver)


async def _latency_size(opts: Options, stack: Stack, db: Any, database: str, server: Child,
                        driver: str, n: int, rates: Sequence[int],
                        runs: list[dict[str, Any]]) -> None:
    collection = f"lat{n}{driver}"
    sub = orjson.dumps({"op": "subscribe", "sub": "s", "collection": collection}).decode()
    sample = spread(n, SAMPLED_CONNECTIONS)
    load = await Load(stack, f"ws://127.0.0.1:{_port(server)}/ws", [[sub]] * n,
                      sample=sample).start()
    writer = await RestWriter(_port(server), collection).open()
    seq = 0
    try:
        for rate in rates:
            # The database's own insert at this pace (none at 500/s: one insert at
            # a time cannot keep that pace here), before the subscribers load it.
            floor = (await insert_floor(db.uri, database, driver, rate,
                                        30 if opts.quick else min(300, rate * 3))
                     if rate <= 100 else percentiles([]))
            # Warm up (connection pools, caches), then measure.
            warm = 10 if opts.quick else 20
            await load.settle(quiet=0.5)
            await load.reset()
            await writer.run(warm, rate, first_seq=seq)
            seq += warm
            await load.wait(warm * n, 30)
            await load.settle(quiet=0.3)
            await load.reset()
            # (500/s is more than the REST API takes here: keep those runs short)
            duration = (1.0 if opts.quick or rate >= 500
                        else min(8.0, max(2.0, 400_000 / (n * rate))))
            count = max(1, round(rate * duration))
            window = CpuWindow({"server": [server.pid], "database": [db.pid or 0],
                                "load": load.pids})
            log = await writer.run(count, rate, first_seq=seq)
            seq += count
            expected = count * n
            complete = await load.wait(expected, 20 + duration, idle=10)
            cpu = window.stop()
            report = await load.report()
            stats = latency_stats(report, log, count, len(sample))
            run = {
                "driver": driver, "subscribers": n, "rate": rate, "seconds": round(duration, 2),
                "writes": count, "write_failures": log.failures,
                "write_rate": round(log.rate(), 1),
                "writer_max_late_ms": round(log.max_late_ms, 2),
                "rest_ack_ms": percentiles(_ms(log.acked[s] - log.sent[s] for s in log.acked)),
                "db_insert_ms": floor,
                "expected": expected, "delivered": report.total,
                "complete": complete and report.total == expected,
                "deliveries_per_s": round(report.rate(), 1),
                "closes": report.closes, "client_cores": report.cpu_cores,
                "client_saturated": report.saturated, "cpu": cpu, **stats,
            }
            runs.append(run)
            lat = stats["sent_to_received_ms"]
            opts.log(f"latency {driver:<7} {n:>5} subs x {rate:>3}/s: p50 {_fmt(lat['p50'], 2)}"
                     f" ms p99 {_fmt(lat['p99'], 2)} ms, delivered {report.total}/{expected}, "
                     f"writes {log.rate():.0f}/s; {_cpu_note(cpu)}")
            if opts.profile and not opts.quick and rate == 100 and n in (100, 500):
                # Profiled in a repeat of the same load, outside the measured window:
                # sampling costs CPU the measured run must not pay.
                await load.settle(quiet=0.3)
                profiling = asyncio.ensure_future(profile_server(
                    server.pid, duration, opts.out, f"latency-{n}x{rate}-{driver}", opts.log))
                await writer.run(count, rate, first_seq=seq)
                seq += count
                await profiling
                await load.settle(quiet=0.5)
                await load.reset()
    finally:
        await writer.close()
        await load.stop()


def _latency_table(runs: list[dict[str, Any]]) -> str:
    lines = ["REST request sent → change received by the subscriber (sampled connections), "
             "through SecantusDB (in memory) and one change stream. writes/s is the rate the "
             "REST API took (below the target rate when the server could not keep up); "
             "ack → received is the part after the writer got its 201 (negative: the change "
             "arrived first), i.e. without the REST request's own queueing. DB insert "
             "alone is the floor under the REST write: `insert_one` straight into the "
             "database at the same pace, one at a time, before the subscribers connect.", "",
             "| driver | subscribers | writes/s | deliveries/s | p50 ms | p90 ms | p99 ms "
             "| max ms | delivered / expected | REST ack p50 ms | DB insert alone p50 ms "
             "| ack → received p50 / p99 ms | server cores | client cores "
             "| other load (cores) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lat = r["sent_to_received_ms"]
        lines.append(
            f"| {r.get('driver', '')} | {r['subscribers']:,} | {r['write_rate']:,.0f} "
            f"| {r['deliveries_per_s']:,.0f} "
            f"| {_fmt(lat['p50'], 2)} | {_fmt(lat['p90'], 2)} | {_fmt(lat['p99'], 2)} "
            f"| {_fmt(lat['max'], 1)} | {r['delivered']:,} / {r['expected']:,} "
            f"| {_fmt(r['rest_ack_ms']['p50'], 2)} "
            f"| {_fmt((r.get('db_insert_ms') or {}).get('p50'), 2)} "
            f"| {_fmt(r['acked_to_received_ms']['p50'], 1)} / "
            f"{_fmt(r['acked_to_received_ms']['p99'], 1)} | {r['cpu']['cores']['server']:.2f} "
            f"| {sum(r['client_cores']):.2f}{' (saturated)' if r['client_saturated'] else ''} "
            f"| {r['cpu']['other_cores']:.2f} |")
    return "\n".join(lines) + "\n"


def _latency_lines(ax: Any, runs: list[dict[str, Any]]) -> None:
    default = runs[0].get("driver") if runs else None
    for n in sorted({r["subscribers"] for r in runs}):
        mine = [r for r in runs if r["subscribers"] == n and r.get("driver") == default]
        xs = [r["rate"] for r in mine]
        for key, style in (("p50", "o-"), ("p99", "s--")):
            ys = [r["sent_to_received_ms"][key] or float("nan") for r in mine]
            ax.plot(xs, ys, style, label=f"{n:,} subs {key}")
    for r in runs:
        if r.get("driver") != default:
            for key, marker in (("p50", "^"), ("p99", "v")):
                value = r["sent_to_received_ms"][key]
                if value:
                    ax.plot([r["rate"]], [value], marker, color="black", ms=5)
    ax.axhline(10, color="grey", lw=0.8, ls=":")
    ax.axhline(30, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("writes/s (REST)")
    ax.set_ylabel("request sent → received (ms)")
    ax.legend(fontsize=7)


def _latency_chart(runs: list[dict[str, Any]], path: Path) -> None:
    fig, (ax,) = _figure()
    _latency_lines(ax, runs)
    default = runs[0].get("driver") if runs else ""
    ax.set_title(f"realtime latency ({default}; ▲▼ other driver); targets 10 / 30 ms",
                 fontsize=10)
    _save(fig, path)


# ---------------------------------------------------------------------------
# Scenario: fanout


def default_driver() -> str:
    """The driver a realtime server uses unless told otherwise (``REALTIME_DRIVER``)."""
    from realtime.config import Settings

    default = Settings.model_fields["driver"].default
    return str(default) if default else "motor"


async def scenario_fanout(opts: Options) -> dict[str, Any]:
    """Delivered messages/s at N subscribers: realtime vs bare websockets.broadcast.

    Full runs also measure realtime with the other MongoDB driver (motor vs
    pymongo): how the feed reads the change stream changes the ceiling.
    """
    sizes = opts.sizes or ((20,) if opts.quick else (100, 500, 1000, 2000))
    messages = 2_000 if opts.quick else 300_000
    offered = 150_000  # messages/s offered to realtime: more than it can deliver
    driver = opts.server_env.get("REALTIME_DRIVER") or default_driver()
    other = "pymongo" if driver == "motor" else "motor"
    stack = Stack(opts)
    runs: list[dict[str, Any]] = []
    try:
        db = await stack.database()
        database = f"bench_{uuid.uuid4().hex[:8]}"
        servers = [("realtime", driver, await stack.realtime(db.uri, database))]
        if not opts.quick:
            servers.append((f"realtime-{other}", other, await stack.realtime(
                db.uri, database, {"REALTIME_DRIVER": other})))
        baseline = await stack.broadcast()
        for n in sizes:
            events = max(1, messages // n)
            sub_msg = orjson.dumps({"op": "subscribe", "sub": "s", "collection": ""}).decode()
            sample = spread(n, SAMPLED_CONNECTIONS)
            example: str | None = None
            measured: list[dict[str, Any]] = []
            for label, drv, server in servers:
                collection = f"fan{n}{drv}"
                sub = sub_msg.replace('"collection":""', f'"collection":"{collection}"')
                load = await Load(stack, f"ws://127.0.0.1:{_port(server)}/ws", [[sub]] * n,
                                  sample=sample).start()
                writer = DbWriter(db.uri, database, collection)
                try:
                    await writer.run(5, first_seq=0)
                    await load.wait(5 * n, 30)
                    example = example or (await load.report()).example
                    await load.reset()
                    window = CpuWindow({"server": [server.pid], "database": [db.pid or 0],
                                        "load": load.pids})
                    log = await writer.run(events, offered / n, first_seq=5,
                                           batch=max(10, 5_000 // n))
                    complete = await load.wait(events * n, 120, idle=10)
                    cpu = window.stop()
                    report = await load.report()
                finally:
                    await writer.close()
                    await load.stop()
                mine = _fanout_run(label, n, events, report, cpu, complete)
                mine["driver"] = drv
                mine["write_rate"] = round(log.rate(), 1)
                mine.update(latency_stats(report, log, events, len(sample)))
                runs.append(mine)
                measured.append(mine)
                opts.log(f"fanout {label:<17} {n:>5} subs: {mine['rate']:>9,.0f} msg/s "
                         f"({report.total}/{events * n}), server "
                         f"{mine['server_us_per_message']} µs/msg, client "
                         f"{mine['client_us_per_message']} µs/msg, {mine['frames_per_read']} "
                         f"frames/read; {_cpu_note(cpu)}")
            if example is None:
                raise BenchError("no example message from realtime")
            # the baseline: same payload shape and count, same load client
            sub = sub_msg.replace('"collection":""', '"collection":"baseline"')
            load = await Load(stack, f"ws://127.0.0.1:{_port(baseline)}/ws", [[sub]] * n,
                              sample=sample).start()
            try:
                await load.reset()
                window = CpuWindow({"server": [baseline.pid], "load": load.pids})
                done = await baseline.call({"cmd": "run", "events": events,
                                            "template": _template(example)}, 300)
                complete = await load.wait(events * n, 120, idle=10)
                cpu = window.stop()
                report = await load.report()
            finally:
                await load.stop()
            base = _fanout_run("broadcast", n, events, report, cpu, complete)
            base["congested_waits"] = done.get("congested_waits")
            runs.append(base)
            for mine in measured:
                mine["ratio_to_broadcast"] = (round(mine["rate"] / base["rate"], 3)
                                              if base["rate"] else 0.0)
            opts.log(f"fanout {'broadcast':<17} {n:>5} subs: {base['rate']:>9,.0f} msg/s "
                     f"({report.total}/{events * n}), server {base['server_us_per_message']} "
                     f"µs/msg, client {base['client_us_per_message']} µs/msg, "
                     f"{base['frames_per_read']} frames/read; ratios "
                     + ", ".join(f"{m['server']} {m['ratio_to_broadcast']:.2f}" for m in measured)
                     + f"; {_cpu_note(cpu)}")
        if opts.profile and not opts.quick:
            await _fanout_profile(opts, stack, db.uri, database, servers[0][2])
    finally:
        await stack.close()
    return finish_report(opts, "fanout", runs, _fanout_table, _fanout_chart,
                         offered_messages_per_s=offered, default_driver=driver)


def _template(example: str) -> str:
    """A realtime change message with its ``seq`` and ``t`` set to 0 (baseline template)."""
    import re

    text = re.sub(r'"seq":\d+', '"seq":0', example, count=1)
    return re.sub(r'"t":\d+', '"t":0', text, count=1)


def _fanout_run(server: str, n: int, events: int, report: LoadReport, cpu: dict[str, Any],
                complete: bool) -> dict[str, Any]:
    return {
        "server": server, "subscribers": n, "events": events, "expected": events * n,
        "delivered": report.total, "complete": complete and report.total == events * n,
        "rate": round(report.rate(), 1), "peak_rate_1s": round(report.peak_rate(), 1),
        "frames_per_read": round(report.total / report.reads, 2) if report.reads else None,
        "server_us_per_message": round(
            cpu["cores"]["server"] * cpu["seconds"] / max(report.total, 1) * 1e6, 2),
        "client_us_per_message": round(
            cpu["cores"]["load"] * cpu["seconds"] / max(report.total, 1) * 1e6, 2),
        "client_cores": report.cpu_cores, "client_saturated": report.saturated,
        "closes": report.closes, "cpu": cpu,
        "timeline": report.timeline, "timeline_step": report.timeline_step,
    }


async def _fanout_profile(opts: Options, stack: Stack, uri: str, database: str,
                          server: Child) -> None:
    """A py-spy profile of realtime fanning out to 500 subscribers at saturation."""
    n, events = 500, 1200
    collection = "fanprofile"
    sub = orjson.dumps({"op": "subscribe", "sub": "s", "collection": collection}).decode()
    load = await Load(stack, f"ws://127.0.0.1:{_port(server)}/ws", [[sub]] * n).start()
    writer = DbWriter(uri, database, collection)
    try:
        writing = asyncio.ensure_future(writer.run(events, 150_000 / n, batch=10))
        summary = await profile_server(server.pid, 5, opts.out, "fanout-500", opts.log)
        await writing
        await load.wait(events * n, 60, idle=10)
    finally:
        await writer.close()
        await load.stop()
    if summary:
        opts.log(f"profile: {summary}")


def _fanout_table(runs: list[dict[str, Any]]) -> str:
    lines = ["Delivered messages/s at the subscribers (all matching): realtime vs a bare "
             "`websockets.broadcast` server pushing the same payloads to the same load client. "
             "µs/msg = CPU time per delivered message (server; load client).", "",
             "| subscribers | server | msg/s | ÷ broadcast | server µs/msg | client µs/msg "
             "| frames/read | server cores | client cores | delivered / expected |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in sorted(runs, key=lambda r: (r["subscribers"], r["server"] == "broadcast")):
        label = f"realtime ({r['driver']})" if r.get("driver") else r["server"]
        ratio = r.get("ratio_to_broadcast")
        sat = " (saturated)" if r["client_saturated"] else ""
        lines.append(
            f"| {r['subscribers']:,} | {label} | {r['rate']:,.0f} "
            f"| {'' if ratio is None else f'{ratio:.2f}'} | {r['server_us_per_message']:.1f} "
            f"| {r['client_us_per_message']:.1f} | {r['frames_per_read'] or 0:.1f} "
            f"| {r['cpu']['cores']['server']:.2f} | {sum(r['client_cores']):.2f}{sat} "
            f"| {r['delivered']:,} / {r['expected']:,} |")
    return "\n".join(lines) + "\n"


def _fanout_series(runs: list[dict[str, Any]]) -> list[str]:
    names = [r["server"] for r in runs]
    return sorted(set(names), key=lambda name: (name == "broadcast", name))


def _fanout_bars(ax: Any, runs: list[dict[str, Any]]) -> None:
    sizes = sorted({r["subscribers"] for r in runs})
    series = _fanout_series(runs)
    width = 0.8 / len(series)
    colors = {"realtime": "tab:blue", "broadcast": "tab:grey"}
    for k, server in enumerate(series):
        ys = [next((r["rate"] for r in runs
                    if r["subscribers"] == n and r["server"] == server), 0) / 1000
              for n in sizes]
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(sizes))]
        driver = next((r.get("driver") for r in runs if r["server"] == server), None)
        label = ("bare websockets.broadcast" if server == "broadcast"
                 else f"realtime ({driver})")
        bars = ax.bar(xs, ys, width, label=label, color=colors.get(server, "tab:cyan"))
        ax.bar_label(bars, fmt="%.0fk", fontsize=7)
    ax.set_xticks(range(len(sizes)), [f"{n:,}" for n in sizes])
    ax.set_xlabel("subscribers")
    ax.set_ylabel("delivered messages/s (thousands)")
    ax.legend(fontsize=8)


def _fanout_chart(runs: list[dict[str, Any]], path: Path) -> None:
    fig, (ax,) = _figure()
    _fanout_bars(ax, runs)
    ax.set_title("fan-out throughput, same load client, same run")
    _save(fig, path)


# ---------------------------------------------------------------------------
# Scenario: filters

KEY_SPACE = 100_000


def range_filter(i: int, n: int, selectivity: float) -> dict[str, Any]:
    """Subscriber ``i`` of ``n``: a distinct range on ``k`` matching ``selectivity`` of keys."""
    width = max(1, round(selectivity * KEY_SPACE))
    lo = i * (KEY_SPACE - width) // max(1, n - 1) if n > 1 else 0
    return {"k": {"$gte": lo, "$lt": lo + width}}


def _key_of(keys: list[int]) -> Callable[[int], dict[str, Any]]:
    """The extra fields of document ``seq``: its key ``k``."""
    return lambda seq: {"k": keys[seq]}


def matching_cost(n: int, selectivity: float, events: int = 2000) -> dict[str, float]:
    """The hub's cost per event with ``n`` range-filtered subscriptions (in process, µs).

    ``match``: deciding every subscription; ``publish``: the whole fan-out, with
    connections whose send does nothing (so no I/O is counted).
    """
    from realtime.events import normalise
    from realtime.hub import Connection, Hub, Subscription

    hub = Hub(ring_size=events + 1)
    subs = []
    for i in range(n):

        async def send_async(message: str) -> None:
            return None

        writable = asyncio.Event()
        writable.set()
        conn = Connection(send_async=send_async, close=lambda code, reason: None,
                          max_backlog=1 << 30, send_now=lambda message: None,
                          writable=writable)
        sub = Subscription(conn, "s", "bench", range_filter(i, n, selectivity))
        hub.add(sub)
        subs.append(sub)
    rng = random.Random(7)  # noqa: S311 - benchmark data, not secrets
    evs = []
    for seq in range(events):
        doc = {"_id": f"d{seq}", "seq": seq, "t": 0, "k": rng.randrange(KEY_SPACE), "pad": PAD}
        raw = {"_id": {"_data": f"{seq:032x}"}, "operationType": "insert",
               "ns": {"db": "bench", "coll": "bench"}, "documentKey": {"_id": doc["_id"]},
               "fullDocument": doc}
        ev = normalise(raw)
        if ev is not None:
            evs.append(ev)
    started = time.perf_counter()
    for ev in evs:
        for sub in subs:
            sub.decide(ev)
    match = (time.perf_counter() - started) / events * 1e6
    started = time.perf_counter()
    for ev in evs:
        hub.publish(ev)
    publish = (time.perf_counter() - started) / events * 1e6
    return {"match_us_per_event": round(match, 2), "publish_us_per_event": round(publish, 2),
            "match_ns_per_subscription": round(match * 1000 / n, 1)}


async def scenario_filters(opts: Options) -> dict[str, Any]:
    """1,000 subscribers with distinct filters: matching cost per event and throughput."""
    n = opts.sizes[0] if opts.sizes else (50 if opts.quick else 1000)
    events = 200 if opts.quick else 5000
    selectivities = (0.001, 0.01, 0.1)
    stack = Stack(opts)
    runs: list[dict[str, Any]] = []
    try:
        db = await stack.database()
        database = f"bench_{uuid.uuid4().hex[:8]}"
        server = await stack.realtime(db.uri, database)
        for selectivity in selectivities:
            collection = f"flt{round(selectivity * 1000)}"
            filters = [range_filter(i, n, selectivity) for i in range(n)]
            # One extra subscriber without a filter sees every event: its last
            # message marks the end of the run.
            subscribe = [[orjson.dumps({"op": "subscribe", "sub": "s", "collection": collection,
                                        "filter": f}).decode()] for f in filters]
            subscribe.append([orjson.dumps({"op": "subscribe", "sub": "all",
                                            "collection": collection}).decode()])
            rng = random.Random(round(selectivity * 1e6))  # noqa: S311 - benchmark data
            keys = [rng.randrange(KEY_SPACE) for _ in range(events)]
            expected_counts = [sum(1 for k in keys if f["k"]["$gte"] <= k < f["k"]["$lt"])
                               for f in filters] + [events]
            expected = sum(expected_counts)
            load = await Load(stack, f"ws://127.0.0.1:{_port(server)}/ws", subscribe,
                              sample=[n]).start()
            writer = DbWriter(db.uri, database, collection)
            try:
                await load.reset()
                window = CpuWindow({"server": [server.pid], "database": [db.pid or 0],
                                    "load": load.pids})
                log = await writer.run(events, None, batch=100, extra=_key_of(keys))
                complete = await load.wait(expected, 120, idle=10)
                cpu = window.stop()
                report = await load.report()
            finally:
                await writer.close()
                await load.stop()
            span = (report.last_ns - log.started_ns) / 1e9
            cost = await asyncio.to_thread(matching_cost, n, selectivity)
            wrong = sum(1 for got, want in zip(report.counts, expected_counts, strict=False)
                        if got != want)
            run = {
                "subscribers": n, "selectivity": selectivity, "events": events,
                "expected": expected, "delivered": report.total,
                "complete": complete and report.total == expected and wrong == 0,
                "connections_with_wrong_count": wrong,
                "matches_per_event": round((expected - events) / events, 2),
                "events_per_s": round(events / span, 1) if span > 0 else 0.0,
                "deliveries_per_s": round(report.total / span, 1) if span > 0 else 0.0,
                "insert_rate": round(log.rate(), 1),
                "server_cpu_us_per_event": round(
                    cpu["cores"]["server"] * cpu["seconds"] / events * 1e6, 1),
                "client_cores": report.cpu_cores, "client_saturated": report.saturated,
                "cpu": cpu, **cost,
            }
            runs.append(run)
            opts.log(f"filters {selectivity:>6.1%}: match {cost['match_us_per_event']} µs/event,"
                     f" {run['events_per_s']:,.0f} events/s, {run['deliveries_per_s']:,.0f} "
                     f"deliveries/s, delivered {report.total}/{expected}; {_cpu_note(cpu)}")
    finally:
        await stack.close()
    return finish_report(opts, "filters", runs, _filters_table, _filters_chart)


def _filters_table(runs: list[dict[str, Any]]) -> str:
    lines = ["Distinct range filters `{\"k\": {\"$gte\": a, \"$lt\": b}}`, one per subscriber "
             "(plus one unfiltered subscriber that marks the end). Matching cost measured in "
             "process on the hub; events/s end to end (database inserts as fast as it takes "
             "them, through one change stream).", "",
             "| subscribers | selectivity | matches/event | match µs/event | ns/subscription "
             "| publish µs/event | events/s | deliveries/s | server CPU µs/event "
             "| delivered / expected |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        lines.append(
            f"| {r['subscribers']:,} | {r['selectivity']:.1%} | {r['matches_per_event']:.1f} "
            f"| {r['match_us_per_event']:.0f} | {r['match_ns_per_subscription']:.0f} "
            f"| {r['publish_us_per_event']:.0f} | {r['events_per_s']:,.0f} "
            f"| {r['deliveries_per_s']:,.0f} | {r['server_cpu_us_per_event']:,.0f} "
            f"| {r['delivered']:,} / {r['expected']:,} |")
    return "\n".join(lines) + "\n"


def _filters_chart(runs: list[dict[str, Any]], path: Path) -> None:
    fig, (ax1, ax2) = _figure(2, 5.2)
    labels = [f"{r['selectivity']:.1%}" for r in runs]
    ax1.bar(labels, [r["match_us_per_event"] for r in runs], color="tab:blue", label="match")
    ax1.bar(labels, [r["publish_us_per_event"] - r["match_us_per_event"] for r in runs],
            bottom=[r["match_us_per_event"] for r in runs], color="tab:orange",
            label="render + send (no I/O)")
    ax1.set_ylabel("µs per event (in process)")
    ax1.set_xlabel("selectivity")
    ax1.set_title(f"hub cost per event, {runs[0]['subscribers']:,} filters" if runs else "")
    ax1.legend(fontsize=8)
    ax2.bar(labels, [r["events_per_s"] for r in runs], color="tab:green")
    ax2.set_ylabel("events/s end to end")
    ax2.set_xlabel("selectivity")
    ax2.set_title("throughput")
    _save(fig, path)


# ---------------------------------------------------------------------------
# Scenario: idle


async def scenario_idle(opts: Options) -> dict[str, Any]:
    """Idle subscribers: RSS per connection, subscribe time, heartbeat CPU at rest."""
    sizes = opts.sizes or ((200,) if opts.quick else (1000, 5000, 10000))
    heartbeat = 0.5 if opts.quick else 5.0
    rest = 1.0 if opts.quick else 10.0
    limit = raise_fd_limit()
    runs: list[dict[str, Any]] = []
    stack = Stack(opts)
    try:
        db = await stack.database()
        for n in sizes:
            if n + 200 > limit:
                opts.log(f"idle {n}: skipped, the open-file limit is {limit}")
                continue
            database = f"bench_{uuid.uuid4().hex[:8]}"
            server = await stack.realtime(db.uri, database,
                                          {"REALTIME_HEARTBEAT_SECONDS": str(heartbeat)})
            url = f"ws://127.0.0.1:{_port(server)}/ws"
            sub = orjson.dumps({"op": "subscribe", "sub": "s", "collection": "idle"}).decode()
            if not opts.quick:  # import and allocate what the first connections need
                warm = await Load(stack, url, [[sub]] * 10, processes=1).start()
                await warm.stop()
                await asyncio.sleep(0.5)
            rss_before = proc_rss(server.pid)
            load = await Load(stack, url, [[sub]] * n).start()
            rss_after = proc_rss(server.pid)
            window = CpuWindow({"server": [server.pid], "load": load.pids})
            await asyncio.sleep(rest)
            cpu = window.stop()
            report = await load.report(samples=False)
            writer = DbWriter(db.uri, database, "idle")
            try:
                await load.reset()
                await writer.run(1)
                delivered = await load.wait(n, 60)
            finally:
                await writer.close()
            await load.stop()
            server_cores = cpu["cores"]["server"]
            run = {
                "subscribers": n, "rss_before_mib": round(rss_before / 2**20, 1),
                "rss_after_mib": round(rss_after / 2**20, 1),
                "rss_per_connection_kb": round((rss_after - rss_before) / n / 1000, 1),
                "subscribe_seconds": round(load.connect_seconds, 2),
                "subscribes_per_s": round(n / load.connect_seconds, 1),
                "heartbeat_seconds": heartbeat, "rest_seconds": rest,
                "rest_server_cores": server_cores,
                "heartbeat_us_per_connection": round(
                    server_cores * heartbeat / n * 1e6, 2),
                "closes": report.closes, "one_event_delivered_to_all": delivered,
                "complete": delivered, "cpu": cpu,
            }
            runs.append(run)
            opts.log(f"idle {n:>6}: {run['rss_per_connection_kb']} KB/connection, subscribed in"
                     f" {run['subscribe_seconds']} s, at rest {server_cores:.3f} cores "
                     f"(heartbeat {heartbeat:g} s); {_cpu_note(cpu)}")
            await server.stop()
    finally:
        await stack.close()
    return finish_report(opts, "idle", runs, _idle_table, _idle_chart)


def _idle_table(runs: list[dict[str, Any]]) -> str:
    lines = ["Idle subscribers, one subscription each, on one realtime process. RSS per "
             "connection = (RSS after - RSS before) ÷ N; heartbeat CPU measured at rest over "
             "two or more heartbeat intervals.", "",
             "| subscribers | RSS before MiB | RSS after MiB | KB/connection | subscribe s "
             "| subscribes/s | heartbeat s | server cores at rest | µs/connection/heartbeat |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(
            f"| {r['subscribers']:,} | {r['rss_before_mib']:.1f} | {r['rss_after_mib']:.1f} "
            f"| {r['rss_per_connection_kb']:.1f} | {r['subscribe_seconds']:.2f} "
            f"| {r['subscribes_per_s']:,.0f} | {r['heartbeat_seconds']:g} "
            f"| {r['rest_server_cores']:.3f} | {r['heartbeat_us_per_connection']:.1f} |")
    return "\n".join(lines) + "\n"


def _idle_chart(runs: list[dict[str, Any]], path: Path) -> None:
    fig, (ax1, ax2) = _figure(2, 5.2)
    labels = [f"{r['subscribers']:,}" for r in runs]
    ax1.bar(labels, [r["rss_per_connection_kb"] for r in runs], color="tab:blue")
    ax1.axhline(25, color="grey", lw=0.8, ls=":", label="target 25 KB")
    ax1.set_ylabel("RSS per connection (KB)")
    ax1.set_xlabel("idle subscribers")
    ax1.legend(fontsize=8)
    ax2.bar(labels, [r["subscribe_seconds"] for r in runs], color="tab:green")
    ax2.set_ylabel("connect + subscribe all (s)")
    ax2.set_xlabel("idle subscribers")
    _save(fig, path)


# ---------------------------------------------------------------------------
# Scenario: naive


async def scenario_naive(opts: Options) -> dict[str, Any]:
    """realtime vs one change stream per WebSocket: throughput and p99 at 10/100/500 subs."""
    sizes = opts.sizes or ((5,) if opts.quick else (10, 100, 500))
    paced_rate = 100
    paced_seconds = 1.0 if opts.quick else 3.0
    burst_messages = 500 if opts.quick else 200_000
    deadline = 30.0 if opts.quick else NAIVE_DEADLINE
    stack = Stack(opts)
    runs: list[dict[str, Any]] = []
    try:
        db = await stack.database()
        database = f"bench_{uuid.uuid4().hex[:8]}"
        realtime_server = await stack.realtime(db.uri, database)
        naive_server = await stack.naive(db.uri, database)
        for n in sizes:
            for kind, server in (("realtime", realtime_server), ("naive", naive_server)):
                collection = f"nv{kind[0]}{n}"
                sub = orjson.dumps({"op": "subscribe", "sub": "s",
                                    "collection": collection}).decode()
                sample = spread(n, SAMPLED_CONNECTIONS)
                load = await Load(stack, f"ws://127.0.0.1:{_port(server)}/ws", [[sub]] * n,
                                  sample=sample).start()
                writer = DbWriter(db.uri, database, collection)
                try:
                    # paced: 100 writes/s (latency)
                    await load.reset()
                    count = max(1, round(paced_rate * paced_seconds))
                    window = CpuWindow({"server": [server.pid], "database": [db.pid or 0],
                                        "load": load.pids})
                    log = await writer.run(count, paced_rate, batch=10)
                    paced_complete = await load.wait(count * n, deadline, idle=deadline)
                    paced_cpu = window.stop()
                    paced = await load.report()
                    stats = latency_stats(paced, log, count, len(sample))
                    if not paced_complete:  # let the rest arrive before the burst
                        await load.wait(count * n, deadline, idle=5)
                    # burst: as fast as the database takes the inserts (throughput)
                    events = max(1, min(2000, burst_messages // n))
                    await load.reset()
                    window = CpuWindow({"server": [server.pid], "database": [db.pid or 0],
                                        "load": load.pids})
                    log2 = await writer.run(events, None, batch=100, first_seq=count)
                    burst_complete = await load.wait(events * n, deadline, idle=deadline)
                    burst_cpu = window.stop()
                    burst = await load.report(samples=False)
                finally:
                    await writer.close()
                    await load.stop()
                end_ns = burst.last_ns if burst.last_ns else time.monotonic_ns()
                span = (end_ns - log2.started_ns) / 1e9
                run = {
                    "server": kind, "subscribers": n,
                    "paced_rate": paced_rate, "paced_writes": count,
                    "paced_expected": count * n, "paced_delivered": paced.total,
                    "paced_complete": paced_complete, "paced_cpu": paced_cpu,
                    **stats,
                    "burst_events": events, "burst_expected": events * n,
                    "burst_delivered": burst.total, "burst_complete": burst_complete,
                    "throughput": round(burst.total / span, 1) if span > 0 else 0.0,
                    "insert_rate": round(log2.rate(), 1), "burst_cpu": burst_cpu,
                    "client_cores": burst.cpu_cores, "client_saturated": burst.saturated,
                    "complete": paced_complete and burst_complete,
                }
                runs.append(run)
                lat = stats["sent_to_received_ms"]
                opts.log(f"naive-scenario {kind:>8} {n:>4} subs: {run['throughput']:>9,.0f} "
                         f"msg/s ({burst.total}/{events * n}), p50 {_fmt(lat['p50'], 2)} ms "
                         f"p99 {_fmt(lat['p99'], 2)} ms ({paced.total}/{count * n}); "
                         f"{_cpu_note(burst_cpu)}")
            rt = next(r for r in runs if r["server"] == "realtime" and r["subscribers"] == n)
            nv = next(r for r in runs if r["server"] == "naive" and r["subscribers"] == n)
            rt["throughput_ratio"] = (round(rt["throughput"] / nv["throughput"], 2)
                                      if nv["throughput"] else None)
            rp99 = rt["sent_to_received_ms"]["p99"]
            np99 = nv["sent_to_received_ms"]["p99"]
            rt["p99_ratio"] = round(np99 / rp99, 2) if rp99 and np99 else None
            # The naive p99 not received within the deadline: the ratio is at least this.
            rt["p99_ratio_at_least"] = (round(deadline * 1000 / rp99, 1)
                                        if rp99 and np99 is None else None)
    finally:
        await stack.close()
    return finish_report(opts, "naive", runs, _naive_table, _naive_chart)


def _p99_at_least(runs: list[dict[str, Any]]) -> None:
    """Fill ``p99_ratio_at_least`` where the naive p99 was not received (older results)."""
    for r in runs:
        if r["server"] != "realtime" or r.get("p99_ratio") is not None:
            continue
        nv = next((x for x in runs if x["server"] == "naive"
                   and x["subscribers"] == r["subscribers"]), None)
        rp99 = r["sent_to_received_ms"]["p99"]
        if nv is not None and nv["sent_to_received_ms"]["p99"] is None and rp99:
            r.setdefault("p99_ratio_at_least", round(NAIVE_DEADLINE * 1000 / rp99, 1))


def _naive_table(runs: list[dict[str, Any]]) -> str:
    lines = ["realtime (one change stream per process) vs the naive pattern (one change stream "
             "per WebSocket, `bench/naive_server.py`), same database, same writer, same load "
             "client. Throughput: a burst of inserts as fast as the database takes them, "
             "delivered messages ÷ (last delivery - first insert). Latency: 100 inserts/s, "
             "insert sent → received; — means the percentile was not received within the "
             "deadline.", "",
             "| subscribers | server | throughput msg/s | delivered / expected (burst) "
             "| p50 ms | p99 ms | delivered / expected (paced) | realtime ÷ naive throughput "
             "| naive p99 ÷ realtime p99 |",
             "|---:|---|---:|---|---:|---:|---|---:|---:|"]
    _p99_at_least(runs)
    for r in runs:
        lat = r["sent_to_received_ms"]
        tr = r.get("throughput_ratio")
        pr = r.get("p99_ratio")
        least = r.get("p99_ratio_at_least")
        lines.append(
            f"| {r['subscribers']:,} | {r['server']} | {r['throughput']:,.0f} "
            f"| {r['burst_delivered']:,} / {r['burst_expected']:,} | {_fmt(lat['p50'], 2)} "
            f"| {_fmt(lat['p99'], 2)} | {r['paced_delivered']:,} / {r['paced_expected']:,} "
            f"| {'' if tr is None else f'{tr:,.1f}x'} "
            f"| {f'{pr:,.1f}x' if pr is not None else (f'> {least:,.0f}x' if least else '')} |")
    return "\n".join(lines) + "\n"


def _naive_chart(runs: list[dict[str, Any]], path: Path) -> None:
    fig, (ax1, ax2) = _figure(2, 5.2)
    sizes = sorted({r["subscribers"] for r in runs})
    for kind, color in (("realtime", "tab:blue"), ("naive", "tab:red")):
        mine = [next(r for r in runs if r["subscribers"] == n and r["server"] == kind)
                for n in sizes]
        ax1.plot(sizes, [r["throughput"] for r in mine], "o-", color=color, label=kind)
        ax2.plot(sizes, [r["sent_to_received_ms"]["p99"] or float("nan") for r in mine],
                 "o-", color=color, label=kind)
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("subscribers")
        ax.legend(fontsize=8)
    ax1.set_ylabel("delivered messages/s (burst)")
    ax1.set_title("throughput")
    ax2.set_ylabel("p99 ms at 100 inserts/s")
    ax2.set_title("p99 latency")
    _save(fig, path)


# ---------------------------------------------------------------------------
# Summary and entry points


def summary_table(results: dict[str, dict[str, Any]]) -> str:
    """The headline figures of every scenario found, as a Markdown table."""
    rows: list[tuple[str, str, str]] = []
    lat = results.get("latency")
    if lat:
        for r in lat["runs"]:
            if r["rate"] == 100:
                s = r["sent_to_received_ms"]
                rows.append((f"latency, {r['subscribers']:,} subs x 100 writes/s "
                             f"({r.get('driver', '')})",
                             f"p50 {_fmt(s['p50'], 1)} ms, p99 {_fmt(s['p99'], 1)} ms",
                             "p50 ≤ 10 ms, p99 ≤ 30 ms (500 subs); p50 ≤ 5 ms (100 subs)"))
    fan = results.get("fanout")
    if fan:
        for r in fan["runs"]:
            if r["server"] != "broadcast":
                rows.append((f"fan-out, {r['subscribers']:,} subs ({r.get('driver', '')})",
                             f"{r['rate']:,.0f} msg/s = {r.get('ratio_to_broadcast', 0):.2f} x "
                             "bare websockets.broadcast", "≥ 0.80 x"))
    flt = results.get("filters")
    if flt:
        for r in flt["runs"]:
            rows.append((f"filters, {r['subscribers']:,} distinct, {r['selectivity']:.1%}",
                         f"hub {r['publish_us_per_event']:.0f} µs/event with the filter index "
                         f"(evaluating every filter: {r['match_us_per_event']:.0f} µs); "
                         f"{r['events_per_s']:,.0f} events/s end to end", "—"))
    idle = results.get("idle")
    if idle:
        for r in idle["runs"]:
            rows.append((f"idle, {r['subscribers']:,} subs",
                         f"{r['rss_per_connection_kb']:.1f} KB/connection", "≤ 25 KB"))
    naive = results.get("naive")
    if naive:
        _p99_at_least(naive["runs"])
        for r in naive["runs"]:
            if r["server"] == "realtime":
                pr, least = r.get("p99_ratio"), r.get("p99_ratio_at_least")
                p99 = (f"{pr:,.1f}x lower p99" if pr is not None else
                       f"p99 > {least:,.0f}x lower (naive p99 not received)" if least else
                       "p99 not comparable")
                rows.append((f"vs naive, {r['subscribers']:,} subs",
                             f"{r.get('throughput_ratio') or 0:,.1f}x throughput, {p99}",
                             "≥ 20x throughput, lower p99 (100 subs)"))
    lines = ["| benchmark | result | target (DESIGN.md §8) |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def write_summary(opts: Options) -> None:
    """``summary.md`` and ``summary.png`` from every ``<scenario>.json`` in the results."""
    results: dict[str, dict[str, Any]] = {}
    for name in SCENARIOS:
        path = opts.out / f"{name}.json"
        if path.exists():
            results[name] = orjson.loads(path.read_bytes())
    if not results:
        return
    m = next(iter(results.values()))["machine"]
    text = (f"# realtime benchmarks\n\n{m['when']} · {m['cores']} cores ({m['cpu']}), "
            f"{m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}\n\n"
            + summary_table(results))
    (opts.out / "summary.md").write_text(text)
    with contextlib.suppress(ImportError):
        _summary_chart(results, opts.out / "summary.png")


def _summary_chart(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    if "latency" in results:
        ax = axes[0][0]
        _latency_lines(ax, results["latency"]["runs"])
        ax.set_title("write → subscriber latency")
    if "fanout" in results:
        ax = axes[0][1]
        _fanout_bars(ax, results["fanout"]["runs"])
        ax.set_title("fan-out throughput")
    if "naive" in results:
        runs = results["naive"]["runs"]
        ax = axes[1][0]
        sizes = sorted({r["subscribers"] for r in runs})
        for kind in ("realtime", "naive"):
            ax.plot(sizes, [next(r["throughput"] for r in runs if r["subscribers"] == n
                                 and r["server"] == kind) for n in sizes], "o-", label=kind)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("subscribers")
        ax.set_ylabel("msg/s")
        ax.set_title("vs one change stream per WebSocket")
        ax.legend(fontsize=7)
    if "idle" in results:
        runs = results["idle"]["runs"]
        ax = axes[1][1]
        ax.bar([f"{r['subscribers']:,}" for r in runs],
               [r["rss_per_connection_kb"] for r in runs])
        ax.axhline(25, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("idle subscribers")
        ax.set_ylabel("KB RSS / connection")
        ax.set_title("memory per idle subscriber")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


_RUNNERS: dict[str, Callable[[Options], Awaitable[dict[str, Any]]]] = {
    "latency": scenario_latency,
    "fanout": scenario_fanout,
    "filters": scenario_filters,
    "idle": scenario_idle,
    "naive": scenario_naive,
}


async def run_scenario(name: str, opts: Options) -> dict[str, Any]:
    """Run one scenario; return its results (also written to ``opts.out``).

    Raises:
        ValueError: unknown scenario.
        BenchError: a process could not be started or a load client failed.
    """
    runner = _RUNNERS.get(name)
    if runner is None:
        raise ValueError(f"unknown scenario {name!r}; expected one of {', '.join(SCENARIOS)}")
    raise_fd_limit()
    return await runner(opts)


def _incomplete(data: dict[str, Any]) -> list[str]:
    return [f"{data['scenario']}: {r.get('server', 'realtime')} {r['subscribers']} subs"
            for r in data["runs"] if not r.get("complete", True)]


_RENDERERS: dict[str, tuple[Callable[[list[dict[str, Any]]], str],
                            Callable[[list[dict[str, Any]], Path], None]]] = {
    "latency": (_latency_table, _latency_chart),
    "fanout": (_fanout_table, _fanout_chart),
    "filters": (_filters_table, _filters_chart),
    "idle": (_idle_table, _idle_chart),
    "naive": (_naive_table, _naive_chart),
}


def _draw(chart: Callable[[list[dict[str, Any]], Path], None],
          runs: list[dict[str, Any]]) -> Callable[[Path], None]:
    return lambda path: chart(runs, path)


def rerender(opts: Options) -> int:
    """Rewrite every table, chart and the summary from the JSON files in ``opts.out``."""
    found = 0
    for name, (table, chart) in _RENDERERS.items():
        path = opts.out / f"{name}.json"
        if not path.exists():
            continue
        data = orjson.loads(path.read_bytes())
        runs = data["runs"]
        opts.quick = bool(data.get("quick"))
        write_report(opts, name, data, table(runs), _draw(chart, runs))
        found += 1
    write_summary(opts)
    opts.log(f"re-rendered {found} reports in {opts.out}")
    return 0 if found else 1


def run(scenario: str, opts: Options) -> int:
    """Run ``scenario`` (or ``all``; ``report`` only re-renders); return an exit status.

    In ``--quick`` mode the status is 1 when a run did not deliver everything it
    sent (the smoke test); full runs report shortfalls (the naive server falls
    behind by design) without failing.
    """
    if scenario == "report":
        return rerender(opts)
    names = list(SCENARIOS) if scenario == "all" else [scenario]
    for name in names:
        if name not in _RUNNERS:
            opts.log(f"unknown scenario {name!r}; expected all or one of {', '.join(SCENARIOS)}")
            return 2
    if scenario == "all" and not opts.quick:
        opts.profile = True
    started = time.monotonic()
    problems: list[str] = []

    async def main() -> None:
        for name in names:
            opts.log(f"== {name}{' (quick)' if opts.quick else ''}; load average "
                     f"{load_average()}")
            data = await run_scenario(name, opts)
            problems.extend(_incomplete(data))

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        asyncio.run(main())
    else:
        uvloop.run(main())
    write_summary(opts)
    opts.log(f"results in {opts.out} ({time.monotonic() - started:.0f} s)")
    if problems:
        opts.log("not everything sent was received: " + "; ".join(problems))
        return 1 if opts.quick else 0
    return 0

"""The harness every scenario shares: options, processes, load, writers, CPU windows.

- :class:`Options` and :func:`output_dir` (where results go);
- measuring with Linux's ``/proc``: CPU of processes and of the whole machine
  (:class:`CpuWindow`), RSS; :func:`percentiles`;
- processes: :class:`Child` (a subprocess, optionally driven by JSON lines) and
  :class:`Stack` (the database, realtime servers and the baselines of a
  scenario, stopped in reverse order);
- the load client driver :class:`Load` (``bench/loadclient.py`` processes);
- writers: :class:`RestWriter` (realtime's REST API), :class:`DbWriter`
  (straight into the database), :func:`insert_floor`;
- profiling with py-spy (:func:`profile_server`).

Everything targets 127.0.0.1 and is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from realtime.embedded import EmbeddedServer

__all__ = [
    "BENCH_DIR",
    "NODE_PEER",
    "PAD",
    "RESULTS",
    "SAMPLED_CONNECTIONS",
    "BenchError",
    "Child",
    "CpuBudget",
    "CpuWindow",
    "DbWriter",
    "Load",
    "LoadReport",
    "Options",
    "PacedInserter",
    "RestWriter",
    "Runs",
    "Stack",
    "WriteLog",
    "default_driver",
    "insert_floor",
    "insert_times",
    "install_node_peer",
    "latency_stats",
    "load_average",
    "ms",
    "other_driver",
    "output_dir",
    "percentiles",
    "proc_rss",
    "profile_server",
    "raise_fd_limit",
    "spread",
    "summarise_profile",
    "wait_ready",
]

#: This directory: the helpers run as subprocesses live here.
BENCH_DIR = Path(__file__).resolve().parent
#: Where full runs write by default (committed).
RESULTS = BENCH_DIR / "results"
#: Connections whose change frames are decoded for latency (spread over all).
SAMPLED_CONNECTIONS = 20
#: Sustained CPU (cores) above which a load process counts as saturated.
SATURATED = 0.9
#: Padding that brings a change message to ~300 bytes.
PAD = "x" * 64

#: A scenario's results: one dict per measured run.
Runs = list[dict[str, Any]]


class BenchError(RuntimeError):
    """A benchmark could not run (a process failed to start, a load client failed)."""


def output_dir(quick: bool, out: Path | None = None) -> Path:
    """Where a run writes: ``out`` if given, else a fresh temporary directory for a
    quick run (never the committed results), else ``bench/results/``."""
    if out is not None:
        return out
    if quick:
        return Path(tempfile.mkdtemp(prefix="bench-quick-"))
    return RESULTS


@dataclass(slots=True)
class Options:
    """How a run is made."""

    quick: bool = False
    #: Results directory; None: :func:`output_dir` chooses on first use (:meth:`results`).
    out: Path | None = None
    #: Record a py-spy profile of the realtime server (latency, fanout at 500 subscribers).
    profile: bool = False
    #: Load processes for large runs (None: 1 below 200 connections, else 2).
    clients: int | None = None
    #: Subscriber counts to run instead of the scenario's own (e.g. ``(500,)``).
    sizes: tuple[int, ...] | None = None
    #: Rounds of the drivers scenario (None: 1 quick, 3 full).
    rounds: int | None = None
    #: The part of the latency scenario to run: "peer", "rest" (None: both).
    part: str | None = None
    #: Environment for every realtime server (e.g. ``{"REALTIME_DRIVER": "pymongo"}``).
    server_env: dict[str, str] = field(default_factory=dict)
    log: Callable[[str], None] = field(default=lambda text: print(text, flush=True))

    def results(self) -> Path:
        """The results directory (chosen by :func:`output_dir` the first time)."""
        if self.out is None:
            self.out = output_dir(self.quick)
        return self.out

    def driver(self) -> str:
        """The MongoDB driver of this run's realtime servers (``server_env``, else the default)."""
        return self.server_env.get("REALTIME_DRIVER") or default_driver()


def default_driver() -> str:
    """The driver a realtime server uses unless told otherwise (``REALTIME_DRIVER``)."""
    from realtime.config import Settings

    default = Settings.model_fields["driver"].default
    return str(default) if default else "motor"


def other_driver(driver: str) -> str:
    """The MongoDB driver that is not ``driver``."""
    return "pymongo" if driver == "motor" else "motor"


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


def ms(ns_values: Iterable[int]) -> list[float]:
    """Nanoseconds as milliseconds."""
    return [v / 1e6 for v in ns_values]


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
                 log_dir: Path, reads_stdin: bool = True, stop_timeout: float = 10.0,
                 port: int = 0) -> None:
        self.name = name
        #: True if the child exits when its stdin closes (load clients, the baseline).
        self.reads_stdin = reads_stdin
        self.stop_timeout = stop_timeout
        self.args = args
        self.env = _child_env(env)
        self.log_path = log_dir / f"{name}.log"
        #: The port a server child listens on (0: not a server).
        self.port = port
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        """The process id (0 before start)."""
        return self.proc.pid if self.proc is not None else 0

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint of a server child."""
        return f"ws://127.0.0.1:{self.port}/ws"

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

    def tail(self) -> str:
        """The end of the child's log (stderr)."""
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
            raise BenchError(f"{self.name} exited ({code}): {self.tail()}")
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


async def _wait_port(child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if child.proc is not None and child.proc.returncode is not None:
            raise BenchError(f"{child.name} exited ({child.proc.returncode}): {child.tail()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", child.port)
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


async def wait_ready(child: Child, timeout: float = 60.0) -> None:
    """Wait until the realtime server ``child`` answers ``/readyz`` with 200.

    Raises:
        BenchError: it exited, or was not ready within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while await _http_get(child.port, "/readyz") != 200:
        if child.proc is not None and child.proc.returncode is not None:
            raise BenchError(f"{child.name} exited ({child.proc.returncode}): {child.tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"{child.name} was not ready in {timeout:.0f} s")
        await asyncio.sleep(0.05)


class CpuBudget:
    """Holds processes to ``cores`` of CPU time through a cgroup's CPU quota.

    cgroup v1 (``/sys/fs/cgroup/cpu``, ``cpu.cfs_quota_us``) or v2 (``cpu.max``);
    a short period (10 ms) so the quota throttles in small slices, not in 100 ms
    stalls that would count against a latency bound. :meth:`create` returns None
    where cgroups cannot be written (not root, read-only hierarchy).
    """

    PERIOD_US = 10_000

    def __init__(self, path: Path, v2: bool) -> None:
        self.path = path
        self._v2 = v2

    @classmethod
    def create(cls, name: str, cores: float) -> CpuBudget | None:
        """A new cgroup ``name`` holding ``cores`` (None when none can be made)."""
        quota = max(1000, round(cores * cls.PERIOD_US))
        v1 = Path("/sys/fs/cgroup/cpu")
        try:
            if (v1 / "cpu.cfs_quota_us").exists() or (v1 / "cgroup.procs").exists():
                path = v1 / name
                path.mkdir(exist_ok=True)
                (path / "cpu.cfs_period_us").write_text(str(cls.PERIOD_US))
                (path / "cpu.cfs_quota_us").write_text(str(quota))
                return cls(path, v2=False)
            v2 = Path("/sys/fs/cgroup")
            if (v2 / "cgroup.controllers").exists():
                path = v2 / name
                path.mkdir(exist_ok=True)
                (path / "cpu.max").write_text(f"{quota} {cls.PERIOD_US}")
                return cls(path, v2=True)
        except OSError:
            return None
        return None

    def add(self, pid: int) -> None:
        """Move process ``pid`` into the budget.

        Raises:
            OSError: the cgroup refused it.
        """
        (self.path / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        """Delete the cgroup (once its processes have exited)."""
        with contextlib.suppress(OSError):
            self.path.rmdir()


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

    async def database(self) -> EmbeddedServer:
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
                      stop_timeout=10.0, port=port)
        await child.start()
        self.on_stop(child.stop)
        await wait_ready(child)
        return child

    async def naive(self, uri: str, database: str) -> Child:
        """Start ``bench/naive_server.py`` (one change stream per WebSocket)."""
        from realtime.embedded import free_port

        port = free_port()
        child = Child(f"naive-{port}", [sys.executable, str(BENCH_DIR / "naive_server.py"),
                                        str(port), uri, database], log_dir=self.dir,
                      reads_stdin=False, stop_timeout=2.0, port=port)
        await child.start()
        self.on_stop(child.stop)
        await _wait_port(child, 60)
        return child

    async def node_peer(self, uri: str, database: str) -> Child:
        """Start the Node.js peer (``bench/peers/node/server.js``), installed with ``npm ci``.

        Raises:
            BenchError: node or npm is missing, ``npm ci`` failed, or the peer did not start.
        """
        from realtime.embedded import free_port

        node = shutil.which("node")
        if node is None:
            raise BenchError("the Node.js peer needs node (and npm) on PATH")
        await install_node_peer()
        port = free_port()
        child = Child(f"node-{port}", [node, str(NODE_PEER / "server.js"), str(port), uri,
                                       database], log_dir=self.dir, port=port)
        await child.start()
        self.on_stop(child.stop)
        answer = await child.recv(60)
        if answer.get("event") != "listening":
            raise BenchError(f"the Node.js peer said {answer}")
        return child

    async def broadcast(self) -> Child:
        """Start ``bench/broadcast_server.py`` (the bare websockets.broadcast baseline)."""
        from realtime.embedded import free_port

        port = free_port()
        child = Child(f"broadcast-{port}", [sys.executable,
                                            str(BENCH_DIR / "broadcast_server.py"), str(port)],
                      log_dir=self.dir, port=port)
        await child.start()
        self.on_stop(child.stop)
        answer = await child.recv(30)
        if answer.get("event") != "listening":
            raise BenchError(f"broadcast server said {answer}")
        return child


#: The Node.js peer of the latency scenario (package.json, its lock file, server.js).
NODE_PEER = BENCH_DIR / "peers" / "node"


async def install_node_peer() -> None:
    """``npm ci`` the Node.js peer's dependencies unless the lock file's are installed.

    Raises:
        BenchError: npm is missing or ``npm ci`` failed.
    """
    lock = NODE_PEER / "package-lock.json"
    stamp = NODE_PEER / "node_modules" / ".installed"
    if stamp.exists() and stamp.read_bytes() == lock.read_bytes():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise BenchError("the Node.js peer needs npm on PATH (to run npm ci)")
    proc = await asyncio.create_subprocess_exec(
        npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error",
        cwd=NODE_PEER, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise BenchError("npm ci of the Node.js peer failed: "
                         + out.decode(errors="replace")[-500:])
    stamp.write_bytes(lock.read_bytes())


# ---------------------------------------------------------------------------
# The load client (bench/loadclient.py, one or more processes)


@dataclass(slots=True)
class LoadReport:
    """What the load processes saw since their last reset."""

    total: int
    #: Bytes of the change (or aggregate) frames' payloads.
    bytes: int
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
        script = str(BENCH_DIR / "loadclient.py")
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
            bytes=sum(int(a.get("bytes", 0)) for a in answers),
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

    def ack_ms(self) -> dict[str, float | None]:
        """Percentiles of write sent → acknowledged (ms)."""
        return percentiles(ms(self.acked[s] - self.sent[s] for s in self.acked))


def document(seq: int, t_ns: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The benchmark document: its sequence number, its send time, ~64 bytes of padding."""
    doc: dict[str, Any] = {"seq": seq, "t": t_ns}
    if extra:
        doc.update(extra)
    doc["pad"] = PAD
    return doc


class RestWriter:
    """POSTs documents to realtime's REST API (HTTP/1.1 keep-alive).

    A minimal client on asyncio streams, so the writer costs little CPU; up to
    ``connections`` requests are in flight. At a fixed rate a write is never
    sent before its scheduled time (open loop: a slow server does not slow the
    schedule down until every connection is busy); without one, as fast as the
    connections allow.
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

    async def run(self, count: int, rate: float | None, first_seq: int = 0,
                  extra: Callable[[int], dict[str, Any]] | None = None) -> WriteLog:
        """Write ``count`` documents at ``rate`` per second (None: flat out); return the log."""
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
            if rate is not None:
                delay = start + i / rate - time.monotonic()
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


class PacedInserter:
    """``insert_one`` straight into the database, each write at its scheduled time.

    The writer of the latency scenario's direct mode: every server under test
    gets the same inserts at the same pace, so only the fan-out differs. Open
    loop like :class:`RestWriter` (up to ``concurrency`` inserts in flight).
    """

    def __init__(self, uri: str, database: str, collection: str,
                 concurrency: int = 8) -> None:
        from realtime.config import Settings
        from realtime.db import Database

        self.db = Database(Settings(mongodb_uri=uri, database=database), uri)
        self.collection = self.db.collection(collection)
        self.concurrency = concurrency

    async def close(self) -> None:
        """Close the client."""
        await self.db.close()

    async def run(self, count: int, rate: float, first_seq: int = 0) -> WriteLog:
        """Insert ``count`` documents at ``rate`` per second; return the log."""
        log = WriteLog()
        free = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        log.started_ns = time.monotonic_ns()

        async def one(seq: int) -> None:
            t = time.monotonic_ns()
            log.sent[seq] = t
            try:
                await self.collection.insert_one(document(seq, t))
            except Exception:
                log.failures += 1
                return
            finally:
                free.release()
            log.acked[seq] = time.monotonic_ns()

        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                log.max_late_ms = max(log.max_late_ms, -delay * 1000)
            await free.acquire()
            task = asyncio.get_running_loop().create_task(one(first_seq + i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        log.finished_ns = time.monotonic_ns()
        return log


async def insert_times(uri: str, database: str, driver: str, rate: float,
                       count: int) -> list[float]:
    """Latencies (ms) of ``insert_one`` straight into the database, one at a time at ``rate``.

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
    return took


async def insert_floor(uri: str, database: str, driver: str, rate: float,
                       count: int) -> dict[str, float | None]:
    """Percentiles of :func:`insert_times`."""
    return percentiles(await insert_times(uri, database, driver, rate, count))


def latency_stats(report: LoadReport, log: WriteLog, expected_per_conn: int,
                  sampled: int) -> dict[str, Any]:
    """Latency percentiles (ms) of the sampled connections' messages.

    ``sent`` is the write's send time carried in the document (request sent →
    received); ``acked`` uses the writer's acknowledgement time instead (may be
    negative: the change can arrive before the HTTP response).
    """
    seqs = [s for s in report.samples if s[0] in log.sent]
    missing = max(0, expected_per_conn * sampled - len(seqs))
    sent = ms(recv - t for _, t, recv in seqs)
    acked = ms(recv - log.acked[seq] for seq, _, recv in seqs if seq in log.acked)
    return {"sent_to_received_ms": percentiles(sent, missing),
            "acked_to_received_ms": percentiles(acked, missing),
            "sampled_messages": len(seqs), "missing_sampled": missing}


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

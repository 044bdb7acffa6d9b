"""Start and stop the embedded MongoDB-compatible server (SecantusDB).

SecantusDB (GPL-2.0) runs only as a separate server process, started from its
``secantusd-py`` command; realtime never imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

__all__ = ["EmbeddedServer", "EmbeddedUnavailable", "find_executable", "free_port"]

log = logging.getLogger("realtime.embedded")

INSTALL_HINT = (
    "the embedded database (SecantusDB) is not installed: run "
    "`pip install 'realtime[embedded]'` (or `make run`), "
    "or set REALTIME_MONGODB_URI to a MongoDB replica set"
)


class EmbeddedUnavailable(RuntimeError):
    """The embedded server cannot be started (not installed, or it exited)."""


def find_executable() -> str:
    """Path of ``secantusd-py`` (beside this Python first, then on PATH).

    Raises:
        EmbeddedUnavailable: it is not installed.
    """
    beside = Path(sys.executable).parent / "secantusd-py"
    if beside.exists():
        return str(beside)
    found = shutil.which("secantusd-py")
    if found is None:
        raise EmbeddedUnavailable(INSTALL_HINT)
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM the child when the parent dies (no orphan database)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EmbeddedServer:
    """One SecantusDB server process on loopback.

    ``storage_path`` is a directory (data survives restarts) or ``":memory:"``.
    """

    def __init__(
        self,
        storage_path: str | Path = ":memory:",
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        sync_on_commit: bool = True,
        test_commands: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.storage_path = str(storage_path)
        self.host = host
        self.port = port or free_port(host)
        self.sync_on_commit = sync_on_commit
        self.test_commands = test_commands
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def uri(self) -> str:
        """A connection string for the running server."""
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    def spawn(self) -> None:
        """Start the process (does not wait for it to answer).

        Raises:
            EmbeddedUnavailable: the server is not installed.
        """
        exe = find_executable()
        args = [exe, "--host", self.host, "--port", str(self.port),
                "--storage-path", self.storage_path, "--log-level", "WARNING"]
        if self.sync_on_commit:
            args.append("--sync-on-commit")
        if self.test_commands:
            args.append("--enable-test-commands")
        args.extend(self.extra_args)
        self._close_log()
        if self.storage_path != ":memory:":
            path = Path(self.storage_path)
            path.mkdir(parents=True, exist_ok=True)
            self._log = open(path.parent / f"{path.name}.log", "ab")  # noqa: SIM115
        log.info("starting embedded database on %s:%d (%s)", self.host, self.port,
                 self.storage_path)
        self.process = subprocess.Popen(  # noqa: S603 - fixed executable, our own args
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log or subprocess.DEVNULL,
            stderr=self._log or subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            # Readiness is realtime's to announce (server.notify_ready), not a child's.
            env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"},
        )

    def _accepting(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            return sock.connect_ex((self.host, self.port)) == 0

    def _check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise EmbeddedUnavailable(f"embedded database exited (code {code}); "
                                      f"see {self.storage_path}.log")

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Block until the server accepts connections.

        Raises:
            EmbeddedUnavailable: it exited or did not answer within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while not self._accepting():
            self._check_alive()
            if time.monotonic() > deadline:
                raise EmbeddedUnavailable(f"embedded database did not start in {timeout} s")
            time.sleep(0.02)

    async def wait_ready_async(self, within: float = 20.0) -> None:
        """Like :meth:`wait_ready`, without blocking the event loop."""
        timeout = within
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(self._accepting):
            self._check_alive()
            if time.monotonic() > deadline:
                raise EmbeddedUnavailable(f"embedded database did not start in {timeout} s")
            await asyncio.sleep(0.02)

    def start(self, timeout: float = 20.0) -> str:
        """Spawn and wait; return the URI."""
        self.spawn()
        self.wait_ready(timeout)
        return self.uri

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL the server (a crash, for fault tests) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_log()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded database did not stop in %.1f s; killing it", timeout)
                proc.kill()
                proc.wait()
        self._close_log()

    @property
    def pid(self) -> int | None:
        """The process id while running."""
        return None if self.process is None else self.process.pid

    def __repr__(self) -> str:
        return f"EmbeddedServer({self.storage_path!r}, port={self.port}, pid={self.pid})"



"""Start, supervise and stop the embedded MongoDB-compatible server (SecantusDB).

SecantusDB (GPL-2.0) runs only as a separate server process, started from its
``secantusd-py`` command; realtime never imports it.

A realtime server that starts it holds :class:`DataDirLock` on the data
directory for its life (a second server on the same directory fails at once,
in one line), and runs :meth:`EmbeddedServer.supervise`, which awaits the
process's exit (a pidfd, no polling) and restarts it on the same port and
directory, with backoff, unless :meth:`EmbeddedServer.stop` or
:meth:`EmbeddedServer.kill` ended it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from realtime.backoff import Backoff

__all__ = ["DataDirInUse", "DataDirLock", "EmbeddedServer", "EmbeddedUnavailable",
           "find_executable", "free_port", "last_meaningful_line"]

log = logging.getLogger("realtime.embedded")

INSTALL_HINT = (
    "the embedded database (SecantusDB) is not installed: run "
    "`pip install 'realtime-mongo[embedded]'` (or `make run`), "
    "or set REALTIME_MONGODB_URI to a MongoDB replica set"
)


class EmbeddedUnavailable(RuntimeError):
    """The embedded server cannot be started (not installed, or it exited)."""


class DataDirInUse(EmbeddedUnavailable):
    """Another process (another realtime server) holds the data directory's lock.

    ``pid`` is the holder's process id, when its lock file says.
    """

    def __init__(self, directory: str | Path, pid: int | None) -> None:
        who = "another realtime server" + (f" (pid {pid})" if pid is not None else "")
        super().__init__(f"the data directory {directory} is in use by {who}; stop it or "
                         "choose another with --data-dir (REALTIME_DATA_DIR)")
        self.directory = str(directory)
        self.pid = pid


class DataDirLock:
    """An exclusive lock on a data directory, for as long as one realtime server uses it.

    ``<directory>/realtime.lock`` is locked with ``flock(2)`` and holds the
    owner's pid; the kernel releases the lock when the owner exits, however it
    exits, so a stale file never blocks anyone.
    """

    FILENAME = "realtime.lock"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / self.FILENAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock (creating the directory), or fail at once.

        Raises:
            DataDirInUse: another process holds it.
            EmbeddedUnavailable: the directory or its lock file cannot be created.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise EmbeddedUnavailable(f"cannot use the data directory {self.directory}: "
                                      f"{exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise DataDirInUse(self.directory, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Let the lock go (the file stays: removing it would race with the next owner)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def last_meaningful_line(text: str, limit: int = 300) -> str | None:
    """The last line of a log that says something: not blank, not a traceback's frames.

    A Python traceback ends with the exception's line (``module.Error: message``),
    which is kept; its ``Traceback ...`` header, indented frame and code lines and
    ``^^^`` markers are skipped. None if nothing is left. At most ``limit`` characters.
    """
    for raw in reversed(text.splitlines()):
        line = raw.rstrip()
        if not line.strip() or line[0].isspace() or line.startswith("Traceback ("):
            continue
        if set(line.strip()) <= set("^~"):
            continue
        if line.startswith(("During handling of the above exception",
                            "The above exception was the direct cause")):
            continue
        return line if len(line) <= limit else line[:limit - 1] + "…"
    return None


def _exit_words(code: int | None) -> str:
    """``exited with code 1``, ``was killed by SIGKILL``."""
    if code is None:
        return "exited"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


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
        #: Where this spawn's output starts in the log file.
        self._log_start = 0
        #: True once stop() or kill() was called (until the next spawn): a deliberate end.
        self._stopping = False
        #: Restarts by :meth:`supervise` after an unexpected exit.
        self.restarts = 0
        #: How the process last ended unexpectedly, in words (None if it never did).
        self.last_exit: str | None = None

    @property
    def uri(self) -> str:
        """A connection string for the running server."""
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    @property
    def log_path(self) -> Path | None:
        """The file the server's output goes to (None for ``:memory:``)."""
        if self.storage_path == ":memory:":
            return None
        path = Path(self.storage_path)
        return path.parent / f"{path.name}.log"

    def last_log_line(self) -> str | None:
        """The last meaningful line the current process wrote to its log, if any."""
        path = self.log_path
        if path is None:
            return None
        try:
            with open(path, "rb") as file:
                file.seek(max(self._log_start, file.seek(0, os.SEEK_END) - 65536))
                data = file.read()
        except OSError:
            return None
        return last_meaningful_line(data.decode(errors="replace"))

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
        self._stopping = False
        log_path = self.log_path
        if log_path is not None:
            Path(self.storage_path).mkdir(parents=True, exist_ok=True)
            self._log = open(log_path, "ab")  # noqa: SIM115
            self._log_start = os.fstat(self._log.fileno()).st_size
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

    def _said(self) -> str:
        """``: <the log's last meaningful line> (log: <path>)``, or what is known."""
        line = self.last_log_line()
        if line is not None:
            return f": {line} (log: {self.log_path})"
        if self.log_path is not None:
            return f" (its log, {self.log_path}, says nothing more)"
        return ""

    def _check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise EmbeddedUnavailable(f"the embedded database {_exit_words(code)} at start-up"
                                      f"{self._said()}")

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Block until the server accepts connections.

        Raises:
            EmbeddedUnavailable: it exited or did not answer within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while not self._accepting():
            self._check_alive()
            if time.monotonic() > deadline:
                raise EmbeddedUnavailable(f"the embedded database did not answer within "
                                          f"{timeout:g} s{self._said()}")
            time.sleep(0.02)

    async def wait_ready_async(self, within: float = 20.0) -> None:
        """Like :meth:`wait_ready`, without blocking the event loop."""
        timeout = within
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(self._accepting):
            self._check_alive()
            if time.monotonic() > deadline:
                raise EmbeddedUnavailable(f"the embedded database did not answer within "
                                          f"{timeout:g} s{self._said()}")
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
        """SIGKILL the server (a crash, for fault tests) and reap it; no restart follows."""
        self._stopping = True
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_log()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; no restart follows."""
        self._stopping = True
        self._end(timeout)

    def _end(self, timeout: float) -> None:
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

    @property
    def running(self) -> bool:
        """True while the process is not known to have exited (never reaps it)."""
        return self.process is not None and self.process.returncode is None

    async def wait_exit(self) -> int | None:
        """Wait until the process exits (a pidfd in the event loop, no polling).

        Returns its exit status (negative: the signal that killed it), or None
        if no process was started or someone else is reaping it right now.
        """
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is not None:
            return proc.returncode
        try:
            pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # not Linux 5.3+: a thread waits instead
            return await asyncio.to_thread(proc.wait)
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, readable)
        try:
            await exited
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        return proc.poll()

    async def supervise(self, *, on_exit: Callable[[str], None],
                        on_ready: Callable[[], None], backoff: Backoff | None = None,
                        ready_timeout: float = 30.0, stable_after: float = 60.0,
                        clock: Callable[[], float] = time.monotonic) -> None:
        """Restart the server each time it exits unexpectedly; run until cancelled.

        Awaits the process's exit; unless :meth:`stop` or :meth:`kill` ended it,
        calls ``on_exit(reason)`` (a sentence for people), then spawns it again
        on the same port and storage path, waiting ``backoff`` before each
        attempt, until one answers within ``ready_timeout``; then calls
        ``on_ready()``. The backoff starts over after a process ran for
        ``stable_after`` seconds (so a crash loop slows down). Cancelling leaves
        the current process running (:meth:`stop` it).
        """
        backoff = backoff or Backoff()
        while True:
            started = clock()
            code = await self.wait_exit()
            if self._stopping:
                return
            self.last_exit = f"the embedded database {_exit_words(code)}"
            line = self.last_log_line()
            log.error("%s (pid %s)%s; restarting it", self.last_exit, self.pid,
                      f"; its log's last line: {line}" if line else "")
            on_exit(f"{self.last_exit}; restarting it")
            if clock() - started >= stable_after:
                backoff.reset()
            while True:
                await asyncio.sleep(backoff.next_delay())
                try:
                    self.spawn()
                    await self.wait_ready_async(ready_timeout)
                except (EmbeddedUnavailable, OSError) as exc:
                    log.error("restarting the embedded database failed: %s", exc)
                    await asyncio.to_thread(self._end, 5.0)
                    continue
                break
            self.restarts += 1
            log.warning("embedded database restarted on %s:%d (pid %s, restart %d)",
                        self.host, self.port, self.pid, self.restarts)
            on_ready()

    def __repr__(self) -> str:
        return f"EmbeddedServer({self.storage_path!r}, port={self.port}, pid={self.pid})"



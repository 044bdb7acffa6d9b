"""realtime.embedded: the data-directory lock, start-up errors in one line, supervision.

Real processes throughout: SecantusDB servers in temporary directories, and
``realtime serve`` as a subprocess whose embedded database is killed with
SIGKILL under a live WebSocket subscriber.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from realtime.embedded import (
    DataDirInUse,
    DataDirLock,
    EmbeddedServer,
    free_port,
    last_meaningful_line,
)
from tests.helpers import ServerProcess, WSClient, ws_client

DOCS = "/api/collections/crash/documents"


# -- the lock ---------------------------------------------------------------------------
@pytest.mark.driver_blind
def test_a_data_dir_is_locked_by_one_owner_at_a_time(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path / "data")
    first.acquire()
    assert first.held
    assert (tmp_path / "data" / "realtime.lock").read_text() == f"{os.getpid()}\n"
    second = DataDirLock(tmp_path / "data")
    with pytest.raises(DataDirInUse) as info:
        second.acquire()
    assert info.value.pid == os.getpid()
    assert str(info.value) == (
        f"the data directory {tmp_path / 'data'} is in use by another realtime server "
        f"(pid {os.getpid()}); stop it or choose another with --data-dir (REALTIME_DATA_DIR)")
    first.release()
    second.acquire()  # free again; the file stays, harmless
    second.release()


@pytest.mark.driver_blind
def test_last_meaningful_line_skips_a_tracebacks_frames() -> None:
    log = (
        "[1:2][3:0x7], wiredtiger_open: [WT_VERB_DEFAULT][ERROR]: __conn_single, 1853: busy\n"
        "Traceback (most recent call last):\n"
        '  File "/x/secantus/storage.py", line 1857, in __init__\n'
        "    self._conn = wt.wiredtiger_open(home, config)\n"
        "                 ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        "_wiredtiger.WiredTigerError: Device or resource busy\n"
        "\n"
    )
    assert last_meaningful_line(log) == "_wiredtiger.WiredTigerError: Device or resource busy"
    assert last_meaningful_line(log.split("Traceback")[0]).endswith("__conn_single, 1853: busy")
    assert last_meaningful_line("\n  \n") is None
    assert last_meaningful_line("x" * 500, limit=10) == "x" * 9 + "…"


# -- supervision, in process ------------------------------------------------------------
@pytest.mark.driver_blind
async def test_supervisor_restarts_a_killed_database_and_not_a_stopped_one(
        tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "db", sync_on_commit=True)
    await asyncio.to_thread(server.start)
    exits: list[str] = []
    ready = asyncio.Event()
    supervisor = asyncio.create_task(server.supervise(on_exit=exits.append,
                                                      on_ready=ready.set))
    try:
        first = server.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)  # a crash, not ours
        await asyncio.wait_for(ready.wait(), 30)
        assert exits == ["the embedded database was killed by SIGKILL; restarting it"]
        assert server.restarts == 1
        assert server.running
        assert server.pid != first
        assert server.last_exit == "the embedded database was killed by SIGKILL"

        await asyncio.to_thread(server.stop)  # deliberate: the supervisor ends, no restart
        await asyncio.wait_for(supervisor, 10)
        assert exits == ["the embedded database was killed by SIGKILL; restarting it"]
        assert not server.running
    finally:
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)
        await asyncio.to_thread(server.stop)


# -- realtime serve, as a user runs it ----------------------------------------------------
def serve_env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REALTIME_MONGODB_URI"}
    env.update({"REALTIME_DATA_DIR": str(data), "REALTIME_EMBEDDED_SYNC_ON_COMMIT": "true",
                "REALTIME_RETRY_CAP_SECONDS": "1"})
    return env


@pytest.fixture
async def serving(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    """``realtime serve`` with its embedded database in a temporary data directory."""
    server = ServerProcess({}, cwd=tmp_path)
    server.env = {**serve_env(tmp_path / "data"), "REALTIME_PORT": str(server.port)}
    try:
        await server.start(60)
        yield server
    finally:
        server.kill()


class Inbox:
    """Every message a WebSocket client receives, read by a task; waits are on a condition."""

    def __init__(self, client: WSClient) -> None:
        self.messages: list[dict[str, Any]] = []
        self.changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read(client))

    async def _read(self, client: WSClient) -> None:
        async for raw in client.ws:
            self.messages.append(orjson.loads(raw))
            async with self.changed:
                self.changed.notify_all()

    async def wait(self, predicate: Any, timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout), self.changed:
                await self.changed.wait_for(lambda: predicate(self.messages))
        except TimeoutError:
            raise TimeoutError(f"{what} not seen in {timeout} s") from None

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def statuses(messages: list[dict[str, Any]]) -> list[str]:
    return [m["feed"] for m in messages if m["type"] == "status"]


def keys(messages: list[dict[str, Any]]) -> list[str]:
    return [m["key"] for m in messages if m["type"] == "change"]


@pytest.mark.timeout(180)
async def test_killed_embedded_database_is_restarted_and_nothing_is_lost(
        serving: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=serving.url, timeout=30) as http, \
            ws_client(serving.ws_url) as client:
        await client.subscribe("s", "crash")
        inbox = Inbox(client)
        try:
            acked: list[str] = []
            attempted: list[str] = []

            async def write(key: str) -> int:
                attempted.append(key)
                r = await http.post(DOCS, json={"_id": key})
                if r.status_code == 201:
                    acked.append(key)
                else:  # 503 while down; 409 if a retried insert had landed after all
                    assert r.status_code in (503, 409), r.text
                    assert "Error" not in r.json()["detail"], r.text
                return r.status_code

            for i in range(20):
                assert await write(f"a{i:03d}") == 201
            before = (await http.get("/readyz")).json()["checks"]["embedded"]
            assert before["status"] == "running"
            assert before["restarts"] == 0

            os.kill(before["pid"], signal.SIGKILL)
            await inbox.wait(lambda m: statuses(m)[-1:] in (["retrying"], ["down"]), 30,
                             "status retrying or down")
            # Write until writes succeed again, then a few more.
            n = 0
            while True:
                n += 1
                if await write(f"b{n:03d}") == 201 and len(acked) >= 25:
                    break
                assert n < 2000, "writes never succeeded again"
            await inbox.wait(lambda m: statuses(m)[-1:] == ["live"], 30, "status live again")
            for i in range(5):
                assert await write(f"c{i:03d}") == 201

            after = (await http.get("/readyz")).json()
            assert after["status"] == "ready"
            assert after["checks"]["embedded"]["restarts"] == 1
            assert after["checks"]["embedded"]["pid"] != before["pid"]
            assert after["checks"]["embedded"]["last_exit"] == \
                "the embedded database was killed by SIGKILL"

            # One change stream, commit order: once the last write arrived, all did.
            await inbox.wait(lambda m: acked[-1] in keys(m), 30, "the last write")
            got = keys(inbox.messages)
            assert len(got) == len(set(got)), "a change was delivered twice"
            assert set(acked) <= set(got), f"lost: {sorted(set(acked) - set(got))}"
            assert set(got) <= set(attempted)
            seen = statuses(inbox.messages)
            assert seen[-1] == "live"
            assert seen[:-1], seen
            assert set(seen[:-1]) <= {"retrying", "down"}, seen
        finally:
            await inbox.close()
    assert await asyncio.to_thread(serving.terminate, 15) == 0


def run_serve(cwd: Path, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "realtime", "serve", "--port", str(free_port()), *args],
        env=serve_env(data), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=60, check=False)


@pytest.mark.driver_blind
@pytest.mark.timeout(120)
async def test_a_second_server_on_a_data_dir_in_use_fails_in_one_line(
        serving: ServerProcess, tmp_path: Path) -> None:
    assert serving.proc is not None
    result = await asyncio.to_thread(run_serve, tmp_path, tmp_path / "data")
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"realtime: the data directory {tmp_path / 'data'} is in use by another realtime "
        f"server (pid {serving.proc.pid}); stop it or choose another with --data-dir "
        "(REALTIME_DATA_DIR)"]
    async with httpx.AsyncClient(base_url=serving.url) as http:  # the first one is unharmed
        assert (await http.get("/readyz")).status_code == 200


@pytest.mark.driver_blind
@pytest.mark.timeout(120)
async def test_an_embedded_database_that_cannot_start_names_its_last_log_line(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "WiredTiger").write_text("junk\n")  # a corrupt database
    (data / "WiredTiger.turtle").write_text("garbage\n")
    result = await asyncio.to_thread(run_serve, tmp_path, data, "--log-level", "warning")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("realtime: the embedded database exited with code 1 at "
                               "start-up: "), lines
    assert "database corruption detected" in lines[0]
    assert lines[0].endswith(f"(log: {tmp_path / 'data.log'})")


@pytest.mark.driver_blind
@pytest.mark.timeout(120)
async def test_realtime_db_on_a_data_dir_in_use_fails_in_one_line(
        serving: ServerProcess, tmp_path: Path) -> None:
    assert serving.proc is not None
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "realtime", "db", "--port", str(free_port()),
         "--data-dir", str(tmp_path / "data")],
        env=serve_env(tmp_path / "data"), cwd=tmp_path, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"realtime: the data directory {tmp_path / 'data'} is in use by another realtime "
        f"server (pid {serving.proc.pid}); stop it or choose another with --data-dir "
        "(REALTIME_DATA_DIR)"]

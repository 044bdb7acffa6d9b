"""`make run` and `realtime serve` as a user runs them: real processes, real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from realtime.embedded import free_port
from tests.helpers import Readiness, ServerProcess, ws_client

pytestmark = pytest.mark.driver_blind

ROOT = Path(__file__).resolve().parent.parent


def processes_using(marker: str) -> list[int]:
    """Pids whose command line mentions ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(entry.name))
    return pids


async def gone(marker: str, timeout: float) -> None:
    """Wait until every process whose command line mentions ``marker`` has exited."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        for pid in processes_using(marker):
            try:
                exited = os.pidfd_open(pid)  # readable once the process has exited
            except ProcessLookupError:
                continue
            done = loop.create_future()
            loop.add_reader(exited, lambda f=done: f.done() or f.set_result(None))
            try:
                await done
            finally:
                loop.remove_reader(exited)
                os.close(exited)


async def test_make_run_serves_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "make-run-data"
    readiness = Readiness()
    env = {**os.environ, "REALTIME_PORT": str(port), "REALTIME_DATA_DIR": str(data),
           "NOTIFY_SOCKET": readiness.path}
    env.pop("REALTIME_MONGODB_URI", None)
    proc = subprocess.Popen(["make", "--no-print-directory", "run"], cwd=ROOT, env=env,
                            start_new_session=True, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            try:  # (make run installs the package first on a fresh checkout)
                await asyncio.to_thread(readiness.wait, proc, 120)
            finally:
                readiness.close()
            assert (await http.get("/readyz")).status_code == 200
            assert processes_using(str(data)), "embedded database not running"
            r = await http.post("/api/collections/notes/documents", json={"_id": "n1", "t": "hi"})
            assert r.status_code == 201, r.text
            r = await http.get("/api/collections/notes/documents/n1")
            assert r.json()["t"] == "hi"
            async with ws_client(f"ws://127.0.0.1:{port}/ws") as c:
                await c.subscribe("s", "notes")
                os.killpg(proc.pid, signal.SIGTERM)  # what a terminal's Ctrl-C/kill does
                await asyncio.wait_for(c.ws.wait_closed(), 10)
                assert c.ws.close_code == 1001
        await asyncio.wait_for(asyncio.to_thread(proc.wait), 15)
        await gone(str(data), 10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    # data survives a restart on the same directory
    server = ServerProcess({"REALTIME_DATA_DIR": str(data)})
    server.env.pop("REALTIME_MONGODB_URI", None)
    try:
        await server.start(60)
        async with httpx.AsyncClient(base_url=server.url) as http:
            r = await http.get("/api/collections/notes/documents/n1")
            assert r.status_code == 200
            assert r.json()["t"] == "hi"
        assert await asyncio.to_thread(server.terminate, 15) == 0
        await gone(str(data), 10)
    finally:
        server.kill()


async def test_serve_without_embedded_or_uri_says_what_to_do(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REALTIME_MONGODB_URI"}
    env["PATH"] = "/usr/bin:/bin"
    # a Python whose environment lacks secantusd-py: simulate by pointing at a missing one
    code = (
        "import realtime.embedded as e, sys\n"
        "e.find_executable = lambda: (_ for _ in ()).throw(e.EmbeddedUnavailable(e.INSTALL_HINT))\n"
        "from realtime.cli import app\n"
        "sys.argv = ['realtime', 'serve', '--port', '0']\n"
        "app()\n"
    )
    result = await asyncio.to_thread(
        subprocess.run, [str(ROOT / ".venv/bin/python"), "-c", code], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "REALTIME_MONGODB_URI" in result.stderr
    assert "realtime-mongo[embedded]" in result.stderr

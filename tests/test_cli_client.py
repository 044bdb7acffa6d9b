"""The client commands (`realtime tail|get|put|ls`) as subprocesses against real servers."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from pymongo import AsyncMongoClient

from realtime.embedded import EmbeddedServer, free_port
from tests.helpers import LiveServer, ServerProcess

DOCS = "/api/collections/{}/documents"
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
ENV.pop("REALTIME_URL", None)
ENV.pop("REALTIME_TOKEN", None)


async def cli(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
              within: float = 30.0) -> tuple[int, str, str]:
    """Run ``python -m realtime ARGS``; return (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "realtime", *args, env={**ENV, **(env or {})},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), within)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Tail:
    """``realtime tail`` running as a subprocess, read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr: list[str] = []

    async def status(self, text: str, within: float = 15.0) -> str:
        """Wait for a stderr line containing ``text``."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(within):
            while True:
                raw = await self.proc.stderr.readline()
                if not raw:
                    raise AssertionError(f"tail exited; stderr: {''.join(self.stderr)}")
                line = raw.decode()
                self.stderr.append(line)
                if text in line:
                    return line

    async def line(self, within: float = 15.0) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), within)
        assert raw, f"tail exited; stderr: {''.join(self.stderr)}"
        return raw.decode()

    async def json(self, within: float = 15.0) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(await self.line(within))
        return value

    async def interrupt(self, sig: int = signal.SIGINT) -> tuple[int, str]:
        """Send ``sig``; return the exit code and the rest of stderr."""
        assert self.proc.stderr is not None
        self.proc.send_signal(sig)
        rest = await asyncio.wait_for(self.proc.stderr.read(), 15)
        code = await asyncio.wait_for(self.proc.wait(), 15)
        return code, "".join(self.stderr) + rest.decode()


async def start_tail(*args: str) -> Tail:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "realtime", "tail", *args, env=ENV,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    return Tail(proc)


async def stop(tail: Tail) -> None:
    if tail.proc.returncode is None:
        tail.proc.kill()
        await tail.proc.wait()


# ---------------------------------------------------------------------------
# put / get / ls


async def test_put_get_ls_round_trip(live: LiveServer) -> None:
    url = ("--url", live.url)
    code, out, err = await cli("put", "orders", '{"_id": "a", "n": 1}', *url)
    assert code == 0, err
    doc = orjson.loads(out)
    assert doc == {"_id": "a", "n": 1, "_version": 1}

    code, out, err = await cli("put", "orders", "a", '{"n": 2, "tag": "x"}', *url)
    assert code == 0, err
    assert orjson.loads(out) == {"_id": "a", "n": 2, "tag": "x", "_version": 2}

    code, out, err = await cli("put", "orders", "a", '{"tag": null, "m": 3}', "--merge", *url)
    assert code == 0, err
    assert orjson.loads(out) == {"_id": "a", "n": 2, "m": 3, "_version": 3}

    code, out, err = await cli("put", "orders", "-", *url, stdin=b'{"n": 7}')
    assert code == 0, err
    generated = orjson.loads(out)
    assert generated["n"] == 7
    assert len(generated["_id"]) == 24  # an ObjectId chosen by the server

    code, out, err = await cli("get", "orders", "a", *url)
    assert code == 0, err
    assert orjson.loads(out)["_version"] == 3

    code, out, err = await cli("get", "orders", "--filter", '{"n": {"$gte": 2}}',
                               "--sort", "-n", "--limit", "10", *url)
    assert code == 0, err
    assert [orjson.loads(line)["n"] for line in out.splitlines()] == [7, 2]

    code, out, err = await cli("put", "users", "u1", '{"name": "Ada"}', *url)
    assert code == 0, err
    code, out, err = await cli("ls", env={"REALTIME_URL": live.url})  # env instead of --url
    assert code == 0, err
    assert {"orders", "users"} <= set(out.split())


async def test_errors_print_the_problem_detail(live: LiveServer) -> None:
    url = ("--url", live.url)
    missing, bad_filter, bad_doc, not_json, unreachable = await asyncio.gather(
        cli("get", "orders", "missing", *url),
        cli("get", "orders", "--filter", '{"$where": "1"}', *url),
        cli("put", "orders", "a", '{"$bad": 1}', *url),
        cli("put", "orders", "{not json", *url),
        cli("ls", "--url", f"http://127.0.0.1:{free_port()}"),
    )
    code, out, err = missing
    assert (code, out) == (1, "")
    assert err.startswith("realtime: 404")
    code, _, err = bad_filter
    assert code == 1
    assert "400" in err
    assert "$where" in err
    code, _, err = bad_doc
    assert code == 1
    assert "422" in err
    code, _, err = not_json
    assert code == 2
    assert "not valid JSON" in err
    code, _, err = unreachable
    assert code == 1
    assert "cannot reach" in err
    for _, _, err in (missing, bad_filter, bad_doc, not_json, unreachable):
        assert "Traceback" not in err


# ---------------------------------------------------------------------------
# tail


async def test_tail_json_lines_and_clean_ctrl_c(live: LiveServer,
                                                http: httpx.AsyncClient) -> None:
    tail = await start_tail("orders", "--json", "--filter", '{"status": "open"}',
                            "--url", live.url)
    try:
        await tail.status("subscribed to orders")
        r = await http.post(DOCS.format("orders"), json={"_id": "a", "status": "open"})
        assert r.status_code == 201
        await http.post(DOCS.format("orders"), json={"_id": "b", "status": "closed"})
        await http.patch(f"{DOCS.format('orders')}/b", json={"status": "open"})
        await http.patch(f"{DOCS.format('orders')}/a", json={"status": "closed"})
        await http.delete(f"{DOCS.format('orders')}/b")
        lines = [await tail.json() for _ in range(4)]
        assert [(m["type"], m["op"], m["key"]) for m in lines] == [
            ("change", "insert", "a"), ("change", "update", "b"),
            ("change", "leave", "a"), ("change", "delete", "b")]
        assert lines[0]["document"] == {"_id": "a", "status": "open", "_version": 1}
        assert lines[0]["collection"] == "orders"
        assert lines[0]["ts"].endswith("Z")
        assert all(isinstance(m["id"], str) for m in lines)
        assert "sub" not in lines[0]

        code, err = await tail.interrupt(signal.SIGINT)
        assert code in (0, 130)
        assert "Traceback" not in err
    finally:
        await stop(tail)


async def test_tail_snapshot_since_and_sigterm(live: LiveServer,
                                               http: httpx.AsyncClient) -> None:
    for i in range(3):
        await http.post(DOCS.format("items"), json={"_id": f"i{i}", "n": i})
    tail = await start_tail("items", "--json", "--snapshot", "--url", live.url)
    try:
        snapshot = await tail.json()
        assert snapshot["type"] == "snapshot"
        assert [d["_id"] for d in snapshot["documents"]] == ["i0", "i1", "i2"]
        await http.post(DOCS.format("items"), json={"_id": "i3"})
        change = await tail.json()
        assert change["key"] == "i3"
        code, err = await tail.interrupt(signal.SIGTERM)
        assert code == 0
        assert "Traceback" not in err
    finally:
        await stop(tail)

    # Resume after the last event printed: only what came after it.
    await http.post(DOCS.format("items"), json={"_id": "i4"})
    tail = await start_tail("items", "--json", "--since", change["id"], "--url", live.url)
    try:
        assert (await tail.json())["key"] == "i4"
    finally:
        await stop(tail)


async def test_tail_pretty_output(live: LiveServer, http: httpx.AsyncClient) -> None:
    tail = await start_tail("orders", "--url", live.url)
    try:
        await tail.status("subscribed to orders")
        await http.post(DOCS.format("orders"), json={"_id": "pretty", "n": 1})
        line = await tail.line()
        assert "insert" in line
        assert "pretty" in line
        assert '"n":1' in line
        code, err = await tail.interrupt()
        assert code in (0, 130)
        assert "Traceback" not in err
    finally:
        await stop(tail)


async def test_tail_errors(live: LiveServer) -> None:
    bad_filter, unreachable, not_json = await asyncio.gather(
        cli("tail", "orders", "--filter", '{"$where": "1"}', "--url", live.url),
        cli("tail", "orders", "--url", f"http://127.0.0.1:{free_port()}"),
        cli("tail", "orders", "--filter", "[1", "--url", live.url),
    )
    assert bad_filter[0] == 1
    assert "bad_filter" in bad_filter[2]
    assert unreachable[0] == 1
    assert "cannot connect" in unreachable[2]
    assert not_json[0] == 2
    for _, _, err in (bad_filter, unreachable, not_json):
        assert "Traceback" not in err


@pytest.fixture
async def server(mongo: EmbeddedServer) -> AsyncIterator[ServerProcess]:
    proc = ServerProcess({"REALTIME_MONGODB_URI": mongo.uri,
                          "REALTIME_DATABASE": f"c_{uuid.uuid4().hex[:12]}"})
    try:
        await proc.start()
        yield proc
    finally:
        proc.kill()


async def test_tail_survives_a_server_restart(server: ServerProcess,
                                              mongo: EmbeddedServer) -> None:
    """kill -9 the server, write while it is down, restart: tail reloads and shows it all."""
    tail = await start_tail("orders", "--json", "--max-delay", "0.5", "--url", server.url)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http, \
                AsyncMongoClient(mongo.uri) as direct:
            await tail.status("subscribed to orders")
            await http.post(DOCS.format("orders"), json={"_id": "before"})
            assert (await tail.json())["key"] == "before"
            server.kill()
            await tail.status("reconnecting")
            coll = direct[server.env["REALTIME_DATABASE"]]["orders"]
            await coll.insert_one({"_id": "while-down", "_version": 1})
            await server.start()
            await http.post(DOCS.format("orders"), json={"_id": "after"})
            # Either the server resumes (the missed change is replayed) or it cannot
            # (reset, then a snapshot with everything): both show every document.
            seen: dict[str, Any] = {"before": None}
            async with asyncio.timeout(30):
                while "after" not in seen:
                    message = await tail.json()
                    if message["type"] == "snapshot":
                        seen.update({d["_id"]: message for d in message["documents"]})
                    elif message["type"] == "change":
                        seen[message["key"]] = message
                    else:
                        assert message == {"type": "reset", "reason": "history_lost"}
            assert {"before", "while-down", "after"} <= set(seen)
        code, err = await tail.interrupt()
        assert code in (0, 130)
        assert "Traceback" not in err
    finally:
        await stop(tail)

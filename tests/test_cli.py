"""The ``realtime`` command (realtime/cli.py) as a user runs it: real subprocesses.

``python -m realtime ...`` runs against real servers (the ``live`` fixture, or a
``realtime serve`` subprocess that is killed and restarted); usage errors need no
server. Every error is one line on stderr, ``realtime: ...``, exit status 2 for
usage and 1 for runtime problems, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import typer.main
from pymongo import AsyncMongoClient

from realtime import __version__
from realtime.cli import app
from realtime.embedded import EmbeddedServer, free_port
from tests.helpers import UNAVAILABLE, LiveServer, ServerProcess, flaky_server

ROOT = Path(__file__).resolve().parent.parent
DOCS = "/api/collections/{}/documents"
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
ENV.pop("REALTIME_URL", None)
ENV.pop("REALTIME_TOKEN", None)
# As a user runs it: asyncio's debug mode (conftest) would add slow-callback lines to stderr.
ENV.pop("PYTHONASYNCIODEBUG", None)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


async def cli(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
              within: float = 30.0) -> tuple[int, str, str]:
    """Run ``python -m realtime ARGS``; return (exit code, stdout, stderr)."""
    return await run([sys.executable, "-m", "realtime", *args], stdin=stdin, env=env,
                     within=within)


async def run(argv: list[str], *, stdin: bytes | None = None,
              env: dict[str, str] | None = None, within: float = 30.0,
              cwd: Path | None = None) -> tuple[int, str, str]:
    """Run ``argv``; return (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, env={**ENV, **(env or {})}, cwd=cwd,
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


async def cli_tty(*args: str, within: float = 30.0) -> tuple[int, str]:
    """Run ``python -m realtime ARGS`` with stdout on a terminal; return (code, stdout)."""
    master, slave = os.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "realtime", *args, env=ENV,
            stdin=asyncio.subprocess.DEVNULL, stdout=slave,
            stderr=asyncio.subprocess.PIPE)
    finally:
        os.close(slave)

    def read_all() -> bytes:
        chunks = []
        with contextlib.suppress(OSError):  # EIO once the child closed the terminal
            while chunk := os.read(master, 65536):
                chunks.append(chunk)
        return b"".join(chunks)

    try:
        out = await asyncio.wait_for(asyncio.to_thread(read_all), within)
        code = await asyncio.wait_for(proc.wait(), within)
    finally:
        os.close(master)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return code, _ANSI.sub("", out.decode()).replace("\r\n", "\n")


def one_line_error(err: str) -> str:
    """The single ``realtime: ...`` line of ``err`` (fails on a traceback or more lines)."""
    assert "Traceback" not in err
    assert err.startswith("realtime: "), err
    assert err.endswith("\n"), err
    assert err.count("\n") == 1, err
    return err.removeprefix("realtime: ").rstrip("\n")


async def bulk_insert(http: httpx.AsyncClient, collection: str, count: int) -> None:
    """Insert ``count`` documents ``{"_id": "d0000", "n": 0}``... with bulk POSTs."""
    for start in range(0, count, 1000):
        batch = [{"_id": f"d{n:04d}", "n": n} for n in range(start, min(count, start + 1000))]
        r = await http.post(DOCS.format(collection) + ":bulk", json=batch)
        assert r.status_code < 300, r.text
        assert r.json()["inserted"] == len(batch)


# ---------------------------------------------------------------------------
# --version, help


@pytest.mark.driver_blind
async def test_version_option_and_command_print_the_version() -> None:
    option, command = await asyncio.gather(cli("--version"), cli("version"))
    assert option == (0, f"{__version__}\n", "")
    assert command == option


@pytest.mark.driver_blind
async def test_help_shows_bracketed_text_literally() -> None:
    code, out, err = await cli("serve", "--help")
    assert code == 0, err
    assert "[env REALTIME_HOST]" in out
    assert "[env REALTIME_PORT]" in out
    assert "[./.realtime-data]" in " ".join(out.split()).replace("- ", "-")
    for level in ("debug", "info", "warning", "error"):
        assert level in out
    code, out, err = await cli("--help")
    assert code == 0, err
    assert "--version" in out
    assert re.search(r"^\s+rm\s", out, re.MULTILINE)


@pytest.mark.driver_blind
def test_every_argument_and_option_has_help() -> None:
    group = typer.main.get_command(app)
    commands = {"realtime": group, **getattr(group, "commands", {})}
    assert {"serve", "db", "ls", "get", "put", "rm", "tail", "version"} <= set(commands)
    missing = [f"{name} {param.name}" for name, command in commands.items()
               for param in command.params if not getattr(param, "help", None)]
    assert missing == []


# ---------------------------------------------------------------------------
# usage errors: exit 2, one line, no server needed


@pytest.mark.driver_blind
@pytest.mark.parametrize(("args", "says"), [
    (("tail", "orders", "--url", "notaurl"), "'notaurl' is not an http(s):// or ws(s):// URL"),
    (("get", "orders", "--url", "notaurl"), "'notaurl' is not an http(s):// URL"),
    (("ls", "--url", "ftp://x"), "'ftp://x' is not an http(s):// URL"),
    (("put", "orders", "{}", "--url", "http://"), "'http://' has no host"),
    (("rm", "orders", "a", "--url", "http://h:port"), "is not a URL"),
    (("serve", "--log-level", "loud"), "'loud' is not one of 'debug', 'info', 'warning', 'error'"),
    (("get", "orders", "--limit", "1001"), "--limit"),
    (("get", "orders", "a", "--all"), "apply to lists, not to one ID"),
    (("put", "orders", "{not json"), "the document is not valid JSON"),
    (("put", "orders", "[1]"), "the document must be a JSON object"),
    (("get", "orders", "--filter", "{x"), "--filter is not valid JSON"),
    (("tail", "orders", "--filter", "[1"), "--filter is not valid JSON"),
    (("tail", "orders", "--since-time", "9am"), "--since-time is not an RFC 3339 timestamp"),
    (("tail", "orders", "--fields", "a,$b"), "--fields '$b' is not a field path"),
    (("tail", "orders", "--aggregate", '{"count": 1}'), "--aggregate: 'count' must be true"),
    (("tail", "orders", "--aggregate", '{"count": true}', "--snapshot"),
     "--aggregate excludes"),
    (("tail", "orders", "--since-time", "2026-01-01T09:00:00Z", "--snapshot"),
     "--since-time excludes --since and --snapshot"),
    (("rm", "orders"), "Missing argument"),
    (("ls", "--token", "é"), "--token"),
    (("nope",), "No such command 'nope'"),
])
async def test_usage_errors_are_one_line_with_exit_status_2(args: tuple[str, ...],
                                                            says: str) -> None:
    code, out, err = await cli(*args)
    assert (code, out) == (2, ""), err
    assert says in one_line_error(err)


@pytest.mark.driver_blind
async def test_a_bad_url_from_the_environment_is_a_usage_error() -> None:
    code, _, err = await cli("ls", env={"REALTIME_URL": "localhost:8000"})
    assert code == 2
    assert "REALTIME_URL" in one_line_error(err)


async def test_a_relay_without_its_database_or_nats_is_a_usage_error() -> None:
    code, _, err = await cli("relay", env={"REALTIME_MONGODB_URI": "mongodb://127.0.0.1:1"})
    assert code == 2
    assert "REALTIME_BROKER_URL" in one_line_error(err)
    code, _, err = await cli("relay", env={"REALTIME_BROKER_URL": "nats://127.0.0.1:1"})
    assert code == 2
    assert "REALTIME_MONGODB_URI" in one_line_error(err)


async def test_an_edge_without_the_relays_database_is_a_usage_error() -> None:
    code, _, err = await cli("serve", env={"REALTIME_BROKER_URL": "nats://127.0.0.1:1"})
    assert code == 2
    assert "REALTIME_MONGODB_URI" in one_line_error(err)


# ---------------------------------------------------------------------------
# runtime errors: exit 1, one line


async def test_an_unreachable_server_is_one_line_for_every_command() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    results = await asyncio.gather(
        cli("ls", "--url", url),
        cli("get", "orders", "--url", url),
        cli("get", "orders", "a", "--url", url),
        cli("put", "orders", "{}", "--url", url),
        cli("rm", "orders", "a", "--url", url),
        cli("tail", "orders", "--url", url),
    )
    for code, out, err in results:
        assert (code, out) == (1, ""), err
        assert err.endswith(f"realtime: cannot reach {url}: connection refused\n"), err
        assert "Traceback" not in err
    code, _, err = await cli("ls", "--url", "http://no-such-host.invalid")
    assert code == 1
    assert one_line_error(err) == "cannot reach http://no-such-host.invalid: unknown host"


async def test_errors_print_the_problem_detail(live: LiveServer) -> None:
    url = ("--url", live.url)
    missing, bad_filter, bad_doc, bad_sort = await asyncio.gather(
        cli("get", "orders", "missing", *url),
        cli("get", "orders", "--filter", '{"$where": "1"}', *url),
        cli("put", "orders", "a", '{"$bad": 1}', *url),
        cli("get", "orders", "--after", "not-a-cursor", *url),
    )
    code, out, err = missing
    assert (code, out) == (1, "")
    assert one_line_error(err).startswith("404 Not Found: ")
    code, _, err = bad_filter
    assert code == 1
    assert one_line_error(err).startswith("400 ")
    assert "$where" in err
    code, _, err = bad_doc
    assert code == 1
    assert one_line_error(err).startswith("422 ")
    code, _, err = bad_sort
    assert code == 1
    assert one_line_error(err).startswith("400 ")


@pytest.fixture
def web_page() -> Iterator[str]:
    """The URL of a web server that answers every GET with an HTML page."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><title>not realtime</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Page) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}"
        finally:
            httpd.shutdown()
            thread.join(10)


@pytest.mark.driver_blind
async def test_a_server_that_is_not_realtime(web_page: str) -> None:
    for args in (("ls",), ("get", "orders"), ("get", "orders", "a")):
        code, out, err = await cli(*args, "--url", web_page)
        assert (code, out) == (1, ""), err
        assert one_line_error(err) == (f"{web_page} answered 200 with text/html, not JSON; "
                                       "is it a realtime server?")


# ---------------------------------------------------------------------------
# put / get / rm / ls


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
    assert (code, err) == (0, "")
    assert [orjson.loads(line)["n"] for line in out.splitlines()] == [7, 2]

    code, out, err = await cli("put", "users", "u1", '{"name": "Ada"}', *url)
    assert code == 0, err
    code, out, err = await cli("ls", env={"REALTIME_URL": live.url})  # env instead of --url
    assert code == 0, err
    assert {"orders", "users"} <= set(out.split())


async def test_rm_deletes_and_reports_a_missing_document(live: LiveServer,
                                                         http: httpx.AsyncClient) -> None:
    url = ("--url", live.url)
    await http.post(DOCS.format("orders"), json={"_id": "a", "n": 1})
    await http.post(DOCS.format("orders"), json={"_id": "b", "n": 1})

    assert await cli("rm", "orders", "a", *url) == (0, "", "")
    assert (await http.get(f"{DOCS.format('orders')}/a")).status_code == 404

    code, out, err = await cli("rm", "orders", "a", *url)
    assert (code, out) == (1, "")
    assert one_line_error(err) == "404 Not Found: no document 'a' in 'orders'"

    code, _, err = await cli("rm", "orders", "b", "--if-match", "2", *url)
    assert code == 1
    assert one_line_error(err).startswith("412 Precondition Failed: ")
    assert (await http.get(f"{DOCS.format('orders')}/b")).status_code == 200
    assert await cli("rm", "orders", "b", "--if-match", "1", *url) == (0, "", "")
    assert (await http.get(f"{DOCS.format('orders')}/b")).status_code == 404


async def test_get_pages_past_1000_documents(live: LiveServer, http: httpx.AsyncClient) -> None:
    await bulk_insert(http, "many", 1234)
    url = ("--url", live.url)
    ids = [f"d{n:04d}" for n in range(1234)]

    def lines(out: str) -> list[str]:
        return [orjson.loads(line)["_id"] for line in out.splitlines()]

    # Piped, one page: never cut short without saying so on stderr.
    code, out, err = await cli("get", "many", *url)
    assert code == 0, err
    assert lines(out) == ids[:100]
    notice = one_line_error(err)
    assert notice.startswith("100 documents shown and more exist: use --all, --limit")
    assert "--after " in notice

    # --all follows `next` to the end, at the default page size and at 1000.
    (code, out, err), (code2, out2, err2) = await asyncio.gather(
        cli("get", "many", "--all", *url), cli("get", "many", "--all", "--limit", "1000", *url))
    assert (code, err) == (0, "")
    assert lines(out) == ids
    assert (code2, err2) == (0, "")
    assert lines(out2) == ids

    # --limit 1000, then --after the cursor it printed: the rest, and no notice.
    code, out, err = await cli("get", "many", "--limit", "1000", *url)
    assert lines(out) == ids[:1000]
    cursor = one_line_error(err).rsplit("--after ", 1)[1]
    code, out, err = await cli("get", "many", "--limit", "1000", "--after", cursor, *url)
    assert (code, err) == (0, "")
    assert lines(out) == ids[1000:]

    # With a filter and a sort, --all pages through exactly the matching documents.
    code, out, err = await cli("get", "many", "--all", "--limit", "7", "--sort", "-n",
                               "--filter", '{"n": {"$gte": 1200}}', *url)
    assert (code, err) == (0, "")
    assert lines(out) == ids[1200:][::-1]


async def test_get_prints_tables_on_a_terminal(live: LiveServer,
                                               http: httpx.AsyncClient) -> None:
    await bulk_insert(http, "few", 5)
    url = ("--url", live.url)
    code, out = await cli_tty("get", "few", "--limit", "2", "--all", *url)
    assert code == 0
    assert re.findall(r"few \(([^)]*)\)", out) == ["1-2", "3-4", "5-5"]
    assert all(f"d000{n}" in out for n in range(5))
    code, out = await cli_tty("get", "few", "--limit", "2", *url)
    assert code == 0
    assert "few (2)" in out
    assert "d0002" not in out
    code, out = await cli_tty("get", "few", "--json", *url)
    assert code == 0
    assert [orjson.loads(line)["_id"] for line in out.splitlines()] == [
        f"d000{n}" for n in range(5)]


# ---------------------------------------------------------------------------
# the README, as written


def _console_blocks(text: str) -> list[list[str]]:
    return [block.splitlines() for block in re.findall(r"```console\n(.*?)```", text, re.DOTALL)]


@pytest.mark.driver_blind
def test_the_docs_say_how_to_run_the_command() -> None:
    """The README calls .venv/bin/realtime (what `make run` installs); docs/clients.md
    says once how to put `realtime` on PATH."""
    for block in _console_blocks((ROOT / "README.md").read_text()):
        for line in block:
            assert not line.startswith("$ realtime "), line
    clients = (ROOT / "docs" / "clients.md").read_text()
    assert "source .venv/bin/activate" in clients
    assert ".venv/bin/realtime" in clients


async def test_the_readme_tour_works_as_written(live: LiveServer) -> None:
    exe = ROOT / ".venv" / "bin" / "realtime"
    if not exe.exists():
        pytest.skip("no .venv/bin/realtime (`make run` installs it)")
    commands: list[tuple[list[str], list[str]]] = []  # (argv, expected output lines)
    for block in _console_blocks((ROOT / "README.md").read_text()):
        lines = iter(block)
        for line in lines:
            if line.startswith("$ "):
                command = line[2:]
                while command.endswith("\\"):  # continued on the next line
                    command = command[:-1] + next(lines)
                commands.append((shlex.split(command), []))
            elif commands:
                commands[-1][1].append(line)
    cli_commands = [(argv, out) for argv, out in commands if argv[0] == ".venv/bin/realtime"]
    assert len(cli_commands) >= 3
    tail_argv, _ = next(c for c in cli_commands if c[0][1] == "tail")
    env = {"REALTIME_URL": live.url}
    tail = await start_tail(*tail_argv[2:], env=env)
    try:
        await tail.status("subscribed to orders")
        for argv, expected in cli_commands:
            if argv[1] == "tail":
                continue
            code, out, err = await run(argv, env=env, cwd=ROOT)
            assert (code, err) == (0, ""), (argv, err)
            assert [orjson.loads(line) for line in out.splitlines()] == [
                orjson.loads(line) for line in expected], argv
        async with httpx.AsyncClient(base_url=live.url) as http:  # the README's curl
            r = await http.post(DOCS.format("orders"),
                                json={"_id": "o2", "status": "open", "total": 3})
            assert r.status_code == 201
        # The README's sample of what the tail prints, without the timestamps.
        readme = (ROOT / "README.md").read_text()
        sample = re.search(r"gets a `leave`:\n\n```\n(.*?)```", readme, re.DOTALL)
        assert sample is not None
        expected_lines = [line.split(" ", 1)[1].rstrip() for line in sample[1].splitlines()]
        printed = [(await tail.line()).split(" ", 1)[1].rstrip() for _ in expected_lines]
        assert printed == expected_lines
    finally:
        await stop(tail)


# ---------------------------------------------------------------------------
# tail


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


async def start_tail(*args: str, env: dict[str, str] | None = None) -> Tail:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "realtime", "tail", *args, env={**ENV, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    return Tail(proc)


async def stop(tail: Tail) -> None:
    if tail.proc.returncode is None:
        tail.proc.kill()
        await tail.proc.wait()


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


async def test_tail_since_time_replays_then_follows(live: LiveServer,
                                                   http: httpx.AsyncClient) -> None:
    tail = await start_tail("notes", "--json", "--url", live.url)
    try:
        await tail.status("subscribed to notes")
        for i in range(3):
            await http.post(DOCS.format("notes"), json={"_id": f"n{i}"})
        seen = [await tail.json() for _ in range(3)]
    finally:
        await stop(tail)
    tail = await start_tail("notes", "--json", "--since-time", seen[1]["ts"], "--url", live.url)
    try:
        replayed = [(await tail.json())["key"] for ch in seen if ch["ts"] >= seen[1]["ts"]]
        assert replayed == [ch["key"] for ch in seen if ch["ts"] >= seen[1]["ts"]]
        await http.post(DOCS.format("notes"), json={"_id": "n3"})
        assert (await tail.json())["key"] == "n3"
    finally:
        await stop(tail)


async def test_tail_fields_prints_projected_documents_and_deltas(
        live: LiveServer, http: httpx.AsyncClient) -> None:
    tail = await start_tail("cards", "--json", "--fields", "title,meta.owner", "--url", live.url)
    try:
        await tail.status("subscribed to cards")
        await http.post(DOCS.format("cards"), json={"_id": "c1", "title": "T", "body": "B",
                                                     "meta": {"owner": "ann", "n": 1}})
        inserted = await tail.json()
        assert inserted["document"] == {"_id": "c1", "title": "T", "meta": {"owner": "ann"},
                                        "_version": 1}
        await http.patch(f"{DOCS.format('cards')}/c1", json={"body": "C"})  # nothing
        await http.patch(f"{DOCS.format('cards')}/c1", json={"title": "U"})
        updated = await tail.json()
        assert (updated["op"], updated.get("document"), updated["updated"]) == (
            "update", None, {"_version": 3, "title": "U"})
    finally:
        await stop(tail)


async def test_tail_aggregate_prints_the_groups_as_they_change(
        live: LiveServer, http: httpx.AsyncClient) -> None:
    await http.post(DOCS.format("sales"), json={"_id": "s1", "region": "eu", "amount": 5})
    spec = '{"group_by": "region", "count": true, "sum": ["amount"], "throttle_ms": 0}'
    tail = await start_tail("sales", "--json", "--aggregate", spec, "--url", live.url)
    try:
        first = await tail.json()
        assert first == {"type": "aggregate", "full": True, "groups": [
            {"key": {"region": "eu"}, "count": 1, "sum": {"amount": 5}}]}
        await http.post(DOCS.format("sales"), json={"_id": "s2", "region": "eu", "amount": 2})
        assert (await tail.json())["groups"] == [
            {"key": {"region": "eu"}, "count": 2, "sum": {"amount": 7}}]
    finally:
        await stop(tail)
    tail = await start_tail("sales", "--aggregate", spec, "--url", live.url)
    try:
        assert (await tail.line()).rstrip() == 'region="eu" count=2 sum.amount=7'
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
    bad_filter, bad_since, ws_unreachable = await asyncio.gather(
        cli("tail", "orders", "--filter", '{"$where": "1"}', "--url", live.url),
        cli("tail", "orders", "--since", "garbage", "--url", live.url),
        cli("tail", "orders", "--url", f"ws://127.0.0.1:{free_port()}/ws"),
    )
    assert bad_filter[0] == 1
    assert "bad_filter" in bad_filter[2]
    assert bad_since[0] == 1
    assert "bad_since" in bad_since[2]
    assert ws_unreachable[0] == 1
    assert "connection refused" in one_line_error(ws_unreachable[2])
    for _, _, err in (bad_filter, bad_since, ws_unreachable):
        assert "Traceback" not in err




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




@pytest.mark.driver_blind
@pytest.mark.parametrize(("args", "method", "ok"), [
    (("put", "docs", '{"n": 1}'), "POST", (201, b'{"_id":"a","_version":1,"n":1}')),
    (("put", "docs", "a", '{"n": 1}'), "PUT", (200, b'{"_id":"a","_version":2,"n":1}')),
    (("put", "--merge", "docs", "a", '{"n": 1}'), "PATCH", (200, b'{"_id":"a","_version":2}')),
    (("rm", "docs", "a"), "DELETE", (204, b"")),
])
async def test_put_and_rm_retry_a_503_with_one_idempotency_key(
        args: tuple[str, ...], method: str, ok: tuple[int, bytes]) -> None:
    with flaky_server([UNAVAILABLE, UNAVAILABLE, ok]) as (url, seen):
        code, _, err = await cli(*args, "--url", url)
    assert code == 0, err
    assert [m for m, _ in seen] == [method] * 3
    keys = {k for _, k in seen}
    assert len(keys) == 1
    assert re.fullmatch(r"[0-9a-f-]{36}", keys.pop())


@pytest.mark.driver_blind
async def test_put_gives_up_after_four_attempts() -> None:
    with flaky_server([UNAVAILABLE]) as (url, seen):
        code, _, err = await cli("put", "docs", '{"n": 1}', "--url", url)
    assert code == 1
    assert "503" in err
    assert len(seen) == 4

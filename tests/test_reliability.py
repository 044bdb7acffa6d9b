"""Fault tests with real processes: database crashes, fail points, server restarts.

Each is bounded in time; ``--stress`` runs the long variants.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pymongo
import pytest
from pymongo.errors import AutoReconnect, ConnectionFailure, OperationFailure

from realtime.backoff import Backoff
from realtime.config import Settings
from realtime.db import is_transient, token_time
from realtime.embedded import EmbeddedServer
from tests.helpers import (
    LiveServer,
    WSClient,
    fail_point,
    live_server,
    notified,
    server_process,
    until,
    ws_client,
)

DOCS = "/api/collections/{}/documents"


# -- units -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionFailure("down"), True),
        (AutoReconnect("primary stepped down"), True),
        (pymongo.errors.ServerSelectionTimeoutError("no server"), True),
        (pymongo.errors.NetworkTimeout("slow"), True),
        (OperationFailure("x", code=6), True),  # HostUnreachable
        (OperationFailure("x", code=91), True),  # ShutdownInProgress
        (OperationFailure("x", code=2, details={"errorLabels": ["ResumableChangeStreamError"]}),
         True),
        (OperationFailure("history lost", code=286), False),
        (OperationFailure("bad value", code=2), False),
        (OperationFailure("unauthorized", code=13), False),
        (ValueError("not a driver error"), False),
    ],
)
def test_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_backoff_is_full_jitter_within_bounds() -> None:
    backoff = Backoff(0.1, 10.0)
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0]
    for ceiling in ceilings:
        delays = []
        for _ in range(200):
            backoff.attempt = ceilings.index(ceiling)
            delays.append(backoff.next_delay())
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # full jitter spreads over the whole range
        assert min(delays) < ceiling * 0.2
    backoff.reset()
    assert backoff.attempt == 0


def test_token_time_reads_secantus_tokens(mongo: EmbeddedServer) -> None:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo.uri)
    with client.tt.watch(max_await_time_ms=50) as stream:
        stream.try_next()
        token = stream.resume_token
    client.close()
    assert token is not None
    when = token_time(token["_data"])
    assert when is not None
    assert when[0] > 1_700_000_000
    assert token_time("not-hex") is None
    assert token_time("00") is None


# -- helpers -------------------------------------------------------------------------
@asynccontextmanager
async def fresh_db(tmp_path: Path, **kwargs: Any) -> AsyncIterator[EmbeddedServer]:
    server = EmbeddedServer(tmp_path / "db", sync_on_commit=True, test_commands=True, **kwargs)
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


def fault_settings(settings: Settings, uri: str) -> Settings:
    return settings.model_copy(update={
        "mongodb_uri": uri,
        "retry_base_seconds": 0.05,
        "retry_cap_seconds": 0.5,
        "server_selection_timeout_ms": 1000,
        "connect_timeout_ms": 1000,
        "socket_timeout_ms": 3000,
    })


def keys_of(messages: list[dict[str, Any]]) -> list[Any]:
    return [m["key"] for m in messages if m.get("type") == "change"]


# -- database crash -----------------------------------------------------------------
async def crash_cycles(tmp_path: Path, settings: Settings, cycles: int) -> None:
    async with fresh_db(tmp_path) as db:
        s = fault_settings(settings, db.uri)
        async with live_server(s) as live, httpx.AsyncClient(base_url=live.url,
                                                              timeout=5) as http:
            feed = live.app.state.services.feed
            clients: list[WSClient] = []
            managers = []
            for i in range(3):
                cm = ws_client(live.ws_url, max_queue=None)
                c = await cm.__aenter__()
                managers.append(cm)
                clients.append(c)
                await c.subscribe("s", "crash", filter={} if i < 2 else {"even": True})
            acked: list[str] = []
            attempted: list[str] = []
            unavailable = 0
            stop = asyncio.Event()
            progress = asyncio.Condition()  # notified after every write

            async def writer() -> None:
                nonlocal unavailable
                n = 0
                interval = 0.01
                while not stop.is_set():
                    key = f"k{n:05d}"
                    n += 1
                    attempted.append(key)
                    try:
                        r = await http.post(DOCS.format("crash"),
                                            json={"_id": key, "even": n % 2 == 0})
                    except httpx.TransportError:
                        continue
                    if r.status_code == 201:
                        acked.append(key)
                    else:
                        assert r.status_code == 503, r.text  # never a 500
                        assert r.headers["retry-after"]
                        assert r.headers["content-type"] == "application/problem+json"
                        unavailable += 1
                    async with progress:
                        progress.notify_all()
                    await asyncio.sleep(interval)

            task = asyncio.create_task(writer())
            recoveries = []
            try:
                for _ in range(cycles):
                    before = len(acked)
                    await notified(progress, lambda b=before: len(acked) > b + 20, 30,
                                   "writes")
                    db.kill()  # kill -9 mid-stream
                    seen_503 = unavailable
                    await notified(progress, lambda s3=seen_503: unavailable > s3, 30, "a 503")
                    await until(lambda: feed.state.value == "retrying", 30,
                                     "feed retrying")
                    down_at = time.monotonic()
                    await asyncio.to_thread(db.start)  # same storage, same port
                    acked_then = len(acked)
                    await notified(progress, lambda a=acked_then: len(acked) > a, 30,
                                   "writes after restart")
                    await feed.wait_live(30)
                    recoveries.append(time.monotonic() - down_at)
            finally:
                stop.set()
                await task
            results = await asyncio.gather(*(c.drain_until_marker(http, timeout=30)
                                             for c in clients))
            for cm in managers:
                await cm.__aexit__(None, None, None)
            attempted_set = set(attempted)
            evens = {k for k in attempted if int(k[1:]) % 2 == 1}  # n was incremented
            for i, got in enumerate(results):
                keys = keys_of(got)
                assert len(keys) == len(set(keys)), "an event was delivered twice"
                assert keys == sorted(keys), "events out of order"
                assert set(keys) <= attempted_set
                want = set(acked) if i < 2 else {k for k in acked if k in evens}
                missing = want - set(keys)
                assert not missing, f"lost {len(missing)} acknowledged writes"
            assert unavailable > 0
            print(f"crash: {cycles} cycles, {len(acked)} acked, {unavailable} 503s, "
                  f"recovery {[round(r, 2) for r in recoveries]} s, "
                  f"feed restarts {feed.restarts}")


async def test_database_crash_loses_nothing(tmp_path: Path, settings: Settings) -> None:
    await crash_cycles(tmp_path, settings, cycles=3)


@pytest.mark.slow
async def test_database_crash_stress(tmp_path: Path, settings: Settings) -> None:
    await crash_cycles(tmp_path, settings, cycles=20)


# -- fail points --------------------------------------------------------------------
async def test_resumable_getmore_failure_resumes_without_loss(tmp_path: Path,
                                                              settings: Settings) -> None:
    async with fresh_db(tmp_path) as db, live_server(fault_settings(settings, db.uri)) as live, \
            httpx.AsyncClient(base_url=live.url) as http, ws_client(live.ws_url) as c:
        await c.subscribe("s", "fp")
        for i in range(3):
            await http.post(DOCS.format("fp"), json={"_id": f"a{i}"})
        assert keys_of(await c.changes(3)) == ["a0", "a1", "a2"]
        data = {"failCommands": ["getMore"], "errorCode": 6, "appName": "realtime",
                "errorLabels": ["ResumableChangeStreamError"]}
        async with fail_point(db.uri, data=data):
            for i in range(3):
                await http.post(DOCS.format("fp"), json={"_id": f"b{i}"})
            got = await c.drain_until_marker(http)
        assert [m["type"] for m in got] == ["change"] * 3  # no resync
        assert keys_of(got) == ["b0", "b1", "b2"]


async def test_non_resumable_getmore_failure_resyncs(tmp_path: Path,
                                                     settings: Settings) -> None:
    async with fresh_db(tmp_path) as db, live_server(fault_settings(settings, db.uri)) as live, \
            httpx.AsyncClient(base_url=live.url) as http, ws_client(live.ws_url) as c:
        feed = live.app.state.services.feed
        await c.subscribe("s", "fp")
        await http.post(DOCS.format("fp"), json={"_id": "before"})
        assert keys_of(await c.changes(1)) == ["before"]
        async with fail_point(db.uri, data={"failCommands": ["getMore"], "errorCode": 2,
                                            "appName": "realtime"}):
            resync = await c.expect("resync", timeout=15)
        assert resync == {"type": "resync", "sub": "s", "reason": "history_lost"}
        await feed.wait_live(15)
        await http.post(DOCS.format("fp"), json={"_id": "after"})
        assert keys_of(await c.drain_until_marker(http)) == ["after"]
        assert feed.restarts >= 1


async def test_history_lost_by_fail_point_resyncs_one_and_serves_others(
        tmp_path: Path, settings: Settings) -> None:
    async with fresh_db(tmp_path) as db, live_server(fault_settings(settings, db.uri)) as live, \
            httpx.AsyncClient(base_url=live.url) as http, ws_client(live.ws_url) as other:
        await other.subscribe("o", "hist")
        token = _token_now(db.uri)  # not in the new server's ring: a catch-up is needed
        await http.post(DOCS.format("hist"), json={"_id": "h1"})
        assert keys_of(await other.changes(1)) == ["h1"]
        async with fail_point(db.uri, data={"failCommands": ["aggregate"], "errorCode": 286,
                                            "appName": "realtime"}), ws_client(live.ws_url) as late:
            await late.subscribe("s", "hist", since=token)
            resync = await late.expect("resync")
            assert resync["reason"] == "history_lost"
        await http.post(DOCS.format("hist"), json={"_id": "h2"})
        assert keys_of(await other.changes(1)) == ["h2"]


async def test_pruned_token_is_detected(settings: Settings, live: LiveServer,
                                        http: httpx.AsyncClient) -> None:
    """A token older than the oldest oplog entry is history lost, even where the
    server would resume from it silently (SecantusDB prunes lazily)."""
    import bson

    ancient = bson.encode({"s": 1, "t": bson.Timestamp(1_000_000_000, 1),
                           "n": f"{settings.database}.x", "k": {}}).hex()
    async with ws_client(live.ws_url) as c:
        await c.subscribe("s", "old", since=ancient)
        assert (await c.expect("resync"))["reason"] == "history_lost"
        await http.post(DOCS.format("old"), json={"_id": "new"})
        assert keys_of(await c.changes(1)) == ["new"]


def _token_now(uri: str) -> str:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri)
    try:
        with client.admin.watch(max_await_time_ms=50) as stream:
            stream.try_next()
            token = stream.resume_token
    finally:
        client.close()
    assert token is not None
    return str(token["_data"])


# -- server restart -----------------------------------------------------------------
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_client_resumes_across_server_restart(how: str, mongo: EmbeddedServer) -> None:
    env = {"REALTIME_MONGODB_URI": mongo.uri,
           "REALTIME_DATABASE": f"r_{uuid.uuid4().hex[:10]}"}
    async with server_process(env) as server:
        async with httpx.AsyncClient(base_url=server.url) as http, \
                ws_client(server.ws_url) as c:
            await c.subscribe("s", "restart", filter={"keep": True})
            for i in range(5):
                await http.post(DOCS.format("restart"), json={"_id": f"a{i}", "keep": True})
            seen = await c.changes(5)
            last = seen[-1]["id"]
            if how == "sigterm":
                server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
                await asyncio.wait_for(c.ws.wait_closed(), 10)
                assert c.ws.close_code == 1001
                assert await asyncio.to_thread(server.proc.wait, 10) == 0  # type: ignore[union-attr]
            else:
                server.kill()
        # the server is down: writes go straight to the database meanwhile
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo.uri)
        coll = client[env["REALTIME_DATABASE"]]["restart"]
        for i in range(20):
            coll.insert_one({"_id": f"b{i}", "keep": i % 4 != 0, "_version": 1})
        coll.update_one({"_id": "a0"}, {"$set": {"keep": False}, "$inc": {"_version": 1}})
        client.close()
        await server.start()
        async with httpx.AsyncClient(base_url=server.url) as http, \
                ws_client(server.ws_url) as c:
            await c.subscribe("s", "restart", filter={"keep": True}, since=last)
            await http.post(DOCS.format("restart"), json={"_id": "c0", "keep": True})
            # The catch-up replays asynchronously; c0 (written after subscribing)
            # is held back and must come last.
            got: list[dict[str, Any]] = []
            while not got or got[-1]["key"] != "c0":
                got.append(await c.expect("change", timeout=30))
            want = [f"b{i}" for i in range(20) if i % 4 != 0]
            assert [(m["op"], m["key"]) for m in got] == [
                *[("insert", k) for k in want], ("leave", "a0"), ("insert", "c0")]
            assert await c.drain_until_marker(http) == []  # and nothing twice


# -- graceful shutdown --------------------------------------------------------------
async def test_sigterm_closes_every_socket_1001_and_exits_in_time(
        mongo: EmbeddedServer) -> None:
    env = {"REALTIME_MONGODB_URI": mongo.uri,
           "REALTIME_DATABASE": f"g_{uuid.uuid4().hex[:10]}"}
    async with server_process(env) as server, AsyncExitStackCompat() as stack:
        clients = []
        for i in range(50):
            c = await stack.enter(ws_client(server.ws_url))
            await c.subscribe("s", "shut", snapshot=i % 2 == 0)
            clients.append(c)
        assert server.proc is not None
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(server.proc.wait, 10)
        elapsed = time.monotonic() - started
        assert code == 0
        assert elapsed < 5, f"shutdown took {elapsed:.1f} s"
        await asyncio.gather(*(asyncio.wait_for(c.ws.wait_closed(), 5) for c in clients))
        assert {c.ws.close_code for c in clients} == {1001}


class AsyncExitStackCompat:
    """An AsyncExitStack whose ``enter`` returns the entered value, typed."""

    def __init__(self) -> None:
        from contextlib import AsyncExitStack

        self._stack = AsyncExitStack()

    async def enter(self, cm: Any) -> Any:
        return await self._stack.enter_async_context(cm)

    async def __aenter__(self) -> AsyncExitStackCompat:
        await self._stack.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.__aexit__(*exc)  # type: ignore[arg-type]


# -- reconnect storm ----------------------------------------------------------------
async def storm(mongo: EmbeddedServer, clients: int) -> None:
    env = {"REALTIME_MONGODB_URI": mongo.uri, "REALTIME_DATABASE": f"s_{uuid.uuid4().hex[:10]}"}
    async with server_process(env) as server, \
            httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for i in range(20):
            await http.post(DOCS.format("storm"), json={"_id": f"d{i}", "v": 0})

        async def one(i: int, since: str | None) -> str | None:
            async with ws_client(server.ws_url, max_queue=None) as c:
                fields: dict[str, Any] = {"since": since} if since else {"snapshot": True}
                await c.subscribe("s", "storm", **fields)
                if since is None:
                    snap = await c.expect("snapshot", timeout=60)
                    return str(snap["head"])
                return since

        heads = await asyncio.gather(*(one(i, None) for i in range(clients)))
        rss_before = _rss(server)
        # everyone drops; writes happen; everyone reconnects at once with since
        for i in range(20):
            await http.patch(f"{DOCS.format('storm')}/d{i}", json={"v": 1})

        ready = 0
        all_ready = asyncio.Event()
        marker_posted = asyncio.Event()
        marker: dict[str, str] = {}

        async def back(head: str | None) -> list[dict[str, Any]]:
            nonlocal ready
            async with ws_client(server.ws_url, max_queue=None) as c:
                await c.subscribe("s", "storm", since=head)
                await c.send({"op": "subscribe", "sub": "m", "collection": "markers"})
                ready += 1
                if ready == len(heads):
                    all_ready.set()
                await marker_posted.wait()
                got = []
                while True:
                    m = await c.recv(timeout=120)
                    if m.get("sub") == "m" and m.get("key") == marker["key"]:
                        return got
                    if m.get("sub") == "s":
                        got.append(m)

        tasks = [asyncio.create_task(back(h)) for h in heads]
        await asyncio.wait_for(all_ready.wait(), 120)  # all clients resubscribed
        r = await http.post(DOCS.format("markers"), json={"m": 1})
        marker["key"] = r.json()["_id"]
        marker_posted.set()
        results = await asyncio.gather(*tasks)
        for got in results:
            changes = [m for m in got if m["type"] == "change"]
            assert [m["key"] for m in changes] == [f"d{i}" for i in range(20)]  # once each
            assert all(m["document"]["v"] == 1 for m in changes)
        r = await http.get("/readyz")
        assert r.status_code == 200
        # memory returns near its baseline once the storm is over
        rss_after = _rss(server)
        assert rss_after < rss_before * 1.5 + 50_000_000, (rss_before, rss_after)


def _rss(server: Any) -> int:
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.mark.timeout(300)
async def test_reconnect_storm(mongo: EmbeddedServer) -> None:
    await storm(mongo, clients=1000)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_reconnect_storm_3000(mongo: EmbeddedServer) -> None:
    await storm(mongo, clients=3000)


# -- mass resume after a restart (shared catch-up) ---------------------------------------
async def mass_resume(mongo: EmbeddedServer, clients: int, writes: int,
                      bound: float, *, ring: int | None = None) -> dict[str, Any]:
    """``clients`` resume with one ``since`` from before ``writes`` changes made while
    the server was down: each gets every change exactly once, all within ``bound`` s.

    Returns the feed's health check after the storm. ``ring``: the ring's size.
    """
    env = {"REALTIME_MONGODB_URI": mongo.uri,
           "REALTIME_DATABASE": f"m_{uuid.uuid4().hex[:10]}",
           "REALTIME_RING_WARM_SECONDS": "10"}
    if ring is not None:
        env["REALTIME_RING_SIZE"] = str(ring)
    db_client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo.uri)
    coll = db_client[env["REALTIME_DATABASE"]]["mass"]
    try:
        async with server_process(env) as server:
            async with ws_client(server.ws_url) as c:
                await c.subscribe("s", "mass")
                await asyncio.to_thread(coll.insert_one, {"_id": "start", "_version": 1})
                (first,) = await c.changes(1)
            since = first["id"]
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(server.proc.wait, 10) == 0
            docs = [{"_id": f"w{i:06d}", "i": i, "_version": 1} for i in range(writes)]
            for at in range(0, writes, 1000):
                await asyncio.to_thread(coll.insert_many, docs[at:at + 1000])
            want = [d["_id"] for d in docs]
            await server.start()
            restarted = time.monotonic()
            caught_up = 0
            all_caught_up = asyncio.Event()

            async def one() -> tuple[list[str], float]:
                nonlocal caught_up
                async with ws_client(server.ws_url, max_queue=None) as c:
                    await c.subscribe("s", "mass", since=since)
                    got = [str(m["key"]) for m in await c.changes(writes, timeout=bound)]
                    done = time.monotonic() - restarted
                    caught_up += 1
                    if caught_up == clients:
                        all_caught_up.set()
                    # nothing more (no duplicate) before a change made after the storm
                    (after,) = await c.changes(1, timeout=bound + 30)
                    got.append(str(after["key"]))
                    return got, done

            tasks = [asyncio.create_task(one()) for _ in range(clients)]
            try:
                await notified_or_failed(all_caught_up, tasks, bound + 30)
                await asyncio.to_thread(coll.insert_one, {"_id": "after", "_version": 1})
                results = await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            async with httpx.AsyncClient(base_url=server.url) as http:
                feed: dict[str, Any] = (await http.get("/readyz")).json()["checks"]["feed"]
            assert feed["restarts"] == 0, feed
    finally:
        db_client.close()
    slowest = max(done for _, done in results)
    for got, _ in results:
        assert got == [*want, "after"]  # every change once, in order, then live
    assert slowest < bound, f"last client caught up {slowest:.1f} s after the restart"
    return feed


async def notified_or_failed(event: asyncio.Event, tasks: list[asyncio.Task[Any]],
                             timeout: float) -> None:
    """Wait for ``event``; raise at once the error of a task that failed meanwhile."""
    waiter = asyncio.create_task(event.wait())
    try:
        async with asyncio.timeout(timeout):
            pending: set[asyncio.Future[Any]] = {waiter, *tasks}
            while not event.is_set():
                done, pending = await asyncio.wait(pending,
                                                   return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    if t is not waiter:
                        t.result()  # a client that ended early: its error
    finally:
        waiter.cancel()


async def test_mass_resume_after_a_restart_replays_the_warmed_ring(
        mongo: EmbeddedServer) -> None:
    """The restarted server warmed its ring with the changes made while it was down:
    every client replays from memory, paced, and no catch-up stream is opened."""
    feed = await mass_resume(mongo, clients=300, writes=2000, bound=90)
    assert (feed["ring_catchups"], feed["catchups"]) == (300, 0), feed


async def test_mass_resume_beyond_the_ring_shares_the_catch_up(mongo: EmbeddedServer) -> None:
    """The ring holds only the last 500 changes: the clients share catch-up streams
    from the oplog, and each goes on from the ring where it begins."""
    feed = await mass_resume(mongo, clients=300, writes=2000, bound=90, ring=500)
    assert (feed["ring_catchups"], feed["catchups"]) == (0, 300), feed


@pytest.mark.slow
async def test_mass_resume_after_a_restart_at_full_size(mongo: EmbeddedServer) -> None:
    await mass_resume(mongo, clients=1000, writes=1000, bound=180)

"""Scale-out with real parts: nats-server (JetStream), SecantusDB, relays and edges.

Every server is a real subprocess: ``nats-server -js`` from the pinned wheel,
``python -m realtime relay`` (two for failover), ``python -m realtime serve``
with ``REALTIME_BROKER_URL`` (the edges). Faults are real: kill -9 of an edge
(its clients move to another edge with ``since``), of the active relay (the
standby takes over), and of the NATS server (restarted on its store). Every
subscriber must see every change exactly once, each document's changes in
order.

These tests exercise the relay and the edges, whose database access is the
change-stream feed already run on both drivers elsewhere: ``driver_blind``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from realtime.embedded import EmbeddedServer
from tests.helpers import ServerProcess, WSClient, bearer, sha, until, wait_until, ws_client
from tests.scaleout import NatsServer, RelayProcess, metric

pytestmark = [pytest.mark.driver_blind, pytest.mark.timeout(240)]

DOCS = "/api/collections/orders/documents"


@pytest.fixture
async def nats() -> AsyncIterator[NatsServer]:
    server = NatsServer()
    await asyncio.to_thread(server.start)
    yield server
    server.stop()


@pytest.fixture
def env(mongo: EmbeddedServer, nats: NatsServer) -> dict[str, str]:
    """One deployment: its database, its NATS, loopback without auth."""
    return {"REALTIME_MONGODB_URI": mongo.uri,
            "REALTIME_DATABASE": f"s_{uuid.uuid4().hex[:12]}",
            "REALTIME_BROKER_URL": nats.url,
            "REALTIME_HEARTBEAT_SECONDS": "5"}


@contextlib.asynccontextmanager
async def running(*procs: ServerProcess | RelayProcess) -> AsyncIterator[None]:
    try:
        await asyncio.gather(*(p.start() for p in procs))
        yield
    finally:
        for p in procs:
            p.kill()


async def active(relays: list[RelayProcess], timeout: float = 15.0) -> RelayProcess:
    """The relay that appends, once the others stand by.

    Two relays starting on an empty stream may both claim it; the first append
    fences the other out. So: one says ``active`` and has appended (a tick at
    least), every other one says ``standby``.
    """
    found: list[RelayProcess] = []

    async def settled() -> bool:
        roles = await asyncio.gather(*(r.role() for r in relays))
        if roles.count("active") != 1 or roles.count("standby") != len(relays) - 1:
            return False
        leader = relays[roles.index("active")]
        text = await leader.metrics()
        if (metric(text, "realtime_relay_ticks_total")
                + metric(text, "realtime_relay_published_total")) < 1:
            return False
        found.append(leader)
        return True

    await wait_until(settled, timeout, "a single active relay")
    return found[-1]


async def _is(relay: RelayProcess, role: str) -> bool:
    return await relay.role() == role


class Subscriber:
    """One client that follows ``orders`` and moves to the next edge with ``since``.

    Records every change as ``(key, _version, op)``; :attr:`moves` counts the
    reconnections.
    """

    def __init__(self, edges: list[ServerProcess], headers: dict[str, str] | None = None,
                 **subscribe: Any) -> None:
        self.edges = edges
        self.headers = headers or {}
        self.subscribe = subscribe
        self.seen: list[tuple[str, int, str]] = []
        self.last_id: str | None = None
        self.moves = 0
        self.subscribed = asyncio.Event()
        self._stop = asyncio.Event()

    async def run(self) -> None:
        index = 0
        while not self._stop.is_set():
            edge = self.edges[index % len(self.edges)]
            index += 1
            if edge.proc is None or edge.proc.poll() is not None:
                continue
            try:
                async with ws_client(edge.ws_url, additional_headers=self.headers) as client:
                    await self._follow(client)
            except (ConnectionClosed, OSError, TimeoutError):
                self.moves += 1

    async def _follow(self, client: WSClient) -> None:
        extra = {} if self.last_id is None else {"since": self.last_id}
        await client.subscribe("s1", "orders", **self.subscribe, **extra)
        self.subscribed.set()
        while not self._stop.is_set():
            try:
                message = await client.recv(timeout=0.5)
            except TimeoutError:
                continue
            if message["type"] == "change":
                doc = message.get("document") or {}
                self.seen.append((str(message["key"]), int(doc.get("_version", 0)),
                                  message["op"]))
                self.last_id = message["id"]
            elif message["type"] == "resync":
                raise AssertionError(f"unexpected resync: {message}")

    def keys(self) -> set[tuple[str, int]]:
        return {(key, version) for key, version, _ in self.seen}

    def stop(self) -> None:
        self._stop.set()


async def write(edge_url: str, n: int, docs: int = 10, tenant: str = "A",
                headers: dict[str, str] | None = None,
                pause: float = 0.0) -> set[tuple[str, int]]:
    """``n`` writes spread over ``docs`` documents (inserts, then updates); what each wrote."""
    written: set[tuple[str, int]] = set()
    keys: list[str] = []
    async with httpx.AsyncClient(base_url=edge_url, timeout=10, headers=headers) as http:
        for i in range(n):
            if len(keys) < docs or not docs:
                r = await http.post(DOCS, json={"i": i, "tenant": tenant})
                assert r.status_code == 201, r.text
                keys.append(r.json()["_id"])
            else:
                key = keys[i % docs]  # docs > 0 here
                r = await http.patch(f"{DOCS}/{key}", json={"i": i})
                assert r.status_code == 200, r.text
            body = r.json()
            written.add((str(body["_id"]), int(body["_version"])))
            if pause:
                await asyncio.sleep(pause)
    return written


def assert_exactly_once_in_order(sub: Subscriber, written: set[tuple[str, int]]) -> None:
    pairs = [(key, version) for key, version, _ in sub.seen]
    assert set(pairs) == written, (
        f"lost {sorted(written - set(pairs))[:5]}, extra {sorted(set(pairs) - written)[:5]}")
    assert len(pairs) == len(set(pairs)), "a change was delivered twice"
    last: dict[str, int] = {}
    for key, version in pairs:
        assert version > last.get(key, 0), f"{key}: version {version} after {last[key]}"
        last[key] = version


async def test_an_edge_delivers_every_change_the_relay_publishes_in_order(
        env: dict[str, str]) -> None:
    relay, edge = RelayProcess(env), ServerProcess(env)
    async with running(relay, edge):
        await active([relay])
        sub = Subscriber([edge])
        task = asyncio.create_task(sub.run())
        try:
            await asyncio.wait_for(sub.subscribed.wait(), 10)
            written = await write(edge.url, 300, docs=30)
            await until(lambda: sub.keys() >= written, 30, "every change")
        finally:
            sub.stop()
            await task
        assert_exactly_once_in_order(sub, written)
        text = await edge_metrics(edge)
        assert metric(text, "realtime_feed_events_total", source="broker") == 300
        assert metric(await relay.metrics(), "realtime_relay_published_total") == 300
        assert metric(await relay.metrics(), "realtime_relay_lag_seconds_count") == 300


async def edge_metrics(edge: ServerProcess, headers: dict[str, str] | None = None) -> str:
    async with httpx.AsyncClient(base_url=edge.url, timeout=10, headers=headers) as http:
        r = await http.get("/metrics")
    assert r.status_code == 200, r.text
    return r.text


async def test_an_edge_whose_clients_watch_tenant_a_ingests_none_of_tenant_b(
        env: dict[str, str]) -> None:
    keys = {"ka": {"scopes": ["read:orders", "write:orders"], "tenant": "A"},
            "kb": {"scopes": ["read:orders", "write:orders"], "tenant": "B"},
            "admin": {"scopes": ["admin", "read:*", "write:*"]}}
    api_keys = orjson.dumps([{"sha256": sha(k), **spec} for k, spec in keys.items()]).decode()
    secured = {**env, "REALTIME_AUTH": "apikey", "REALTIME_API_KEYS": api_keys}
    relay, edge_a, edge_b = RelayProcess(secured), ServerProcess(secured), ServerProcess(secured)
    async with running(relay, edge_a, edge_b):
        await active([relay])
        watcher = Subscriber([edge_a], headers=bearer("ka"))
        task = asyncio.create_task(watcher.run())
        try:
            await asyncio.wait_for(watcher.subscribed.wait(), 10)
            # Tenant B writes more than A, through the other edge.
            written_b, written_a = await asyncio.gather(
                write(edge_b.url, 200, tenant="B", headers=bearer("kb")),
                write(edge_b.url, 50, tenant="A", headers=bearer("ka")))
            await until(lambda: watcher.keys() >= written_a, 30, "tenant A's changes")
            text = await edge_metrics(edge_a, bearer("admin"))
        finally:
            watcher.stop()
            await task
        assert_exactly_once_in_order(watcher, written_a)
        assert metric(text, "realtime_broker_subject_events_total", subject="rt.orders.A") == 50
        assert metric(text, "realtime_broker_subject_events_total", subject="rt.orders.B") == 0
        assert metric(text, "realtime_feed_events_total", source="broker") == 50
        assert metric(text, "realtime_broker_subjects", pattern="rt.orders.A") == 1
        assert len(written_b) == 200


async def test_clients_of_an_edge_killed_mid_stream_move_to_another_with_since(
        env: dict[str, str]) -> None:
    relay, edge_a, edge_b = RelayProcess(env), ServerProcess(env), ServerProcess(env)
    async with running(relay, edge_a, edge_b):
        await active([relay])
        subs = [Subscriber([edge_a, edge_b]) for _ in range(20)]
        tasks = [asyncio.create_task(s.run()) for s in subs]
        try:
            await asyncio.wait_for(asyncio.gather(*(s.subscribed.wait() for s in subs)), 15)
            writer = asyncio.create_task(write(edge_b.url, 400, docs=40, pause=0.002))
            await until(lambda: all(len(s.seen) >= 100 for s in subs), 30, "a quarter")
            edge_a.kill()  # kill -9 mid-stream
            written = await writer
            await until(lambda: all(s.keys() >= written for s in subs), 60, "every change")
        finally:
            for s in subs:
                s.stop()
            await asyncio.gather(*tasks)
        for s in subs:
            assert s.moves >= 1
            assert_exactly_once_in_order(s, written)


async def test_the_standby_relay_takes_over_within_5_s_of_a_kill_9(env: dict[str, str]) -> None:
    relays = [RelayProcess(env), RelayProcess(env)]
    edges = [ServerProcess(env), ServerProcess(env)]
    async with running(*relays, *edges):
        first = await active(relays)
        standby = relays[1 - relays.index(first)]
        subs = [Subscriber([edge]) for edge in edges for _ in range(5)]
        tasks = [asyncio.create_task(s.run()) for s in subs]
        try:
            await asyncio.wait_for(asyncio.gather(*(s.subscribed.wait() for s in subs)), 15)
            writer = asyncio.create_task(write(edges[0].url, 400, docs=40, pause=0.005))
            await until(lambda: all(len(s.seen) >= 100 for s in subs), 30, "a quarter")
            takeovers = metric(await standby.metrics(), "realtime_relay_takeovers_total")
            first.kill()
            killed = time.monotonic()
            await wait_until(lambda: _is(standby, "active"), 5.0, "the standby's takeover")
            took = time.monotonic() - killed
            written = await writer
            await until(lambda: all(s.keys() >= written for s in subs), 60, "every change")
        finally:
            for s in subs:
                s.stop()
            await asyncio.gather(*tasks)
        for s in subs:
            assert_exactly_once_in_order(s, written)
        assert took < 5.0
        assert metric(await standby.metrics(),
                      "realtime_relay_takeovers_total") == takeovers + 1


async def test_a_nats_restart_mid_stream_loses_and_duplicates_nothing(
        env: dict[str, str], nats: NatsServer) -> None:
    relay, edge = RelayProcess(env), ServerProcess(env)
    async with running(relay, edge):
        await active([relay])
        subs = [Subscriber([edge]) for _ in range(5)]
        tasks = [asyncio.create_task(s.run()) for s in subs]
        try:
            await asyncio.wait_for(asyncio.gather(*(s.subscribed.wait() for s in subs)), 15)
            writer = asyncio.create_task(write(edge.url, 300, docs=30, pause=0.005))
            await until(lambda: all(len(s.seen) >= 60 for s in subs), 30, "a fifth")
            nats.kill()
            await asyncio.to_thread(nats.start)
            written = await writer
            await until(lambda: all(s.keys() >= written for s in subs), 60, "every change")
        finally:
            for s in subs:
                s.stop()
            await asyncio.gather(*tasks)
        for s in subs:
            assert_exactly_once_in_order(s, written)


async def test_since_beyond_the_edges_ring_is_replayed_from_jetstream(
        env: dict[str, str]) -> None:
    small = {**env, "REALTIME_RING_SIZE": "5"}
    relay, edge = RelayProcess(small), ServerProcess(small)
    async with running(relay, edge):
        await active([relay])
        first = Subscriber([edge])
        task = asyncio.create_task(first.run())
        try:
            await asyncio.wait_for(first.subscribed.wait(), 10)
            early = await write(edge.url, 20, docs=5)
            await until(lambda: first.keys() >= early, 30, "the first changes")
        finally:
            first.stop()
            await task
        since = first.last_id
        assert since is not None
        later = await write(edge.url, 60, docs=5)
        # A client that stopped after the first 20 resumes: the ring holds 5.
        resumed = Subscriber([edge])
        resumed.last_id = since
        task = asyncio.create_task(resumed.run())
        try:
            await until(lambda: resumed.keys() >= later, 30, "the replay")
            more = await write(edge.url, 10, docs=5)
            await until(lambda: resumed.keys() >= later | more, 30, "live after the replay")
        finally:
            resumed.stop()
            await task
        assert_exactly_once_in_order(resumed, later | more)
        assert metric(await edge_metrics(edge), "realtime_broker_replays_total") == 1


async def test_since_older_than_the_stream_is_caught_up_from_the_database(
        env: dict[str, str]) -> None:
    alone = {k: v for k, v in env.items() if k != "REALTIME_BROKER_URL"}
    single = ServerProcess(alone)  # the single-process mode, before the scale-out
    async with running(single):
        first = Subscriber([single])
        task = asyncio.create_task(first.run())
        try:
            await asyncio.wait_for(first.subscribed.wait(), 10)
            early = await write(single.url, 10, docs=5)
            await until(lambda: first.keys() >= early, 30, "the first changes")
        finally:
            first.stop()
            await task
        before_relay = await write(single.url, 20, docs=5)
    relay, edge = RelayProcess(env), ServerProcess(env)
    async with running(relay, edge):
        await active([relay])
        after_relay = await write(edge.url, 10, docs=5)
        resumed = Subscriber([edge])
        resumed.last_id = first.last_id
        task = asyncio.create_task(resumed.run())
        try:
            await until(lambda: resumed.keys() >= before_relay | after_relay, 30, "the catch-up")
            more = await write(edge.url, 10, docs=5)
            expected = before_relay | after_relay | more
            await until(lambda: resumed.keys() >= expected, 30, "live after it")
        finally:
            resumed.stop()
            await task
        assert_exactly_once_in_order(resumed, expected)
        text = await edge_metrics(edge)
        assert metric(text, "realtime_feed_catchups_total") == 1
        assert metric(text, "realtime_broker_replays_total") == 0


async def test_snapshot_then_live_on_an_edge_sends_nothing_twice(env: dict[str, str]) -> None:
    relay, edge = RelayProcess(env), ServerProcess(env)
    async with running(relay, edge):
        await active([relay])
        shown = await write(edge.url, 30, docs=10)
        async with ws_client(edge.ws_url) as client:
            await client.subscribe("s1", "orders", snapshot=True)
            snapshot = await client.expect("snapshot")
            docs = {(d["_id"], d["_version"]) for d in snapshot["documents"]}
            newest: dict[str, int] = {}
            for key, version in shown:
                newest[key] = max(version, newest.get(key, 0))
            assert docs == set(newest.items())
            later = await write(edge.url, 10, docs=0)  # inserts only
            changes = await client.changes(len(later))
            got = {(c["key"], c["document"]["_version"]) for c in changes}
            assert got == later
            assert not docs & got


async def test_a_paused_relay_that_wakes_up_after_a_takeover_cannot_append_with_the_other(
        env: dict[str, str]) -> None:
    """SIGSTOP the active relay until the standby takes over, then wake it.

    Both now believe they are active; whichever appends first wins (the woken
    relay's publishes sent before the pause may still land first) and the
    other is fenced out: afterwards one is active, one stands by, and every
    change arrived once.
    """
    relays = [RelayProcess(env), RelayProcess(env)]
    edge = ServerProcess(env)

    async def fenced() -> float:
        return sum([metric(await r.metrics(), "realtime_relay_fenced_total") for r in relays])

    async with running(*relays, edge):
        first = await active(relays)
        other = relays[1 - relays.index(first)]
        fenced_before = await fenced()
        sub = Subscriber([edge])
        task = asyncio.create_task(sub.run())
        try:
            await asyncio.wait_for(sub.subscribed.wait(), 10)
            writer = asyncio.create_task(write(edge.url, 300, docs=30, pause=0.01))
            await until(lambda: len(sub.seen) >= 50, 30, "the first changes")
            assert first.proc is not None
            first.proc.send_signal(signal.SIGSTOP)  # alive, but silent: the standby takes over
            try:
                await wait_until(lambda: _is(other, "active"), 15, "the takeover")
            finally:
                first.proc.send_signal(signal.SIGCONT)
            written = await writer
            await until(lambda: sub.keys() >= written, 60, "every change")

            async def settled() -> bool:
                roles = sorted([str(await r.role()) for r in relays])
                return roles == ["active", "standby"] and await fenced() > fenced_before

            await wait_until(settled, 15, "one relay fenced out, the other active")
        finally:
            sub.stop()
            await task
        assert_exactly_once_in_order(sub, written)

"""WebSocket security against a real uvicorn server and a real database.

Authentication (header, subprotocol, first message), expiry and renewal,
per-subscription scopes, Origin checks, connection limits, tokens kept out of
the logs, and the tenant isolation property: random interleavings of writes
by two tenants, and neither tenant's subscribers (live, filtered, snapshot,
``since`` ring replay, catch-up) nor queries ever see the other's documents
or events.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from realtime.config import Settings
from tests.helpers import (
    LiveServer,
    WSClient,
    apikey_settings,
    bearer,
    derive,
    hs256,
    jwt_settings,
    live_server,
    until,
)

DOCS = "/api/collections/{}/documents"
PROPERTY_EXAMPLES = int(os.environ.get("REALTIME_PROPERTY_EXAMPLES", "12"))
# Each example runs dozens of requests against a live server: shrinking a failure
# takes minutes, so it is opt-in (REALTIME_PROPERTY_SHRINK=1).
PHASES = tuple(p for p in Phase if p is not Phase.shrink
               or os.environ.get("REALTIME_PROPERTY_SHRINK") == "1")


async def close_code(ws: ClientConnection, timeout: float = 10.0) -> int | None:
    """Read until the server closes; return its close code."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None


async def recv_json(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
    return value


@asynccontextmanager
async def raw(url: str, **kwargs: Any) -> AsyncIterator[ClientConnection]:
    kwargs.setdefault("ping_interval", None)
    async with connect(url, max_size=None, open_timeout=10, **kwargs) as ws:
        yield ws


KEYS: dict[str, dict[str, Any]] = {
    "k-orders": {"scopes": ["read:orders"]},
    "k-all": {"scopes": ["read:*", "write:*"]},
    "k-a": {"scopes": ["admin"], "tenant": "a"},
    "k-b": {"scopes": ["admin"], "tenant": "b"},
}


@pytest.fixture
async def keyed(settings: Settings) -> AsyncIterator[LiveServer]:
    """A live server in mode apikey with KEYS."""
    async with live_server(apikey_settings(settings, KEYS, auth_timeout_seconds=0.5)) as server:
        yield server


# -------------------------------------------------------------- authentication


async def test_header_subprotocol_and_first_message(keyed: LiveServer) -> None:
    url = keyed.ws_url
    # 1. Authorization header: welcome at once.
    async with raw(url, additional_headers=bearer("k-orders")) as ws:
        assert (await recv_json(ws))["type"] == "welcome"
    # 2. Sec-WebSocket-Protocol: realtime + bearer.<token>; the server selects "realtime".
    async with raw(url, subprotocols=["realtime", "bearer.k-orders"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "realtime"
        assert (await recv_json(ws))["type"] == "welcome"
    # 3. The first message: authenticated, then welcome.
    async with raw(url) as ws:
        await ws.send(orjson.dumps({"op": "auth", "token": "k-orders"}).decode())
        assert await recv_json(ws) == {"type": "authenticated"}
        assert (await recv_json(ws))["type"] == "welcome"
        await ws.send('{"op":"ping","ref":1}')
        assert await recv_json(ws) == {"type": "pong", "ref": 1}


async def test_unauthenticated_sockets_close_4401(keyed: LiveServer) -> None:
    url = keyed.ws_url
    async with raw(url, additional_headers=bearer("wrong")) as ws:
        assert await close_code(ws) == 4401
    async with raw(url, additional_headers={"Authorization": "Basic eDp5"}) as ws:
        assert await close_code(ws) == 4401
    async with raw(url, subprotocols=["realtime", "bearer.wrong"]) as ws:  # type: ignore[list-item]
        assert await close_code(ws) == 4401
    for first in ('{"op":"ping"}', '{"op":"subscribe","sub":"s","collection":"orders"}',
                  '{"op":"auth","token":"wrong"}', '{"op":"auth"}', "not json", "[]"):
        async with raw(url) as ws:
            await ws.send(first)
            assert await close_code(ws) == 4401, first
    async with raw(url) as ws:  # silent: closed after auth_timeout_seconds (0.5 s)
        assert await close_code(ws, timeout=5) == 4401
    async with httpx.AsyncClient(base_url=keyed.url) as http:
        metrics = (await http.get("/metrics")).text
    assert 'realtime_security_rejections_total{reason="unauthenticated"} 10.0' in metrics


async def test_subscription_scopes(keyed: LiveServer) -> None:
    async with raw(keyed.ws_url, additional_headers=bearer("k-orders")) as ws:
        c = WSClient(ws)
        c.welcome = await c.expect("welcome")
        await c.subscribe("ok", "orders")
        await c.send({"op": "subscribe", "sub": "no", "collection": "logs"})
        error = await c.expect("error")
        assert error["sub"] == "no"
        assert error["code"] == "forbidden"
        await c.send({"op": "subscribe", "sub": "no2", "collection": "logs", "snapshot": True})
        assert (await c.expect("error"))["code"] == "forbidden"
        # The connection stays usable.
        await c.send({"op": "ping", "ref": "x"})
        assert (await c.expect("pong"))["ref"] == "x"


async def test_none_mode_accepts_auth_message(live: LiveServer) -> None:
    async with raw(live.ws_url) as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        await ws.send('{"op":"auth","token":"anything"}')
        assert await recv_json(ws) == {"type": "authenticated"}


async def test_token_expiry_and_renewal(settings: Settings) -> None:
    jwt_mode = jwt_settings(settings, jwt_leeway_seconds=0)
    async with live_server(jwt_mode) as server:
        # Two sockets whose tokens expire in 2-4 s: one is left to expire, one renews.
        # Whole-second exp values (PyJWT compares whole seconds); the renewing
        # socket's token expires a second before the other's, so the other's 4401
        # tells that the renewing socket's old expiry has passed.
        expires = math.floor(time.time()) + 4
        expired = asyncio.Event()
        await asyncio.gather(_expires(server, expires, expired),
                             _renews(server, expires - 1, expired))
        # A bad token on an open socket: 4401.
        async with raw(server.ws_url, additional_headers=bearer(hs256({"scope": "read:*"}))) \
                as ws:
            assert (await recv_json(ws))["type"] == "welcome"
            await ws.send('{"op":"auth","token":"garbage"}')
            assert await close_code(ws) == 4401


async def _expires(server: LiveServer, expires: int, expired: asyncio.Event) -> None:
    token = hs256({"scope": "read:*", "tenant": "a", "exp": expires})
    async with raw(server.ws_url, additional_headers=bearer(token)) as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        assert await close_code(ws) == 4401  # expiry closes the socket
        expired.set()


async def _renews(server: LiveServer, expires: int, expired: asyncio.Event) -> None:
    token = hs256({"scope": "read:*", "tenant": "a", "exp": expires})
    async with raw(server.ws_url, additional_headers=bearer(token)) as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        await ws.send(orjson.dumps({"op": "subscribe", "sub": "o", "collection": "orders"}))
        assert (await recv_json(ws))["type"] == "subscribed"
        await ws.send(orjson.dumps({"op": "subscribe", "sub": "l", "collection": "logs"}))
        assert (await recv_json(ws))["type"] == "subscribed"
        fresh = hs256({"scope": "read:orders", "tenant": "a"})
        await ws.send(orjson.dumps({"op": "auth", "token": fresh}).decode())
        # Scopes narrowed: the logs subscription ends with "forbidden".
        error = await recv_json(ws)
        assert (error["type"], error["sub"], error["code"]) == ("error", "l", "forbidden")
        assert await recv_json(ws) == {"type": "authenticated"}
        async with asyncio.timeout(10):
            await expired.wait()  # past this socket's old expiry (by a second)
        await ws.send('{"op":"ping","ref":2}')
        assert await recv_json(ws) == {"type": "pong", "ref": 2}
        # Another tenant's token on the same socket: 4403.
        other = hs256({"scope": "read:*", "tenant": "b"})
        await ws.send(orjson.dumps({"op": "auth", "token": other}).decode())
        assert await close_code(ws) == 4403


# ------------------------------------------------------------------ origins, limits


async def test_origin_allow_list(settings: Settings) -> None:
    async with live_server(settings) as server:  # mode none: own loopback origin only
        own = f"http://127.0.0.1:{server.port}"
        async with raw(server.ws_url, origin=own) as ws:  # type: ignore[arg-type]
            assert (await recv_json(ws))["type"] == "welcome"
        for origin in ("https://evil.example", f"http://localhost:{server.port}",
                       f"http://127.0.0.1:{server.port + 1}", "null"):
            async with raw(server.ws_url, origin=origin) as ws:  # type: ignore[arg-type]
                assert await close_code(ws) == 1008, origin
        async with raw(server.ws_url) as ws:  # no Origin: not a browser
            assert (await recv_json(ws))["type"] == "welcome"
        async with httpx.AsyncClient(base_url=server.url) as http:
            metrics = (await http.get("/metrics")).text
        assert 'realtime_security_rejections_total{reason="origin"} 4.0' in metrics
    listed = derive(settings, allowed_origins=["https://app.example.com"])
    async with live_server(listed) as server:
        async with raw(server.ws_url, origin="https://app.example.com") as ws:  # type: ignore[arg-type]
            assert (await recv_json(ws))["type"] == "welcome"
        async with raw(server.ws_url, origin="https://app.example.com.evil") as ws:  # type: ignore[arg-type]
            assert await close_code(ws) == 1008


async def test_connections_per_client_address(settings: Settings) -> None:
    limited = apikey_settings(settings, KEYS, max_connections_per_client=2)
    async with live_server(limited) as server:
        headers = bearer("k-all")
        async with raw(server.ws_url, additional_headers=headers) as one:
            assert (await recv_json(one))["type"] == "welcome"
            async with raw(server.ws_url) as two:  # unauthenticated sockets count too
                async with raw(server.ws_url, additional_headers=headers) as three:
                    assert await close_code(three) == 1013
                await two.send('{"op":"auth","token":"k-all"}')
                assert (await recv_json(two))["type"] == "authenticated"
            # A slot is free again once a connection closes.
            limits = server.app.state.services.limits
            await until(lambda: limits.connections_of("127.0.0.1") <= 1, 10, "a free slot")
            async with raw(server.ws_url, additional_headers=headers) as again:
                assert (await recv_json(again))["type"] == "welcome"


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_tokens_are_never_logged(settings: Settings) -> None:
    root = logging.getLogger()
    collect = Collect()
    # Everything at DEBUG (another test's uvicorn.Config may have set "uvicorn.error").
    loggers = [root, *(logging.getLogger(name) for name in ("uvicorn", "uvicorn.error"))]
    levels = [(logger.level, logger.propagate) for logger in loggers]
    root.addHandler(collect)
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.propagate = True
    try:
        secret_key, jwt_token = await _authenticate_every_way(settings)
    finally:
        root.removeHandler(collect)
        for logger, (level, propagate) in zip(loggers, levels, strict=True):
            logger.setLevel(level)
            logger.propagate = propagate
    # The server's records (the test's own WebSocket client logs what it sends).
    records = [r for r in collect.records if not r.name.startswith("websockets.client")]
    assert any("authorization" in r.getMessage().lower() for r in records), \
        "no handshake header was logged at DEBUG: the test would prove nothing"
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in records)
    payload, signature = jwt_token.split(".")[1:]
    for secret in (secret_key[:12], payload[:12], payload[-12:], signature[:12],
                   signature[-12:]):
        assert secret not in text


async def _authenticate_every_way(settings: Settings) -> tuple[str, str]:
    """Use an API key and a JWT in every way, valid and not; return them."""
    secret_key = "k-secret-" + "q" * 20
    jwt_token = hs256({"scope": "read:*"}, secret="t" * 40)
    keys = {secret_key: {"scopes": ["admin"]}}
    mixed = derive(apikey_settings(settings, keys), auth="apikey+jwt", jwt_secret="t" * 40)
    async with live_server(mixed) as server:
        async with raw(server.ws_url, additional_headers=bearer(secret_key)) as ws:
            await recv_json(ws)
        async with raw(server.ws_url, additional_headers=bearer(secret_key + "x")) as ws:
            await close_code(ws)
        async with raw(server.ws_url) as ws:
            await ws.send(orjson.dumps({"op": "auth", "token": jwt_token}).decode())
            await recv_json(ws)
        async with raw(server.ws_url) as ws:
            await ws.send(orjson.dumps({"op": "auth", "token": jwt_token + "x"}).decode())
            await close_code(ws)
        async with raw(server.ws_url, subprotocols=["realtime", f"bearer.{jwt_token}"]) as ws:  # type: ignore[list-item]
            await recv_json(ws)
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.get("/api/collections", headers=bearer(secret_key))
                    ).status_code == 200
            assert (await http.get("/api/collections", headers=bearer(jwt_token + "x"))
                    ).status_code == 401
    return secret_key, jwt_token


# ------------------------------------------------------------ tenant isolation

TENANTS = ("a", "b")
POOL = ("x0", "x1", "x2", "x3")
RING = 48

ops = st.lists(
    st.tuples(
        st.sampled_from(TENANTS),
        st.sampled_from(("insert", "put", "patch", "delete", "bulk", "put_foreign")),
        st.sampled_from(POOL),
        st.integers(0, 9),
        st.sampled_from(POOL),
    ),
    min_size=1, max_size=12,
)


@dataclass
class Model:
    """What each tenant's documents are, and the events each should receive in order."""

    docs: dict[str, dict[str, int]] = field(default_factory=lambda: {t: {} for t in TENANTS})
    events: dict[str, list[tuple[str, str, int | None, int | None]]] = field(
        default_factory=lambda: {t: [] for t in TENANTS})

    def record(self, tenant: str, op: str, key: str, v: int | None) -> None:
        before = self.docs[tenant].get(key)
        self.events[tenant].append((op, key, before, v))
        if op == "delete":
            self.docs[tenant].pop(key, None)
        elif v is not None:
            self.docs[tenant][key] = v


def unfiltered(events: list[tuple[str, str, int | None, int | None]]) -> list[tuple[str, str]]:
    return [(op, key) for op, key, _, _ in events]


def filtered(events: list[tuple[str, str, int | None, int | None]],
             k: int) -> list[tuple[str, str]]:
    """Live-query semantics of ``{"v": {"$gte": k}}`` (pre-images are available)."""
    out = []
    for op, key, before, v in events:
        inside_before = before is not None and before >= k
        if op == "delete":
            if inside_before:
                out.append(("delete", key))
        elif v is not None and v >= k:
            out.append((op, key))
        elif op != "insert" and inside_before:
            out.append(("leave", key))
    return out


class Observer:
    """One tenant's connection: messages by subscription, read up to a marker."""

    def __init__(self, tenant: str, ws: ClientConnection) -> None:
        self.tenant = tenant
        self.ws = ws
        self.by_sub: dict[str, list[dict[str, Any]]] = {}
        self.heads: dict[str, str | None] = {}

    async def subscribe(self, sub: str, collection: str, **fields: Any) -> str | None:
        await self.ws.send(orjson.dumps({"op": "subscribe", "sub": sub,
                                         "collection": collection, **fields}).decode())
        self.by_sub[sub] = []
        while sub not in self.heads:
            await self._read_one()
        while fields.get("snapshot") and not self.by_sub[sub]:
            await self._read_one()  # the snapshot is read after "subscribed"
        return self.heads[sub]

    async def _read_one(self) -> None:
        message = await recv_json(self.ws)
        kind = message["type"]
        if kind == "subscribed":
            self.heads[message["sub"]] = message["head"]
        elif kind in ("snapshot", "change"):
            self.by_sub[message["sub"]].append(message)
        else:
            raise AssertionError(f"unexpected message for tenant {self.tenant}: {message}")

    async def until_marker(self, marker: str) -> None:
        """Read until every subscription has received the insert of ``marker``."""
        def done(sub: str) -> bool:
            return any(m.get("key") == marker and m.get("op") == "insert"
                       for m in self.by_sub[sub])
        while not all(done(s) for s in self.by_sub):
            await self._read_one()

    def changes(self, sub: str) -> list[tuple[str, str]]:
        return [(m["op"], m["key"]) for m in self.by_sub[sub] if m["type"] == "change"]


_examples = count()


async def apply(http: httpx.AsyncClient, model: Model, coll: str, tenant: str, kind: str,
                key: str, v: int, other: str) -> None:
    """Run one write as ``tenant`` and record in the model what it did."""
    headers = bearer(f"k-{tenant}")
    docs = DOCS.format(coll)
    if kind == "insert":
        r = await http.post(docs, json={"_id": key, "v": v}, headers=headers)
        assert r.status_code in (201, 409), r.text
        if r.status_code == 201:
            model.record(tenant, "insert", key, v)
    elif kind in ("put", "put_foreign"):
        body: dict[str, Any] = {"v": v}
        if kind == "put_foreign":  # tries to write the document as the other tenant
            body["tenant"] = "b" if tenant == "a" else "a"
        r = await http.put(f"{docs}/{key}", json=body, headers=headers)
        assert r.status_code in (200, 201, 403, 409), r.text
        if r.status_code in (200, 201):
            model.record(tenant, "insert" if r.status_code == 201 else "replace", key, v)
    elif kind == "patch":
        r = await http.patch(f"{docs}/{key}", json={"v": v}, headers=headers)
        assert r.status_code in (200, 404), r.text
        if r.status_code == 200 and model.docs[tenant][key] != v:
            model.record(tenant, "update", key, v)
    elif kind == "delete":
        r = await http.delete(f"{docs}/{key}", headers=headers)
        assert r.status_code in (204, 404), r.text
        if r.status_code == 204:
            model.record(tenant, "delete", key, None)
    else:  # bulk: two documents, stopping at the first failure
        items = [{"_id": key, "v": v}, {"_id": other, "v": v + 1}] if other != key \
            else [{"_id": key, "v": v}]
        r = await http.post(f"{docs}:bulk", json=items, headers=headers)
        assert r.status_code in (200, 207), r.text
        for item in r.json()["items"]:
            if item["status"] == 201:
                model.record(tenant, "insert", items[item["index"]]["_id"],
                             items[item["index"]]["v"])


@pytest.fixture
async def tenants(settings: Settings) -> AsyncIterator[LiveServer]:
    async with live_server(apikey_settings(settings, KEYS, ring_size=RING)) as server:
        yield server


async def sync(http: httpx.AsyncClient, model: Model, coll: str,
               observers: dict[str, Observer], phase: str) -> None:
    """Each tenant writes a marker and waits for it on every subscription.

    One change stream delivers in commit order, so afterwards the hub has
    published every earlier write: a ``head`` taken now is exact.
    """
    for tenant, obs in observers.items():
        marker = f"~{tenant}{phase}"
        r = await http.post(DOCS.format(coll), json={"_id": marker, "v": 100},
                            headers=bearer(f"k-{tenant}"))
        assert r.status_code == 201, r.text
        model.record(tenant, "insert", marker, 100)
        await obs.until_marker(marker)


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None, phases=PHASES,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(first=ops, second=ops, k=st.integers(0, 9))
async def test_tenant_isolation_property(tenants: LiveServer,
                                         first: list[tuple[str, str, str, int, str]],
                                         second: list[tuple[str, str, str, int, str]],
                                         k: int) -> None:
    coll = f"iso{next(_examples)}"
    hub = tenants.app.state.services.hub
    model = Model()
    async with httpx.AsyncClient(base_url=tenants.url, timeout=10) as http:
        observers: dict[str, Observer] = {}
        async with raw(tenants.ws_url, additional_headers=bearer("k-a")) as wa, \
                raw(tenants.ws_url, additional_headers=bearer("k-b")) as wb:
            for tenant, ws in (("a", wa), ("b", wb)):
                assert (await recv_json(ws))["type"] == "welcome"
                obs = observers[tenant] = Observer(tenant, ws)
                await obs.subscribe("all", coll)
                await obs.subscribe("range", coll, filter={"v": {"$gte": k}})
                other = "b" if tenant == "a" else "a"
                await obs.subscribe("escape", coll, filter={
                    "$or": [{"tenant": other}, {"v": {"$gte": -1}}]})
            head0 = observers["a"].heads["all"]
            for op in first:
                await apply(http, model, coll, *op)
            await sync(http, model, coll, observers, "1")
            mid = {t: len(model.events[t]) for t in TENANTS}
            snapshot_docs = {t: dict(model.docs[t]) for t in TENANTS}
            for tenant in TENANTS:
                await observers[tenant].subscribe("snap", coll, snapshot=True)
            head_mid = observers["a"].heads["snap"]
            for op in second:
                await apply(http, model, coll, *op)
            await sync(http, model, coll, observers, "2")
            # Ring replay from the middle (every event since is still in the ring).
            assert head_mid is not None
            assert hub.can_replay(head_mid)
            for tenant in TENANTS:
                await observers[tenant].subscribe("ring", coll, since=head_mid)
            # Push the start out of the ring: tenant b writes RING + 1 documents.
            filler = [{"_id": f"f{i}", "v": 0} for i in range(RING + 1)]
            r = await http.post(f"{DOCS.format(coll)}:bulk", json=filler, headers=bearer("k-b"))
            assert r.status_code == 200, r.text
            for item in filler:
                model.record("b", "insert", str(item["_id"]), 0)
            await sync(http, model, coll, observers, "3")
            assert head0 is not None
            assert not hub.can_replay(head0), "the since-start subscriptions must catch up"
            for tenant in TENANTS:
                await observers[tenant].subscribe("catchup", coll, since=head0)
            await sync(http, model, coll, observers, "4")

        for tenant, obs in observers.items():
            events = model.events[tenant]
            every = unfiltered(events)
            # Every message carries only this tenant's documents.
            for sub, messages in obs.by_sub.items():
                for m in messages:
                    for doc in m.get("documents") or [m.get("document")]:
                        if doc is not None:
                            assert doc["tenant"] == tenant, (tenant, sub, m)
            assert obs.changes("all") == every
            assert obs.changes("escape") == every
            assert obs.changes("range") == filtered(events, k)
            assert obs.changes("ring") == every[mid[tenant]:]
            assert obs.changes("catchup") == every
            snap = obs.by_sub["snap"][0]
            assert snap["type"] == "snapshot"
            assert {d["_id"]: d["v"] for d in snap["documents"]} == snapshot_docs[tenant]
            assert obs.changes("snap") == every[mid[tenant]:]
            # Queries: the list and every id of the pool.
            r = await http.get(DOCS.format(coll), params={"limit": 1000},
                               headers=bearer(f"k-{tenant}"))
            listed = {d["_id"]: d["v"] for d in r.json()["documents"]}
            assert listed == model.docs[tenant]
            for key in POOL:
                g = await http.get(f"{DOCS.format(coll)}/{key}", headers=bearer(f"k-{tenant}"))
                assert g.status_code == (200 if key in model.docs[tenant] else 404)


async def test_forwarded_for_from_a_trusted_proxy_names_the_client(settings: Settings) -> None:
    """Behind a trusted proxy (loopback, uvicorn's default), ``X-Forwarded-For`` is the
    client: per-address limits count the forwarded address."""
    limited = apikey_settings(settings, KEYS, max_connections_per_client=1)
    async with live_server(limited) as server:
        limits = server.app.state.services.limits

        def via(address: str) -> dict[str, str]:
            return {**bearer("k-all"), "X-Forwarded-For": address}

        async with raw(server.ws_url, additional_headers=via("203.0.113.7")) as one:
            assert (await recv_json(one))["type"] == "welcome"
            assert limits.connections_of("203.0.113.7") == 1
            assert limits.connections_of("127.0.0.1") == 0
            # Another forwarded client has its own slot; the same one is over its limit.
            async with raw(server.ws_url, additional_headers=via("203.0.113.8")) as two:
                assert (await recv_json(two))["type"] == "welcome"
            async with raw(server.ws_url, additional_headers=via("203.0.113.7")) as three:
                assert await close_code(three) == 1013

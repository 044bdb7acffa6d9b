"""WebSocket protocol v1 against a real uvicorn server and a real database."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from realtime.config import Settings
from tests.helpers import LiveServer, RawClient, WSClient, live_server, until, ws_client

DOCS = "/api/collections/{}/documents"


async def post(http: httpx.AsyncClient, coll: str, doc: dict[str, Any]) -> dict[str, Any]:
    r = await http.post(DOCS.format(coll), json=doc)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def patch(http: httpx.AsyncClient, coll: str, key: Any, doc: dict[str, Any]) -> None:
    r = await http.patch(f"{DOCS.format(coll)}/{key}", json=doc)
    assert r.status_code == 200, r.text


async def delete(http: httpx.AsyncClient, coll: str, key: Any) -> None:
    r = await http.delete(f"{DOCS.format(coll)}/{key}")
    assert r.status_code == 204, r.text


async def test_welcome_ping_and_insert(live: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(live.ws_url) as c:
        assert c.welcome["protocol"] == 1
        assert c.welcome["server"].startswith("realtime/")
        await c.send({"op": "ping", "ref": "7"})
        assert await c.expect("pong") == {"type": "pong", "ref": "7"}
        sub = await c.subscribe("s1", "orders")
        assert sub["sub"] == "s1"
        assert isinstance(sub["head"], str)
        doc = await post(http, "orders", {"_id": "o1", "status": "open", "n": 1})
        change = await c.expect("change")
        assert change["sub"] == "s1"
        assert change["op"] == "insert"
        assert change["collection"] == "orders"
        assert change["key"] == "o1"
        assert change["document"] == doc
        assert change["ts"].endswith("Z")
        assert isinstance(change["id"], str)


async def test_live_query_membership(live: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(live.ws_url) as c:
        await c.subscribe("open", "orders", filter={"status": "open"})
        await post(http, "orders", {"_id": "a", "status": "open"})
        await post(http, "orders", {"_id": "b", "status": "closed"})  # never seen
        await patch(http, "orders", "a", {"status": "closed"})  # leaves
        await patch(http, "orders", "b", {"note": "x"})  # outside, stays outside
        await patch(http, "orders", "b", {"status": "open"})  # enters
        await patch(http, "orders", "b", {"note": "y"})  # changes inside
        await delete(http, "orders", "a")  # was outside: not seen
        await delete(http, "orders", "b")  # was inside: delete
        got = await c.drain_until_marker(http)
        assert [(m["op"], m["key"]) for m in got] == [
            ("insert", "a"), ("leave", "a"), ("update", "b"), ("update", "b"), ("delete", "b"),
        ]
        leave = got[1]
        assert "document" not in leave
        assert got[2]["document"]["status"] == "open"
        assert got[2]["updated"] == {"status": "open", "_version": 3}
        assert got[3]["document"]["note"] == "y"


async def test_replace_and_collections_do_not_cross(live: LiveServer,
                                                    http: httpx.AsyncClient) -> None:
    async with ws_client(live.ws_url) as c:
        await c.subscribe("o", "orders")
        await c.subscribe("u", "users", filter={"age": {"$gte": 18}})
        await post(http, "users", {"_id": "kid", "age": 9})
        await post(http, "orders", {"_id": "1", "x": 1})
        r = await http.put(f"{DOCS.format('users')}/kid", json={"age": 19})
        assert r.status_code == 200, r.text
        await post(http, "products", {"_id": "p"})
        got = await c.drain_until_marker(http)
        assert [(m["sub"], m["op"], m["collection"], m["key"]) for m in got] == [
            ("o", "insert", "orders", "1"), ("u", "replace", "users", "kid"),
        ]


async def test_unsubscribe(live: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(live.ws_url) as c:
        await c.subscribe("s", "orders")
        await c.send({"op": "unsubscribe", "sub": "s"})
        await c.send({"op": "unsubscribe", "sub": "s"})
        err = await c.expect("error")
        assert err["code"] == "unknown_sub"
        await post(http, "orders", {"x": 1})
        assert await c.drain_until_marker(http) == []
    await _no_subscriptions(live)


async def _no_subscriptions(live: LiveServer) -> None:
    hub = live.app.state.services.hub
    await until(lambda: not hub.subscription_count() and not hub.connections, 5,
                "every subscription and connection gone")


async def test_snapshot_then_live(live: LiveServer, http: httpx.AsyncClient) -> None:
    for i in range(5):
        await post(http, "items", {"_id": f"i{i}", "n": i})
    async with ws_client(live.ws_url) as c:
        subscribed = await c.subscribe("s", "items", filter={"n": {"$gte": 2}}, snapshot=True)
        snap = await c.expect("snapshot")
        assert snap["head"] == subscribed["head"]
        assert [d["_id"] for d in snap["documents"]] == ["i2", "i3", "i4"]
        await post(http, "items", {"_id": "i9", "n": 9})
        change = await c.expect("change")
        assert (change["op"], change["key"]) == ("insert", "i9")


async def test_snapshot_races_writes(live: LiveServer, http: httpx.AsyncClient) -> None:
    """A client subscribing while a writer works ends with the database's state."""
    stop = asyncio.Event()
    writing = asyncio.Event()

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            key = f"k{i % 40}"
            if i < 40:
                await post(http, "race", {"_id": key, "n": i, "open": i % 3 != 0})
            elif i % 7 == 0:
                await delete(http, "race", key)
                await post(http, "race", {"_id": key, "n": i, "open": True})
            else:
                await patch(http, "race", key, {"n": i, "open": i % 3 != 0})
            writing.set()
            i += 1

    task = asyncio.create_task(writer())
    try:
        async with asyncio.timeout(10):
            await writing.wait()  # subscribe while the writer is at work
        states: list[dict[Any, Any]] = []
        clients = []
        for n in range(3):
            cm = ws_client(live.ws_url)
            c = await cm.__aenter__()
            clients.append((cm, c))
            await c.subscribe("s", "race", filter={"open": True}, snapshot=True)
            del n
        # let writes race the snapshots for a while
        for _ in range(60):
            await post(http, "noise", {"x": 1})
    finally:
        stop.set()
        await task
    for cm, c in clients:
        state: dict[Any, Any] = {}
        snapshot_seen = False
        for m in await c.drain_until_marker(http):
            if m["type"] == "snapshot":
                snapshot_seen = True
                state = {d["_id"]: d for d in m["documents"]}
            elif m["type"] == "change":
                assert snapshot_seen, "change before snapshot"
                if m["op"] in ("insert", "update", "replace"):
                    old = state.get(m["key"])
                    assert old is None or old["_version"] < m["document"]["_version"], \
                        "duplicate delivery"
                    state[m["key"]] = m["document"]
                else:
                    state.pop(m["key"], None)
        states.append(state)
        await cm.__aexit__(None, None, None)
    r = await http.get(DOCS.format("race"), params={"filter": '{"open": true}', "limit": 1000})
    expected = {d["_id"]: d for d in r.json()["documents"]}
    for state in states:
        assert state == expected


async def test_since_replays_from_ring(live: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(live.ws_url) as c:
        await c.subscribe("s", "log", filter={"keep": True})
        await post(http, "log", {"_id": "1", "keep": True})
        first = await c.expect("change")
    for i in range(2, 8):
        await post(http, "log", {"_id": str(i), "keep": i % 2 == 0})
    async with ws_client(live.ws_url) as c:
        await c.subscribe("s", "log", filter={"keep": True}, since=first["id"])
        got = await c.drain_until_marker(http)
        assert [m["key"] for m in got] == ["2", "4", "6"]
        # resuming from the last one gives nothing again
    async with ws_client(live.ws_url) as c:
        await c.subscribe("s", "log", filter={"keep": True}, since=got[-1]["id"])
        assert await c.drain_until_marker(http) == []


async def test_since_from_head_without_events(live: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(live.ws_url) as c:
        head = (await c.subscribe("s", "quiet"))["head"]
    await post(http, "quiet", {"_id": "q"})
    async with ws_client(live.ws_url) as c:
        await c.subscribe("s", "quiet", since=head)
        got = await c.drain_until_marker(http)
        assert [m["key"] for m in got] == ["q"]


async def test_unknown_since_gets_resync(live: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(live.ws_url) as c:
        await c.subscribe("s", "log", since="82" + "0" * 40)
        resync = await c.expect("resync")
        assert resync == {"type": "resync", "sub": "s", "reason": "history_lost"}
        await post(http, "log", {"_id": "after"})
        change = await c.expect("change")
        assert change["key"] == "after"


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("not json", "bad_json"),
        ("[1,2]", "bad_message"),
        ('{"op":"nope"}', "unknown_op"),
        ('{"op":"subscribe","sub":"a","collection":"x","filter":{"$where":"1"}}', "bad_filter"),
        ('{"op":"subscribe","sub":"a","collection":"x","filter":{"a":{"$regex":"."}}}',
         "bad_filter"),
        ('{"op":"subscribe","sub":"a","collection":"system.users"}', "bad_collection"),
        ('{"op":"subscribe","sub":"a","collection":"x","since":"zz"}', "bad_since"),
        ('{"op":"subscribe","sub":"a"}', "bad_message"),
    ],
)
async def test_bad_messages_get_errors(live: LiveServer, http: httpx.AsyncClient,
                                       message: str, code: str) -> None:
    async with ws_client(live.ws_url) as c:
        await c.send(message)
        err = await c.expect("error")
        assert err["code"] == code
        assert err["message"]
        # the connection keeps working
        await c.subscribe("ok", "orders")
        await post(http, "orders", {"_id": "still"})
        assert (await c.expect("change"))["key"] == "still"


async def test_duplicate_and_too_many_subscriptions(settings: Settings) -> None:
    limited = settings.model_copy(update={"max_subscriptions": 3})
    async with live_server(limited) as live, ws_client(live.ws_url) as c:
        await c.subscribe("a", "x")
        await c.send({"op": "subscribe", "sub": "a", "collection": "y"})
        assert (await c.expect("error"))["code"] == "duplicate_sub"
        await c.subscribe("b", "x")
        await c.subscribe("c", "x")
        await c.send({"op": "subscribe", "sub": "d", "collection": "x"})
        err = await c.expect("error")
        assert (err["code"], err["sub"]) == ("too_many_subs", "d")
        await c.send({"op": "ping"})
        await c.expect("pong")


async def test_oversize_frame_closes_1009(live: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(live.ws_url) as c:
        await c.send("x" * (64 * 1024 + 1))
        with pytest.raises(ConnectionClosed) as info:
            await c.recv()
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1009
    # the server keeps serving
    async with ws_client(live.ws_url) as c:
        await c.subscribe("s", "orders")
        await post(http, "orders", {"_id": "after-big"})
        assert (await c.expect("change"))["key"] == "after-big"


async def test_slow_consumer_is_closed_4408(settings: Settings) -> None:
    """A client that stops reading is closed with 4408; the others keep their pace."""
    small = settings.model_copy(update={"send_backlog": 50})
    async with live_server(small) as live, httpx.AsyncClient(base_url=live.url) as http:
        hub = live.app.state.services.hub
        slow = RawClient("127.0.0.1", live.port)
        await slow.connect()
        try:
            await slow.send_text('{"op":"subscribe","sub":"s","collection":"flood"}')
            async with ws_client(live.ws_url) as fast:
                await fast.subscribe("s", "flood")
                payload = "x" * 30_000
                sent = 0
                for i in range(1000):  # ~30 MB at most; kernel buffers hold a few MB
                    await post(http, "flood", {"_id": str(i), "p": payload})
                    change = await fast.expect("change")
                    assert change["key"] == str(i)  # the fast client keeps its pace
                    sent += 1
                    if hub.slow_consumers:
                        break
                assert hub.slow_consumers == 1, f"slow consumer not closed after {sent} events"
                # memory stayed bounded: no connection owes more than the backlog bound
                assert all(c.backlog <= small.send_backlog for c in hub.connections)
                code, frames = await slow.read_until_closed()
                assert code == 4408
                assert 0 < frames < sent + 3  # it got a prefix, then the close
                # its full backlog was dropped, and counted (realtime_messages_dropped_total)
                await until(lambda: len(hub.connections) == 1, 10, "slow connection detached")
                assert hub.dropped >= small.send_backlog
                # the fast client still gets everything
                await post(http, "flood", {"_id": "last"})
                assert (await fast.expect("change"))["key"] == "last"
        finally:
            slow.close()


async def test_no_leaks_after_disconnect(live: LiveServer, http: httpx.AsyncClient) -> None:
    clients: list[WSClient] = []
    managers = []
    for i in range(20):
        cm = ws_client(live.ws_url)
        c = await cm.__aenter__()
        managers.append(cm)
        clients.append(c)
        await c.subscribe("s", "leak", filter={"i": i % 3}, snapshot=i % 2 == 0)
        if i % 2 == 0:
            await c.expect("snapshot")
    await post(http, "leak", {"i": 0})
    for cm in managers:
        await cm.__aexit__(None, None, None)
    await _no_subscriptions(live)
    tasks = [t for t in asyncio.all_tasks() if "drain" in repr(t.get_coro())]
    assert tasks == []

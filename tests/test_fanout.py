"""Fan-out correctness: many clients with mixed filters receive exactly their stream.

The expected stream of every client is computed independently from the write
log (a model of the documents and plain Python predicates for the filters).
The server runs as a subprocess so it and the clients use both cores.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from realtime.embedded import EmbeddedServer
from tests.helpers import WSClient, server_process, ws_client

Doc = dict[str, Any]

FILTERS: list[tuple[dict[str, Any], Callable[[Doc], bool]]] = [
    ({}, lambda d: True),
    ({"status": "open"}, lambda d: d.get("status") == "open"),
    ({"n": {"$gte": 50}}, lambda d: isinstance(d.get("n"), int) and d["n"] >= 50),
    ({"$or": [{"tag": "a"}, {"n": {"$lt": 10}}]},
     lambda d: d.get("tag") == "a" or (isinstance(d.get("n"), int) and d["n"] < 10)),
    ({"status": {"$in": ["open", "hold"]}, "n": {"$lt": 80}},
     lambda d: d.get("status") in ("open", "hold")
     and isinstance(d.get("n"), int) and d["n"] < 80),
]
COLLECTIONS = ["fa", "fb", "fc"]
WRITERS = 4


def random_body(rng: random.Random) -> Doc:
    body: Doc = {"n": rng.randrange(100), "status": rng.choice(["open", "closed", "hold"])}
    if rng.random() < 0.5:
        body["tag"] = rng.choice(["a", "b"])
    return body


async def run_fanout(mongo: EmbeddedServer, clients: int, writes: int, seed: int) -> None:
    env = {"REALTIME_MONGODB_URI": mongo.uri, "REALTIME_DATABASE": f"f_{uuid.uuid4().hex[:10]}",
           "REALTIME_SEND_BACKLOG": "100000"}
    async with server_process(env) as server, AsyncExitStack() as stack, \
            httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        plan = [(COLLECTIONS[i % 3], i % len(FILTERS)) for i in range(clients)]
        conns: list[WSClient] = []
        for coll, f in plan:
            c = await stack.enter_async_context(ws_client(server.ws_url, max_queue=None))
            await c.subscribe("s", coll, filter=FILTERS[f][0])
            await c.subscribe("__marker__", "markers")
            c.marker_ready = True
            conns.append(c)

        state: dict[tuple[str, str], Doc] = {}
        log: list[tuple[str, str, str, Doc | None, Doc | None]] = []

        async def writer(w: int, count: int) -> None:
            """Writes to its own keys, so each document's history is one sequence."""
            wrng = random.Random(seed * 100 + w)
            for _ in range(count):
                coll = wrng.choice(COLLECTIONS)
                key = f"{w}-{wrng.randrange(15)}"
                url = f"/api/collections/{coll}/documents"
                before = state.get((coll, key))
                if before is None:
                    r = await http.post(url, json={"_id": key, **random_body(wrng)})
                    assert r.status_code == 201, r.text
                    op = "insert"
                else:
                    choice = wrng.random()
                    if choice < 0.5:
                        patch = {k: v for k, v in random_body(wrng).items()
                                 if wrng.random() < 0.6}
                        if wrng.random() < 0.3:
                            patch["tag"] = None
                        r = await http.patch(f"{url}/{key}", json=patch)
                        assert r.status_code == 200, r.text
                        op = "update"
                    elif choice < 0.8:
                        r = await http.put(f"{url}/{key}", json=random_body(wrng))
                        assert r.status_code == 200, r.text
                        op = "replace"
                    else:
                        r = await http.delete(f"{url}/{key}")
                        assert r.status_code == 204, r.text
                        op = "delete"
                after = None if op == "delete" else r.json()
                if after is None:
                    state.pop((coll, key), None)
                else:
                    state[(coll, key)] = after
                if before is not None and after is not None and \
                        after["_version"] == before["_version"]:
                    continue  # a patch that changes nothing writes nothing: no event
                log.append((op, coll, key, before, after))

        await asyncio.gather(*(writer(w, writes // WRITERS) for w in range(WRITERS)))

        def expected(coll: str, pred: Callable[[Doc], bool]) -> list[tuple[str, str, Any]]:
            out = []
            for op, c, key, before, after in log:
                if c != coll:
                    continue
                was = before is not None and pred(before)
                now = after is not None and pred(after)
                if op == "delete":
                    if was:
                        out.append(("delete", key, None))
                elif now:
                    assert after is not None
                    out.append((op, key, after))
                elif was:
                    out.append(("leave", key, None))
            return out

        got_all = await asyncio.gather(*(c.drain_until_marker(http, timeout=60) for c in conns))
        for (coll, f), got in zip(plan, got_all, strict=True):
            assert all(m["type"] == "change" for m in got), got[:3]
            assert all(m["collection"] == coll for m in got)
            actual = [(m["op"], m["key"], m.get("document")) for m in got]
            want = expected(coll, FILTERS[f][1])
            # Writers interleave; each document's events keep their order.
            assert sorted(actual, key=lambda e: e[1]) == sorted(want, key=lambda e: e[1]), \
                (coll, FILTERS[f][0])


@pytest.mark.timeout(600)
async def test_fanout_200_clients_2000_writes(mongo: EmbeddedServer) -> None:
    await run_fanout(mongo, clients=200, writes=2000, seed=7)

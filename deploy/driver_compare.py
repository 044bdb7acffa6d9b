"""Compare the two drivers behind realtime.db: Motor and PyMongo's async API.

    .venv/bin/python deploy/driver_compare.py [--rounds 3] [--json out.json]

Each run gets a fresh SecantusDB (``:memory:``, no sync-on-commit); rounds
alternate between the drivers:

- seam: ``Collection.insert_one`` throughput, one at a time and 16 concurrent, and
  insert → change-stream event latency (``Database.watch`` in the same process);
- server: a real ``realtime serve`` subprocess: REST ``POST`` throughput with 16
  concurrent clients, and REST write → WebSocket ``change`` latency at ~100
  writes/s for one subscriber.

Prints a Markdown table (medians over the rounds). Loopback only; bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson
from websockets.asyncio.client import connect

from realtime.config import Settings
from realtime.db import Database
from realtime.embedded import EmbeddedServer, free_port

Driver = Literal["motor", "pymongo"]
DRIVERS: tuple[Driver, ...] = ("motor", "pymongo")


class CompareError(RuntimeError):
    """A run did not behave (wrong event, failed write)."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise CompareError(what)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def seam(uri: str, driver: Driver, n: int) -> dict[str, float]:
    """insert_one rates and insert → event latency through realtime.db only."""
    settings = Settings(mongodb_uri=uri, driver=driver, database=f"c_{uuid.uuid4().hex[:8]}")
    db = Database(settings, uri)
    try:
        coll = db.collection("bench")
        await db.prepare_collection("bench")
        start = time.perf_counter()
        for i in range(n):
            await coll.insert_one({"i": i})
        sequential = n / (time.perf_counter() - start)
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem:
                await coll.insert_one({"c": i})
        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        concurrent = n / (time.perf_counter() - start)

        stream = await db.watch([{"$match": {"ns.coll": "lat"}}], max_await_time_ms=50)
        lat: list[float] = []
        try:
            for i in range(200):
                sent = time.perf_counter()
                await db.collection("lat").insert_one({"i": i})
                while (event := await stream.try_next()) is None:
                    pass
                check(event["fullDocument"]["i"] == i, f"event {event}")
                lat.append((time.perf_counter() - sent) * 1000)
        finally:
            await stream.close()
    finally:
        await db.close()
    return {"insert_seq": sequential, "insert_c16": concurrent,
            "event_p50": pct(lat, 0.5), "event_p99": pct(lat, 0.99)}


async def server(uri: str, driver: Driver, n: int) -> dict[str, float]:
    """REST insert rate and REST write → WebSocket change latency on a real server."""
    port = free_port()
    env = {**os.environ, "REALTIME_MONGODB_URI": uri, "REALTIME_DRIVER": driver,
           "REALTIME_PORT": str(port), "REALTIME_DATABASE": f"s_{uuid.uuid4().hex[:8]}"}
    proc = subprocess.Popen(  # noqa: ASYNC220 - a server for the whole run
        [sys.executable, "-m", "realtime", "serve", "--log-level", "warning"],
        env=env, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10,
                                     limits=httpx.Limits(max_connections=16)) as http:
            async with asyncio.timeout(30):
                while True:
                    try:
                        if (await http.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
            path = "/api/collections/bench/documents"
            sem = asyncio.Semaphore(16)

            async def post(i: int) -> None:
                async with sem:
                    try:
                        r = await http.post(path, json={"i": i})
                    except (httpx.ReadError, httpx.RemoteProtocolError):
                        # A pooled keep-alive connection the server closed meanwhile.
                        r = await http.post(path, json={"i": i})
                    check(r.status_code == 201, r.text)
            start = time.perf_counter()
            await asyncio.gather(*(post(i) for i in range(n)))
            rest_rate = n / (time.perf_counter() - start)

            lat: list[float] = []
            async with connect(f"ws://127.0.0.1:{port}/ws", ping_interval=None) as ws:
                await ws.recv()  # welcome
                await ws.send(orjson.dumps({"op": "subscribe", "sub": "s",
                                            "collection": "lat"}).decode())
                await ws.recv()  # subscribed
                for i in range(300):
                    tick = time.perf_counter()
                    r = await http.post("/api/collections/lat/documents", json={"i": i})
                    check(r.status_code == 201, r.text)
                    message = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                    check(message["type"] == "change", str(message))
                    lat.append((time.perf_counter() - tick) * 1000)
                    await asyncio.sleep(max(0.0, 0.01 - (time.perf_counter() - tick)))
    finally:
        proc.terminate()
        proc.wait(15)
    return {"rest_c16": rest_rate, "ws_p50": pct(lat, 0.5), "ws_p99": pct(lat, 0.99)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-n", type=int, default=2000, help="inserts per throughput run")
    parser.add_argument("--json", help="write the raw results here")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {d: [] for d in DRIVERS}
    for r in range(args.rounds):
        for driver in DRIVERS if r % 2 == 0 else tuple(reversed(DRIVERS)):
            mongo = EmbeddedServer(":memory:", sync_on_commit=False)
            mongo.start()
            try:
                row = await seam(mongo.uri, driver, args.n)
                row |= await server(mongo.uri, driver, args.n)
            finally:
                mongo.stop()
            results[driver].append(row)
            print(f"round {r + 1} {driver}: " + ", ".join(f"{k} {v:,.1f}"
                                                          for k, v in row.items()),
                  file=sys.stderr)
    medians: dict[str, dict[str, Any]] = {
        d: {k: statistics.median(row[k] for row in rows) for k in rows[0]}
        for d, rows in results.items()}
    print("| driver | insert_one/s (1 at a time) | insert_one/s (16 concurrent) "
          "| insert → event p50 / p99 ms | REST POST/s (16 clients) "
          "| REST → WS change p50 / p99 ms |")
    print("|---|---|---|---|---|---|")
    for d, m in medians.items():
        print(f"| {d} | {m['insert_seq']:,.0f} | {m['insert_c16']:,.0f} "
              f"| {m['event_p50']:.2f} / {m['event_p99']:.2f} | {m['rest_c16']:,.0f} "
              f"| {m['ws_p50']:.2f} / {m['ws_p99']:.2f} |")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(  # noqa: ASYNC240 - after the runs
            {"rounds": results, "medians": medians}, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    asyncio.run(main())

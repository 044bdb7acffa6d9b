"""A fast WebSocket load client (picows): many connections, counts every frame.

Run by the bench harness (``python -m bench``) as a separate process (several
for large runs), never by hand; it talks to the runner with JSON lines on stdin/stdout:

- the first stdin line is the configuration: ``url`` (a loopback ``ws://`` URL,
  or a list of URLs, one per connection), ``subscribe`` (one list of text frames
  per connection, sent after connecting; the connection is ready when it has
  received one ``{"type":"subscribed"`` frame per message), ``sample`` (the
  indexes of the connections whose change frames are parsed for latency; every
  other frame is only counted), ``concurrency`` (connections opened at once);
- then commands, one per line, each answered by one line: ``connect``,
  ``reset`` (zero the counters and the CPU clock), ``wait`` (until ``total``
  change frames arrived, or ``timeout`` seconds), ``report`` (counts, latency
  samples, CPU seconds, a 100 ms timeline of the frames received) and ``close``.

A frame counts as a delivery when its payload starts with ``{"type":"change"``
or ``{"type":"aggregate"`` (a live aggregate's sampled frames give one latency
sample per group: its ``max`` of ``seq`` and ``t``, the latest write in it).
Only the sampled connections' frames are decoded (orjson), at report time, so
the per-frame cost is a prefix check and a counter: the client stays far from
saturation where the servers under test saturate. Its CPU use is reported so
the runner can say when it did not.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
import time
from typing import Any

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

CHANGE = b'{"type":"change"'
AGGREGATE = b'{"type":"aggregate"'
SUBSCRIBED = b'{"type":"subscribed"'
TIMELINE_STEP = 0.1


class Stats:
    """Counters shared by every connection of this process."""

    def __init__(self) -> None:
        self.total = 0
        #: Bytes of the counted frames' payloads.
        self.bytes = 0
        self.reads = 0
        self.first_ns = 0
        self.last_ns = 0
        self.samples: list[tuple[int, bytes]] = []
        self.other: dict[str, int] = {}
        self.closes: dict[int, int] = {}
        self.disconnected = 0


class Listener(WSListener):
    """One connection: counts change frames, keeps sampled ones for latency."""

    def __init__(self, stats: Stats, messages: list[str], sampled: bool) -> None:
        super().__init__()
        self.stats = stats
        self.messages = messages
        self.sampled = sampled
        self.count = 0
        self.pending = len(messages)
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: WSTransport | None = None
        if not messages:
            self.ready.set_result(None)

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        for message in self.messages:
            transport.send(WSMsgType.TEXT, message.encode())

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not WSMsgType.TEXT:
            if frame.msg_type is WSMsgType.CLOSE:
                code = frame.get_close_code().value
                self.stats.closes[code] = self.stats.closes.get(code, 0) + 1
            return
        payload = frame.get_payload_as_bytes()
        if payload.startswith(CHANGE) or payload.startswith(AGGREGATE):
            stats = self.stats
            self.count += 1
            stats.total += 1
            stats.bytes += len(payload)
            now = time.monotonic_ns()
            stats.last_ns = now
            if frame.last_in_buffer:
                stats.reads += 1
            if not stats.first_ns:
                stats.first_ns = now
            if self.sampled:
                stats.samples.append((now, payload))
            return
        if payload.startswith(SUBSCRIBED):
            self.pending -= 1
            if self.pending == 0 and not self.ready.done():
                self.ready.set_result(None)
            return
        kind = payload[:24].decode(errors="replace")
        self.stats.other[kind] = self.stats.other.get(kind, 0) + 1

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.stats.disconnected += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("disconnected before subscribed"))


class LoadClient:
    """The connections of one load process and the commands that drive them."""

    def __init__(self, config: dict[str, Any]) -> None:
        urls = config["url"]
        subscribe: list[list[str]] = config["subscribe"]
        self.urls: list[str] = urls if isinstance(urls, list) else [urls] * len(subscribe)
        self.subscribe = subscribe
        self.sample = set(config.get("sample", ()))
        self.concurrency = int(config.get("concurrency", 200))
        self.stats = Stats()
        #: By connection index (None until connected).
        self.slots: list[Listener | None] = [None] * len(subscribe)
        self.cpu0 = time.process_time()
        self.wall0 = time.monotonic()
        self.timeline: list[int] = []
        self._ticker: asyncio.Task[None] | None = None

    async def connect(self) -> dict[str, Any]:
        """Open every connection and wait until each is subscribed."""
        started = time.monotonic()
        slots = asyncio.Semaphore(self.concurrency)
        failures: list[str] = []

        async def one(index: int) -> None:
            async with slots:
                messages = self.subscribe[index]
                try:
                    _, connected = await ws_connect(
                        lambda: Listener(self.stats, messages, index in self.sample),
                        self.urls[index], websocket_handshake_timeout=30,
                        max_frame_size=16 * 1024 * 1024)
                    assert isinstance(connected, Listener)
                    listener = self.slots[index] = connected
                    await asyncio.wait_for(listener.ready, 60)
                except Exception as exc:  # reported to the runner, which fails the run
                    failures.append(f"{type(exc).__name__}: {exc}")

        await asyncio.gather(*(one(i) for i in range(len(self.subscribe))))
        self._ticker = asyncio.get_running_loop().create_task(self._tick())
        return {"event": "ready", "connections": len(self.listeners),
                "failed": len(failures), "errors": failures[:5],
                "seconds": time.monotonic() - started}

    @property
    def listeners(self) -> list[Listener]:
        """The connections made, in index order."""
        return [listener for listener in self.slots if listener is not None]

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TIMELINE_STEP)
            self.timeline.append(self.stats.total)

    def reset(self) -> dict[str, Any]:
        """Zero every counter and restart the CPU clock."""
        stats = self.stats
        stats.total = stats.bytes = stats.reads = stats.first_ns = stats.last_ns = 0
        stats.samples = []
        stats.other = {}
        for listener in self.listeners:
            listener.count = 0
        self.timeline = []
        self.cpu0 = time.process_time()
        self.wall0 = time.monotonic()
        return {"event": "reset"}

    async def wait(self, total: int, timeout: float) -> dict[str, Any]:
        """Wait until ``total`` change frames arrived (or ``timeout`` seconds passed)."""
        deadline = time.monotonic() + timeout
        while self.stats.total < total and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return {"event": "waited", "total": self.stats.total,
                "complete": self.stats.total >= total}

    def report(self, samples: bool, counts: bool) -> dict[str, Any]:
        """Counters, CPU seconds since the last reset, and the latency samples."""
        stats = self.stats
        parsed: list[tuple[int, int, int]] = []
        if samples:
            for recv_ns, payload in stats.samples:
                message = orjson.loads(payload)
                if message.get("type") == "aggregate":
                    # A group's max of seq and t: the latest write that changed it.
                    for group in message.get("groups") or ():
                        top = group.get("max") or {}
                        parsed.append((int(top.get("seq", -1)), int(top.get("t", 0)),
                                       recv_ns))
                    continue
                doc = message.get("document") or {}
                parsed.append((int(doc.get("seq", -1)), int(doc.get("t", 0)), recv_ns))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "event": "report",
            "total": stats.total,
            "bytes": stats.bytes,
            "reads": stats.reads,
            "counts": ([0 if listener is None else listener.count for listener in self.slots]
                       if counts else []),
            "first_ns": stats.first_ns,
            "last_ns": stats.last_ns,
            "samples": parsed,
            "other": stats.other,
            "closes": stats.closes,
            "disconnected": stats.disconnected,
            "cpu_seconds": time.process_time() - self.cpu0,
            "wall_seconds": time.monotonic() - self.wall0,
            "max_rss_kib": usage.ru_maxrss,
            "timeline": self.timeline,
            "timeline_step": TIMELINE_STEP,
            "example": stats.samples[-1][1].decode() if stats.samples else None,
        }

    async def close(self) -> None:
        """Close every connection (a normal close, then drop)."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for listener in self.listeners:
            if listener.transport is not None:
                listener.transport.disconnect()
        for listener in self.listeners:
            if listener.transport is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(listener.transport.wait_disconnected(), 5)


async def _readline(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    line = await reader.readline()
    if not line:
        return None
    value: dict[str, Any] = orjson.loads(line)
    return value


def _answer(value: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(value) + b"\n")
    sys.stdout.buffer.flush()


async def main() -> None:
    """Read the configuration, then serve commands until ``close`` or end of input."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    config = await _readline(reader)
    if config is None:
        return
    client = LoadClient(config)
    try:
        while (command := await _readline(reader)) is not None:
            cmd = command.get("cmd")
            if cmd == "connect":
                _answer(await client.connect())
            elif cmd == "reset":
                _answer(client.reset())
            elif cmd == "wait":
                _answer(await client.wait(int(command["total"]), float(command["timeout"])))
            elif cmd == "report":
                _answer(client.report(bool(command.get("samples", True)),
                                      bool(command.get("counts", True))))
            elif cmd == "close":
                break
            else:
                _answer({"event": "error", "message": f"unknown command {cmd!r}"})
    finally:
        await client.close()
        _answer({"event": "closed"})


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        asyncio.run(main())
    else:
        uvloop.run(main())

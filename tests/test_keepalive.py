"""Keepalive pings: one shared coarse timer (``realtime.timers``) instead of one per socket.

The timers are tested with an injected clock; the pings on a real server with a
sans-I/O WebSocket client over a real socket, one that answers the pings and one
that never does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from realtime.config import Settings
from realtime.timers import CoarseTimers, timers_of
from tests.helpers import derive, live_server


class FakeLoop:
    """``time()`` and ``call_at()``, run by hand: :meth:`advance` fires what is due."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[tuple[float, Callable[[], object], list[bool]]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> Any:
        cancelled = [False]
        self.timers.append((when, callback, cancelled))

        class Handle:
            def cancel(self) -> None:
                cancelled[0] = True

        return Handle()

    def live(self) -> list[float]:
        return sorted(when for when, _, cancelled in self.timers if not cancelled[0])

    def advance(self, seconds: float) -> None:
        """Move the clock forward, firing each due timer at its own time."""
        target = self.now + seconds
        while True:
            due = [t for t in self.timers if not t[2][0] and t[0] <= target]
            if not due:
                self.now = target
                return
            first = min(due, key=lambda t: t[0])
            self.timers.remove(first)
            self.now = max(self.now, first[0])
            first[1]()


@pytest.mark.driver_blind
def test_callbacks_of_one_slot_share_one_loop_timer_and_never_run_early() -> None:
    loop = FakeLoop()
    timers = CoarseTimers(loop, resolution=0.25)
    ran: list[str] = []
    for name, delay in (("a", 1.0), ("b", 1.1), ("c", 1.2), ("d", 2.0)):
        timers.schedule(delay, lambda name=name: ran.append(name))
    # a, b and c are due in the slot ending at 101.25; d at 102.0: one loop timer armed.
    assert loop.live() == [101.0]
    loop.advance(1.0)
    assert ran == ["a"]
    assert loop.live() == [101.25]
    loop.advance(0.2)
    assert ran == ["a"]  # 1.1 s is not over yet at 101.2
    loop.advance(0.05)
    assert ran == ["a", "b", "c"]
    loop.advance(0.75)
    assert ran == ["a", "b", "c", "d"]
    assert loop.live() == []
    assert len(timers) == 0


@pytest.mark.driver_blind
def test_a_cancelled_callback_never_runs_and_an_earlier_slot_rearms_the_timer() -> None:
    loop = FakeLoop()
    timers = CoarseTimers(loop, resolution=0.5)
    ran: list[str] = []
    late = timers.schedule(5.0, lambda: ran.append("late"))
    assert loop.live() == [105.0]
    timers.schedule(1.0, lambda: ran.append("soon"))
    assert loop.live() == [101.0]  # re-armed for the earlier slot
    late.cancel()
    assert late.cancelled()
    loop.advance(10.0)
    assert ran == ["soon"]
    assert len(timers) == 0


@pytest.mark.driver_blind
def test_a_callback_may_schedule_the_next_one_and_a_failing_one_spares_the_others() -> None:
    loop = FakeLoop()
    timers = CoarseTimers(loop, resolution=0.25)
    ran: list[float] = []
    failures: list[BaseException] = []

    def ping() -> None:
        ran.append(loop.now)
        if len(ran) < 3:
            timers.schedule(1.0, ping)

    def broken() -> None:
        raise RuntimeError("one connection's failure")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: failures.append(context["exception"]))
        timers.schedule(1.0, broken)
        timers.schedule(1.0, ping)
        loop.advance(5.0)

    asyncio.run(main())
    assert ran == [101.0, 102.0, 103.0]
    assert [str(f) for f in failures] == ["one connection's failure"]


@pytest.mark.driver_blind
def test_each_loop_has_its_own_shared_timers() -> None:
    one, two = FakeLoop(), FakeLoop()
    assert timers_of(one) is timers_of(one)
    assert timers_of(one) is not timers_of(two)
    with pytest.raises(ValueError, match="resolution"):
        CoarseTimers(one, resolution=0)


async def _handshake(url: str) -> tuple[ClientProtocol, asyncio.StreamReader,
                                        asyncio.StreamWriter]:
    uri = parse_uri(url)
    reader, writer = await asyncio.open_connection(uri.host, uri.port)
    client = ClientProtocol(uri)
    client.send_request(client.connect())
    writer.write(b"".join(client.data_to_send()))
    while client.state is State.CONNECTING:
        data = await asyncio.wait_for(reader.read(65536), 10)
        assert data, "the server closed during the handshake"
        client.receive_data(data)
    assert client.state is State.OPEN, client.handshake_exc
    return client, reader, writer


async def _frames(client: ClientProtocol, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter, answer: bool) -> list[Frame]:
    """The frames of one read; with ``answer``, what the client owes (pongs) is sent."""
    data = await reader.read(65536)
    if data:
        client.receive_data(data)
    else:
        client.receive_eof()
    outgoing = client.data_to_send()
    if answer:
        writer.write(b"".join(outgoing))
    return [event for event in client.events_received() if isinstance(event, Frame)]


async def test_the_server_pings_a_live_peer_every_heartbeat(settings: Settings) -> None:
    quick = derive(settings, heartbeat_seconds=0.2)
    async with live_server(quick) as server:
        client, reader, writer = await _handshake(server.ws_url)
        try:
            pings = 0
            async with asyncio.timeout(10):
                while pings < 5:
                    for frame in await _frames(client, reader, writer, answer=True):
                        assert frame.opcode is not Opcode.CLOSE, "closed a live peer"
                        pings += frame.opcode is Opcode.PING
            assert client.state is State.OPEN
        finally:
            writer.close()


async def test_a_peer_that_never_answers_a_ping_is_closed_with_1011(settings: Settings) -> None:
    quick = derive(settings, heartbeat_seconds=0.2)
    async with live_server(quick) as server:
        client, reader, writer = await _handshake(server.ws_url)
        try:
            pinged = False
            close: Close | None = None
            async with asyncio.timeout(10):
                while close is None:
                    for frame in await _frames(client, reader, writer, answer=False):
                        pinged |= frame.opcode is Opcode.PING
                        if frame.opcode is Opcode.CLOSE:
                            close = Close.parse(frame.data)
            assert pinged
            assert close.code == 1011
        finally:
            writer.close()

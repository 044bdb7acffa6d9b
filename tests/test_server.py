"""realtime.server: the hooked uvicorn WebSocket protocol's per-connection state, the server.

The hook's uses of uvicorn's and websockets' internals are checked in
tests/test_compat.py, with the fallback to uvicorn's stock protocol.
"""

from __future__ import annotations

import asyncio

import pytest
from websockets.server import ServerProtocol

from realtime.server import Flag, Inbox, websocket_protocol
from tests.helpers import LiveServer, until, ws_client

pytestmark = pytest.mark.driver_blind


async def test_connection_state_lives_in_slots(live: LiveServer) -> None:
    """uvicorn's per-connection attributes are all slots: no instance dict table."""
    hooked = websocket_protocol()
    assert hooked is not None, "the WebSocket hook is not installed: see tests/test_compat.py"
    assert live.server.config.ws is hooked
    async with ws_client(live.ws_url) as c:
        await c.subscribe("s", "orders")
        protocols = [p for p in live.server.server_state.connections if isinstance(p, hooked)]
        assert len(protocols) == 1
        protocol = protocols[0]
        assert vars(protocol) == {}, f"attributes outside __slots__: {sorted(vars(protocol))}"
        # The handshake is over: its request and response are let go.
        assert protocol.request is None
        assert protocol.response is None
        assert protocol.conn.parser.gi_code is not ServerProtocol.parse.__code__
    await until(lambda: not live.app.state.services.hub.connections, 10)


async def test_inbox_hands_events_over_in_order() -> None:
    """The receive queue: FIFO, a waiting reader woken by the next event."""
    inbox = Inbox()
    assert inbox.empty()
    reader = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)  # the reader waits
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert await asyncio.wait_for(reader, 5) == 1
    assert not inbox.empty()
    assert await inbox.get() == 2
    assert inbox.empty()


async def test_inbox_passes_a_wake_up_on_when_its_reader_is_cancelled() -> None:
    """A reader cancelled after being woken leaves the event to the next reader."""
    inbox = Inbox()
    first = asyncio.ensure_future(inbox.get())
    second = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("event")
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 5) == "event"


async def test_inbox_keeps_the_order_when_a_woken_reader_is_cancelled() -> None:
    inbox = Inbox()
    first = asyncio.ensure_future(inbox.get())
    second = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("one")
    inbox.put_nowait("two")
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 5) == "one"
    assert await inbox.get() == "two"


async def test_flag_wakes_waiters_once_set() -> None:
    flag = Flag()
    assert not flag.is_set()
    waiter = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    flag.set()
    assert await asyncio.wait_for(waiter, 5) is True
    flag.clear()
    assert not flag.is_set()

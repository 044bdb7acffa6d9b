"""A connection's outbox: ordered, bounded, inline when writable, batched when busy.

The hub is synchronous on its fast path: for each event it hands every
matching connection's :class:`Outbox` a message. An outbox whose transport is
writable sends inline; one whose transport is paused collects a bounded
backlog drained by its own task, and is closed with 4408 (slow consumer) when
the backlog overflows. No task is woken per connection per event.

When events arrive back to back (the feed is behind: a measured backlog), or
fanning out takes nearly all the time between events, the :class:`Batcher`
holds each connection's messages for a moment and writes them in one system
call: the send call, not the encoding, is what a fan-out spends its time on
(see bench/). While the loop has slack, messages go inline, with no delay:
holding them would cost latency for no saved call. Its clock is injected.

How a message is framed is decided here, once per connection: on a
connection that negotiated no WebSocket extension (:class:`FrameSink`) a
change is written as the ready-made frame the event encoded once for every
subscription with the same id; otherwise as text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast, runtime_checkable

from realtime import protocol
from realtime.events import Event
from realtime.tasks import cancel_and_wait

__all__ = ["BatchPolicy", "Batcher", "FrameSink", "Outbox", "Writable"]

log = logging.getLogger("realtime.outbox")

SendNow = Callable[[str], None]
SendAsync = Callable[[str], Awaitable[None]]
CloseNow = Callable[[int, str], None]
Clock = Callable[[], float]


class Writable(Protocol):
    """A connection's writability: an :class:`asyncio.Event` or the server's lighter Flag."""

    def is_set(self) -> bool:
        """True while the transport accepts writes."""

    async def wait(self) -> bool:
        """Return once the transport accepts writes."""


@runtime_checkable
class FrameSink(Protocol):
    """A ``send_now`` that can also write ready-made frames (the server's writer).

    :meth:`frames_ok` is True when the connection negotiated no extension, so a
    frame from :func:`realtime.protocol.text_frame` is valid on it as-is; then
    the hub encodes a change once per event and subscription id, and writes the
    same bytes to every connection.
    """

    def __call__(self, text: str) -> None:
        """Write one text frame now."""

    def frames_ok(self) -> bool:
        """True if ready-made frames may be written."""

    def write(self, data: bytes) -> None:
        """Write ready-made frames now."""


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """When the :class:`Batcher` holds messages, and for how long (seconds)."""

    #: A publish starting within this long of the previous one's end finds the
    #: feed busy (events queued behind each other): its sends are batched.
    busy_gap: float = 0.001
    #: How long a batch collects messages before they are written: as long as
    #: the previous batch took to write, within these bounds, so a busy hub
    #: spends about as much time encoding as writing.
    min_delay: float = 0.001
    max_delay: float = 0.020
    #: Share of the time between two events spent fanning out (smoothed) above
    #: which the hub is loaded: it then also holds messages for events that
    #: arrive apart, for about one inter-event gap, so each connection's next
    #: messages share one write; below ``unloaded`` it sends inline again. Set
    #: near saturation: holding costs every message up to a gap of latency, so
    #: while the loop has slack (measured in bench/: 500 subscribers x 100
    #: events/s is ~40 % busy) messages go inline, and a hub that falls behind
    #: batches anyway (``busy_gap``).
    loaded: float = 0.8
    unloaded: float = 0.6
    #: Weight of the newest event in the smoothed load and inter-event gap.
    smoothing: float = 0.2
    #: Most messages a connection collects during one batch before it writes them.
    max_batch: int = 256


class Batcher:
    """Decides, per published event, whether sends are batched; writes the batches.

    The hub brackets each fan-out with :meth:`begin` and :meth:`end`; between
    them, outboxes that would write inline hold their frames instead
    (:meth:`Outbox.send`), and the batch is written by a timer ``delay`` after
    it opened, or by the next event that finds it that old.
    """

    __slots__ = ("_clock", "_handle", "active", "busy", "delay", "dirty", "gap",
                 "last_end", "last_start", "load", "loaded", "opened", "policy")

    def __init__(self, policy: BatchPolicy | None = None, clock: Clock = time.monotonic) -> None:
        self.policy = policy or BatchPolicy()
        self._clock = clock
        #: True while a fan-out runs in batch mode.
        self.active = False
        #: Outboxes holding messages for the next flush.
        self.dirty: list[Outbox] = []
        self._handle: asyncio.TimerHandle | None = None
        #: When the previous fan-out began and ended (None before the first), and
        #: when the open batch began.
        self.last_start: float | None = None
        self.last_end: float | None = None
        self.opened = 0.0
        self.delay = self.policy.min_delay
        #: Seconds spent fanning out (publishing and flushing) since the last event.
        self.busy = 0.0
        #: Smoothed share of time spent fanning out, and smoothed inter-event gap.
        self.load = 0.0
        self.gap = 1.0
        #: True while ``load`` says the hub is loaded (with hysteresis).
        self.loaded = False

    def begin(self) -> float:
        """A fan-out begins: account for it and decide whether it batches.

        Returns the clock reading to hand to :meth:`end`.
        """
        policy = self.policy
        started = self._clock()
        if self.last_start is not None:
            gap = max(started - self.last_start, 1e-6)
            self.gap += policy.smoothing * (gap - self.gap)
            self.load += policy.smoothing * (min(self.busy / gap, 1.0) - self.load)
            self.loaded = self.load >= (policy.unloaded if self.loaded else policy.loaded)
        self.busy = 0.0
        self.last_start = started
        # Back to back with the previous event (the feed is behind), or loaded:
        # hold the messages a moment and write each connection's in one call.
        self.active = (self._handle is not None or self.loaded
                       or (self.last_end is not None and started - self.last_end < policy.busy_gap))
        return started

    def end(self, started: float) -> None:
        """The fan-out that began at ``started`` is done: schedule or write its batch."""
        batching, self.active = self.active, False
        if batching and self.dirty:
            if self._handle is None:
                # The timer writes the batch if no event follows; a feed that does
                # not yield to the loop between events meets the bound here.
                delay = self.delay
                if self.loaded:  # long enough for the next event to join
                    delay = min(self.policy.max_delay, max(delay, self.gap))
                self.opened = started
                self._handle = asyncio.get_running_loop().call_later(delay, self.flush)
            elif self._clock() - self.opened >= self.delay:
                # (an event arriving after the batch's own delay takes it along)
                self.flush()
        self.last_end = self._clock()
        self.busy += self.last_end - started

    def flush(self) -> None:
        """Write every message held by the current batch."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        dirty, self.dirty = self.dirty, []
        if not dirty:
            return
        started = self._clock()
        for outbox in dirty:
            outbox.flush()
        took = self._clock() - started
        self.busy += took
        self.delay = min(self.policy.max_delay, max(self.policy.min_delay, took))


class Outbox:
    """One client connection's ordered, bounded outbox."""

    __slots__ = (
        "_backlog",
        "_batcher",
        "_close",
        "_drainer",
        "_pending",
        "_send_async",
        "_writable",
        "_write",
        "close_code",
        "closed",
        "dropped",
        "framed",
        "max_backlog",
        "name",
        "sent",
    )

    def __init__(
        self,
        *,
        send_async: SendAsync,
        close: CloseNow,
        max_backlog: int,
        send_now: SendNow | None = None,
        writable: Writable | None = None,
        batcher: Batcher | None = None,
        name: str = "",
    ) -> None:
        if writable is None:
            send_now = None
        self._send_async = send_async
        self._writable = writable
        self._close = close
        self._batcher = batcher
        #: Messages waiting for a paused transport (made on first use).
        self._backlog: deque[str | bytes] | None = None
        self._drainer: asyncio.Task[None] | None = None
        #: True if the connection takes ready-made frames: the server's frame
        #: writer says they are valid (see FrameSink). The one framing decision.
        self.framed = isinstance(send_now, FrameSink) and send_now.frames_ok()
        #: Writes one message now, while writable: ready-made frames on a framed
        #: connection, else text. None: no synchronous writer (``send_async`` only).
        self._write: Callable[[Any], None] | None = (
            send_now.write if isinstance(send_now, FrameSink) and self.framed else send_now)
        #: Frames held for the batcher's next write (framed connections only).
        self._pending: list[bytes] | None = None
        self.max_backlog = max_backlog
        self.closed = False
        self.close_code: int | None = None
        self.sent = 0
        #: Messages discarded unsent when the connection was closed.
        self.dropped = 0
        self.name = name

    def __repr__(self) -> str:
        return f"<Outbox {self.name}>"

    @property
    def backlog(self) -> int:
        """Messages waiting for the transport."""
        return len(self._backlog) if self._backlog is not None else 0

    def send(self, message: str) -> None:
        """Send ``message`` now if the transport is writable, else queue it.

        Never blocks and never raises; a connection whose backlog exceeds
        ``max_backlog`` is closed with 4408 (slow consumer). While the batcher
        is active (a busy feed), the message is held until the batch is written
        a moment later; order is always kept.
        """
        if self.framed:
            self._send(protocol.text_frame(message.encode()))
        else:
            self._send(message)

    def send_shared(self, message: str, frame: bytes) -> None:
        """Send ``message``, whose WebSocket frame (:func:`protocol.text_frame`) the
        caller made once for every connection it sends it to: the frame on a framed
        connection, else the text. As :meth:`send` otherwise."""
        self._send(frame if self.framed else message)

    def send_change(self, ev: Event, prefix: str, op: str) -> None:
        """Send ``ev`` as ``op`` to the subscription whose messages start with ``prefix``.

        On a framed connection this is the frame ``ev`` encodes once per prefix
        and op for every connection (:meth:`Event.frame`); otherwise its text.
        """
        if self.framed:
            self._send(ev.frame(prefix, op))
        else:
            self._send(protocol.render_change(prefix, op,
                                              ev.leave if op == "leave" else ev.body))

    def _send(self, message: Any) -> None:
        if self.closed:
            return
        pending = self._pending
        if pending is not None:
            pending.append(message)
            batcher = self._batcher
            if batcher is not None and len(pending) >= batcher.policy.max_batch:
                self.flush()
            return
        write = self._write
        if (write is not None and not self._backlog
                and self._writable is not None and self._writable.is_set()):
            batcher = self._batcher
            if batcher is not None and batcher.active and self.framed:
                self._pending = [message]
                batcher.dirty.append(self)
                return
            try:
                write(message)
            except Exception:  # the peer is gone; the endpoint cleans up
                self.closed = True
                return
            self.sent += 1
            return
        self._queue(message)

    def _queue(self, message: Any) -> None:
        backlog = self._backlog
        if backlog is None:
            backlog = self._backlog = deque()
        if len(backlog) >= self.max_backlog:
            self.close(protocol.CloseCode.SLOW_CONSUMER, "slow consumer")
            return
        backlog.append(message)
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

    def flush(self) -> None:
        """Write the messages held for a batch (the batcher calls this; never raises)."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        if self.closed:
            return
        write = self._write  # (pending frames exist on framed connections only)
        if (write is not None and not self._backlog
                and self._writable is not None and self._writable.is_set()):
            try:
                write(pending[0] if len(pending) == 1 else b"".join(pending))
            except Exception:  # the peer is gone; the endpoint cleans up
                self.closed = True
                return
            self.sent += len(pending)
            return
        for message in pending:
            self._queue(message)
            if self.closed:
                return

    async def _drain(self) -> None:
        backlog = self._backlog
        try:
            while backlog and not self.closed:
                if self._write is not None and self._writable is not None:
                    await self._writable.wait()
                    if self.closed:
                        break
                    self._write(backlog.popleft())
                else:  # (frames only ever queue on framed connections, which have _write)
                    await self._send_async(cast(str, backlog.popleft()))
                self.sent += 1
        except Exception:  # the peer is gone
            self.closed = True
        finally:
            self._drainer = None

    def close(self, code: int, reason: str = "") -> None:
        """Close the connection now (pending messages are dropped)."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self.dropped += self.backlog + len(self._pending or ())
        if self._backlog is not None:
            self._backlog.clear()
        self._pending = None
        try:
            self._close(code, reason)
        except Exception:  # pragma: no cover - already closed
            log.debug("close of %s failed", self.name, exc_info=True)

    async def aclose(self) -> None:
        """Stop the drainer task (if any) and wait for it."""
        self.closed = True
        self._pending = None
        await cancel_and_wait(self._drainer)

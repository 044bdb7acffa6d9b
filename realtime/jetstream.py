"""The NATS JetStream seam: the only module that imports the NATS client (``nats-py``).

The relay and the edges see JetStream through :class:`Broker`: connect (and
reconnect forever), make sure the stream exists, publish with headers,
read one message or the stream's ends, and open an ephemeral pull consumer
over a set of subjects from a sequence on (:class:`Consumer`). Every client
error comes out as :class:`BrokerUnavailable` (the server cannot be reached or
answered nothing in time) or :class:`Refused` (the server said no: a fenced
publish that lost, a bad request); never as a ``nats`` exception class.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api

from realtime.errors import RealtimeError

__all__ = ["Broker", "BrokerUnavailable", "Consumer", "Message", "Refused"]

log = logging.getLogger("realtime.jetstream")

#: Seconds a request to the server may take before it counts as unanswered.
REQUEST_TIMEOUT: Final = 2.0
#: Seconds an edge's consumer outlives its edge (a killed edge leaves none behind).
INACTIVE_SECONDS: Final = 30.0


class BrokerUnavailable(RealtimeError):
    """The NATS server cannot be reached or did not answer in time."""

    status = 503


class Refused(RealtimeError):
    """The NATS server refused a request; ``code`` is JetStream's error code (0 if none)."""

    status = 502

    def __init__(self, detail: str, code: int = 0) -> None:
        super().__init__(detail)
        self.code = code


@dataclass(frozen=True, slots=True)
class Message:
    """One message of the stream: subject, payload, headers and stream sequence.

    ``cseq`` (the consumer's own sequence, contiguous per consumer) and
    ``pending`` (messages the consumer has not delivered yet) come with
    messages a consumer delivers; 0 for messages read directly.
    """

    subject: str
    data: bytes
    headers: Mapping[str, str]
    seq: int
    cseq: int = 0
    pending: int = 0


def _translate(exc: BaseException) -> RealtimeError:
    if isinstance(exc, nats.js.errors.APIError):
        return Refused(exc.description or str(exc), exc.err_code or 0)
    return BrokerUnavailable(f"NATS did not answer: {type(exc).__name__} {exc}".strip())


#: What a request may raise that means "no answer" or "refused", as opposed to a bug.
_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)


class Consumer:
    """An ephemeral pull consumer over some subjects, from a stream sequence on."""

    def __init__(self, broker: Broker, sub: JetStreamContext.PullSubscription,
                 name: str) -> None:
        self._broker = broker
        self._sub = sub
        self.name = name

    async def fetch(self, batch: int, timeout: float) -> list[Message]:
        """Up to ``batch`` messages: those available now, else waits up to ``timeout``.

        Returns an empty list when none arrived in time.

        Raises:
            BrokerUnavailable: the server cannot be reached (or the consumer is gone).
            Refused: the server refused the request.
        """
        try:
            msgs = await self._sub.fetch(batch, timeout=timeout)
        except nats.errors.TimeoutError:
            return []
        except _ERRORS as exc:
            raise _translate(exc) from exc
        out = []
        for msg in msgs:
            meta = msg.metadata
            out.append(Message(msg.subject, msg.data, msg.headers or {},
                               meta.sequence.stream, meta.sequence.consumer,
                               meta.num_pending))
        return out

    async def close(self) -> None:
        """Stop the subscription and delete the consumer (errors only logged)."""
        try:
            await self._sub.unsubscribe()
        except _ERRORS as exc:
            log.debug("unsubscribe %s: %s", self.name, exc)
        await self._broker.delete_consumer(self.name)


class Broker:
    """One connection to NATS and the stream ``stream`` (subjects ``rt.>``)."""

    def __init__(self, url: str, stream: str, *, name: str = "realtime",
                 replicas: int = 1, max_age: float = 86_400.0) -> None:
        self.url = url
        self.stream = stream
        self._name = name
        self._replicas = replicas
        self._max_age = max_age
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        #: Disconnections from the server, since start.
        self.disconnects = 0
        #: True while connected.
        self.connected = False

    async def connect(self, timeout: float = 5.0) -> None:
        """Connect (the client reconnects by itself afterwards, forever).

        Raises:
            BrokerUnavailable: no server answered within ``timeout`` seconds.
        """

        async def disconnected() -> None:
            self.connected = False
            if self._nc is not None:  # not closing
                self.disconnects += 1
                log.warning("NATS connection lost; reconnecting")

        async def reconnected() -> None:
            self.connected = True
            log.info("NATS connection back")

        async def error(exc: Exception) -> None:
            log.debug("NATS client: %s", exc)

        try:
            self._nc = await nats.connect(
                servers=[s.strip() for s in self.url.split(",")], name=self._name,
                connect_timeout=timeout, max_reconnect_attempts=-1,
                reconnect_time_wait=0.25, allow_reconnect=True,
                disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error)
        except (*_ERRORS, nats.errors.NoServersError) as exc:
            raise BrokerUnavailable(f"cannot connect to NATS at {self.url}: {exc}") from exc
        self.connected = True
        self._js = self._nc.jetstream(timeout=REQUEST_TIMEOUT)

    @property
    def opened(self) -> bool:
        """True once :meth:`connect` succeeded (until :meth:`close`; it reconnects by itself)."""
        return self._nc is not None

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context.

        Raises:
            BrokerUnavailable: not connected yet.
        """
        if self._js is None:
            raise BrokerUnavailable("not connected to NATS")
        return self._js

    async def close(self) -> None:
        """Close the connection (pending publishes are flushed first)."""
        nc, self._nc, self._js = self._nc, None, None
        self.connected = False
        if nc is not None:
            try:
                await nc.drain()
            except _ERRORS:
                await nc.close()

    async def ensure_stream(self) -> None:
        """Create the stream if it does not exist (file storage, ``replicas`` copies).

        Raises:
            BrokerUnavailable: no answer.
            Refused: the server refused (e.g. JetStream is not enabled).
        """
        js = self.js
        try:
            await js.stream_info(self.stream)
            return
        except nats.js.errors.NotFoundError:
            pass
        except _ERRORS as exc:
            raise _translate(exc) from exc
        config = api.StreamConfig(
            name=self.stream, subjects=["rt.>"], storage=api.StorageType.FILE,
            num_replicas=self._replicas, max_age=self._max_age, duplicate_window=120.0,
            allow_direct=True)
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != 10058:  # 10058: created meanwhile by another process
                raise _translate(exc) from exc
        except _ERRORS as exc:
            raise _translate(exc) from exc

    async def publish(self, subject: str, data: bytes, headers: Mapping[str, str],
                      timeout: float = REQUEST_TIMEOUT) -> int:
        """Publish and wait for the acknowledgement; the stream sequence it landed at.

        Raises:
            BrokerUnavailable: no acknowledgement in time (it may have landed).
            Refused: the server refused it (``code`` 10071: a wrong last sequence).
        """
        try:
            ack = await self.js.publish(subject, data, timeout=timeout, stream=self.stream,
                                        headers=dict(headers))
        except _ERRORS as exc:
            raise _translate(exc) from exc
        return int(ack.seq)

    async def send(self, subject: str, data: bytes,
                   headers: Mapping[str, str]) -> asyncio.Future[Any]:
        """Publish without waiting: a future of the acknowledgement (see :meth:`acked`).

        Raises:
            BrokerUnavailable: it cannot be sent (too many unacknowledged, or closed).
        """
        try:
            return await self.js.publish_async(subject, data, stream=self.stream,
                                               headers=dict(headers))
        except _ERRORS as exc:
            raise _translate(exc) from exc

    @staticmethod
    async def acked(future: asyncio.Future[Any], timeout: float = REQUEST_TIMEOUT) -> int:
        """The stream sequence of a :meth:`send` once acknowledged.

        Raises:
            BrokerUnavailable: no acknowledgement within ``timeout`` (the future is
                cancelled; the message may have landed).
            Refused: the server refused it (``code`` 10071: a wrong last sequence).
        """
        try:
            ack = await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            future.cancel()
            raise BrokerUnavailable("JetStream did not acknowledge a publish in time") from None
        except _ERRORS as exc:
            raise _translate(exc) from exc
        return int(ack.seq)

    @staticmethod
    def ack_of(future: asyncio.Future[Any]) -> int:
        """The stream sequence of a :meth:`send` already acknowledged (``future.done()``).

        Raises:
            BrokerUnavailable: it was cancelled or failed without an answer.
            Refused: the server refused it.
        """
        if future.cancelled():
            raise BrokerUnavailable("the publish was abandoned")
        exc = future.exception()
        if exc is not None:
            raise _translate(exc) from exc
        return int(future.result().seq)

    async def bounds(self) -> tuple[int, int]:
        """The stream's first and last sequence (``(0, 0)``-like when empty: last < first).

        Raises:
            BrokerUnavailable, Refused: the stream cannot be read.
        """
        try:
            info = await self.js.stream_info(self.stream)
        except _ERRORS as exc:
            raise _translate(exc) from exc
        return int(info.state.first_seq), int(info.state.last_seq)

    async def get(self, seq: int) -> Message | None:
        """The message at ``seq`` (None if there is none: deleted, or past the end).

        Raises:
            BrokerUnavailable, Refused: the stream cannot be read.
        """
        try:
            raw = await self.js.get_msg(self.stream, seq=seq)
        except nats.js.errors.NotFoundError:
            return None
        except _ERRORS as exc:
            raise _translate(exc) from exc
        return Message(raw.subject or "", raw.data or b"", raw.headers or {}, int(raw.seq or seq))

    async def consumer(self, subjects: Sequence[str], start: int) -> Consumer:
        """An ephemeral pull consumer over ``subjects`` from stream sequence ``start`` on.

        Acknowledgements are off (the edge tracks its position itself) and the
        consumer is deleted by the server after :data:`INACTIVE_SECONDS` without
        a fetch, so a killed edge leaves none behind.

        Raises:
            BrokerUnavailable, Refused: the consumer cannot be created.
        """
        config = api.ConsumerConfig(
            filter_subjects=list(subjects), ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(start, 1),
            mem_storage=True, num_replicas=1, inactive_threshold=INACTIVE_SECONDS,
            max_waiting=16)
        try:
            sub = await self.js.pull_subscribe("", stream=self.stream, config=config)
        except _ERRORS as exc:
            raise _translate(exc) from exc
        return Consumer(self, sub, str(config.name))

    async def delete_consumer(self, name: str) -> None:
        """Delete a consumer (gone already, or the server away: only logged)."""
        try:
            await self.js.delete_consumer(self.stream, name)
        except (*_ERRORS, RealtimeError) as exc:
            log.debug("delete consumer %s: %s", name, exc)

    def status(self) -> dict[str, Any]:
        """Connection facts for health checks."""
        return {"url": self.url, "connected": self.connected, "disconnects": self.disconnects}

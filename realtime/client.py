"""An asyncio client for the WebSocket protocol v1, with reconnect and resume.

Usage::

    from realtime.client import connect

    async with connect("http://127.0.0.1:8000") as client:
        async with client.subscribe("orders", filter={"status": "open"},
                                    snapshot=True) as orders:
            async for event in orders:
                print(event)

Every subscription survives disconnects. The client reconnects with exponential
backoff and full jitter (a uniform draw in ``[0, min(20, 0.5 * 2**attempt))``
seconds, :func:`backoff_delay`), and resubscribes with ``since`` = the id of the
last event the subscription received (or the ``head`` of its last
``subscribed``/``snapshot`` when no event came yet), so the server replays what
was missed. When the server cannot resume (``resync``: its history was lost, or
a collection was dropped), the subscription yields :class:`Reset` and then a
:class:`Snapshot` of the current documents that replaces the consumer's state.

Events are small frozen dataclasses (:data:`Event`): :class:`Subscribed`,
:class:`Snapshot`, :class:`Change` and :class:`Reset`. :class:`LiveView` applies
them to a dict of documents with the protocol's live-query rules.

Back-pressure: each subscription buffers at most ``max_queue`` events; when one
is full the client stops reading the socket, the server eventually closes it as
a slow consumer (4408), and the client reconnects and resumes from the last
event it buffered. Close a subscription you stop reading (``async with``, or
:meth:`Subscription.aclose`).

Server status: ``Client.feed`` is what the server last said of its change
stream: ``live``, ``retrying`` (it lost the stream and reconnects; nothing is
lost) or ``down`` (the database has been unreachable for a while, or its
process exited); ``on_status`` is called with each new value. A server sends
``status`` right after ``welcome`` when its feed is not live: the client
settles ``feed`` on the first message after ``welcome`` (it sends a ``ping``
so that one comes), never announcing a ``live`` that is not.

Writes: :meth:`Client.insert`, :meth:`~Client.replace`, :meth:`~Client.patch`
and :meth:`~Client.delete` call the REST API of the same server. Each logical
write carries one ``Idempotency-Key``; a 503 or a network error (the reply
lost after the server applied the write, a timeout) is retried with that key
after a backoff, and the server applies the write once and answers the retry
with the original response. Other refusals raise :class:`WriteError` at once.

Credentials: ``token`` is an API key or JWT sent as ``Authorization: Bearer``,
or a :data:`TokenProvider` (a function, sync or async, returning the current
token) called before every connect and reconnect. When the server closes with
4401 (credentials missing, invalid or expired, e.g. a JWT's ``exp`` passed), a
provider is called once more; if it yields another token the client reconnects
with it at once and resumes every subscription, so nothing is lost. Otherwise
the client closes and the subscriptions raise :class:`ConnectionRejected`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, Final, TypeAlias
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import orjson
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, WebSocketException

__all__ = [
    "BACKOFF_MAX",
    "BACKOFF_MIN",
    "Aggregate",
    "AggregateView",
    "Change",
    "Client",
    "ClientError",
    "ConnectError",
    "ConnectionRejected",
    "ConnectionState",
    "Event",
    "LiveView",
    "Reset",
    "Snapshot",
    "StateChange",
    "StatusCallback",
    "Subscribed",
    "Subscription",
    "SubscriptionError",
    "TokenProvider",
    "WriteError",
    "apply_delta",
    "backoff_delay",
    "connect",
    "event_to_json",
    "http_url",
    "ws_url",
]

log = logging.getLogger("realtime.client")

#: Smallest backoff ceiling, in seconds (the first retry waits 0 to 0.5 s).
BACKOFF_MIN: Final = 0.5
#: Largest backoff ceiling, in seconds.
BACKOFF_MAX: Final = 20.0
#: Close codes after which reconnecting cannot help (policy, auth).
FATAL_CLOSE_CODES: Final = frozenset({1008, 4401, 4403})
#: Attempts of one write (all with its one ``Idempotency-Key``), the largest backoff
#: ceiling between them, and how long one attempt may take, in seconds.
WRITE_ATTEMPTS: Final = 4
WRITE_BACKOFF_MAX: Final = 4.0
WRITE_TIMEOUT: Final = 10.0
#: The close code of missing, invalid or expired credentials.
UNAUTHENTICATED: Final = 4401
#: Events a subscription buffers before the client stops reading the socket.
DEFAULT_MAX_QUEUE: Final = 10_000


def backoff_delay(attempt: int, rand: Callable[[], float] = random.random, *,
                  maximum: float = BACKOFF_MAX) -> float:
    """The delay before reconnect attempt ``attempt`` (0-based), in seconds.

    Exponential backoff with full jitter: ``rand() * min(maximum, BACKOFF_MIN *
    2**attempt)``, so by default always in ``[0, 20)``.
    """
    ceiling = min(maximum, BACKOFF_MIN * 2.0 ** max(0, min(attempt, 64)))
    return rand() * ceiling


def ws_url(url: str) -> str:
    """The WebSocket URL of a server given as ``http(s)://`` or ``ws(s)://``.

    ``http://host:8000`` becomes ``ws://host:8000/ws`` (``https`` gives ``wss``);
    a path is kept and ``/ws`` appended (``http://h/rt`` -> ``ws://h/rt/ws``).
    ``ws(s)://`` URLs are returned as they are.

    Raises:
        ValueError: the scheme is none of http, https, ws, wss.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("ws", "wss"):
        return url
    if scheme not in ("http", "https"):
        raise ValueError(f"not an http(s):// or ws(s):// URL: {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/ws"):
        path += "/ws"
    return urlunsplit(("ws" if scheme == "http" else "wss", parts.netloc, path, parts.query, ""))


def http_url(url: str) -> str:
    """The HTTP base URL of a server given as ``http(s)://`` or ``ws(s)://``.

    ``ws://host:8000/ws`` becomes ``http://host:8000`` (``wss`` gives ``https``);
    a path is kept without its final ``/ws``. ``http(s)://`` URLs lose a
    trailing ``/`` only.

    Raises:
        ValueError: the scheme is none of http, https, ws, wss.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "ws", "wss"):
        raise ValueError(f"not an http(s):// or ws(s):// URL: {url!r}")
    path = parts.path.rstrip("/")
    if scheme in ("ws", "wss"):
        path = path.removesuffix("/ws")
        scheme = "http" if scheme == "ws" else "https"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _documents(collection: str, id: str | None = None) -> str:
    path = f"/api/collections/{quote(collection, safe='')}/documents"
    return path if id is None else f"{path}/{quote(id, safe='')}"


# ---------------------------------------------------------------------------
# Events


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The server accepted the (re)subscription.

    ``head`` is the event id the subscription is live from; ``resumed`` is True
    when it was sent with ``since`` (the missed events follow).
    """

    head: str | None
    resumed: bool


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The documents matching the subscription: replace your state with them.

    ``reload`` is True when the snapshot follows a :class:`Reset`.
    """

    documents: list[dict[str, Any]]
    head: str | None
    reload: bool = False


@dataclass(frozen=True, slots=True)
class Change:
    """One change. ``op`` is ``insert``, ``update``, ``replace``, ``delete`` or ``leave``.

    ``document`` is the document after the change (None for ``delete`` and
    ``leave``); ``updated``/``removed`` describe an ``update``; ``id`` is the
    event id (resume position); ``ts`` the commit time (ISO-8601).
    """

    op: str
    collection: str
    key: Any
    id: str
    ts: str
    document: dict[str, Any] | None = None
    updated: dict[str, Any] | None = None
    removed: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        """The protocol's ``change`` message (without ``sub``); None fields left out."""
        out: dict[str, Any] = {"type": "change", "op": self.op, "collection": self.collection,
                               "key": self.key, "id": self.id}
        if self.document is not None:
            out["document"] = self.document
        if self.updated is not None:
            out["updated"] = self.updated
        if self.removed is not None:
            out["removed"] = self.removed
        out["ts"] = self.ts
        return out


@dataclass(frozen=True, slots=True)
class Reset:
    """Your state is stale: a :class:`Snapshot` that replaces it follows.

    ``reason`` is the server's ``resync`` reason (``history_lost``,
    ``invalidated``, ``overflow``) or ``no_position`` when the subscription was
    interrupted before it learnt a position to resume from.
    """

    reason: str


@dataclass(frozen=True, slots=True)
class Aggregate:
    """A live aggregate's groups: every group when ``full`` (the first message, and
    after each reconnect), else the groups that changed (a removed group is
    ``{"key": ..., "removed": True}``). :class:`AggregateView` keeps them."""

    groups: list[dict[str, Any]]
    full: bool


Event: TypeAlias = Subscribed | Snapshot | Change | Reset | Aggregate


class AggregateView:
    """The groups of a live aggregate, kept current by :meth:`apply`.

    ``groups`` maps each group's key (its JSON text, keys sorted) to the group.
    """

    def __init__(self) -> None:
        self.groups: dict[str, dict[str, Any]] = {}

    def apply(self, event: Event) -> bool:
        """Apply one event; True if the groups changed (only :class:`Aggregate` does)."""
        if not isinstance(event, Aggregate):
            return False
        if event.full:
            self.groups.clear()
        for group in event.groups:
            key = orjson.dumps(group.get("key"), option=orjson.OPT_SORT_KEYS).decode()
            if group.get("removed"):
                self.groups.pop(key, None)
            else:
                self.groups[key] = group
        return True


def event_to_json(event: Event) -> dict[str, Any]:
    """A JSON-ready dict of ``event`` with a ``type`` field (as the CLI prints it)."""
    if isinstance(event, Change):
        return event.to_json()
    if isinstance(event, Aggregate):
        return {"type": "aggregate", "full": event.full, "groups": event.groups}
    if isinstance(event, Snapshot):
        return {"type": "snapshot", "documents": event.documents, "head": event.head,
                "reload": event.reload}
    if isinstance(event, Reset):
        return {"type": "reset", "reason": event.reason}
    return {"type": "subscribed", "head": event.head, "resumed": event.resumed}


class ClientError(Exception):
    """Base of the client's errors."""


class ConnectError(ClientError):
    """The first connection failed (the server is unreachable or refused it)."""


class ConnectionRejected(ClientError):
    """The server closed the connection for a reason retrying cannot fix.

    ``code`` is the close code (1008 policy/origin, 4401 unauthenticated, 4403
    forbidden).
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection rejected ({code}{' ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class WriteError(ClientError):
    """A write was refused, or the server could not be reached in any attempt.

    ``status`` is the HTTP status (0 when no answer came); ``problem`` the
    problem+json body (``title``, ``detail``, ...), if any.
    """

    def __init__(self, status: int, detail: str,
                 problem: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{status} {detail}" if status else detail)
        self.status = status
        self.detail = detail
        self.problem = dict(problem) if problem else {}


def _write_error(response: httpx.Response) -> WriteError:
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        return WriteError(response.status_code, response.reason_phrase)
    detail = problem.get("detail") or problem.get("title") or response.reason_phrase
    return WriteError(response.status_code, str(detail), problem)


class SubscriptionError(ClientError):
    """The server refused a subscription (``error`` message); it has ended.

    ``code`` is the protocol error code (``bad_filter``, ``bad_collection``, ...).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------
# A materialised view of a subscription


def _view_key(key: Any) -> Any:
    if key is None or isinstance(key, str | int | float):
        return key
    return orjson.dumps(key, option=orjson.OPT_SORT_KEYS).decode()


class LiveView:
    """The documents of one subscription, kept current by :meth:`apply`.

    ``documents`` maps each document's key (its ``_id`` as JSON gives it; an
    object id is its JSON text) to the document.
    """

    def __init__(self) -> None:
        self.documents: dict[Any, dict[str, Any]] = {}

    def apply(self, event: Event) -> str | None:
        """Apply one event; return what happened: ``reset``, ``insert``, ``update``,
        ``remove``, or None when nothing changed.

        A snapshot replaces everything; ``insert``/``update``/``replace`` of an
        unknown key inserts (documents entering a filter arrive as ``update``);
        ``leave``/``delete`` of an unknown key is a no-op; a change whose
        ``document._version`` is not newer than the held one is ignored. An
        ``update`` without a document (a subscription with ``fields``) applies
        its ``updated``/``removed`` paths to the held document (:func:`apply_delta`).
        """
        docs = self.documents
        if isinstance(event, Snapshot):
            docs.clear()
            for doc in event.documents:
                docs[_view_key(doc.get("_id"))] = doc
            return "reset"
        if not isinstance(event, Change):
            return None
        key = _view_key(event.key)
        if event.op in ("delete", "leave"):
            return "remove" if docs.pop(key, None) is not None else None
        held = docs.get(key)
        document = event.document
        if document is None:
            # A projected subscription's update: the changed fields only.
            if held is None or event.updated is None:
                return None
            if _not_newer(held, event.updated.get("_version")):
                return None
            docs[key] = apply_delta(held, event.updated, event.removed or ())
            return "update"
        if held is not None and _not_newer(held, document.get("_version")):
            return None
        docs[key] = document
        return "insert" if held is None else "update"


def _not_newer(held: Mapping[str, Any], version: Any) -> bool:
    old = held.get("_version")
    return isinstance(old, int) and isinstance(version, int) and version <= old


def apply_delta(doc: Mapping[str, Any], updated: Mapping[str, Any],
                removed: Iterable[str]) -> dict[str, Any]:
    """``doc`` with an update's delta applied (a copy): each ``removed`` dotted path
    unset, then each ``updated`` path set, creating sub-documents as needed.

    Raises:
        ValueError: a path goes through a value that is not an object.
    """
    def copy(value: Mapping[str, Any]) -> dict[str, Any]:
        return {k: copy(v) if isinstance(v, dict) else v for k, v in value.items()}

    out = copy(doc)
    for path in removed:
        *parents, last = path.split(".")
        node: Any = out
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    for path, value in updated.items():
        *parents, last = path.split(".")
        node = out
        for name in parents:
            child = node.setdefault(name, {})
            if not isinstance(child, dict):
                raise ValueError(f"{path!r} goes through a value that is not an object")
            node = child
        node[last] = value
    return out


# ---------------------------------------------------------------------------
# Connection state


class ConnectionState(StrEnum):
    """Where the client is: ``idle`` → ``connecting`` → ``open`` ⇄ ``reconnecting`` → ``closed``."""

    IDLE = "idle"
    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class StateChange:
    """Passed to ``on_state``: the new state and why.

    ``attempt`` counts failed attempts since the last open; ``delay`` is the wait
    before the next attempt (``reconnecting``); ``code``/``reason`` describe the
    close that caused it, when there was one.
    """

    state: ConnectionState
    attempt: int = 0
    delay: float | None = None
    code: int | None = None
    reason: str = ""


# ---------------------------------------------------------------------------
# Subscriptions


class _End:
    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class Subscription:
    """A live query; an async iterator of :data:`Event` (create with :meth:`Client.subscribe`).

    Iteration ends when the subscription or the client is closed; it raises
    :class:`SubscriptionError` if the server refused the subscription and
    :class:`ConnectionRejected` if the server refused the connection.
    """

    def __init__(self, client: Client, collection: str, *, filter: Mapping[str, Any] | None,
                 snapshot: bool, limit: int | None, since: str | None, max_queue: int,
                 since_time: str | None = None, fields: Sequence[str] | None = None,
                 aggregate: Mapping[str, Any] | None = None) -> None:
        self.collection = collection
        #: A live aggregate's spec (None: documents).
        self.aggregate = dict(aggregate) if aggregate is not None else None
        #: Only these dotted paths of each document (None: whole documents).
        self.fields = list(fields) if fields is not None else None
        self.filter = dict(filter) if filter else None
        self.snapshot = snapshot
        self.limit = limit
        #: The resume position: the last event id received, or the live head.
        self.since = since
        #: Replay from this RFC 3339 time until the first change gives a position.
        self.since_time = since_time
        self._client = client
        self._items: deque[Event] = deque()
        self._max = max_queue
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._end: _End | None = None
        self.wire: str | None = None
        self._awaiting_snapshot = False
        self._resumed = False
        self._reload = False
        self._ever_subscribed = False

    @property
    def closed(self) -> bool:
        """True once the subscription has ended (events may still be buffered)."""
        return self._end is not None

    # -- consumer side -------------------------------------------------------
    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while not self._items:
            end = self._end
            if end is not None:
                if end.error is not None:
                    raise end.error
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        event = self._items.popleft()
        self._space.set()
        return event

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Unsubscribe and end the iteration (buffered events are dropped)."""
        self._items.clear()
        self._client._remove(self)
        self._finish(None)

    # -- client side -------------------------------------------------------
    def _finish(self, error: BaseException | None) -> None:
        if self._end is None:
            self._end = _End(error)
        self._ready.set()
        self._space.set()

    async def _put(self, event: Event) -> None:
        while len(self._items) >= self._max and self._end is None:
            self._space.clear()
            await self._space.wait()
        if self._end is not None:
            return
        self._items.append(event)
        self._ready.set()


# ---------------------------------------------------------------------------
# The client


StateCallback: TypeAlias = Callable[[StateChange], None]
#: Called with the server's feed status (``live``, ``retrying``, ``down``) when it changes.
StatusCallback: TypeAlias = Callable[[str], None]
#: A function returning the current API key or JWT, plain or as an awaitable;
#: the client calls it before every connect and reconnect (and once more after
#: a 4401 close). An empty string means no credentials.
TokenProvider: TypeAlias = Callable[[], str | Awaitable[str]]


class Client:
    """A connection to a realtime server that reconnects and resumes by itself.

    Use :func:`connect` (an async context manager). ``token`` (a string or a
    :data:`TokenProvider`) is sent as ``Authorization: Bearer <token>``;
    ``on_state`` is called on every :class:`ConnectionState` change; ``on_status``
    with the server's feed status (:attr:`feed`) when it changes; ``delay``
    replaces :func:`backoff_delay`, and ``write_delay`` the backoff between the
    attempts of a write (by default :func:`backoff_delay` up to 4 s).

    The 4401 rule: when the server closes the connection (or refuses a new one)
    with 4401 and ``token`` is a provider, the provider is called once more; if
    it returns a token other than the one that was refused, the client
    reconnects with it at once (``reconnecting`` with ``delay`` 0, then
    ``open``) and resumes its subscriptions. If it returns the same token, or
    raises, or the fresh token is refused with 4401 as well before the server
    says ``welcome``, the client closes and its subscriptions raise
    :class:`ConnectionRejected`. A string token, and 1008 and 4403, close at once.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | TokenProvider | None = None,
        on_state: StateCallback | None = None,
        delay: Callable[[int], float] = backoff_delay,
        open_timeout: float = 10.0,
        max_queue: int = DEFAULT_MAX_QUEUE,
        on_status: StatusCallback | None = None,
        write_delay: Callable[[int], float] | None = None,
    ) -> None:
        self.url = ws_url(url)
        #: The base of the REST API (writes).
        self.http_url = http_url(url)
        self._write_delay = write_delay or (
            lambda attempt: backoff_delay(attempt, maximum=WRITE_BACKOFF_MAX))
        self._http: httpx.AsyncClient | None = None
        #: The credentials: an API key or JWT, a :data:`TokenProvider`, or None.
        self.token = token
        self.state = ConnectionState.IDLE
        #: The server's ``welcome`` message on the current connection.
        self.welcome: dict[str, Any] | None = None
        #: Failed attempts since the last successful open.
        self.attempt = 0
        #: The server's change stream: ``live``, ``retrying`` or ``down`` (None before
        #: the first ``welcome``), as its ``welcome`` and ``status`` messages said.
        self.feed: str | None = None
        #: True from ``welcome`` until the next message says whether the feed is live.
        self._feed_unsettled = False
        self._on_state = on_state
        self._on_status = on_status
        self._delay = delay
        self._open_timeout = open_timeout
        self._max_queue = max_queue
        self._subs: list[Subscription] = []
        self._wire: dict[str, Subscription] = {}
        self._next_wire = 1
        self._ws: ClientConnection | None = None
        self._outbox: deque[str] = deque()
        self._outbox_ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        #: The token of the current (or last) connection attempt.
        self._used_token: str | None = None
        #: True while reconnecting with a token fetched after a 4401, until ``welcome``.
        self._auth_retry = False

    # -- public API ----------------------------------------------------------
    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect (the first time) and start the connection task.

        Raises:
            ConnectError: the server is unreachable, refused the handshake, or did
                not say ``welcome`` within ``open_timeout``; or the token provider
                failed.
            ConnectionRejected: the server closed the connection for auth/policy
                (after the 4401 rule of :class:`Client`).
        """
        if self._task is not None:
            return
        self._set_state(ConnectionState.CONNECTING)
        self._auth_retry = False
        try:
            try:
                ws = await self._open(await self._token())
            except ConnectionRejected as exc:
                fresh = await self._token_after_rejection(exc.code)
                if fresh is None:
                    raise
                ws = await self._open(fresh)
        except (ConnectionRejected, ConnectError):
            self._set_state(ConnectionState.CLOSED)
            raise
        except (OSError, TimeoutError, WebSocketException, ValueError) as exc:
            self._set_state(ConnectionState.CLOSED)
            raise ConnectError(f"cannot connect to {self.url}: {exc}") from exc
        self._task = asyncio.get_running_loop().create_task(self._run(ws), name="realtime-client")

    def subscribe(
        self,
        collection: str,
        *,
        filter: Mapping[str, Any] | None = None,
        snapshot: bool = False,
        limit: int | None = None,
        since: str | None = None,
        max_queue: int | None = None,
        since_time: str | dt.datetime | None = None,
        fields: Sequence[str] | None = None,
        aggregate: Mapping[str, Any] | None = None,
    ) -> Subscription:
        """Start a live query on ``collection``; iterate the result for events.

        ``filter`` is in the service's filter language; ``snapshot`` starts with a
        :class:`Snapshot` of at most ``limit`` matching documents; ``since``
        resumes after that event id instead; ``since_time`` (an aware datetime
        or an RFC 3339 string) replays every change committed from then on, then
        goes live. ``fields`` (dotted paths) projects every document to those
        fields (and ``_id``, ``_version``): an ``update`` then carries only the
        changed ones (:class:`LiveView` applies them), and none when it changed
        none of them. ``aggregate`` (``{"group_by": ..., "count": True, "sum":
        [...], ...}``) subscribes to a live aggregate instead of documents:
        :class:`Aggregate` events (:class:`AggregateView` keeps the groups), the
        full result again after every reconnect. The subscription is sent at once
        if connected, else as soon as the client connects.

        Raises:
            ClientError: the client is closed.
            ValueError: ``since_time`` is a naive datetime, or combined with
                ``since`` or ``snapshot``.
        """
        if self.state is ConnectionState.CLOSED:
            raise ClientError("the client is closed")
        if since_time is not None and (since is not None or snapshot):
            raise ValueError("since_time excludes since and snapshot")
        if aggregate is not None and (snapshot or since is not None or since_time is not None
                                      or fields is not None or limit is not None):
            raise ValueError("aggregate excludes snapshot, limit, since, since_time and fields")
        sub = Subscription(self, collection, filter=filter, snapshot=snapshot, limit=limit,
                           since=since, max_queue=max_queue or self._max_queue,
                           since_time=_rfc3339(since_time), fields=fields,
                           aggregate=aggregate)
        self._subs.append(sub)
        if self.state is ConnectionState.OPEN:
            self._send_subscribe(sub, reload=False)
        return sub

    def reconnect_now(self) -> None:
        """Skip the current backoff wait and reconnect at once (no-op unless reconnecting)."""
        if self.state is ConnectionState.RECONNECTING:
            self._wake.set()

    async def close(self) -> None:
        """Close the connection and end every subscription (no reconnect)."""
        ws, self._ws = self._ws, None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if ws is not None:
            await ws.close()
        for sub in self._subs:
            sub._finish(None)
        self._subs.clear()
        self._wire.clear()
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()
        if self.state is not ConnectionState.CLOSED:
            self._set_state(ConnectionState.CLOSED)

    # -- writes (REST) ---------------------------------------------------------
    async def insert(self, collection: str, document: Mapping[str, Any]) -> dict[str, Any]:
        """Insert ``document`` (its ``_id``, if any, is kept); the stored document.

        Raises:
            WriteError: refused (409 when the ``_id`` exists, 422 when invalid, ...),
                or no answer in :data:`WRITE_ATTEMPTS` attempts.
            ConnectError: the token provider failed.
        """
        stored: dict[str, Any] = await self._request("POST", _documents(collection), document)
        return stored

    async def replace(self, collection: str, id: str, document: Mapping[str, Any], *,
                      if_version: int | None = None) -> dict[str, Any]:
        """Replace (or create) document ``id``; the stored document.

        ``if_version``: only if the document's ``_version`` is this.

        Raises:
            WriteError: refused (412 when ``if_version`` does not match, ...), or no
                answer in :data:`WRITE_ATTEMPTS` attempts.
            ConnectError: the token provider failed.
        """
        stored: dict[str, Any] = await self._request("PUT", _documents(collection, id), document,
                                                     if_version=if_version)
        return stored

    async def patch(self, collection: str, id: str, patch: Mapping[str, Any], *,
                    if_version: int | None = None) -> dict[str, Any]:
        """Merge ``patch`` into document ``id`` (JSON merge patch: null removes a
        field); the stored document.

        Raises:
            WriteError: refused (404 when there is no such document, 412, ...), or
                no answer in :data:`WRITE_ATTEMPTS` attempts.
            ConnectError: the token provider failed.
        """
        stored: dict[str, Any] = await self._request(
            "PATCH", _documents(collection, id), patch, if_version=if_version,
            content_type="application/merge-patch+json")
        return stored

    async def delete(self, collection: str, id: str, *, if_version: int | None = None) -> None:
        """Delete document ``id``.

        Raises:
            WriteError: refused (404 when there is no such document, 412, ...), or
                no answer in :data:`WRITE_ATTEMPTS` attempts.
            ConnectError: the token provider failed.
        """
        await self._request("DELETE", _documents(collection, id), None, if_version=if_version)

    # -- internals -------------------------------------------------------------
    async def _request(self, method: str, path: str, body: Mapping[str, Any] | None, *,
                     if_version: int | None = None,
                     content_type: str = "application/json") -> Any:
        """Send one logical write, retried with one ``Idempotency-Key``; its JSON answer.

        Raises:
            WriteError: refused, or no answer in :data:`WRITE_ATTEMPTS` attempts.
            ConnectError: the token provider failed.
        """
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.http_url, timeout=WRITE_TIMEOUT)
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        token = await self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if if_version is not None:
            headers["If-Match"] = f'"{if_version}"'
        content = None
        if body is not None:
            content = orjson.dumps(body)
            headers["Content-Type"] = content_type
        for attempt in range(WRITE_ATTEMPTS):
            try:
                response = await self._http.request(method, path, content=content,
                                                    headers=headers)
            except httpx.TransportError as exc:
                failure = WriteError(0, f"no answer from {self.http_url} "
                                        f"({str(exc) or type(exc).__name__})")
            else:
                if response.status_code != 503:
                    break
                failure = _write_error(response)
            if attempt == WRITE_ATTEMPTS - 1:
                raise failure
            await asyncio.sleep(self._write_delay(attempt))
        if response.status_code >= 400:
            raise _write_error(response)
        return response.json() if response.content else None

    def _set_state(self, state: ConnectionState, **info: Any) -> None:
        self.state = state
        if self._on_state is not None:
            try:
                self._on_state(StateChange(state, attempt=self.attempt, **info))
            except Exception:
                log.exception("on_state callback failed")

    def _set_feed(self, feed: str) -> None:
        if feed == self.feed:
            return
        self.feed = feed
        if self._on_status is not None:
            try:
                self._on_status(feed)
            except Exception:
                log.exception("on_status callback failed")

    async def _token(self) -> str | None:
        """The token for the next connection: ``token`` or what its provider returns.

        Raises:
            ConnectError: the provider raised or returned something else than a string.
        """
        source = self.token
        if source is None or isinstance(source, str):
            return source or None
        try:
            result = source()
            value: object = result if isinstance(result, str) else await result
        except Exception as exc:
            # Only the exception's type: its message might quote a credential.
            log.warning("the token provider failed: %s", type(exc).__name__)
            raise ConnectError(f"the token provider failed ({type(exc).__name__})") from exc
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConnectError(f"the token provider returned a {type(value).__name__}, "
                               "not a string")
        return value or None

    async def _token_after_rejection(self, code: int, reason: str = "", *,
                                     announce: bool = False) -> str | None:
        """The 4401 rule: a fresh token to reconnect with at once, or None to close.

        With ``announce``, the state becomes ``reconnecting`` (delay 0) before the
        provider is asked.
        """
        if code != UNAUTHENTICATED or not callable(self.token) or self._auth_retry:
            return None
        self._auth_retry = True
        if announce:
            self._set_state(ConnectionState.RECONNECTING, delay=0.0, code=code, reason=reason)
        try:
            fresh = await self._token()
        except ConnectError:
            return None
        if fresh is None or fresh == self._used_token:
            return None
        return fresh

    async def _open(self, token: str | None) -> ClientConnection:
        self._used_token = token
        headers = {"Authorization": f"Bearer {token}"} if token else None
        ws = await ws_connect(self.url, open_timeout=self._open_timeout, max_size=None,
                              additional_headers=headers, compression=None)
        try:
            async with asyncio.timeout(self._open_timeout):
                raw = await ws.recv()
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            if code in FATAL_CLOSE_CODES:
                raise ConnectionRejected(code, exc.rcvd.reason if exc.rcvd else "") from exc
            raise
        except BaseException:
            await ws.close()
            raise
        message = orjson.loads(raw)
        if not isinstance(message, dict) or message.get("type") != "welcome":
            await ws.close(1002, "expected welcome")
            raise ConnectError(f"{self.url} did not say welcome: {str(raw)[:80]!r}")
        self.welcome = message
        self._feed_unsettled = True  # live, unless a status message comes next
        return ws

    async def _run(self, ws: ClientConnection | None) -> None:
        code: int | None = None
        reason = ""
        while True:
            if ws is not None:
                code, reason = await self._session(ws)
                ws = None
            fresh: str | None = None
            if code in FATAL_CLOSE_CODES:
                fresh = await self._token_after_rejection(code, reason, announce=True)
                if fresh is None:
                    self._reject(ConnectionRejected(code, reason))
                    return
                # The credentials were renewed: reconnect at once.
            else:
                delay = max(0.0, self._delay(self.attempt))
                self.attempt += 1
                self._set_state(ConnectionState.RECONNECTING, delay=delay, code=code,
                                reason=reason)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
            code, reason = None, ""
            try:
                ws = await self._open(fresh if fresh is not None else await self._token())
            except ConnectionRejected as exc:
                code, reason = exc.code, exc.reason
            except (OSError, TimeoutError, WebSocketException, ValueError, ConnectError) as exc:
                log.debug("reconnect to %s failed: %s", self.url, exc)

    def _reject(self, error: ConnectionRejected) -> None:
        """Close for good after ``error``: every subscription raises it."""
        for sub in self._subs:
            sub._finish(error)
        self._subs.clear()
        self._set_state(ConnectionState.CLOSED, code=error.code, reason=error.reason)

    async def _session(self, ws: ClientConnection) -> tuple[int, str]:
        """Serve one connection until it closes; return the close code and reason."""
        self._ws = ws
        self.attempt = 0
        self._auth_retry = False
        self._outbox.clear()
        self._wire.clear()
        self._set_state(ConnectionState.OPEN)
        for sub in self._subs:
            if (sub.since is None and sub.since_time is None and sub.aggregate is None
                    and sub._ever_subscribed):
                await sub._put(Reset("no_position"))
                self._send_subscribe(sub, reload=True)
            else:
                self._send_subscribe(sub, reload=False)
        self._send({"op": "ping"})  # an answer after any status: settles self.feed
        writer = asyncio.get_running_loop().create_task(self._write(ws))
        try:
            async for raw in ws:
                await self._dispatch(raw)
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await writer
            self._ws = None
            for sub in self._subs:
                sub.wire = None
        rcvd = ws.protocol.close_rcvd
        if rcvd is None:
            return 1006, ""
        return rcvd.code, rcvd.reason

    async def _write(self, ws: ClientConnection) -> None:
        while True:
            while self._outbox:
                await ws.send(self._outbox.popleft())
            self._outbox_ready.clear()
            await self._outbox_ready.wait()

    def _send(self, message: dict[str, Any]) -> None:
        if self._ws is None:
            return
        self._outbox.append(orjson.dumps(message).decode())
        self._outbox_ready.set()

    def _send_subscribe(self, sub: Subscription, *, reload: bool) -> None:
        wire = f"s{self._next_wire}"
        self._next_wire += 1
        message: dict[str, Any] = {"op": "subscribe", "sub": wire, "collection": sub.collection}
        if sub.filter:
            message["filter"] = sub.filter
        if sub.aggregate is not None:
            message["aggregate"] = sub.aggregate
            sub._awaiting_snapshot = sub._resumed = False
            sub._reload = reload
            sub.wire = wire
            self._wire[wire] = sub
            self._send(message)
            return
        if sub.limit is not None:
            message["limit"] = sub.limit
        if sub.fields is not None:
            message["fields"] = sub.fields
        if sub.since is not None:
            message["since"] = sub.since
            sub._awaiting_snapshot = False
            sub._resumed = True
        elif sub.since_time is not None:
            message["since_time"] = sub.since_time
            sub._awaiting_snapshot = False
            sub._resumed = True
        else:
            message["snapshot"] = sub.snapshot or reload
            sub._awaiting_snapshot = bool(message["snapshot"])
            sub._resumed = False
        sub._reload = reload
        sub.wire = wire
        self._wire[wire] = sub
        self._send(message)

    def _remove(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        wire = sub.wire
        if wire is not None:
            self._wire.pop(wire, None)
            self._send({"op": "unsubscribe", "sub": wire})
            sub.wire = None

    async def _dispatch(self, raw: str | bytes) -> None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("server sent invalid JSON: %r", raw[:80])
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if self._feed_unsettled:
            self._feed_unsettled = False
            if kind != "status":
                self._set_feed("live")
        wire = message.get("sub")
        if wire is None:
            if kind == "status":
                feed = message.get("feed")
                if isinstance(feed, str):
                    self._set_feed(feed)
            elif kind == "error":
                log.warning("server error: %s: %s", message.get("code"), message.get("message"))
            return  # pong, authenticated, ...
        sub = self._wire.get(wire)
        if sub is None or sub.closed:
            return  # an old wire id (after resync or unsubscribe)
        if kind == "subscribed":
            sub._ever_subscribed = True
            head = message.get("head")
            if not sub._resumed and not sub._awaiting_snapshot:
                sub.since = head
            await sub._put(Subscribed(head=head, resumed=sub._resumed))
        elif kind == "snapshot":
            sub._awaiting_snapshot = False
            sub.since = message.get("head")
            await sub._put(Snapshot(documents=message.get("documents") or [],
                                    head=message.get("head"), reload=sub._reload))
        elif kind == "aggregate":
            await sub._put(Aggregate(groups=message.get("groups") or [],
                                     full=bool(message.get("full"))))
        elif kind == "change":
            sub.since = message["id"]
            sub.since_time = None
            await sub._put(Change(
                op=message["op"], collection=message.get("collection", sub.collection),
                key=message.get("key"), id=message["id"], ts=message.get("ts", ""),
                document=message.get("document"), updated=message.get("updated"),
                removed=message.get("removed"),
            ))
        elif kind == "resync":
            # The server cannot resume: drop this wire id and reload with a snapshot.
            del self._wire[wire]
            self._send({"op": "unsubscribe", "sub": wire})
            sub.since = sub.since_time = None
            await sub._put(Reset(str(message.get("reason", "history_lost"))))
            if not sub.closed and self._ws is not None:
                self._send_subscribe(sub, reload=True)
        elif kind == "error":
            del self._wire[wire]
            sub.wire = None
            if sub in self._subs:
                self._subs.remove(sub)
            sub._finish(SubscriptionError(str(message.get("code")), str(message.get("message"))))


def _rfc3339(when: str | dt.datetime | None) -> str | None:
    """``since_time`` as the protocol sends it.

    Raises:
        ValueError: a naive datetime (its time zone is unknown).
    """
    if when is None or isinstance(when, str):
        return when
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("since_time must be an aware datetime (with a time zone)")
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def connect(
    url: str,
    *,
    token: str | TokenProvider | None = None,
    on_state: StateCallback | None = None,
    delay: Callable[[int], float] = backoff_delay,
    open_timeout: float = 10.0,
    max_queue: int = DEFAULT_MAX_QUEUE,
    on_status: StatusCallback | None = None,
    write_delay: Callable[[int], float] | None = None,
) -> Client:
    """A :class:`Client` for the server at ``url`` (``http(s)://host[:port]`` or ``ws(s)://.../ws``).

    Use it as ``async with connect(url) as client:``; entering connects once
    (raising :class:`ConnectError` if that fails), leaving closes. After the first
    connection the client reconnects by itself until it is closed.

    ``token`` is an API key or JWT, or a :data:`TokenProvider` called before
    every (re)connect; see :class:`Client` for what a 4401 close does.
    ``on_status`` is called with the server's feed status (``live``,
    ``retrying``, ``down``) each time it changes (:attr:`Client.feed`).

    Raises:
        ValueError: ``url`` is not an http(s) or ws(s) URL.
    """
    return Client(url, token=token, on_state=on_state, delay=delay, open_timeout=open_timeout,
                  max_queue=max_queue, on_status=on_status, write_delay=write_delay)

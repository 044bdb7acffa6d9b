"""The driver seam: the only module that imports the MongoDB driver.

One client per process, created in the app's lifespan. Every driver exception
is translated here into :mod:`realtime.errors`, so the rest of the service is
driver-agnostic.

Two drivers sit behind the same :class:`Database`/:class:`Collection`/
:class:`ChangeStream` (``Settings.driver``, env ``REALTIME_DRIVER``):

- ``motor`` (default): ``motor.motor_asyncio.AsyncIOMotorClient``, which runs
  PyMongo's synchronous driver on a thread pool;
- ``pymongo``: PyMongo's native asyncio API, ``pymongo.AsyncMongoClient``,
  Motor's upstream successor.

Both raise the same ``pymongo.errors`` and have the same collection API; they
differ only in how the client is built, that ``watch()`` and ``close()`` are
coroutines in PyMongo's API (Motor opens a change stream lazily on a worker
thread and closes synchronously), which :meth:`Database.watch` and
:meth:`Database.close` absorb.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import bson
import bson.errors
from bson import Timestamp
from motor.motor_asyncio import (
    AsyncIOMotorChangeStream,
    AsyncIOMotorClient,
    AsyncIOMotorCollection,
    AsyncIOMotorDatabase,
)
from pymongo import AsyncMongoClient, ReturnDocument, monitoring
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    BulkWriteError,
    CollectionInvalid,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WTimeoutError,
)
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from realtime import _compat
from realtime.config import Settings
from realtime.errors import (
    DatabaseUnavailable,
    DuplicateKey,
    HistoryLost,
    InvalidDocument,
    RealtimeError,
)

__all__ = [
    "BulkItemError",
    "ChangeStream",
    "Collection",
    "Database",
    "decode_change",
    "describe",
    "encode_change",
    "is_transient",
    "token_order",
    "token_time",
    "translate",
]

log = logging.getLogger("realtime.db")
T = TypeVar("T")

_Doc = dict[str, Any]
_Client = AsyncIOMotorClient[_Doc] | AsyncMongoClient[_Doc]
_Db = AsyncIOMotorDatabase[_Doc] | AsyncDatabase[_Doc]
_Coll = AsyncIOMotorCollection[_Doc] | AsyncCollection[_Doc]
_Stream = AsyncIOMotorChangeStream[_Doc] | AsyncChangeStream[_Doc]

#: Server error codes after which a change stream may be resumed (the driver's list,
#: plus network errors which carry no code).
_RESUMABLE_CODES = frozenset(
    {6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 63, 150, 13388, 234, 133,
     43}
)
_HISTORY_LOST_CODES = frozenset({286, 280})
#: Seconds a cancelled PyMongo read may take to stop before it is left to close().
_CANCEL_GRACE = 0.5
#: Seconds a change stream's close waits for a Motor read in flight (a getMore
#: waits up to the feed's ``maxAwaitTimeMS``, 1 s by default).
_CLOSE_WAIT = 1.5
#: Collection handles :meth:`Database.collection` keeps.
HANDLES_KEPT = 1024


def is_transient(exc: BaseException) -> bool:
    """True for errors after which retrying the same operation may succeed.

    Network errors, server selection timeouts and ``OperationFailure``s that carry
    the ``ResumableChangeStreamError`` / ``RetryableWriteError`` label or a
    resumable code are transient; ``ChangeStreamHistoryLost`` is not.
    """
    if isinstance(exc, DatabaseUnavailable):
        return True
    if isinstance(exc, ConnectionFailure | ServerSelectionTimeoutError | NetworkTimeout):
        return True
    if isinstance(exc, OperationFailure):
        if exc.code in _HISTORY_LOST_CODES:
            return False
        if exc.has_error_label("ResumableChangeStreamError"):
            return True
        if exc.has_error_label("RetryableWriteError"):
            return True
        return exc.code in _RESUMABLE_CODES
    return False


#: Server error codes of a database that is shutting down or restarting.
_SHUTDOWN_CODES = frozenset({91, 11600, 11602})
#: Server error codes of a member that is not (or no longer) the primary.
_NOT_PRIMARY_CODES = frozenset({189, 10107, 13435, 13436})


def describe(exc: BaseException, selection_timeout: float | None = None) -> str:
    """What went wrong with the database, in words for people.

    Never an exception class name (those go to the log); ``selection_timeout``
    (seconds) is the client's server-selection timeout, when known.
    """
    if isinstance(exc, ServerSelectionTimeoutError):
        if selection_timeout is None:
            return "the database did not answer in time"
        return f"the database did not answer within {selection_timeout:g} s"
    if isinstance(exc, NetworkTimeout | ExecutionTimeout):
        return "the database took too long to reply"
    if isinstance(exc, WTimeoutError):
        return "a majority of the database's members did not confirm the write in time"
    if isinstance(exc, ConnectionFailure):
        return "the connection to the database was lost"
    if isinstance(exc, OperationFailure):
        if exc.code in _SHUTDOWN_CODES:
            return "the database is shutting down or restarting"
        if exc.code in _NOT_PRIMARY_CODES:
            return "the database is not the primary right now (an election may be under way)"
        if exc.code in _HISTORY_LOST_CODES:
            return "the database's history (oplog) no longer holds the resume point"
        message = str((exc.details or {}).get("errmsg") or "").strip()
        return f"the database refused the operation (code {exc.code}{': ' if message else ''}" \
               f"{message[:200]})"
    return "the database driver failed (see the server log)"


def translate(exc: BaseException, selection_timeout: float | None = None) -> RealtimeError:
    """Map a driver exception to the service's error tree.

    The error's detail says what happened in words (:func:`describe`); the
    driver's exception class is logged here, at debug level, and stays the
    error's ``__cause__`` when raised ``from`` it.
    """
    log.debug("database error %s: %s", type(exc).__name__, exc)
    if isinstance(exc, DuplicateKeyError):
        return DuplicateKey("a document with this _id already exists")
    if isinstance(exc, OperationFailure) and exc.code in _HISTORY_LOST_CODES:
        return HistoryLost(f"change stream history lost: {describe(exc)}")
    if isinstance(exc, WTimeoutError | ExecutionTimeout) or is_transient(exc):
        return DatabaseUnavailable(f"database unavailable: {describe(exc, selection_timeout)}")
    if isinstance(exc, OperationFailure) and exc.code in (2, 9, 14, 52, 55, 17419, 10334):
        return InvalidDocument(f"rejected by the database: {exc.details or exc}")
    log.warning("unexpected database error %s: %s", type(exc).__name__, exc)
    return RealtimeError(f"database error: {describe(exc, selection_timeout)}")


@asynccontextmanager
async def _translated(selection_timeout: float | None = None) -> AsyncIterator[None]:
    try:
        yield
    except PyMongoError as exc:
        raise translate(exc, selection_timeout) from exc


async def _call(awaitable: Awaitable[T], selection_timeout: float | None = None) -> T:
    try:
        return await awaitable
    except PyMongoError as exc:
        raise translate(exc, selection_timeout) from exc


@dataclass(frozen=True, slots=True)
class BulkItemError:
    """One failed item of an ordered bulk insert."""

    index: int
    code: int
    message: str


class _HealthLogger(monitoring.ServerHeartbeatListener, monitoring.ServerListener):
    """Logs connection health: server state changes and heartbeat failures."""

    def __init__(self) -> None:
        self.failing = False
        self.closing = False

    def started(self, event: Any) -> None:
        pass

    def succeeded(self, event: Any) -> None:
        if self.failing:
            self.failing = False
            log.info("database %s answers heartbeats again", event.connection_id)

    def failed(self, event: Any) -> None:
        if not self.failing and not self.closing:
            self.failing = True
            log.warning("database %s heartbeat failed: %s", event.connection_id, event.reply)

    def opened(self, event: Any) -> None:
        log.debug("database server %s added to topology", event.server_address)

    def description_changed(self, event: Any) -> None:
        old = event.previous_description.server_type_name
        new = event.new_description.server_type_name
        if old != new:
            log.info("database %s is now %s (was %s)", event.server_address, new, old)

    def closed(self, event: Any) -> None:
        log.debug("database server %s removed from topology", event.server_address)


_RAW_OPTIONS: bson.CodecOptions[dict[str, Any]] = bson.CodecOptions(tz_aware=True)


def encode_change(raw: Mapping[str, Any]) -> bytes:
    """A raw change-stream event as BSON (what the relay publishes).

    Raises:
        bson.errors.InvalidDocument: it cannot be encoded (never for a driver's own event).
    """
    return bson.encode(raw)


def decode_change(data: bytes) -> dict[str, Any]:
    """The raw change-stream event of :func:`encode_change`, with the driver's own types.

    Raises:
        ValueError: ``data`` is not a BSON document.
    """
    try:
        return bson.decode(data, codec_options=_RAW_OPTIONS)
    except bson.errors.BSONError as exc:
        raise ValueError(f"not a BSON change event: {exc}") from None


def token_time(data: str) -> tuple[int, int] | None:
    """The cluster time inside a resume token, where its format is known.

    SecantusDB tokens are hex-encoded BSON documents with the cluster time in
    ``t``; MongoDB's KeyString tokens are not decoded (None).
    """
    try:
        decoded = bson.decode(bytes.fromhex(data))
    except (ValueError, bson.errors.BSONError):
        return None
    ts = decoded.get("t")
    if isinstance(ts, Timestamp):
        return (ts.time, ts.inc)
    return None


def token_order(data: str) -> tuple[int, int, int, str]:
    """A key that sorts resume tokens (``_data``) in the order of the stream.

    SecantusDB tokens (hex BSON) sort by cluster time, then oplog sequence;
    any other token (MongoDB's KeyString, hex that sorts as the bytes do) by
    its text. Keys of the two kinds are not comparable with each other.
    """
    try:
        decoded = bson.decode(bytes.fromhex(data))
    except (ValueError, bson.errors.BSONError):
        return (0, 0, 0, data)
    ts = decoded.get("t")
    seq = decoded.get("s")
    if isinstance(ts, Timestamp):
        return (ts.time, ts.inc, seq if isinstance(seq, int) else 0, "")
    return (0, 0, 0, data)


class ChangeStream:
    """A change stream cursor; events are raw BSON-decoded dicts."""

    def __init__(self, stream: _Stream, pending: set[asyncio.Task[Any]] | None = None,
                 selection_timeout: float | None = None) -> None:
        self._stream = stream
        #: PyMongo only: reads abandoned by a cancelled caller, awaited by Database.close.
        self._pending = pending
        #: The client's server-selection timeout in seconds, for error messages.
        self._wait = selection_timeout
        #: Motor only: events of the last batch read, not handed out yet, and the read
        #: in flight (kept when its caller is cancelled: the next read takes its batch,
        #: and close waits for it).
        self._batch: deque[dict[str, Any]] = deque()
        self._read_batch = (_compat.motor_batch_reader(stream) if pending is None
                            else None)
        self._reading: asyncio.Future[list[Any]] | None = None

    @property
    def resume_token(self) -> Mapping[str, Any] | None:
        """The post-batch resume token (known before any event arrives).

        Read it after :meth:`try_next` returned None: while a batch read at once
        (Motor) is being handed out, it is already past the batch's last event.
        """
        # (A Motor stream not opened yet raises AttributeError: no token yet.)
        token = getattr(self._stream, "resume_token", None)
        return token if token is None else dict(token)

    async def try_next(self) -> dict[str, Any] | None:
        """The next event, or None after one empty ``getMore`` wait.

        With Motor, a read takes the whole batch the last ``getMore`` brought in
        one worker-thread hop and hands it out event by event
        (:func:`realtime._compat.motor_batch_reader`). Cancellation is prompt
        with both drivers. (PyMongo's async API finishes a
        socket read before it honours a cancellation, which can take as long as
        the server takes to answer; the read then goes on in its own task, which
        :meth:`Database.close` ends by closing the client, and awaits.)

        Raises:
            DatabaseUnavailable: a transient error the driver could not resume from.
            HistoryLost: the resume point is gone from the oplog.
        """
        if self._batch:
            return self._batch.popleft()
        if self._pending is None:
            if self._read_batch is None:
                return await _call(self._stream.try_next(), self._wait)
            if self._reading is None:
                self._reading = self._read_batch()
            try:
                batch = await _call(asyncio.shield(self._reading), self._wait)
            except asyncio.CancelledError:
                raise  # the read goes on: the next call takes its batch, close waits
            except BaseException:
                self._reading = None
                raise
            self._reading = None
            if not batch:
                return None
            self._batch.extend(batch[1:])
            first: dict[str, Any] = batch[0]
            return first
        read = asyncio.ensure_future(self._stream.try_next())
        try:
            return await _call(asyncio.shield(read), self._wait)
        except asyncio.CancelledError:
            read.cancel()
            done, _ = await asyncio.wait({read}, timeout=_CANCEL_GRACE)
            if not done:
                self._pending.add(read)
                read.add_done_callback(self._pending.discard)
            else:
                with contextlib.suppress(BaseException):
                    read.result()  # retrieved, so never "exception was never retrieved"
            raise

    async def close(self) -> None:
        """Close the server cursor (errors ignored).

        A Motor batch read still in flight (its caller cancelled) is given up to
        :data:`_CLOSE_WAIT` seconds to end first: the driver's cursor must not be
        closed on one thread while another reads it.
        """
        reading, self._reading = self._reading, None
        if reading is not None:
            await asyncio.wait({reading}, timeout=_CLOSE_WAIT)
            if reading.done():
                with contextlib.suppress(BaseException):
                    reading.result()  # retrieved: the stream closes anyway
        with contextlib.suppress(Exception):
            await self._stream.close()


class Collection:
    """Document operations on one collection, with driver errors translated."""

    def __init__(self, coll: _Coll, selection_timeout: float | None = None) -> None:
        self._coll = coll
        self.name: str = coll.name
        #: The client's server-selection timeout in seconds, for error messages.
        self._wait = selection_timeout

    async def insert_one(self, doc: dict[str, Any]) -> Any:
        """Insert ``doc``; return its ``_id``. Raises DuplicateKey, DatabaseUnavailable."""
        result = await _call(self._coll.insert_one(doc), self._wait)
        return result.inserted_id

    async def insert_many(
        self, docs: Sequence[dict[str, Any]]
    ) -> tuple[list[Any], list[BulkItemError]]:
        """Ordered insert; returns inserted ids and the error that stopped it (if any)."""
        try:
            result = await self._coll.insert_many(list(docs), ordered=True)
        except BulkWriteError as exc:
            details = exc.details
            n = int(details.get("nInserted", 0))
            errors = [
                BulkItemError(int(e["index"]), int(e.get("code", 0)), str(e.get("errmsg", "")))
                for e in details.get("writeErrors", [])
            ]
            return [d.get("_id") for d in docs[:n]], errors
        except PyMongoError as exc:
            raise translate(exc, self._wait) from exc
        return list(result.inserted_ids), []

    async def find_one(self, query: Mapping[str, Any]) -> dict[str, Any] | None:
        """One matching document or None."""
        doc: dict[str, Any] | None = await _call(self._coll.find_one(query), self._wait)
        return doc

    async def count_documents(self, query: Mapping[str, Any]) -> int:
        """How many documents match ``query``. Raises DatabaseUnavailable."""
        return int(await _call(self._coll.count_documents(dict(query)), self._wait))

    async def find(
        self,
        query: Mapping[str, Any],
        *,
        sort: Sequence[tuple[str, int]] | None = None,
        limit: int = 0,
        skip: int = 0,
        batch_size: int = 100,
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream matching documents from a server cursor."""
        cursor = self._coll.find(query, sort=list(sort) if sort else None, limit=limit,
                                 skip=skip, batch_size=batch_size)
        try:
            async with _translated(self._wait):
                async for doc in cursor:
                    yield doc
        finally:
            await cursor.close()

    async def snapshot(
        self,
        query: Mapping[str, Any],
        *,
        sort: Sequence[tuple[str, int]],
        limit: int,
    ) -> tuple[list[dict[str, Any]], tuple[int, int] | None]:
        """The matching documents, and the cluster time the read finished at.

        The time is the ``operationTime`` of the last reply, read in an explicit
        session: every change the documents show has a cluster time at or
        before it (None if the server gave none). The read concern is
        ``majority``, like change streams: a document shows no change the
        stream could still be waiting to see committed.
        """
        coll = self._coll.with_options(read_concern=ReadConcern("majority"))
        docs: list[dict[str, Any]] = []
        async with _translated(self._wait):
            started = coll.database.client.start_session(causal_consistency=False)
            session = await started if asyncio.iscoroutine(started) else started
            async with session:
                cursor = coll.find(query, sort=list(sort), limit=limit,
                                         batch_size=min(limit, 1000) if limit else 1000,
                                         session=session)
                try:
                    async for doc in cursor:
                        docs.append(doc)
                finally:
                    await cursor.close()
                at = session.operation_time
        return docs, None if at is None else (at.time, at.inc)

    async def aggregate_at(
        self, pipeline: Sequence[Mapping[str, Any]]
    ) -> tuple[list[dict[str, Any]], tuple[int, int] | None]:
        """The rows of ``pipeline``, read at one point in time, and that time.

        A snapshot read (read concern ``snapshot``: majority-committed data as of
        one cluster time): the rows reflect exactly the changes committed at or
        before the returned cluster time (the reply's ``atClusterTime``) and none
        after (None if the server gave no time).

        Raises:
            DatabaseUnavailable: the database cannot be reached.
            RealtimeError: the database refused the pipeline.
        """
        db = self._coll.database
        async with _translated(self._wait):
            reply = await db.command({"aggregate": self.name, "pipeline": list(pipeline),
                                      "cursor": {}, "readConcern": {"level": "snapshot"}})
            cursor = reply["cursor"]
            rows: list[dict[str, Any]] = list(cursor.get("firstBatch") or ())
            at = cursor.get("atClusterTime")
            cursor_id = cursor.get("id", 0)
            while cursor_id:
                more = await db.command({"getMore": cursor_id, "collection": self.name})
                rows += more["cursor"].get("nextBatch") or ()
                cursor_id = more["cursor"].get("id", 0)
        if not isinstance(at, Timestamp):
            return rows, None
        return rows, (at.time, at.inc)

    async def find_one_and_replace(
        self, query: Mapping[str, Any], doc: dict[str, Any], *, upsert: bool = False
    ) -> dict[str, Any] | None:
        """Replace the matching document; return the new one (None if nothing matched)."""
        result: dict[str, Any] | None = await _call(self._coll.find_one_and_replace(
            query, doc, upsert=upsert, return_document=ReturnDocument.AFTER), self._wait)
        return result

    async def find_one_and_update(
        self, query: Mapping[str, Any], update: Mapping[str, Any], *, upsert: bool = False
    ) -> dict[str, Any] | None:
        """Update the matching document; return the new one (None if nothing matched)."""
        result: dict[str, Any] | None = await _call(self._coll.find_one_and_update(
            query, update, upsert=upsert, return_document=ReturnDocument.AFTER), self._wait)
        return result

    async def delete_one(self, query: Mapping[str, Any]) -> int:
        """Delete one matching document; return how many were deleted."""
        result = await _call(self._coll.delete_one(query), self._wait)
        return int(result.deleted_count)

    async def create_index(self, keys: Sequence[tuple[str, int]], **options: Any) -> None:
        """Create an index (no-op if it exists). Raises DatabaseUnavailable."""
        await _call(self._coll.create_index(list(keys), **options), self._wait)


class Database:
    """The process's one client and its database, created in the app's lifespan.

    ``settings.driver`` picks the client class (see the module docstring); pool
    size and timeouts come from the settings, anything else from the URI.
    """

    def __init__(self, settings: Settings, uri: str) -> None:
        self._health = _HealthLogger()
        options: dict[str, Any] = dict(
            maxPoolSize=settings.max_pool_size,
            serverSelectionTimeoutMS=settings.server_selection_timeout_ms,
            connectTimeoutMS=settings.connect_timeout_ms,
            socketTimeoutMS=settings.socket_timeout_ms,
            appname=settings.app_name,
            tz_aware=True,
            event_listeners=[self._health],
        )
        #: Which driver this client uses: ``motor`` or ``pymongo``.
        self.driver = settings.driver
        self._client: _Client = (
            AsyncMongoClient(uri, **options) if settings.driver == "pymongo"
            else AsyncIOMotorClient(uri, **options)
        )
        self._db: _Db = self._client.get_database(
            settings.database, write_concern=WriteConcern(w="majority")
        )
        self.name = settings.database
        #: The server-selection timeout in seconds, for error messages.
        self._wait = settings.server_selection_timeout_ms / 1000
        self._prepared: set[str] = set()
        #: Collection handles by name, the oldest dropped past :data:`HANDLES_KEPT`.
        self._handles: dict[str, Collection] = {}
        self._pending: set[asyncio.Task[Any]] = set()

    async def ping(self) -> None:
        """Raises DatabaseUnavailable unless the database answers."""
        await _call(self._client.admin.command("ping"), self._wait)

    async def oldest_oplog_time(self) -> tuple[int, int] | None:
        """Cluster time of the oldest oplog entry, or None if it cannot be read."""
        try:
            entry = await self._client.local["oplog.rs"].find_one(
                {}, sort=[("$natural", 1)], projection={"ts": 1})
        except PyMongoError:
            return None
        ts = None if entry is None else entry.get("ts")
        if isinstance(ts, Timestamp):
            return (ts.time, ts.inc)
        return None

    async def oplog_window(self, back: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """The cluster times of the oplog entry ``back`` entries before the newest
        (the oldest, if there are fewer) and of the newest; None if it cannot be read."""
        oplog = self._client.local["oplog.rs"]
        try:
            newest = await oplog.find_one({}, sort=[("$natural", -1)], projection={"ts": 1})
            found = await oplog.find({}, sort=[("$natural", -1)], projection={"ts": 1},
                                     skip=back, limit=1).to_list(1)
            older = found[0] if found else await oplog.find_one(
                {}, sort=[("$natural", 1)], projection={"ts": 1})
        except PyMongoError:
            return None
        last = None if newest is None else newest.get("ts")
        first = None if older is None else older.get("ts")
        if isinstance(first, Timestamp) and isinstance(last, Timestamp):
            return (first.time, first.inc), (last.time, last.inc)
        return None

    async def oplog_entries(self) -> int:
        """How many entries the oplog holds (an estimate from its metadata).

        Raises:
            RealtimeError: the database cannot be reached (DatabaseUnavailable) or
                refused the read.
        """
        async with _translated(self._wait):
            return int(await self._client.local["oplog.rs"].estimated_document_count())

    def collection(self, name: str) -> Collection:
        """A collection handle (no I/O), kept for the next call with ``name``.

        Making a driver's collection object costs more than a request's own work
        (Motor builds it through its delegation machinery), so handles are kept:
        at most :data:`HANDLES_KEPT`, the oldest dropped first (names come from
        requests, so the map must not grow without bound).
        """
        handle = self._handles.get(name)
        if handle is None:
            if len(self._handles) >= HANDLES_KEPT:
                del self._handles[next(iter(self._handles))]
            handle = self._handles[name] = Collection(self._db.get_collection(name), self._wait)
        return handle

    async def prepare_collection(self, name: str) -> None:
        """Create ``name`` with change-stream pre-images if it does not exist yet.

        Pre-images let the live feed decide exactly whether an update moved a
        document out of a subscription's filter and which subscribers saw a
        deleted document.
        """
        if name in self._prepared:
            return
        try:
            await self._db.create_collection(name, changeStreamPreAndPostImages={"enabled": True})
        except CollectionInvalid:
            pass  # already exists
        except OperationFailure as exc:
            if exc.code != 48:  # NamespaceExists
                raise translate(exc, self._wait) from exc
        except PyMongoError as exc:
            raise translate(exc, self._wait) from exc
        self._prepared.add(name)

    async def list_collection_names(self) -> list[str]:
        """Names of the database's collections."""
        names: list[str] = await _call(self._db.list_collection_names(), self._wait)
        return names

    async def watch(
        self,
        pipeline: Sequence[Mapping[str, Any]],
        *,
        resume_after: Mapping[str, Any] | None = None,
        start_after: Mapping[str, Any] | None = None,
        start_at_operation_time: tuple[int, int] | None = None,
        max_await_time_ms: int | None = None,
        batch_size: int | None = None,
    ) -> ChangeStream:
        """Open a change stream on the database.

        Full documents come by ``updateLookup`` and pre-images when available.
        ``start_at_operation_time`` (a cluster time ``(seconds, increment)``)
        starts at the first change committed at or after it.

        Raises:
            DatabaseUnavailable, HistoryLost
        """
        options: dict[str, Any] = dict(
            full_document="updateLookup",
            full_document_before_change="whenAvailable",
            resume_after=resume_after,
            start_after=start_after,
            start_at_operation_time=(None if start_at_operation_time is None
                                     else Timestamp(*start_at_operation_time)),
            max_await_time_ms=max_await_time_ms,
            batch_size=batch_size,
        )
        async with _translated(self._wait):
            if isinstance(self._db, AsyncDatabase):
                # PyMongo's async watch() opens the server cursor itself.
                return ChangeStream(await self._db.watch(list(pipeline), **options),
                                    self._pending, self._wait)
            stream = self._db.watch(list(pipeline), **options)
            # Open the server cursor now (Motor opens it lazily on a worker thread), so
            # errors surface here and the post-batch resume token is known at once.
            await _compat.open_motor_change_stream(stream)
        return ChangeStream(stream, None, self._wait)

    async def close(self) -> None:
        """Close the client and its pool."""
        self._health.closing = True
        if isinstance(self._client, AsyncMongoClient):
            await self._client.close()
            # Closing the pool ends reads that cancelled callers left behind.
            if self._pending:
                done, pending = await asyncio.wait(set(self._pending), timeout=5)
                for read in done:
                    with contextlib.suppress(BaseException):
                        read.result()
                if pending:
                    log.warning("%d change stream reads still pending after close",
                                len(pending))
        else:
            self._client.close()


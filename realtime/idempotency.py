"""``Idempotency-Key``: the first response to a keyed write, kept and replayed.

The IETF httpapi draft "The Idempotency-Key HTTP Header Field": a client sends
a unique key with a POST/PUT/PATCH/DELETE and may retry the request with the
same key; the server executes it once and answers every retry with the first
response. Records live in the database (collection ``_realtime_idempotency``),
so a replay after a server restart gets the original response:

- a record's ``_id`` is a hash of the credential (and tenant), the method,
  the path and the key, so keys are scoped to the caller and the request;
- it holds a fingerprint of the request (body and ``If-Match``): the same key
  with another request is refused (:class:`KeyReused`, 422);
- while the first request runs the record is ``pending`` with a lock: a second
  request with the key gets :class:`KeyInFlight` (409); the lock of a request
  that died with its process expires after :data:`LOCK_SECONDS`, after which
  a retry takes the record over (:attr:`Claim.retaken`);
- the record's id is also the write's operation id (``_op``, see
  :mod:`realtime.store`), so a retry whose first attempt wrote the document
  but never recorded its response does not write again;
- records expire ``idempotency_ttl_seconds`` after creation (a TTL index on
  ``expires``; a lookup also ignores an expired record the TTL monitor has
  not removed yet). Only successful (2xx) responses of at most
  ``idempotency_max_response_bytes`` are kept; an error frees the key.

This module does not import the driver; it works through :mod:`realtime.db`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from realtime.config import Settings
from realtime.db import Collection, Database
from realtime.errors import BadRequest, Conflict, DuplicateKey, RealtimeError
from realtime.names import IDEMPOTENCY_COLLECTION

__all__ = [
    "COLLECTION",
    "KEY_PATTERN",
    "LOCK_SECONDS",
    "MAX_KEY_LENGTH",
    "Claim",
    "Idempotency",
    "KeyInFlight",
    "KeyReused",
    "StoredResponse",
    "check_key",
    "fingerprint",
    "record_id",
]

#: Where the records are kept (not an exposed collection: names start with a letter).
COLLECTION: Final = IDEMPOTENCY_COLLECTION
#: Seconds a request holds its key; after that a retry may take an abandoned key over.
LOCK_SECONDS: Final = 30.0
MAX_KEY_LENGTH: Final = 255
#: Visible ASCII without spaces, quotes or backslashes (a UUID fits, as the draft suggests).
KEY_PATTERN: Final = rf"^[!#-\[\]-~]{{1,{MAX_KEY_LENGTH}}}$"
_KEY: Final = re.compile(KEY_PATTERN)
#: Attempts to create or take over a record before giving up with 409.
_ATTEMPTS: Final = 4


class KeyInFlight(Conflict):
    """A request with this ``Idempotency-Key`` is still being processed (409)."""

    slug = "idempotency-key-in-use"


class KeyReused(RealtimeError):
    """The ``Idempotency-Key`` was used with a different request (422)."""

    status = 422
    slug = "idempotency-key-reused"


def check_key(value: str) -> str:
    """Return ``value`` if it is a usable ``Idempotency-Key``.

    Raises:
        BadRequest: empty, longer than 255 characters, or outside visible ASCII
            (no spaces, ``"`` or ``\\``).
    """
    if not _KEY.match(value):
        reason = (f"must be 1 to {MAX_KEY_LENGTH} visible ASCII characters without spaces, "
                  '" or \\ (e.g. a UUID)')
        raise BadRequest(f"header 'Idempotency-Key': {reason}",
                         invalid_params=[{"name": "Idempotency-Key", "in": "header",
                                          "reason": reason}])
    return value


def record_id(scope: str, method: str, path: str, key: str) -> str:
    """The record of ``key`` for a caller (``scope``) and a request (method, path)."""
    raw = "\x00".join((scope, method.upper(), path, key)).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def fingerprint(body: bytes, *parts: str | None) -> str:
    """A hash of the request's body and the headers that change its meaning."""
    digest = hashlib.sha256(body)
    for part in parts:
        digest.update(b"\x00" + (part or "").encode())
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A kept response: status, the headers that matter, body."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Claim:
    """The right to execute a keyed request; ``op`` is the write's operation id."""

    id: str
    retaken: bool

    @property
    def op(self) -> str:
        """The operation id the write stores in ``_op`` (stable across retries)."""
        return self.id


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Idempotency:
    """The records of ``Idempotency-Key`` requests in the database.

    ``clock`` gives the current time (injected in tests).
    """

    def __init__(self, db: Database, settings: Settings,
                 clock: Callable[[], datetime] = _utcnow) -> None:
        self.db = db
        self._ttl = timedelta(seconds=settings.idempotency_ttl_seconds)
        self._max_bytes = settings.idempotency_max_response_bytes
        self._clock = clock
        self._indexed = False

    async def _records(self) -> Collection:
        coll = self.db.collection(COLLECTION)
        if not self._indexed:
            await coll.create_index([("expires", 1)], expireAfterSeconds=0,
                                    name="expires_ttl")
            self._indexed = True
        return coll

    async def begin(self, id: str, print_: str) -> StoredResponse | Claim:
        """The kept response of the request ``id``, or a claim to execute it.

        Raises:
            KeyReused: the key was used with another request (422).
            KeyInFlight: a request with the key is being processed (409).
            DatabaseUnavailable
        """
        coll = await self._records()
        for _ in range(_ATTEMPTS):
            now = self._clock()
            try:
                await coll.insert_one({"_id": id, "fingerprint": print_, "state": "pending",
                                       "locked_until": now + timedelta(seconds=LOCK_SECONDS),
                                       "created": now, "expires": now + self._ttl})
            except DuplicateKey:
                pass
            else:
                return Claim(id, retaken=False)
            record = await coll.find_one({"_id": id})
            if record is None:
                continue  # expired meanwhile
            if _aware(record["expires"]) <= now:
                await coll.delete_one({"_id": id, "expires": record["expires"]})
                continue
            if record.get("fingerprint") != print_:
                raise KeyReused("this Idempotency-Key was already used with a different "
                                "request (body or If-Match); use a new key for a new request")
            if record.get("state") == "done":
                return _response(record)
            if _aware(record["locked_until"]) > now:
                raise _in_flight()
            taken = await coll.find_one_and_update(
                {"_id": id, "state": "pending", "locked_until": record["locked_until"]},
                {"$set": {"locked_until": now + timedelta(seconds=LOCK_SECONDS)}})
            if taken is not None:
                return Claim(id, retaken=True)
        raise _in_flight()

    async def finish(self, claim: Claim, response: StoredResponse) -> None:
        """Keep ``response`` for replays (or free the key if it is not kept).

        Only 2xx responses of at most ``idempotency_max_response_bytes`` are kept.

        Raises:
            DatabaseUnavailable
        """
        if not 200 <= response.status < 300 or len(response.body) > self._max_bytes:
            await self.release(claim)
            return
        coll = await self._records()
        await coll.find_one_and_update(
            {"_id": claim.id, "state": "pending"},
            {"$set": {"state": "done", "status": response.status,
                      "headers": dict(response.headers), "body": response.body},
             "$unset": {"locked_until": ""}})

    async def release(self, claim: Claim) -> None:
        """Free the key of a request that failed, so a retry runs again.

        Raises:
            DatabaseUnavailable
        """
        coll = await self._records()
        await coll.delete_one({"_id": claim.id, "state": "pending"})


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _in_flight() -> KeyInFlight:
    return KeyInFlight("a request with this Idempotency-Key is still being processed; "
                       "retry later")


def _response(record: Mapping[str, Any]) -> StoredResponse:
    headers = record.get("headers") or {}
    return StoredResponse(int(record["status"]), {str(k): str(v) for k, v in headers.items()},
                          bytes(record.get("body") or b""))

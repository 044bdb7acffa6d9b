"""Document operations used by the REST layer: versions, preconditions, bulk inserts.

Every document carries a server-managed ``_version`` (1 on insert, +1 on each
write; a document written by someone else without one counts as version 0).
Writes that depend on the current version (PUT, PATCH, conditional DELETE)
are compare-and-set operations on ``{_id, _version}``, so concurrent writers
never lose each other's changes.

Exactly once (docs/reliability.md#exactly-once-writes): every write stores
an operation id in the server-managed ``_op`` field next to ``_version`` (the
caller's, e.g. derived from an ``Idempotency-Key``, or a random one per call).
A write that finds the document already carrying its own operation id was
applied by an earlier attempt of the same operation (a driver retry the
database did not recognise after a lost reply, or a client's retry) and
answers that document instead of writing again: an insert retried after a
lost reply is a success, never a 409, and a replace or patch is never applied
twice (``_version`` +1, one change event).

Lists are keyset-paginated (:mod:`realtime.paging`).

Tenants (docs/security.md): every method takes an optional
:class:`realtime.auth.Tenant`. With one, reads and lists see only the tenant's
documents (its clause is ANDed into the query), writes stamp the tenant field
on the document and refuse a body that names another tenant (403), and
replace/patch/delete only ever match the tenant's documents: another tenant's
document is "not found" (a PUT on its id is a 409, since the id is taken).

This module does not import the driver; it works through :mod:`realtime.db`.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bson import ObjectId

from realtime.auth import Forbidden, Tenant
from realtime.codec import OP_FIELD, check_document, key_to_json
from realtime.config import Settings
from realtime.db import Collection, Database
from realtime.errors import (
    BadRequest,
    Conflict,
    DuplicateKey,
    InvalidDocument,
    NotFound,
    PreconditionFailed,
    RealtimeError,
)
from realtime.names import check_collection
from realtime.paging import Page, SortSpec, decode_cursor, keyset_condition, parse_sort

__all__ = [
    "MAX_BULK",
    "MAX_ID_LENGTH",
    "MAX_LIMIT",
    "OP_FIELD",
    "BulkItem",
    "BulkResult",
    "IfMatch",
    "OpIds",
    "Store",
    "check_id",
    "merge_patch",
    "new_op",
    "version_of",
]

MAX_BULK = 1000
MAX_LIMIT = 1000
MAX_ID_LENGTH = 1024
#: Compare-and-set attempts of an unconditional PUT/PATCH before giving up (409).
MAX_ATTEMPTS = 16

#: Fields a client cannot set: the server manages them.
_MANAGED = ("_id", "_version", OP_FIELD)

#: ``If-Match``: a version, ``"*"`` (the document must exist) or absent.
IfMatch = int | Literal["*"] | None

_MISSING: Any = object()


# --------------------------------------------------------------------------- ids


def check_id(value: Any) -> Any:
    """Return ``value`` if it is a document id the REST API can address.

    Ids are ObjectIds or non-empty strings of at most 1024 characters without
    NUL (a 24-hex string has already become an ObjectId via ``codec.parse_id``).

    Raises:
        InvalidDocument: any other id (numbers, empty or over-long strings).
    """
    if isinstance(value, ObjectId):
        return value
    if not isinstance(value, str):
        raise InvalidDocument("_id must be a string (a 24-hex string is an ObjectId)")
    if not value:
        raise InvalidDocument("_id must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidDocument(f"_id must be at most {MAX_ID_LENGTH} characters")
    if "\x00" in value:
        raise InvalidDocument("_id must not contain NUL")
    return value


def new_op() -> str:
    """A random operation id (16 URL-safe characters, 96 bits)."""
    return secrets.token_urlsafe(12)


class OpIds:
    """Random operation ids like :func:`new_op`'s, read from the system in blocks.

    ``os.urandom`` releases the GIL; with Motor, whose worker threads hold it
    while a request's database call runs, the event loop then waits for it
    again: in a profile of REST writes on Motor (``python -m bench drivers
    --profile``) three quarters of the loop's busy samples were that wait in
    ``secrets.token_urlsafe``. One read of the system's random source serves
    :data:`BLOCK` ids. Not thread-safe: one per event loop (the store's).
    """

    __slots__ = ("_at", "_pool")

    #: Ids per read of the system's random source.
    BLOCK = 256

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def new(self) -> str:
        """A random operation id (16 URL-safe characters, 96 bits)."""
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(12 * self.BLOCK), 0
        self._at = at + 12
        return base64.urlsafe_b64encode(self._pool[at:at + 12]).decode()


def _is_mine(doc: Mapping[str, Any] | None, op: str) -> bool:
    """True if ``doc`` is the result of the operation ``op``."""
    return doc is not None and doc.get(OP_FIELD) == op


def version_of(doc: Mapping[str, Any]) -> int:
    """The document's ``_version`` (0 if it has none, e.g. written by another client)."""
    version = doc.get("_version")
    if isinstance(version, int) and not isinstance(version, bool):
        return version
    return 0


def _version_is(version: int) -> dict[str, Any]:
    """A query on ``_version``; version 0 also matches documents without one."""
    if version == 0:
        return {"$in": [0, None]}
    return {"$eq": version}


# ------------------------------------------------------------------ merge patch


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7396 JSON merge patch to ``target`` and return the result.

    Objects merge recursively, ``null`` removes a member, anything else
    (arrays included) replaces. ``target`` is not modified.
    """
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _same(a: Any, b: Any) -> bool:
    """Structural equality that also compares types (``1``, ``1.0``, ``True`` differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, Mapping):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# ------------------------------------------------------------------------- bulk


@dataclass(slots=True)
class BulkItem:
    """The outcome of one item of a bulk insert."""

    index: int
    status: int
    id: Any = None
    version: int | None = None
    detail: str | None = None


@dataclass(slots=True)
class BulkResult:
    """Per-item outcomes of an ordered bulk insert, in request order."""

    items: list[BulkItem] = field(default_factory=list)

    @property
    def inserted(self) -> int:
        """How many documents were inserted."""
        return sum(1 for item in self.items if item.status == 201)

    @property
    def ok(self) -> bool:
        """True if every item was inserted."""
        return all(item.status == 201 for item in self.items)


# ------------------------------------------------------------------------ store


class Store:
    """Versioned document operations on the exposed collections.

    Every method checks the collection name first: :class:`BadRequest` (400)
    for a name that is not allowed by :func:`realtime.names.check_collection`,
    :class:`NotFound` (404) for a name outside ``settings.collections``. Every
    method may raise :class:`DatabaseUnavailable` (503) when the database
    cannot be reached within the server-selection timeout.
    """

    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self._settings = settings
        self._op_ids = OpIds()

    # -- names

    def check_collection(self, name: str) -> str:
        """Return ``name`` if it is an exposed collection.

        Raises:
            BadRequest: an invalid name (pattern, ``system.*``).
            NotFound: not in the ``collections`` allow-list.
        """
        try:
            check_collection(name)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        allowed = self._settings.collections
        if allowed is not None and name not in allowed:
            raise NotFound(f"collection {name!r} is not exposed")
        return name

    def _coll(self, name: str) -> Collection:
        return self._db.collection(self.check_collection(name))

    async def _writable(self, name: str) -> Collection:
        coll = self._coll(name)
        await self._db.prepare_collection(name)
        return coll

    async def collections(self) -> list[str]:
        """The exposed collections, sorted: the allow-list if set, else those in the database.

        Raises:
            DatabaseUnavailable
        """
        allowed = self._settings.collections
        if allowed is not None:
            return sorted(set(allowed))
        names = await self._db.list_collection_names()
        exposed = []
        for name in names:
            try:
                exposed.append(check_collection(name))
            except ValueError:
                continue
        return sorted(exposed)

    # -- reads

    async def get(self, collection: str, id: Any, *, tenant: Tenant | None = None
                  ) -> dict[str, Any]:
        """The document with ``_id`` ``id`` (of ``tenant``, if given).

        Raises:
            NotFound: no such document.
        """
        doc = await self._coll(collection).find_one(_owned({"_id": id}, tenant))
        if doc is None:
            raise _not_found(collection, id)
        return doc

    async def count(self, collection: str, *, filter: Mapping[str, Any] | None = None,
                    tenant: Tenant | None = None) -> int:
        """How many documents match ``filter`` (already in MongoDB form), of ``tenant``.

        Raises:
            DatabaseUnavailable
        """
        coll = self._coll(collection)
        query: dict[str, Any] = dict(filter or {})
        if tenant is not None:
            query = tenant.restrict(query)
        return await coll.count_documents(query)

    async def list(
        self,
        collection: str,
        *,
        filter: Mapping[str, Any] | None = None,
        sort: SortSpec | None = None,
        limit: int = 100,
        after: str | None = None,
        skip: int = 0,
        tenant: Tenant | None = None,
    ) -> Page:
        """A page of documents matching ``filter`` (already in MongoDB form), of ``tenant``.

        ``sort`` comes from :func:`parse_sort` (default: ``_id`` ascending),
        ``after`` is the previous page's ``next``. The page fetches ``limit + 1``
        documents to learn whether there is a next one.

        Raises:
            BadRequest: a malformed cursor, a limit outside 1..1000, a negative skip.
        """
        coll = self._coll(collection)
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}")
        if skip < 0:
            raise BadRequest("skip must not be negative")
        sort = sort or parse_sort(None)
        query: dict[str, Any] = dict(filter or {})
        if tenant is not None:
            query = tenant.restrict(query)
        if after is not None:
            keyset = keyset_condition(sort, decode_cursor(after, sort))
            query = {"$and": [query, keyset]} if query else keyset
        docs = coll.find(query, sort=list(sort), limit=limit + 1, skip=skip,
                         batch_size=min(limit + 1, 500))
        page = Page(docs, sort, limit)
        try:
            await page.prefetch()
        except BaseException:
            await page.aclose()
            raise
        return page

    # -- writes

    async def insert(self, collection: str, doc: Mapping[str, Any], *,
                     tenant: Tenant | None = None, op: str | None = None) -> dict[str, Any]:
        """Insert ``doc`` (checked by ``codec.check_document``) with ``_version`` 1.

        Without ``_id`` an ObjectId is generated here (so a retry inserts the same
        id). Returns the stored document; if a document with this ``_id`` already
        carries the operation id ``op`` (an earlier attempt of this insert), that one.

        Raises:
            DuplicateKey: a document with this ``_id`` exists (409).
            InvalidDocument: an ``_id`` the API cannot address (422).
            Forbidden: the document names another tenant (403).
        """
        coll = self._coll(collection)
        op = op or self._op_ids.new()
        stored = _versioned(_stamped(doc, tenant), 1, op)
        if "_id" in stored:
            check_id(stored["_id"])
        else:
            stored = {"_id": ObjectId(), **stored}
        await self._db.prepare_collection(collection)
        try:
            await coll.insert_one(dict(stored))
        except DuplicateKey:
            existing = await coll.find_one({"_id": stored["_id"]})
            if existing is not None and _is_mine(existing, op):
                return existing
            raise
        return stored

    async def insert_many(self, collection: str, items: Sequence[Any], *,
                          tenant: Tenant | None = None, op: str | None = None) -> BulkResult:
        """Insert decoded JSON values in order, stopping at the first failure.

        Item ``i`` gets the operation id ``<op>.<i>`` (and an ObjectId if it has
        no ``_id``); an item whose ``_id`` already holds a document with that
        operation id was inserted by an earlier attempt and counts as inserted.

        Each item is checked with ``codec.check_document``; an invalid item
        (422), an item of another tenant (403) or a duplicate ``_id`` (409)
        stops the insert, and later items are reported with status 424 (not
        attempted).

        Raises:
            BadRequest: more than 1000 items.
        """
        coll = self._coll(collection)
        if len(items) > MAX_BULK:
            raise BadRequest(f"at most {MAX_BULK} documents per bulk request")
        op = op or self._op_ids.new()
        result = BulkResult()
        docs: list[dict[str, Any]] = []
        failure: BulkItem | None = None
        for index, item in enumerate(items):
            try:
                doc = _versioned(_stamped(check_document(item), tenant), 1, f"{op}.{index}")
                if "_id" in doc:
                    check_id(doc["_id"])
                else:
                    doc = {"_id": ObjectId(), **doc}
            except (InvalidDocument, Forbidden) as exc:
                failure = BulkItem(index, exc.status, detail=exc.detail)
                break
            docs.append(doc)
        if docs:
            await self._db.prepare_collection(collection)
            offset = 0
            while docs:
                ids, errors = await coll.insert_many(docs)
                result.items.extend(BulkItem(offset + i, 201, id=key, version=1)
                                    for i, key in enumerate(ids))
                if not errors:
                    break
                error = errors[0]
                if error.code == 11000 and 0 <= error.index < len(docs):
                    existing = await coll.find_one({"_id": docs[error.index]["_id"]})
                    if existing is not None and _is_mine(existing,
                                                         docs[error.index][OP_FIELD]):
                        result.items.append(BulkItem(offset + error.index, 201,
                                                     id=existing["_id"],
                                                     version=version_of(existing)))
                        offset += error.index + 1
                        docs = docs[error.index + 1:]
                        continue
                status = DuplicateKey.status if error.code == 11000 else InvalidDocument.status
                detail = ("a document with this _id already exists" if error.code == 11000
                          else f"rejected by the database: {error.message}")
                failure = BulkItem(offset + error.index, status, detail=detail)
                break
        if failure is not None:
            result.items.append(failure)
            result.items.extend(
                BulkItem(i, 424, detail=f"not attempted: item {failure.index} failed")
                for i in range(failure.index + 1, len(items))
            )
        return result

    async def replace(
        self, collection: str, id: Any, doc: Mapping[str, Any], *, if_match: IfMatch = None,
        tenant: Tenant | None = None, op: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Replace (or, without ``If-Match``, create) the document ``id``.

        Returns the stored document and whether it was created. A document that
        already carries the operation id ``op`` is the result of an earlier attempt
        of this write: it is returned as it is (created if at version 1).

        Raises:
            InvalidDocument: the body's ``_id`` differs from ``id`` (422).
            PreconditionFailed: ``if_match`` given and the document is absent or
                at another version (412).
            DuplicateKey: ``id`` belongs to another tenant's document (409).
            Forbidden: the body names another tenant (403).
            Conflict: it kept changing under us (409; retry).
        """
        check_id(id)
        if "_id" in doc and not _same(doc["_id"], id):
            raise InvalidDocument(
                f"the body's _id {key_to_json(doc['_id'])!r} differs from the path's "
                f"{key_to_json(id)!r}")
        doc = _stamped(doc, tenant)
        op = op or self._op_ids.new()
        coll = await self._writable(collection)
        for _ in range(MAX_ATTEMPTS):
            if isinstance(if_match, int):
                current: int | None = if_match
            else:
                old = await coll.find_one({"_id": id})
                if old is not None and _is_mine(old, op) and (
                        tenant is None or tenant.owns(old)):
                    return old, version_of(old) == 1
                if old is not None and tenant is not None and not tenant.owns(old):
                    if if_match is not None:
                        raise _absent(collection, id)
                    raise _taken(collection, id)
                current = None if old is None else version_of(old)
            if current is None:
                if if_match is not None:
                    raise _absent(collection, id)
                stored = {"_id": id, **_versioned(doc, 1, op)}
                try:
                    await coll.insert_one(dict(stored))
                except DuplicateKey:
                    continue  # created concurrently: replace it instead
                return stored, True
            new = await coll.find_one_and_replace(
                _owned({"_id": id, "_version": _version_is(current)}, tenant),
                {"_id": id, **_versioned(doc, current + 1, op)},
            )
            if new is not None:
                return new, False
            if isinstance(if_match, int):
                now = await coll.find_one(_owned({"_id": id}, tenant))
                if now is not None and _is_mine(now, op):
                    return now, False
                raise _mismatch(collection, id, if_match)
        raise _busy(collection, id)

    async def patch(
        self, collection: str, id: Any, patch: Mapping[str, Any], *, if_match: IfMatch = None,
        tenant: Tenant | None = None, op: str | None = None,
    ) -> dict[str, Any]:
        """Apply an RFC 7396 merge patch (checked by ``codec.check_document``).

        A document that already carries the operation id ``op`` is the result of
        an earlier attempt of this patch and is returned as it is.

        The result is written as one update (``$set``/``$unset`` of the changed
        top-level fields, ``$inc`` of ``_version``) conditional on the version
        read, retried on a lost race unless ``if_match`` pins the version. A
        patch that changes nothing writes nothing.

        Raises:
            NotFound: no such document (404; 412 if ``if_match`` is given).
            InvalidDocument: the patch tries to change ``_id`` (422).
            Forbidden: the patch changes or removes the tenant field (403).
            PreconditionFailed: ``if_match`` does not match (412).
            Conflict: it kept changing under us (409; retry).
        """
        check_id(id)
        if "_id" in patch and not _same(patch["_id"], id):
            raise InvalidDocument("_id cannot be changed")
        if tenant is not None and tenant.field in patch:
            _stamped({tenant.field: patch[tenant.field]}, tenant)
        changes = {k: v for k, v in patch.items() if k not in _MANAGED}
        op = op or self._op_ids.new()
        coll = await self._writable(collection)
        for _ in range(MAX_ATTEMPTS):
            old = await coll.find_one(_owned({"_id": id}, tenant))
            if old is None:
                if if_match is not None:
                    raise _absent(collection, id)
                raise _not_found(collection, id)
            if _is_mine(old, op):
                return old
            current = version_of(old)
            if isinstance(if_match, int) and current != if_match:
                raise _mismatch(collection, id, if_match)
            merged = merge_patch(old, changes)
            to_set = {k: merged[k] for k in changes
                      if k in merged and not _same(merged[k], old.get(k, _MISSING))}
            to_unset = {k: "" for k in changes if k not in merged and k in old}
            if not to_set and not to_unset:
                return old
            update: dict[str, Any] = {"$inc": {"_version": 1}}
            if current == 0 and "_version" not in old:
                update = {"$set": {"_version": 1}}
            update.setdefault("$set", {})[OP_FIELD] = op
            if to_set:
                update["$set"].update(to_set)
            if to_unset:
                update["$unset"] = to_unset
            new = await coll.find_one_and_update(
                _owned({"_id": id, "_version": _version_is(current)}, tenant), update)
            if new is not None:
                return new
            # Lost the race, or an earlier attempt of this patch won it: read again.
        raise _busy(collection, id)

    async def delete(self, collection: str, id: Any, *, if_match: IfMatch = None,
                     tenant: Tenant | None = None) -> None:
        """Delete the document ``id`` (of ``tenant``, if given).

        The document is read first and deleted at the version read, so a delete
        whose reply was lost and that the driver retried (the retry finds nothing
        to delete) still succeeds: the document this call saw is gone, and only
        one change event was written.

        Raises:
            NotFound: no such document (404; 412 if ``if_match`` is given).
            PreconditionFailed: ``if_match`` does not match (412).
            Conflict: it kept changing under us (409; retry).
        """
        coll = await self._writable(collection)
        for _ in range(MAX_ATTEMPTS):
            old = await coll.find_one(_owned({"_id": id}, tenant))
            if old is None:
                if if_match is not None:
                    raise _absent(collection, id)
                raise _not_found(collection, id)
            current = version_of(old)
            if isinstance(if_match, int) and current != if_match:
                raise _mismatch(collection, id, if_match)
            query = {"_id": id, "_version": _version_is(current)}
            if await coll.delete_one(_owned(query, tenant)):
                return
            if await coll.find_one(_owned({"_id": id}, tenant)) is None:
                return  # gone: deleted by this call (a retried reply) or concurrently
        raise _busy(collection, id)


def _owned(query: dict[str, Any], tenant: Tenant | None) -> dict[str, Any]:
    """``query`` restricted to ``tenant``'s documents (no-op without a tenant)."""
    if tenant is not None:
        query[tenant.field] = tenant.value
    return query


def _stamped(doc: Mapping[str, Any], tenant: Tenant | None) -> Mapping[str, Any]:
    """``doc`` with the tenant field set to ``tenant``.

    Raises:
        Forbidden: ``doc`` names another tenant (or a non-string one).
    """
    if tenant is None:
        return doc
    value = doc.get(tenant.field, tenant.value)
    if value != tenant.value or not isinstance(value, str):
        raise Forbidden(f"{tenant.field!r} must be your tenant (or left out): documents of "
                        "another tenant cannot be written")
    return {**doc, tenant.field: tenant.value}


def _versioned(doc: Mapping[str, Any], version: int, op: str) -> dict[str, Any]:
    """``doc`` with ``_id`` first, then ``_version`` and ``_op``, then its other fields."""
    out: dict[str, Any] = {}
    if "_id" in doc:
        out["_id"] = doc["_id"]
    out["_version"] = version
    out[OP_FIELD] = op
    out.update((k, v) for k, v in doc.items() if k not in _MANAGED)
    return out


def _not_found(collection: str, id: Any) -> RealtimeError:
    return NotFound(f"no document {key_to_json(id)!r} in {collection!r}")


def _absent(collection: str, id: Any) -> RealtimeError:
    return PreconditionFailed(
        f"If-Match given but there is no document {key_to_json(id)!r} in {collection!r}")


def _mismatch(collection: str, id: Any, version: int) -> RealtimeError:
    return PreconditionFailed(
        f"document {key_to_json(id)!r} in {collection!r} is no longer at version {version}")


def _taken(collection: str, id: Any) -> RealtimeError:
    return DuplicateKey(f"a document with _id {key_to_json(id)!r} already exists "
                        f"in {collection!r}")


def _busy(collection: str, id: Any) -> RealtimeError:
    return Conflict(
        f"document {key_to_json(id)!r} in {collection!r} changed concurrently; retry")

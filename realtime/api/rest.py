"""``/api/...``: the REST API for writers and readers of documents (docs/api.md).

Request bodies are read here, not by pydantic: the size limit is enforced on
``Content-Length`` and on the bytes actually received (413), the media type must
be JSON (415), the body is decoded by :func:`realtime.codec.loads` (400) and
checked by :func:`realtime.codec.check_document` (422). Responses are encoded by
:func:`realtime.codec.dumps`; every error is ``application/problem+json``.

Every route needs credentials (401) and the collection's scope (403): reads
``read:<collection>``, writes ``write:<collection>`` (docs/security.md), and
is charged to the credential's rate limit (429). A principal with a tenant
works only on its tenant's documents (:mod:`realtime.store`).

Writes take an ``Idempotency-Key`` header (:mod:`realtime.idempotency`): the
first successful response is kept and a retry with the key gets it again,
marked ``Idempotent-Replayed: true``; the key's record is the write's
operation id, so a retry never writes twice.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Header, Path, Query, Request
from starlette.responses import Response, StreamingResponse

from realtime import protocol, query
from realtime.api.deps import (
    CallerDep,
    CollectionPath,
    ReaderDep,
    WriterDep,
    get_services,
)
from realtime.api.problems import PROBLEM_JSON, PROBLEM_SCHEMA
from realtime.auth import Principal
from realtime.codec import check_document, dumps, key_to_json, loads, parse_id
from realtime.config import Settings
from realtime.errors import (
    BadRequest,
    InvalidDocument,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from realtime.idempotency import (
    KEY_PATTERN,
    Idempotency,
    StoredResponse,
    check_key,
    fingerprint,
    record_id,
)
from realtime.paging import parse_sort
from realtime.projection import Projection, check_fields
from realtime.store import (
    MAX_BULK,
    MAX_ID_LENGTH,
    MAX_LIMIT,
    BulkResult,
    IfMatch,
    check_id,
    version_of,
)
from realtime.subscription import Subscription

__all__ = ["REPLAYED", "SCHEMAS", "parse_if_match", "read_body", "read_json", "router"]


#: Every route takes a :class:`~realtime.api.deps.Caller` (``CallerDep``, ``ReaderDep`` or
#: ``WriterDep``): it refuses unknown query parameters and checks the credentials.
router = APIRouter(prefix="/api", tags=["documents"])

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
_STREAM_CHUNK = 64 * 1024

# ----------------------------------------------------------------- OpenAPI bits

def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


#: Schemas of request bodies, added to the OpenAPI components by ``create_app``: what
#: :func:`realtime.codec.check_document` accepts, so generated requests are truthful.
SCHEMAS: dict[str, dict[str, Any]] = {
    "FieldName": {"type": "string", "minLength": 1, "pattern": "^[^$.\\u0000][^.\\u0000]*$",
                  "description": "A field name: not empty, no `.` or NUL, not starting "
                                 "with `$`."},
    "JsonValue": {"anyOf": [
        {"type": "null"}, {"type": "boolean"}, {"type": "string"},
        {"type": "number", "description": "Integers beyond 64 bits are stored as doubles."},
        {"type": "array", "items": _ref("JsonValue")}, _ref("JsonObject"),
    ]},
    "JsonObject": {"type": "object", "propertyNames": _ref("FieldName"),
                   "additionalProperties": _ref("JsonValue")},
    "DocumentId": {"type": "string", "minLength": 1, "maxLength": 1024,
                   "pattern": "^[^\\u0000]*$",
                   "description": "24 hex digits are an ObjectId, anything else a string."},
    "NewDocument": {
        "type": "object", "propertyNames": _ref("FieldName"),
        "properties": {"_id": _ref("DocumentId")}, "additionalProperties": _ref("JsonValue"),
        "description": "A document to store: `_id` optional (an ObjectId is generated); "
                       "`_version` and `_op` are server-managed and ignored; with a tenant, "
                       "the tenant "
                       "field may only name the caller's tenant.",
    },
    "DocumentBody": {
        "type": "object", "propertyNames": _ref("FieldName"),
        "properties": {"_id": False}, "additionalProperties": _ref("JsonValue"),
        "description": "The document's new content (PUT) or a JSON merge patch (PATCH); "
                       "`_id`, if sent, must equal the path's id.",
    },
}
_DOCUMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A JSON document; `_id` (string, 24-hex = ObjectId) and the "
                   "server-managed `_version` (int) are always present in responses, and "
                   "`_op` (string, the id of the operation that wrote it last) on "
                   "documents written through this service.",
    "required": ["_id", "_version"],
    "properties": {"_version": {"type": "integer"}, "_op": {"type": "string"}},
    "additionalProperties": True,
}
_WHY: dict[int, str] = {
    400: "Malformed JSON, a bad filter, sort, cursor, parameter, id or collection name; "
         "`detail` says what to fix and `invalid_params` names each bad parameter.",
    404: "No such document, or the collection is not exposed.",
    409: "A document with this `_id` already exists (or it kept changing: retry), or a "
         "request with the same `Idempotency-Key` is still being processed.",
    410: "The oplog no longer holds `since`, or no longer reaches back to `since_time`: "
         "reload the documents (a list) and follow the changes from now.",
    412: "`If-Match` did not match the document's current version.",
    413: "The body is over the size limit.",
    415: "The body is not JSON.",
    422: "Not a storable document (not an object; a field name starting with `$`, "
         "containing `.` or NUL; a bad `_id`), or an `Idempotency-Key` already used "
         "with a different request.",
    401: "No credentials, or credentials that are not valid (`WWW-Authenticate: Bearer`).",
    403: "The credentials lack the collection's scope, or the document names another "
         "tenant (or, without authentication, a browser asked for a non-loopback host).",
    429: "Over the credential's request rate; retry after `Retry-After` seconds.",
    503: "The database is unreachable; retry after `Retry-After` seconds.",
}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"},
                                "description": "Seconds to wait."}}


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Problem responses: ``codes`` plus 400 (bad parameters), 401, 403, 429 and 503."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted({*codes, 400, 401, 403, 429, 503}):
        entry: dict[str, Any] = {
            "description": _WHY[code],
            "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}},
        }
        if code in (429, 503):
            entry["headers"] = _RETRY_AFTER
        elif code == 401:
            entry["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"},
                                                     "description": "`Bearer`."}}
        out[code] = entry
    return out


def _ok(code: int, description: str, schema: dict[str, Any] | None = None, *,
        etag: bool = False, location: bool = False, replayable: bool = False
        ) -> dict[int | str, dict[str, Any]]:
    entry: dict[str, Any] = {"description": description}
    if schema is not None:
        entry["content"] = {JSON: {"schema": schema}}
    headers: dict[str, Any] = {}
    if replayable:
        headers[REPLAYED] = {"schema": {"type": "string", "enum": ["true"]},
                             "description": "Present on a replay: the kept first response "
                                            "to this `Idempotency-Key`."}
    if etag:
        headers["ETag"] = {"schema": {"type": "string"}, "description": 'The version, `"<n>"`.'}
    if location:
        headers["Location"] = {"schema": {"type": "string"}, "description": "The new document."}
    if headers:
        entry["headers"] = headers
    return {code: entry}


def _body(schema: dict[str, Any], *media: str) -> dict[str, Any]:
    return {"requestBody": {"required": True,
                            "content": {m: {"schema": schema} for m in media}}}


# ------------------------------------------------------------------ request bits

_MEDIA = re.compile(r"^application/(?:[A-Za-z0-9.!#$&^_-]+\+)?json$")
#: An entity tag as the server makes them: a version, quoted or not, maybe weak.
_ETAG_VALUE = r'(?:W/)?(?:"([0-9]{1,18})"|([0-9]{1,18}))'
_ETAG = re.compile(f"^{_ETAG_VALUE}$")


def _check_media_type(value: str | None, *, patch: bool) -> None:
    """Raises UnsupportedMediaType unless ``value`` is a JSON media type."""
    if not value:
        raise UnsupportedMediaType("Content-Type must be application/json")
    media, _, params = value.partition(";")
    media = media.strip().lower()
    if patch and media == "application/json-patch+json":
        raise UnsupportedMediaType(
            "JSON Patch (RFC 6902) is not supported; send a JSON merge patch "
            f"(RFC 7396) as {MERGE_PATCH}")
    if not _MEDIA.match(media):
        wanted = f"{MERGE_PATCH} or {JSON}" if patch else JSON
        raise UnsupportedMediaType(f"Content-Type {media[:80]!r} is not JSON; send {wanted}")
    for param in params.split(";"):
        name, _, val = param.partition("=")
        if name.strip().lower() == "charset" and val.strip().strip('"').lower() not in (
                "utf-8", "utf8"):
            raise UnsupportedMediaType("JSON bodies must be UTF-8")


async def read_json(request: Request, settings: Settings, *, patch: bool = False) -> Any:
    """The request's JSON body, decoded (:func:`read_body`, then ``codec.loads``).

    Raises:
        UnsupportedMediaType, PayloadTooLarge, BadRequest: as :func:`read_body`.
    """
    return loads(await read_body(request, settings, patch=patch))


async def read_body(request: Request, settings: Settings, *, patch: bool = False) -> bytes:
    """The request's JSON body as bytes (not decoded yet).

    Raises:
        UnsupportedMediaType: the Content-Type is not JSON (415).
        PayloadTooLarge: ``Content-Length`` or the received body is over
            ``settings.max_body_bytes`` (413).
        BadRequest: a bad ``Content-Length`` or malformed JSON (400).
    """
    _check_media_type(request.headers.get("content-type"), patch=patch)
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BadRequest("invalid Content-Length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    if size == 0:
        raise BadRequest("empty body; send a JSON document")
    return b"".join(chunks)


def parse_if_match(value: str | None) -> IfMatch:
    """``If-Match``: ``"<n>"`` (also ``W/"n"`` and bare ``n``), ``*``, or absent.

    Raises:
        BadRequest: anything else (400).
    """
    if value is None:
        return None
    value = value.strip()
    if value == "*":
        return "*"
    match = _ETAG.match(value)
    if match is None:
        raise BadRequest(f'If-Match must be one entity tag like "3" or *, not {value[:40]!r}')
    return int(match.group(1) or match.group(2))


def _path_id(value: str) -> Any:
    """A path id: 24-hex is an ObjectId, anything else a string. Raises BadRequest."""
    try:
        return check_id(parse_id(value))
    except InvalidDocument as exc:
        raise BadRequest(f"bad document id: {exc.detail}") from None


def _document(value: Any) -> dict[str, Any]:
    """Raises InvalidDocument unless ``value`` is a storable document with an addressable id."""
    doc = check_document(value)
    if "_id" in doc:
        check_id(doc["_id"])
    return doc


def _doc_response(doc: dict[str, Any], status: int = 200, *,
                  location: str | None = None) -> Response:
    headers = {"ETag": f'"{version_of(doc)}"'}
    if location is not None:
        headers["Location"] = location
    return Response(dumps(doc), status_code=status, media_type=JSON, headers=headers)


def _location(collection: str, id: Any) -> str:
    key = key_to_json(id)
    return f"/api/collections/{collection}/documents/{quote(str(key), safe='')}"


def _bulk_json(result: BulkResult) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    for item in result.items:
        entry: dict[str, Any] = {"index": item.index, "status": item.status}
        if item.status == 201:
            entry["_id"] = item.id
            entry["_version"] = item.version
        else:
            entry["detail"] = item.detail
        items.append(entry)
    return {"inserted": result.inserted, "failed": len(result.items) - result.inserted,
            "items": items}


# ------------------------------------------------------------------ idempotency

#: The response header marking a replay of a kept response.
REPLAYED = "Idempotent-Replayed"
#: The response headers kept with a response for replays.
_KEPT_HEADERS = ("content-type", "etag", "location")
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(alias="Idempotency-Key", pattern=KEY_PATTERN,
           description="A unique key per logical write (e.g. a UUID; 1-255 visible ASCII "
                       "characters). A retry with the same key returns the first response "
                       f"with `{REPLAYED}: true` and never writes twice (docs/api.md).",
           examples=["5f1c8a0e-7b9d-4c1e-9a57-3f0e2d6b8c41"]),
]


def _keeper(request: Request) -> Idempotency:
    """The app's :class:`Idempotency` records, made on first use for this lifespan's database."""
    services = get_services(request)
    keeper: Idempotency | None = getattr(request.app.state, "idempotency", None)
    if keeper is None or keeper.db is not services.db:
        keeper = Idempotency(services.db, services.settings)
        request.app.state.idempotency = keeper
    return keeper


def _scope(principal: Principal) -> str:
    tenant = principal.tenant
    return principal.id if tenant is None else f"{principal.id}\x00{tenant.field}={tenant.value}"


async def _once(request: Request, principal: Principal, key: str | None, body: bytes,
                run: Callable[[str | None], Awaitable[Response]]) -> Response:
    """``run(op)`` once per ``Idempotency-Key`` (``op``: the write's operation id).

    Without a key, ``run(None)``. With one: the kept response if there is one
    (with ``Idempotent-Replayed: true``), else ``run`` with the key's operation
    id, its 2xx response kept. A DELETE that finds nothing after an earlier
    attempt with the key died unanswered answers 204: that attempt deleted it.

    Raises:
        BadRequest: a malformed key (400).
        KeyReused: the key was used with another request (422).
        KeyInFlight: a request with the key is still running (409).
        RealtimeError: whatever ``run`` raises (the key is then freed).
    """
    if key is None:
        return await run(None)
    keeper = _keeper(request)
    id = record_id(_scope(principal), request.method, request.url.path, check_key(key))
    begun = await keeper.begin(id, fingerprint(body, request.headers.get("if-match"),
                                               request.headers.get("content-type")))
    if isinstance(begun, StoredResponse):
        return Response(begun.body, status_code=begun.status,
                        headers={**begun.headers, REPLAYED: "true"})
    try:
        try:
            response = await run(begun.op)
        except NotFound:
            if not (begun.retaken and request.method == "DELETE"):
                raise
            response = Response(status_code=204)
    except Exception:
        await keeper.release(begun)  # (a cancelled request's key frees itself after the lock)
        raise
    raw = bytes(response.body)
    await keeper.finish(begun, StoredResponse(
        response.status_code,
        {name: value for name, value in response.headers.items() if name in _KEPT_HEADERS},
        raw))
    return response


# ------------------------------------------------------------------------ routes

_DOCS = "/collections/{collection}/documents"
_ONE = "/collections/{collection}/documents/{id:path}"
IdPath = Annotated[str, Path(
    min_length=1, max_length=MAX_ID_LENGTH,
    description="A document id: 24 hex digits are an ObjectId, anything else a string.")]
IfMatchHeader = Annotated[
    str | None,
    Header(alias="If-Match", pattern=rf"^\s*(?:\*|{_ETAG_VALUE})\s*$",
           description='`"<version>"` from an ETag, or `*` (must exist).',
           examples=['"3"', "*"]),
]

_LIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "documents": {"type": "array", "items": _DOCUMENT_SCHEMA},
        "next": {"type": ["string", "null"],
                 "description": "Cursor of the next page (`after`), null on the last page."},
    },
    "required": ["documents", "next"],
}
_COUNT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"count": {"type": "integer", "minimum": 0}},
    "required": ["count"],
}
_BULK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "inserted": {"type": "integer"},
        "failed": {"type": "integer"},
        "items": {"type": "array", "items": {
            "type": "object",
            "properties": {"index": {"type": "integer"}, "status": {"type": "integer"},
                           "_id": {}, "_version": {"type": "integer"},
                           "detail": {"type": "string"}},
            "required": ["index", "status"]}},
    },
}


@router.get(
    "/collections",
    summary="Collections this service exposes",
    responses={**_ok(200, "The exposed collections, sorted.", {
        "type": "object",
        "properties": {"collections": {"type": "array", "items": {"type": "string"}}},
    }), **_problems()},
)
async def list_collections(caller: CallerDep) -> Response:
    """``{"collections": [...]}``: the allow-list if configured, else the database's.

    Only the collections the credentials may read or write are listed.
    """
    names = [name for name in await caller.store.collections()
             if caller.principal.can_any(name)]
    return Response(dumps({"collections": names}), media_type=JSON)


@router.post(
    _DOCS,
    summary="Insert a document",
    status_code=201,
    responses={**_ok(201, "Created.", _DOCUMENT_SCHEMA, etag=True, location=True,
                     replayable=True),
               **_problems(400, 404, 409, 413, 415, 422)},
    openapi_extra=_body(_ref("NewDocument"), JSON),
)
async def insert_document(collection: CollectionPath, request: Request, caller: WriterDep,
                          idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """Insert the body (``_id`` optional: an ObjectId is generated) at ``_version`` 1."""
    store, principal = caller.store, caller.principal
    store.check_collection(collection)
    raw = await read_body(request, caller.settings)
    doc = _document(loads(raw))

    async def run(op: str | None) -> Response:
        stored = await store.insert(collection, doc, tenant=principal.tenant, op=op)
        return _doc_response(stored, 201, location=_location(collection, stored["_id"]))

    return await _once(request, principal, idempotency_key, raw, run)


@router.post(
    _DOCS + ":bulk",
    summary="Insert many documents (ordered)",
    responses={
        **_ok(200, "Every document was inserted.", _BULK_SCHEMA, replayable=True),
        **_ok(207, "An item failed: it has its status and detail; items before it were "
                   "inserted, items after it have status 424 (not attempted).", _BULK_SCHEMA,
              replayable=True),
        **_problems(400, 404, 409, 413, 415, 422),
    },
    openapi_extra=_body({"type": "array", "maxItems": MAX_BULK,
                         "description": "Documents; an item that is not a storable document "
                                        "fails on its own (status 422 in `items`).",
                         "items": {}}, JSON),
)
async def insert_documents(collection: CollectionPath, request: Request, caller: WriterDep,
                           idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """Insert a JSON array of at most 1000 documents in order, stopping at the first failure."""
    store, principal = caller.store, caller.principal
    store.check_collection(collection)
    raw = await read_body(request, caller.settings)
    items = loads(raw)
    if not isinstance(items, list):
        raise InvalidDocument("a bulk body must be a JSON array of documents")
    if len(items) > MAX_BULK:
        raise PayloadTooLarge(f"at most {MAX_BULK} documents per bulk request")

    async def run(op: str | None) -> Response:
        result = await store.insert_many(collection, items, tenant=principal.tenant, op=op)
        return Response(dumps(_bulk_json(result)), status_code=200 if result.ok else 207,
                        media_type=JSON)

    return await _once(request, principal, idempotency_key, raw, run)


FieldsQuery = Annotated[str | None, Query(
    alias="fields", max_length=4096,
    description="Comma-separated dotted paths to include, e.g. `status,customer.name`; "
                "`_id` and `_version` always come.")]


def _projection(text: str | None) -> Projection | None:
    """The ``fields`` query parameter as a :class:`Projection` (None if absent).

    Raises:
        BadRequest: not a list of field paths (400).
    """
    if text is None:
        return None
    try:
        return Projection(check_fields([p.strip() for p in text.split(",")]))
    except ValueError as exc:
        raise BadRequest(f"fields {exc}", invalid_params=[
            {"name": "fields", "in": "query", "reason": str(exc)}]) from None


FilterQuery = Annotated[str | None, Query(
    alias="filter", max_length=65_536,
    description='A JSON filter, e.g. `{"status":"open","n":{"$gte":3}}`.')]


def _mongo_filter(text: str | None) -> dict[str, Any]:
    """The ``filter`` query parameter in MongoDB form (``{}`` if absent).

    Raises:
        BadRequest: not JSON, or not in the filter language (400).
    """
    if text is None:
        return {}
    try:
        return query.to_mongo(query.validate(loads(text)))
    except BadRequest as exc:
        raise BadRequest(f"filter is not valid JSON: {exc.detail}") from None
    except query.FilterError as exc:
        raise BadRequest(f"bad filter: {exc}") from None


@router.get(
    _DOCS,
    summary="List documents (filter, sort, keyset pages)",
    responses={**_ok(200, "A page of documents.", _LIST_SCHEMA), **_problems(400, 404)},
)
async def list_documents(
    collection: CollectionPath,
    caller: ReaderDep,
    filter_: FilterQuery = None,
    sort: Annotated[str | None, Query(
        max_length=2048, description="Comma-separated fields, `-` for descending: `-ts,name`."
    )] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size.")] = 100,
    after: Annotated[str | None, Query(
        max_length=16_384, description="The previous page's `next`.")] = None,
    skip: Annotated[int, Query(ge=0, le=10_000_000, description="Documents to skip.")] = 0,
    fields: FieldsQuery = None,
) -> Response:
    """One page of documents, streamed; ``next`` continues after its last document.

    With ``fields``, each document carries only those fields (and ``_id``, ``_version``).
    """
    store, principal = caller.store, caller.principal
    store.check_collection(collection)
    projection = _projection(fields)
    page = await store.list(collection, filter=_mongo_filter(filter_), sort=parse_sort(sort),
                            limit=limit, after=after, skip=skip, tenant=principal.tenant)

    async def body() -> AsyncIterator[bytes]:
        try:
            buf = bytearray(b'{"documents":[')
            first = True
            async for doc in page:
                if not first:
                    buf += b","
                first = False
                buf += dumps(doc if projection is None else projection.apply(doc))
                if len(buf) >= _STREAM_CHUNK:
                    yield bytes(buf)
                    buf.clear()
            buf += b'],"next":' + dumps(page.next) + b"}"
            yield bytes(buf)
        finally:
            await page.aclose()

    return StreamingResponse(body(), media_type=JSON)


_CHANGES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "changes": {"type": "array", "items": {
            "type": "object",
            "description": "A `change` message of the WebSocket protocol without `type` and "
                           "`sub` (docs/protocol.md); `op` `drop`, `rename`, "
                           "`dropDatabase` or `invalidate` ends the collection's history.",
            "properties": {"op": {"type": "string"}, "id": {"type": "string"},
                           "collection": {"type": "string"}, "key": {},
                           "document": {"type": "object"}, "updated": {"type": "object"},
                           "removed": {"type": "array", "items": {"type": "string"}},
                           "ts": {"type": "string"}},
            "required": ["op", "id", "collection", "ts"]}},
        "next": {"type": ["string", "null"],
                 "description": "An event id: pass it as `since` for the next page (or "
                                "as a WebSocket subscription's `since` to go live)."},
    },
    "required": ["changes", "next"],
}


class _Nowhere:
    """The outlet of a subscription that only decides (the REST changes feed)."""

    max_backlog = 0
    backlog = 0

    def send(self, message: str) -> None:
        """Nothing is sent."""

    def send_shared(self, message: str, frame: bytes) -> None:
        """Nothing is sent."""

    def send_change(self, ev: Any, prefix: str, op: str) -> None:
        """Nothing is sent."""

    def close(self, code: int, reason: str = "") -> None:
        """Nothing to close."""


@router.get(
    "/collections/{collection}/changes",
    summary="Changes since an event id or a point in time (pages)",
    responses={**_ok(200, "A page of changes, oldest first.", _CHANGES_SCHEMA),
               **_problems(400, 404, 410)},
)
async def list_changes(
    collection: CollectionPath,
    caller: ReaderDep,
    since_time: Annotated[str | None, Query(
        max_length=64, description="RFC 3339: changes committed at or after this time, "
                                   "e.g. `2026-01-01T09:00:00Z`.")] = None,
    since: Annotated[str | None, Query(
        max_length=protocol.MAX_SINCE_LENGTH, pattern="^[0-9A-Fa-f]+$",
        description="An event id (a previous page's `next`): changes after it.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size.")] = 100,
    filter_: FilterQuery = None,
    fields: FieldsQuery = None,
) -> Response:
    """Past changes from the oplog, as a subscription with ``filter`` (and ``fields``)
    would have seen them.

    Give ``since_time`` for the first page, then ``since`` = the previous ``next``.
    """
    store, services, principal = caller.store, caller.services, caller.principal
    store.check_collection(collection)
    if (since is None) == (since_time is None):
        raise BadRequest("give one of since_time (RFC 3339) or since (an event id)",
                         invalid_params=[{"name": "since_time", "in": "query",
                                          "reason": "exactly one of since_time and since"}])
    when = None
    if since_time is not None:
        try:
            when = protocol.parse_time(since_time)
        except ValueError as exc:
            raise BadRequest(f"since_time is {exc}", invalid_params=[
                {"name": "since_time", "in": "query", "reason": str(exc)}]) from None
    raw_filter: dict[str, Any] = {}
    if filter_ is not None:
        _mongo_filter(filter_)  # 400 for a bad one
        raw_filter = query.validate(loads(filter_))
    tenant = principal.tenant
    projection = _projection(fields)
    viewer = (Subscription(_Nowhere(), "", collection, raw_filter, projection=projection)
              if tenant is None
              else Subscription(_Nowhere(), "", collection, tenant.restrict(raw_filter),
                                owner=tenant, projection=projection))
    page = await services.history.page(viewer, since=since, when=when, limit=limit)
    body = '{"changes":[' + ",".join(page.changes) + '],"next":' + dumps(page.next).decode() + "}"
    return Response(body, media_type=JSON)


@router.get(
    _DOCS + ":count",
    summary="Count documents (filter)",
    responses={**_ok(200, "How many documents match.", _COUNT_SCHEMA), **_problems(400, 404)},
)
async def count_documents(collection: CollectionPath, caller: ReaderDep,
                          filter_: FilterQuery = None) -> Response:
    """``{"count": N}``: how many documents match ``filter`` (the caller's tenant's only)."""
    store, principal = caller.store, caller.principal
    store.check_collection(collection)
    count = await store.count(collection, filter=_mongo_filter(filter_), tenant=principal.tenant)
    return Response(dumps({"count": count}), media_type=JSON)


@router.get(
    _ONE,
    summary="Get one document",
    responses={**_ok(200, "The document.", _DOCUMENT_SCHEMA, etag=True),
               **_problems(400, 404)},
)
async def get_document(collection: CollectionPath, id: IdPath, caller: ReaderDep) -> Response:
    """The document with this id (24-hex = ObjectId), with its ``ETag``."""
    store, principal = caller.store, caller.principal
    store.check_collection(collection)
    return _doc_response(await store.get(collection, _path_id(id), tenant=principal.tenant))


@router.put(
    _ONE,
    summary="Replace or create a document",
    responses={**_ok(200, "Replaced.", _DOCUMENT_SCHEMA, etag=True, replayable=True),
               **_ok(201, "Created.", _DOCUMENT_SCHEMA, etag=True, location=True,
                     replayable=True),
               **_problems(400, 404, 409, 412, 413, 415, 422)},
    openapi_extra=_body(_ref("DocumentBody"), JSON),
)
async def replace_document(collection: CollectionPath, id: IdPath, request: Request,
                           caller: WriterDep, if_match: IfMatchHeader = None,
                           idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """Replace the document (``_version`` + 1) or create it; ``If-Match`` makes it conditional."""
    store, principal = caller.store, caller.principal
    store.check_collection(collection)
    key = _path_id(id)
    precondition = parse_if_match(if_match)
    raw = await read_body(request, caller.settings)
    doc = _document(loads(raw))

    async def run(op: str | None) -> Response:
        stored, created = await store.replace(collection, key, doc, if_match=precondition,
                                              tenant=principal.tenant, op=op)
        if created:
            return _doc_response(stored, 201, location=_location(collection, key))
        return _doc_response(stored)

    return await _once(request, principal, idempotency_key, raw, run)


@router.patch(
    _ONE,
    summary="Update a document with a JSON merge patch (RFC 7396)",
    responses={**_ok(200, "Updated.", _DOCUMENT_SCHEMA, etag=True, replayable=True),
               **_problems(400, 404, 409, 412, 413, 415, 422)},
    openapi_extra=_body(_ref("DocumentBody"), MERGE_PATCH, JSON),
)
async def patch_document(collection: CollectionPath, id: IdPath, request: Request,
                         caller: WriterDep, if_match: IfMatchHeader = None,
                         idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """Merge the patch into the document: objects merge, ``null`` removes, the rest replaces."""
    store, principal = caller.store, caller.principal
    store.check_collection(collection)
    key = _path_id(id)
    precondition = parse_if_match(if_match)
    raw = await read_body(request, caller.settings, patch=True)
    body = loads(raw)
    if not isinstance(body, dict):
        raise InvalidDocument("a merge patch for a document must be a JSON object")
    patch = check_document(body)

    async def run(op: str | None) -> Response:
        return _doc_response(await store.patch(collection, key, patch, if_match=precondition,
                                               tenant=principal.tenant, op=op))

    return await _once(request, principal, idempotency_key, raw, run)


@router.delete(
    _ONE,
    summary="Delete a document",
    status_code=204,
    responses={204: {"description": "Deleted.", "headers": {
        REPLAYED: {"schema": {"type": "string", "enum": ["true"]},
                   "description": "Present on a replay of this `Idempotency-Key`."}}},
               **_problems(400, 404, 409, 412, 422)},
)
async def delete_document(collection: CollectionPath, id: IdPath, request: Request,
                          caller: WriterDep, if_match: IfMatchHeader = None,
                          idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """Delete the document; 404 if absent, 412 if ``If-Match`` does not match."""
    store, principal = caller.store, caller.principal
    store.check_collection(collection)
    key = _path_id(id)
    precondition = parse_if_match(if_match)

    async def run(op: str | None) -> Response:
        await store.delete(collection, key, if_match=precondition, tenant=principal.tenant)
        return Response(status_code=204)

    return await _once(request, principal, idempotency_key, b"", run)

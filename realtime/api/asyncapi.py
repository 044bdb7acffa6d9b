"""The WebSocket protocol v1 as an AsyncAPI 3.0 document, served at ``/asyncapi.json``.

Built from :mod:`realtime.protocol`, so it cannot drift from it: the client
messages and their fields are the message classes
:func:`~realtime.protocol.parse_client_message` returns (``Subscribe`` is
``{"op":"subscribe", ...}``), the codes are :class:`~realtime.protocol.ErrorCode`,
:class:`~realtime.protocol.ResyncReason` and :class:`~realtime.protocol.CloseCode`,
and the limits are the module's constants. docs/asyncapi.yaml is this document
(``python -m realtime.api.asyncapi --yaml > docs/asyncapi.yaml`` rewrites it;
tests/test_asyncapi.py checks that it is current and that every message the
protocol renders or parses matches it).
"""

from __future__ import annotations

import dataclasses
import sys
from functools import cache
from typing import Any, Final, get_args

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from realtime import protocol
from realtime.names import COLLECTION_PATTERN

__all__ = ["ASYNCAPI_PATH", "document", "router"]

#: Where the server serves the document.
ASYNCAPI_PATH: Final = "/asyncapi.json"

router = APIRouter()

#: What each error code means (docs/protocol.md, "Limits, errors and close codes").
ERROR_MEANINGS: Final[dict[str, str]] = {
    protocol.ErrorCode.BAD_JSON: "the frame is not valid JSON (or not valid UTF-8)",
    protocol.ErrorCode.BAD_MESSAGE: "not an object; a field is missing, has the wrong type, "
                                    "or is unknown",
    protocol.ErrorCode.UNKNOWN_OP: "`op` is not one the server knows",
    protocol.ErrorCode.BAD_FILTER: "the filter is not in the filter language",
    protocol.ErrorCode.BAD_COLLECTION: "the collection name is refused",
    protocol.ErrorCode.BAD_SINCE: "`since` is not an event id, or `since_time` not an RFC 3339 "
                                  "timestamp (1970 to 2106)",
    protocol.ErrorCode.DUPLICATE_SUB: "`subscribe` with a `sub` already active on the "
                                      "connection",
    protocol.ErrorCode.UNKNOWN_SUB: "`unsubscribe` of a `sub` that is not active",
    protocol.ErrorCode.TOO_MANY_SUBS: "more than the per-connection subscription limit",
    protocol.ErrorCode.TOO_MANY_GROUPS: "a live aggregate has more groups than "
                                        "`REALTIME_AGGREGATE_MAX_GROUPS`; it has ended",
    protocol.ErrorCode.FORBIDDEN: "the credentials do not allow this",
    protocol.ErrorCode.INTERNAL: "a server-side failure",
}

#: When the server closes a connection with each code.
CLOSE_MEANINGS: Final[dict[int, str]] = {
    protocol.CloseCode.NORMAL: "normal closure",
    protocol.CloseCode.GOING_AWAY: "server shutdown",
    protocol.CloseCode.POLICY: "policy: a browser `Origin` that is not allowed",
    protocol.CloseCode.TOO_BIG: "a client frame over the size limit",
    protocol.CloseCode.INTERNAL: "internal error",
    protocol.CloseCode.OVERLOADED: "overloaded: too many connections from one client address",
    protocol.CloseCode.UNAUTHENTICATED: "unauthenticated: no, bad or expired credentials, or "
                                        "no `auth` message first in time",
    protocol.CloseCode.FORBIDDEN: "forbidden: renewed credentials for another tenant",
    protocol.CloseCode.SLOW_CONSUMER: "slow consumer: the send backlog overflowed; resume "
                                      "with `since`",
}

#: Why a subscription must reload.
RESYNC_MEANINGS: Final[dict[str, str]] = {
    protocol.ResyncReason.HISTORY_LOST: "the change stream lost the subscription's place "
                                        "(the oplog no longer holds it, or the stream "
                                        "restarted from now)",
    protocol.ResyncReason.INVALIDATED: "the collection (or database) was dropped or renamed",
    protocol.ResyncReason.OVERFLOW: "reserved: the server could not keep up with the "
                                    "subscription",
}

_EVENT_ID: Final[dict[str, Any]] = {
    "type": "string", "pattern": f"^[0-9A-Fa-f]{{1,{protocol.MAX_SINCE_LENGTH}}}$",
    "description": "An event id: the change stream's resume token (`_data`), opaque and "
                   "ordered, valid across server restarts.",
}
_SUB: Final[dict[str, Any]] = {
    "type": "string", "minLength": 1, "maxLength": protocol.MAX_SUB_LENGTH,
    "description": "The client's name for the subscription, unique on the connection.",
}
_HEAD: Final[dict[str, Any]] = {
    "oneOf": [_EVENT_ID, {"type": "null"}],
    "description": "The event id the subscription is live from (null before the first "
                   "event of a new database).",
}
_DOCUMENT: Final[dict[str, Any]] = {
    "type": "object", "required": ["_id", "_version"],
    "description": "A document, with its `_id` and server-managed `_version`.",
}
_REF: Final[dict[str, Any]] = {
    "oneOf": [{"type": "string"}, {"type": "integer"}],
    "description": "Any string or integer; echoed by `pong`.",
}

#: The schema of each field of a client message (the message classes' fields).
_CLIENT_FIELDS: Final[dict[str, dict[str, Any]]] = {
    "sub": _SUB,
    "collection": {"type": "string", "pattern": COLLECTION_PATTERN,
                   "description": "The collection (not `system*`).", "examples": ["orders"]},
    "filter": {"oneOf": [{"type": "object"}, {"type": "null"}],
               "description": "A filter in the filter language (docs/api.md#filter-language): "
                              "MongoDB query syntax restricted to equality, `$eq $ne $gt $gte "
                              "$lt $lte $in $nin $exists $and $or $nor` and dotted paths."},
    "snapshot": {"type": ["boolean", "null"], "default": False,
                 "description": "Send a `snapshot` of the matching documents first."},
    "limit": {"type": ["integer", "null"], "minimum": 1, "default": protocol.DEFAULT_LIMIT,
              "description": "Snapshot size, at most `REALTIME_SNAPSHOT_MAX` (1000)."},
    "since": {"oneOf": [_EVENT_ID, {"type": "null"}],
              "description": "Resume after this event id (the last one processed, or a "
                             "`head`): no gap, no duplicate, or `resync`."},
    "since_time": {"oneOf": [{"type": "string", "format": "date-time",
                              "examples": ["2026-01-01T09:00:00Z"]}, {"type": "null"}],
                   "description": "Replay every change committed at or after this RFC 3339 "
                                  "time from the oplog, then live (no gap, no duplicate); "
                                  "`resync` `history_lost` if the oplog no longer reaches "
                                  "back to it. Not with `since` or `snapshot`."},
    "fields": {"oneOf": [{"type": "array", "minItems": 1, "maxItems": 64,
                          "items": {"type": "string", "minLength": 1, "maxLength": 256}},
                         {"type": "null"}],
               "examples": [["status", "customer.name"]],
               "description": "Only these dotted paths of each document (`_id` and "
                              "`_version` always come): snapshots, inserts and replaces "
                              "carry them; an `update` of a document the client holds "
                              "carries only the changed ones (`updated`/`removed`, no "
                              "`document`), and nothing when none changed."},
    "aggregate": {"oneOf": [{"type": "object", "additionalProperties": False, "properties": {
        "group_by": {"oneOf": [{"type": "string"}, {"type": "array", "maxItems": 3,
                                                   "items": {"type": "string"}}]},
        "count": {"type": "boolean"},
        **{name: {"oneOf": [{"type": "string"}, {"type": "array",
                                                 "items": {"type": "string"}}]}
           for name in ("sum", "avg", "min", "max")},
        "throttle_ms": {"type": "integer", "minimum": 0, "maximum": 60_000, "default": 100}}},
        {"type": "null"}],
        "examples": [{"group_by": "status", "count": True, "sum": ["total"]}],
        "description": "A live aggregate instead of documents: the database's `$group` "
                       "result first (an `aggregate` message, `full`), then the groups that "
                       "changed, at most one message per `throttle_ms`. Not with "
                       "`snapshot`, `limit`, `since`, `since_time` or `fields`."},
    "ref": {"oneOf": [*_REF["oneOf"], {"type": "null"}], "description": "Echoed by `pong`."},
    "token": {"type": "string", "minLength": 1,
              "description": "An API key or a JWT (docs/security.md)."},
}
_CLIENT_REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    "subscribe": ("sub", "collection"), "unsubscribe": ("sub",), "ping": (), "auth": ("token",),
}
_CLIENT_SUMMARIES: Final[dict[str, str]] = {
    "subscribe": "Start a live query on a collection: `subscribed`, then (with `snapshot`) "
                 "a `snapshot`, then a `change` per matching change.",
    "unsubscribe": "Stop a subscription (an `error` `unknown_sub` if it is not active).",
    "ping": "Ask for a `pong` echoing `ref`.",
    "auth": "Authenticate (as the first message), or renew credentials on an open "
            "connection; answered by `authenticated`.",
}
_CLIENT_EXAMPLES: Final[dict[str, dict[str, Any]]] = {
    "subscribe": {"op": "subscribe", "sub": "s1", "collection": "orders",
                  "filter": {"status": "open"}, "snapshot": True, "limit": 100},
    "unsubscribe": {"op": "unsubscribe", "sub": "s1"},
    "ping": {"op": "ping", "ref": "7"},
    "auth": {"op": "auth", "token": "<api key or JWT>"},
}


def client_ops() -> dict[str, type]:
    """``op`` -> message class, for every message :func:`protocol.parse_client_message` returns."""
    return {cls.__name__.lower(): cls for cls in get_args(protocol.ClientMessage)}


def _client_payload(op: str, cls: type) -> dict[str, Any]:
    fields = [field.name for field in dataclasses.fields(cls)]
    return {
        "type": "object",
        "properties": {"op": {"const": op}, **{name: _CLIENT_FIELDS[name] for name in fields}},
        "required": ["op", *_CLIENT_REQUIRED[op]],
        "additionalProperties": False,
    }


def _server_payloads() -> dict[str, dict[str, Any]]:
    """Every server message's payload schema, by ``type``."""

    def message(type_: str, required: list[str], **properties: Any) -> dict[str, Any]:
        return {"type": "object", "properties": {"type": {"const": type_}, **properties},
                "required": ["type", *required]}

    return {
        "welcome": message(
            "welcome", ["protocol", "server", "heartbeat"],
            protocol={"const": protocol.PROTOCOL_VERSION},
            server={"type": "string", "pattern": "^realtime/",
                    "description": "`realtime/<version>`."},
            heartbeat={"type": "number", "exclusiveMinimum": 0,
                       "description": "Seconds between WebSocket pings; a peer silent for "
                                      "two intervals is closed."}),
        "subscribed": message("subscribed", ["sub", "head"], sub=_SUB, head=_HEAD),
        "snapshot": message(
            "snapshot", ["sub", "documents", "head"], sub=_SUB,
            documents={"type": "array", "items": _DOCUMENT,
                       "description": "Up to `limit` matching documents, sorted by `_id`."},
            head=_HEAD),
        "change": message(
            "change", ["sub", "op", "id", "collection", "key", "ts"], sub=_SUB,
            op={"enum": sorted(protocol.CHANGE_OPS),
                "description": "`leave`: an update moved the document out of the filter "
                               "(key only). A document moving in arrives as `update` or "
                               "`replace`."},
            id=_EVENT_ID,
            collection={"type": "string"},
            key={"description": "The document's `_id`."},
            document={**_DOCUMENT, "description": "The document after the change (absent "
                                                  "for `delete` and `leave`)."},
            updated={"type": "object", "description": "An update's changed fields."},
            removed={"type": "array", "items": {"type": "string"},
                     "description": "An update's removed fields."},
            ts={"type": "string", "format": "date-time"}),
        "aggregate": message(
            "aggregate", ["sub", "full", "groups"], sub=_SUB,
            full={"type": "boolean", "description": "True for the first message (every "
                                                    "group); then only the changed groups."},
            groups={"type": "array", "items": {
                "type": "object", "required": ["key"], "properties": {
                    "key": {"type": "object", "description": "Each `group_by` path's value "
                                                             "(`null` when missing)."},
                    "removed": {"const": True, "description": "The group has no document "
                                                              "left."},
                    "count": {"type": "integer"},
                    **{name: {"type": "object"} for name in ("sum", "avg", "min", "max")}}}}),
        "resync": message(
            "resync", ["sub", "reason"], sub=_SUB,
            reason={"oneOf": [{"const": str(reason), "description": RESYNC_MEANINGS[reason]}
                              for reason in protocol.ResyncReason],
                    "description": "Whatever the reason, reload the subscription with a "
                                   "snapshot."}),
        "error": message(
            "error", ["code", "message"],
            sub={**_SUB, "description": "The subscription, when the message named a valid "
                                        "one."},
            code={"oneOf": [{"const": str(code), "description": ERROR_MEANINGS[code]}
                            for code in protocol.ErrorCode]},
            message={"type": "string", "description": "A sentence for people."}),
        "pong": message("pong", [], ref={**_REF, "description": "The ping's `ref`, if any."}),
        "authenticated": message("authenticated", []),
        "status": message(
            "status", ["feed"],
            feed={"oneOf": [{"const": state, "description": meaning} for state, meaning in (
                (protocol.FEED_LIVE, "the change stream is open; changes arrive as they are "
                                     "committed"),
                (protocol.FEED_RETRYING, "the server lost its change stream and reconnects "
                                         "with backoff; the changes committed meanwhile "
                                         "follow the next `live`, in order, once each"),
                (protocol.FEED_DOWN, "the database is down (retried for a while, or its "
                                     "process exited); the server keeps retrying"),
            )]}),
    }


_SERVER_SUMMARIES: Final[dict[str, str]] = {
    "welcome": "First message of an open connection (after `authenticated` when the "
               "credentials came in an `auth` message).",
    "subscribed": "A subscription is registered; `head` is where it is live from.",
    "snapshot": "The documents matching the filter when the subscription started.",
    "change": "A change to a document the subscription can see.",
    "aggregate": "A live aggregate's groups: all of them first, then those that changed.",
    "resync": "The subscription missed changes it cannot replay: reload it.",
    "error": "A client message was refused; the connection keeps working.",
    "pong": "The answer to `ping`.",
    "authenticated": "The answer to `auth`.",
    "status": "The state of the server's change stream: sent to every connection when it "
              "changes, and right after `welcome` when it is not `live`.",
}
_SERVER_EXAMPLES: Final[dict[str, dict[str, Any]]] = {
    "welcome": {"type": "welcome", "protocol": protocol.PROTOCOL_VERSION,
                "server": "realtime/0.1.0", "heartbeat": 25},
    "subscribed": {"type": "subscribed", "sub": "s1", "head": "8264A1B2C3"},
    "snapshot": {"type": "snapshot", "sub": "s1", "head": "8264A1B2C3",
                 "documents": [{"_id": "o1", "status": "open", "_version": 1}]},
    "change": {"type": "change", "sub": "s1", "op": "update", "id": "8264A1B2C4",
               "collection": "orders", "key": "o1",
               "document": {"_id": "o1", "status": "paid", "_version": 2},
               "updated": {"status": "paid", "_version": 2}, "removed": [],
               "ts": "2026-01-01T00:00:00.000Z"},
    "aggregate": {"type": "aggregate", "sub": "s2", "full": False, "groups": [
        {"key": {"status": "open"}, "count": 12, "sum": {"total": 310.5}},
        {"key": {"status": "new"}, "removed": True}]},
    "resync": {"type": "resync", "sub": "s1", "reason": "history_lost"},
    "error": {"type": "error", "sub": "s1", "code": "bad_filter",
              "message": "unknown operator '$where'"},
    "pong": {"type": "pong", "ref": "7"},
    "authenticated": {"type": "authenticated"},
    "status": {"type": "status", "feed": "retrying"},
}
#: The server messages a client message may be answered with.
_REPLIES: Final[dict[str, list[str]]] = {
    "subscribe": ["subscribed", "snapshot", "aggregate", "error"],
    "unsubscribe": ["error"],
    "ping": ["pong"],
    "auth": ["authenticated", "welcome"],
}


def _close_table() -> str:
    rows = "\n".join(f"| {int(code)} | {CLOSE_MEANINGS[code]} |" for code in protocol.CloseCode)
    return f"| close code | when |\n|---|---|\n{rows}"


@cache
def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of protocol v1 (a fresh copy is not made: do not mutate).

    Raises:
        KeyError: :mod:`realtime.protocol` gained a message, field or code this
            module does not describe (tests/test_asyncapi.py fails first).
    """
    server = _server_payloads()
    client = {op: _client_payload(op, cls) for op, cls in client_ops().items()}
    messages: dict[str, Any] = {}
    for name, payload in client.items():
        messages[name] = {"name": name, "title": f"{name} (client → server)",
                          "summary": _CLIENT_SUMMARIES[name], "payload": payload,
                          "examples": [{"payload": _CLIENT_EXAMPLES[name]}]}
    for name, payload in server.items():
        messages[name] = {"name": name, "title": f"{name} (server → client)",
                          "summary": _SERVER_SUMMARIES[name], "payload": payload,
                          "examples": [{"payload": _SERVER_EXAMPLES[name]}]}

    def ref(name: str) -> dict[str, str]:
        return {"$ref": f"#/channels/ws/messages/{name}"}

    operations: dict[str, Any] = {}
    for op in client:
        operations[f"receive{op.capitalize()}"] = {
            "action": "receive", "channel": {"$ref": "#/channels/ws"},
            "summary": _CLIENT_SUMMARIES[op], "messages": [ref(op)],
            "reply": {"channel": {"$ref": "#/channels/ws"},
                      "messages": [ref(name) for name in _REPLIES[op]]},
        }
    for type_ in server:
        operations[f"send{type_.capitalize()}"] = {
            "action": "send", "channel": {"$ref": "#/channels/ws"},
            "summary": _SERVER_SUMMARIES[type_], "messages": [ref(type_)],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "realtime WebSocket protocol",
            "version": str(protocol.PROTOCOL_VERSION),
            "description": "Live updates of MongoDB documents as JSON text frames on `/ws` "
                           "(docs/protocol.md). Client messages carry an `op`, server "
                           "messages a `type`; a bad client message is answered by an "
                           "`error` and the connection keeps working.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:8000", "protocol": "ws",
                "description": "`realtime serve` (`wss` behind a TLS proxy).",
                "security": [{"$ref": "#/components/securitySchemes/bearer"}],
            },
        },
        "channels": {
            "ws": {
                "address": "/ws",
                "title": "Live subscriptions",
                "description": "One connection carries up to `REALTIME_MAX_SUBSCRIPTIONS` "
                               f"({protocol.MAX_SUBSCRIPTIONS}) subscriptions; client frames "
                               f"are at most {protocol.MAX_FRAME_BYTES} bytes (else close "
                               f"{int(protocol.CloseCode.TOO_BIG)}).\n\n" + _close_table(),
                "messages": {name: {"$ref": f"#/components/messages/{name}"}
                             for name in messages},
                "bindings": {"ws": {
                    "bindingVersion": "0.1.0", "method": "GET",
                    "headers": {"type": "object", "properties": {
                        "Authorization": {"type": "string",
                                          "description": "`Bearer <api key or JWT>`."},
                        "Sec-WebSocket-Protocol": {
                            "type": "string",
                            "description": "Browsers: `realtime, bearer.<token>`."},
                        "Origin": {"type": "string",
                                   "description": "Browsers: must be the server's own "
                                                  "origin or in `REALTIME_ALLOWED_ORIGINS` "
                                                  "(else close 1008)."},
                    }},
                }},
                "x-close-codes": [{"code": int(code), "name": code.name.lower(),
                                   "when": CLOSE_MEANINGS[code]}
                                  for code in protocol.CloseCode],
            },
        },
        "operations": operations,
        "components": {
            "messages": messages,
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "An API key or a JWT: the `Authorization` header, the "
                               "`bearer.<token>` subprotocol, or a first `auth` message "
                               "(docs/security.md). Not needed with `REALTIME_AUTH=none` "
                               "(loopback only).",
            }},
        },
    }


@cache
def _encoded() -> bytes:
    return orjson.dumps(document(), option=orjson.OPT_INDENT_2)


@router.get(ASYNCAPI_PATH, include_in_schema=False)
async def asyncapi() -> Response:
    """The AsyncAPI document of the WebSocket protocol."""
    return Response(_encoded(), media_type="application/json")


if __name__ == "__main__":  # pragma: no cover - python -m realtime.api.asyncapi [--yaml]
    if "--yaml" in sys.argv[1:]:
        import yaml  # a dev dependency

        sys.stdout.write("# Generated by `python -m realtime.api.asyncapi --yaml`: do not edit.\n")
        class _Dumper(yaml.SafeDumper):
            def ignore_aliases(self, data: Any) -> bool:
                return True

        def _text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
            style = "|" if "\n" in text else None
            return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)

        _Dumper.add_representer(str, _text)
        sys.stdout.write(yaml.dump(document(), Dumper=_Dumper, sort_keys=False,
                                   allow_unicode=True, width=88))
    else:
        sys.stdout.write(_encoded().decode() + "\n")

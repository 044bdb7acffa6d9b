"""realtime.api.asyncapi: the AsyncAPI document of the WebSocket protocol matches protocol.py.

The message lists come from :mod:`realtime.protocol` itself (its ``render_*``
functions, the ops :func:`~realtime.protocol.parse_client_message` accepts, its
code enums), so a message, field or code added there without being documented
fails here. docs/asyncapi.yaml must be the served document.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from realtime import protocol
from realtime.api.asyncapi import ASYNCAPI_PATH, client_ops, document
from realtime.app import create_app
from realtime.config import Settings

pytestmark = pytest.mark.driver_blind

ROOT = Path(__file__).resolve().parent.parent

_BODY = protocol.encode_event_body(id="8264A1", collection="orders", key="o1",
                                   document='{"_id":"o1","_version":2}',
                                   updated='{"_version":2}', removed=["old"],
                                   ts="2026-01-01T00:00:00.000Z")
#: Arguments for each renderer of protocol.py: a new renderer needs an entry (and docs).
RENDER_ARGS: dict[str, tuple[Any, ...]] = {
    "render_welcome": ("realtime/0.1.0", 25.0),
    "render_subscribed": ("s1", None),
    "render_snapshot": ("s1", ['{"_id":"o1","_version":1}'], "8264A1"),
    "render_change": (protocol.change_prefix("s1"), "update", _BODY),
    "render_resync": ("s1", "history_lost"),
    "render_error": (protocol.ErrorCode.BAD_FILTER, "no", "s1"),
    "render_pong": ("7",),
    "render_authenticated": (),
    "render_status": (protocol.FEED_LIVE,),
    "render_aggregate": ("s1", '[{"key":{"status":"open"},"count":2,"sum":{"total":3}}]'),
}
#: Further renderings: the optional members left out or in.
MORE_RENDERINGS: list[tuple[str, tuple[Any, ...]]] = [
    ("render_change", (protocol.change_prefix("s1"), "leave",
                       protocol.leave_body(id="8264A2", collection="orders", key=3,
                                           ts="2026-01-01T00:00:00.000Z"))),
    ("render_error", (protocol.ErrorCode.BAD_JSON, "not JSON")),
    ("render_pong", (None,)),
    ("render_subscribed", ("s1", "8264A1")),
    ("render_aggregate", ("s1", '[{"key":{},"removed":true}]', True)),
    *[("render_status", (state,)) for state in sorted(protocol.FEED_STATES)],
]


@pytest.fixture(scope="module")
async def served() -> dict[str, Any]:
    """The document as ``GET /asyncapi.json`` serves it."""
    transport = httpx.ASGITransport(app=create_app(Settings()))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get(ASYNCAPI_PATH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


def _messages(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: message["payload"] for name, message in doc["components"]["messages"].items()}


def _check(payload: dict[str, Any], message: dict[str, Any]) -> None:
    """``message`` fits ``payload`` (the schema subset the document uses at the top level)."""
    assert set(payload["required"]) <= set(message), message
    assert set(message) <= set(payload["properties"]), message
    for name, value in message.items():
        spec = payload["properties"][name]
        if "const" in spec:
            assert value == spec["const"], (name, value)
        if "enum" in spec:
            assert value in spec["enum"], (name, value)
        if "oneOf" in spec and all("const" in branch for branch in spec["oneOf"]):
            assert value in [branch["const"] for branch in spec["oneOf"]], (name, value)


def test_the_served_document_is_asyncapi_3(served: dict[str, Any]) -> None:
    assert served == json.loads(json.dumps(document()))
    assert served["asyncapi"] == "3.0.0"
    channel = served["channels"]["ws"]
    assert channel["address"] == "/ws"
    for name, ref in channel["messages"].items():
        assert ref == {"$ref": f"#/components/messages/{name}"}
    for operation in served["operations"].values():
        assert operation["channel"] == {"$ref": "#/channels/ws"}
        refs = [*operation["messages"], *operation.get("reply", {}).get("messages", ())]
        for ref in refs:
            assert ref["$ref"].removeprefix("#/channels/ws/messages/") in channel["messages"]


def test_every_message_protocol_renders_is_documented(served: dict[str, Any]) -> None:
    renderers: dict[str, Callable[..., str]] = {
        name: getattr(protocol, name) for name in protocol.__all__ if name.startswith("render_")}
    assert set(renderers) == set(RENDER_ARGS), "document the new message, then add it here"
    documented = _messages(served)
    rendered_types = set()
    for name, args in [*RENDER_ARGS.items(), *MORE_RENDERINGS]:
        message = orjson.loads(renderers[name](*args))
        rendered_types.add(message["type"])
        assert message["type"] in documented, message
        _check(documented[message["type"]], message)
    server_messages = {name for name, payload in documented.items()
                       if "type" in payload["properties"]}
    assert server_messages == rendered_types


def test_every_op_protocol_parses_is_documented(served: dict[str, Any]) -> None:
    with pytest.raises(protocol.ProtocolError) as info:
        protocol.parse_client_message('{"op": "no-such-op"}')
    match = re.search(r"expected one of (.+)$", info.value.message)
    assert match is not None, info.value.message
    parsed_ops = set(match.group(1).split(", "))
    documented = _messages(served)
    client_messages = {name for name, payload in documented.items()
                       if "type" not in payload["properties"]}
    assert client_messages == parsed_ops == set(client_ops())


@pytest.mark.parametrize("op", sorted(client_ops()))
def test_client_messages_have_the_parsers_fields(served: dict[str, Any], op: str) -> None:
    message = served["components"]["messages"][op]
    payload = message["payload"]
    cls = client_ops()[op]
    assert set(payload["properties"]) == {"op", *(f.name for f in dataclasses.fields(cls))}
    assert payload["additionalProperties"] is False
    for example in message["examples"]:
        _check(payload, example["payload"])
        assert isinstance(protocol.parse_client_message(json.dumps(example["payload"])), cls)
    # What the document calls required, the parser requires.
    example = message["examples"][0]["payload"]
    for name in payload["required"]:
        if name != "op":
            with pytest.raises(protocol.ProtocolError):
                protocol.parse_client_message(json.dumps(
                    {k: v for k, v in example.items() if k != name}))
    with pytest.raises(protocol.ProtocolError):  # and nothing else is allowed
        protocol.parse_client_message(json.dumps({**example, "extra": 1}))


def test_message_examples_fit(served: dict[str, Any]) -> None:
    for name, message in served["components"]["messages"].items():
        for example in message["examples"]:
            _check(message["payload"], example["payload"])
            assert example["payload"].get("type", example["payload"].get("op")) == name


def test_codes_are_protocols(served: dict[str, Any]) -> None:
    payloads = _messages(served)
    assert [b["const"] for b in payloads["error"]["properties"]["code"]["oneOf"]] == \
        [code.value for code in protocol.ErrorCode]
    assert [b["const"] for b in payloads["resync"]["properties"]["reason"]["oneOf"]] == \
        [reason.value for reason in protocol.ResyncReason]
    assert set(payloads["change"]["properties"]["op"]["enum"]) == protocol.CHANGE_OPS
    assert {b["const"] for b in payloads["status"]["properties"]["feed"]["oneOf"]} == \
        protocol.FEED_STATES
    assert payloads["welcome"]["properties"]["protocol"]["const"] == protocol.PROTOCOL_VERSION
    closes = served["channels"]["ws"]["x-close-codes"]
    assert [c["code"] for c in closes] == [int(code) for code in protocol.CloseCode]
    for code in protocol.CloseCode:
        assert f"| {int(code)} |" in served["channels"]["ws"]["description"]


def test_docs_copy_is_current(served: dict[str, Any]) -> None:
    copy = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text(encoding="utf-8"))
    assert copy == served, ("docs/asyncapi.yaml is stale: "
                            ".venv/bin/python -m realtime.api.asyncapi --yaml > docs/asyncapi.yaml")


def test_protocol_docs_link_it() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert "(asyncapi.yaml)" in text
    assert ASYNCAPI_PATH in text

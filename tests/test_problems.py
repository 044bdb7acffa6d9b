"""realtime.api.problems: every error is problem+json; bad parameters are a 400 that says why.

A bad parameter names itself and the fix in ``detail`` and is listed once in
``invalid_params`` (``name``, ``in``, ``reason``); the pure cases run on
:func:`invalid_params`, the rest on the app in-process.
"""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import orjson
import pytest
from pydantic import Field
from pydantic.fields import FieldInfo

from realtime.api.problems import PROBLEM_JSON, invalid_params, problem_response
from realtime.names import COLLECTION_PATTERN

COLLECTION_REASON = (f"must match {COLLECTION_PATTERN} and not start with 'system'"
                     " — e.g. 'orders'")
DOCS = "/api/collections/{}/documents"


def _pattern_error(where: str, name: str, pattern: str) -> dict[str, Any]:
    return {"type": "string_pattern_mismatch", "loc": (where, name),
            "msg": f"String should match pattern '{pattern}'", "ctx": {"pattern": pattern}}


@pytest.mark.driver_blind
def test_a_parameter_validated_twice_is_listed_once() -> None:
    """An endpoint and its scope check both declare ``collection``: FastAPI reports it twice."""
    error = _pattern_error("path", "collection", COLLECTION_PATTERN)
    assert invalid_params([error, error]) == [
        {"name": "collection", "in": "path",
         "reason": f"must match {COLLECTION_PATTERN} and not start with 'system'"}]


@pytest.mark.driver_blind
def test_the_reason_uses_the_declared_range_and_examples() -> None:
    limit = FieldInfo.from_annotation(Annotated[int, Field(ge=1, le=1000)])  # type: ignore[arg-type]
    name = FieldInfo.from_annotation(Annotated[str, Field(examples=["orders"])])  # type: ignore[arg-type]
    errors: list[dict[str, Any]] = [
        {"type": "int_parsing", "loc": ("query", "limit"), "msg": "Input should be..."},
        {"type": "string_too_long", "loc": ("query", "name"), "msg": "...",
         "ctx": {"max_length": 64}},
        {"type": "missing", "loc": ("header", "X-Thing"), "msg": "Field required"},
        {"type": "greater_than_equal", "loc": ("query", "skip"), "msg": "...", "ctx": {"ge": 0}},
        {"type": "something_new", "loc": ("cookie", "c"), "msg": "Value is odd"},
    ]
    declared = {("query", "limit"): limit, ("query", "name"): name}
    assert invalid_params(errors, declared) == [
        {"name": "limit", "in": "query", "reason": "must be an integer from 1 to 1000"},
        {"name": "name", "in": "query",
         "reason": "must be at most 64 characters — e.g. 'orders'"},
        {"name": "X-Thing", "in": "header", "reason": "is required"},
        {"name": "skip", "in": "query", "reason": "must be a number, at least 0"},
        {"name": "c", "in": "cookie", "reason": "value is odd"},
    ]


@pytest.mark.driver_blind
def test_problem_response_is_rfc_9457() -> None:
    response = problem_response(409, "taken", slug="duplicate-key", instance="/x", extra=1)
    assert response.media_type == PROBLEM_JSON
    assert orjson.loads(bytes(response.body)) == {
        "type": "urn:realtime:problem:duplicate-key", "title": "Conflict", "status": 409,
        "detail": "taken", "instance": "/x", "extra": 1}


# ---------------------------------------------------------------- in-process


def _bad_request(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["type"] == "urn:realtime:problem:bad-request"
    assert "errors" not in body  # one extension member: invalid_params
    assert set(body) == {"type", "title", "status", "detail", "instance", "invalid_params"}
    return body


@pytest.mark.parametrize("name", ["1orders", "system.users", "a" * 65, "bad name"])
async def test_a_bad_collection_names_the_parameter_and_the_fix(
        client: httpx.AsyncClient, name: str) -> None:
    for method, path in (("GET", DOCS.format(name)), ("DELETE", DOCS.format(name) + "/x"),
                         ("POST", DOCS.format(name))):
        body = _bad_request(await client.request(method, path, json={}))
        assert body["detail"] == f"path parameter 'collection': {COLLECTION_REASON}"
        assert body["invalid_params"] == [
            {"name": "collection", "in": "path", "reason": COLLECTION_REASON}]


async def test_every_bad_parameter_is_named(client: httpx.AsyncClient) -> None:
    body = _bad_request(await client.get(DOCS.format("1x") + "?limit=0&skip=many"))
    assert body["invalid_params"] == [
        {"name": "collection", "in": "path", "reason": COLLECTION_REASON},
        {"name": "limit", "in": "query", "reason": "must be an integer from 1 to 1000"},
        {"name": "skip", "in": "query", "reason": "must be an integer from 0 to 10000000"},
    ]
    assert body["detail"] == (
        f"path parameter 'collection': {COLLECTION_REASON}; "
        "query parameter 'limit': must be an integer from 1 to 1000; "
        "query parameter 'skip': must be an integer from 0 to 10000000")


async def test_a_bad_header_is_named(client: httpx.AsyncClient) -> None:
    body = _bad_request(await client.delete(DOCS.format("orders") + "/x",
                                            headers={"If-Match": "v3"}))
    (param,) = body["invalid_params"]
    assert (param["name"], param["in"]) == ("If-Match", "header")
    assert param["reason"].endswith("""— e.g. '"3"' or '*'"""), param
    assert body["detail"].startswith("header 'If-Match': must match ")


async def test_an_unknown_query_parameter_lists_the_known_ones(
        client: httpx.AsyncClient) -> None:
    body = _bad_request(await client.get(DOCS.format("orders") + "?fitler=%7B%7D"))
    takes = "this operation takes filter, sort, limit, after, skip, fields"
    assert body["detail"] == f"unknown query parameter 'fitler'; {takes}"
    assert body["invalid_params"] == [
        {"name": "fitler", "in": "query", "reason": f"unknown; {takes}"}]
    body = _bad_request(await client.get("/api/collections?limit=5"))
    assert body["detail"] == ("unknown query parameter 'limit'; "
                              "this operation takes no query parameters")

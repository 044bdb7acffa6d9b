"""The OpenAPI schema documents what the server answers; its UIs load nothing from elsewhere.

- No operation lists FastAPI's default 422 ``HTTPValidationError``: bad
  parameters are a 400 problem (:mod:`realtime.api.problems`), and each REST
  operation lists the problem statuses it can answer.
- Bad requests answer a status their operation lists, with a body of the
  listed schema (in-process app and database).
- ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) reference same-origin assets
  only (the package fastapi-offline's bundles), each served, under a CSP that
  allows nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest

from realtime.api.problems import PROBLEM_JSON
from realtime.app import create_app
from realtime.config import Settings

DOCS = "/api/collections/{collection}/documents"
ONE = "/api/collections/{collection}/documents/{id}"
COMMON = {400, 401, 403, 429, 503}

#: Every REST operation and the statuses it can answer (success first).
EXPECTED: dict[tuple[str, str], set[int]] = {
    ("get", "/api/collections"): {200, *COMMON},
    ("post", DOCS): {201, *COMMON, 404, 409, 413, 415, 422},
    ("post", DOCS + ":bulk"): {200, 207, *COMMON, 404, 409, 413, 415, 422},
    ("get", DOCS): {200, *COMMON, 404},
    ("get", ONE): {200, *COMMON, 404},
    ("put", ONE): {200, 201, *COMMON, 404, 409, 412, 413, 415, 422},
    ("patch", ONE): {200, *COMMON, 404, 409, 412, 413, 415, 422},
    ("delete", ONE): {204, *COMMON, 404, 409, 412, 422},
}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """The schema the app serves (built without a database)."""
    built: dict[str, Any] = create_app(Settings()).openapi()
    return built


def operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method in ("get", "put", "post", "patch", "delete"):
                yield method, path, operation


@pytest.mark.driver_blind
def test_no_operation_promises_fastapis_default_422(schema: dict[str, Any]) -> None:
    assert b"HTTPValidationError" not in orjson.dumps(schema)
    assert "ValidationError" not in schema["components"]["schemas"]
    for method, path, operation in operations(schema):
        for status, response in operation["responses"].items():
            content = response.get("content", {})
            if status.startswith(("4", "5")) and content:
                assert list(content) == [PROBLEM_JSON], (method, path, status)


@pytest.mark.driver_blind
def test_operations_with_parameters_document_the_400(schema: dict[str, Any]) -> None:
    for method, path, operation in operations(schema):
        if not operation.get("parameters"):
            continue
        problem = operation["responses"]["400"]["content"][PROBLEM_JSON]["schema"]
        assert "invalid_params" in problem["properties"], (method, path)
        item = problem["properties"]["invalid_params"]["items"]
        assert item["required"] == ["name", "in", "reason"]


@pytest.mark.driver_blind
def test_each_rest_operation_lists_the_statuses_it_answers(schema: dict[str, Any]) -> None:
    found = {(method, path): {int(status) for status in operation["responses"]}
             for method, path, operation in operations(schema) if path.startswith("/api/")}
    assert {key: found.get(key) for key in EXPECTED} == EXPECTED
    for key, statuses in found.items():  # an operation not in the table yet
        assert statuses >= COMMON, key
        assert any(200 <= status < 300 for status in statuses), key
    for method, path, operation in operations(schema):
        for status in ("401", "429", "503"):
            if path.startswith("/api/") and status in operation["responses"]:
                assert operation["responses"][status]["headers"], (method, path, status)


# ------------------------------------------------------------------ in-process


def _matches(body: dict[str, Any], schema: dict[str, Any]) -> None:
    """The body has the schema's required members and only members it describes."""
    assert set(schema["required"]) <= set(body), body
    assert set(body) <= set(schema["properties"]), body
    for param in body.get("invalid_params", ()):
        assert set(param) == {"name", "in", "reason"}, param


#: (operation, request path, request options): each request is bad in some way.
BAD_REQUESTS: list[tuple[tuple[str, str], str, dict[str, Any]]] = [
    (("get", "/api/collections"), "/api/collections?x=1", {}),
    (("post", DOCS), "/api/collections/1x/documents", {"json": {}}),
    (("post", DOCS), "/api/collections/orders/documents", {"content": b"{"}),
    (("post", DOCS), "/api/collections/orders/documents", {"content": b"{}"}),
    (("post", DOCS), "/api/collections/orders/documents", {"json": {"$set": 1}}),
    (("post", DOCS + ":bulk"), "/api/collections/-x/documents:bulk", {"json": []}),
    (("post", DOCS + ":bulk"), "/api/collections/orders/documents:bulk", {"json": {}}),
    (("get", DOCS), "/api/collections/orders/documents?limit=0", {}),
    (("get", DOCS), "/api/collections/orders/documents?filter=%7B%22%24where%22%3A1%7D", {}),
    (("get", DOCS), "/api/collections/orders/documents?sort=" + "a" * 3000, {}),
    (("get", ONE), "/api/collections/systemx/documents/x", {}),
    (("get", ONE), "/api/collections/orders/documents/nope", {}),
    (("put", ONE), "/api/collections/orders/documents/x", {"json": {}, "headers": {
        "If-Match": "nope"}}),
    (("put", ONE), "/api/collections/orders/documents/x", {"json": [1]}),
    (("patch", ONE), "/api/collections/orders/documents/x", {"json": {"a": 1}}),
    (("patch", ONE), "/api/collections/orders/documents/x", {
        "content": b"[]", "headers": {"content-type": "application/json-patch+json"}}),
    (("delete", ONE), "/api/collections/orders/documents/x", {"headers": {
        "If-Match": '"1", "2"'}}),
    (("delete", ONE), "/api/collections/orders/documents/x?skip=1", {}),
    (("delete", ONE), "/api/collections/orders/documents/x", {}),
]


async def test_bad_requests_answer_a_status_their_operation_lists(
        client: httpx.AsyncClient, schema: dict[str, Any]) -> None:
    seen = set()
    for (method, template), url, options in BAD_REQUESTS:
        response = await client.request(method.upper(), url, **options)
        listed = schema["paths"][template][method]["responses"]
        assert str(response.status_code) in listed, (method, url, response.text)
        content = listed[str(response.status_code)]["content"]
        assert response.headers["content-type"] == PROBLEM_JSON, (method, url)
        _matches(response.json(), content[PROBLEM_JSON]["schema"])
        seen.add((method, template))
    assert seen == set(EXPECTED)


# ------------------------------------------------------------ Swagger UI, ReDoc


@pytest.fixture
async def docs_client() -> AsyncIterator[httpx.AsyncClient]:
    """The app without its lifespan: the docs need no database."""
    transport = httpx.ASGITransport(app=create_app(Settings()))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


_ASSET = re.compile(r"""(?:src|href|spec-url)="([^"]+)"|url: '([^']+)'""")
_INLINE = re.compile(r"<script>(.*?)</script>", re.DOTALL)


@pytest.mark.driver_blind
@pytest.mark.parametrize(("page", "bundle"), [("/docs", "swagger-ui-bundle.js"),
                                              ("/redoc", "redoc.standalone.js")])
async def test_docs_pages_load_only_local_assets(docs_client: httpx.AsyncClient, page: str,
                                                  bundle: str) -> None:
    response = await docs_client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    for remote in ("http://", "https://", "//cdn"):
        assert remote not in html
    assets = [a or b for a, b in _ASSET.findall(html)]
    assert f"/docs/assets/{bundle}" in assets
    assert "/openapi.json" in assets
    for url in assets:
        assert url.startswith("/"), url
        assert not url.startswith("//"), url
        asset = await docs_client.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url
    # Its CSP allows this origin and the page's own inline script, nothing else.
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    for remote in ("http:", "https:", "*"):
        assert remote not in csp
    for script in _INLINE.findall(html):
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp


@pytest.mark.driver_blind
async def test_the_dashboard_keeps_its_strict_csp(docs_client: httpx.AsyncClient) -> None:
    for url in ("/", "/static/app.js"):
        response = await docs_client.get(url)
        assert "'unsafe-inline'" not in response.headers["content-security-policy"], url


@pytest.mark.driver_blind
async def test_without_the_bundles_the_docs_still_load(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The fallback: FastAPI's CDN copies (and a warning), never a broken server."""
    monkeypatch.setattr("realtime.app._DOCS_PACKAGE", ("no_such_package_here", "static"))
    transport = httpx.ASGITransport(app=create_app(Settings()))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for page in ("/docs", "/redoc"):
            response = await client.get(page)
            assert response.status_code == 200
            assert "https://cdn.jsdelivr.net/" in response.text
            assert "content-security-policy" not in response.headers
    assert "fastapi-offline" in caplog.text

"""realtime/api/headers.py: the one cross-origin exception, the client module.

Every response is ``Cross-Origin-Resource-Policy: same-origin`` except
``/static/realtime.js`` (the JavaScript client, also the npm package
``realtime-mongo-client``), which pages of any origin import as an ES module:
``Cross-Origin-Resource-Policy: cross-origin`` and ``Access-Control-Allow-Origin: *``.
The browser side is tests/e2e/test_js_client.py; CSP, framing and the rest of the
common headers are in tests/test_auth.py.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from realtime.api.headers import CLIENT_MODULE_PATH, DASHBOARD_CSP
from realtime.config import Settings
from tests.helpers import asgi_client, derive

pytestmark = pytest.mark.driver_blind

SOURCE = Path(__file__).resolve().parent.parent / "realtime" / "static" / "realtime.js"
#: A browser on another origin, talking to a loopback server (the rebinding guard
#: of mode none answers only requests naming a loopback host).
FOREIGN = {"Host": "127.0.0.1:8000", "Origin": "https://elsewhere.example",
           "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "script"}


def _cross_origin(r: httpx.Response) -> None:
    assert r.headers.get_list("cross-origin-resource-policy") == ["cross-origin"]
    assert r.headers.get_list("access-control-allow-origin") == ["*"]


def _same_origin(r: httpx.Response) -> None:
    assert r.headers.get_list("cross-origin-resource-policy") == ["same-origin"]
    assert "access-control-allow-origin" not in r.headers


async def test_client_module_is_importable_from_any_origin(client: httpx.AsyncClient) -> None:
    assert CLIENT_MODULE_PATH == "/static/realtime.js"
    for headers in ({}, FOREIGN):
        r = await client.get(CLIENT_MODULE_PATH, headers=headers)
        assert r.status_code == 200
        assert r.content == SOURCE.read_bytes()
        # nosniff stays: a module script needs a JavaScript MIME type.
        assert r.headers["content-type"].split(";")[0] in {"text/javascript",
                                                            "application/javascript"}
        _cross_origin(r)
        # The rest of the common headers and the dashboard's CSP are unchanged.
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cross-origin-opener-policy"] == "same-origin"
        assert r.headers["content-security-policy"] == DASHBOARD_CSP
    # HEAD and a revalidation (304) carry them too: a cached copy stays importable.
    _cross_origin(await client.head(CLIENT_MODULE_PATH, headers=FOREIGN))
    etag = r.headers["etag"]
    again = await client.get(CLIENT_MODULE_PATH, headers={**FOREIGN, "If-None-Match": etag})
    assert again.status_code == 304
    _cross_origin(again)


@pytest.mark.parametrize("path", [
    "/", "/static/index.html", "/static/app.js", "/static/style.css", "/static/favicon.svg",
    "/static/realtime.jsx", "/static/realtime.js/", "/static//realtime.js", "/realtime.js",
    "/api/collections", "/healthz", "/openapi.json",
])
async def test_everything_else_stays_same_origin(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path, headers=FOREIGN)
    assert r.status_code in {200, 404}, r.text
    _same_origin(r)


async def test_allowed_origins_keep_their_cors_answer(settings: Settings) -> None:
    """With REALTIME_ALLOWED_ORIGINS, CORSMiddleware answers a listed origin itself."""
    listed = "https://app.example.com"
    async with asgi_client(derive(settings, allowed_origins=[listed])) as client:
        r = await client.get(CLIENT_MODULE_PATH, headers={**FOREIGN, "Origin": listed})
        assert r.status_code == 200
        assert r.headers.get_list("access-control-allow-origin") == [listed]
        assert r.headers.get_list("cross-origin-resource-policy") == ["cross-origin"]
        # Any other origin still imports it.
        _cross_origin(await client.get(CLIENT_MODULE_PATH, headers=FOREIGN))
        # The dashboard's assets get the listed origin's CORS, but stay same-origin.
        app = await client.get("/static/app.js", headers={**FOREIGN, "Origin": listed})
        assert app.headers.get_list("cross-origin-resource-policy") == ["same-origin"]
        _same_origin(await client.get("/static/app.js", headers=FOREIGN))

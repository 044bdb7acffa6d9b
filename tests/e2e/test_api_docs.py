"""Swagger UI (``/docs``) and ReDoc (``/redoc``) render offline in a real browser.

Their bundles come from the server (package fastapi-offline), never a CDN: the
browser is refused every other origin, and the pages still render every REST
operation, with no script error and no CSP violation except ReDoc's footer logo
(fetched from its CDN, blocked by the docs' CSP by design).
"""

from __future__ import annotations

from typing import Any

import pytest

from realtime.config import Settings
from tests.helpers import BROWSER_TIMEOUT_MS, live_server

pytestmark = pytest.mark.browser

#: ReDoc's footer logo: the one remote URL the bundle asks for; the CSP blocks it.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.mark.parametrize(("path", "operation"), [
    ("/docs", ".opblock"),
    ("/redoc", "[data-section-id^='tag/documents/operation']"),
])
async def test_docs_page_renders_offline(browser: Any, settings: Settings, path: str,
                                         operation: str) -> None:
    async with live_server(settings) as server:
        context = await browser.new_context()
        context.set_default_timeout(BROWSER_TIMEOUT_MS)
        remote: list[str] = []
        errors: list[str] = []
        csp: list[str] = []

        async def route(request_route: Any) -> None:
            url = request_route.request.url
            if url.startswith((server.url + "/", "data:", "blob:")):
                await request_route.continue_()
            else:
                remote.append(url)
                await request_route.abort()

        try:
            await context.route("**/*", route)
            page = await context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda message: csp.append(message.text)
                    if "Content Security Policy" in message.text else None)
            await page.goto(server.url + path)
            await page.locator(operation).first.wait_for()
            assert await page.locator(operation).count() >= 8
        finally:
            await context.close()
    assert errors == []
    assert set(remote) <= {REDOC_LOGO}, remote
    assert all(REDOC_LOGO in text for text in csp), csp

"""The browser of the e2e tests: Debian's Chromium driven by Playwright.

``playwright install`` cannot download here, so Playwright launches the
``chromium`` package's binary. Without it (or without Playwright) the browser
tests skip, except under ``CI=true``, where they fail. Every test here is
``driver_blind``: the browser sees the same service whichever driver it uses.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.helpers import BROWSER_TIMEOUT_MS

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e ``driver_blind`` (the hook sees every item)."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.driver_blind)


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run under CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    """One headless Chromium for the session."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    async with async_playwright() as pw:
        try:
            instance = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception as exc:
            _unavailable(f"Chromium does not start: {exc}")
        yield instance
        await instance.close()


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    """A page in a fresh browser context (a module may override it with its own)."""
    context = await browser.new_context()
    context.set_default_timeout(BROWSER_TIMEOUT_MS)
    try:
        yield await context.new_page()
    finally:
        await context.close()

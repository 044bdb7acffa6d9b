"""The dashboard's field picker, live aggregate panel and "replay from" control, in
Chromium against a real server (the page fixture and helpers of test_dashboard.py:
uncaught errors and CSP violations fail the test)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from realtime.client import Change, Subscribed, connect
from tests.e2e.test_dashboard import DOCS, Page, expect, page, post, row, wait_table_is
from tests.helpers import LiveServer

pytestmark = pytest.mark.browser
__all__ = ["page"]  # the fixture, imported for this module


async def watch(page: Page, live: LiveServer, collection: str) -> None:
    p = page.page
    await p.goto(live.url + "/")
    await expect(p.locator("#status")).to_have_attribute("data-state", "open")
    await p.fill("#collection-new", collection)
    await p.click("#watch")


async def test_the_field_picker_watches_only_the_chosen_fields(
        page: Page, live: LiveServer, http: httpx.AsyncClient) -> None:
    await post(http, "cards", {"_id": "c1", "status": "open", "total": 5, "note": "a",
                               "customer": {"name": "Ann", "city": "Oslo"}})
    p = page.page
    await watch(page, live, "cards")
    await expect(row(page, "c1")).to_have_count(1)
    picker = p.locator("#field-picker")
    await expect(picker).to_be_visible()
    await expect(picker.locator("input[type=checkbox]")).to_have_count(5)
    await picker.locator('input[data-field="status"]').check()
    await picker.locator('input[data-field="customer.name"]').check()
    await expect(p.locator("#fields")).to_have_value("status, customer.name")
    await p.click("#watch")
    await expect(p.locator("#docs thead th")).to_have_text(
        ["_id", "customer.name", "status", "_version"])
    await expect(p.locator("#docs-caption")).to_contain_text("fields status, customer.name")
    await expect(row(page, "c1").locator('td[data-col="customer.name"]')).to_have_text("Ann")
    # The others stay pickable.
    await expect(picker.locator("input[type=checkbox]")).to_have_count(5)

    r = await http.patch(f"{DOCS.format('cards')}/c1", json={"note": "b"})  # not shown: nothing
    assert r.status_code == 200
    r = await http.patch(f"{DOCS.format('cards')}/c1",
                         json={"status": "paid", "customer": {"city": "Rome"}})
    assert r.status_code == 200
    await expect(row(page, "c1").locator('td[data-col="status"]')).to_have_text("paid")
    await expect(row(page, "c1")).to_have_attribute("data-version", "3")
    await expect(p.locator("#log li.log-update")).to_have_count(1)  # one delta, not two
    # The REST pages take the same fields: a new document comes projected too.
    await post(http, "cards", {"_id": "c2", "status": "new", "note": "x"})
    await wait_table_is(page, {"c1": 3, "c2": 1})
    await expect(p.locator("#docs thead th")).to_have_text(
        ["_id", "customer.name", "status", "_version"])
    await p.fill("#fields", "a..b")
    await p.click("#watch")
    await expect(p.locator("#watch-error")).to_contain_text("not a field path")


BARS = """() => [...document.querySelectorAll('#agg-chart li.bar-row')].map((li) => [
  li.querySelector('.bar-label').textContent, li.querySelector('.bar-value').textContent,
  li.querySelector('.bar-fill').style.width])"""


async def bars(page: Page, expected: list[list[str]]) -> None:
    try:
        await page.page.wait_for_function(
            f"(expected) => JSON.stringify(({BARS})()) === JSON.stringify(expected)",
            arg=expected)
    except Exception as exc:
        got = await page.page.evaluate(BARS)
        raise AssertionError(f"bars {got} never became {expected}") from exc


async def test_the_aggregate_panel_draws_a_bar_per_group_and_updates_it_in_place(
        page: Page, live: LiveServer, http: httpx.AsyncClient) -> None:
    for i, (status, total) in enumerate((("open", 5), ("open", 7), ("paid", 3))):
        await post(http, "sales", {"_id": f"s{i}", "status": status, "total": total})
    p = page.page
    await watch(page, live, "sales")
    await expect(row(page, "s2")).to_have_count(1)
    await p.fill("#agg-group", "status")
    await p.select_option("#agg-op", "sum")
    await p.fill("#agg-field", "total")
    await p.click("#agg-show")
    await bars(page, [["open", "12", "100%"], ["paid", "3", "25%"]])
    await expect(p.locator("#agg-caption")).to_have_text("sum of total by status · 2 groups")
    # Mark the rows: an update must change them, not replace them.
    await p.evaluate("() => { for (const li of document.querySelectorAll('#agg-chart li')) "
                     "li.dataset.mark = li.dataset.key; }")
    await post(http, "sales", {"_id": "s3", "status": "paid", "total": 9})
    await bars(page, [["open", "12", "100%"], ["paid", "12", "100%"]])
    await post(http, "sales", {"_id": "s4", "status": "open", "total": 12})
    await bars(page, [["open", "24", "100%"], ["paid", "12", "50%"]])
    marks = await p.evaluate("() => [...document.querySelectorAll('#agg-chart li')]"
                             ".map((li) => li.dataset.mark === li.dataset.key)")
    assert marks == [True, True]
    # A group that empties goes; one that appears gets a bar of its own.
    for key in ("s2", "s3"):
        r = await http.patch(f"{DOCS.format('sales')}/{key}", json={"status": "void"})
        assert r.status_code == 200
    await bars(page, [["open", "24", "100%"], ["void", "12", "50%"]])
    await p.click("#agg-stop")
    await expect(p.locator("#agg-chart li")).to_have_count(0)
    # Count, without a group: one bar.
    await p.fill("#agg-group", "")
    await p.select_option("#agg-op", "count")
    await p.click("#agg-show")
    await bars(page, [["(all)", "5", "100%"]])


async def _commit_times(live: LiveServer, http: httpx.AsyncClient, collection: str,
                        keys: list[str]) -> list[str]:
    """Insert ``keys``; the ``ts`` of each insert, as a subscriber sees it."""
    times: list[str] = []
    async with connect(live.url) as client, client.subscribe(collection) as sub:
        async for event in sub:
            if isinstance(event, Subscribed):
                for key in keys:
                    await post(http, collection, {"_id": key, "n": key})
            elif isinstance(event, Change):
                times.append(event.ts)
                if len(times) == len(keys):
                    return times
    raise AssertionError("the subscription ended")


LOCAL_INPUT = """(ts) => {
  const d = new Date(ts);
  d.setMinutes(d.getMinutes() - d.getTimezoneOffset());
  return d.toISOString().slice(0, 23);
}"""


async def test_replay_from_shows_the_changes_since_then_and_follows_live(
        page: Page, live: LiveServer, http: httpx.AsyncClient) -> None:
    times = await _commit_times(live, http, "journal", ["j1", "j2", "j3"])
    p = page.page
    await watch(page, live, "journal")
    await wait_table_is(page, {"j1": 1, "j2": 1, "j3": 1})
    value: Any = await p.evaluate(LOCAL_INPUT, times[1])
    await p.fill("#replay-from", value)
    await p.click("#watch")
    expected = {key: 1 for key, ts in zip(["j1", "j2", "j3"], times, strict=True)
                if ts >= times[1]}
    await wait_table_is(page, expected)
    await expect(p.locator("#docs-caption")).to_contain_text("changed since")
    await expect(p.locator("#log li.log-sub")).not_to_have_count(0)
    await post(http, "journal", {"_id": "j4"})
    await wait_table_is(page, {**expected, "j4": 1})

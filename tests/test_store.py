"""realtime.store: exactly-once writes under real faults.

A :class:`tests.helpers.WireProxy` between the store and the database loses the
reply of one write after the database applied it, and strips the ``txnNumber``
from the driver's retry, so the database cannot recognise the retry (as after
a crash that lost its retry record). The operation id in ``_op`` makes the
retry a no-op: ``_version`` moves by one, the caller gets its own write.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from realtime.config import Settings
from realtime.db import Database
from realtime.embedded import EmbeddedServer
from realtime.errors import DuplicateKey
from realtime.store import OP_FIELD, OpIds, Store
from tests.helpers import WireProxy, wire_proxy

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def proxy(mongo: EmbeddedServer) -> AsyncIterator[WireProxy]:
    async with wire_proxy(mongo.host, mongo.port) as p:
        yield p


@pytest.fixture
async def store(settings: Settings, proxy: WireProxy) -> AsyncIterator[Store]:
    db = Database(settings, proxy.uri)
    try:
        yield Store(db, settings)
    finally:
        # The proxy runs in this event loop: with Motor close it first, as Motor's close()
        # blocks the loop while its monitor threads finish their reads through the proxy
        # (PyMongo's async client closes in the loop, and leaks a socket if cut first).
        if db.driver == "motor":
            await proxy.close()
        await db.close()


@pytest.fixture
async def direct(settings: Settings, mongo: EmbeddedServer) -> AsyncIterator[Store]:
    """A store on the database itself (for setting up and reading back)."""
    db = Database(settings, mongo.uri)
    try:
        yield Store(db, settings)
    finally:
        await db.close()


async def test_lost_insert_reply_answers_the_stored_document(
        store: Store, direct: Store, proxy: WireProxy) -> None:
    proxy.lose_reply("insert", "docs")
    stored = await store.insert("docs", {"_id": "a", "n": 1})
    assert proxy.lost.is_set()
    assert proxy.forgotten == 1
    assert stored["_version"] == 1
    assert await direct.get("docs", "a") == stored


async def test_lost_insert_reply_without_id_inserts_one_document(
        store: Store, direct: Store, proxy: WireProxy) -> None:
    proxy.lose_reply("insert", "docs")
    stored = await store.insert("docs", {"n": 1})
    assert proxy.lost.is_set()
    assert proxy.forgotten == 1
    assert await direct.count("docs") == 1
    assert await direct.get("docs", stored["_id"]) == stored


@pytest.mark.parametrize("if_match", [None, 1])
async def test_lost_replace_reply_is_applied_once(store: Store, direct: Store, proxy: WireProxy,
                                                  if_match: int | None) -> None:
    await direct.insert("docs", {"_id": "a", "n": 1})
    proxy.lose_reply("findAndModify", "docs")
    new, created = await store.replace("docs", "a", {"n": 2}, if_match=if_match)
    assert proxy.lost.is_set()
    assert proxy.forgotten == 1
    assert (new["_version"], new["n"], created) == (2, 2, False)
    assert (await direct.get("docs", "a"))["_version"] == 2


async def test_lost_create_by_replace_reply_answers_created(
        store: Store, direct: Store, proxy: WireProxy) -> None:
    proxy.lose_reply("insert", "docs")
    new, created = await store.replace("docs", "a", {"n": 1})
    assert proxy.lost.is_set()
    assert (new["_version"], created) == (1, True)
    assert (await direct.get("docs", "a"))["_version"] == 1


@pytest.mark.parametrize("if_match", [None, 1])
async def test_lost_patch_reply_is_applied_once(store: Store, direct: Store, proxy: WireProxy,
                                                if_match: int | None) -> None:
    await direct.insert("docs", {"_id": "a", "n": 1})
    proxy.lose_reply("findAndModify", "docs")
    new = await store.patch("docs", "a", {"m": 1}, if_match=if_match)
    assert proxy.lost.is_set()
    assert proxy.forgotten == 1
    assert (new["_version"], new["m"]) == (2, 1)
    assert (await direct.get("docs", "a"))["_version"] == 2


async def test_lost_delete_reply_answers_success(store: Store, direct: Store,
                                                 proxy: WireProxy) -> None:
    await direct.insert("docs", {"_id": "a", "n": 1})
    proxy.lose_reply("delete", "docs")
    await store.delete("docs", "a")
    assert proxy.lost.is_set()
    assert proxy.forgotten == 1
    assert await direct.count("docs") == 0


async def test_lost_bulk_reply_inserts_each_document_once(
        store: Store, direct: Store, proxy: WireProxy) -> None:
    proxy.lose_reply("insert", "docs")
    result = await store.insert_many("docs", [{"_id": "a"}, {"n": 2}, {"_id": "c"}])
    assert proxy.lost.is_set()
    assert result.ok
    assert [item.index for item in result.items] == [0, 1, 2]
    assert await direct.count("docs") == 3


async def test_every_write_stores_an_operation_id(direct: Store) -> None:
    stored = await direct.insert("docs", {"_id": "a", OP_FIELD: "mine", "_version": 7})
    assert stored["_version"] == 1
    assert stored[OP_FIELD] != "mine"
    replaced, _ = await direct.replace("docs", "a", {"n": 1}, op="put-1")
    assert replaced[OP_FIELD] == "put-1"
    patched = await direct.patch("docs", "a", {"n": 2, OP_FIELD: "x"}, op="patch-1")
    assert (patched[OP_FIELD], patched["_version"]) == ("patch-1", 3)


async def test_same_operation_twice_writes_once(direct: Store) -> None:
    first = await direct.insert("docs", {"_id": "a", "n": 1}, op="k1")
    assert await direct.insert("docs", {"_id": "a", "n": 1}, op="k1") == first
    once, _ = await direct.replace("docs", "a", {"n": 2}, op="k2")
    again, created = await direct.replace("docs", "a", {"n": 2}, op="k2")
    assert again == once
    assert not created
    assert once["_version"] == 2
    patched = await direct.patch("docs", "a", {"m": 1}, op="k3")
    assert await direct.patch("docs", "a", {"m": 1}, op="k3") == patched
    assert patched["_version"] == 3


async def test_another_operation_on_a_taken_id_is_still_a_conflict(direct: Store) -> None:
    await direct.insert("docs", {"_id": "a"}, op="k1")
    with pytest.raises(DuplicateKey):
        await direct.insert("docs", {"_id": "a"}, op="k2")
    with pytest.raises(DuplicateKey):
        await direct.insert("docs", {"_id": "a"})


async def test_if_match_keeps_its_412_for_another_operation(direct: Store) -> None:
    from realtime.errors import PreconditionFailed

    await direct.insert("docs", {"_id": "a"})
    await direct.replace("docs", "a", {"n": 1}, if_match=1, op="k1")
    with pytest.raises(PreconditionFailed):
        await direct.replace("docs", "a", {"n": 2}, if_match=1, op="k2")
    with pytest.raises(PreconditionFailed):
        await direct.patch("docs", "a", {"n": 2}, if_match=1, op="k3")
    with pytest.raises(PreconditionFailed):
        await direct.delete("docs", "a", if_match=1)




@pytest.mark.driver_blind
def test_op_ids_are_random_url_safe_and_distinct() -> None:
    """Operation ids read in blocks: 16 URL-safe characters, none repeated across blocks."""
    ids = OpIds()
    many = [ids.new() for _ in range(3 * OpIds.BLOCK + 5)]
    assert len(set(many)) == len(many)
    assert all(len(op) == 16 and re.fullmatch(r"[A-Za-z0-9_-]{16}", op) for op in many)
    assert many[:5] != [OpIds().new() for _ in range(5)]  # another pool, other ids

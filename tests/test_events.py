"""Change events: the post-image rebuilt from a pre-image is the stored document.

For an update with a pre-image, :func:`realtime.events.normalise` computes the
document after the change from the pre-image and the update description
(:func:`realtime.events.apply_update`) rather than trusting the looked-up
``fullDocument``, which may already show later changes. The property test
checks that against a real SecantusDB: hypothesis applies update operators one
at a time (``$set``/``$unset`` on nested paths and array elements, ``$inc``,
``$push``, ``$pop``, ``$rename``, shorter arrays by ``$set`` and by a pipeline's
``$slice``, which the server reports as ``truncatedArrays``) and every event's
rebuilt document must equal the document read back. The session ``mongo``
fixture's server, read through PyMongo's async client directly (whatever
``REALTIME_DRIVER`` says).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from itertools import count
from typing import Any

import pytest
from bson import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import AsyncMongoClient
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.asynchronous.collection import AsyncCollection

from realtime.embedded import EmbeddedServer
from realtime.events import Event, apply_update, normalise

pytestmark = pytest.mark.driver_blind

Doc = dict[str, Any]
KEYS = ("a", "b", "c")
NEW = ("a", "b", "d")
_keys = count()


# ---------------------------------------------------------------------- the database


@pytest.fixture
async def watched(mongo: EmbeddedServer
                  ) -> AsyncIterator[tuple[AsyncCollection[Doc], AsyncChangeStream[Doc]]]:
    """A collection with pre-images enabled, and a change stream on it (as the feed opens)."""
    client: AsyncMongoClient[Doc] = AsyncMongoClient(mongo.uri)
    db = client[f"ev_{uuid.uuid4().hex[:12]}"]
    try:
        await db.create_collection("docs")
        await db.command({"collMod": "docs", "changeStreamPreAndPostImages": {"enabled": True}})
        coll = db["docs"]
        stream = await coll.watch(full_document="updateLookup",
                                  full_document_before_change="whenAvailable",
                                  max_await_time_ms=50)
        try:
            yield coll, stream
        finally:
            await stream.close()
            await client.drop_database(db.name)
    finally:
        await client.close()


async def next_change(stream: AsyncChangeStream[Doc], timeout: float = 10.0) -> Doc:
    """The stream's next event (each empty wait is one ``getMore`` of 50 ms)."""
    async with asyncio.timeout(timeout):
        while (raw := await stream.try_next()) is None:
            pass
    return raw


# ---------------------------------------------------------------------- updates

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(["", "x"]))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner,
                                                                max_size=3),
    max_leaves=6,
) | st.lists(scalars, min_size=3, max_size=8)  # long enough to be reported truncated
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=3)


def _walk(value: Any, prefix: str = "", in_array: bool = False
          ) -> Iterator[tuple[str, Any, bool]]:
    """``(path, value, whether an array is on the way)`` for every field and element."""
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = ((str(i), v) for i, v in enumerate(value))
        in_array = True
    else:
        return
    for key, child in items:
        path = f"{prefix}{key}"
        yield path, child, in_array
        yield from _walk(child, f"{path}.", in_array)


def _any(options: list[st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``options``, each as likely."""
    return st.sampled_from(options).flatmap(lambda option: option)


def updates(doc: Doc) -> st.SearchStrategy[Doc | list[Doc]]:
    """One update operator on one path of ``doc`` that the server accepts."""
    walked = list(_walk({k: v for k, v in doc.items() if k != "_id"}))
    paths = [path for path, _, _ in walked]
    arrays = [(path, value, in_array) for path, value, in_array in walked
              if isinstance(value, list)]
    # New fields of the document and of its sub-documents; elements past an array's end.
    new = [k for k in NEW if k not in doc]
    new += [f"{path}.{k}" for path, value, _ in walked if isinstance(value, dict)
            for k in NEW if k not in value]
    past_end = [f"{path}.{len(value) + extra}" for path, value, _ in arrays for extra in (0, 1)]
    ints = [p for p, v, _ in walked if type(v) is int]
    targets = [k for k in NEW if k not in doc]
    free = [p for p, _, in_array in walked if not in_array]
    plain = [(p, v) for p, v, in_array in arrays if not in_array]
    options = [st.builds(lambda p, v: {"$set": {p: v}}, st.sampled_from(paths + new + past_end),
                         values)]
    if ints + new:
        options.append(st.builds(lambda p, n: {"$inc": {p: n}}, st.sampled_from(ints + new),
                                 st.integers(-3, 3)))
    if arrays or new:
        options.append(st.builds(lambda p, v: {"$push": {p: v}},
                                 st.sampled_from([p for p, _, _ in arrays] + new), values))
    if paths:
        options.append(st.builds(lambda p: {"$unset": {p: ""}}, st.sampled_from(paths)))
    if free and targets:
        options.append(st.builds(lambda p, to: {"$rename": {p: to}}, st.sampled_from(free),
                                 st.sampled_from(targets)))
    if arrays:
        options += [
            st.builds(lambda p, side: {"$pop": {p: side}},
                      st.sampled_from([p for p, _, _ in arrays]), st.sampled_from([1, -1])),
            st.sampled_from(arrays).flatmap(lambda a: st.integers(0, len(a[1])).map(
                lambda n: {"$set": {a[0]: a[1][:n]}})),
        ]
    if plain:  # an aggregation pipeline: the server reports truncatedArrays
        options.append(st.sampled_from(plain).flatmap(lambda a: st.integers(0, len(a[1])).map(
            lambda n: [{"$set": {a[0]: {"$slice": [f"${a[0]}", n]}}}])))
    return _any(options)


def _changed_fields(before: Doc, after: Doc) -> set[str]:
    """The top-level fields whose value differs."""
    missing = object()
    return {k for k in {*before, *after} if before.get(k, missing) != after.get(k, missing)}


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(initial=documents, data=st.data())
async def test_the_post_image_rebuilt_from_the_pre_image_is_the_stored_document(
        watched: tuple[AsyncCollection[Doc], AsyncChangeStream[Doc]], initial: Doc,
        data: st.DataObject) -> None:
    coll, stream = watched
    key = next(_keys)
    await coll.insert_one({"_id": key, **initial})
    inserted = normalise(await next_change(stream))
    assert inserted is not None
    assert inserted.op == "insert"
    assert inserted.document == await coll.find_one({"_id": key})
    for _ in range(data.draw(st.integers(1, 6), label="updates")):
        current = await coll.find_one({"_id": key})
        assert current is not None
        update = data.draw(updates(current), label="update")
        result = await coll.update_one({"_id": key}, update)
        if not result.modified_count:
            continue  # the document did not change: no event
        raw = await next_change(stream)
        stored = await coll.find_one({"_id": key})
        ev = normalise(raw)
        assert ev is not None
        assert ev.document == stored
        assert ev.before == current
        if ev.op == "replace":
            continue  # a pipeline may be logged as a replacement: the document is in the event
        assert ev.op == "update"
        description = raw["updateDescription"]
        assert apply_update(current, description) == stored, (update, description)
        # What Subscription.decide relies on when a pre-image is missing.
        assert ev.changed is not None
        assert _changed_fields(current, stored) <= ev.changed, (update, description)


# ---------------------------------------------------------------------- examples


def raw(op: str, **fields: Any) -> Doc:
    return {"_id": {"_data": "82ab"}, "operationType": op, "ns": {"db": "b", "coll": "c"},
            "clusterTime": Timestamp(100, 7), **fields}


def test_a_description_that_does_not_fit_the_pre_image_is_refused() -> None:
    with pytest.raises(ValueError, match="does not apply"):
        apply_update({"_id": 1, "a": 5}, {"truncatedArrays": [{"field": "a", "newSize": 0}]})
    with pytest.raises(ValueError, match="does not apply"):
        apply_update({"_id": 1, "a": [1]}, {"updatedFields": {"a.x": 1}})


def test_apply_update_leaves_the_pre_image_alone() -> None:
    before = {"_id": 1, "a": {"b": [1, 2, 3]}}
    after = apply_update(before, {"updatedFields": {"a.b.4": 5}, "removedFields": [],
                                  "truncatedArrays": [{"field": "a.b", "newSize": 1}]})
    assert after == {"_id": 1, "a": {"b": [1, None, None, None, 5]}}
    assert before == {"_id": 1, "a": {"b": [1, 2, 3]}}


def test_without_a_fitting_pre_image_the_looked_up_document_is_used() -> None:
    ev = normalise(raw("update", documentKey={"_id": 1}, fullDocument={"_id": 1, "a": [7]},
                       fullDocumentBeforeChange={"_id": 1, "a": 5},
                       updateDescription={"updatedFields": {"a.0": 7}, "removedFields": [],
                                          "truncatedArrays": [{"field": "a", "newSize": 0}]}))
    assert ev is not None
    assert ev.document == {"_id": 1, "a": [7]}
    assert ev.changed == frozenset({"a"})


def test_an_update_that_only_truncates_an_array_names_it_among_the_changed_fields() -> None:
    ev = normalise(raw("update", documentKey={"_id": 1}, fullDocument={"_id": 1, "a": [1]},
                       updateDescription={"updatedFields": {}, "removedFields": [],
                                          "truncatedArrays": [{"field": "a", "newSize": 1}]}))
    assert ev is not None
    assert ev.changed == frozenset({"a"})


def test_a_delete_has_its_pre_image_and_no_document() -> None:
    ev = normalise(raw("delete", documentKey={"_id": "k"},
                       fullDocumentBeforeChange={"_id": "k", "n": 1}))
    assert ev is not None
    assert (ev.op, ev.key, ev.document, ev.before, ev.ct) == (
        "delete", "k", None, {"_id": "k", "n": 1}, (100, 7))


def test_a_stream_event_has_no_document_and_other_operations_are_dropped() -> None:
    drop: Event | None = normalise(raw("drop"))
    assert drop is not None
    assert (drop.op, drop.collection, drop.key, drop.document) == ("drop", "c", None, None)
    assert normalise(raw("createIndexes")) is None

"""Projections and deltas, sans I/O, and against the database's own projection.

Three tiny builders: :func:`sub` (a projected subscription on a recording
outlet), :func:`change_event` (tests.helpers) and :func:`sent` (what the outlet
got, decoded). The property tests run a SecantusDB server of their own:
``Projection.apply`` equals ``find(filter, projection)``, and a client applying
the deltas of a sequence of versions holds the projected database document.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count
from typing import Any

import orjson
import pymongo
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo.database import Database

from realtime import protocol
from realtime.embedded import EmbeddedServer
from realtime.events import Event
from realtime.projection import Projection, apply_delta, check_fields, delta
from realtime.subscription import Subscription
from tests.helpers import change_event

pytestmark = pytest.mark.driver_blind


class Outlet:
    """A connection that records the messages it gets, decoded."""

    max_backlog = 1000
    backlog = 0

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def send(self, message: str) -> None:
        self.messages.append(orjson.loads(message))

    def send_shared(self, message: str, frame: bytes) -> None:
        assert frame == protocol.text_frame(message.encode())
        self.send(message)

    def send_change(self, ev: Event, prefix: str, op: str) -> None:
        self.send(protocol.render_change(prefix, op, ev.leave if op == "leave" else ev.body))

    def close(self, code: int, reason: str = "") -> None:
        raise AssertionError(f"closed {code}")


def sub(*fields: str, filter: dict[str, Any] | None = None,
        projection: Projection | None = None) -> tuple[Subscription, Outlet]:
    outlet = Outlet()
    proj = projection if projection is not None else Projection(check_fields(list(fields)))
    return Subscription(outlet, "s", "c", filter or {}, projection=proj), outlet


def sent(outlet: Outlet) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k not in ("type", "sub", "id", "collection", "ts")}
            for m in outlet.messages]


def deliver(subscription: Subscription, ev: Event) -> None:
    op = subscription.decide(ev)
    if op is not None:
        subscription.send(op, ev)


# ------------------------------------------------------------------ the fields list

def test_fields_are_sorted_deduplicated_and_a_path_under_another_is_dropped() -> None:
    assert check_fields(["b", "a.c", "a", "b", "_id", "_version", "z.y"]) == ("a", "b", "z.y")


@pytest.mark.parametrize(("fields", "says"), [
    ([], "non-empty list"), ("a", "non-empty list"), ([1], "path of 1 to 256"),
    ([""], "path of 1 to 256"), (["a..b"], "not a field path"), (["$a"], "not a field path"),
    (["a.$b"], "not a field path"), (["a\x00"], "not a field path"),
    (["x" * 257], "path of 1 to 256"), ([f"f{i}" for i in range(65)], "at most 64"),
])
def test_bad_fields_are_refused(fields: Any, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        check_fields(fields)


def test_subscribe_takes_fields_and_refuses_bad_ones_with_bad_message() -> None:
    message = protocol.parse_client_message(orjson.dumps(
        {"op": "subscribe", "sub": "s", "collection": "c", "fields": ["total", "a.b"]}))
    assert isinstance(message, protocol.Subscribe)
    assert message.fields == ("a.b", "total")
    with pytest.raises(protocol.ProtocolError) as info:
        protocol.parse_client_message(orjson.dumps(
            {"op": "subscribe", "sub": "s", "collection": "c", "fields": ["$x"]}))
    assert (info.value.code, info.value.sub) == ("bad_message", "s")
    assert "'fields'" in info.value.message


# ------------------------------------------------------------------ projecting

def test_a_projection_keeps_id_version_and_its_paths_with_mongodb_semantics() -> None:
    p = Projection(check_fields(["a.b", "c", "missing"]))
    doc = {"_id": 1, "_version": 3, "a": {"b": 1, "x": 2}, "c": [1, 2], "d": 4}
    assert p.apply(doc) == {"_id": 1, "_version": 3, "a": {"b": 1}, "c": [1, 2]}
    assert p.apply({"_id": 1, "a": {"x": 1}}) == {"_id": 1, "a": {}}
    assert p.apply({"_id": 1, "a": 5}) == {"_id": 1}
    assert p.apply({"_id": 1, "a": [{"b": 1, "x": 0}, 7, {"x": 1}, [{"b": 2}, "s"]]}) == {
        "_id": 1, "a": [{"b": 1}, {}, [{"b": 2}]]}


def test_a_delta_names_the_changed_paths_through_subdocuments_only() -> None:
    before = {"_id": 1, "_version": 1, "a": {"b": 1, "c": 2}, "l": [1, 2], "g": "x"}
    after = {"_id": 1, "_version": 2, "a": {"b": 1, "c": 3, "d": 4}, "l": [1, 3]}
    change = delta(before, after)
    assert change == ({"_version": 2, "a.c": 3, "a.d": 4, "l": [1, 3]}, ["g"])
    assert apply_delta(before, *change) == after
    assert delta({"_version": 1, "a": 1}, {"_version": 2, "a": 1}) is None
    assert delta({"a": 1}, {"a": 1.0}) == ({"a": 1.0}, [])  # another BSON type
    assert delta({"a": [1]}, {"a": [True]}) == ({"a": [True]}, [])


# ------------------------------------------------------------------ what is sent

def test_insert_and_replace_carry_the_projected_document() -> None:
    s, out = sub("total")
    deliver(s, change_event(1, "insert", doc={"_version": 1, "total": 5, "note": "x"}))
    deliver(s, change_event(2, "replace", doc={"_version": 2, "total": 6, "note": "y"},
                            before={"_version": 1, "total": 5, "note": "x"}))
    assert sent(out) == [
        {"op": "insert", "key": "a", "document": {"_id": "a", "_version": 1, "total": 5}},
        {"op": "replace", "key": "a", "document": {"_id": "a", "_version": 2, "total": 6}}]


def test_an_update_carries_only_the_changed_projected_fields() -> None:
    s, out = sub("total", "customer.name")
    before = {"_version": 1, "total": 5, "customer": {"name": "A", "tel": 1}, "note": "x"}
    after = {"_version": 2, "total": 7, "customer": {"name": "A", "tel": 2}, "note": "y"}
    deliver(s, change_event(1, "update", doc=after, before=before))
    assert sent(out) == [{"op": "update", "key": "a", "updated": {"_version": 2, "total": 7},
                          "removed": []}]


def test_an_update_that_touches_no_projected_field_sends_nothing() -> None:
    s, out = sub("total")
    deliver(s, change_event(1, "update", doc={"_version": 2, "total": 5, "note": "y"},
                            before={"_version": 1, "total": 5, "note": "x"}))
    deliver(s, change_event(2, "update", doc={"_version": 3, "total": 5, "note": "z"},
                            changed=["note", "_version"]))  # no pre-image
    assert out.messages == []


def test_entering_the_filter_sends_the_document_and_leaving_sends_leave() -> None:
    s, out = sub("total", filter={"status": "open"})
    deliver(s, change_event(1, "update", doc={"_version": 2, "status": "open", "total": 1},
                            before={"_version": 1, "status": "new", "total": 1}))
    deliver(s, change_event(2, "update", doc={"_version": 3, "status": "done", "total": 1},
                            before={"_version": 2, "status": "open", "total": 1}))
    deliver(s, change_event(3, "delete", before={"_version": 3, "status": "open"}))
    assert sent(out) == [
        {"op": "update", "key": "a", "document": {"_id": "a", "_version": 2, "total": 1}},
        {"op": "leave", "key": "a"}, {"op": "delete", "key": "a"}]


def test_without_a_pre_image_an_update_of_a_projected_field_sends_the_document() -> None:
    s, out = sub("total")
    deliver(s, change_event(1, "update", doc={"_version": 2, "total": 9}))
    assert sent(out) == [{"op": "update", "key": "a",
                          "document": {"_id": "a", "_version": 2, "total": 9}}]


def test_subscriptions_sharing_a_projection_share_the_rendered_body_and_frame() -> None:
    shared = Projection(check_fields(["total"]))
    subs = [sub(projection=shared) for _ in range(3)]
    ev = change_event(1, "update", doc={"_version": 2, "total": 2},
                      before={"_version": 1, "total": 1})
    ev.caching(True)
    bodies = [s.body("update", ev) for s, _ in subs]
    frames = [ev.projected_frame(shared, "update", True, s.prefix) for s, _ in subs]
    ev.caching(False)
    assert bodies[0] is not None
    assert all(body is bodies[0] for body in bodies)
    assert frames[0] is not None
    assert all(made is frames[0] for made in frames)
    assert ev.projected_frame(shared, "update", True, subs[0][0].prefix) is not frames[0]


# ------------------------------------------------------------------ against the database

@pytest.fixture(scope="module")
def database() -> Iterator[Database[dict[str, Any]]]:
    server = EmbeddedServer(":memory:", sync_on_commit=False)
    server.start()
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(server.uri)
    try:
        yield client["projection_property"]
    finally:
        client.close()
        server.stop()


_names = count()
NAMES = ["a", "b", "c"]
scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from([1.5, "s", "t"])
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(NAMES), inner,
                                                                max_size=3),
    max_leaves=8)
documents = st.dictionaries(st.sampled_from(NAMES), values, max_size=3)
paths = st.lists(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(".".join),
                 min_size=1, max_size=3)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(versions=st.lists(documents, min_size=1, max_size=5), fields=paths)
def test_client_deltas_hold_the_projected_database_document(
        database: Database[dict[str, Any]], versions: list[dict[str, Any]],
        fields: list[str]) -> None:
    """Each version replaces the document in the database; the client starts from
    the projected first version and applies each delta: after every step it holds
    what ``find`` with the projection returns (``_version`` aside when a delta was
    skipped for changing nothing else)."""
    projection = Projection(check_fields(fields))
    coll = database[f"c{next(_names)}"]
    try:
        held: dict[str, Any] | None = None
        previous: dict[str, Any] | None = None
        for version, body in enumerate(versions, 1):
            doc = {"_id": 1, "_version": version, **body}
            coll.replace_one({"_id": 1}, doc, upsert=True)
            stored = coll.find_one({"_id": 1})
            from_db = coll.find_one({"_id": 1}, projection.mongo())
            assert stored is not None
            assert from_db is not None
            ours = projection.apply(stored)
            assert ours == from_db
            if held is None or previous is None:
                held = ours
            else:
                change = delta(previous, ours)
                if change is not None:
                    held = apply_delta(held, *change)
            previous = ours
            assert {**held, "_version": 0} == {**from_db, "_version": 0}
    finally:
        coll.drop()

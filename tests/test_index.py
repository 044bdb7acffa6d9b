"""The filter index, sans I/O: its candidates include every subscription that receives an event.

The index only narrows the subscriptions a fan-out asks to decide; missing
one would lose that subscription an event, naming one twice would send it
twice. A property test checks both over random filters (indexable and not),
tenants, removals and events of every op, with and without pre-images and
sets of changed fields; examples show what each shape is indexed by.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest
from bson import Decimal128, ObjectId
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime import query
from realtime.auth import Tenant
from realtime.events import Event
from realtime.index import Index, index_key
from realtime.subscription import Subscription

pytestmark = pytest.mark.driver_blind

Doc = dict[str, Any]
FIELDS = ("a", "b", "c")


class Outlet:
    """The index never sends: an outlet that must not be used."""

    max_backlog = 100

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the index sends nothing ({name})")


def subscription(filter: Doc, tenant: str | None = None) -> Subscription:
    if tenant is None:
        return Subscription(Outlet(), "s", "c", query.validate(filter))
    owner = Tenant("t", tenant)
    return Subscription(Outlet(), "s", "c", owner.restrict(query.validate(filter)), owner=owner)


def event(op: str, document: Doc | None = None, before: Doc | None = None,
          changed: frozenset[str] | None = None) -> Event:
    return Event(id="e", op=op, collection="c", key="k", document=document, before=before,
                 changed=changed, ts="", body="")


def targets(index: Index, ev: Event) -> list[Subscription]:
    return list(index.targets(ev))


# ---------------------------------------------------------------------- the property

fields = st.sampled_from(FIELDS)
#: Values an index may look up (str, int, finite float), with corners of equality.
lookups = st.one_of(st.integers(-3, 3), st.sampled_from(
    [0.0, -0.0, 1.0, 1.5, -2.5, 2**53, 2**53 + 1, float(2**53), "", "x", "y", "1"]))
numbers = st.one_of(st.integers(-4, 4), st.sampled_from([-2.5, -0.0, 0.5, 1.0, 2.5]))
#: Values an index may not look up.
others = st.one_of(
    st.none(), st.booleans(), st.sampled_from([math.inf, -math.inf]),
    st.lists(lookups, max_size=2), st.fixed_dictionaries({"k": lookups}),
)
doc_values = st.one_of(
    lookups, others, st.just(math.nan),
    st.sampled_from([Decimal128("1"), Decimal128("0.5"), ObjectId("0123456789abcdef01234567"),
                     dt.datetime(2026, 1, 1, tzinfo=dt.UTC)]),
    st.lists(st.one_of(lookups, st.fixed_dictionaries({"k": lookups})), max_size=3),
)


def _often(usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any],
           times: int = 2) -> st.SearchStrategy[Any]:
    """``usual`` ``times`` times as often as ``other`` (``st.one_of`` would weigh
    each of their own alternatives alike)."""
    return st.sampled_from([*[usual] * times, other]).flatmap(lambda strategy: strategy)


def _range(field: str, low: str, high: str, lo: Any, hi: Any) -> Doc:
    return {field: {low: lo, high: hi}}


bounds = st.tuples(fields, st.sampled_from(["$gt", "$gte"]), st.sampled_from(["$lt", "$lte"]))
indexable = st.one_of(
    st.builds(lambda f, v: {f: v}, fields, lookups),
    st.builds(lambda f, v: {f: {"$eq": v}}, fields, lookups),
    st.builds(lambda b, x, y: _range(*b, min(x, y), max(x, y)), bounds, numbers, numbers),
)
not_indexable = st.one_of(
    st.just({}),
    st.builds(lambda f, v: {f: v}, fields, others),
    st.builds(lambda f, v: {f"{f}.k": v}, fields, lookups),
    st.builds(lambda f, g, v, w: {f: v, g: w}, fields, fields, lookups, lookups),
    st.builds(lambda f, op, v: {f: {op: v}}, fields,
              st.sampled_from(["$gt", "$gte", "$lt", "$lte", "$ne"]), numbers),
    st.builds(lambda f, vs: {f: {"$in": vs}}, fields, st.lists(lookups, max_size=3)),
    st.builds(lambda f, v: {"$or": [{f: v}, {"c": 1}]}, fields, lookups),
    st.builds(lambda b, x, y: _range(*b, max(x, y), min(x, y)), bounds, numbers, numbers),
    st.builds(lambda b: _range(*b, "a", "x"), bounds),
)
filters = st.tuples(_often(indexable, not_indexable, 1), st.sampled_from([None, None, None, "x"]))
changed_sets = st.frozensets(st.sampled_from([*FIELDS, "t", "z"]), max_size=3)


def _near(filter: Doc, out: dict[str, list[Any]]) -> None:
    """Add to ``out``, by top-level field, values at and around those ``filter`` uses."""
    for path, condition in filter.items():
        if path.startswith("$"):
            for part in condition:
                _near(part, out)
            continue
        values = out.setdefault(path.split(".")[0], [])
        for value in condition.values() if isinstance(condition, dict) else [condition]:
            values += [value] * 4  # twice as often as its neighbours together
            if type(value) in (int, float) and math.isfinite(value):
                values += [value - 0.5, value + 0.5]


@st.composite
def events(draw: st.DrawFn, near: dict[str, list[Any]]) -> Event:
    """An event whose documents hold, often, values at and around those the filters use."""
    def value(field: str) -> st.SearchStrategy[Any]:
        if not near.get(field):
            return doc_values
        return _often(st.sampled_from(near[field]), doc_values)

    documents = st.fixed_dictionaries({}, optional={
        **{field: value(field) for field in FIELDS}, "t": st.sampled_from(["x", "y"])})
    op = draw(st.sampled_from(["insert", "update", "update", "replace", "delete"]))
    before = None if op == "insert" else draw(st.one_of(documents, documents, st.none()))
    document = None if op == "delete" else draw(st.one_of(documents, documents, st.none()))
    changed = draw(st.one_of(changed_sets, changed_sets, st.none())) if op == "update" else None
    return event(op, document, before, changed)


@settings(max_examples=1000, deadline=None)
@given(specs=st.lists(filters, max_size=8), data=st.data())
def test_targets_include_every_subscription_that_decides_to_receive_the_event(
        specs: list[tuple[Doc, str | None]], data: st.DataObject) -> None:
    near: dict[str, list[Any]] = {}
    for filter, _ in specs:
        _near(filter, near)
    ev = data.draw(events(near), label="event")
    index = Index()
    subs = [subscription(filter, tenant) for filter, tenant in specs]
    for sub in subs:
        index.add(sub)
    gone = data.draw(st.lists(st.sampled_from([False, False, False, True]),
                              min_size=len(subs), max_size=len(subs)), label="removed")
    for sub, remove in zip(subs, gone, strict=True):
        if remove:
            assert index.remove(sub)
    remaining = {id(s) for s, remove in zip(subs, gone, strict=True) if not remove}
    assert len(index) == len(remaining)
    found = [id(s) for s in index.targets(ev)]
    assert len(found) == len(set(found)), "a subscription named twice would get it twice"
    assert set(found) <= remaining
    receiving = {id(s) for s in subs if id(s) in remaining and s.decide(ev) is not None}
    assert receiving <= set(found)


# ---------------------------------------------------------------------- examples


@pytest.mark.parametrize(("filter", "key"), [
    ({"room": "r1"}, ("eq", "room", "r1")),
    ({"n": {"$eq": 2}}, ("eq", "n", 2)),
    ({"price": {"$gte": 10, "$lt": 20.5}}, ("range", "price", 10, 20.5)),
    ({"price": {"$lte": 20, "$gt": 10}}, ("range", "price", 10, 20)),
    ({}, None),
    ({"a": 1, "b": 2}, None),
    ({"a.b": 1}, None),
    ({"$or": [{"a": 1}]}, None),
    ({"a": True}, None),
    ({"a": None}, None),
    ({"a": [1]}, None),
    ({"a": math.inf}, None),
    ({"a": {"$gt": 1}}, None),
    ({"a": {"$gt": 1, "$gte": 2}}, None),
    ({"a": {"$gte": "a", "$lt": "b"}}, None),
    ({"a": {"$gte": 3, "$lt": 1}}, None),
    ({"a": {"$gte": 1, "$lt": math.inf}}, None),
    ({"a": {"$in": [1, 2]}}, None),
], ids=str)
def test_a_filter_is_indexed_by_one_equality_or_one_bounded_numeric_range(
        filter: Doc, key: tuple[Any, ...] | None) -> None:
    assert index_key(filter) == key


def test_an_equality_subscription_is_found_by_the_event_value_alone() -> None:
    index = Index()
    one, two, everything = subscription({"a": 1}), subscription({"a": 2}), subscription({})
    for sub in (one, two, everything):
        index.add(sub)
    assert targets(index, event("insert", {"a": 1.0})) == [everything, one]
    assert targets(index, event("insert", {"b": 1})) == [everything]


def test_a_range_subscription_is_found_by_a_value_inside_it() -> None:
    index = Index()
    low = subscription({"p": {"$gte": 10, "$lt": 20}})
    high = subscription({"p": {"$gte": 30, "$lte": 40}})
    index.add(low)
    index.add(high)
    assert targets(index, event("insert", {"p": 15.5})) == [low]
    assert targets(index, event("insert", {"p": 40})) == [high]
    assert targets(index, event("insert", {"p": "15"})) == []


def test_an_update_is_found_by_its_document_before_and_after() -> None:
    index = Index()
    one, two = subscription({"a": 1}), subscription({"a": 2})
    index.add(one)
    index.add(two)
    moved = event("update", {"a": 2}, before={"a": 1}, changed=frozenset({"a"}))
    assert {id(s) for s in targets(index, moved)} == {id(one), id(two)}
    assert targets(index, event("delete", before={"a": 1})) == [one]


def test_a_value_the_index_cannot_look_up_makes_every_subscription_on_its_field_a_candidate(
        ) -> None:
    index = Index()
    subs = [subscription({"a": 1}), subscription({"a": {"$gte": 0, "$lte": 5}})]
    for sub in subs:
        index.add(sub)
    for value in ([1, 2], {"k": 1}, True, Decimal128("1")):
        assert len(targets(index, event("insert", {"a": value}))) == 2, value


def test_without_a_pre_image_an_update_of_a_changed_field_reaches_every_subscription_on_it(
        ) -> None:
    index = Index()
    one = subscription({"a": 1})
    index.add(one)
    # It may have left the filter: the subscription decides (leave).
    assert targets(index, event("update", {"a": 2}, changed=frozenset({"a"}))) == [one]
    assert targets(index, event("update", {"a": 2, "n": 1}, changed=frozenset({"n"}))) == []
    assert targets(index, event("delete")) == [one]  # whose document is unknown


def test_removing_a_subscription_forgets_it_once() -> None:
    index = Index()
    one = subscription({"a": 1})
    index.add(one)
    assert index.remove(one)
    assert not index.remove(one)
    assert len(index) == 0
    assert targets(index, event("insert", {"a": 1})) == []
    assert (index.equal, index.ranges, index.general) == ({}, {}, {})

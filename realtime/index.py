"""The filter index: which subscriptions of a collection may receive an event.

Sans I/O. Most of the cost of a fan-out to many filtered subscriptions is
evaluating every filter for every event; a filter that is one equality
(``{"room": "r1"}``) or one bounded numeric range (``{"price": {"$gte": 10,
"$lt": 20}}``) on a top-level field is found by the event's value instead.
The index only picks candidates: each is still decided exactly
(:meth:`realtime.subscription.Subscription.decide`), and the candidates always
include every subscription that would receive the event (a property test
checks it).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from typing import Any

from realtime.events import Event
from realtime.subscription import Subscription

__all__ = ["Index", "index_key"]


def _indexable(value: Any) -> bool:
    """A filter literal or document value the index may compare: str, int, finite float."""
    t = type(value)
    return t is str or t is int or (t is float and value == value and value not in _INF)


_INF = (float("inf"), float("-inf"))
_LOWER = frozenset({"$gte", "$gt"})
_UPPER = frozenset({"$lte", "$lt"})
_MISSING = object()


def index_key(filter: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """How a filter can be indexed: one equality, or one bounded numeric range, on a field."""
    if len(filter) != 1:
        return None
    field, condition = next(iter(filter.items()))
    if field.startswith("$") or "." in field:
        return None
    if isinstance(condition, dict):
        if len(condition) == 1 and "$eq" in condition:
            condition = condition["$eq"]
        elif len(condition) == 2:
            lows = [op for op in condition if op in _LOWER]
            highs = [op for op in condition if op in _UPPER]
            if len(lows) == 1 and len(highs) == 1:
                lo, hi = condition[lows[0]], condition[highs[0]]
                if (type(lo) in (int, float) and type(hi) in (int, float)
                        and _indexable(lo) and _indexable(hi) and lo <= hi):
                    return ("range", field, lo, hi)
            return None
        else:
            return None
    return ("eq", field, condition) if _indexable(condition) else None


class Ranges:
    """Bounded ranges on one field, sorted by lower bound: which contain a value?"""

    __slots__ = ("entries", "lows", "width")

    def __init__(self) -> None:
        self.lows: list[float] = []
        self.entries: list[tuple[float, float, Subscription]] = []
        self.width = 0.0

    def add(self, lo: float, hi: float, subscription: Subscription) -> None:
        i = bisect.bisect_right(self.lows, lo)
        self.lows.insert(i, lo)
        self.entries.insert(i, (lo, hi, subscription))
        self.width = max(self.width, hi - lo)

    def remove(self, lo: float, subscription: Subscription) -> None:
        i = bisect.bisect_left(self.lows, lo)
        while i < len(self.entries) and self.lows[i] == lo:
            if self.entries[i][2] is subscription:
                del self.lows[i]
                del self.entries[i]
                break
            i += 1
        if not self.entries:
            self.width = 0.0

    def containing(self, x: float, out: dict[int, Subscription]) -> None:
        """Add to ``out`` every range that may contain ``x`` (bounds taken inclusive)."""
        lows = self.lows
        start = bisect.bisect_left(lows, x - self.width)
        stop = bisect.bisect_right(lows, x)
        for _lo, hi, subscription in self.entries[start:stop]:
            if x <= hi:
                out[id(subscription)] = subscription

    def __len__(self) -> int:
        return len(self.entries)


class Index:
    """One collection's subscriptions, those with an equality or a range filter indexed.

    Whenever a value cannot be looked up (an array, a sub-document, another
    type) every subscription of that field is a candidate.
    """

    __slots__ = ("_keys", "all", "equal", "general", "ranges")

    def __init__(self) -> None:
        #: Every subscription of the collection, by id.
        self.all: dict[int, Subscription] = {}
        self._keys: dict[int, tuple[Any, ...] | None] = {}
        self.general: dict[int, Subscription] = {}
        self.equal: dict[str, dict[Any, dict[int, Subscription]]] = {}
        self.ranges: dict[str, Ranges] = {}

    def __len__(self) -> int:
        return len(self.all)

    def add(self, subscription: Subscription) -> None:
        """Index ``subscription`` by its filter."""
        key = index_key(subscription.filter)
        ident = id(subscription)
        self.all[ident] = subscription
        self._keys[ident] = key
        if key is None:
            self.general[ident] = subscription
        elif key[0] == "eq":
            self.equal.setdefault(key[1], {}).setdefault(key[2], {})[ident] = subscription
        else:
            self.ranges.setdefault(key[1], Ranges()).add(key[2], key[3], subscription)

    def remove(self, subscription: Subscription) -> bool:
        """Forget ``subscription``; False if it was not indexed here."""
        ident = id(subscription)
        if self.all.get(ident) is not subscription:
            return False
        del self.all[ident]
        key = self._keys.pop(ident)
        if key is None:
            self.general.pop(ident, None)
        elif key[0] == "eq":
            values = self.equal.get(key[1])
            if values is not None:
                subs = values.get(key[2])
                if subs is not None:
                    subs.pop(ident, None)
                    if not subs:
                        del values[key[2]]
                if not values:
                    del self.equal[key[1]]
        else:
            ranges = self.ranges.get(key[1])
            if ranges is not None:
                ranges.remove(key[2], subscription)
                if not ranges:
                    del self.ranges[key[1]]
        return True

    def targets(self, ev: Event) -> Iterable[Subscription]:
        """The subscriptions that may receive ``ev``: the general ones, then candidates."""
        if not (self.equal or self.ranges):
            return self.all.values()
        op = ev.op
        docs: tuple[Mapping[str, Any], ...] | None = None
        changed: frozenset[str] | None = None
        if op == "insert":
            docs = (ev.document,) if ev.document is not None else None
        elif op == "update" or op == "replace":
            if ev.document is not None:
                if ev.before is not None:
                    docs = (ev.document, ev.before)
                elif op == "update" and ev.changed is not None:
                    # Without a pre-image, a subscription on a changed field may get
                    # ``leave``: all of them are candidates (see Subscription.decide).
                    docs, changed = (ev.document,), ev.changed
        elif op == "delete" and ev.before is not None:
            docs = (ev.before,)
        candidates: dict[int, Subscription] = {}
        for field, values in self.equal.items():
            if docs is None or (changed is not None and field in changed):
                for subs in values.values():
                    candidates.update(subs)
                continue
            for doc in docs:
                value = doc.get(field, _MISSING)
                if value is _MISSING:
                    continue
                if _indexable(value):
                    found = values.get(value)
                    if found:
                        candidates.update(found)
                else:
                    for subs in values.values():
                        candidates.update(subs)
                    break
        for field, ranges in self.ranges.items():
            if docs is None or (changed is not None and field in changed):
                for _lo, _hi, subscription in ranges.entries:
                    candidates[id(subscription)] = subscription
                continue
            for doc in docs:
                value = doc.get(field, _MISSING)
                if value is _MISSING or type(value) is str:
                    continue  # a numeric range matches neither
                if _indexable(value):
                    ranges.containing(value, candidates)
                else:
                    for _lo, _hi, subscription in ranges.entries:
                        candidates[id(subscription)] = subscription
                    break
        if not candidates:
            return self.general.values()
        if not self.general:
            return candidates.values()
        return [*self.general.values(), *candidates.values()]

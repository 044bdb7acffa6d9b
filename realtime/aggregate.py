"""Live aggregates: a subscription's ``aggregate`` spec and its groups, kept per event.

Sans I/O. :class:`AggregateSpec` is what a client asks for (``group_by`` up to
:data:`MAX_GROUP_BY` dotted paths; ``count``; ``sum``/``avg``/``min``/``max``
of dotted paths; ``throttle_ms``). :func:`pipeline` is the database's
``$group`` that computes the first, full result; :class:`AggregateState` loads
its rows and then applies every change as "this document's old version leaves
its group, its new version joins one" (:meth:`AggregateState.apply`), marking
the groups that changed. The semantics are those of MongoDB's ``$group``:

- the group key is each ``group_by`` path's value (``$a.b``: through arrays, the
  array of the values; missing and ``null`` are one group, ``null``); numbers
  that are equal (``1``, ``1.0``) are one group; without ``group_by`` there is
  one group, key ``{}``;
- ``count`` counts the documents; ``sum`` adds the numeric values (integers and
  doubles, not booleans; anything else is ignored, as ``$sum`` does; 0 when
  there is none), an integer while every value is one and it fits 64 bits, else
  a double; ``avg`` is the mean of the numeric values (``null`` when there is
  none);
- ``min``/``max`` compare values of any type in BSON order (numbers < strings <
  objects < arrays < ObjectIds < booleans < dates), ignoring ``null`` and
  missing (``null`` when nothing remains); objects and arrays are ordered among
  themselves by a fixed order of their own, not MongoDB's element-wise one;
- sums that involve an infinite or NaN double are not kept exactly (JSON, and so
  the REST API, cannot store them).

Costs per change: count, sum and avg in O(1) (sums are kept exactly, as
integers and fractions, so adding and removing never drifts; a double is
rounded once, when rendered); min and max in O(log n) through an ordered
multiset of the group's values (``sortedcontainers.SortedList``), which holds
every value of each ``min``/``max`` field of the group's documents: memory
grows with the documents, never with the changes. A group whose count falls to
0 is removed (rendered once with ``"removed": true``). More groups than the
subscription's limit raise :class:`TooManyGroups`.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Final

from sortedcontainers import SortedList

__all__ = [
    "DEFAULT_THROTTLE_MS",
    "MAX_AGGREGATE_FIELDS",
    "MAX_GROUP_BY",
    "MAX_THROTTLE_MS",
    "AggregateSpec",
    "AggregateState",
    "TooManyGroups",
    "canonical",
    "parse_spec",
    "pipeline",
    "resolve",
]

#: Most ``group_by`` paths.
MAX_GROUP_BY: Final = 3
#: Most paths in all of ``sum``, ``avg``, ``min`` and ``max`` together.
MAX_AGGREGATE_FIELDS: Final = 16
#: Coalescing window when the client gives none, and the largest allowed.
DEFAULT_THROTTLE_MS: Final = 100
MAX_THROTTLE_MS: Final = 60_000
_MAX_PATH: Final = 256
_KEYS: Final = frozenset({"group_by", "count", "sum", "avg", "min", "max", "throttle_ms"})
_INT64: Final = 2**63


class TooManyGroups(Exception):
    """The aggregate has more groups than its subscription may hold."""


MISSING: Final = object()


@dataclass(frozen=True, slots=True)
class AggregateSpec:
    """What a live aggregate computes (see the module docstring)."""

    group_by: tuple[str, ...] = ()
    count: bool = False
    sum: tuple[str, ...] = ()
    avg: tuple[str, ...] = ()
    min: tuple[str, ...] = ()
    max: tuple[str, ...] = ()
    throttle_ms: int = DEFAULT_THROTTLE_MS

    @property
    def numeric(self) -> tuple[str, ...]:
        """The paths whose numeric values are added up (for ``sum`` and ``avg``)."""
        return tuple(dict.fromkeys((*self.sum, *self.avg)))

    @property
    def ordered(self) -> tuple[str, ...]:
        """The paths whose values are kept ordered (for ``min`` and ``max``)."""
        return tuple(dict.fromkeys((*self.min, *self.max)))


def _check_path(path: Any, what: str) -> str:
    if not isinstance(path, str) or not 1 <= len(path) <= _MAX_PATH:
        raise ValueError(f"{what} must hold paths of 1 to {_MAX_PATH} characters")
    for name in path.split("."):
        if not name or name.startswith("$") or "\x00" in name:
            raise ValueError(f"{path[:64]!r} in {what} is not a field path (dotted names, "
                             "none empty or starting with '$')")
    return path


def _paths(obj: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = obj.get(name)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"'{name}' must be a field path or a list of them")
    return tuple(dict.fromkeys(_check_path(p, f"'{name}'") for p in value))


def parse_spec(obj: Any) -> AggregateSpec:
    """An ``aggregate`` object of a ``subscribe`` message, checked.

    Raises:
        ValueError: not an object; an unknown key; ``group_by`` not a path or a
            list of at most :data:`MAX_GROUP_BY`; ``count`` not a boolean;
            ``sum``/``avg``/``min``/``max`` not paths (at most
            :data:`MAX_AGGREGATE_FIELDS` in all); nothing to compute;
            ``throttle_ms`` not an integer from 0 to :data:`MAX_THROTTLE_MS`.
    """
    if not isinstance(obj, dict):
        raise ValueError("'aggregate' must be an object")
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0][:40]!r} in 'aggregate'; it takes "
                         + ", ".join(sorted(_KEYS)))
    group_by = _paths(obj, "group_by")
    if len(group_by) > MAX_GROUP_BY:
        raise ValueError(f"'group_by' takes at most {MAX_GROUP_BY} paths")
    count = obj.get("count")
    if count is None:
        count = False
    elif not isinstance(count, bool):
        raise ValueError("'count' must be true or false")
    fields = {name: _paths(obj, name) for name in ("sum", "avg", "min", "max")}
    if sum(len(paths) for paths in fields.values()) > MAX_AGGREGATE_FIELDS:
        raise ValueError(f"'aggregate' takes at most {MAX_AGGREGATE_FIELDS} fields in all of "
                         "sum, avg, min and max")
    if not count and not any(fields.values()):
        raise ValueError("'aggregate' must compute something: count, sum, avg, min or max")
    throttle = obj.get("throttle_ms")
    if throttle is None:
        throttle = DEFAULT_THROTTLE_MS
    elif isinstance(throttle, bool) or not isinstance(throttle, int) \
            or not 0 <= throttle <= MAX_THROTTLE_MS:
        raise ValueError(f"'throttle_ms' must be an integer from 0 to {MAX_THROTTLE_MS}")
    return AggregateSpec(group_by=group_by, count=count, throttle_ms=throttle, **fields)


# ---------------------------------------------------------------------------------
# Values


def resolve(doc: Any, path: str) -> Any:
    """``$path`` of ``doc`` as an aggregation expression reads it: through arrays,
    the array of what each sub-document holds there; :data:`MISSING` if absent."""
    value = doc
    for name in path.split("."):
        if isinstance(value, dict):
            value = value.get(name, MISSING)
        elif isinstance(value, list):
            items = (resolve(item, name) for item in value if isinstance(item, dict | list))
            value = [item for item in items if item is not MISSING]
        else:
            return MISSING
        if value is MISSING:
            return MISSING
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def canonical(value: Any) -> Any:
    """A hashable form of a group key value in which equal BSON values are equal
    (``1`` and ``1.0``; not ``1`` and ``true``; objects in field order)."""
    if value is None or value is MISSING:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if _is_number(value):
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            return ("num", int(value))
        return ("num", value)
    if isinstance(value, str):
        return ("str", value)
    if isinstance(value, dict):
        return ("obj", tuple((k, canonical(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("arr", tuple(canonical(v) for v in value))
    return (type(value).__name__, value if _hashable(value) else repr(value))


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


# BSON comparison order of the types ($min/$max), null left out.
_RANK_NUMBER, _RANK_STRING, _RANK_OBJECT, _RANK_ARRAY = 2, 3, 4, 5
_RANK_OID, _RANK_BOOL, _RANK_DATE, _RANK_OTHER = 7, 8, 9, 12


def _order(value: Any) -> tuple[Any, ...]:
    """A sort key in BSON order, the value itself last (to give it back)."""
    if isinstance(value, bool):
        return (_RANK_BOOL, value, value)
    if _is_number(value):
        if isinstance(value, float) and math.isnan(value):
            return (_RANK_NUMBER, -math.inf, 0, math.nan)  # NaN: below every number
        return (_RANK_NUMBER, value, 1, value)
    if isinstance(value, str):
        return (_RANK_STRING, value, value)
    if isinstance(value, dict):
        return (_RANK_OBJECT, repr(canonical(value)), value)
    if isinstance(value, list):
        return (_RANK_ARRAY, repr(canonical(value)), value)
    if isinstance(value, dt.datetime):
        return (_RANK_DATE, value.timestamp(), value)
    if type(value).__name__ == "ObjectId":
        return (_RANK_OID, str(value), value)
    return (_RANK_OTHER, repr(value), value)


# ---------------------------------------------------------------------------------
# Groups


@dataclass(slots=True)
class _Sum:
    """The numeric values of one field in one group, added exactly."""

    ints: int = 0
    floats: Fraction = field(default_factory=Fraction)
    n: int = 0
    doubles: int = 0
    #: Non-finite doubles: +inf, -inf, NaN.
    pinf: int = 0
    ninf: int = 0
    nan: int = 0

    def add(self, value: Any, sign: int) -> None:
        if isinstance(value, int):
            self.ints += sign * value
        elif math.isfinite(value):
            self.floats += sign * Fraction(value)
        elif math.isnan(value):
            self.nan += sign
        elif value > 0:
            self.pinf += sign
        else:
            self.ninf += sign
        self.n += sign
        if isinstance(value, float):
            self.doubles += sign

    def total(self) -> int | float:
        if self.nan or (self.pinf and self.ninf):
            return math.nan
        if self.pinf or self.ninf:
            return math.inf if self.pinf else -math.inf
        exact = self.ints + self.floats
        if not self.doubles and exact.denominator == 1 and -_INT64 <= exact < _INT64:
            return int(exact)
        return float(exact)

    def mean(self) -> float | None:
        if not self.n:
            return None
        if self.nan or self.pinf or self.ninf:
            return float(self.total())
        return float((self.ints + self.floats) / self.n)


@dataclass(slots=True)
class _Group:
    key: dict[str, Any]
    count: int = 0
    sums: dict[str, _Sum] = field(default_factory=dict)
    ordered: dict[str, Any] = field(default_factory=dict)  # path -> SortedList


class AggregateState:
    """The groups of one live aggregate, and which changed since last taken."""

    def __init__(self, spec: AggregateSpec, max_groups: int) -> None:
        self.spec = spec
        self.max_groups = max_groups
        self._groups: dict[Any, _Group] = {}
        self._dirty: dict[Any, None] = {}
        #: The groups the client was shown (a group opened and closed between two
        #: messages is never mentioned).
        self._shown: set[Any] = set()
        self._numeric = spec.numeric
        self._ordered = spec.ordered

    def __len__(self) -> int:
        return len(self._groups)

    # -- loading the database's result ---------------------------------------------
    def load(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Replace the groups with the rows of :func:`pipeline`'s result.

        Raises:
            TooManyGroups: more rows than ``max_groups``.
        """
        self._groups.clear()
        self._dirty.clear()
        self._shown.clear()
        for row in rows:
            if len(self._groups) >= self.max_groups:
                raise TooManyGroups(f"more than {self.max_groups} groups")
            raw_key = row.get("_id") or {}
            key = {path: raw_key.get(f"k{i}") for i, path in enumerate(self.spec.group_by)}
            group = _Group(key, count=int(row.get("count", 0)))
            for i, path in enumerate(self._numeric):
                total = row.get(f"s{i}", 0)
                acc = _Sum(n=int(row.get(f"n{i}", 0)), doubles=int(row.get(f"d{i}", 0)))
                if isinstance(total, float) and not math.isfinite(total):
                    # (Which values made it infinite or NaN is not known: one is assumed.)
                    acc.nan = int(math.isnan(total))
                    acc.pinf, acc.ninf = int(total == math.inf), int(total == -math.inf)
                elif isinstance(total, int) and not isinstance(total, bool):
                    acc.ints = total
                elif _is_number(total):
                    acc.floats = Fraction(total)
                group.sums[path] = acc
            for i, path in enumerate(self._ordered):
                values = SortedList()
                for value in row.get(f"p{i}") or ():
                    if value is not None:
                        values.add(_order(value))
                group.ordered[path] = values
            self._groups[self._key(key.values())] = group

    # -- live changes --------------------------------------------------------------
    def apply(self, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        """A document's ``old`` version (None: it was not counted) leaves its group and
        its ``new`` one (None: it no longer counts) joins one.

        Raises:
            TooManyGroups: ``new`` would open a group past ``max_groups`` (the
                state is then unchanged by ``new``; the subscription should end).
        """
        if old is not None:
            self._move(old, -1)
        if new is not None:
            self._move(new, 1)

    def _move(self, doc: Mapping[str, Any], sign: int) -> None:
        values = [resolve(doc, path) for path in self.spec.group_by]
        gid = self._key(values)
        group = self._groups.get(gid)
        if group is None:
            if sign < 0:
                return  # never counted (e.g. it joined before the first result)
            if len(self._groups) >= self.max_groups:
                raise TooManyGroups(f"more than {self.max_groups} groups")
            group = self._groups[gid] = _Group(
                {path: None if v is MISSING else v
                 for path, v in zip(self.spec.group_by, values, strict=True)},
                sums={path: _Sum() for path in self._numeric},
                ordered={path: SortedList() for path in self._ordered})
        group.count += sign
        for path in self._numeric:
            value = resolve(doc, path)
            if _is_number(value):
                group.sums[path].add(value, sign)
        for path in self._ordered:
            value = resolve(doc, path)
            if value is not MISSING and value is not None:
                ordered = group.ordered[path]
                if sign > 0:
                    ordered.add(_order(value))
                else:
                    ordered.discard(_order(value))
        self._dirty[gid] = None
        if group.count <= 0:
            del self._groups[gid]

    @staticmethod
    def _key(values: Iterable[Any]) -> Any:
        return tuple(canonical(v) for v in values)

    # -- rendering -------------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        """True if some group changed since :meth:`take_changes`."""
        return bool(self._dirty)

    def result(self) -> list[dict[str, Any]]:
        """Every group, rendered (the full result); clears the changes."""
        self._dirty.clear()
        self._shown = set(self._groups)
        return [self._render(group) for group in self._groups.values()]

    def snapshot(self) -> list[dict[str, Any]]:
        """Every group, rendered, for a client joining now (the changes stay pending
        for the others; a group it is shown is then reported when it goes)."""
        self._shown.update(self._groups)
        return [self._render(group) for group in self._groups.values()]

    def take_changes(self) -> list[dict[str, Any]]:
        """The groups changed since the last call (removed ones as ``{"key": ...,
        "removed": true}``, if the client was shown them), in the order they first
        changed; clears them."""
        out = []
        shown = self._shown
        for gid in self._dirty:
            group = self._groups.get(gid)
            if group is not None:
                out.append(self._render(group))
                shown.add(gid)
            elif gid in shown:
                key = dict(zip(self.spec.group_by, (_plain(c) for c in gid), strict=True))
                out.append({"key": key, "removed": True})
                shown.discard(gid)
        self._dirty.clear()
        return out

    def _render(self, group: _Group) -> dict[str, Any]:
        spec = self.spec
        out: dict[str, Any] = {"key": group.key}
        if spec.count:
            out["count"] = group.count
        if spec.sum:
            out["sum"] = {path: group.sums[path].total() for path in spec.sum}
        if spec.avg:
            out["avg"] = {path: group.sums[path].mean() for path in spec.avg}
        if spec.min:
            out["min"] = {path: _extreme(group.ordered[path], 0) for path in spec.min}
        if spec.max:
            out["max"] = {path: _extreme(group.ordered[path], -1) for path in spec.max}
        return out


def _extreme(values: Any, index: int) -> Any:
    return values[index][-1] if values else None


def _plain(canon: Any) -> Any:
    """A value back from its :func:`canonical` form (for a removed group's key)."""
    kind = canon[0]
    if kind == "null":
        return None
    if kind == "obj":
        return {k: _plain(v) for k, v in canon[1]}
    if kind == "arr":
        return [_plain(v) for v in canon[1]]
    return canon[1]


def pipeline(spec: AggregateSpec, match: Mapping[str, Any], max_groups: int
             ) -> list[dict[str, Any]]:
    """The database's ``$match`` + ``$group`` for the first result (at most
    ``max_groups + 1`` rows, so one too many is seen), in :meth:`AggregateState.load`'s
    row format."""
    group: dict[str, Any] = {
        "_id": {f"k{i}": {"$ifNull": [f"${path}", None]} for i, path in enumerate(spec.group_by)}
        if spec.group_by else None,
        "count": {"$sum": 1},
    }
    for i, path in enumerate(spec.numeric):
        ref = f"${path}"
        group[f"s{i}"] = {"$sum": ref}
        group[f"n{i}"] = {"$sum": {"$cond": [{"$isNumber": ref}, 1, 0]}}
        group[f"d{i}"] = {"$sum": {"$cond": [{"$eq": [{"$type": ref}, "double"]}, 1, 0]}}
    for i, path in enumerate(spec.ordered):
        group[f"p{i}"] = {"$push": f"${path}"}
    stages: list[dict[str, Any]] = []
    if match:
        stages.append({"$match": dict(match)})
    stages += [{"$group": group}, {"$limit": max_groups + 1}]
    return stages

"""The filter language: validate a filter, turn it into a MongoDB query, match documents.

A filter is a JSON object in MongoDB query syntax, restricted to

- field equality: ``{"status": "open"}``, ``{"a.b": 1}``, ``{"tags": ["x", "y"]}``,
  ``{"meta": {"k": 1}}`` (exact, field-order-sensitive document equality);
- field operators: ``$eq $ne $gt $gte $lt $lte $in $nin $exists``, several on one
  field meaning all of them (``{"n": {"$gte": 1, "$lt": 5}}``);
- logical operators ``$and $or $nor`` (non-empty arrays of filters), at the top
  level and inside one another.

Everything else (``$where``, ``$expr``, ``$regex``, ``$elemMatch``, ...) is
rejected by :func:`validate` with a :class:`FilterError` naming it.

:func:`matches` (and the precompiled form :func:`compile`) answer exactly what
``find(to_mongo(filter))`` answers on a MongoDB server, including its corners:

- a dotted path walks through arrays: ``{"a.b": 1}`` matches
  ``{"a": [{"b": 1}, {"b": 2}]}``; a numeric component is both an array index and
  a field name (``a.0`` reaches ``{"a": [7]}`` and ``{"a": [{"0": 7}]}``); an
  index past the end of an array, or a scalar element with more path after its
  index, reaches nothing (not even "missing", so ``{"a.5": null}`` does not
  match ``{"a": [1]}``), while a path running into a scalar or a sub-document
  without the field reads as missing;
- a condition on a field holding an array holds if it holds for the array
  itself or for any of its elements (one level deep, and not for an array
  reached by an index: ``{"a.0": 1}`` does not match ``{"a": [[1]]}``);
- ``null`` equality matches an explicit null and a missing field; ``$ne`` and
  ``$nin`` are the negations of ``$eq`` and ``$in``;
- ``$gt $gte $lt $lte`` only compare values of one type bracket (numbers of all
  kinds with each other, strings with strings, booleans with booleans, ObjectIds
  with ObjectIds); ``true`` is not ``1``; ``$gte``/``$lte`` ``null`` mean ``$eq``
  ``null`` and ``$gt``/``$lt`` ``null`` match nothing;
- a ``Decimal128`` compares exactly with an int or a double, as MongoDB does
  (so ``Decimal128("0.1") != 0.1``: the double is 0.1000000000000000055...).

Ids follow the service's rule (a 24-hex string is an ObjectId): :func:`to_mongo`
turns a 24-hex string compared against ``_id`` into a :class:`bson.ObjectId`, and
matching follows that translation.
"""

from __future__ import annotations

import decimal
import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple

from bson import Decimal128, ObjectId

__all__ = [
    "Filter",
    "FilterError",
    "compile",
    "fields",
    "matches",
    "to_mongo",
    "validate",
]

Filter = dict[str, Any]
"""A validated filter (the decoded JSON object)."""

Predicate = Callable[[Mapping[str, Any]], bool]
_Test = Callable[[Any], bool]


class FilterError(ValueError):
    """A filter that is not in the filter language; the message says why."""


# --------------------------------------------------------------------------- validation

_FIELD_OPS: Final = frozenset(
    {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"}
)
_RANGE_OPS: Final = frozenset({"$gt", "$gte", "$lt", "$lte"})
_LOGICAL_OPS: Final = frozenset({"$and", "$or", "$nor"})
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_HEX24: Final = re.compile(r"[0-9a-fA-F]{24}")
# Bounds used when compiling or translating an already validated filter: wide
# enough for any validated filter wrapped by the service (e.g. a tenant ``$and``),
# still far from Python's recursion limit.
_INTERNAL_MAX_DEPTH: Final = 256
_INTERNAL_MAX_SIZE: Final = 1 << 40


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class _Normalizer:
    """One walk over a filter: checks it, bounds it, returns a normalized copy.

    With ``mongo=True`` the copy is the MongoDB query document (``_id`` 24-hex
    strings become ObjectIds).
    """

    __slots__ = ("max_depth", "max_size", "mongo", "size")

    def __init__(self, max_depth: int, max_size: int, *, mongo: bool) -> None:
        self.max_depth = max_depth
        self.max_size = max_size
        self.mongo = mongo
        self.size = 0

    def _node(self) -> None:
        self.size += 1
        if self.size > self.max_size:
            raise FilterError(f"filter has more than {self.max_size} nodes (keys and array items)")

    def _enter(self, depth: int) -> None:
        if depth > self.max_depth:
            raise FilterError(f"filter nesting deeper than {self.max_depth}")

    def filter(self, value: object, depth: int = 1) -> Filter:
        if not isinstance(value, dict):
            raise FilterError(f"a filter must be a JSON object, not {_type_name(value)}")
        self._enter(depth)
        out: Filter = {}
        for key, item in value.items():
            self._node()
            if not isinstance(key, str):
                raise FilterError("field names must be strings")
            if key.startswith("$"):
                if key not in _LOGICAL_OPS:
                    if key in _FIELD_OPS:
                        raise FilterError(
                            f"operator {key} must be applied to a field, "
                            f'as in {{"field": {{"{key}": ...}}}}'
                        )
                    raise FilterError(f"operator {key} is not allowed")
                out[key] = self._logical(key, item, depth + 1)
            else:
                _check_path(key)
                out[key] = self._condition(key, item, depth + 1)
        return out

    def _logical(self, op: str, value: object, depth: int) -> list[Filter]:
        if not isinstance(value, list) or not value:
            raise FilterError(f"{op} needs a non-empty array of filters")
        self._enter(depth)
        out: list[Filter] = []
        for item in value:
            self._node()
            if not isinstance(item, dict):
                raise FilterError(f"{op} entries must be objects, not {_type_name(item)}")
            out.append(self.filter(item, depth + 1))
        return out

    def _condition(self, path: str, value: object, depth: int) -> Any:
        if isinstance(value, dict) and value:
            operators = [k for k in value if isinstance(k, str) and k.startswith("$")]
            if operators:
                if len(operators) != len(value):
                    raise FilterError(
                        f"field {path!r}: cannot mix operators ({', '.join(operators)}) "
                        "and field names in one object"
                    )
                return self._operators(path, value, depth)
        return self._literal(value, depth, path == "_id")

    def _operators(self, path: str, ops: dict[str, Any], depth: int) -> dict[str, Any]:
        self._enter(depth)
        is_id = path == "_id"
        out: dict[str, Any] = {}
        for op, arg in ops.items():
            self._node()
            if op not in _FIELD_OPS:
                if op in _LOGICAL_OPS:
                    raise FilterError(
                        f"operator {op} is only allowed at the top level of a filter "
                        "or inside $and/$or/$nor"
                    )
                raise FilterError(f"operator {op} is not allowed")
            if op in ("$in", "$nin"):
                if not isinstance(arg, list):
                    raise FilterError(f"{op} needs an array, not {_type_name(arg)}")
                self._enter(depth + 1)
                items: list[Any] = []
                for item in arg:
                    self._node()
                    items.append(self._literal(item, depth + 2, is_id))
                out[op] = items
            elif op == "$exists":
                if isinstance(arg, bool):
                    out[op] = arg
                elif isinstance(arg, int | float) and not math.isnan(arg):
                    out[op] = bool(arg)
                else:
                    raise FilterError(f"$exists needs a boolean, not {_type_name(arg)}")
            elif op in _RANGE_OPS:
                if isinstance(arg, dict | list):
                    raise FilterError(
                        f"{op} needs a number, string, boolean or null, not {_type_name(arg)}"
                    )
                out[op] = self._literal(arg, depth + 1, is_id)
            else:  # $eq, $ne
                out[op] = self._literal(arg, depth + 1, is_id)
        return out

    def _literal(self, value: object, depth: int, is_id: bool = False) -> Any:
        """A value compared by equality (or by order, for scalars)."""
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            if is_id and self.mongo and _HEX24.fullmatch(value):
                return ObjectId(value)
            return value
        if isinstance(value, int):
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise FilterError(f"integer {value} does not fit in 64 bits")
            return value
        if isinstance(value, float):
            if math.isnan(value):
                raise FilterError("NaN is not allowed in a filter")
            return value
        if isinstance(value, ObjectId) and is_id:
            return value  # already translated (to_mongo output fed back in)
        if isinstance(value, list):
            self._enter(depth)
            items: list[Any] = []
            for item in value:
                self._node()
                items.append(self._literal(item, depth + 1))
            return items
        if isinstance(value, dict):
            self._enter(depth)
            doc: dict[str, Any] = {}
            for key, item in value.items():
                self._node()
                if not isinstance(key, str):
                    raise FilterError("field names must be strings")
                if key.startswith("$"):
                    raise FilterError(f"field names must not start with '$' (got {key!r})")
                if not key:
                    raise FilterError("field names must not be empty")
                if "\x00" in key:
                    raise FilterError(f"field names must not contain NUL (got {key!r})")
                doc[key] = self._literal(item, depth + 1)
            return doc
        raise FilterError(f"unsupported value of type {type(value).__name__} in a filter")


def _check_path(path: str) -> None:
    if not path:
        raise FilterError("field names must not be empty")
    if "\x00" in path:
        raise FilterError(f"field names must not contain NUL (got {path!r})")
    for part in path.split("."):
        if not part:
            raise FilterError(f"field path {path!r} has an empty component")
        if part.startswith("$"):
            raise FilterError(f"field names must not start with '$' (got {path!r})")


def validate(filter: object, *, max_depth: int = 16, max_size: int = 256) -> Filter:
    """Check a decoded JSON value as a filter and return it (a normalized copy).

    ``max_depth`` bounds the nesting of objects and arrays (the filter object
    itself is level 1); ``max_size`` bounds the number of nodes (object keys plus
    array items). ``$exists`` with a number is normalized to a boolean.

    Raises:
        FilterError: ``filter`` is not an object, uses an operator outside the
            language (the message names it), has a malformed operand (``$in``
            needs an array, ...), a bad field name, or exceeds a bound.
    """
    return _Normalizer(max_depth, max_size, mongo=False).filter(filter)


def to_mongo(filter: Filter) -> dict[str, Any]:
    """The filter as a MongoDB query document.

    A 24-hex string compared against ``_id`` (by equality, ``$eq``, ``$ne``,
    ``$in``, ``$nin`` or a range operator) becomes a :class:`bson.ObjectId`;
    nothing else changes. The result is a new document.

    Raises:
        FilterError: ``filter`` is not a valid filter (see :func:`validate`).
    """
    return _Normalizer(_INTERNAL_MAX_DEPTH, _INTERNAL_MAX_SIZE, mongo=True).filter(filter)


def fields(filter: Filter) -> frozenset[str]:
    """The top-level field names (first path components) the filter reads.

    ``{"a.b": 1, "$or": [{"c": 1}]}`` reads ``{"a", "c"}``.

    Raises:
        FilterError: ``filter`` is not an object or a logical operator does not
            hold an array of objects.
    """
    out: set[str] = set()
    _collect_fields(filter, out)
    return frozenset(out)


def _collect_fields(filter: object, out: set[str]) -> None:
    if not isinstance(filter, dict):
        raise FilterError(f"a filter must be a JSON object, not {_type_name(filter)}")
    for key, value in filter.items():
        if key in _LOGICAL_OPS:
            if not isinstance(value, list):
                raise FilterError(f"{key} needs a non-empty array of filters")
            for item in value:
                _collect_fields(item, out)
        elif isinstance(key, str) and not key.startswith("$"):
            out.add(key.partition(".")[0])
        else:
            raise FilterError(f"operator {key} is not allowed")


# --------------------------------------------------------------------------- matching

_MISSING: Final[Any] = object()
# Types that are surely not mappings (spares an ``isinstance(x, Mapping)``, which is slow).
_NOT_MAPPINGS: Final = frozenset({list, str, int, float, bool, type(None)})
_INDEX: Final = re.compile(r"0|[1-9][0-9]*")

_Compare = Callable[[Any, Any], bool]
_RANGE_FUNCS: Final[dict[str, _Compare]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}


def _dec(value: Decimal128) -> decimal.Decimal | None:
    """A Decimal128 as a ``Decimal``, or None for NaN (which compares with nothing)."""
    d = value.to_decimal()
    return None if d.is_nan() else d


def _as_dec(number: int | float) -> decimal.Decimal:
    """An int or double as an exact ``Decimal`` (MongoDB compares them exactly)."""
    return decimal.Decimal(number)


def _num_cmp(value: Any, number: int | float, dnumber: decimal.Decimal, cmp: _Compare) -> bool:
    """``cmp(value, number)`` if ``value`` is a BSON number (not bool), else False."""
    tv = type(value)
    if tv is int or tv is float:
        return cmp(value, number)
    if tv is bool:
        return False
    if isinstance(value, Decimal128):
        d = _dec(value)
        return d is not None and cmp(d, dnumber)
    if isinstance(value, int | float) and not isinstance(value, bool):  # Int64, subclasses
        return cmp(value, number)
    return False


def _equal(value: Any, literal: Any) -> bool:
    """BSON equality of a document value and a filter literal (JSON types, ObjectId)."""
    tl = type(literal)
    if literal is None:
        return value is None
    if tl is bool:
        return type(value) is bool and value is literal
    if tl is str:
        return type(value) is str and value == literal
    if tl is int or tl is float:
        return _num_cmp(value, literal, _as_dec(literal), operator.eq)
    if tl is list:
        if type(value) is not list or len(value) != len(literal):
            return False
        return all(_equal(v, lit) for v, lit in zip(value, literal, strict=True))
    if tl is dict:
        if not isinstance(value, Mapping) or len(value) != len(literal):
            return False
        for (key, v), (lkey, lit) in zip(value.items(), literal.items(), strict=True):
            if key != lkey or not _equal(v, lit):
                return False
        return True
    if tl is ObjectId:
        return type(value) is ObjectId and value == literal
    return False  # pragma: no cover - validate() admits no other literal


def _eq_test(literal: Any) -> _Test:
    """A test of one value for equality with ``literal`` (not None)."""
    tl = type(literal)
    if tl is str:
        return lambda v: v == literal and type(v) is str
    if tl is bool:
        return lambda v: v is literal
    if tl is int or tl is float:
        number: int | float = literal
        dnumber = _as_dec(number)
        eq = operator.eq

        def number_eq(v: Any) -> bool:
            tv = type(v)
            if tv is int or tv is float:
                return bool(v == number)
            return _num_cmp(v, number, dnumber, eq)

        return number_eq
    if tl is ObjectId:
        return lambda v: v == literal and type(v) is ObjectId
    return lambda v: _equal(v, literal)


def _in_test(literals: list[Any]) -> _Test:
    """A test of one value for equality with any of ``literals`` (None excluded)."""
    strings: set[str] = set()
    numbers: set[int | float] = set()
    bools: set[bool] = set()
    others: list[Any] = []
    for lit in literals:
        tl = type(lit)
        if tl is str:
            strings.add(lit)
        elif tl is bool:
            bools.add(lit)
        elif tl is int or tl is float:
            numbers.add(lit)
        elif lit is not None:
            others.append(lit)
    dnumbers = [(n, _as_dec(n)) for n in numbers]
    eq = operator.eq

    def slow(v: Any) -> bool:
        if dnumbers and isinstance(v, Decimal128 | int | float) and not isinstance(v, bool):
            return any(_num_cmp(v, n, dn, eq) for n, dn in dnumbers)
        return any(_equal(v, lit) for lit in others)

    def test(v: Any) -> bool:
        tv = type(v)
        if tv is str:
            return v in strings
        if tv is int or tv is float:
            return v in numbers
        if tv is bool:
            return v in bools
        if v is None:
            return False
        return slow(v)

    return test


def _range_test(op: str, literal: Any) -> _Test | None:
    """A test for ``{op: literal}``; None when it can match nothing."""
    cmp = _RANGE_FUNCS[op]
    tl = type(literal)
    if tl is int or tl is float:
        number: int | float = literal
        dnumber = _as_dec(number)

        def number_range(v: Any) -> bool:
            tv = type(v)
            if tv is int or tv is float:
                return cmp(v, number)
            return _num_cmp(v, number, dnumber, cmp)

        return number_range
    if tl is str or tl is bool or tl is ObjectId:
        return lambda v: type(v) is tl and cmp(v, literal)
    return None  # pragma: no cover - null is handled by the caller, others rejected


def _index(part: str) -> int:
    """The array index a path component denotes, or -1."""
    return int(part) if _INDEX.fullmatch(part) else -1


def _never(doc: Mapping[str, Any]) -> bool:
    return False


def _always(doc: Mapping[str, Any]) -> bool:
    return True


def _is_none(v: Any) -> bool:
    return v is None


def _any_value(v: Any) -> bool:
    return True


def _field(path: str, spec: _Spec) -> Predicate:
    """A predicate: does any value reached by ``path`` satisfy ``spec``?"""
    test, missing, whole, negate = spec
    if "." not in path:
        key = path

        if whole:

            def simple(doc: Mapping[str, Any]) -> bool:
                v = doc.get(key, _MISSING)
                if v is _MISSING:
                    return missing
                if type(v) is list:
                    for e in v:
                        if test(e):
                            return True
                return test(v)

        else:

            def simple(doc: Mapping[str, Any]) -> bool:
                v = doc.get(key, _MISSING)
                if v is _MISSING:
                    return missing
                if type(v) is list:
                    for e in v:  # noqa: SIM110 - a loop, not a generator, on the hot path
                        if test(e):
                            return True
                    return False
                return test(v)

        if negate:
            return lambda doc: not simple(doc)
        return simple

    parts = tuple(path.split("."))
    indexes = tuple(_index(p) for p in parts)
    n = len(parts)

    first = parts[0]

    def walk(v: Any, i: int, positional: bool) -> bool:
        # ``v`` is the value reached by parts[:i]; ``positional`` if it was
        # reached through an array index (then it is not expanded at the end).
        while i < n:
            tv = type(v)
            if tv is dict or (tv is not list and isinstance(v, Mapping)):
                v = v.get(parts[i], _MISSING)
                if v is _MISSING:
                    return missing
                i += 1
                positional = False
            elif tv is list:
                part = parts[i]
                for e in v:
                    te = type(e)
                    if te is dict or (te not in _NOT_MAPPINGS and isinstance(e, Mapping)):
                        x = e.get(part, _MISSING)
                        if x is _MISSING:
                            if missing:
                                return True
                        elif walk(x, i + 1, False):
                            return True
                # The index reading; an index past the end reaches nothing
                # (not "missing": ``{"a.5": null}`` does not match ``{"a": [1]}``).
                index = indexes[i]
                if 0 <= index < len(v):
                    return walk(v[index], i + 1, True)
                return False
            else:
                # A scalar where the path goes on: "missing", except for an
                # array element reached by index, which reaches nothing.
                return not positional and missing
        if type(v) is list and not positional:
            for e in v:
                if test(e):
                    return True
            return whole and test(v)
        return test(v)

    def dotted(doc: Mapping[str, Any]) -> bool:
        v = doc.get(first, _MISSING)
        if v is _MISSING:
            return missing
        return walk(v, 1, False)

    if negate:
        return lambda doc: not dotted(doc)
    return dotted


class _Spec(NamedTuple):
    """One operator on a field: does any value reached satisfy ``test``?"""

    test: _Test
    missing: bool  # whether a missing field satisfies it
    whole: bool  # whether an array at the end of the path is tested as a whole too
    negate: bool  # answer the opposite ($ne, $nin, $exists: false)


def _spec(op: str, arg: Any) -> _Spec | bool:
    """The spec of ``{op: arg}``, or a constant answer (True, False)."""
    if op == "$eq" or op == "$ne":
        negate = op == "$ne"
        if arg is None:
            return _Spec(_is_none, missing=True, whole=False, negate=negate)
        return _Spec(_eq_test(arg), missing=False, whole=type(arg) is list, negate=negate)
    if op == "$in" or op == "$nin":
        negate = op == "$nin"
        has_none = any(lit is None for lit in arg)
        rest = [lit for lit in arg if lit is not None]
        if not rest:
            if has_none:
                return _Spec(_is_none, missing=True, whole=False, negate=negate)
            return negate  # $in: [] matches nothing, $nin: [] everything
        in_test = _in_test(rest)
        test: _Test = (lambda v: v is None or in_test(v)) if has_none else in_test
        whole = any(type(lit) is list for lit in rest)
        return _Spec(test, missing=has_none, whole=whole, negate=negate)
    if op == "$exists":
        return _Spec(_any_value, missing=False, whole=True, negate=not arg)
    if op in _RANGE_OPS:
        if arg is None:
            # Only null orders equal to null: $gte/$lte mean $eq, $gt/$lt nothing.
            if op == "$gte" or op == "$lte":
                return _Spec(_is_none, missing=True, whole=False, negate=False)
            return False
        range_test = _range_test(op, arg)
        if range_test is None:  # pragma: no cover - validate() admits no other operand
            return False
        return _Spec(range_test, missing=False, whole=False, negate=False)
    raise FilterError(f"operator {op} is not allowed")  # pragma: no cover - see to_mongo()


def _compile_condition(path: str, condition: Any) -> Predicate:
    """The predicate of ``{path: condition}``."""
    if not (isinstance(condition, dict) and condition and next(iter(condition)).startswith("$")):
        condition = {"$eq": condition}
    specs: list[_Spec] = []
    for op, arg in condition.items():
        spec = _spec(op, arg)
        if spec is False:
            return _never
        if spec is not True:
            specs.append(spec)
    if not specs:
        return _always
    if len(specs) == 1:
        return _field(path, specs[0])
    if "." not in path:
        return _field_group(path, tuple(specs))
    return _all([_field(path, spec) for spec in specs])


def _field_group(key: str, specs: tuple[_Spec, ...]) -> Predicate:
    """Several operators on one top-level field, reading it once."""
    if_missing = all(spec.missing != spec.negate for spec in specs)
    scalar_tests = tuple((spec.test, spec.negate) for spec in specs)

    def group(doc: Mapping[str, Any]) -> bool:
        v = doc.get(key, _MISSING)
        if v is _MISSING:
            return if_missing
        if type(v) is list:
            # Each operator on its own: different elements may satisfy each.
            for test, _missing, whole, negate in specs:
                hit = False
                for e in v:
                    if test(e):
                        hit = True
                        break
                else:
                    hit = whole and test(v)
                if hit == negate:
                    return False
            return True
        for test, negate in scalar_tests:  # noqa: SIM110 - a loop, not a generator, on the hot path
            if test(v) == negate:
                return False
        return True

    return group


def _all(preds: list[Predicate]) -> Predicate:
    if not preds:
        return _always
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        first, second = preds
        return lambda doc: first(doc) and second(doc)
    frozen = tuple(preds)

    def all_of(doc: Mapping[str, Any]) -> bool:
        for pred in frozen:  # noqa: SIM110 - a loop, not a generator, on the hot path
            if not pred(doc):
                return False
        return True

    return all_of


def _any(preds: list[Predicate]) -> Predicate:
    if len(preds) == 1:
        return preds[0]
    frozen = tuple(preds)

    def any_of(doc: Mapping[str, Any]) -> bool:
        for pred in frozen:  # noqa: SIM110 - a loop, not a generator, on the hot path
            if pred(doc):
                return True
        return False

    return any_of


def _none(preds: list[Predicate]) -> Predicate:
    either = _any(preds)
    return lambda doc: not either(doc)


def _compile_filter(filter: Filter) -> Predicate:
    preds: list[Predicate] = []
    for key, value in filter.items():
        if key == "$and":
            preds.append(_all([_compile_filter(f) for f in value]))
        elif key == "$or":
            preds.append(_any([_compile_filter(f) for f in value]))
        elif key == "$nor":
            preds.append(_none([_compile_filter(f) for f in value]))
        else:
            pred = _compile_condition(key, value)
            if pred is _never:
                return _never
            if pred is not _always:
                preds.append(pred)
    return _all(preds)


def compile(filter: Filter) -> Predicate:
    """A fast predicate answering :func:`matches` for ``filter``.

    Compile once per filter and call the result for every document; it does
    not change ``filter`` and may be shared between threads.

    Raises:
        FilterError: ``filter`` is not a valid filter (see :func:`validate`; its
            size bound is not applied here, and nesting is only bounded at 256
            levels, so a validated filter wrapped by the service compiles).
    """
    return _compile_filter(to_mongo(filter))


def matches(filter: Filter, doc: Mapping[str, Any]) -> bool:
    """Whether MongoDB's ``find(to_mongo(filter))`` would return ``doc``.

    ``doc`` is a BSON-decoded document as PyMongo returns it. For many
    documents, use :func:`compile` once instead.

    Raises:
        FilterError: ``filter`` is not a valid filter.
    """
    return compile(filter)(doc)

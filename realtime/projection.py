"""Projections: a subscription's ``fields``, and the deltas of an update within them.

Sans I/O. A :class:`Projection` keeps the dotted paths a client asked for
(plus ``_id`` and ``_version``, always) and applies them to a document with
MongoDB's inclusion-projection semantics (``find(filter, {path: 1, ...})``):

- a path through a sub-document keeps that sub-document with only the
  projected fields (an empty ``{}`` when none of them is present);
- a path through an array applies the rest of the path to each element:
  sub-documents are projected, nested arrays recursed, and other values
  (numbers, strings...) dropped;
- a path through a scalar, or to a missing field, leaves nothing;
- of two paths where one is a prefix of the other (``a`` and ``a.b``), the
  shorter one wins (MongoDB refuses such a projection as a path collision).

:func:`delta` compares two projected documents: the ``updated`` (dotted path
→ new value, through sub-documents only; arrays are replaced whole) and
``removed`` paths that turn the first into the second, or None when they differ
in nothing but ``_version``: such an update sends nothing to the subscription.
:func:`apply_delta` is what a client does with them. A property test checks
:meth:`Projection.apply` against the database's own projection and
``apply_delta(P(before), delta(P(before), P(after))) == P(after)``.

A change is rendered for a projected subscription once per projection and
event (:meth:`realtime.events.Event.projected`), not once per subscriber:
subscriptions with the same ``fields`` share one :class:`Projection`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

__all__ = [
    "ALWAYS",
    "MAX_FIELDS",
    "MAX_PATH_LENGTH",
    "Projection",
    "apply_delta",
    "check_fields",
    "delta",
]

#: Fields every projected document keeps.
ALWAYS: Final = ("_id", "_version")
#: Most paths in one ``fields`` list.
MAX_FIELDS: Final = 64
#: Longest path, in characters.
MAX_PATH_LENGTH: Final = 256

# A projection as a tree: field name -> True (keep it whole) or a subtree.
_Tree = dict[str, Any]
_MISSING: Final = object()


def check_fields(fields: Sequence[Any]) -> tuple[str, ...]:
    """The paths of a ``fields`` list, checked and normalised (sorted, no path
    under another one, ``_id``/``_version`` left out since they are implied).

    Raises:
        ValueError: not a list of 1 to :data:`MAX_FIELDS` dotted paths, each
            1 to :data:`MAX_PATH_LENGTH` characters of non-empty names that do
            not start with ``$`` and hold no NUL.
    """
    if not isinstance(fields, list) or not fields:
        raise ValueError("must be a non-empty list of field paths")
    if len(fields) > MAX_FIELDS:
        raise ValueError(f"may name at most {MAX_FIELDS} fields")
    paths: list[str] = []
    for path in fields:
        if not isinstance(path, str) or not 1 <= len(path) <= MAX_PATH_LENGTH:
            raise ValueError(f"each field must be a path of 1 to {MAX_PATH_LENGTH} characters")
        for name in path.split("."):
            if not name or name.startswith("$") or "\x00" in name:
                raise ValueError(f"{path[:64]!r} is not a field path (dotted names, none "
                                 "empty or starting with '$')")
        paths.append(path)
    kept: list[str] = []
    for path in sorted(set(paths)):
        if path.split(".", 1)[0] in ALWAYS:
            continue  # always there, whole
        if kept and path.startswith(kept[-1] + "."):
            continue  # under a path already kept whole
        kept.append(path)
    return tuple(kept)


def _tree(paths: Iterable[str]) -> _Tree:
    tree: _Tree = {}
    for path in paths:
        node = tree
        *parents, last = path.split(".")
        for name in parents:
            child = node.get(name)
            if child is True:
                break
            node = node.setdefault(name, {})
        else:
            node[last] = True
    return tree


def _project(value: Any, tree: _Tree) -> Any:
    """``value`` through ``tree`` (a sub-path), or :data:`_MISSING`."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for name, sub in tree.items():
            if name not in value:
                continue
            child = value[name] if sub is True else _project(value[name], sub)
            if child is not _MISSING:
                out[name] = child
        return out
    if isinstance(value, list):
        items = (_project(item, tree) for item in value if isinstance(item, dict | list))
        return [item for item in items if item is not _MISSING]
    return _MISSING


class Projection:
    """The fields a subscription receives (hashable by identity: shared, not compared)."""

    __slots__ = ("__weakref__", "paths", "tree")

    def __init__(self, paths: Iterable[str]) -> None:
        """``paths`` as :func:`check_fields` returns them."""
        #: The requested paths (``_id`` and ``_version`` implied).
        self.paths = tuple(paths)
        self.tree = _tree((*ALWAYS, *self.paths))

    def __repr__(self) -> str:
        return f"Projection({list(self.paths)!r})"

    def apply(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """``doc`` with only the projected fields (MongoDB's semantics, above)."""
        projected: dict[str, Any] = _project(dict(doc), self.tree)
        return projected

    def mongo(self) -> dict[str, int]:
        """The projection in MongoDB form: ``{path: 1, ...}``."""
        return {path: 1 for path in (*ALWAYS, *self.paths)}

    def touches(self, changed: Iterable[str]) -> bool:
        """True if an update of these top-level fields may change a projected one
        (``_version`` aside)."""
        tree = self.tree
        return any(name in tree for name in changed if name != "_version")


def delta(before: Mapping[str, Any], after: Mapping[str, Any]
          ) -> tuple[dict[str, Any], list[str]] | None:
    """``(updated, removed)`` that turn ``before`` into ``after`` (two projected
    documents), or None if they differ in nothing but ``_version``.

    ``updated`` maps dotted paths (through sub-documents only) to new values;
    ``removed`` lists the paths of fields ``after`` no longer has.
    """
    updated: dict[str, Any] = {}
    removed: list[str] = []
    _diff(before, after, "", updated, removed)
    if not removed and all(path == "_version" for path in updated):
        return None
    return updated, removed


def _diff(before: Mapping[str, Any], after: Mapping[str, Any], prefix: str,
          updated: dict[str, Any], removed: list[str]) -> None:
    for name, new in after.items():
        path = prefix + name
        old = before.get(name, _MISSING)
        if old is _MISSING:
            updated[path] = new
        elif isinstance(old, dict) and isinstance(new, dict):
            _diff(old, new, path + ".", updated, removed)
        elif not _same(old, new):
            updated[path] = new
    removed.extend(prefix + name for name in before if name not in after)


def _same(a: Any, b: Any) -> bool:
    """Equal as BSON values: ``1``, ``1.0`` and ``True`` differ; order counts."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def apply_delta(doc: Mapping[str, Any], updated: Mapping[str, Any],
                removed: Iterable[str]) -> dict[str, Any]:
    """``doc`` with a delta applied, as a client does: each ``removed`` path unset,
    each ``updated`` path set (sub-documents created as needed). ``doc`` is not changed.

    Raises:
        ValueError: a path goes through a value that is not a sub-document.
    """
    out = _copy(doc)
    for path in removed:
        *parents, last = path.split(".")
        node: Any = out
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    for path, value in updated.items():
        *parents, last = path.split(".")
        node = out
        for name in parents:
            child = node.setdefault(name, {})
            if not isinstance(child, dict):
                raise ValueError(f"{path!r} goes through a value that is not a document")
            node = child
        node[last] = value
    return out


def _copy(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in doc.items()}

"""Which subjects an edge consumes: reference counts of its subscriptions' subjects.

Pure, no I/O. Each subscription needs one subject pattern
(:func:`pattern_of`): a tenant-scoped subscription ``rt.<collection>.<tenant>``,
so a tenant's credentials never cause another tenant's changes to be
consumed; an unscoped one ``rt.<collection>.*`` (every tenant), narrowed to
one tenant when its filter pins the tenant field to a string. :class:`Interest`
counts the subscriptions per pattern and reports the smallest set of
non-overlapping filters that covers them (:meth:`Interest.filters`: a
collection's ``*`` pattern covers its tenants' subjects), plus the system
subjects every edge reads.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from realtime import stream

__all__ = ["Interest", "pattern_of"]


def pattern_of(collection: str, tenant: str | None, filter: Mapping[str, Any],
               tenant_field: str) -> str:
    """The subject pattern a subscription needs.

    ``tenant`` is the subscription's own tenant (its credentials'), if any.
    Without one, a filter whose top level pins ``tenant_field`` to a string
    needs only that tenant's subject.
    """
    if tenant is not None:
        return stream.subject(collection, tenant)
    pinned = filter.get(tenant_field)
    if isinstance(pinned, str) and pinned:
        return stream.subject(collection, pinned)
    return f"{stream.PREFIX}.{collection}.*"


class Interest:
    """Subscriptions per subject pattern; the filters that cover them."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        #: Bumped whenever :meth:`filters` would answer differently.
        self.version = 0

    def add(self, pattern: str) -> bool:
        """Count one more subscription of ``pattern``; True if it was not consumed yet."""
        before = self._counts[pattern]
        self._counts[pattern] = before + 1
        if before == 0:
            self.version += 1
            return True
        return False

    def remove(self, pattern: str) -> bool:
        """Count one subscription less; True if ``pattern`` is no longer needed."""
        count = self._counts.get(pattern, 0)
        if count <= 1:
            if count:
                del self._counts[pattern]
                self.version += 1
                return True
            return False
        self._counts[pattern] = count - 1
        return False

    def count(self, pattern: str) -> int:
        """Subscriptions of ``pattern``."""
        return self._counts.get(pattern, 0)

    def patterns(self) -> list[str]:
        """Every pattern with at least one subscription, sorted."""
        return sorted(self._counts)

    def filters(self) -> list[str]:
        """The consumer's filter subjects: the system subjects and the patterns, none overlapping.

        A collection's ``rt.<collection>.*`` replaces its single-tenant subjects.
        """
        wide = {p for p in self._counts if p.endswith(".*")}
        out = [stream.SYSTEM_SUBJECTS]
        for pattern in sorted(self._counts):
            if pattern in wide or pattern.rsplit(".", 1)[0] + ".*" not in wide:
                out.append(pattern)
        return out

"""A histogram cheap enough for once per change event: no labels, no locks."""

from __future__ import annotations

from bisect import bisect_left

__all__ = ["DELIVERY_BUCKETS", "LatencyBuckets"]

#: Commit → sent buckets, seconds.
DELIVERY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class LatencyBuckets:
    """A histogram cheap enough for once per change event: no labels, no locks.

    ``observe`` is one bisect and three increments. The feed may keep one as
    ``publish_latency`` (commit wall time → :meth:`Hub.publish` returned, i.e.
    sent to every writable subscriber); :class:`ServiceCollector` exports it as
    ``realtime_delivery_seconds``.
    """

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = DELIVERY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, cumulative count)`` pairs ending with ``+Inf``."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out

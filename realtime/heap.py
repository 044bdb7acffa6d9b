"""The garbage collector of a serving process: start-up objects frozen, fewer young passes.

Measured in bench/ (``python -m bench ingest`` and a probe with ``gc.callbacks``,
docs/performance.md): once the app is built, a full collection walks ~80,000
objects made at start-up (modules, the app, settings, the driver) that live
as long as the process, and stops the event loop for 45-70 ms on this kind of
machine: a pause every subscriber's next message waits out, the p99 tail of
the fan-out. :func:`settled_heap` moves them to the permanent generation
(``gc.freeze()``), which brings a full collection down to a few milliseconds,
and raises the first generation's threshold so young collections run ~15x less
often (each about as short: the fan-out's garbage is short-lived bytes and
dicts). Cycles are still collected; the previous state is restored on exit.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["YOUNG_THRESHOLD", "settled_heap"]

#: Allocations (net of deallocations) between two young collections (CPython's default: 700).
YOUNG_THRESHOLD = 10_000


@contextmanager
def settled_heap(young_threshold: int = YOUNG_THRESHOLD) -> Iterator[None]:
    """Freeze what exists now out of the collector's reach and raise the young threshold.

    On exit, the frozen objects go back to the oldest generation (collectable
    again) and the thresholds are what they were.
    """
    before = gc.get_threshold()
    # (No collection first: it would take as long as the pause this avoids, between
    # the feed going live and the server listening; start-up leaves little garbage.)
    gc.freeze()
    gc.set_threshold(young_threshold, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()

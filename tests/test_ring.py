"""The ring of recent events: numbering, lookup by id, marks, reading after a number."""

from __future__ import annotations

import pytest

from realtime.db import token_order
from realtime.ring import Ring
from tests.test_catchup import event, token

pytestmark = pytest.mark.driver_blind


def filled(size: int, last: int) -> Ring:
    """A ring of ``size`` that was given d1..d<last>."""
    ring = Ring(size)
    for n in range(1, last + 1):
        ring.append(event(n))
    return ring


def keys(events: list | None) -> list[str] | None:  # type: ignore[type-arg]
    return None if events is None else [str(ev.key) for ev in events]


def test_events_are_numbered_in_order_and_found_by_id() -> None:
    ring = filled(5, 3)
    assert (ring.seq, len(ring), ring.oldest) == (3, 3, 1)
    assert ring.seq_of(token(2)) == 2
    assert token(3) in ring
    assert token(4) not in ring
    assert keys(ring.after(1)) == ["d2", "d3"]


def test_a_full_ring_forgets_its_oldest_events() -> None:
    ring = filled(5, 12)
    assert (ring.seq, len(ring), ring.oldest) == (12, 5, 8)
    assert token(7) not in ring
    assert ring.seq_of(token(8)) == 8
    assert ring.seq_of(token(7)) is None
    assert keys(ring.after(7)) == ["d8", "d9", "d10", "d11", "d12"]  # d8 on: all held
    assert ring.after(6) is None  # d7 is gone


def test_reading_after_a_number_is_bounded_by_the_limit() -> None:
    ring = filled(100, 60)
    assert keys(ring.after(10, 3)) == ["d11", "d12", "d13"]
    assert keys(ring.after(58, 10)) == ["d59", "d60"]
    assert ring.after(60, 10) == []


def test_a_mark_resumes_after_the_events_appended_before_it() -> None:
    ring = filled(4, 2)
    ring.mark("pbrt-after-2")
    ring.append(event(3))
    assert ring.seq_of("pbrt-after-2") == 2
    assert keys(ring.after(2)) == ["d3"]
    ring.mark(token(3))  # an event's id is not marked: it is found by id
    assert ring.seq_of(token(3)) == 3
    for n in range(4, 8):
        ring.append(event(n))
    assert ring.seq_of("pbrt-after-2") is None  # d3 left the ring


def test_marks_are_pruned_as_the_ring_turns() -> None:
    ring = Ring(3)
    for n in range(1, 50):
        ring.mark(f"pbrt-{n}")
        ring.append(event(n))
    assert len(ring._marks) <= 2 * 3 + 1


def test_the_same_event_twice_keeps_its_latest_number() -> None:
    ring = filled(3, 2)
    ring.append(event(2))  # a feed that resumed one event back
    assert ring.seq_of(token(2)) == 3
    ring.append(event(4))
    ring.append(event(5))  # evicts the first copy (number 2): the second is still found
    assert ring.seq_of(token(2)) == 3
    assert keys(ring.after(3)) == ["d4", "d5"]


def test_a_ring_holds_at_least_one_event() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Ring(0)


def test_a_position_that_is_no_event_is_placed_by_stream_order() -> None:
    ring = Ring(4)
    for n in (2, 4, 6, 8, 10, 12):
        ring.append(event(n))  # d2, d4 left: d6 (number 3) .. d12 (number 6)
    assert ring.seq_at(token(7), token_order) == 3  # after d6: d8 on follow
    assert ring.seq_at(token(6), token_order) == 3
    assert ring.seq_at(token(13), token_order) == 6
    assert ring.seq_at(token(5), token_order) is None  # d4 or others may be gone
    assert Ring(4).seq_at(token(1), token_order) is None

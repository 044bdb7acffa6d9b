"""The serving process's collector settings (realtime.heap): frozen start-up, restored after."""

from __future__ import annotations

import gc

import pytest

from realtime.heap import settled_heap

pytestmark = pytest.mark.driver_blind


def test_settled_heap_freezes_and_restores() -> None:
    before = gc.get_threshold()
    made_at_start_up = [object() for _ in range(1000)]
    with settled_heap(young_threshold=12_345):
        assert gc.get_freeze_count() >= len(made_at_start_up)
        assert gc.get_threshold() == (12_345, *before[1:])
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_cycles_made_while_settled_are_still_collected() -> None:
    class Node:
        other: object

    with settled_heap():
        a, b = Node(), Node()
        a.other, b.other = b, a
        ids = {id(a), id(b)}
        del a, b
        gc.collect()
        assert not ids & {id(o) for o in gc.get_objects() if type(o) is Node}

"""Which subjects an edge consumes, sans I/O: patterns and reference counts."""

from __future__ import annotations

import pytest

from realtime.interest import Interest, pattern_of

pytestmark = pytest.mark.driver_blind


def test_a_tenants_subscription_needs_only_its_tenants_subject() -> None:
    assert pattern_of("orders", "acme", {}, "tenant") == "rt.orders.acme"
    # its filter cannot widen it
    assert pattern_of("orders", "acme", {"tenant": "other"}, "tenant") == "rt.orders.acme"


def test_an_unscoped_subscription_needs_every_tenant_unless_its_filter_pins_one() -> None:
    assert pattern_of("orders", None, {}, "tenant") == "rt.orders.*"
    assert pattern_of("orders", None, {"status": "open"}, "tenant") == "rt.orders.*"
    assert pattern_of("orders", None, {"tenant": "acme"}, "tenant") == "rt.orders.acme"
    assert pattern_of("orders", None, {"tenant": {"$in": ["a"]}}, "tenant") == "rt.orders.*"


def test_subjects_are_reference_counted() -> None:
    interest = Interest()
    assert interest.add("rt.orders.a")
    assert not interest.add("rt.orders.a")
    assert interest.count("rt.orders.a") == 2
    assert not interest.remove("rt.orders.a")
    assert interest.remove("rt.orders.a")
    assert not interest.remove("rt.orders.a")  # never below zero
    assert interest.patterns() == []


def test_the_version_moves_only_when_the_filters_change() -> None:
    interest = Interest()
    interest.add("rt.orders.a")
    version = interest.version
    interest.add("rt.orders.a")
    interest.remove("rt.orders.a")
    assert interest.version == version
    interest.remove("rt.orders.a")
    assert interest.version == version + 1


def test_filters_never_overlap_and_always_include_the_system_subjects() -> None:
    interest = Interest()
    assert interest.filters() == ["rt._sys.>"]
    for pattern in ("rt.orders.a", "rt.orders.b", "rt.users.a"):
        interest.add(pattern)
    assert interest.filters() == ["rt._sys.>", "rt.orders.a", "rt.orders.b", "rt.users.a"]
    interest.add("rt.orders.*")
    assert interest.filters() == ["rt._sys.>", "rt.orders.*", "rt.users.a"]
    interest.remove("rt.orders.*")
    assert interest.filters() == ["rt._sys.>", "rt.orders.a", "rt.orders.b", "rt.users.a"]

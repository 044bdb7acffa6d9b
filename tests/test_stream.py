"""The scale-out stream's wire format, sans I/O: subjects, tenants, ticks, resyncs."""

from __future__ import annotations

import pytest

from realtime import stream
from realtime.stream import Resync, Tick, WireError

pytestmark = pytest.mark.driver_blind


def test_a_change_goes_to_its_collection_and_tenant() -> None:
    assert stream.subject("orders", "acme") == "rt.orders.acme"
    assert stream.subjects_of_change("orders", {"tenant": "acme"}, None, "tenant") == [
        "rt.orders.acme"]


def test_a_document_without_a_string_tenant_goes_to_the_no_tenant_subject() -> None:
    for value in (None, "", 7, ["a"], {"x": 1}):
        assert stream.tenant_token(value) == "_"
    assert stream.subjects_of_change("orders", {"n": 1}, None, "tenant") == ["rt.orders._"]


def test_tenants_that_are_not_subject_tokens_are_escaped_without_collisions() -> None:
    tokens = {stream.tenant_token(t) for t in ("a.b", "a*b", "a>b", "a b", "_", "~61", "é")}
    assert len(tokens) == 7
    for token in tokens:
        assert all(c.isalnum() or c in "_-~" for c in token), token
    assert stream.tenant_token("_") != stream.NO_TENANT


def test_a_delete_goes_to_the_tenant_of_its_pre_image() -> None:
    assert stream.subjects_of_change("orders", None, {"tenant": "b"}, "tenant") == [
        "rt.orders.b"]
    assert stream.subjects_of_change("orders", None, None, "tenant") == ["rt.orders._"]


def test_a_document_that_moves_between_tenants_goes_to_both_subjects() -> None:
    assert stream.subjects_of_change("orders", {"tenant": "b"}, {"tenant": "a"}, "tenant") == [
        "rt.orders.b", "rt.orders.a"]
    assert stream.subjects_of_change("orders", {"tenant": "a"}, {"tenant": "a"}, "tenant") == [
        "rt.orders.a"]


def test_system_subjects_belong_to_no_collection() -> None:
    assert stream.collection_of("rt.orders.a") == "orders"
    assert stream.collection_of(stream.TICK_SUBJECT) is None
    assert stream.collection_of(stream.RESYNC_SUBJECT) is None
    assert stream.collection_of("other.orders.a") is None


def test_ticks_and_resyncs_round_trip() -> None:
    tick = Tick("82aa", (1700000000, 3), 1700000000.25)
    assert stream.decode_tick(stream.encode_tick(tick)) == tick
    for resync in (Resync("history_lost", None), Resync("invalidated", "orders")):
        assert stream.decode_resync(stream.encode_resync(resync)) == resync


@pytest.mark.parametrize("data", [b"", b"[]", b"{}", b'{"token": 1, "ct": [1, 2], "wall": 0}',
                                  b'{"token": "a", "ct": [1], "wall": 0}', b"\xff"])
def test_a_malformed_tick_is_a_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        stream.decode_tick(data)


@pytest.mark.parametrize("data", [b"", b"[]", b'{"collection": "x"}', b'{"reason": 3}'])
def test_a_malformed_resync_is_a_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        stream.decode_resync(data)


def test_a_publish_carries_its_id_its_fence_and_its_position() -> None:
    assert stream.headers("e1", "t1", 41) == {"Nats-Msg-Id": "e1",
                                              "Nats-Expected-Last-Sequence": "41",
                                              "Rt-Token": "t1"}

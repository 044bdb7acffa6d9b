"""One subscription, sans I/O: its phases, what it holds back, and what it receives.

Three tiny builders: :func:`change` (a raw change-stream event through
:func:`realtime.events.normalise`), :func:`subscription` (with an outlet that
records what it is sent) and :func:`in_phase`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from realtime import protocol
from realtime.auth import Tenant
from realtime.events import Event
from realtime.subscription import Phase, PhaseError, Subscription
from tests.helpers import change_event as change

pytestmark = pytest.mark.driver_blind

Doc = dict[str, Any]
OPEN = {"open": True}


class Outlet:
    """A connection's outbox that records the changes it is given, as ``(op, key)``."""

    def __init__(self, max_backlog: int = 100) -> None:
        self.max_backlog = max_backlog
        self.sent: list[tuple[str, Any]] = []
        self.messages: list[str] = []
        self.closed: tuple[int, str] | None = None

    def send(self, message: str) -> None:
        self.messages.append(message)

    def send_change(self, ev: Event, prefix: str, op: str) -> None:
        message = orjson.loads(protocol.render_change(prefix, op,
                                                      ev.leave if op == "leave" else ev.body))
        assert (message["type"], message["sub"], message["op"]) == ("change", "s", op)
        self.sent.append((op, message["key"]))

    def close(self, code: int, reason: str = "") -> None:
        self.closed = (code, reason)


def subscription(filter: Doc | None = None, *, tenant: str | None = None,
                 max_backlog: int = 100) -> tuple[Subscription, Outlet]:
    """A LIVE subscription ``s`` on collection ``c`` (of ``tenant``, as api/ws.py makes it)."""
    outlet = Outlet(max_backlog)
    if tenant is None:
        return Subscription(outlet, "s", "c", filter or {}), outlet
    owner = Tenant("tenant", tenant)
    return Subscription(outlet, "s", "c", owner.restrict(filter or {}), owner=owner), outlet


def in_phase(phase: Phase) -> tuple[Subscription, Outlet]:
    """A subscription with filter OPEN brought into ``phase`` by its own transitions."""
    sub, outlet = subscription(OPEN)
    if phase is Phase.HOLDING:
        sub.hold()
    elif phase is Phase.SETTLING:
        sub.hold()
        sub.settle({}, (100, 0))
    elif phase is Phase.CATCHING_UP:
        sub.catch_up()
    elif phase is Phase.ENDED:
        sub.end()
    assert sub.phase is phase
    return sub, outlet


# ---------------------------------------------------------------------- phases

TRANSITIONS: dict[str, Callable[[Subscription], object]] = {
    "hold": lambda s: s.hold(),
    "catch_up": lambda s: s.catch_up(),
    "settle": lambda s: s.settle({}, None),
    "go_live": lambda s: s.go_live(),
    "hand_over": lambda s: s.hand_over(),
    "end": lambda s: s.end(),
}
#: Every transition a phase allows, and where it leads; any other raises PhaseError.
ALLOWED: dict[tuple[Phase, str], Phase] = {
    (Phase.LIVE, "hold"): Phase.HOLDING,
    (Phase.LIVE, "catch_up"): Phase.CATCHING_UP,
    (Phase.LIVE, "go_live"): Phase.LIVE,  # nothing held: a no-op
    (Phase.HOLDING, "settle"): Phase.SETTLING,
    (Phase.HOLDING, "go_live"): Phase.LIVE,
    (Phase.SETTLING, "go_live"): Phase.LIVE,
    (Phase.CATCHING_UP, "go_live"): Phase.LIVE,
    (Phase.CATCHING_UP, "hand_over"): Phase.LIVE,
    (Phase.ENDED, "go_live"): Phase.ENDED,  # ended for good: a no-op
    **{(phase, "end"): Phase.ENDED for phase in Phase},
}


def test_a_new_subscription_is_live() -> None:
    sub, _ = subscription()
    assert sub.phase is Phase.LIVE
    assert sub.held == 0


@pytest.mark.parametrize("method", list(TRANSITIONS))
@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.value)
def test_each_transition_leads_to_its_phase_or_raises_phase_error(phase: Phase,
                                                                  method: str) -> None:
    sub, _ = in_phase(phase)
    expected = ALLOWED.get((phase, method))
    if expected is None:
        with pytest.raises(PhaseError, match=phase.value):
            TRANSITIONS[method](sub)
        assert sub.phase is phase  # unchanged
    else:
        TRANSITIONS[method](sub)
        assert sub.phase is expected


# ---------------------------------------------------------------------- held events


@pytest.mark.parametrize("phase", [Phase.HOLDING, Phase.SETTLING, Phase.CATCHING_UP],
                         ids=lambda p: p.value)
def test_events_are_held_back_and_sent_in_order_on_going_live(phase: Phase) -> None:
    sub, outlet = in_phase(phase)
    sub.deliver(change(1, "insert", "a", OPEN))
    sub.deliver(change(2, "insert", "x", {"open": False}))  # concerns nobody: not held
    sub.deliver(change(3, "update", "b", OPEN, before=OPEN))
    assert outlet.sent == []
    assert sub.held == 2
    assert sub.go_live() == 2
    assert outlet.sent == [("insert", "a"), ("update", "b")]
    assert sub.held == 0
    sub.deliver(change(4, "delete", "a", before=OPEN))
    assert outlet.sent[-1] == ("delete", "a")  # live now


def test_a_held_backlog_longer_than_the_connection_allows_closes_it_4408() -> None:
    sub, outlet = subscription(OPEN, max_backlog=2)
    sub.hold()
    for t in range(3):
        sub.deliver(change(t, "insert", f"k{t}", OPEN))
    assert outlet.closed == (protocol.CloseCode.SLOW_CONSUMER, "slow consumer")
    assert sub.held == 2


def test_going_live_after_a_snapshot_skips_what_the_snapshot_shows() -> None:
    sub, outlet = subscription(OPEN)
    sub.hold()
    sub.deliver(change(2, "insert", "a", {"open": True, "v": 1}))
    sub.deliver(change(3, "update", "a", {"open": True, "v": 2}, before={"open": True, "v": 1}))
    sub.deliver(change(4, "insert", "b", {"open": True, "v": 1}))
    # The read finished at t=5 and saw a@1 only (b was committed after it passed b's place).
    sub.settle({"a": {"_id": "a", "open": True, "v": 1}}, horizon=(100, 5))
    assert sub.go_live() == 2
    assert outlet.sent == [("update", "a"), ("insert", "b")]


def test_replay_sends_at_once_while_catching_up_and_never_otherwise() -> None:
    sub, outlet = subscription(OPEN)
    sub.replay(change(1, "insert", "live", OPEN))
    assert outlet.sent == []  # LIVE: the feed delivers, not a catch-up
    sub.catch_up()
    sub.replay(change(2, "insert", "a", OPEN))
    sub.replay(change(3, "insert", "x", {"open": False}))
    assert outlet.sent == [("insert", "a")]


def test_going_live_with_a_floor_skips_what_the_catch_up_sent() -> None:
    sub, outlet = subscription(OPEN)
    sub.catch_up()
    e2, e3 = change(2, "insert", "a", OPEN), change(3, "insert", "b", OPEN)
    sub.replay(e2)
    sub.deliver(e2)  # the feed brings the same events meanwhile: held
    sub.replay(e3)
    sub.deliver(e3)
    sub.deliver(change(4, "insert", "c", OPEN))
    assert sub.go_live(floor=(100, 3)) == 1
    assert outlet.sent == [("insert", "a"), ("insert", "b"), ("insert", "c")]


def test_live_events_at_or_before_the_floor_are_skipped_until_one_comes_after_it() -> None:
    sub, outlet = subscription(OPEN)
    sub.catch_up()
    sub.replay(change(3, "insert", "b", OPEN))
    assert sub.go_live(floor=(100, 3)) == 0
    sub.deliver(change(3, "insert", "b", OPEN))  # the feed was behind the catch-up
    sub.deliver(change(4, "insert", "c", OPEN))
    assert outlet.sent == [("insert", "b"), ("insert", "c")]
    assert sub.floor is None


def test_handing_over_to_the_ring_drops_the_held_events() -> None:
    sub, outlet = subscription(OPEN)
    sub.catch_up()
    sub.deliver(change(5, "insert", "a", OPEN))
    assert sub.held == 1
    sub.hand_over()
    assert (sub.phase, sub.held, outlet.sent) == (Phase.LIVE, 0, [])


@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.value)
def test_an_ended_subscription_sends_nothing(phase: Phase) -> None:
    sub, outlet = in_phase(phase)
    sub.deliver(change(1, "insert", "a", OPEN))
    sub.end()
    assert sub.held == 0
    sub.deliver(change(2, "insert", "b", OPEN))
    sub.replay(change(3, "insert", "c", OPEN))
    assert sub.go_live() == 0
    assert sub.phase is Phase.ENDED
    assert outlet.sent == ([("insert", "a")] if phase is Phase.LIVE else [])


# ---------------------------------------------------------------------- decide

CLOSED = {"open": False}
A, B = {"tenant": "a"}, {"tenant": "b"}

DECISIONS = [
    # (filter, tenant, event, op)
    pytest.param(OPEN, None, change(1, "insert", doc=OPEN), "insert",
                 id="an insert inside the filter is an insert"),
    pytest.param(OPEN, None, change(1, "insert", doc=CLOSED), None,
                 id="an insert outside the filter is nothing"),
    pytest.param({}, None, change(1, "insert", doc=CLOSED), "insert",
                 id="without a filter every insert is an insert"),
    pytest.param(OPEN, None, change(1, "update", doc=OPEN, before=OPEN), "update",
                 id="an update inside the filter is an update"),
    pytest.param(OPEN, None, change(1, "update", doc=CLOSED, before=OPEN), "leave",
                 id="an update moving the document out is a leave"),
    pytest.param(OPEN, None, change(1, "update", doc=CLOSED, before=CLOSED), None,
                 id="an update outside before and after is nothing"),
    pytest.param(OPEN, None, change(1, "update", doc=CLOSED, changed=["open"]), "leave",
                 id="without a pre-image an update of a filter field to outside is a leave"),
    pytest.param(OPEN, None, change(1, "update", doc={**CLOSED, "n": 1}, changed=["n"]), None,
                 id="without a pre-image an update of other fields outside is nothing"),
    pytest.param(OPEN, None, change(1, "update", doc=None), "leave",
                 id="an update of a document deleted since, without a pre-image, is a leave"),
    pytest.param(OPEN, None, change(1, "replace", doc=OPEN), "replace",
                 id="a replace inside the filter is a replace"),
    pytest.param(OPEN, None, change(1, "replace", doc=CLOSED, before=OPEN), "leave",
                 id="a replace moving the document out is a leave"),
    pytest.param(OPEN, None, change(1, "replace", doc=CLOSED), "leave",
                 id="a replace to outside without a pre-image is a leave"),
    pytest.param(OPEN, None, change(1, "delete", before=OPEN), "delete",
                 id="a delete of a document inside is a delete"),
    pytest.param(OPEN, None, change(1, "delete", before=CLOSED), None,
                 id="a delete of a document outside is nothing"),
    pytest.param(OPEN, None, change(1, "delete"), "delete",
                 id="a delete without a pre-image is a delete"),
    pytest.param(OPEN, None, change(1, "drop"), None,
                 id="a stream event is no change of a document"),
    # A tenant's subscription: only its documents, failing closed.
    pytest.param({}, "a", change(1, "insert", doc=A), "insert",
                 id="a tenant gets the insert of its document"),
    pytest.param({}, "a", change(1, "insert", doc=B), None,
                 id="a tenant never gets the insert of another tenant's document"),
    pytest.param({}, "a", change(1, "update", doc={**A, "n": 2}, before=A), "update",
                 id="a tenant gets the update of its document"),
    pytest.param({}, "a", change(1, "update", doc=B, before=A), "leave",
                 id="a tenant's document given to another tenant is a leave"),
    pytest.param({}, "a", change(1, "update", doc=B, changed=["n"]), None,
                 id="without a pre-image another tenant's update is nothing"),
    pytest.param(OPEN, "a", change(1, "update", doc={**A, **CLOSED}, changed=["open"]), "leave",
                 id="a tenant's document leaving the filter without a pre-image is a leave"),
    pytest.param({}, "a", change(1, "delete", before=A), "delete",
                 id="a tenant gets the delete of its document"),
    pytest.param({}, "a", change(1, "delete", before=B), None,
                 id="a tenant never gets the delete of another tenant's document"),
    pytest.param({}, "a", change(1, "delete"), None,
                 id="a delete without a pre-image fails closed for a tenant"),
    pytest.param({}, "a", change(1, "update", doc=None), None,
                 id="a leave without any image fails closed for a tenant"),
]


@pytest.mark.parametrize(("filter", "tenant", "ev", "op"), DECISIONS)
def test_decide_gives_the_op_the_live_query_semantics_give(filter: Doc, tenant: str | None,
                                                          ev: Event, op: str | None) -> None:
    sub, _ = subscription(filter, tenant=tenant)
    assert sub.decide(ev) == op


def test_a_tenant_snapshot_shows_only_the_tenant_documents() -> None:
    sub, _ = subscription({}, tenant="a")
    assert sub.owns({"_id": 1, **A})
    assert not sub.owns({"_id": 2, **B})
    assert not sub.owns({"_id": 3})
    assert subscription()[0].owns({"_id": 4})

"""The hub, sans I/O: snapshot then live skips exactly what a snapshot already shows.

The feed can lag behind a snapshot's read: changes the snapshot shows may be
published after it was sent. The hub holds a subscription's events until the
feed has passed the read (an event committed after it, or an empty poll begun
after it) and drops, per document, the held changes the snapshot reflects.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from realtime.db import token_order
from realtime.events import Event
from realtime.hub import Hub
from realtime.subscription import Phase, Subscription
from tests.helpers import change_event as change
from tests.test_catchup import Oplog, event, history, keys, token
from tests.test_catchup import Outlet as Recording

pytestmark = pytest.mark.driver_blind

Doc = dict[str, Any]


class Recorder(Subscription):
    """A subscription that records what it sends as ``(op, key, _version)``."""

    __slots__ = ("sent",)

    def __init__(self, conn: Any) -> None:
        super().__init__(conn, "s", "c", {"open": True})
        self.sent: list[tuple[str, Any, Any]] = []

    def send(self, op: str, ev: Event) -> None:
        self.sent.append((op, ev.key, (ev.document or {}).get("_version")))


class Silent:
    """An outlet that must not be used: the recorder sends nothing."""

    max_backlog = 100

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the recorder sends nothing ({name})")


def subscribed() -> tuple[Hub, Recorder]:
    """A snapshot subscription while its snapshot is read (HOLDING)."""
    hub = Hub()
    sub = Recorder(Silent())
    sub.hold()
    hub.add(sub)
    return hub, sub


def shown(*docs: Doc) -> dict[Any, Doc]:
    return {d["_id"]: d for d in docs}


A1 = {"_id": "a", "_version": 1, "open": True}
A2 = {"_id": "a", "_version": 2, "open": True, "n": 2}


def test_a_change_the_snapshot_shows_is_not_sent_when_the_feed_brings_it_late() -> None:
    hub, sub = subscribed()
    # The read finished at t=5 and showed a@1; the feed has not published a@1 yet.
    hub.settle(sub, shown(A1), horizon=(100, 5), poll=7)
    hub.publish(change(4, "insert", "a", {"_version": 1, "open": True}))
    assert sub.sent == []  # held: the feed has not passed the read
    hub.publish(change(6, "update", "a", {"_version": 2, "open": True, "n": 2},
                       before={"_version": 1, "open": True}))
    assert sub.sent == [("update", "a", 2)]
    hub.publish(change(7, "delete", "a", before={"_version": 2, "open": True, "n": 2}))
    assert sub.sent == [("update", "a", 2), ("delete", "a", None)]  # live from now on


def test_a_delete_and_reinsert_before_the_read_leaves_the_document_shown() -> None:
    hub, sub = subscribed()
    sub.deliver(change(3, "delete", "a", before={"_version": 4, "open": True}))
    sub.deliver(change(4, "insert", "a", {"_version": 1, "open": True}))
    hub.settle(sub, shown(A1), horizon=(100, 5), poll=7)
    hub.publish(change(9, "insert", "b", {"_version": 1, "open": True}))
    # Sending the delete would remove the document the snapshot shows, for good.
    assert sub.sent == [("insert", "b", 1)]


def test_changes_the_read_did_not_see_are_sent_in_order() -> None:
    hub, sub = subscribed()
    # The read saw a@1 only; a@2 and the insert of b committed before the read
    # finished but after it passed those documents.
    sub.deliver(change(2, "insert", "a", {"_version": 1, "open": True}))
    sub.deliver(change(3, "update", "a", {"_version": 2, "open": True, "n": 2},
                       before={"_version": 1, "open": True}))
    sub.deliver(change(4, "insert", "b", {"_version": 1, "open": True}))
    hub.settle(sub, shown(A1), horizon=(100, 5), poll=7)
    hub.publish(change(6, "insert", "c", {"_version": 1, "open": True}))
    assert sub.sent == [("update", "a", 2), ("insert", "b", 1), ("insert", "c", 1)]


def test_leaving_and_deleted_documents_the_snapshot_omits_are_not_sent() -> None:
    hub, sub = subscribed()
    sub.deliver(change(2, "update", "a", {"_version": 3, "open": False},
                       before={"_version": 2, "open": True}))
    sub.deliver(change(3, "delete", "b", before={"_version": 1, "open": True}))
    hub.settle(sub, shown(), horizon=(100, 5), poll=7)
    hub.quiet(7)
    assert sub.sent == []
    assert sub.phase is Phase.LIVE


def test_without_later_events_an_empty_poll_begun_after_the_read_takes_it_live() -> None:
    hub, sub = subscribed()
    hub.settle(sub, shown(), horizon=(100, 5), poll=7)
    hub.publish(change(5, "insert", "b", {"_version": 1, "open": True}))
    hub.quiet(6)  # began before the read finished: proves nothing
    assert sub.sent == []
    assert sub.phase is Phase.SETTLING
    hub.quiet(7)
    assert sub.sent == [("insert", "b", 1)]
    hub.publish(change(8, "insert", "d", {"_version": 1, "open": True}))
    assert sub.sent == [("insert", "b", 1), ("insert", "d", 1)]


def test_an_unknown_read_time_waits_for_the_empty_poll() -> None:
    hub, sub = subscribed()
    hub.settle(sub, shown(A2), horizon=None, poll=3)
    hub.publish(change(9, "update", "a", {"_version": 2, "open": True, "n": 2},
                       before={"_version": 1, "open": True}))
    assert sub.sent == []
    hub.quiet(3)
    assert sub.sent == []  # shown already


def test_a_feed_already_past_the_read_goes_live_at_once() -> None:
    hub, sub = subscribed()
    hub.publish(change(8, "insert", "z", {"_version": 1}, coll="other"))
    hub.settle(sub, shown(), horizon=(100, 5), poll=7)
    assert sub.phase is Phase.LIVE
    hub.publish(change(9, "insert", "b", {"_version": 1, "open": True}))
    assert sub.sent == [("insert", "b", 1)]


def test_removing_a_settling_subscription_forgets_it() -> None:
    hub, sub = subscribed()
    hub.settle(sub, shown(), horizon=(100, 5), poll=7)
    hub.remove(sub)
    hub.quiet(7)
    assert sub.phase is Phase.ENDED  # never taken live after removal
    assert sub.sent == []


# -- warming the ring at start-up --------------------------------------------------------
async def test_while_the_ring_warms_events_are_recorded_and_subscriptions_wait() -> None:
    """A live subscription made during the warm-up starts at the warmed head: the
    history read into the ring is there for ``since``, never sent as live."""
    hub = Hub()
    store = history(Oplog([]), hub)
    hub.warming()
    outlet = Recording()
    hub.attach(outlet)  # type: ignore[arg-type]
    sub = Subscription(outlet, "s", "c", {})
    starting = asyncio.create_task(hub.start(sub, store))
    hub.publish(event(1))
    hub.publish(event(2))
    await asyncio.sleep(0)
    assert not starting.done()
    assert outlet.messages == []
    assert (hub.events, hub.warm_events) == (0, 2)
    hub.warmed()
    await starting
    assert outlet.messages[0] == {"type": "subscribed", "sub": "s", "head": token(2)}
    hub.publish(event(3))
    assert outlet.keys == ["d3"]  # live from the warmed head, nothing older
    assert hub.can_replay(token(1))
    assert hub.events == 1
    late = Recording()
    hub.attach(late)  # type: ignore[arg-type]
    await hub.start(Subscription(late, "s", "c", {}), store, since=token(1))
    assert late.keys == keys(2, 3)


async def test_a_connection_closed_during_the_warm_up_is_not_subscribed() -> None:
    hub = Hub()
    store = history(Oplog([]), hub)
    hub.warming()
    outlet = Recording()
    hub.attach(outlet)  # type: ignore[arg-type]
    starting = asyncio.create_task(hub.start(Subscription(outlet, "s", "c", {}), store))
    await asyncio.sleep(0)
    del hub.connections[outlet]  # type: ignore[index]  # closed: detached
    hub.warmed()
    await starting
    assert hub.subscription_count() == 0
    assert outlet.messages == []


def test_a_since_the_ring_neither_holds_nor_marked_is_placed_by_stream_order() -> None:
    """A head an earlier process gave (a post-batch token) resumes from the ring."""
    hub = Hub(order=token_order)
    for n in (2, 4, 6):
        hub.publish(event(n))
    assert hub.since_seq(token(3)) == 1  # after d2
    assert hub.since_seq(token(7)) is None  # the feed has not passed it yet
    hub.advance(token(9))  # a post-batch token: it has
    assert hub.since_seq(token(7)) == 3
    assert Hub().since_seq(token(3)) is None  # without an order: unknown


async def test_a_resuming_subscription_waits_for_the_warm_up_then_replays_the_ring() -> None:
    hub = Hub(order=token_order)
    store = history(Oplog([]), hub)
    hub.warming()
    outlet = Recording()
    hub.attach(outlet)  # type: ignore[arg-type]
    sub = Subscription(outlet, "s", "c", {})
    starting = asyncio.create_task(hub.start(sub, store, since=token(2)))
    for n in range(1, 9):
        hub.publish(event(n))
        await asyncio.sleep(0)
    assert not starting.done()
    assert outlet.messages == []
    hub.warmed()
    await starting
    hub.publish(event(9))
    assert outlet.keys == keys(3, 9)
    assert store.catchups == 0  # from the warmed ring


def test_a_relay_tick_at_the_read_time_takes_a_settling_subscription_live() -> None:
    hub, sub = subscribed()
    hub.publish(change(5, "insert", "b", {"_version": 1, "open": True}))
    hub.settle(sub, shown(), horizon=(100, 6), poll=7)
    hub.passed((100, 5))  # the relay has not reached the read yet
    assert sub.phase is Phase.SETTLING
    hub.passed((100, 6))  # an idle database: the tick is at the read's time
    assert sub.phase is Phase.LIVE
    assert sub.sent == [("insert", "b", 1)]


def test_a_tick_seen_before_the_snapshot_settles_it_at_once() -> None:
    hub, sub = subscribed()
    hub.passed((100, 9))
    hub.settle(sub, shown(), horizon=(100, 9), poll=7)
    assert sub.phase is Phase.LIVE


class Watching:
    """A watcher that consumed the subscription's subject from ring number ``since`` on."""

    def __init__(self, since: int) -> None:
        self.since = since
        self.added_: list[Subscription] = []
        self.removed_: list[Subscription] = []

    def added(self, subscription: Subscription) -> None:
        self.added_.append(subscription)

    def removed(self, subscription: Subscription) -> None:
        self.removed_.append(subscription)

    def covers(self, subscription: Subscription, seq: int) -> bool:
        return seq > self.since


def test_an_edge_replays_from_its_ring_only_what_it_consumed_for_the_subscription() -> None:
    hub = Hub()
    for t in range(1, 6):
        hub.publish(change(t, "insert", f"k{t}", {"_version": 1, "open": True}))
    watcher = Watching(since=2)
    hub.watcher = watcher
    sub = Recorder(Silent())
    first, third = hub.since_seq(f"{1:032x}"), hub.since_seq(f"{3:032x}")
    assert first is not None  # the ring has them...
    assert third is not None
    assert not hub.covers(sub, first)  # ...but not every change on its subject since the first
    assert hub.covers(sub, third)
    hub.add(sub)
    hub.remove(sub)
    hub.remove(sub)  # a second removal is no change of interest
    assert watcher.added_ == [sub]
    assert watcher.removed_ == [sub]

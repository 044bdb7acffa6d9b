"""Which relay appends, sans I/O: refused publishes and the standby's takeover."""

from __future__ import annotations

import pytest

from realtime.fencing import Appended, Fence, Fenced, Takeover, after_refusal, landed

pytestmark = pytest.mark.driver_blind


def test_a_refusal_whose_tail_is_our_own_message_means_the_ack_was_lost() -> None:
    assert after_refusal("e7", tail_seq=12, tail_msg_id="e7") == Appended(12)


def test_a_refusal_whose_tail_is_another_message_fences_the_relay_out() -> None:
    assert after_refusal("e7", tail_seq=13, tail_msg_id="e8") == Fenced(13, "e8")
    assert after_refusal("e7", tail_seq=13, tail_msg_id=None) == Fenced(13, None)


def test_the_fence_only_moves_forward() -> None:
    fence = Fence(5)
    fence.appended(6)
    fence.appended(4)
    assert fence.seq == 6


def test_a_standby_takes_over_once_the_stream_stood_still_long_enough() -> None:
    watch = Takeover(3.0)
    assert not watch.due(10, now=100.0)
    assert not watch.due(10, now=102.9)
    assert watch.due(10, now=103.0)


def test_any_append_restarts_the_standbys_wait() -> None:
    watch = Takeover(3.0)
    watch.due(10, now=100.0)
    assert not watch.due(11, now=102.0)  # a tick: the active relay lives
    assert not watch.due(11, now=104.9)
    assert watch.due(11, now=105.0)


def test_after_a_reset_the_standby_watches_afresh() -> None:
    watch = Takeover(1.0)
    watch.due(3, now=0.0)
    watch.reset()
    assert not watch.due(3, now=5.0)
    assert watch.due(3, now=6.0)


def test_the_takeover_delay_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Takeover(0)


def test_of_a_pipeline_the_prefix_up_to_the_tail_landed() -> None:
    sent = ["e1", "e2", "e3"]
    assert landed(10, sent, tail_seq=10, tail_msg_id="e0") == 0
    assert landed(10, sent, tail_seq=12, tail_msg_id="e2") == 2
    assert landed(10, sent, tail_seq=13, tail_msg_id="e3") == 3


def test_a_tail_that_is_not_ours_fences_the_pipeline_out() -> None:
    sent = ["e1", "e2"]
    assert landed(10, sent, tail_seq=11, tail_msg_id="x") == Fenced(11, "x")
    # our id, but not where our pipeline would have put it: another relay's copy
    assert landed(10, sent, tail_seq=14, tail_msg_id="e2") == Fenced(14, "e2")

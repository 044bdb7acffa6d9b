"""Which relay appends: fenced publishes and the standby's takeover, sans I/O.

Two or more relays run; at most one appends to the stream at a time, and the
stream holds every change once, in commit order:

- **Fence.** Every publish carries ``Nats-Expected-Last-Sequence``: the stream
  sequence of the message this relay last appended (or read as the stream's
  tail when it took over). JetStream refuses the publish (``wrong last
  sequence``, error 10071) if anything else was appended since, so two relays
  can never both append. A refused publish is either this relay's own earlier
  attempt whose acknowledgement was lost (the tail carries its message id:
  it landed, :class:`Appended`) or another relay's append (:class:`Fenced`:
  this relay steps down). :func:`after_refusal` decides for one publish,
  :func:`landed` for a pipeline of them (each expecting the one before).
- **Takeover.** A standby watches the stream's last sequence. The active relay
  appends at least a tick every ``tick`` seconds, so a sequence that has not
  moved for ``takeover_after`` seconds means the active relay is gone
  (:class:`Takeover`): the standby reads the tail, resumes the change stream
  from the tail's token, and publishes fenced on the tail's sequence. If the
  old relay was only slow, the first of them to append wins and the other is
  fenced out.

:class:`Role` is the relay's state; :class:`Fence` the position it appends on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = ["WRONG_LAST_SEQUENCE", "Appended", "Fence", "Fenced", "Role", "Takeover",
           "after_refusal", "landed"]

#: JetStream's error code for a refused ``Nats-Expected-Last-Sequence``.
WRONG_LAST_SEQUENCE: Final = 10071


class Role(StrEnum):
    """What a relay does now."""

    #: Watching the stream; takes over when it goes quiet.
    STANDBY = "standby"
    #: Reading the change stream and appending.
    ACTIVE = "active"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Appended:
    """The publish is in the stream at ``seq``."""

    seq: int


@dataclass(frozen=True, slots=True)
class Fenced:
    """Another relay appended ``msg_id`` at ``seq``: this one must step down."""

    seq: int
    msg_id: str | None


def after_refusal(msg_id: str, tail_seq: int, tail_msg_id: str | None) -> Appended | Fenced:
    """Decide after a publish of ``msg_id`` was refused for a wrong last sequence.

    ``tail_seq`` and ``tail_msg_id`` are the stream's last message, read after
    the refusal. If it is ``msg_id``, an earlier attempt of the same publish
    landed and only its acknowledgement was lost; otherwise another relay
    appended.
    """
    if tail_msg_id == msg_id:
        return Appended(tail_seq)
    return Fenced(tail_seq, tail_msg_id)


def landed(fence_seq: int, in_flight: Sequence[str], tail_seq: int,
           tail_msg_id: str | None) -> int | Fenced:
    """How many of the publishes in flight landed, after one of them failed.

    ``in_flight`` are the message ids sent (in order, pipelined) after the last
    acknowledged one, at ``fence_seq``; each expected the sequence before it, so
    those that landed are a prefix, ending at the stream's tail. Returns the
    length of that prefix, or :class:`Fenced` when the tail is none of them
    (another relay appended).
    """
    if tail_seq == fence_seq:
        return 0
    for index, msg_id in enumerate(in_flight):
        if msg_id == tail_msg_id and tail_seq == fence_seq + index + 1:
            return index + 1
    return Fenced(tail_seq, tail_msg_id)


class Fence:
    """The stream sequence the next publish expects to be last.

    Raises nothing; :meth:`appended` only moves forward.
    """

    __slots__ = ("seq",)

    def __init__(self, seq: int) -> None:
        self.seq = seq

    def appended(self, seq: int) -> None:
        """A publish landed at ``seq``: the next one expects it."""
        if seq > self.seq:
            self.seq = seq


class Takeover:
    """A standby's watch on the stream's last sequence.

    :meth:`due` is True once the sequence has not moved for ``after`` seconds of
    the caller's clock (``now``), or when the stream is empty and nobody
    appended within ``after`` (the first relay of a new stream).
    """

    __slots__ = ("_after", "_seen", "_since")

    def __init__(self, after: float) -> None:
        if after <= 0:
            raise ValueError("takeover delay must be positive")
        self._after = after
        self._seen: int | None = None
        self._since = 0.0

    def due(self, last_seq: int, now: float) -> bool:
        """Note the stream's ``last_seq`` at ``now``; True when it is time to take over."""
        if last_seq != self._seen:
            self._seen, self._since = last_seq, now
            return False
        return now - self._since >= self._after

    def reset(self) -> None:
        """Forget what was seen (after stepping down: watch afresh)."""
        self._seen = None

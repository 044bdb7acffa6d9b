"""Change events: one raw change-stream event normalised and encoded once.

Pure functions, no I/O. The feed turns every raw event into an :class:`Event`
whose JSON body (everything but ``type``, ``sub`` and ``op``) is encoded once;
the hub splices a per-subscription prefix onto it.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from realtime import protocol
from realtime.codec import dumps_str, format_datetime, key_to_json
from realtime.projection import Projection, delta

__all__ = ["DOCUMENT_OPS", "STREAM_OPS", "Event", "apply_update", "cluster_time", "normalise"]

#: Operations that concern one document.
DOCUMENT_OPS = frozenset({"insert", "update", "replace", "delete"})
#: Operations that end or reset a collection's history.
STREAM_OPS = frozenset({"drop", "rename", "dropDatabase", "invalidate"})


@dataclass(slots=True, eq=False)
class Event:
    """One normalised change, shared by every subscriber it is sent to."""

    id: str
    op: str
    collection: str
    key: Any
    document: dict[str, Any] | None
    before: dict[str, Any] | None
    changed: frozenset[str] | None
    ts: str
    body: str
    #: The commit's cluster time ``(seconds, increment)``: totally orders events.
    ct: tuple[int, int] = (0, 0)
    received: float = field(default_factory=time.monotonic)
    seq: int = 0
    #: The raw change-stream event, kept only where it is passed on as it is (the relay).
    raw: Mapping[str, Any] | None = None
    _leave: str | None = None
    #: Encoded frames by subscription prefix: for ``op``, and for ``leave``.
    _frames: dict[str, bytes] | None = None
    _leave_frames: dict[str, bytes] | None = None
    #: Bodies by projection and variant, and their messages and frames by
    #: subscription prefix too, during a fan-out.
    _projected: dict[tuple[Projection, str], str | None] | None = None
    _projected_frames: dict[tuple[Projection, str, bool, str], tuple[str, bytes]] | None = None

    def frame(self, prefix: str, op: str) -> bytes:
        """The WebSocket frame of this change as ``op`` for subscriptions with ``prefix``.

        While the hub fans the event out (:meth:`caching`), frames are encoded
        once and shared: every subscription with the same id (clients number
        theirs ``s1``, ``s2``...) gets the same bytes. Otherwise (a replay to
        one subscription) the frame is encoded and not kept.

        Raises:
            ValueError: if ``op`` is not a change op.
        """
        cache = self._leave_frames if op == "leave" else self._frames
        frame = None if cache is None else cache.get(prefix)
        if frame is None:
            text = protocol.render_change(prefix, op, self.leave if op == "leave" else self.body)
            frame = protocol.text_frame(text.encode())
            if cache is not None:
                cache[prefix] = frame
        return frame

    def caching(self, on: bool) -> None:
        """Keep encoded frames (during a fan-out) or drop them (after it)."""
        if on:
            self._frames = {}
            self._leave_frames = {}
        else:
            self._frames = self._leave_frames = self._projected = None
            self._projected_frames = None

    def projected(self, projection: Projection, op: str, had: bool) -> str | None:
        """The body of this change as ``op`` for subscriptions with ``projection``
        (see :func:`realtime.protocol.encode_event_body`), or None to send nothing.

        ``had`` says whether the client holds the document already (its
        pre-image was inside the subscription's filter): an ``update`` then
        carries only the delta of the projected fields (``updated``/``removed``,
        :func:`realtime.projection.delta`), and nothing at all when no projected
        field changed; otherwise, and for ``insert``/``replace``, the projected
        document. ``leave`` and ``delete`` carry no document anyway. During a
        fan-out (:meth:`caching`) each body is computed once per projection.
        """
        if op == "leave":
            return self.leave
        if op == "delete":
            return self.body
        variant = op if op != "update" else ("delta" if had else "update")
        cache = self._projected
        if cache is None:
            if self._frames is None:
                return self._project(projection, variant)
            cache = self._projected = {}
        key = (projection, variant)
        if key in cache:
            return cache[key]
        body = cache[key] = self._project(projection, variant)
        return body

    def projected_frame(self, projection: Projection, op: str, had: bool,
                        prefix: str) -> tuple[str, bytes] | None:
        """The message and WebSocket frame of :meth:`projected`'s body for the
        subscriptions with ``prefix`` (None: send nothing); during a fan-out, made
        once per projection, op and prefix."""
        key = (projection, op, had, prefix)
        cache = self._projected_frames
        if cache is not None:
            made = cache.get(key)
            if made is not None:
                return made
        body = self.projected(projection, op, had)
        if body is None:
            return None
        text = protocol.render_change(prefix, op, body)
        made = (text, protocol.text_frame(text.encode()))
        if self._frames is not None:  # caching (a fan-out)
            if cache is None:
                cache = self._projected_frames = {}
            cache[key] = made
        return made

    def _project(self, projection: Projection, variant: str) -> str | None:
        document = self.document
        if variant == "delta":
            if self.before is not None and document is not None:
                change = delta(projection.apply(self.before), projection.apply(document))
                if change is None:
                    return None
                updated, removed = change
                return protocol.encode_event_body(
                    id=self.id, collection=self.collection, key=self.key, document=None,
                    updated=dumps_str(updated), removed=removed, ts=self.ts)
            if self.changed is not None and not projection.touches(self.changed):
                return None  # no pre-image, but the update's own fields are all elsewhere
        return protocol.encode_event_body(
            id=self.id, collection=self.collection, key=self.key,
            document=None if document is None else dumps_str(projection.apply(document)),
            updated=None, removed=None, ts=self.ts)

    @property
    def leave(self) -> str:
        """The body of a ``leave`` message for this event (built on first use)."""
        if self._leave is None:
            self._leave = protocol.leave_body(id=self.id, collection=self.collection,
                                              key=self.key, ts=self.ts)
        return self._leave


def _set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    target: Any = doc
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
    last = parts[-1]
    if isinstance(target, list):
        index = int(last)
        while len(target) <= index:
            target.append(None)
        target[index] = value
    else:
        target[last] = value


def _unset_path(doc: dict[str, Any], path: str) -> None:
    parts = path.split(".")
    target: Any = doc
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target.get(part)
        if target is None:
            return
    if isinstance(target, dict):
        target.pop(parts[-1], None)
    elif isinstance(target, list):
        target[int(parts[-1])] = None


def apply_update(before: Mapping[str, Any], description: Mapping[str, Any]) -> dict[str, Any]:
    """The post-image of an update: ``before`` with ``updateDescription`` applied.

    Raises:
        ValueError: the description does not fit the document.
    """
    doc = copy.deepcopy(dict(before))
    try:
        for path, size in ((t["field"], t["newSize"]) for t in
                           description.get("truncatedArrays") or ()):
            target: Any = doc
            for part in path.split("."):
                target = target[int(part)] if isinstance(target, list) else target[part]
            del target[size:]
        for path in description.get("removedFields") or ():
            _unset_path(doc, path)
        for path, value in (description.get("updatedFields") or {}).items():
            _set_path(doc, path, value)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"update description does not apply: {exc}") from exc
    return doc


def _ts(raw: Mapping[str, Any]) -> str:
    wall = raw.get("wallTime")
    if isinstance(wall, dt.datetime):
        return format_datetime(wall)
    cluster = raw.get("clusterTime")
    seconds = getattr(cluster, "time", None)
    if isinstance(seconds, int):
        return format_datetime(dt.datetime.fromtimestamp(seconds, dt.UTC))
    return format_datetime(dt.datetime.now(dt.UTC))


def cluster_time(raw: Mapping[str, Any]) -> tuple[int, int]:
    """The event's cluster time as ``(seconds, increment)`` ((0, 0) if absent)."""
    cluster = raw.get("clusterTime")
    seconds, inc = getattr(cluster, "time", None), getattr(cluster, "inc", None)
    if isinstance(seconds, int) and isinstance(inc, int):
        return (seconds, inc)
    return (0, 0)


def normalise(raw: Mapping[str, Any]) -> Event | None:
    """Turn a raw change-stream event into an :class:`Event` (None for other ops).

    For an update with a pre-image the post-image is computed exactly from the
    update description; otherwise the looked-up ``fullDocument`` is used.
    """
    op = raw.get("operationType")
    token = raw["_id"]["_data"]
    ns = raw.get("ns") or {}
    collection = ns.get("coll", "")
    ts = _ts(raw)
    ct = cluster_time(raw)
    if op not in DOCUMENT_OPS:
        if op in STREAM_OPS:
            return Event(id=token, op=str(op), collection=collection, key=None, document=None,
                         before=None, changed=None, ts=ts, body="", ct=ct)
        return None
    key = key_to_json((raw.get("documentKey") or {}).get("_id"))
    before = raw.get("fullDocumentBeforeChange")
    document = raw.get("fullDocument")
    changed: frozenset[str] | None = None
    updated_json: str | None = None
    removed: list[str] | None = None
    if op == "update":
        description = raw.get("updateDescription") or {}
        updated = description.get("updatedFields") or {}
        removed = list(description.get("removedFields") or ())
        truncated = [t["field"] for t in description.get("truncatedArrays") or ()]
        changed = frozenset(p.split(".", 1)[0] for p in (*updated, *removed, *truncated))
        updated_json = dumps_str(updated)
        if before is not None:
            with contextlib.suppress(ValueError):  # else keep the looked-up document
                document = apply_update(before, description)
    elif op == "delete":
        document = None
    body = protocol.encode_event_body(
        id=token,
        collection=collection,
        key=key,
        document=None if document is None else dumps_str(document),
        updated=updated_json,
        removed=removed,
        ts=ts,
    )
    return Event(id=token, op=op, collection=collection, key=key, document=document,
                 before=before, changed=changed, ts=ts, body=body, ct=ct)

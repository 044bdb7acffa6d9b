"""The exception tree: every error the service reports to a client, with its HTTP status.

Free of any web framework: :mod:`realtime.api.problems` renders these as RFC
9457 ``application/problem+json``.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadRequest",
    "Conflict",
    "DatabaseUnavailable",
    "DuplicateKey",
    "HistoryLost",
    "InvalidDocument",
    "NotFound",
    "PayloadTooLarge",
    "PreconditionFailed",
    "RealtimeError",
    "UnsupportedMediaType",
]

class RealtimeError(Exception):
    """Base of every error the service reports to a client."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def headers(self) -> dict[str, str] | None:
        """Headers of the error's HTTP answer (none unless a subclass says)."""
        return None


class BadRequest(RealtimeError):
    """Malformed JSON, a bad filter, sort, cursor or parameter."""

    status = 400
    slug = "bad-request"


class NotFound(RealtimeError):
    """No such document (or route)."""

    status = 404
    slug = "not-found"


class Conflict(RealtimeError):
    """The write conflicts with existing data."""

    status = 409
    slug = "conflict"


class DuplicateKey(Conflict):
    """A document with this ``_id`` already exists."""

    slug = "duplicate-key"


class PreconditionFailed(RealtimeError):
    """``If-Match`` did not match the document's current version."""

    status = 412
    slug = "precondition-failed"


class PayloadTooLarge(RealtimeError):
    """The request body is over the configured limit."""

    status = 413
    slug = "payload-too-large"


class UnsupportedMediaType(RealtimeError):
    """The request body is not JSON."""

    status = 415
    slug = "unsupported-media-type"


class InvalidDocument(RealtimeError):
    """Well-formed JSON that is not an acceptable document."""

    status = 422
    slug = "invalid-document"


class DatabaseUnavailable(RealtimeError):
    """The database cannot be reached; the client should retry later."""

    status = 503
    slug = "database-unavailable"


class HistoryLost(RealtimeError):
    """A resume token is no longer in the oplog (``ChangeStreamHistoryLost``)."""

    status = 410
    slug = "history-lost"

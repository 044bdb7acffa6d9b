"""What a client may open and send: rates, connections, origins.

- :class:`RateLimiter`: a token bucket per credential for REST requests
  (``REALTIME_RATE_LIMIT_PER_SECOND`` sustained, ``REALTIME_RATE_LIMIT_BURST``
  at once); over it, 429 with ``Retry-After``.
- :class:`Limits`: the per-app state: the rate limiter, WebSocket connections
  per client address (``REALTIME_MAX_CONNECTIONS_PER_CLIENT``; over it, close
  1013), and the counters of everything refused (``/metrics``:
  ``realtime_security_rejections_total{reason}``).
- :func:`origin_allowed`: the WebSocket ``Origin`` allow-list (cross-site
  WebSocket hijacking; refused with close 1008). The server's own origin is
  always allowed, plus ``REALTIME_ALLOWED_ORIGINS``; clients that send no
  ``Origin`` (not browsers) are not affected.
- The headers every HTTP response carries and the DNS-rebinding guard are
  :mod:`realtime.api.headers`.

Body size (413), frame size (1009), subscriptions per connection and filter
depth/size are enforced where they are parsed (:mod:`realtime.api.rest`,
the uvicorn protocol, :mod:`realtime.api.ws`, :mod:`realtime.query`).
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from typing import Final
from urllib.parse import urlsplit

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from realtime.auth import is_loopback
from realtime.config import Settings
from realtime.errors import RealtimeError

__all__ = [
    "ConnectionSlot",
    "Limits",
    "RateLimiter",
    "SecurityCollector",
    "TokenBucket",
    "TooManyRequests",
    "normalize_origin",
    "origin_allowed",
]

#: Most rate-limit buckets kept; the least recently used go first (a full bucket).
MAX_BUCKETS: Final = 100_000



class TooManyRequests(RealtimeError):
    """Over the request rate of the credential (429 with ``Retry-After``)."""

    status = 429
    slug = "rate-limited"

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        """``Retry-After``: when the bucket holds a token again."""
        return {"Retry-After": retry_after_header(self.retry_after)}


# --------------------------------------------------------------------- buckets


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; a request takes one."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 if there was one, else the seconds until there is."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One :class:`TokenBucket` per key, at most ``max_keys`` of them (LRU)."""

    def __init__(self, rate: float, burst: int, *, max_keys: int = MAX_BUCKETS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """False when the rate is 0 (no limit)."""
        return self.rate > 0

    def check(self, key: str) -> float:
        """Charge ``key`` one request: 0.0 if allowed, else seconds to wait."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)


# ---------------------------------------------------------------------- limits


class Limits:
    """The per-app limits state (created by :func:`realtime.app.create_app`)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        #: Per-client limits apply only with authentication on: mode ``none`` is
        #: the loopback development mode (and the benchmarks').
        self.per_client = settings.auth != "none"
        self.rate = RateLimiter(settings.rate_limit_per_second if self.per_client else 0.0,
                                settings.rate_limit_burst)
        self._connections: Counter[str] = Counter()
        #: Requests and connections refused, by reason.
        self.rejections: Counter[str] = Counter()

    def reject(self, reason: str) -> None:
        """Count one refusal (``unauthenticated``, ``forbidden``, ``origin``, ...)."""
        self.rejections[reason] += 1

    def charge(self, key: str) -> None:
        """Charge one REST request to ``key``.

        Raises:
            TooManyRequests: over the rate (the caller answers 429).
        """
        wait = self.rate.check(key)
        if wait > 0:
            self.reject("rate_limited")
            raise TooManyRequests(
                f"over {self.rate.rate:g} requests per second; retry later",
                retry_after=wait)

    def connection(self, address: str) -> ConnectionSlot:
        """Hold one connection slot of ``address`` (``with``); the block gets False if over
        the limit."""
        return ConnectionSlot(self, address)

    def _admit(self, address: str) -> bool:
        limit = self._settings.max_connections_per_client
        if not self.per_client or limit == 0:
            return True
        if self._connections[address] >= limit:
            self.reject("connections")
            return False
        self._connections[address] += 1
        return True

    def _release(self, address: str) -> None:
        if address in self._connections:
            self._connections[address] -= 1
            if self._connections[address] <= 0:
                del self._connections[address]

    def connections_of(self, address: str) -> int:
        """Open (counted) connections of ``address``."""
        return self._connections.get(address, 0)


class ConnectionSlot:
    """:meth:`Limits.connection`: a context manager held for a WebSocket's whole life.

    A slotted object, not a ``@contextmanager`` generator: thousands stay open at
    once, and a generator's frame and wrapper cost six times the memory.
    """

    __slots__ = ("_address", "_admitted", "_limits")

    def __init__(self, limits: Limits, address: str) -> None:
        self._limits = limits
        self._address = address
        self._admitted = False

    def __enter__(self) -> bool:
        self._admitted = self._limits._admit(self._address)
        return self._admitted

    def __exit__(self, *exc: object) -> None:
        if self._admitted:
            self._admitted = False
            self._limits._release(self._address)


class SecurityCollector(Collector):
    """``realtime_security_rejections_total{reason}`` from :attr:`Limits.rejections`."""

    REASONS: Final = ("unauthenticated", "forbidden", "rate_limited", "connections",
                      "origin", "host")

    def __init__(self, limits: Limits) -> None:
        self._limits = limits

    def collect(self) -> Iterable[Metric]:
        """Yield the family (called on each scrape)."""
        family = CounterMetricFamily(
            "realtime_security_rejections",
            "Requests and WebSocket connections refused: unauthenticated (401/4401), "
            "forbidden (403/4403/error), rate_limited (429), connections (1013), "
            "origin (1008), host (403, DNS rebinding guard).",
            labels=["reason"])
        counts = self._limits.rejections
        for reason in sorted({*self.REASONS, *counts}):
            family.add_metric([reason], counts.get(reason, 0))
        yield family


# --------------------------------------------------------------------- origins


def _authority(scheme: str, host: str, port: int | None) -> str:
    default = 443 if scheme in ("https", "wss") else 80
    return host if port is None or port == default else f"{host}:{port}"


def _split_host(value: str, scheme: str) -> str | None:
    """``host[:port]`` of a Host header, normalized (default port dropped)."""
    try:
        parts = urlsplit(f"//{value.strip().lower()}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    hostname = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return _authority(scheme, hostname, port)


def normalize_origin(origin: str) -> tuple[str, str, str] | None:
    """``(scheme, authority, hostname)`` of an Origin value, or None if malformed."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return None
    hostname = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return parts.scheme, _authority(parts.scheme, hostname, port), parts.hostname


def origin_allowed(origin: str | None, host: str | None, settings: Settings) -> bool:
    """True if a WebSocket (or browser request) from ``origin`` may proceed.

    No ``Origin`` (not a browser): allowed. A listed origin
    (``REALTIME_ALLOWED_ORIGINS``, ``*`` for any): allowed. The server's own
    origin (the ``Origin`` names the ``Host`` the request was sent to):
    allowed, except in mode ``none`` (without ``insecure``) where the host must
    also be a loopback name, so a DNS-rebinding page cannot pass as "own".
    Anything else, including ``null``: refused.
    """
    if origin is None:
        return True
    allowed = settings.allowed_origins or []
    if "*" in allowed:
        return True
    parsed = normalize_origin(origin)
    if parsed is None:
        return False
    scheme, authority, hostname = parsed
    for entry in allowed:
        listed = normalize_origin(entry)
        if listed is not None and listed[:2] == (scheme, authority):
            return True
    if host is None:
        return False
    if _split_host(host, scheme) != authority:
        return False
    return not settings.loopback_only or is_loopback(hostname)


def retry_after_header(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))

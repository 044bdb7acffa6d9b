"""Prometheus metrics (``/metrics``), read from the service's own counters at scrape time.

Nothing here sits on the fan-out path. The hub and the feed already count what
matters (:attr:`Hub.events`, :attr:`Hub.slow_consumers`, :attr:`Outbox.sent`,
:attr:`Feed.restarts`, ...); :class:`ServiceCollector` turns them into metric
families when Prometheus scrapes. The only metric observed per request is the
REST latency histogram, observed by :meth:`Metrics.observe_request`, which
:class:`realtime.logs.RequestIdMiddleware` calls at the end of each HTTP request
(WebSocket traffic passes straight through).

The :class:`~prometheus_client.CollectorRegistry` is created by
:func:`realtime.app.create_app` (never prometheus_client's global ``REGISTRY``),
so several apps in one process (tests) each have their own metrics.

Metric names (all prefixed ``realtime_``; docs/operations.md has the full table):
``info{version,driver}``, ``websocket_connections``, ``subscriptions``,
``send_backlog_messages``, ``feed_events_total``, ``messages_sent_total``,
``slow_consumer_closes_total``, ``feed_restarts_total``, ``feed_catchups_total``,
``feed_ring_catchups_total``, ``ring_warm_events``, ``feed_up``, ``feed_state{state}``,
``feed_lag_seconds``,
``feed_last_event_timestamp_seconds``, ``messages_dropped_total`` and the
histograms ``delivery_seconds`` and ``http_request_duration_seconds{method,route,status}``,
plus the standard ``process_*`` and ``python_*`` families.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from realtime import __version__

if TYPE_CHECKING:
    from starlette.types import Scope

    from realtime.hub import Hub
    from realtime.outbox import Outbox
    from realtime.relay import Relay
    from realtime.services import Services
    from realtime.sources.broker import BrokerSource

__all__ = ["CONTENT_TYPE", "Metrics", "RelayCollector", "ServiceCollector", "relay_registry"]

#: The ``Content-Type`` of :meth:`Metrics.render` (Prometheus text format 0.0.4).
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: REST latency buckets, seconds: 1 ms to 10 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0)

#: The ``route`` label of a request no route matched (bounded label values).
UNMATCHED = "<unmatched>"


class ServiceCollector(Collector):
    """Metric families computed from the hub and feed counters at scrape time.

    ``services`` returns the lifespan's :class:`~realtime.services.Services`, or None
    before start-up (then only ``realtime_info`` is reported).

    ``messages_sent_total`` adds up :attr:`Outbox.sent` of open connections
    and :attr:`Hub.sent_closed` (the final counts of closed ones), so it is exact.
    """

    def __init__(self, services: Callable[[], Services | None], driver: str) -> None:
        self._services = services
        self._driver = driver

    @staticmethod
    def _messages_sent(hub: Hub, connections: Iterable[Outbox]) -> int:
        return hub.sent_closed + sum(conn.sent for conn in connections)

    def collect(self) -> Iterable[Metric]:
        """Yield every family (called by the registry on each scrape)."""
        info = GaugeMetricFamily("realtime_info", "Build and driver of this process.",
                                 labels=["version", "driver"])
        info.add_metric([__version__, self._driver], 1)
        yield info
        services = self._services()
        if services is None:
            return
        hub, feed = services.hub, services.feed
        connections = list(hub.connections)
        yield GaugeMetricFamily("realtime_websocket_connections",
                                "Open WebSocket connections.", value=len(connections))
        yield GaugeMetricFamily("realtime_subscriptions",
                                "Live subscriptions over all connections.",
                                value=hub.subscription_count())
        yield GaugeMetricFamily("realtime_send_backlog_messages",
                                "Messages queued for connections whose transport is paused.",
                                value=sum(conn.backlog for conn in connections))
        events = CounterMetricFamily(
            "realtime_feed_events",
            "Change events this process ingested, by source: its own change stream, or "
            "the relay's JetStream stream (an edge).", labels=["source"])
        events.add_metric([feed.source], hub.events)
        yield events
        if feed.source == "broker":  # an edge: its fan-in, subject by subject
            edge = cast("BrokerSource", feed)
            subjects = edge.subject_events
            per_subject = CounterMetricFamily(
                "realtime_broker_subject_events",
                "Change events an edge read from JetStream, by subject rt.<collection>.<tenant>.",
                labels=["subject"])
            for subject, count in sorted(subjects.items()):
                per_subject.add_metric([subject], count)
            yield per_subject
            consumed = GaugeMetricFamily(
                "realtime_broker_subjects",
                "Subject patterns an edge consumes now, with their subscriptions.",
                labels=["pattern"])
            for pattern in edge.interest.patterns():
                consumed.add_metric([pattern], edge.interest.count(pattern))
            yield consumed
            yield CounterMetricFamily("realtime_broker_gaps",
                                      "Gaps in the stream seen (and re-read from JetStream).",
                                      value=edge.gaps)
            replays = getattr(services.history, "replays", 0)
            yield CounterMetricFamily("realtime_broker_replays",
                                      "Resumes beyond the ring served by a JetStream replay.",
                                      value=replays)
        yield CounterMetricFamily("realtime_messages_sent",
                                  "Messages written to WebSocket connections.",
                                  value=self._messages_sent(hub, connections))
        yield CounterMetricFamily("realtime_slow_consumer_closes",
                                  "Connections closed with 4408 (slow consumer).",
                                  value=hub.slow_consumers)
        yield CounterMetricFamily("realtime_feed_restarts",
                                  "Change stream retries and restarts.", value=feed.restarts)
        yield CounterMetricFamily("realtime_feed_catchups",
                                  "Resumes served by a catch-up change stream.",
                                  value=services.history.catchups)
        yield CounterMetricFamily("realtime_feed_ring_catchups",
                                  "Resumes replayed from the ring, paced (too far back to "
                                  "send at once).", value=services.history.ring_catchups)
        yield GaugeMetricFamily("realtime_ring_warm_events",
                                "Events the feed read into the ring at start-up.",
                                value=services.hub.warm_events)
        yield GaugeMetricFamily("realtime_feed_up", "1 while the change stream is live.",
                                value=1 if feed.live else 0)
        state = GaugeMetricFamily("realtime_feed_state", "1 for the feed's current state.",
                                  labels=["state"])
        for each in type(feed.state):  # every FeedState, the current one 1
            state.add_metric([each.value], 1 if feed.state is each else 0)
        yield state
        lag = feed.lag
        if lag is not None:
            yield GaugeMetricFamily(
                "realtime_feed_lag_seconds",
                "Seconds between the last event's commit and now (grows while idle).",
                value=lag)
        if feed.last_event_wall is not None:
            yield GaugeMetricFamily("realtime_feed_last_event_timestamp_seconds",
                                    "Commit time (Unix) of the last change event.",
                                    value=feed.last_event_wall)
        yield CounterMetricFamily("realtime_messages_dropped",
                                  "Messages discarded unsent when their connection closed.",
                                  value=hub.dropped + sum(conn.dropped for conn in connections))
        delivery = feed.publish_latency
        yield HistogramMetricFamily(
            "realtime_delivery_seconds",
            "Commit of a change (its wallTime) to its fan-out (sent to writable subscribers).",
            buckets=delivery.cumulative(), sum_value=delivery.sum)


class RelayCollector(Collector):
    """The metric families of ``realtime relay`` (served by ``--metrics-port``)."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def collect(self) -> Iterable[Metric]:
        """Yield every family (called by the registry on each scrape)."""
        relay = self._relay
        info = GaugeMetricFamily("realtime_info", "Build of this process.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        role = GaugeMetricFamily("realtime_relay_role", "1 for the relay's current role.",
                                 labels=["role"])
        for each in type(relay.role):
            role.add_metric([each.value], 1 if relay.role is each else 0)
        yield role
        yield CounterMetricFamily("realtime_relay_published",
                                  "Changes appended to the stream by this relay.",
                                  value=relay.published)
        yield CounterMetricFamily("realtime_relay_ticks", "Ticks appended by this relay.",
                                  value=relay.ticks)
        yield CounterMetricFamily("realtime_relay_takeovers",
                                  "Times this relay became the active one.",
                                  value=relay.takeovers)
        yield CounterMetricFamily("realtime_relay_fenced",
                                  "Times this relay was fenced out by another one.",
                                  value=relay.fenced)
        lag = relay.lag
        yield HistogramMetricFamily(
            "realtime_relay_lag_seconds",
            "Commit of a change (its wallTime) to its acknowledgement by JetStream.",
            buckets=lag.cumulative(), sum_value=lag.sum)


def relay_registry(relay: Relay) -> CollectorRegistry:
    """A registry with the relay's families and the process metrics."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(RelayCollector(relay))
    return registry


class Metrics:
    """One app's registry: the service collector, REST latency, process metrics."""

    def __init__(self, services: Callable[[], Services | None], *, driver: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(ServiceCollector(services, driver))
        #: REST latency by method, route template and status.
        self.requests = Histogram(
            "realtime_http_request_duration_seconds",
            "HTTP request latency by method, route template and status.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe_request(self, scope: Scope, status: int, seconds: float) -> None:
        """Count one HTTP request in the REST latency histogram.

        The ``route`` label is the matched route's path template (``/api/collections/
        {collection}/documents/{id}``), never the raw path, so label values stay
        bounded; a request no route matched is labelled ``<unmatched>``.
        """
        route: Any = scope.get("route")
        template = getattr(route, "path", None) or UNMATCHED
        self.requests.labels(scope["method"], template, str(status)).observe(seconds)

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)

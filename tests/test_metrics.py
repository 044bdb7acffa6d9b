"""/metrics (realtime.metrics) and request ids / JSON logs (realtime.logs)."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from realtime.app import create_app
from realtime.embedded import EmbeddedServer, free_port
from realtime.histogram import LatencyBuckets
from realtime.logs import JsonFormatter, RequestIdFilter, configure_logging
from realtime.metrics import UNMATCHED, ServiceCollector
from realtime.sources.changestream import FeedState
from tests.helpers import LiveServer, until, ws_client

DOCS = "/api/collections/{}/documents"
FAMILIES = {
    "realtime_info", "realtime_websocket_connections", "realtime_subscriptions",
    "realtime_send_backlog_messages", "realtime_feed_events", "realtime_messages_sent",
    "realtime_slow_consumer_closes", "realtime_feed_restarts", "realtime_feed_catchups",
    "realtime_feed_ring_catchups", "realtime_ring_warm_events", "realtime_feed_up",
    "realtime_feed_state", "realtime_http_request_duration_seconds",
    "realtime_messages_dropped", "realtime_delivery_seconds", "process_resident_memory_bytes",
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, keyed by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


async def test_metrics_page_has_every_family(client: httpx.AsyncClient) -> None:
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    names = {f.name for f in text_string_to_metric_families(r.text)}
    assert names >= FAMILIES
    assert value(r.text, "realtime_feed_up") == 1
    assert value(r.text, "realtime_feed_state", state="live") == 1
    assert value(r.text, "realtime_feed_state", state="retrying") == 0


async def test_registry_is_per_app(client: httpx.AsyncClient) -> None:
    """No import-time globals: each app has its own registry, not prometheus' default."""
    first, second = create_app(), create_app()
    assert first.state.metrics.registry is not second.state.metrics.registry
    assert REGISTRY.get_sample_value("realtime_feed_events_total") is None


async def test_rest_latency_by_route_template(client: httpx.AsyncClient) -> None:
    for collection in ("a1", "b2"):
        r = await client.post(DOCS.format(collection), json={"x": 1})
        assert r.status_code == 201
    r = await client.get(DOCS.format("a1") + f"/{uuid.uuid4().hex}")
    assert r.status_code == 404
    await client.get("/no/such/path")
    text = (await client.get("/metrics")).text
    template = "/api/collections/{collection}/documents"
    count = "realtime_http_request_duration_seconds_count"
    assert value(text, count, method="POST", route=template, status="201") == 2
    one = [labels for (name, labels), v in samples(text).items()
           if name == count and dict(labels)["route"].startswith(template + "/{id")]
    assert [dict(labels)["status"] for labels in one] == ["404"]
    assert value(text, count, method="GET", route=UNMATCHED, status="404") == 1
    # Raw paths never become label values.
    assert "/a1/" not in text
    assert "/no/such/path" not in text


async def test_websocket_activity_is_counted(live: LiveServer, http: httpx.AsyncClient) -> None:
    async def scrape() -> str:
        r = await http.get("/metrics")
        assert r.status_code == 200, r.text
        return r.text

    before = await scrape()
    sent_before = value(before, "realtime_messages_sent_total")
    events_before = value(before, "realtime_feed_events_total", source="changestream")
    async with ws_client(live.ws_url) as ws:
        await ws.subscribe("s1", "orders")
        await ws.subscribe("s2", "orders", filter={"n": {"$gte": 2}})
        text = await scrape()
        assert value(text, "realtime_websocket_connections") == 1
        assert value(text, "realtime_subscriptions") == 2
        for n in range(3):
            assert (await http.post(DOCS.format("orders"), json={"n": n})).status_code == 201
        changes = [await ws.expect("change") for _ in range(4)]  # 3 for s1, 1 for s2
        assert sorted(c["sub"] for c in changes) == ["s1", "s1", "s1", "s2"]
        text = await scrape()
        assert value(text, "realtime_feed_events_total",
                     source="changestream") >= events_before + 3
        sent_open = value(text, "realtime_messages_sent_total")
        assert sent_open >= sent_before + 4
        # every published event's commit → fan-out time is observed
        assert (value(text, "realtime_delivery_seconds_count")
                >= value(before, "realtime_delivery_seconds_count") + 3)
    await until(lambda: not live.app.state.services.hub.connections, 10, "connection gone")
    text = await scrape()
    assert value(text, "realtime_websocket_connections") == 0
    assert value(text, "realtime_subscriptions") == 0
    # A counter never goes down when its connections close.
    assert value(text, "realtime_messages_sent_total") >= sent_open


class FakeConnection:
    """What the collector reads of a :class:`realtime.outbox.Outbox`."""

    def __init__(self, sent: int, backlog: int, dropped: int = 0) -> None:
        self.sent = sent
        self.backlog = backlog
        self.dropped = dropped


def _fake_services(**hub: Any) -> SimpleNamespace:
    conns = hub.pop("connections", set())
    return SimpleNamespace(
        hub=SimpleNamespace(connections=conns, events=hub.get("events", 0),
                            slow_consumers=hub.get("slow", 0), sent_closed=0, dropped=0,
                            subscription_count=lambda: 3, warm_events=11),
        history=SimpleNamespace(catchups=5, ring_catchups=6),
        feed=SimpleNamespace(source="changestream", restarts=4, lag=1.5, last_event_wall=1e9,
                             live=False, state=FeedState.RETRYING,
                             publish_latency=LatencyBuckets()),
    )


def test_collector_reads_the_counters() -> None:
    """Scrape-time mapping of hub/feed counters, without a server."""
    a = FakeConnection(sent=10, backlog=2)
    b = FakeConnection(sent=5, backlog=0)
    services: Any = _fake_services(connections={a, b}, events=7, slow=1)
    collector = ServiceCollector(lambda: services, "pymongo")

    def collect() -> dict[str, float]:
        return {f"{s.name}{s.labels or ''}": s.value
                for family in collector.collect() for s in family.samples}

    got = collect()
    assert got["realtime_info{'version': '0.1.0', 'driver': 'pymongo'}"] == 1
    assert got["realtime_websocket_connections"] == 2
    assert got["realtime_subscriptions"] == 3
    assert got["realtime_send_backlog_messages"] == 2
    assert got["realtime_feed_events_total{'source': 'changestream'}"] == 7
    assert got["realtime_messages_sent_total"] == 15
    assert got["realtime_slow_consumer_closes_total"] == 1
    assert got["realtime_feed_restarts_total"] == 4
    assert got["realtime_feed_catchups_total"] == 5
    assert got["realtime_feed_ring_catchups_total"] == 6
    assert got["realtime_ring_warm_events"] == 11
    assert got["realtime_feed_up"] == 0
    assert got["realtime_feed_state{'state': 'retrying'}"] == 1
    assert got["realtime_feed_lag_seconds"] == 1.5
    # b closes after sending 3 more: the hub keeps its final count.
    b.sent = 8
    services.hub.connections = {a}
    services.hub.sent_closed += b.sent
    assert collect()["realtime_messages_sent_total"] == 18
    services.hub.connections = set()
    services.hub.sent_closed += a.sent
    assert collect()["realtime_messages_sent_total"] == 18


def test_collector_before_start_up() -> None:
    collector = ServiceCollector(lambda: None, "motor")
    assert [f.name for f in collector.collect()] == ["realtime_info"]


# ------------------------------------------------------------- request ids, JSON logs


@pytest.fixture
def access_log() -> Iterator[io.StringIO]:
    """JSON lines of the ``realtime.access`` logger, as ``--log-format json`` writes them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("realtime.access")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


async def test_request_id_in_and_out(client: httpx.AsyncClient, access_log: io.StringIO) -> None:
    r = await client.post(DOCS.format("orders"), json={"n": 1},
                          headers={"X-Request-ID": "req-42.a:b"})
    assert r.headers["x-request-id"] == "req-42.a:b"
    generated = (await client.get("/healthz")).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    # An id that is too long or carries odd characters is replaced, not echoed.
    for bad in ("x" * 200, "a b", "<script>"):
        echoed = (await client.get("/healthz", headers={"X-Request-ID": bad})).headers
        assert re.fullmatch(r"[0-9a-f]{32}", echoed["x-request-id"])
    # Problem responses carry it too.
    r = await client.get(DOCS.format("orders") + "/nope", headers={"X-Request-ID": "r404"})
    assert r.status_code == 404
    assert r.headers["x-request-id"] == "r404"

    records = [orjson.loads(line) for line in access_log.getvalue().splitlines()]
    post = next(rec for rec in records if rec["method"] == "POST")
    assert post["request_id"] == "req-42.a:b"
    assert post["status"] == 201
    assert post["path"] == "/api/collections/orders/documents"
    assert post["logger"] == "realtime.access"
    assert post["level"] == "info"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", post["ts"])
    assert post["duration_ms"] >= 0
    # Probes are logged at DEBUG only.
    assert not [rec for rec in records if rec["path"] == "/healthz"]


def test_json_formatter_exceptions_and_extras() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("t").makeRecord("t", logging.ERROR, __file__, 1, "x %s",
                                                   ("y",), sys.exc_info(), extra={"k": {1}})
    body = orjson.loads(formatter.format(record))
    assert body["message"] == "x y"
    assert body["level"] == "error"
    assert "ValueError: boom" in body["exc"]
    assert body["k"] == "{1}"  # not JSON: rendered as a string
    assert "request_id" not in body


def test_configure_logging_replaces_handlers() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("warning", "json")
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        assert root.level == logging.WARNING
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


async def test_serve_log_format_json(mongo: EmbeddedServer, tmp_path: Any) -> None:
    """`realtime serve --log-format json`: every stderr line is a JSON object."""
    port = free_port()
    env = {"REALTIME_MONGODB_URI": mongo.uri, "REALTIME_DATABASE": f"j_{uuid.uuid4().hex[:8]}",
           "REALTIME_PORT": str(port), "PATH": "/usr/bin:/bin"}
    env.update({k: v for k, v in __import__("os").environ.items()
                if k in ("REALTIME_DRIVER", "PYTHONPATH", "VIRTUAL_ENV")})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "realtime", "serve", "--log-format", "json",
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stderr is not None
        url = f"http://127.0.0.1:{port}"
        lines: list[dict[str, Any]] = []
        async with asyncio.timeout(30):
            while not any(rec.get("message") == "change stream live" for rec in lines):
                lines.append(orjson.loads(await proc.stderr.readline()))
            async with httpx.AsyncClient(base_url=url) as http:
                r = await http.post(DOCS.format("orders"), json={"a": 1},
                                    headers={"X-Request-ID": "from-test"})
                assert r.status_code == 201
            while True:
                rec = orjson.loads(await proc.stderr.readline())
                if rec.get("logger") == "realtime.access":
                    break
        assert rec["request_id"] == "from-test"
        assert rec["status"] == 201
    finally:
        proc.terminate()
        async with asyncio.timeout(15):
            assert await proc.wait() == 0


def test_collector_exports_drops_and_delivery_latency() -> None:
    """sent_closed / dropped on the hub and publish_latency on the feed."""
    services: Any = _fake_services(connections={FakeConnection(sent=4, backlog=0)})
    services.hub.sent_closed = 100
    services.hub.dropped = 7
    services.feed.publish_latency = LatencyBuckets((0.001, 0.01))
    for seconds in (0.0005, 0.002, 0.003, 5.0):
        services.feed.publish_latency.observe(seconds)
    collector = ServiceCollector(lambda: services, "motor")
    got = {f"{s.name}{s.labels or ''}": s.value
           for family in collector.collect() for s in family.samples}
    assert got["realtime_messages_sent_total"] == 104
    assert got["realtime_messages_dropped_total"] == 7
    assert got["realtime_delivery_seconds_bucket{'le': '0.001'}"] == 1
    assert got["realtime_delivery_seconds_bucket{'le': '0.01'}"] == 3
    assert got["realtime_delivery_seconds_bucket{'le': '+Inf'}"] == 4
    assert got["realtime_delivery_seconds_count"] == 4
    assert got["realtime_delivery_seconds_sum"] == pytest.approx(5.0055)

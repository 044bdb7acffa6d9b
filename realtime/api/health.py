"""``/healthz`` (process liveness), ``/readyz`` (database and feed), ``/metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from realtime.api.deps import DbDep, ServicesDep, SettingsDep
from realtime.codec import dumps
from realtime.errors import DatabaseUnavailable
from realtime.metrics import CONTENT_TYPE, Metrics

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Process liveness")
async def healthz() -> dict[str, str]:
    """Always 200 while the process serves requests."""
    return {"status": "ok"}


def _reason(checks: dict[str, Any]) -> str:
    """Why the server is not ready, in one sentence for people (no exception names)."""
    embedded = checks.get("embedded")
    if embedded is not None and embedded["status"] != "running":
        exited = embedded.get("last_exit") or "the embedded database is not running"
        return f"{exited}; it is being restarted"
    database = checks["database"]
    if database["status"] != "ok":
        return str(database["reason"])
    feed = checks["feed"]
    why = feed.get("last_error")
    if feed["status"] == "starting":
        return "live updates are starting: the change stream is not open yet"
    return f"live updates are {feed['status']}" + (f": {why}" if why else "")


@router.get(
    "/readyz",
    summary="Readiness: the database answers and the feed is live",
    responses={503: {"description": "Not ready; the body says why."}},
)
async def readyz(db: DbDep, settings: SettingsDep, services: ServicesDep) -> Response:
    """200 when the database answers ``ping`` and the feed is live; 503 and why otherwise.

    The body's ``checks`` hold the database, the feed (its ``status`` is the
    feed's state; ``last_error`` in words) and, when this server runs it, the
    embedded database (``pid``, ``restarts``, ``last_exit``); when not ready,
    ``reason`` is one sentence saying why.
    """
    checks: dict[str, Any] = {}
    ready = True
    try:
        await db.ping()
        checks["database"] = {"status": "ok"}
    except DatabaseUnavailable as exc:
        ready = False
        checks["database"] = {"status": "unavailable", "reason": exc.detail}
    feed = services.feed
    checks["feed"] = {"status": feed.state.value, "restarts": feed.restarts,
                      "lag_seconds": feed.lag, "catchups": services.history.catchups,
                      "ring_catchups": services.history.ring_catchups,
                      "warming": services.hub.is_warming}
    if feed.last_error:
        checks["feed"]["last_error"] = feed.last_error
    if feed.retrying_since is not None:
        checks["feed"]["retrying_since"] = feed.retrying_since
    if not feed.live:
        ready = False
    embedded = services.embedded
    if embedded is not None:
        running = embedded.running
        checks["embedded"] = {"status": "running" if running else "restarting",
                              "pid": embedded.pid if running else None,
                              "restarts": embedded.restarts}
        if embedded.last_exit is not None:
            checks["embedded"]["last_exit"] = embedded.last_exit
    body: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": checks}
    if not ready:
        body["reason"] = _reason(checks)
    headers = None if ready else {"Retry-After": str(settings.retry_after_seconds)}
    return Response(dumps(body), status_code=200 if ready else 503,
                    media_type="application/json", headers=headers)


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}}},
)
async def metrics(request: Request) -> Response:
    """Connections, subscriptions, feed counters and REST latency in Prometheus text."""
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE)

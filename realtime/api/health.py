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


@router.get(
    "/readyz",
    summary="Readiness: the database answers and the feed is live",
    responses={503: {"description": "Not ready; the body says why."}},
)
async def readyz(db: DbDep, settings: SettingsDep, services: ServicesDep) -> Response:
    """200 when the database answers ``ping`` and the feed is live; 503 and why otherwise."""
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
                      "lag_seconds": feed.lag, "catchups": services.history.catchups}
    if feed.last_error:
        checks["feed"]["last_error"] = feed.last_error
    if feed.retrying_since is not None:
        checks["feed"]["retrying_since"] = feed.retrying_since
    if not feed.live:
        ready = False
    body = {"status": "ready" if ready else "not ready", "checks": checks}
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

"""``create_app(settings)``: the ASGI application, its routes and middlewares.

Nothing is created at import time: the lifespan enters
:func:`realtime.services.running`, which creates and stops every resource;
routes reach them through :mod:`realtime.api.deps`.

The app is a :class:`RealtimeApp`: FastAPI, except that a WebSocket for
``/ws`` goes straight to :func:`realtime.api.ws.serve_websocket`, before the
router and the middleware stack. Every middleware but the request id passes
WebSockets through untouched, yet a WebSocket holds what the stack allocated
(coroutine frames, exit stacks, wrappers) for as long as it stays open:
measured with ``tracemalloc``, 13 KB of the 30 KB an idle subscriber cost. The
request id and the proxy headers are applied without a frame of their own.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request

from realtime import __version__, _compat
from realtime.api import asyncapi, health, rest, ws
from realtime.api.deps import declare_security
from realtime.api.headers import SecurityHeadersMiddleware, docs_csp
from realtime.api.problems import install_handlers
from realtime.auth import Authenticator, install_log_redaction
from realtime.config import Settings
from realtime.limits import Limits, SecurityCollector
from realtime.logs import RequestIdMiddleware
from realtime.metrics import Metrics
from realtime.services import running

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

__all__ = ["RealtimeApp", "create_app"]

log = logging.getLogger("realtime.app")

STATIC_DIR = Path(__file__).parent / "static"
#: Where the Swagger UI and ReDoc bundles are served (from the package fastapi-offline).
DOCS_ASSETS = "/docs/assets"
_DOCS_PACKAGE = ("fastapi_offline", "static")


class RealtimeApp(FastAPI):
    """FastAPI, with WebSockets for :data:`realtime.api.ws.WS_PATH` served by a bare ASGI route.

    Such a WebSocket skips the middleware stack and the router, and holds no
    frame of this class or of a middleware for its life: its request id is bound
    here, as :class:`~realtime.logs.RequestIdMiddleware` binds it for HTTP, and
    the proxy headers (:meth:`trust_forwarded`) are applied here for both. The
    other middlewares (errors, metrics, security headers, CORS, body limits) act
    on HTTP only, and the endpoint needs no routing or dependency. The route
    stays registered with the router too: a scope this shortcut does not take (a
    ``root_path``, FastAPI's telemetry on) is served there, the same way.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._request_ids = RequestIdMiddleware(ws.serve_websocket)
        self._forwarded: Callable[[MutableMapping[str, Any]], None] | None = None

    def trust_forwarded(self, trusted_hosts: list[str] | str) -> None:
        """Take ``X-Forwarded-For`` / ``-Proto`` from these hosts (uvicorn's rules).

        The server calls it instead of wrapping the app in uvicorn's middleware,
        which would hold a frame per open WebSocket.

        Raises:
            ImportError: uvicorn moved its proxy-headers middleware.
        """
        self._forwarded = _compat.proxy_headers(trusted_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a ``/ws`` WebSocket directly; anything else the FastAPI way."""
        await self.dispatch(scope, receive, send)

    def dispatch(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """:meth:`__call__` without a frame of its own: what serves ``scope``, to await.

        The server (:func:`realtime.server.make_server`) calls this one: an open
        WebSocket then holds no frame of the app's.
        """
        if self._forwarded is not None and scope["type"] != "lifespan":
            self._forwarded(scope)
        if (scope["type"] == "websocket" and scope["path"] == ws.WS_PATH
                and not scope.get("root_path") and not self.root_path
                and not self._telemetry_on()):
            scope["app"] = self
            # (Bound in this connection's own task and context: nothing to reset.)
            self._request_ids.bind(scope)
            return ws.serve_websocket(scope, receive, send)
        return super().__call__(scope, receive, send)

    def _telemetry_on(self) -> bool:
        """True if FastAPI's own OpenTelemetry instrumentation would trace requests."""
        return _compat.fastapi_telemetry_on(self)


def _install_security(app: FastAPI, settings: Settings, limits: Limits) -> None:
    """Security headers, CORS, metrics (401 and 429 carry their headers: RealtimeError)."""
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "If-Match", "Idempotency-Key",
                           "X-Request-ID"],
            expose_headers=["ETag", "Location", "Retry-After", "Idempotent-Replayed",
                            "X-Request-ID"],
        )
    app.add_middleware(SecurityHeadersMiddleware, settings=settings, limits=limits)


def _drop_null_parameters(schema: dict[str, Any]) -> None:
    """An optional parameter is absent, never ``null``: drop the null branch FastAPI adds."""
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            for parameter in operation.get("parameters", ()) if isinstance(operation, dict) \
                    else ():
                spec = parameter.get("schema", {})
                branches = spec.get("anyOf")
                if parameter.get("required") or not isinstance(branches, list):
                    continue
                kept = [b for b in branches if b != {"type": "null"}]
                if len(kept) == 1 and len(kept) < len(branches):
                    del spec["anyOf"]
                    spec.update(kept[0])


def _add_schemas(app: FastAPI, schemas: dict[str, Any]) -> None:
    """Add ``schemas`` to the OpenAPI components (the REST bodies refer to them), and the
    bearer credentials every ``/api`` operation takes."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
            declare_security(schema)
            _drop_null_parameters(schema)
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]


def _install_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), their scripts served from here, not a CDN.

    The bundles come from the package ``fastapi-offline``; if they are missing
    the pages load FastAPI's default CDN copies (a warning says so).
    """
    try:
        assets = StaticFiles(packages=[_DOCS_PACKAGE])
    except (AssertionError, AttributeError, ImportError, OSError, RuntimeError):
        log.warning("the Swagger UI and ReDoc bundles (package fastapi-offline) are missing: "
                    "/docs and /redoc load them from a CDN")
        local: dict[str, str] = {}
        redoc: dict[str, str] = {}
    else:
        app.mount(DOCS_ASSETS, assets, name="docs-assets")
        local = {"swagger_js_url": f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                 "swagger_css_url": f"{DOCS_ASSETS}/swagger-ui.css"}
        redoc = {"redoc_js_url": f"{DOCS_ASSETS}/redoc.standalone.js"}
    favicon = "/static/favicon.svg"

    def with_csp(page: HTMLResponse) -> HTMLResponse:
        if local:  # the CDN fallback loads from elsewhere: no CSP then
            page.headers["Content-Security-Policy"] = docs_csp(bytes(page.body))
        return page

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return with_csp(get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
            swagger_favicon_url=root + favicon,
            # No validator badge: it would fetch an image from validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
            **{key: root + url for key, url in local.items()}))

    @app.get("/redoc", include_in_schema=False)
    async def redoc_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return with_csp(get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
            redoc_favicon_url=root + favicon, with_google_fonts=False,
            **{key: root + url for key, url in redoc.items()}))


def create_app(settings: Settings | None = None) -> RealtimeApp:
    """Build the ASGI application; every resource is created in its lifespan.

    Raises:
        AuthConfigError: the security settings cannot work (e.g. a bad JWT key file).
    """
    settings = settings or Settings()
    auth = Authenticator(settings)
    limits = Limits(settings)
    install_log_redaction()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(settings, auth, limits) as services:
            app.state.services = services
            yield

    app = RealtimeApp(
        title="realtime",
        version=__version__,
        summary="MongoDB writes as live updates over WebSocket, with a REST API for writers.",
        lifespan=lifespan,
        docs_url=None,  # _install_docs: served from local assets
        redoc_url=None,
    )
    install_handlers(app, retry_after_seconds=settings.retry_after_seconds)
    app.state.metrics = Metrics(lambda: getattr(app.state, "services", None),
                                driver=settings.driver)
    app.state.metrics.registry.register(SecurityCollector(limits))
    _install_security(app, settings, limits)
    app.add_middleware(RequestIdMiddleware, on_response=app.state.metrics.observe_request)

    app.include_router(health.router)
    app.include_router(rest.router)
    app.include_router(ws.router)
    app.include_router(asyncapi.router)
    _add_schemas(app, rest.SCHEMAS)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _install_docs(app)

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    return app

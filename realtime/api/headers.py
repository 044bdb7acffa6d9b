"""The headers every HTTP response carries, and the DNS-rebinding guard.

:class:`SecurityHeadersMiddleware` adds a strict CSP for the dashboard,
``nosniff`` and no framing to every HTTP response and, in mode ``none``,
refuses a browser request that does not name a loopback host.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from realtime.api.problems import problem_response
from realtime.auth import is_loopback
from realtime.config import Settings
from realtime.limits import Limits, normalize_origin

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["API_CSP", "CLIENT_MODULE_PATH", "DASHBOARD_CSP", "DOCS_CSP",
           "SecurityHeadersMiddleware", "docs_csp"]

#: The dashboard's Content-Security-Policy: only this origin, no inline script or style.
DASHBOARD_CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
#: The REST API's JSON (``/api/``): nothing may load from it, nothing may frame it.
API_CSP: Final = "default-src 'none'; frame-ancestors 'none'"
#: The interactive API docs (``/docs``, ``/redoc``): scripts from this origin plus the
#: page's own inline script by hash (:func:`docs_csp`); ReDoc injects styles and runs
#: its search in a ``blob:`` worker. Nothing loads from elsewhere (ReDoc's footer logo
#: from its CDN is blocked).
DOCS_CSP: Final = (
    "default-src 'self'; script-src 'self'{hashes}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_INLINE_SCRIPT: Final = re.compile(rb"<script>(.*?)</script>", re.DOTALL)
_DASHBOARD_CSP_VALUE: Final = DASHBOARD_CSP.encode()
_API_CSP_VALUE: Final = API_CSP.encode()
_COMMON_HEADERS: Final = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
#: The one response any origin may load: the JavaScript client, an ES module that
#: pages elsewhere import from the server (``import ... from "https://host/static/realtime.js"``).
#: A module script is fetched with CORS, so it needs ``Access-Control-Allow-Origin``;
#: ``Cross-Origin-Resource-Policy: cross-origin`` lets no-cors loads (and pages with
#: ``Cross-Origin-Embedder-Policy``) have it too. It holds no data: the WebSocket and
#: the REST API keep their origin checks. Every other asset stays ``same-origin``.
CLIENT_MODULE_PATH: Final = "/static/realtime.js"
_CLIENT_MODULE_HEADERS: Final = (
    (b"cross-origin-resource-policy", b"cross-origin"),
    (b"access-control-allow-origin", b"*"),
)


def docs_csp(html: bytes) -> str:
    """:data:`DOCS_CSP` for a docs page: its inline ``<script>`` blocks allowed by SHA-256."""
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(html))
    return DOCS_CSP.format(hashes=hashes)


def _browser_host_ok(scope: Scope, settings: Settings) -> bool:
    """The DNS-rebinding guard of mode ``none``: browsers must use a loopback host."""
    host = fetch_site = origin = None
    for name, value in scope.get("headers", ()):
        if name == b"host":
            host = value.decode("latin-1")
        elif name == b"sec-fetch-site":
            fetch_site = value
        elif name == b"origin":
            origin = value.decode("latin-1")
    if fetch_site is None and origin is None:
        return True  # not a browser
    if host is None:
        return False
    hostname = urlsplit(f"//{host.strip().lower()}").hostname or ""
    if is_loopback(hostname):
        return True
    # A host named by an allowed origin (e.g. a local alias) is fine too.
    for entry in settings.allowed_origins or ():
        listed = normalize_origin(entry)
        if listed is not None and listed[2] == hostname:
            return True
    return False



class SecurityHeadersMiddleware:
    """Adds security headers to every HTTP response; guards loopback-only servers.

    The dashboard (``/`` and ``/static/``) gets :data:`DASHBOARD_CSP`, the REST
    API (``/api/``) :data:`API_CSP`, the interactive docs their own
    (:func:`docs_csp`, set by their routes); probes none. Responses are
    ``Cross-Origin-Resource-Policy: same-origin``, except the JavaScript client
    (:data:`CLIENT_MODULE_PATH`), which any origin may import. In mode
    ``none`` (without ``insecure``) a browser request (one with ``Origin`` or
    ``Sec-Fetch-Site``) whose ``Host`` is not a loopback name is refused with
    403, so a DNS-rebinding page cannot read a development server.
    """

    def __init__(self, app: ASGIApp, settings: Settings, limits: Limits) -> None:
        self.app = app
        self._guard = settings.loopback_only
        self._settings = settings
        self._limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request with the headers added (or refuse it)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._guard and not _browser_host_ok(scope, self._settings):
            self._limits.reject("host")
            response = problem_response(
                403, "this server only answers browsers on a loopback address "
                     "(use http://127.0.0.1:<port>/)", slug="forbidden-host")
            await response(scope, receive, send)
            return
        path: str = scope.get("path", "")
        csp: bytes | None = None
        extra: tuple[tuple[bytes, bytes], ...] = ()
        if path == CLIENT_MODULE_PATH:
            # Before the common headers, so its CORP wins; CORS for an allowed origin
            # (CORSMiddleware, inside this one) keeps its own answer.
            extra = _CLIENT_MODULE_HEADERS
        if path == "/" or path.startswith("/static/"):
            csp = _DASHBOARD_CSP_VALUE
        elif path.startswith("/api/"):
            csp = _API_CSP_VALUE

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                for header in (*extra, *_COMMON_HEADERS):
                    if header[0] not in present:
                        headers.append(header)
                        present.add(header[0])
                if csp is not None and b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", csp))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

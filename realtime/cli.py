"""The ``realtime`` command: ``serve``, ``relay``, ``db`` and the clients ``tail|get|put|rm|ls``.

Errors are one line on stderr, ``realtime: <what went wrong>``, never a
traceback: exit status 2 for a usage error (an unknown option, a bad value, a
malformed JSON argument or URL), 1 for a runtime problem (the server cannot be
reached or refuses the request).
"""

from __future__ import annotations

import contextlib
import enum
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from realtime import __version__

if TYPE_CHECKING:
    import httpx

__all__ = ["app", "main"]

app = typer.Typer(
    name="realtime",
    help="MongoDB writes as live updates for browsers and monitoring clients.",
    no_args_is_help=True,
    add_completion=False,
    # Help text is plain text: "[env REALTIME_HOST]" is shown, not read as markup.
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit


@app.callback()
def _options(
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version,
        help="Print the version and exit.")] = False,
) -> None:
    """MongoDB writes as live updates for browsers and monitoring clients."""


class LogLevel(enum.StrEnum):
    """``serve --log-level``."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [env REALTIME_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [env REALTIME_PORT].")] = None,
    mongodb_uri: Annotated[
        str | None,
        typer.Option("--mongodb-uri", help="Replica set URI; none starts the embedded database."),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Embedded database directory [./.realtime-data].")
    ] = None,
    log_level: Annotated[LogLevel, typer.Option(
        case_sensitive=False, help="Least severe log records shown.")] = LogLevel.info,
    log_format: Annotated[
        str | None,
        typer.Option(help="text|json: JSON lines carry request ids [env REALTIME_LOG_FORMAT]."),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="Allow serving a non-loopback address without "
                                        "authentication (REALTIME_AUTH=none).")
    ] = False,
) -> None:
    """Serve the REST API, the WebSocket feed and the dashboard.

    Without authentication (REALTIME_AUTH=none, the default) it serves only on a
    loopback address, unless --insecure is given.
    """
    from realtime.app import create_app
    from realtime.auth import AuthConfigError, check_exposure
    from realtime.config import SettingsError, load_settings
    from realtime.embedded import DataDirLock, EmbeddedUnavailable, find_executable
    from realtime.logs import configure_logging
    from realtime.server import make_server

    overrides: dict[str, Any] = {}
    for key, value in (("host", host), ("port", port), ("mongodb_uri", mongodb_uri),
                       ("data_dir", data_dir), ("log_format", log_format)):
        if value is not None:
            overrides[key] = value
    if insecure:
        overrides["insecure"] = True
    try:
        settings = load_settings(overrides, flags={key: "--" + key.replace("_", "-")
                                                   for key in overrides})
    except SettingsError as exc:
        for problem in exc.problems[:-1]:
            typer.echo(f"realtime: bad settings: {problem}", err=True)
        _fail(f"bad settings: {exc.problems[-1]}", 2)
    try:
        check_exposure(settings)
    except AuthConfigError as exc:
        _fail(str(exc), 2)
    if settings.auth == "none" and settings.insecure:
        typer.echo(f"realtime: WARNING: serving {settings.host} without authentication "
                   "(--insecure)", err=True)
    configure_logging(log_level, settings.log_format)
    if settings.mongodb_uri is None:
        try:
            find_executable()
        except EmbeddedUnavailable as exc:
            _fail(str(exc), 2)
        try:  # in use by another server? Say so before starting anything (the app locks it)
            probe = DataDirLock(settings.data_dir)
            probe.acquire()
            probe.release()
        except EmbeddedUnavailable as exc:
            _fail(str(exc), 1)
    try:
        application = create_app(settings)
    except AuthConfigError as exc:
        _fail(f"bad settings: {exc}", 2)
    server = make_server(application, settings)
    failed = _embedded_failures(application)
    try:
        server.run()
    except SystemExit:  # uvicorn's exit after a failed start-up
        if failed:
            _fail(str(failed[0]), 1)
        raise
    if failed:
        _fail(str(failed[0]), 1)
    if not server.started:
        raise typer.Exit(1)


@app.command()
def relay(
    metrics_port: Annotated[int, typer.Option(
        min=0, max=65535, help="Serve Prometheus metrics on this port (0: none).")] = 0,
    metrics_host: Annotated[str, typer.Option(help="Address of the metrics port.")] = "127.0.0.1",
    log_level: Annotated[LogLevel, typer.Option(
        case_sensitive=False, help="Least severe log records shown.")] = LogLevel.info,
    log_format: Annotated[
        str | None,
        typer.Option(help="text|json: JSON lines [env REALTIME_LOG_FORMAT]."),
    ] = None,
) -> None:
    """Publish the database's change stream once into NATS JetStream (scale-out).

    Needs REALTIME_MONGODB_URI and REALTIME_BROKER_URL. Run two for failover:
    one appends, the other takes over when it stops (docs/scaling.md).
    """
    import asyncio

    from realtime.config import SettingsError, load_settings
    from realtime.logs import configure_logging

    overrides: dict[str, Any] = {} if log_format is None else {"log_format": log_format}
    try:
        settings = load_settings(overrides, flags={"log_format": "--log-format"})
    except SettingsError as exc:
        for problem in exc.problems[:-1]:
            typer.echo(f"realtime: bad settings: {problem}", err=True)
        _fail(f"bad settings: {exc.problems[-1]}", 2)
    if settings.broker_url is None or settings.mongodb_uri is None:
        _fail("a relay needs REALTIME_MONGODB_URI (the replica set) and REALTIME_BROKER_URL "
              "(e.g. nats://127.0.0.1:4222)", 2)
    try:
        from realtime.relay import Relay, run_relay
    except ImportError as exc:
        _fail(f"the relay needs the broker extra (pip install 'realtime-mongo[broker]'): {exc}",
              2)
    configure_logging(log_level, settings.log_format)

    def ready(active: Relay) -> None:
        from realtime.server import notify_ready

        if metrics_port:
            from prometheus_client import start_http_server

            from realtime.metrics import relay_registry

            start_http_server(metrics_port, metrics_host, registry=relay_registry(active))
        notify_ready()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - inside asyncio.run
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await run_relay(settings, ready=ready)

    asyncio.run(main())


def _embedded_failures(application: Any) -> list[BaseException]:
    """Turn an embedded database that cannot start into one line, not a traceback.

    Wraps the app's lifespan: an ``EmbeddedUnavailable`` raised while starting
    up (the data directory is in use, the database exited at once) is recorded
    in the returned list, for the caller to print, and uvicorn's report of the
    failed start-up (a traceback) is silenced.
    """
    import logging
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    from realtime.embedded import EmbeddedUnavailable

    failures: list[BaseException] = []
    inner = application.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        started = False
        try:
            async with inner(app) as state:
                started = True
                yield state
        except EmbeddedUnavailable as exc:
            if started:
                raise
            failures.append(exc)
            logging.getLogger("uvicorn.error").disabled = True  # the traceback
            raise

    application.router.lifespan_context = lifespan
    return failures


@app.command()
def db(
    port: Annotated[int, typer.Option(
        min=0, max=65535, help="Port to listen on (0: a free one).")] = 27017,
    data_dir: Annotated[Path, typer.Option(help="Storage directory.")] = Path(".realtime-data"),
) -> None:
    """Run only the embedded database (SecantusDB) until Ctrl-C."""
    import socket

    from realtime.embedded import (
        DataDirLock,
        EmbeddedServer,
        EmbeddedUnavailable,
        find_executable,
    )

    try:
        find_executable()
    except EmbeddedUnavailable as exc:
        _fail(str(exc), 2)
    lock = DataDirLock(data_dir)  # the same lock as `serve`: one user of a folder at a time
    try:
        lock.acquire()
    except EmbeddedUnavailable as exc:
        _fail(str(exc))
    server = EmbeddedServer(data_dir, port=port)
    with socket.socket() as sock:
        sock.settimeout(1)
        if sock.connect_ex((server.host, server.port)) == 0:
            _fail(f"{server.host}:{server.port} is in use; choose another --port")
    try:
        server.start()
    except (EmbeddedUnavailable, OSError) as exc:
        server.stop()
        _fail(str(exc))
    typer.echo(f"embedded database at {server.uri} (data in {data_dir}); Ctrl-C stops it")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    exited: int | None = None
    try:
        while not stop.wait(0.5):
            if server.process is None or (exited := server.process.poll()) is not None:
                break
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    if exited:
        _fail(f"embedded database exited (code {exited}); see {data_dir}.log")


# ---------------------------------------------------------------------------
# Client commands: tail, get, put, rm, ls (talk to a running server over HTTP/WS)

_DEFAULT_URL = "http://127.0.0.1:8000"


def _check_url(value: str, schemes: tuple[str, ...], kinds: str) -> str:
    """``value`` if it is an absolute URL with one of ``schemes`` and a host.

    Raises:
        typer.BadParameter: it is not (a usage error: exit status 2).
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not a URL ({exc})") from None
    if parts.scheme.lower() not in schemes:
        raise typer.BadParameter(f"{value!r} is not an {kinds} URL, e.g. {_DEFAULT_URL}")
    if not parts.hostname:
        raise typer.BadParameter(f"{value!r} has no host, e.g. {_DEFAULT_URL}")
    return value


def _http_url(value: str) -> str:
    return _check_url(value, ("http", "https"), "http(s)://")


def _server_url(value: str) -> str:
    return _check_url(value, ("http", "https", "ws", "wss"), "http(s):// or ws(s)://")


def _check_token(value: str | None) -> str | None:
    if value and not (value.isascii() and value.isprintable()):
        raise typer.BadParameter("an API key or a JWT is printable ASCII")
    return value or None


UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="REALTIME_URL", callback=_http_url,
                 help="Server URL (http:// or https://)."),
]
WsUrlOption = Annotated[
    str,
    typer.Option("--url", envvar="REALTIME_URL", callback=_server_url,
                 help="Server URL (http(s)://, or ws(s)://.../ws)."),
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="REALTIME_TOKEN", show_default=False,
                 callback=_check_token, help="API key or JWT, sent as a Bearer token."),
]
_OP_STYLES = {"insert": "green", "update": "yellow", "replace": "yellow",
              "delete": "red", "leave": "magenta"}


def _fail(message: str, code: int = 1) -> NoReturn:
    """Print ``realtime: message`` to stderr and exit with ``code``."""
    typer.echo(f"realtime: {message}", err=True)
    raise typer.Exit(code)


def _parse_json(text: str, what: str, *, obj: bool = True) -> Any:
    """Decode a JSON argument (``-`` reads stdin); exit 2 if it is not JSON."""
    import orjson

    if text == "-":
        text = sys.stdin.read()
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        _fail(f"{what} is not valid JSON: {exc}", 2)
    if obj and not isinstance(value, dict):
        _fail(f"{what} must be a JSON object", 2)
    return value


def _dumps(value: Any, *, pretty: bool = False) -> str:
    import orjson

    option = orjson.OPT_INDENT_2 if pretty else 0
    return orjson.dumps(value, option=option).decode()


def _echo_json(value: Any) -> None:
    """One JSON value on stdout: indented on a terminal, one line when piped."""
    sys.stdout.write(_dumps(value, pretty=sys.stdout.isatty()) + "\n")
    sys.stdout.flush()


def _problem(response: httpx.Response) -> str:
    """``<status> <title>: <detail>`` of an error response (problem+json or not)."""
    detail = ""
    title = response.reason_phrase
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = str(body.get("detail") or "")
        title = str(body.get("title") or title)
    elif response.text:
        detail = " ".join(response.text[:200].split())
    return f"{response.status_code} {title}" + (f": {detail}" if detail else "")


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words: ``connection refused``, ``unknown host``..."""
    import errno
    import socket

    import httpx

    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timed out"
    cause: BaseException | None = exc
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, socket.gaierror):
            return "unknown host"
        if isinstance(cause, ConnectionRefusedError) or (
                # asyncio's "Multiple exceptions: [Errno 111] ..." has no errno of its own.
                isinstance(cause, OSError) and f"[Errno {errno.ECONNREFUSED}]" in str(cause)):
            return "connection refused"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


class _Api:
    """A server's REST API for one command: any failure ends it with one line.

    A refused request exits 1 with the problem's ``detail``; an unreachable
    server exits 1 with ``cannot reach URL: reason``.
    """

    def __init__(self, url: str, token: str | None) -> None:
        import httpx

        self.url = url.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": f"realtime-cli/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def __enter__(self) -> _Api:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, *, attempts: int = 1,
             **kwargs: Any) -> httpx.Response:
        """Send the request; return the response if its status is below 400.

        With ``attempts`` > 1 a 503 or a network error is retried after a
        backoff (0.25 s, doubling, at most 4 s; ``Retry-After`` if longer is
        not waited for beyond that) — only for requests that are safe to
        repeat, such as writes with an ``Idempotency-Key``.
        """
        import time

        import httpx

        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.InvalidURL as exc:
                _fail(f"bad --url {self.url!r}: {exc}", 2)
            except httpx.HTTPError as exc:
                if last:
                    _fail(f"cannot reach {self.url}: {_reason(exc)}")
            else:
                if response.status_code != 503 or last:
                    break
            time.sleep(min(4.0, 0.25 * 2 ** attempt))
        if response.status_code >= 400:
            _fail(_problem(response))
        return response

    def json(self, method: str, path: str, *, attempts: int = 1, **kwargs: Any) -> Any:
        """:meth:`call`, then the JSON body (exit 1 if there is none)."""
        response = self.call(method, path, attempts=attempts, **kwargs)
        try:
            return response.json()
        except ValueError:
            kind = response.headers.get("Content-Type", "no content type")
            _fail(f"{self.url} answered {response.status_code} with {kind}, not JSON; "
                  "is it a realtime server?")


#: Attempts of a `put`/`rm` write (each with the same Idempotency-Key).
_WRITE_ATTEMPTS = 4


def _docs_path(collection: str, id: str | None = None) -> str:
    from urllib.parse import quote

    path = f"/api/collections/{quote(collection, safe='')}/documents"
    return path if id is None else f"{path}/{quote(id, safe='')}"


@app.command()
def ls(url: UrlOption = _DEFAULT_URL, token: TokenOption = None) -> None:
    """List the collections the server exposes, one per line."""
    with _Api(url, token) as api:
        body = api.json("GET", "/api/collections")
    for name in body.get("collections", []) if isinstance(body, dict) else []:
        typer.echo(name)


@app.command()
def get(
    collection: Annotated[str, typer.Argument(help="Collection name.")],
    id: Annotated[str | None, typer.Argument(help="A document id; none lists.")] = None,
    filter: Annotated[str | None, typer.Option("--filter", help="JSON filter.")] = None,
    sort: Annotated[str | None, typer.Option(help="Sort, e.g. '-ts,name'.")] = None,
    limit: Annotated[int | None, typer.Option(
        min=1, max=1000, help="Documents per page, up to 1000 (the server's default: 100).")
    ] = None,
    after: Annotated[str | None, typer.Option(
        "--after", help="Continue after this cursor (printed when more documents exist).")
    ] = None,
    all_pages: Annotated[bool, typer.Option(
        "--all", help="Every document: follow the cursor page after page.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="JSON lines even on a terminal.")
                        ] = False,
    url: UrlOption = _DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Print one document (by ID) or the documents of COLLECTION.

    A list is printed as one JSON document per line (a table on a terminal), one
    page of --limit documents; when more exist, stderr says so and shows the
    --after cursor of the next page. --all prints every page as it arrives.
    """
    if id is not None:
        if (filter, sort, limit, after) != (None, None, None, None) or all_pages:
            _fail("--filter, --sort, --limit, --after and --all apply to lists, not to one ID",
                  2)
        with _Api(url, token) as api:
            _echo_json(api.json("GET", _docs_path(collection, id)))
        return
    params: dict[str, Any] = {}
    if filter is not None:
        params["filter"] = _dumps(_parse_json(filter, "--filter"))
    if sort is not None:
        params["sort"] = sort
    if limit is not None:
        params["limit"] = limit
    if after is not None:
        params["after"] = after
    lines = json_out or not sys.stdout.isatty()
    shown = 0
    with _Api(url, token) as api:
        while True:
            body = api.json("GET", _docs_path(collection), params=params)
            documents = body.get("documents") if isinstance(body, dict) else None
            if not isinstance(documents, list):
                _fail(f"{api.url} answered a list without documents; is it a realtime server?")
            cursor = body.get("next")
            if lines:
                sys.stdout.write("".join(_dumps(doc) + "\n" for doc in documents))
                sys.stdout.flush()
            elif documents or not shown:
                rows = f"{shown + 1}-{shown + len(documents)}" if all_pages and documents else None
                _print_table(_documents_table(collection, documents, rows=rows))
            shown += len(documents)
            if not (all_pages and cursor):
                break
            params["after"] = cursor
    if cursor and not all_pages:
        typer.echo(f"realtime: {shown} documents shown and more exist: use --all, --limit "
                   f"(up to 1000) or --after {cursor}", err=True)


def _print_table(table: Any) -> None:
    from rich.console import Console

    Console().print(table)


def _documents_table(title: str, documents: list[dict[str, Any]], *,
                     rows: str | None = None) -> Any:
    """A table of ``documents`` titled ``title (rows)``; ``rows`` defaults to their count."""
    from rich.table import Table

    fields: dict[str, None] = {}
    for doc in documents:
        for field in doc:
            if field not in ("_id", "_version"):
                fields.setdefault(field)
    columns = ["_id", *list(fields)[:8], "_version"]
    table = Table(title=f"{title} ({rows or len(documents)})", title_justify="left")
    for column in columns:
        table.add_column(column, overflow="ellipsis", max_width=40)
    for doc in documents:
        table.add_row(*(_cell(doc.get(c)) for c in columns))
    return table

def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return _dumps(value)


@app.command()
def put(
    collection: Annotated[str, typer.Argument(help="Collection name.")],
    args: Annotated[list[str], typer.Argument(
        metavar="[ID] JSON", show_default=False,
        help="An optional id, then the document (JSON, or - for stdin).")],
    merge: Annotated[bool, typer.Option(
        "--merge", help="Merge into the existing document (PATCH) instead of replacing.")
    ] = False,
    if_match: Annotated[int | None, typer.Option(
        "--if-match", help="Only if the document's _version is this.")] = None,
    url: UrlOption = _DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Write a document: `put C JSON` inserts, `put C ID JSON` replaces or creates.

    Prints the stored document (with its `_id` and `_version`). The write carries
    an `Idempotency-Key`; a 503 or a network error is retried (4 attempts, with
    backoff) and the server applies the write once.
    """
    if len(args) == 1:
        id, text = None, args[0]
    elif len(args) == 2:
        id, text = args[0], args[1]
    else:
        _fail("put takes COLLECTION [ID] JSON", 2)
    body = _parse_json(text, "the document")
    headers = {"Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())}
    if if_match is not None:
        headers["If-Match"] = f'"{if_match}"'
    if id is None and (merge or if_match is not None):
        _fail("--merge and --if-match need an ID", 2)
    with _Api(url, token) as api:
        if id is None:
            stored = api.json("POST", _docs_path(collection), content=_dumps(body),
                              headers=headers, attempts=_WRITE_ATTEMPTS)
        else:
            if merge:
                headers["Content-Type"] = "application/merge-patch+json"
            stored = api.json("PATCH" if merge else "PUT", _docs_path(collection, id),
                              content=_dumps(body), headers=headers, attempts=_WRITE_ATTEMPTS)
    _echo_json(stored)


@app.command()
def rm(
    collection: Annotated[str, typer.Argument(help="Collection name.")],
    id: Annotated[str, typer.Argument(help="The id of the document to delete.")],
    if_match: Annotated[int | None, typer.Option(
        "--if-match", help="Only if the document's _version is this (412 otherwise).")
    ] = None,
    url: UrlOption = _DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Delete the document ID of COLLECTION; prints nothing when it is done.

    A document that does not exist is an error (404, exit status 1). Like `put`,
    the delete carries an `Idempotency-Key` and is retried on a 503 or a network error.
    """
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    if if_match is not None:
        headers["If-Match"] = f'"{if_match}"'
    with _Api(url, token) as api:
        api.call("DELETE", _docs_path(collection, id), headers=headers,
                 attempts=_WRITE_ATTEMPTS)


@app.command()
def tail(
    collection: Annotated[str, typer.Argument(help="Collection to watch.")],
    filter: Annotated[str | None, typer.Option("--filter", help="JSON filter.")] = None,
    since: Annotated[str | None, typer.Option(help="Resume after this event id.")] = None,
    aggregate: Annotated[str | None, typer.Option(
        "--aggregate", help='Follow a live aggregate instead of documents, e.g. '
                            '\'{"group_by": "status", "count": true, "sum": ["total"]}\'.')
    ] = None,
    fields: Annotated[str | None, typer.Option(
        "--fields", help="Only these comma-separated dotted paths of each document "
                         "(e.g. status,customer.name); an update shows the changed ones.")
    ] = None,
    since_time: Annotated[str | None, typer.Option(
        "--since-time", help="Replay the changes committed from this RFC 3339 time "
                             "(e.g. 2026-01-01T09:00:00Z), then follow live.")] = None,
    snapshot: Annotated[bool, typer.Option(
        "--snapshot", help="Print the matching documents first.")] = False,
    json_out: Annotated[bool, typer.Option(
        "--json", help="One JSON object per line (changes, snapshots, resets).")] = False,
    max_delay: Annotated[float, typer.Option(
        min=0.01, help="Longest wait between reconnect attempts, in seconds.")] = 20.0,
    url: WsUrlOption = _DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Print live changes to COLLECTION until Ctrl-C.

    Reconnects by itself and resumes where it stopped; if the server cannot
    resume, prints a reset and then a snapshot of the current documents.
    With --json, stdout carries exactly one JSON object per line (`type` is
    change, snapshot or reset); status messages go to stderr.
    """
    import asyncio

    filter_ = _parse_json(filter, "--filter") if filter is not None else None
    paths: list[str] | None = None
    if fields is not None:
        from realtime.projection import check_fields

        paths = [p.strip() for p in fields.split(",")]
        try:
            check_fields(paths)
        except ValueError as exc:
            _fail(f"--fields {exc}", 2)
    spec: dict[str, Any] | None = None
    if aggregate is not None:
        from realtime.aggregate import parse_spec

        spec = _parse_json(aggregate, "--aggregate")
        try:
            parse_spec(spec)
        except ValueError as exc:
            _fail(f"--aggregate: {exc}", 2)
        if since is not None or since_time is not None or snapshot or fields is not None:
            _fail("--aggregate excludes --since, --since-time, --snapshot and --fields", 2)
    if since_time is not None:
        from realtime.protocol import parse_time

        try:
            parse_time(since_time)
        except ValueError as exc:
            _fail(f"--since-time is {exc}", 2)
        if since is not None or snapshot:
            _fail("--since-time excludes --since and --snapshot", 2)
    try:
        code = asyncio.run(_tail(collection, filter_, since, snapshot, json_out, max_delay,
                                 url, token, since_time=since_time, fields=paths,
                                 aggregate=spec))
    except KeyboardInterrupt:
        code = 130
    if code:
        raise typer.Exit(code)


async def _tail(collection: str, filter: dict[str, Any] | None, since: str | None,
                snapshot: bool, json_out: bool, max_delay: float, url: str,
                token: str | None, *, since_time: str | None = None,
                fields: list[str] | None = None,
                aggregate: dict[str, Any] | None = None) -> int:
    """The body of ``tail``; returns the exit code (SIGTERM ends it with 0)."""
    import asyncio

    from rich.console import Console
    from rich.markup import escape

    from realtime.client import (
        Aggregate,
        Change,
        ClientError,
        ConnectError,
        ConnectionState,
        Reset,
        Snapshot,
        StateChange,
        Subscribed,
        backoff_delay,
        connect,
        event_to_json,
    )

    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)

    def status(text: str) -> None:
        err.print(f"[dim]realtime: {escape(text)}[/]")

    notices = {"live": "live updates are back",
               "retrying": "the server lost its database connection and is retrying; "
                           "changes will follow, none lost",
               "down": "the server's database is down; changes will follow once it is back"}
    told = False

    def on_status(feed: str) -> None:
        nonlocal told
        if told or feed != "live":  # a first "live" is the normal case: no notice
            status(f"server {feed}: {notices.get(feed, 'unknown state')}")
        told = True

    def on_state(change: StateChange) -> None:
        if change.state is ConnectionState.OPEN:
            status("connected")
        elif change.state is ConnectionState.RECONNECTING:
            why = f" (closed {change.code})" if change.code else ""
            status(f"reconnecting in {change.delay or 0:.1f} s, attempt {change.attempt}{why}")
        elif change.state is ConnectionState.CLOSED and change.code:
            status(f"connection closed ({change.code} {change.reason})")

    task = asyncio.current_task()
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        if task is not None:
            task.cancel()

    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        async with connect(url, token=token, on_state=on_state, on_status=on_status,
                           delay=lambda n: backoff_delay(n, maximum=max_delay)) as client, \
                client.subscribe(collection, filter=filter, snapshot=snapshot,
                                 since=since, since_time=since_time, fields=fields,
                                 aggregate=aggregate) as sub:
            async for event in sub:
                if isinstance(event, Subscribed):
                    head = event.head or "none"
                    head = head if len(head) <= 20 else f"{head[:8]}…{head[-8:]}"
                    status(f"{'resumed' if event.resumed else 'subscribed to'} {collection}"
                           f" (head {head})")
                    continue
                if json_out:
                    sys.stdout.write(_dumps(event_to_json(event)) + "\n")
                    sys.stdout.flush()
                elif isinstance(event, Change):
                    style = _OP_STYLES.get(event.op, "white")
                    shown: Any = event.document
                    if shown is None and event.updated is not None:  # a delta (--fields)
                        shown = {"updated": event.updated, "removed": event.removed or []}
                    body = "" if shown is None else escape(_dumps(shown))
                    out.print(f"[dim]{escape(event.ts)}[/] [{style}]{event.op:<7}[/] "
                              f"[bold]{escape(_cell(event.key))}[/] {body}")
                elif isinstance(event, Snapshot):
                    out.print(_documents_table(f"{collection} snapshot", event.documents))
                elif isinstance(event, Aggregate):
                    for group in event.groups:
                        key = " ".join(f"{k}={_dumps(v)}" for k, v in group["key"].items())
                        if group.get("removed"):
                            out.print(f"[red]removed[/] [bold]{escape(key or '(all)')}[/]")
                            continue
                        values = " ".join(
                            f"{name}.{path}={_dumps(value)}" if name != "count"
                            else f"count={value}"
                            for name in ("count", "sum", "avg", "min", "max") if name in group
                            for path, value in (group[name].items() if name != "count"
                                                else [("", group[name])]))
                        out.print(f"[bold]{escape(key or '(all)')}[/] {escape(values)}")
                elif isinstance(event, Reset):
                    out.print(f"[bold yellow]reset[/] ({escape(event.reason)}): "
                              "reloading the current documents")
    except asyncio.CancelledError:
        if terminated:
            return 0
        raise
    except ConnectError as exc:
        status(str(exc) if exc.__cause__ is None
               else f"cannot reach {url.rstrip('/')}: {_reason(exc.__cause__)}")
        return 1
    except ClientError as exc:
        status(str(exc))
        return 1
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)
    return 0


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    """Console-script entry point: errors are one line on stderr, never a traceback.

    Usage errors exit with status 2, refused or failed requests with 1, Ctrl-C
    with 130.
    """
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("realtime: aborted", err=True)
        code = 1
    except Exception as exc:
        # click's exceptions (which click depends on typer's version): anything with
        # an exit code and a message for the user.
        exit_code = getattr(exc, "exit_code", None)
        format_message = getattr(exc, "format_message", None)
        if not isinstance(exit_code, int) or not callable(format_message):
            raise
        message = str(format_message())
        ctx = getattr(exc, "ctx", None)
        if "\n" in message:  # the help, shown for a command given no arguments
            exc.show()  # type: ignore[attr-defined]
        elif exit_code == 2 and ctx is not None:
            typer.echo(f"realtime: {message.rstrip('.')} "
                       f"(see '{ctx.command_path} --help')", err=True)
        else:
            typer.echo(f"realtime: {message}", err=True)
        code = exit_code
    raise SystemExit(code if isinstance(code, int) else 0)

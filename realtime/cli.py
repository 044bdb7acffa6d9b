"""The ``realtime`` command: ``serve``, ``db`` and the clients ``tail|get|put|ls``."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from realtime import __version__

__all__ = ["app", "main"]

app = typer.Typer(
    name="realtime",
    help="MongoDB writes as live updates for browsers and monitoring clients.",
    no_args_is_help=True,
    add_completion=False,
)


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
    log_level: Annotated[str, typer.Option(help="debug|info|warning|error")] = "info",
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
    from realtime.config import Settings
    from realtime.embedded import EmbeddedUnavailable, find_executable
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
        settings = Settings(**overrides)
    except ValueError as exc:
        _fail(f"bad settings: {exc}", 2)
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
    try:
        application = create_app(settings)
    except AuthConfigError as exc:
        _fail(f"bad settings: {exc}", 2)
    server = make_server(application, settings)
    server.run()
    if not server.started:
        raise typer.Exit(1)


@app.command()
def db(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 27017,
    data_dir: Annotated[Path, typer.Option(help="Storage directory.")] = Path(".realtime-data"),
) -> None:
    """Run only the embedded database (SecantusDB) until Ctrl-C."""
    from realtime.embedded import EmbeddedServer, EmbeddedUnavailable

    server = EmbeddedServer(data_dir, port=port)
    try:
        server.start()
    except EmbeddedUnavailable as exc:
        typer.echo(f"realtime: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"embedded database at {server.uri} (data in {data_dir}); Ctrl-C stops it")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            if server.process is None or server.process.poll() is not None:
                break
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# Client commands: tail, get, put, ls (talk to a running server over HTTP/WS)

_DEFAULT_URL = "http://127.0.0.1:8000"
UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="REALTIME_URL", help="Server URL."),
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="REALTIME_TOKEN", show_default=False,
                 help="API key or JWT, sent as a Bearer token."),
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


def _problem(response: Any) -> str:
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
        detail = response.text[:200]
    return f"{response.status_code} {title}" + (f": {detail}" if detail else "")


def _request(url: str, token: str | None, method: str, path: str, **kwargs: Any) -> Any:
    """Make one REST request; exit 1 with the problem's detail on error."""
    import httpx

    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=30) as http:
            response = http.request(method, path, **kwargs)
    except httpx.InvalidURL as exc:
        _fail(f"bad --url {url!r}: {exc}", 2)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach {url}: {exc}")
    if response.status_code >= 400:
        _fail(_problem(response))
    return response


def _docs_path(collection: str, id: str | None = None) -> str:
    from urllib.parse import quote

    path = f"/api/collections/{quote(collection, safe='')}/documents"
    return path if id is None else f"{path}/{quote(id, safe='')}"


@app.command()
def ls(url: UrlOption = _DEFAULT_URL, token: TokenOption = None) -> None:
    """List the collections the server exposes, one per line."""
    response = _request(url, token, "GET", "/api/collections")
    for name in response.json().get("collections", []):
        typer.echo(name)


@app.command()
def get(
    collection: Annotated[str, typer.Argument(help="Collection name.")],
    id: Annotated[str | None, typer.Argument(help="A document id; none lists.")] = None,
    filter: Annotated[str | None, typer.Option("--filter", help="JSON filter.")] = None,
    sort: Annotated[str | None, typer.Option(help="Sort, e.g. '-ts,name'.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, max=1000, help="Most documents.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON lines even on a terminal.")
                        ] = False,
    url: UrlOption = _DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Print one document (by ID) or the documents of COLLECTION.

    A list is printed as one JSON document per line (a table on a terminal).
    """
    if id is not None:
        if filter is not None or sort is not None or limit is not None:
            _fail("--filter, --sort and --limit apply to lists, not to one ID", 2)
        _echo_json(_request(url, token, "GET", _docs_path(collection, id)).json())
        return
    params: dict[str, Any] = {}
    if filter is not None:
        params["filter"] = _dumps(_parse_json(filter, "--filter"))
    if sort is not None:
        params["sort"] = sort
    if limit is not None:
        params["limit"] = limit
    body = _request(url, token, "GET", _docs_path(collection), params=params).json()
    documents: list[dict[str, Any]] = body.get("documents", [])
    if json_out or not sys.stdout.isatty():
        sys.stdout.write("".join(_dumps(doc) + "\n" for doc in documents))
        sys.stdout.flush()
        return
    from rich.console import Console

    console = Console()
    console.print(_documents_table(collection, documents))
    if body.get("next"):
        console.print("[dim]more documents follow; raise --limit to see them[/]")


def _documents_table(title: str, documents: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    fields: dict[str, None] = {}
    for doc in documents:
        for field in doc:
            if field not in ("_id", "_version"):
                fields.setdefault(field)
    columns = ["_id", *list(fields)[:8], "_version"]
    table = Table(title=f"{title} ({len(documents)})", title_justify="left")
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

    Prints the stored document (with its `_id` and `_version`).
    """
    if len(args) == 1:
        id, text = None, args[0]
    elif len(args) == 2:
        id, text = args[0], args[1]
    else:
        _fail("put takes COLLECTION [ID] JSON", 2)
    body = _parse_json(text, "the document")
    headers = {"Content-Type": "application/json"}
    if if_match is not None:
        headers["If-Match"] = f'"{if_match}"'
    if id is None:
        if merge or if_match is not None:
            _fail("--merge and --if-match need an ID", 2)
        response = _request(url, token, "POST", _docs_path(collection),
                            content=_dumps(body), headers=headers)
    else:
        if merge:
            headers["Content-Type"] = "application/merge-patch+json"
        response = _request(url, token, "PATCH" if merge else "PUT", _docs_path(collection, id),
                            content=_dumps(body), headers=headers)
    _echo_json(response.json())


@app.command()
def tail(
    collection: Annotated[str, typer.Argument(help="Collection to watch.")],
    filter: Annotated[str | None, typer.Option("--filter", help="JSON filter.")] = None,
    since: Annotated[str | None, typer.Option(help="Resume after this event id.")] = None,
    snapshot: Annotated[bool, typer.Option(
        "--snapshot", help="Print the matching documents first.")] = False,
    json_out: Annotated[bool, typer.Option(
        "--json", help="One JSON object per line (changes, snapshots, resets).")] = False,
    max_delay: Annotated[float, typer.Option(
        min=0.01, help="Longest wait between reconnect attempts, in seconds.")] = 20.0,
    url: UrlOption = _DEFAULT_URL,
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
    try:
        code = asyncio.run(_tail(collection, filter_, since, snapshot, json_out, max_delay,
                                 url, token))
    except KeyboardInterrupt:
        code = 130
    if code:
        raise typer.Exit(code)


async def _tail(collection: str, filter: dict[str, Any] | None, since: str | None,
                snapshot: bool, json_out: bool, max_delay: float, url: str,
                token: str | None) -> int:
    """The body of ``tail``; returns the exit code (SIGTERM ends it with 0)."""
    import asyncio

    from rich.console import Console
    from rich.markup import escape

    from realtime.client import (
        Change,
        ClientError,
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
        async with connect(url, token=token, on_state=on_state,
                           delay=lambda n: backoff_delay(n, maximum=max_delay)) as client, \
                client.subscribe(collection, filter=filter, snapshot=snapshot,
                                 since=since) as sub:
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
                    body = "" if event.document is None else escape(_dumps(event.document))
                    out.print(f"[dim]{escape(event.ts)}[/] [{style}]{event.op:<7}[/] "
                              f"[bold]{escape(_cell(event.key))}[/] {body}")
                elif isinstance(event, Snapshot):
                    out.print(_documents_table(f"{collection} snapshot", event.documents))
                elif isinstance(event, Reset):
                    out.print(f"[bold yellow]reset[/] ({escape(event.reason)}): "
                              "reloading the current documents")
    except asyncio.CancelledError:
        if terminated:
            return 0
        raise
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
    """Console-script entry point."""
    app()

"""Settings, read from the environment (prefix ``REALTIME_``).

:func:`load_settings` builds them and turns every problem into one line that
names the environment variable and the format it expects, e.g.
``REALTIME_PORT: not an integer; expected an integer from 0 to 65535, e.g.
REALTIME_PORT=8000`` (:class:`SettingsError`, :func:`describe_error`).
"""

from __future__ import annotations

import json
import re
import shlex
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self, Union, get_args, get_origin

import pydantic_settings
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from realtime.names import COLLECTION_PATTERN

__all__ = [
    "ENV_PREFIX",
    "SCOPE_PATTERN",
    "ApiKey",
    "Settings",
    "SettingsError",
    "describe_error",
    "env_name",
    "load_settings",
]

#: The prefix of every environment variable the settings read.
ENV_PREFIX = "REALTIME_"

_COLLECTION = COLLECTION_PATTERN.removeprefix("^").removesuffix("$")
#: A scope: ``read:<collection>``, ``write:<collection>``, ``read:*``, ``write:*`` or ``admin``.
SCOPE_PATTERN = rf"^(?:(?:read|write):(?:\*|{_COLLECTION})|admin)$"
_SCOPE_RE = re.compile(SCOPE_PATTERN)
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_FIELD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_ORIGIN_RE = re.compile(r"^https?://[A-Za-z0-9.\-]+(?::[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?$")


class ApiKey(BaseModel):
    """One entry of ``REALTIME_API_KEYS``: the SHA-256 of a key, its scopes, its tenant."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    sha256: str = Field(description="Lower-case hex SHA-256 of the key (UTF-8).")
    scopes: list[str] = Field(default_factory=list)
    tenant: str | None = Field(default=None, min_length=1, max_length=256)
    name: str | None = Field(default=None, max_length=64,
                             description="A label for logs and rate limits (never the key).")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        value = value.strip().lower()
        if not _HEX64_RE.match(value):
            raise ValueError("sha256 must be 64 hex digits (the key's SHA-256, not the key)")
        return value

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        for scope in value:
            if not _SCOPE_RE.match(scope):
                raise ValueError(f"bad scope {scope[:80]!r}: use read:<collection>, "
                                 "write:<collection>, read:*, write:* or admin")
        return value


class Settings(BaseSettings):
    """Every tunable of the service; see docs/operations.md, "Configuration"."""

    # Errors never echo the input: it may hold secrets (JWT secret, database password).
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore",
                                      hide_input_in_errors=True)

    # Database
    mongodb_uri: str | None = Field(
        default=None,
        description="Replica-set URI; unset starts the embedded database.",
    )
    database: str = "realtime"
    driver: Literal["motor", "pymongo"] = Field(
        default="motor", description="MongoDB async driver: motor (default) or pymongo."
    )
    max_pool_size: int = Field(default=100, ge=1)
    server_selection_timeout_ms: int = Field(default=2000, ge=100)
    connect_timeout_ms: int = Field(default=2000, ge=100)
    socket_timeout_ms: int = Field(default=20000, ge=100)
    app_name: str = "realtime"
    collections: list[str] | None = Field(
        default=None, description="Allow-list of exposed collections (JSON list).",
        examples=[["orders", "users"]],
    )

    # Embedded database
    data_dir: Path = Path(".realtime-data")
    embedded_port: int = Field(default=0, ge=0, le=65535)
    embedded_sync_on_commit: bool = True

    # HTTP
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    retry_after_seconds: int = Field(default=2, ge=1)
    idempotency_ttl_seconds: int = Field(
        default=86_400, ge=60, le=30 * 86_400,
        description="How long the first response to an `Idempotency-Key` is kept "
                    "(docs/reliability.md#exactly-once-writes).")
    idempotency_max_response_bytes: int = Field(
        default=1_048_576, ge=1024,
        description="Responses larger than this are not kept for `Idempotency-Key` "
                    "replays (the key then only guards the write itself).")
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log lines as text or JSON objects (with request ids)."
    )

    # Live feed
    ring_size: int = Field(default=10_000, ge=1)
    ring_warm_seconds: float = Field(
        default=10.0, ge=0,
        description="At start-up the feed reads the latest changes (up to ring_size oplog "
                    "entries) into the ring, so clients resuming after a restart replay from "
                    "memory; subscriptions wait for it at most this long (0: no warm-up).")
    heartbeat_seconds: float = Field(default=25.0, gt=0)
    max_subscriptions: int = Field(default=100, ge=1)
    max_frame_bytes: int = Field(default=64 * 1024, ge=1024)
    send_backlog: int = Field(
        default=1000, ge=1, description="Messages a slow connection may owe before 4408."
    )
    snapshot_max: int = Field(default=1000, ge=1)
    aggregate_max_groups: int = Field(
        default=1000, ge=1,
        description="Groups a live aggregate may hold; more end it (too_many_groups).")
    feed_max_await_ms: int = Field(default=1000, ge=10)
    stall_factor: float = Field(
        default=5.0, gt=1, description="A feed silent for this many await times restarts."
    )
    retry_base_seconds: float = Field(default=0.1, gt=0)
    retry_cap_seconds: float = Field(default=10.0, gt=0)
    catchup_concurrency: int = Field(
        default=8, ge=1, description="Catch-up change streams open at once."
    )
    startup_wait_seconds: float = Field(
        default=10.0, ge=0, description="How long start-up waits for the change stream."
    )

    # Scale-out (docs/scaling.md): the relay and the edges
    broker_url: str | None = Field(
        default=None,
        description="NATS URL(s), comma-separated: `serve` becomes an edge that reads the "
                    "relay's JetStream stream instead of a change stream; `relay` publishes it.",
        examples=["nats://127.0.0.1:4222"])
    broker_stream: str = Field(
        default="REALTIME", pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="The JetStream stream the relay writes and the edges read.")
    broker_replicas: int = Field(
        default=1, ge=1, le=5, description="Copies of the stream in a NATS cluster (3 in HA).")
    broker_max_age_seconds: float = Field(
        default=86_400.0, gt=0, description="How long the stream keeps changes (for `since`).")
    relay_tick_seconds: float = Field(
        default=1.0, gt=0, le=60,
        description="An idle relay appends a tick (position, cluster time) this often.")
    relay_takeover_seconds: float = Field(
        default=3.0, gt=0, le=600,
        description="A standby relay takes over when the stream has not moved this long.")
    broker_batch: int = Field(
        default=512, ge=1, le=10_000, description="Messages an edge fetches at once.")

    # Security (docs/security.md)
    auth: Literal["none", "apikey", "jwt", "apikey+jwt"] = Field(
        default="none",
        description="none (loopback only), apikey, jwt, or apikey+jwt (either credential).",
    )
    insecure: bool = Field(
        default=False,
        description="Allow auth=none on a non-loopback address (never in production).")
    api_keys: list[ApiKey] = Field(
        default_factory=list, description='JSON list of {"sha256", "scopes", "tenant", "name"}.',
        examples=[[{"sha256": "<64 hex digits: the SHA-256 of the key>",
                    "scopes": ["read:orders", "write:orders"]}]])
    jwt_secret: SecretStr | None = Field(
        default=None, description="HS256 shared secret (at least 32 bytes).")
    jwt_public_key: str | None = Field(
        default=None, description="RS256/ES256 public key: PEM text, or the path of a PEM file.")
    jwt_jwks_file: Path | None = Field(
        default=None, description="A JWKS file (RS256/ES256 keys chosen by `kid`).")
    jwt_audience: str | None = Field(default=None, description="Required `aud`, if set.")
    jwt_issuer: str | None = Field(default=None, description="Required `iss`, if set.")
    jwt_leeway_seconds: float = Field(
        default=30.0, ge=0, le=600, description="Clock skew allowed on exp/nbf/iat.")
    tenant_claim: str = Field(
        default="tenant", min_length=1, max_length=256, description="JWT claim naming the tenant.")
    tenant_field: str | None = Field(
        default=None, description="Document field holding the tenant (default: the claim name).")
    tenant_required: bool = Field(
        default=False, description="Refuse credentials without a tenant (401).")
    scopes_claim: str = Field(
        default="scope", min_length=1, max_length=256,
        description="JWT claim with the scopes (space-separated string or list).")
    allowed_origins: list[str] | None = Field(
        default=None,
        description="Origins allowed to open WebSockets and call REST cross-origin (CORS); "
                    "default: the server's own origin only.",
        examples=[["https://app.example.com"]])
    auth_timeout_seconds: float = Field(
        default=5.0, gt=0, le=60, description="Time for a WebSocket's first `auth` message.")
    rate_limit_per_second: float = Field(
        default=100.0, ge=0, description="REST requests per second per credential (0: off).")
    rate_limit_burst: int = Field(default=200, ge=1, description="Token bucket size.")
    max_connections_per_client: int = Field(
        default=1000, ge=0, description="WebSockets per client address when auth is on (0: off).")

    @property
    def loopback_only(self) -> bool:
        """Mode ``none`` without ``insecure``: served to loopback clients and browsers only."""
        return self.auth == "none" and not self.insecure

    @property
    def tenant_key(self) -> str:
        """The document field that holds the tenant."""
        return self.tenant_field or self.tenant_claim

    @model_validator(mode="after")
    def _check_security(self) -> Self:
        if "apikey" in self.auth and not self.api_keys:
            raise ValueError(f"REALTIME_AUTH={self.auth} needs REALTIME_API_KEYS "
                             '(a JSON list of {"sha256": ..., "scopes": [...]})')
        if "jwt" in self.auth:
            sources = [s for s in (self.jwt_secret, self.jwt_public_key, self.jwt_jwks_file)
                       if s is not None]
            if len(sources) != 1:
                raise ValueError(f"REALTIME_AUTH={self.auth} needs exactly one of "
                                 "REALTIME_JWT_SECRET, REALTIME_JWT_PUBLIC_KEY, "
                                 "REALTIME_JWT_JWKS_FILE")
            if (self.jwt_secret is not None
                    and len(self.jwt_secret.get_secret_value().encode()) < 32):
                raise ValueError("REALTIME_JWT_SECRET must be at least 32 bytes (HS256)")
        if self.broker_url is not None and self.mongodb_uri is None:
            raise ValueError("REALTIME_BROKER_URL needs REALTIME_MONGODB_URI: the relay's replica "
                             "set (edges read snapshots and write there)")
        if self.broker_url is not None and self.relay_takeover_seconds <= self.relay_tick_seconds:
            raise ValueError("REALTIME_RELAY_TAKEOVER_SECONDS must be longer than "
                             "REALTIME_RELAY_TICK_SECONDS (a standby would take over from a "
                             "live relay)")
        if not _FIELD_RE.match(self.tenant_key):
            raise ValueError(f"the tenant field {self.tenant_key[:80]!r} (REALTIME_TENANT_FIELD, "
                             "by default REALTIME_TENANT_CLAIM) must be a plain field name: a "
                             "letter, then up to 63 letters, digits or _; set "
                             "REALTIME_TENANT_FIELD")
        for origin in self.allowed_origins or ():
            if origin == "*":
                if self.auth == "none":
                    raise ValueError("REALTIME_ALLOWED_ORIGINS=[\"*\"] needs authentication")
            elif not _ORIGIN_RE.match(origin):
                raise ValueError(f"REALTIME_ALLOWED_ORIGINS: bad origin {origin[:80]!r}; expected "
                                 "scheme://host[:port], e.g. "
                                 "REALTIME_ALLOWED_ORIGINS='[\"https://app.example.com\"]'")
        return self


# ---------------------------------------------------------------- loading errors


class SettingsError(ValueError):
    """The environment (or the command line) does not make valid settings.

    ``problems`` holds one line per problem, each naming the environment
    variable (or option) and the expected format; ``str(error)`` is those lines.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems) or ("invalid settings",)
        super().__init__("\n".join(self.problems))


def env_name(field: str) -> str:
    """The environment variable of a settings field: ``port`` -> ``REALTIME_PORT``."""
    return ENV_PREFIX + field.upper()


def load_settings(overrides: Mapping[str, Any] | None = None, *,
                  flags: Mapping[str, str] | None = None) -> Settings:
    """:class:`Settings` from the environment, ``overrides`` (field -> value) first.

    ``flags`` names the command-line option an override came from
    (``{"log_format": "--log-format"}``), so its problem names what was typed.

    Raises:
        SettingsError: one line per problem (:func:`describe_error`).
    """
    try:
        return Settings(**dict(overrides or {}))
    except (ValidationError, pydantic_settings.SettingsError) as exc:
        raise SettingsError(describe_error(exc, flags=flags).splitlines()) from None


def describe_error(exc: ValidationError | pydantic_settings.SettingsError, *,
                   flags: Mapping[str, str] | None = None) -> str:
    """One line per problem of ``exc``, raised while building :class:`Settings`.

    Each line names the variable (``REALTIME_PORT``, or the option in
    ``flags``), what is wrong and the expected format with an example, e.g.
    ``REALTIME_COLLECTIONS: not a JSON list; expected a JSON list of strings,
    e.g. REALTIME_COLLECTIONS='["orders","users"]'``. Values are never
    quoted: they may be secrets.
    """
    flags = flags or {}
    if isinstance(exc, pydantic_settings.SettingsError):
        # pydantic-settings could not decode a JSON-typed variable.
        match = _SOURCE_FIELD_RE.search(str(exc))
        if match is None or match.group(1) not in Settings.model_fields:
            return str(exc)
        return _line(match.group(1), (), "not valid JSON", flags)
    lines: list[str] = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = [str(part) for part in error["loc"]]
        kind = error["type"]
        message = str(error["msg"]).removeprefix("Value error, ")
        if not loc or loc[0] not in Settings.model_fields:
            lines.append(message)  # a rule across settings: its message names them
            continue
        if kind == "value_error":
            lines.append(f"{_where(loc[0], loc[1:], flags)}: {message}")
            continue
        problem = _PROBLEMS.get(kind) or message[:1].lower() + message[1:]
        if kind == "extra_forbidden":
            problem = f"unknown field {loc[-1]!r}"
        line = _line(loc[0], loc[1:], problem, flags)
        if line not in lines:
            lines.append(line)
    return "\n".join(lines) or str(exc)


_SOURCE_FIELD_RE = re.compile(r'field "([a-z0-9_]+)"')
_PROBLEMS: dict[str, str] = {
    "int_parsing": "not an integer", "int_type": "not an integer",
    "int_from_float": "not an integer", "float_parsing": "not a number",
    "float_type": "not a number", "finite_number": "not a finite number",
    "greater_than": "out of range", "greater_than_equal": "out of range",
    "less_than": "out of range", "less_than_equal": "out of range",
    "bool_parsing": "not true or false", "bool_type": "not true or false",
    "literal_error": "not one of the choices", "list_type": "not a JSON list",
    "json_invalid": "not valid JSON", "json_type": "not valid JSON",
    "string_type": "not a string", "dict_type": "not a JSON object",
    "model_type": "not a JSON object", "missing": "missing",
    "string_too_short": "too short", "string_too_long": "too long",
}


def _where(field: str, rest: list[str], flags: Mapping[str, str]) -> str:
    """``REALTIME_API_KEYS[0].sha256``: the variable (or option) and the place in its value."""
    name = flags.get(field) or env_name(field)
    for part in rest:
        name += f"[{part}]" if part.isdigit() else f".{part}"
    return name


def _line(field: str, rest: list[str] | tuple[str, ...], problem: str,
          flags: Mapping[str, str]) -> str:
    info = Settings.model_fields[field]
    line = f"{_where(field, list(rest), flags)}: {problem}; expected {_expected(info)}"
    example = _example(info)
    if example is not None:
        flag = flags.get(field)
        shown = shlex.quote(example)
        line += f", e.g. {flag} {shown}" if flag else f", e.g. {env_name(field)}={shown}"
    return line


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _range(info: FieldInfo) -> str:
    bounds: dict[str, Any] = {}
    for item in info.metadata:
        for name in ("ge", "gt", "le", "lt"):
            if getattr(item, name, None) is not None:
                bounds[name] = getattr(item, name)
    if "ge" in bounds and "le" in bounds:
        return f" from {bounds['ge']} to {bounds['le']}"
    words = {"ge": "at least", "gt": "greater than", "le": "at most", "lt": "less than"}
    parts = [f"{words[name]} {value}" for name, value in bounds.items()]
    return " " + " and ".join(parts) if parts else ""


def _expected(info: FieldInfo) -> str:
    """The format a field's variable takes, in words."""
    annotation = _unwrap(info.annotation)
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(str(choice) for choice in get_args(annotation))
    if origin is list:
        (item,) = get_args(annotation) or (Any,)
        noun = "strings" if item is str else "objects" if isinstance(item, type) and \
            issubclass(item, BaseModel) else "values"
        return f"a JSON list of {noun}"
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer" + _range(info)
    if annotation is float:
        return "a number" + _range(info)
    if annotation is Path:
        return "a path"
    return "a string"


def _example(info: FieldInfo) -> str | None:
    """An example value of a field, as its variable would hold it."""
    if info.examples:
        example = info.examples[0]
        return example if isinstance(example, str) else json.dumps(example, separators=(",", ":"))
    annotation = _unwrap(info.annotation)
    if get_origin(annotation) is Literal:
        return str(get_args(annotation)[0])
    if annotation is bool:
        return "true"
    default = info.get_default(call_default_factory=True)
    if default is None or default == [] or isinstance(default, SecretStr):
        return None
    return str(default)

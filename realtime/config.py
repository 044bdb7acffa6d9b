"""Settings, read from the environment (prefix ``REALTIME_``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from realtime.names import COLLECTION_PATTERN

__all__ = ["SCOPE_PATTERN", "ApiKey", "Settings"]

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
    model_config = SettingsConfigDict(env_prefix="REALTIME_", extra="ignore",
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
        default=None, description="Allow-list of exposed collections (JSON list)."
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
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log lines as text or JSON objects (with request ids)."
    )

    # Live feed
    ring_size: int = Field(default=10_000, ge=1)
    heartbeat_seconds: float = Field(default=25.0, gt=0)
    max_subscriptions: int = Field(default=100, ge=1)
    max_frame_bytes: int = Field(default=64 * 1024, ge=1024)
    send_backlog: int = Field(
        default=1000, ge=1, description="Messages a slow connection may owe before 4408."
    )
    snapshot_max: int = Field(default=1000, ge=1)
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

    # Security (docs/security.md)
    auth: Literal["none", "apikey", "jwt", "apikey+jwt"] = Field(
        default="none",
        description="none (loopback only), apikey, jwt, or apikey+jwt (either credential).",
    )
    insecure: bool = Field(
        default=False,
        description="Allow auth=none on a non-loopback address (never in production).")
    api_keys: list[ApiKey] = Field(
        default_factory=list, description='JSON list of {"sha256", "scopes", "tenant", "name"}.')
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
                    "default: the server's own origin only.")
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
        if not _FIELD_RE.match(self.tenant_key):
            raise ValueError(f"the tenant field {self.tenant_key[:80]!r} is not a plain field "
                             "name; set REALTIME_TENANT_FIELD")
        for origin in self.allowed_origins or ():
            if origin == "*":
                if self.auth == "none":
                    raise ValueError("REALTIME_ALLOWED_ORIGINS=[\"*\"] needs authentication")
            elif not _ORIGIN_RE.match(origin):
                raise ValueError(f"bad origin {origin[:80]!r}: use scheme://host[:port]")
        return self

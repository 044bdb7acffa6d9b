"""Settings, read from the environment (prefix ``REALTIME_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Every tunable of the service; see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="REALTIME_", extra="ignore")

    # Database
    mongodb_uri: str | None = Field(
        default=None,
        description="Replica-set URI; unset starts the embedded database.",
    )
    database: str = "realtime"
    driver: Literal["motor"] = "motor"
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

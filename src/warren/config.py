"""Settings: one object per process, read from ``WARREN_*`` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    if env := os.environ.get("WARREN_HOME"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/warren")
    return Path.home() / ".local" / "share" / "warren"


class Settings(BaseSettings):
    """Control-plane settings. The agent has its own small settings in ``warren.agent``."""

    model_config = SettingsConfigDict(env_prefix="WARREN_", extra="ignore")

    home: Path = Field(default_factory=default_home)
    database_url: str | None = None
    # Database connections per CP process. A burst past the pool waits for a free connection
    # (up to db_pool_timeout_s, then 503 database_busy) rather than opening more: an overflow
    # connection is closed again as soon as it is returned, and opening one costs far more CPU
    # than the statements it serves. Replicas x (pool + overflow) must fit the server's
    # max_connections (100 by default on a stock PostgreSQL; 200 on the embedded one).
    db_pool_size: int = Field(default=30, ge=1)
    db_max_overflow: int = Field(default=0, ge=0)
    db_pool_timeout_s: float = Field(default=30.0, gt=0)
    # HS256 key for user and host JWTs; must be >= 32 chars. ``warren up`` generates and keeps
    # one under ``home`` when it is not set.
    jwt_secret: str = ""
    public_url: str = "http://127.0.0.1:8000"
    # Body cap for JSON requests (bytes). Uploads have their own limits.
    max_json_body: int = 1 * 1024 * 1024
    max_upload_bytes: int = 100 * 1024 * 1024

    # GitHub OAuth. Base URLs are settings so tests can point them at a local server.
    github_client_id: str = ""
    github_client_secret: str = ""
    github_authorize_url: str = "https://github.com/login/oauth/authorize"
    github_token_url: str = "https://github.com/login/oauth/access_token"  # noqa: S105 - a URL
    github_api_url: str = "https://api.github.com"
    oauth_redirect_url: str = ""  # where the callback sends the browser; default: dashboard

    # mTLS CA for CP <-> agent. Default: generated under ``home/ca``.
    ca_cert: Path | None = None
    ca_key: Path | None = None

    # Background workers.
    monitor_interval_s: float = 30.0
    # Hosts the monitor checks at once. Each check holds a database connection (and the host's
    # advisory lock) across its ListSandboxes call, so this bounds the monitor's share of the pool.
    monitor_concurrency: int = Field(default=8, ge=1)
    heartbeat_stale_s: float = 90.0
    run_workers: bool = True

    @model_validator(mode="after")
    def _monitor_leaves_connections_for_requests(self) -> Settings:
        if self.monitor_concurrency >= self.db_pool_size + self.db_max_overflow:
            raise ValueError(
                "WARREN_MONITOR_CONCURRENCY must be below WARREN_DB_POOL_SIZE + WARREN_DB_MAX_OVERFLOW: "
                "each host check holds a database connection, and requests need some too"
            )
        return self

    def require_jwt_secret(self) -> str:
        if len(self.jwt_secret) < 32:
            raise RuntimeError("WARREN_JWT_SECRET must be at least 32 characters")
        return self.jwt_secret


@lru_cache
def get_settings() -> Settings:
    return Settings()

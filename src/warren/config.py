"""Settings: one object per process, read from ``WARREN_*`` environment variables."""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from warren import byoc_ranges, egress_ranges

# The sandbox runtime tiers (docs/agent.md, docs/security.md): runc and crun share the host's
# kernel behind seccomp; gvisor puts gVisor's user-space kernel between the sandbox and the host.
Runtime = Literal["runc", "crun", "gvisor"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)
# WARREN_DEFAULT_RUNTIME's default: a create that names no runtime runs on its host's default
# (crun where the agent found it works, else runc; docs/hosts.md "Runtimes").
HOST_RUNTIME = "host"

# Seconds the CP's HTTP servers (`warren cp`, `warren proxy`) keep an idle keep-alive
# connection open. Well past what clients (httpx, requests: 5 s) and load balancers (60 s) keep
# one themselves: with uvicorn's 5 s default a client could send a request on a connection the
# server was closing at that moment, and get a ReadError instead of an answer.
HTTP_KEEP_ALIVE_S = 75


def default_home() -> Path:
    if env := os.environ.get("WARREN_HOME"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/warren")
    return Path.home() / ".local" / "share" / "warren"


class Settings(BaseSettings):
    """Control-plane settings. The agent has its own: ``warren.agent.settings.AgentSettings``."""

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
    # Request bodies the CP reads whole before the app runs (JSON, before authentication) are
    # charged to a budget while they are read (cp/body_cap.py): MiB in all per CP process, and
    # per client address (WARREN_TRUSTED_PROXIES decides the address); past either, 503
    # server_busy (a body over a bound fits only alone under it). A body not whole within
    # body_read_timeout_s of the request's head is refused with 408.
    body_budget_mb: int = Field(default=64, ge=1)
    body_budget_per_address_mb: int = Field(default=8, ge=1)
    body_read_timeout_s: float = Field(default=30.0, gt=0)
    # An upload a route streams (template builds and imports, E2B's envd /files) is charged to
    # that budget while it is read (a window, not its size) and paced: the time it keeps the
    # server waiting for bytes may not pass body_read_timeout_s plus one second per this many KiB
    # received (408 past it), so a slow but moving upload finishes and a stalled one goes.
    body_min_upload_rate_kib_s: int = Field(default=16, ge=1)
    # The CP's and `warren proxy`'s HTTP connections (cp/connection_guard.py): a connection whose
    # request head (request line and headers) is not whole within http_head_timeout_s of its
    # first byte (or of its opening) is closed; at most http_max_connections open per process
    # (bounded below the open-file limit) and http_max_connections_per_address per client
    # address (the socket peer; a peer in WARREN_TRUSTED_PROXIES is not counted per address).
    http_head_timeout_s: float = Field(default=15.0, gt=0, le=3600)
    http_max_connections: int = Field(default=4096, ge=16)
    http_max_connections_per_address: int = Field(default=512, ge=1)
    # Largest WebSocket message (bytes) a CP or `warren proxy` server takes from a client, and the
    # preview proxy from a sandbox's server; one over it closes that connection with 1009. Each
    # connection holds a few messages at most (one read ahead, one being handed on, a stream's
    # queued stdin: 256 KiB or one message), so this bounds what one costs. The SDK and the dashboard
    # send stdin and terminal input in frames well under it (docs/security.md, "Limits").
    ws_max_message: int = Field(default=1 << 20, ge=256 << 10, le=64 << 20)
    # Streams (exec streams, terminals, the dashboard's terminal, directory watches) one team holds
    # open at once in one CP process; the next is refused with 429 too_many_streams
    # (services/stream_slots.py). Each may hold a few MiB (docs/security.md), so this bounds a team.
    max_streams_per_team: int = Field(default=64, ge=1, le=100_000)
    # The same streams of all the teams one account owns together (session 15): an account owns
    # up to max_teams_per_user teams, and a per-team bound alone multiplied by them.
    max_streams_per_owner: int = Field(default=128, ge=1, le=1_000_000)
    # File transfers' flow windows with the agents (rpc/flow_window.py): the largest one
    # transfer grows to, in bytes (262144: the fixed window of old), and what grown windows hold
    # past their first 256 KiB in this CP process, MiB in all and per team.
    transfer_window_max: int = Field(default=8 << 20, ge=256 << 10, le=1 << 30)
    transfer_window_budget_mb: int = Field(default=64, ge=0)
    transfer_window_team_mb: int = Field(default=16, ge=0)
    # ... and of all the teams one account owns together (session 16: an owner of 4 teams held
    # the whole budget); the platform team has no owner and takes its team share only.
    transfer_window_owner_mb: int = Field(default=32, ge=0)
    # Messages one account's file transfers hand on at once on a CP's event loop (an upload's
    # write to the agent, a download's send to its client; services/transfer_turns.py): the
    # rest wait their turn, so its many transfers do not crowd other teams' requests. 0: off.
    transfer_turns_per_owner: int = Field(default=2, ge=0, le=1024)
    # Live teams one user may own (their signup team and those they created); the next create is
    # 429 quota_exceeded, deleting one frees its place (services/teams.py). Every quota is per
    # team and each new team brings the whole default quota, so this bounds one account's share.
    # Platform admins too: like every tenant bound, it is raised here, not skipped by a flag.
    max_teams_per_user: int = Field(default=10, ge=1, le=100_000)
    # The file part of a unary upload (files/write) and a unary download (files/read).
    max_upload_bytes: int = 100 * 1024 * 1024
    # Longest `timeout_sec` an exec or a process may ask for (400 above; docs/api.md).
    max_exec_timeout_s: int = Field(default=3600, ge=1, le=2**31 - 1)
    # Output (stdout + stderr) a unary exec answers; past it the command is killed, 413
    # output_too_large (the streaming exec has no cap).
    max_exec_output: int = Field(default=16 * 1024 * 1024, ge=1024)
    # MiB of unary exec output and buffered upload data one CP process holds at once; past it
    # requests wait (then 503 server_busy). See services/budget.py.
    unary_budget_mb: int = Field(default=128, ge=16)
    # Seconds a request waits for room in that budget before its 503 (a test platform waits less).
    unary_budget_wait_s: float = Field(default=30.0, gt=0, le=3600)

    # GitHub OAuth. Base URLs are settings so tests can point them at a local server.
    github_client_id: str = ""
    github_client_secret: str = ""
    github_authorize_url: str = "https://github.com/login/oauth/authorize"
    github_token_url: str = "https://github.com/login/oauth/access_token"  # noqa: S105 - a URL
    github_api_url: str = "https://api.github.com"
    oauth_redirect_url: str = ""  # where the callback sends the browser; default: dashboard

    # Email verification (docs/auth.md "Verified emails"): the SMTP server password sign-ups'
    # verification links go through, ``smtp://[user:pass@]host:25`` (STARTTLS when offered) or
    # ``smtps://user:pass@host:465``; empty: no mail is sent, and password sign-ups stay
    # unverified until an operator runs ``warren admin user verify EMAIL``.
    smtp_url: str = ""
    smtp_from: str = "warren@localhost"
    # How long a verification link works; a link also dies once used.
    email_verification_ttl_s: int = Field(default=86400, ge=60)

    # Named private ranges a platform admin may open for a team (services/egress.py, PUT
    # /v1/admin/teams/{id}/egress): "corp=10.20.0.0/16,10.21.0.0/16;db=192.168.5.10/32".
    # Otherwise sandboxes reach no private, link-local, CGNAT or loopback address.
    egress_ranges: str = ""
    # Addresses a BYOC host (a tenant's own machine) may register, and the CP dial
    # (cp/hosts/byoc_addresses.py, docs/hosts.md): "public" (public unicast addresses: no
    # loopback, link-local, RFC 1918, CGNAT, multicast, unspecified, nor their IPv6 kin) and/or
    # comma-separated CIDRs ("public,10.20.0.0/16"). Platform hosts are not checked.
    byoc_allowed_cidrs: str = "public"

    # mTLS CA for CP <-> agent. Default: generated under ``home/ca``.
    ca_cert: Path | None = None
    ca_key: Path | None = None

    # Tenant limits (services/limits.py; docs/api.md "Limits and quotas"). Built-in values a
    # platform admin may override at run time (PUT /v1/admin/limits, kept in platform_limits).
    # Per-sandbox maxima: a create past one is a 400 naming it. 8 vCPUs / 16 GiB / 20 GiB disk /
    # 24 h idle is a generous "large" sandbox that still leaves a typical 32-64 GiB host room for
    # several; the disk is a tmpfs charged to the sandbox's memory, so it never exceeds memory.
    max_sandbox_vcpus: int = Field(default=8, ge=1)
    max_sandbox_memory_mb: int = Field(default=16384, ge=16)
    max_sandbox_disk_mb: int = Field(default=20480, ge=16)
    max_sandbox_timeout_sec: int = Field(default=86400, ge=1)
    # Default per-team quotas (a NULL teams.quota_* column means these): concurrent sandboxes,
    # their total vCPUs and memory, snapshot count and total snapshot size.
    quota_sandboxes: int = Field(default=20, ge=0)
    quota_vcpus: int = Field(default=40, ge=0)
    quota_memory_mb: int = Field(default=40960, ge=0)
    quota_snapshots: int = Field(default=20, ge=0)
    quota_snapshot_mb: int = Field(default=20480, ge=0)
    # What the team's layers may hold of the template store (services/team_store.py): its
    # snapshots', builds' and imports', deleted ones until the layer collector removes them.
    quota_store_mb: int = Field(default=40960, ge=0)
    # Capacity-aware scheduling: a host takes a sandbox only while its sandboxes' reservations fit
    # its reported capacity times these ratios. CPU overcommit only costs speed (CFS shares the
    # cores); memory overcommit ends in OOM kills, so it is 1.0. Sandbox disks are tmpfs inside
    # each sandbox's memory limit (counted there); the disk ratio bounds snapshot files on a host.
    overcommit_cpu: float = Field(default=4.0, gt=0)
    overcommit_memory: float = Field(default=1.0, gt=0)
    overcommit_disk: float = Field(default=1.0, gt=0)
    # The runtime of a sandbox whose create names none (docs/api.md §2): "host", the default
    # runtime its host's agent reports, or one runtime for every host (only hosts offering it).
    default_runtime: Literal["host", "runc", "crun", "gvisor"] = "host"
    # A host whose data directory has less free space than this (as its last heartbeat said) gets
    # no new sandboxes (docs/operations.md, "Disk"); 0 turns the check off.
    host_min_free_disk_mb: int = Field(default=1024, ge=0)

    # Background workers.
    monitor_interval_s: float = 30.0
    # Hosts the monitor checks at once. Each check holds a database connection (and the host's
    # advisory lock) across its ListSandboxes call, so this bounds the monitor's share of the pool.
    monitor_concurrency: int = Field(default=8, ge=1)
    heartbeat_stale_s: float = 90.0
    run_workers: bool = True
    # A `pending` record older than this whose host neither has the sandbox nor is creating it is
    # settled (a CP died mid-create). Twice a slow create; in-flight creates are never settled.
    pending_grace_s: float = Field(default=60.0, gt=0)
    # Replica leases (services/replica_lease.py, docs/hosts.md): each CP process renews its lease
    # every replica_lease_interval_s; one not renewed for replica_lease_ttl_s has expired, and the
    # `pending` creates of its replica are settled by the next monitor pass without the grace.
    # The TTL covers missed renewals (a slow database) plus the replicas' clock skew.
    replica_lease_interval_s: float = Field(default=5.0, gt=0)
    replica_lease_ttl_s: float = Field(default=20.0, gt=0)
    # Retention (services/retention.py, docs/operations.md "Retention"): sandbox rows stopped or
    # errored longer ago than sandbox_retention_days, and audit records older than
    # audit_retention_days, are deleted by a pass every retention_interval_s on every replica;
    # 0 days keeps them for ever. Whole days, at most 100 years.
    sandbox_retention_days: int = Field(default=7, ge=0, le=36500)
    audit_retention_days: int = Field(default=90, ge=0, le=36500)
    retention_interval_s: float = Field(default=60.0, gt=0)

    # Abuse limits (services/rate_limits.py, docs/auth.md); 0 turns one off. Sign-in counters live
    # in PostgreSQL, shared by every replica. Logins per account per minute (from any address),
    # sign-in attempts (password logins and OAuth callbacks) per client address per minute (across
    # accounts), and signups per client address per hour.
    login_limit_per_account: int = Field(default=60, ge=0)
    login_limit_per_address: int = Field(default=300, ge=0)
    signup_limit_per_address: int = Field(default=60, ge=0)
    # Authenticated API requests per team per second, with a burst; an in-process token bucket,
    # so the limit holds per CP replica.
    team_rate_limit_per_s: float = Field(default=200.0, ge=0)
    team_rate_burst: int = Field(default=400, ge=1)
    # Refusals (401, 429) per client address (cp/refusal_hold.py): refusal_burst_per_address
    # answered at once, refilled at refusal_rate_per_address_s; past it each is held
    # refusal_hold_s before it is sent (0 turns the hold off). In-process, per replica.
    refusal_rate_per_address_s: float = Field(default=2.0, gt=0)
    refusal_burst_per_address: int = Field(default=120, ge=1)
    refusal_hold_s: float = Field(default=3.0, ge=0, le=60)
    # Comma-separated addresses or CIDRs of reverse proxies whose X-Forwarded-For names the
    # client. Empty: the socket peer is the client (X-Forwarded-For is never believed).
    trusted_proxies: str = ""

    # The template store (docs/templates.md §3): empty for <home>/store, a directory, or
    # s3://bucket/prefix (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; the
    # region from here, else AWS_REGION).
    template_store: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = ""
    # Layer GC: how often one replica looks for layers nothing references, and how old a layer
    # must be before it may go (a build in flight records its layers only when it ends).
    layer_gc_interval_s: float = Field(default=600.0, gt=0)
    layer_gc_grace_s: float = Field(default=3600.0, ge=0)
    # A build cache entry unused (no build hit it) this long is dropped by the GC pass; its
    # layer then ages out like any unreferenced layer.
    build_cache_ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0)

    # Template builds and imports (docs/templates.md §4): a build's wall time, one layer's and
    # the template's size, the uploaded context and image, concurrent builds per team (429 past
    # it), the build sandbox's shape, the log kept per build, and the heartbeat a running build
    # moves (one whose heartbeat is older than build_stale_s is failed by the sweep: its
    # replica died).
    build_timeout_s: int = Field(default=1800, ge=1)
    # A create whose host lacks its layers waits at most this long for the host's install turns
    # (the client's request is held meanwhile), then tries another host or answers 503
    # `layer_install_busy`; a team has at most this many creates waiting so per CP replica
    # (docs/templates.md §2 "Waiting for a turn"). Builds and warm pools wait up to 900 s.
    layer_turn_wait_s: float = Field(default=60.0, gt=0)
    layer_turn_waiters_per_team: int = Field(default=16, ge=1)
    build_max_layer_mb: int = Field(default=4096, ge=1)
    build_max_template_mb: int = Field(default=8192, ge=1)
    build_max_context_mb: int = Field(default=512, ge=1)
    import_max_image_mb: int = Field(default=8192, ge=1)
    # Imports a team runs at once, upload included (429 past it); counted per CP replica.
    import_max_per_team: int = Field(default=2, ge=1)
    # An import's wall time once its image is uploaded (its turn, the read, the store): past it
    # the import fails 503 `import_timeout` (and the spool's sweep may take its files).
    import_timeout_s: int = Field(default=3600, ge=1)
    build_max_per_team: int = Field(default=2, ge=1)
    # Builds running at once across all the teams one account owns (an account owns up to
    # max_teams_per_user teams: the per-team bound alone multiplied by them); 429 too_many_builds.
    build_max_per_owner: int = Field(default=4, ge=1)
    # How long a build step waits for room on a build host (each step's sandbox is reserved in
    # its host's capacity like a sandbox) before the build fails with no_capacity.
    build_capacity_wait_s: float = Field(default=120.0, ge=0)
    build_vcpus: int = Field(default=2, ge=1)
    build_memory_mb: int = Field(default=2048, ge=128)
    build_disk_mb: int = Field(default=4096, ge=64)
    build_max_log_mb: int = Field(default=16, ge=1)
    build_heartbeat_s: float = Field(default=5.0, gt=0)
    build_stale_s: float = Field(default=60.0, gt=0)
    # The `base` platform template (services/platform_templates.py): built in the background
    # once a host is online when set (`warren up` sets it), from this Warrenfile (empty: the one
    # in the package, cp/templates/base.Warrenfile); skipped when the newest `base` is that spec.
    build_base_template: bool = False
    base_template_spec: str = ""
    # The `code-interpreter-v1` platform template (docs/e2b.md §4), built the same way when set;
    # off by default: its build context holds ~55 MB of wheels this process's pip downloads.
    build_interpreter_template: bool = False

    # Preview URLs (docs/networking.md §3): the wildcard domain of host-name routing
    # ({port}-{sandbox_id}.<domain>; empty: path routing only), where `warren proxy` listens,
    # proxied connections open at once per sandbox in one CP/proxy process (429 past it),
    # the longest a signed preview URL may live, and how long a proxy trusts what it read
    # about a sandbox (token hash, public ports, status) before reading it again.
    preview_domain: str = ""
    # Path routing (/v1/sandboxes/{id}/ports/{port}/…) serves tenant pages on the CP's own
    # origin; production with a preview domain may turn it off (docs/security.md).
    proxy_path_routing: bool = True
    proxy_listen: str = "127.0.0.1:8001"
    proxy_max_conns_per_sandbox: int = Field(default=128, ge=1)
    # How long the preview proxy waits for a sandbox's server to answer a WebSocket upgrade
    # before 504 upstream_timeout (the exchange holds one of the sandbox's slots meanwhile).
    ws_handshake_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    # Every stream_recheck_s this process re-reads, in one statement, the credentials of its open
    # streams and proxied connections, and ends those whose credential was revoked by another
    # process (services/stream_revocation.py; its own changes end them at once).
    stream_recheck_s: float = Field(default=5.0, gt=0, le=3600)
    # The same connections of all one team's sandboxes, and of all the teams one account owns
    # (session 16: the per-sandbox bound alone multiplied by a team's sandboxes and an account's
    # teams); per CP/proxy process, 429 too_many_connections past either (cp/proxy/bounds.py).
    proxy_max_conns_per_team: int = Field(default=256, ge=1)
    proxy_max_conns_per_owner: int = Field(default=512, ge=1)
    preview_url_max_expires_s: int = Field(default=7 * 24 * 3600, ge=60)
    proxy_cache_s: float = Field(default=1.0, ge=0)

    # The E2B-compatible listener (docs/e2b.md): its TCP port on the CP's address (0: off;
    # `warren cp`/`warren up --e2b-port` set it, 3000 by default).
    e2b_port: int = Field(default=0, ge=0, le=65535)
    # The longest absolute lifetime (E2B's `timeout`, docs/e2b.md §2) a create, set_timeout or
    # connect may ask for; past it is a 400. And how often each replica's lifetime sweeper looks
    # for sandboxes whose lifetime has ended.
    e2b_max_lifetime_s: int = Field(default=86400, ge=1)
    lifetime_sweep_interval_s: float = Field(default=1.0, gt=0)
    # Observability (docs/operations.md): the scrape token that reads /metrics besides platform
    # admins' JWTs (empty: admins only), and the log format of `warren cp`/`up`/`proxy`.
    metrics_token: str = ""
    log_format: Literal["text", "json"] = "text"

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: str) -> str:
        for item in value.split(","):
            if item.strip():
                ipaddress.ip_network(item.strip(), strict=False)  # ValueError names the bad one
        return value

    @field_validator("byoc_allowed_cidrs")
    @classmethod
    def _byoc_cidrs_valid(cls, value: str) -> str:
        byoc_ranges.policy_of(value)  # ValueError names the bad item
        return value

    @model_validator(mode="after")
    def _monitor_leaves_connections_for_requests(self) -> Settings:
        if self.monitor_concurrency >= self.db_pool_size + self.db_max_overflow:
            raise ValueError(
                "WARREN_MONITOR_CONCURRENCY must be below WARREN_DB_POOL_SIZE + WARREN_DB_MAX_OVERFLOW: "
                "each host check holds a database connection, and requests need some too"
            )
        return self

    @model_validator(mode="after")
    def _lease_outlives_renewals(self) -> Settings:
        if self.replica_lease_ttl_s < 2 * self.replica_lease_interval_s:
            raise ValueError(
                "WARREN_REPLICA_LEASE_TTL_S must be at least twice WARREN_REPLICA_LEASE_INTERVAL_S: "
                "a live replica's lease must survive one late renewal"
            )
        return self

    @model_validator(mode="after")
    def _egress_ranges_valid(self) -> Settings:
        if self.egress_ranges:  # checked once, when the CP reads its settings
            egress_ranges.check_platform_outside(
                egress_ranges.parse_ranges(self.egress_ranges),
                [("the database", self.database_url), ("the control plane", self.public_url)],
            )
        return self

    def require_jwt_secret(self) -> str:
        if len(self.jwt_secret) < 32:
            raise RuntimeError("WARREN_JWT_SECRET must be at least 32 characters")
        return self.jwt_secret


@lru_cache
def get_settings() -> Settings:
    return Settings()

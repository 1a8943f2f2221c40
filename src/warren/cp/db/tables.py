"""Table definitions (SQLAlchemy Core) for every table in docs/spec.md §1, adjusted by docs/design.md §4.

Core tables rather than ORM classes: services write explicit SQL (conditional updates such as
"set online WHERE status='pending'") and the shapes stay obvious. Alembic migrations under
``migrations/`` create exactly this schema; a test checks the two agree.
"""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP, UUID

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

TS = TIMESTAMP(timezone=True)
NOW = text("now()")


def _uuid_pk() -> Column:
    return Column("id", UUID(as_uuid=True), primary_key=True)


teams = Table(
    "teams",
    metadata,
    _uuid_pk(),
    Column("name", Text, nullable=False),
    Column("slug", Text, nullable=False, unique=True),
    Column("is_byoc", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", TS, nullable=False, server_default=NOW),
    Column("deleted_at", TS, nullable=True),
    # Per-team quotas; NULL means the platform default (platform_limits). Raised per team by a
    # platform admin.
    Column("quota_sandboxes", Integer, nullable=True),
    Column("quota_vcpus", Integer, nullable=True),
    Column("quota_memory_mb", Integer, nullable=True),
    Column("quota_snapshots", Integer, nullable=True),
    Column("quota_snapshot_mb", Integer, nullable=True),
    # What the team's layers may hold of the template store (services/team_store.py, 0019).
    Column("quota_store_mb", Integer, nullable=True),
    # Names of operator-defined egress ranges (private networks a sandbox may reach) opened
    # for this team; everything private is closed by default.
    Column("egress_allow", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
)

# Platform-wide limits and default quotas set by platform admins (key -> value); a key absent
# here takes its built-in default (services/limits.py).
platform_limits = Table(
    "platform_limits",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", BigInteger, nullable=False),
    Column("updated_at", TS, nullable=False, server_default=NOW),
)

# Fixed-window counters for the abuse limits (login, signup, token endpoints), shared by every
# CP replica: one row per key (e.g. "login:acct:<email>"), reset when its window has passed.
rate_limits = Table(
    "rate_limits",
    metadata,
    Column("key", Text, primary_key=True),
    Column("window_start", TS, nullable=False),
    Column("count", Integer, nullable=False),
)

users = Table(
    "users",
    metadata,
    _uuid_pk(),
    Column("email", Text, nullable=False, unique=True),
    Column("password_hash", Text, nullable=True),  # argon2id; NULL for OAuth-only users
    Column("name", Text, nullable=False, server_default=text("''")),
    Column("is_admin", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", TS, nullable=False, server_default=NOW),
    Column("updated_at", TS, nullable=False, server_default=NOW),
    # When the holder proved they own ``email`` (0017); NULL: unverified, may not accept invitations.
    Column("email_verified_at", TS, nullable=True),
)

users_teams = Table(
    "users_teams",
    metadata,
    Column("user_id", UUID(as_uuid=True), ForeignKey("users.id"), nullable=False, index=True),
    Column("team_id", UUID(as_uuid=True), ForeignKey("teams.id"), nullable=False),
    Column("is_default", Boolean, nullable=False, server_default=text("false")),
    Column("role", Text, nullable=False, server_default=text("'member'")),
    Column("created_at", TS, nullable=False, server_default=NOW),
    PrimaryKeyConstraint("team_id", "user_id"),
)

# Pending invitations to join a team (services/team_invitations.py): a user becomes a member only
# by accepting one. One per (team, invitee): a second invite replaces it. Rows past expires_at
# are dead (never listed or accepted) and are deleted by the team's next invite.
team_invitations = Table(
    "team_invitations",
    metadata,
    _uuid_pk(),
    Column("team_id", UUID(as_uuid=True), ForeignKey("teams.id"), nullable=False),
    Column("user_id", UUID(as_uuid=True), ForeignKey("users.id"), nullable=False, index=True),
    Column("role", Text, nullable=False),
    Column("invited_by", UUID(as_uuid=True), ForeignKey("users.id"), nullable=False),
    Column("created_at", TS, nullable=False, server_default=NOW),
    Column("expires_at", TS, nullable=False),
    UniqueConstraint("team_id", "user_id", name="uq_team_invitations_team_id"),
)

team_api_keys = Table(
    "team_api_keys",
    metadata,
    _uuid_pk(),
    Column("team_id", UUID(as_uuid=True), ForeignKey("teams.id"), nullable=False, index=True),
    Column("name", Text, nullable=False, server_default=text("'Unnamed API Key'")),
    Column("key_hash", Text, nullable=False, unique=True),
    Column("key_prefix", Text, nullable=False),
    Column("created_by", UUID(as_uuid=True), ForeignKey("users.id"), nullable=False),
    Column("created_at", TS, nullable=False, server_default=NOW),
    Column("last_used", TS, nullable=True),
)

oauth_providers = Table(
    "oauth_providers",
    metadata,
    Column("provider", Text, nullable=False),
    Column("provider_id", Text, nullable=False),
    Column("user_id", UUID(as_uuid=True), ForeignKey("users.id"), nullable=False, index=True),
    Column("email", Text, nullable=False, server_default=text("''")),
    Column("created_at", TS, nullable=False, server_default=NOW),
    PrimaryKeyConstraint("provider", "provider_id"),
)

hosts = Table(
    "hosts",
    metadata,
    _uuid_pk(),
    Column("type", Text, nullable=False, server_default=text("'regular'"), index=True),
    Column("team_id", UUID(as_uuid=True), ForeignKey("teams.id"), nullable=True, index=True),
    Column("provider", Text, nullable=False, server_default=text("''")),
    Column("availability_zone", Text, nullable=False, server_default=text("''")),
    Column("arch", Text, nullable=False, server_default=text("''")),
    Column("cpu_cores", Integer, nullable=False, server_default=text("0")),
    Column("memory_mb", Integer, nullable=False, server_default=text("0")),
    Column("disk_gb", Integer, nullable=False, server_default=text("0")),
    Column("address", Text, nullable=False, server_default=text("''")),
    Column("status", Text, nullable=False, server_default=text("'pending'"), index=True),
    Column("last_heartbeat_at", TS, nullable=True),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_by", UUID(as_uuid=True), ForeignKey("users.id"), nullable=False),
    Column("created_at", TS, nullable=False, server_default=NOW),
    Column("updated_at", TS, nullable=False, server_default=NOW),
    Column("cert_fingerprint", Text, nullable=False, server_default=text("''")),
    Column("cert_expires_at", TS, nullable=True),
    # The free space of its data directory, as its agent last reported it (0: cannot write
    # there); NULL until reported. The scheduler skips a host below WARREN_HOST_MIN_FREE_DISK_MB.
    Column("disk_free_bytes", BigInteger, nullable=True),
    # The sandbox runtimes the host offers ('runc', 'crun', 'gvisor'), as it reports them at
    # registration and with each heartbeat; hosts that never said run runc.
    Column("runtimes", ARRAY(Text), nullable=False, server_default=text("'{runc}'::text[]")),
    # The runtime its agent runs a create on when the create names none (one of ``runtimes``),
    # as it reports it; NULL: never said (older agents, runc). Migration 0014.
    Column("default_runtime", Text, nullable=True),
    # Warm pools (issue 17, docs/hosts.md): what the agent last reported
    # ([{"template", "target", "ready"}]; NULL: never reported) and the sizes set through the
    # API ({template: size}), applied again when the host reports other targets.
    Column("warm_pools", JSONB, nullable=True),
    Column("warm_pool_targets", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
)

# One-time registration tokens (docs/design.md §4: the hash lives here, no Redis).
host_tokens = Table(
    "host_tokens",
    metadata,
    _uuid_pk(),
    Column(
        "host_id", UUID(as_uuid=True), ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    Column("token_hash", Text, nullable=False, unique=True),
    Column("created_by", UUID(as_uuid=True), ForeignKey("users.id"), nullable=False),
    Column("created_at", TS, nullable=False, server_default=NOW),
    Column("expires_at", TS, nullable=False),
    Column("used_at", TS, nullable=True),
)

host_tags = Table(
    "host_tags",
    metadata,
    Column("host_id", UUID(as_uuid=True), ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    Column("tag", Text, nullable=False, index=True),
    PrimaryKeyConstraint("host_id", "tag"),
)

host_refresh_tokens = Table(
    "host_refresh_tokens",
    metadata,
    _uuid_pk(),
    Column(
        "host_id", UUID(as_uuid=True), ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    Column("token_hash", Text, nullable=False, unique=True),
    Column("expires_at", TS, nullable=False),
    Column("created_at", TS, nullable=False, server_default=NOW),
    Column("revoked_at", TS, nullable=True),
)

templates = Table(
    "templates",
    metadata,
    _uuid_pk(),
    Column("name", Text, nullable=False),
    Column("type", Text, nullable=False, server_default=text("'base'")),
    Column("vcpus", Integer, nullable=False, server_default=text("1")),
    Column("memory_mb", Integer, nullable=False, server_default=text("512")),
    Column("size_bytes", BigInteger, nullable=False, server_default=text("0")),
    # 'filesystem' (container runtime) or 'memory' (a runtime that checkpoints RAM too).
    Column("snapshot_kind", Text, nullable=False, server_default=text("'filesystem'")),
    # The host whose disk holds a snapshot's files (NULL for base templates, which every host
    # builds itself). Sandboxes from a snapshot are scheduled onto this host only; no FK, so
    # the row outlives a deleted host and creates from it answer 503 instead of vanishing.
    Column("host_id", UUID(as_uuid=True), nullable=True),
    Column("created_at", TS, nullable=False, server_default=NOW),
    Column("team_id", UUID(as_uuid=True), nullable=False, index=True),  # no FK: zero = platform
    # A row is one version of a named template (docs/templates.md): a host-local base
    # ('minimal' or 'scratch') plus store layers (sha256 hex, bottom first) and the defaults
    # every sandbox of it gets (env, workdir, user, start_cmd, ready_cmd).
    Column("version", Integer, nullable=False, server_default=text("1")),
    Column("base", Text, nullable=False, server_default=text("'minimal'")),
    Column("layers", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    Column("config", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("tags", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    Column("source", Text, nullable=False, server_default=text("''")),  # build | import | snapshot
    Column("build_id", UUID(as_uuid=True), nullable=True),
    UniqueConstraint("team_id", "name", "version", name="uq_templates_team_id"),
)

# The template store's index: every layer it holds (docs/templates.md).
layers = Table(
    "layers",
    metadata,
    Column("digest", Text, primary_key=True),
    Column("size_bytes", BigInteger, nullable=False),
    Column("created_at", TS, nullable=False, server_default=NOW),
)

# The layers a team's snapshots, builds and imports wrote to the store (a null digest: the room a
# snapshot export in flight holds). One counts while the layer is in ``layers``:
# services/team_store.py.
team_store_layers = Table(
    "team_store_layers",
    metadata,
    _uuid_pk(),
    Column("team_id", UUID(as_uuid=True), nullable=False),
    Column("digest", Text, nullable=True),
    Column("size_bytes", BigInteger, nullable=False),
    Column("written_at", TS, nullable=False, server_default=NOW),
    UniqueConstraint("team_id", "digest", name="uq_team_store_layers_team_id"),
)

# Which host has which layer installed (for scheduling near the layers and for host GC).
host_layers = Table(
    "host_layers",
    metadata,
    Column("host_id", UUID(as_uuid=True), nullable=False),
    Column("digest", Text, nullable=False),
    Column("fetched_at", TS, nullable=False, server_default=NOW),
    PrimaryKeyConstraint("host_id", "digest", name="pk_host_layers"),
)

template_builds = Table(
    "template_builds",
    metadata,
    _uuid_pk(),
    Column("team_id", UUID(as_uuid=True), nullable=False),
    Column("name", Text, nullable=False),
    Column("tags", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    # queued | running | ready | failed
    Column("status", Text, nullable=False, server_default=text("'queued'")),
    Column("spec", Text, nullable=False),
    Column("context_digest", Text, nullable=True),
    Column("step", Integer, nullable=False, server_default=text("0")),
    Column("steps", Integer, nullable=False, server_default=text("0")),
    Column("cached_steps", Integer, nullable=False, server_default=text("0")),
    Column("error", Text, nullable=False, server_default=text("''")),
    Column("failed_step", Integer, nullable=True),
    Column("exit_code", Integer, nullable=True),
    Column("template_id", UUID(as_uuid=True), nullable=True),
    Column("host_id", UUID(as_uuid=True), nullable=True),
    Column("created_by", Text, nullable=False, server_default=text("''")),
    Column("log_bytes", BigInteger, nullable=False, server_default=text("0")),
    Column("created_at", TS, nullable=False, server_default=NOW),
    Column("started_at", TS, nullable=True),
    Column("finished_at", TS, nullable=True),
    # Moved on by the replica running the build; a stale one means that replica died.
    Column("heartbeat_at", TS, nullable=True),
    # The running step's room on its host (migration 0020, warren_reserve_build): counted in the
    # host's capacity while the build is running; NULL between steps.
    Column("reserved_host_id", UUID(as_uuid=True), nullable=True),
    Column("reserved_vcpus", Integer, nullable=False, server_default=text("0")),
    Column("reserved_memory_mb", Integer, nullable=False, server_default=text("0")),
    # When the build last took a host's room (migration 0024; kept after it ends): its team's
    # latest is where the team's waiting builds queue again (warren_builds_ahead).
    Column("reserved_at", TS, nullable=True),
    # The running step's wait for room (migration 0024, warren_builds_ahead): since when, its last
    # try (a wait not renewed is dropped), and the host it waits for (NULL: any of its pool).
    Column("wait_since", TS, nullable=True),
    Column("wait_seen_at", TS, nullable=True),
    Column("wait_host_id", UUID(as_uuid=True), nullable=True),
    Index("ix_template_builds_team_id", "team_id", text("created_at DESC")),
    Index(
        "ix_template_builds_reserved",
        "reserved_host_id",
        postgresql_where=text("status = 'running'"),
        postgresql_include=["reserved_vcpus", "reserved_memory_mb"],
    ),
    Index(
        "ix_template_builds_waiting",
        "wait_since",
        postgresql_where=text("status = 'running' AND wait_since IS NOT NULL"),
    ),
    Index("ix_template_builds_team_reserved_at", "team_id", "reserved_at"),
)

# A build's log in appended chunks; a reader asks for the bytes from an offset.
template_build_logs = Table(
    "template_build_logs",
    metadata,
    Column(
        "build_id", UUID(as_uuid=True), ForeignKey("template_builds.id", ondelete="CASCADE"), nullable=False
    ),
    Column("start_offset", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("build_id", "start_offset", name="pk_template_build_logs"),
)

# Per team (a layer is only reused by the team whose build made it): cache key → layer.
build_cache = Table(
    "build_cache",
    metadata,
    Column("team_id", UUID(as_uuid=True), nullable=False),
    Column("key", Text, nullable=False),
    Column("layer", Text, nullable=False),
    Column("created_at", TS, nullable=False, server_default=NOW),
    Column("used_at", TS, nullable=False, server_default=NOW),
    PrimaryKeyConstraint("team_id", "key", name="pk_build_cache"),
)

_ACTIVE = text("status NOT IN ('stopped', 'error')")  # a sandbox that takes room on its host
_SUMMED = ["vcpus", "memory_mb"]

sandboxes = Table(
    "sandboxes",
    metadata,
    _uuid_pk(),
    Column("team_id", UUID(as_uuid=True), ForeignKey("teams.id"), nullable=False, index=True),
    Column("host_id", UUID(as_uuid=True), nullable=False),  # no FK: may outlive the host row
    Column("template", Text, nullable=False, server_default=text("'minimal'")),
    Column("status", Text, nullable=False, server_default=text("'pending'"), index=True),
    Column("vcpus", Integer, nullable=False, server_default=text("1")),
    Column("memory_mb", Integer, nullable=False, server_default=text("512")),
    Column("timeout_sec", Integer, nullable=False, server_default=text("300")),
    Column("disk_size_mb", Integer, nullable=False, server_default=text("5120")),
    Column("internet", Boolean, nullable=False, server_default=text("true")),
    # The control-plane replica whose create made this row (its lease: replica_leases); NULL for
    # rows reserved by a replica that did not say. Only read while the row is `pending`.
    Column("replica_id", UUID(as_uuid=True), nullable=True),
    # Preview ports (docs/networking.md): the sha256 of the sandbox's traffic token, the ports
    # open without it, and whether proxied traffic resumes a paused sandbox.
    Column("traffic_token_hash", Text, nullable=False, server_default=text("''")),
    Column("public_ports", ARRAY(Integer), nullable=False, server_default=text("'{}'::int[]")),
    Column("auto_resume", Boolean, nullable=False, server_default=text("false")),
    # Egress rules: {"allow_out": [...], "deny_out": [...]}, CIDRs or domain names.
    Column(
        "egress", JSONB, nullable=False, server_default=text("""'{"allow_out": [], "deny_out": []}'::jsonb""")
    ),
    Column("guest_ip", Text, nullable=False, server_default=text("''")),
    Column("host_ip", Text, nullable=False, server_default=text("''")),
    # E2B compatibility (docs/e2b.md §2): client metadata, and an absolute lifetime (NULL: none)
    # that ends in a kill, or a pause when on_end is 'pause'.
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("end_at", TS, nullable=True),
    Column("on_end", Text, nullable=False, server_default=text("'kill'")),
    Column("all_ports_public", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", TS, nullable=False, server_default=NOW),
    Column("started_at", TS, nullable=True),
    Column("last_active_at", TS, nullable=True),
    Column("last_updated", TS, nullable=False, server_default=NOW),
    Column("template_id", UUID(as_uuid=True), nullable=True),
    Column("template_team_id", UUID(as_uuid=True), nullable=True),
    # The runtime tier it runs on ('runc', 'crun', 'gvisor'), and how a paused one is paused:
    # 'memory' (frozen in place) or 'disk' (checkpointed, its memory freed); NULL unless paused.
    Column("runtime", Text, nullable=False, server_default=text("'runc'")),
    Column("paused_state", Text, nullable=True),
    # Bytes it sent out through its host (docs/operations.md, "Metrics"), accumulated by the host
    # monitor from the agent's counter, whose last reading is egress_counter.
    Column("egress_bytes", BigInteger, nullable=False, server_default=text("0")),
    Column("egress_counter", BigInteger, nullable=False, server_default=text("0")),
    # The envd access token's epoch (services/envd_tokens.py, migration 0018): bumping it voids
    # the sandbox's E2B access token and the URLs signed with it.
    Column("envd_token_epoch", BigInteger, nullable=False, server_default=text("0")),
    # Why it ended (cp/db/end_reasons.py, migration 0022): set with `stopped`/`error`, else NULL.
    Column("end_reason", Text, nullable=True),
    Index("ix_sandboxes_host_id_status", "host_id", "status"),
    # The lifetime sweeper's running rows by end (migration 0023: paused ones left out).
    Index(
        "ix_sandboxes_end_at",
        "end_at",
        postgresql_where=text("end_at IS NOT NULL AND status IN ('running')"),
    ),
    # The ended rows by age, for the retention pass (services/retention.py, migration 0012).
    Index("ix_sandboxes_ended", "last_updated", postgresql_where=text("status IN ('stopped', 'error')")),
    # The active rows per host and per team with what they take: a create's usage sums (migration 0013;
    # the host's with the runtime its footprint needs, 0021).
    Index(
        "ix_sandboxes_active_host",
        "host_id",
        postgresql_where=_ACTIVE,
        postgresql_include=[*_SUMMED, "runtime"],
    ),
    Index("ix_sandboxes_active_team", "team_id", postgresql_where=_ACTIVE, postgresql_include=_SUMMED),
)

audit_logs = Table(
    "audit_logs",
    metadata,
    _uuid_pk(),
    Column("team_id", UUID(as_uuid=True), nullable=True),
    Column("actor_type", Text, nullable=False),  # user | api_key | system
    Column("actor_id", Text, nullable=False, server_default=text("''")),
    Column("actor_name", Text, nullable=False, server_default=text("''")),
    Column("resource_type", Text, nullable=False),
    Column("resource_id", Text, nullable=False, server_default=text("''")),
    Column("action", Text, nullable=False),
    Column("scope", Text, nullable=False, server_default=text("'team'")),
    Column("status", Text, nullable=False, server_default=text("'success'")),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", TS, nullable=False, server_default=NOW),
    Index("ix_audit_logs_team_id_created_at", "team_id", text("created_at DESC")),
    Index("ix_audit_logs_created_at", "created_at", "id"),  # the retention pass (services/retention.py)
)

# Per team, the usage of its sandbox rows the retention pass deleted (services/retention.py): the
# warren_team_* counters add it to the rows' sums, so they never go down when rows go.
team_usage_retired = Table(
    "team_usage_retired",
    metadata,
    Column("team_id", UUID(as_uuid=True), nullable=False),  # no FK, like audit_logs
    Column("sandboxes", BigInteger, nullable=False, server_default=text("0")),
    Column("secs", Numeric, nullable=False, server_default=text("0")),
    Column("vcpu_secs", Numeric, nullable=False, server_default=text("0")),
    Column("mem_secs", Numeric, nullable=False, server_default=text("0")),
    Column("egress", Numeric, nullable=False, server_default=text("0")),
    Column("updated_at", TS, nullable=False, server_default=NOW),
    PrimaryKeyConstraint("team_id"),
)

# Metric points saved when a sandbox is paused (the agent only samples running ones).
sandbox_metric_points = Table(
    "sandbox_metric_points",
    metadata,
    Column("sandbox_id", UUID(as_uuid=True), nullable=False),
    Column("ts", TS, nullable=False),
    Column("cpu_pct", Integer, nullable=False, server_default=text("0")),
    Column("mem_bytes", BigInteger, nullable=False, server_default=text("0")),
    Column("disk_bytes", BigInteger, nullable=False, server_default=text("0")),
    PrimaryKeyConstraint("sandbox_id", "ts"),
)

# Control-plane replicas alive (services/replica_lease.py): each `warren cp` process moves its
# row's expires_at ahead every few seconds and deletes it at a clean shutdown. A `pending`
# sandbox whose replica's lease is gone or expired has no create left to finish it: the host
# monitor settles it in one pass (docs/hosts.md).
replica_leases = Table(
    "replica_leases",
    metadata,
    _uuid_pk(),
    Column("hostname", Text, nullable=False, server_default=text("''")),
    Column("pid", Integer, nullable=False, server_default=text("0")),
    Column("started_at", TS, nullable=False, server_default=NOW),
    Column("expires_at", TS, nullable=False),
)

# SQL for the template reserved-name trigger (docs/spec.md §1.10) and the `minimal` seed row; the
# migration runs these, and tests assert the trigger fires.
RESERVED_NAME_TRIGGER_SQL = [
    """
    CREATE OR REPLACE FUNCTION templates_reserved_name() RETURNS trigger AS $$
    BEGIN
        IF NEW.team_id <> '00000000-0000-0000-0000-000000000000'::uuid AND EXISTS (
            SELECT 1 FROM templates
            WHERE team_id = '00000000-0000-0000-0000-000000000000'::uuid AND name = NEW.name
        ) THEN
            RAISE EXCEPTION 'template name "%" is reserved by a platform template', NEW.name
                USING ERRCODE = 'unique_violation';
        END IF;
        RETURN NEW;
    END;
    $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER templates_reserved_name_trg
        BEFORE INSERT OR UPDATE ON templates
        FOR EACH ROW EXECUTE FUNCTION templates_reserved_name()
    """,
]
SEED_SQL = [
    """
    INSERT INTO templates (id, name, type, vcpus, memory_mb, size_bytes, team_id)
    VALUES ('00000000-0000-0000-0000-000000000000', 'minimal', 'base', 1, 512, 0,
            '00000000-0000-0000-0000-000000000000')
    ON CONFLICT DO NOTHING
    """,
]
DROP_TRIGGER_SQL = [
    "DROP TRIGGER IF EXISTS templates_reserved_name_trg ON templates",
    "DROP FUNCTION IF EXISTS templates_reserved_name()",
]

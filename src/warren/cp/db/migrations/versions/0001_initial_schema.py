"""initial schema: every table of docs/spec.md §1 (as adjusted by docs/design.md §4), the template
reserved-name trigger and the built-in ``minimal`` template.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The SQL is copied here rather than imported from ``tables.py``: a revision must keep doing
# exactly what it did when it was written, whatever later code looks like.
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


def upgrade() -> None:
    op.create_table(
        "audit_logs",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("team_id", sa.UUID(), nullable=True),
        sa.Column("actor_type", sa.Text(), nullable=False),
        sa.Column("actor_id", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("actor_name", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("resource_type", sa.Text(), nullable=False),
        sa.Column("resource_id", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), server_default=sa.text("'team'"), nullable=False),
        sa.Column("status", sa.Text(), server_default=sa.text("'success'"), nullable=False),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_logs")),
    )
    op.create_index(
        "ix_audit_logs_team_id_created_at",
        "audit_logs",
        ["team_id", sa.literal_column("created_at DESC")],
        unique=False,
    )
    op.create_table(
        "sandbox_metric_points",
        sa.Column("sandbox_id", sa.UUID(), nullable=False),
        sa.Column("ts", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("cpu_pct", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("mem_bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("disk_bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("sandbox_id", "ts", name=op.f("pk_sandbox_metric_points")),
    )
    op.create_table(
        "teams",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("slug", sa.Text(), nullable=False),
        sa.Column("is_byoc", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column(
            "created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("deleted_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teams")),
        sa.UniqueConstraint("slug", name=op.f("uq_teams_slug")),
    )
    op.create_table(
        "templates",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), server_default=sa.text("'base'"), nullable=False),
        sa.Column("vcpus", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("memory_mb", sa.Integer(), server_default=sa.text("512"), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("snapshot_kind", sa.Text(), server_default=sa.text("'filesystem'"), nullable=False),
        sa.Column("host_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column(
            "created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("team_id", sa.UUID(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_templates")),
        sa.UniqueConstraint("team_id", "name", name="uq_templates_team_id_name"),
    )
    op.create_index(op.f("ix_templates_team_id"), "templates", ["team_id"], unique=False)
    op.create_table(
        "users",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("name", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("is_admin", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column(
            "created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column(
            "updated_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_table(
        "hosts",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("type", sa.Text(), server_default=sa.text("'regular'"), nullable=False),
        sa.Column("team_id", sa.UUID(), nullable=True),
        sa.Column("provider", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("availability_zone", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("arch", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("cpu_cores", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("memory_mb", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("disk_gb", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("address", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("status", sa.Text(), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("last_heartbeat_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("created_by", sa.UUID(), nullable=False),
        sa.Column(
            "created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column(
            "updated_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("cert_fingerprint", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("cert_expires_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name=op.f("fk_hosts_created_by_users")),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_hosts_team_id_teams")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hosts")),
    )
    op.create_index(op.f("ix_hosts_status"), "hosts", ["status"], unique=False)
    op.create_index(op.f("ix_hosts_team_id"), "hosts", ["team_id"], unique=False)
    op.create_index(op.f("ix_hosts_type"), "hosts", ["type"], unique=False)
    op.create_table(
        "oauth_providers",
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("provider_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("email", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column(
            "created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_oauth_providers_user_id_users")),
        sa.PrimaryKeyConstraint("provider", "provider_id", name=op.f("pk_oauth_providers")),
    )
    op.create_index(op.f("ix_oauth_providers_user_id"), "oauth_providers", ["user_id"], unique=False)
    op.create_table(
        "sandboxes",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("team_id", sa.UUID(), nullable=False),
        sa.Column("host_id", sa.UUID(), nullable=False),
        sa.Column("template", sa.Text(), server_default=sa.text("'minimal'"), nullable=False),
        sa.Column("status", sa.Text(), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("vcpus", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("memory_mb", sa.Integer(), server_default=sa.text("512"), nullable=False),
        sa.Column("timeout_sec", sa.Integer(), server_default=sa.text("300"), nullable=False),
        sa.Column("disk_size_mb", sa.Integer(), server_default=sa.text("5120"), nullable=False),
        sa.Column("internet", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("guest_ip", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("host_ip", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column(
            "created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("started_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("last_active_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column(
            "last_updated",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("template_id", sa.UUID(), nullable=True),
        sa.Column("template_team_id", sa.UUID(), nullable=True),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_sandboxes_team_id_teams")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sandboxes")),
    )
    op.create_index("ix_sandboxes_host_id_status", "sandboxes", ["host_id", "status"], unique=False)
    op.create_index(op.f("ix_sandboxes_status"), "sandboxes", ["status"], unique=False)
    op.create_index(op.f("ix_sandboxes_team_id"), "sandboxes", ["team_id"], unique=False)
    op.create_table(
        "team_api_keys",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("team_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), server_default=sa.text("'Unnamed API Key'"), nullable=False),
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column("key_prefix", sa.Text(), nullable=False),
        sa.Column("created_by", sa.UUID(), nullable=False),
        sa.Column(
            "created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("last_used", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name=op.f("fk_team_api_keys_created_by_users")),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_team_api_keys_team_id_teams")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_team_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_team_api_keys_key_hash")),
    )
    op.create_index(op.f("ix_team_api_keys_team_id"), "team_api_keys", ["team_id"], unique=False)
    op.create_table(
        "users_teams",
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("team_id", sa.UUID(), nullable=False),
        sa.Column("is_default", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("role", sa.Text(), server_default=sa.text("'member'"), nullable=False),
        sa.Column(
            "created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_users_teams_team_id_teams")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_users_teams_user_id_users")),
        sa.PrimaryKeyConstraint("team_id", "user_id", name=op.f("pk_users_teams")),
    )
    op.create_index(op.f("ix_users_teams_user_id"), "users_teams", ["user_id"], unique=False)
    op.create_table(
        "host_refresh_tokens",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("host_id", sa.UUID(), nullable=False),
        sa.Column("token_hash", sa.Text(), nullable=False),
        sa.Column("expires_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column(
            "created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("revoked_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_host_refresh_tokens_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_host_refresh_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_host_refresh_tokens_token_hash")),
    )
    op.create_index(op.f("ix_host_refresh_tokens_host_id"), "host_refresh_tokens", ["host_id"], unique=False)
    op.create_table(
        "host_tags",
        sa.Column("host_id", sa.UUID(), nullable=False),
        sa.Column("tag", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_host_tags_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("host_id", "tag", name=op.f("pk_host_tags")),
    )
    op.create_index(op.f("ix_host_tags_tag"), "host_tags", ["tag"], unique=False)
    op.create_table(
        "host_tokens",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("host_id", sa.UUID(), nullable=False),
        sa.Column("token_hash", sa.Text(), nullable=False),
        sa.Column("created_by", sa.UUID(), nullable=False),
        sa.Column(
            "created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("expires_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("used_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name=op.f("fk_host_tokens_created_by_users")),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_host_tokens_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_host_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_host_tokens_token_hash")),
    )
    op.create_index(op.f("ix_host_tokens_host_id"), "host_tokens", ["host_id"], unique=False)
    for sql in RESERVED_NAME_TRIGGER_SQL + SEED_SQL:
        op.execute(sql)


def downgrade() -> None:
    for sql in DROP_TRIGGER_SQL:
        op.execute(sql)
    op.drop_index(op.f("ix_host_tokens_host_id"), table_name="host_tokens")
    op.drop_table("host_tokens")
    op.drop_index(op.f("ix_host_tags_tag"), table_name="host_tags")
    op.drop_table("host_tags")
    op.drop_index(op.f("ix_host_refresh_tokens_host_id"), table_name="host_refresh_tokens")
    op.drop_table("host_refresh_tokens")
    op.drop_index(op.f("ix_users_teams_user_id"), table_name="users_teams")
    op.drop_table("users_teams")
    op.drop_index(op.f("ix_team_api_keys_team_id"), table_name="team_api_keys")
    op.drop_table("team_api_keys")
    op.drop_index(op.f("ix_sandboxes_team_id"), table_name="sandboxes")
    op.drop_index(op.f("ix_sandboxes_status"), table_name="sandboxes")
    op.drop_index("ix_sandboxes_host_id_status", table_name="sandboxes")
    op.drop_table("sandboxes")
    op.drop_index(op.f("ix_oauth_providers_user_id"), table_name="oauth_providers")
    op.drop_table("oauth_providers")
    op.drop_index(op.f("ix_hosts_type"), table_name="hosts")
    op.drop_index(op.f("ix_hosts_team_id"), table_name="hosts")
    op.drop_index(op.f("ix_hosts_status"), table_name="hosts")
    op.drop_table("hosts")
    op.drop_table("users")
    op.drop_index(op.f("ix_templates_team_id"), table_name="templates")
    op.drop_table("templates")
    op.drop_table("teams")
    op.drop_table("sandbox_metric_points")
    op.drop_index("ix_audit_logs_team_id_created_at", table_name="audit_logs")
    op.drop_table("audit_logs")

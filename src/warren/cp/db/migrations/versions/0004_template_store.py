"""template store: versioned templates made of content-addressed layers, builds and their logs,
the per-team build cache, and which host holds which layer (docs/templates.md).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.TIMESTAMP(timezone=True)
NOW = sa.text("now()")
EMPTY_TEXT_ARRAY = sa.text("'{}'::text[]")


def _template_columns() -> None:
    op.add_column(
        "templates", sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("1"))
    )
    op.add_column(
        "templates", sa.Column("base", sa.Text(), nullable=False, server_default=sa.text("'minimal'"))
    )
    op.add_column(
        "templates",
        sa.Column("layers", postgresql.ARRAY(sa.Text()), nullable=False, server_default=EMPTY_TEXT_ARRAY),
    )
    op.add_column(
        "templates",
        sa.Column("config", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
    )
    op.add_column(
        "templates",
        sa.Column("tags", postgresql.ARRAY(sa.Text()), nullable=False, server_default=EMPTY_TEXT_ARRAY),
    )
    op.add_column("templates", sa.Column("source", sa.Text(), nullable=False, server_default=sa.text("''")))
    op.add_column("templates", sa.Column("build_id", postgresql.UUID(as_uuid=True), nullable=True))
    op.drop_constraint("uq_templates_team_id_name", "templates", type_="unique")
    op.create_unique_constraint("uq_templates_team_id", "templates", ["team_id", "name", "version"])


def upgrade() -> None:
    _template_columns()
    op.create_table(
        "layers",
        sa.Column("digest", sa.Text(), primary_key=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
    )
    op.create_table(
        "host_layers",
        sa.Column("host_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("digest", sa.Text(), nullable=False),
        sa.Column("fetched_at", TS, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("host_id", "digest", name="pk_host_layers"),
    )
    op.create_table(
        "template_builds",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("team_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("tags", postgresql.ARRAY(sa.Text()), nullable=False, server_default=EMPTY_TEXT_ARRAY),
        sa.Column("status", sa.Text(), nullable=False, server_default=sa.text("'queued'")),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("context_digest", sa.Text(), nullable=True),
        sa.Column("step", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("steps", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("cached_steps", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("error", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("failed_step", sa.Integer(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("template_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("host_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("log_bytes", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("heartbeat_at", TS, nullable=True),
    )
    op.create_index("ix_template_builds_team_id", "template_builds", ["team_id", sa.text("created_at DESC")])
    op.create_table(
        "template_build_logs",
        sa.Column(
            "build_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey(
                "template_builds.id",
                ondelete="CASCADE",
                name="fk_template_build_logs_build_id_template_builds",
            ),
            nullable=False,
        ),
        sa.Column("start_offset", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("build_id", "start_offset", name="pk_template_build_logs"),
    )
    op.create_table(
        "build_cache",
        sa.Column("team_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("layer", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("used_at", TS, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("team_id", "key", name="pk_build_cache"),
    )


def downgrade() -> None:
    op.drop_table("build_cache")
    op.drop_table("template_build_logs")
    op.drop_index("ix_template_builds_team_id", "template_builds")
    op.drop_table("template_builds")
    op.drop_table("host_layers")
    op.drop_table("layers")
    op.drop_constraint("uq_templates_team_id", "templates", type_="unique")
    op.create_unique_constraint("uq_templates_team_id_name", "templates", ["team_id", "name"])
    for column in ("build_id", "source", "tags", "config", "layers", "base", "version"):
        op.drop_column("templates", column)

"""A create's usage sums read the active rows only (issue 17, a cheaper create).

Every create sums what the active (not ``stopped`` or ``error``) sandboxes take, three times:
per candidate host in ``queries.sandboxes.RESOLVE`` (``queries.hosts.candidates``), then for the
team and the chosen host in ``warren_reserve_sandbox``. The indexes there lead with the host or
the team but hold every row, so each sum read all the rows the retention pass keeps (seven days
of ended sandboxes: for a team making a sandbox per tool call, tens of thousands) and the
create's PostgreSQL CPU grew with the history (20 000 ended rows: ~6 ms per create, against
~0.15 ms without). These two partial indexes hold the active rows only, with the two summed
columns, so the sums are index-only scans over what is running; the statements are unchanged
(their ``status NOT IN ('stopped', 'error')`` is the indexes' predicate).

Plain ``CREATE INDEX`` inside the one migration transaction (env.py), as 0012: writes to
``sandboxes`` wait while the indexes build (the active rows only, few).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ACTIVE = sa.text("status NOT IN ('stopped', 'error')")
_SUMMED = ["vcpus", "memory_mb"]


def upgrade() -> None:
    for name, column in (("ix_sandboxes_active_host", "host_id"), ("ix_sandboxes_active_team", "team_id")):
        op.create_index(name, "sandboxes", [column], postgresql_where=_ACTIVE, postgresql_include=_SUMMED)


def downgrade() -> None:
    op.drop_index("ix_sandboxes_active_team", table_name="sandboxes")
    op.drop_index("ix_sandboxes_active_host", table_name="sandboxes")

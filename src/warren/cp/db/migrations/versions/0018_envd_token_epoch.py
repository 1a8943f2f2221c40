"""``sandboxes.envd_token_epoch`` (session 15): the epoch of a sandbox's E2B envd access token
(services/envd_tokens.py). Bumping it rotates the token and voids URLs signed with the old one;
``POST /v1/sandboxes/{id}/access-token`` does, and so does a member's removal or departure and
an API key's revocation, for every live sandbox of the team.

Existing rows get 0, whose token is exactly the one they had: nothing a client holds changes.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    column = sa.Column("envd_token_epoch", sa.BigInteger(), nullable=False, server_default=sa.text("0"))
    op.add_column("sandboxes", column)


def downgrade() -> None:
    op.drop_column("sandboxes", "envd_token_epoch")

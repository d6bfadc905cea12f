"""Clients get an explicit permission to introspect every token (RFC 7662 §4).

Existing clients keep introspecting only their own tokens (false); an operator grants
the permission with ``issuer clients add ID --introspect``.

Revision ID: 0003
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "clients",
        sa.Column("may_introspect", sa.Boolean, nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    # SQLite drops a column only by rebuilding the table: batch mode does that.
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("may_introspect")

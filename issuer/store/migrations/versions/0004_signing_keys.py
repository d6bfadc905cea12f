"""The database key store: sealed signing keys and the key set's generation counter.

Used only with ``key_store = "database"``; the directory store leaves both tables empty.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("alg", sa.String(8), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("published_at", sa.BigInteger, nullable=True),
        sa.Column("activated_at", sa.BigInteger, nullable=True),
        sa.Column("retire_at", sa.BigInteger, nullable=True),
        sa.Column("kek_id", sa.String(16), nullable=False),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
        sa.CheckConstraint("state IN ('next', 'active', 'previous')", name="ck_signing_keys_state"),
        sa.PrimaryKeyConstraint("kid", name="pk_signing_keys"),
        sa.UniqueConstraint("name", name="uq_signing_keys_name"),
    )
    key_set = op.create_table(
        "key_set",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("signing_alg", sa.String(8), nullable=True),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.CheckConstraint("id = 1", name="ck_key_set_one_row"),
        sa.PrimaryKeyConstraint("id", name="pk_key_set"),
    )
    op.bulk_insert(key_set, [{"id": 1, "signing_alg": None, "generation": 0}])


def downgrade() -> None:
    op.drop_table("key_set")
    op.drop_table("signing_keys")

"""Sessions: canonical usernames, session start and successor of refresh records,
the newest-record index, password resets.

Refuses (changing nothing: migrations run in one transaction) when existing usernames
collide after NFKC normalization and case folding, naming them, so an operator can
rename or remove all but one of each group first.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections import defaultdict

import sqlalchemy as sa
from alembic import op

from issuer.errors import MigrationRefusedError
from issuer.models import canonical_username

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_users = sa.table(
    "users",
    sa.column("id", sa.String),
    sa.column("username", sa.String),
    sa.column("username_canonical", sa.String),
)


def colliding_usernames(names: list[str]) -> list[list[str]]:
    """Groups of two or more names that are one name after canonicalization."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name in names:
        groups[canonical_username(name)].append(name)
    return [sorted(group) for _, group in sorted(groups.items()) if len(group) > 1]


def upgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(sa.select(_users.c.id, _users.c.username)).all()
    collisions = colliding_usernames([row.username for row in rows])
    if collisions:
        listed = "; ".join(" = ".join(repr(name) for name in group) for group in collisions)
        raise MigrationRefusedError(
            "usernames that differ only in case or Unicode form would become one account: "
            f"{listed}. Rename or remove all but one of each (the database is unchanged), "
            "then run `issuer db upgrade` again"
        )
    op.add_column("users", sa.Column("username_canonical", sa.String(150), nullable=True))
    for row in rows:
        connection.execute(
            sa.update(_users)
            .where(_users.c.id == row.id)
            .values(username_canonical=canonical_username(row.username))
        )
    with op.batch_alter_table("users") as batch:
        batch.alter_column("username_canonical", existing_type=sa.String(150), nullable=False)
        batch.create_unique_constraint("uq_users_username_canonical", ["username_canonical"])

    op.add_column("refresh_tokens", sa.Column("session_started_at", sa.BigInteger, nullable=True))
    op.add_column("refresh_tokens", sa.Column("successor_jti", sa.String(64), nullable=True))
    op.execute(
        "UPDATE refresh_tokens SET session_started_at = ("
        "SELECT MIN(origin.issued_at) FROM refresh_tokens AS origin "
        "WHERE origin.family_id = refresh_tokens.family_id)"
    )
    with op.batch_alter_table("refresh_tokens") as batch:
        batch.alter_column("session_started_at", existing_type=sa.BigInteger, nullable=False)
    op.create_index("ix_refresh_tokens_family_newest", "refresh_tokens", ["family_id", "issued_at"])
    op.create_index("ix_refresh_tokens_user_id", "refresh_tokens", ["user_id"])

    op.create_table(
        "password_resets",
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_password_resets"),
        sa.UniqueConstraint("token_hash", name="uq_password_resets_token_hash"),
    )


def downgrade() -> None:
    op.drop_table("password_resets")
    op.drop_index("ix_refresh_tokens_user_id", "refresh_tokens")
    op.drop_index("ix_refresh_tokens_family_newest", "refresh_tokens")
    with op.batch_alter_table("refresh_tokens") as batch:
        batch.drop_column("successor_jti")
        batch.drop_column("session_started_at")
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint("uq_users_username_canonical", type_="unique")
        batch.drop_column("username_canonical")

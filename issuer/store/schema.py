"""The database schema, as SQLAlchemy Core tables. Alembic migrations create it.

Times are integer seconds since the epoch (UTC): portable across SQLite and
PostgreSQL, and the same NumericDate the tokens carry.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    false,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    }
)

users = Table(
    "users",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("username", String(150), nullable=False, unique=True),
    # models.canonical_username(username): what logins match and uniqueness is kept in.
    Column("username_canonical", String(150), nullable=False, unique=True),
    Column("password_hash", String(60), nullable=True),
    Column("role", String(16), nullable=False),
    Column("is_active", Boolean, nullable=False, default=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    CheckConstraint("role IN ('admin', 'engineer', 'viewer')", name="role"),
)

clients = Table(
    "clients",
    metadata,
    Column("client_id", String(100), primary_key=True),
    Column("secret_hash", String(64), nullable=True),
    Column("auth_method", String(32), nullable=False),
    Column("grant_types", String(200), nullable=False),
    Column("scopes", String(1000), nullable=False),
    Column("name", String(200), nullable=False, default=""),
    Column("created_at", BigInteger, nullable=False),
    Column("may_introspect", Boolean, nullable=False, server_default=false()),
    CheckConstraint(
        "auth_method IN ('client_secret_basic', 'client_secret_post', 'none')",
        name="auth_method",
    ),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("family_id", String(64), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("client_id", String(100), nullable=False),
    Column("scope", String(1000), nullable=False),
    Column("issued_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("spent_at", BigInteger, nullable=True),
    Column("revoked_at", BigInteger, nullable=True),
    # The session's start (its first record's issued_at), copied into every record so
    # the absolute lifetime survives the purge of the family's early records.
    Column("session_started_at", BigInteger, nullable=False),
    # The jti this record was rotated into: what a retry within refresh_retry_window gets.
    Column("successor_jti", String(64), nullable=True),
    Index("ix_refresh_tokens_family_id", "family_id"),
    Index("ix_refresh_tokens_client_id", "client_id"),
    Index("ix_refresh_tokens_expires_at", "expires_at"),
    # The session check reads a family's newest record: one probe of this index.
    Index("ix_refresh_tokens_family_newest", "family_id", "issued_at"),
    Index("ix_refresh_tokens_user_id", "user_id"),
)

password_resets = Table(
    "password_resets",
    metadata,
    # One pending reset per user: issuing a new token replaces the older one.
    Column("user_id", String(36), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("expires_at", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

revoked_access_tokens = Table(
    "revoked_access_tokens",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("expires_at", BigInteger, nullable=False),
    Index("ix_revoked_access_tokens_expires_at", "expires_at"),
)

# The database key store (key_store = "database"): one row per key, its private material
# sealed with AES-GCM under the key-encryption key (never stored; kek_id names it), bound
# to its kid and alg. key_set is one row: the key set's algorithm and a generation counter
# that every change increments, which is what readers poll.
signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("alg", String(8), nullable=False),
    Column("state", String(8), nullable=False),
    # The record's name (a key file's name in keys/): unique, as in the manifest.
    Column("name", String(64), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("published_at", BigInteger, nullable=True),
    Column("activated_at", BigInteger, nullable=True),
    Column("retire_at", BigInteger, nullable=True),
    Column("kek_id", String(16), nullable=False),
    Column("sealed", LargeBinary, nullable=False),
    CheckConstraint("state IN ('next', 'active', 'previous')", name="state"),
)

key_set = Table(
    "key_set",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("signing_alg", String(8), nullable=True),
    Column("generation", BigInteger, nullable=False),
    CheckConstraint("id = 1", name="one_row"),
)

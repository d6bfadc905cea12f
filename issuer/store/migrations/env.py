"""Alembic environment: runs on the connection that ``issuer.store.migrate`` hands over."""

from __future__ import annotations

from alembic import context

from issuer.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - migrations always run through issuer.store.migrate
    raise RuntimeError("run migrations with `issuer db upgrade`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()

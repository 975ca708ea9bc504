"""Alembic's entry point: migrations run on the connection that :mod:`db.migrate` hands over."""

from __future__ import annotations

from alembic import context

from db.schema import Base

connection = context.config.attributes["connection"]
# render_as_batch: SQLite alters tables by copying them, which batch mode does for us.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

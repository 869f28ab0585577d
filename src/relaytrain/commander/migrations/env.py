"""Alembic environment: runs on the connection the commander hands over (never from a URL in an ini)."""

from __future__ import annotations

from alembic import context

from relaytrain.commander.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

"""Tokens expire (``expires_at``; none: never) and remember their last use (``last_used_at``,
written at most once a minute per token: :data:`relaytrain.commander.store.tokens.LAST_USED_EVERY_S`).

Revision ID: 0011
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("last_used_at", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("last_used_at")
        batch.drop_column("expires_at")

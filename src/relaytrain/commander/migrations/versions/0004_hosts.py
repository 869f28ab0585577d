"""Hosts reached over SSH: address, key, labels, the last GPU poll, the workers started there.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hosts",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("address", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("key_path", sa.Text, nullable=False),
        sa.Column("known_hosts", sa.Text, nullable=True),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("price_per_hour", sa.Float, nullable=True),
        sa.Column("python", sa.Text, nullable=False),
        sa.Column("workdir", sa.Text, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("reachable", sa.Boolean, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("gpus", sa.JSON, nullable=False),
        sa.Column("assignments", sa.JSON, nullable=False),
        sa.Column("polled_at", sa.Float, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("hosts")

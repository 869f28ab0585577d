"""The commander's beat: one row, the last time any replica was alive with its database, so a
commander back from an outage extends the leases it interrupted (docs/commander.md).

Revision ID: 0010
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    beat = op.create_table(
        "commander_beat",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("last_alive_at", sa.Float, nullable=True),
        sa.Column("stale_after_s", sa.Float, nullable=True),
    )
    op.bulk_insert(beat, [{"id": 1, "last_alive_at": None, "stale_after_s": None}])


def downgrade() -> None:
    op.drop_table("commander_beat")

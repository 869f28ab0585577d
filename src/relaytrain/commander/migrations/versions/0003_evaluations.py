"""Evaluation runs point at their source run; a forked run's checkpoints may live under another run.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("source_run", sa.String(128), nullable=True))
        batch.create_index("ix_runs_source_run", ["source_run"])
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("store_run_id", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("store_run_id")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_source_run")
        batch.drop_column("source_run")

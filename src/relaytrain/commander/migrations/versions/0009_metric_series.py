"""One metric series per run across hand-offs: a point that an earlier attempt reported past the
step a later attempt resumed from is marked ``superseded`` (kept, hidden by default), so each
step shows once. The series index leads with ``superseded``'s filter before ``step``'s order, and
holds ``value``, so that downsampling a series reads the index alone (a series' rows lie
scattered through the table, between those of every other run that reported meanwhile).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("metrics") as batch:
        batch.add_column(sa.Column("superseded", sa.Boolean, nullable=False, server_default=sa.false()))
    op.drop_index("ix_metrics_run_name_step", table_name="metrics")
    op.create_index("ix_metrics_series", "metrics", ["run_id", "name", "superseded", "step", "value"])


def downgrade() -> None:
    op.drop_index("ix_metrics_series", table_name="metrics")
    op.create_index("ix_metrics_run_name_step", "metrics", ["run_id", "name", "step"])
    with op.batch_alter_table("metrics") as batch:
        batch.drop_column("superseded")

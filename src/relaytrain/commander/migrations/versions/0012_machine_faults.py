"""A machine's fault is charged to the machine: a run avoids the worker whose machine failed it
(anti-affinity), and a worker says whether its machine is degraded, and why.

Revision ID: 0012
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("avoid_worker", sa.String(128), nullable=True))
        batch.add_column(sa.Column("avoid_until", sa.Float, nullable=True))
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("condition", sa.String(16), nullable=False, server_default="ok"))
        batch.add_column(sa.Column("condition_reason", sa.Text, nullable=True))
        batch.add_column(sa.Column("condition_since", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("condition_since")
        batch.drop_column("condition_reason")
        batch.drop_column("condition")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("avoid_until")
        batch.drop_column("avoid_worker")

"""Indexes for the claim's order, the lease expiry check and a worker's current run; the first
two replace ``ix_runs_queue``, whose ascending priority could not serve the claim's order.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_runs_queue", table_name="runs")
    op.create_index("ix_runs_claim", "runs", ["status", sa.text("priority DESC"), "created_at", "run_id"])
    op.create_index("ix_runs_expiry", "runs", ["status", "lease_expires_at"])
    op.create_index("ix_runs_holder", "runs", ["holder"])


def downgrade() -> None:
    op.drop_index("ix_runs_holder", table_name="runs")
    op.drop_index("ix_runs_expiry", table_name="runs")
    op.drop_index("ix_runs_claim", table_name="runs")
    op.create_index("ix_runs_queue", "runs", ["status", "priority", "created_at"])

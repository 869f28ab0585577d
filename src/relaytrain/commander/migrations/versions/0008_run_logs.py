"""Central logs: the trainer output each attempt's worker ships, and each attempt's totals.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "run_logs",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(128), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("stream", sa.String(8), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("bytes", sa.Integer, nullable=False),
        sa.UniqueConstraint("run_id", "epoch", "seq", name="uq_run_logs_run_epoch_seq"),
    )
    op.create_table(
        "run_log_attempts",
        sa.Column("run_id", sa.String(128), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("epoch", sa.Integer, primary_key=True),
        sa.Column("end_offset", sa.BigInteger, nullable=False),
        sa.Column("kept_bytes", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("run_log_attempts")
    op.drop_table("run_logs")

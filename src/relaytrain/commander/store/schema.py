"""The commander's tables (SQLAlchemy Core). Migrations in ``commander/migrations`` create them.

Times are float seconds since the epoch, taken from the commander's clock. Every table is
reached only through :class:`relaytrain.commander.store.Store`.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# An auto-incrementing 64-bit key that is also SQLite's rowid alias.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String(128), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("gpus", sa.Integer, nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("depends_on", sa.String(128), nullable=True),
    sa.Column("source_run", sa.String(128), nullable=True),
    sa.Column("max_steps", sa.Integer, nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("holder", sa.String(128), nullable=True),
    sa.Column("lease_expires_at", sa.Float, nullable=True),
    sa.Column("lease_ttl_s", sa.Float, nullable=False),
    sa.Column("retries_used", sa.Integer, nullable=False),
    sa.Column("max_retries", sa.Integer, nullable=False),
    sa.Column("not_before", sa.Float, nullable=False),
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float, nullable=True),
    # Anti-affinity (policy.MACHINE_AVOID_S): the worker whose machine fault ended the last attempt,
    # not granted this run again before ``avoid_until``; cleared by the next grant.
    sa.Column("avoid_worker", sa.String(128), nullable=True),
    sa.Column("avoid_until", sa.Float, nullable=True),
    sa.Index("ix_runs_expiry", "status", "lease_expires_at"),  # the expiry check inside every claim
    sa.Index("ix_runs_holder", "holder"),  # a worker's current run (register, heartbeat, the autoscaler)
    sa.Index("ix_runs_depends_on", "depends_on"),
    sa.Index("ix_runs_source_run", "source_run"),
)
# The claim's order (DESIGN §4: highest priority, then oldest), so a claim reads the queue's head
# instead of sorting the whole queue.
sa.Index("ix_runs_claim", runs.c.status, runs.c.priority.desc(), runs.c.created_at, runs.c.run_id)

attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(128), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("worker_id", sa.String(128), nullable=False),
    sa.Column("granted_at", sa.Float, nullable=False),
    sa.Column("last_renewed_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float, nullable=True),
    sa.Column("outcome", sa.String(16), nullable=True),
    sa.Column("failure_class", sa.String(16), nullable=True),
    sa.Column("message", sa.Text, nullable=True),
    sa.Column("stderr_tail", sa.Text, nullable=True),
    sa.Column("step_start", sa.Integer, nullable=False),
    sa.Column("step_end", sa.Integer, nullable=True),
    sa.Column("steps_lost", sa.Integer, nullable=True),
    sa.Column("resume_note", sa.Text, nullable=True),
    sa.Column("gpus", sa.Integer, nullable=False),
    sa.Column("price_per_hour", sa.Float, nullable=True),
    sa.UniqueConstraint("run_id", "epoch", name="uq_attempts_run_epoch"),
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("worker_id", sa.String(128), primary_key=True),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("hostname", sa.String(255), nullable=True),
    sa.Column("gpus", sa.JSON, nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("price_per_hour", sa.Float, nullable=True),
    sa.Column("kinds", sa.JSON, nullable=True),  # the kinds of run it serves; NULL: every kind
    sa.Column("version", sa.String(32), nullable=True),
    sa.Column("registered_at", sa.Float, nullable=False),
    sa.Column("last_heartbeat", sa.Float, nullable=False),
    # What the worker last said of its machine (api.status.WorkerCondition), why, and since when.
    sa.Column("condition", sa.String(16), nullable=False, server_default="ok"),
    sa.Column("condition_reason", sa.Text, nullable=True),
    sa.Column("condition_since", sa.Float, nullable=True),
)

checkpoints = sa.Table(
    "checkpoints",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(128), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("manifest_sha256", sa.String(64), nullable=False),
    sa.Column("store_run_id", sa.String(128), nullable=True),
    sa.Column("revision", sa.Text, nullable=True),  # the store's commit of the checkpoint (Hub), if any
    sa.Column("durable", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("run_id", "step", "epoch", name="uq_checkpoints_run_step_epoch"),
    sa.Index("ix_checkpoints_run_step", "run_id", "step"),
)

metrics = sa.Table(
    "metrics",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(128), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    # Reported by an attempt past the step a later attempt resumed from (leases.record_resume):
    # kept, but not part of the run's series, in which each step shows once.
    sa.Column("superseded", sa.Boolean, nullable=False, server_default=sa.false()),
    # A series in step order; with ``value`` so that downsampling reads the index alone (metrics.py).
    sa.Index("ix_metrics_series", "run_id", "name", "superseded", "step", "value"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(128), nullable=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data", sa.JSON, nullable=True),
    sa.Index("ix_events_run_id", "run_id", "id"),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
    sa.Column("expires_at", sa.Float, nullable=True),
    sa.Column("last_used_at", sa.Float, nullable=True),
)

# Machines the commander reaches over SSH (DESIGN §10): polled for GPUs, used by the autoscaler.
# ``gpus`` is the last poll (GpuStatus dicts with ``idle``); ``assignments`` are the workers the
# autoscaler started there, each with the GPU indices it holds.
hosts = sa.Table(
    "hosts",
    metadata,
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

# The elastic rollout pool (DESIGN §11). One row per run: where the trainer of lease ``epoch``
# hosts its rollout manager, as its worker last announced it (served only while that epoch holds
# the run). Rollout workers register in their own table: they hold no lease and train nothing.
rollout_endpoints = sa.Table(
    "rollout_endpoints",
    metadata,
    sa.Column("run_id", sa.String(128), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("secret", sa.String(256), nullable=False),
    sa.Column("version", sa.Integer, nullable=True),
    sa.Column("pool", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

rollout_workers = sa.Table(
    "rollout_workers",
    metadata,
    sa.Column("worker_id", sa.String(128), primary_key=True),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("run_id", sa.String(128), nullable=True),
    sa.Column("registered_at", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
)

# The trainer's output, shipped by the holder of each attempt (``relay logs``): chunks in the
# order read, keyed by their offset in the attempt's output (``seq``, in UTF-8 bytes, both
# streams together). ``run_log_attempts`` keeps each attempt's totals: ``end_offset``, the offset past
# everything shipped, and ``kept_bytes``, the bytes still stored (the run's logs.max_bytes at most, the
# oldest dropped first), so their difference is what was dropped.
run_logs = sa.Table(
    "run_logs",
    metadata,
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

run_log_attempts = sa.Table(
    "run_log_attempts",
    metadata,
    sa.Column("run_id", sa.String(128), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("epoch", sa.Integer, primary_key=True),
    sa.Column("end_offset", sa.BigInteger, nullable=False),
    sa.Column("kept_bytes", sa.BigInteger, nullable=False),
)

# One row (id 1, made by the migration): when a replica's sweeper last wrote it with its database
# in reach, and how long a silence after that counts as an outage (2 sweep intervals and a slack,
# :func:`relaytrain.commander.store.beat.stale_after`). NULLs until the first sweep.
commander_beat = sa.Table(
    "commander_beat",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("last_alive_at", sa.Float, nullable=True),
    sa.Column("stale_after_s", sa.Float, nullable=True),
)

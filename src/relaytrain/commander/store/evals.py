"""Evaluation runs (DESIGN §9) and re-opened or forked runs: the SQL behind ``relay eval``,
automatic evaluation of durable checkpoints, and ``relay resume``."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from relaytrain.config import parse_run_config
from relaytrain.errors import InvalidState, NotFound

from .schema import TERMINAL_STATUSES, checkpoints, metrics, runs

EVAL_FIELDS = ("dataset", "template", "metrics", "samples", "subset_frac", "max_new_tokens", "timeout_s")


def auto_eval_run_id(run_id: str, step: int) -> str:
    return f"{run_id[:113]}-eval-{step:08d}"


class EvalMixin:
    """Methods of :class:`Store` for evaluations and resumes."""

    def _auto_eval(self, conn: sa.Connection, run: dict[str, Any], step: int, now: float) -> str | None:
        """Queue an eval run for a newly durable checkpoint when the run asks for one at this step."""
        settings = run["config"].get("eval")
        if not settings or step % settings["every_steps"] != 0:
            return None
        eval_id = auto_eval_run_id(run["run_id"], step)
        if conn.execute(sa.select(runs.c.run_id).where(runs.c.run_id == eval_id)).first():
            return None
        config = parse_run_config({
            "run_id": eval_id,
            "kind": "eval",
            "priority": run["priority"],
            "store": run["config"]["store"],
            "retry": run["config"]["retry"],
            "hang_timeout_s": settings["timeout_s"] + 60,  # one checkpoint is scored without progress lines
            "trainer": {"source_run": run["run_id"], "steps": [step], **{k: settings[k] for k in EVAL_FIELDS}},
        })
        self._insert_run(conn, config, now)
        self._event(conn, run["run_id"], "eval_queued", f"evaluation {eval_id} queued for step {step}",
                    {"eval_run": eval_id, "step": step}, now)
        return eval_id

    def _eval_checkpoints(self, conn: sa.Connection, run: dict[str, Any]) -> list[dict[str, Any]]:
        """The source's durable checkpoints an eval run scores, oldest first (newest epoch per step)."""
        trainer = run["config"]["trainer"]
        rows = conn.execute(
            sa.select(checkpoints)
            .where(checkpoints.c.run_id == trainer["source_run"], checkpoints.c.durable.is_(True))
            .order_by(checkpoints.c.step, checkpoints.c.epoch)
        ).mappings().all()
        by_step = {r["step"]: self._checkpoint_ref(r) for r in rows}
        steps = trainer["steps"]
        if steps == "latest":
            chosen = sorted(by_step)[-1:]
        elif steps == "all":
            chosen = sorted(by_step)
        else:
            chosen = sorted(s for s in set(steps) if s in by_step)
        return [by_step[s] for s in chosen]

    def _evaluations(self, conn: sa.Connection, run_id: str) -> list[dict[str, Any]]:
        """The eval runs of ``run_id`` with their scores: ``{step: {metric: value}}``."""
        evals = conn.execute(
            sa.select(runs.c.run_id, runs.c.status, runs.c.config)
            .where(runs.c.source_run == run_id)
            .order_by(runs.c.created_at, runs.c.run_id)
        ).mappings().all()
        out = []
        for ev in evals:
            rows = conn.execute(
                sa.select(metrics.c.step, metrics.c.name, metrics.c.value)
                .where(metrics.c.run_id == ev["run_id"])
                .order_by(metrics.c.id)
            ).all()
            scores: dict[int, dict[str, float]] = {}
            for step, name, value in rows:
                scores.setdefault(step, {})[name] = value
            out.append({"run_id": ev["run_id"], "status": ev["status"], "dataset": ev["config"]["trainer"]["dataset"],
                        "scores": scores})
        return out

    def reopen_run(self, run_id: str, *, from_step: int | None = None, additional_steps: int = 0,
                   now: float | None = None) -> dict[str, Any]:
        """``relay resume``: re-open an ended run from its newest durable checkpoint (``from_step``
        None), raising ``max_steps`` by ``additional_steps``; from an older step, fork a new run
        ``<run_id>-from-<N>`` that resumes that checkpoint's full state. Returns the run to watch."""
        now = time.time() if now is None else now
        with self._write() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id).with_for_update()).mappings().first()
            if row is None:
                raise NotFound(f"no run named {run_id!r}")
            if row["status"] not in TERMINAL_STATUSES:
                raise InvalidState(f"run {run_id} is {row['status']}: only an ended run can be resumed")
            latest = self._latest_checkpoint(conn, run_id)
            if latest is None:
                raise InvalidState(f"run {run_id} has no durable checkpoint to resume from")
            if from_step is None or from_step == latest["step"]:
                max_steps = row["max_steps"] + additional_steps
                if latest["step"] >= max_steps:
                    raise InvalidState(f"run {run_id} is already at step {latest['step']} of {max_steps}: "
                                       "give --additional-steps")
                config = {**row["config"], "max_steps": max_steps}
                parse_run_config(config)
                conn.execute(runs.update().where(runs.c.run_id == run_id).values(
                    status="queued", config=config, max_steps=max_steps, finished_at=None, not_before=now,
                    retries_used=0, cancel_requested=False, last_error=None, updated_at=now))
                self._event(conn, run_id, "resumed_by_user",
                            f"re-opened at step {latest['step']} with max_steps {max_steps}", None, now)
                fork_id = run_id
            else:
                ref = conn.execute(
                    sa.select(checkpoints)
                    .where(checkpoints.c.run_id == run_id, checkpoints.c.step == from_step,
                           checkpoints.c.durable.is_(True))
                    .order_by(checkpoints.c.epoch.desc()).limit(1)
                ).mappings().first()
                if ref is None:
                    raise NotFound(f"--from-step: run {run_id} has no durable checkpoint at step {from_step}")
                fork_id = f"{run_id[:110]}-from-{from_step}"
                max_steps = (from_step + additional_steps) if additional_steps else row["max_steps"]
                if from_step >= max_steps:
                    raise InvalidState(f"--from-step {from_step} is not below max_steps {max_steps}: "
                                       "give --additional-steps")
                config = parse_run_config({**row["config"], "run_id": fork_id, "max_steps": max_steps})
                self._insert_run(conn, config, now, resume_from=self._checkpoint_ref(ref))
                self._event(conn, run_id, "forked", f"forked into {fork_id} from step {from_step}",
                            {"fork": fork_id, "step": from_step}, now)
        return self.get_run(fork_id)

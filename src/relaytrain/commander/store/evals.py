"""Evaluation runs (DESIGN §9) and re-opened or forked runs: automatic evaluation of durable
checkpoints, the checkpoints an eval run scores, the scores, and ``relay resume``. Functions of
an open connection; :class:`relaytrain.commander.store.Store` opens the transaction."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from relaytrain.api.evals import build_eval_run, eval_run_id, step_tag
from relaytrain.api.status import TERMINAL, RunStatus
from relaytrain.config import parse_run_config
from relaytrain.errors import InvalidState, NotFound

from . import checkpoints as ckpts
from . import events
from . import runs as run_rows
from .schema import metrics, runs


def auto_eval(conn: sa.Connection, run: dict[str, Any], step: int, now: float) -> str | None:
    """Queue an eval run for a newly durable checkpoint when the run asks for one at this step."""
    settings = run["config"].get("eval")
    if not settings or step % settings["every_steps"] != 0:
        return None
    eval_id = eval_run_id(run["run_id"], step_tag(step))
    if conn.execute(sa.select(runs.c.run_id).where(runs.c.run_id == eval_id)).first():
        return None
    run_rows.insert(conn, build_eval_run(run, settings, steps=[step], tag=step_tag(step), inherit_retry=True), now)
    events.add(conn, run["run_id"], "eval_queued", f"evaluation {eval_id} queued for step {step}",
               {"eval_run": eval_id, "step": step}, now)
    return eval_id


def checkpoints_to_score(conn: sa.Connection, run: dict[str, Any]) -> list[dict[str, Any]]:
    """The source's durable checkpoints an eval run scores, oldest first (newest epoch per step)."""
    trainer = run["config"]["trainer"]
    by_step = {ref["step"]: ref for ref in ckpts.durable(conn, trainer["source_run"])}
    steps = trainer["steps"]
    if steps == "latest":
        chosen = sorted(by_step)[-1:]
    elif steps == "all":
        chosen = sorted(by_step)
    else:
        chosen = sorted(s for s in set(steps) if s in by_step)
    return [by_step[s] for s in chosen]


def of_run(conn: sa.Connection, run_id: str) -> list[dict[str, Any]]:
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


def reopen(conn: sa.Connection, run_id: str, *, from_step: int | None, additional_steps: int, now: float) -> str:
    """``relay resume``: re-open an ended run from its newest durable checkpoint (``from_step``
    None), raising ``max_steps`` by ``additional_steps``; from an older step, fork a new run
    ``<run_id>-from-<N>`` that resumes that checkpoint's full state. Returns the run to watch."""
    row = run_rows.locked(conn, run_id)
    if row["status"] not in TERMINAL:
        raise InvalidState(f"run {run_id} is {row['status']}: only an ended run can be resumed")
    latest = ckpts.latest(conn, run_id)
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
            status=RunStatus.QUEUED, config=config, max_steps=max_steps, finished_at=None, not_before=now,
            retries_used=0, cancel_requested=False, last_error=None, updated_at=now))
        events.add(conn, run_id, "resumed_by_user",
                   f"re-opened at step {latest['step']} with max_steps {max_steps}", None, now)
        return run_id
    ref = ckpts.at_step(conn, run_id, from_step)
    if ref is None:
        raise NotFound(f"--from-step: run {run_id} has no durable checkpoint at step {from_step}")
    fork_id = f"{run_id[:110]}-from-{from_step}"
    max_steps = (from_step + additional_steps) if additional_steps else row["max_steps"]
    if from_step >= max_steps:
        raise InvalidState(f"--from-step {from_step} is not below max_steps {max_steps}: give --additional-steps")
    config = parse_run_config({**row["config"], "run_id": fork_id, "max_steps": max_steps})
    run_rows.insert(conn, config, now, resume_from=ref)
    events.add(conn, run_id, "forked", f"forked into {fork_id} from step {from_step}",
               {"fork": fork_id, "step": from_step}, now)
    return fork_id

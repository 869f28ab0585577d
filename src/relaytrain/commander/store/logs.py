"""Central logs: every SQL statement behind ``/api/v1/runs/{id}/logs``. Functions of an open
connection; :class:`relaytrain.commander.store.Store` opens the transaction.

The holder of a run's lease ships its trainer's stdout and stderr in chunks, fenced like
progress (:func:`append`). A chunk's ``seq`` is its offset in the attempt's output (UTF-8 bytes,
both streams together, counting what the worker had to drop), so:

- a batch sent again (its answer was lost) is recognised and not stored twice: a chunk that
  starts before the attempt's ``end_offset`` is already here;
- a gap between chunks is output the worker dropped while the commander could not take it;
- each attempt keeps at most the run's ``logs.max_bytes``; beyond it the oldest chunks go.

``dropped`` is then ``end_offset - kept_bytes``, exact, whoever dropped what.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from relaytrain.config import LogsPolicy
from relaytrain.errors import NotFound

from . import runs as run_rows
from .leases import fenced_run
from .schema import attempts, run_log_attempts, run_logs

_PAGE = 256  # chunks read at a time when dropping the oldest


def append(conn: sa.Connection, run_id: str, worker_id: str, epoch: int, chunks: Sequence[dict[str, Any]],
           now: float | None) -> dict[str, int]:
    """Store ``chunks`` (``seq``, ``stream``, ``ts``, ``text``, in order) of the trainer output of
    ``(worker_id, epoch)``, under its live lease (else LeaseLost, changing nothing); then drop
    the attempt's oldest chunks beyond the run's ``logs.max_bytes``. Returns the attempt's
    ``end`` (the offset past everything shipped) and ``dropped`` (bytes not kept)."""
    run, _ = fenced_run(conn, run_id, worker_id, epoch, now)  # the run row stays locked: appends never race
    cap = LogsPolicy.model_validate(run["config"].get("logs", {})).max_bytes
    key = (run_log_attempts.c.run_id == run_id, run_log_attempts.c.epoch == epoch)
    totals = conn.execute(sa.select(run_log_attempts.c.end_offset, run_log_attempts.c.kept_bytes).where(*key)).first()
    end, kept = (totals.end_offset, totals.kept_bytes) if totals else (0, 0)
    rows = []
    for chunk in chunks:
        if chunk["seq"] < end:  # sent before (a retried batch): already stored, or already dropped
            continue
        size = len(chunk["text"].encode())
        rows.append({"run_id": run_id, "epoch": epoch, "seq": chunk["seq"], "stream": chunk["stream"],
                     "ts": chunk["ts"], "text": chunk["text"], "bytes": size})
        kept, end = kept + size, chunk["seq"] + size
    if rows:
        conn.execute(run_logs.insert(), rows)
    if kept > cap:
        kept -= _drop_oldest(conn, run_id, epoch, kept - cap)
    values = {"end_offset": end, "kept_bytes": kept}
    if totals is None:
        conn.execute(run_log_attempts.insert().values(run_id=run_id, epoch=epoch, **values))
    else:
        conn.execute(run_log_attempts.update().where(*key).values(**values))
    return {"end": end, "dropped": end - kept}


def _drop_oldest(conn: sa.Connection, run_id: str, epoch: int, excess: int) -> int:
    """Delete the attempt's oldest chunks until at least ``excess`` bytes are gone; returns how many."""
    mine = (run_logs.c.run_id == run_id, run_logs.c.epoch == epoch)
    freed, last = 0, -1
    while freed < excess:
        page = conn.execute(
            sa.select(run_logs.c.seq, run_logs.c.bytes).where(*mine, run_logs.c.seq > last)
            .order_by(run_logs.c.seq).limit(_PAGE)
        ).all()
        if not page:
            break
        for seq, size in page:
            freed, last = freed + size, seq
            if freed >= excess:
                break
    if last >= 0:
        conn.execute(run_logs.delete().where(*mine, run_logs.c.seq <= last))
    return freed


def page(conn: sa.Connection, run_id: str, *, attempt: int | None, after: int, limit: int) -> dict[str, Any]:
    """The chunks of one attempt (default: the run's latest) that start at or after offset ``after``,
    oldest first, at most ``limit``; NotFound for an unknown run or attempt."""
    run_rows.require(conn, run_id)
    epochs = conn.execute(
        sa.select(attempts.c.epoch).where(attempts.c.run_id == run_id).order_by(attempts.c.epoch)
    ).scalars().all()
    if attempt is None:
        if not epochs:
            return {"items": [], "next": after, "dropped": 0, "attempt": None}
        attempt = epochs[-1]
    elif attempt not in epochs:
        have = ", ".join(map(str, epochs)) or "none yet"
        raise NotFound(f"run {run_id} has no attempt {attempt} (attempts: {have})")
    rows = conn.execute(
        sa.select(run_logs.c.epoch, run_logs.c.seq, run_logs.c.stream, run_logs.c.ts, run_logs.c.text,
                  run_logs.c.bytes)
        .where(run_logs.c.run_id == run_id, run_logs.c.epoch == attempt, run_logs.c.seq >= after)
        .order_by(run_logs.c.seq)
        .limit(limit)
    ).mappings().all()
    totals = conn.execute(
        sa.select(run_log_attempts.c.end_offset, run_log_attempts.c.kept_bytes)
        .where(run_log_attempts.c.run_id == run_id, run_log_attempts.c.epoch == attempt)
    ).first()
    dropped = totals.end_offset - totals.kept_bytes if totals else 0
    items = [{k: r[k] for k in ("epoch", "seq", "stream", "ts", "text")} for r in rows]
    return {"items": items, "next": rows[-1]["seq"] + rows[-1]["bytes"] if rows else after, "dropped": dropped,
            "attempt": attempt}

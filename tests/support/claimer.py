"""A hostile claimer for the lease-safety tests: one process, one worker id; and the audit of
what claimers were granted (:func:`lease_violations`, also used by bench/commander_load).

Claims until the file ``STOP`` exists (or for at most ``MAX_S`` seconds) and, with each grant,
renews a random number of times, then releases with a random outcome, or abandons the lease to
expire. After every release it tries a stale renew, which must be refused. Writes one JSON
line per event to ``out``.

    python -m tests.support.claimer URL TOKEN WORKER_ID MAX_S SEED OUT STOP
"""

from __future__ import annotations

import collections
import itertools
import json
import random
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from relaytrain.api import models as m
from relaytrain.api.client import RelayClient
from relaytrain.errors import LeaseLost


def main(url: str, token: str, worker_id: str, max_s: float, seed: int, out_path: str, stop: Path) -> None:
    rng = random.Random(seed)
    client = RelayClient(url, token, timeout_s=60, retries=0)
    client.register(m.RegisterWorker(worker_id=worker_id))
    deadline = time.monotonic() + max_s
    with open(out_path, "w") as out:

        def log(**record) -> None:
            out.write(json.dumps({"t": time.time(), "worker": worker_id, **record}) + "\n")

        while time.monotonic() < deadline and not stop.exists():
            grant = client.claim(m.ClaimRequest(worker_id=worker_id, wait_s=0.5))
            if grant is None:
                continue
            log(event="grant", run_id=grant.run_id, epoch=grant.epoch, expires_at=grant.expires_at)
            run_id, epoch = grant.run_id, grant.epoch
            try:
                for step in range(rng.randint(0, 3)):
                    client.renew(run_id, worker_id, epoch)
                    client.progress(run_id, m.ProgressRequest(
                        worker_id=worker_id, epoch=epoch, points=[m.ProgressPoint(step=step + 1)]))
                    log(event="renewed", run_id=run_id, epoch=epoch)
                choice = rng.random()
                if choice < 0.15:
                    log(event="abandon", run_id=run_id, epoch=epoch)
                    continue  # let the lease expire
                if choice < 0.55:
                    req = m.ReleaseRequest(worker_id=worker_id, epoch=epoch, outcome="preempted")
                else:
                    req = m.ReleaseRequest(worker_id=worker_id, epoch=epoch, outcome="failed",
                                           failure_class="transient", message="chaos")
                client.release(run_id, req)
                log(event="released", run_id=run_id, epoch=epoch)
            except LeaseLost as exc:
                log(event="lost", run_id=run_id, epoch=epoch, detail=str(exc))
                continue
            try:
                client.renew(run_id, worker_id, epoch)
                log(event="stale_write_accepted", run_id=run_id, epoch=epoch)
            except LeaseLost:
                log(event="stale_write_refused", run_id=run_id, epoch=epoch)
    client.close()


def lease_violations(grants: Iterable[tuple[str, int]], attempts: list[dict[str, Any]]) -> list[str]:
    """Every break of lease safety, from the grants the API answered, ``(run_id, epoch)`` each,
    and the commander's attempts table (``Store.attempts_table``): a (run, epoch) answered to
    two claimers; grants and attempts that disagree; a run whose epochs are not 1, 2, 3, …; an
    attempt granted before the one before it ended (or while it never did)."""
    problems = []
    answered = collections.Counter(grants)
    problems += [f"{run_id} epoch {epoch} was answered to {n} claimers"
                 for (run_id, epoch), n in sorted(answered.items()) if n > 1]
    recorded = {(a["run_id"], a["epoch"]) for a in attempts}
    if set(answered) != recorded:
        problems.append(f"grants and attempts disagree: granted only {sorted(set(answered) - recorded)[:10]}, "
                        f"recorded only {sorted(recorded - set(answered))[:10]}")
    by_run: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for a in sorted(attempts, key=lambda a: (a["run_id"], a["epoch"])):
        by_run[a["run_id"]].append(a)
    for run_id, rows in by_run.items():
        epochs = [a["epoch"] for a in rows]
        if epochs != list(range(1, len(rows) + 1)):
            problems.append(f"{run_id}: epochs {epochs}")
        for before, after in itertools.pairwise(rows):
            if before["ended_at"] is None:
                problems.append(f"{run_id}: epoch {before['epoch']} never ended, yet epoch {after['epoch']} "
                                "was granted")
            elif after["granted_at"] < before["ended_at"]:
                problems.append(f"{run_id}: epoch {after['epoch']} granted at {after['granted_at']} while epoch "
                                f"{before['epoch']} held it until {before['ended_at']}")
    return problems


if __name__ == "__main__":
    url, token, worker_id, max_s, seed, out, stop = sys.argv[1:8]
    main(url, token, worker_id, float(max_s), int(seed), out, Path(stop))

"""Relay chaos benchmark: one long counter run on 3 workers whose holder is killed again and again.

    python -m bench.relay_chaos                                      # 10 min of kill -9 every 60 s, then SIGTERMs
    python -m bench.relay_chaos --duration-s 120 --kill-every-s 20   # smoke run, about 3 min
    python -m bench.relay_chaos --signal term --duration-s 120 --kill-every-s 20 --json out.json

What runs
---------
A real commander (``relay serve`` on SQLite, 127.0.0.1) and 3 real ``relay worker``
processes, each in its own workdir, all under one temporary folder that is removed at the
end (``--keep`` keeps it). One run of the reference counter trainer
(``examples/trainers/counter_trainer.py``: ``--step-s`` seconds per step, a checkpoint every
``--every`` steps, ``max_steps`` far beyond what the phase can reach) is submitted per phase:

kill phase (``--signal kill``)
    About every ``--kill-every-s`` seconds (±10 %, seeded jitter, so kills land at random
    points of the checkpoint cycle) the worker holding the run is sent SIGKILL; its trainer
    dies with it (PR_SET_PDEATHSIG). The dead worker cannot release, so its lease must expire
    (``--ttl-s``) before the run is granted again. A new worker process (new worker id)
    replaces it, so 3 workers are always up. Lasts ``--duration-s``.
term phase (``--signal term``)
    The same with SIGTERM: the worker asks its trainer to checkpoint and stop, makes that
    checkpoint durable and releases the lease as ``preempted``; an idle worker claims at once.
    Lasts ``--term-duration-s`` every ``--term-every-s`` (defaults: the kill phase's values
    with ``--signal term``; a quarter of the duration, every third of the interval, with
    ``both``).

Before each signal the bench waits until the current holder has reported progress, so every
signal hits a trainer that is training. At the end of a phase the run is cancelled (the
holder checkpoints and releases as ``cancelled``) and its latest durable checkpoint is checked:
manifest verified, and ``state.json`` equal to ``counter_final_state(step)`` — the hash chain
proves no step was skipped or repeated across all hand-offs.

Figures (all timestamps are ``time.time()`` on this one machine; the commander stamps rows
with the same clock)
-------
ETTR                 useful training time ÷ wall time. Wall: first grant → release of the last
                     (cancelled) attempt. Useful: the steps in the final lineage × the measured
                     seconds per step. The final lineage is the chain of steps the final
                     checkpoint contains, i.e. Σ over attempts of (next attempt's resume
                     step − this attempt's resume step), which telescopes to the final step.
                     Seconds per step is measured, not configured: Σ steps ÷ Σ seconds between
                     the first and the last progress row of each attempt (commander ``ts``),
                     so the trainer's own checkpoint writes count as useful time and only the
                     relay's losses (failover downtime, recomputed steps, restarts) lower ETTR.
steps lost per kill  ``steps_lost`` of the killed attempt in the commander's attempts table
                     (last *reported* step − newest durable step) ÷ ``--every``. Reported
                     progress is throttled (1 s), so this under-counts; "true" lost is the last
                     step the dead trainer wrote to its local progress file − the step the next
                     attempt resumed at. Both are shown; target: mean ≤ 0.5 + 1 step.
failover             signal instant → first progress row of the next epoch at the commander,
                     ÷ ttl; p50 / p99 / max (nearest rank: with fewer than 100 kills p99 is the
                     max). Split into: lease left at the kill (last renewal + ttl − kill),
                     kill → expiry recorded, kill → next grant. Target p99 ≤ 1.2.
durability lag       the trainer wrote a checkpoint (its state.json mtime) → the commander
                     recorded it durable (its ``checkpoint`` event): the part of the steps lost
                     per kill that is not the checkpoint interval itself.
SIGTERM              steps lost (table and true) per preemption, target 0; SIGTERM → release
                     (the attempt's ``ended_at``); SIGTERM → next progress; worker exit code.

Every process started here is stopped by its PID (workers with SIGKILL, their trainers with
them; the commander with SIGTERM), also on Ctrl-C or SIGTERM to the bench.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sqlalchemy as sa

from relaytrain.checkpoint import verify
from relaytrain.commander.store import Store
from relaytrain.commander.store.schema import metrics
from tests.support.commander import Commander, wait_until
from tests.support.relay import WorkerProc, counter_final_state, counter_run

WORKERS = 3


# -- the cluster ----------------------------------------------------------------------------------


class Cluster:
    """A commander and ``WORKERS`` live workers under ``root``; killed workers are replaced."""

    def __init__(self, root: Path, sweep_interval_s: float) -> None:
        self.root = root
        self.db = str(root / "relay.db")
        self.commander = Commander(db=self.db, token=secrets.token_urlsafe(16), workdir=root,
                                   sweep_interval=sweep_interval_s)
        self.workers: dict[str, WorkerProc] = {}
        self.live: list[str] = []
        self._next = 0
        self.client = None
        self.worker_token = ""
        self.store: Store | None = None

    def start(self) -> Cluster:
        self.commander.start()
        self.client = self.commander.client()
        self.worker_token = self.client.create_token("chaos-workers").token
        self.store = Store(self.db)
        for _ in range(WORKERS):
            self.add_worker()
        return self

    def add_worker(self) -> WorkerProc:
        self._next += 1
        worker_id = f"w{self._next:03d}"
        w = WorkerProc(self.commander.url, self.worker_token, worker_id, self.root / "workers" / worker_id)
        self.workers[worker_id] = w.start()
        self.live.append(worker_id)
        return w

    def retire(self, worker_id: str) -> None:
        self.live.remove(worker_id)

    def first_progress(self, run_id: str) -> dict[int, float]:
        """epoch → commander time of that epoch's first progress row."""
        query = (sa.select(metrics.c.epoch, sa.func.min(metrics.c.ts))
                 .where(metrics.c.run_id == run_id).group_by(metrics.c.epoch))
        with self.store.engine.connect() as conn:
            return {epoch: ts for epoch, ts in conn.execute(query)}

    def progress_spans(self, run_id: str, name: str) -> list[tuple[int, int, int, float, float]]:
        """(epoch, first step, last step, first ts, last ts) of each epoch's progress rows."""
        c = metrics.c
        query = (sa.select(c.epoch, sa.func.min(c.step), sa.func.max(c.step), sa.func.min(c.ts), sa.func.max(c.ts))
                 .where(c.run_id == run_id, c.name == name).group_by(c.epoch).order_by(c.epoch))
        with self.store.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(query)]

    def committed_at(self, run_id: str) -> dict[tuple[int, int], float]:
        """(step, epoch) → commander time its checkpoint was committed as durable."""
        out, after = {}, 0
        while True:
            page = self.store.list_events(run_id, after=after, limit=1000)
            for e in page["items"]:
                if e["kind"] == "checkpoint" and e["data"]:
                    out[(e["data"]["step"], e["data"]["epoch"])] = e["ts"]
            if page["next_after"] is None:
                return out
            after = page["next_after"]

    def attempts(self, run_id: str) -> list[dict]:
        return [a for a in self.store.attempts_table() if a["run_id"] == run_id]

    def close(self) -> None:
        for w in self.workers.values():
            try:
                w.stop()  # SIGKILL by PID; its trainer dies with it (PDEATHSIG)
            except Exception as exc:  # keep stopping the others
                print(f"could not stop worker {w.worker_id} (pid {w.proc.pid}): {exc}", file=sys.stderr)
        for pid in self.trainer_pids():  # belt and braces: a trainer must never outlive the bench
            if trainer_alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.client is not None:
            self.client.close()
        if self.store is not None:
            self.store.close()
        self.commander.stop()

    def trainer_pids(self) -> list[int]:
        return [int(p.read_text()) for p in (self.root / "workers").glob("*/runs/*/logs/attempt_*/trainer.pid")]


def trainer_alive(pid: int) -> bool:
    """Alive, not a zombie, and still a counter trainer (not a reused pid)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status and b"counter_trainer" in cmdline


def last_trained_step(w: WorkerProc, run_id: str, epoch: int) -> int | None:
    """The last step a trainer wrote to its local progress file (what it really trained)."""
    path = w.workdir / "runs" / run_id / "progress" / f"attempt_{epoch}.jsonl"
    last = None
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a line cut by the kill
            continue
        if "event" not in record and isinstance(record.get("step"), int):
            last = record["step"]
    return last


# -- one phase ------------------------------------------------------------------------------------


@dataclass
class Hit:
    """One signal sent to a holder, and what followed."""

    signal: str
    at: float
    worker_id: str
    epoch: int
    exit_code: int | None = None
    trainers_left: int = 0
    outcome: str | None = None
    steps_lost_table: int | None = None
    steps_lost_true: int | None = None
    resumed_at: int | None = None
    lease_left_s: float | None = None
    to_expiry_s: float | None = None
    to_grant_s: float | None = None
    to_release_s: float | None = None
    failover_s: float | None = None


@dataclass
class Phase:
    signal: str
    run_id: str
    duration_s: float
    every_s: float
    hits: list[Hit] = field(default_factory=list)
    wall_s: float = 0.0
    final_step: int = 0
    seconds_per_step: float = 0.0
    useful_s: float = 0.0
    ettr: float = 0.0
    downtime_s: float = 0.0
    redo_s: float = 0.0
    durability_lag_s: list[float] = field(default_factory=list)
    lineage_ok: bool = False
    lineage_note: str = ""
    overlaps: int = 0
    attempts: int = 0
    retries_used: int = 0


def wait_ready(cluster: Cluster, run_id: str, timeout_s: float) -> tuple[str, int]:
    """Wait until a live worker holds the run and has reported progress in its epoch."""

    def ready():
        run = cluster.client.run(run_id)
        if run.status in ("succeeded", "failed", "cancelled"):
            raise AssertionError(f"run {run_id} ended {run.status} mid-phase: {run.last_error}")
        if run.status != "running" or run.holder not in cluster.live:
            return None
        return (run.holder, run.epoch) if run.epoch in cluster.first_progress(run_id) else None

    return wait_until(ready, timeout_s, f"a holder of {run_id} with progress", interval_s=0.1)


def run_phase(cluster: Cluster, args: argparse.Namespace, sig: str, duration_s: float, every_s: float,
              rng: random.Random) -> Phase:
    run_id = f"chaos-{sig}"
    max_steps = int(duration_s / args.step_s * 4) + 10_000
    config = counter_run(run_id, cluster.root / "artifacts", max_steps=max_steps, every=args.every,
                         step_s=args.step_s, lease={"ttl_s": args.ttl_s, "margin_s": args.margin_s,
                                                    "grace_s": args.grace_s})
    config["checkpoint"]["keep_last"] = 5
    phase = Phase(sig, run_id, duration_s, every_s)
    cluster.client.submit(config)
    wait_ready(cluster, run_id, 60)
    start = time.time()
    settle = (1.5 * args.ttl_s + 5) if sig == "kill" else 5.0
    plan = []
    k = 1
    while k * every_s + 0.1 * every_s + settle <= duration_s:
        plan.append(start + k * every_s + rng.uniform(-0.1, 0.1) * every_s)
        k += 1
    print(f"[{sig}] run {run_id}: {len(plan)} signals over {duration_s:.0f}s, about every {every_s:.0f}s",
          flush=True)
    for due in plan:
        time.sleep(max(0.0, due - time.time()))
        holder, epoch = wait_ready(cluster, run_id, 3 * args.ttl_s + 60)
        w = cluster.workers[holder]
        trainers = w.trainer_pids(run_id)
        hit = Hit(sig, time.time(), holder, epoch)
        w.signal(signal.SIGKILL if sig == "kill" else signal.SIGTERM)
        cluster.retire(holder)
        # a SIGTERMed worker drains first: checkpoint, upload, release
        hit.exit_code = w.proc.wait(timeout=10 if sig == "kill" else args.grace_s + args.ttl_s + 30)
        cluster.add_worker()  # after a kill, the replacement starts while the dead lease runs out
        time.sleep(0.5)
        hit.trainers_left = sum(trainer_alive(p) for p in trainers)
        phase.hits.append(hit)
        print(f"[{sig}] t={hit.at - start:6.1f}s {sig} {holder} (epoch {epoch}), exit {hit.exit_code}", flush=True)
    time.sleep(max(0.0, start + duration_s - time.time()))
    wait_ready(cluster, run_id, 3 * args.ttl_s + 60)
    cluster.client.cancel(run_id)
    wait_until(lambda: cluster.client.run(run_id).status == "cancelled", 3 * args.ttl_s + 60,
               f"{run_id} to be cancelled", interval_s=0.2)
    analyse(cluster, args, phase)
    return phase


def analyse(cluster: Cluster, args: argparse.Namespace, phase: Phase) -> None:
    run = cluster.client.run(phase.run_id)
    attempts = {a["epoch"]: a for a in cluster.attempts(phase.run_id)}
    first = cluster.first_progress(phase.run_id)
    epochs = sorted(attempts)
    phase.attempts = len(epochs)
    phase.retries_used = run.retries_used
    pairs = zip(epochs, epochs[1:], strict=False)
    phase.overlaps = sum(attempts[b]["granted_at"] < attempts[a]["ended_at"] for a, b in pairs)
    for hit in phase.hits:
        dead, nxt = attempts[hit.epoch], attempts.get(hit.epoch + 1)
        hit.outcome = dead["outcome"]
        hit.steps_lost_table = dead["steps_lost"]
        if hit.signal == "kill":  # a dead holder renews no more: its lease runs out from the last renewal
            hit.lease_left_s = dead["last_renewed_at"] + args.ttl_s - hit.at
            hit.to_expiry_s = dead["ended_at"] - hit.at
        else:
            hit.to_release_s = dead["ended_at"] - hit.at
        if nxt is not None:
            hit.resumed_at = nxt["step_start"]
            hit.to_grant_s = nxt["granted_at"] - hit.at
            trained = last_trained_step(cluster.workers[hit.worker_id], phase.run_id, hit.epoch)
            if trained is not None:
                hit.steps_lost_true = max(0, trained - nxt["step_start"])
            if hit.epoch + 1 in first:
                hit.failover_s = first[hit.epoch + 1] - hit.at
    # ETTR
    phase.wall_s = attempts[epochs[-1]]["ended_at"] - attempts[epochs[0]]["granted_at"]
    spans = [s for s in cluster.progress_spans(phase.run_id, "loss") if s[4] - s[3] >= 5]
    steps = sum(s[2] - s[1] for s in spans)
    secs = sum(s[4] - s[3] for s in spans)
    phase.seconds_per_step = secs / steps if steps else float("nan")
    ref = run.latest_checkpoint
    phase.final_step = ref.step if ref else 0
    phase.useful_s = phase.final_step * phase.seconds_per_step
    phase.ettr = phase.useful_s / phase.wall_s
    phase.downtime_s = sum(h.failover_s or 0 for h in phase.hits)
    phase.redo_s = sum(h.steps_lost_true or 0 for h in phase.hits) * phase.seconds_per_step
    # durability lag: the trainer wrote state.json (mtime) → the commander recorded the commit
    committed = cluster.committed_at(phase.run_id)
    for a in attempts.values():
        folder = cluster.workers[a["worker_id"]].workdir / "runs" / phase.run_id / "checkpoints"
        for state_file in folder.glob("step_*/state.json"):
            step = int(state_file.parent.name.removeprefix("step_"))
            if step > a["step_start"] and (step, a["epoch"]) in committed:
                phase.durability_lag_s.append(committed[(step, a["epoch"])] - state_file.stat().st_mtime)
    # lineage
    if ref is None:
        phase.lineage_note = "no durable checkpoint"
        return
    path = Path(ref.uri.removeprefix("file://"))
    check = verify(path)
    state = json.loads((path / "state.json").read_text()) if check.ok else None
    expected = {"step": ref.step, "state": counter_final_state(ref.step)}
    phase.lineage_ok = check.ok and state == expected and attempts[epochs[-1]]["outcome"] == "cancelled"
    phase.lineage_note = (f"step {ref.step} (epoch {ref.epoch}): manifest {'ok' if check.ok else check.reason}, "
                          f"state {'matches' if state == expected else 'DIFFERS'} counter_final_state({ref.step})")


# -- report ---------------------------------------------------------------------------------------


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summarise(phase: Phase, args: argparse.Namespace) -> dict:
    every, ttl = args.every, args.ttl_s
    out: dict = {"signal": phase.signal, "signals": len(phase.hits), "attempts": phase.attempts,
                 "ettr": round(phase.ettr, 4), "wall_s": round(phase.wall_s, 1),
                 "final_step": phase.final_step, "seconds_per_step": round(phase.seconds_per_step, 5),
                 "useful_s": round(phase.useful_s, 1), "failover_downtime_s": round(phase.downtime_s, 1),
                 "redo_s": round(phase.redo_s, 1), "lineage_ok": phase.lineage_ok, "lineage": phase.lineage_note,
                 "overlapping_attempts": phase.overlaps, "retries_used": phase.retries_used,
                 "trainers_outlived_worker": sum(h.trainers_left for h in phase.hits)}
    lost_t = [h.steps_lost_table for h in phase.hits if h.steps_lost_table is not None]
    lost_r = [h.steps_lost_true for h in phase.hits if h.steps_lost_true is not None]
    fail = [h.failover_s for h in phase.hits if h.failover_s is not None]
    if lost_t:
        out["lost_table_per_interval"] = {"mean": round(statistics.mean(lost_t) / every, 3),
                                          "max": round(max(lost_t) / every, 3)}
    if lost_r:
        out["lost_true_per_interval"] = {"mean": round(statistics.mean(lost_r) / every, 3),
                                         "max": round(max(lost_r) / every, 3)}
    if phase.durability_lag_s:
        lag = phase.durability_lag_s
        out["durability_lag"] = {"samples": len(lag), "p50_s": round(nearest_rank(lag, 0.5), 3),
                                 "max_s": round(max(lag), 3),
                                 "mean_steps": round(statistics.mean(lag) / phase.seconds_per_step, 2)}
    if fail:
        out["failover_per_ttl"] = {q: round(nearest_rank(fail, p) / ttl, 3)
                                   for q, p in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))}
    if phase.signal == "kill":
        target = 0.5 + 1 / every
        out["targets"] = {
            f"lost mean <= {target:.3f} (table)": bool(lost_t) and statistics.mean(lost_t) / every <= target,
            f"lost mean <= {target:.3f} (true)": bool(lost_r) and statistics.mean(lost_r) / every <= target,
            "failover p99 <= 1.2 ttl": bool(fail) and nearest_rank(fail, 0.99) / ttl <= 1.2,
        }
    else:
        rel = [h.to_release_s for h in phase.hits if h.to_release_s is not None]
        if rel:
            out["sigterm_to_release_s"] = {"p50": round(nearest_rank(rel, 0.5), 3), "max": round(max(rel), 3)}
        out["targets"] = {"SIGTERM steps lost == 0 (table and true)":
                          bool(lost_t) and not any(lost_t) and not any(lost_r),
                          "every preempted worker exited 0": all(h.exit_code == 0 for h in phase.hits)}
    return out


def print_phase(phase: Phase, summary: dict, args: argparse.Namespace) -> None:
    print(f"\n== {phase.signal} phase: run {phase.run_id}, {phase.duration_s:.0f}s, a signal about every "
          f"{phase.every_s:.0f}s; ttl {args.ttl_s:g}s, checkpoint every {args.every} steps of {args.step_s:g}s")
    head = (f"{'epoch':>5} {'worker':>6} {'exit':>4} {'outcome':>9} {'lost':>4} {'true':>4} {'resume':>7} "
            f"{'left':>6} {'expiry':>6} {'grant':>6} {'release':>7} {'failover':>8} {'/ttl':>5}")
    print(head)
    for h in phase.hits:
        def f(v, w=6):
            return f"{v:{w}.2f}" if isinstance(v, float) else f"{'-' if v is None else v:>{w}}"
        print(f"{h.epoch:>5} {h.worker_id:>6} {f(h.exit_code, 4)} {f(h.outcome, 9)} {f(h.steps_lost_table, 4)} "
              f"{f(h.steps_lost_true, 4)} {f(h.resumed_at, 7)} {f(h.lease_left_s)} {f(h.to_expiry_s)} "
              f"{f(h.to_grant_s)} {f(h.to_release_s, 7)} {f(h.failover_s, 8)} "
              f"{f(h.failover_s / args.ttl_s if h.failover_s else None, 5)}")
    print(json.dumps(summary, indent=1))


# -- entry point ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.relay_chaos", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration-s", type=float, default=600, help="kill phase length (default 600)")
    p.add_argument("--kill-every-s", type=float, default=60, help="seconds between kills, ±10%% (default 60)")
    p.add_argument("--signal", choices=("kill", "term", "both"), default="both")
    p.add_argument("--term-duration-s", type=float, default=None,
                   help="SIGTERM phase length (default: --duration-s with --signal term, a quarter of it with both)")
    p.add_argument("--term-every-s", type=float, default=None,
                   help="seconds between SIGTERMs (default: --kill-every-s with --signal term, a third with both)")
    p.add_argument("--ttl-s", type=float, default=10, help="lease ttl (default 10)")
    p.add_argument("--margin-s", type=float, default=None, help="self-fence margin (default ttl/4)")
    p.add_argument("--grace-s", type=float, default=None, help="SIGTERM→SIGKILL grace (default 0.15·ttl)")
    p.add_argument("--every", type=int, default=20, help="checkpoint interval in steps (default 20)")
    p.add_argument("--step-s", type=float, default=0.05, help="counter trainer seconds per step (default 0.05)")
    p.add_argument("--sweep-interval-s", type=float, default=1.0, help="commander lease sweeper (default 1)")
    p.add_argument("--seed", type=int, default=0, help="jitter of the signal instants")
    p.add_argument("--json", type=Path, default=None, help="also write the figures and every signal here")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, database)")
    args = p.parse_args(argv)
    args.margin_s = args.ttl_s / 4 if args.margin_s is None else args.margin_s
    args.grace_s = args.ttl_s * 0.15 if args.grace_s is None else args.grace_s
    both = args.signal == "both"
    if args.term_duration_s is None:
        args.term_duration_s = args.duration_s / 4 if both else args.duration_s
    if args.term_every_s is None:
        args.term_every_s = args.kill_every_s / 3 if both else args.kill_every_s
    if not args.grace_s < args.margin_s < args.ttl_s * 2 / 3:
        p.error(f"need grace < margin < 2/3 ttl, got {args.grace_s:g} / {args.margin_s:g} / {args.ttl_s:g}")
    return args


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Clean up on Ctrl-C, SIGTERM and a closed terminal alike (SIGINT is set explicitly: a shell
    # starts a background job with it ignored; SIGHUP stays ignored under nohup).
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signum != signal.SIGHUP or signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _interrupt)
    root = Path(tempfile.mkdtemp(prefix="relay-chaos-"))
    rng = random.Random(args.seed)
    cluster = Cluster(root, args.sweep_interval_s)
    command = " ".join(sys.argv[1:] if argv is None else argv)
    print(f"relay chaos: python -m bench.relay_chaos {command}\n  ttl {args.ttl_s:g}s margin {args.margin_s:g}s grace "
          f"{args.grace_s:g}s, checkpoint every {args.every} steps, step {args.step_s:g}s, sweeper "
          f"{args.sweep_interval_s:g}s, {WORKERS} workers, folder {root}", flush=True)
    results = []
    try:
        cluster.start()
        phases = []
        if args.signal in ("kill", "both"):
            phases.append(("kill", args.duration_s, args.kill_every_s))
        if args.signal in ("term", "both"):
            phases.append(("term", args.term_duration_s, args.term_every_s))
        for sig, duration, every in phases:
            phase = run_phase(cluster, args, sig, duration, every, rng)
            summary = summarise(phase, args)
            print_phase(phase, summary, args)
            results.append({"summary": summary, "hits": [asdict(h) for h in phase.hits]})
    except KeyboardInterrupt:
        print("interrupted: stopping every process", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.close()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"settings": settings, "phases": results}, indent=1))
    ok = all(r["summary"]["lineage_ok"] and r["summary"]["overlapping_attempts"] == 0
             and r["summary"]["trainers_outlived_worker"] == 0 for r in results)
    print("\nlineage and lease safety:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

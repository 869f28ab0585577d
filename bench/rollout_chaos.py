"""Rollout-pool chaos: a GRPO run with two rollout workers, one of them ``kill -9``ed every ~20 s,
against the same run without kills, back to back.

    .venv/bin/python -m bench.rollout_chaos                  # 5 min steady, then the kill phase (~14 min)
    .venv/bin/python -m bench.rollout_chaos --minutes 1      # shorter
    .venv/bin/python -m bench.rollout_chaos --quick          # a smoke run, ~45 s of phases (~3 min in all)

What runs
---------
A real commander (``relay serve`` on SQLite, 127.0.0.1), one ``relay worker`` (the training
worker: it runs the GRPO trainer, which hosts the rollout manager) and two ``relay rollout-worker``
processes (``--threads 1``, a ``rollout``-scoped token), which find the run and its manager through
the commander by themselves. The run: the tiny model on the built-in arithmetic data, 8 prompts × 4
completions of at most 16 tokens a step, the digit-share reward of tests/support/grpo.py (one the
untrained model has variance on, so every step trains), ``rollout: {max_staleness: 4}``,
``trajectories: {save: true}``.

steady phase
    ``--minutes`` with both rollout workers up, no kills; then the run is cancelled. Its rate of
    training is the baseline.
kill phase
    The same run file with ``max_steps`` = the steps the steady phase made (so it lasts about as
    long), to its end. About every ``--kill-every-s`` seconds (±10 %, seeded) one rollout worker,
    the older of the two, gets SIGKILL and a new one (a new worker id, as a replacement machine would
    be) is started at once, so the pool keeps 2 processes (the dead one's groups wait for the
    manager to drop it: 3 missed heartbeats, or their lease deadline).

Figures
-------
- groups lost (kill phase): groups ``0 … max_steps × 8 − 1`` missing from the trajectory files
  (each line is a trained group and names its ``group_id``). Target 0.
- groups trained twice: group ids on more than one trajectory line (both phases). Target 0.
- groups re-queued: the run's last ``rollout/groups_requeued``; groups by source
  (``rollout/trainer_generated`` / ``rollout/worker_generated``).
- trained groups per minute: (last step − first step) × 8 ÷ the time between those steps' progress
  rows at the commander (the first step's row starts the clock: start-up is not counted); the kill
  phase's ÷ the steady phase's (target ≥ 0.8).

Every process started here is stopped by its PID (rollout workers with SIGTERM, then SIGKILL; the
training worker with SIGKILL, its trainer with it; the commander with SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from relaytrain.api.status import RunStatus
from relaytrain.commander.store import Store
from relaytrain.commander.store.schema import metrics
from tests.support.commander import Commander, wait_until
from tests.support.grpo import reward_file
from tests.support.relay import RolloutWorkerProc, WorkerProc

PROMPTS, GENERATIONS, NEW_TOKENS = 8, 4, 16


@dataclass
class Phase:
    name: str
    run_id: str
    max_steps: int
    kills: list[float] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


class Cluster:
    """A commander, one training worker and the rollout workers of the phase in hand."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.db = str(root / "relay.db")
        self.commander = Commander(db=self.db, token=secrets.token_urlsafe(16), workdir=root)
        self.client: Any = None
        self.store: Store | None = None
        self.worker: WorkerProc | None = None
        self.rollout_token = ""
        self.pool: list[RolloutWorkerProc] = []
        self.retired: list[RolloutWorkerProc] = []
        self._next = 0
        self.reward = reward_file(root / "rewards")

    def start(self) -> Cluster:
        self.commander.start()
        self.client = self.commander.client()
        self.store = Store(self.db)
        worker_token = self.client.create_token("chaos-trainers").token
        self.rollout_token = self.client.create_token("chaos-rollout", scope="rollout").token
        self.worker = WorkerProc(self.commander.url, worker_token, "trainer-1", self.root / "workers" / "trainer-1")
        self.worker.start()
        return self

    def add_rollout_worker(self) -> RolloutWorkerProc:
        self._next += 1
        worker_id = f"gen-{self._next:03d}"
        w = RolloutWorkerProc(self.commander.url, self.rollout_token, worker_id, self.root / "rollout-workers")
        self.pool.append(w.start())
        return w

    def replace(self, victim: RolloutWorkerProc) -> RolloutWorkerProc:
        victim.stop()  # SIGKILL by PID
        self.pool.remove(victim)
        self.retired.append(victim)
        return self.add_rollout_worker()

    def stop_pool(self) -> None:
        """SIGTERM each rollout worker (it posts or gives back its batch and leaves); SIGKILL after 30 s."""
        for w in self.pool:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        for w in self.pool:
            try:
                w.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.stop()
        self.retired += self.pool
        self.pool = []

    def run_config(self, run_id: str, max_steps: int) -> dict[str, Any]:
        return {
            "run_id": run_id, "kind": "grpo", "model": "tiny", "max_steps": max_steps,
            "data": {"builtin": "arithmetic"},
            "checkpoint": {"every_steps": 20, "keep_last": 2},
            "store": str(self.root / "store"),
            "trainer": {"prompts_per_step": PROMPTS, "num_generations": GENERATIONS, "max_new_tokens": NEW_TOKENS,
                        "rewards": [{"name": self.reward}], "seed": 0},
            "rollout": {"max_staleness": 4},
            "trajectories": {"save": True},
        }

    def status(self, run_id: str) -> RunStatus:
        return RunStatus(self.client.run(run_id).status)

    def step_span(self, run_id: str) -> tuple[int, int, float, float] | None:
        """(first step, last step, first ts, last ts) of the run's progress rows at the commander."""
        c = metrics.c
        query = (sa.select(sa.func.min(c.step), sa.func.max(c.step), sa.func.min(c.ts), sa.func.max(c.ts))
                 .where(c.run_id == run_id, c.name == "perf/time_per_step"))
        with self.store.engine.connect() as conn:
            row = conn.execute(query).one()
        return None if row[0] is None else tuple(row)

    def last_metric(self, run_id: str, name: str) -> float | None:
        points = self.client.metrics(run_id, name=name).items
        return max(points, key=lambda p: (p.epoch, p.step)).value if points else None

    def trained_groups(self, run_id: str) -> Counter:
        """group id → trajectory lines naming it (one file a step: the worker's copy or the store's)."""
        files: dict[str, Path] = {}
        for base in (self.root / "store" / run_id, self.root / "workers"):
            for path in base.glob("**/rollout_*.jsonl"):
                if run_id in path.parts:
                    files.setdefault(path.name, path)
        ids: Counter = Counter()
        for path in files.values():
            for line in path.read_text().splitlines():
                ids[json.loads(line)["group_id"]] += 1
        return ids

    def close(self) -> None:
        for w in self.pool + self.retired:
            w.stop()
        if self.worker is not None:
            self.worker.stop()  # SIGKILL by PID; its trainer dies with it (PDEATHSIG)
        if self.client is not None:
            self.client.close()
        if self.store is not None:
            self.store.close()
        self.commander.stop()


def run_phase(cluster: Cluster, phase: Phase, args: argparse.Namespace, kill: bool) -> None:
    cluster.client.submit(cluster.run_config(phase.run_id, phase.max_steps))
    for _ in range(2):
        cluster.add_rollout_worker()
    wait_until(lambda: cluster.step_span(phase.run_id), 300, f"the first step of {phase.run_id}", interval_s=0.2)
    began = time.monotonic()
    rng = random.Random(f"rollout-chaos:{phase.name}")
    next_kill = began + args.kill_every_s * rng.uniform(0.9, 1.1)
    while not cluster.status(phase.run_id).terminal:
        now = time.monotonic()
        if not kill and now - began >= args.minutes * 60:
            cluster.client.cancel(phase.run_id)
            break
        if kill and now >= next_kill:
            victim = cluster.pool[0]  # the older of the two: it has had time to start generating
            cluster.replace(victim)
            phase.kills.append(now - began)
            print(f"  {phase.name}: t={now - began:5.0f} s kill -9 {victim.worker_id}, started "
                  f"{cluster.pool[-1].worker_id}", flush=True)
            next_kill = now + args.kill_every_s * rng.uniform(0.9, 1.1)
        time.sleep(0.2)
    wait_until(lambda: cluster.status(phase.run_id).terminal, 120, f"{phase.run_id} to end", interval_s=0.2)
    cluster.stop_pool()
    summarise(cluster, phase, finite=kill)


def summarise(cluster: Cluster, phase: Phase, finite: bool) -> None:
    run_id = phase.run_id
    status = cluster.status(run_id)
    first, last, t0, t1 = cluster.step_span(run_id)
    ids = cluster.trained_groups(run_id)
    expected = set(range(phase.max_steps * PROMPTS)) if finite else None
    phase.summary = {
        "status": str(status), "steps": last, "kills": len(phase.kills),
        "seconds": t1 - t0,
        "groups_per_min": (last - first) * PROMPTS / (t1 - t0) * 60 if t1 > t0 else None,
        "groups_trained": len(ids),
        "groups_twice": sum(n - 1 for n in ids.values() if n > 1),
        "groups_lost": len(expected - set(ids)) if expected is not None else None,
        "requeued": cluster.last_metric(run_id, "rollout/groups_requeued"),
        "trainer_generated": cluster.last_metric(run_id, "rollout/trainer_generated"),
        "worker_generated": cluster.last_metric(run_id, "rollout/worker_generated"),
        "staleness_max": cluster.last_metric(run_id, "rollout/staleness_max"),
    }
    if finite and status != RunStatus.SUCCEEDED:
        print(f"  {phase.name}: the run ended {status}, not succeeded: its lost groups are not meaningful")


def print_table(phases: list[Phase]) -> None:
    print(f"\n{'phase':<7} {'status':<10} {'steps':>5} {'kills':>5} {'span s':>7} {'groups/min':>10} "
          f"{'trained':>7} {'lost':>4} {'twice':>5} {'requeued':>8} {'trainer/worker groups':>22}")
    for p in phases:
        s = p.summary
        lost = "-" if s["groups_lost"] is None else s["groups_lost"]
        print(f"{p.name:<7} {s['status']:<10} {s['steps']:>5} {s['kills']:>5} {s['seconds']:>7.0f} "
              f"{s['groups_per_min']:>10.1f} {s['groups_trained']:>7} {lost:>4} {s['groups_twice']:>5} "
              f"{s['requeued'] or 0:>8.0f} {s['trainer_generated'] or 0:>11.0f}/{s['worker_generated'] or 0:<10.0f}")
    steady, chaos = phases
    ratio = chaos.summary["groups_per_min"] / steady.summary["groups_per_min"]
    print(f"trained groups per minute, with kills ÷ without: {ratio:.2f} (target ≥ 0.8)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the steady phase (the kill phase "
                        "trains as many steps)")
    parser.add_argument("--kill-every-s", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="a smoke run: --minutes 0.4 --kill-every-s 8")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.kill_every_s = 0.4, 8.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rollout-chaos-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        cluster = Cluster(root)
        previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        try:
            cluster.start()
            steady = Phase("steady", "chaos-steady", max_steps=100_000)
            print(f"steady phase: {args.minutes:g} min, 2 rollout workers, no kills", flush=True)
            run_phase(cluster, steady, args, kill=False)
            chaos = Phase("kill", "chaos-kill", max_steps=max(1, steady.summary["steps"]))
            print(f"kill phase: {chaos.max_steps} steps, kill -9 a rollout worker every ~{args.kill_every_s:g} s "
                  f"(replaced at once: the pool keeps 2)", flush=True)
            run_phase(cluster, chaos, args, kill=True)
        finally:
            cluster.close()
            signal.signal(signal.SIGTERM, previous)
        phases = [steady, chaos]
        print_table(phases)
        summary = {"settings": {"minutes": args.minutes, "kill_every_s": args.kill_every_s},
                   "phases": {p.name: p.summary for p in phases},
                   "ratio": chaos.summary["groups_per_min"] / steady.summary["groups_per_min"]}
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

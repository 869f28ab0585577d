"""Soak: a whole relaytrain stack on its own PostgreSQL under every fault at once, for minutes.

    python -m bench.soak --minutes 30 --out soak-30min          # the soak the docs report
    python -m bench.soak --minutes 2 --fault-every-s 6          # a smoke run, about 3 min
    python -m bench.soak --minutes 5 --faults worker_kill,postgres_restart --seed 3

What runs
---------
- A private PostgreSQL 15 (the Debian binaries under ``--pg-bin``): ``initdb`` of a fresh data
  folder under /tmp, a free port on 127.0.0.1, ``pg_ctl`` start, restart and stop by the bench.
  initdb refuses to run as root, so when the bench runs as root (this machine does) the server is
  run as the ``postgres`` OS user (``runuser -u postgres``) in a folder that user owns.
- Two ``relay serve`` replicas on that database (different ports, one admin token).
- Three ``relay worker`` processes, each given both replicas' URLs (``--commander URL1,URL2``;
  ``--one-url`` gives them the first only, to see what the second URL saves). One of
  them, the *disk worker*, has its workdir on a tmpfs of its own (``mount -t tmpfs -o size=…``,
  ``--tmpfs-mb``); needs root, else the ``disk_full`` fault is left out and the report says why.
- A steady supply of counter-trainer runs (examples/trainers/counter_trainer.py, given as a
  SHELL STRING): ``--in-flight`` runs queued or running at any time, each of ``--min-steps`` to
  ``--max-steps`` steps of ``--step-s`` seconds, a checkpoint every ``--every`` steps, a local
  folder as the store (outside every tmpfs). Every attempt appends one line per trained step to
  its run's journal (``COUNTER_JOURNAL``), shared by all workers.

Faults, one at a time, at seeded random instants (uniform in 0.5–1.5 × ``--fault-every-s``),
each kind of ``--faults`` once per round, the order of each round shuffled (seeded):

worker_kill         ``kill -9`` of a worker (a holder when one exists); a new worker (new id)
                    replaces it at once.
worker_term         SIGTERM (a preemption notice) to a worker; replaced at once; it drains.
commander_restart   one replica is stopped (SIGKILL or SIGTERM, drawn), left down 0.5 s to
                    ``--commander-down-s``, and started again on the same database and port.
postgres_restart    ``pg_ctl restart -m fast`` or ``-m immediate`` (drawn).
disk_full           when the disk worker's run is within 3 steps of a checkpoint (or at any step
                    after 20 s of waiting for one), its tmpfs is filled with one file of zeros
                    (written until ENOSPC); the file is removed ``--disk-hold-s`` later. A fill is
                    skipped, and the report says so, if the disk worker holds no run for 60 s.

After ``--minutes`` no new fault is injected (a fill already armed may still fire, within its
60 s) and no new run is submitted; the runs in flight are left
``--drain-s`` to finish (then cancelled), and the checks run (bench/_soak_checks.py).

Checks and figures (written to ``--out``: ``soak.json``, ``soak.txt``, and every log)
------------------
final state exact    every run's newest durable checkpoint verifies and its ``state.json`` is
                     ``counter_final_state(step)``; a succeeded run's step is its ``max_steps``.
overlapping training two attempts of one run whose journal intervals (first to last step
intervals              written, wall clock) intersect. Target 0.
double grants        two attempts of one run open at once in the commander's attempts table
                     (one granted before the other ended). Target 0.
orphans              a trainer process (found in /proc by the fence's ``RELAY_FENCE_TOKEN``
                     and the run root under this bench's folder) alive more than
                     ``--orphan-grace-s`` after its attempt ended or its worker died. Target 0.
steps lost per fault each attempt that ended other than succeeded/cancelled is charged to the
                     fault that ended it (its worker's kill/term/disk fault, else the last
                     commander or PostgreSQL restart before it); ``table`` = the attempt's
                     ``steps_lost``, ``true`` = its last journal step − the next attempt's start.
ETTR                 the commander's ledger over every run (``GET /api/v1/ledger``).

Everything the bench starts is stopped by PID (workers SIGKILL, their trainers with them;
replicas SIGTERM), the tmpfs mounts are unmounted and PostgreSQL is stopped (``-m immediate``)
and its folder removed, also on Ctrl-C, SIGTERM or an exception.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from bench import _soak_checks as checks
from bench._soak_machine import FILL_FILE, PrivatePostgres, fill, mount_tmpfs, tmpfs_problem, unmount
from relaytrain.api.status import TERMINAL, RunStatus
from relaytrain.commander.store import Store
from relaytrain.commander.store.schema import runs as runs_table
from relaytrain.errors import AuthError, BadRequest, ConfigError, Forbidden, RelayError, RunExists
from tests.support.commander import Commander, wait_until
from tests.support.relay import COUNTER, WorkerProc, counter_run

WORKERS = 3
REPLICAS = 2
FAULT_KINDS = ("worker_kill", "worker_term", "commander_restart", "postgres_restart", "disk_full")
NEAR_CHECKPOINT = 3
ARMED_S = 60.0
"""How long an armed disk fill waits for the disk worker to hold a run (past the fault phase too)."""
PATIENCE_S = 20.0
"""After this long armed, a fill fires at any step of the disk worker's run, not only near a checkpoint."""
"""The disk is filled when the disk worker's run is at most this many steps before a checkpoint."""


# -- the stack ------------------------------------------------------------------------------------


@dataclass
class Fault:
    """One fault injected, and whom it hit."""

    kind: str
    at: float
    detail: str
    worker_id: str | None = None
    run_id: str | None = None
    epoch: int | None = None
    until: float | None = None
    """For a disk fill: when the file was removed."""


@dataclass
class Stack:
    root: Path
    args: argparse.Namespace
    pg: PrivatePostgres
    token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    replicas: list[Commander] = field(default_factory=list)
    workers: dict[str, WorkerProc] = field(default_factory=dict)
    live: list[str] = field(default_factory=list)
    mounts: dict[str, Path] = field(default_factory=dict)
    disk_worker: str | None = None
    store: Store | None = None
    worker_token: str = ""
    submitted: dict[str, int] = field(default_factory=dict)
    """run id → max_steps."""
    notes: list[str] = field(default_factory=list)
    died: list[dict] = field(default_factory=list)
    """Workers that exited without a fault: exit code and last log line."""
    _next: int = 0

    def start(self, disk: bool) -> None:
        checks.journal_path(self.root, "any").parent.mkdir()
        for _ in range(REPLICAS):  # one after the other: the first migrates the database
            self.replicas.append(Commander(db=self.pg.url, token=self.token, workdir=self.root,
                                           sweep_interval=self.args.sweep_interval_s).start(timeout_s=60))
        self.store = Store(self.pg.url, pool_size=4)
        with self.replicas[0].client() as client:
            self.worker_token = client.create_token("soak-workers").token
        for i in range(WORKERS):
            self.add_worker(disk=disk and i == 0)

    @property
    def urls(self) -> str:
        chosen = self.replicas[:1] if self.args.one_url else self.replicas
        return ",".join(r.url for r in chosen)

    def add_worker(self, *, disk: bool) -> str:
        self._next += 1
        worker_id = f"w{self._next:03d}"
        if disk:  # the workdir is the mount point: the worker's log (beside it) stays off the tmpfs
            workdir = self.root / "disk" / worker_id
            mount_tmpfs(workdir, self.args.tmpfs_mb)
            self.mounts[worker_id] = workdir
            self.disk_worker = worker_id
        else:
            workdir = self.root / "workers" / worker_id
        self.workers[worker_id] = WorkerProc(self.urls, self.worker_token, worker_id, workdir).start()
        self.live.append(worker_id)
        return worker_id

    def replace(self, worker_id: str) -> str:
        """Take ``worker_id`` out of the live set and start its replacement (a new id)."""
        self.live.remove(worker_id)
        return self.add_worker(disk=worker_id == self.disk_worker)

    def reap(self) -> None:
        """Replace a live worker that exited by itself (an anomaly: it is noted with its last log
        line); unmount the tmpfs of a disk worker that has exited (its trainers died with it)."""
        for worker_id in list(self.live):
            w = self.workers[worker_id]
            if w.proc.poll() is not None:
                last = next((line for line in reversed(w.log().splitlines()) if line.strip()), "")
                self.died.append({"worker_id": worker_id, "exit_code": w.proc.returncode, "last_line": last[:300],
                                  "at": time.time()})
                print(f"worker {worker_id} exited by itself ({w.proc.returncode}): {last[:200]}", flush=True)
                self.replace(worker_id)
        for worker_id, path in list(self.mounts.items()):
            if worker_id not in self.live and self.workers[worker_id].proc.poll() is not None:
                unmount(path)
                del self.mounts[worker_id]

    def holders(self) -> dict[str, tuple[str, int]]:
        """worker id → (run id, epoch) of every running run."""
        c = runs_table.c
        query = sa.select(c.holder, c.run_id, c.epoch).where(c.status == RunStatus.RUNNING)
        with self.store.engine.connect() as conn:
            return {h: (r, e) for h, r, e in conn.execute(query) if h}

    def ended_attempts(self) -> set[tuple[str, int]]:
        return {(a["run_id"], a["epoch"]) for a in self.store.attempts_table() if a["ended_at"] is not None}

    def worker_alive(self, worker_id: str) -> bool:
        w = self.workers.get(worker_id)
        return w is not None and w.proc.poll() is None

    def statuses(self) -> dict[str, str]:
        with self.store.engine.connect() as conn:
            return dict(conn.execute(sa.select(runs_table.c.run_id, runs_table.c.status)).all())

    def client(self):
        """A client of a replica that answers (the other may be down for a restart)."""
        for replica in self.replicas:
            if replica.proc is not None and replica.proc.poll() is None:
                return replica.client()
        raise RuntimeError("no commander replica is up")

    def submit(self, rng: random.Random) -> None:
        run_id = f"soak-{len(self.submitted) + 1:04d}"
        steps = rng.randint(self.args.min_steps, self.args.max_steps)
        a = self.args
        config = counter_run(run_id, self.root / "store", max_steps=steps, every=a.every, step_s=a.step_s,
                             env={"COUNTER_JOURNAL": str(checks.journal_path(self.root, run_id))},
                             lease={"ttl_s": a.ttl_s, "margin_s": a.ttl_s / 4, "grace_s": a.ttl_s * 0.15})
        config["trainer"]["command"] = f"{shlex.quote(sys.executable)} {shlex.quote(str(COUNTER))}"
        config["checkpoint"]["keep_last"] = 5
        with self.client() as client:
            try:
                client.submit(config)
            except RunExists:  # an earlier try that timed out went through
                pass
        self.submitted[run_id] = steps

    def top_up(self, rng: random.Random) -> None:
        """Keep ``--in-flight`` runs queued or running."""
        statuses = self.statuses()
        in_flight = sum(RunStatus(s) not in TERMINAL for s in statuses.values())
        for _ in range(self.args.in_flight - in_flight):
            self.submit(rng)

    def close(self, out: Path) -> None:
        logs = out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for w in self.workers.values():
            try:
                w.stop()  # SIGKILL by PID; its trainer dies with it (PDEATHSIG)
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                print(f"could not stop worker {w.worker_id} (pid {w.proc.pid}): {exc}", file=sys.stderr)
            if w.log_path.exists():
                shutil.copy(w.log_path, logs / w.log_path.name)
        for pid in checks.trainer_processes(self.root):  # a trainer must never outlive the bench
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for path in self.mounts.values():
            unmount(path)
        self.mounts.clear()
        if self.store is not None:
            self.store.close()
        for replica in self.replicas:
            replica.stop()
            if replica.log_path and replica.log_path.exists():
                shutil.copy(replica.log_path, logs / replica.log_path.name)


# -- faults ---------------------------------------------------------------------------------------


class Injector:
    """Injects the faults and keeps their record; a disk fill is armed, then fired near a checkpoint."""

    def __init__(self, stack: Stack, rng: random.Random, kinds: list[str]) -> None:
        self.stack, self.rng, self.kinds = stack, rng, kinds
        self.faults: list[Fault] = []
        self.deck: list[str] = []
        self.armed_until: float | None = None
        self.filled: Fault | None = None

    def log(self, fault: Fault, start: float) -> None:
        self.faults.append(fault)
        print(f"t={fault.at - start:7.1f}s {fault.kind:18} {fault.detail}", flush=True)

    def inject(self, start: float) -> None:
        if not self.deck:  # every kind once per round, in a seeded order: short soaks see them all
            self.deck = self.rng.sample(self.kinds, len(self.kinds))
        kind = self.deck.pop()
        if kind == "disk_full":
            if self.armed_until is None and self.filled is None:
                self.armed_until = time.time() + ARMED_S
            return
        getattr(self, kind)(start)

    def _target(self) -> tuple[str, tuple[str, int] | None]:
        holders = self.stack.holders()
        busy = [w for w in self.stack.live if w in holders]
        worker_id = self.rng.choice(busy or self.stack.live)
        return worker_id, holders.get(worker_id)

    def _signal_worker(self, start: float, kind: str, sig: signal.Signals) -> None:
        worker_id, held = self._target()
        self.stack.workers[worker_id].signal(sig)
        new = self.stack.replace(worker_id)
        run_id, epoch = held or (None, None)
        self.log(Fault(kind, time.time(), f"{sig.name} {worker_id} (holding {run_id} epoch {epoch}); {new} replaces it",
                       worker_id, run_id, epoch), start)

    def worker_kill(self, start: float) -> None:
        self._signal_worker(start, "worker_kill", signal.SIGKILL)

    def worker_term(self, start: float) -> None:
        self._signal_worker(start, "worker_term", signal.SIGTERM)

    def commander_restart(self, start: float) -> None:
        index = self.rng.randrange(len(self.stack.replicas))
        replica = self.stack.replicas[index]
        sig = self.rng.choice((signal.SIGKILL, signal.SIGTERM))
        down = self.rng.uniform(0.5, self.stack.args.commander_down_s)
        at = time.time()
        replica.stop(sig)
        time.sleep(down)
        replica.start(timeout_s=60)
        self.log(Fault("commander_restart", at, f"replica {index} (:{replica.port}) {sig.name}, down {down:.1f}s, "
                       f"back after {time.time() - at:.1f}s"), start)

    def postgres_restart(self, start: float) -> None:
        mode = self.rng.choice(("fast", "immediate"))
        at = time.time()
        self.stack.pg.restart(mode)
        self.log(Fault("postgres_restart", at, f"pg_ctl restart -m {mode}: {time.time() - at:.1f}s"), start)

    def tick(self, start: float) -> None:
        """Fire an armed disk fill when the disk worker is about to checkpoint; empty a held one."""
        now = time.time()
        if self.filled is not None and now >= self.filled.until:
            mount = self.stack.mounts.get(self.filled.worker_id)
            if mount is not None:
                (mount / FILL_FILE).unlink(missing_ok=True)
            print(f"t={now - start:7.1f}s disk_full          removed the fill of {self.filled.worker_id}", flush=True)
            self.filled = None
        if self.armed_until is None:
            return
        if now > self.armed_until:
            self.stack.notes.append(f"t={now - start:.0f}s: a disk_full fault was skipped: for {ARMED_S:g} s the "
                                    "disk worker held no run")
            self.armed_until = None
            return
        worker_id = self.stack.disk_worker
        held = self.stack.holders().get(worker_id)
        if held is None:
            return
        step = checks.last_journal_step(self.stack.root, *held)
        every = self.stack.args.every
        near = step is not None and step % every != 0 and (every - step % every) % every <= NEAR_CHECKPOINT
        if not near and (step is None or now < self.armed_until - ARMED_S + PATIENCE_S):
            return
        written = fill(self.stack.mounts[worker_id])
        fault = Fault("disk_full", time.time(), f"filled {worker_id}'s {self.stack.args.tmpfs_mb} MB tmpfs with "
                      f"{written / 2**20:.1f} MiB at step {step} of {held[0]} epoch {held[1]}", worker_id, *held)
        fault.until = fault.at + self.stack.args.disk_hold_s
        self.filled, self.armed_until = fault, None
        self.log(fault, start)

    def release(self, start: float) -> None:
        """Remove a fill still in place (the drain must not run on a full disk)."""
        if self.filled is not None:
            self.filled.until = time.time()
            self.tick(start)


# -- the soak -------------------------------------------------------------------------------------


def transient(exc: Exception) -> bool:
    """A commander or database hiccup (the soak causes them), not a mistake of the bench."""
    return isinstance(exc, (RelayError, sa.exc.OperationalError, sa.exc.InterfaceError)) and not isinstance(
        exc, (BadRequest, ConfigError, AuthError, Forbidden))


def soak(stack: Stack, injector: Injector, watcher: checks.OrphanWatcher, rng: random.Random) -> float:
    """Run the configured minutes of faults, then drain; returns the soak's start time."""
    args = stack.args
    start = time.time()
    deadline = start + args.minutes * 60
    next_fault = start + args.warmup_s
    while time.time() < deadline or injector.armed_until is not None:  # an armed fill still fires
        try:
            stack.top_up(rng)
            stack.reap()
            watcher.sample()
            injector.tick(start)
            if next_fault <= time.time() < deadline:
                injector.inject(start)
                next_fault = time.time() + args.fault_every_s * rng.uniform(0.5, 1.5)
        except Exception as exc:
            if not transient(exc):
                raise
            stack.notes.append(f"t={time.time() - start:.0f}s: the bench's own call failed: {type(exc).__name__}: "
                               f"{str(exc)[:200]}")
        time.sleep(0.5)
    injector.release(start)
    print(f"t={time.time() - start:7.1f}s no more faults or runs: draining {len(stack.submitted)} runs", flush=True)

    def drained() -> bool:
        stack.reap()
        watcher.sample()
        return all(RunStatus(s) in TERMINAL for s in stack.statuses().values())

    try:
        wait_until(drained, args.drain_s, "every run to end", interval_s=1)
    except AssertionError:
        left = [r for r, s in stack.statuses().items() if RunStatus(s) not in TERMINAL]
        stack.notes.append(f"after {args.drain_s:g}s of drain {len(left)} runs had not ended and were cancelled: "
                           f"{', '.join(left)}")
        with stack.client() as client:
            for run_id in left:
                client.cancel(run_id)
        wait_until(drained, 3 * args.ttl_s + 30, "the cancelled runs to end", interval_s=1)
    # every run has ended: a trainer still alive past the orphan grace is an orphan
    deadline = time.monotonic() + args.orphan_grace_s + 5
    while watcher.sample() and time.monotonic() < deadline:
        time.sleep(0.5)
    return start


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30, help="how long faults are injected (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seeds the fault instants, kinds, targets and run lengths")
    p.add_argument("--out", type=Path, default=Path("soak-report"), help="report folder (default ./soak-report)")
    p.add_argument("--faults", default=",".join(FAULT_KINDS), help=f"kinds to inject (default all: {FAULT_KINDS})")
    p.add_argument("--fault-every-s", type=float, default=30, help="mean seconds between faults (default 30)")
    p.add_argument("--warmup-s", type=float, default=10, help="no fault before this (default 10)")
    p.add_argument("--in-flight", type=int, default=4, help="runs kept queued or running (default 4)")
    p.add_argument("--min-steps", type=int, default=200, help="a run's fewest steps (default 200)")
    p.add_argument("--max-steps", type=int, default=400, help="a run's most steps (default 400)")
    p.add_argument("--every", type=int, default=20, help="checkpoint interval in steps (default 20)")
    p.add_argument("--step-s", type=float, default=0.05, help="counter trainer seconds per step (default 0.05)")
    p.add_argument("--ttl-s", type=float, default=10, help="lease ttl; margin ttl/4, grace 0.15 ttl (default 10)")
    p.add_argument("--sweep-interval-s", type=float, default=1.0, help="commander lease sweeper (default 1)")
    p.add_argument("--commander-down-s", type=float, default=5, help="most seconds a replica stays down (default 5)")
    p.add_argument("--tmpfs-mb", type=int, default=16, help="the disk worker's tmpfs size (default 16)")
    p.add_argument("--disk-hold-s", type=float, default=20, help="seconds a filled disk stays full (default 20)")
    p.add_argument("--drain-s", type=float, default=300, help="seconds the last runs get to end (default 300)")
    p.add_argument("--orphan-grace-s", type=float, default=15,
                   help="a trainer alive this long after its attempt ended or its worker died is an orphan")
    p.add_argument("--one-url", action="store_true",
                   help="give workers the first replica's URL only (what a restart of it costs without the other)")
    p.add_argument("--pg-bin", type=Path, default=Path("/usr/lib/postgresql/15/bin"), help="initdb and pg_ctl")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (workdirs, store, journals)")
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.faults.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    if unknown or not kinds:
        p.error(f"--faults: unknown kind(s) {unknown or '(none given)'}; choose from {', '.join(FAULT_KINDS)}")
    args.fault_kinds = kinds
    if not 1 <= args.min_steps <= args.max_steps:
        p.error(f"--min-steps/--max-steps: need 1 <= min <= max, got {args.min_steps}/{args.max_steps}")
    for name in ("minutes", "fault_every_s", "step_s", "ttl_s", "in_flight", "every", "tmpfs_mb"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not (args.pg_bin / "initdb").exists():
        p.error(f"--pg-bin: no initdb in {args.pg_bin} (apt-get install postgresql-15)")
    return args


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # clean up on any of them
        if signum != signal.SIGHUP or signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _interrupt)
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="relay-soak-"))
    args.out.mkdir(parents=True, exist_ok=True)
    kinds = list(args.fault_kinds)
    notes = []
    if "disk_full" in kinds and (why := tmpfs_problem(root)):
        kinds.remove("disk_full")
        notes.append(f"disk_full left out: cannot mount a tmpfs ({why})")
    pg = PrivatePostgres(args.pg_bin)
    stack = Stack(root, args, pg, notes=notes)
    injector = Injector(stack, rng, kinds)
    watcher = checks.OrphanWatcher(root, stack.ended_attempts, stack.worker_alive, args.orphan_grace_s)
    print(f"relay soak: python -m bench.soak {' '.join(sys.argv[1:] if argv is None else argv)}\n  folder {root}, "
          f"faults {', '.join(kinds) or 'none'} about every {args.fault_every_s:g}s, {args.in_flight} runs in flight",
          flush=True)
    report = None
    try:
        pg.start()
        print(f"  PostgreSQL on 127.0.0.1:{pg.port} ({pg.folder})", flush=True)
        stack.start(disk="disk_full" in kinds)
        print(f"  replicas {stack.urls}; workers {', '.join(stack.live)} (disk worker {stack.disk_worker})", flush=True)
        start = soak(stack, injector, watcher, rng)
        report = checks.analyse(stack, injector.faults, watcher, args, start)
    except KeyboardInterrupt:
        print("interrupted: stopping every process", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.close(args.out)
        pg.stop(keep_log=args.out / "logs" / "postgres.log")
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    checks.write(report, args.out)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

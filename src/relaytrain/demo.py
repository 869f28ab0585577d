"""``relay demo``: the whole system on this machine, in a few minutes, on a CPU.

It starts a commander (SQLite, loopback, a random token) and two workers as local processes
under ``./relay-demo/``, submits an SFT run of the tiny model on 2-digit addition and a GRPO
run initialised from its result, kills the worker holding the SFT lease partway through (a
new worker joins in its place), shows live progress, scores the base, SFT and GRPO models
on held-out problems in a separate process, and stops everything it started.
It exits 1 if the models did not learn. It prints the dashboard's address (with a viewer token)
as soon as the commander is up; with ``keep`` the commander stays up after the summary, its
workers stopped, until Ctrl-C.

What it shows goes through a :class:`DemoView`; ``relay demo`` draws it with rich
(:class:`relaytrain.cli.render.DemoScreen`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from relaytrain import TOKEN_ENV
from relaytrain.api.client import RelayClient
from relaytrain.api.models import RunDetail
from relaytrain.api.status import TERMINAL, RunStatus

SFT_RUN, GRPO_RUN = "demo-sft", "demo-grpo"


@dataclass
class DemoSettings:
    root: Path = Path("./relay-demo")
    sft_steps: int = 500
    grpo_steps: int = 150
    kill_at: float = 0.4
    eval_samples: int = 300
    timeout_s: float = 900.0
    threads: int = 1
    rollout_workers: int = 0
    """Rollout workers attached to the GRPO run (its trainer then hosts a rollout manager)."""
    keep: bool = False
    """Keep the commander (and its dashboard) up after the summary, until Ctrl-C."""


@dataclass
class DemoFrame:
    """What the live view shows at one moment: each run, its latest metrics, the time so far."""

    runs: dict[str, RunDetail]
    metrics: dict[str, dict[str, float]]
    elapsed_s: float


@dataclass
class DemoSummary:
    """The demo's outcome: scores by model, the runs, what the hand-offs cost, and what went wrong."""

    root: Path
    runs: dict[str, RunDetail]
    scores: dict[str, float]
    checkpoints: dict[str, str | None]
    handoffs: int
    steps_lost: int
    wall_s: float
    problems: list[str]
    rollout: dict[str, float] = field(default_factory=dict)
    """With rollout workers: the GRPO run's ``rollout/*`` counters at its last step."""


class DemoView(Protocol):
    """Where the demo reports: lines as it goes, a live frame while it watches, a summary at the end."""

    def note(self, text: str) -> None: ...

    def alert(self, label: str, text: str) -> None:
        """A line led by a highlighted label (``kill -9``, ``evaluation failed:``)."""

    def watching(self) -> AbstractContextManager[Callable[[DemoFrame], None]]:
        """A live display; the callable it yields replaces the frame shown."""

    def summary(self, summary: DemoSummary) -> None: ...


@dataclass
class _Procs:
    """Every process the demo started, stopped by PID at the end."""

    items: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], log: Path, env: dict[str, str], token: str) -> subprocess.Popen:
        """Start ``argv`` with its bearer ``token`` in its environment: a command line is public (ps)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**env, TOKEN_ENV: token},
                                    start_new_session=True)
        self.items[name] = proc
        return proc

    def stop_all(self, *, but: tuple[str, ...] = ()) -> None:
        """Stop every process (but those named), SIGTERM first, SIGKILL after 20 s."""
        procs = [proc for name, proc in self.items.items() if name not in but]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_configs(settings: DemoSettings, store: Path) -> list[dict[str, Any]]:
    lease = {"ttl_s": 10, "margin_s": 4, "grace_s": 3}
    rollout = {"rollout": {"max_staleness": 4}} if settings.rollout_workers else {}
    return [
        {
            "run_id": SFT_RUN, "kind": "sft", "model": "tiny", "data": {"builtin": "arithmetic"},
            "max_steps": settings.sft_steps, "checkpoint": {"every_steps": 50, "keep_last": 2},
            "lease": lease, "store": str(store),
            "trainer": {"learning_rate": 1e-3, "batch_size": 64},
        },
        {
            "run_id": GRPO_RUN, "kind": "grpo", "model": "tiny", "init_from": {"run": SFT_RUN},
            "data": {"builtin": "arithmetic"}, "max_steps": settings.grpo_steps,
            "checkpoint": {"every_steps": 50, "keep_last": 2}, "lease": lease, "store": str(store),
            "trainer": {"learning_rate": 1e-4, "prompts_per_step": 8, "num_generations": 4, "max_new_tokens": 8},
            **rollout,
        },
    ]


class Demo:
    def __init__(self, settings: DemoSettings, view: DemoView) -> None:
        self.s = settings
        self.view = view
        self.root = settings.root.resolve()
        self.procs = _Procs()
        self.token = secrets.token_urlsafe(24)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "OMP_NUM_THREADS": str(settings.threads), "MKL_NUM_THREADS": str(settings.threads),
                    "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        self.workers: list[str] = []
        self.killed: tuple[str, int, float] | None = None
        self.handoffs: list[str] = []

    def run(self) -> int:
        started = time.monotonic()
        self._fresh_root()
        try:
            try:
                client = self._start_commander()
                dashboard = f"{self.url}/#token={client.create_token('demo-dashboard', 'viewer').token}"
                self.view.note(f"dashboard: {dashboard}")
                worker_token = client.create_token("demo-workers").token
                for name in ("demo-w1", "demo-w2"):
                    self._start_worker(name, worker_token)
                if self.s.rollout_workers:
                    rollout_token = client.create_token("demo-rollout", "rollout").token
                    for i in range(1, self.s.rollout_workers + 1):
                        self._start_rollout_worker(f"demo-gen{i}", rollout_token)
                for config in _run_configs(self.s, self.root / "artifacts"):
                    client.submit(config)
                runs = self._watch(client, worker_token, started)
                rollout = self._rollout_counters(client) if self.s.rollout_workers else {}
                scores = self._score(runs)
            finally:
                self.procs.stop_all(but=("commander",) if self.s.keep else ())
            code = self._summary(runs, scores, time.monotonic() - started, rollout)
            if self.s.keep:
                self._serve_until_interrupted(dashboard)
            return code
        finally:
            self.procs.stop_all()

    def _serve_until_interrupted(self, dashboard: str) -> None:
        """Keep the commander up (its workers are stopped) until Ctrl-C, or until it exits."""
        commander = self.procs.items["commander"]
        self.view.note(f"the commander stays up (--keep): dashboard at {dashboard} ; Ctrl-C stops it")
        try:
            code = commander.wait()
        except KeyboardInterrupt:
            self.view.note("Ctrl-C: stopping the commander")
            return
        self.view.alert("the commander exited", f"with code {code}; see {self.root / 'logs' / 'commander.log'}")

    # -- processes ---------------------------------------------------------------------------

    def _fresh_root(self) -> None:
        for name in ("relay.db", "relay.db-wal", "relay.db-shm", "artifacts", "workers", "logs"):
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        self.root.mkdir(parents=True, exist_ok=True)

    def _relay(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "relaytrain.cli", *args]

    def _start_commander(self) -> RelayClient:
        argv = self._relay("serve", "--db", str(self.root / "relay.db"), "--port", str(self.port),
                           "--sweep-interval", "1", "--log-level", "warning")
        proc = self.procs.start("commander", argv, self.root / "logs" / "commander.log", self.env, self.token)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the commander exited; see {self.root / 'logs' / 'commander.log'}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200:
                    self.view.note(f"commander on {self.url} (SQLite {self.root / 'relay.db'})")
                    return RelayClient(self.url, self.token)
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("the commander did not come up within 60 s")

    def _start_worker(self, name: str, token: str) -> None:
        argv = self._relay("worker", "--commander", self.url, "--worker-id", name,
                           "--workdir", str(self.root / "workers" / name), "--claim-wait", "2")
        self.procs.start(name, argv, self.root / "logs" / f"{name}.log", self.env, token)
        self.workers.append(name)
        self.view.note(f"worker {name} started (log {self.root / 'logs' / f'{name}.log'})")

    def _start_rollout_worker(self, name: str, token: str) -> None:
        argv = self._relay("rollout-worker", "--commander", self.url, "--worker-id", name,
                           "--run", GRPO_RUN, "--threads", str(self.s.threads))
        self.procs.start(name, argv, self.root / "logs" / f"{name}.log", self.env, token)
        self.view.note(f"rollout worker {name} started for {GRPO_RUN} (log {self.root / 'logs' / f'{name}.log'})")

    # -- watching ----------------------------------------------------------------------------

    def _watch(self, client: RelayClient, worker_token: str, started: float) -> dict[str, RunDetail]:
        runs: dict[str, RunDetail] = {}
        last_metrics: dict[str, dict[str, float]] = {}
        with self.view.watching() as show:
            while time.monotonic() - started < self.s.timeout_s:
                runs = {r: client.run(r) for r in (SFT_RUN, GRPO_RUN)}
                for run_id, run in runs.items():
                    if run.status == RunStatus.RUNNING:
                        last_metrics[run_id] = self._last_metrics(client, run_id)
                sft = runs[SFT_RUN]
                if self.killed is None and sft.holder and sft.step >= self.s.kill_at * self.s.sft_steps:
                    self._kill_holder(sft, worker_token)
                show(DemoFrame(runs, last_metrics, time.monotonic() - started))
                if all(r.status in TERMINAL for r in runs.values()):
                    break
                time.sleep(0.5)
        return runs

    def _last_metrics(self, client: RelayClient, run_id: str) -> dict[str, float]:
        points = client.metrics(run_id, max_points=2).items  # each series' first and last point
        return {p.name: p.value for p in points}  # ordered by name, then step: the last one wins

    def _kill_holder(self, sft: RunDetail, worker_token: str) -> None:
        victim = sft.holder
        self.procs.items[victim].send_signal(signal.SIGKILL)
        self.killed = (victim, sft.step, time.monotonic())
        self.view.alert("kill -9", f"{victim}, holding {SFT_RUN} at step {sft.step}: "
                        "its lease must expire before another worker resumes the run")
        self._start_worker(f"demo-w{len(self.workers) + 1}", worker_token)

    # -- results -----------------------------------------------------------------------------

    def _rollout_counters(self, client: RelayClient) -> dict[str, float]:
        names = ("rollout/worker_generated", "rollout/trainer_generated", "rollout/groups_requeued",
                 "rollout/dropped_stale", "rollout/staleness_max")
        out = {}
        for name in names:
            points = client.metrics(GRPO_RUN, name=name).items
            if points:
                out[name] = max(points, key=lambda p: p.step).value
        return out

    def _checkpoint_path(self, run: RunDetail) -> str | None:
        ref = run.latest_checkpoint
        return ref.uri.removeprefix("file://") if ref else None

    def _score(self, runs: dict[str, RunDetail]) -> dict[str, float]:
        models = {"base": "tiny"}
        for label, run_id in (("SFT", SFT_RUN), ("GRPO", GRPO_RUN)):
            path = self._checkpoint_path(runs[run_id]) if runs.get(run_id) else None
            if path:
                models[label] = path
        self.view.note(f"scoring {', '.join(models)} on {self.s.eval_samples} held-out problems "
                           "(in its own process)…")
        argv = [sys.executable, "-m", "relaytrain.evaluate.score", "--dataset", "arithmetic", "--json",
                "--samples", str(self.s.eval_samples)]
        for path in models.values():
            argv += ["--model", path]
        result = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=600)
        if result.returncode != 0:
            self.view.alert("evaluation failed:", result.stderr[-2000:])
            return {}
        scores = json.loads(result.stdout.strip().splitlines()[-1])
        return {label: s["accuracy"] for label, s in zip(models, scores, strict=True)}

    def _summary(self, runs: dict[str, RunDetail], scores: dict[str, float], wall_s: float,
                 rollout: dict[str, float]) -> int:
        problems = []
        if any(r.status != RunStatus.SUCCEEDED for r in runs.values()):
            problems.append("a run did not succeed: " + ", ".join(f"{k} {r.status}" for k, r in runs.items()))
        base, sft, grpo = scores.get("base"), scores.get("SFT"), scores.get("GRPO")
        if sft is None or base is None or sft < base + 0.25:
            problems.append(f"SFT did not learn (base {base}, SFT {sft})")
        if grpo is None or sft is None or grpo < sft - 0.03:
            problems.append(f"GRPO lost accuracy (SFT {sft}, GRPO {grpo})")
        if self.killed is None:
            problems.append("no hand-off happened")
        if self.s.rollout_workers and not rollout.get("rollout/worker_generated"):
            problems.append("the rollout workers generated no group for the GRPO run")
        self.view.summary(DemoSummary(
            root=self.root, runs=runs, scores=scores,
            checkpoints={run_id: self._checkpoint_path(run) for run_id, run in runs.items()},
            handoffs=sum(max(0, len(r.attempts) - 1) for r in runs.values()),
            steps_lost=sum(a.steps_lost or 0 for r in runs.values() for a in r.attempts),
            wall_s=wall_s, problems=problems, rollout=rollout,
        ))
        return 1 if problems else 0


def run_demo(settings: DemoSettings, view: DemoView) -> int:
    return Demo(settings, view).run()

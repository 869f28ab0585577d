"""One attempt: everything a worker does with one grant, from resume to release.

    prepare run root → keep the lease → fetch the checkpoint to resume from → start the
    trainer under the contract (DESIGN §6) → forward progress, ship its output, make checkpoints durable →
    watch for hangs, cancels, fences, preemption → classify the exit → drain → release.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import threading
import time
from pathlib import Path

from relaytrain import TOKEN_ENV
from relaytrain.api import models as m
from relaytrain.api.client import RelayClient
from relaytrain.api.status import AttemptOutcome
from relaytrain.artifacts import ArtifactStore, fetch_for_resume, open_store
from relaytrain.checkpoint import atomic_write_text
from relaytrain.config import GRPORun, LeasePolicy, RunConfig, SFTRun, parse_run_config, resolve_env, run_config_dict
from relaytrain.contract import (
    TRACKING_SUBDIR,
    Exit,
    FailureClass,
    MachineFault,
    Outcome,
    RunLayout,
    TrainerEnv,
    classify_exit,
)
from relaytrain.errors import (
    ArtifactError,
    CheckpointError,
    ConfigError,
    LeaseLost,
    NotFound,
    RelayError,
    WorkerEnvMissing,
)
from relaytrain.netaddr import address_towards

from .folder_sync import FolderSync
from .guard import StopReason
from .lease import LeaseKeeper
from .logship import LogShipper
from .machine import DiskNeed, checkpoint_bytes, disk_message, fault_of, free_bytes, looks_full
from .process import TrainerProcess
from .reporter import ProgressTailer, Reporter, Uploader

log = logging.getLogger(__name__)

RUN_FILE_MODE = 0o600
"""``run_config.json`` is the worker's copy of the run file: readable by the worker's user only."""
MISSING_ENV_CLASS = FailureClass.PERMANENT
"""A run that references a variable this worker lacks fails for good, naming both: a retry could land
on the same worker at once (nothing steers a requeued run away from it), and the run's author or the
worker's operator must act. A class that requeues the run elsewhere without spending a retry is the
better fit once there is one that avoids the worker (docs/security.md)."""

BUILTIN = {
    "sft": [sys.executable, "-m", "relaytrain.train.run"],
    "grpo": [sys.executable, "-m", "relaytrain.train.run"],
    "eval": [sys.executable, "-m", "relaytrain.evaluate.run"],
}


class Attempt:
    """Runs one granted lease to its end. Call :meth:`run` from the worker's main thread (the
    trainer is bound to that thread's life), :meth:`stop` from anywhere."""

    def __init__(self, client: RelayClient, grant: m.Grant, *, worker_id: str, workdir: Path,
                 granted_at_monotonic: float, progress_interval_s: float = 1.0,
                 advertise_host: str | None = None, nproc_per_node: int | None = None) -> None:
        self.client = client
        self.grant = grant
        self.worker_id = worker_id
        self.workdir = workdir
        self.paths = RunLayout.in_workdir(workdir, grant.run_id, grant.epoch)
        self.granted_at = granted_at_monotonic
        self.progress_interval_s = progress_interval_s
        self.advertise_host = advertise_host
        self.nproc_per_node = nproc_per_node
        self.stop_reason: StopReason | None = None
        self.stop_message = ""
        self.fault: MachineFault | None = None
        """The machine fault that ended the attempt, if one did (released as ``failed (machine)``)."""
        self.fault_message = ""
        self.disk_need: DiskNeed | None = None
        """For a full disk: what the run needs here (its checkpoint size, how many it keeps)."""
        self._keep_last = 1
        self.in_jeopardy = False  # set by the lease keeper: the trainer must be paused
        self._uploader: Uploader | None = None
        self._wake = threading.Event()
        self._lock = threading.RLock()  # stop() may run in a signal handler on the main thread

    # -- signals from threads ----------------------------------------------------------------

    def stop(self, reason: StopReason, message: str = "") -> None:
        """Ask the attempt to end; the most serious reason wins (a lost lease beats a cancel)."""
        with self._lock:
            if self.stop_reason is None or reason.severity > self.stop_reason.severity:
                self.stop_reason, self.stop_message = reason, message or reason
                log.info("stopping %s (epoch %d): %s", self.grant.run_id, self.grant.epoch, self.stop_message)
            if reason in (StopReason.LOST, StopReason.FENCED) and self._uploader is not None:
                self._uploader.abandon()  # the lease is gone (or presumed so): nothing more can be committed
        self._wake.set()

    def jeopardy(self, paused: bool) -> None:
        """The lease keeper's word: pause the trainer (the commander is unreachable past the
        self-fence point), or resume it (the commander confirmed the lease)."""
        self.in_jeopardy = paused
        self._wake.set()

    # -- the attempt -------------------------------------------------------------------------

    def run(self) -> str:
        """Run the attempt; returns the outcome released (or ``lost`` if none could be)."""
        grant = self.grant
        lease = grant.config.get("lease", {})
        policy = LeasePolicy.model_validate(lease)
        grace_s = policy.grace_s
        keeper = LeaseKeeper(self.client, grant.run_id, self.worker_id, grant.epoch, ttl_s=grant.ttl_s,
                             margin_s=policy.margin_s, granted_at_monotonic=self.granted_at, on_stop=self.stop,
                             jeopardy_s=policy.jeopardy_s, on_jeopardy=self.jeopardy).start()
        try:
            try:
                config = parse_run_config(grant.config)
                self._keep_last = config.checkpoint.keep_last
                trainer_env = self._trainer_env(config)
                self.paths = RunLayout.in_workdir(self.workdir, grant.run_id, grant.epoch, config.trajectories.subdir)
                self.paths.make()
                store = open_store(config.store)
                if grant.checkpoint is not None:  # fence the store's commits at what was recorded (HFStore)
                    store.anchor(grant.checkpoint.revision)
                resume_from = self._resume(store)
                folders = self._run_folders(config, store)
                init_from = self._init_from(config, store)
                if config.kind == "eval":
                    self._fetch_eval_checkpoints(store)
            except (WorkerEnvMissing, ConfigError, ValueError, ArtifactError, CheckpointError, OSError, LeaseLost,
                    NotFound) as exc:
                return self._unprepared(exc)
            if self.stop_reason not in (None, StopReason.LOST):  # fenced, cancelled or preempted while downloading
                return self._release(*self._stop_outcome(None))
            try:
                trainer = self._start_trainer(config, trainer_env, resume_from, init_from)
            except OSError as exc:
                if (fault := fault_of(exc)) is None:
                    raise
                return self._release(*self._machine_outcome(fault, f"could not start the trainer: {exc}"))
            retention = (config.checkpoint.keep_last, config.checkpoint.keep_every)
            uploader = Uploader(self.client, store, grant.run_id, self.worker_id, grant.epoch, self.stop,
                                retention=retention, folders=folders)
            with self._lock:
                self._uploader = uploader
                if self.stop_reason in (StopReason.LOST, StopReason.FENCED):
                    uploader.abandon()
            uploader.start()
            file_runs = frozenset({config.trainer.source_run}) if config.kind == "eval" else frozenset()
            reporter = Reporter(self.client, ProgressTailer(self.paths.progress), uploader, self.paths.checkpoints,
                                grant.run_id, self.worker_id, grant.epoch, self.stop,
                                interval_s=self.progress_interval_s, file_runs=file_runs).start()
            shipper = (LogShipper.for_trainer(self.client, trainer.stdout_path, trainer.stderr_path, grant.run_id,
                                              self.worker_id, grant.epoch, self.stop,
                                              max_bytes=config.logs.max_bytes).start()
                       if config.logs.max_bytes else None)
            exit_ = self._supervise(trainer, reporter, config.hang_timeout_s, grace_s)
            reporter.finish()
            if shipper is not None:
                shipper.finish()
            if self.stop_reason == StopReason.LOST:
                uploader.abandon()
                return AttemptOutcome.LOST
            uploader.drain()  # commits retried while the commander is unreachable, until the lease is given up
            if uploader.skipped:
                log.warning("checkpoints not made durable: %s", "; ".join(uploader.skipped))
            if self.stop_reason == StopReason.LOST:
                return AttemptOutcome.LOST
            for folder in folders:
                folder.sync()  # what was written since the last durable checkpoint
            return self._release(*self._outcome(exit_, trainer))
        finally:
            keeper.stop()

    def _unprepared(self, exc: Exception) -> str:
        """Release an attempt whose run could not be prepared (the exceptions :meth:`run` catches)."""
        if isinstance(exc, WorkerEnvMissing):
            log.error("cannot start %s: %s", self.grant.run_id, exc)
            return self._release(AttemptOutcome.FAILED, MISSING_ENV_CLASS, str(exc))
        if isinstance(exc, ConfigError | ValueError):
            return self._release(AttemptOutcome.FAILED, FailureClass.PERMANENT, f"bad run: {exc}")
        if isinstance(exc, LeaseLost | NotFound):
            self.stop(StopReason.LOST, str(exc))
            return AttemptOutcome.LOST
        if (fault := fault_of(exc)) is not None:
            return self._release(*self._machine_outcome(fault, f"could not prepare the run: {exc}"))
        return self._release(AttemptOutcome.FAILED, FailureClass.TRANSIENT, f"could not prepare the run: {exc}")

    def _run_folders(self, config: RunConfig, store: ArtifactStore) -> list[FolderSync]:
        """The run's folders that travel through its store: trajectories when kept, and the
        trackers' files when the run reports to any. Those are restored here, before the trainer
        starts, so that it continues the same experiments (docs/tracking.md)."""
        folders = []
        if config.trajectories.save:
            folders.append(FolderSync(store, self.grant.run_id, self.paths.rollouts, config.trajectories.subdir))
        if isinstance(config, SFTRun | GRPORun) and config.report_to:
            tracking = FolderSync(store, self.grant.run_id, self.paths.tracking, TRACKING_SUBDIR)
            tracking.restore()
            folders.append(tracking)
        return folders

    def _resume(self, store: ArtifactStore) -> str:
        """A verified local copy of the newest durable checkpoint that is intact ('' if none)."""
        candidates = [c for c in [self.grant.checkpoint, *self.grant.fallback_checkpoints] if c is not None]
        problems = []
        for ref in candidates:
            try:
                path = fetch_for_resume(store, ref.store_run_id, ref.step, ref.manifest_sha256,
                                        self.paths.checkpoints, revision=ref.revision)
            except (ArtifactError, CheckpointError) as exc:
                if fault_of(exc) is not None:  # this machine's fault, not the checkpoint's: never start over for it
                    raise
                problems.append(f"step {ref.step}: {exc}")
                log.warning("cannot resume %s from step %d: %s", self.grant.run_id, ref.step, exc)
                continue
            self._report_resume(ref.step, "; ".join(problems) or None)
            return str(path)
        if candidates:
            self._report_resume(0, "no intact durable checkpoint, starting over: " + "; ".join(problems))
        return ""

    def _report_resume(self, step: int, note: str | None) -> None:
        self.client.resumed(self.grant.run_id, m.ResumeReport(worker_id=self.worker_id, epoch=self.grant.epoch,
                                                              step=step, note=note))

    def _fetch_eval_checkpoints(self, store: ArtifactStore) -> None:
        """An eval run scores checkpoints the worker fetched and verified: each ref gets its local
        ``path``, or the ``error`` that made it unusable (scored as a failed step)."""
        refs = []
        for ref in self.grant.eval_checkpoints:
            entry = ref.model_dump()
            try:
                entry["path"] = str(fetch_for_resume(store, ref.store_run_id, ref.step, ref.manifest_sha256,
                                                     self.paths.root / "sources", revision=ref.revision))
            except (ArtifactError, CheckpointError) as exc:
                entry["error"] = str(exc)
            refs.append(entry)
        atomic_write_text(self.paths.eval_checkpoints, json.dumps(refs, indent=1))

    def _init_from(self, config: RunConfig, store: ArtifactStore) -> str:
        if config.init_from is None:
            return ""
        if config.init_from.path is not None:
            return config.init_from.path
        ref = self.grant.init_checkpoint
        if ref is None:
            raise ArtifactError(f"init_from.run {config.init_from.run}: the commander has no durable checkpoint")
        dest = self.paths.init / ref.run_id
        dest.mkdir(parents=True, exist_ok=True)
        return str(fetch_for_resume(store, ref.store_run_id, ref.step, ref.manifest_sha256, dest,
                                    revision=ref.revision))

    def _trainer_env(self, config: RunConfig) -> dict[str, str]:
        """The run's extra trainer environment, its ``from_worker_env`` references read from this
        worker's environment (the values go to the trainer and nowhere else: not to a file or a log)."""
        if config.kind != "command":
            return {}
        return resolve_env(config.trainer.env, os.environ, worker_id=self.worker_id)

    def _start_trainer(self, config: RunConfig, trainer_env: dict[str, str], resume_from: str,
                       init_from: str) -> TrainerProcess:
        grant, paths = self.grant, self.paths
        atomic_write_text(paths.config, json.dumps(run_config_dict(config), indent=1), mode=RUN_FILE_MODE)
        contract = TrainerEnv(
            run_id=grant.run_id, epoch=grant.epoch, run_root=paths.root, output_dir=paths.checkpoints,
            resume_from=Path(resume_from) if resume_from else None, init_from=init_from or None,
            max_steps=grant.max_steps, progress_file=paths.progress, stop_file=paths.stop_file,
            run_config=paths.config, checkpoint_every=config.checkpoint.every_steps,
            save_rollout_trajectories=config.trajectories.save, rollout_trajectory_root=paths.rollouts,
            rollout_trajectory_pattern=config.trajectories.pattern,
            eval_checkpoints=paths.eval_checkpoints if config.kind == "eval" else None,
            advertise_host=self._advertise_host(), nproc_per_node=self.nproc_per_node,
            log_level=os.environ.get("RELAY_LOG_LEVEL", "INFO"),
        )
        # Not the worker's token: the trainer has no business with the commander, and its output is shipped there.
        env = {**{k: v for k, v in os.environ.items() if k != TOKEN_ENV}, **contract.to_env(), "PYTHONUNBUFFERED": "1"}
        cwd = paths.root
        if config.kind == "command":
            command = config.trainer.command
            argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
            env.update(trainer_env)
            if config.trainer.cwd:
                cwd = Path(config.trainer.cwd).expanduser()
        else:
            argv = list(BUILTIN[config.kind])
        log.info("starting trainer for %s epoch %d: %s", grant.run_id, grant.epoch, shlex.join(argv))
        return TrainerProcess(argv, env=env, cwd=cwd, log_dir=paths.logs, stop_file=paths.stop_file)

    def _advertise_host(self) -> str | None:
        """``--advertise-host``, else the address of the interface that routes to the commander
        (None when there is none: the trainer then picks its own)."""
        if self.advertise_host:
            return self.advertise_host
        try:
            return address_towards(self.client.base_url)
        except OSError as exc:
            log.warning("no address routes to the commander %s (%s): the trainer advertises its own",
                        self.client.base_url, exc)
            return None

    def _supervise(self, trainer: TrainerProcess, reporter: Reporter, hang_timeout_s: float,
                   grace_s: float) -> Exit:
        """Watch the trainer until it exits. In lease jeopardy its tree is paused, and resumed
        when the jeopardy ends; paused time is not silence (the hang watchdog skips it), and a
        paused trainer is never stopped gracefully: any stop (a lost lease, the end of jeopardy,
        a preemption) kills it. Resuming it to checkpoint would let it train on a lease nobody has
        confirmed, and without the commander its checkpoint could not be committed anyway; a
        cancel cannot arrive while paused (it comes with a confirmed renewal, which resumes first)."""
        killed_for: str | None = None
        while trainer.poll() is None:
            reason = self.stop_reason
            if self.in_jeopardy and reason is None:
                trainer.pause()  # sent again every tick: harmless, and it undoes a resume taken out of order
            elif trainer.paused and reason is None:
                reporter.excuse(trainer.resume())
            if reason is not None and killed_for is None and (reason == StopReason.LOST or trainer.paused):
                trainer.kill()  # fenced out, or paused: not one more step
                killed_for = (f"lease lost: {self.stop_message}" if reason == StopReason.LOST
                              else f"killed while paused in lease jeopardy: {self.stop_message}")
            elif reason is not None and not trainer.stopping and killed_for is None:
                trainer.request_stop(reason)
            trainer.advance_stop(grace_s)
            silent = time.monotonic() - reporter.last_activity
            if killed_for is None and not trainer.stopping and not trainer.paused and silent > hang_timeout_s:
                killed_for = f"hung: no progress for {silent:.0f}s (hang_timeout_s={hang_timeout_s:g})"
                log.warning("%s: %s", self.grant.run_id, killed_for)
                trainer.kill()
            self._wake.wait(0.2)
            self._wake.clear()
        trainer.reap_group()
        code = trainer.wait()
        return classify_exit(code, trainer.stderr_tail(), stop_requested=trainer.stopping, killed_for=killed_for)

    def _outcome(self, exit_: Exit, trainer: TrainerProcess) -> tuple[AttemptOutcome, str | None, str, str | None]:
        """(outcome, failure class, message, stderr tail) to release with. A trainer that finished
        while the uploader died has not succeeded: its last checkpoints are not durable."""
        if exit_.fault is not None and self.stop_reason in (None, StopReason.CRASHED):
            return self._machine_outcome(exit_.fault, exit_.message, trainer.stderr_tail())
        if (exit_.outcome == Outcome.FAILED and exit_.failure_class == FailureClass.TRANSIENT
                and self.stop_reason in (None, StopReason.CRASHED)
                and looks_full(self.paths.root, checkpoint_bytes(self.paths.checkpoints))):
            return self._machine_outcome(MachineFault.DISK, exit_.message, trainer.stderr_tail())
        if self._uploader is not None and self._uploader.died:
            return self._stop_outcome(trainer)
        if exit_.outcome == Outcome.SUCCEEDED:
            return AttemptOutcome.SUCCEEDED, None, exit_.message, None
        if exit_.outcome == Outcome.STOPPED or self.stop_reason not in (None, StopReason.LOST):
            return self._stop_outcome(trainer)
        return AttemptOutcome.FAILED, exit_.failure_class, exit_.message, trainer.stderr_tail()

    def _machine_outcome(self, fault: MachineFault, said: str,
                         stderr_tail: str | None = None) -> tuple[AttemptOutcome, str | None, str, str | None]:
        """Release as the machine's fault, named for the operator; the worker acts on it after the
        release (:class:`relaytrain.worker.machine.MachineHealth`)."""
        if fault == MachineFault.DISK:
            self.disk_need = DiskNeed(checkpoint_bytes(self.paths.checkpoints), self._keep_last + 1)
            free = free_bytes(self.paths.root)
            said = f"{disk_message(self.worker_id, self.paths.root, free, self.disk_need.checkpoint)} ({said})"
        elif fault == MachineFault.GPU:
            said = f"GPU fault on worker {self.worker_id} ({said})"
        else:
            said = f"the store cannot be reached from worker {self.worker_id} ({said})"
        self.fault, self.fault_message = fault, said
        log.warning("%s epoch %d: %s", self.grant.run_id, self.grant.epoch, said)
        return AttemptOutcome.FAILED, FailureClass.MACHINE, said, stderr_tail

    def _stop_outcome(self, trainer: TrainerProcess | None) -> tuple[AttemptOutcome, str | None, str, str | None]:
        reason = self.stop_reason
        if reason == StopReason.CANCELLED:
            return AttemptOutcome.CANCELLED, None, self.stop_message, None
        if reason == StopReason.CRASHED:
            tail = trainer.stderr_tail() if trainer else None
            if self._uploader is not None and self._uploader.fault is not None:
                return self._machine_outcome(self._uploader.fault, self.stop_message, tail)
            return AttemptOutcome.FAILED, FailureClass.TRANSIENT, self.stop_message, tail
        return AttemptOutcome.PREEMPTED, None, self.stop_message, None

    def _release(self, outcome: str, failure_class: str | None, message: str,
                 stderr_tail: str | None = None) -> str:
        req = m.ReleaseRequest(worker_id=self.worker_id, epoch=self.grant.epoch, outcome=outcome,
                               failure_class=failure_class, message=message[:10_000],
                               stderr_tail=stderr_tail[-65_536:] if stderr_tail else None)
        try:
            answer = self.client.release(self.grant.run_id, req)
        except (LeaseLost, NotFound) as exc:
            log.warning("release of %s refused (%s): the lease was already gone", self.grant.run_id, exc)
            return AttemptOutcome.LOST
        except RelayError as exc:
            log.error("release of %s failed (%s): the lease will expire instead", self.grant.run_id, exc)
            return AttemptOutcome.LOST
        log.info("released %s epoch %d as %s; run is %s", self.grant.run_id, self.grant.epoch, outcome,
                 answer.status)
        return outcome


"""What the worker learns from its trainer: progress lines forwarded to the commander
(throttled), checkpoints made durable (verified, uploaded, committed with the epoch), and the
trainer's rollout manager announced to the commander (coalesced, fenced by the epoch)."""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from relaytrain.api import models as m
from relaytrain.api.client import RelayClient
from relaytrain.api.rollout import RolloutAnnounce
from relaytrain.artifacts import ArtifactStore
from relaytrain.checkpoint import (
    MANIFEST_NAME,
    check_retention,
    manifest_sha256,
    parse_step,
    prune,
    read_latest,
    steps_to_keep,
    verify,
    write_manifest,
)
from relaytrain.contract import Event, MachineFault, Progress, disk_full, parse_line
from relaytrain.errors import CheckpointError, LeaseLost, NotFound, RelayError, StaleWriter, commander_unreachable

from .folder_sync import FolderSync
from .guard import Guarded, StopFn, StopReason
from .machine import store_unreachable

log = logging.getLogger(__name__)

COMMIT_RETRY_CAP_S = 2.0
"""The longest wait between two tries of a checkpoint commit the commander could not take."""


class ProgressTailer:
    """Reads the JSON lines a trainer appends to its progress file, a complete line at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read_new(self) -> list[Progress | Event]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        records = []
        for line in lines:
            if not line.strip():
                continue
            record = parse_line(line)
            if record is None:
                log.warning("ignoring a progress line outside the contract: %r", line[:200])
                continue
            records.append(record)
        return records


def _latest_name(output_dir: Path) -> str | None:
    """The step folder ``latest`` names, or None (absent, or mid-write garbage from a trainer)."""
    with contextlib.suppress(CheckpointError):
        return read_latest(output_dir)
    return None


class Uploader(Guarded):
    """Makes each committed local checkpoint durable, in order, on one background thread."""

    what = "checkpoint uploader"

    def __init__(self, client: RelayClient, store: ArtifactStore, run_id: str, worker_id: str, epoch: int,
                 on_stop: StopFn, *, retention: tuple[int, int | None] | None = None, attempts: int = 3,
                 folders: Sequence[FolderSync] = ()) -> None:
        super().__init__("upload", client, run_id, worker_id, epoch, on_stop)
        self.store = store
        self.attempts = attempts
        if retention is not None:
            check_retention(*retention)
        self.retention = retention
        self.folders = tuple(folders)
        self.durable_step: int | None = None
        self.skipped: list[str] = []
        self._queue: queue.Queue[tuple[int, Path] | tuple[Path, str, str] | None] = queue.Queue()
        self._seen: set[int] = set()
        self._dead = False
        self.died = False
        """The thread died (an upload that failed for good): what was submitted since is not durable."""
        self.fault: MachineFault | None = None
        """Set when the uploader died of its machine: this disk is full, or the store cannot be reached from here."""

    def submit(self, step: int, path: Path) -> None:
        if step not in self._seen:
            self._seen.add(step)
            self._queue.put((step, path))

    def submit_file(self, path: Path, run_id: str, name: str) -> None:
        """Store one file the trainer asked for (a file event), in order with the checkpoints."""
        self._queue.put((path, run_id, name))

    def drain(self, timeout_s: float | None = None) -> None:
        """Upload everything submitted so far, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout_s)

    def abandon(self) -> None:
        """Stop after the upload in flight; nothing further is committed (the lease is gone)."""
        self._dead = True
        self._queue.put(None)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._dead:
                continue
            if len(item) == 3:
                self._put_file(*item)
            else:
                self._upload(*item)

    def _died(self, exc: BaseException) -> None:
        self._dead = self.died = True
        super()._died(exc)

    def _put_file(self, path: Path, run_id: str, name: str) -> None:
        for attempt in range(1, self.attempts + 1):
            try:
                self.store.put_file(path, run_id, name)
                return
            except (RelayError, OSError, ValueError) as exc:
                if attempt == self.attempts or not path.is_file():
                    self.skipped.append(f"file {name} of {run_id}: not stored: {exc}")
                    log.warning(self.skipped[-1])
                    return
                time.sleep(1.0 * attempt)

    def _upload(self, step: int, path: Path) -> None:
        """Upload and commit one checkpoint folder. The trainer owns the folder meanwhile: it may
        prune it (a newer checkpoint follows: skipped) or save the same step again, replacing it
        with a folder without a manifest (the new one is uploaded)."""
        for _ in range(self.attempts):
            if not path.is_dir():
                self._vanished(step, path, "before upload")
                return
            try:
                self._upload_present(step, path)
                return
            except (CheckpointError, RelayError, OSError):
                if not path.is_dir():
                    self._vanished(step, path, "during upload")  # whatever read it found it half gone
                    return
                if (path / MANIFEST_NAME).exists():
                    raise
                log.info("step %d was saved again during its upload; uploading the new folder", step)
        raise CheckpointError(f"step {step}: {path} was replaced during each of {self.attempts} uploads")

    def _vanished(self, step: int, path: Path, when: str) -> None:
        """The trainer pruned ``path`` (a newer checkpoint follows): skip it, say so."""
        self.skipped.append(f"step {step}: {path} vanished {when} (pruned by the trainer?)")
        log.warning(self.skipped[-1])

    def _upload_present(self, step: int, path: Path) -> None:
        if not (path / MANIFEST_NAME).exists():
            try:
                write_manifest(path, step, epoch=self.epoch)
            except OSError as exc:
                if disk_full(exc):  # this machine's disk; a full disk behind the store is the store's
                    self.fault = MachineFault.DISK
                raise
        check = verify(path)
        if not check.ok:
            if not (path / MANIFEST_NAME).exists():  # pruned or saved again meanwhile: _upload sees to it
                raise CheckpointError(f"{path}: {check.reason}")
            self.skipped.append(f"step {step}: not uploaded, invalid: {check.reason}")
            log.warning(self.skipped[-1])
            return
        uri = self._put(step, path)
        if uri is None:
            return
        for folder in self.folders:  # before the commit: a durable step's trajectories and tracker files are stored too
            folder.sync()
        commit = m.CheckpointCommit(worker_id=self.worker_id, epoch=self.epoch, step=step, uri=uri,
                                    manifest_sha256=manifest_sha256(path), revision=self.store.last_commit)
        if not self._commit(commit, uri):
            return
        self.durable_step = step
        log.info("step %d of %s is durable at %s", step, self.run_id, uri)
        if self.retention is not None:
            self._prune(path.parent, step)

    def _put(self, step: int, path: Path) -> str | None:
        """Upload one checkpoint (retried); its URI, or None when there is nothing more to do with it."""
        for attempt in range(1, self.attempts + 1):
            try:
                return self.store.put_checkpoint(path, self.run_id, step)
            except StaleWriter as exc:  # a newer holder has written: this lease is gone
                self._dead = True
                self.on_stop(StopReason.LOST, f"checkpoint upload refused: {exc}")
                return None
            except RelayError as exc:
                if not (path / MANIFEST_NAME).exists():  # pruned, or saved again, mid-upload: _upload sees to it
                    raise
                if attempt == self.attempts:
                    if store_unreachable(exc):  # this machine cannot reach the store: its fault, not the run's
                        self.fault = MachineFault.STORE
                    raise
                log.warning("upload of step %d failed (%s), retrying", step, exc)
                time.sleep(2.0 * attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _commit(self, commit: m.CheckpointCommit, uri: str) -> bool:
        """Record an uploaded checkpoint with the commander; True once it is durable.

        While the commander cannot be reached the commit is retried for as long as the lease may
        still be ours (the lease keeper decides: a lost lease or the end of lease jeopardy abandons
        this uploader), so a checkpoint written during an outage is committed once it is over.
        Any other failure is retried ``attempts`` times."""
        failures = 0
        while True:
            try:
                self.client.commit_checkpoint(self.run_id, commit)
                return True
            except (LeaseLost, NotFound) as exc:
                self._dead = True
                self.on_stop(StopReason.LOST, f"checkpoint commit refused: {exc}")
                return False
            except RelayError as exc:
                failures += 1
                if self._dead or (failures >= self.attempts and not commander_unreachable(exc)):
                    self.skipped.append(f"step {commit.step}: uploaded to {uri} but not committed: {exc}")
                    log.warning(self.skipped[-1])
                    return False
                if failures == 1 or failures % 10 == 0:
                    log.warning("commit of step %d of %s failed (%s); retrying", commit.step, self.run_id, exc)
                time.sleep(min(COMMIT_RETRY_CAP_S, 1.0 * failures))

    def _prune(self, output_dir: Path, durable: int) -> None:
        """Apply keep_last / keep_every locally and in the store; never the newest durable."""
        keep_last, keep_every = self.retention
        prune(output_dir, keep_last, keep_every, protect={durable}, newest_valid=durable)
        stored = self.store.list_checkpoints(self.run_id)
        keep = set(steps_to_keep(stored, keep_last, keep_every, protect={durable}))
        for step in stored:
            if step not in keep:
                self.store.delete_checkpoint(self.run_id, step)


class Reporter(Guarded):
    """Tails the progress file: forwards progress (at most every ``interval_s``), hands
    checkpoint events (or a moved ``latest``) to the uploader, forwards rollout events, and
    tracks the last sign of life.

    Rollout events (where the trainer's rollout manager is, and the pool it sees) are coalesced:
    only the newest one waiting is sent, at most once per ``interval_s``, but a new URL at once
    (rollout workers are waiting to find it). One the commander could not take is kept, unless a
    newer one replaces it, and sent again after ``interval_s``.
    """

    what = "progress reporter"

    def __init__(self, client: RelayClient, tailer: ProgressTailer, uploader: Uploader, output_dir: Path,
                 run_id: str, worker_id: str, epoch: int, on_stop: StopFn, *, interval_s: float = 1.0,
                 file_runs: frozenset[str] = frozenset(),
                 poll_s: float = 0.05) -> None:
        super().__init__("progress", client, run_id, worker_id, epoch, on_stop)
        self.tailer = tailer
        self.uploader = uploader
        self.output_dir = output_dir
        self.interval_s = interval_s
        self.file_runs = file_runs
        self.poll_s = poll_s
        self.last_activity = time.monotonic()
        self.last_step: int | None = None
        self._pending: list[m.ProgressPoint] = []
        self._last_sent = 0.0
        self._rollout: RolloutAnnounce | None = None  # the newest announcement not yet delivered
        self._rollout_tried: tuple[float, str] | None = None  # when the last one was sent, and its URL
        self._latest_seen: str | None = _latest_name(output_dir)

    def excuse(self, seconds: float) -> None:
        """Do not count ``seconds`` (the trainer was paused) as silence."""
        self.last_activity += seconds

    def finish(self) -> None:
        """Read what is left, forward it, and stop."""
        self._halt.set()
        self._thread.join()  # every call it makes is bounded by the client's timeouts
        self._tick(flush=True)

    def _run(self) -> None:
        while not self._halt.wait(self.poll_s):
            self._tick(flush=False)

    def _tick(self, *, flush: bool) -> None:
        for record in self.tailer.read_new():
            self.last_activity = time.monotonic()
            if isinstance(record, Progress):
                self.last_step = record.step
                self._pending.append(m.ProgressPoint(step=record.step, metrics=record.metrics))
            elif (checkpoint := record.checkpoint) is not None:
                self.uploader.submit(checkpoint[0], Path(checkpoint[1]))
            elif (file := record.file) is not None:
                self._store_file(*file)
            elif (rollout := record.rollout) is not None:
                self._take_rollout(rollout)
        latest = _latest_name(self.output_dir)
        if latest and latest != self._latest_seen:
            self._latest_seen = latest
            self.last_activity = time.monotonic()
            step = parse_step(latest)
            if step is not None:
                self.uploader.submit(step, self.output_dir / latest)
        if self._pending and (flush or time.monotonic() - self._last_sent >= self.interval_s):
            self._send()
        if self._rollout is not None and (flush or self._rollout_due(self._rollout)):
            self._send_rollout(self._rollout)

    def _store_file(self, path: str, run_id: str, name: str) -> None:
        """A file event: stored if it names this run (or one it may write to, ``file_runs``)."""
        if run_id == self.run_id or run_id in self.file_runs:
            self.uploader.submit_file(Path(path), run_id, name)
        else:
            log.warning("%s: refusing to store %s for run %r: not this run's", self.run_id, name, run_id)

    def _send(self) -> None:
        batch, self._pending = self._pending[-1000:], []
        try:
            self.client.progress(self.run_id, m.ProgressRequest(worker_id=self.worker_id, epoch=self.epoch,
                                                                points=batch))
            self._last_sent = time.monotonic()
        except (LeaseLost, NotFound) as exc:
            self.on_stop(StopReason.LOST, f"progress refused: {exc}")
        except RelayError as exc:
            log.warning("progress of %s not delivered (%s); will retry", self.run_id, exc)
            self._pending = batch + self._pending

    def _take_rollout(self, fields: dict[str, Any]) -> None:
        """A rollout event: it replaces any announcement still waiting (one outside the contract is dropped)."""
        try:
            self._rollout = RolloutAnnounce(worker_id=self.worker_id, epoch=self.epoch, url=fields["url"],
                                            secret=fields["secret"], version=fields.get("version"),
                                            pool=fields.get("pool") or [])
        except ValidationError as exc:  # field names and messages only: the values may hold the secret
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False))
            log.warning("%s: ignoring a rollout event outside the contract: %s", self.run_id, problems)

    def _rollout_due(self, announce: RolloutAnnounce) -> bool:
        if self._rollout_tried is None:
            return True
        tried_at, tried_url = self._rollout_tried
        return announce.url != tried_url or time.monotonic() - tried_at >= self.interval_s

    def _send_rollout(self, announce: RolloutAnnounce) -> None:
        self._rollout, self._rollout_tried = None, (time.monotonic(), announce.url)
        try:
            self.client.announce_rollout(self.run_id, announce)
        except (LeaseLost, NotFound) as exc:
            self.on_stop(StopReason.LOST, f"rollout announcement refused: {exc}")
        except RelayError as exc:
            log.warning("rollout manager of %s not announced (%s); will retry", self.run_id, exc)
            self._rollout = announce

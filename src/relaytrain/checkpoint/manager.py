"""``CheckpointManager``: what a trainer uses to save and load its state.

    manager = CheckpointManager(os.environ["RELAY_OUTPUT_DIR"], async_save=True, keep_last=3)
    manager.save({"model/model.safetensors": model.state_dict(),
                  "optimizer.pt": optimizer.state_dict(),
                  "trainer_state.json": {"step": step}}, step=step)
    ...
    manager.close()          # waits for the save in flight; raises if it failed

A state written by several processes (``torch.distributed.checkpoint``'s shards) is staged
instead: ``tmp = manager.stage(step)`` creates the temporary folder, every process writes into
it, then ``manager.commit_staged(tmp, rest, step)`` (one process, after all have written) adds
``rest``, hashes every file into the manifest and commits, once.

Synchronous saves write, commit, prune and call ``on_commit`` before returning the path.
Asynchronous saves copy the state to host memory in the caller's thread, then one writer
thread (at most one save in flight) writes and commits while training goes on.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from relaytrain.checkpoint._fs import discard_on_error
from relaytrain.checkpoint.commit import LatestResult, commit_checkpoint_dir, find_latest_valid
from relaytrain.checkpoint.layout import clean_temp, make_temp_dir
from relaytrain.checkpoint.retention import check_retention, prune
from relaytrain.checkpoint.state import check_state, is_writer, load_checkpoint, to_host, write_state
from relaytrain.errors import CheckpointError

log = logging.getLogger(__name__)


def _no_steps() -> set[int]:
    return set()


class CheckpointManager:
    """Saves checkpoints into ``output_dir`` (committed atomically, see ``commit``) and
    loads them back.

    Args:
        output_dir: where ``step_<N>/`` directories and ``latest`` live. Stale temporaries
            from an interrupted save are removed when the manager is created.
        async_save: copy the state to host memory and write it on a background thread.
        keep_last: after each save keep only this many newest checkpoints (plus those below);
            None keeps everything.
        keep_every: also keep every step divisible by this.
        protect: returns steps never to delete (e.g. the newest durable one); called after
            each commit, on the writer thread for asynchronous saves.
        on_commit: ``fn(path, step)`` called after each commit (and prune), on the writer
            thread for asynchronous saves; an exception there counts as a failed save.
    """

    def __init__(self, output_dir: str | os.PathLike[str], *, async_save: bool = False,
                 keep_last: int | None = None, keep_every: int | None = None,
                 protect: Callable[[], set[int]] = _no_steps,
                 on_commit: Callable[[Path, int], Any] | None = None) -> None:
        if keep_last is not None or keep_every is not None:
            check_retention(1 if keep_last is None else keep_last, keep_every, allow_zero=False)
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        clean_temp(self.output_dir)
        self.async_save = async_save
        self.keep_last = keep_last
        self.keep_every = keep_every
        self._protect = protect
        self._on_commit = on_commit
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._error: tuple[int, BaseException] | None = None
        self._last: Path | None = None
        self._closed = False
        self._spare: dict[str, Any] | None = None  # the last snapshot, written: its tensors are reused

    @property
    def last_committed(self) -> Path | None:
        """The path of the newest checkpoint this manager committed, if any."""
        return self._last

    def save(self, state: Mapping[str, Any], step: int, epoch: int | None = None,
             metadata: Mapping[str, Any] | None = None) -> Path | None:
        """Save ``state`` (relative file name -> value, see ``relaytrain.checkpoint.state``)
        as the checkpoint of ``step``.

        Synchronous: returns the committed path. Asynchronous: returns None once the state
        is copied to host memory; the commit happens on the writer thread (``wait`` returns
        its path). A save waits for the one in flight first, and raises CheckpointError if
        that one failed. Raises ValueError for bad file names.
        """
        check_state(state)
        with self._lock:
            self._check_open()
            self._join_writer()
            self._raise_writer_error()
            if not self.async_save:
                return self._write_and_commit(state, step, epoch, metadata)
            writers = [name for name, value in state.items() if is_writer(value)]
            if writers:
                raise ValueError(f"{writers[0]}: callable values are only allowed in synchronous saves")
            spare, self._spare = self._spare, None
            snapshot = to_host(dict(state), reuse=spare)
            del spare
            meta = to_host(dict(metadata or {}))
            self._writer = threading.Thread(
                target=self._write_in_background, args=(snapshot, step, epoch, meta),
                name=f"relay-checkpoint-{step}")
            self._writer.start()
            return None

    def stage(self, step: int) -> Path:
        """A fresh temporary folder for the checkpoint of ``step`` (after the save in flight),
        for writers other than this manager (each rank's shards); ``commit_staged`` commits it.
        Synchronous whatever ``async_save`` says."""
        with self._lock:
            self._check_open()
            self._join_writer()
            self._raise_writer_error()
            return make_temp_dir(self.output_dir, step)

    def commit_staged(self, tmp: Path, state: Mapping[str, Any], step: int, epoch: int | None = None,
                      metadata: Mapping[str, Any] | None = None) -> Path:
        """Write ``state`` into ``tmp`` (from ``stage``, already holding what others wrote),
        hash every file into the manifest and commit it as the checkpoint of ``step``; prune
        and ``on_commit`` as ``save`` does. ``tmp`` is deleted if anything fails."""
        check_state(state)
        with self._lock:
            self._check_open()
            return self._write_and_commit(state, step, epoch, metadata, tmp=tmp)

    def wait(self) -> Path | None:
        """Block until the save in flight is committed; return the newest committed path.
        Raises CheckpointError if the background save failed."""
        with self._lock:
            self._join_writer()
            self._raise_writer_error()
            return self._last

    def close(self) -> None:
        """Wait for the save in flight and refuse further saves. Raises CheckpointError if
        the background save failed."""
        with self._lock:
            self._closed = True
            self._join_writer()
            self._spare = None
            self._raise_writer_error()

    def load(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Verify and load the checkpoint at ``path`` (see ``load_checkpoint``)."""
        return load_checkpoint(path)

    def latest(self) -> LatestResult:
        """The newest valid checkpoint in ``output_dir`` (see ``find_latest_valid``)."""
        return find_latest_valid(self.output_dir)

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except CheckpointError:
            log.exception("checkpoint save failed while handling another error")

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointError("this CheckpointManager is closed")

    def _join_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.join()

    def _raise_writer_error(self) -> None:
        if self._error is not None:
            step, exc = self._error
            self._error = None
            raise CheckpointError(f"asynchronous save of step {step} failed: {exc}") from exc

    def _write_in_background(self, state: dict[str, Any], step: int, epoch: int | None,
                             metadata: dict[str, Any]) -> None:
        try:
            self._write_and_commit(state, step, epoch, metadata)
            if not self._closed:
                self._spare = state  # written and committed: the next snapshot can reuse its memory
        except BaseException as exc:  # handed to the next save()/wait()/close()
            log.error("asynchronous save of step %d failed: %s", step, exc)
            self._error = (step, exc)

    def _write_and_commit(self, state: Mapping[str, Any], step: int, epoch: int | None,
                          metadata: Mapping[str, Any] | None, tmp: Path | None = None) -> Path:
        tmp = make_temp_dir(self.output_dir, step) if tmp is None else tmp
        try:
            with discard_on_error(tmp):
                known = write_state(tmp, state)
        except OSError as exc:
            raise CheckpointError(f"saving step {step} failed: {exc}") from exc
        path = commit_checkpoint_dir(tmp, self.output_dir, step, epoch, metadata, known=known)
        self._last = path
        if self.keep_last is not None:
            prune(self.output_dir, self.keep_last, self.keep_every, self._protect(), newest_valid=step)
        if self._on_commit is not None:
            self._on_commit(path, step)
        return path

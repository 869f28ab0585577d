#!/usr/bin/env python3
"""The reference external trainer: honours the whole relaytrain trainer contract with no
dependency but Python, so you can copy its shape when you wrap slime, verl or your script.

Its "model" is a hash chain: ``state = sha256(state, step)`` once per step, so the final
state proves that no step was skipped or repeated across any number of hand-offs.

Run it under a worker with a run file like::

    kind: command
    trainer: {command: [python, examples/trainers/counter_trainer.py]}

or alone::

    RELAY_OUTPUT_DIR=/tmp/ckpt RELAY_MAX_STEPS=100 python examples/trainers/counter_trainer.py

The contract (docs/trainer-contract.md), all of it:

- read ``RELAY_RESUME_FROM`` (a verified checkpoint folder, or empty) and continue from it;
- write checkpoints atomically into ``RELAY_OUTPUT_DIR/step_<N:08d>`` (temp folder, fsync,
  rename, then ``latest``) and announce each with a ``{"event": "checkpoint", …}`` line;
- append ``{"step": N, "metrics": {…}}`` lines to ``RELAY_PROGRESS_FILE``;
- when ``RELAY_STOP_FILE`` appears or SIGTERM arrives: checkpoint, exit 0;
- exit 0 at ``RELAY_MAX_STEPS``; 75 for a transient failure, 78 for a bad configuration;
- when ``RELAY_SAVE_ROLLOUT_TRAJECTORIES=1``, write one trajectory file per step into
  ``RELAY_ROLLOUT_TRAJECTORY_ROOT``, named by ``RELAY_ROLLOUT_TRAJECTORY_PATTERN`` (a Python
  format with one field, ``rollout_id``): the worker uploads them with each checkpoint.

Knobs for tests and demos (environment): ``COUNTER_STEP_S`` seconds per step (0.05),
``COUNTER_EVERY`` checkpoint interval (else ``RELAY_CHECKPOINT_EVERY``, else 10),
``COUNTER_FAIL_AT=STEP:CODE`` exit with CODE at STEP, ``COUNTER_HANG_AT=STEP`` stop
reporting and hang at STEP, ``COUNTER_CRASH_IN_SAVE_AT=STEP`` die halfway through that save,
``COUNTER_PAD_MB=N`` give every checkpoint an N MB ``weights.bin`` (a model's weights, for a
full disk: the save then fails with ``OSError: [Errno 28] No space left on device``),
``COUNTER_JOURNAL=PATH`` append ``<RELAY_EPOCH> <pid> <step> <time.time()>`` to PATH after every
step (one short ``O_APPEND`` write, so attempts on several workers can share one file: the soak
bench reads it to prove that two attempts of a run never trained at the same time).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

EX_TEMPFAIL, EX_CONFIG = 75, 78
stop_signalled = False


def on_sigterm(_signum, _frame) -> None:
    global stop_signalled
    stop_signalled = True


def env_int(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        print(f"{name} must be an integer, got {value!r}", file=sys.stderr)
        sys.exit(EX_CONFIG)


def advance(state: str, step: int) -> str:
    return hashlib.sha256(f"{state}:{step}".encode()).hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(output_dir: Path, step: int, state: str, crash_in_save: bool, pad_mb: int = 0) -> Path:
    """Write step_<N> atomically: temp folder → fsync → rename → latest."""
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step_{step}-", dir=output_dir))
    files = {"state.json": json.dumps({"step": step, "state": state}), "notes.txt": f"counter at step {step}\n"}
    if pad_mb:
        files["weights.bin"] = "w" * (pad_mb << 20)
    for i, (name, text) in enumerate(files.items()):
        with open(tmp / name, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if crash_in_save and i == 0:
            os.kill(os.getpid(), signal.SIGKILL)  # die between files: nothing may become visible
    fsync_dir(tmp)
    final = output_dir / f"step_{step:08d}"
    if final.exists():  # re-saving a step (after a resume): move the old one out of the way first
        final.rename(output_dir / f".old-step_{step}-{os.getpid()}")
    os.rename(tmp, final)
    fsync_dir(output_dir)
    latest_tmp = output_dir / f".latest-{os.getpid()}"
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, output_dir / "latest")
    fsync_dir(output_dir)
    return final


def main() -> int:
    signal.signal(signal.SIGTERM, on_sigterm)
    output_dir = Path(os.environ.get("RELAY_OUTPUT_DIR") or "./checkpoints")
    max_steps = env_int("RELAY_MAX_STEPS")
    if max_steps is None or max_steps < 1:
        print("RELAY_MAX_STEPS must be a positive integer", file=sys.stderr)
        return EX_CONFIG
    every = env_int("COUNTER_EVERY") or env_int("RELAY_CHECKPOINT_EVERY", 10)
    step_s = float(os.environ.get("COUNTER_STEP_S", "0.05"))
    fail_at = os.environ.get("COUNTER_FAIL_AT", "")
    fail_step, fail_code = (int(x) for x in fail_at.split(":")) if fail_at else (None, None)
    hang_at = env_int("COUNTER_HANG_AT")
    crash_at = env_int("COUNTER_CRASH_IN_SAVE_AT")
    pad_mb = env_int("COUNTER_PAD_MB", 0)
    progress_path = os.environ.get("RELAY_PROGRESS_FILE")
    stop_file = os.environ.get("RELAY_STOP_FILE")
    progress = open(progress_path, "a") if progress_path else sys.stdout
    journal_path = os.environ.get("COUNTER_JOURNAL")
    journal = os.open(journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if journal_path else None
    epoch = os.environ.get("RELAY_EPOCH", "0")
    trajectories = os.environ.get("RELAY_SAVE_ROLLOUT_TRAJECTORIES") == "1"
    trajectory_root = Path(os.environ.get("RELAY_ROLLOUT_TRAJECTORY_ROOT") or "rollouts")
    trajectory_pattern = os.environ.get("RELAY_ROLLOUT_TRAJECTORY_PATTERN") or "rollout_{rollout_id:08d}.jsonl"

    def report(record: dict) -> None:
        progress.write(json.dumps(record) + "\n")
        progress.flush()

    step, state = 0, "genesis"
    resume = os.environ.get("RELAY_RESUME_FROM")
    if resume:
        saved = json.loads((Path(resume) / "state.json").read_text())
        step, state = saved["step"], saved["state"]
        print(f"resumed at step {step} from {resume}", file=sys.stderr)

    saved_at = None

    def checkpoint() -> None:
        nonlocal saved_at
        if step == saved_at:  # stopped right after a save: that one is the checkpoint
            return
        saved_at = step
        path = save(output_dir, step, state, crash_in_save=(step == crash_at), pad_mb=pad_mb)
        report({"event": "checkpoint", "step": step, "path": str(path)})

    while step < max_steps:
        if stop_signalled or (stop_file and os.path.exists(stop_file)):
            checkpoint()
            print(f"stopped at step {step} as asked", file=sys.stderr)
            return 0
        if fail_step is not None and step == fail_step:
            print(f"RuntimeError: simulated failure at step {step}", file=sys.stderr)
            return fail_code
        if hang_at is not None and step == hang_at:
            print(f"hanging at step {step}", file=sys.stderr)
            while True:
                time.sleep(3600)
        time.sleep(step_s)
        step += 1
        state = advance(state, step)
        report({"step": step, "metrics": {"loss": 1.0 / step, "state_prefix": int(state[:6], 16)}})
        if journal is not None:
            os.write(journal, f"{epoch} {os.getpid()} {step} {time.time():.6f}\n".encode())
        print(f"step {step} state {state[:12]}", flush=True)  # a log line per step (relay logs)
        if trajectories:  # a tiny "rollout" per step, written whole then renamed
            trajectory_root.mkdir(parents=True, exist_ok=True)
            path = trajectory_root / trajectory_pattern.format(rollout_id=step)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps({"step": step, "state": state}) + "\n")
            os.replace(tmp, path)
        if step % every == 0 or step == max_steps:
            checkpoint()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pieces the rollout-pool benchmarks share (bench/rollout_async.py, bench/rollout_chaos.py).

- ``repeat_records(n, seed)``: a JSON-array dataset in TRL's GRPO shape (``prompt`` + ``answer``)
  with long-tailed answer lengths: ``"ab*5="`` → ``"ababa"``, a 1–3 letter word cycled to ``k``
  characters, ``k`` log-uniform in 1 … ``MAX_ANSWER`` (the tiny model's tokenizer is one token a
  character, so with EOS a completion is 2 … 64 tokens; most are short, a few are long).
- ``read_lines(path)``: the progress lines and event lines of a progress file.
- ``Trainer``: the built-in trainer entry (``python -m relaytrain.train.run``) in a fresh process
  under the environment contract (DESIGN §6), as the worker starts it; its log in a file.
- ``StaticDirectory``: a rollout worker's directory (``relaytrain.rollout.worker.Directory``) that
  knows one run and one manager, taken from the trainer's ``rollout`` event line: no commander.
- ``python bench/_rollout_common.py worker --url … --secret … --run … --worker-id …``: a rollout
  worker (``RolloutWorker``, the torch engine) on a static directory; SIGTERM stops it as it stops
  ``relay rollout-worker``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

MAX_ANSWER = 63
"""Longest answer, in characters (tokens); with EOS a completion is at most 64 tokens."""


def repeat_records(n: int, seed: int, exclude: set[str] | None = None) -> list[dict[str, str]]:
    """``n`` distinct records ``{"prompt": "ab*5=", "answer": "ababa"}``, none whose prompt is in ``exclude``."""
    rng = random.Random(f"repeat:{seed}")
    seen = set(exclude or ())
    records = []
    while len(records) < n:
        k = min(MAX_ANSWER, int(math.exp(rng.uniform(0.0, math.log(MAX_ANSWER + 1)))))
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, 3)))
        prompt = f"{word}*{k}="
        if prompt in seen:
            continue
        seen.add(prompt)
        records.append({"prompt": prompt, "answer": (word * k)[:k]})
    return records


def read_lines(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(progress lines, event lines) of a progress file; a half-written last line is skipped."""
    progress, events = [], []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return progress, events
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        (events if "event" in record else progress).append(record)
    return progress, events


def rollout_event(path: Path) -> dict[str, Any] | None:
    """The latest ``rollout`` event line of a progress file (the manager's url and secret)."""
    found = [e for e in read_lines(path)[1] if e.get("event") == "rollout" and e.get("url")]
    return found[-1] if found else None


@dataclass
class Trainer:
    """The built-in trainer entry in a fresh process, under the contract, in ``root``."""

    config: dict[str, Any]
    root: Path
    threads: int
    proc: subprocess.Popen | None = None
    started: float = 0.0
    ended: float | None = None

    @property
    def progress_file(self) -> Path:
        return self.root / "progress.jsonl"

    @property
    def log_path(self) -> Path:
        return self.root / "trainer.log"

    def start(self) -> Trainer:
        self.root.mkdir(parents=True, exist_ok=True)
        config_file = self.root / "run.json"
        config_file.write_text(json.dumps(self.config))
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(self.threads),
            "CUDA_VISIBLE_DEVICES": "",
            "RELAY_RUN_CONFIG": str(config_file),
            "RELAY_RUN_ID": self.config["run_id"],
            "RELAY_OUTPUT_DIR": str(self.root / "checkpoints"),
            "RELAY_MAX_STEPS": str(self.config["max_steps"]),
            "RELAY_RESUME_FROM": "",
            "RELAY_PROGRESS_FILE": str(self.progress_file),
            "RELAY_STOP_FILE": str(self.root / "STOP"),
            "RELAY_ROLLOUT_TRAJECTORY_ROOT": str(self.root / "rollouts"),
        }
        self.started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "relaytrain.train.run"], env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is not None and self.ended is None:
            self.ended = time.monotonic()
        return code

    def wait(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the trainer in {self.root} ran past {timeout_s:.0f} s (log {self.log_path})")
            time.sleep(0.05)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class WorkerProcess:
    """``python bench/_rollout_common.py worker …`` in a fresh process (its own session)."""

    args: list[str]
    log_path: Path
    threads: int = 1
    proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "CUDA_VISIBLE_DEVICES": ""}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "worker",
                                          "--threads", str(self.threads), *self.args], env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def stop(self, timeout_s: float = 30) -> int | None:
        """SIGTERM (post or give back the batch in hand, leave the pool), then SIGKILL after ``timeout_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=30)


class ProgressFileDirectory:
    """A rollout worker's directory that knows one run and finds its manager in the trainer's progress
    file (the ``rollout`` event line the worker would forward to the commander), read on every ask."""

    def __init__(self, run_id: str, progress_file: Path) -> None:
        self.run_id, self.progress_file = run_id, progress_file

    def runs(self) -> list[Any]:
        return [SimpleNamespace(run_id=self.run_id, labels={})]

    def endpoint(self, run_id: str) -> Any | None:
        event = rollout_event(self.progress_file) if run_id == self.run_id else None
        return SimpleNamespace(url=event["url"], secret=event["secret"]) if event else None

    def register(self, worker_id: str, labels: dict[str, str], run_id: str | None) -> None:
        return None


def _worker_main(argv: list[str]) -> int:
    import logging

    from relaytrain.rollout.worker import RolloutWorker, RolloutWorkerSettings

    parser = argparse.ArgumentParser(prog="_rollout_common.py worker")
    parser.add_argument("--progress-file", type=Path, required=True, help="the trainer's RELAY_PROGRESS_FILE")
    parser.add_argument("--run", required=True)
    parser.add_argument("--worker-id", default="bench-gen-1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-groups", type=int, default=4)
    parser.add_argument("--poll-s", type=float, default=0.05)
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format=f"%(asctime)s %(levelname)s [{args.worker_id}] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = RolloutWorkerSettings(worker_id=args.worker_id, run_id=args.run, threads=args.threads,
                                     max_groups=args.max_groups, poll_s=args.poll_s, backoff_max_s=args.poll_s)
    from transformers import LlamaForCausalLM  # noqa: F401  (warm: a pool's workers are up before a run starts)

    return RolloutWorker(settings, ProgressFileDirectory(args.run, args.progress_file)).run()


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        raise SystemExit("usage: _rollout_common.py worker --progress-file PATH --run RUN_ID [--worker-id ID]")
    raise SystemExit(_worker_main(sys.argv[2:]))

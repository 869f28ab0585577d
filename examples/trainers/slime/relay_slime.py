#!/usr/bin/env python3
"""Run slime (THUDM/slime: Megatron training + SGLang rollouts on Ray) under the relaytrain
trainer contract (DESIGN §6, docs/trainer-contract.md), so a slime run survives the loss of
its machine: it resumes on the next one from the newest durable checkpoint.

    python relay_slime.py --slime-dir /root/slime [--entry train.py|train_async.py] \\
        [--python /usr/bin/python3] -- <your slime arguments>

Your slime arguments are those of a slime script (model, data, rollout, optimizer, …) less the
ones this wrapper owns (``OWNED_FLAGS``): it sets ``--save``, ``--save-interval`` and
``--num-rollout`` from the contract, and ``--load`` from ``RELAY_RESUME_FROM`` (else
``RELAY_INIT_FROM``). What it does:

- slime saves Megatron checkpoints into a scratch folder (``<run_root>/slime``):
  ``iter_<N:07d>/``, ``latest_checkpointed_iteration.txt`` (written once a save is complete)
  and ``rollout/global_dataset_state_dict_<N>.pt`` (the data position). Each complete save of
  rollout N becomes the relaytrain checkpoint of step N+1 (N+1 rollouts trained): hard links
  in ``RELAY_OUTPUT_DIR/step_<N+1:08d>/`` laid out as a Megatron load folder, committed with a
  manifest, then announced with a checkpoint event. ``--load`` of that folder resumes slime
  at rollout N+1, optimizer and data position included.
- slime's ``perf N: {...}`` and ``eval N: {...}`` log lines become progress lines of step N+1.
- The stop file or SIGTERM: slime cannot be asked to save now, so the wrapper stops it (SIGTERM
  to its process group, SIGKILL after ``--stop-timeout-s``), publishes any save that completed,
  and exits 0. The rollouts since the last save are lost: keep ``checkpoint.every_steps``
  (slime's ``--save-interval``) small enough.
- Exit codes: 0 when slime finished and its last save was published; a slime crash is mapped
  by ``relaytrain.contract.classify_text`` on its stderr tail (75 transient, 78 permanent; an
  unknown crash keeps its code and the worker counts it as transient); a bad setup is 78.

Not covered: a critic (PPO ``--use-critic``) and multi-node Ray clusters (start the other nodes
yourself); see README.md.
"""

from __future__ import annotations

import argparse
import collections
import errno
import os
import re
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

from relaytrain.checkpoint import commit_checkpoint_dir, make_temp_dir, remove_tree
from relaytrain.contract import Contract, ExitCode, FailureClass, classify_text, clean_metrics, exit_code_for
from relaytrain.errors import ConfigError

TRACKER = "latest_checkpointed_iteration.txt"
"""Megatron's tracker file: the newest complete iteration of a save folder."""
OWNED_FLAGS = ("--save", "--load", "--save-interval", "--num-rollout", "--start-rollout-id", "--ckpt-step",
               "--finetune", "--no-load-optim", "--no-load-rng", "--save-debug-rollout-data")
"""slime arguments the wrapper sets from the contract; giving one yourself is a configuration error."""
_ITER = re.compile(r"iter_(\d{7})")
_METRIC_LINE = re.compile(r"\b(?:perf|eval) (\d+): \{(.*)\}\s*$")
_METRIC_PAIR = re.compile(
    r"'([^']+)':\s*(?:np\.float\d+\()?(-?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|inf|nan))", re.IGNORECASE)


# -- the pure parts ----------------------------------------------------------------------------

def step_of_iteration(iteration: int) -> int:
    """The relaytrain step of slime's save of rollout ``iteration`` (0-based): rollouts trained."""
    return iteration + 1


def parse_iteration(name: str) -> int | None:
    """The iteration of a Megatron checkpoint folder name (``iter_0000019`` → 19), else None."""
    found = _ITER.fullmatch(name)
    return int(found.group(1)) if found else None


def newest_iteration(names: Iterable[str]) -> int | None:
    """The newest iteration among the names of a folder listing, else None."""
    return max((it for it in map(parse_iteration, names) if it is not None), default=None)


def read_tracker(save_dir: Path) -> int | None:
    """The iteration named by ``save_dir``'s tracker file; None if absent, ``release`` or unreadable."""
    try:
        text = (save_dir / TRACKER).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def dataset_state(save_dir: Path, iteration: int) -> Path:
    """Where slime saves its data position with the save of ``iteration`` (``--rollout-global-dataset``)."""
    return save_dir / "rollout" / f"global_dataset_state_dict_{iteration}.pt"


def completed_iteration(save_dir: Path, *, global_dataset: bool) -> int | None:
    """The newest save of ``save_dir`` that is complete, else None: the tracker names it, its
    folder exists, and (with a global dataset) its data-state file is a whole ``torch.save``
    zip (slime writes it after the tracker, not atomically; a zip is whole once its central
    directory, written last, is there)."""
    iteration = read_tracker(save_dir)
    if iteration is None or not (save_dir / f"iter_{iteration:07d}").is_dir():
        return None
    if global_dataset and not zipfile.is_zipfile(dataset_state(save_dir, iteration)):
        return None
    return iteration


def trajectory_template(root: Path, pattern: str) -> str:
    """slime's ``--save-debug-rollout-data`` for the contract's trajectory folder and pattern.
    slime formats ``{rollout_id}`` with a string (``"7"``, ``"eval_7"``), so the field may carry
    no format spec: ``rollout_{rollout_id}.pt``, not ``rollout_{rollout_id:08d}.pt``."""
    fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(pattern) if name is not None]
    if fields != [("rollout_id", "", None)]:
        raise ConfigError(f"RELAY_ROLLOUT_TRAJECTORY_PATTERN (the run file's trajectories.pattern): slime names "
                          f"its files with a plain {{rollout_id}}, e.g. 'rollout_{{rollout_id}}.pt'; got {pattern!r}")
    return str(root / pattern)


def load_arguments(resume_from: Path | None, init_from: str | None) -> list[str]:
    """The slime arguments that load a checkpoint: a resume loads everything (weights,
    optimizer, RNG, iteration, data position); an init loads the weights of a Megatron
    checkpoint (relaytrain's, from another slime run) or a Hugging Face model folder and starts
    at rollout 0; neither: slime starts from your ``--ref-load`` / ``--hf-checkpoint``."""
    if resume_from is not None:
        if not (resume_from / TRACKER).is_file():
            raise ConfigError(f"RELAY_RESUME_FROM: {resume_from} is not a slime checkpoint (no {TRACKER})")
        return ["--load", str(resume_from)]
    if not init_from:
        return []
    init = Path(init_from)
    if (init / TRACKER).is_file():
        return ["--load", str(init), "--finetune", "--no-load-optim", "--no-load-rng", "--start-rollout-id", "0"]
    if (init / "config.json").is_file():
        return ["--load", str(init)]
    raise ConfigError(f"RELAY_INIT_FROM: {init_from} is neither a slime checkpoint ({TRACKER}) nor a Hugging Face "
                      "model folder (config.json)")


def slime_argv(python: str, entry: Path, user_args: Sequence[str], *, save_dir: Path, max_steps: int,
               save_every: int, load: Sequence[str], trajectories: str | None) -> list[str]:
    """The command line of slime: your arguments, then those the contract decides."""
    for arg in user_args:
        flag = arg.split("=", 1)[0]
        if flag in OWNED_FLAGS:
            raise ConfigError(f"slime argument {flag}: set by relay_slime from the trainer contract; remove it "
                              f"(the wrapper owns {', '.join(OWNED_FLAGS)})")
    argv = [python, str(entry), *user_args, "--save", str(save_dir), "--save-interval", str(save_every),
            "--num-rollout", str(max_steps), *load]
    if trajectories is not None:
        argv += ["--save-debug-rollout-data", trajectories]
    return argv


def metrics_line(line: str) -> tuple[int, dict[str, float]] | None:
    """``(step, metrics)`` of one of slime's ``perf N: {...}`` / ``eval N: {...}`` log lines
    (numbers only; ``np.float64(x)`` is read as x), else None."""
    found = _METRIC_LINE.search(line)
    if found is None:
        return None
    pairs = {name: float(value) for name, value in _METRIC_PAIR.findall(found.group(2))}
    metrics = clean_metrics(pairs)
    return (step_of_iteration(int(found.group(1))), metrics) if metrics else None


def exit_code(returncode: int, stderr_tail: str, *, stop_requested: bool) -> int:
    """The wrapper's exit code for slime's: 0 when stopped as asked or finished; 75/78 kept; a
    signal is transient; otherwise what ``classify_text`` reads in the stderr tail, or the code."""
    if stop_requested or returncode == 0:
        return ExitCode.OK
    if returncode in (ExitCode.TEMPFAIL, ExitCode.CONFIG):
        return returncode
    if returncode < 0:
        return ExitCode.TEMPFAIL
    failure = classify_text(stderr_tail)
    if failure is FailureClass.PERMANENT:
        return ExitCode.CONFIG
    if failure is FailureClass.TRANSIENT:
        return ExitCode.TEMPFAIL
    return returncode


# -- checkpoints -------------------------------------------------------------------------------

def _link_tree(source: Path, target: Path) -> None:
    """Hard-link every file of ``source`` under ``target`` (a copy across file systems)."""
    for folder, _, files in os.walk(source):
        out = target / Path(folder).relative_to(source)
        out.mkdir(parents=True, exist_ok=True)
        for name in files:
            _link(Path(folder) / name, out / name)


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM):  # another file system; one without hard links
            raise
        shutil.copy2(source, target)


def publish(save_dir: Path, iteration: int, contract: Contract, *, global_dataset: bool) -> Path:
    """Commit slime's save of ``iteration`` as the relaytrain checkpoint of its step, announce
    it, and drop older saves from the scratch folder (their files live on in the checkpoints)."""
    step = step_of_iteration(iteration)
    tmp = make_temp_dir(contract.output_dir, step)
    _link_tree(save_dir / f"iter_{iteration:07d}", tmp / f"iter_{iteration:07d}")
    if global_dataset:
        (tmp / "rollout").mkdir()
        _link(dataset_state(save_dir, iteration), dataset_state(tmp, iteration))
    (tmp / TRACKER).write_text(f"{iteration}\n")
    path = commit_checkpoint_dir(tmp, contract.output_dir, step, contract.epoch, {"slime_iteration": iteration})
    contract.report_checkpoint(step, path)
    for entry in list(save_dir.iterdir()):
        old = parse_iteration(entry.name)
        if old is not None and old < iteration:
            remove_tree(entry)
    for state in (save_dir / "rollout").glob("global_dataset_state_dict_*.pt"):
        if state.name != dataset_state(save_dir, iteration).name:
            state.unlink()
    return path


class Publisher(threading.Thread):
    """Watches slime's scratch folder and publishes each complete save, in order, in the
    background (a save is hashed whole for its manifest: minutes for a large model)."""

    def __init__(self, save_dir: Path, contract: Contract, *, global_dataset: bool) -> None:
        super().__init__(name="relay-slime-publisher", daemon=True)
        self.save_dir, self.contract, self.global_dataset = save_dir, contract, global_dataset
        self.published: int | None = None
        self.error: BaseException | None = None
        self.finish = threading.Event()

    def publish_new(self) -> None:
        iteration = completed_iteration(self.save_dir, global_dataset=self.global_dataset)
        if iteration is not None and (self.published is None or iteration > self.published):
            publish(self.save_dir, iteration, self.contract, global_dataset=self.global_dataset)
            self.published = iteration

    def run(self) -> None:
        try:
            while not self.finish.wait(1.0):
                self.publish_new()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which stops slime
            self.error = exc


# -- the process -------------------------------------------------------------------------------

def _pump(stream: IO[str], out: IO[str], contract: Contract, tail: collections.deque[str] | None) -> None:
    """Copy slime's output line by line, turning its metric lines into progress lines."""
    for line in stream:
        out.write(line)
        out.flush()
        if tail is not None:
            tail.append(line)
        found = metrics_line(line)
        if found is not None:
            contract.report_progress(*found)


def _signal_group(proc: subprocess.Popen[str], signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def run(args: argparse.Namespace, contract: Contract) -> int:
    """Start slime, publish its saves, stop it when asked; the contract's exit code."""
    if contract.max_steps is None:
        raise ConfigError("RELAY_MAX_STEPS: required (slime's --num-rollout)")
    entry = Path(args.slime_dir) / args.entry
    if not entry.is_file():
        raise ConfigError(f"--slime-dir/--entry: {entry} does not exist")
    save_dir = Path(args.save_dir) if args.save_dir else Path(contract.run_root or contract.output_dir.parent) / "slime"
    remove_tree(save_dir)  # scratch of an earlier attempt: the resume point is RELAY_RESUME_FROM, not this
    save_dir.mkdir(parents=True)
    global_dataset = "--disable-rollout-global-dataset" not in args.slime_args
    trajectories = None
    if contract.save_rollout_trajectories:
        trajectories = trajectory_template(contract.trajectory_path(0).parent, contract.rollout_trajectory_pattern)
    argv = slime_argv(args.python, entry, args.slime_args, save_dir=save_dir, max_steps=contract.max_steps,
                      save_every=args.save_every or contract.checkpoint_every or 100,
                      load=load_arguments(contract.resume_from, contract.init_from), trajectories=trajectories)
    print(f"relay_slime: {' '.join(argv)}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                            start_new_session=True, cwd=args.slime_dir)
    tail: collections.deque[str] = collections.deque(maxlen=200)
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, sys.stdout, contract, None), daemon=True),
             threading.Thread(target=_pump, args=(proc.stderr, sys.stderr, contract, tail), daemon=True)]
    publisher = Publisher(save_dir, contract, global_dataset=global_dataset)
    for thread in (*pumps, publisher):
        thread.start()
    stop_deadline: float | None = None
    while proc.poll() is None:
        time.sleep(0.5)
        if publisher.error is not None and stop_deadline is None:
            print(f"relay_slime: publishing a checkpoint failed: {publisher.error}", file=sys.stderr, flush=True)
            _signal_group(proc, signal.SIGTERM)
            stop_deadline = time.monotonic() + args.stop_timeout_s
        if stop_deadline is None and contract.should_stop():
            print(f"relay_slime: stopping slime ({contract.stop_reason})", file=sys.stderr, flush=True)
            _signal_group(proc, signal.SIGTERM)
            stop_deadline = time.monotonic() + args.stop_timeout_s
        if stop_deadline is not None and time.monotonic() > stop_deadline:
            _signal_group(proc, signal.SIGKILL)
    _signal_group(proc, signal.SIGKILL)  # whatever slime left running (Ray workers, SGLang servers)
    for pump in pumps:
        pump.join(timeout=10)
    publisher.finish.set()
    publisher.join()
    if publisher.error is not None:
        raise publisher.error
    publisher.publish_new()  # a save that completed while slime was stopping
    code = exit_code(proc.returncode, "".join(tail), stop_requested=contract.should_stop())
    if code == ExitCode.OK and not contract.should_stop() and publisher.published != contract.max_steps - 1:
        print(f"relay_slime: slime exited 0 but its last save (iteration {contract.max_steps - 1}) was not found "
              f"in {save_dir}", file=sys.stderr, flush=True)
        return ExitCode.TEMPFAIL
    return code


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slime-dir", required=True, help="slime's checkout (its train.py is run from there)")
    parser.add_argument("--entry", default="train.py", choices=["train.py", "train_async.py"],
                        help="slime's entry point: synchronous or asynchronous rollouts")
    parser.add_argument("--python", default=sys.executable, help="the Python slime is installed in")
    parser.add_argument("--save-dir", default=None, help="slime's scratch save folder (default <run_root>/slime); "
                        "on the file system of RELAY_OUTPUT_DIR, so that saves are hard-linked, not copied")
    parser.add_argument("--save-every", type=int, default=None,
                        help="slime's --save-interval in rollouts (default: the run's checkpoint.every_steps)")
    parser.add_argument("--stop-timeout-s", type=float, default=30.0,
                        help="seconds between SIGTERM and SIGKILL to slime when stopping")
    parser.add_argument("slime_args", nargs=argparse.REMAINDER, help="-- then your slime arguments")
    args = parser.parse_args(argv)
    if args.slime_args[:1] == ["--"]:
        args.slime_args = args.slime_args[1:]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        contract = Contract.from_env()
        contract.install_signal_handlers()
        return run(args, contract)
    except Exception as exc:
        code = exit_code_for(exc)  # a bad setup is 78, a checkpoint that cannot be written 75
        if code is None:
            raise
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())

"""Orchestration overhead: SFT training speed under a worker and a commander ÷ standalone.

    python -m bench.orchestration_overhead                       # 400 steps, checkpoint every 100, 3 pairs
    python -m bench.orchestration_overhead --steps 200 --repeats 1 --json out.json   # smoke run
    python -m bench.orchestration_overhead --async-save          # both variants with async checkpoints

What runs
---------
The tiny model on the arithmetic dataset, the same trainer flags for both variants (the
run config the worker receives is built by the standalone CLI's own ``build_config`` from
the same argv, so batch size, lr, seed, checkpoint interval, ``keep_last`` are identical):

standalone
    ``python -m relaytrain.train sft --model tiny --dataset arithmetic --max-steps N
    --output-dir DIR --checkpoint-every K --resume-from none`` in its own process.
relayed
    A fresh commander (``relay serve`` on SQLite, default 5 s sweep interval) and one
    ``relay worker`` (``tests.support.relay.WorkerProc``), started before the run is
    submitted; the worker claims the run and starts the built-in trainer
    (``python -m relaytrain.train.run``) under the contract, tails its progress file,
    forwards progress to the commander every second, keeps the lease, verifies, uploads
    (local file store) and commits every checkpoint while the trainer goes on. Commander and
    worker are stopped after each relayed run, so no orchestration process runs during a
    standalone run.

Both trainers run with ``OMP_NUM_THREADS=1``, ``CUDA_VISIBLE_DEVICES=""``,
``PYTHONHASHSEED=0`` (what ``WorkerProc`` sets). The variants alternate (S R, R S, S R, …)
and the ratio is taken within each pair, then the median over pairs.

Figures
-------
steady-state steps/s (primary)
    From the trainer's own progress lines. Each line covers the steps since the previous
    line and carries ``steps_per_s`` over that window; windows are contiguous (the trainer
    restarts the window clock at every flush, ``sft._Window``), so Σ(Δstep ÷ steps_per_s)
    over every line after the first is the trainer's monotonic time from the first to the
    last progress line. steps/s = (last step − first step) ÷ that time. The window starts
    after process start-up, model load and the first ~0.5 s of training, and ends at the
    final step's progress line, written before the final checkpoint; the intermediate
    checkpoints (every K steps) are inside it for both variants.
steady-state steps/s (tailed)
    Cross-check: this bench tails the progress file every ``--poll-s`` seconds, stamps each
    new line with its own ``time.monotonic()``, and divides the steps between the first and
    last line by the time between them (± one poll interval of quantisation).
trainer CPU s/step
    utime+stime of the trainer process (``/proc/PID/stat``) sampled with the first and last
    progress line: CPU spent per step, insensitive to the wall-clock noise other load causes.
end-to-end
    standalone: process start → exit. relayed: submit → the commander says ``succeeded``
    (claim, trainer start-up, training, final upload and release), plus the trainer
    process's own lifetime under the worker, and the commander + worker start-up time (not
    in either e2e figure).
    Both are split into start-up (trainer process start → first progress line seen) and
    wind-down (last progress line → trainer exit: the final checkpoint, then interpreter exit).
orchestration CPU
    CPU seconds of the worker process (its own threads: lease keeper, reporter, uploader;
    not its trainer child) and of the commander process from submit to ``succeeded``.

Load average is printed per run: other processes on a small machine skew all of this.
Everything runs in a temporary folder removed at the end (``--keep`` keeps it); every
process started here is stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.support.commander import Commander, wait_until
from tests.support.relay import WorkerProc

TRAINER_ENV = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONHASHSEED": "0"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` (its own threads, not its children), or None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


@dataclass
class Line:
    t: float  # our monotonic clock when we saw the line
    step: int
    steps_per_s: float
    cpu_s: float | None  # the trainer's CPU seconds when we saw the line


class Tail:
    """Tails a progress file (found by ``locate``) on a thread, stamping each line with our clock."""

    def __init__(self, locate: Callable[[], Path | None], pid: Callable[[], int | None], poll_s: float) -> None:
        self.locate, self.pid, self.poll_s = locate, pid, poll_s
        self.lines: list[Line] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tail", daemon=True)

    def start(self) -> Tail:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        self._thread.join()

    def _loop(self) -> None:
        path, offset, partial = None, 0, b""
        while True:
            halting = self._halt.is_set()  # one last read after the halt
            if path is None:
                path = self.locate()
            if path is not None:
                try:
                    with open(path, "rb") as handle:
                        handle.seek(offset)
                        data = handle.read()
                except FileNotFoundError:
                    data = b""
                if data:
                    now = time.monotonic()
                    offset += len(data)
                    chunks = (partial + data).split(b"\n")
                    partial = chunks.pop()
                    pid = self.pid()
                    cpu = cpu_seconds(pid) if pid else None
                    for chunk in chunks:
                        record = json.loads(chunk)
                        metrics = record.get("metrics")
                        if isinstance(record.get("step"), int) and isinstance(metrics, dict):
                            self.lines.append(Line(now, record["step"], float(metrics["steps_per_s"]), cpu))
            if halting:
                return
            self._halt.wait(self.poll_s)


@dataclass
class Result:
    variant: str
    repeat: int
    loadavg: float
    steps: int  # steps in the steady-state window
    window_s_trainer: float
    window_s_tailed: float
    steps_per_s: float  # trainer clock (primary)
    steps_per_s_tailed: float
    cpu_s_per_step: float | None
    e2e_s: float
    startup_s: float | None = None  # trainer process start -> first progress line seen
    shutdown_s: float | None = None  # last progress line seen -> trainer process exit
    trainer_lifetime_s: float | None = None
    cluster_start_s: float | None = None
    worker_cpu_s: float | None = None
    commander_cpu_s: float | None = None
    lines: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def window(tail: Tail, max_steps: int) -> dict[str, Any]:
    lines = tail.lines
    if len(lines) < 3 or lines[-1].step != max_steps:
        raise RuntimeError(f"progress lines incomplete: {len(lines)} lines, last step "
                           f"{lines[-1].step if lines else None} (want {max_steps})")
    first, last = lines[0], lines[-1]
    steps = last.step - first.step
    trainer_s = sum((b.step - a.step) / b.steps_per_s for a, b in zip(lines, lines[1:], strict=False))
    tailed_s = last.t - first.t
    cpu = None
    if first.cpu_s is not None and last.cpu_s is not None:
        cpu = (last.cpu_s - first.cpu_s) / steps
    return {"steps": steps, "window_s_trainer": trainer_s, "window_s_tailed": tailed_s,
            "steps_per_s": steps / trainer_s, "steps_per_s_tailed": steps / tailed_s,
            "cpu_s_per_step": cpu, "lines": len(lines)}


def trainer_argv(args: argparse.Namespace, output_dir: Path, run_id: str) -> list[str]:
    argv = ["sft", "--model", "tiny", "--dataset", "arithmetic", "--max-steps", str(args.steps),
            "--output-dir", str(output_dir), "--checkpoint-every", str(args.every), "--resume-from", "none",
            "--run-id", run_id]
    return argv + (["--async-save"] if args.async_save else [])


def run_standalone(args: argparse.Namespace, root: Path, repeat: int) -> Result:
    out = root / f"standalone-{repeat}"
    out.mkdir(parents=True)
    argv = [sys.executable, "-m", "relaytrain.train", *trainer_argv(args, out, f"bench-s{repeat}")]
    load = os.getloadavg()[0]
    with open(out / "trainer.log", "wb") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **TRAINER_ENV},
                                start_new_session=True)
        tail = Tail(lambda: out / "progress.jsonl", lambda: proc.pid, args.poll_s).start()
        try:
            code = proc.wait(timeout=args.timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        finally:
            ended = time.monotonic()
            e2e = ended - t0
            tail.stop()
    if code != 0:
        raise RuntimeError(f"standalone trainer exited {code}: {(out / 'trainer.log').read_text()[-3000:]}")
    return Result("standalone", repeat, load, e2e_s=e2e, startup_s=tail.lines[0].t - t0,
                  shutdown_s=ended - tail.lines[-1].t, **window(tail, args.steps))


def run_relayed(args: argparse.Namespace, root: Path, repeat: int) -> Result:
    from relaytrain.config import run_config_dict
    from relaytrain.train.standalone import build_parser

    base = root / f"relayed-{repeat}"
    base.mkdir(parents=True)
    run_id = f"bench-r{repeat}"
    parser, clis = build_parser()
    parsed = parser.parse_args(trainer_argv(args, base / "unused", run_id))
    config = run_config_dict(clis["sft"].build_config(parsed))  # the very config the standalone run trains
    config["store"] = {"uri": str(base / "artifacts")}

    t_cluster = time.monotonic()
    commander = Commander(db=str(base / "relay.db"), token=secrets.token_urlsafe(16), workdir=base,
                          sweep_interval=args.sweep_interval_s)
    worker: WorkerProc | None = None
    client = None
    try:
        commander.start()
        client = commander.client()
        token = client.create_token("bench-workers").token
        worker = WorkerProc(commander.url, token, "w1", base / "w1").start()
        wait_until(lambda: any(w.worker_id == "w1" for w in client.workers()), 60, "the worker to register")
        cluster_start = time.monotonic() - t_cluster

        run_root = base / "w1" / "runs" / run_id
        pid_files = lambda: sorted((run_root / "logs").glob("attempt_*/trainer.pid"))  # noqa: E731
        trainer_pid: list[int] = []
        born: list[float] = []

        def locate() -> Path | None:
            found = sorted((run_root / "progress").glob("attempt_*.jsonl"))
            return found[0] if found else None

        def pid() -> int | None:
            if not trainer_pid:
                files = pid_files()
                if files and (text := files[0].read_text().strip()):
                    trainer_pid.append(int(text))
                    born.append(time.monotonic())
            return trainer_pid[0] if trainer_pid else None

        load = os.getloadavg()[0]
        worker_cpu0, commander_cpu0 = cpu_seconds(worker.proc.pid), cpu_seconds(commander.proc.pid)
        t0 = time.monotonic()
        client.submit(config)
        tail = Tail(locate, pid, args.poll_s).start()
        died: list[float] = []
        try:
            deadline = t0 + args.timeout_s
            while True:  # rare status polls while training, so the bench adds no load to the commander
                if pid() is not None and not died and not alive(trainer_pid[0]):
                    died.append(time.monotonic())
                trained = bool(tail.lines) and tail.lines[-1].step >= args.steps
                if trained or time.monotonic() > deadline:
                    run = client.run(run_id)
                    if run.status in ("succeeded", "failed", "cancelled"):
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"relayed run not done after {args.timeout_s}s: {run.status}")
                time.sleep(0.02 if trained else args.poll_s)
            e2e = time.monotonic() - t0
        finally:
            tail.stop()
        if run.status != "succeeded":
            raise RuntimeError(f"relayed run ended {run.status}: {worker.log()[-3000:]}")
        worker_cpu = cpu_seconds(worker.proc.pid) - worker_cpu0  # over submit -> succeeded
        commander_cpu = cpu_seconds(commander.proc.pid) - commander_cpu0
        lifetime = (died[0] - born[0]) if died and born else None
        startup = tail.lines[0].t - born[0] if born and tail.lines else None
        shutdown = died[0] - tail.lines[-1].t if died and tail.lines else None
        durable = run.latest_checkpoint.step if run.latest_checkpoint else None
        return Result("relayed", repeat, load, e2e_s=e2e, trainer_lifetime_s=lifetime, cluster_start_s=cluster_start,
                      startup_s=startup, shutdown_s=shutdown,
                      worker_cpu_s=worker_cpu, commander_cpu_s=commander_cpu, extra={"durable_step": durable},
                      **window(tail, args.steps))
    finally:
        if worker is not None:
            worker.stop()  # SIGKILL by PID; the run is over, its trainer already exited
        if client is not None:
            client.close()
        commander.stop()


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.orchestration_overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=100, help="checkpoint every this many steps")
    parser.add_argument("--repeats", type=int, default=3, help="pairs (standalone, relayed), order alternating")
    parser.add_argument("--async-save", action="store_true", help="both variants save asynchronously")
    parser.add_argument("--poll-s", type=float, default=0.02, help="progress-file poll interval of this bench")
    parser.add_argument("--sweep-interval-s", type=float, default=5.0, help="the commander's (CLI default 5)")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="per run")
    parser.add_argument("--target", type=float, default=0.98)
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="relay-orch-"))
    started = time.monotonic()
    print(f"orchestration overhead: {args.steps} steps, checkpoint every {args.every}"
          f"{' (async)' if args.async_save else ''}, {args.repeats} pairs; {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS=1; folder {root}", flush=True)
    results: list[Result] = []
    try:
        for repeat in range(args.repeats):
            order = (run_standalone, run_relayed) if repeat % 2 == 0 else (run_relayed, run_standalone)
            for fn in order:
                r = fn(args, root, repeat)
                results.append(r)
                print(f"  #{repeat} {r.variant:<10} load {r.loadavg:4.1f}  {r.steps_per_s:6.2f} steps/s "
                      f"(tailed {r.steps_per_s_tailed:6.2f}) over {r.steps} steps / {r.window_s_trainer:5.1f} s, "
                      f"CPU {fmt(r.cpu_s_per_step and r.cpu_s_per_step * 1000, '.1f')} ms/step, "
                      f"e2e {r.e2e_s:5.1f} s (start-up {fmt(r.startup_s, '.1f')} s, after last line "
                      f"{fmt(r.shutdown_s, '.1f')} s)"
                      + (f", trainer lifetime {fmt(r.trainer_lifetime_s, '.1f')} s, cluster start "
                         f"{fmt(r.cluster_start_s, '.1f')} s, worker CPU {fmt(r.worker_cpu_s, '.2f')} s, "
                         f"commander CPU {fmt(r.commander_cpu_s, '.2f')} s" if r.variant == "relayed" else ""),
                      flush=True)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    def by(variant: str, repeat: int) -> Result:
        return next(r for r in results if r.variant == variant and r.repeat == repeat)

    pairs = [(by("standalone", i), by("relayed", i)) for i in range(args.repeats)]
    ratios = [r.steps_per_s / s.steps_per_s for s, r in pairs]
    ratios_tailed = [r.steps_per_s_tailed / s.steps_per_s_tailed for s, r in pairs]
    cpu_ratios = [r.cpu_s_per_step / s.cpu_s_per_step for s, r in pairs if r.cpu_s_per_step and s.cpu_s_per_step]

    def med(variant: str, attr: str) -> float | None:
        values = [getattr(r, attr) for r in results if r.variant == variant and getattr(r, attr) is not None]
        return statistics.median(values) if values else None

    summary = {
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "ratio_tailed_median": statistics.median(ratios_tailed),
        "ratios_tailed": ratios_tailed,
        "cpu_per_step_ratio_median": statistics.median(cpu_ratios) if cpu_ratios else None,
        "target": args.target,
        "pass": statistics.median(ratios) >= args.target,
        "bench_wall_s": time.monotonic() - started,
    }
    for variant in ("standalone", "relayed"):
        for attr in ("steps_per_s", "steps_per_s_tailed", "cpu_s_per_step", "e2e_s", "startup_s", "shutdown_s",
                     "trainer_lifetime_s",
                     "cluster_start_s", "worker_cpu_s", "commander_cpu_s"):
            summary[f"{variant}_{attr}_median"] = med(variant, attr)
    s, r = "standalone", "relayed"
    print()
    print(f"steady-state steps/s, trainer clock   standalone {summary[f'{s}_steps_per_s_median']:.2f}   "
          f"relayed {summary[f'{r}_steps_per_s_median']:.2f}   ratio per pair "
          f"{', '.join(f'{x:.3f}' for x in ratios)}   median {summary['ratio_median']:.3f} "
          f"(target >= {args.target}: {'PASS' if summary['pass'] else 'FAIL'})")
    print(f"steady-state steps/s, tailed          standalone {summary[f'{s}_steps_per_s_tailed_median']:.2f}   "
          f"relayed {summary[f'{r}_steps_per_s_tailed_median']:.2f}   median ratio "
          f"{summary['ratio_tailed_median']:.3f}")
    if summary["cpu_per_step_ratio_median"] is not None:
        print(f"trainer CPU ms/step                   standalone "
              f"{summary[f'{s}_cpu_s_per_step_median'] * 1000:.1f}   relayed "
              f"{summary[f'{r}_cpu_s_per_step_median'] * 1000:.1f}   median ratio (relayed/standalone) "
              f"{summary['cpu_per_step_ratio_median']:.3f}")
    print(f"end-to-end s                          standalone process {summary[f'{s}_e2e_s_median']:.1f}   "
          f"relayed submit->succeeded {summary[f'{r}_e2e_s_median']:.1f} (trainer process "
          f"{fmt(summary[f'{r}_trainer_lifetime_s_median'], '.1f')}; commander+worker start "
          f"{fmt(summary[f'{r}_cluster_start_s_median'], '.1f')} not included)")
    print(f"  trainer start-up (process start -> first progress line)   standalone "
          f"{fmt(summary[f'{s}_startup_s_median'], '.1f')}   relayed {fmt(summary[f'{r}_startup_s_median'], '.1f')}")
    print(f"  last progress line -> trainer exit (final save + exit)    standalone "
          f"{fmt(summary[f'{s}_shutdown_s_median'], '.1f')}   relayed {fmt(summary[f'{r}_shutdown_s_median'], '.1f')}")
    print(f"orchestration CPU s per run           worker {fmt(summary[f'{r}_worker_cpu_s_median'], '.2f')}   "
          f"commander {fmt(summary[f'{r}_commander_cpu_s_median'], '.2f')}")
    print(f"bench wall time {summary['bench_wall_s']:.0f} s; machine {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, python "
          f"{platform.python_version()}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "summary": summary, "runs": [asdict(x) for x in results]}, indent=1))
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())

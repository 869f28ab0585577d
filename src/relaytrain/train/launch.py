"""Start a built-in trainer on several processes of one worker, with torchrun's own machinery.

A run whose plan (``relaytrain.config.distributed.plan_for``) asks for more than one rank is
started by the worker like any other built-in run, ``python -m relaytrain.train.run``; that
process sees it is not a rank yet and becomes the *launcher*: a torchrun agent
(``torch.distributed.launcher.api.elastic_launch``, standalone: one node, c10d rendezvous on
127.0.0.1 with a free port, no restarts — relaytrain's hand-off is the restart) that starts
``world_size`` ranks running the same module, with the same environment (``RELAY_*``
included) plus torchrun's ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT`` (and ``OMP_NUM_THREADS=1`` unless set, as torchrun does)::

    worker ─► fence ─► python -m relaytrain.train.run        the launcher (this module)
                          ├─► python -m relaytrain.train.run  rank 0: reports for the attempt
                          └─► python -m relaytrain.train.run  rank 1 …

The fence sees the launcher and its ranks as one tree: paused, stopped and killed together.

- Exit: every rank 0 → 0; a rank ``EX_CONFIG`` (78) → 78; anything else (a crash, a signal,
  ``EX_TEMPFAIL``) → 75 with one last stderr line naming the rank, how it ended and the tail
  of its stderr (a machine fault's line kept), which the worker's ``classify_exit`` reads. The
  other ranks are torn down at once (SIGTERM, SIGKILL after ``TEARDOWN_S``).
- SIGTERM and SIGINT ask every rank to stop (forwarded, also to a rank that starts later);
  ranks that checkpoint and exit 0 make the launcher exit 0. Ranks killed by the very signal
  (before their handlers were installed) make it die by that signal, as a lone trainer would.
  SIGHUP and SIGQUIT are torchrun's: it stops the ranks, and the launcher dies of the signal.
- Each rank's stderr is copied, prefixed ``[rankN]:``, to the launcher's stderr, and kept in
  ``<run_root>/logs/attempt_<epoch>/ranks/``.

Usage::

    from relaytrain.train.launch import launch
    sys.exit(launch(plan, ["-m", "relaytrain.train.run"], contract, config))

Public API: ``TEARDOWN_S``, ``RANK_LOG_PREFIX``, ``check_devices``, ``launcher_exit``,
``failure_line``, ``stderr_tail``, ``launch``. The module imports torch only inside ``launch``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from relaytrain.config.distributed import DistributedPlan
from relaytrain.contract import Contract, ExitCode, RunLayout, machine_fault
from relaytrain.errors import ConfigError
from relaytrain.worker.fence import children

log = logging.getLogger(__name__)

TEARDOWN_S = 5
"""Once a rank has failed, how long the others have between SIGTERM and SIGKILL."""
RANK_LOG_PREFIX = "[rank${rank}]:"
"""The prefix of a rank's stderr lines on the launcher's stderr (torchrun's template)."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORWARD_SCAN_S = 0.2
TAIL_BYTES = 16_384
TAIL_LINES = 3
TAIL_CHARS = 800


def check_devices(plan: DistributedPlan, config: Any, cuda_devices: int | None) -> None:
    """Refuse a plan this machine cannot run, naming the field that asks for it.

    ``cuda_devices``: the GPUs CUDA sees here, or None without CUDA (then the ranks run on the
    CPU with gloo, and ``backend: nccl`` is refused). On a CUDA machine every rank needs a GPU."""
    distributed = getattr(config.trainer, "distributed", None)
    field = ("trainer.distributed.nproc_per_node" if distributed is not None and distributed.nproc_per_node
             else "resources.gpus")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = "" if visible is None else f" (CUDA_VISIBLE_DEVICES={visible!r})"
    if cuda_devices is None:
        if plan.backend == "nccl":
            raise ConfigError(f"trainer.distributed.backend: 'nccl' needs GPUs, and this machine has none{where}")
        return
    if plan.world_size > cuda_devices:
        raise ConfigError(f"{field}: {plan.world_size} ranks need {plan.world_size} GPUs, and this machine "
                          f"has {cuda_devices}{where}")


def launcher_exit(codes: Mapping[int, int], stop_signal: int | None = None) -> int:
    """The launcher's exit code from its ranks' (rank → code; negative: killed by that signal).

    0 when every rank exited 0; ``EX_CONFIG`` when any did (the run is wrong: no retry); when
    the launcher was asked to stop by ``stop_signal`` and every failed rank died of that very
    signal, ``-stop_signal`` (the launcher dies of it too); otherwise ``EX_TEMPFAIL``."""
    failed = {rank: code for rank, code in codes.items() if code != 0}
    if not failed:
        return ExitCode.OK
    if ExitCode.CONFIG in failed.values():
        return ExitCode.CONFIG
    if stop_signal is not None and all(code == -stop_signal for code in failed.values()):
        return -stop_signal
    return ExitCode.TEMPFAIL


def how_it_ended(code: int) -> str:
    """``exit 3``, ``exit 75 (EX_TEMPFAIL)``, ``killed by SIGKILL``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    name = _SYSEXITS.get(code)
    return f"exit {code} ({name})" if name else f"exit {code}"


_SYSEXITS = {ExitCode.TEMPFAIL: "EX_TEMPFAIL", ExitCode.CONFIG: "EX_CONFIG"}


def stderr_tail(text: str) -> str:
    """The last ``TAIL_LINES`` non-blank lines of a rank's stderr joined by `` | ``, after the
    first line showing a machine fault if there is one earlier (an Xid, ENOSPC), at most
    ``TAIL_CHARS`` characters; ``(no stderr)`` for none."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    tail = lines[-TAIL_LINES:]
    fault = next((line for line in lines if machine_fault(line) is not None), None)
    if fault is not None and fault not in tail:
        tail = [fault, "…", *tail]
    joined = " | ".join(tail) or "(no stderr)"
    return joined if len(joined) <= TAIL_CHARS else "…" + joined[-TAIL_CHARS:]


def failure_line(rank: int, world_size: int, code: int, tail: str, exit_code: int) -> str:
    """The launcher's last stderr line: which rank failed, how, its stderr's tail, and the
    launcher's own exit code."""
    return (f"relaytrain launcher: rank {rank} of {world_size} failed ({how_it_ended(code)}); "
            f"exiting {exit_code}: {tail}")


def _read_tail(path: str | None) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - TAIL_BYTES))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


class _StopForwarder:
    """SIGTERM/SIGINT to the launcher → the same signal to every rank, including a rank that
    starts after it (scanned every ``FORWARD_SCAN_S`` until the launcher is done)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._sent: set[int] = set()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.signal is None:
            self.signal = signum
            log.warning("%s: asking every rank to stop", signal.Signals(signum).name)
        self._sent.clear()  # a repeated signal is forwarded again
        self._forward()
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="relay-stop-forwarder", daemon=True)
            self._thread.start()

    def _forward(self) -> None:
        assert self.signal is not None
        for pid in children(os.getpid()):
            if pid not in self._sent:
                try:
                    os.kill(pid, self.signal)
                except ProcessLookupError:
                    continue
                self._sent.add(pid)

    def _watch(self) -> None:
        while not self._done.wait(FORWARD_SCAN_S):
            self._forward()

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def launch(plan: DistributedPlan, module_args: Sequence[str], contract: Contract, config: Any) -> int:
    """Run ``python <module_args>`` as ``plan.world_size`` ranks under a torchrun agent and
    return the launcher's exit code (see the module docstring). Dies of a stop signal when the
    ranks did. Call from the main thread of an entry point; ``config`` is the run's config
    (for :func:`check_devices`)."""
    import torch
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    try:
        check_devices(plan, config, torch.cuda.device_count() if torch.cuda.is_available() else None)
    except ConfigError as exc:
        log.error("%s", exc)
        return ExitCode.CONFIG

    class RankLogs(DefaultLogsSpecs):
        """torchrun's default logs, remembering where each rank's stderr went."""

        stderrs: dict[int, str]

        def reify(self, envs: Any) -> Any:
            dest = super().reify(envs)
            self.stderrs = dict(dest.stderrs)
            return dest

    rank_logs = rank_log_dir(contract)
    logs = RankLogs(log_dir=str(rank_logs), tee=Std.ERR)
    logs.stderrs = {}
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default for several processes per node
    logging.getLogger("torch.distributed.elastic").setLevel(logging.WARNING)
    launch_config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=plan.world_size, run_id=f"relay-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", rdzv_configs={"is_host": True},
        local_addr="127.0.0.1", max_restarts=0, monitor_interval=0.1, start_method="spawn",
        logs_specs=logs, log_line_prefix_template=RANK_LOG_PREFIX,
        signals_to_handle="SIGHUP,SIGQUIT",  # SIGTERM and SIGINT are stop requests: ours to forward
        shutdown_timeout=TEARDOWN_S,
    )
    log.info("launching %d ranks (%s, backend %s); their logs in %s", plan.world_size, plan.strategy, plan.backend,
             rank_logs)
    forwarder = _StopForwarder()
    forwarder.install()
    try:
        elastic_launch(launch_config, sys.executable)(*module_args)
        code, line = ExitCode.OK, None
    except ChildFailedError as exc:
        codes = {rank: failure.exitcode for rank, failure in exc.failures.items()}
        code = launcher_exit(codes, forwarder.signal)
        config_failures = [rank for rank, c in codes.items() if c == ExitCode.CONFIG]
        rank = config_failures[0] if config_failures else exc.get_first_failure()[0]
        failure = exc.failures[rank]
        tail = stderr_tail(_read_tail(logs.stderrs.get(failure.local_rank)))
        line = failure_line(rank, plan.world_size, failure.exitcode, tail, code)
    except SignalException as exc:  # SIGHUP or SIGQUIT: torchrun's agent stopped the ranks; die of it too
        code, line = -int(exc.sigval), f"relaytrain launcher: {exc.sigval.name}: the ranks were stopped"
    except Exception as exc:  # the agent itself failed (rendezvous, a port): a retry may fix it
        code, line = ExitCode.TEMPFAIL, f"relaytrain launcher: the torchrun agent failed: {type(exc).__name__}: {exc}"
    finally:
        forwarder.close()
    if line is not None:
        sys.stderr.flush()
        print(line, file=sys.stderr, flush=True)
    if code < 0:
        _die_of(-code)
    return code


def _die_of(sig: int) -> None:
    """Exit the way the ranks did: of signal ``sig``."""
    signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
    os.kill(os.getpid(), sig)
    sys.exit(128 + sig)  # not reached


def rank_log_dir(contract: Contract) -> Path:
    """Where the launcher keeps its ranks' logs: ``<run_root>/logs/attempt_<epoch>/ranks``."""
    return RunLayout(contract.run_root or contract.output_dir.parent, contract.epoch).logs / "ranks"

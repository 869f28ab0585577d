"""The one interface every provider implements: reach a machine, run a command on it, copy a
file to it, remove it. Starting, checking and stopping a detached ``relay worker`` is built
once, here, on top of those four, so local processes, SSH hosts and Lium pods behave alike.

A worker lives in its own folder on the machine, every file its user's alone (umask 077)::

    <machine.workdir>/<worker_id>/
      worker.env    its configuration (commander URL, token, id, GPUs, extra environment), mode 0600
      ca.pem        the CA certificate it verifies an https:// commander with (RELAY_CA_CERT), if given
      worker.pid    the pid of the detached worker process (a session leader)
      worker.log    its stdout and stderr
      work/         RELAY_WORKDIR: runs, checkpoints, trainer logs

The token and the extra environment reach the worker through ``worker.env``, never its command
line (which every user of the machine sees in ``ps``).
"""

from __future__ import annotations

import os
import shlex
import tempfile
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from relaytrain import CA_CERT_ENV, TOKEN_ENV
from relaytrain.config import ENV_NAME_RE as _ENV_KEY
from relaytrain.errors import ProviderError
from relaytrain.tls import CA_CERT

# A POSIX-sh test that pid $1 is a live relaytrain process (not a zombie, not a reused pid).
_ALIVE_FN = (
    "alive() { kill -0 \"$1\" 2>/dev/null || return 1; "
    "if [ -r \"/proc/$1/status\" ]; then "
    "grep -q '^State:[[:space:]]*Z' \"/proc/$1/status\" && return 1; "
    "tr '\\000' ' ' < \"/proc/$1/cmdline\" | grep -q relaytrain; "
    "else ps -o stat=,args= -p \"$1\" | grep -v '^ *Z' | grep -q relaytrain; fi; }"
)


@dataclass(frozen=True)
class CommandResult:
    """What a command run on a machine returned."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def describe(self) -> str:
        """``exit N: <last lines of stderr or stdout>`` for error messages."""
        tail = (self.stderr.strip() or self.stdout.strip())[-500:]
        return f"exit {self.exit_code}" + (f": {tail}" if tail else "")


@dataclass
class Machine:
    """A machine a provider reached: where workers go on it and which Python runs them."""

    name: str
    provider: str
    workdir: str
    python: str
    address: str | None = None
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Machine:
        return cls(**data)


@dataclass
class WorkerLaunch:
    """How to start one worker: everything ``relay worker`` needs, and the trainer's extra environment."""

    worker_id: str
    commander_url: str
    token: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    kinds: list[str] = field(default_factory=list)
    command_runs: bool = True
    gpus: list[int] | None = None
    price_per_hour: float | None = None
    max_runs: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    claim_wait_s: float | None = None
    rollout: RolloutLaunch | None = None
    """Set: start ``relay rollout-worker`` (these settings) instead of ``relay worker``."""
    ca_cert: str | None = None
    """The CA certificate (a file on this machine) the worker verifies an ``https://`` commander with:
    copied into the worker's folder; None: the public CAs."""


@dataclass
class RolloutLaunch:
    """What a rollout worker takes beyond a worker's identity, commander, token, labels and GPUs."""

    threads: int = 1
    run_id: str | None = None


@dataclass
class WorkerHandle:
    """A started worker: where it runs and the files that describe it."""

    worker_id: str
    machine: str
    pid: int
    dir: str
    config_path: str
    log_path: str
    pid_path: str
    workdir: str
    gpus: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerHandle:
        return cls(**data)


def render_env_file(values: dict[str, str]) -> str:
    """``KEY='value'`` lines a POSIX shell can source (``set -a; . ./worker.env``)."""
    lines = ["# relaytrain worker configuration: sourced by the worker's shell before it starts"]
    for key, value in values.items():
        if not _ENV_KEY.fullmatch(key):
            raise ProviderError(f"env: {key!r} is not a valid environment variable name")
        lines.append(f"{key}={shlex.quote(str(value))}")
    return "\n".join(lines) + "\n"


def parse_env_file(text: str, *, source: str = "env file") -> dict[str, str]:
    """Read ``KEY=VALUE`` lines (blank lines and ``#`` comments skipped, quotes around a value removed)."""
    values: dict[str, str] = {}
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key = key.strip()
        if not sep or not _ENV_KEY.fullmatch(key):
            raise ProviderError(f"{source} line {line_no}: expected KEY=VALUE, got {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def worker_env(launch: WorkerLaunch) -> dict[str, str]:
    """The variables a worker's configuration file holds (``relay worker`` reads the RELAY_* ones)."""
    values = {"RELAY_COMMANDER": launch.commander_url, "WORKER_ID": launch.worker_id, "RELAY_WORKDIR": "work",
              "PYTHONUNBUFFERED": "1"}
    if launch.token:
        values[TOKEN_ENV] = launch.token
    if launch.ca_cert:
        values[CA_CERT_ENV] = CA_CERT  # beside worker.env, in the folder the worker runs in
    if launch.gpus is not None:
        values["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in launch.gpus)
    return {**launch.env, **values}


def alive_script(pids: list[int]) -> str:
    """A shell script printing those of ``pids`` that are live relaytrain processes, one a line."""
    return f"{_ALIVE_FN}\nfor p in {' '.join(str(int(p)) for p in pids)}; do alive $p && echo $p; done; true"


def parse_alive(stdout: str) -> set[int]:
    return {int(line) for line in stdout.split() if line.isdigit()}


def worker_argv(python: str, provider: str, launch: WorkerLaunch) -> list[str]:
    """The ``relay worker`` (or ``relay rollout-worker``) command line (identity and commander come
    from the environment)."""
    if launch.rollout is not None:
        argv = [python, "-m", "relaytrain.cli", "rollout-worker", "--threads", str(launch.rollout.threads)]
        if launch.rollout.run_id is not None:
            argv += ["--run", launch.rollout.run_id]
        for key, value in launch.labels.items():
            argv += ["--label", f"{key}={value}"]
        return argv
    argv = [python, "-m", "relaytrain.cli", "worker", "--provider", provider]
    for key, value in launch.labels.items():
        argv += ["--label", f"{key}={value}"]
    for kind in launch.kinds:
        argv += ["--kind", kind]
    if not launch.command_runs:
        argv.append("--no-command-runs")
    if launch.max_runs is not None:
        argv += ["--max-runs", str(launch.max_runs)]
    if launch.price_per_hour is not None:
        argv += ["--price-per-hour", str(launch.price_per_hour)]
    if launch.claim_wait_s is not None:
        argv += ["--claim-wait", str(launch.claim_wait_s)]
    return argv


class Provider(ABC):
    """Where workers run. Subclasses implement :meth:`create`, :meth:`run`, :meth:`upload` and
    :meth:`remove`; starting, checking and stopping workers is shared."""

    type: ClassVar[str]

    @abstractmethod
    def create(self, name: str) -> Machine:
        """Create the machine ``name``, or reach it if it exists; return it ready for commands."""

    @abstractmethod
    def run(self, machine: Machine, command: str, *, timeout_s: float = 120.0) -> CommandResult:
        """Run a POSIX shell command on the machine and return its exit code and output."""

    @abstractmethod
    def upload(self, machine: Machine, local: Path, remote: str) -> None:
        """Copy a local file to ``remote`` on the machine (its folder is created; mode 0600)."""

    @abstractmethod
    def remove(self, machine: Machine) -> None:
        """Give the machine back (delete the pod); providers that do not own their machines keep them."""

    # -- workers, on top of run/upload -----------------------------------------------------------

    def check(self, machine: Machine, command: str, *, timeout_s: float = 120.0) -> CommandResult:
        """:meth:`run`, raising ProviderError when the command fails."""
        result = self.run(machine, command, timeout_s=timeout_s)
        if not result.ok:
            raise ProviderError(f"{self.type} machine {machine.name}: {command.split(chr(10))[0][:80]!r} failed: "
                                f"{result.describe()}")
        return result

    def worker_dir(self, machine: Machine, worker_id: str) -> str:
        return f"{machine.workdir.rstrip('/')}/{worker_id}"

    def start_worker(self, machine: Machine, launch: WorkerLaunch) -> WorkerHandle:
        """Upload the worker's configuration and start ``relay worker`` detached; return its pid and files."""
        folder = self.worker_dir(machine, launch.worker_id)
        with tempfile.TemporaryDirectory(prefix="relay-worker-") as tmp:
            local = Path(tmp) / "worker.env"
            local.write_text(render_env_file(worker_env(launch)), encoding="utf-8")
            os.chmod(local, 0o600)
            self.upload(machine, local, f"{folder}/worker.env")
        if launch.ca_cert:
            self.upload(machine, Path(launch.ca_cert), f"{folder}/{CA_CERT}")
        argv = " ".join(shlex.quote(a) for a in worker_argv(machine.python, self.type, launch))
        script = "\n".join([
            "set -e",
            "umask 077",
            f"cd {shlex.quote(folder)}",
            "chmod 700 . && rm -f worker.pid && mkdir -p work",
            "S=; command -v setsid >/dev/null 2>&1 && S=setsid",
            "nohup $S sh -c 'echo $$ > worker.pid; set -a; . ./worker.env; set +a; exec \"$@\"' relay-worker "
            f"{argv} >> worker.log 2>&1 < /dev/null &",
            "i=0; while [ ! -s worker.pid ] && [ $i -lt 300 ]; do sleep 0.05; i=$((i+1)); done",
            "cat worker.pid",
        ])
        out = self.check(machine, script).stdout.strip()
        if not out.isdigit():
            raise ProviderError(f"{self.type} machine {machine.name}: worker {launch.worker_id} did not start "
                                f"(no pid; see {folder}/worker.log)")
        return WorkerHandle(worker_id=launch.worker_id, machine=machine.name, pid=int(out), dir=folder,
                            config_path=f"{folder}/worker.env", log_path=f"{folder}/worker.log",
                            pid_path=f"{folder}/worker.pid", workdir=f"{folder}/work", gpus=launch.gpus)

    def workers_alive(self, machine: Machine, pids: list[int]) -> set[int]:
        """Which of ``pids`` are live relaytrain processes on the machine (one command for all)."""
        if not pids:
            return set()
        return parse_alive(self.check(machine, alive_script(pids)).stdout)

    def worker_alive(self, machine: Machine, handle: WorkerHandle) -> bool:
        return handle.pid in self.workers_alive(machine, [handle.pid])

    def stop_worker(self, machine: Machine, handle: WorkerHandle, *, grace_s: float = 60.0) -> str:
        """SIGTERM (the worker checkpoints and releases its run as preempted), SIGKILL after ``grace_s``.

        Returns ``gone`` (it was not running), ``stopped`` or ``killed``.
        """
        ticks = max(1, int(grace_s * 10))
        script = "\n".join([
            _ALIVE_FN,
            f"p={int(handle.pid)}",
            "alive $p || { echo gone; exit 0; }",
            "kill -TERM $p 2>/dev/null || true",
            f"i=0; while alive $p && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i+1)); done",
            "alive $p || { echo stopped; exit 0; }",
            "kill -KILL $p 2>/dev/null || true",
            "i=0; while alive $p && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done",
            "alive $p && { echo 'still alive after SIGKILL' >&2; exit 1; }",
            "echo killed",
        ])
        return self.check(machine, script, timeout_s=grace_s + 60).stdout.strip().splitlines()[-1]

    def tail_log(self, machine: Machine, handle: WorkerHandle, lines: int = 40) -> str:
        """The last lines of the worker's log ('' when there is none)."""
        result = self.run(machine, f"tail -n {int(lines)} {shlex.quote(handle.log_path)} 2>/dev/null")
        return result.stdout

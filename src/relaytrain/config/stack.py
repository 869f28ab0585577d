"""The stack file (``relay launch-stack stack.yaml``): typed models, validated at load."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, field_validator, model_validator

from relaytrain.errors import ConfigError
from relaytrain.netaddr import is_loopback, url_host

from .runs import (
    RUN_ID_PATTERN,
    RunConfig,
    RunKind,
    _Model,
    load_run_config,
    load_yaml,
    parse_run_config,
    validate_file,
)

HOST_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_HOST_NAME_RE = re.compile(HOST_NAME_PATTERN)
_TTL_RE = re.compile(r"^(\d+)([smhd])$")


def validate_host_name(value: str) -> str:
    """Return ``value`` if it is a safe machine, host or worker-group name, else raise ValueError."""
    if not isinstance(value, str) or not _HOST_NAME_RE.fullmatch(value):
        raise ValueError("must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ (letters, digits, '.', '_', '-')")
    return value


def ttl_seconds(ttl: str) -> int:
    """``45m``, ``6h``, ``2d`` (or ``30s``) → seconds; ValueError otherwise. The one duration format:
    ``lium up --ttl`` and ``relay token create --expires-in``."""
    match = _TTL_RE.fullmatch(ttl.strip()) if isinstance(ttl, str) else None
    if match is None or int(match.group(1)) == 0:
        raise ValueError("must be a positive duration such as 45m, 6h or 2d")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


class StackCommander(_Model):
    """The commander that launch-stack starts in the background on this machine."""

    host: str = Field("127.0.0.1", description="Address the commander binds.")
    port: int = Field(8080, ge=1, le=65535, description="Port the commander binds.")
    public_url: str | None = Field(
        None, description="URL workers use to reach the commander; default http://<host>:<port>."
    )
    state_path: str = Field(".relay-launch/relay.db", description="The commander's database: SQLite path or URL.")
    log_path: str = Field(".relay-launch/commander.log", description="The commander's log file.")
    pid_path: str = Field(".relay-launch/commander.pid", description="The commander's pid file.")
    token: str | None = Field(None, description="Admin token (or --token / RELAY_TOKEN); required off loopback.")
    python_bin: str | None = Field(None, description="Python that runs the commander; default: the one running relay.")
    wait_s: float = Field(30.0, gt=0, le=600, description="Seconds to wait for /api/v1/health after the start.")
    restart_if_running: bool = Field(False, description="Stop a commander running from pid_path and start anew.")
    sweep_interval_s: float = Field(5.0, ge=0.05, le=600, description=(
        "Seconds between lease-expiry sweeps and beats; a silence over 2 × this + 2 s is an outage, whose running "
        "leases are extended by its length (docs/commander.md)."))
    tls_cert: str | None = Field(None, description="Serve https with this certificate (relay tls init's server.pem).")
    tls_key: str | None = Field(None, description="The certificate's private key (relay tls init's server-key.pem).")
    ca_cert: str | None = Field(
        None, description="CA certificate the workers (and launch-stack) verify the commander with (relay tls init's "
        "ca.pem), copied to every worker; unset: the public CAs."
    )
    insecure_http: bool = Field(
        False, description="Serve plain http off loopback (tokens cross the network in clear): a trusted network only."
    )

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _tls_or_loopback(self) -> StackCommander:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.tls and self.insecure_http:
            raise ValueError("insecure_http cannot be combined with tls_cert/tls_key")
        if not self.tls and not self.insecure_http and not self.loopback:
            raise ValueError(f"host {self.host} is not loopback: without TLS tokens would cross the network in clear; "
                             "give tls_cert and tls_key (relay tls init makes them) or insecure_http: true")
        if self.tls and self.public_url and not self.public_url.startswith("https://"):
            raise ValueError("public_url must be https:// when the commander serves TLS")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def url(self) -> str:
        """Where this machine reaches the commander."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"{'https' if self.tls else 'http'}://{url_host(host)}:{self.port}"

    @property
    def worker_url(self) -> str:
        """Where workers reach the commander."""
        return self.public_url or self.url

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


class LocalProviderConfig(_Model):
    """Workers as processes on this machine, each in its own folder under ``root``."""

    type: Literal["local"]
    root: str = Field(".relay-launch/machines", description="Folder holding one folder per local machine.")
    python: str | None = Field(None, description="Python that runs the workers; default: the one running relay.")


class SshHostFields(_Model):
    """How to reach an SSH host and what its workers offer: one set of fields and limits, shared by
    the stack file, ``relay hosts add`` and the commander's hosts API."""

    address: str = Field(..., min_length=1, max_length=255, description="IP address or DNS name.")
    port: int = Field(22, ge=1, le=65535, description="SSH port.")
    user: str = Field("root", min_length=1, max_length=64, description="SSH user.")
    key_path: str = Field(
        ..., min_length=1, max_length=4096, description="Private key file, on the commander's machine."
    )
    known_hosts: str | None = Field(
        None, max_length=4096, description="known_hosts file to verify the host key; unset: unchecked."
    )
    labels: dict[str, str] = Field(
        default_factory=dict, max_length=64, description="Labels of the workers started there."
    )
    price_per_hour: float | None = Field(None, ge=0, description="What the machine costs, $/hour.")
    python: str = Field(
        "python3", min_length=1, max_length=4096, description="Python with relaytrain installed, on the host."
    )
    workdir: str = Field(
        "relay", min_length=1, max_length=4096, description="Folder for workers on the host (relative: to home)."
    )


class SshHostConfig(SshHostFields):
    """A machine reached over SSH, by name (``relay hosts add`` takes the same fields)."""

    name: str = Field(..., description="The host's name in the commander.")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return validate_host_name(value)

    @classmethod
    def of_record(cls, record: Mapping[str, Any]) -> SshHostConfig:
        """A host as the commander keeps it (its store or its API): the fields of this model."""
        return cls(**{k: record[k] for k in cls.model_fields if k in record})


class SshProviderConfig(_Model):
    """Hosts kept by the commander; workers started over SSH (by launch-stack or the autoscaler)."""

    type: Literal["ssh"]
    hosts: list[SshHostConfig] = Field(default_factory=list, description="Hosts registered with the commander.")
    autoscale: bool = Field(False, description="The commander polls GPUs and starts workers for queued runs.")
    poll_interval_s: float = Field(30.0, ge=0.2, le=3600, description="Seconds between GPU polls of every host.")
    connect_timeout_s: float = Field(10.0, gt=0, le=300, description="SSH connection timeout, in seconds.")

    @field_validator("hosts")
    @classmethod
    def _unique_hosts(cls, value: list[SshHostConfig]) -> list[SshHostConfig]:
        names = [h.name for h in value]
        if len(names) != len(set(names)):
            raise ValueError(f"host names must be unique (got {names})")
        return value


class LiumProviderConfig(_Model):
    """Pods rented through the Lium SDK (``pip install lium.io``), one per worker."""

    type: Literal["lium"]
    template_id: str = Field(..., min_length=1, description="Template the pods start from (our worker image).")
    executor: str | None = Field(None, description="Executor id or HUID to rent; else cheapest by gpu_type.")
    gpu_type: str | None = Field(None, description="GPU type to rent when no executor is named, e.g. H100.")
    gpu_count: int | None = Field(None, ge=1, le=64, description="GPUs per pod when renting by gpu_type.")
    pod_name: str | None = Field(None, description="Pod name prefix; default: the stack's name.")
    volume: str | None = Field(None, description="'id:<HUID>' or 'new:name=<NAME>': a volume to mount.")
    ttl: str | None = Field(None, description="Remove pods after this long, e.g. 6h (lium up --ttl).")
    ready_timeout_s: float = Field(300.0, gt=0, le=7200, description="Seconds to wait for a pod to be ready.")
    poll_interval_s: float = Field(10.0, gt=0, le=600, description="Seconds between readiness checks.")
    python: str = Field("python3", min_length=1, description="Python with relaytrain installed, in the pod.")
    remote_dir: str = Field("/workspace/relay", min_length=1, description="Folder for the worker in the pod.")

    @field_validator("volume")
    @classmethod
    def _volume_spec(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"id:\S+|new:name=[^,\s]+(,desc=.*)?", value):
            raise ValueError("must be 'id:<HUID>' or 'new:name=<NAME>'")
        return value

    @field_validator("ttl")
    @classmethod
    def _ttl_format(cls, value: str | None) -> str | None:
        if value is not None:
            ttl_seconds(value)
        return value

    @model_validator(mode="after")
    def _some_executor(self) -> LiumProviderConfig:
        if self.executor is None and self.gpu_type is None:
            raise ValueError("give 'executor' or 'gpu_type' to choose what to rent")
        return self


ProviderConfig = Annotated[
    LocalProviderConfig | SshProviderConfig | LiumProviderConfig, Field(discriminator="type")
]
PROVIDER_TYPES: tuple[str, ...] = ("local", "ssh", "lium")


class WorkerGroup(_Model):
    """Workers launch-stack starts: ``count`` of them, each on its own machine (or pinned GPUs)."""

    name: str = Field(..., description="Group name; workers are <stack>-<name>-<i>.")
    count: int = Field(1, ge=1, le=64, description="How many workers.")
    host: str | None = Field(None, description="ssh only: the host (from provider.hosts) the workers run on.")
    gpus: list[Annotated[int, Field(ge=0, le=1023)]] | None = Field(
        None, description="GPU indices the workers see (CUDA_VISIBLE_DEVICES); default: all."
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Labels the workers offer to runs.")
    kinds: list[RunKind] = Field(default_factory=list, description="Run kinds served; default: all.")
    command_runs: bool = Field(True, description="false: never claim kind: command runs (--no-command-runs).")
    price_per_hour: float | None = Field(None, ge=0, description="What one worker's machine costs, $/hour.")
    max_runs: int | None = Field(None, ge=1, description="A worker exits after this many attempts.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment of the worker and trainer.")
    env_file: str | None = Field(None, description="A KEY=VALUE file merged under env (relative to the stack).")
    register_timeout_s: float = Field(120.0, gt=0, le=3600, description="Seconds to wait for it to register.")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return validate_host_name(value)

    @model_validator(mode="after")
    def _command_runs_or_not(self) -> WorkerGroup:
        if not self.command_runs and "command" in self.kinds:
            raise ValueError("command_runs: false contradicts kinds: [command]")
        return self


class RolloutWorkerGroup(_Model):
    """Rollout workers launch-stack starts (``relay rollout-worker``): they generate GRPO groups for
    whichever run's rollout manager wants them (DESIGN §11)."""

    name: str = Field(..., description="Group name; rollout workers are <stack>-<name>-<i>.")
    count: int = Field(1, ge=1, le=64, description="How many rollout workers.")
    host: str | None = Field(None, description="ssh only: the host (from provider.hosts) they run on.")
    gpus: list[Annotated[int, Field(ge=0, le=1023)]] | None = Field(
        None, description="GPU indices they see (CUDA_VISIBLE_DEVICES); default: all."
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Labels they offer to runs.")
    threads: int = Field(1, ge=1, le=1024, description="CPU threads of each one's engine (--threads).")
    run: str | None = Field(None, pattern=RUN_ID_PATTERN, description="Serve only this run (--run).")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment of the rollout workers.")
    env_file: str | None = Field(None, description="A KEY=VALUE file merged under env (relative to the stack).")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return validate_host_name(value)


class StackConfig(_Model):
    """A stack file: a commander, where workers run, which workers, which runs (DESIGN §12)."""

    name: str = Field("relay", description="Stack name: prefix of worker ids and pod names.")
    launch_dir: str = Field(".relay-launch", description="Where launch-stack keeps its state and worker configs.")
    commander: StackCommander = Field(default_factory=StackCommander)
    provider: ProviderConfig = Field(default_factory=lambda: LocalProviderConfig(type="local"))
    workers: list[WorkerGroup] = Field(default_factory=list, description="Worker groups to start.")
    rollout_workers: list[RolloutWorkerGroup] = Field(
        default_factory=list, description="Rollout worker groups to start (relay rollout-worker)."
    )
    runs: list[str | dict[str, Any]] = Field(
        default_factory=list, description="Run files (relative to the stack file) or inline runs to submit."
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return validate_host_name(value)

    @model_validator(mode="after")
    def _workers_fit_provider(self) -> StackConfig:
        groups = [("workers", i, g) for i, g in enumerate(self.workers)]
        groups += [("rollout_workers", i, g) for i, g in enumerate(self.rollout_workers)]
        names = [g.name for _, _, g in groups]
        if len(names) != len(set(names)):
            raise ValueError(f"workers, rollout_workers: group names must be unique (got {names})")
        hosts = {h.name for h in self.provider.hosts} if isinstance(self.provider, SshProviderConfig) else set()
        taken: dict[tuple[str, int], str] = {}
        for section, i, group in groups:
            if not isinstance(self.provider, SshProviderConfig):
                if group.host is not None:
                    raise ValueError(f"{section}.{i}.host: only an ssh provider has hosts")
                continue
            if group.host not in hosts:
                raise ValueError(f"{section}.{i}.host: must name one of provider.hosts ({sorted(hosts)})")
            if group.gpus and group.count > 1:
                raise ValueError(f"{section}.{i}: {group.count} workers pinned to the same GPUs {group.gpus}")
            for gpu in group.gpus or []:
                other = taken.setdefault((group.host, gpu), group.name)
                if other != group.name:
                    raise ValueError(f"{section}.{i}.gpus: GPU {gpu} of {group.host} is already {other}'s")
        return self


_STACK_ADAPTER: TypeAdapter[StackConfig] = TypeAdapter(StackConfig)


def parse_stack_config(data: Any) -> StackConfig:
    """Validate a stack file's content; raise ConfigError naming every bad field."""
    return validate_file(_STACK_ADAPTER, data, unions={("provider",): ("type", PROVIDER_TYPES)}, not_a_mapping=(
        "the stack file must be a mapping of sections (commander, provider, workers, runs)"))


def stack_runs(config: StackConfig, base_dir: str | Path) -> list[RunConfig]:
    """The runs a stack lists, each validated; errors name ``runs.<i>`` (and the run file)."""
    parsed = []
    for i, item in enumerate(config.runs):
        try:
            if isinstance(item, str):
                path = Path(item) if Path(item).is_absolute() else Path(base_dir) / item
                parsed.append(load_run_config(path))
            else:
                parsed.append(parse_run_config(item))
        except ConfigError as exc:
            detail = str(exc).replace("\n", f"\nruns.{i}.") if isinstance(item, dict) else str(exc)
            raise ConfigError(f"runs.{i}{'.' if isinstance(item, dict) else ': '}{detail}") from exc
    ids = [run.run_id for run in parsed]
    if len(ids) != len(set(ids)):
        raise ConfigError(f"runs: run ids must be unique (got {ids})")
    return parsed


def load_stack_config(path: str | Path) -> StackConfig:
    """Load and validate a stack file, and every run it lists (paths relative to the file)."""
    path = Path(path)
    try:
        config = parse_stack_config(load_yaml(path))
        stack_runs(config, path.parent)
    except ConfigError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ConfigError(f"{path}:\n{exc}") from exc.__cause__
    return config

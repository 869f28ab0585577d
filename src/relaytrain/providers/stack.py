"""``relay launch-stack``: a commander in the background, the workers a stack file asks for, its runs.

launch: start (or reuse) the commander and wait for ``/api/v1/health``; register the SSH hosts;
create or reach every worker's machine, upload its configuration, start it detached, wait until
it has registered; submit the runs. What was started is written to ``<launch_dir>/stack.json``
(so ``relay stack status`` and ``relay stack down`` find it) and returned as the summary.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from relaytrain import TOKEN_ENV
from relaytrain.api.status import WorkerRole
from relaytrain.checkpoint import atomic_write_text
from relaytrain.config import (
    RolloutWorkerGroup,
    SshHostConfig,
    SshProviderConfig,
    StackConfig,
    WorkerGroup,
    load_stack_config,
    run_config_dict,
    stack_runs,
)
from relaytrain.errors import RelayError, RunExists
from relaytrain.tls import client_context

from .base import Machine, Provider, ProviderError, RolloutLaunch, WorkerHandle, WorkerLaunch, parse_env_file
from .factory import make_provider, resolve

STATE_FILE = "stack.json"


class StackError(RelayError):
    """The stack could not be launched, inspected or stopped."""


# -- local processes ---------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live relaytrain process of this machine (a zombie child is reaped)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        if "\nState:\tZ" in (proc / "status").read_text(errors="replace"):
            return False
        return b"relaytrain" in (proc / "cmdline").read_bytes()
    return True


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def stop_pid(pid: int, *, grace_s: float = 30.0) -> str:
    """SIGTERM, then SIGKILL after ``grace_s``: ``gone``, ``stopped`` or ``killed``."""
    if not pid_alive(pid):
        return "gone"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)
            return "killed"
        time.sleep(0.05)
    return "stopped"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


# -- the commander -----------------------------------------------------------------------------


class Stack:
    """A stack file, its folder, and the state of what launch-stack started from it."""

    def __init__(self, path: Path, *, token: str | None = None, sdk: Any | None = None) -> None:
        self.path = Path(path).resolve()
        self.base = self.path.parent
        self.config: StackConfig = load_stack_config(self.path)
        self.token = token or self.config.commander.token
        self.sdk = sdk
        c = self.config.commander
        self.launch_dir = resolve(self.base, self.config.launch_dir)
        self.state_path = self.launch_dir / STATE_FILE
        self.pid_path, self.log_path = resolve(self.base, c.pid_path), resolve(self.base, c.log_path)
        self.db = c.state_path if "://" in c.state_path else str(resolve(self.base, c.state_path))
        self.ca_cert = str(resolve(self.base, c.ca_cert)) if c.ca_cert else None
        self._provider: Provider | None = None

    @property
    def provider(self) -> Provider:
        if self._provider is None:
            self._provider = make_provider(self.config.provider, base_dir=self.base, sdk=self.sdk)
        return self._provider

    def client(self) -> Any:
        from relaytrain.api.client import RelayClient

        return RelayClient(self.config.commander.url, self.token, retries=2, timeout_s=30, ca_cert=self.ca_cert)

    def read_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None

    def save_state(self, state: dict[str, Any]) -> None:
        _write_atomic(self.state_path, json.dumps(state, indent=2) + "\n")

    def commander_command(self) -> list[str]:
        c = self.config.commander
        argv = [c.python_bin or sys.executable, "-m", "relaytrain.cli", "serve", "--db", self.db, "--host", c.host,
                "--port", str(c.port), "--sweep-interval", str(c.sweep_interval_s)]
        if c.tls_cert and c.tls_key:
            argv += ["--tls-cert", str(resolve(self.base, c.tls_cert)), "--tls-key", str(resolve(self.base, c.tls_key))]
        if c.insecure_http:
            argv.append("--insecure-http")
        if isinstance(self.config.provider, SshProviderConfig):
            argv += ["--poll-hosts", "--public-url", c.worker_url,
                     "--poll-interval", str(self.config.provider.poll_interval_s)]
            if self.ca_cert:
                argv += ["--ca-cert", self.ca_cert]
            if not self.config.provider.autoscale:
                argv.append("--no-autoscale")
        return argv

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.config.commander.url}/api/v1/health", timeout=2,
                             verify=client_context(self.ca_cert)).status_code == 200
        except httpx.HTTPError:
            return False

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            return "(no log)"

    def start_commander(self) -> dict[str, Any]:
        """Start the commander in the background (or reuse a running one) and wait until it is healthy."""
        c = self.config.commander
        if not c.loopback and not self.token:
            raise StackError(f"commander.host {c.host} is not loopback: give commander.token, --token or RELAY_TOKEN")
        pid = read_pid(self.pid_path)
        if pid is not None and pid_alive(pid):
            if not c.restart_if_running:
                self._wait_healthy(pid, None)
                return self._commander_info(pid, started=False)
            stop_pid(pid)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        if self.token:
            env[TOKEN_ENV] = self.token
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(self.commander_command(), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, cwd=self.base, start_new_session=True)
        _write_atomic(self.pid_path, f"{proc.pid}\n")
        self._wait_healthy(proc.pid, proc)
        return self._commander_info(proc.pid, started=True)

    def _wait_healthy(self, pid: int, proc: subprocess.Popen | None) -> None:
        deadline = time.monotonic() + self.config.commander.wait_s
        while not self.healthy():
            exited = proc.poll() if proc is not None else (None if pid_alive(pid) else -1)
            if exited is not None:
                raise StackError(f"the commander exited ({exited}) before it was healthy; {self.log_path}:\n"
                                 f"{self._log_tail()}")
            if time.monotonic() > deadline:
                raise StackError(f"the commander (pid {pid}) was not healthy within {self.config.commander.wait_s:.0f}"
                                 f"s; {self.log_path}:\n{self._log_tail()}")
            time.sleep(0.1)

    def _commander_info(self, pid: int, *, started: bool) -> dict[str, Any]:
        c = self.config.commander
        return {"pid": pid, "started": started, "url": c.url, "worker_url": c.worker_url,
                "pid_path": str(self.pid_path), "log_path": str(self.log_path), "state_path": self.db}

    # -- workers ---------------------------------------------------------------------------------

    def launches(self, worker_token: str | None,
                 rollout_token: str | None = None) -> list[tuple[str, str, WorkerLaunch]]:
        """``(group, machine name, launch)`` of every worker and rollout worker the stack file asks for."""
        out = []
        for group in [*self.config.workers, *self.config.rollout_workers]:
            env = self._group_env(group)
            for i in range(group.count):
                worker_id = f"{self.config.name}-{group.name}-{i}"
                if isinstance(group, RolloutWorkerGroup):
                    launch = WorkerLaunch(worker_id=worker_id, commander_url=self.config.commander.worker_url,
                                          ca_cert=self.ca_cert, token=rollout_token, labels=dict(group.labels),
                                          gpus=group.gpus, env=env,
                                          rollout=RolloutLaunch(threads=group.threads, run_id=group.run))
                else:
                    launch = WorkerLaunch(worker_id=worker_id, commander_url=self.config.commander.worker_url,
                                          ca_cert=self.ca_cert, token=worker_token, labels=dict(group.labels),
                                          kinds=list(group.kinds), command_runs=group.command_runs,
                                          gpus=group.gpus, price_per_hour=group.price_per_hour,
                                          max_runs=group.max_runs, env=env)
                out.append((group.name, group.host or worker_id, launch))
        return out

    def _group_env(self, group: WorkerGroup | RolloutWorkerGroup) -> dict[str, str]:
        env = {}
        if group.env_file:
            env_path = resolve(self.base, group.env_file)
            try:
                env = parse_env_file(env_path.read_text(encoding="utf-8"), source=str(env_path))
            except OSError as exc:
                raise StackError(f"workers.{group.name}.env_file: cannot read {env_path}: {exc}") from exc
        if self.config.provider.type == "local":
            env["RELAY_STACK_DIR"] = str(self.base)  # lets a local run name files next to the stack
        env.update(group.env)
        return env

    def _start_one(self, group: str, machine_name: str, launch: WorkerLaunch) -> dict[str, Any]:
        machine = self.provider.create(machine_name)
        handle = self.provider.start_worker(machine, launch)
        role = WorkerRole.ROLLOUT if launch.rollout is not None else WorkerRole.WORKER
        return {"group": group, "role": role.value, **handle.to_dict(), "machine": machine.to_dict()}

    def _wait_registered(self, client: Any, workers: list[dict[str, Any]]) -> None:
        timeouts = {g.name: g.register_timeout_s for g in self.config.workers}
        started = time.monotonic()
        # rollout workers register with the commander's rollout pool, not as workers: only checked alive
        pending = {w["worker_id"]: w for w in workers if w.get("role", WorkerRole.WORKER) == WorkerRole.WORKER}
        last_check = started
        while pending:
            registered = {w.worker_id for w in client.workers()}
            for worker_id in list(pending):
                if worker_id in registered:
                    pending.pop(worker_id)
            if not pending:
                return
            now = time.monotonic()
            for w in pending.values():
                if now - started > timeouts[w["group"]]:
                    raise StackError(f"worker {w['worker_id']} did not register within {timeouts[w['group']]:.0f}s; "
                                     f"its log:\n{self._worker_log(w)}")
            if now - last_check > 3:  # a worker that died will never register: say so at once
                last_check = now
                for w in pending.values():
                    machine, handle = self._handle(w)
                    if not self.provider.worker_alive(machine, handle):
                        raise StackError(f"worker {w['worker_id']} exited before it registered; its log:\n"
                                         f"{self._worker_log(w)}")
            time.sleep(0.2)

    def _handle(self, w: dict[str, Any]) -> tuple[Machine, WorkerHandle]:
        fields = {k: w[k] for k in WorkerHandle.__dataclass_fields__ if k != "machine"}
        return Machine.from_dict(w["machine"]), WorkerHandle(machine=w["machine"]["name"], **fields)

    def _alive_or_unknown(self, w: dict[str, Any]) -> bool:
        try:
            return self.provider.worker_alive(*self._handle(w))
        except ProviderError:
            return True

    def _worker_log(self, w: dict[str, Any]) -> str:
        try:
            return self.provider.tail_log(*self._handle(w)) or "(empty)"
        except ProviderError as exc:
            return f"(cannot read it: {exc})"

    # -- the three commands ----------------------------------------------------------------------

    def launch(self) -> dict[str, Any]:
        """Bring the stack up; returns (and saves) the summary. Runs already submitted are left as they are."""
        runs = stack_runs(self.config, self.base)
        previous = self.read_state()
        if previous and previous["workers"]:
            alive = [w["worker_id"] for w in previous["workers"] if self._alive_or_unknown(w)]
            if alive:
                raise StackError(f"{self.config.name} is already up (workers {', '.join(alive)} run): "
                                 f"relay stack status / relay stack down {self.path}")
        commander = self.start_commander()
        state: dict[str, Any] = {"stack": self.config.name, "stack_file": str(self.path),
                                 "provider": self.config.provider.type, "commander": commander, "workers": [],
                                 "runs": [], "hosts": [], "launched_at": time.time()}
        self.save_state(state)
        with self.client() as client:
            worker_token = client.create_token(f"{self.config.name}-workers", "worker").token if self.token else None
            rollout_token = None
            if self.token and self.config.rollout_workers:
                rollout_token = client.create_token(f"{self.config.name}-rollout", "rollout").token
            if isinstance(self.config.provider, SshProviderConfig):
                state["hosts"] = self._register_hosts(client)
            launches = self.launches(worker_token, rollout_token)
            errors: list[str] = []
            if launches:
                with ThreadPoolExecutor(max_workers=min(8, len(launches))) as pool:
                    futures = [pool.submit(self._start_one, *item) for item in launches]
                    for (_, _, launch), future in zip(launches, futures, strict=True):
                        try:
                            state["workers"].append(future.result())
                        except RelayError as exc:
                            errors.append(f"{launch.worker_id}: {exc}")
            self.save_state(state)
            if errors:
                raise StackError("some workers did not start (relay stack down cleans up the rest):\n"
                                 + "\n".join(errors))
            self._wait_registered(client, state["workers"])
            for run in runs:
                try:
                    client.submit(run_config_dict(run))
                    state["runs"].append({"run_id": run.run_id, "status": "submitted"})
                except RunExists:
                    state["runs"].append({"run_id": run.run_id, "status": "exists"})
        self.save_state(state)
        return state

    def _register_hosts(self, client: Any) -> list[str]:
        """PUT the stack's hosts; enable every host (stack down disabled them)."""
        assert isinstance(self.config.provider, SshProviderConfig)
        for host in self.config.provider.hosts:
            spec = host.model_dump(exclude={"name"})
            spec["key_path"] = str(resolve(self.base, host.key_path))
            client.request("PUT", f"/api/v1/hosts/{host.name}", json=spec)
        names = [h["name"] for h in client.request("GET", "/api/v1/hosts")]
        for name in names:
            client.request("PATCH", f"/api/v1/hosts/{name}", json={"enabled": True})
        return names

    def status(self) -> dict[str, Any]:
        """What runs now: the commander, each worker (alive, registered, its run), the runs, the hosts."""
        state = self.read_state() or {"workers": [], "runs": []}
        pid = read_pid(self.pid_path)
        out: dict[str, Any] = {"stack": self.config.name, "launched": self.state_path.exists(),
                               "commander": {**self._commander_info(pid or 0, started=False),
                                             "alive": bool(pid and pid_alive(pid)), "healthy": self.healthy()},
                               "workers": [], "runs": [], "hosts": []}
        out["commander"].pop("started")
        api: dict[str, Any] = {}
        if out["commander"]["healthy"]:
            with self.client() as client:
                api = {w.worker_id: w for w in client.workers()}
                for run in state["runs"]:
                    detail = client.run(run["run_id"])
                    out["runs"].append({"run_id": detail.run_id, "status": detail.status, "step": detail.step,
                                        "max_steps": detail.max_steps, "holder": detail.holder})
                if isinstance(self.config.provider, SshProviderConfig):
                    out["hosts"] = client.request("GET", "/api/v1/hosts")
        for w in state["workers"]:
            machine, handle = self._handle(w)
            try:
                alive: bool | str = self.provider.worker_alive(machine, handle)
            except ProviderError as exc:
                alive = f"unknown: {exc}"
            info = api.get(w["worker_id"])
            out["workers"].append({"worker_id": w["worker_id"], "role": w.get("role", WorkerRole.WORKER.value),
                                   "machine": machine.name, "pid": w["pid"],
                                   "alive": alive, "registered": info is not None,
                                   "current_run": info.current_run if info else None, "log_path": w["log_path"]})
        return out

    def down(self, *, remove_machines: bool = False, grace_s: float = 60.0) -> dict[str, Any]:
        """Stop the workers (each checkpoints and releases its run), remove machines if asked, stop the commander."""
        state = self.read_state() or {"workers": []}
        out: dict[str, Any] = {"stack": self.config.name, "workers": [], "machines_removed": []}
        autoscaled: list[tuple[dict[str, Any], dict[str, Any]]] = []
        pid = read_pid(self.pid_path)
        if pid is not None and pid_alive(pid) and self.healthy() and isinstance(self.config.provider,
                                                                                SshProviderConfig):
            with self.client() as client:
                for host in client.request("GET", "/api/v1/hosts"):
                    client.request("PATCH", f"/api/v1/hosts/{host['name']}", json={"enabled": False})
                    autoscaled += [(host, a) for a in host["workers"] if a.get("pid")]
        jobs = [(w["worker_id"], *self._handle(w), self.provider) for w in state["workers"]]
        for host, a in autoscaled:
            from .ssh import SshProvider

            provider = SshProvider([SshHostConfig.of_record(host)])
            fields = {k: a[k] for k in WorkerHandle.__dataclass_fields__ if k in a}
            machine = Machine(name=host["name"], provider="ssh", workdir=host["workdir"], python=host["python"])
            jobs.append((a["worker_id"], machine, WorkerHandle(**{"machine": host["name"], **fields}), provider))

        def stop(job: tuple[str, Machine, WorkerHandle, Provider]) -> dict[str, Any]:
            worker_id, machine, handle, provider = job
            try:
                return {"worker_id": worker_id, "result": provider.stop_worker(machine, handle, grace_s=grace_s)}
            except ProviderError as exc:
                return {"worker_id": worker_id, "result": f"error: {exc}"}

        if jobs:
            with ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
                out["workers"] = list(pool.map(stop, jobs))
        if remove_machines:
            machines = {w["machine"]["name"]: Machine.from_dict(w["machine"]) for w in state["workers"]}
            for machine in machines.values():
                self.provider.remove(machine)
                out["machines_removed"].append(machine.name)
        out["commander"] = stop_pid(pid) if pid is not None else "gone"
        self.pid_path.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)
        return out

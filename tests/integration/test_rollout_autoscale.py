"""The SSH autoscaler keeps ``rollout.workers`` rollout workers for a running run whose manager is
served (DESIGN §11): started on free GPUs of hosts with the run's ``rollout.labels``, as
``relay rollout-worker --run RUN_ID`` with the rollout token, only the shortfall, never reaped
once registered as rollout workers, stopped with their GPUs freed when the run ends. SQLite and
PostgreSQL alike.

The hosts are reached through the real :class:`SshHostAccess`; only its provider is replaced at
the SSH boundary by one that records each launch (the argv and environment the SSH provider
would run, built by the same functions) instead of running it."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from relaytrain.commander.hosts import HostsSettings, scale_once
from relaytrain.config import parse_run_config
from relaytrain.providers.base import (
    CommandResult,
    Machine,
    Provider,
    WorkerHandle,
    WorkerLaunch,
    worker_argv,
    worker_env,
)
from relaytrain.providers.ssh import SshHostAccess

pytest.importorskip("asyncssh")

PYTHON = "/venv/bin/python"
SPEC = {"address": "10.0.0.1", "port": 22, "user": "root", "key_path": "/keys/id", "known_hosts": None,
        "price_per_hour": None, "python": PYTHON, "workdir": "relay"}
ROLLOUT_TOKEN, WORKER_TOKEN = "relay_r_rollout", "relay_w_worker"


def gpus(idle: set[int], count: int = 4) -> list[dict]:
    return [{"index": i, "name": "A100", "memory_total_mb": 81920, "memory_used_mb": 4, "utilization_pct": 0,
             "idle": i in idle} for i in range(count)]


class RecordingProvider(Provider):
    """Records the workers it would start over SSH and the ones it stops; pids are made up."""

    type = "ssh"
    pids = itertools.count(40_000)

    def __init__(self, started: dict[str, dict], stopped: list[str]) -> None:
        self.started, self.stopped = started, stopped

    def create(self, name: str) -> Machine:
        return Machine(name=name, provider=self.type, workdir="relay", python=PYTHON)

    def run(self, machine: Machine, command: str, *, timeout_s: float = 120.0) -> CommandResult:
        raise AssertionError("no command runs on a recorded host")

    def upload(self, machine: Machine, local: Path, remote: str) -> None:
        raise AssertionError("nothing is uploaded to a recorded host")

    def remove(self, machine: Machine) -> None:
        pass

    def start_worker(self, machine: Machine, launch: WorkerLaunch) -> WorkerHandle:
        self.started[launch.worker_id] = {"host": machine.name, "argv": worker_argv(machine.python, self.type, launch),
                                          "env": worker_env(launch)}
        folder = self.worker_dir(machine, launch.worker_id)
        return WorkerHandle(worker_id=launch.worker_id, machine=machine.name, pid=next(self.pids), dir=folder,
                            config_path=f"{folder}/worker.env", log_path=f"{folder}/worker.log",
                            pid_path=f"{folder}/worker.pid", workdir=f"{folder}/work", gpus=launch.gpus)

    def stop_worker(self, machine: Machine, handle: WorkerHandle, *, grace_s: float = 60.0) -> str:
        self.stopped.append(handle.worker_id)
        return "stopped"


class RecordingAccess(SshHostAccess):
    """The real SshHostAccess, its provider recording instead of reaching the host."""

    def __init__(self) -> None:
        super().__init__()
        self.started: dict[str, dict] = {}
        self.stopped: list[str] = []

    def _provider(self, host: Any) -> tuple[Provider, Machine]:
        provider = RecordingProvider(self.started, self.stopped)
        return provider, provider.create(host["name"])


@pytest.fixture
def access() -> RecordingAccess:
    return RecordingAccess()


@pytest.fixture
def settings(access) -> HostsSettings:
    return HostsSettings(commander_url="http://10.0.0.100:8000", worker_token=WORKER_TOKEN,
                         rollout_token=ROLLOUT_TOKEN, access=access)


def scale(store, settings, now: float) -> list[dict]:
    return asyncio.run(scale_once(store, settings, now=now))


def running_grpo(store, run_id: str, rollout: dict, now: float) -> int:
    """Submit a GRPO run and have a worker outside the hosts claim it; its epoch."""
    store.submit_run(parse_run_config({"run_id": run_id, "kind": "grpo", "max_steps": 10, "rollout": rollout}), now=now)
    store.register_worker(f"{run_id}-trainer", provider="local", hostname=None, version=None, resources={})
    return store.claim_run(f"{run_id}-trainer", now=now)["epoch"]


def announce(store, run_id: str, epoch: int, now: float, pool: tuple[str, ...] = ()) -> None:
    store.announce_rollout(run_id, f"{run_id}-trainer", epoch, url="http://10.0.0.5:4100", secret="s" * 32,
                           pool=[{"worker_id": w} for w in pool], now=now)


def held(store, name: str) -> list[tuple[str, str | None, list[int]]]:
    return [(a["role"], a["run_id"], a["gpus"]) for a in store.get_host(name)["assignments"]]


def test_rollout_workers_started_on_matching_free_gpus(store, settings, access):
    t0 = time.time()
    store.put_host("eu", {**SPEC, "labels": {"zone": "eu"}})
    store.record_poll("eu", gpus=gpus({0, 1, 2}), error=None)
    store.put_host("us", {**SPEC, "labels": {"zone": "us"}})
    store.record_poll("us", gpus=gpus({0, 1, 2, 3}), error=None)
    epoch = running_grpo(store, "rl", {"workers": 3, "labels": {"zone": "eu"}}, now=t0)
    assert scale(store, settings, t0 + 1) == [], "no rollout worker before the manager is announced"
    assert access.started == {}

    announce(store, "rl", epoch, t0 + 2, pool=("rw-elsewhere",))  # one rollout worker already attached
    started = scale(store, settings, t0 + 3)
    assert [(s["host"], s["role"], s["run_id"], len(s["gpus"])) for s in started] == \
        [("eu", "rollout-worker", "rl", 1)] * 2
    assert sorted(g for s in started for g in s["gpus"]) == [0, 1]
    for s in started:
        launched = access.started[s["worker_id"]]
        assert launched["argv"] == [PYTHON, "-m", "relaytrain.cli", "rollout-worker", "--threads", "1",
                                    "--run", "rl", "--label", "zone=eu"]
        assert launched["env"]["RELAY_TOKEN"] == ROLLOUT_TOKEN
        assert launched["env"]["WORKER_ID"] == s["worker_id"]
        assert launched["env"]["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, s["gpus"]))
        assert launched["env"]["RELAY_COMMANDER"] == settings.commander_url
    assert sorted(held(store, "eu")) == [("rollout-worker", "rl", [0]), ("rollout-worker", "rl", [1])]
    assert held(store, "us") == [], "us does not carry zone=eu"

    assert scale(store, settings, t0 + 4) == [], "the run has its 3 (2 started here + 1 its manager reports)"
    ours = tuple(s["worker_id"] for s in started)
    announce(store, "rl", epoch, t0 + 5, pool=("rw-elsewhere", *ours))  # ours attached too
    assert scale(store, settings, t0 + 6) == [], "a started worker its manager reports is not counted twice"
    announce(store, "rl", epoch, t0 + 7, pool=ours)  # the outside worker left: one short, eu has GPU 2
    again = scale(store, settings, t0 + 8)
    assert [(s["host"], s["gpus"]) for s in again] == [("eu", [2])]
    announce(store, "rl", epoch, t0 + 9, pool=("a", "b", "c", "d"))
    assert scale(store, settings, t0 + 10) == [], "more than enough: nothing started (and none stopped)"
    assert access.stopped == []


def test_too_few_matching_gpus_and_queued_runs_first(store, settings, access):
    t0 = time.time()
    for name, labels, idle in (("any", {}, {0}), ("eu", {"zone": "eu"}, {0, 1}), ("us", {"zone": "us"}, {0, 1})):
        store.put_host(name, {**SPEC, "labels": labels})
        store.record_poll(name, gpus=gpus(idle), error=None)
    epoch = running_grpo(store, "rl", {"workers": 3, "labels": {"zone": "eu"}}, now=t0)
    announce(store, "rl", epoch, t0 + 1)
    store.submit_run(parse_run_config({"run_id": "q", "kind": "command", "max_steps": 5, "trainer": {"command": "true"},
                                       "resources": {"gpus": 2, "labels": {"zone": "us"}}}), now=t0 + 1)
    started = scale(store, settings, t0 + 2)
    assert [(s["host"], s["role"], s["run_id"], s["gpus"]) for s in started] == \
        [("us", "worker", "q", [0, 1]), ("eu", "rollout-worker", "rl", [0]), ("eu", "rollout-worker", "rl", [1])]
    trainer = access.started[started[0]["worker_id"]]
    assert trainer["argv"][3] == "worker" and trainer["env"]["RELAY_TOKEN"] == WORKER_TOKEN
    assert scale(store, settings, t0 + 3) == [], "2 of 3: eu is full, and no other host carries zone=eu"
    assert store.get_host("any")["free_gpus"] == [0]

    store.submit_run(parse_run_config({"run_id": "q2", "kind": "command", "max_steps": 5,
                                       "trainer": {"command": "true"}}), now=t0 + 3)
    # q is left to the worker started for it; the rollout workers are no spare worker for q2
    assert [(s["host"], s["role"], s["run_id"]) for s in scale(store, settings, t0 + 4)] == [("any", "worker", "q2")]


def test_registered_rollout_workers_are_not_reaped(store, settings, access):
    t0 = time.time()
    store.put_host("eu", {**SPEC, "labels": {}})
    store.record_poll("eu", gpus=gpus({0, 1}), error=None)
    epoch = running_grpo(store, "rl", {"workers": 2}, now=t0)
    announce(store, "rl", epoch, t0 + 1)
    first, second = scale(store, settings, t0 + 2)
    assert store.worker_activity([first["worker_id"], second["worker_id"]]) == \
        {first["worker_id"]: "absent", second["worker_id"]: "absent"}
    store.register_rollout_worker(first["worker_id"], run_id="rl", now=t0 + 3)  # PUT /rollout/workers/{id}
    assert store.worker_activity([first["worker_id"]]) == {first["worker_id"]: "rollout"}
    late = t0 + settings.register_timeout_s + 60  # the run's lease has expired by then: nothing restarted
    assert scale(store, settings, late) == []
    assert access.stopped == [second["worker_id"]]
    assert [a["worker_id"] for a in store.get_host("eu")["assignments"]] == [first["worker_id"]]
    assert "did not register" in store.get_host("eu")["last_error"]


@pytest.mark.parametrize("end", ["succeeded", "cancelled"])
def test_rollout_workers_stopped_and_gpus_freed_when_the_run_ends(store, settings, access, end):
    t0 = time.time()
    store.put_host("eu", {**SPEC, "labels": {}})
    store.record_poll("eu", gpus=gpus({0, 1, 2, 3}), error=None)
    epoch = running_grpo(store, "rl", {"workers": 2}, now=t0)
    other = running_grpo(store, "other", {"workers": 1}, now=t0)
    announce(store, "rl", epoch, t0 + 1)
    announce(store, "other", other, t0 + 1)
    started = scale(store, settings, t0 + 2)
    assert sorted(s["run_id"] for s in started) == ["other", "rl", "rl"]
    assert store.get_host("eu")["free_gpus"] == [3]
    if end == "succeeded":
        store.release_lease("rl", "rl-trainer", epoch, outcome="succeeded", now=t0 + 3)
    else:
        store.cancel_run("rl", now=t0 + 3)
        store.release_lease("rl", "rl-trainer", epoch, outcome="cancelled", now=t0 + 3)
    assert store.get_run("rl")["status"] == end
    assert scale(store, settings, t0 + 4) == [], "nothing new: the ended run wants none"
    assert sorted(access.stopped) == sorted(s["worker_id"] for s in started if s["run_id"] == "rl")
    assert held(store, "eu") == [("rollout-worker", "other", [s["gpus"] for s in started if s["run_id"] == "other"][0])]
    assert len(store.get_host("eu")["free_gpus"]) == 3
    assert store.get_host("eu")["last_error"] is None


def test_serve_makes_a_rollout_token_for_the_autoscaler(store):
    from relaytrain.commander.hosts import serve_settings

    made = serve_settings(store, public_url="http://10.0.0.100:8000/", admin_token="admin", poll_interval_s=30,
                          autoscale=True)
    assert store.token_scope(made.rollout_token) == "rollout" and store.token_scope(made.worker_token) == "worker"
    again = serve_settings(store, public_url="http://10.0.0.100:8000", admin_token="admin", poll_interval_s=30,
                           autoscale=True)
    assert again.rollout_token != made.rollout_token, "a fresh one each start (only hashes are stored)"
    open_api = serve_settings(store, public_url="http://10.0.0.100:8000", admin_token=None, poll_interval_s=30,
                              autoscale=True)
    assert (open_api.worker_token, open_api.rollout_token) == (None, None)

"""The commander's SSH hosts at work: a GPU poller and an autoscaler, run as background tasks
of the commander (``relay serve --poll-hosts``).

- The **poller** reaches every host concurrently, runs ``nvidia-smi`` there, and records each
  GPU and whether it is idle; a host that cannot be reached is marked so, with the error. It
  also checks that the workers started there are still alive, and frees the GPUs of those
  that are gone.
- The **autoscaler** looks at the queued runs that could start now. A run already covered by
  an idle worker the autoscaler started is left to it; otherwise the autoscaler reserves free
  GPUs on a reachable, enabled host whose labels satisfy the run (one transaction, so never
  twice the same GPU) and starts ``relay worker`` there over SSH, pinned to those GPUs with
  ``CUDA_VISIBLE_DEVICES``. A worker that does not register in time is stopped.
- With the GPUs left, it keeps ``rollout.workers`` rollout workers for each running run whose
  rollout manager is served now (DESIGN §11): ``relay rollout-worker --run RUN_ID`` with the
  rollout token, on hosts whose labels satisfy ``rollout.labels``, counting the ones it started
  for the run and the others the run's manager reports. When the run ends they are stopped and
  their GPUs freed.

Both reach the hosts through one narrow interface, :class:`HostAccess` (over SSH:
:class:`relaytrain.providers.ssh.SshHostAccess`, made in one place, :func:`_access`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from relaytrain.api.labels import labels_match
from relaytrain.api.status import WorkerRole
from relaytrain.errors import ProviderError
from relaytrain.providers.base import RolloutLaunch

from .store import Store

log = logging.getLogger(__name__)


class HostAccess(Protocol):
    """What the commander does on a host (a record of its store). Errors are ProviderError."""

    async def poll(self, host: Mapping[str, Any], pids: list[int]) -> dict[str, Any]:
        """``{"gpus": GPU dicts with "idle", or None when unreachable; "error"; "alive": live pids}``."""
        ...

    def start_worker(self, host: Mapping[str, Any], *, worker_id: str, gpus: list[int], commander_url: str,
                     token: str | None, claim_wait_s: float | None,
                     rollout: RolloutLaunch | None = None, ca_cert: str | None = None) -> dict[str, Any]:
        """Start a worker (a rollout worker when ``rollout`` is set) pinned to ``gpus``, verifying the
        commander with ``ca_cert`` (copied there); its handle (``pid``, files)."""
        ...

    def stop_worker(self, host: Mapping[str, Any], assignment: Mapping[str, Any]) -> None:
        ...


@dataclass
class HostsSettings:
    """How the commander polls its hosts and starts workers on them."""

    commander_url: str
    """URL the workers started over SSH use to reach this commander."""
    worker_token: str | None = None
    """Worker-scope token for those workers; None when the API is open."""
    rollout_token: str | None = None
    """Rollout-scope token for the rollout workers it starts; None when the API is open."""
    ca_cert: str | None = None
    """CA certificate (a file here) the workers it starts verify ``commander_url`` with; None: the public CAs."""
    poll_interval_s: float = 30.0
    """Seconds between two polls of every host."""
    scale_interval_s: float = 5.0
    """Seconds between two looks at the queue by the autoscaler."""
    autoscale: bool = True
    """Start workers for queued runs (else only poll)."""
    connect_timeout_s: float = 10.0
    command_timeout_s: float = 60.0
    min_gpus_per_worker: int = 1
    """A worker started by the autoscaler holds at least this many GPUs (runs that ask for none too)."""
    register_timeout_s: float = 180.0
    """A started worker not registered after this long is stopped and its GPUs freed."""
    claim_wait_s: float | None = None
    access: HostAccess | None = None
    """How hosts are reached; None: over SSH, with the timeouts above."""


def _access(settings: HostsSettings) -> HostAccess:
    if settings.access is None:
        from relaytrain.providers.ssh import SshHostAccess

        settings.access = SshHostAccess(connect_timeout_s=settings.connect_timeout_s,
                                        command_timeout_s=settings.command_timeout_s)
    return settings.access


# -- the poller --------------------------------------------------------------------------------


async def poll_host(store: Store, host: dict[str, Any], settings: HostsSettings) -> dict[str, Any]:
    """Poll one host and record the result; never raises for an unreachable or odd host."""
    name = host["name"]
    pids = sorted({a["pid"] for a in host["assignments"] if a.get("pid")})
    polled = await _access(settings).poll(host, pids)
    if polled["gpus"] is None:
        log.warning("host %s unreachable: %s", name, polled["error"])
        await asyncio.to_thread(store.record_poll, name, gpus=None, error=polled["error"])
        return {"host": name, "reachable": False, "error": polled["error"]}
    gone = await asyncio.to_thread(store.record_poll, name, gpus=polled["gpus"], error=polled["error"],
                                   checked_pids=set(pids), alive_pids=polled["alive"])
    for worker in gone:
        log.info("worker %s on %s is gone; GPUs %s are free again", worker["worker_id"], name, worker["gpus"])
    return {"host": name, "reachable": True, "gpus": len(polled["gpus"]), "error": polled["error"]}


async def poll_once(store: Store, settings: HostsSettings) -> list[dict[str, Any]]:
    """Poll every host concurrently."""
    hosts = await asyncio.to_thread(store.list_hosts)
    return list(await asyncio.gather(*(poll_host(store, h, settings) for h in hosts)))


# -- the autoscaler ----------------------------------------------------------------------------


async def _reap_unregistered(store: Store, hosts: list[dict[str, Any]], activity: dict[str, str],
                             settings: HostsSettings, now: float) -> None:
    """Stop workers that never registered, and free their GPUs."""
    for host in hosts:
        for a in host["assignments"]:
            since = a.get("started_at") or a["reserved_at"]
            if activity.get(a["worker_id"]) != "absent" or now - since < settings.register_timeout_s:
                continue
            error = (f"worker {a['worker_id']} did not register within {settings.register_timeout_s:.0f}s"
                     + (f"; see {a['log_path']} on {host['name']}" if a.get("log_path") else ""))
            log.warning("%s: stopping it", error)
            if a.get("pid"):
                with contextlib.suppress(ProviderError):
                    await asyncio.to_thread(_access(settings).stop_worker, host, a)
            await asyncio.to_thread(store.release_gpus, host["name"], a["worker_id"], error=error)


async def _start_on(store: Store, settings: HostsSettings, host: dict[str, Any], gpus: list[int], *, run_id: str,
                    rollout: RolloutLaunch | None = None) -> dict[str, Any] | None:
    """Reserve ``gpus`` of ``host`` and start a worker (a rollout worker with ``rollout``) there;
    what was started, or None (the GPUs were taken meanwhile, or the start failed: GPUs freed)."""
    role = WorkerRole.ROLLOUT if rollout is not None else WorkerRole.WORKER
    kind = "-rollout" if rollout is not None else ""
    worker_id = f"{host['name']}{kind}-gpu{'_'.join(map(str, gpus))}-{secrets.token_hex(3)}"
    if not await asyncio.to_thread(store.reserve_gpus, host["name"], worker_id=worker_id, gpus=gpus,
                                   run_id=run_id, role=role):
        return None  # taken meanwhile (another replica)
    host["free_gpus"] = [g for g in host["free_gpus"] if g not in gpus]
    try:
        handle = await asyncio.to_thread(
            _access(settings).start_worker, host, worker_id=worker_id, gpus=gpus,
            commander_url=settings.commander_url,
            token=settings.rollout_token if rollout is not None else settings.worker_token,
            claim_wait_s=None if rollout is not None else settings.claim_wait_s, rollout=rollout,
            ca_cert=settings.ca_cert)
    except ProviderError as exc:
        log.warning("cannot start a %s on %s: %s", role.value, host["name"], exc)
        await asyncio.to_thread(store.release_gpus, host["name"], worker_id, error=str(exc))
        return None
    await asyncio.to_thread(store.assign_worker, host["name"], worker_id, handle)
    log.info("started %s %s on %s (GPUs %s) for %s", role.value, worker_id, host["name"], gpus, run_id)
    return {"host": host["name"], "worker_id": worker_id, "gpus": gpus, "run_id": run_id, "pid": handle["pid"],
            "role": role.value}


def _can_start(host: Mapping[str, Any], need: int, labels: Mapping[str, str] | None) -> bool:
    return bool(host["enabled"] and host["reachable"] and len(host["free_gpus"]) >= need
                and labels_match(dict(labels or {}), host["labels"]))


def _role(assignment: Mapping[str, Any]) -> WorkerRole:
    return WorkerRole(assignment.get("role", WorkerRole.WORKER))


async def _scale_queue(store: Store, settings: HostsSettings, hosts: list[dict[str, Any]],
                       activity: dict[str, str], now: float) -> list[dict[str, Any]]:
    """Start the workers the queued runs need now."""
    demand = await asyncio.to_thread(store.gpu_demand, now=now)
    # Workers that will claim a queued run soon: idle or starting, on a host we can still reach.
    spare = [(h, a) for h in hosts if h["reachable"] for a in h["assignments"]
             if _role(a) == WorkerRole.WORKER and activity.get(a["worker_id"], "absent") != "busy"]
    started = []
    for run in demand:
        cover = next((i for i, (h, a) in enumerate(spare)
                      if len(a["gpus"]) >= run["gpus"] and labels_match(run["labels"] or {}, h["labels"])), None)
        if cover is not None:
            spare.pop(cover)  # an idle or starting worker will claim it
            continue
        need = max(run["gpus"], settings.min_gpus_per_worker)
        for host in hosts:
            if _can_start(host, need, run["labels"]) and \
                    (done := await _start_on(store, settings, host, host["free_gpus"][:need], run_id=run["run_id"])):
                started.append(done)
                break
    return started


async def _stop_ended_rollout(store: Store, settings: HostsSettings, hosts: list[dict[str, Any]]) -> None:
    """Stop the rollout workers whose run ended (a rollout worker with ``--run`` would wait for it
    forever) and free their GPUs; one on a host that cannot be reached now is tried again later."""
    mine = [(h, a) for h in hosts for a in h["assignments"] if _role(a) == WorkerRole.ROLLOUT]
    ended = await asyncio.to_thread(store.ended_runs, sorted({a["run_id"] for _, a in mine}))
    for host, a in mine:
        if a["run_id"] not in ended:
            continue
        if a.get("pid"):
            try:
                await asyncio.to_thread(_access(settings).stop_worker, host, a)
            except ProviderError as exc:
                log.warning("cannot stop rollout worker %s on %s yet: %s", a["worker_id"], host["name"], exc)
                continue
        log.info("run %s ended: rollout worker %s on %s stopped", a["run_id"], a["worker_id"], host["name"])
        await asyncio.to_thread(store.release_gpus, host["name"], a["worker_id"], error=None)


async def _scale_rollout(store: Store, settings: HostsSettings, hosts: list[dict[str, Any]],
                         now: float) -> list[dict[str, Any]]:
    """Start the rollout workers the running runs still lack (``rollout.workers``, less the ones
    started here for the run and the others its manager reports), on the GPUs left."""
    started = []
    need = settings.min_gpus_per_worker
    for run in await asyncio.to_thread(store.rollout_autoscale_demand, now=now):
        ours = {a["worker_id"] for h in hosts for a in h["assignments"]
                if _role(a) == WorkerRole.ROLLOUT and a["run_id"] == run["run_id"]}
        short = run["workers"] - len(ours | set(run["pool"]))
        for host in hosts:
            while short > 0 and _can_start(host, need, run["labels"]):
                done = await _start_on(store, settings, host, host["free_gpus"][:need], run_id=run["run_id"],
                                       rollout=RolloutLaunch(run_id=run["run_id"]))
                if done is None:
                    break  # this host failed or was taken: try the next
                started.append(done)
                short -= 1
    return started


async def scale_once(store: Store, settings: HostsSettings, *, now: float | None = None) -> list[dict[str, Any]]:
    """Start the workers the queue needs now, then the rollout workers running runs want; returns
    ``{host, worker_id, gpus, run_id, pid, role}`` of each."""
    now = await asyncio.to_thread(store.now) if now is None else now  # the clock the store dates by
    hosts = await asyncio.to_thread(store.list_hosts)
    ids = [a["worker_id"] for h in hosts for a in h["assignments"]]
    activity = await asyncio.to_thread(store.worker_activity, ids)
    await _reap_unregistered(store, hosts, activity, settings, now)
    await _stop_ended_rollout(store, settings, await asyncio.to_thread(store.list_hosts))
    hosts = await asyncio.to_thread(store.list_hosts)
    started = await _scale_queue(store, settings, hosts, activity, now)
    return started + await _scale_rollout(store, settings, hosts, now)


# -- background tasks --------------------------------------------------------------------------


async def _every(interval_s: float, what: str, step: Callable[[], Awaitable[Any]]) -> None:
    """Run ``step`` every ``interval_s``; an error is logged and the loop goes on (never dies silently)."""
    while True:
        try:
            await step()
        except Exception:  # a database or SSH hiccup must not end the loop; it is logged and retried
            log.exception("%s failed; retrying in %.1f s", what, interval_s)
        await asyncio.sleep(interval_s)


async def run_poller(store: Store, settings: HostsSettings) -> None:
    """Poll every host every ``poll_interval_s``, forever (cancel the task to stop)."""
    await _every(settings.poll_interval_s, "GPU poll", lambda: poll_once(store, settings))


async def run_autoscaler(store: Store, settings: HostsSettings) -> None:
    """Start the workers the queue needs every ``scale_interval_s``, forever (cancel the task to stop)."""
    await _every(settings.scale_interval_s, "autoscaler", lambda: scale_once(store, settings))


def start_host_tasks(store: Store, settings: HostsSettings) -> list[asyncio.Task]:
    """The poller (and, when enabled, the autoscaler) as tasks of the running event loop."""
    tasks = [asyncio.create_task(run_poller(store, settings), name="gpu-poller")]
    if settings.autoscale:
        tasks.append(asyncio.create_task(run_autoscaler(store, settings), name="autoscaler"))
    return tasks


async def stop_host_tasks(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def serve_settings(store: Store, *, public_url: str, admin_token: str | None, poll_interval_s: float,
                   autoscale: bool, ca_cert: str | None = None) -> HostsSettings:
    """Settings for ``relay serve --poll-hosts``: the workers it starts get a fresh worker token, and
    the rollout workers a fresh rollout token, when the API needs one (only a token's hash is
    stored, so each start of the commander makes new ones). ProviderError at once when asyncssh is
    missing."""
    settings = HostsSettings(commander_url=public_url.rstrip("/"), poll_interval_s=poll_interval_s,
                             scale_interval_s=min(5.0, poll_interval_s), autoscale=autoscale, ca_cert=ca_cert)
    _access(settings)
    settings.worker_token = store.create_token("autoscaler", "worker") if admin_token else None
    settings.rollout_token = store.create_token("autoscaler-rollout", "rollout") if admin_token else None
    return settings

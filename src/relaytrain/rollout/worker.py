"""The rollout worker (``relay rollout-worker``): asks the commander where a run's rollout manager
is, pulls its weights, and generates the prompt groups it leases until it is stopped.

The loop, for one manager (a *session*)::

    commander: rollout_endpoint(run) -> url, secret
    manager:   info -> build the engine; POST workers; pull weights v
    repeat:    lease groups at v -> generate -> post results
               (409 on lease: v is too stale -> pull the latest; 409 on a result: late -> dropped)
               latest_version > v -> pull the latest in the background, swap between batches

Anything that says the manager is gone — unreachable, 401 (a new secret), 404 for this worker,
503 — ends the session: the worker asks the commander again, with backoff, and follows the run to
wherever it is now (a run handed to another machine has a new manager, URL and secret). A run the
commander no longer lists is left for another (or, with ``--run``, waited for).

A background thread heartbeats the manager every ``heartbeat_s`` (the version held, tokens/s) and
registers with the commander every ``register_every_s`` (the run served); a failed manager
heartbeat ends the session like any other sign the manager is gone.

SIGTERM or SIGINT: the batch in hand is finished and posted (groups not yet generated are
released), the worker unregisters from the manager (``DELETE workers/{id}``) and exits 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from relaytrain.errors import RelayError, TlsError
from relaytrain.rollout.manager_client import STREAMS, ManagerClient, ManagerGone, PulledWeights, Refused
from relaytrain.rollout.protocol import (
    Completion,
    GroupLease,
    GroupResult,
    LeaseRequest,
    ManagerInfo,
    RegisterWorker,
    ReleaseGroup,
    WorkerHeartbeat,
)

log = logging.getLogger(__name__)


@dataclass
class RolloutWorkerSettings:
    worker_id: str
    run_id: str | None = None
    """Serve only this run; else the first run the commander lists whose labels this worker offers."""
    labels: dict[str, str] = field(default_factory=dict)
    threads: int = 1
    max_groups: int = 4
    """The most groups leased (and generated as one batch) at a time; fewer when the trainer's pace
    would make that many stale before they are posted (:class:`Pace`)."""
    streams: int = STREAMS
    """Parallel connections of a weight pull."""
    device: str | None = None
    register_every_s: float = 10.0
    poll_s: float = 1.0
    """Wait between leases while the manager has no group to hand out."""
    backoff_max_s: float = 30.0


class Directory(Protocol):
    """Where rollout workers learn which runs want them and where their managers are: the commander
    (:class:`CommanderDirectory`)."""

    def runs(self) -> list[Any]:
        """Runs taking rollout workers (``RolloutRun``: ``run_id``, ``labels``), neediest first."""

    def endpoint(self, run_id: str) -> Any | None:
        """The run's manager now (``RolloutEndpoint``: ``url``, ``secret``), None while it has none."""

    def register(self, worker_id: str, labels: dict[str, str], run_id: str | None) -> None:
        """Say this worker exists and which run it serves (called again as a heartbeat)."""


class CommanderDirectory:
    """The commander's rollout endpoints, through :class:`relaytrain.api.client.RelayClient`."""

    def __init__(self, commander: str, token: str | None, ca_cert: str | Path | None = None) -> None:
        from relaytrain.api.client import RelayClient

        self.client = RelayClient(commander, token, timeout_s=10, retries=2, ca_cert=ca_cert)

    def runs(self) -> list[Any]:
        return self.client.rollout_runs()

    def endpoint(self, run_id: str) -> Any | None:
        from relaytrain.errors import NotFound

        try:
            return self.client.rollout_endpoint(run_id)
        except NotFound:
            return None

    def register(self, worker_id: str, labels: dict[str, str], run_id: str | None) -> None:
        from relaytrain.api.rollout import RegisterRolloutWorker

        self.client.register_rollout_worker(RegisterRolloutWorker(worker_id=worker_id, labels=labels, run_id=run_id))


class RolloutWorker:
    """One rollout worker. ``engine_factory()`` builds an :class:`~relaytrain.rollout.engine.Engine`
    (default: a ``TorchEngine`` on ``settings.threads`` threads)."""

    def __init__(self, settings: RolloutWorkerSettings, directory: Directory,
                 engine_factory: Callable[[], Any] | None = None) -> None:
        self.settings = settings
        self.directory = directory
        self._engine_factory = engine_factory or self._torch_engine
        self._engine: Any = None
        self._spec: Any = None
        self._stopping = threading.Event()
        self._run_id: str | None = None
        self._waiting = False
        """Said once that the run has no manager now (not at every poll)."""
        self.stats = {"groups_posted": 0, "groups_refused": 0, "groups_released": 0, "pulls": 0, "sessions": 0}

    def _torch_engine(self) -> Any:
        from relaytrain.rollout.engine import TorchEngine

        return TorchEngine(threads=self.settings.threads, device=self.settings.device)

    def stop(self, why: str = "asked to stop") -> None:
        """Finish the batch in hand, post it, unregister, and return from ``run``."""
        if not self._stopping.is_set():
            log.warning("stopping (%s): finishing the batch in hand", why)
        self._stopping.set()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stop(f"received {signal.Signals(signum).name}")

    # -- the outer loop: which run, which manager ------------------------------------------

    def run(self) -> int:
        """Serve runs until stopped. Returns the exit code (0)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        s = self.settings
        beat = threading.Thread(target=self._register_loop, name="rollout-register", daemon=True)
        beat.start()
        log.info("rollout worker %s started (%d threads, up to %d groups a batch%s)", s.worker_id, s.threads,
                 s.max_groups, f", run {s.run_id}" if s.run_id else "")
        backoff = 0.0
        while not self._stopping.is_set():
            if backoff:
                self._stopping.wait(backoff)
                if self._stopping.is_set():
                    break
            try:
                served = self._serve_next()
                # nothing to serve yet (no run, or its manager not announced: a hand-off in progress):
                # ask again soon, at a steady pace, to reach the heir's manager as soon as it is up
                backoff = 0.0 if served else s.poll_s
            except ManagerGone as exc:
                log.warning("run %s: %s; asking the commander where its manager is", self._run_id, exc)
                backoff = s.poll_s
            except TlsError:  # the commander's certificate cannot be trusted: no wait fixes that
                self._stopping.set()
                raise
            except RelayError as exc:  # the commander is down or refused: back off
                log.warning("%s; retrying", exc)
                backoff = min(s.backoff_max_s, max(s.poll_s, backoff * 2 or s.poll_s))
        self._run_id = None
        log.info("rollout worker %s stopped: %s", s.worker_id, self.stats)
        return 0

    def _serve_next(self) -> bool:
        """Find a run and its manager and serve it until the session ends. False: nothing to serve now."""
        run_id = self._pick_run()
        if run_id is None:
            return False
        endpoint = self.directory.endpoint(run_id)
        if endpoint is None:
            if not self._waiting:
                log.info("run %s has no rollout manager now; waiting for one", run_id)
            self._waiting = True
            return False
        self._waiting = False
        if self._run_id != run_id:
            self._run_id = run_id
            self._register_once()
        with ManagerClient(endpoint.url, endpoint.secret) as manager:
            Session(self, manager, run_id).serve()
        return True

    def _pick_run(self) -> str | None:
        if self.settings.run_id is not None:
            return self.settings.run_id
        offered = self.settings.labels
        for run in self.directory.runs():
            if all(offered.get(k) == v for k, v in run.labels.items()):
                return run.run_id
        return None

    def _register_loop(self) -> None:
        while True:
            self._register_once()
            if self._stopping.wait(self.settings.register_every_s):
                return

    def _register_once(self) -> None:
        try:
            self.directory.register(self.settings.worker_id, self.settings.labels, self._run_id)
        except RelayError as exc:
            log.warning("registering with the commander failed: %s", exc)

    def engine_for(self, info: ManagerInfo) -> Any:
        """The engine built for ``info.model`` (kept across managers of the same model)."""
        if self._engine is None or self._spec != info.model:
            started = time.monotonic()
            engine = self._engine_factory()
            engine.load(info.model)
            self._engine, self._spec = engine, info.model
            log.info("built the %s model in %.1f s", info.model.config.get("model_type"), time.monotonic() - started)
        return self._engine


class Session:
    """Serving one manager: register, pull weights, lease-generate-post until the manager is gone
    (``ManagerGone`` propagates) or the worker stops (unregisters, returns)."""

    def __init__(self, worker: RolloutWorker, manager: ManagerClient, run_id: str) -> None:
        self.worker = worker
        self.settings = worker.settings
        self.manager = manager
        self.run_id = run_id
        self.tokens_per_s = 0.0
        self._version: int | None = None
        self._gone: BaseException | None = None
        self._puller = ThreadPoolExecutor(1, "rollout-pull")
        self._pull: Future[tuple[PulledWeights, Any]] | None = None
        self._held: bytearray | None = None  # the buffer of the version the engine holds (it may keep views of it)
        self._spare: bytearray | None = None  # the buffer of the version before: the next pull reuses it
        self._ended = threading.Event()
        self.pace = Pace()

    def serve(self) -> None:
        s = self.settings
        info = self.manager.info()
        self.engine = self.worker.engine_for(info)
        self.info = info
        self.episodes: Any = None
        """An ``EpisodeRunner`` when the run plays episodes (``env:`` or ``rollout.generate``)."""
        if info.plays_episodes:
            self.episodes = episode_runner(info, self.engine, lambda: self._version)
            log.info("run %s plays episodes: %s", self.run_id,
                     ", ".join(self.episodes.pool.urls) if self.episodes.pool is not None else info.generate)
        registered = self.manager.register(RegisterWorker(worker_id=s.worker_id, threads=s.threads, labels=s.labels))
        self.worker.stats["sessions"] += 1
        log.info("registered with the rollout manager of run %s (epoch %d) at %s", self.run_id, info.epoch,
                 self.manager.url)
        beat = threading.Thread(target=self._heartbeat, args=(registered.heartbeat_s,), name="rollout-heartbeat",
                                daemon=True)
        beat.start()
        try:
            if self._wait_for_weights(registered.version):
                self._swap(self._pull_now())
            while not self.worker._stopping.is_set():
                self._check_alive()
                self._step()
            self._goodbye()
        finally:
            self._ended.set()
            self._puller.shutdown(wait=False, cancel_futures=True)
            if self.episodes is not None:
                self.episodes.close()

    def _step(self) -> None:
        """One lease → generate → post, or a wait when there is nothing to do."""
        self._swap_if_ready()
        assert self._version is not None
        if self.pace.latest is not None and self.pace.latest - self._version >= max(self.info.max_staleness, 1):
            # no headroom left: whatever we sampled now would be too stale once posted
            self._swap(self._pull_now())
        count = self.pace.lease_size(self._version, self.info.max_staleness, self.settings.max_groups)
        try:
            lease = self.manager.lease(LeaseRequest(worker_id=self.settings.worker_id, version=self._version,
                                                    max_groups=count))
        except Refused as exc:  # our version is too stale to be handed work
            log.info("lease refused (%s): pulling the latest weights", exc)
            self._swap(self._pull_now())
            return
        if lease.latest_version is not None:
            self.pace.saw_version(lease.latest_version, time.monotonic())
            if lease.latest_version > self._version:
                self._pull_in_background()
        if not lease.groups:
            if lease.finished:
                log.debug("run %s: every group is handed out; waiting", self.run_id)
            self.worker._stopping.wait(self.settings.poll_s)
            return
        self._generate_and_post(lease.groups)

    def _generate_and_post(self, groups: list[GroupLease]) -> None:
        started = time.monotonic()
        try:
            if self.episodes is not None:
                completions = play_groups(self.episodes, groups, self.info, self._version)
            else:
                completions = self.engine.generate(groups, self.info.sampling, self._version)
        except BaseException:
            release_all(self.manager, self.settings.worker_id, groups)
            self.worker.stats["groups_released"] += len(groups)
            raise
        seconds = time.monotonic() - started
        self.pace.generated(len(groups), seconds)
        tokens = sum(len(c.token_ids) for group in completions for c in group)
        self.tokens_per_s = tokens / max(seconds, 1e-9)
        results = [(group.group_id, GroupResult(worker_id=self.settings.worker_id, attempt=group.attempt,
                                                version=self._version, completions=done,
                                                seconds=seconds / len(groups)))
                   for group, done in zip(groups, completions, strict=True)]
        accepted = 0
        for item in self.manager.post_results(results).items:  # one round trip for the batch
            if item.accepted:
                accepted += 1
                continue
            self.worker.stats["groups_refused"] += 1
            log.info("result of group %d dropped: %s", item.group_id, item.detail)
        self.worker.stats["groups_posted"] += accepted
        log.info("%d groups (%d tokens) with v%d in %.2f s, %.0f tokens/s; %d accepted", len(groups), tokens,
                 self._version, seconds, self.tokens_per_s, accepted)

    def _goodbye(self) -> None:
        try:
            self.manager.unregister(self.settings.worker_id)
            log.info("unregistered from the rollout manager of run %s", self.run_id)
        except RelayError as exc:
            log.warning("unregistering failed (its groups will be re-queued at their deadline): %s", exc)

    # -- weights ---------------------------------------------------------------------------

    def _wait_for_weights(self, version: int | None) -> bool:
        """Until the trainer has published a version (it does once a worker is attached). False: stopped."""
        while version is None:
            if self.worker._stopping.wait(self.settings.poll_s):
                return False
            self._check_alive()
            version = self.manager.info().version
        return True

    def _pull_now(self) -> tuple[PulledWeights, Any]:
        """The latest weights, decoded: the background pull in flight if there is one, else a new pull."""
        self._pull_in_background()
        assert self._pull is not None
        pull, self._pull = self._pull, None
        return pull.result()

    def _pull_in_background(self) -> None:
        if self._pull is None:
            spare, self._spare = self._spare, None  # handed to this pull only
            self._pull = self._puller.submit(self._pull_and_decode, spare)

    def _pull_and_decode(self, spare: bytearray | None) -> tuple[PulledWeights, Any]:
        from relaytrain.rollout.engine import load_tensors

        pulled = self.manager.pull_weights(streams=self.settings.streams, into=spare)
        return pulled, load_tensors(pulled.data)

    def _swap_if_ready(self) -> None:
        if self._pull is not None and self._pull.done():
            pull, self._pull = self._pull, None
            self._swap(pull.result())

    def _swap(self, pulled: tuple[PulledWeights, Any]) -> None:
        weights, tensors = pulled
        if self._version is not None and weights.version <= self._version:
            self._spare = weights.data  # never given to the engine
            return
        self.engine.set_weights(weights.version, tensors)
        # Two buffers alternate: the engine may keep views of the version it holds, never of the one
        # it replaced, so that one's buffer is what the next pull overwrites (no page faults again).
        self._spare, self._held = self._held, weights.data
        self._version = weights.version
        self.worker.stats["pulls"] += 1
        log.info("pulled weights v%d (%.1f MiB) in %.2f s (%.0f MiB/s)", weights.version, len(weights.data) / 2**20,
                 weights.seconds, weights.mb_per_s)

    # -- liveness ----------------------------------------------------------------------------

    def _heartbeat(self, every_s: float) -> None:
        while not self._ended.wait(every_s):
            try:
                self.manager.heartbeat(self.settings.worker_id,
                                       WorkerHeartbeat(version=self._version, tokens_per_s=self.tokens_per_s))
            except ManagerGone as exc:
                self._gone = exc
                return
            except RelayError as exc:
                log.warning("heartbeat to the rollout manager failed: %s", exc)

    def _check_alive(self) -> None:
        if self._gone is not None:
            raise ManagerGone(f"heartbeat: {self._gone}")


def episode_runner(info: ManagerInfo, engine: Any, version: Callable[[], int | None]) -> Any:
    """The episode loop of a run that plays episodes, on this worker: its own environments (the run's
    ``env``), the run's tokenizer, the engine's turns with the weights it holds (``version()``)."""
    import tempfile
    from pathlib import Path

    from transformers import AutoTokenizer

    from relaytrain.config import EnvConfig
    from relaytrain.train.episodes import EpisodeRunner

    with tempfile.TemporaryDirectory() as folder:
        for name, text in (info.tokenizer_files or {}).items():
            (Path(folder) / Path(name).name).write_text(text, encoding="utf-8")
        tokenizer = AutoTokenizer.from_pretrained(folder)

    def sample(contexts: list[list[int]], keys: list[int]) -> list[Any]:
        held = version()
        assert held is not None, "episodes played before weights were pulled"
        return engine.sample_turns(contexts, keys, info.sampling, held)

    env = EnvConfig.model_validate(info.env) if info.env is not None else None
    return EpisodeRunner(env, sample=sample, tokenizer=tokenizer, max_new_tokens=info.sampling.max_new_tokens,
                         max_length=engine.max_length, hook=info.generate)


def play_groups(runner: Any, groups: list[GroupLease], info: ManagerInfo, version: int) -> list[list[Completion]]:
    """Play the G episodes of each leased group, as the trainer would (same keys, same weights version):
    completions with the policy's mask and the environment's reward."""
    from relaytrain.train.episodes import PromptGroup

    tokenizer = runner.policy.tokenizer
    prompts = [PromptGroup(position=g.group_id, prompt=tokenizer.decode(g.prompt_ids, skip_special_tokens=True),
                           prompt_ids=list(g.prompt_ids), task=dict(g.task or {}),
                           num_generations=info.sampling.num_generations, step=version) for g in groups]
    played = runner.play_groups(prompts)
    return [[Completion(token_ids=e.token_ids, logps=e.logps, finished=e.done, action_mask=e.action_mask,
                        env_reward=e.reward) for e in episodes] for episodes in played]


class Pace:
    """How many groups to lease so they are posted before they go stale.

    A result sampled with version ``v`` is trained only while the trainer is at most
    ``max_staleness`` versions past ``v``. The worker measures how fast the trainer publishes
    versions (seconds per version, from the latest version each lease reports) and how fast it
    generates itself (seconds per group, from its batches), and leases the groups it can generate
    within the versions of headroom left (half a version when none is): a slow worker next to a
    fast trainer takes one group at a time instead of a batch that would be refused whole. Until
    both rates are known it leases ``max_groups``.
    """

    SMOOTHING = 0.3
    """Weight of the newest measurement in each moving average."""

    def __init__(self) -> None:
        self.latest: int | None = None
        self.seconds_per_version: float | None = None
        self.seconds_per_group: float | None = None
        self._since: tuple[int, float] | None = None  # (version, when it was first seen)

    def saw_version(self, latest: int, now: float) -> None:
        if self._since is not None and latest > self._since[0]:
            version, when = self._since
            self.seconds_per_version = _average(self.seconds_per_version, (now - when) / (latest - version))
        if self._since is None or latest > self._since[0]:
            self._since = (latest, now)
        self.latest = max(latest, self.latest or latest)

    def generated(self, groups: int, seconds: float) -> None:
        self.seconds_per_group = _average(self.seconds_per_group, seconds / max(groups, 1))

    def lease_size(self, version: int, max_staleness: int, max_groups: int) -> int:
        if self.seconds_per_version is None or self.seconds_per_group is None or self.latest is None:
            return max_groups
        headroom = max(max_staleness - (self.latest - version), 0.5)
        fits = int(headroom * self.seconds_per_version / max(self.seconds_per_group, 1e-9))
        return max(1, min(max_groups, fits))


def _average(old: float | None, new: float) -> float:
    return new if old is None else (1 - Pace.SMOOTHING) * old + Pace.SMOOTHING * new


def release_all(manager: ManagerClient, worker_id: str, groups: list[GroupLease]) -> None:
    """Hand ``groups`` back to the manager (re-queued at once)."""
    for group in groups:
        try:
            manager.release(group.group_id, ReleaseGroup(worker_id=worker_id, attempt=group.attempt))
        except RelayError as exc:
            log.warning("releasing group %d failed (re-queued at its deadline): %s", group.group_id, exc)

"""The GRPO trainer's side of the elastic rollout pool (DESIGN §11, docs/rollout.md).

With ``rollout:`` in the run file the trainer hosts a ``RolloutManager``: rollout workers lease
prompt groups from it, sample them with published weights and post them back; each step trains the
``prompts_per_step`` lowest ready groups, and when too few are ready the trainer samples the
lowest pending ones itself (with no worker attached it samples exactly the groups, with exactly the
seeds, of a run without ``rollout:``: same weights, bit for bit). Groups sampled more than
``max_staleness`` versions ago are regenerated, never trained. The book of groups is saved in every
checkpoint (``rollout_state.json``): ready-but-untrained groups are trained after a resume, groups in
flight are handed out again.

Public API: ``RolloutPool`` (``start``, ``next_groups``, ``next_batch``, ``after_step``, ``state_dict``,
``load_state_dict``, ``close``), ``groups_to_batch``, ``split_batch``, ``STATE_FILE``.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from relaytrain.rollout.manager import HEARTBEAT_S, RolloutManager
from relaytrain.rollout.protocol import ManagerInfo, ModelSpec, SamplingSettings
from relaytrain.rollout.queue import TRAINER, GroupBook, ReadyGroup

if TYPE_CHECKING:
    from relaytrain.train.grpo import GRPOSession

log = logging.getLogger(__name__)
STATE_FILE = "rollout_state.json"
"""The checkpoint entry holding the book of groups."""
ANNOUNCE_EVERY_S = 1.0
"""The pool view goes to the worker (and on to the commander) at most this often."""
WAIT_S = 0.2


def groups_to_batch(groups: list[ReadyGroup], prompt_ids: list[list[int]], num_generations: int, pad_id: int) -> Any:
    """A ``sampling.SampledBatch`` of ``groups`` (with their prompts), as ``sample_completions`` lays
    one out: prompts left-padded, completions right-padded with ``pad_id``, log-probs 0 on padding."""
    import torch

    from relaytrain.train.sampling import SampledBatch, left_pad

    rows = [(p, g, k) for p, g in zip(prompt_ids, groups, strict=True) for k in range(num_generations)]
    prompts, prompt_mask = left_pad([p for p, _, _ in rows], pad_id)
    width = max(len(g.token_ids[k]) for _, g, k in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    logps = torch.zeros((len(rows), width), dtype=torch.float32)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (_, group, k) in enumerate(rows):
        n = len(group.token_ids[k])
        ids[row, :n] = torch.tensor(group.token_ids[k], dtype=torch.long)
        logps[row, :n] = torch.tensor(group.logps[k], dtype=torch.float32)
        mask[row, :n] = 1
    truncated = torch.tensor([not group.finished[k] for _, group, k in rows], dtype=torch.bool)
    action = None
    if any(group.action_mask is not None for group in groups):  # episodes: the policy's tokens only
        action = torch.zeros((len(rows), width), dtype=torch.long)
        for row, (_, group, k) in enumerate(rows):
            assert group.action_mask is not None, f"group {group.group_id} is not an episode group"
            action[row, : len(group.action_mask[k])] = torch.tensor(group.action_mask[k], dtype=torch.long)
    return SampledBatch(prompt_ids=prompts, prompt_mask=prompt_mask, completion_ids=ids, completion_mask=mask,
                        truncated=truncated, sampling_logps=logps, num_generations=num_generations,
                        action_mask=action)


def split_batch(batch: Any, group_ids: list[int], version: int, source: str) -> list[ReadyGroup]:
    """The groups of a ``SampledBatch`` sampled for ``group_ids`` (rewards still empty)."""
    g = batch.num_generations
    lengths = batch.completion_lengths.tolist()
    groups = []
    for p, group_id in enumerate(group_ids):
        rows = range(p * g, p * g + g)
        groups.append(ReadyGroup(
            group_id=group_id, version=version, source=source,
            token_ids=[batch.completion_ids[r, : lengths[r]].tolist() for r in rows],
            logps=[batch.sampling_logps[r, : lengths[r]].tolist() for r in rows],
            finished=[not bool(batch.truncated[r]) for r in rows],
            rewards=[], per_function={},
            action_mask=None if batch.action_mask is None else [batch.action_mask[r, : lengths[r]].tolist()
                                                                for r in rows],
        ))
    return groups


def tokenizer_files(tokenizer: Any) -> dict[str, str]:
    """The tokenizer's files (``save_pretrained``) as text, for rollout workers that play episodes."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        files = {}
        for path in sorted(Path(folder).iterdir()):
            try:
                files[path.name] = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                log.warning("tokenizer file %s is not text: rollout workers do without it", path.name)
        return files


class RolloutPool:
    """The manager, the book of groups and the weight publisher of one GRPO session."""

    def __init__(self, session: GRPOSession) -> None:
        config = session.config.rollout
        assert config is not None
        self.session = session
        self.config = config
        trainer = session.config.trainer
        self.per_step = trainer.prompts_per_step
        self.book = GroupBook(session.max_steps * self.per_step, max_staleness=config.max_staleness,
                              lease_s=config.lease_s)
        model = session.model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        sampling = SamplingSettings(
            num_generations=trainer.num_generations, max_new_tokens=trainer.max_new_tokens,
            temperature=trainer.temperature, top_p=trainer.top_p, seed=trainer.seed,
            eos_token_id=session.tokenizer.eos_token_id, pad_token_id=session.pad_id,
            vocab_size=int(base.config.vocab_size),
        )
        lora = trainer.lora.model_dump(mode="json") if trainer.lora is not None else None
        episodes = session.config.plays_episodes
        env = session.config.env
        info = ManagerInfo(run_id=session.contract.run_id, epoch=session.contract.epoch, version=None,
                           max_staleness=config.max_staleness, lease_s=config.lease_s, heartbeat_s=HEARTBEAT_S,
                           sampling=sampling, model=ModelSpec(config=base.config.to_dict(), lora=lora),
                           groups_total=self.book.total,
                           env=env.model_dump(mode="json") if env is not None else None,
                           generate=config.generate, tokenizer_files=tokenizer_files(session.tokenizer) if episodes
                           else None)
        self.manager = RolloutManager(self.book, info=info, prompt_ids=self._prompt_ids, score=self._score,
                                      training_version=lambda: session.step,
                                      task=session.task if episodes else None)
        self._publisher = ThreadPoolExecutor(1, thread_name_prefix="rollout-publish")
        self._publishing: Future | None = None
        self._publish_lock = threading.Lock()
        self._announced = 0.0
        self._last_view: Any = None
        self.trainer_generated = 0
        self.worker_generated = 0

    # -- life -------------------------------------------------------------------------------

    def start(self) -> str:
        contract = self.session.contract
        advertise = contract.advertise_host or "127.0.0.1"
        url = self.manager.start(host="0.0.0.0", port=self.config.port, advertise=advertise)
        self.announce(force=True)
        return url

    def close(self) -> None:
        self.manager.stop()
        self._publisher.shutdown(wait=True)

    def announce(self, *, force: bool = False) -> None:
        """The manager's URL, secret, latest version and pool, as a ``rollout`` event line."""
        now = time.monotonic()
        if not force and now - self._announced < ANNOUNCE_EVERY_S:
            return
        view = (self.manager.weights.latest, self.manager.pool_view())
        key = (view[0], [(w["worker_id"], w["version"], w["groups_in_flight"], w["groups_done"]) for w in view[1]])
        if not force and key == self._last_view and not view[1]:  # with workers attached: every second (last seen)
            return
        self._announced, self._last_view = now, key
        from relaytrain.contract import ROLLOUT_EVENT

        self.session.contract.report_event(ROLLOUT_EVENT, url=self.manager.url, secret=self.manager.secret,
                                           version=view[0], pool=view[1])

    # -- groups -----------------------------------------------------------------------------

    def _prompt_ids(self, group_id: int) -> list[int]:
        return self.session.prompt_ids[self.session.cursor.index_at(group_id)]

    def _score(self, group_id: int, token_ids: list[list[int]],
               env_rewards: list[float | None] | None = None) -> tuple[list[float | None], dict[str, list]]:
        if env_rewards is not None:  # an episode group: the environment's reward, and the run's functions
            scores = self.session.score_episodes([group_id], token_ids, env_rewards)
        else:
            scores = self.session.score_groups([group_id], token_ids)
        return scores.total, scores.per_function

    def next_groups(self) -> tuple[list[ReadyGroup], list[ReadyGroup]]:
        """The groups of the next step, lowest id first, and the stale ones dropped on the way.

        Ready groups first; the trainer samples the shortfall itself from the lowest pending
        groups, in one batch; when none is pending (all handed out) it waits for results or re-queues."""
        session, version = self.session, self.session.step
        chosen, stale = self.book.take_ready(self.per_step, version=version)
        while len(chosen) < self.per_step:
            # the whole shortfall in one batch: sampling costs about one decoding loop whatever the batch
            own = self.book.lease(TRAINER, self.per_step - len(chosen), version=version, latest=None,
                                  now=time.monotonic())
            if own:
                groups = session.generate_groups([g for g, _ in own])
                self.book.finish_own([g for g, _ in own])
                self.trainer_generated += len(groups)
                chosen += groups
            else:  # every remaining group is in a worker's hands: wait for a result or a re-queue
                self.book.wait(WAIT_S)
                self.after_wait()
            more, dropped = self.book.take_ready(self.per_step - len(chosen), version=version)
            chosen, stale = chosen + more, stale + dropped
        self.worker_generated += sum(1 for g in chosen if g.source != TRAINER)
        chosen.sort(key=lambda g: g.group_id)
        self.book.mark_trained(g.group_id for g in chosen)
        return chosen, stale

    def next_batch(self) -> tuple[Any, list[int], Any, list[ReadyGroup], list[ReadyGroup]]:
        """The next step's batch (``next_groups``) as the trainer takes it: batch, example indices,
        ``RewardScores``, groups, stale ones. Advances the session's data cursor (it counts epochs)."""
        from relaytrain.train.rewards import RewardScores

        session = self.session
        groups, stale = self.next_groups()
        session.cursor.next_indices(self.per_step)
        indices = [session.cursor.index_at(group.group_id) for group in groups]
        batch = groups_to_batch(groups, [session.prompt_ids[i] for i in indices],
                                session.config.trainer.num_generations, session.pad_id)
        names = list(groups[0].per_function)
        scores = RewardScores(per_function={n: [v for gr in groups for v in gr.per_function[n]] for n in names},
                              total=[r for gr in groups for r in gr.rewards])
        return batch, indices, scores, groups, stale

    def after_wait(self) -> None:
        """While waiting for groups: publish weights if a worker needs them, announce the pool."""
        self.publish()
        self.announce()

    # -- weights ----------------------------------------------------------------------------

    def publish(self, *, force: bool = False) -> None:
        """Publish the policy's weights as version ``step`` when a worker is attached and the step is
        a sync step (or nothing was published yet). The tensors are copied here, between steps;
        serialising and hashing run in a background thread."""
        step = self.session.step
        latest = self.manager.weights.latest
        if not self.manager.wants_weights and not force:
            return
        if latest == step or (latest is not None and step % self.config.sync_every and not force):
            return
        with self._publish_lock:
            if self._publishing is not None and not self._publishing.done():
                return  # the previous version is still being serialised; the next sync step catches up
            tensors = self.session.weights_snapshot()
            self._publishing = self._publisher.submit(self._serialise, step, tensors)

    def _serialise(self, version: int, tensors: dict[str, Any]) -> None:
        from safetensors.torch import save

        try:
            self.manager.publish_weights(version, save(tensors))
        except Exception:  # a thread's error would be lost otherwise
            log.exception("publishing weights v%d failed", version)

    # -- metrics and state ------------------------------------------------------------------

    def metrics(self, groups: list[ReadyGroup], stale: list[ReadyGroup], version: int) -> dict[str, float]:
        staleness = [version - g.version for g in groups]
        counters = self.book.counters
        return {
            "rollout/workers": float(len(self.manager.pool_view())),
            "rollout/staleness_mean": statistics.fmean(staleness),
            "rollout/staleness_max": float(max(staleness)),
            "rollout/groups_requeued": float(counters.requeued),
            "rollout/dropped_stale": float(counters.dropped_stale),
            "rollout/trainer_generated": float(self.trainer_generated),
            "rollout/worker_generated": float(self.worker_generated),
            "rollout/step_trainer_groups": float(sum(1 for g in groups if g.source == TRAINER)),
            "rollout/step_worker_groups": float(sum(1 for g in groups if g.source != TRAINER)),
            "rollout/version": float(self.manager.weights.latest if self.manager.weights.latest is not None else -1),
        }

    def state_dict(self) -> dict[str, Any]:
        state = self.book.state_dict()
        state["trainer_generated"] = self.trainer_generated
        state["worker_generated"] = self.worker_generated
        return state

    def load_state_dict(self, state: dict[str, Any] | None, step: int) -> None:
        """Restore the book; a checkpoint written without a pool trained the first ``step`` groups of each step."""
        if state is None:
            state = {"format": 1, "total": self.book.total, "trained": [[0, step * self.per_step]] if step else [],
                     "ready": [], "counters": {}}
        self.book.load_state_dict(state)
        self.trainer_generated = int(state.get("trainer_generated", 0))
        self.worker_generated = int(state.get("worker_generated", 0))

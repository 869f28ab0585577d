"""The built-in GRPO trainer: sample G completions per prompt, score, normalise in groups, optimise.

Usage (the worker and ``python -m relaytrain.train grpo`` do this for you)::

    from relaytrain.config import GRPORun
    from relaytrain.contract import Contract
    from relaytrain.train.grpo import run_grpo
    config = GRPORun(run_id="arith-rl", kind="grpo", max_steps=200)
    contract = Contract.local("runs/arith-rl/checkpoints", init_from="runs/arith/checkpoints/step_00000400")
    exit_code = run_grpo(config, contract)

One step: take ``prompts_per_step`` prompts from the data cursor, sample ``num_generations``
completions of each with the current policy (``sampling.sample_completions``, seeded per
completion by ``(seed, step, prompt position in the data stream, sample index)``), score them with
the reward functions (``rewards``), turn the scores into group-relative advantages and take
``num_iterations`` optimizer steps on the clipped objective (``grpo_loss``), with an optional k3
KL penalty to the frozen initial policy (``beta > 0``; a LoRA run uses the base model with the
adapter disabled, a full run keeps a frozen copy, saved in the checkpoint as ``reference.safetensors``).

The checkpoint holds the model (or adapter), optimizer, scheduler, data cursor, RNG, step and the
sampler's seed, so resuming at step N and training to M gives the same weights and optimizer
state, bit for bit on CPU, as training straight to M — the completions sampled included.

On several ranks (``trainer.distributed.strategy: ddp`` or ``fsdp``) each rank samples its share of
the step's prompts and the loss is the one-process loss (``grpo_dist``).

Public API: ``run_grpo(config, contract) -> int``, ``GRPOSession`` (the training state:
``rollout()``, ``policy_logps()``, ``policy_loss()``, ``train_step()``, ``checkpoint_state()``,
``checkpoint_parts()``, ``load_checkpoint()``), ``Rollout``, ``write_trajectories``, ``config_hash``. The command line
(``python -m relaytrain.train grpo``) is in ``relaytrain.train.grpo_cli``.
"""

from __future__ import annotations

import copy as copy_module
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relaytrain.config import GRPORun, GRPOTrainer
from relaytrain.contract import Contract
from relaytrain.errors import CheckpointError, ConfigError
from relaytrain.train.data import DataCursor, Example, extra_columns, load_examples
from relaytrain.train.distributed import clip_grad_norm
from relaytrain.train.grpo_report import reward_labels, step_metrics, write_trajectories
from relaytrain.train.model_io import is_lora, load_model_weights, unique_tensors
from relaytrain.train.rewards import load_rewards, score_completions
from relaytrain.train.session import (
    checkpoint_entries,
    config_hash,
    init_source,
    load_policy,
    load_verified,
    make_optimizer,
    make_scheduler,
    pad_token_id,
    restore,
)
from relaytrain.train.templates import Sample, render_all

__all__ = ["GRPOSession", "Rollout", "config_hash", "run_grpo", "write_trajectories"]

log = logging.getLogger(__name__)
MAX_GRAD_NORM = 1.0
"""Gradients are clipped to this global norm before every optimizer step."""
REFERENCE_FILE = "reference.safetensors"
ENV_REWARD = "env"
"""The environment's reward among the per-function rewards (``rewards/env_mean`` in the metrics)."""
ENV_STATE = "env"
"""The environment counters in ``trainer_state.json``."""


@dataclass
class Rollout:
    """One step's prompts, sampled completions, rewards and advantages."""

    step: int
    """The training step this batch is for, counted from 1 as in progress lines and checkpoints (its
    completions are sampled with the 0-based ``step - 1``)."""
    examples: list[Example]
    samples: list[Sample]
    batch: Any
    """The ``sampling.SampledBatch``."""
    texts: list[str]
    """Decoded completions, grouped like the batch rows."""
    scores: Any
    """The ``rewards.RewardScores``."""
    advantages: Any
    """The ``grpo_loss.Advantages``."""
    mask: Any
    """(N, L) float mask of the tokens that count in the loss."""
    seconds: float
    groups: list[Any] | None = None
    """With a rollout pool: the step's ``rollout.queue.ReadyGroup`` (group id, version, source)."""
    stale: list[Any] | None = None
    """With a rollout pool: the groups found too stale on the way (regenerated, not trained)."""
    tasks: list[dict[str, Any]] | None = None
    """With ``env:``: each group's reset arguments."""


class GRPOSession:
    """Everything a resume needs: model, optimizer, scheduler, data cursor, step, RNG, sampler seed."""

    def __init__(self, config: GRPORun, contract: Contract) -> None:
        from relaytrain.config.distributed import plan_for
        from relaytrain.train.distributed import setup
        from relaytrain.train.grpo_dist import check_grpo_distributed
        from relaytrain.train.rng import seed_everything

        self.config, self.contract, trainer = config, contract, config.trainer
        self.max_steps = contract.max_steps or config.max_steps
        self.dist = setup(plan_for(config))
        self.device = self.dist.device
        check_grpo_distributed(self.dist, config)
        self.rewards = load_rewards(trainer.rewards)
        self.reward_labels = reward_labels([r.name for r in self.rewards])
        self.reward_labels[ENV_REWARD] = ENV_REWARD
        seed_everything(trainer.seed)
        self.resumed: dict[str, Any] | None = None
        """The verified content of ``contract.resume_from`` (loaded once, before the model)."""
        if contract.resume_from is not None:
            self.resumed = load_verified(contract.resume_from, "grpo")
        self.base_model = (
            self.resumed["trainer_state.json"]["base_model"] if self.resumed else init_source(config, contract)
        )
        self.model, self.tokenizer = self._load_model(trainer)
        self.reference = self._make_reference(trainer)
        self.model.train()
        if self.dist.sharded:  # FSDP2 shards in place, before the optimizer takes the parameters
            self.dist.wrap(self.model)
            if self.reference is not None:
                self.dist.wrap(self.reference)
        self.optimizer = make_optimizer(self.model, trainer.learning_rate, 0.0)
        self.scheduler = make_scheduler(self.optimizer, "constant", 0, self.max_steps * trainer.num_iterations)
        self.examples = self._load_examples(config)
        self.template = config.data.template if config.data is not None else "generic"
        self.samples = render_all(self.examples, self.template, self.tokenizer)
        self.prompt_ids = self._tokenize_prompts(self.samples)
        self.cursor = DataCursor(len(self.samples), config.data.seed if config.data is not None else trainer.seed)
        self.episodes: Any = None
        """The ``episodes.EpisodeRunner`` when the run has ``env:`` or a ``rollout.generate`` hook."""
        hook = config.rollout.generate if config.rollout is not None else None
        if config.env is not None or hook is not None:
            from relaytrain.train.episodes import EpisodeRunner

            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            self.episodes = EpisodeRunner(
                config.env, sample=self._sample_turns, tokenizer=self.tokenizer,
                max_new_tokens=trainer.max_new_tokens,
                max_length=int(getattr(base.config, "max_position_embeddings", None) or 1 << 30), hook=hook)
        self.step = 0
        self.tokens_generated = 0
        self.last_metrics: dict[str, Any] = {}
        self._tokenizer_cache: dict[str, Any] = {}
        self._scoring = threading.Lock()
        self.pool: Any = None
        """The ``grpo_pool.RolloutPool`` when the run file has ``rollout:``."""
        if config.rollout is not None:
            from relaytrain.train.grpo_pool import RolloutPool

            self.pool = RolloutPool(self)

    # -- set-up -----------------------------------------------------------------------------

    def _load_model(self, trainer: GRPOTrainer) -> tuple[Any, Any]:
        resume = self.contract.resume_from
        state = self.resumed["trainer_state.json"] if self.resumed is not None else {}
        if resume is not None and not state.get("lora") and not state.get("sharded"):
            # a verified full-weights checkpoint loads on its own: the init source need not be here
            return self._checked(*load_policy(str(resume), trainer))
        return self._checked(*load_policy(self.base_model, trainer))

    def _checked(self, model: Any, tokenizer: Any) -> tuple[Any, Any]:
        if tokenizer.eos_token_id is None:
            raise ConfigError("model: the tokenizer has no end-of-sequence token")
        return model.to(self.device), tokenizer

    @staticmethod
    def _load_examples(config: GRPORun) -> list[Example]:
        """The data's records; an ``env`` run without data has ``env.tasks`` blank ones (each task a reset seed)."""
        if config.data is not None:
            return load_examples(config.data, "train")
        assert config.env is not None
        return [Example(prompt="", completion="", answer="") for _ in range(config.env.tasks)]

    def _make_reference(self, trainer: GRPOTrainer) -> Any:
        """The frozen reference policy for the KL term: None when ``beta == 0`` or with LoRA."""
        if trainer.beta == 0 or is_lora(self.model):
            return None
        reference = copy_module.deepcopy(self.model)
        if self.resumed is not None:
            where = f"{self.contract.resume_from}/{REFERENCE_FILE}"
            if REFERENCE_FILE not in self.resumed:
                raise CheckpointError(f"{where}: missing, yet beta > 0")
            load_model_weights(reference, self.resumed[REFERENCE_FILE], where)
        reference.eval()
        for parameter in reference.parameters():
            parameter.requires_grad_(False)
        return reference

    def _tokenize_prompts(self, samples: list[Sample]) -> list[list[int]]:
        ids: list[list[int]] = [[] for _ in samples]
        for flag in (True, False):
            chosen = [i for i, s in enumerate(samples) if s.add_special_tokens is flag]
            if chosen:
                encoded = self.tokenizer([samples[i].prompt for i in chosen], add_special_tokens=flag)["input_ids"]
                for i, row in zip(chosen, encoded, strict=True):
                    ids[i] = list(row)
        return ids

    @property
    def pad_id(self) -> int:
        """The padding token (EOS when the tokenizer has none)."""
        return pad_token_id(self.tokenizer)

    # -- one step ---------------------------------------------------------------------------

    def sample(self, positions: list[int]) -> Any:
        """The ``SampledBatch`` of the prompts at ``positions`` of the data order, sampled with the
        current weights: completion ``k`` of position ``p`` draws the uniforms of
        ``(seed, step, p, k)``, wherever it is sampled (here or on a rollout worker)."""
        from relaytrain.train.grpo_dist import all_done
        from relaytrain.train.sampling import sample_completions

        trainer = self.config.trainer
        return sample_completions(
            self.model,
            [self.prompt_ids[self.cursor.index_at(p)] for p in positions],
            prompt_keys=positions,
            num_generations=trainer.num_generations,
            seed=trainer.seed,
            step=self.step,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.pad_id,
            max_new_tokens=trainer.max_new_tokens,
            temperature=trainer.temperature,
            top_p=trainer.top_p,
            all_done=all_done(self.dist),  # on FSDP every rank decodes until all have ended
        )

    def task(self, position: int) -> dict[str, Any]:
        """The reset arguments of the group at ``position``: the record's index as ``seed``, then the
        record's ``reset`` fields (a mapping), if any."""
        index = self.cursor.index_at(position)
        fields = self.examples[index].extra.get("reset") or {}
        if not isinstance(fields, dict):
            raise ConfigError(f"data: record {index}: 'reset' must be a mapping of reset arguments")
        return {"seed": index, **fields}

    def _sample_turns(self, contexts: list[list[int]], keys: list[int]) -> list[Any]:
        """One policy turn after each context (the episode loop's sampler), with the current weights."""
        from relaytrain.train.episodes import Turn
        from relaytrain.train.sampling import sample_completions

        trainer = self.config.trainer
        batch = sample_completions(self.model, contexts, prompt_keys=keys, num_generations=1, seed=trainer.seed,
                                   step=self.step, eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.pad_id,
                                   max_new_tokens=trainer.max_new_tokens, temperature=trainer.temperature,
                                   top_p=trainer.top_p)
        lengths = batch.completion_lengths.tolist()
        return [Turn(token_ids=batch.completion_ids[i, :n].tolist(), logps=batch.sampling_logps[i, :n].tolist(),
                     finished=not bool(batch.truncated[i])) for i, n in enumerate(lengths)]

    def play_groups(self, positions: list[int]) -> tuple[Any, Any]:
        """Play the G episodes of each group at ``positions`` (``env:`` or a generate hook): the batch and
        its ``RewardScores`` (the environment's reward, weighted, plus the run's reward functions)."""
        from relaytrain.train.episodes import PromptGroup, episodes_to_batch

        g = self.config.trainer.num_generations
        indices = [self.cursor.index_at(p) for p in positions]
        groups = [PromptGroup(position=p, prompt=self.samples[i].prompt, prompt_ids=self.prompt_ids[i],
                              task=self.task(p), num_generations=g, step=self.step)
                  for p, i in zip(positions, indices, strict=True)]
        episodes = self.episodes.play_groups(groups)
        batch = episodes_to_batch([group.prompt_ids for group in groups], episodes, g, self.pad_id)
        return batch, self.score_episodes(positions, batch.completion_ids, [e.reward for gr in episodes for e in gr])

    def play_tasks(self, tasks: list[dict[str, Any]], *, prompt: str = "") -> list[Any]:
        """One episode of each task (reset arguments) with the current weights, for evaluation: the
        ``episodes.Episode`` list (its ``reward`` is the environment's). Position ``-1 - i`` seeds task
        ``i``'s turns, apart from every training group's."""
        from relaytrain.train.episodes import PromptGroup

        ids = self.tokenizer(prompt)["input_ids"]
        groups = [PromptGroup(position=-1 - i, prompt=prompt, prompt_ids=list(ids), task=task, num_generations=1,
                              step=self.step) for i, task in enumerate(tasks)]
        return [group[0] for group in self.episodes.play_groups(groups)]

    def score_episodes(self, positions: list[int], completion_ids: Any, env_rewards: list[float | None]) -> Any:
        """``RewardScores`` of episodes: ``env.reward_weight`` × the environment's reward, plus the run's
        reward functions on the transcript (None when no part gave a reward)."""
        from relaytrain.train.rewards import RewardScores

        weight = self.config.env.reward_weight if self.config.env is not None else 1.0
        per_function: dict[str, list[float | None]] = {ENV_REWARD: list(env_rewards)}
        total = [None if r is None else weight * r for r in env_rewards]
        if self.rewards:
            scores = self.score_groups(positions, completion_ids)
            per_function.update(scores.per_function)
            total = [a if b is None else b if a is None else a + b for a, b in zip(total, scores.total, strict=True)]
        return RewardScores(per_function=per_function, total=total)

    def score_groups(self, positions: list[int], completion_ids: Any) -> Any:
        """The ``RewardScores`` of G completions (token ids) for each prompt at ``positions``.

        Called by the training loop and by the rollout manager's threads: one call at a time, so a
        reward function never runs concurrently with itself."""
        with self._scoring:
            return self._score_groups(positions, completion_ids)

    def _score_groups(self, positions: list[int], completion_ids: Any) -> Any:
        g = self.config.trainer.num_generations
        texts = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        indices = [self.cursor.index_at(p) for p in positions]
        examples = [self.examples[i] for i in indices for _ in range(g)]
        samples = [self.samples[i] for i in indices for _ in range(g)]
        return score_completions(
            self.rewards,
            [s.prompt for s in samples],
            texts,
            answer=[s.answer for s in samples],
            reasoning=[e.reasoning for e in examples],
            template=[self.template] * len(samples),
            **extra_columns(examples),
        )

    def generate_groups(self, positions: list[int]) -> list[Any]:
        """Sample and score the groups at ``positions`` here, as ``rollout.queue.ReadyGroup``."""
        from relaytrain.rollout.queue import TRAINER
        from relaytrain.train.grpo_pool import split_batch

        if self.episodes is not None:
            batch, scores = self.play_groups(positions)
        else:
            batch = self.sample(positions)
            scores = self.score_groups(positions, batch.completion_ids)
        groups = split_batch(batch, positions, self.step, TRAINER)
        g = batch.num_generations
        for p, group in enumerate(groups):
            group.rewards = scores.total[p * g : p * g + g]
            group.per_function = {k: v[p * g : p * g + g] for k, v in scores.per_function.items()}
        return groups

    def weights_snapshot(self) -> dict[str, Any]:
        """A host-memory copy of the policy's weights (tied duplicates left out), for rollout workers."""
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in unique_tensors(self.model).items()}

    def rollout(self) -> Rollout:
        """Sample, score and normalise the current step's batch; advances the data cursor, not the model."""
        from relaytrain.train.grpo_loss import group_advantages, loss_mask, rewards_tensor

        started = time.perf_counter()
        trainer, g = self.config.trainer, self.config.trainer.num_generations
        groups = stale = None
        if self.pool is not None:
            batch, indices, scores, groups, stale = self.pool.next_batch()
        else:
            first = self.cursor.examples_seen
            indices = self.cursor.next_indices(trainer.prompts_per_step)
            positions = [first + k for k in range(len(indices))]
            if self.episodes is not None:
                batch, scores = self.play_groups(positions)
            elif self.dist.enabled:  # each rank samples its share of the prompts; all get the whole batch
                from relaytrain.train.grpo_dist import gather_rollout

                batch, scores = gather_rollout(self, positions)
            else:
                batch = self.sample(positions)
                scores = self.score_groups(positions, batch.completion_ids)
        texts = self.tokenizer.batch_decode(batch.completion_ids, skip_special_tokens=True)
        advantages = group_advantages(rewards_tensor(scores.total), g, trainer.scale_rewards)
        skip_zero = bool(getattr(trainer, "skip_zero_variance_groups", False))
        mask = loss_mask(
            batch.policy_mask,  # an episode's observations are read, never trained
            advantages.valid,
            truncated=batch.truncated,
            mask_truncated=trainer.mask_truncated_completions,
            skip=advantages.zero_variance if skip_zero else None,
        )
        tasks = None
        if self.config.env is not None:
            tasks = [self.task(g.group_id) for g in groups] if groups is not None else [self.task(p) for p in positions]
        return Rollout(
            tasks=tasks,
            step=self.step + 1,
            examples=[self.examples[i] for i in indices],
            samples=[self.samples[i] for i in indices],
            batch=batch,
            texts=texts,
            scores=scores,
            advantages=advantages,
            mask=mask,
            seconds=time.perf_counter() - started,
            groups=groups,
            stale=stale,
        )

    def policy_logps(self, model: Any, rollout: Rollout, rows: Any = None) -> Any:
        """(N, L) log-probs of the sampled completions under ``model`` at the sampling temperature
        (``sampling.completion_logits``). With ``rows`` (indices), only those completions go through
        the model; the others read 0."""
        import torch

        from relaytrain.train.grpo_loss import token_logps
        from relaytrain.train.sampling import completion_logits

        batch = rollout.batch
        n = batch.completion_ids.shape[0]
        picked = torch.arange(n) if rows is None else rows.cpu()
        logits = completion_logits(model, batch, picked, self.device)
        logps = token_logps(logits, batch.completion_ids[picked].to(self.device), self.config.trainer.temperature)
        if rows is None:
            return logps
        return logps.new_zeros(batch.completion_ids.shape).index_copy(0, picked.to(self.device), logps)

    def active_rows(self, rollout: Rollout) -> Any:
        """The completions that can move the weights, or None for all of them.

        Without a KL term (``beta == 0``) a completion with advantage 0, or with no token in the
        loss, adds exactly nothing to the loss or its gradient at any ratio, nor to the clip counts;
        it still counts in the loss's normaliser (the mask is left whole). Skipping its forward and
        backward passes changes no result: with binary rewards whole groups are often all right or
        all wrong (zero variance), and this is where GRPO spends its time."""
        import torch

        if self.config.trainer.beta != 0:
            return None
        live = (rollout.advantages.advantages != 0) & (rollout.mask.sum(dim=1) > 0)
        return None if bool(live.all()) else torch.nonzero(live).squeeze(1)

    def reference_logps(self, rollout: Rollout) -> Any:
        """The reference policy's log-probs (no grad), or None when ``beta == 0``."""
        import torch

        if self.config.trainer.beta == 0:
            return None
        with torch.no_grad():
            if self.reference is not None:
                return self.policy_logps(self.reference, rollout)
            with self.model.disable_adapter():
                return self.policy_logps(self.model, rollout)

    def importance_weights(self, rollout: Rollout, old_logps: Any) -> Any:
        """The truncated off-policy weights of a pool batch (``grpo_loss.behaviour_weights``), or
        None when every completion was sampled with the current weights (then the loss is exactly
        the synchronous trainer's)."""
        import torch

        from relaytrain.train.grpo_loss import behaviour_weights

        if rollout.groups is None or all(group.version == self.step for group in rollout.groups):
            return None
        g = self.config.trainer.num_generations
        on_policy = torch.tensor([group.version == self.step for group in rollout.groups]).repeat_interleave(g)
        return behaviour_weights(old_logps, rollout.batch.sampling_logps.to(self.device), on_policy.to(self.device),
                                 self.config.rollout.max_importance_weight)

    def policy_loss(self, rollout: Rollout, logps: Any, old_logps: Any, ref_logps: Any = None,
                    weights: Any = None) -> Any:
        """The ``grpo_loss.LossOutput`` of ``logps`` (with grad) on ``rollout``: the trainer's loss path."""
        from relaytrain.train.grpo_loss import grpo_loss

        trainer = self.config.trainer
        return grpo_loss(
            logps,
            old_logps,
            rollout.advantages.advantages.to(self.device),
            rollout.mask.to(self.device),
            epsilon=trainer.epsilon,
            epsilon_high=trainer.epsilon_high,
            beta=trainer.beta,
            ref_logps=ref_logps,
            loss_type=trainer.loss_type,
            max_completion_length=trainer.max_new_tokens,
            importance_weights=weights,
        )

    def train_step(self) -> tuple[Rollout, dict[str, Any]]:
        """One GRPO step: a rollout, then ``num_iterations`` optimizer steps on it; returns its metrics.

        On CUDA the forward passes (sampling included) autocast to bf16, as the SFT trainer's do;
        the weights, optimizer and log-probs stay fp32. On CPU nothing changes."""
        import torch

        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self._train_step()

    def _train_step(self) -> tuple[Rollout, dict[str, Any]]:
        import torch

        started = time.perf_counter()
        rollout = self.rollout()
        ref_logps = self.reference_logps(rollout)
        # the optimizer's: on FSDP the model holds unsharded copies of the root's between a forward and its backward
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        rows = self.active_rows(rollout)
        dist = self.dist
        if dist.enabled:  # this rank's groups only (grpo_dist); never none on FSDP
            from relaytrain.train.grpo_dist import backward, local_loss, own_rows

            rows = own_rows(self, rollout, rows)
        old_logps, weights, outputs, grad_norms = None, None, [], []
        for _ in range(self.config.trainer.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            if rows is not None and rows.numel() == 0:  # nothing to learn from: a zero gradient, as computed
                logps = rollout.mask.new_zeros(rollout.mask.shape).to(self.device)
                for p in params:
                    p.grad = torch.zeros_like(p)
            else:
                logps = self.policy_logps(self.model, rollout, rows)
            if old_logps is None:  # the proximal policy: these weights, before any update on this batch
                old_logps = logps.detach()
                weights = self.importance_weights(rollout, old_logps)
            if dist.enabled:  # the step's gradient, summed over the ranks
                loss, out = local_loss(self, rollout, logps, old_logps, ref_logps)
                backward(dist, loss, params)
            else:
                out = self.policy_loss(rollout, logps, old_logps, ref_logps, weights)
                if out.loss.requires_grad:
                    out.loss.backward()
            grad_norms.append(clip_grad_norm(params, MAX_GRAD_NORM))
            self.optimizer.step()
            self.scheduler.step()
            outputs.append(out)
        version = self.step
        self.step += 1
        generated = int(rollout.batch.policy_mask.sum())
        self.tokens_generated += generated
        elapsed = time.perf_counter() - started
        metrics = step_metrics(rollout, outputs, grad_norms, generated, elapsed, reward_labels=self.reward_labels,
                               lr=self.optimizer.param_groups[0]["lr"], data_epoch=self.cursor.epoch,
                               device=self.device)
        if self.pool is not None:
            metrics.update(self.pool.metrics(rollout.groups, rollout.stale or [], version))
        if self.episodes is not None:
            metrics.update(self.episodes.metrics())
        return rollout, metrics

    # -- checkpoint state -------------------------------------------------------------------

    def checkpoint_state(self) -> dict[str, Any]:
        """The entries of a checkpoint at the current step (DESIGN §5), live tensors included
        (an asynchronous save copies them to host memory itself); one process or DDP."""
        return checkpoint_entries(self, "grpo", *self.checkpoint_parts())

    def checkpoint_parts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """GRPO's own fields of ``trainer_state.json`` and its extra files (reference model, pool
        state), for ``sharded.save_checkpoint``; on FSDP a collective call (the reference is gathered)."""
        from relaytrain.train.grpo_dist import reference_tensors

        counters = {
            "sampler": {"seed": self.config.trainer.seed, "next_step": self.step},
            "tokens_generated": self.tokens_generated,
        }
        if self.episodes is not None:
            counters[ENV_STATE] = self.episodes.state_dict()
        extra = {REFERENCE_FILE: reference_tensors(self.dist, self.reference)} if self.reference is not None else {}
        if self.pool is not None:
            from relaytrain.train.grpo_pool import STATE_FILE

            extra[STATE_FILE] = self.pool.state_dict()
        return counters, extra

    def close(self) -> None:
        """Close the environments (their sessions and the episode loop)."""
        if self.episodes is not None:
            self.episodes.close()

    def load_checkpoint(self, folder: str | Path) -> None:
        """Verify and restore a checkpoint written by ``checkpoint_state``."""
        folder = Path(folder)
        same = self.resumed is not None and Path(self.contract.resume_from or "") == folder
        loaded = self.resumed if same and self.resumed is not None else load_verified(folder, "grpo")
        state = restore(self, folder, loaded, loaded.get("optimizer.pt"))  # moves the state to the parameters' device
        if int(state["sampler"]["seed"]) != self.config.trainer.seed:
            log.warning("trainer.seed changed from %s: sampling will differ", state["sampler"]["seed"])
        self.tokens_generated = int(state.get("tokens_generated", 0))
        if self.episodes is not None:
            self.episodes.load_state_dict(state.get(ENV_STATE))
        if self.pool is not None:
            from relaytrain.train.grpo_pool import STATE_FILE

            self.pool.load_state_dict(loaded.get(STATE_FILE), self.step)
        self.resumed = None  # free the loaded tensors


def run_grpo(config: GRPORun, contract: Contract) -> int:
    """Train ``config`` under ``contract`` to the target step; return the exit code (0). The run
    loop (resume, reports, checkpoints, stop) is ``grpo_run.run_grpo``."""
    from relaytrain.train.grpo_run import run_grpo as run

    return run(config, contract)

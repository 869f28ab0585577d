"""The GRPO objective against values computed by hand (the arithmetic is written out in each test)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from relaytrain.train.grpo_loss import (  # noqa: E402
    ADVANTAGE_EPS,
    aggregate,
    group_advantages,
    grpo_loss,
    kl_k3,
    loss_mask,
    rewards_tensor,
    token_logps,
)

EPS = ADVANTAGE_EPS


def close(actual: torch.Tensor | float, expected: list[float] | float, tol: float = 1e-5) -> None:
    actual_t = torch.as_tensor(actual, dtype=torch.float64)
    expected_t = torch.as_tensor(expected, dtype=torch.float64)
    assert torch.allclose(actual_t, expected_t, atol=tol, rtol=0), f"{actual_t.tolist()} != {expected_t.tolist()}"


# ---------------------------------------------------------------- advantages


def test_group_scaling_divides_by_the_unbiased_group_std() -> None:
    # group A: [1,0,0,0]: mean 0.25, deviations [.75,-.25,-.25,-.25],
    #   variance (0.5625 + 3*0.0625) / 3 = 0.25, std 0.5
    # group B: [1,1,0,0]: mean 0.5, deviations ±0.5, variance 4*0.25/3 = 1/3, std 0.57735
    adv = group_advantages(rewards_tensor([1, 0, 0, 0, 1, 1, 0, 0]), 4, "group")
    sa, sb = 0.5 + EPS, math.sqrt(1 / 3) + EPS
    close(
        adv.advantages,
        [0.75 / sa, -0.25 / sa, -0.25 / sa, -0.25 / sa, 0.5 / sb, 0.5 / sb, -0.5 / sb, -0.5 / sb],
    )
    close(adv.group_mean, [0.25] * 4 + [0.5] * 4)
    assert adv.num_zero_variance_groups == 0
    assert adv.valid.all()


def test_batch_scaling_subtracts_the_group_mean_and_divides_by_the_batch_std() -> None:
    # batch [1,0,0,0,1,1,0,0]: mean 3/8, variance (3*(5/8)^2 + 5*(3/8)^2) / 7 = 1.875/7
    std = math.sqrt(1.875 / 7) + EPS
    adv = group_advantages(rewards_tensor([1, 0, 0, 0, 1, 1, 0, 0]), 4, "batch")
    close(
        adv.advantages,
        [0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std, 0.5 / std, 0.5 / std, -0.5 / std, -0.5 / std],
    )


def test_no_scaling_is_dr_grpo_the_plain_deviation() -> None:
    adv = group_advantages(rewards_tensor([2, 0, 1, 1]), 2, "none")
    # groups [2,0] -> mean 1 -> [1,-1]; [1,1] -> zero variance -> [0,0]
    close(adv.advantages, [1.0, -1.0, 0.0, 0.0])
    assert adv.num_zero_variance_groups == 1


def test_none_rewards_are_left_out_of_the_group_statistics() -> None:
    # [1, None, 0, 0]: the three rewards have mean 1/3, deviations [2/3, -1/3, -1/3],
    #   variance (4/9 + 1/9 + 1/9) / 2 = 1/3, std 0.57735; the None completion gets 0
    adv = group_advantages(rewards_tensor([1, None, 0, 0]), 4, "group")
    s = math.sqrt(1 / 3) + EPS
    close(adv.advantages, [(2 / 3) / s, 0.0, (-1 / 3) / s, (-1 / 3) / s])
    assert adv.valid.tolist() == [True, False, True, True]
    close(adv.group_mean, [1 / 3] * 4)


def test_zero_variance_groups_are_counted_and_get_no_advantage() -> None:
    # group 0 all equal; group 1 a single reward among Nones; group 2 all None; group 3 has signal
    rewards = rewards_tensor([1, 1, 1, 1, None, 0.5, None, None, None, None, None, None, 0, 1, 0, 1])
    adv = group_advantages(rewards, 4, "group")
    assert adv.num_zero_variance_groups == 3
    assert adv.zero_variance.tolist() == [True] * 12 + [False] * 4
    close(adv.advantages[:12], [0.0] * 12)
    s = math.sqrt(4 * 0.25 / 3) + EPS
    close(adv.advantages[12:], [-0.5 / s, 0.5 / s, -0.5 / s, 0.5 / s])


def test_group_size_must_divide_the_batch() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        group_advantages(rewards_tensor([1, 0, 1]), 4)


# ---------------------------------------------------------------- loss

# Two completions, three token slots; completion 0 has two tokens, completion 1 three.
# ratios ρ = exp(logp - old):  row 0 [1.5, 0.9, –]  with A = +1
#                              row 1 [0.5, 1.1, 1.0] with A = -1
# ε = 0.2: per-token loss -min(ρA, clip(ρ, 0.8, 1.2)A):
#   row 0: -min(1.5, 1.2) = -1.2 (clipped high); -min(0.9, 0.9) = -0.9
#   row 1: -min(-0.5, -0.8) = 0.8 (clipped low); -min(-1.1, -1.1) = 1.1; -min(-1, -1) = 1.0
OLD = torch.full((2, 3), -1.0)
RATIOS = torch.tensor([[1.5, 0.9, 1.0], [0.5, 1.1, 1.0]])
ADV = torch.tensor([1.0, -1.0])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def _logps() -> torch.Tensor:
    return (OLD + RATIOS.log()).clone().requires_grad_(True)


def test_dapo_divides_the_token_sum_by_the_tokens_of_the_batch() -> None:
    logps = _logps()
    out = grpo_loss(logps, OLD, ADV, MASK, epsilon=0.2, loss_type="dapo")
    close(out.loss.item(), (-1.2 - 0.9 + 0.8 + 1.1 + 1.0) / 5)  # 0.16
    assert out.tokens == 5
    close(out.clip_low, 1 / 5)
    close(out.clip_high, 1 / 5)
    close(out.clip_fraction, 2 / 5)
    out.loss.backward()
    # d/dlogp of -ρA is -ρA; clipped tokens and padding have no gradient
    close(logps.grad, [[0.0, -0.9 / 5, 0.0], [0.0, 1.1 / 5, 1.0 / 5]])


def test_grpo_averages_each_sequence_then_the_batch() -> None:
    out = grpo_loss(_logps(), OLD, ADV, MASK, epsilon=0.2, loss_type="grpo")
    close(out.loss.item(), ((-1.2 - 0.9) / 2 + (0.8 + 1.1 + 1.0) / 3) / 2)  # -0.0416667


def test_dr_grpo_divides_by_batch_times_max_completion_length() -> None:
    out = grpo_loss(_logps(), OLD, ADV, MASK, epsilon=0.2, loss_type="dr_grpo", max_completion_length=4)
    close(out.loss.item(), 0.8 / (2 * 4))
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(_logps(), OLD, ADV, MASK, loss_type="dr_grpo")


def test_epsilon_high_widens_only_the_upper_clip() -> None:
    # ε_high = 0.6: row 0 token 0 keeps ρA = 1.5 (1.5 < 1.6); row 1 token 0 is still clipped at 0.8
    out = grpo_loss(_logps(), OLD, ADV, MASK, epsilon=0.2, epsilon_high=0.6, loss_type="dapo")
    close(out.loss.item(), (-1.5 - 0.9 + 0.8 + 1.1 + 1.0) / 5)
    close(out.clip_high, 0.0)
    close(out.clip_low, 1 / 5)
    # a wider ε (0.6 both sides) unclips the low side too: -min(-0.5, -0.4) = 0.5
    out = grpo_loss(_logps(), OLD, ADV, MASK, epsilon=0.6, loss_type="dapo")
    close(out.loss.item(), (-1.5 - 0.9 + 0.5 + 1.1 + 1.0) / 5)


def test_clipping_only_binds_in_the_direction_of_the_advantage() -> None:
    # ρ = 1.5 with A = -1: -min(-1.5, -1.2) = 1.5, unclipped (the pessimistic side); likewise ρ = 0.5, A = +1
    logps = (OLD[:1, :2] + torch.tensor([[1.5, 0.5]]).log()).requires_grad_(True)
    for adv, expected in ((-1.0, (1.5 + 0.8) / 2), (1.0, (-1.2 - 0.5) / 2)):
        out = grpo_loss(logps, OLD[:1, :2], torch.tensor([adv]), torch.ones(1, 2), epsilon=0.2)
        close(out.loss.item(), expected)


def test_kl_term_is_the_k3_estimator_weighted_by_beta() -> None:
    # with zero advantages only β·KL remains. d = ref - logp:
    #   d = ln 2  -> 2 - ln 2 - 1 = 0.306853;  d = 0 -> 0;  d = -ln 2 -> 0.5 + ln 2 - 1 = 0.193147
    logps = torch.full((1, 3), -1.0, requires_grad=True)
    ref = torch.tensor([[-1.0 + math.log(2), -1.0, -1.0 - math.log(2)]])
    kl = [2 - math.log(2) - 1, 0.0, 0.5 + math.log(2) - 1]
    close(kl_k3(logps.detach(), ref), [kl])
    out = grpo_loss(logps, logps.detach(), torch.zeros(1), torch.ones(1, 3), beta=0.1, ref_logps=ref)
    close(out.kl, sum(kl) / 3)
    close(out.loss.item(), 0.1 * sum(kl) / 3)
    out.loss.backward()
    # d/dlogp (e^(ref-logp) - (ref-logp) - 1) = 1 - e^(ref-logp): [1-2, 0, 1-0.5], times β/3
    close(logps.grad, [[-0.1 / 3, 0.0, 0.05 / 3]])
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(logps, logps.detach(), torch.zeros(1), torch.ones(1, 3), beta=0.1)


def test_first_iteration_ratio_is_one_and_gradient_is_minus_advantage() -> None:
    # num_iterations = 1: old = detached new, ρ = 1, gradient of the dapo loss -A/tokens per token
    logps = torch.tensor([[-0.3, -2.0], [-1.0, -0.1]], requires_grad=True)
    out = grpo_loss(logps, logps.detach(), torch.tensor([0.5, -2.0]), torch.ones(2, 2))
    close(out.loss.item(), (-0.5 * 2 + 2.0 * 2) / 4)
    out.loss.backward()
    close(logps.grad, [[-0.5 / 4, -0.5 / 4], [2.0 / 4, 2.0 / 4]])


def test_empty_mask_gives_a_zero_loss_with_grad() -> None:
    logps = _logps()
    for loss_type in ("dapo", "grpo", "dr_grpo"):
        out = grpo_loss(logps, OLD, ADV, torch.zeros(2, 3), loss_type=loss_type, max_completion_length=3)
        assert out.loss.item() == 0.0 and out.loss.requires_grad and out.tokens == 0


def test_loss_mask_drops_none_rewards_truncated_and_skipped_completions() -> None:
    completion_mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])
    valid = torch.tensor([True, True, False, True])
    truncated = torch.tensor([False, True, False, False])
    close(loss_mask(completion_mask, valid), [[1, 1, 0], [1, 1, 1], [0, 0, 0], [1, 1, 1]])
    close(
        loss_mask(completion_mask, valid, truncated=truncated, mask_truncated=True),
        [[1, 1, 0], [0, 0, 0], [0, 0, 0], [1, 1, 1]],
    )
    close(
        loss_mask(completion_mask, valid, skip=torch.tensor([False, False, False, True])),
        [[1, 1, 0], [1, 1, 1], [0, 0, 0], [0, 0, 0]],
    )
    with pytest.raises(ValueError, match="truncated"):
        loss_mask(completion_mask, valid, mask_truncated=True)


def test_masked_completions_leave_dapo_and_grpo_denominators_but_not_dr_grpo() -> None:
    # row 1 masked out entirely: dapo = (-1.2 - 0.9) / 2, grpo = mean of row 0 only,
    # dr_grpo keeps its constant N × L = 2 × 3
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    per_token = torch.tensor([[-1.2, -0.9, 7.0], [0.8, 1.1, 1.0]])
    close(aggregate(per_token, mask, "dapo"), (-1.2 - 0.9) / 2)
    close(aggregate(per_token, mask, "grpo"), (-1.2 - 0.9) / 2)
    close(aggregate(per_token, mask, "dr_grpo", 3), (-1.2 - 0.9) / 6)


def test_token_logps_apply_the_temperature() -> None:
    # logits [0, ln 3] at temperature 1: p = [1/4, 3/4]; at temperature 0.5 the logits double:
    #   [0, ln 9] -> p = [1/10, 9/10]
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, math.log(3)]]])
    ids = torch.tensor([[0, 1]])
    close(token_logps(logits, ids), [[math.log(1 / 4), math.log(3 / 4)]])
    close(token_logps(logits, ids, temperature=0.5), [[math.log(1 / 10), math.log(9 / 10)]])


def test_behaviour_weights_are_truncated_ratios_and_exactly_one_on_policy() -> None:
    from relaytrain.train.grpo_loss import behaviour_weights

    old = torch.tensor([[-1.0, -2.0, -0.1], [-1.0, -2.0, -0.1]])
    behaviour = torch.tensor([[-1.5, -1.0, -3.0], [-1.5, -1.0, -3.0]])
    weights = behaviour_weights(old, behaviour, torch.tensor([False, True]), cap=2.0)
    # by hand: e^(−1+1.5) = e^0.5 = 1.6487…, e^(−2+1) = e^−1 = 0.3679…, e^(−0.1+3) = e^2.9 = 18.17 → capped at 2
    assert weights[0].tolist() == pytest.approx([1.6487212707, 0.3678794412, 2.0])
    assert weights[1].tolist() == [1.0, 1.0, 1.0]


def test_the_loss_weighs_each_tokens_surrogate_by_its_behaviour_weight() -> None:
    logps = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]], requires_grad=True)
    old = logps.detach().clone()  # first iteration: ratio 1, nothing clipped
    advantages = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    weights = torch.tensor([[0.5, 2.0], [1.5, 9.0]])
    out = grpo_loss(logps, old, advantages, mask, loss_type="dapo", importance_weights=weights)
    # by hand: per token −A·w on the 3 loss tokens: −(1·0.5) − (1·2.0) − (−2·1.5) = 0.5, over 3 tokens
    assert out.loss.item() == pytest.approx(0.5 / 3)
    out.loss.backward()
    # d/dlogp of −ρ·A·w at ρ = 1 is −A·w / 3 per loss token, 0 off the mask
    assert logps.grad.flatten().tolist() == pytest.approx([-0.5 / 3, -2.0 / 3, 3.0 / 3, 0.0])
    unweighted = grpo_loss(logps.detach(), old, advantages, mask, loss_type="dapo")
    assert unweighted.loss.item() == pytest.approx((-1 - 1 + 2) / 3)

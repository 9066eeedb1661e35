"""Tests for the AdaShare policy maths (mtgraph.strategies.adashare.policy)."""

from __future__ import annotations

import math

import pytest
import torch

from mtgraph.errors import ConfigError
from mtgraph.strategies.adashare.policy import (
    EXECUTE,
    SKIP,
    curriculum_mask,
    derive_policy,
    execute_probability,
    gumbel_softmax_mix,
    policy_correlation,
    policy_regularization,
    sharing_loss,
    sparsity_loss,
    temperature,
)


def _logits_for(alpha: list[list[float]]) -> torch.Tensor:
    """Logits [T, L, 2] whose execute probability is exactly ``alpha``."""
    a = torch.tensor(alpha, dtype=torch.float64)
    return torch.stack([a.log(), (1 - a).log()], dim=-1)


def _random_logits(t: int = 3, blocks: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(t, blocks, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_index_convention() -> None:
    assert (EXECUTE, SKIP) == (0, 1)
    alpha = [[0.8, 0.3]]
    assert torch.allclose(execute_probability(_logits_for(alpha)), torch.tensor(alpha, dtype=torch.float64))


# --------------------------------------------------------------------------- #
# Gumbel-softmax
# --------------------------------------------------------------------------- #


def test_gumbel_weights_are_a_distribution_and_reproducible() -> None:
    logits = _random_logits()
    first = gumbel_softmax_mix(logits, 1.0, generator=torch.Generator().manual_seed(7))
    second = gumbel_softmax_mix(logits, 1.0, generator=torch.Generator().manual_seed(7))
    assert first.shape == (3, 5, 2)
    assert torch.equal(first, second)
    assert torch.allclose(first.sum(dim=-1), torch.ones(3, 5, dtype=torch.float64))
    assert bool((first > 0).all())


def test_gumbel_at_low_temperature_approaches_the_hard_sample() -> None:
    logits = _random_logits(4, 6, seed=1)
    soft = gumbel_softmax_mix(logits, 1e-3, generator=torch.Generator().manual_seed(3))
    hard = gumbel_softmax_mix(logits, 1e-3, hard=True, generator=torch.Generator().manual_seed(3))
    assert bool(((hard == 0) | (hard == 1)).all())
    assert torch.equal(hard.sum(dim=-1), torch.ones(4, 6, dtype=torch.float64))
    assert torch.allclose(soft, hard, atol=1e-6)
    warm = gumbel_softmax_mix(logits, 5.0, generator=torch.Generator().manual_seed(3))
    assert float((warm - hard).abs().max()) > 0.01


def test_gumbel_hard_samples_follow_the_policy_distribution() -> None:
    alpha = [[0.2, 0.5, 0.9]]
    logits = _logits_for(alpha).expand(4000, 3, 2)
    hard = gumbel_softmax_mix(logits, 0.5, hard=True, generator=torch.Generator().manual_seed(0))
    frequency = hard[..., EXECUTE].mean(dim=0)
    assert torch.allclose(frequency, torch.tensor(alpha[0], dtype=torch.float64), atol=0.03)


def test_gumbel_hard_is_straight_through() -> None:
    logits = _random_logits().requires_grad_(True)
    weights = gumbel_softmax_mix(logits, 1.0, hard=True, generator=torch.Generator().manual_seed(0))
    (weights[..., EXECUTE] * torch.arange(5.0, dtype=torch.float64)).sum().backward()
    assert logits.grad is not None
    assert float(logits.grad.abs().sum()) > 0


def test_gumbel_locked_blocks_execute_without_gradient() -> None:
    logits = _random_logits(2, 4).requires_grad_(True)
    mask = curriculum_mask(4, 1)
    weights = gumbel_softmax_mix(logits, 1.0, learnable=mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(weights[:, :2].detach(), torch.tensor([1.0, 0.0], dtype=torch.float64).expand(2, 2, 2))
    weights.sum().backward()
    assert torch.equal(logits.grad[:, :2], torch.zeros(2, 2, 2, dtype=torch.float64))


def test_gumbel_errors() -> None:
    with pytest.raises(ConfigError, match="tau must be"):
        gumbel_softmax_mix(_random_logits(), 0.0)
    with pytest.raises(ConfigError, match=r"\[T tasks, L blocks, 2\]"):
        gumbel_softmax_mix(torch.zeros(3, 5), 1.0)
    with pytest.raises(ConfigError, match="bool tensor of shape \\[5\\]"):
        gumbel_softmax_mix(_random_logits(), 1.0, learnable=torch.ones(4, dtype=torch.bool))


# --------------------------------------------------------------------------- #
# Losses
# --------------------------------------------------------------------------- #


ALPHA = [[0.8, 0.5, 0.2], [0.6, 0.5, 0.9]]


def test_sparsity_loss_paper_form_matches_hand_value() -> None:
    logits = _logits_for(ALPHA)
    expected = sum(math.log(a) for row in ALPHA for a in row)
    assert float(sparsity_loss(logits)) == pytest.approx(expected, abs=1e-12)
    masked = sparsity_loss(logits, blocks=torch.tensor([False, True, True]))
    assert float(masked) == pytest.approx(math.log(0.5) + math.log(0.2) + math.log(0.5) + math.log(0.9), abs=1e-12)


def test_sparsity_loss_is_floored_at_eps() -> None:
    logits = _logits_for([[1e-9, 0.5]])
    assert float(sparsity_loss(logits)) == pytest.approx(math.log(1e-6) + math.log(0.5), abs=1e-9)


def test_sparsity_loss_code_form_matches_hand_value() -> None:
    logits = _logits_for(ALPHA)
    expected = (
        -(math.log(0.2) + math.log(0.5) + math.log(0.8)) / 3 - (math.log(0.4) + math.log(0.5) + math.log(0.1)) / 3
    )
    assert float(sparsity_loss(logits, form="code")) == pytest.approx(expected, abs=1e-12)
    masked = sparsity_loss(logits, blocks=torch.tensor([False, False, True]), form="code")
    assert float(masked) == pytest.approx(-math.log(0.8) - math.log(0.1), abs=1e-12)


def test_sparsity_loss_gradient_pushes_towards_skipping() -> None:
    logits = torch.zeros(2, 3, 2, dtype=torch.float64, requires_grad=True)
    sparsity_loss(logits).backward()
    # Gradient descent lowers the execute logit and raises the skip logit.
    assert bool((logits.grad[..., EXECUTE] > 0).all())
    assert bool((logits.grad[..., SKIP] < 0).all())


def test_sharing_loss_paper_form_matches_hand_value() -> None:
    # L = 3, weights (L - l)/L for l = 0, 1, 2: 1, 2/3, 1/3.
    # |alpha_0 - alpha_1| = 0.2, 0.0, 0.7 -> 0.2 + 0 + 0.7/3; ordered pairs x2.
    logits = _logits_for(ALPHA)
    assert float(sharing_loss(logits)) == pytest.approx(2 * (0.2 + 0.7 / 3), abs=1e-12)


def test_sharing_loss_three_tasks_weights_bottom_blocks_most() -> None:
    alpha = [[0.5, 0.5], [0.9, 0.5], [0.5, 0.1]]
    # Pairs (0,1): 0.4*1; (0,2): 0.4*0.5; (1,2): 0.4*1 + 0.4*0.5 -> sum 1.2, x2.
    assert float(sharing_loss(_logits_for(alpha))) == pytest.approx(2.4, abs=1e-12)
    assert float(sharing_loss(_logits_for([[0.3, 0.7]]))) == 0.0


def test_sharing_loss_code_form_matches_hand_value() -> None:
    logits = torch.tensor(
        [[[1.0, 0.0], [2.0, 0.0], [0.5, 0.0]], [[0.0, 0.0], [2.5, 0.0], [-0.5, 0.0]]], dtype=torch.float64
    )
    # Raw execute logits, weights (l + 1)/L = 1/3, 2/3, 1; unordered pair once.
    expected = 1.0 / 3 + 0.5 * 2 / 3 + 1.0 * 1
    assert float(sharing_loss(logits, form="code")) == pytest.approx(expected, abs=1e-12)


def test_policy_regularization_combines_and_validates_lambdas() -> None:
    logits = _logits_for(ALPHA)
    combined = policy_regularization(logits, lambda_sparsity=0.05, lambda_sharing=0.1)
    expected = 0.05 * sparsity_loss(logits) + 0.1 * sharing_loss(logits)
    assert float(combined) == pytest.approx(float(expected), abs=1e-12)
    with pytest.raises(ConfigError, match="lambda_sparsity must be >= 0, got -0.01"):
        policy_regularization(logits, lambda_sparsity=-0.01, lambda_sharing=0.1)
    with pytest.raises(ConfigError, match="lambda_sharing must be >= 0"):
        policy_regularization(logits, lambda_sparsity=0.0, lambda_sharing=-1)
    with pytest.raises(ConfigError, match="form must be"):
        sharing_loss(logits, form="other")


# --------------------------------------------------------------------------- #
# Curriculum, temperature
# --------------------------------------------------------------------------- #


def test_curriculum_mask_unlocks_from_the_last_block() -> None:
    expected = {
        0: [False, False, False, True],
        1: [False, False, True, True],
        2: [False, True, True, True],
        3: [True, True, True, True],
        10: [True, True, True, True],
    }
    for epoch, mask in expected.items():
        assert curriculum_mask(4, epoch).tolist() == mask, epoch
    assert [curriculum_mask(3, e, speed=3).sum().item() for e in range(10)] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    with pytest.raises(ConfigError, match="epoch must be an integer >= 0"):
        curriculum_mask(4, -1)
    with pytest.raises(ConfigError, match="num_blocks"):
        curriculum_mask(0, 0)


def test_temperature_schedule() -> None:
    assert temperature(0) == 5.0
    assert temperature(2) == pytest.approx(5.0 * 0.965**2)
    assert temperature(10, tau0=1.0, decay=0.5) == pytest.approx(2.0**-10)
    with pytest.raises(ConfigError, match="decay"):
        temperature(1, decay=1.5)
    with pytest.raises(ConfigError, match="tau0"):
        temperature(1, tau0=0.0)


# --------------------------------------------------------------------------- #
# Hardening and correlation
# --------------------------------------------------------------------------- #


def test_derive_policy_argmax_on_crafted_logits() -> None:
    logits = torch.tensor(
        [
            [[2.0, -1.0], [0.0, 3.0], [1.0, 1.0]],
            [[-5.0, 5.0], [0.1, 0.0], [0.0, 0.2]],
        ]
    )
    assert derive_policy(logits).tolist() == [[True, False, True], [False, True, False]]


def test_derive_policy_sample_is_bernoulli_of_alpha() -> None:
    logits = _logits_for([[1.0 - 1e-12, 1e-12, 0.5]]).expand(2000, 3, 2)
    draws = derive_policy(logits, mode="sample", generator=torch.Generator().manual_seed(0))
    assert draws.dtype == torch.bool
    assert bool(draws[:, 0].all()) and not bool(draws[:, 1].any())
    assert float(draws[:, 2].double().mean()) == pytest.approx(0.5, abs=0.04)
    again = derive_policy(logits, mode="sample", generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    with pytest.raises(ConfigError, match="mode must be"):
        derive_policy(logits, mode="best")


def test_policy_correlation_is_cosine_of_execute_probabilities() -> None:
    alpha = [[0.9, 0.1, 0.9], [0.9, 0.1, 0.9], [0.1, 0.9, 0.1]]
    corr = policy_correlation(_logits_for(alpha))
    assert corr.shape == (3, 3)
    assert float(corr[0, 1]) == pytest.approx(1.0, abs=1e-12)
    expected = (0.09 + 0.09 + 0.09) / (0.81 + 0.01 + 0.81) ** 0.5 / (0.01 + 0.81 + 0.01) ** 0.5
    assert float(corr[0, 2]) == pytest.approx(expected, abs=1e-12)
    assert torch.allclose(corr, corr.T)
    raw = policy_correlation(torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [2.0, 0.0]]]), space="logit")
    assert torch.allclose(raw, torch.eye(2))

"""AdaShare policy maths (papers/002 §3.2-3.3, eq. 2-7, appendix A).

The policy of T tasks over L gated blocks is one logits tensor of shape
``[T, L, 2]``. **Index 0 is execute (the paper's "select"), index 1 is skip**,
and the execute probability is ``α = softmax(logits)[..., 0]``. The paper writes
the distribution as ``π = [1 − α, α]`` (skip first); we store execute first as
the authors' released code does, so its logit initialisation ((0.5, 0.5)) and
tuned λ values carry over unchanged. Only the storage order differs; every
formula below is written in terms of α.

Everything here is a pure function of tensors: no modules, no optimiser, no
training loop. The strategy driver decides when to call what.

Choices where the paper is ambiguous (notes/methods-001-002.md §B.5):

* eq. 5 ``Σ log α`` is unbounded below; α is clamped at ``eps`` (1e-6) so the
  loss and its gradient stop there. ``form="code"`` gives the released code's
  bounded ``Σ_k mean_l −log(1 − α)`` instead (its λ_sp values were tuned on it).
* eq. 6 weights ``(L − l)/L``: with the paper's 1-based ``l = 1..L`` the last
  block would get weight 0 and never be encouraged to share. We index blocks
  ``l = 0..L−1``: the first block weighs 1, the last ``1/L``. The sum runs over
  *ordered* task pairs as written (each unordered pair counts twice).
  ``form="code"`` gives the released code's variant: raw execute logits,
  weights ``(l + 1)/L`` (growing with depth) and unordered pairs.
* Curriculum epochs are 0-based: epoch ``e`` is the paper's ``(e+1)``-th
  epoch and learns the last ``e + 1`` blocks (the code's
  ``⌊e / speed⌋ + 1`` with ``speed = 1``).
* Hardening by argmax treats a tie (α = 0.5) as execute: keeping a block is
  the conservative choice.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from mtgraph.errors import ConfigError

__all__ = [
    "EXECUTE",
    "SKIP",
    "curriculum_mask",
    "derive_policy",
    "execute_probability",
    "gumbel_softmax_mix",
    "policy_correlation",
    "policy_regularization",
    "sharing_loss",
    "sparsity_loss",
    "temperature",
    "undecided_gates",
]

#: Index of "execute this block" in the last dimension of the logits.
EXECUTE = 0
#: Index of "skip this block (take its shortcut)" in the last dimension.
SKIP = 1

Form = Literal["paper", "code"]


def _check_logits(logits: torch.Tensor) -> None:
    """Raise ConfigError unless ``logits`` is a finite float tensor [T, L, 2]."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise ConfigError("policy logits must be a floating-point torch.Tensor of shape [T, L, 2]")
    if logits.ndim != 3 or logits.shape[2] != 2 or logits.shape[0] < 1 or logits.shape[1] < 1:
        raise ConfigError(f"policy logits must have shape [T tasks, L blocks, 2], got {list(logits.shape)}")
    if not bool(torch.isfinite(logits).all()):
        raise ConfigError("policy logits contain NaN or infinite values")


def _check_blocks(blocks: torch.Tensor | None, num_blocks: int) -> torch.Tensor | None:
    """Validate an optional boolean block mask of length L."""
    if blocks is None:
        return None
    if not isinstance(blocks, torch.Tensor) or blocks.dtype != torch.bool or blocks.shape != (num_blocks,):
        raise ConfigError(f"blocks must be a bool tensor of shape [{num_blocks}], e.g. from curriculum_mask")
    return blocks


def _check_form(form: str) -> None:
    """Raise ConfigError for an unknown loss form."""
    if form not in ("paper", "code"):
        raise ConfigError(f"form must be 'paper' or 'code', got {form!r}")


def execute_probability(logits: torch.Tensor) -> torch.Tensor:
    """α: probability that each task executes each block, shape ``[T, L]``.

    Args:
        logits: policy logits ``[T, L, 2]`` (index 0 execute, 1 skip).

    Returns:
        A ``[T, L]`` tensor of execute probabilities.

    Raises:
        ConfigError: ``logits`` is not a finite float tensor of shape ``[T, L, 2]``.

    Examples:
        >>> import torch
        >>> from mtgraph.strategies.adashare import execute_probability
        >>> logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])  # 1 task, 2 blocks
        >>> execute_probability(logits).round(decimals=3)
        tensor([[0.5000, 0.8810]])
    """
    _check_logits(logits)
    return torch.softmax(logits, dim=-1)[..., EXECUTE]


def gumbel_softmax_mix(
    logits: torch.Tensor,
    tau: float,
    *,
    hard: bool = False,
    learnable: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gumbel-softmax weights for mixing each block with its shortcut (eq. 2-3).

    ``v = softmax((log π + G) / τ)`` with ``G = −log(−log U)``, ``U ~ U(0, 1)``
    drawn i.i.d. per (task, block, choice). A block's output for a task is then
    ``v[..., 0] * block(x) + v[..., 1] * shortcut(x)``.

    Args:
        logits: policy logits ``[T, L, 2]`` (index 0 execute, 1 skip).
        tau: temperature, > 0. As τ → 0 the weights approach the one-hot
            sample ``argmax(log π + G)`` of eq. 2.
        hard: return the one-hot sample in the forward pass with the soft
            weights' gradient (straight-through). The paper uses the soft
            weights in both passes (``hard=False``).
        learnable: optional bool ``[L]`` mask (see :func:`curriculum_mask`);
            blocks outside it are locked and get exactly ``[1, 0]`` (execute)
            with no gradient, as the released code forces locked blocks on.
        generator: torch random generator for reproducible noise.

    Returns:
        ``[T, L, 2]`` weights that sum to 1 over the last dim, same dtype and
        device as ``logits``.

    Raises:
        ConfigError: bad logits shape, non-positive tau, or a bad mask.

    Examples:
        >>> import torch
        >>> from mtgraph.strategies.adashare import curriculum_mask, gumbel_softmax_mix
        >>> noise = torch.Generator().manual_seed(0)
        >>> weights = gumbel_softmax_mix(torch.zeros(2, 3, 2), 1.0, learnable=curriculum_mask(3, 0), generator=noise)
        >>> weights.shape, bool(torch.allclose(weights.sum(dim=-1), torch.ones(2, 3)))
        (torch.Size([2, 3, 2]), True)
        >>> weights[:, 0]  # block 0 is locked by the curriculum: always executed
        tensor([[1., 0.],
                [1., 0.]])
    """
    _check_logits(logits)
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ConfigError(f"Gumbel-softmax temperature tau must be a finite number > 0, got {tau!r}")
    mask = _check_blocks(learnable, logits.shape[1])
    uniform = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    # Keep U inside (0, 1) so that neither log ever sees 0.
    tiny = torch.finfo(logits.dtype).tiny
    uniform = uniform.clamp(min=tiny, max=1.0 - torch.finfo(logits.dtype).eps)
    gumbel = -torch.log(-torch.log(uniform))
    soft = torch.softmax((torch.log_softmax(logits, dim=-1) + gumbel) / tau, dim=-1)
    weights = soft
    if hard:
        one_hot = torch.nn.functional.one_hot(soft.argmax(dim=-1), 2).to(soft.dtype)
        weights = one_hot - soft.detach() + soft
    if mask is not None:
        locked = torch.zeros_like(weights)
        locked[..., EXECUTE] = 1.0
        weights = torch.where(mask[None, :, None], weights, locked)
    return weights


def sparsity_loss(
    logits: torch.Tensor,
    *,
    blocks: torch.Tensor | None = None,
    form: Form = "paper",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Sparsity regulariser (eq. 5): minimising it pushes tasks to skip blocks.

    ``form="paper"``: ``Σ_{k, l} log max(α_{l,k}, eps)``, summed over all tasks
    and (masked) blocks, as eq. 5 writes it. ``form="code"``: the released
    code's ``Σ_k mean_{l} −log(1 − α_{l,k})``, mean over the (masked) blocks of
    each task, summed over tasks.

    Args:
        logits: policy logits ``[T, L, 2]``.
        blocks: optional bool ``[L]`` mask of the blocks that count (the
            curriculum's learnable blocks); default all.
        form: ``"paper"`` or ``"code"``.
        eps: floor on α for the paper form (eq. 5 is unbounded below).

    Returns:
        A differentiable 0-d tensor (0 when the mask selects no block).

    Raises:
        ConfigError: bad logits, mask, form or ``eps``.

    Examples:
        >>> import torch
        >>> from mtgraph.strategies.adashare import sparsity_loss
        >>> logits = torch.zeros(2, 4, 2)  # α = 0.5 for 2 tasks x 4 blocks
        >>> round(float(sparsity_loss(logits)), 4)  # 8 · log 0.5
        -5.5452
        >>> round(float(sparsity_loss(logits, form="code")), 4)  # 2 tasks · −log 0.5
        1.3863
    """
    _check_logits(logits)
    _check_form(form)
    mask = _check_blocks(blocks, logits.shape[1])
    if not 0 < eps < 1:
        raise ConfigError(f"eps must be in (0, 1), got {eps!r}")
    log_probs = torch.log_softmax(logits, dim=-1)
    if mask is None:
        mask = torch.ones(logits.shape[1], dtype=torch.bool, device=logits.device)
    if not bool(mask.any()):
        return logits.sum() * 0.0
    if form == "paper":
        return log_probs[:, mask, EXECUTE].clamp_min(math.log(eps)).sum()
    # −log(1 − α) is −log P(skip).
    return (-log_probs[:, mask, SKIP]).mean(dim=1).sum()


def sharing_loss(logits: torch.Tensor, *, form: Form = "paper") -> torch.Tensor:
    """Sharing regulariser (eq. 6): depth-weighted L1 between tasks' policies.

    ``form="paper"``: ``Σ_{k1, k2} Σ_{l=0}^{L−1} (L − l)/L · |α_{l,k1} − α_{l,k2}|``
    over ordered task pairs, on execute probabilities; the first block weighs
    1, the last 1/L (bottom blocks are pushed hardest to be shared).
    ``form="code"``: ``Σ_{k1<k2} Σ_l (l + 1)/L · |z_{l,k1} − z_{l,k2}|`` on the
    raw execute logits z, as the released code does.

    Args:
        logits: policy logits ``[T, L, 2]``.
        form: ``"paper"`` or ``"code"``.

    Returns:
        A differentiable 0-d tensor; 0 for a single task.

    Raises:
        ConfigError: bad logits or form.

    Examples:
        >>> import torch
        >>> from mtgraph.strategies.adashare import sharing_loss
        >>> float(sharing_loss(torch.zeros(3, 4, 2)))  # identical policies
        0.0
        >>> logits = torch.zeros(2, 2, 2)
        >>> logits[0, :, 0] = 10.0  # task 0 executes both blocks, task 1 is undecided (α = 0.5)
        >>> round(float(sharing_loss(logits)), 3)  # 2 ordered pairs · 0.5 · (1 + 1/2)
        1.5
    """
    _check_logits(logits)
    _check_form(form)
    num_blocks = logits.shape[1]
    depth = torch.arange(num_blocks, dtype=logits.dtype, device=logits.device)
    if form == "paper":
        values = torch.softmax(logits, dim=-1)[..., EXECUTE]
        weights = (num_blocks - depth) / num_blocks
    else:
        values = logits[..., EXECUTE]
        weights = (depth + 1) / num_blocks
    distance = (values[:, None, :] - values[None, :, :]).abs()  # [T, T, L]
    weighted = (distance * weights).sum(dim=-1)
    if form == "paper":
        return weighted.sum()
    return torch.triu(weighted, diagonal=1).sum()


def policy_regularization(
    logits: torch.Tensor,
    *,
    lambda_sparsity: float,
    lambda_sharing: float,
    blocks: torch.Tensor | None = None,
    sparsity_form: Form = "paper",
    sharing_form: Form = "paper",
) -> torch.Tensor:
    """Return the policy terms of eq. 7: ``λ_sp · L_sparsity + λ_sh · L_sharing``.

    The task losses ``Σ_k λ_k L_k`` are the training loop's business; this adds
    only the two regularisers (sparsity restricted to ``blocks`` if given).

    Args:
        logits: policy logits ``[T, L, 2]``.
        lambda_sparsity: λ_sp, >= 0.
        lambda_sharing: λ_sh, >= 0.
        blocks: optional bool ``[L]`` mask of the blocks the sparsity term counts.
        sparsity_form: form of :func:`sparsity_loss`.
        sharing_form: form of :func:`sharing_loss`.

    Returns:
        A differentiable 0-d tensor.

    Raises:
        ConfigError: a negative (or non-finite) λ, plus the checks of the
            two losses.

    Examples:
        >>> import torch
        >>> from mtgraph.strategies.adashare import policy_regularization
        >>> logits = torch.zeros(2, 4, 2)  # identical policies: the sharing term is 0
        >>> round(float(policy_regularization(logits, lambda_sparsity=0.1, lambda_sharing=1.0)), 4)
        -0.5545
        >>> policy_regularization(logits, lambda_sparsity=-1.0, lambda_sharing=0.0)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: lambda_sparsity must be >= 0, got -1.0
    """
    for name, value in (("lambda_sparsity", lambda_sparsity), ("lambda_sharing", lambda_sharing)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if value < 0:
            raise ConfigError(f"{name} must be >= 0, got {value!r}")
    return lambda_sparsity * sparsity_loss(logits, blocks=blocks, form=sparsity_form) + (
        lambda_sharing * sharing_loss(logits, form=sharing_form)
    )


def curriculum_mask(num_blocks: int, epoch: int, *, speed: int = 1) -> torch.Tensor:
    """Blocks whose policy is learnable at curriculum epoch ``epoch`` (§3.3).

    Only the last ``min(L, ⌊epoch / speed⌋ + 1)`` blocks are learnable; earlier
    blocks are locked (forced to execute). ``epoch`` is 0-based, so epoch 0
    learns the last block and, with ``speed = 1``, epoch ``L − 1`` and later
    learn all of them ("the joint distribution for all blocks after L epochs").
    ``speed`` is the number of epochs per newly unlocked block (the code's
    ``curriculum_speed``; 3 for NYU v2 and Cityscapes, 1 for Taskonomy).

    Args:
        num_blocks: L, the number of gated blocks (>= 1).
        epoch: 0-based curriculum epoch (>= 0).
        speed: epochs per newly unlocked block (>= 1).

    Returns:
        A bool tensor ``[num_blocks]``, True where the policy is learnable.

    Raises:
        ConfigError: an argument is not an integer in its range.

    Examples:
        >>> from mtgraph.strategies.adashare import curriculum_mask
        >>> curriculum_mask(4, 0)
        tensor([False, False, False,  True])
        >>> curriculum_mask(4, 2, speed=2)
        tensor([False, False,  True,  True])
    """
    for name, value, low in (("num_blocks", num_blocks, 1), ("epoch", epoch, 0), ("speed", speed, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    unlocked = min(num_blocks, epoch // speed + 1)
    mask = torch.zeros(num_blocks, dtype=torch.bool)
    mask[num_blocks - unlocked :] = True
    return mask


def temperature(epoch: int, tau0: float = 5.0, decay: float = 0.965) -> float:
    """Gumbel-softmax temperature after ``epoch`` policy epochs: ``tau0 · decay**epoch``.

    The paper starts at τ = 5 and "anneals it down to 0"; the released code
    multiplies by 0.965 once per weight-then-policy cycle, which is what this
    computes (it never reaches 0). ``epoch`` is 0-based (epoch 0 → ``tau0``).

    Args:
        epoch: 0-based policy epoch.
        tau0: initial temperature, > 0.
        decay: factor per epoch, in (0, 1].

    Returns:
        The temperature τ as a float.

    Raises:
        ConfigError: a negative epoch, a non-positive ``tau0`` or ``decay`` outside (0, 1].

    Examples:
        >>> from mtgraph.strategies.adashare import temperature
        >>> temperature(0)
        5.0
        >>> round(temperature(10), 3)
        3.501
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ConfigError(f"epoch must be an integer >= 0, got {epoch!r}")
    if not isinstance(tau0, (int, float)) or not math.isfinite(tau0) or tau0 <= 0:
        raise ConfigError(f"tau0 must be a finite number > 0, got {tau0!r}")
    if not isinstance(decay, (int, float)) or not 0 < decay <= 1:
        raise ConfigError(f"decay must be in (0, 1], got {decay!r}")
    return float(tau0) * float(decay) ** epoch


def derive_policy(
    logits: torch.Tensor,
    *,
    mode: Literal["argmax", "sample"] = "argmax",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Harden the learned policy into select-or-skip decisions.

    ``mode="argmax"`` executes a block iff ``α >= 0.5`` (a tie executes);
    ``mode="sample"`` draws ``u ~ Bernoulli(α)`` as the paper's second stage
    does ("we sample a select-or-skip decision ... from the best policy").

    Args:
        logits: policy logits ``[T, L, 2]``.
        mode: ``"argmax"`` or ``"sample"``.
        generator: torch random generator for reproducible samples.

    Returns:
        A bool tensor ``[T, L]``, True where the task executes the block.

    Raises:
        ConfigError: bad logits or an unknown mode.

    Examples:
        >>> import torch
        >>> from mtgraph.strategies.adashare import derive_policy
        >>> logits = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]]])  # α > 0.5, = 0.5, < 0.5
        >>> derive_policy(logits)
        tensor([[ True,  True, False]])
    """
    probabilities = execute_probability(logits).detach()
    if mode == "argmax":
        # Compare logits, not probabilities, so an exact tie is not decided by
        # softmax rounding.
        return logits.detach()[..., EXECUTE] >= logits.detach()[..., SKIP]
    if mode == "sample":
        draws = torch.rand(
            probabilities.shape, generator=generator, dtype=probabilities.dtype, device=probabilities.device
        )
        return draws < probabilities
    raise ConfigError(f"mode must be 'argmax' or 'sample', got {mode!r}")


def policy_correlation(logits: torch.Tensor, *, space: Literal["probability", "logit"] = "probability") -> torch.Tensor:
    """Task-by-task cosine similarity of the learned policies (papers/002 fig. 3e).

    Each task is the vector of its L execute probabilities α — what the paper
    calls its "policy logits" — or, with ``space="logit"``, of its raw execute
    logits. Returns a symmetric ``[T, T]`` tensor; a task whose vector is all
    zeros has similarity 0 with every task.

    Args:
        logits: policy logits ``[T, L, 2]``.
        space: ``"probability"`` (α) or ``"logit"`` (raw execute logits).

    Returns:
        The ``[T, T]`` cosine similarity matrix.

    Raises:
        ConfigError: bad logits or an unknown space.

    Examples:
        >>> import torch
        >>> from mtgraph.strategies.adashare import policy_correlation
        >>> logits = torch.zeros(2, 2, 2)
        >>> logits[0, 0, 0] = logits[1, 1, 0] = 1.0  # task 0 favours block 0, task 1 block 1
        >>> policy_correlation(logits, space="logit")
        tensor([[1., 0.],
                [0., 1.]])
    """
    _check_logits(logits)
    if space == "probability":
        vectors = torch.softmax(logits.detach(), dim=-1)[..., EXECUTE]
    elif space == "logit":
        vectors = logits.detach()[..., EXECUTE]
    else:
        raise ConfigError(f"space must be 'probability' or 'logit', got {space!r}")
    unit = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(torch.finfo(vectors.dtype).tiny)
    return unit @ unit.T


def undecided_gates(logits: torch.Tensor, margin: float) -> torch.Tensor:
    """Gates whose execute probability is within ``margin`` of 0.5: their argmax is nearly a coin flip.

    Args:
        logits: policy logits ``[T, L, 2]``.
        margin: a gate is decided when ``|α − 0.5| >= margin`` (in [0, 0.5]).

    Returns:
        A bool ``[T, L]`` tensor, True where the gate is undecided.

    Raises:
        ConfigError: bad logits or a margin outside [0, 0.5].

    Examples:
        >>> import torch
        >>> from mtgraph.strategies.adashare import undecided_gates
        >>> logits = torch.tensor([[[0.0, 0.0], [3.0, 0.0], [0.0, 0.5]]])  # α = 0.5, 0.95, 0.38
        >>> undecided_gates(logits, 0.25)
        tensor([[ True, False,  True]])
    """
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin <= 0.5:
        raise ConfigError(f"margin must be a number in [0, 0.5], got {margin!r}")
    alpha = execute_probability(logits.detach())
    return (alpha - 0.5).abs() < margin

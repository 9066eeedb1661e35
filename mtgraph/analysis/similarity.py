"""Representation similarity: linear CKA (MTSL) and RSA task affinity (BMTN).

Two families of measures live here, both pure functions on feature tensors:

* **Linear CKA** (papers/000 eq. 1 and appendix F). MTSL compares the outputs
  of task nodes with centred kernel alignment, both as a training loss
  (``λ(1 − CKA)``) and to decide which task nodes to fuse. Features
  ``[N, C, *spatial]`` are mean-pooled over space to ``[N, C]`` first, as the
  paper does. The default estimator is the unbiased one (debiased HSIC,
  Song et al. 2012, as used by Nguyen et al. 2021) because MTSL evaluates CKA
  on small training minibatches, where the biased estimator is inflated.
* **RSA** (papers/001 §3.1, Algorithm 1). Each task's features on K probe
  images give a K×K representation dissimilarity matrix (RDM,
  ``1 − Pearson``); two tasks' affinity is the Spearman rank correlation of
  their RDMs' strict upper triangles.

Nothing here knows about graphs, blocks or training loops.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import torch

from mtgraph.errors import ConfigError

__all__ = [
    "cka_matrix",
    "linear_cka",
    "rdm",
    "rsa_affinity",
    "spearman",
]

# The unbiased HSIC divides by n(n-3) and (n-1)(n-2): below 4 samples it is
# undefined, not merely noisy.
_MIN_SAMPLES_UNBIASED = 4
_MIN_SAMPLES_BIASED = 2
# RSA needs at least three images for an RDM upper triangle with more than one
# entry; a single pair has no rank order to correlate.
_MIN_RSA_IMAGES = 3


# --------------------------------------------------------------------------- #
# CKA
# --------------------------------------------------------------------------- #


def _pooled_features(x: torch.Tensor, what: str) -> torch.Tensor:
    """Return ``x`` as an ``[N, C]`` matrix, mean-pooling any spatial dims."""
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise ConfigError(f"{what} must have shape [N, C, *spatial] (at least 2 dims), got shape {list(x.shape)}")
    if not x.is_floating_point():
        raise ConfigError(f"{what} must be a floating-point tensor, got {x.dtype}")
    if x.ndim > 2:
        # papers/000 appendix F: "taking the mean across the spatial dimension
        # to obtain N x C dimensional representations".
        x = x.mean(dim=tuple(range(2, x.ndim)))
    if x.dtype in (torch.float16, torch.bfloat16):
        # Gram matrices of half-precision features overflow and lose the
        # small differences CKA is made of.
        x = x.float()
    return x


def _centred_gram(x: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """Linear-kernel Gram matrix of ``x [N, C]``, centred for the HSIC estimator.

    Biased: ``H K H`` with ``H = I − 11ᵀ/n``, so ``<K̂x, K̂y>`` is
    ``(n−1)² HSIC₀``. Unbiased: the U-centred Gram matrix (zero diagonal, row
    and column sums corrected with the ``n−2`` and ``(n−1)(n−2)`` factors), so
    ``<K̂x, K̂y>`` is ``n(n−3) HSIC₁`` of Song et al. (2012). The constants
    cancel in CKA, so they are not applied.
    """
    n = x.shape[0]
    gram = x @ x.T
    if not unbiased:
        gram = gram - gram.mean(dim=0, keepdim=True)
        return gram - gram.mean(dim=1, keepdim=True)
    off_diagonal = 1.0 - torch.eye(n, dtype=gram.dtype, device=gram.device)
    gram = gram * off_diagonal
    row_sums = gram.sum(dim=1)
    total = row_sums.sum()
    centred = gram - row_sums[:, None] / (n - 2) - row_sums[None, :] / (n - 2) + total / ((n - 1) * (n - 2))
    # U-centring defines the diagonal as zero; multiplying (not assigning)
    # keeps the operation differentiable.
    return centred * off_diagonal


def _check_sample_count(n: int, unbiased: bool) -> None:
    """Raise ConfigError when ``n`` samples are too few for the estimator."""
    needed = _MIN_SAMPLES_UNBIASED if unbiased else _MIN_SAMPLES_BIASED
    if n < needed:
        kind = "unbiased" if unbiased else "biased"
        raise ConfigError(
            f"the {kind} CKA estimator needs at least {needed} samples, got N={n}; "
            "use a larger batch" + (" or unbiased=False" if unbiased else "")
        )


def _safe_norm(squared: torch.Tensor) -> torch.Tensor:
    """Square root of a non-negative HSIC self-term, never exactly zero.

    A constant feature (zero centred Gram matrix) has no defined CKA; clamping
    makes it 0 instead of NaN so a loss built on it stays finite.
    """
    return torch.sqrt(squared.clamp_min(torch.finfo(squared.dtype).tiny))


def linear_cka(x: torch.Tensor, y: torch.Tensor, *, unbiased: bool = True) -> torch.Tensor:
    """Linear CKA between two representations of the same N inputs.

    Args:
        x: features ``[N, C_x, *spatial]``; spatial dims are mean-pooled.
        y: features ``[N, C_y, *spatial]``; channel counts may differ from x.
        unbiased: use the debiased HSIC (U-statistic, Song et al. 2012) as in
            papers/000 appendix F; ``False`` gives the classic biased CKA of
            Kornblith et al. (2019).

    Returns:
        A 0-d tensor in ``[−1, 1]`` (the unbiased estimate can be slightly
        negative for unrelated features; the biased one lies in ``[0, 1]``).
        It is differentiable, so ``λ * (1 - linear_cka(a, b))`` is the MTSL
        alignment term of eq. 1. A constant (zero-variance) representation
        gives 0, not NaN.

    Raises:
        ConfigError: shapes disagree on N, a tensor is not floating point, or
            N is below 4 (unbiased) / 2 (biased).

    Examples:
        >>> import torch
        >>> from mtgraph.analysis.similarity import linear_cka
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(8, 4, 2, 2)
        >>> round(float(linear_cka(x, 3 * x + 1)), 4)  # invariant to scaling and shifts
        1.0
        >>> float(linear_cka(x, torch.randn(8, 6), unbiased=False)) < 1.0
        True
        >>> linear_cka(torch.randn(3, 4), torch.randn(3, 4))
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: the unbiased CKA estimator needs at least 4 samples, got N=3; ...
    """
    fx = _pooled_features(x, "x")
    fy = _pooled_features(y, "y")
    if fx.shape[0] != fy.shape[0]:
        raise ConfigError(f"x and y must describe the same inputs: x has N={fx.shape[0]}, y has N={fy.shape[0]}")
    _check_sample_count(fx.shape[0], unbiased)
    dtype = torch.promote_types(fx.dtype, fy.dtype)
    kx = _centred_gram(fx.to(dtype), unbiased)
    ky = _centred_gram(fy.to(dtype), unbiased)
    cross = (kx * ky).sum()
    return cross / (_safe_norm((kx * kx).sum()) * _safe_norm((ky * ky).sum()))


def cka_matrix(features: Mapping[str, torch.Tensor], *, unbiased: bool = True) -> tuple[tuple[str, ...], torch.Tensor]:
    """Pairwise linear CKA between several representations of the same inputs.

    Args:
        features: name → features ``[N, C, *spatial]`` (same N for all; the
            channel counts may differ). Order of the mapping is kept.
        unbiased: estimator, as in :func:`linear_cka`.

    Returns:
        ``(names, matrix)``: the names in mapping order and a symmetric
        ``[T, T]`` tensor with ``matrix[i, j] = linear_cka(f_i, f_j)``. Each
        centred Gram matrix is built once, so T representations cost T Gram
        matrices, not T². The diagonal is 1 (0 for a constant representation).
        The result is differentiable; wrap the call in ``torch.no_grad()``
        when it only feeds a grouping decision.

    Raises:
        ConfigError: fewer than one entry, mismatched N, or too few samples.

    Examples:
        >>> import torch
        >>> from mtgraph.analysis.similarity import cka_matrix
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(8, 4, 2, 2)
        >>> names, matrix = cka_matrix({"seg": x, "depth": 2 * x, "noise": torch.randn(8, 5)})
        >>> names, matrix.shape
        (('seg', 'depth', 'noise'), torch.Size([3, 3]))
        >>> round(float(matrix[0, 1]), 4), bool(matrix[0, 2] < 0.5)
        (1.0, True)
    """
    names = tuple(features)
    if not names:
        raise ConfigError("cka_matrix needs at least one feature tensor, got none")
    pooled = [_pooled_features(features[name], f"features[{name!r}]") for name in names]
    counts = {name: f.shape[0] for name, f in zip(names, pooled, strict=True)}
    if len(set(counts.values())) != 1:
        raise ConfigError(f"all features must have the same N, got {counts}")
    _check_sample_count(pooled[0].shape[0], unbiased)
    dtype = pooled[0].dtype
    for f in pooled[1:]:
        dtype = torch.promote_types(dtype, f.dtype)
    grams = torch.stack([_centred_gram(f.to(dtype), unbiased).reshape(-1) for f in pooled])
    inner = grams @ grams.T
    norms = _safe_norm(torch.diagonal(inner))
    return names, inner / (norms[:, None] * norms[None, :])


# --------------------------------------------------------------------------- #
# RSA
# --------------------------------------------------------------------------- #


def rdm(features: torch.Tensor) -> torch.Tensor:
    """Representation dissimilarity matrix of K images (papers/001 §3.1).

    ``RDM[i, j] = 1 − ρ(x_i, x_j)`` where ``x_i`` is image i's feature tensor
    flattened to one vector (C·H·W values, no pooling, as in the paper) and ρ
    is the Pearson correlation. Computed in float64 by centring each row,
    L2-normalising it and taking ``1 − Z Zᵀ``.

    Args:
        features: ``[K, ...]`` features of K images from one task's network.

    Returns:
        A symmetric float64 ``[K, K]`` tensor in ``[0, 2]`` with an exact zero
        diagonal. A constant image vector has no defined correlation: it is
        treated as uncorrelated with every other image (dissimilarity 1) and a
        warning names it. Features are detached: RSA is an offline probe,
        not a loss.

    Raises:
        ConfigError: features are not a floating tensor with at least 2 dims
            and at least 2 values per image.

    Examples:
        >>> import torch
        >>> from mtgraph.analysis.similarity import rdm
        >>> images = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [3.0, 2.0, 1.0]])
        >>> rdm(images).round(decimals=6)  # images 0 and 1 correlate perfectly, image 2 is reversed
        tensor([[0., 0., 2.],
                [0., 0., 2.],
                [2., 2., 0.]], dtype=torch.float64)
    """
    if not isinstance(features, torch.Tensor) or not features.is_floating_point():
        raise ConfigError("rdm needs a floating-point tensor of shape [K, ...]")
    if features.ndim < 2 or features[0].numel() < 2:
        raise ConfigError(
            f"rdm needs features of shape [K, ...] with at least 2 values per image, got shape {list(features.shape)}"
        )
    flat = features.detach().reshape(features.shape[0], -1).to(torch.float64)
    centred = flat - flat.mean(dim=1, keepdim=True)
    norms = centred.norm(dim=1, keepdim=True)
    # A row whose spread is at rounding level is constant for our purposes.
    scale = flat.abs().amax(dim=1, keepdim=True).clamp_min(1.0)
    constant = (norms <= 1e-12 * scale * math.sqrt(flat.shape[1])).squeeze(1)
    if bool(constant.any()):
        warnings.warn(
            "rdm: images "
            f"{constant.nonzero().flatten().tolist()} have constant features; "
            "their Pearson correlation is undefined and is taken as 0",
            RuntimeWarning,
            stacklevel=2,
        )
    z = torch.where(constant[:, None], torch.zeros_like(centred), centred / norms.clamp_min(1e-300))
    correlation = (z @ z.T).clamp(-1.0, 1.0)
    dissimilarity = 1.0 - correlation
    dissimilarity.fill_diagonal_(0.0)
    return dissimilarity


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor, ties sharing their average rank."""
    n = values.shape[0]
    order = torch.argsort(values, stable=True)
    ordered = values[order]
    starts = torch.ones(n, dtype=torch.bool, device=values.device)
    starts[1:] = ordered[1:] != ordered[:-1]
    run = torch.cumsum(starts.long(), dim=0) - 1
    positions = torch.arange(1, n + 1, dtype=torch.float64, device=values.device)
    run_count = int(run[-1]) + 1
    run_sum = torch.zeros(run_count, dtype=torch.float64, device=values.device)
    run_sum.scatter_add_(0, run, positions)
    run_size = torch.bincount(run, minlength=run_count).to(torch.float64)
    ranks = torch.empty(n, dtype=torch.float64, device=values.device)
    ranks[order] = (run_sum / run_size)[run]
    return ranks


def spearman(a: torch.Tensor | Sequence[float], b: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Spearman rank correlation of two equally long 1-D samples.

    Ties get the average of the ranks they span (as ``scipy.stats.rankdata``
    does by default); the result is the Pearson correlation of the ranks, in
    float64. Not differentiable (ranks are piecewise constant).

    Args:
        a: the first sample (a 1-D tensor or a sequence of numbers).
        b: the second sample, as long as ``a``.

    Returns:
        A 0-d float64 tensor in ``[−1, 1]``; NaN when either sample is
        constant (all ranks tied), where the correlation is undefined.

    Raises:
        ConfigError: not 1-D, different lengths, fewer than 2 values, or a
            NaN value.

    Examples:
        >>> from mtgraph.analysis.similarity import spearman
        >>> same, reversed_ = spearman([1, 2, 3, 4], [10, 20, 30, 40]), spearman([1, 2, 3, 4], [4, 3, 2, 1])
        >>> round(float(same), 6), round(float(reversed_), 6)
        (1.0, -1.0)
        >>> round(float(spearman([1, 2, 3, 4], [1, 3, 2, 4])), 2)  # one swapped pair
        0.8
    """
    ta = torch.as_tensor(a).detach().to(torch.float64)
    tb = torch.as_tensor(b).detach().to(torch.float64)
    if ta.ndim != 1 or tb.ndim != 1:
        raise ConfigError(f"spearman needs two 1-D samples, got shapes {list(ta.shape)} and {list(tb.shape)}")
    if ta.shape[0] != tb.shape[0]:
        raise ConfigError(f"spearman needs samples of equal length, got {ta.shape[0]} and {tb.shape[0]}")
    if ta.shape[0] < 2:
        raise ConfigError(f"spearman needs at least 2 values, got {ta.shape[0]}")
    if bool(torch.isnan(ta).any() or torch.isnan(tb).any()):
        raise ConfigError("spearman got NaN values; ranks of NaN are undefined")
    ra = _average_ranks(ta)
    rb = _average_ranks(tb)
    ra = ra - ra.mean()
    rb = rb - rb.mean()
    denominator = ra.norm() * rb.norm()
    if float(denominator) == 0.0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    return ((ra * rb).sum() / denominator).clamp(-1.0, 1.0)


def rsa_affinity(
    features_by_task: Mapping[str, torch.Tensor],
) -> tuple[tuple[str, ...], torch.Tensor]:
    """Task affinity at one location by representation similarity analysis.

    papers/001 §3.1 / Algorithm 1: for each task, the RDM of its features on
    the same K probe images; the affinity of tasks i and j is the Spearman
    correlation of the strict upper triangles (K(K−1)/2 entries) of their RDMs.
    Stack one call per location to get the paper's D×N×N tensor.

    Args:
        features_by_task: task name → features ``[K, ...]`` on the same K
            images, in the same order for every task.

    Returns:
        ``(names, affinity)``: names in mapping order and a symmetric float64
        ``[N, N]`` tensor with ones on the diagonal. Dissimilarity, for tree
        costs, is ``1 − affinity``.

    Raises:
        ConfigError: no tasks, differing K, K < 3, or a task whose RDM is
            constant (every pair of images equally dissimilar, so Spearman is
            undefined; use more varied probe images).

    Examples:
        >>> import torch
        >>> from mtgraph.analysis.similarity import rsa_affinity
        >>> _ = torch.manual_seed(0)
        >>> seg = torch.randn(5, 3, 2, 2)
        >>> names, affinity = rsa_affinity({"seg": seg, "depth": 2 * seg + 1, "edges": torch.randn(5, 3, 2, 2)})
        >>> names, affinity.shape
        (('seg', 'depth', 'edges'), torch.Size([3, 3]))
        >>> round(float(affinity[0, 1]), 4), bool(affinity[0, 2] < 0.9)  # depth is a rescaled seg
        (1.0, True)
    """
    names = tuple(features_by_task)
    if not names:
        raise ConfigError("rsa_affinity needs at least one task, got none")
    counts = {}
    for name in names:
        value = features_by_task[name]
        if not isinstance(value, torch.Tensor) or value.ndim < 2:
            raise ConfigError(f"features for task {name!r} must be a tensor of shape [K, ...]")
        counts[name] = value.shape[0]
    if len(set(counts.values())) != 1:
        raise ConfigError(f"all tasks must be probed on the same K images, got K per task {counts}")
    k = counts[names[0]]
    if k < _MIN_RSA_IMAGES:
        raise ConfigError(f"RSA needs at least {_MIN_RSA_IMAGES} probe images to rank image pairs, got K={k}")
    rows, cols = torch.triu_indices(k, k, offset=1)
    upper = {name: rdm(features_by_task[name])[rows, cols] for name in names}
    for name, values in upper.items():
        if bool((values == values[0]).all()):
            raise ConfigError(
                f"task {name!r}: all {values.shape[0]} image pairs are equally dissimilar "
                f"(RDM entries all {float(values[0]):.6g}), so its rank correlation is "
                "undefined; use more varied probe images"
            )
    affinity = torch.eye(len(names), dtype=torch.float64)
    for i, first in enumerate(names):
        for j in range(i + 1, len(names)):
            value = spearman(upper[first], upper[names[j]])
            affinity[i, j] = value
            affinity[j, i] = value
    return names, affinity

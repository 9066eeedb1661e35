"""Tests for mtgraph.analysis.similarity: linear CKA, RDM, Spearman, RSA."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mtgraph.analysis.similarity import cka_matrix, linear_cka, rdm, rsa_affinity, spearman
from mtgraph.errors import ConfigError


def _features(n: int = 32, c: int = 6, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=generator, dtype=dtype)


def _orthogonal(c: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(c, c, generator=generator, dtype=torch.float64))
    return q


# --------------------------------------------------------------------------- #
# Reference HSIC estimators, written from the definitions (no shared code).
# --------------------------------------------------------------------------- #


def _hsic_song_formula(k: torch.Tensor, g: torch.Tensor) -> float:
    """Song et al. (2012) eq. 5, the closed form of the unbiased HSIC."""
    n = k.shape[0]
    kt = k.clone().fill_diagonal_(0)
    lt = g.clone().fill_diagonal_(0)
    ones = torch.ones(n, dtype=k.dtype)
    value = (
        torch.trace(kt @ lt)
        + (ones @ kt @ ones) * (ones @ lt @ ones) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (ones @ kt @ lt @ ones)
    )
    return float(value) / (n * (n - 3))


def _hsic_u_statistic(k: torch.Tensor, g: torch.Tensor) -> float:
    """The same estimator as an explicit U-statistic over distinct index tuples."""
    n = k.shape[0]
    kk = k.tolist()
    ll = g.tolist()
    pairs = list(itertools.permutations(range(n), 2))
    triples = list(itertools.permutations(range(n), 3))
    quads = list(itertools.permutations(range(n), 4))
    first = sum(kk[i][j] * ll[i][j] for i, j in pairs) / len(pairs)
    second = sum(kk[i][j] * ll[q][r] for i, j, q, r in quads) / len(quads)
    third = sum(kk[i][j] * ll[i][q] for i, j, q in triples) / len(triples)
    return first + second - 2.0 * third


def _cka_from(hsic, x: torch.Tensor, y: torch.Tensor) -> float:
    kx = x @ x.T
    ky = y @ y.T
    return hsic(kx, ky) / math.sqrt(hsic(kx, kx) * hsic(ky, ky))


# --------------------------------------------------------------------------- #
# CKA
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("unbiased", [True, False])
def test_cka_of_identical_features_is_one(unbiased: bool) -> None:
    x = _features()
    assert float(linear_cka(x, x, unbiased=unbiased)) == pytest.approx(1.0, abs=1e-12)


def test_cka_pools_spatial_dims_before_comparing() -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(16, 4, 5, 7, generator=generator, dtype=torch.float64)
    y = torch.randn(16, 3, 2, 2, generator=generator, dtype=torch.float64)
    expected = linear_cka(x.mean(dim=(2, 3)), y.mean(dim=(2, 3)))
    assert float(linear_cka(x, y)) == pytest.approx(float(expected), abs=1e-12)


@pytest.mark.parametrize("unbiased", [True, False])
def test_cka_invariant_to_orthogonal_maps_and_isotropic_scaling(unbiased: bool) -> None:
    x = _features(seed=0)
    y = _features(c=9, seed=5) + 0.5 * torch.cat([x, x[:, :3]], dim=1)
    reference = float(linear_cka(x, y, unbiased=unbiased))
    transformed = 3.7 * x @ _orthogonal(x.shape[1])
    assert float(linear_cka(transformed, y, unbiased=unbiased)) == pytest.approx(reference, abs=1e-10)
    assert float(linear_cka(x, 0.01 * y, unbiased=unbiased)) == pytest.approx(reference, abs=1e-10)
    assert float(linear_cka(x, transformed, unbiased=unbiased)) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("unbiased", [True, False])
def test_cka_not_invariant_to_arbitrary_linear_maps(unbiased: bool) -> None:
    x = _features(seed=0)
    stretch = torch.diag(torch.tensor([20.0, 1.0, 1.0, 1.0, 1.0, 0.05], dtype=torch.float64))
    value = float(linear_cka(x, x @ stretch, unbiased=unbiased))
    assert value < 0.9


def test_unbiased_cka_matches_song_formula_and_u_statistic() -> None:
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(7, 3, generator=generator, dtype=torch.float64)
    y = 0.7 * x[:, :2] + torch.randn(7, 2, generator=generator, dtype=torch.float64)
    ours = float(linear_cka(x, y, unbiased=True))
    assert ours == pytest.approx(_cka_from(_hsic_song_formula, x, y), abs=1e-12)
    assert ours == pytest.approx(_cka_from(_hsic_u_statistic, x, y), abs=1e-12)


def test_unbiased_cka_matches_song_formula_on_larger_random_data() -> None:
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(25, 8, generator=generator, dtype=torch.float64)
        y = x @ torch.randn(8, 5, generator=generator, dtype=torch.float64)
        y = y + 2.0 * torch.randn(25, 5, generator=generator, dtype=torch.float64)
        assert float(linear_cka(x, y)) == pytest.approx(_cka_from(_hsic_song_formula, x, y), abs=1e-12)


def test_biased_cka_matches_feature_space_formula() -> None:
    x = _features(n=20, c=4, seed=2)
    y = _features(n=20, c=7, seed=3)
    xc = x - x.mean(dim=0)
    yc = y - y.mean(dim=0)
    expected = (xc.T @ yc).norm() ** 2 / ((xc.T @ xc).norm() * (yc.T @ yc).norm())
    assert float(linear_cka(x, y, unbiased=False)) == pytest.approx(float(expected), abs=1e-12)


def test_cka_is_differentiable_as_an_alignment_loss() -> None:
    x = _features(n=16, c=5, seed=0, dtype=torch.float32).requires_grad_(True)
    y = _features(n=16, c=5, seed=1, dtype=torch.float32).reshape(16, 5, 1, 1).requires_grad_(True)
    loss = 0.2 * (1.0 - linear_cka(x, y))
    loss.backward()
    for grad in (x.grad, y.grad):
        assert grad is not None
        assert bool(torch.isfinite(grad).all())
        assert float(grad.abs().sum()) > 0


def test_cka_of_constant_features_is_zero_with_finite_gradient() -> None:
    x = torch.ones(8, 3, requires_grad=True)
    y = _features(n=8, c=3, dtype=torch.float32)
    value = linear_cka(x, y)
    value.backward()
    assert float(value.detach()) == 0.0
    assert bool(torch.isfinite(x.grad).all())


def test_cka_input_errors() -> None:
    with pytest.raises(ConfigError, match="at least 4 samples, got N=3"):
        linear_cka(_features(n=3), _features(n=3))
    assert math.isfinite(float(linear_cka(_features(n=3), _features(n=3, seed=1), unbiased=False)))
    with pytest.raises(ConfigError, match="N=8.*N=9"):
        linear_cka(_features(n=8), _features(n=9))
    with pytest.raises(ConfigError, match="at least 2 dims"):
        linear_cka(torch.randn(8), torch.randn(8))
    with pytest.raises(ConfigError, match="floating-point"):
        linear_cka(torch.ones(8, 2, dtype=torch.long), _features(n=8))


def test_cka_matrix_matches_pairwise_cka() -> None:
    features = {
        "seg": _features(n=12, c=4, seed=0).reshape(12, 4, 1, 1).expand(12, 4, 3, 3),
        "depth": _features(n=12, c=6, seed=1),
        "normals": _features(n=12, c=2, seed=2),
    }
    names, matrix = cka_matrix(features)
    assert names == ("seg", "depth", "normals")
    assert matrix.shape == (3, 3)
    assert torch.allclose(matrix, matrix.T)
    assert torch.allclose(torch.diagonal(matrix), torch.ones(3, dtype=matrix.dtype))
    for i, j in itertools.combinations(range(3), 2):
        expected = linear_cka(features[names[i]], features[names[j]])
        assert float(matrix[i, j]) == pytest.approx(float(expected), abs=1e-12)


def test_cka_matrix_errors() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        cka_matrix({})
    with pytest.raises(ConfigError, match="same N"):
        cka_matrix({"a": _features(n=8), "b": _features(n=9)})


# --------------------------------------------------------------------------- #
# RDM, Spearman, RSA
# --------------------------------------------------------------------------- #


def test_rdm_is_one_minus_pearson_of_flattened_images() -> None:
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(5, 2, 3, 3, generator=generator)
    result = rdm(features)
    flat = features.reshape(5, -1).to(torch.float64)
    assert result.dtype == torch.float64
    for i, j in itertools.product(range(5), repeat=2):
        a = flat[i] - flat[i].mean()
        b = flat[j] - flat[j].mean()
        expected = 0.0 if i == j else 1.0 - float(a @ b / (a.norm() * b.norm()))
        assert float(result[i, j]) == pytest.approx(expected, abs=1e-12)
    assert bool((torch.diagonal(result) == 0).all())


def test_rdm_warns_about_constant_images() -> None:
    features = torch.randn(4, 6, dtype=torch.float64)
    features[2] = 3.0
    with pytest.warns(RuntimeWarning, match=r"images \[2\]"):
        result = rdm(features)
    assert float(result[2, 0]) == pytest.approx(1.0)


def test_spearman_with_ties_matches_hand_computation() -> None:
    # Ranks: a -> [1, 2.5, 2.5, 4], b -> [1, 3, 2, 4]; Pearson of ranks = 3/sqrt(10).
    assert float(spearman([1.0, 2.0, 2.0, 3.0], [1.0, 3.0, 2.0, 4.0])) == pytest.approx(3 / math.sqrt(10), abs=1e-12)
    # Ranks: a -> [1, 3, 3, 3, 5], b -> [5, 4, 3, 2, 1]; r = -8/sqrt(8*10).
    assert float(spearman([10, 20, 20, 20, 30], [5, 4, 3, 2, 1])) == pytest.approx(-8 / math.sqrt(80), abs=1e-12)


def test_spearman_is_pearson_of_ranks_without_ties() -> None:
    a = torch.tensor([0.3, -1.0, 2.5, 0.0, 7.0])
    b = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    # Ranks of a: [3, 1, 4, 2, 5]; d = [-2, 1, -1, 2, 0]; 1 - 6*10/(5*24) = 0.5.
    assert float(spearman(a, b)) == pytest.approx(0.5, abs=1e-12)


def test_spearman_invariant_to_monotone_transforms() -> None:
    generator = torch.Generator().manual_seed(8)
    first = rdm(torch.randn(9, 12, generator=generator))
    second = rdm(torch.randn(9, 12, generator=generator))
    rows, cols = torch.triu_indices(9, 9, offset=1)
    a, b = first[rows, cols], second[rows, cols]
    reference = float(spearman(a, b))
    assert float(spearman(a, torch.exp(3 * b))) == pytest.approx(reference, abs=1e-12)
    assert float(spearman(a**3 + 1, b)) == pytest.approx(reference, abs=1e-12)
    assert float(spearman(a, -b)) == pytest.approx(-reference, abs=1e-12)


def test_spearman_edge_cases() -> None:
    assert math.isnan(float(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])))
    with pytest.raises(ConfigError, match="equal length"):
        spearman([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ConfigError, match="NaN"):
        spearman([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ConfigError, match="at least 2"):
        spearman([1.0], [1.0])


def test_rsa_affinity_of_identical_features_is_one() -> None:
    features = torch.randn(10, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    # Per-image affine changes leave Pearson correlations, hence the RDM, unchanged.
    names, affinity = rsa_affinity({"a": features, "b": features.clone(), "c": 2.0 * features + 1.0})
    assert names == ("a", "b", "c")
    assert torch.allclose(affinity, torch.ones(3, 3, dtype=torch.float64))


def test_rsa_affinity_matches_spearman_of_upper_triangles() -> None:
    generator = torch.Generator().manual_seed(2)
    shared = torch.randn(12, 20, generator=generator)
    features = {
        "s": shared + 0.1 * torch.randn(12, 20, generator=generator),
        "p": shared + 0.3 * torch.randn(12, 20, generator=generator),
        "x": torch.randn(12, 20, generator=generator),
    }
    names, affinity = rsa_affinity(features)
    rows, cols = torch.triu_indices(12, 12, offset=1)
    assert torch.allclose(affinity, affinity.T)
    assert bool((torch.diagonal(affinity) == 1).all())
    for i, j in itertools.combinations(range(3), 2):
        expected = spearman(rdm(features[names[i]])[rows, cols], rdm(features[names[j]])[rows, cols])
        assert float(affinity[i, j]) == pytest.approx(float(expected), abs=1e-12)
    assert float(affinity[0, 1]) > float(affinity[0, 2])


def test_rsa_affinity_errors() -> None:
    with pytest.raises(ConfigError, match=r"at least 3 probe images.*got K=2"):
        rsa_affinity({"a": torch.randn(2, 5), "b": torch.randn(2, 5)})
    names, _ = rsa_affinity({"a": torch.randn(3, 5), "b": torch.randn(3, 5)})
    assert names == ("a", "b")
    with pytest.raises(ConfigError, match="same K"):
        rsa_affinity({"a": torch.randn(4, 5), "b": torch.randn(5, 5)})
    with pytest.raises(ConfigError, match="at least one task"):
        rsa_affinity({})
    # Three images whose pairwise correlations are all equal: a constant RDM.
    equicorrelated = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ConfigError, match=r"task 'b'.*equally dissimilar"):
        rsa_affinity({"a": torch.randn(3, 5), "b": equicorrelated})

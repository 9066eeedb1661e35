"""Branching-tree search (papers/001 §3.2): tree value, clustering cost, enumeration, budgeted search.

The reference for every search is computed here, independently of the module's
searches and scorer: enumerate all trees, score each with the few lines of
:func:`_ref_dissimilarity` (checked against ``tree_dissimilarity``) and take the
minimum of (dissimilarity, cost, key) among those within budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtgraph.errors import BudgetError, ConfigError
from mtgraph.strategies.affinity.tree_search import (
    EXHAUSTIVE_LIMIT,
    BranchingTree,
    best_tree,
    budget_path,
    count_trees,
    enumerate_trees,
    tree_dissimilarity,
)

CostFn = Callable[[BranchingTree], float]


def _tree(*levels: str) -> BranchingTree:
    """``_tree("abcd", "ab|cd")``: one string per location, groups split by ``|``."""
    return BranchingTree(tuple(tuple(frozenset(group) for group in level.split("|")) for level in levels))


def _random_affinity(rng: np.random.Generator, locations: int, tasks: int) -> np.ndarray:
    a = rng.uniform(-1.0, 1.0, size=(locations, tasks, tasks))
    a = (a + a.transpose(0, 2, 1)) / 2
    for level in a:
        np.fill_diagonal(level, 1.0)
    return a


def _block_cost(rng: np.random.Generator, locations: int) -> CostFn:
    """A monotone, non-additive cost: block l costs w_l per copy, plus a penalty on many branches."""
    weights = rng.integers(1, 50, size=locations)

    def cost(tree: BranchingTree) -> float:
        copies = [len(p) for p in tree.partitions]
        return float(sum(w * c for w, c in zip(weights, copies, strict=True)) + max(copies) ** 2)

    return cost


def _ref_dissimilarity(tree: BranchingTree, affinity: np.ndarray, tasks: tuple[str, ...], linkage: str) -> float:
    """The clustering cost straight from its definition (diameter readings only)."""
    index = {t: i for i, t in enumerate(tasks)}
    total = 0.0
    for level, partition in enumerate(tree.partitions):
        diameters = [
            max(1.0 - affinity[level, index[x], index[y]] for x in group for y in group if x != y)
            for group in partition
            if len(group) > 1
        ]
        if diameters:
            total += sum(diameters) / (len(diameters) if linkage == "diameter" else len(partition))
    return total


def _reference(
    affinity: np.ndarray, tasks: tuple[str, ...], budget: float, cost: CostFn, root_shared: bool, linkage: str
) -> tuple[float, float, BranchingTree]:
    scored = [
        (_ref_dissimilarity(t, affinity, tasks, linkage), cost(t), t.key(), t)
        for t in enumerate_trees(tasks, affinity.shape[0], root_shared=root_shared)
        if cost(t) <= budget
    ]
    dis, c, _key, tree = min(scored, key=lambda s: s[:3])
    return dis, c, tree


# --------------------------------------------------------------------------- #
# The tree value
# --------------------------------------------------------------------------- #


def test_tree_is_canonical_and_exposes_groups() -> None:
    a = _tree("abc", "ab|c", "a|b|c")
    b = BranchingTree(((frozenset("cab"),), (frozenset("c"), frozenset("ba")), tuple(frozenset(x) for x in "cba")))
    assert a == b and hash(a) == hash(b)
    assert a.groups() == ((("a", "b", "c"),), (("a", "b"), ("c",)), (("a",), ("b",), ("c",)))
    assert a.tasks == frozenset("abc") and a.num_locations == 3
    assert [a.branches(level) for level in range(3)] == [1, 2, 3]
    assert str(a) == "{a,b,c} / {a,b} {c} / {a} {b} {c}"
    assert BranchingTree(a.groups()) == a
    assert a.refines(BranchingTree.all_shared(("a", "b", "c"), 3))
    assert not BranchingTree.all_shared(("a", "b", "c"), 3).refines(a)
    assert BranchingTree.fully_split(["a", "b", "c"], 3).refines(a)


def test_depth_zero_may_already_be_split() -> None:
    tree = _tree("ab|c", "a|b|c")
    assert tree.branches(0) == 2


@pytest.mark.parametrize(
    ("levels", "message"),
    [
        (("ab|c", "a|bc"), "spans several groups"),
        (("abc", "ab"), "every location must partition the same tasks"),
        (("ab|bc",), "more than one group"),
        ((), "at least one location"),
    ],
)
def test_invalid_trees_are_refused(levels: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _tree(*levels)


def test_task_names_must_be_strings() -> None:
    with pytest.raises(ConfigError, match="non-empty strings"):
        BranchingTree(((frozenset({1, 2}),),))


# --------------------------------------------------------------------------- #
# Clustering cost
# --------------------------------------------------------------------------- #


def _hand_affinity() -> np.ndarray:
    # Location 0: every pair 0.8 except (a, d) = 0.2. Location 1: a-b 0.9,
    # c-d 0.6, every other pair 0.1.
    a0 = np.full((4, 4), 0.8)
    a0[0, 3] = a0[3, 0] = 0.2
    a1 = np.full((4, 4), 0.1)
    a1[0, 1] = a1[1, 0] = 0.9
    a1[2, 3] = a1[3, 2] = 0.6
    for m in (a0, a1):
        np.fill_diagonal(m, 1.0)
    return np.stack([a0, a1])


HAND_TASKS = ("a", "b", "c", "d")


def test_clustering_cost_matches_hand_calculation() -> None:
    affinity = _hand_affinity()
    # Level 0, one cluster {a,b,c,d}: diameter = 1 − 0.2 = 0.8.
    # Level 1, {a,b} and {c,d}: diameters 0.1 and 0.4, mean 0.25.  C = 1.05.
    two_pairs = _tree("abcd", "ab|cd")
    assert tree_dissimilarity(two_pairs, affinity, HAND_TASKS) == pytest.approx(1.05, abs=1e-12)
    # Level 1, {a,b} {c} {d}:
    #   diameter (singletons left out of the mean): 0.1        -> C = 0.9
    #   diameter_all (singletons count 0): 0.1 / 3             -> C = 0.8 + 0.0333…
    #   element_max: level 0 per task a 0.8, b 0.2, c 0.2, d 0.8 -> 0.5;
    #                level 1 a 0.1, b 0.1, c 0, d 0 -> 0.05      -> C = 0.55
    peeled = _tree("abcd", "ab|c|d")
    assert tree_dissimilarity(peeled, affinity, HAND_TASKS) == pytest.approx(0.9, abs=1e-12)
    assert tree_dissimilarity(peeled, affinity, HAND_TASKS, linkage="diameter_all") == pytest.approx(0.8 + 0.1 / 3)
    assert tree_dissimilarity(peeled, affinity, HAND_TASKS, linkage="element_max") == pytest.approx(0.55)
    # Fully split at level 1: only level 0 costs.
    assert tree_dissimilarity(_tree("abcd", "a|b|c|d"), affinity, HAND_TASKS) == pytest.approx(0.8)


def test_clustering_cost_agrees_with_its_definition() -> None:
    rng = np.random.default_rng(11)
    names = tuple("abcde")
    affinity = _random_affinity(rng, 3, 5)
    trees = list(enumerate_trees(names, 3))
    for tree in trees[::97]:
        for linkage in ("diameter", "diameter_all"):
            expected = _ref_dissimilarity(tree, affinity, names, linkage)
            assert tree_dissimilarity(tree, affinity, names, linkage=linkage) == pytest.approx(expected, abs=1e-12)


def test_clustering_cost_refines_can_cost_more() -> None:
    # Splitting a wide cluster into two wide halves raises the mean next to a
    # tight cluster: the searches must not assume monotone clustering cost.
    a = np.full((1, 6, 6), 0.1)
    a[0, 4, 5] = a[0, 5, 4] = 0.9
    np.fill_diagonal(a[0], 1.0)
    names = tuple("abcdef")
    coarse = tree_dissimilarity(_tree("abcd|ef"), a, names)
    fine = tree_dissimilarity(_tree("ab|cd|ef"), a, names)
    assert fine > coarse


@pytest.mark.parametrize(
    ("affinity", "message"),
    [
        (np.ones((2, 3, 3)), r"shape \[D, 4, 4\]"),
        (np.full((1, 4, 4), 1.5), r"\[-1, 1\]"),
        (np.where(np.eye(4, k=1, dtype=bool), 0.5, 1.0)[None], "symmetric"),
        (np.full((1, 4, 4), np.nan), "NaN"),
    ],
)
def test_bad_affinity_is_refused(affinity: np.ndarray, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tree_dissimilarity(_tree("abcd"), affinity, HAND_TASKS)


def test_unknown_linkage_is_refused() -> None:
    with pytest.raises(ConfigError, match="linkage"):
        tree_dissimilarity(_tree("abcd", "abcd"), _hand_affinity(), HAND_TASKS, linkage="average")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# Enumeration
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("root_shared", [False, True])
def test_enumeration_count_formula_and_validity(root_shared: bool) -> None:
    for n in range(1, 6):
        names = tuple("abcde"[:n])
        for depth in range(1, 5):
            trees = list(enumerate_trees(names, depth, root_shared=root_shared))
            assert len(trees) == count_trees(n, depth, root_shared=root_shared)
            assert len(set(trees)) == len(trees)
            for tree in trees[:: max(1, len(trees) // 20)]:
                assert BranchingTree(tree.groups()) == tree  # the validating constructor accepts it
                if root_shared:
                    assert tree.branches(0) == 1


def test_tree_counts_match_the_notes_table() -> None:
    # notes/methods-001-002.md §A.1 step 5 (shared root): 3 tasks x 4 locations = 22
    # (Cityscapes), 5 x 4 = 1304 (Taskonomy).
    assert count_trees(3, 4, root_shared=True) == 22
    assert count_trees(5, 4, root_shared=True) == 1304
    assert count_trees(4, 5, root_shared=True) == 315
    assert count_trees(10, 1) == 115_975  # Bell(10)


# --------------------------------------------------------------------------- #
# Search
# --------------------------------------------------------------------------- #


def _instances(count: int, seed: int) -> list[tuple[np.ndarray, tuple[str, ...], CostFn, bool, float]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(3, 6))
        depth = int(rng.integers(3, 6))
        # Keep the reference cheap: 5 tasks at 4-5 locations only with a shared root.
        root_shared = bool(rng.integers(0, 2)) or (n == 5 and depth >= 4)
        names = tuple("abcde"[:n])
        cost = _block_cost(rng, depth)
        low = cost(BranchingTree.all_shared(names, depth))
        high = cost(BranchingTree.fully_split(names, depth))
        budget = float(low + rng.uniform(0.0, 1.0) * (high - low))
        out.append((_random_affinity(rng, depth, n), names, cost, root_shared, budget))
    return out


@pytest.mark.parametrize("case", _instances(10, seed=0), ids=lambda c: f"{len(c[1])}x{c[0].shape[0]}")
def test_search_returns_the_exhaustive_optimum(case: tuple[np.ndarray, tuple[str, ...], CostFn, bool, float]) -> None:
    affinity, names, cost, root_shared, budget = case
    for linkage in ("diameter", "diameter_all"):
        dis, c, tree = _reference(affinity, names, budget, cost, root_shared, linkage)
        for method in ("auto", "exhaustive", "branch_and_bound"):
            got = best_tree(affinity, names, budget, cost, root_shared=root_shared, linkage=linkage, method=method)
            assert (got.tree, got.cost) == (tree, c), method
            assert got.dissimilarity == pytest.approx(dis, abs=1e-12)
            assert got.exact and got.cost <= budget
        assert best_tree(affinity, names, budget, cost, root_shared=root_shared, linkage=linkage).method == "exhaustive"
        wide = best_tree(
            affinity, names, budget, cost, root_shared=root_shared, linkage=linkage, method="beam", beam_width=10**6
        )
        assert wide.tree == tree
        narrow = best_tree(
            affinity, names, budget, cost, root_shared=root_shared, linkage=linkage, method="beam", beam_width=2
        )
        assert not narrow.exact and narrow.cost <= budget and narrow.dissimilarity >= dis - 1e-12


@pytest.mark.parametrize("case", _instances(4, seed=1), ids=lambda c: f"{len(c[1])}x{c[0].shape[0]}")
def test_tighter_budget_never_gives_a_better_tree(
    case: tuple[np.ndarray, tuple[str, ...], CostFn, bool, float],
) -> None:
    affinity, names, cost, root_shared, _ = case
    depth = affinity.shape[0]
    low = cost(BranchingTree.all_shared(names, depth))
    high = cost(BranchingTree.fully_split(names, depth))
    previous = math.inf
    for budget in np.linspace(low, high, 8):
        got = best_tree(affinity, names, float(budget), cost, root_shared=root_shared)
        assert got.cost <= budget + 1e-9
        assert got.dissimilarity <= previous + 1e-12
        previous = got.dissimilarity


@pytest.mark.parametrize("case", _instances(4, seed=2), ids=lambda c: f"{len(c[1])}x{c[0].shape[0]}")
def test_budget_path_is_the_pareto_front(case: tuple[np.ndarray, tuple[str, ...], CostFn, bool, float]) -> None:
    affinity, names, cost, root_shared, _ = case
    path = budget_path(affinity, names, cost, root_shared=root_shared)
    assert path[0].tree == BranchingTree.all_shared(names, affinity.shape[0])
    for before, after in zip(path, path[1:], strict=False):
        assert after.cost > before.cost and after.dissimilarity < before.dissimilarity
    for point in path[:: max(1, len(path) // 4)]:  # best_tree at a point's cost picks exactly that point
        got = best_tree(affinity, names, point.cost, cost, root_shared=root_shared)
        assert (got.tree, got.cost, got.dissimilarity) == (point.tree, point.cost, point.dissimilarity)
    assert budget_path(affinity, names, cost, root_shared=root_shared, method="branch_and_bound") == path
    # Every tree is dominated by some point of the path.
    for tree in enumerate_trees(names, affinity.shape[0], root_shared=root_shared):
        dis = _ref_dissimilarity(tree, affinity, names, "diameter")
        assert any(p.cost <= cost(tree) and p.dissimilarity <= dis + 1e-12 for p in path)


def test_budget_below_one_net_names_the_minimum() -> None:
    names = ("a", "b", "c")
    cost = _block_cost(np.random.default_rng(3), 3)
    minimum = cost(BranchingTree.all_shared(names, 3))
    affinity = _random_affinity(np.random.default_rng(4), 3, 3)
    with pytest.raises(BudgetError, match=rf"at least {minimum:g}"):
        best_tree(affinity, names, minimum - 0.5, cost)
    assert best_tree(affinity, names, minimum, cost).tree == BranchingTree.all_shared(names, 3)


def test_cost_fn_is_called_once_per_tree() -> None:
    rng = np.random.default_rng(5)
    names = ("a", "b", "c", "d")
    cost = _block_cost(rng, 3)
    seen: list[BranchingTree] = []

    def counting(tree: BranchingTree) -> float:
        seen.append(tree)
        return cost(tree)

    affinity = _random_affinity(rng, 3, 4)
    got = best_tree(affinity, names, 1e9, counting)
    assert len(seen) == len(set(seen)) == got.cost_calls
    # With an unlimited budget, only trees at least as good as the answer are costed.
    assert got.cost_calls < count_trees(4, 3)


def test_non_monotone_cost_is_detected_by_branch_and_bound() -> None:
    names = ("a", "b", "c")
    affinity = _random_affinity(np.random.default_rng(6), 3, 3)

    def shrinking(tree: BranchingTree) -> float:
        return 100.0 - sum(len(p) for p in tree.partitions)

    # The check is opportunistic: it fires when the search expands a prefix
    # into a split one, which a shared root forces here.
    with pytest.raises(ConfigError, match="not monotone"):
        best_tree(affinity, names, 1000.0, shrinking, root_shared=True, method="branch_and_bound")
    # Exhaustive search makes no assumption about the cost.
    assert best_tree(affinity, names, 1000.0, shrinking, root_shared=True, method="exhaustive").exact


@pytest.mark.parametrize("bad", [math.nan, -1.0, "12"])
def test_bad_cost_values_are_refused(bad: object) -> None:
    affinity = _random_affinity(np.random.default_rng(7), 2, 3)
    with pytest.raises(ConfigError, match="cost"):
        best_tree(affinity, ("a", "b", "c"), 10.0, lambda _tree: bad)  # type: ignore[arg-type,return-value]


def test_method_limits_are_enforced() -> None:
    # 7 tasks at 5 free locations: 2.2M trees, over the exhaustive limit.
    assert count_trees(7, 5) > EXHAUSTIVE_LIMIT
    affinity = _random_affinity(np.random.default_rng(8), 5, 7)
    names = tuple("abcdefg")
    with pytest.raises(ConfigError, match="exhaustive limit"):
        best_tree(affinity, names, 1e9, lambda t: 1.0, method="exhaustive")
    eleven = tuple("abcdefghijk")
    with pytest.raises(ConfigError, match="at most 10 tasks"):
        best_tree(_random_affinity(np.random.default_rng(9), 1, 11), eleven, 1e9, lambda t: 1.0)
    with pytest.raises(ConfigError, match="method"):
        best_tree(affinity, names, 1e9, lambda t: 1.0, method="greedy")  # type: ignore[arg-type]


def test_large_instance_falls_back_to_beam() -> None:
    rng = np.random.default_rng(10)
    names = tuple("abcdefg")
    cost = _block_cost(rng, 5)
    low = cost(BranchingTree.all_shared(names, 5))
    got = best_tree(_random_affinity(rng, 5, 7), names, low * 1.3, cost, beam_width=4)
    assert got.method == "beam" and not got.exact and got.cost <= low * 1.3


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=4),
    depth=st.integers(min_value=1, max_value=4),
    seed=st.integers(min_value=0, max_value=10_000),
    root_shared=st.booleans(),
)
def test_every_budget_returns_a_fitting_optimal_tree(n: int, depth: int, seed: int, root_shared: bool) -> None:
    rng = np.random.default_rng(seed)
    names = tuple("abcd"[:n])
    affinity = _random_affinity(rng, depth, n)
    cost = _block_cost(rng, depth)
    low = cost(BranchingTree.all_shared(names, depth))
    high = cost(BranchingTree.fully_split(names, depth))
    budget = float(rng.uniform(low, high))
    got = best_tree(affinity, names, budget, cost, root_shared=root_shared, method="branch_and_bound")
    dis, c, tree = _reference(affinity, names, budget, cost, root_shared, "diameter")
    assert got.cost <= budget
    assert (got.tree, got.cost) == (tree, c)

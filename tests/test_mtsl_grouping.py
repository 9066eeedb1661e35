"""Tests for MTSL Algorithm 2 (mtgraph.strategies.mtsl.grouping)."""

from __future__ import annotations

import inspect
import itertools

import pytest
import torch

from mtgraph.errors import ConfigError
from mtgraph.strategies.mtsl import MTSLConfig
from mtgraph.strategies.mtsl.grouping import (
    MAX_TASK_NODES,
    bell_number,
    group_task_nodes,
    set_partitions,
)

TOLERANCE = 1e-12


# --------------------------------------------------------------------------- #
# Brute force, written independently: label assignments instead of restricted
# growth strings, plain sums instead of fsum, frozensets for dedup.
# --------------------------------------------------------------------------- #


def _all_partitions(names):
    seen = set()
    for labels in itertools.product(range(len(names)), repeat=len(names)):
        blocks = {}
        for name, label in zip(names, labels):
            blocks.setdefault(label, []).append(name)
        key = frozenset(frozenset(block) for block in blocks.values())
        if key not in seen:
            seen.add(key)
            yield key


def _mean(values):
    values = list(values)
    return sum(values) / len(values)


def _group_value(group, sim, index):
    if len(group) == 1:
        return 0.0
    return _mean(_mean(sim[index[t]][index[i]] for i in group if i != t) for t in group)


def _canonical(partition, index):
    groups = [tuple(sorted(g, key=index.get)) for g in partition]
    return tuple(sorted(groups, key=lambda g: index[g[0]]))


def _ordinal(partition, index):
    return tuple(tuple(index[t] for t in g) for g in _canonical(partition, index))


def _pick(candidates, index):
    top = max(score for score, _ in candidates)
    tied = [p for score, p in candidates if score >= top - TOLERANCE]
    best = min(tied, key=lambda p: (len(p), _ordinal(p, index)))
    return _canonical(best, index)


def brute_force_best_grouping(names, sim, gamma, rule="paper"):
    """Chosen partition and its fused groups, by exhaustive enumeration."""
    index = {name: i for i, name in enumerate(names)}
    scored = []
    for partition in _all_partitions(names):
        values = [_group_value(g, sim, index) for g in partition]
        if rule == "paper":
            score = _mean(values)
        else:
            score = sum(v * len(g) for v, g in zip(values, partition)) / len(names)
        scored.append((score, partition))
    if rule == "paper" or len(names) == 1:
        chosen = _pick(scored, index)
    else:
        for max_groups in range(1, len(names)):
            allowed = [(s, p) for s, p in scored if len(p) <= max_groups]
            top = max(s for s, _ in allowed)
            chosen = _pick(allowed, index)
            if top >= gamma - TOLERANCE:
                break
    fused = tuple(g for g in chosen if len(g) > 1 and _group_value(g, sim, index) >= gamma - TOLERANCE)
    return chosen, fused


def _random_similarity(size: int, seed: int, *, levels: int | None = None) -> list[list[float]]:
    generator = torch.Generator().manual_seed(seed)
    values = torch.rand(size, size, generator=generator, dtype=torch.float64)
    if levels is not None:
        # Few distinct values -> many exact ties between partitions.
        values = torch.floor(values * levels) / levels
    values = (values + values.T) / 2
    values.fill_diagonal_(1.0)
    return values.tolist()


def _names(size: int) -> list[str]:
    return [f"t{i}" for i in range(size)]


# --------------------------------------------------------------------------- #
# Enumeration
# --------------------------------------------------------------------------- #


def test_bell_numbers_and_partition_enumeration() -> None:
    assert [bell_number(n) for n in range(11)] == [1, 1, 2, 5, 15, 52, 203, 877, 4140, 21147, 115975]
    for n in range(7):
        partitions = list(set_partitions(n))
        assert len(partitions) == bell_number(n)
        assert len({frozenset(frozenset(g) for g in p) for p in partitions}) == len(partitions)
        for partition in partitions:
            assert sorted(i for g in partition for i in g) == list(range(n))


# --------------------------------------------------------------------------- #
# Algorithm 2 against brute force
# --------------------------------------------------------------------------- #


HAND_MADE = {
    # Two clear pairs: {a,b} and {c,d} both above gamma.
    "two_pairs": (
        ["a", "b", "c", "d"],
        [[1, 0.9, 0.1, 0.2], [0.9, 1, 0.15, 0.1], [0.1, 0.15, 1, 0.85], [0.2, 0.1, 0.85, 1]],
    ),
    # Everything similar: one group.
    "all_similar": (["S", "D", "N"], [[1, 0.9, 0.88], [0.9, 1, 0.86], [0.88, 0.86, 1]]),
    # Pair chosen but rejected by gamma (0.75 < 0.8).
    "pair_rejected": (["S", "D", "E"], [[1, 0.75, 0.05], [0.75, 1, 0.0], [0.05, 0.0, 1]]),
    # Exact ties between the three ways of pairing four tasks.
    "tied_pairings": (
        ["a", "b", "c", "d"],
        [[1, 0.5, 0.5, 0.5], [0.5, 1, 0.5, 0.5], [0.5, 0.5, 1, 0.5], [0.5, 0.5, 0.5, 1]],
    ),
    # Asymmetric similarity: Algorithm 2 reads row t for V_t.
    "asymmetric": (["a", "b", "c"], [[1, 0.9, 0.2], [0.7, 1, 0.6], [0.1, 0.8, 1]]),
    # Negative similarities (unbiased CKA can be negative).
    "negative": (["a", "b", "c"], [[1, -0.2, 0.3], [-0.2, 1, -0.1], [0.3, -0.1, 1]]),
}


@pytest.mark.parametrize("rule", ["paper", "code"])
@pytest.mark.parametrize("case", sorted(HAND_MADE))
@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.8, 1.0])
def test_matches_brute_force_on_hand_made_matrices(case: str, gamma: float, rule: str) -> None:
    names, sim = HAND_MADE[case]
    result = group_task_nodes(names, sim, gamma=gamma, rule=rule)
    chosen, fused = brute_force_best_grouping(names, sim, gamma, rule)
    assert result.partition == chosen
    assert result.fused_groups == fused


@pytest.mark.parametrize("rule", ["paper", "code"])
def test_matches_brute_force_on_random_matrices_with_and_without_ties(rule: str) -> None:
    cases = [*itertools.product(range(1, 6), range(3), (None, 2, 4)), (6, 0, None), (6, 1, 2)]
    for size, seed, levels in cases:
        names = _names(size)
        sim = _random_similarity(size, seed, levels=levels)
        for gamma in (0.0, 0.3, 0.6, 0.8):
            result = group_task_nodes(names, sim, gamma=gamma, rule=rule)
            chosen, fused = brute_force_best_grouping(names, sim, gamma, rule)
            assert (result.partition, result.fused_groups) == (chosen, fused), (size, seed, levels, gamma)


def test_hand_made_expectations_and_reasons() -> None:
    names, sim = HAND_MADE["two_pairs"]
    result = group_task_nodes(names, sim)
    assert result.partition == (("a", "b"), ("c", "d"))
    assert result.fused_groups == (("a", "b"), ("c", "d"))
    assert result.score == pytest.approx((0.9 + 0.85) / 2)
    assert result.group_values == {("a", "b"): pytest.approx(0.9), ("c", "d"): pytest.approx(0.85)}
    assert result.decisions[0].reason == ("fuse a+b: group value 0.9000 >= gamma 0.8 (task values: a 0.9000, b 0.9000)")
    assert result.partitions_scored == 15

    names, sim = HAND_MADE["pair_rejected"]
    result = group_task_nodes(names, sim)
    assert result.partition == (("S", "D"), ("E",))
    assert result.fused_groups == ()
    assert [d.reason for d in result.decisions] == [
        "keep S+D apart: group value 0.7500 < gamma 0.8 (task values: S 0.7500, D 0.7500)",
        "E: single task node, nothing to fuse",
    ]


def test_ties_prefer_fewer_groups_then_input_order() -> None:
    names, sim = HAND_MADE["tied_pairings"]
    # One group (0.5) ties with every pairing (0.5): fewer groups wins.
    result = group_task_nodes(names, sim, gamma=0.5)
    assert result.partition == (("a", "b", "c", "d"),)
    assert result.fused_groups == (("a", "b", "c", "d"),)
    # Among the three equal pairings, the first in input order wins.
    sim = [[1, 0.9, 0.9, 0.0], [0.9, 1, 0.0, 0.9], [0.9, 0.0, 1, 0.9], [0.0, 0.9, 0.9, 1]]
    result = group_task_nodes(names, sim)
    assert result.partition == (("a", "b"), ("c", "d"))


def test_asymmetric_similarity_uses_row_of_each_task() -> None:
    names, sim = HAND_MADE["asymmetric"]
    result = group_task_nodes(names, sim, gamma=0.0)
    # Hand values: {a,b} = (0.9 + 0.7)/2 = 0.8, {b,c} = (0.6 + 0.8)/2 = 0.7,
    # {a,c} = 0.15, {a,b,c} = mean(0.55, 0.65, 0.45) = 0.55, which beats
    # {a,b}{c} = 0.4 and {a}{b,c} = 0.35.
    assert result.partition == (("a", "b", "c"),)
    assert result.score == pytest.approx(0.55)


# --------------------------------------------------------------------------- #
# gamma
# --------------------------------------------------------------------------- #


def test_gamma_zero_fuses_every_chosen_group_paper_rule() -> None:
    for seed in range(10):
        sim = _random_similarity(5, seed)
        result = group_task_nodes(_names(5), sim, gamma=0.0, rule="paper")
        assert result.fused_groups == tuple(g for g in result.partition if len(g) > 1)
    uniform = [[1.0 if i == j else 0.3 for j in range(4)] for i in range(4)]
    assert group_task_nodes(_names(4), uniform, gamma=0.0, rule="paper").fused_groups == (tuple(_names(4)),)
    # Under Algorithm 2 gamma never changes the chosen grouping, so gamma = 0
    # does not always give one group: a dissimilar task stays alone.
    result = group_task_nodes(["a", "b", "c"], [[1, 0.9, 0], [0.9, 1, 0], [0, 0, 1]], gamma=0.0, rule="paper")
    assert result.partition == (("a", "b"), ("c",))
    assert result.fused_groups == (("a", "b"),)


def test_default_rule_is_the_released_code_search_as_in_mtsl_config() -> None:
    assert inspect.signature(group_task_nodes).parameters["rule"].default == MTSLConfig().grouping_rule == "code"
    # The code rule tries one group first and stops there once it reaches gamma; Algorithm 2 (mean over
    # groups) splits these near-uniform five: {t0, t1, t4}{t2, t3} averages 0.9935 over groups, one group 0.9927.
    near = [[1, .99, .992, .994, .993], [.99, 1, .991, .992, .993], [.992, .991, 1, .995, .994],
            [.994, .992, .995, 1, .993], [.993, .993, .994, .993, 1]]
    assert group_task_nodes(_names(5), near).partition == (tuple(_names(5)),)
    assert group_task_nodes(_names(5), near, rule="paper").partition == (("t0", "t1", "t4"), ("t2", "t3"))


def test_gamma_zero_fuses_everything_into_one_group_code_rule() -> None:
    for size, seed in itertools.product(range(2, 7), range(5)):
        names = _names(size)
        result = group_task_nodes(names, _random_similarity(size, seed), gamma=0.0)
        assert result.partition == (tuple(names),)
        assert result.fused_groups == (tuple(names),)


@pytest.mark.parametrize("rule", ["paper", "code"])
def test_gamma_one_fuses_nothing_unless_similarity_is_exactly_one(rule: str) -> None:
    for seed in range(10):
        sim = [[min(v, 0.999) for v in row] for row in _random_similarity(5, seed)]
        assert group_task_nodes(_names(5), sim, gamma=1.0, rule=rule).fused_groups == ()
    sim = [[1.0, 1.0, 0.2], [1.0, 1.0, 0.1], [0.2, 0.1, 1.0]]
    assert group_task_nodes(["a", "b", "c"], sim, gamma=1.0, rule=rule).fused_groups == (("a", "b"),)


def test_single_task_node_is_never_fused() -> None:
    result = group_task_nodes(["only"], [[1.0]], gamma=0.0)
    assert result.partition == (("only",),)
    assert result.fused_groups == ()
    assert result.decisions[0].reason == "only: single task node, nothing to fuse"


# --------------------------------------------------------------------------- #
# Limits and input errors
# --------------------------------------------------------------------------- #


def test_limit_on_task_nodes() -> None:
    assert MAX_TASK_NODES == 10
    size = MAX_TASK_NODES + 1
    sim = torch.eye(size)
    with pytest.raises(ConfigError, match=r"11 task nodes have Bell\(11\) = 678,570 partitions"):
        group_task_nodes(_names(size), sim)


def test_mean_over_groups_rewards_splitting_a_uniform_block() -> None:
    # Algorithm 2 averages over groups, not tasks: splitting the 0.95 block
    # into two 0.95 pairs raises the mean from (0.95 + 0.9)/2 to
    # (0.95 + 0.95 + 0.9)/3. The code rule averages over tasks and keeps it.
    size = 8
    names = _names(size)
    sim = torch.full((size, size), 0.2, dtype=torch.float64)
    sim[:4, :4] = 0.95
    sim[4:, 4:] = 0.9
    paper = group_task_nodes(names, sim, rule="paper")
    assert paper.partitions_scored == bell_number(size)
    assert paper.partition == (("t0", "t1"), ("t2", "t3"), tuple(names[4:]))
    assert paper.score == pytest.approx((0.95 + 0.95 + 0.9) / 3)
    code = group_task_nodes(names, sim, rule="code")
    assert code.fused_groups == (tuple(names[:4]), tuple(names[4:]))


@pytest.mark.parametrize("gamma", [-0.1, 1.5, float("nan"), True, "0.8"])
def test_gamma_out_of_range(gamma) -> None:
    with pytest.raises(ConfigError, match="gamma must be a number in \\[0, 1\\]"):
        group_task_nodes(["a", "b"], [[1, 0.5], [0.5, 1]], gamma=gamma)


def test_input_errors() -> None:
    with pytest.raises(ConfigError, match=r"\[3, 3\] matrix"):
        group_task_nodes(["a", "b", "c"], [[1, 0.5], [0.5, 1]])
    with pytest.raises(ConfigError, match="unique"):
        group_task_nodes(["a", "a"], [[1, 0.5], [0.5, 1]])
    with pytest.raises(ConfigError, match="at least one"):
        group_task_nodes([], [])
    with pytest.raises(ConfigError, match="NaN or infinite"):
        group_task_nodes(["a", "b"], [[1, float("nan")], [0.5, 1]])
    with pytest.raises(ConfigError, match="rule must be"):
        group_task_nodes(["a", "b"], [[1, 0.5], [0.5, 1]], rule="greedy")
    # The diagonal is never read, so a NaN there is fine.
    assert group_task_nodes(["a", "b"], [[float("nan"), 0.9], [0.9, float("nan")]]).fused_groups == (("a", "b"),)

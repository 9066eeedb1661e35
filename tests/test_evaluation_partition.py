"""Adjusted Rand index against hand-computed values; task partitions of trees and of graphs with gates."""

from __future__ import annotations

import pytest

import mtgraph
from mtgraph.analysis.partition import adjusted_rand_index, check_partition, task_partition, task_partitions
from mtgraph.errors import ConfigError
from mtgraph.evaluation.results import structure_recovery
from mtgraph.ir import Block, Gate, Head, Input


def test_ari_of_identical_partitions_is_one_whatever_the_labels_and_order() -> None:
    assert adjusted_rand_index([["a", "b"], ["c"]], [["c"], ["b", "a"]]) == 1.0


def test_ari_hand_computed_four_sevenths() -> None:
    # first {a,b} {c} {d}, second {a,b} {c,d}: n = 4, C(4,2) = 6.
    # Σ C(n_ij, 2) = C(2,2) = 1; Σ C(a_i, 2) = 1; Σ C(b_j, 2) = 2; E = 1 * 2 / 6 = 1/3; max = (1 + 2) / 2 = 3/2.
    # ARI = (1 - 1/3) / (3/2 - 1/3) = (2/3) / (7/6) = 4/7.
    assert adjusted_rand_index([["a", "b"], ["c"], ["d"]], [["a", "b"], ["c", "d"]]) == pytest.approx(4 / 7, abs=1e-15)


def test_ari_hand_computed_worse_than_chance() -> None:
    # {a,b} {c,d} vs {a,c} {b,d}: every pair split differently. Σ C(n_ij,2) = 0, Σ_a = Σ_b = 2, E = 4/6,
    # max = 2: ARI = (0 - 2/3) / (2 - 2/3) = -1/2.
    assert adjusted_rand_index([["a", "b"], ["c", "d"]], [["a", "c"], ["b", "d"]]) == -0.5


def test_ari_hand_computed_five_tasks() -> None:
    # designed {seg,edges} {depth,normals} {unrelated}; learned {seg,edges,depth,normals} {unrelated}.
    # n = 5, C(5,2) = 10. Contingency: 2, 2, 1 -> Σ C(n_ij,2) = 1 + 1 = 2. Σ_a (learned) = C(4,2) = 6;
    # Σ_b (designed) = 1 + 1 = 2. E = 6 * 2 / 10 = 6/5; max = 4. ARI = (2 - 6/5) / (4 - 6/5) = (4/5) / (14/5) = 2/7.
    learned = [["seg", "edges", "depth", "normals"], ["unrelated"]]
    designed = [["seg", "edges"], ["depth", "normals"], ["unrelated"]]
    assert adjusted_rand_index(learned, designed) == pytest.approx(2 / 7, abs=1e-15)
    assert adjusted_rand_index(designed, learned) == pytest.approx(2 / 7, abs=1e-15)   # symmetric


def test_ari_degenerate_partitions_follow_the_convention() -> None:
    # One group vs singletons: Σ C(n_ij, 2) = 0, E = 0 (Σ_b = 0), max = 3 / 2: ARI = 0 (chance).
    assert adjusted_rand_index([["a", "b", "c"]], [["a"], ["b"], ["c"]]) == 0.0
    # Both all-singletons (or both one group): the denominator is 0, the partitions are equal: 1.
    assert adjusted_rand_index([["a"], ["b"], ["c"]], [["c"], ["b"], ["a"]]) == 1.0
    assert adjusted_rand_index([["a", "b"]], [["b", "a"]]) == 1.0


def test_ari_refuses_partitions_of_different_items() -> None:
    with pytest.raises(ConfigError, match=r"different items: \['c'\]"):
        adjusted_rand_index([["a", "b"]], [["a", "b", "c"]])
    with pytest.raises(ConfigError, match="names 'a' more than once"):
        adjusted_rand_index([["a"], ["a", "b"]], [["a", "b"]])


def test_task_partition_of_a_tree_follows_its_groups() -> None:
    groups = [[["seg", "edges", "depth"]], [["seg", "edges"], ["depth"]], [["seg"], ["edges"], ["depth"]]]
    graph = mtgraph.from_groups(3, ["seg", "edges", "depth"], groups)
    assert task_partitions(graph) == ((("seg", "edges", "depth"),), (("seg", "edges"), ("depth",)),
                                      (("seg",), ("edges",), ("depth",)))
    with pytest.raises(ConfigError, match="block must be an index in 0..2"):
        task_partition(graph, 3)


def test_task_partition_groups_tasks_joined_through_a_gate() -> None:
    # seg and depth each gate between a private block 1 and a shared one: they share a node at block 1.
    graph = mtgraph.MTGraph((
        Input(), Block(0, "b0.shared", 0),
        Block(1, "b1.shared", 1), Block(1, "b1.seg", 1), Block(1, "b1.depth", 1),
        Gate("seg", (2, 3), "gate.seg"), Gate("depth", (2, 4), "gate.depth"),
        Head("seg", 5), Head("depth", 6),
    ))
    assert task_partition(graph, 1) == (("seg", "depth"),)


def test_check_partition_names_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match=r"leave out tasks \['depth'\]"):
        check_partition([["seg"]], ["seg", "depth"])
    with pytest.raises(ConfigError, match="'normals', which is not one of the tasks"):
        check_partition([["seg", "normals"]], ["seg"])


def test_structure_recovery_scores_each_depth_and_the_random_reference() -> None:
    clusters = [["seg", "edges"], ["depth", "normals"]]
    tree = [[["seg", "edges", "depth", "normals"]], [["seg", "edges"], ["depth", "normals"]]]
    other = [[["seg", "depth"], ["edges", "normals"]], [["seg", "depth"], ["edges", "normals"]]]
    recovery = structure_recovery(clusters, {0: tree, 1: tree}, {0: [other, tree], 1: [other]})
    learned = [d["learned"]["mean"] for d in recovery["depths"]]
    assert learned == [0.0, 1.0]
    # Seed 0's draws: ARI(other) = -1/2 at both depths (the 2x2 crossing), ARI(tree) = 0 then 1; seed 1: -1/2.
    assert recovery["depths"][1]["random"]["mean"] == pytest.approx(((-0.5 + 1.0) / 2 + -0.5) / 2)
    assert recovery["depths"][1]["learned"]["per_seed"] == {"0": 1.0, "1": 1.0}

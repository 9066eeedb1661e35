"""Task clusters of an affinity matrix and the adjusted Rand index, checked against hand-computed values."""

from __future__ import annotations

import itertools

import pytest

from mtgraph.errors import ConfigError
from mtgraph.strategies.affinity import adjusted_rand_index, affinity_clusters

# Hand computations use ARI = (Σ C(n_ij,2) − E) / (½(A + B) − E), A = Σ C(a_i,2), B = Σ C(b_j,2), E = A·B / C(n,2).


@pytest.mark.parametrize(
    ("found", "reference", "expected"),
    [
        # the same partition, groups and members in another order: 1
        ([["seg", "edges"], ["depth", "normals"], ["unrelated"]],
         [["unrelated"], ["normals", "depth"], ["edges", "seg"]], 1.0),
        # {a,b}{c,d} vs {a,b}{c}{d}: Σ C(n_ij,2) = 1, A = 2, B = 1, C(4,2) = 6, E = 1/3 -> (2/3)/(7/6) = 4/7
        ([["a", "b"], ["c", "d"]], [["a", "b"], ["c"], ["d"]], 4 / 7),
        # {a,b}{c,d} vs {a,c}{b,d}: no pair together in both: Σ = 0, A = B = 2, E = 4/6 -> (−2/3)/(4/3) = −1/2
        ([["a", "b"], ["c", "d"]], [["a", "c"], ["b", "d"]], -0.5),
        # {a,b}{c,d}{e,f} vs {a,b}{c}{d,e,f}: Σ = 1 + 1 = 2, A = 3, B = 1 + 3 = 4, C(6,2) = 15, E = 12/15 = 0.8
        # -> (2 − 0.8)/(3.5 − 0.8) = 1.2/2.7 = 4/9
        ([["a", "b"], ["c", "d"], ["e", "f"]], [["a", "b"], ["c"], ["d", "e", "f"]], 4 / 9),
        # all alone vs all together: Σ = 0, A = 0, B = C(3,2) = 3, E = 0 -> 0 / 1.5 = 0
        ([["a"], ["b"], ["c"]], [["a", "b", "c"]], 0.0),
        # both all alone, or both all together: 0/0, equal partitions: 1
        ([["a"], ["b"], ["c"]], [["c"], ["b"], ["a"]], 1.0),
        ([["a", "b", "c"]], [["c", "a", "b"]], 1.0),
    ],
)
def test_adjusted_rand_index_equals_the_hand_computation(found, reference, expected):
    # The values are ratios of small integers computed in float64: a few ulps from the exact fraction.
    assert adjusted_rand_index(found, reference) == pytest.approx(expected, rel=0, abs=1e-12)
    assert adjusted_rand_index(reference, found) == pytest.approx(expected, rel=0, abs=1e-12)  # symmetric


def test_adjusted_rand_index_refuses_partitions_of_different_items():
    with pytest.raises(ConfigError, match=r"cover different items: \['d'\] are in only one"):
        adjusted_rand_index([["a", "b"], ["c"]], [["a", "b"], ["c", "d"]])
    with pytest.raises(ConfigError, match="names 'a' more than once"):
        adjusted_rand_index([["a", "b"], ["a"]], [["a", "b"]])
    with pytest.raises(ConfigError, match="first partition must be a sequence of groups"):
        adjusted_rand_index("ab", [["a", "b"]])


DESIGNED = (("seg", "edges"), ("depth", "normals"), ("unrelated",))
ORDER = ("seg", "depth", "edges", "normals", "unrelated")


def _designed_affinity(within: float, across: float, unrelated: float) -> list[list[float]]:
    group = {t: k for k, g in enumerate(DESIGNED) for t in g}
    return [[1.0 if a == b else within if group[a] == group[b] else unrelated if "unrelated" in (a, b) else across
             for b in ORDER] for a in ORDER]


def test_complete_linkage_recovers_designed_clusters():
    affinity = _designed_affinity(within=0.8, across=0.5, unrelated=0.1)
    found = affinity_clusters(affinity, ORDER, 3)
    assert found == (("seg", "edges"), ("depth", "normals"), ("unrelated",))
    assert adjusted_rand_index(found, DESIGNED) == 1.0
    assert affinity_clusters(affinity, ORDER, 2) == (("seg", "depth", "edges", "normals"), ("unrelated",))
    assert affinity_clusters(affinity, ORDER, 5) == tuple((t,) for t in ORDER)
    assert affinity_clusters(affinity, ORDER, 1) == (ORDER,)


def test_complete_linkage_merges_by_the_largest_distance_not_the_smallest():
    # a-b 0.9, b-c 0.85, a-c 0.0: single linkage would chain {a,b,c}; complete linkage keeps c out
    # ({a,b} to c is max(1-0.0, 1-0.85) = 1.0) and takes d, whose farthest member of {a,b} is 0.3 away.
    names = ("a", "b", "c", "d")
    affinity = [[1.0, 0.9, 0.0, 0.7], [0.9, 1.0, 0.85, 0.7], [0.0, 0.85, 1.0, 0.0], [0.7, 0.7, 0.0, 1.0]]
    assert affinity_clusters(affinity, names, 2) == (("a", "b", "d"), ("c",))


def test_equal_distances_are_broken_by_task_order():
    names = ("a", "b", "c")
    flat = [[1.0 if i == j else 0.5 for j in range(3)] for i in range(3)]
    assert affinity_clusters(flat, names, 2) == (("a", "b"), ("c",))
    for perm in itertools.permutations(names):
        clusters = affinity_clusters(flat, perm, 2)
        assert clusters[0] == (perm[0], perm[1])


def test_affinity_clusters_refuse_bad_input():
    with pytest.raises(ConfigError, match=r"a finite 3×3 matrix"):
        affinity_clusters([[1.0, 0.5], [0.5, 1.0]], ("a", "b", "c"), 2)
    with pytest.raises(ConfigError, match=r"k must be an integer in \[1, 2\], got 3"):
        affinity_clusters([[1.0, 0.5], [0.5, 1.0]], ("a", "b"), 3)
    with pytest.raises(ConfigError, match="task names must be unique"):
        affinity_clusters([[1.0, 0.5], [0.5, 1.0]], ("a", "a"), 1)

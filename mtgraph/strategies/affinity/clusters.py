"""Task clusters read from an affinity matrix, and how well they match a reference (adjusted Rand index).

The acceptance check of papers/001 on designed scenes: the RSA affinity at
mid depth should group the tasks as the scenes were designed (related tasks
together, an unrelated task apart). :func:`affinity_clusters` cuts the
complete-linkage hierarchy of the dissimilarity ``1 − A`` at ``k`` clusters:
complete linkage merges by the largest dissimilarity between members, the
"maximum distance inside a cluster" of the paper's clustering cost.
:func:`adjusted_rand_index` compares two partitions (Hubert and Arabie,
1985): 1 for the same partition, about 0 for a chance agreement.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mtgraph.errors import ConfigError

__all__ = ["affinity_clusters", "adjusted_rand_index"]

Partition = tuple[tuple[str, ...], ...]


def _labels(partition: Sequence[Sequence[str]], what: str) -> dict[str, int]:
    if isinstance(partition, (str, bytes)) or not isinstance(partition, Sequence):
        raise ConfigError(f"{what} must be a sequence of groups of task names, got {partition!r}")
    labels: dict[str, int] = {}
    for k, group in enumerate(partition):
        if isinstance(group, (str, bytes)) or not isinstance(group, Sequence) or not group:
            raise ConfigError(f"{what}: group {k} must be a non-empty sequence of task names, got {group!r}")
        for item in group:
            if item in labels:
                raise ConfigError(f"{what}: {item!r} is in more than one group")
            labels[item] = k
    return labels


def adjusted_rand_index(found: Sequence[Sequence[str]], reference: Sequence[Sequence[str]]) -> float:
    """The adjusted Rand index of two partitions of the same items (1: identical; about 0: chance).

    ``ARI = (Σ_ij C(n_ij, 2) − E) / (½[Σ_i C(a_i, 2) + Σ_j C(b_j, 2)] − E)``
    with ``E = Σ_i C(a_i, 2)·Σ_j C(b_j, 2) / C(n, 2)``, ``n_ij`` the items
    in group i of ``found`` and group j of ``reference``, ``a_i`` and ``b_j``
    the group sizes. When both partitions put every item alone, or all
    together, the formula is 0/0 and the index is 1 (they are equal).

    Args:
        found: a partition (groups of item names).
        reference: another partition of the same items.

    Returns:
        The index, at most 1 (negative for worse than chance).

    Raises:
        ConfigError: partitions of different items, an item in two groups, fewer than 2 items.

    Examples:
        >>> from mtgraph.strategies.affinity import adjusted_rand_index
        >>> adjusted_rand_index([["seg", "edges"], ["depth", "normals"]], [["depth", "normals"], ["edges", "seg"]])
        1.0
        >>> round(adjusted_rand_index([["a", "b"], ["c", "d"]], [["a", "b"], ["c"], ["d"]]), 4)
        0.5714
    """
    a, b = _labels(found, "found"), _labels(reference, "reference")
    if set(a) != set(b):
        raise ConfigError(f"the partitions cover different items: {sorted(set(a) ^ set(b))} are in only one")
    n = len(a)
    if n < 2:
        raise ConfigError(f"the adjusted Rand index needs at least 2 items, got {n}")
    counts: dict[tuple[int, int], int] = {}
    for item in a:
        counts[(a[item], b[item])] = counts.get((a[item], b[item]), 0) + 1
    sizes_a = [sum(1 for v in a.values() if v == k) for k in set(a.values())]
    sizes_b = [sum(1 for v in b.values() if v == k) for k in set(b.values())]
    together = sum(math.comb(c, 2) for c in counts.values())
    pairs_a = sum(math.comb(s, 2) for s in sizes_a)
    pairs_b = sum(math.comb(s, 2) for s in sizes_b)
    expected = pairs_a * pairs_b / math.comb(n, 2)
    largest = (pairs_a + pairs_b) / 2
    if largest == expected:  # both all singletons, or both one group: the same partition
        return 1.0
    return (together - expected) / (largest - expected)


def affinity_clusters(affinity: Any, tasks: Sequence[str], k: int) -> Partition:
    """The ``k`` task clusters of complete-linkage clustering on the dissimilarity ``1 − affinity``.

    Starting from one cluster per task, the two clusters whose largest
    dissimilarity between members is smallest merge, until ``k`` remain.
    Ties go to the pair whose first tasks come first in ``tasks``, so the
    result is deterministic.

    Args:
        affinity: an ``N×N`` affinity matrix (one location of the RSA tensor), rows in ``tasks`` order.
        tasks: the task names.
        k: the number of clusters, 1 to N.

    Returns:
        The clusters, tasks in ``tasks`` order, clusters ordered by their first task.

    Raises:
        ConfigError: a matrix that is not N×N or not finite, repeated task names, ``k`` out of range.

    Examples:
        >>> from mtgraph.strategies.affinity import affinity_clusters
        >>> affinity = [[1.0, 0.9, 0.2, 0.1], [0.9, 1.0, 0.3, 0.2], [0.2, 0.3, 1.0, 0.7], [0.1, 0.2, 0.7, 1.0]]
        >>> affinity_clusters(affinity, ["seg", "edges", "depth", "normals"], 2)
        (('seg', 'edges'), ('depth', 'normals'))
    """
    names = tuple(tasks)
    matrix = np.asarray(affinity, dtype=np.float64)
    n = len(names)
    if len(set(names)) != n:
        raise ConfigError(f"task names must be unique, got {list(names)}")
    if matrix.shape != (n, n) or not np.isfinite(matrix).all():
        raise ConfigError(f"the affinity must be a finite {n}×{n} matrix (one row per task), got shape {matrix.shape}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ConfigError(f"k must be an integer in [1, {n}], got {k!r}")
    distance = 1.0 - matrix
    clusters: list[list[int]] = [[i] for i in range(n)]
    while len(clusters) > k:
        # Clusters stay ordered by their first task, so on equal diameters min() takes the earliest pair.
        _, p, q = min(
            (max(max(distance[i, j], distance[j, i]) for i in left for j in right), p, q)
            for (p, left), (q, right) in itertools.combinations(enumerate(clusters), 2)
        )
        clusters[p] = sorted(clusters[p] + clusters[q])
        del clusters[q]
    return tuple(tuple(names[i] for i in c) for c in sorted(clusters))

"""Task clusters read from an affinity matrix, and how well they match a reference (adjusted Rand index).

The acceptance check of papers/001 on designed scenes: the RSA affinity at
mid depth should group the tasks as the scenes were designed (related tasks
together, an unrelated task apart). :func:`affinity_clusters` cuts the
complete-linkage hierarchy of the dissimilarity ``1 − A`` at ``k`` clusters:
complete linkage merges by the largest dissimilarity between members, the
"maximum distance inside a cluster" of the paper's clustering cost.
:func:`~mtgraph.analysis.partition.adjusted_rand_index` (re-exported here)
compares two partitions (Hubert and Arabie, 1985): 1 for the same partition,
about 0 for a chance agreement.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from mtgraph.analysis.partition import Partition, adjusted_rand_index
from mtgraph.errors import ConfigError

__all__ = ["affinity_clusters", "adjusted_rand_index"]


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

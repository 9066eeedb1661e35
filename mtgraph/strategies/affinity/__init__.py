"""The ``affinity`` strategy: branched multi-task networks (papers/001, BMTN).

BMTN trains one single-task network per task, measures task affinity with
RSA at D candidate branch locations, picks the tree of nested task
partitions with the smallest summed clustering cost that fits a parameter or
GMac budget, builds that tree as the IR and trains it jointly.

* :mod:`~mtgraph.strategies.affinity.probe` — the RSA probe: features of
  the single-task networks at each location on K held-out images, and the
  ``[D, N, N]`` affinity tensor (:func:`probe_affinity`).
* :mod:`~mtgraph.strategies.affinity.tree_search` — the pure combinatorial
  part (tree value, clustering cost, enumeration, budgeted search, budget
  path); it knows nothing about graphs or training.
* :mod:`~mtgraph.strategies.affinity.strategy` — the driver
  :func:`learn_affinity`, its :class:`AffinityConfig`, the exact cost of a
  candidate tree (:class:`TreeCost`), the tree → IR mapping
  (:func:`block_groups`, :func:`build_network`) and :func:`train_stn`.
"""

from mtgraph.strategies.affinity.probe import MIN_PROBE_IMAGES, AffinityProbe, probe_affinity, probe_images
from mtgraph.strategies.affinity.strategy import (
    BUDGET_KINDS,
    DEFAULT_BUDGET_FRACTION,
    INITS,
    LOCATION_PRESETS,
    SHARED_INITS,
    AffinityConfig,
    TrainedSTN,
    TreeCost,
    block_groups,
    build_network,
    config_for_budget,
    learn_affinity,
    resolve_locations,
    split_pipeline,
    train_stn,
)
from mtgraph.strategies.affinity.tree_search import (
    BRANCH_AND_BOUND_LIMIT,
    EXHAUSTIVE_LIMIT,
    MAX_TASKS,
    BranchingTree,
    Linkage,
    Method,
    PathPoint,
    TreeChoice,
    best_tree,
    budget_path,
    count_trees,
    enumerate_trees,
    tree_dissimilarity,
)

__all__ = [
    # driver
    "learn_affinity",
    "config_for_budget",
    "AffinityConfig",
    "BUDGET_KINDS",
    "DEFAULT_BUDGET_FRACTION",
    "INITS",
    "LOCATION_PRESETS",
    "SHARED_INITS",
    "train_stn",
    "TrainedSTN",
    "TreeCost",
    "block_groups",
    "build_network",
    "resolve_locations",
    "split_pipeline",
    # probe
    "AffinityProbe",
    "MIN_PROBE_IMAGES",
    "probe_affinity",
    "probe_images",
    # tree search
    "BRANCH_AND_BOUND_LIMIT",
    "EXHAUSTIVE_LIMIT",
    "MAX_TASKS",
    "BranchingTree",
    "Linkage",
    "Method",
    "PathPoint",
    "TreeChoice",
    "best_tree",
    "budget_path",
    "count_trees",
    "enumerate_trees",
    "tree_dissimilarity",
]

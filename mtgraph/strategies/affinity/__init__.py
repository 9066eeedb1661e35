"""The ``affinity`` strategy: branched multi-task networks (papers/001, BMTN).

BMTN trains one single-task network per task, measures task affinity with
RSA at D candidate branch locations, picks the tree of nested task
partitions with the smallest summed clustering cost that fits a parameter or
GMac budget, builds that tree with ``fuse`` passes on the single-task
networks and trains it jointly.

* :mod:`~mtgraph.strategies.affinity.entry` — :class:`AffinityStrategy`, the
  front door (``learn``, ``sample_random``, ``architecture``), and
  :func:`learn_affinity`, kept for one release.
* :mod:`~mtgraph.strategies.affinity.config` — :class:`AffinityConfig` and
  :func:`config_for`.
* :mod:`~mtgraph.strategies.affinity.locations` — where trees may branch
  (the ``"stages"`` preset: the paper's four locations on a ResNet).
* :mod:`~mtgraph.strategies.affinity.stn` — :func:`train_stn`.
* :mod:`~mtgraph.strategies.affinity.probe` — the RSA probe: features of
  the single-task networks at each location on K held-out images, and the
  ``[D, N, N]`` affinity tensor (:func:`probe_affinity`).
* :mod:`~mtgraph.strategies.affinity.tree_search` — the pure combinatorial
  part (tree value, clustering cost, enumeration, budgeted search, budget
  path); it knows nothing about graphs or training.
* :mod:`~mtgraph.strategies.affinity.cost` — the exact cost of a candidate
  tree (:class:`TreeCost`).
* :mod:`~mtgraph.strategies.affinity.build` — a tree as ``fuse`` passes on
  the single-task networks (:func:`build_tree`).
* :mod:`~mtgraph.strategies.affinity.clusters` — task clusters of an
  affinity matrix and the adjusted Rand index against a reference.
"""

from mtgraph.strategies.affinity.build import build_tree, check_stn_params, fuse_pipeline
from mtgraph.strategies.affinity.clusters import adjusted_rand_index, affinity_clusters
from mtgraph.strategies.affinity.config import (
    DEFAULT_BUDGET,
    INITS,
    LINKAGES,
    SEARCHES,
    SHARED_INITS,
    AffinityConfig,
    config_for,
    default_locations,
)
from mtgraph.strategies.affinity.cost import TreeCost
from mtgraph.strategies.affinity.entry import AffinityStrategy, learn_affinity
from mtgraph.strategies.affinity.locations import LOCATION_PRESETS, block_groups, resolve_locations, split_points
from mtgraph.strategies.affinity.probe import MIN_PROBE_IMAGES, AffinityProbe, probe_affinity, probe_images
from mtgraph.strategies.affinity.stn import TrainedSTN, device_of, train_phase, train_stn, training_steps
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
    # front door
    "AffinityStrategy",
    "learn_affinity",
    "AffinityConfig",
    "config_for",
    "default_locations",
    "DEFAULT_BUDGET",
    "INITS",
    "SHARED_INITS",
    "LINKAGES",
    "SEARCHES",
    # steps
    "train_stn",
    "train_phase",
    "TrainedSTN",
    "training_steps",
    "device_of",
    "LOCATION_PRESETS",
    "resolve_locations",
    "split_points",
    "block_groups",
    "TreeCost",
    "build_tree",
    "fuse_pipeline",
    "check_stn_params",
    # clusters
    "affinity_clusters",
    "adjusted_rand_index",
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

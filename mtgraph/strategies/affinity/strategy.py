"""The BMTN driver (papers/001): single-task networks → RSA affinity → budgeted tree → joint training.

:func:`learn_affinity` runs the whole method:

1. **Single-task networks.** The STN graph (``mtgraph.ir.stn``: every task
   its own copy of every block) is trained with :func:`mtgraph.train.fit`,
   each task's loss with weight 1, so every network receives exactly the
   gradient it would get trained alone, on the same batches
   (:func:`train_stn`). Trained STN weights can be passed in instead
   (``stn_params``) and are then not retrained.
2. **Affinity.** :func:`~mtgraph.strategies.affinity.probe.probe_affinity`
   on K held-out images (the first K of ``val_data``; of ``train_data`` when
   no validation data is given) gives ``A[d, i, j]`` at D locations.
3. **Tree search.** :func:`~mtgraph.strategies.affinity.tree_search.best_tree`
   picks the tree of smallest clustering cost within the budget;
   :func:`~mtgraph.strategies.affinity.tree_search.budget_path` gives the
   Pareto path of trees as the budget grows.
4. **Build and train.** The tree becomes the IR with ``from_groups``
   (:func:`build_network`), initialised from scratch or from the STN weights,
   and is trained with uniform loss weights (the mean over tasks).

Locations and blocks
--------------------
Location ``d`` is the output of block ``locations[d]``. A tree holds one task
partition per location, and partition ``P_d`` governs the *segment* of blocks
ending at that location: block ``j`` uses ``P_d`` for the first ``d`` with
``locations[d] >= j``; blocks after the last location keep the last
partition. So between two locations the partition is held constant, tasks
branch apart only right after a probed location, and ``A[d]`` scores who
shares the segment whose output it measured (the convention of
:mod:`~mtgraph.strategies.affinity.tree_search`). With ``locations="all"``
each location is one block; ``"stages"`` probes the last block before each
change of feature shape plus the last block (for ResNets: after each stage,
the paper's Cityscapes setting). ``root_shared`` (default, as in the paper)
keeps the first segment shared by all tasks.

Cost of a tree
--------------
A candidate's budget cost is :func:`mtgraph.cost` of the graph the tree
builds: parameters (unique tensors) or GMac per image. :class:`TreeCost` is
that cost function, cached per tree. mtgraph.cost is a sum over IR nodes —
MACs per call site, parameters per unique tensor — and a Block node of block
``b`` costs the same wherever it sits (same input shape, its own copy of the
block), so the cost of every tree follows exactly from one mtgraph.cost
report of the One-Net: ``Σ_b |groups_b|·cost(b) + Σ_t cost(head_t)``.
That is what :class:`TreeCost` computes by default, because building and
measuring each candidate costs ~0.2 s and a search over 5 tasks may cost a
few hundred to all 1,304 trees (4 locations). When the backbone ties
parameters across blocks the sum is not exact (a tie is counted once per
copy that keeps it), so :class:`TreeCost` then builds every candidate
(``ParamStore.create``) and measures it; ``AffinityConfig(exact_cost=True)``
forces that everywhere. The chosen network's cost is always measured on the
built graph and checked against the search's number.

Initialisation of the branched network (``AffinityConfig.init``)
-----------------------------------------------------------------
``"scratch"`` (default): fresh copies of the traced backbone's blocks and of
the heads, every tree trained under the same schedule as the references
(notes §A.5.9). ``"stn"``: every block copy starts from the single-task
networks — a group's copy takes the weights of the group's first task in
task order (``shared_init="first"``; along a path the first task of a group
is also the first of the child group that contains it, so one task's
encoder is carried down the branch unchanged) or the element-wise mean of
the members' weights and BatchNorm statistics (``"average"``; independently
trained networks are not aligned, so this mixes unrelated filters); each
head starts from its own task's STN head.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mtgraph.analysis.cost import CostReport, cost
from mtgraph.analysis.macs import unique_parameters
from mtgraph.errors import BudgetError, ConfigError, MTGraphError
from mtgraph.frontend.backbone import Backbone
from mtgraph.ir.builders import from_groups, group_key, one_net, stn
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block, Head, head_weights
from mtgraph.params import ParamStore
from mtgraph.passes import SplitPass, format_pipeline
from mtgraph.strategies.affinity.probe import MIN_PROBE_IMAGES, AffinityProbe, probe_affinity, probe_images
from mtgraph.strategies.affinity.tree_search import (
    BranchingTree,
    Linkage,
    Method,
    PathPoint,
    TreeChoice,
    best_tree,
    budget_path,
    tree_dissimilarity,
)
from mtgraph.strategies.result import Decision, StrategyResult
from mtgraph.train import adam, evaluate, fit

__all__ = [
    "AffinityConfig",
    "BUDGET_KINDS",
    "DEFAULT_BUDGET_FRACTION",
    "INITS",
    "LOCATION_PRESETS",
    "SHARED_INITS",
    "TrainedSTN",
    "TreeCost",
    "block_groups",
    "build_network",
    "config_for_budget",
    "learn_affinity",
    "resolve_locations",
    "split_pipeline",
    "train_stn",
]

#: What a budget counts: parameters (unique tensors) or GMac per image.
BUDGET_KINDS = ("params", "gmac")
#: How the branched network starts: fresh block copies, or the single-task networks' weights.
INITS = ("scratch", "stn")
#: With ``init="stn"``, what a block shared by a group starts from.
SHARED_INITS = ("first", "average")
#: Named location sets: every block, or the last block of every feature shape (plus the last block).
LOCATION_PRESETS = ("all", "stages")
_LINKAGES = ("diameter", "diameter_all", "element_max")
_SEARCHES = ("auto", "exhaustive", "branch_and_bound", "beam")
#: Budget used when neither ``budget`` nor ``budget_fraction`` is given: halfway from One-Net to STN.
DEFAULT_BUDGET_FRACTION = 0.5

Groups = tuple[tuple[tuple[str, ...], ...], ...]


# --------------------------------------------------------------------------- #
# Configuration
# --------------------------------------------------------------------------- #


def _check_number(
    name: str, value: Any, *, low: float, strict: bool = False, integer: bool = False, optional: bool = False
) -> None:
    if value is None and optional:
        return
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise ConfigError(f"AffinityConfig.{name} must be a finite {'integer' if integer else 'number'}, got {value!r}")
    if value < low or (strict and value == low):
        raise ConfigError(f"AffinityConfig.{name} must be {'>' if strict else '>='} {low}, got {value!r}")


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"AffinityConfig.{name} must be one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class AffinityConfig:
    """Options of :func:`learn_affinity` (validated on construction; ConfigError names the field).

    Budget:
        budget_kind: ``"params"`` (parameters, unique tensors) or ``"gmac"``
            (GMac per image), both measured by :func:`mtgraph.cost` on the
            candidate network, heads included.
        budget: absolute budget in that unit (a parameter count or GMac).
        budget_fraction: budget as a fraction in [0, 1] of the way from the
            One-Net's cost (0) to the STN's (1). Give at most one of
            ``budget`` and ``budget_fraction``; neither means 0.5. With
            ``root_shared`` the most split tree costs less than the STN, so
            fractions near 1 all pick it.

    Affinity:
        locations: candidate branch locations: ``"all"`` (the output of every
            block), ``"stages"`` (see the module docstring) or a tuple of
            strictly increasing block indices.
        root_shared: the first segment is shared by every task (the paper).
        probe_images: K, held-out images of the RSA probe (at least 3).
        probe_batch_size: images per forward pass of the probe.

    Search (see :mod:`~mtgraph.strategies.affinity.tree_search`):
        linkage: clustering cost reading, ``"diameter"`` (default),
            ``"diameter_all"`` or ``"element_max"``.
        search: ``"auto"``, ``"exhaustive"``, ``"branch_and_bound"`` or ``"beam"``.
        budget_path: also compute the Pareto path of trees (costs every tree
            for exhaustive searches).
        exact_cost: build and measure every candidate instead of summing
            per-block costs (slow; automatic when the backbone ties weights
            across blocks).

    Training (Adam; epochs may be fractional and are rounded to steps):
        stn_epochs: epochs of the single-task networks (ignored when
            ``stn_params`` is given).
        epochs: epochs of the branched network.
        init: ``"scratch"`` or ``"stn"``; shared_init: ``"first"`` or
            ``"average"`` (see the module docstring).
        lr, batch_size, eval_batch_size.

    Raises:
        ConfigError: an option out of range or of the wrong type, naming it.

    Examples:
        >>> from mtgraph.strategies.affinity import AffinityConfig
        >>> config = AffinityConfig(budget_fraction=0.25, locations=[1, 3])
        >>> config.budget_kind, config.locations, config.probe_images
        ('params', (1, 3), 64)
        >>> AffinityConfig(budget=1e6, budget_fraction=0.5)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: AffinityConfig: give budget (absolute) or budget_fraction, not both
    """

    budget_kind: str = "params"
    budget: float | None = None
    budget_fraction: float | None = None
    locations: str | tuple[int, ...] = "all"
    root_shared: bool = True
    probe_images: int = 64
    probe_batch_size: int = 64
    linkage: str = "diameter"
    search: str = "auto"
    budget_path: bool = True
    exact_cost: bool = False
    stn_epochs: float = 4.0
    epochs: float = 4.0
    init: str = "scratch"
    shared_init: str = "first"
    lr: float = 1e-3
    batch_size: int = 32
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        _check_choice("budget_kind", self.budget_kind, BUDGET_KINDS)
        _check_number("budget", self.budget, low=0, strict=True, optional=True)
        _check_number("budget_fraction", self.budget_fraction, low=0, optional=True)
        if self.budget_fraction is not None and self.budget_fraction > 1:
            raise ConfigError(
                f"AffinityConfig.budget_fraction must be in [0, 1] (0: the One-Net's cost, 1: the STN's), "
                f"got {self.budget_fraction!r}; give an absolute budget with budget="
            )
        if self.budget is not None and self.budget_fraction is not None:
            raise ConfigError("AffinityConfig: give budget (absolute) or budget_fraction, not both")
        object.__setattr__(self, "locations", _checked_locations(self.locations))
        if not isinstance(self.root_shared, bool):
            raise ConfigError(f"AffinityConfig.root_shared must be True or False, got {self.root_shared!r}")
        _check_number("probe_images", self.probe_images, low=0, integer=True)
        if self.probe_images < MIN_PROBE_IMAGES:
            raise ConfigError(
                f"AffinityConfig.probe_images must be at least {MIN_PROBE_IMAGES} (RSA ranks the K(K-1)/2 image "
                f"pairs of each RDM), got {self.probe_images}"
            )
        _check_number("probe_batch_size", self.probe_batch_size, low=1, integer=True)
        _check_choice("linkage", self.linkage, _LINKAGES)
        _check_choice("search", self.search, _SEARCHES)
        for flag in ("budget_path", "exact_cost"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"AffinityConfig.{flag} must be True or False, got {getattr(self, flag)!r}")
        _check_number("stn_epochs", self.stn_epochs, low=0)
        _check_number("epochs", self.epochs, low=0)
        _check_choice("init", self.init, INITS)
        _check_choice("shared_init", self.shared_init, SHARED_INITS)
        _check_number("lr", self.lr, low=0, strict=True)
        _check_number("batch_size", self.batch_size, low=1, integer=True)
        _check_number("eval_batch_size", self.eval_batch_size, low=1, integer=True)


def _checked_locations(locations: Any) -> str | tuple[int, ...]:
    if isinstance(locations, str):
        _check_choice("locations", locations, LOCATION_PRESETS)
        return locations
    if not isinstance(locations, Sequence):
        raise ConfigError(
            f"AffinityConfig.locations must be one of {list(LOCATION_PRESETS)} or a tuple of block indices, got {locations!r}"
        )
    chosen = tuple(locations)
    if not chosen:
        raise ConfigError("AffinityConfig.locations must name at least one block")
    bad = [b for b in chosen if isinstance(b, bool) or not isinstance(b, int) or b < 0]
    if bad:
        raise ConfigError(f"AffinityConfig.locations must be block indices (integers >= 0), got {bad}")
    if any(b >= c for b, c in zip(chosen, chosen[1:])):
        raise ConfigError(f"AffinityConfig.locations must be strictly increasing, got {list(chosen)}")
    return chosen


def config_for_budget(epochs: float) -> AffinityConfig:
    """A config whose training totals about ``epochs`` epochs: half for the STNs, half for the tree.

    The branched network starts from the STN weights (``init="stn"``), so each
    of its weights has seen about ``epochs`` epochs, as the references of a
    demo trained for ``epochs`` have. Locations are the ``"stages"`` (the
    paper's setting: a location after each stage of a ResNet; with 5 tasks
    on a 4-stage backbone the search ranks 1,304 trees instead of 41,709
    for every block of a 9-block one). Everything else keeps its default
    (budget halfway between One-Net and STN in parameters, K = 64 probe images).

    Args:
        epochs: the total training budget, > 0.

    Returns:
        The :class:`AffinityConfig`.

    Raises:
        ConfigError: ``epochs`` is not a positive number.

    Examples:
        >>> from mtgraph.strategies.affinity import config_for_budget
        >>> config = config_for_budget(4)
        >>> config.stn_epochs, config.epochs, config.init, config.locations
        (2.0, 2.0, 'stn', 'stages')
    """
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not math.isfinite(epochs) or epochs <= 0:
        raise ConfigError(f"epochs must be a positive number, got {epochs!r}")
    half = float(epochs) / 2.0
    return AffinityConfig(stn_epochs=half, epochs=half, init="stn", locations="stages")


# --------------------------------------------------------------------------- #
# Locations and trees
# --------------------------------------------------------------------------- #


def resolve_locations(backbone: Backbone, locations: str | Sequence[int]) -> tuple[int, ...]:
    """The block indices of ``locations`` (``"all"``, ``"stages"`` or indices) for ``backbone``.

    ``"stages"``: every block whose output shape differs from the next
    block's, plus the last block.

    Args:
        backbone: the traced backbone.
        locations: ``"all"``, ``"stages"`` or strictly increasing block indices.

    Returns:
        The block indices, increasing.

    Raises:
        ConfigError: an unknown preset, or indices outside the backbone or not increasing.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)),
        ...                          torch.randn(2, 3, 8, 8))
        >>> from mtgraph.strategies.affinity import resolve_locations
        >>> resolve_locations(backbone, "all"), resolve_locations(backbone, "stages")  # the last conv shrinks the map
        ((0, 1, 2), (1, 2))
        >>> resolve_locations(backbone, (0, 5))
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: locations [5] are outside the backbone, which has blocks 0..2
    """
    n = backbone.num_blocks
    if isinstance(locations, str):
        _check_choice("locations", locations, LOCATION_PRESETS)
        if locations == "all":
            return tuple(range(n))
        shapes = [tuple(b.out_shape) for b in backbone.blocks]
        return tuple(b for b in range(n) if b == n - 1 or shapes[b] != shapes[b + 1])
    chosen = _checked_locations(locations)
    assert isinstance(chosen, tuple)  # a str was handled above
    outside = [b for b in chosen if b >= n]
    if outside:
        raise ConfigError(f"locations {outside} are outside the backbone, which has blocks 0..{n - 1}")
    return chosen


def _segment_of_blocks(locations: Sequence[int], num_blocks: int) -> list[int]:
    """For each block, the location whose partition it uses (see the module docstring)."""
    out = []
    d = 0
    for j in range(num_blocks):
        while d < len(locations) - 1 and locations[d] < j:
            d += 1
        out.append(d)
    return out


def _ordered(group: Iterable[str], tasks: Sequence[str]) -> tuple[str, ...]:
    members = set(group)
    return tuple(t for t in tasks if t in members)


def _partition(groups: Iterable[Iterable[str]], tasks: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    ordered = [_ordered(g, tasks) for g in groups]
    return tuple(sorted(ordered, key=lambda g: tasks.index(g[0])))


def block_groups(tree: BranchingTree, locations: Sequence[int], num_blocks: int, tasks: Sequence[str]) -> Groups:
    """The per-block task groups (the ``from_groups`` form) of a tree over ``locations``.

    Block ``j`` gets the partition of the first location at or after it
    (blocks after the last location keep the last one). Groups list tasks in
    ``tasks`` order and are sorted by their first task.

    Args:
        tree: the branching tree, one partition per location.
        locations: the block index of each location.
        num_blocks: blocks of the backbone.
        tasks: the task order.

    Returns:
        One partition per block (task-name tuples).

    Raises:
        ConfigError: a tree over other tasks, or with another number of locations.

    Examples:
        >>> from mtgraph.strategies.affinity import block_groups
        >>> from mtgraph.strategies.affinity import BranchingTree
        >>> tree = BranchingTree(((frozenset("ab"),), (frozenset("a"), frozenset("b"))))  # split after location 0
        >>> block_groups(tree, (0, 2), 3, ["a", "b"])  # blocks 1 and 2 follow location 1 (block 2)
        ((('a', 'b'),), (('a',), ('b',)), (('a',), ('b',)))
    """
    if not isinstance(tree, BranchingTree):
        raise ConfigError(f"tree must be a BranchingTree, got {type(tree).__name__}")
    if tree.num_locations != len(locations):
        raise ConfigError(f"the tree has {tree.num_locations} locations but {len(locations)} locations were given")
    names = tuple(tasks)
    if tree.tasks != frozenset(names):
        raise ConfigError(f"the tree covers tasks {sorted(tree.tasks)} but the tasks are {list(names)}")
    per_location = [_partition(p, names) for p in tree.partitions]
    return tuple(per_location[d] for d in _segment_of_blocks(locations, num_blocks))


def split_pipeline(groups: Sequence[Sequence[Sequence[str]]], tasks: Sequence[str]) -> str:
    """The ``split`` pipeline that turns ``one_net`` into ``from_groups(.., groups)``.

    One ``split{block=b,groups=...}`` per group of block ``b - 1`` that block
    ``b`` divides, in block order (each split duplicates every later block
    of the branch, so deeper splits find their group on one node). Empty
    text for the One-Net.

    Args:
        groups: one partition of the tasks per block (the ``from_groups`` form).
        tasks: the task order.

    Returns:
        The pipeline text, ``""`` when nothing splits.

    Examples:
        >>> from mtgraph.strategies.affinity import split_pipeline
        >>> split_pipeline([[["a", "b", "c"]], [["a", "b"], ["c"]], [["a"], ["b"], ["c"]]], ["a", "b", "c"])
        'split{block=1,groups=a+b/c},split{block=2,groups=a/b}'
        >>> split_pipeline([[["a", "b"]], [["a", "b"]]], ["a", "b"])
        ''
    """
    names = tuple(tasks)
    passes = []
    previous: tuple[tuple[str, ...], ...] = (names,)
    for b, raw in enumerate(groups):
        partition = _partition(raw, names)
        for parent in previous:
            children = tuple(g for g in partition if set(g) <= set(parent))
            if len(children) > 1:
                passes.append(SplitPass(block=b, groups=children))
        previous = partition
    return format_pipeline(passes) if passes else ""


# --------------------------------------------------------------------------- #
# Cost of a tree
# --------------------------------------------------------------------------- #


def _blocks_tie_weights(backbone: Backbone) -> bool:
    """True when some parameter tensor belongs to more than one block of the backbone."""
    modules = [b.module for b in backbone.blocks]
    total = sum(len(unique_parameters([m])) for m in modules)
    return len(unique_parameters(modules)) != total


class TreeCost:
    """The budget cost of a branching tree: :func:`mtgraph.cost` of the network it builds.

    ``cost_fn(tree)`` returns parameters (``kind="params"``) or GMac per image
    (``kind="gmac"``) of ``from_groups(block_groups(tree, ...))`` with fresh
    weights and ``heads``, cached per per-block grouping. By default the
    value is summed from one mtgraph.cost report of the One-Net (exact, see
    the module docstring); ``exact=True``, or a backbone that ties weights
    across blocks, builds and measures every candidate instead.

    Args:
        backbone: the traced backbone.
        heads: task name -> head module (counted, never modified).
        tasks: the task order.
        locations: the block index of each tree location.
        kind: ``"params"`` or ``"gmac"``.
        exact: build and measure every candidate.

    Raises:
        ConfigError: an unknown ``kind``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)),
        ...                          torch.randn(2, 3, 8, 8))
        >>> heads = {"a": nn.Conv2d(4, 1, 1), "b": nn.Conv2d(4, 1, 1)}
        >>> from mtgraph.strategies.affinity import BranchingTree
        >>> tree = BranchingTree(((frozenset("ab"),), (frozenset("a"), frozenset("b"))))  # split after location 0
        >>> from mtgraph.strategies.affinity import TreeCost
        >>> cost_of = TreeCost(backbone, heads, ["a", "b"], locations=(0, 2))
        >>> cost_of.one_net, cost_of(tree), cost_of.stn  # 112 + 148 parameters of blocks, 5 per head
        (270.0, 418.0, 530.0)
        >>> cost_of.format(cost_of(tree))
        '418 parameters'
    """

    def __init__(
        self,
        backbone: Backbone,
        heads: Mapping[str, nn.Module],
        tasks: Sequence[str],
        locations: Sequence[int],
        kind: str = "params",
        *,
        exact: bool = False,
    ) -> None:
        if kind not in BUDGET_KINDS:
            raise ConfigError(f"cost kind must be one of {list(BUDGET_KINDS)}, got {kind!r}")
        self.backbone = backbone
        self.heads = {t: heads[t] for t in tasks}
        self.tasks = tuple(tasks)
        self.locations = tuple(locations)
        self.kind = kind
        self.exact = bool(exact) or _blocks_tie_weights(backbone)
        self._cache: dict[Groups, float] = {}
        base = one_net(backbone.num_blocks, self.tasks)
        report = self.measure(base)
        self._block_value = [0.0] * backbone.num_blocks
        self._head_value = 0.0
        for node_cost, node in zip(report.nodes, base.nodes, strict=True):
            value = float(node_cost.params if kind == "params" else node_cost.macs)
            if isinstance(node, Block):
                self._block_value[node.block] = value
            elif isinstance(node, Head):
                self._head_value += value
        self._cache[self._groups_of(base)] = self._value(report)

    def _groups_of(self, graph: MTGraph) -> Groups:
        per_block: list[list[tuple[str, ...]]] = [[] for _ in range(self.backbone.num_blocks)]
        for i, node in enumerate(graph.nodes):
            if isinstance(node, Block):
                per_block[node.block].append(_ordered(graph.served[i], self.tasks))
        return tuple(_partition(g, self.tasks) for g in per_block)

    def _value(self, report: CostReport) -> float:
        return float(report.total_params) if self.kind == "params" else report.total_macs / 1e9

    def measure(self, graph: MTGraph) -> CostReport:
        """:func:`mtgraph.cost` of ``graph`` with fresh weights (``ParamStore.create``)."""
        return cost(graph, ParamStore.create(graph, self.backbone, self.heads))

    def groups(self, tree: BranchingTree) -> Groups:
        """The per-block groups of ``tree`` (:func:`block_groups`)."""
        return block_groups(tree, self.locations, self.backbone.num_blocks, self.tasks)

    def graph(self, tree: BranchingTree) -> MTGraph:
        """The IR of ``tree``: ``from_groups`` of its per-block groups."""
        return from_groups(self.backbone.num_blocks, self.tasks, self.groups(tree))

    def of_groups(self, groups: Groups) -> float:
        """The cost of the network with per-block ``groups`` (cached)."""
        key = tuple(_partition(g, self.tasks) for g in groups)
        found = self._cache.get(key)
        if found is not None:
            return found
        if self.exact:
            value = self._value(self.measure(from_groups(self.backbone.num_blocks, self.tasks, key)))
        else:
            # Integer sums (params, MACs): the order of addition cannot change the result.
            units = sum(len(g) * v for g, v in zip(key, self._block_value, strict=True)) + self._head_value
            value = units if self.kind == "params" else units / 1e9
        self._cache[key] = value
        return value

    def __call__(self, tree: BranchingTree) -> float:
        """The tree's cost in the budget unit (the ``cost_fn`` of the tree search)."""
        return self.of_groups(self.groups(tree))

    @property
    def calls(self) -> int:
        """Distinct groupings costed so far."""
        return len(self._cache)

    @property
    def one_net(self) -> float:
        """Cost of the One-Net (every task shares every block): the cheapest tree."""
        return self.of_groups(tuple((self.tasks,) for _ in range(self.backbone.num_blocks)))

    @property
    def stn(self) -> float:
        """Cost of the single-task networks (every task its own copy of every block)."""
        return self.of_groups(tuple(tuple((t,) for t in self.tasks) for _ in range(self.backbone.num_blocks)))

    def value_of(self, report: CostReport) -> float:
        """A cost report's total in the budget unit."""
        return self._value(report)

    def format(self, value: float) -> str:
        """``"24,560 parameters"`` or ``"0.0118344 GMac"``."""
        if self.kind == "params":
            return f"{round(value):,} parameters"
        return f"{value:.9g} GMac"


# --------------------------------------------------------------------------- #
# Building and training
# --------------------------------------------------------------------------- #


def _heads(heads: Mapping[str, nn.Module] | None, tasks: Mapping[str, Any], backbone: Backbone) -> dict[str, nn.Module]:
    if heads is None:
        size = tuple(backbone.input_shape[-2:])
        return {name: task.make_head(backbone.output_shape[0], size) for name, task in tasks.items()}
    if not isinstance(heads, Mapping):
        raise ConfigError(f"heads must be a mapping task name -> nn.Module (or None), got {type(heads).__name__}")
    missing = [t for t in tasks if t not in heads]
    if missing:
        raise ConfigError(f"no head for tasks {missing}; heads were given for {list(heads)}")
    return {t: heads[t] for t in tasks}


def _check_stn_params(stn_params: Any, backbone: Backbone, tasks: tuple[str, ...]) -> ParamStore:
    if not isinstance(stn_params, ParamStore):
        raise ConfigError(f"stn_params must be the ParamStore of the STN graph, got {type(stn_params).__name__}")
    if stn_params.backbone.num_blocks != backbone.num_blocks:
        raise ConfigError(
            f"stn_params were made for a backbone of {stn_params.backbone.num_blocks} blocks; this one has "
            f"{backbone.num_blocks}"
        )
    graph = stn(backbone.num_blocks, tasks)
    missing = [k for k in (*graph.weight_keys(), *(head_weights(t) for t in tasks)) if k not in stn_params]
    if missing:
        raise ConfigError(
            f"stn_params lack the keys {missing[:6]}{' ...' if len(missing) > 6 else ''} of the STN graph "
            f"mtgraph.ir.stn({backbone.num_blocks}, {list(tasks)})"
        )
    return stn_params


def _state_of(sources: Sequence[nn.Module], how: str) -> dict[str, torch.Tensor]:
    """The state dict a new copy starts from: the first source's, or the element-wise mean of all."""
    first = sources[0].state_dict()
    if how == "first" or len(sources) == 1:
        return first
    states = [s.state_dict() for s in sources]
    out = {}
    for name, value in first.items():
        if value.is_floating_point():
            out[name] = torch.stack([s[name].to(value.device) for s in states]).mean(dim=0)
        else:  # counters such as BatchNorm's num_batches_tracked
            out[name] = value
    return out


def build_network(
    groups: Sequence[Sequence[Sequence[str]]],
    backbone: Backbone,
    heads: Mapping[str, nn.Module],
    tasks: Sequence[str],
    *,
    stn_params: ParamStore | None = None,
    shared_init: str = "first",
) -> tuple[MTGraph, ParamStore]:
    """The branched network of per-block ``groups``: ``from_groups`` and its weights.

    Without ``stn_params`` the weights are fresh copies of the traced blocks
    and of ``heads``. With them, every block copy starts from its group's
    single-task weights (``shared_init``: the first task's, or the mean) and
    every head from its task's STN head.

    Args:
        groups: one partition of the tasks per block (the ``from_groups`` form).
        backbone: the traced backbone.
        heads: task name -> head module (copied).
        tasks: the task order.
        stn_params: trained weights of ``mtgraph.ir.stn(num_blocks, tasks)``, or None.
        shared_init: ``"first"`` or ``"average"``.

    Returns:
        The graph and its weights.

    Raises:
        ConfigError: an unknown ``shared_init``, or ``stn_params`` that do not fit the backbone and tasks.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)),
        ...                          torch.randn(2, 3, 8, 8))
        >>> heads = {"a": nn.Conv2d(4, 1, 1), "b": nn.Conv2d(4, 1, 1)}
        >>> from mtgraph.strategies.affinity import build_network
        >>> graph, params = build_network([[["a", "b"]], [["a", "b"]], [["a"], ["b"]]], backbone, heads, ["a", "b"])
        >>> print(mtgraph.print_graph(graph))
        %0 = input                                  # a b
        %1 = block 0 w=b0.shared (%0)               # a b
        %2 = block 1 w=b1.shared (%1)               # a b
        %3 = block 2 w=b2.a (%2)                    # a
        %4 = block 2 w=b2.b (%2)                    # b
        a = head (%3)
        b = head (%4)
    """
    _check_choice("shared_init", shared_init, SHARED_INITS)
    names = tuple(tasks)
    graph = from_groups(backbone.num_blocks, names, groups)
    params = ParamStore.create(graph, backbone, heads)
    if stn_params is None:
        return graph, params
    _check_stn_params(stn_params, backbone, names)
    with torch.no_grad():
        for i, node in enumerate(graph.nodes):
            if not isinstance(node, Block):
                continue
            members = _ordered(graph.served[i], names)
            sources = [stn_params[group_key(node.block, (t,), names)] for t in members]
            _load(params[node.weights], _state_of(sources, shared_init), node.weights)
        for t in names:
            _load(params[head_weights(t)], stn_params[head_weights(t)].state_dict(), head_weights(t))
    return graph, params


def _load(module: nn.Module, state: Mapping[str, torch.Tensor], key: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"the STN weights do not fit {key!r}: {str(exc).splitlines()[0]}") from exc


def _steps(data: Dataset | DataLoader, epochs: float, batch_size: int) -> int:
    """Optimizer steps of ``epochs`` passes over ``data`` (at least one when ``epochs > 0``)."""
    if epochs <= 0:
        return 0
    try:
        if isinstance(data, DataLoader):
            per_epoch = len(data)
        else:
            per_epoch = math.ceil(len(data) / batch_size)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError("train_data must be a sized Dataset or DataLoader") from exc
    if per_epoch < 1:
        raise ConfigError("train_data is empty")
    return max(1, round(epochs * per_epoch))


class TrainedSTN(NamedTuple):
    """Single-task networks: the STN graph, its trained weights and the training history (None if not trained).

    Examples:
        With ``stn_epochs=0`` :func:`train_stn` returns the untrained networks:

        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> from mtgraph import tasks as T
        >>> from mtgraph.data import SceneDataset
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)),
        ...                          torch.randn(2, 3, 32, 32))
        >>> tasks = {"seg": T.segmentation(3, hidden=4), "depth": T.depth(hidden=4)}
        >>> data = SceneDataset(4, size=32, seed=0, num_classes=2)
        >>> from mtgraph.strategies.affinity import AffinityConfig, train_stn
        >>> stn = train_stn(backbone, None, tasks, data, config=AffinityConfig(stn_epochs=0))
        >>> stn.graph == mtgraph.stn(3, ("seg", "depth")), stn.history
        (True, None)
    """

    graph: MTGraph
    params: ParamStore
    history: dict[str, Any] | None


def _check_inputs(backbone: Any, tasks: Any, train_data: Any) -> tuple[str, ...]:
    if not isinstance(backbone, Backbone):
        raise ConfigError(
            f"backbone must be a traced mtgraph.Backbone, got {type(backbone).__name__}; "
            "trace it first: mtgraph.trace(model, example_input)"
        )
    if not isinstance(tasks, Mapping) or not tasks:
        raise ConfigError("tasks must be a non-empty mapping task name -> mtgraph.tasks.Task")
    if not isinstance(train_data, (Dataset, DataLoader)):
        raise ConfigError(
            f"train_data must be a map-style torch Dataset or a DataLoader, got {type(train_data).__name__}"
        )
    return tuple(tasks)


def train_stn(
    backbone: Backbone,
    heads: Mapping[str, nn.Module] | None,
    tasks: Mapping[str, Any],
    train_data: Dataset | DataLoader,
    *,
    config: AffinityConfig | None = None,
    seed: int = 0,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> TrainedSTN:
    """Train the single-task networks: ``stn(num_blocks, tasks)`` for ``config.stn_epochs`` epochs.

    Every task's loss has weight 1 and the networks share no parameter, so
    each one gets exactly the gradient it would get trained alone (Adam,
    ``config.lr``, ``config.batch_size``, the same batches for all).

    Args:
        backbone: the traced backbone.
        heads: task name -> head module (copied), or None to build each task's head with its factory.
        tasks: task name -> :class:`mtgraph.tasks.Task`.
        train_data: map-style dataset (or DataLoader) of ``(image, {target: tensor})``.
        config: uses ``stn_epochs``, ``lr`` and ``batch_size``.
        seed: seeds training.
        progress: show a progress bar.
        device: where to train.

    Returns:
        The :class:`TrainedSTN` (``history`` None when ``stn_epochs`` is 0).

    Raises:
        ConfigError: inconsistent inputs or options.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> from mtgraph import tasks as T
        >>> from mtgraph.data import SceneDataset
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)),
        ...                          torch.randn(2, 3, 32, 32))
        >>> tasks = {"seg": T.segmentation(3, hidden=4), "depth": T.depth(hidden=4)}
        >>> data = SceneDataset(4, size=32, seed=0, num_classes=2)
        >>> from mtgraph.strategies.affinity import AffinityConfig, train_stn
        >>> stn = train_stn(backbone, None, tasks, data, config=AffinityConfig(stn_epochs=1, batch_size=4))
        >>> stn.params["b0.seg"] is not stn.params["b0.depth"], len(stn.history["total"])  # one step
        (True, 1)
    """
    config = AffinityConfig() if config is None else config
    if not isinstance(config, AffinityConfig):
        raise ConfigError(f"config must be an AffinityConfig, got {type(config).__name__}")
    names = _check_inputs(backbone, tasks, train_data)
    graph = stn(backbone.num_blocks, names)
    params = ParamStore.create(graph, backbone, _heads(heads, tasks, backbone))
    steps = _steps(train_data, config.stn_epochs, config.batch_size)
    if steps == 0:
        return TrainedSTN(graph, params, None)
    fitted = fit(
        graph,
        params,
        tasks,
        train_data,
        steps=steps,
        batch_size=config.batch_size,
        optimizer=adam(config.lr),
        loss_weights={t: 1.0 for t in names},
        seed=seed,
        phase="affinity-stn",
        progress=progress,
        device=device,
    )
    return TrainedSTN(fitted.graph, fitted.params, fitted.history.to_state())


# --------------------------------------------------------------------------- #
# The driver
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _Budget:
    value: float
    minimum: float
    maximum: float

    @property
    def fraction(self) -> float:
        span = self.maximum - self.minimum
        return (self.value - self.minimum) / span if span > 0 else 0.0


def _budget(config: AffinityConfig, coster: TreeCost) -> _Budget:
    """The absolute budget; BudgetError (with the minimum) when it is below the One-Net."""
    minimum, maximum = coster.one_net, coster.stn
    if config.budget is not None:
        value = float(config.budget)
    else:
        fraction = DEFAULT_BUDGET_FRACTION if config.budget_fraction is None else config.budget_fraction
        value = minimum + fraction * (maximum - minimum)
    # The same relative slack as the search, so a budget equal to the One-Net's cost is accepted.
    if value < minimum - 1e-9 * max(1.0, abs(minimum)):
        raise BudgetError(
            f"budget {coster.format(value)} is below the cost of the One-Net (every task sharing every block, "
            f"the cheapest tree), {coster.format(minimum)}; the budget must be at least {coster.format(minimum)} "
            f"(the STN costs {coster.format(maximum)})"
        )
    return _Budget(value, minimum, maximum)


def _text(partition: Sequence[Sequence[str]]) -> str:
    return " ".join("{" + ",".join(g) + "}" for g in partition)


def _level_decisions(probe: AffinityProbe, tree: BranchingTree, tasks: tuple[str, ...], linkage: str) -> list[Decision]:
    out = []
    means = probe.mean_affinity()
    index = {t: i for i, t in enumerate(tasks)}
    for d, raw in enumerate(tree.partitions):
        partition = _partition(raw, tasks)
        level = tree_dissimilarity(
            BranchingTree((raw,)), probe.affinity[d : d + 1].numpy(), tasks, linkage=cast(Linkage, linkage)
        )
        within = [
            float(probe.affinity[d, index[a], index[b]]) for g in partition for k, a in enumerate(g) for b in g[k + 1 :]
        ]
        across = [
            float(probe.affinity[d, index[a], index[b]])
            for k, a in enumerate(tasks)
            for b in tasks[k + 1 :]
            if not any(a in g and b in g for g in partition)
        ]
        parts = [f"mean affinity {means[d]:.3f}", f"level clustering cost {level:.4f}"]
        if within:
            parts.append(f"lowest affinity inside a group {min(within):.3f}")
        if across:
            parts.append(f"highest affinity across groups {max(across):.3f}")
        out.append(
            Decision(
                where=f"location {d}: {probe.label(d)}",
                what=f"{'share' if len(partition) == 1 else 'branch into'} {_text(partition)}",
                accepted=True,
                reason="; ".join(parts),
                data={
                    "block": probe.locations[d],
                    "groups": partition,
                    "level_cost": level,
                    "mean_affinity": means[d],
                    "within": within,
                    "across": across,
                },
            )
        )
    return out


def _path_decisions(path: Sequence[PathPoint], choice: TreeChoice, budget: _Budget, coster: TreeCost) -> list[Decision]:
    out = []
    for point in path:
        if point.tree == choice.tree:
            continue
        if point.cost > budget.value:
            why = f"costs {coster.format(point.cost)}, over the budget {coster.format(budget.value)}"
        else:
            why = (
                f"clustering cost {point.dissimilarity:.4f} is higher than the chosen tree's {choice.dissimilarity:.4f}"
            )
        out.append(
            Decision(
                where="budget path",
                what=f"tree {point.tree}",
                accepted=False,
                reason=why,
                data={"cost": point.cost, "dissimilarity": point.dissimilarity},
            )
        )
    return out


def learn_affinity(
    backbone: Backbone,
    heads: Mapping[str, nn.Module] | None,
    tasks: Mapping[str, Any],
    train_data: Dataset | DataLoader,
    *,
    config: AffinityConfig | None = None,
    val_data: Dataset | DataLoader | None = None,
    seed: int = 0,
    progress: bool = False,
    stn_params: ParamStore | None = None,
    device: str | torch.device | None = None,
) -> StrategyResult:
    """Learn a branched multi-task network (papers/001): what layers to share under a budget.

    Args:
        backbone: the traced backbone (:func:`mtgraph.trace`).
        heads: task -> head module (copied), or None to build each task's head
            with its factory.
        tasks: task name -> :class:`mtgraph.tasks.Task` (at least two).
        train_data: map-style dataset (or DataLoader) of ``(image, {target: tensor})``.
        config: :class:`AffinityConfig` (default: parameter budget halfway
            between One-Net and STN, every block a location).
        val_data: held-out data: the first K images are the RSA probe images,
            and the final network (and the STN) are evaluated on all of it.
            Without it the probe uses the first K training images.
        seed: seeds the STN and the final training.
        progress: show progress bars.
        stn_params: trained weights of ``mtgraph.ir.stn(backbone.num_blocks,
            tasks)`` (e.g. ``train_stn(...).params``); given, the single-task
            networks are not trained again.
        device: where to train (default: :func:`~mtgraph.train.fit`'s choice).

    Returns:
        A :class:`~mtgraph.strategies.result.StrategyResult` (``strategy="affinity"``):
        the trained branched network; ``pipeline`` (``split`` passes from
        ``one_net``); ``decisions`` (the chosen tree with its cost,
        clustering cost and budget, one entry per location, and the budget
        path's other trees, declined with the reason); ``figures``:
        ``"similarity"`` (per location, ``(tasks, N×N affinity)``, drawn as
        heatmaps by the report), ``"affinity"`` (the D×N×N tensor and its
        locations), ``"budget_path"`` (``(cost, clustering cost, per-block
        groups)`` rows), ``"tree"`` and ``"budget"``; ``history``: the STN and
        final training histories, with ``val_data`` their ``"metrics"`` and
        ``"stn_metrics"``.

    Raises:
        BudgetError: the budget is below the One-Net's cost (the message gives
            the minimum); raised before any training.
        ConfigError: inconsistent inputs or options (K < 3, bad locations,
            fewer than 2 tasks, STN weights that do not fit, ...).

    Examples:
        A one-step run whose budget (``budget_fraction=0``) only admits the
        One-Net; ``docs/strategies/affinity.md`` has a run that branches:

        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> from mtgraph import tasks as T
        >>> from mtgraph.data import SceneDataset
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)),
        ...                          torch.randn(2, 3, 32, 32))
        >>> tasks = {"seg": T.segmentation(3, hidden=4), "depth": T.depth(hidden=4)}
        >>> data = SceneDataset(4, size=32, seed=0, num_classes=2)
        >>> from mtgraph.strategies.affinity import AffinityConfig, learn_affinity
        >>> config = AffinityConfig(budget_fraction=0.0, stn_epochs=1, epochs=1, batch_size=4, probe_images=4)
        >>> result = learn_affinity(backbone, None, tasks, data, config=config)
        >>> result.strategy, result.pipeline, result.figures["affinity"]["locations"]
        ('affinity', '', (0, 1, 2))
        >>> result.figures["budget"]["one_net"] == result.figures["budget"]["value"]
        True
    """
    config = AffinityConfig() if config is None else config
    if not isinstance(config, AffinityConfig):
        raise ConfigError(f"config must be an AffinityConfig, got {type(config).__name__}")
    names = _check_inputs(backbone, tasks, train_data)
    if len(names) < 2:
        raise ConfigError(f"branched multi-task learning needs at least 2 tasks, got {list(names)}")
    head_modules = _heads(heads, tasks, backbone)
    locations = resolve_locations(backbone, config.locations)
    if config.root_shared and len(locations) == 1:
        raise ConfigError(
            f"one location ({list(locations)}) with root_shared=True leaves only the One-Net; "
            "probe more locations or set root_shared=False"
        )
    if stn_params is not None:
        _check_stn_params(stn_params, backbone, names)

    # Everything about the budget is known before training: fail fast.
    coster = TreeCost(backbone, head_modules, names, locations, config.budget_kind, exact=config.exact_cost)
    budget = _budget(config, coster)

    history: dict[str, Any] = {}
    if stn_params is None:
        trained = train_stn(
            backbone, head_modules, tasks, train_data, config=config, seed=seed, progress=progress, device=device
        )
        stn_graph, stn_store = trained.graph, trained.params
        history["stn"] = trained.history
    else:
        stn_graph, stn_store = stn(backbone.num_blocks, names), stn_params
        history["stn"] = None
    if val_data is not None:
        history["stn_metrics"] = dict(
            evaluate(stn_graph, stn_store, tasks, val_data, batch_size=config.eval_batch_size)
        )

    source = "val_data" if val_data is not None else "train_data"
    images = probe_images(val_data if val_data is not None else train_data, config.probe_images)
    probe = probe_affinity(stn_graph, stn_store, images, locations=locations, batch_size=config.probe_batch_size)
    affinity = probe.affinity.numpy()

    linkage, method = cast(Linkage, config.linkage), cast(Method, config.search)
    choice = best_tree(
        affinity, names, budget.value, coster, root_shared=config.root_shared, linkage=linkage, method=method
    )
    path: list[PathPoint] = []
    if config.budget_path:
        path = budget_path(affinity, names, coster, root_shared=config.root_shared, linkage=linkage, method=method)
    groups = coster.groups(choice.tree)
    graph, params = build_network(
        groups,
        backbone,
        head_modules,
        names,
        stn_params=stn_store if config.init == "stn" else None,
        shared_init=config.shared_init,
    )
    measured = coster.value_of(cost(graph, params))
    if not math.isclose(measured, choice.cost, rel_tol=1e-12, abs_tol=0.0):
        raise MTGraphError(
            f"internal error: the search costed tree {choice.tree} at {coster.format(choice.cost)} but the built "
            f"network measures {coster.format(measured)}; rerun with AffinityConfig(exact_cost=True) and report this"
        )

    steps = _steps(train_data, config.epochs, config.batch_size)
    if steps:
        fitted = fit(
            graph,
            params,
            tasks,
            train_data,
            steps=steps,
            batch_size=config.batch_size,
            optimizer=adam(config.lr),
            seed=seed,
            phase="affinity-tree",
            progress=progress,
            device=device,
        )
        graph, params = fitted.graph, fitted.params
        history["train"] = fitted.history.to_state()
    if val_data is not None:
        history["metrics"] = dict(evaluate(graph, params, tasks, val_data, batch_size=config.eval_batch_size))

    span = f"{budget.fraction:.0%} of the way from the One-Net ({coster.format(budget.minimum)}) to the STN ({coster.format(budget.maximum)})"
    chosen = Decision(
        where=f"budget {coster.format(budget.value)}",
        what=f"tree {choice.tree}",
        accepted=True,
        reason=(
            f"lowest clustering cost ({config.linkage} linkage) {choice.dissimilarity:.4f} among the trees within "
            f"the budget, {span}; the tree costs {coster.format(choice.cost)} "
            f"({choice.method} search, {'exact' if choice.exact else 'heuristic'}, {choice.cost_calls} trees costed)"
        ),
        data={
            "cost": choice.cost,
            "dissimilarity": choice.dissimilarity,
            "budget": budget.value,
            "budget_kind": config.budget_kind,
            "one_net": budget.minimum,
            "stn": budget.maximum,
            "method": choice.method,
            "exact": choice.exact,
            "groups": groups,
        },
    )
    decisions = [
        chosen,
        *_level_decisions(probe, choice.tree, names, config.linkage),
        *_path_decisions(path, choice, budget, coster),
    ]
    decisions.insert(
        1,
        Decision(
            where="RSA probe",
            what=f"K={probe.num_images} images from {source}, {len(locations)} locations",
            accepted=True,
            reason=(
                "held-out images"
                if val_data is not None
                else "no val_data was given, so the probe images are training images (the paper uses held-out ones)"
            ),
            data={"locations": locations, "source": source},
        ),
    )
    figures: dict[str, Any] = {
        "similarity": probe.heatmaps(),
        "affinity": {
            "tasks": names,
            "locations": probe.locations,
            "blocks": probe.block_names,
            "tensor": probe.affinity.tolist(),
            "mean_off_diagonal": probe.mean_affinity(),
            "num_images": probe.num_images,
        },
        "budget_path": [(p.cost, p.dissimilarity, coster.groups(p.tree)) for p in path],
        "tree": {
            "text": str(choice.tree),
            "locations": tuple(_partition(p, names) for p in choice.tree.partitions),
            "blocks": groups,
        },
        "budget": {
            "kind": config.budget_kind,
            "value": budget.value,
            "one_net": budget.minimum,
            "stn": budget.maximum,
            "fraction": budget.fraction,
        },
    }
    return StrategyResult(
        strategy="affinity",
        graph=graph,
        params=params,
        decisions=tuple(decisions),
        pipeline=split_pipeline(groups, names),
        figures=figures,
        history=history,
    )

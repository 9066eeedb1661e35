"""The budget cost of a branching tree (:class:`TreeCost`): :func:`mtgraph.cost` of the network it builds.

A candidate's cost is parameters (unique tensors) or GMac per image of the
graph the tree builds, heads included. mtgraph.cost is a sum over IR nodes
(MACs per call site, parameters per unique tensor) and a Block node of block
``b`` costs the same wherever it sits (same input shape, its own copy of the
block), so the cost of every tree follows exactly from one mtgraph.cost
report of the One-Net: ``Σ_b |groups_b|·cost(b) + Σ_t cost(head_t)``. That
is what :class:`TreeCost` computes by default, because building and
measuring each candidate costs ~0.2 s and a search over 5 tasks may cost a
few hundred to all 1,304 trees (4 locations). When the backbone ties
parameters across blocks the sum is not exact (a tie is counted once per
copy that keeps it), so :class:`TreeCost` then builds every candidate and
measures it; ``AffinityConfig(exact_cost=True)`` forces that everywhere. The
strategy measures the network it finally builds (through passes) and checks
it against the search's number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from mtgraph.analysis.cost import CostReport, cost
from mtgraph.analysis.macs import unique_parameters
from mtgraph.budget import MEASURES
from mtgraph.errors import ConfigError
from mtgraph.frontend.backbone import Backbone
from mtgraph.ir.builders import from_groups, one_net
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block, Head
from mtgraph.params import ParamStore
from mtgraph.strategies.affinity.locations import Groups, block_groups, ordered, partition_of
from mtgraph.strategies.affinity.tree_search import BranchingTree

__all__ = ["TreeCost"]


def _blocks_tie_weights(backbone: Backbone) -> bool:
    """True when some parameter tensor belongs to more than one block of the backbone."""
    modules = [b.module for b in backbone.blocks]
    total = sum(len(unique_parameters([m])) for m in modules)
    return len(unique_parameters(modules)) != total


class TreeCost:
    """The budget cost of a branching tree: :func:`mtgraph.cost` of the network it builds.

    ``cost_fn(tree)`` returns parameters (``measure="params"``) or GMac per image
    (``measure="gmac"``) of ``from_groups(block_groups(tree, ...))`` with fresh
    weights and ``heads``, cached per per-block grouping. By default the
    value is summed from one mtgraph.cost report of the One-Net (exact, see
    the module docstring); ``exact=True``, or a backbone that ties weights
    across blocks, builds and measures every candidate instead.

    Args:
        backbone: the traced backbone.
        heads: task name -> head module (counted, never modified).
        tasks: the task order.
        locations: the block index of each tree location.
        measure: ``"params"`` or ``"gmac"`` (a :class:`~mtgraph.Budget` measure).
        exact: build and measure every candidate.

    Raises:
        ConfigError: an unknown ``measure``.

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
        measure: str = "params",
        *,
        exact: bool = False,
    ) -> None:
        if measure not in MEASURES:
            raise ConfigError(f"cost measure must be one of {list(MEASURES)}, got {measure!r}")
        self.backbone = backbone
        self.heads = {t: heads[t] for t in tasks}
        self.tasks = tuple(tasks)
        self.locations = tuple(locations)
        self.measure = measure
        self.exact = bool(exact) or _blocks_tie_weights(backbone)
        self._cache: dict[Groups, float] = {}
        base = one_net(backbone.num_blocks, self.tasks)
        report = self.report(base)
        self._block_value = [0.0] * backbone.num_blocks
        self._head_value = 0.0
        for node_cost, node in zip(report.nodes, base.nodes, strict=True):
            value = float(node_cost.params if measure == "params" else node_cost.macs)
            if isinstance(node, Block):
                self._block_value[node.block] = value
            elif isinstance(node, Head):
                self._head_value += value
        self._cache[self._groups_of(base)] = self._value(report)

    def _groups_of(self, graph: MTGraph) -> Groups:
        per_block: list[list[tuple[str, ...]]] = [[] for _ in range(self.backbone.num_blocks)]
        for i, node in enumerate(graph.nodes):
            if isinstance(node, Block):
                per_block[node.block].append(ordered(graph.served[i], self.tasks))
        return tuple(partition_of(g, self.tasks) for g in per_block)

    def _value(self, report: CostReport) -> float:
        return float(report.total_params) if self.measure == "params" else report.total_macs / 1e9

    def report(self, graph: MTGraph) -> CostReport:
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
        key = tuple(partition_of(g, self.tasks) for g in groups)
        found = self._cache.get(key)
        if found is not None:
            return found
        if self.exact:
            value = self._value(self.report(from_groups(self.backbone.num_blocks, self.tasks, key)))
        else:
            # Integer sums (params, MACs): the order of addition cannot change the result.
            units = sum(len(g) * v for g, v in zip(key, self._block_value, strict=True)) + self._head_value
            value = units if self.measure == "params" else units / 1e9
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
        if self.measure == "params":
            return f"{round(value):,} parameters"
        return f"{value:.9g} GMac"

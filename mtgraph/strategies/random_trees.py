"""Random multi-task trees at a given cost: the search space of MTSL and of branched networks.

A *tree* over a backbone of B blocks and T tasks is one partition of the
tasks per block, each refining the one before (tasks may split as depth
grows, never merge): ``groups[b]`` lists the groups sharing block b. Its cost
is exact and cheap to compute from the block signatures: block b runs once
per group, the heads once per task.

:func:`random_tree` draws trees from a simple generative process (a random
merge order of the tasks, i.e. a random binary hierarchy, then a random
depth at which each merge separates, children never before their parent) and
keeps the first whose GMac is within a relative tolerance of the target. It is
the baseline the evaluation protocol compares a learned tree with: same
search space, same compute, no learning. A strategy whose trees may branch
only at some blocks (branched networks branch right after their probed
locations) restricts the separation depths with ``split_points``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from mtgraph.errors import BudgetError, ConfigError
from mtgraph.problem import Problem

__all__ = ["Tree", "tree_macs", "tree_pipeline", "random_tree", "tree_from_graph"]

#: One partition of the tasks per block: ``tree[b]`` = the groups sharing block b (task names in task order).
Tree = tuple[tuple[tuple[str, ...], ...], ...]


def _normalise(tree: Sequence[Sequence[Sequence[str]]], tasks: Sequence[str]) -> Tree:
    order = {t: i for i, t in enumerate(tasks)}
    out = []
    for partition in tree:
        groups = [tuple(sorted(g, key=order.__getitem__)) for g in partition]
        out.append(tuple(sorted(groups, key=lambda g: order[g[0]])))
    return tuple(out)


def tree_macs(problem: Problem, tree: Sequence[Sequence[Sequence[str]]]) -> int:
    """MACs per image of the network ``tree`` describes: each block once per group, plus every head.

    Args:
        problem: gives the block MACs and the heads' cost.
        tree: one partition of the tasks per block.

    Returns:
        The MACs, equal to :func:`mtgraph.cost`'s total for the built network.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> from mtgraph import tasks as T
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.strategies.random_trees import tree_macs
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        >>> problem = mtgraph.Problem.create(model, [T.depth(hidden=4), T.edges(hidden=4)], SceneDataset(4, size=32))
        >>> one_net = [[("depth", "edges")]] * problem.backbone.num_blocks
        >>> tree_macs(problem, one_net) == round(problem.reference_costs.one_net_gmac * 1e9)
        True
    """
    costs = problem.reference_costs
    heads = round(costs.one_net_gmac * 1e9) - sum(b.macs for b in problem.backbone.blocks)
    return heads + sum(len(partition) * problem.backbone.blocks[b].macs for b, partition in enumerate(tree))


def tree_pipeline(problem: Problem, tree: Sequence[Sequence[Sequence[str]]]) -> str:
    """The ``fuse`` pipeline that builds ``tree`` from the single-task networks (block by block, in task order).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> from mtgraph import tasks as T
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.strategies.random_trees import tree_pipeline
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        >>> problem = mtgraph.Problem.create(model, [T.depth(hidden=4), T.edges(hidden=4), T.normals(hidden=4)],
        ...                                  SceneDataset(4, size=32))
        >>> tree_pipeline(problem, [[("depth", "edges"), ("normals",)], [("depth",), ("edges",), ("normals",)]])
        'fuse{tasks=depth+edges,block=0}'
    """
    tasks = problem.task_names
    steps = []
    for b, partition in enumerate(_normalise(tree, tasks)):
        for group in partition:
            if len(group) > 1:
                steps.append(f"fuse{{tasks={'+'.join(group)},block={b}}}")
    return ",".join(steps)


def tree_from_graph(problem: Problem, graph: object) -> Tree:
    """The tree of a graph made of Blocks only (each task's group at every block), in normal form.

    Raises:
        ConfigError: the graph has skips or gates.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> from mtgraph import tasks as T
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.strategies.random_trees import tree_from_graph
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        >>> problem = mtgraph.Problem.create(model, [T.depth(hidden=4), T.edges(hidden=4)], SceneDataset(4, size=32))
        >>> tree_from_graph(problem, mtgraph.stn(problem.backbone.num_blocks, problem.task_names))[0]
        (('depth',), ('edges',))
    """
    from mtgraph.ir.graph import MTGraph
    from mtgraph.ir.nodes import Block, Gate, Skip

    if not isinstance(graph, MTGraph):
        raise ConfigError(f"expected an MTGraph, got {type(graph).__name__}")
    if any(isinstance(n, (Skip, Gate)) for n in graph.nodes):
        raise ConfigError("the graph has skips or gates: it is not a tree of blocks")
    tree = []
    for b in range(problem.backbone.num_blocks):
        groups = [tuple(t for t in graph.tasks if t in graph.served[i])
                  for i, n in enumerate(graph.nodes) if isinstance(n, Block) and n.block == b]
        tree.append(tuple(groups))
    return _normalise(tree, problem.task_names)


def _draw(tasks: Sequence[str], num_blocks: int, rng: random.Random, split_points: Sequence[int] | None = None) -> Tree:
    """One tree from the generative process (see the module docstring)."""
    # Random agglomeration: clusters merge in random order; each merge gets a separation depth d in
    # [0, num_blocks] (or among split_points and num_blocks): the merged tasks share blocks < d and run blocks >= d
    # apart. A parent's depth is at most its children's, so groups only split with depth.
    depths = None if split_points is None else sorted({*split_points, num_blocks})
    clusters: list[tuple[frozenset[str], int]] = [(frozenset([t]), num_blocks) for t in tasks]
    merges: list[tuple[frozenset[str], frozenset[str], int]] = []  # (left, right, separation depth)
    while len(clusters) > 1:
        i, j = sorted(rng.sample(range(len(clusters)), 2))
        (left, dl), (right, dr) = clusters[i], clusters[j]
        if depths is None:
            depth = rng.randint(0, min(dl, dr))
        else:
            depth = rng.choice([d for d in depths if d <= min(dl, dr)])
        merges.append((left, right, depth))
        clusters = [c for k, c in enumerate(clusters) if k not in (i, j)] + [(left | right, depth)]
    tree = []
    for b in range(num_blocks):
        # Two tasks share block b iff the merge that first joins them separates at a depth > b.
        groups: list[frozenset[str]] = [frozenset([t]) for t in tasks]
        for left, right, depth in reversed(merges):
            if depth > b:
                a = next(g for g in groups if next(iter(left)) in g)
                c = next(g for g in groups if next(iter(right)) in g)
                if a is not c:
                    groups = [g for g in groups if g is not a and g is not c] + [a | c]
        tree.append(tuple(tuple(g) for g in groups))
    return _normalise(tree, tasks)


def random_tree(
    problem: Problem,
    rng: random.Random,
    target_gmac: float | None = None,
    *,
    tolerance: float = 0.05,
    exclude: Sequence[Tree] = (),
    attempts: int = 20_000,
    split_points: Sequence[int] | None = None,
) -> Tree:
    """A random tree, within ``tolerance`` (relative) of ``target_gmac`` when given, and not in ``exclude``.

    Args:
        problem: gives the tasks, the blocks and their MACs.
        rng: the random source (the caller seeds it).
        target_gmac: the GMac to match (None: any tree of the process).
        tolerance: relative distance allowed from ``target_gmac`` (0.05: ±5 %).
        exclude: trees not to return (earlier draws, the learned tree).
        attempts: draws before giving up.
        split_points: the blocks at which a group may split into parts that run apart from that block on
            (None: any block). Leaving out block 0 keeps the first block shared by every task.

    Returns:
        The tree (see :data:`Tree`).

    Raises:
        BudgetError: no tree of the process within the tolerance after ``attempts`` draws (the closest
            cost found is stated).
        ConfigError: ``split_points`` that are not block indices.

    Examples:
        >>> import random
        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> from mtgraph import tasks as T
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.strategies.random_trees import random_tree, tree_macs
        >>> layers = [m for _ in range(4) for m in (nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())]
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), *layers)
        >>> problem = mtgraph.Problem.create(model, [T.depth(hidden=4), T.edges(hidden=4), T.normals(hidden=4)],
        ...                                  SceneDataset(4, size=32))
        >>> costs = problem.reference_costs
        >>> target = (costs.one_net_gmac + costs.stn_gmac) / 2
        >>> tree = random_tree(problem, random.Random(0), target)
        >>> abs(tree_macs(problem, tree) / 1e9 - target) <= 0.05 * target
        True
        >>> tree = random_tree(problem, random.Random(0), split_points=[3, 6])  # groups split only at blocks 3, 6
        >>> all(len(tree[b]) == 1 for b in range(3)), tree[3] == tree[4] == tree[5], tree[6] == tree[-1]
        (True, True, True)
    """
    tasks = problem.task_names
    num_blocks = problem.backbone.num_blocks
    if split_points is not None:
        bad = [b for b in split_points if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < num_blocks]
        if bad or isinstance(split_points, (str, bytes)):
            raise ConfigError(f"split_points must be block indices in [0, {num_blocks - 1}], got {list(split_points)}")
    excluded = {_normalise(t, tasks) for t in exclude}
    closest: float | None = None
    for _ in range(attempts):
        tree = _draw(tasks, num_blocks, rng, split_points)
        if tree in excluded:
            continue
        if target_gmac is None:
            return tree
        gmac = tree_macs(problem, tree) / 1e9
        if abs(gmac - target_gmac) <= tolerance * target_gmac:
            return tree
        if closest is None or abs(gmac - target_gmac) < abs(closest - target_gmac):
            closest = gmac
    raise BudgetError(
        f"no random tree within ±{tolerance:.0%} of {target_gmac:g} GMac in {attempts} draws "
        f"(closest: {closest if closest is None else f'{closest:g}'} GMac); the blocks' costs may be too coarse "
        "for this target, widen the tolerance"
    )

"""Where a branched network may branch: locations, the segments of blocks they govern, and a tree's block groups.

Location ``d`` is the output of block ``locations[d]``. A tree holds one task
partition per location, and partition ``P_d`` governs the *segment* of blocks
ending at that location: block ``j`` uses ``P_d`` for the first ``d`` with
``locations[d] >= j``; blocks after the last location keep the last
partition. So tasks branch apart only right after a location (the blocks
:func:`split_points` lists), and ``A[d]`` scores who shares the segment whose
output it measured (the convention of
:mod:`~mtgraph.strategies.affinity.tree_search`).

The paper (papers/001 §4) measures affinity "after every block (1 to 4) in
the ResNet-50 model", i.e. after each of its four stages, and branches "in
the last three ResNet blocks": the stem and the first stage are shared by
every task. The ``"stages"`` preset gives those four locations from the
blocks' signatures alone (no layer names): see :func:`resolve_locations`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mtgraph.errors import ConfigError
from mtgraph.frontend.backbone import Backbone
from mtgraph.strategies.affinity.tree_search import BranchingTree

__all__ = ["LOCATION_PRESETS", "resolve_locations", "split_points", "block_groups", "Groups"]

#: Named location sets: the end of every stage (the paper's setting), or every block.
LOCATION_PRESETS = ("stages", "all")

#: One partition of the tasks per block: ``groups[b]`` lists the task groups sharing block b.
Groups = tuple[tuple[tuple[str, ...], ...], ...]


def _stage_ends(backbone: Backbone) -> tuple[int, ...]:
    blocks = backbone.blocks
    n = len(blocks)
    starts = [b.index for b in blocks if b.shortcut.kind == "projection"]
    if not starts:
        # No residual stages: the last block of each run of feature maps of one spatial size (a stem at the first
        # stage's resolution joins it; a pooled classifier is no location), or of one shape if nothing is a map.
        maps = [b for b in blocks if len(b.out_shape) == 3]
        members = maps or list(blocks)
        keys = [b.out_shape[1:] if maps else b.out_shape for b in members]
        return tuple(b.index for k, b in enumerate(members) if k == len(members) - 1 or keys[k] != keys[k + 1])
    bounds = sorted({0, *starts, n})
    ends = []
    for low, high in zip(bounds, bounds[1:]):
        # A stage ends at its last block that has a shortcut and computes: never the stem (its shape changes
        # without a residual sum), a pooled classifier after the last stage, or a parameter-free ReLU or pooling.
        candidates = [j for j in range(low, high) if blocks[j].skippable and blocks[j].macs > 0]
        if candidates:
            ends.append(candidates[-1])
    return tuple(ends)


def resolve_locations(backbone: Backbone, locations: str | Sequence[int]) -> tuple[int, ...]:
    """The block indices of ``locations`` (``"stages"``, ``"all"`` or indices) for ``backbone``.

    ``"stages"``: in a residual network a stage begins at each block whose
    shortcut is a projection (a residual block that changes the feature
    shape), and its location is its last block that has a shortcut and
    computes something (MACs > 0). On torchvision's ResNets and
    :func:`mtgraph.zoo.resnet_tiny` these are the ends of ``layer1`` to
    ``layer4`` (also with dilated ``layer3`` and ``layer4``, the paper's
    backbone): the paper's four locations; the stem joins the first segment
    and a classifier after ``layer4`` follows the last location. Without
    projection shortcuts (a plain network, or a ResNet cut into whole
    stages) ``"stages"`` is the last block of each run of feature maps of
    one spatial size (of one shape when no block outputs a feature map).

    Args:
        backbone: the traced backbone.
        locations: ``"stages"``, ``"all"`` or strictly increasing block indices.

    Returns:
        The block indices, increasing.

    Raises:
        ConfigError: an unknown preset, or indices outside the backbone or not increasing.

    Examples:
        >>> import torch
        >>> import mtgraph
        >>> from mtgraph.strategies.affinity import resolve_locations
        >>> from mtgraph.zoo import resnet_tiny
        >>> backbone = mtgraph.trace(resnet_tiny(4), torch.zeros(1, 3, 32, 32))
        >>> [backbone.blocks[b].name for b in resolve_locations(backbone, "stages")]
        ['layer1.1', 'layer2.1', 'layer3.1', 'layer4.1']
        >>> resolve_locations(backbone, (0, 12))
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: locations [12] are outside the backbone, which has blocks 0..8
    """
    n = backbone.num_blocks
    if isinstance(locations, str):
        if locations not in LOCATION_PRESETS:
            raise ConfigError(f"locations must be one of {list(LOCATION_PRESETS)} or block indices, got {locations!r}")
        return tuple(range(n)) if locations == "all" else _stage_ends(backbone)
    chosen = tuple(locations)
    bad = [b for b in chosen if isinstance(b, bool) or not isinstance(b, int)]
    if not chosen or bad:
        raise ConfigError(f"locations must be at least one block index (int), got {list(chosen)}")
    if any(b >= c for b, c in zip(chosen, chosen[1:])):
        raise ConfigError(f"locations must be strictly increasing block indices, got {list(chosen)}")
    outside = [b for b in chosen if not 0 <= b < n]
    if outside:
        raise ConfigError(f"locations {outside} are outside the backbone, which has blocks 0..{n - 1}")
    return chosen


def split_points(locations: Sequence[int], *, root_shared: bool) -> tuple[int, ...]:
    """The blocks at which a tree over ``locations`` may branch: the first block of each segment.

    Examples:
        >>> from mtgraph.strategies.affinity import split_points
        >>> split_points((2, 4, 6, 8), root_shared=True)  # the first segment (blocks 0-2) stays shared
        (3, 5, 7)
        >>> split_points((2, 4, 6, 8), root_shared=False)
        (0, 3, 5, 7)
    """
    starts = tuple(b + 1 for b in locations[:-1])
    return starts if root_shared else (0, *starts)


def segment_of_blocks(locations: Sequence[int], num_blocks: int) -> list[int]:
    """For each block, the location whose partition it uses (see the module docstring)."""
    out = []
    d = 0
    for j in range(num_blocks):
        while d < len(locations) - 1 and locations[d] < j:
            d += 1
        out.append(d)
    return out


def ordered(group: Iterable[str], tasks: Sequence[str]) -> tuple[str, ...]:
    """The tasks of ``group`` in ``tasks`` order."""
    members = set(group)
    return tuple(t for t in tasks if t in members)


def partition_of(groups: Iterable[Iterable[str]], tasks: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """A partition in normal form: tasks in ``tasks`` order inside each group, groups by their first task."""
    normal = [ordered(g, tasks) for g in groups]
    return tuple(sorted(normal, key=lambda g: tasks.index(g[0])))


def block_groups(tree: BranchingTree, locations: Sequence[int], num_blocks: int, tasks: Sequence[str]) -> Groups:
    """The per-block task groups of a tree over ``locations``.

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
        >>> from mtgraph.strategies.affinity import BranchingTree, block_groups
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
    per_location = [partition_of(p, names) for p in tree.partitions]
    return tuple(per_location[d] for d in segment_of_blocks(locations, num_blocks))


"""Partition a traced graph into a chain of blocks at single-live-value cut points.

A *cut* after node ``k`` is possible when exactly one tensor computed so far
is still needed later (parameters read by ``get_attr`` do not count: each
block reads its own) and the position is a module boundary (some module call
ends or starts there). Which possible cuts are used depends on the requested
granularity or on the module names the user gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.fx as fx
from torch import nn

from mtgraph.errors import CutError, TraceError
from mtgraph.frontend.tracer import SCOPE_KEY

__all__ = [
    "CutPoint", "find_cut_points", "select_cuts", "extract_subgraph", "guard_input", "block_entry", "GRANULARITIES",
]

#: Named granularities accepted as ``cuts``: "auto" means "blocks".
GRANULARITIES = ("auto", "blocks", "stages")

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True)
class CutPoint:
    """A position after which exactly one tensor is live.

    ``position`` indexes the graph's node list, ``value`` is the live node,
    ``ends``/``starts`` are the module calls (qualified names, ``#k`` for the
    k-th repeated call) that end before / start after this position.
    """

    position: int
    value: fx.Node
    ends: tuple[str, ...]
    starts: tuple[str, ...]


def _scope(node: fx.Node) -> tuple[tuple[str, int, str], ...]:
    return node.meta.get(SCOPE_KEY, ())


def _label(entry: tuple[str, int, str]) -> str:
    name, count, _ = entry
    return name if count == 0 else f"{name}#{count + 1}"


def find_cut_points(gm: fx.GraphModule) -> tuple[list[fx.Node], list[CutPoint]]:
    """Return the graph's compute nodes in order and every possible cut point among them."""
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((index[u] for u in n.users), default=-1) for n in nodes}
    live: set[fx.Node] = set()
    dying: dict[int, list[fx.Node]] = {}
    cuts: list[CutPoint] = []
    compute = [n for n in nodes if n.op not in ("get_attr", "output")]
    # next_compute[k]: the first compute node after position k (None at the end). Precomputed so that
    # finding every cut stays linear in the graph size (deep chains have thousands of nodes).
    next_compute: list[fx.Node | None] = [None] * len(nodes)
    upcoming: fx.Node | None = None
    for k in range(len(nodes) - 1, -1, -1):
        next_compute[k] = upcoming
        if nodes[k].op not in ("get_attr", "output"):
            upcoming = nodes[k]
    for k, node in enumerate(nodes):
        if node.op == "output":
            break
        if node.op != "get_attr" and last_use[node] > k:
            live.add(node)
            dying.setdefault(last_use[node], []).append(node)
        for dead in dying.pop(k, []):
            live.discard(dead)
        if len(live) != 1 or node.op == "placeholder":
            continue
        (value,) = live
        if "mtgraph_shape" not in value.meta:
            continue  # not a tensor (an int from x.shape, a tuple, ...)
        following = next_compute[k]
        if following is None:
            continue
        here, there = _scope(node), _scope(following)
        ends = tuple(_label(e) for e in here if e not in there)
        starts = tuple(_label(e) for e in there if e not in here)
        if ends or starts:
            cuts.append(CutPoint(k, value, ends, starts))
    return compute, cuts


def _unit_names(root: nn.Module, granularity: str, leaf_targets: set[str]) -> set[str]:
    """Module names whose boundaries delimit blocks at ``granularity``.

    "stages": the root's children. "blocks": every non-leaf child of a
    container (``layer2.1``, ``features.3``), but not inside another such unit
    unless that unit is itself a container: a MobileNet inverted residual is
    one block, not the three layers of its inner ``Sequential``, while the
    blocks of a ConvNeXt stage (a ``Sequential``) are blocks each.
    """
    # Every name of every module: a module registered twice (``self.shared`` also as ``layers.1``) is
    # a unit if any of its names is; the tracer labels its calls with its first name, so units are
    # reported under that name.
    modules = dict(root.named_modules(remove_duplicate=False))
    first_name: dict[int, str] = {}
    for name, module in modules.items():
        first_name.setdefault(id(module), name)
    root_is_container = isinstance(root, _CONTAINERS)
    units: set[str] = set()
    for name in modules:  # named_modules lists parents before children
        if not name:
            continue
        parent_name = name.rpartition(".")[0]
        parent = modules.get(parent_name, root) if parent_name else root
        is_leaf = first_name[id(modules[name])] in leaf_targets
        top_level = "." not in name
        if granularity == "stages":
            keep = top_level and (not is_leaf or root_is_container)
        else:
            keep = (isinstance(parent, _CONTAINERS) and not is_leaf) or (top_level and root_is_container)
            ancestors = [name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)]
            if any(a in units and not isinstance(modules[a], _CONTAINERS) for a in ancestors):
                keep = False
        if keep:
            units.add(name)
    return {first_name[id(modules[name])] for name in units}


def _base(label: str) -> str:
    return label.split("#", 1)[0]


def select_cuts(
    gm: fx.GraphModule, root: nn.Module, cuts: Sequence[CutPoint], spec: str | Sequence[str]
) -> list[CutPoint]:
    """Choose the cut points for ``spec``: a granularity name or a list of module names to cut after.

    ``root`` is the original backbone: its module hierarchy (which children
    are containers) decides the granularities; ``gm`` is its traced graph.
    """
    if isinstance(spec, str):
        if spec not in GRANULARITIES:
            raise CutError(f"cuts={spec!r} is not a granularity; use one of {list(GRANULARITIES)} or a list of module names")
        leaf_targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
        granularity = "blocks" if spec == "auto" else spec
        units = _unit_names(root, granularity, leaf_targets)
        chosen = [c for c in cuts if any(_base(x) in units for x in c.ends + c.starts)]
        if not chosen and granularity == "blocks":
            units = _unit_names(root, "stages", leaf_targets)
            chosen = [c for c in cuts if any(_base(x) in units for x in c.ends + c.starts)]
        return chosen
    names = list(spec)
    by_end: dict[str, CutPoint] = {}
    for cut in cuts:
        for label in cut.ends:
            by_end.setdefault(label, cut)
    unknown = [n for n in names if n not in by_end]
    if unknown:
        valid = ", ".join(by_end) if by_end else "(none: the backbone has no single-value module boundary)"
        raise CutError(
            f"cannot cut after {unknown}: not a module whose end leaves exactly one live tensor. Valid cut names: {valid}"
        )
    chosen = sorted({by_end[n].position: by_end[n] for n in names}.values(), key=lambda c: c.position)
    return chosen


def extract_subgraph(
    gm: fx.GraphModule, inp: fx.Node, out: fx.Node, members: Sequence[fx.Node], class_name: str
) -> fx.GraphModule:
    """Copy ``members`` (in order) into a new GraphModule mapping ``inp`` to ``out``.

    ``get_attr`` nodes the members read are copied in as needed, so parameters
    and buffers stay the very same tensors as in ``gm`` (shared, not duplicated).
    """
    graph = fx.Graph()
    placeholder = graph.placeholder("x")
    placeholder.meta = dict(inp.meta)
    env: dict[fx.Node, fx.Node] = {inp: placeholder}

    def lookup(arg: fx.Node) -> fx.Node:
        if arg in env:
            return env[arg]
        if arg.op == "get_attr":
            env[arg] = graph.node_copy(arg)
            return env[arg]
        raise TraceError(
            f"internal partition error: node {arg.name!r} is needed by block {class_name} but computed outside it"
        )

    for node in members:
        if node is inp:
            continue
        if node.op == "get_attr":
            continue  # copied lazily by its users
        env[node] = graph.node_copy(node, lookup)
    graph.output(lookup(out))
    graph.lint()
    return fx.GraphModule(gm, graph, class_name=class_name)


def guard_input(block: fx.GraphModule) -> None:
    """Make ``block`` work on a copy of its input (for a block that changes its input in place).

    In a multi-task network one value can feed several blocks; a block that
    writes into its input (``nn.ReLU(inplace=True)`` as its first layer, say)
    would change what the others read. The copy (``x.clone()``, no MACs) is
    inserted right after the placeholder; :func:`block_entry` finds it.
    """
    graph = block.graph
    placeholder = next(n for n in graph.nodes if n.op == "placeholder")
    with graph.inserting_after(placeholder):
        entry = graph.call_method("clone", (placeholder,))
    placeholder.replace_all_uses_with(entry, delete_user_cb=lambda user: user is not entry)
    entry.meta = dict(placeholder.meta)
    graph.lint()
    block.recompile()


def block_entry(block: fx.GraphModule) -> fx.Node:
    """The node that stands for the block's input: the placeholder, or the copy :func:`guard_input` made of it."""
    placeholder = next(n for n in block.graph.nodes if n.op == "placeholder")
    users = list(placeholder.users)
    if len(users) == 1 and users[0].op == "call_method" and users[0].target == "clone":
        return users[0]
    return placeholder

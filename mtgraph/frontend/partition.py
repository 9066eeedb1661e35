"""Partition a traced graph into a chain of blocks at cut points.

A *cut* after node ``k`` is possible when every value computed so far that
is still needed later is a tensor, there are at most ``max_live`` of them
(parameters read by ``get_attr`` do not count: each block reads its own), and
the position is a module boundary (some module call ends or starts there).
The live tensors, in the order they were computed, are the value the cut
passes on: one tensor at most boundaries, the current feature map plus the
skip features still to be read inside an encoder-decoder.

Which possible cuts are used depends on the requested granularity or on the
module names the user gives. Single-tensor cuts are chosen first, exactly as
when ``max_live`` is 1 (so a backbone with single-tensor boundaries traces
the same whatever ``max_live``). Multi-tensor cuts then subdivide the blocks
that single-tensor cuts left whole: a block in which a module boundary of the
granularity (or of a top-level stage) carries several tensors is cut at every
such boundary inside it, single-tensor ones included, never making a block
that calls no module (a ``torch.cat`` between two stages joins a neighbour).
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch.fx as fx
from torch import nn

from mtgraph.errors import CutError, TraceError
from mtgraph.frontend.tracer import SCOPE_KEY

__all__ = [
    "CutPoint", "find_cut_points", "select_cuts", "extract_subgraph", "guard_input", "block_entry", "GRANULARITIES",
    "DEFAULT_MAX_LIVE",
]

#: Named granularities accepted as ``cuts``: "auto" means "blocks".
GRANULARITIES = ("auto", "blocks", "stages")

#: How many live tensors a cut may carry by default: enough for a U-Net's
#: decoder (the current feature map and up to three skip features).
DEFAULT_MAX_LIVE = 4

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True)
class CutPoint:
    """A position after which the tensors ``values`` (and nothing else) are live.

    ``position`` indexes the graph's node list, ``values`` are the live
    nodes in the order they were computed, ``ends``/``starts`` are the module
    calls (qualified names, ``#k`` for the k-th repeated call) that end before
    / start after this position.
    """

    position: int
    values: tuple[fx.Node, ...]
    ends: tuple[str, ...]
    starts: tuple[str, ...]

    @property
    def arity(self) -> int:
        """How many tensors the cut carries."""
        return len(self.values)


def _scope(node: fx.Node) -> tuple[tuple[str, int, str], ...]:
    return node.meta.get(SCOPE_KEY, ())


def _label(entry: tuple[str, int, str]) -> str:
    name, count, _ = entry
    return name if count == 0 else f"{name}#{count + 1}"


def find_cut_points(gm: fx.GraphModule, max_live: int = 1) -> tuple[list[fx.Node], list[CutPoint]]:
    """Return the graph's compute nodes in order and every possible cut point carrying at most ``max_live`` tensors."""
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
        if not 1 <= len(live) <= max_live or node.op == "placeholder":
            continue
        if any("mtgraph_shape" not in value.meta for value in live):
            continue  # a live value is not a tensor (an int from x.shape, a tuple, ...)
        following = next_compute[k]
        if following is None:
            continue
        here, there = _scope(node), _scope(following)
        ends = tuple(_label(e) for e in here if e not in there)
        starts = tuple(_label(e) for e in there if e not in here)
        if ends or starts:
            cuts.append(CutPoint(k, tuple(sorted(live, key=index.__getitem__)), ends, starts))
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


def _at_units(cuts: Sequence[CutPoint], units: set[str]) -> list[CutPoint]:
    return [c for c in cuts if any(_base(x) in units for x in c.ends + c.starts)]


def _work_counts(nodes: Sequence[fx.Node]) -> list[int]:
    """``counts[k]``: how many of ``nodes[:k]`` compute inside a module call (not glue such as a top-level cat)."""
    counts = [0]
    for node in nodes:
        counts.append(counts[-1] + (node.op.startswith("call") and bool(_scope(node))))
    return counts


def _in_split_blocks(fixed: list[CutPoint], extra: list[CutPoint]) -> list[CutPoint]:
    """The cuts of ``extra`` lying in a block (between consecutive ``fixed`` cuts) that a multi-tensor cut of ``extra`` splits."""
    edges = sorted(c.position for c in fixed)

    def block_of(cut: CutPoint) -> int:
        return bisect.bisect_left(edges, cut.position)

    split = {block_of(c) for c in extra if c.arity > 1}
    return sorted((c for c in extra if block_of(c) in split), key=lambda c: c.position)


def _subdivide(nodes: Sequence[fx.Node], single: list[CutPoint], multi: list[CutPoint]) -> list[CutPoint]:
    """``single`` plus those of ``multi`` that leave no block without module work (glue joins a neighbour)."""
    counts = _work_counts(nodes)

    def work(a: int, b: int) -> bool:  # some module computes in nodes a+1..b
        return counts[b + 1] - counts[a + 1] > 0

    fixed = {c.position for c in single}
    merged = sorted([*single, *multi], key=lambda c: c.position)
    kept: list[CutPoint] = []
    last = 0
    for cut in merged:  # forward: drop a multi-tensor cut with no module work since the previous cut
        if cut.position in fixed or work(last, cut.position):
            kept.append(cut)
            last = cut.position
    chosen: list[CutPoint] = []
    following = len(nodes) - 1
    for cut in reversed(kept):  # backward: drop one with no module work before the next cut
        if cut.position in fixed or work(cut.position, following):
            chosen.append(cut)
            following = cut.position
    return chosen[::-1]


def select_cuts(
    gm: fx.GraphModule, root: nn.Module, cuts: Sequence[CutPoint], spec: str | Sequence[str], max_live: int = 1
) -> list[CutPoint]:
    """Choose the cut points for ``spec``: a granularity name or a list of module names to cut after.

    ``root`` is the original backbone: its module hierarchy (which children
    are containers) decides the granularities; ``gm`` is its traced graph;
    ``cuts`` are its possible cuts (:func:`find_cut_points` with ``max_live``).
    For a granularity, single-tensor cuts are chosen as if ``max_live`` were
    1 (falling back from "blocks" to "stages" when "blocks" has none); the
    blocks they leave whole are then subdivided where multi-tensor cuts allow
    (see the module docstring).
    """
    if isinstance(spec, str):
        if spec not in GRANULARITIES:
            raise CutError(f"cuts={spec!r} is not a granularity; use one of {list(GRANULARITIES)} or a list of module names")
        leaf_targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
        granularity = "blocks" if spec == "auto" else spec
        single = [c for c in cuts if c.arity == 1]
        multi = [c for c in cuts if c.arity > 1]
        units = _unit_names(root, granularity, leaf_targets)
        chosen = _at_units(single, units)
        if not chosen and granularity == "blocks":
            units = _unit_names(root, "stages", leaf_targets)
            chosen = _at_units(single, units)
        if not multi:
            return chosen
        # Blocks left whole are cut where a multi-tensor boundary of the granularity's units, or of a top-level
        # stage, lies inside them (an encoder-decoder's decoder stages are often top-level modules); such a
        # block is then cut at every unit boundary inside it, single-tensor ones included.
        units |= _unit_names(root, "stages", leaf_targets)
        extra = _at_units(multi, units)
        if not chosen and not extra and granularity == "blocks":
            # No boundary at all between stages: cut between the finer blocks.
            units = _unit_names(root, "blocks", leaf_targets)
            extra = _at_units(multi, units)
        fixed = {c.position for c in chosen}
        extra += [c for c in _at_units(single, units) if c.position not in fixed]
        return _subdivide(list(gm.graph.nodes), chosen, _in_split_blocks(chosen, extra))
    names = list(spec)
    by_end: dict[str, CutPoint] = {}
    for cut in cuts:
        for label in cut.ends:
            by_end.setdefault(label, cut)
    unknown = [n for n in names if n not in by_end]
    if unknown:
        valid = ", ".join(by_end) if by_end else "(none: the backbone has no such module boundary)"
        live = "exactly one live tensor" if max_live == 1 else f"at most max_live={max_live} live tensors"
        raise CutError(
            f"cannot cut after {unknown}: not a module whose end leaves {live}. Valid cut names: {valid}"
        )
    chosen = sorted({by_end[n].position: by_end[n] for n in names}.values(), key=lambda c: c.position)
    return chosen


def extract_subgraph(
    gm: fx.GraphModule,
    inp: fx.Node | Sequence[fx.Node],
    out: fx.Node | Sequence[fx.Node],
    members: Sequence[fx.Node],
    class_name: str,
) -> fx.GraphModule:
    """Copy ``members`` (in order) into a new GraphModule mapping ``inp`` to ``out``.

    ``inp`` and ``out`` are one node (the module takes or returns that
    tensor) or a sequence of nodes: several input nodes arrive as one tuple
    argument (unpacked with ``x[k]``), several output nodes leave as one
    tuple; a sequence of one node is the same as the node. ``get_attr``
    nodes the members read are copied in as needed, so parameters and buffers
    stay the very same tensors as in ``gm`` (shared, not duplicated).
    """
    inputs = [inp] if isinstance(inp, fx.Node) else list(inp)
    outputs = [out] if isinstance(out, fx.Node) else list(out)
    graph = fx.Graph()
    placeholder = graph.placeholder("x")
    env: dict[fx.Node, fx.Node] = {}
    if len(inputs) == 1:
        placeholder.meta = dict(inputs[0].meta)
        env[inputs[0]] = placeholder
    else:
        for k, node in enumerate(inputs):
            member = graph.call_function(operator.getitem, (placeholder, k))
            member.meta = {key: value for key, value in node.meta.items() if key != SCOPE_KEY}
            env[node] = member

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
        if node in env:
            continue
        if node.op == "get_attr":
            continue  # copied lazily by its users
        env[node] = graph.node_copy(node, lookup)
    if len(outputs) == 1:
        graph.output(lookup(outputs[0]))
    else:
        graph.output(tuple(lookup(node) for node in outputs))
    graph.lint()
    return fx.GraphModule(gm, graph, class_name=class_name)


def guard_input(block: fx.GraphModule, members: Sequence[int] = (0,)) -> None:
    """Make ``block`` work on a copy of the input tensors it changes in place.

    In a multi-task network one value can feed several blocks; a block that
    writes into its input (``nn.ReLU(inplace=True)`` as its first layer, say)
    would change what the others read. The copy (``x.clone()``, no MACs) is
    inserted right after the placeholder (or after ``x[k]`` for member ``k``
    of a multi-tensor input, ``members`` naming which); :func:`block_entry`
    finds it. Every use of the input goes to the copy, an output that passes
    the tensor on included (it carries the changed tensor, as eager PyTorch
    would).
    """
    graph = block.graph
    placeholder = next(n for n in graph.nodes if n.op == "placeholder")
    getters = {
        n.args[1]: n for n in placeholder.users
        if n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[1], int)
    }
    for k in members:
        source = getters.get(k, placeholder) if getters else placeholder
        with graph.inserting_after(source):
            entry = graph.call_method("clone", (source,))
        source.replace_all_uses_with(entry, delete_user_cb=lambda user, entry=entry: user is not entry)
        entry.meta = dict(source.meta)
    graph.lint()
    block.recompile()


def block_entry(block: fx.GraphModule) -> fx.Node:
    """The node that stands for the block's input: the placeholder, or the copy :func:`guard_input` made of it."""
    placeholder = next(n for n in block.graph.nodes if n.op == "placeholder")
    users = list(placeholder.users)
    if len(users) == 1 and users[0].op == "call_method" and users[0].target == "clone":
        return users[0]
    return placeholder

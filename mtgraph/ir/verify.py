"""The MTGraph verifier: one small named function per invariant.

:func:`verify` runs every check and raises :class:`~mtgraph.errors.VerifyError`
naming the first offending node. Checks that need to know the backbone (block
count) or the weights (key existence) run only when those are given.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection

from mtgraph.errors import VerifyError
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block, Gate, Head, Input, Skip
from mtgraph.ir.signature import BackboneSignature
from mtgraph.ir.text import TASK_NAME, WEIGHT_KEY, format_node

__all__ = ["verify", "check_canonical"]


def _where(graph: MTGraph, i: int) -> str:
    return f"node %{i} ({format_node(graph.nodes[i], i)})"


def check_input_first(graph: MTGraph) -> None:
    """Exactly one Input node, and it is node 0."""
    inputs = [i for i, n in enumerate(graph.nodes) if isinstance(n, Input)]
    if not graph.nodes:
        raise VerifyError("the graph is empty; it needs '%0 = input' and one head per task")
    if inputs[:1] != [0]:
        raise VerifyError(f"{_where(graph, 0)} must be the input; the graph's first node is always '%0 = input'")
    if len(inputs) > 1:
        raise VerifyError(f"{_where(graph, inputs[1])} is a second input; the graph has exactly one input, %0")


def check_topological(graph: MTGraph) -> None:
    """Every source id names an earlier node (so the graph has no cycle)."""
    for i, node in enumerate(graph.nodes):
        for s in node.srcs:
            if not 0 <= s < i:
                raise VerifyError(f"{_where(graph, i)} uses %{s}, which is not an earlier node")


def check_sources_are_values(graph: MTGraph) -> None:
    """No node consumes a Head (heads are outputs, not values)."""
    for i, node in enumerate(graph.nodes):
        for s in node.srcs:
            if isinstance(graph.nodes[s], Head):
                raise VerifyError(f"{_where(graph, i)} uses head %{s} as a source; heads are outputs only")


def check_heads(graph: MTGraph) -> None:
    """At least one head; one head per task; task names are identifiers."""
    heads = [n for n in graph.nodes if isinstance(n, Head)]
    if not heads:
        raise VerifyError("the graph has no head; every task needs a 'TASK = head (%k)' line")
    seen: set[str] = set()
    for i, node in enumerate(graph.nodes):
        if isinstance(node, (Head, Gate)) and not re.fullmatch(TASK_NAME, node.task):
            raise VerifyError(f"{_where(graph, i)}: task name {node.task!r} is not an identifier")
        if isinstance(node, Head):
            if node.task in seen:
                raise VerifyError(f"{_where(graph, i)}: task {node.task!r} has a second head")
            seen.add(node.task)


def check_gates(graph: MTGraph) -> None:
    """A gate mixes at least two sources that end at one level, for a task that has a head."""
    tasks = set(graph.tasks)
    for i, node in enumerate(graph.nodes):
        if not isinstance(node, Gate):
            continue
        if len(node.srcs) < 2:
            raise VerifyError(f"{_where(graph, i)} mixes {len(node.srcs)} source(s); a gate needs at least 2")
        if len(set(node.srcs)) != len(node.srcs):
            raise VerifyError(f"{_where(graph, i)} names a source twice")
        levels = {graph.levels[s] for s in node.srcs}
        if len(levels) != 1:
            raise VerifyError(f"{_where(graph, i)} mixes sources at different backbone levels {sorted(levels)}")
        if node.task not in tasks:
            raise VerifyError(f"{_where(graph, i)} is for task {node.task!r}, which has no head")


def check_block_levels(graph: MTGraph) -> None:
    """Block and Skip of block b consume a value at level b."""
    for i, node in enumerate(graph.nodes):
        if isinstance(node, (Block, Skip)):
            if node.block < 0:
                raise VerifyError(f"{_where(graph, i)}: block index {node.block} is negative")
            src_level = graph.levels[node.src]
            if src_level != node.block:
                raise VerifyError(
                    f"{_where(graph, i)}: block {node.block} must consume the output of block "
                    f"{node.block - 1} (level {node.block}), but %{node.src} is at level {src_level}"
                )


def check_weight_keys(graph: MTGraph) -> None:
    """Keys are well formed, and one key always means one kind of module."""
    owner: dict[str, tuple[str, int]] = {}
    for i, node in enumerate(graph.nodes):
        if isinstance(node, (Block, Skip)):
            kind, ident = "block", node.block
        elif isinstance(node, Gate):
            kind, ident = "gate", -1
        else:
            continue
        key = node.weights
        if key is None:
            continue
        if not re.fullmatch(WEIGHT_KEY, key) or key.startswith("head."):
            raise VerifyError(f"{_where(graph, i)}: weight key {key!r} is malformed or reserved for heads")
        previous = owner.setdefault(key, (kind, ident))
        if previous != (kind, ident):
            raise VerifyError(
                f"{_where(graph, i)}: weight key {key!r} is already used for "
                f"{previous[0]} {previous[1] if previous[1] >= 0 else ''}".rstrip()
                + "; one key must always name the same block's parameters"
            )


def _check_block_count(graph: MTGraph, num_blocks: int) -> None:
    for i, node in enumerate(graph.nodes):
        if isinstance(node, (Block, Skip)) and node.block >= num_blocks:
            raise VerifyError(f"{_where(graph, i)}: block {node.block} does not exist; the backbone has {num_blocks} blocks")
        if isinstance(node, Head) and graph.levels[node.src] != num_blocks:
            raise VerifyError(
                f"{_where(graph, i)}: the head of task {node.task!r} consumes a value at level "
                f"{graph.levels[node.src]}, but heads must follow the last block (level {num_blocks})"
            )


def _check_skips(graph: MTGraph, signature: BackboneSignature) -> None:
    for i, node in enumerate(graph.nodes):
        if isinstance(node, Skip):
            row = signature.blocks[node.block]
            if not row.skippable:
                raise VerifyError(
                    f"{_where(graph, i)}: block {node.block} ({row.name}) cannot be skipped: {row.shortcut.reason}"
                )
            if row.shortcut.has_weights and node.weights is None:
                raise VerifyError(
                    f"{_where(graph, i)}: block {node.block} ({row.name}) has a projection shortcut with weights; "
                    "name them with w=KEY (the key of the block whose projection runs)"
                )


def _check_keys_exist(graph: MTGraph, keys: Collection[str]) -> None:
    for i, node in enumerate(graph.nodes):
        key = getattr(node, "weights", None)
        if key is not None and key not in keys:
            raise VerifyError(f"{_where(graph, i)}: weight key {key!r} is not in the ParamStore")


_CHECKS: tuple[Callable[[MTGraph], None], ...] = (
    check_input_first,
    check_topological,
    check_sources_are_values,
    check_heads,
    check_block_levels,
    check_gates,
    check_weight_keys,
)


def verify(
    graph: MTGraph,
    *,
    num_blocks: int | None = None,
    weight_keys: Collection[str] | None = None,
    signature: BackboneSignature | None = None,
) -> None:
    """Check every invariant of ``graph``; raise VerifyError naming the first broken one.

    ``num_blocks`` (the backbone's block count) enables the block-range and
    head-level checks; ``signature`` (the backbone's block signature table)
    enables them too, and also checks that every Skip skips a skippable block
    and names the weights of a projection shortcut; ``weight_keys`` (a
    ParamStore's keys) enables the check that every referenced key exists.

    Args:
        graph: the graph to check.
        num_blocks: the backbone's block count, or None to skip those checks.
        weight_keys: the keys available (a ParamStore's), or None.
        signature: the backbone's signature table (``ParamStore.signature``), or None.

    Returns:
        None: the graph is valid.

    Raises:
        VerifyError: ``graph`` is not an MTGraph or breaks an invariant; the
            message names the first offending node.

    Examples:
        >>> import mtgraph
        >>> graph = mtgraph.one_net(2, ["seg", "depth"])
        >>> mtgraph.verify(graph, num_blocks=2)
        >>> mtgraph.verify(graph, num_blocks=3)
        Traceback (most recent call last):
        ...
        mtgraph.errors.VerifyError: node %3 (seg = head (%2)): the head of task 'seg' consumes a value at level 2, ...
        >>> mtgraph.verify(graph, weight_keys={"b0.shared"})
        Traceback (most recent call last):
        ...
        mtgraph.errors.VerifyError: node %2 (%2 = block 1 w=b1.shared (%1)): weight key 'b1.shared' is not in ...
    """
    if not isinstance(graph, MTGraph):
        raise VerifyError(f"expected an MTGraph, got {type(graph).__name__}")
    if signature is not None:
        if not isinstance(signature, BackboneSignature):
            raise VerifyError(f"signature must be a BackboneSignature, got {type(signature).__name__}")
        if num_blocks is not None and num_blocks != signature.num_blocks:
            raise VerifyError(f"num_blocks={num_blocks} disagrees with the signature table, which has {signature.num_blocks} blocks")
        num_blocks = signature.num_blocks
    for check in _CHECKS:
        check(graph)
    if num_blocks is not None:
        _check_block_count(graph, num_blocks)
    if signature is not None:
        _check_skips(graph, signature)
    if weight_keys is not None:
        _check_keys_exist(graph, weight_keys)


def check_canonical(graph: MTGraph) -> None:
    """Raise VerifyError unless the graph is in canonical form (no duplicates, no dead nodes, canonical order).

    Args:
        graph: a graph that passes :func:`verify`.

    Raises:
        VerifyError: a node reaches no head, duplicates an earlier node, or
            is out of the order :func:`~mtgraph.ir.canonicalize` gives; the
            message names the node and the pass that fixes it.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.ir import Block, Head, Input, check_canonical
        >>> check_canonical(mtgraph.one_net(2, ["seg", "depth"]))  # builders return canonical graphs
        >>> dead = mtgraph.MTGraph((Input(), Block(0, "b0.seg", 0), Block(0, "b0.x", 0), Head("seg", 1)))
        >>> check_canonical(dead)
        Traceback (most recent call last):
        ...
        mtgraph.errors.VerifyError: node %2 (%2 = block 0 w=b0.x (%0)) reaches no head (run 'dce')
    """
    from mtgraph.ir.canonical import canonicalize

    served = graph.served
    for i, tasks in enumerate(served):
        if not tasks:
            raise VerifyError(f"{_where(graph, i)} reaches no head (run 'dce')")
    seen: dict[object, int] = {}
    for i, node in enumerate(graph.nodes):
        if node in seen:
            raise VerifyError(f"{_where(graph, i)} duplicates %{seen[node]} (run 'cse')")
        seen[node] = i
    canonical = canonicalize(graph)
    if canonical != graph:
        i = next(k for k, (a, b) in enumerate(zip(graph.nodes, canonical.nodes)) if a != b)
        raise VerifyError(
            f"{_where(graph, i)} is not in canonical order: the canonical node %{i} is "
            f"'{format_node(canonical.nodes[i], i)}' (run 'cse')"
        )

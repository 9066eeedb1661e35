"""The MTGraph verifier: one small named function per invariant.

:func:`verify` runs every check and raises :class:`~mtgraph.errors.VerifyError`
naming the first offending node. Checks that need to know the backbone (block
count) or the weights (key existence) run only when those are given.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from mtgraph.errors import VerifyError
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block, Gate, Head, Input, Skip
from mtgraph.ir.signature import BackboneSignature
from mtgraph.ir.text import format_node, print_graph

__all__ = ["verify", "check_canonical", "node_context", "CONTEXT_LINES"]

#: How many printed IR lines a verifier error shows before and after the failing node.
CONTEXT_LINES = 3


def _where(graph: MTGraph, i: int) -> str:
    return f"node %{i} ({format_node(graph.nodes[i], i)})"


def node_context(graph: MTGraph, i: int, lines: int = CONTEXT_LINES) -> str:
    """The printed IR around node ``i``: ``lines`` lines before and after it, the node's own line marked ``-->``.

    Args:
        graph: the graph (it need not verify).
        i: the id of the node to show.
        lines: how many lines of context on each side.

    Returns:
        The lines, joined by newlines, each indented; no trailing newline.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.ir.verify import node_context
        >>> print(node_context(mtgraph.stn(2, ["seg", "depth"]), 3, lines=1))
              %2 = block 0 w=b0.depth (%0)                # depth
          --> %3 = block 1 w=b1.seg (%1)                  # seg
              %4 = block 1 w=b1.depth (%2)                # depth
    """
    printed = print_graph(graph).splitlines()
    low, high = max(0, i - lines), min(len(printed), i + lines + 1)
    return "\n".join(("  --> " if k == i else "      ") + printed[k].rstrip() for k in range(low, high))


def _fail(graph: MTGraph, i: int, text: str) -> VerifyError:
    """The error for node ``i``: ``node %i (its line)`` + ``text``, then the IR around it."""
    return VerifyError(f"{_where(graph, i)}{text}\n{node_context(graph, i)}")


def check_input_first(graph: MTGraph) -> None:
    """Exactly one Input node, and it is node 0."""
    inputs = [i for i, n in enumerate(graph.nodes) if isinstance(n, Input)]
    if not graph.nodes:
        raise VerifyError("the graph is empty; it needs '%0 = input' and one head per task")
    if inputs[:1] != [0]:
        raise _fail(graph, 0, " must be the input; the graph's first node is always '%0 = input'")
    if len(inputs) > 1:
        raise _fail(graph, inputs[1], " is a second input; the graph has exactly one input, %0")


def check_topological(graph: MTGraph) -> None:
    """Every source id names an earlier node (so the graph has no cycle)."""
    for i, node in enumerate(graph.nodes):
        for s in node.srcs:
            if not 0 <= s < i:
                raise _fail(graph, i, f" uses %{s}, which is not an earlier node")


def check_sources_are_values(graph: MTGraph) -> None:
    """No node consumes a Head (heads are outputs, not values)."""
    for i, node in enumerate(graph.nodes):
        for s in node.srcs:
            if isinstance(graph.nodes[s], Head):
                raise _fail(graph, i, f" uses head %{s} as a source; heads are outputs only")


def check_heads(graph: MTGraph) -> None:
    """At least one head, and one head per task (task names were checked when the nodes were made)."""
    heads = [n for n in graph.nodes if isinstance(n, Head)]
    if not heads:
        raise VerifyError("the graph has no head; every task needs a 'TASK = head (%k)' line")
    seen: set[str] = set()
    for i, node in enumerate(graph.nodes):
        if isinstance(node, Head):
            if node.task in seen:
                raise _fail(graph, i, f": task {node.task!r} has a second head")
            seen.add(node.task)


def check_gates(graph: MTGraph) -> None:
    """A gate mixes at least two sources that end at one level, for a task that has a head."""
    tasks = set(graph.tasks)
    for i, node in enumerate(graph.nodes):
        if not isinstance(node, Gate):
            continue
        if len(node.srcs) < 2:
            raise _fail(graph, i, f" mixes {len(node.srcs)} source(s); a gate needs at least 2")
        if len(set(node.srcs)) != len(node.srcs):
            raise _fail(graph, i, " names a source twice")
        levels = {graph.levels[s] for s in node.srcs}
        if len(levels) != 1:
            raise _fail(graph, i, f" mixes sources at different backbone levels {sorted(levels)}")
        if node.task not in tasks:
            raise _fail(graph, i, f" is for task {node.task!r}, which has no head")


def check_block_levels(graph: MTGraph) -> None:
    """Block and Skip of block b consume a value at level b."""
    for i, node in enumerate(graph.nodes):
        if isinstance(node, (Block, Skip)):
            src_level = graph.levels[node.src]
            if src_level != node.block:
                raise _fail(
                    graph, i, f": block {node.block} must consume the output of block "
                    f"{node.block - 1} (level {node.block}), but %{node.src} is at level {src_level}",
                )


def check_weight_keys(graph: MTGraph) -> None:
    """One key always means one kind of module (keys were checked for form when the nodes were made)."""
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
        previous = owner.setdefault(key, (kind, ident))
        if previous != (kind, ident):
            used_for = f"{previous[0]} {previous[1] if previous[1] >= 0 else ''}".rstrip()
            raise _fail(
                graph, i, f": weight key {key!r} is already used for {used_for}; one key must always name the same "
                "block's parameters",
            )


def _check_block_count(graph: MTGraph, num_blocks: int) -> None:
    for i, node in enumerate(graph.nodes):
        if isinstance(node, (Block, Skip)) and node.block >= num_blocks:
            raise _fail(graph, i, f": block {node.block} does not exist; the backbone has {num_blocks} blocks")
        if isinstance(node, Head) and graph.levels[node.src] != num_blocks:
            raise _fail(
                graph, i, f": the head of task {node.task!r} consumes a value at level "
                f"{graph.levels[node.src]}, but heads must follow the last block (level {num_blocks})",
            )


def _check_skips(graph: MTGraph, signature: BackboneSignature) -> None:
    for i, node in enumerate(graph.nodes):
        if isinstance(node, Skip):
            row = signature.blocks[node.block]
            if not row.skippable:
                raise _fail(graph, i, f": block {node.block} ({row.name}) cannot be skipped: {row.shortcut.reason}")
            if row.shortcut.has_weights and node.weights is None:
                raise _fail(
                    graph, i, f": block {node.block} ({row.name}) has a projection shortcut with weights; "
                    "name them with w=KEY (the key of the block whose projection runs)",
                )


def _check_keys_exist(graph: MTGraph, keys: Collection[str]) -> None:
    for i, node in enumerate(graph.nodes):
        key = getattr(node, "weights", None)
        if key is not None and key not in keys:
            raise _fail(graph, i, f": weight key {key!r} is not in the ParamStore")


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
            message's first line names the first offending node, the lines
            after it show the printed IR around that node (see
            :func:`node_context`), the node's own line marked ``-->``.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.errors import VerifyError
        >>> try:
        ...     mtgraph.verify(mtgraph.parse_graph("%0 = input\\n%1 = block 0 w=b0.S (%0)\\n%2 = block 2 w=b2.S (%1)\\nS = head (%2)"))
        ... except VerifyError as error:
        ...     print(error)
        node %2 (%2 = block 2 w=b2.S (%1)): block 2 must consume the output of block 1 (level 2), but %1 is at level 1
              %0 = input                                  # S
              %1 = block 0 w=b0.S (%0)                    # S
          --> %2 = block 2 w=b2.S (%1)                    # S
              S = head (%2)
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
        ...
    """
    from mtgraph.ir.canonical import canonicalize

    served = graph.served
    for i, tasks in enumerate(served):
        if not tasks:
            raise _fail(graph, i, " reaches no head (run 'dce')")
    seen: dict[object, int] = {}
    for i, node in enumerate(graph.nodes):
        if node in seen:
            raise _fail(graph, i, f" duplicates %{seen[node]} (run 'cse')")
        seen[node] = i
    canonical = canonicalize(graph)
    if canonical != graph:
        i = next(k for k, (a, b) in enumerate(zip(graph.nodes, canonical.nodes)) if a != b)
        raise _fail(
            graph, i, f" is not in canonical order: the canonical node %{i} is "
            f"'{format_node(canonical.nodes[i], i)}' (run 'cse')",
        )

"""The canonical text form of an MTGraph: printer and parser.

One line per node, in node order::

    %0 = input                                  # [N,3,64,64]
    %1 = block 0 w=b0.shared (%0)               # S D E
    %2 = skip 1 w=b1.S (%1)                     # S
    %3 = gate S w=gate.S (%1, %2)               # S
    S = head (%3)

A line's ``%k`` must equal its position; a head line takes the next position
without naming it. Everything after ``#`` is a comment (the printer writes the
tasks a node serves there, and shapes when it knows them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from mtgraph.errors import IRError, ParseError
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.names import TASK_NAME, WEIGHT_KEY
from mtgraph.ir.nodes import Block, Gate, Head, Input, Node, Skip

__all__ = ["print_graph", "parse_graph", "format_node", "TASK_NAME", "WEIGHT_KEY", "MAX_TEXT_CHARS"]

#: Parsing refuses text longer than this (64 MiB), so a crafted file cannot exhaust memory.
MAX_TEXT_CHARS = 64 * 1024 * 1024

_COMMENT_COLUMN = 44
# Node and block numbers have at most 9 digits: far above any real graph (the text limit allows a few
# million lines), and below Python's limit on int() of long digit strings, which would raise ValueError.
_NUMBER = r"(\d{1,9})"
_REF = rf"%{_NUMBER}"
_LINE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("input", re.compile(rf"{_REF}\s*=\s*input")),
    ("block", re.compile(rf"{_REF}\s*=\s*block\s+{_NUMBER}\s+w=({WEIGHT_KEY})\s*\(\s*{_REF}\s*\)")),
    ("skip", re.compile(rf"{_REF}\s*=\s*skip\s+{_NUMBER}(?:\s+w=({WEIGHT_KEY}))?\s*\(\s*{_REF}\s*\)")),
    ("gate", re.compile(rf"{_REF}\s*=\s*gate\s+({TASK_NAME})\s+w=({WEIGHT_KEY})\s*\(([^)]*)\)")),
    ("head", re.compile(rf"({TASK_NAME})\s*=\s*head\s*\(\s*{_REF}\s*\)")),
)


def format_node(node: Node, index: int) -> str:
    """One node's line of the canonical text, without its comment (``%3 = block 2 w=b2.shared (%2)``).

    Args:
        node: the node.
        index: the node's id in its graph (printed as ``%index``; unused for heads).

    Returns:
        The line, without a trailing newline.

    Examples:
        >>> from mtgraph.ir import Block, Skip
        >>> from mtgraph.ir.text import format_node
        >>> format_node(Block(block=2, weights="b2.shared", src=2), 3)
        '%3 = block 2 w=b2.shared (%2)'
        >>> format_node(Skip(block=3, src=3, weights="b3.seg"), 4)
        '%4 = skip 3 w=b3.seg (%3)'
    """
    if isinstance(node, Input):
        return f"%{index} = input"
    if isinstance(node, Block):
        return f"%{index} = block {node.block} w={node.weights} (%{node.src})"
    if isinstance(node, Skip):
        weights = f" w={node.weights}" if node.weights is not None else ""
        return f"%{index} = skip {node.block}{weights} (%{node.src})"
    if isinstance(node, Gate):
        srcs = ", ".join(f"%{s}" for s in node.srcs)
        return f"%{index} = gate {node.task} w={node.weights} ({srcs})"
    return f"{node.task} = head (%{node.src})"


def print_graph(graph: MTGraph, shapes: Mapping[int, Sequence[int]] | None = None) -> str:
    """Return the canonical text of ``graph``.

    The comment of each non-head line lists the tasks the node serves, in task
    order, and the node's output shape when ``shapes`` (node id -> shape
    without the batch dimension) is given.

    Args:
        graph: the graph to print.
        shapes: optional node id -> output shape without the batch dimension.

    Returns:
        One line per node, each ending in a newline; ``str(graph)`` is the same
        text without shapes.

    Examples:
        >>> import mtgraph
        >>> graph = mtgraph.one_net(1, ["seg", "depth"])
        >>> print(mtgraph.print_graph(graph, shapes={0: (3, 8, 8), 1: (4, 6, 6)}))
        %0 = input                                  # seg depth   [N,3,8,8]
        %1 = block 0 w=b0.shared (%0)               # seg depth   [N,4,6,6]
        seg = head (%1)
        depth = head (%1)
    """
    order = {t: i for i, t in enumerate(graph.tasks)}
    lines = []
    for i, node in enumerate(graph.nodes):
        text = format_node(node, i)
        if not isinstance(node, Head):
            notes = [" ".join(sorted(graph.served[i], key=lambda t: order.get(t, len(order))))]
            if shapes is not None and i in shapes:
                notes.append("[N," + ",".join(str(d) for d in shapes[i]) + "]")
            comment = "   ".join(n for n in notes if n)
            if comment:
                text = f"{text.ljust(_COMMENT_COLUMN - 1)} # {comment}"
        lines.append(text)
    return "\n".join(lines) + "\n"


def _parse_refs(text: str, lineno: int) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",")]
    refs = []
    for part in parts:
        m = re.fullmatch(_REF, part)
        if m is None:
            raise ParseError(
                f"line {lineno}: expected a node reference like %3 in the gate's sources, got {_shorten(part)!r}"
            )
        refs.append(int(m.group(1)))
    return tuple(refs)


def _shorten(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters for an error message (a crafted line can be megabytes long)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _make_node(kind: str, m: re.Match[str], lineno: int) -> Node:
    if kind == "input":
        return Input()
    if kind == "block":
        return Block(block=int(m.group(2)), weights=m.group(3), src=int(m.group(4)))
    if kind == "skip":
        return Skip(block=int(m.group(2)), src=int(m.group(4)), weights=m.group(3))
    if kind == "gate":
        return Gate(task=m.group(2), srcs=_parse_refs(m.group(4), lineno), weights=m.group(3))
    return Head(task=m.group(1), src=int(m.group(2)))


def _parse_line(line: str, lineno: int, index: int) -> Node:
    for kind, pattern in _LINE_PATTERNS:
        m = pattern.fullmatch(line)
        if m is None:
            continue
        if kind != "head" and int(m.group(1)) != index:
            raise ParseError(
                f"line {lineno}: node is numbered %{m.group(1)} but is node {index} of the graph; "
                f"number nodes consecutively from %0 (head lines take a number without naming it)"
            )
        try:
            return _make_node(kind, m, lineno)
        except ParseError:
            raise
        except IRError as exc:  # a field the node refuses, such as a reserved task name
            raise ParseError(f"line {lineno}: {exc}") from None
    keyword = line.split("=", 1)[1].split()[0] if "=" in line and line.split("=", 1)[1].split() else line
    shown, keyword = _shorten(line), _shorten(keyword)
    raise ParseError(
        f"line {lineno}: cannot parse {shown!r} (near {keyword!r}); expected one of "
        "'%k = input', '%k = block B w=KEY (%s)', '%k = skip B [w=KEY] (%s)', "
        "'%k = gate TASK w=KEY (%a, %b, ...)', 'TASK = head (%s)'"
    )


def parse_graph(text: str) -> MTGraph:
    """Parse IR text back into an :class:`MTGraph` (the inverse of :func:`print_graph`).

    Raises :class:`~mtgraph.errors.ParseError` naming the line for malformed
    text. The result is not verified; call :func:`mtgraph.ir.verify`.

    Args:
        text: IR text; comments (after ``#``) and blank lines are ignored.

    Returns:
        The graph, with nodes in the order of the lines.

    Raises:
        ParseError: ``text`` is not a str, is longer than ``MAX_TEXT_CHARS``,
            has no node, or has a line that is not a node or is misnumbered.

    Examples:
        >>> import mtgraph
        >>> graph = mtgraph.parse_graph("%0 = input\\n%1 = block 0 w=b0.seg (%0)\\nseg = head (%1)")
        >>> graph.tasks, graph.nodes[1]
        (('seg',), Block(block=0, weights='b0.seg', src=0))
        >>> mtgraph.parse_graph(mtgraph.print_graph(graph)) == graph
        True
        >>> mtgraph.parse_graph("%0 = input\\n%2 = block 0 w=b0.seg (%0)")
        Traceback (most recent call last):
        ...
        mtgraph.errors.ParseError: line 2: node is numbered %2 but is node 1 of the graph; ...
    """
    if not isinstance(text, str):
        raise ParseError(f"IR text must be a str, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise ParseError(f"IR text is {len(text)} characters, over the limit of {MAX_TEXT_CHARS}")
    nodes: list[Node] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            nodes.append(_parse_line(line, lineno, len(nodes)))
    if not nodes:
        raise ParseError("IR text has no nodes; expected at least '%0 = input' and one head")
    return MTGraph(tuple(nodes))

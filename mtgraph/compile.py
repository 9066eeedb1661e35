"""Compile an MTGraph and its ParamStore into one torch.fx GraphModule.

The result's ``forward(x)`` returns ``{task: tensor}`` in task order. Each IR
node becomes exactly one ``call_module`` node, so a block shared by several
tasks is computed once. Parameters are the ParamStore's own tensors (not
copies), so training the compiled module trains the store. A node whose call
site has its own running statistics in the store (``ParamStore`` "call
sites") calls that site module, which shares the key's parameters.
"""

from __future__ import annotations

import re

import torch.fx as fx
from torch import nn

from mtgraph.errors import CompileError, VerifyError
from mtgraph.frontend.residual import shortcut_module
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block, Gate, Head, Input, Skip
from mtgraph.ir.signature import Shortcut
from mtgraph.ir.sites import call_site_ids
from mtgraph.ir.verify import verify
from mtgraph.params import ParamStore

__all__ = ["compile", "attribute_name", "check_compilable", "shortcut_branch"]


def attribute_name(key: str) -> str:
    """The attribute under which weight key ``key`` is stored in a compiled module.

    Args:
        key: a weight key.

    Returns:
        ``key`` with every character other than letters, digits and ``_``
        replaced by ``_``.

    Examples:
        >>> from mtgraph.compile import attribute_name
        >>> attribute_name("b1.seg+edges")
        'b1_seg_edges'
    """
    return re.sub(r"[^A-Za-z0-9_]", "_", key)


def check_compilable(graph: MTGraph, params: object) -> ParamStore:
    """Raise the error :func:`compile` would raise for ``graph`` and ``params``; return ``params``.

    Reads the block signature table only (``params.signature``), never the traced backbone.

    Args:
        graph: the architecture.
        params: its store.

    Returns:
        ``params``, known to be a ParamStore.

    Raises:
        CompileError: ``params`` is not a ParamStore, or a Skip names a block
            that cannot be skipped or omits its shortcut's weights.
        VerifyError: ``graph`` is invalid for ``params``.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> from mtgraph.compile import check_compilable
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> graph = mtgraph.parse_graph("%0 = input\\n%1 = skip 0 (%0)\\n%2 = block 1 w=b1.seg (%1)\\nseg = head (%2)")
        >>> check_compilable(graph, mtgraph.ParamStore.create(graph, backbone, {"seg": nn.Conv2d(4, 2, 1)}))
        Traceback (most recent call last):
        ...
        mtgraph.errors.CompileError: node %1 skips block 0 (0), which cannot be skipped: shapes differ ...
    """
    if not isinstance(params, ParamStore):
        raise CompileError(f"params must be a ParamStore, got {type(params).__name__}")
    signature = params.signature
    try:
        verify(graph, num_blocks=signature.num_blocks, weight_keys=set(params.keys()))
    except VerifyError as exc:
        raise VerifyError(f"cannot compile: {exc}") from exc
    for i, node in enumerate(graph.nodes):
        if isinstance(node, Skip):
            row = signature.blocks[node.block]
            if not row.skippable:
                raise CompileError(f"node %{i} skips block {node.block} ({row.name}), which cannot be skipped: {row.shortcut.reason}")
            if row.shortcut.has_weights and node.weights is None:
                raise CompileError(f"node %{i} skips block {node.block} ({row.name}) whose shortcut has weights; name them with w=KEY")
    return params


def compile(graph: MTGraph, params: ParamStore) -> fx.GraphModule:  # noqa: A001 - the public name mirrors torch.compile
    """Build a GraphModule computing every task of ``graph`` with ``params``.

    Raises VerifyError for a broken graph and CompileError when a weight key
    is missing or a Skip asks for a block that cannot be skipped.

    Args:
        graph: the architecture.
        params: modules for every weight key of ``graph``.

    Returns:
        A GraphModule whose ``forward(x)`` returns ``{task: output}`` in task
        order; its submodules are the store's own modules, named by
        :func:`attribute_name`.

    Raises:
        CompileError: ``params`` is not a ParamStore, or a Skip names a block
            that cannot be skipped or omits its shortcut's weights.
        VerifyError: ``graph`` is invalid for ``params`` (bad structure, a
            block the backbone does not have, or a missing weight key).

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> graph = mtgraph.from_groups(2, ["seg", "depth"], [[["seg", "depth"]], [["seg"], ["depth"]]])
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"seg": nn.Conv2d(4, 2, 1), "depth": nn.Conv2d(4, 1, 1)})
        >>> net = mtgraph.compile(graph, params)
        >>> {task: tuple(out.shape) for task, out in net(torch.randn(2, 3, 8, 8)).items()}
        {'seg': (2, 2, 6, 6), 'depth': (2, 1, 6, 6)}
        >>> net.get_submodule("b0_shared") is params["b0.shared"]  # the store's module, not a copy
        True
    """
    check_compilable(graph, params)
    signature = params.signature
    root = nn.Module()
    names: dict[tuple[str, str], str] = {}
    site_ids = call_site_ids(graph) if params.site_items() else None

    def block_module(key: str, i: int) -> tuple[str, nn.Module]:
        """The module of weight key ``key`` at node ``i`` (its site module, if any) and its attachment kind."""
        if site_ids is None:
            return "main", params[key]
        module = params.module_at(key, site_ids[i])
        return ("main" if module is params[key] else f"site_{site_ids[i]}"), module

    def attach(key: str, kind: str, module: nn.Module) -> str:
        if (key, kind) not in names:
            base = attribute_name(key) + ("" if kind == "main" else f"__{kind}")
            name, k = base, 1
            while hasattr(root, name):
                k += 1
                name = f"{base}_{k}"
            root.add_module(name, module)
            names[(key, kind)] = name
        return names[(key, kind)]

    g = fx.Graph()
    env: list[fx.Node] = []
    outputs: dict[str, fx.Node] = {}
    for i, node in enumerate(graph.nodes):
        if isinstance(node, Input):
            env.append(g.placeholder("x"))
        elif isinstance(node, Block):
            kind, module = block_module(node.weights, i)
            env.append(g.call_module(attach(node.weights, kind, module), (env[node.src],)))
        elif isinstance(node, Skip):
            shortcut = signature.blocks[node.block].shortcut
            if not shortcut.has_weights or node.weights is None:  # the identity (checked by check_compilable)
                env.append(env[node.src])
                continue
            key = node.weights
            kind, module = block_module(key, i)
            kind = f"shortcut_{kind}" if kind != "main" else "shortcut"
            if (key, kind) not in names:
                attach(key, kind, shortcut_branch(module, shortcut, node.block, i))
            env.append(g.call_module(names[(key, kind)], (env[node.src],)))
        elif isinstance(node, Gate):
            kind, module = block_module(node.weights, i)
            env.append(g.call_module(attach(node.weights, kind, module), tuple(env[s] for s in node.srcs)))
        elif isinstance(node, Head):
            kind, module = block_module(node.weights, i)
            out = g.call_module(attach(node.weights, kind, module), (env[node.src],))
            outputs[node.task] = out
            env.append(out)
    g.output({task: outputs[task] for task in graph.tasks})
    g.lint()
    return fx.GraphModule(root, g, class_name="MultiTaskNet")


def shortcut_branch(module: nn.Module, shortcut: Shortcut, block: int, node: int) -> nn.Module:
    """The projection-only module of ``module`` (a copy of the traced block), sharing its parameters.

    Args:
        module: the weights a Skip names (a copy of traced block ``block``).
        shortcut: the block's :class:`~mtgraph.ir.Shortcut` (a projection).
        block: the block index, for messages.
        node: the Skip's node id, for messages.

    Returns:
        A GraphModule running only the shortcut branch.

    Raises:
        CompileError: ``module`` is not a traced block's copy, or the shortcut is the identity.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> from mtgraph.compile import shortcut_branch
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> shortcut_branch(nn.Identity(), backbone.signature.blocks[1].shortcut, 1, 2)
        Traceback (most recent call last):
        ...
        mtgraph.errors.CompileError: node %2 skips block 1, but its weights are a Identity, not a copy of the traced ...
    """
    if not isinstance(module, fx.GraphModule):
        raise CompileError(
            f"node %{node} skips block {block}, but its weights are a {type(module).__name__}, not a copy of the "
            "traced block, so its projection shortcut cannot be cut out of it"
        )
    branch = shortcut_module(module, shortcut)
    if branch is None:
        raise CompileError(f"node %{node} skips block {block}: its shortcut has no module")
    return branch

"""Find what "skipping" a block means from its traced graph (AdaShare's skip semantics).

* input and output shapes equal: the skip is the identity (a residual block's
  identity shortcut, or any shape-preserving block);
* otherwise, if the block ends in ``main(x) + shortcut(x)`` (possibly followed
  by elementwise ops such as ReLU) with two branches that meet only at the
  input, the skip runs the smaller branch: the projection shortcut;
* otherwise the block cannot be skipped, and the reason says why.

At a multi-tensor boundary (an encoder-decoder's skip features next to the
feature map) only the identity is defined: a block whose value keeps every
member's shape is skipped by passing the value on; any other such block
cannot be skipped.

No layer names are used: only the graph's structure. The result is a
:class:`~mtgraph.ir.signature.Shortcut`, a row field of the block signature table.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from mtgraph.errors import TraceError
from mtgraph.frontend.partition import block_entry, extract_subgraph
from mtgraph.ir.signature import Shortcut, TensorSignature, value_text

__all__ = ["Shortcut", "find_shortcut", "shortcut_module"]

# ATen's adds too: a block reloaded from a torch.export program (mtgraph.program) is an ATen graph.
_ADDS = {operator.add, operator.iadd, torch.add, torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor}
_ADD_METHODS = {"add", "add_"}


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _ADDS:
        return True
    return node.op == "call_method" and node.target in _ADD_METHODS


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.all_input_nodes if a.op != "get_attr"]


def _ancestors(node: fx.Node, stop: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    todo = [node]
    while todo:
        current = todo.pop()
        if current in seen or current is stop or current.op == "get_attr":
            continue
        seen.add(current)
        todo.extend(current.all_input_nodes)
    return seen


def _inputs_of(nodes: set[fx.Node]) -> set[fx.Node]:
    return {arg for n in nodes for arg in n.all_input_nodes} | nodes


def find_shortcut(
    block: fx.GraphModule, inputs: tuple[TensorSignature, ...], outputs: tuple[TensorSignature, ...]
) -> Shortcut:
    """Decide how the block is skipped, from its graph and the values it consumes and produces."""
    if [t.shape for t in inputs] == [t.shape for t in outputs]:
        return Shortcut("identity")
    if len(inputs) != 1 or len(outputs) != 1:
        return Shortcut("none", reason=(
            f"the block reads or passes on several tensors and its value changes ({value_text(inputs)} -> "
            f"{value_text(outputs)}); only the identity skip is defined at a multi-tensor boundary"
        ))
    in_shape, out_shape = inputs[0].shape, outputs[0].shape
    nodes = list(block.graph.nodes)
    placeholder = block_entry(block)  # the input, or the block's private copy of it
    output = next(n for n in nodes if n.op == "output")
    current = output.args[0]
    # Walk back through elementwise single-input ops (ReLU after the merge) to the merge itself.
    while isinstance(current, fx.Node) and not _is_add(current):
        feeding = _tensor_inputs(current)
        if len(feeding) != 1 or current is placeholder:
            break
        current = feeding[0]
    if not (isinstance(current, fx.Node) and _is_add(current)):
        return Shortcut("none", reason=f"shapes differ ({list(in_shape)} -> {list(out_shape)}) and the block does not end in a residual sum")
    branches = [a for a in current.args[:2] if isinstance(a, fx.Node)]
    if len(branches) != 2:
        return Shortcut("none", reason="the final sum does not add two computed branches")
    anc = [_ancestors(b, placeholder) for b in branches]
    if not all(placeholder in _inputs_of(a) for a in anc):
        return Shortcut("none", reason="one operand of the final sum does not depend on the block input (a bias, not a shortcut)")
    if anc[0] & anc[1]:
        return Shortcut("none", reason="the two branches of the final sum share computation, so neither is a shortcut")
    short = 0 if len(anc[0]) <= len(anc[1]) else 1
    if tuple(branches[short].meta.get("mtgraph_shape", ())) != out_shape:
        return Shortcut("none", reason="the shortcut branch's shape differs from the block output")
    order = {n: i for i, n in enumerate(nodes)}
    members = sorted(anc[short], key=order.__getitem__)
    return Shortcut("projection", nodes=tuple(n.name for n in members))


def shortcut_module(block: fx.GraphModule, shortcut: Shortcut) -> fx.GraphModule | None:
    """Build the module that runs only ``shortcut`` of ``block`` (None for the identity).

    ``block`` may be any copy of the traced block (copies keep node names);
    the result shares that copy's parameters.
    """
    if shortcut.kind == "identity":
        return None
    if shortcut.kind != "projection":
        raise TraceError(f"block cannot be skipped: {shortcut.reason}")
    by_name = {n.name: n for n in block.graph.nodes}
    members = [by_name[name] for name in shortcut.nodes]
    placeholder = next(n for n in block.graph.nodes if n.op == "placeholder")
    entry = block_entry(block)
    if entry is not placeholder:
        members = [entry, *members]  # the block copies its input first: so does its shortcut
    return extract_subgraph(block, placeholder, members[-1], members, class_name="Shortcut")

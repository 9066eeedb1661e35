"""Regenerate the figures of the documentation: ``python docs/gen_figures.py``.

Writes, next to this file, ``img/learned_tree.svg`` (the task-coloured sharing
diagram drawn by :func:`mtgraph.exporters.render`) and
``img/learned_tree.mtir`` (the same architecture in the IR's canonical text,
included verbatim by ``concepts.md``). The tree is the kind a strategy learns:
three tasks share the stem and the first stage, ``seg`` and ``depth`` stay
together two stages longer, and every task owns the last stage.

``tests/test_docs.py`` checks that the committed ``.mtir`` file is what this
script produces, so the page and the figure cannot drift from the code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import mtgraph
from mtgraph.exporters import render
from mtgraph.persist import atomic_write_bytes
from mtgraph.zoo import resnet_tiny

IMG = Path(__file__).resolve().parent / "img"
TASKS = ("seg", "depth", "normals")


def learned_tree() -> tuple[mtgraph.MTGraph, mtgraph.ParamStore]:
    """The example architecture: a ``from_groups`` tree over ``resnet_tiny``'s 9 blocks."""
    torch.manual_seed(0)
    backbone = mtgraph.trace(resnet_tiny(width=8), torch.randn(2, 3, 32, 32))
    everyone = [list(TASKS)]
    groups = [everyone] * 4 + [[["seg", "depth"], ["normals"]]] * 3 + [[[t] for t in TASKS]] * 2
    graph = mtgraph.from_groups(backbone.num_blocks, list(TASKS), groups)
    channels = backbone.output_shape[0]
    heads = {"seg": nn.Conv2d(channels, 4, 1), "depth": nn.Conv2d(channels, 1, 1), "normals": nn.Conv2d(channels, 3, 1)}
    return graph, mtgraph.ParamStore.create(graph, backbone, heads)


def ir_text() -> str:
    """The canonical text of :func:`learned_tree`'s graph."""
    graph, _ = learned_tree()
    return mtgraph.print_graph(graph)


def main() -> None:
    """Write ``img/learned_tree.svg`` and ``img/learned_tree.mtir``."""
    graph, params = learned_tree()
    IMG.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(IMG / "learned_tree.mtir", mtgraph.print_graph(graph).encode("utf-8"))
    render(graph, params, IMG / "learned_tree.svg", title="seg + depth share longer than normals")
    print(f"wrote {IMG / 'learned_tree.svg'} and {IMG / 'learned_tree.mtir'}")


if __name__ == "__main__":
    main()

"""Graphviz diagrams: one drawn node per IR node, task colours, rows, annotations, formats, missing dot."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET

import pytest
import torch
from torch import nn

import mtgraph
from mtgraph.errors import ExportError
from mtgraph.exporters import dot_source, render, task_colors
from mtgraph.exporters.graphviz import format_macs
from mtgraph.ir import from_groups, one_net, parse_graph, stn
from mtgraph.modules import MixGate

TASKS = ("seg", "depth", "cls")
SVG = "{http://www.w3.org/2000/svg}"


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.layer1(self.stem(x)))


def make_heads() -> dict[str, nn.Module]:
    return {
        "seg": nn.Conv2d(16, 4, 1),
        "depth": nn.Conv2d(16, 1, 1),
        "cls": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)),
    }


@pytest.fixture(scope="module")
def backbone() -> mtgraph.Backbone:
    torch.manual_seed(0)
    return mtgraph.trace(TinyNet(), torch.randn(2, 3, 32, 32), cuts="stages")


def tree(backbone):
    graph = from_groups(
        backbone.num_blocks, TASKS, [[list(TASKS)], [["seg", "depth"], ["cls"]], [["seg"], ["depth"], ["cls"]]]
    )
    return graph, mtgraph.ParamStore.create(graph, backbone, make_heads())


def svg_parts(path) -> tuple[list[ET.Element], list[ET.Element], str]:
    root = ET.parse(path).getroot()
    groups = list(root.iter(f"{SVG}g"))
    nodes = [g for g in groups if g.get("class") == "node"]
    edges = [g for g in groups if g.get("class") == "edge"]
    return nodes, edges, " ".join(t.text or "" for t in root.iter(f"{SVG}text"))


def test_tree_svg_has_one_node_per_ir_node_and_every_task(backbone, tmp_path, capfd):
    graph, params = tree(backbone)
    path = render(graph, params, tmp_path / "tree.svg", title="three groups")
    assert capfd.readouterr() == ("", "")
    assert path == tmp_path / "tree.svg" and os.listdir(tmp_path) == ["tree.svg"]
    nodes, edges, text = svg_parts(path)
    assert len(nodes) == len(graph.nodes)
    assert len(edges) == sum(len(n.srcs) for n in graph.nodes)
    for task in TASKS:
        assert task in text
    assert "b1 layer1" in text and "seg, depth" in text  # a group node: block name and its tasks
    # Per-task annotations are the cost report's numbers.
    report = mtgraph.cost(graph, params)
    for task in TASKS:
        assert f"path {format_macs(report.tasks[task].macs)}" in text
    assert format_macs(report.total_macs) in text


def test_stn_and_one_net_draw_as_expected(backbone, tmp_path):
    counts, sources = {}, {}
    for name, build in (("stn", stn), ("one_net", one_net)):
        graph = build(backbone.num_blocks, TASKS)
        path = render(graph, None, tmp_path / f"{name}.svg")
        counts[name] = len(svg_parts(path)[0])
        sources[name] = dot_source(graph)
    blocks = backbone.num_blocks
    assert counts == {"stn": 1 + blocks * len(TASKS) + len(TASKS), "one_net": 1 + blocks + len(TASKS)}
    # One-Net's blocks serve every task (a band of all task colours); STN's blocks serve one task each.
    fills = [task_colors(TASKS)[t][0] for t in TASKS]
    band = "".join(f'<TD BGCOLOR="{fill}" HEIGHT="7"></TD>' for fill in fills)
    assert sources["one_net"].count(f"<TR>{band}</TR>") == blocks
    for fill in fills:
        assert sources["stn"].count(f'<TR><TD BGCOLOR="{fill}" HEIGHT="7"></TD></TR>') == blocks
        assert sources["stn"].count(f'fillcolor="{fill}"') == 1  # its head; blocks are white under their band
    for source in sources.values():
        # The text of a block is on white, in the row below its band: no text cell has a background colour.
        assert all("BGCOLOR" not in cell for cell in re.findall(r"<TD COLSPAN=[^>]*>", source))
        # The legend: every task with a swatch in its colour, and what the shapes mean.
        for task, fill in zip(TASKS, fills):
            assert f'<FONT COLOR="{fill}" POINT-SIZE="16">&#9632;</FONT> {task}' in source
        assert "dashed box: skip" in source and "diamond: gate" in source


def test_rows_shapes_skip_and_gate(backbone):
    graph = parse_graph(
        """
        %0 = input
        %1 = block 0 w=b0.shared (%0)
        %2 = block 1 w=b1.shared (%1)
        %3 = block 1 w=b1.seg (%1)
        %4 = skip 1 (%1)
        %5 = gate seg w=gate.seg (%2, %3)
        %6 = block 2 w=b2.seg (%5)
        %7 = block 2 w=b2.shared (%2)
        %8 = block 2 w=b2.shared (%4)
        seg = head (%6)
        depth = head (%7)
        cls = head (%8)
        """
    )
    params = mtgraph.ParamStore.create(
        graph, backbone, make_heads(), gates={"gate.seg": MixGate(2, init_probs=[0.7, 0.3])}
    )
    source = dot_source(graph, params)
    lines = {
        i: next(line for line in source.splitlines() if line.strip().startswith(f"n{i} "))
        for i in range(len(graph.nodes))
    }
    assert "dashed" in lines[4] and "skip b1 layer1" in lines[4] and "identity shortcut" in lines[4]
    assert "shape=diamond" in lines[5] and "gate seg" in lines[5] and "p = 0.70 / 0.30" in lines[5]
    assert all("shape=ellipse" in lines[i] for i in (9, 10, 11))
    assert "w=b2.shared (shared)" in lines[7] and "w=b2.shared (shared)" in lines[8]
    assert source.count("rank=same") == backbone.num_blocks
    assert "rank=source" in source and "rank=sink" in source


def test_other_formats(backbone, tmp_path):
    graph, params = tree(backbone)
    assert render(graph, params, tmp_path / "a", format="png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert render(graph, params, tmp_path / "a.pdf", format="pdf").read_bytes()[:5] == b"%PDF-"
    assert render(graph, None, tmp_path / "a.dot", format="dot").read_text().startswith("digraph")
    assert sorted(os.listdir(tmp_path)) == ["a.dot", "a.pdf", "a.png"]
    with pytest.raises(ExportError, match="ends in .png but format is 'svg'"):
        render(graph, params, tmp_path / "b.png")
    with pytest.raises(ExportError, match="unknown diagram format 'jpg'"):
        render(graph, params, tmp_path / "b.jpg", format="jpg")
    with pytest.raises(ExportError, match="does not exist"):
        render(graph, params, tmp_path / "missing" / "b.svg")


def test_missing_dot_writes_the_source_and_says_how_to_install(backbone, tmp_path, monkeypatch):
    graph, params = tree(backbone)
    empty = tmp_path / "empty_path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(
        ExportError, match=r"(?s)'dot' program was not found.*apt-get install graphviz.*brew install graphviz"
    ):
        render(graph, params, out / "tree.svg")
    assert os.listdir(out) == ["tree.dot"]
    assert (out / "tree.dot").read_text() == dot_source(graph, params)

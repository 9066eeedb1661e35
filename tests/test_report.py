"""Markdown reports: every link resolves inside the folder, tables carry the cost report's numbers."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from torch import nn

import mtgraph
from mtgraph.errors import ConfigError, ExportError
from mtgraph.exporters import pareto_front, write_report
from mtgraph.ir import from_groups

TASKS = ("seg", "depth", "cls")
PNG = b"\x89PNG\r\n\x1a\n"


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(self.stem(x))


@pytest.fixture(scope="module")
def arch():
    torch.manual_seed(0)
    backbone = mtgraph.trace(TinyNet(), torch.randn(2, 3, 32, 32), cuts="stages")
    heads = {
        "seg": nn.Conv2d(16, 4, 1),
        "depth": nn.Conv2d(16, 1, 1),
        "cls": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)),
    }
    graph = from_groups(backbone.num_blocks, TASKS, [[list(TASKS)], [["seg", "depth"], ["cls"]]])
    return graph, mtgraph.ParamStore.create(graph, backbone, heads)


METRICS = {
    "STN": {"seg": {"mIoU": 0.41, "pixel_acc": 0.8}, "depth": {"abs_err": 0.02}, "cls": {"top1": 0.7}},
    "One-Net": {"seg": {"mIoU": 0.38, "pixel_acc": 0.78}, "depth": {"abs_err": 0.025}, "cls": {"top1": None}},
}
EXTRAS = {
    "similarity": {"CKA block 1": (list(TASKS), [[1.0, 0.8, 0.2], [0.8, 1.0, 0.3], [0.2, 0.3, 1.0]])},
    "pareto": [("STN", 0.3, 0.41), ("One-Net", 0.1, 0.38), ("tree", 0.2, 0.40), ("bad", 0.25, 0.35)],
    "pareto_metric": "seg mIoU",
    "notes": "Trained for 2 epochs.",
}


def links(markdown: str) -> list[str]:
    return re.findall(r"\]\(([^)]+)\)", markdown)


def test_full_report_links_resolve_to_files_in_the_folder(arch, tmp_path):
    graph, params = arch
    folder = tmp_path / "report"
    path = write_report(folder, graph=graph, params=params, title="Tree", metrics=METRICS, extras=EXTRAS)
    assert path == folder / "report.md"
    text = path.read_text()
    targets = links(text)
    assert sorted(targets) == sorted(
        ["architecture.svg", "cost.json", "metrics.png", "similarity_CKA_block_1.png", "pareto.png"]
    )
    for target in targets:
        assert not os.path.isabs(target) and (folder / target).is_file(), target
    for png in ("metrics.png", "similarity_CKA_block_1.png", "pareto.png"):
        assert (folder / png).read_bytes()[:8] == PNG
    assert sorted(os.listdir(folder)) == sorted([*targets, "report.md"]), "no temporary or unlinked files"
    assert text.startswith("# Tree\n") and "Trained for 2 epochs." in text


def test_cost_table_and_json_carry_the_cost_report(arch, tmp_path):
    graph, params = arch
    path = write_report(tmp_path, graph=graph, params=params, title="Tree")
    text = path.read_text()
    report = mtgraph.cost(graph, params)
    for task, tc in report.tasks.items():
        row = f"| {task} | {tc.macs / 1e9:.4g} | {tc.params / 1e6:.4g} | {tc.shared_macs / 1e9:.4g} | {tc.specific_macs / 1e9:.4g} |"
        assert row in text
    assert f"| **total** | {report.total_macs / 1e9:.4g} |" in text
    assert json.loads((tmp_path / "cost.json").read_text())["total_macs"] == report.total_macs
    assert mtgraph.print_graph(graph).strip() in text
    # Without metrics or extras there are no plots.
    assert sorted(os.listdir(tmp_path)) == ["architecture.svg", "cost.json", "report.md"]


def test_metrics_and_pareto_tables(arch, tmp_path):
    graph, params = arch
    text = write_report(tmp_path, graph=graph, params=params, title="T", metrics=METRICS, extras=EXTRAS).read_text()
    assert "| model | seg mIoU | seg pixel_acc | depth abs_err | cls top1 |" in text
    assert "| STN | 0.41 | 0.8 | 0.02 | 0.7 |" in text
    assert "| One-Net | 0.38 | 0.78 | 0.025 | — |" in text
    assert "| One-Net | 0.1 | 0.38 | yes |" in text and "| bad | 0.25 | 0.35 |  |" in text


def test_pareto_front():
    points = EXTRAS["pareto"]
    assert [points[k][0] for k in pareto_front(points)] == ["One-Net", "tree", "STN"]
    errors = [("a", 1.0, 0.5), ("b", 2.0, 0.6), ("c", 3.0, 0.4)]
    assert [errors[k][0] for k in pareto_front(errors, higher_is_better=False)] == ["a", "c"]


def test_without_dot_the_report_links_the_dot_source(arch, tmp_path, monkeypatch):
    graph, params = arch
    empty = tmp_path / "empty_path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    folder = tmp_path / "report"
    text = write_report(folder, graph=graph, params=params, title="T").read_text()
    assert "architecture.dot" in links(text) and (folder / "architecture.dot").is_file()
    assert "install Graphviz" in text


def test_bad_inputs(arch, tmp_path):
    graph, params = arch
    with pytest.raises(ConfigError, match=r"unknown extras \['heatmaps'\]"):
        write_report(tmp_path / "r", graph=graph, params=params, title="T", extras={"heatmaps": {}})
    with pytest.raises(ConfigError, match="square with one row per label"):
        write_report(
            tmp_path / "r", graph=graph, params=params, title="T", extras={"similarity": {"x": (["a"], [[1, 2]])}}
        )
    with pytest.raises(ConfigError, match="values must be numbers"):
        write_report(tmp_path / "r", graph=graph, params=params, title="T", metrics={"A": {"seg": {"mIoU": "high"}}})
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ExportError, match="cannot create the report folder"):
        write_report(tmp_path / "afile" / "r", graph=graph, params=params, title="T")
    assert sorted(os.listdir(tmp_path)) == ["afile"]

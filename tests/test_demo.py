"""`mtgraph demo --quick` end to end: every file it writes is valid."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from mtgraph.cli import main
from mtgraph.compile import compile as compile_graph
from mtgraph.exporters.runtime import open_session
from mtgraph.ir import parse_graph, verify
from mtgraph.persist import ARCH_FILE, load
from mtgraph.spec import ModelSpec


@pytest.mark.slow
def test_quick_demo_writes_valid_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for label in ("architecture", "onnx", "diagram", "report"):
        assert label in printed

    # The architecture: IR text that parses and verifies, and weights that reload.
    arch = out / "architecture"
    graph = parse_graph((arch / ARCH_FILE).read_text())
    spec = ModelSpec.load(arch)
    backbone = spec.build_backbone()
    verify(graph, num_blocks=backbone.num_blocks)
    tasks = spec.build_tasks()
    graph, params = load(arch, backbone, spec.build_heads(backbone, tasks))
    assert set(graph.tasks) == {"seg", "depth", "edges", "normals", "autoencoder"}

    # The ONNX file: passes the checker, has one output per task, and matches the reloaded network.
    model_path = out / "model.onnx"
    onnx.checker.check_model(onnx.load(str(model_path)))
    session = open_session(model_path, providers=["CPUExecutionProvider"])
    x = torch.rand(2, *spec.input_shape)
    got = session.run(x.numpy())
    assert set(got) == set(graph.tasks)
    module = compile_graph(graph, params).eval()
    with torch.no_grad():
        expected = module(x)
    for task, value in got.items():
        np.testing.assert_allclose(value, expected[task].numpy(), atol=1e-4, rtol=1e-4)

    # The diagram is SVG that parses as XML and names every task.
    svg = (out / "architecture.svg").read_text()
    ET.fromstring(svg)
    for task in graph.tasks:
        assert task in svg

    # Every link in the report resolves to a file that was written.
    report = (out / "report.md").read_text()
    links = re.findall(r"\]\(([^)#]+)\)", report)
    assert links, "the report links its diagram, cost file and plots"
    for link in links:
        assert (out / link).is_file(), f"report.md links {link!r}, which does not exist"
    assert "STN" in report and "One-Net" in report and "mtsl" in report

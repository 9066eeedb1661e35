"""The demo end to end: the evaluation protocol's files and the learned architecture's, every one valid.

The fast test runs :func:`mtgraph.workflow.demo` with tiny sizes (the same code path as the real demo);
one slow test runs the real ``mtgraph demo --quick`` from the command line.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from mtgraph.cli import main
from mtgraph.compile import compile as compile_graph
from mtgraph.data import DESIGNED_CLUSTERS, DESIGNED_TASKS
from mtgraph.evaluation.results import validate_results
from mtgraph.exporters.runtime import open_session
from mtgraph.ir import parse_graph, verify
from mtgraph.persist import ARCH_FILE, load
from mtgraph.spec import ModelSpec
from mtgraph.workflow import DemoSizes, demo

TINY = DemoSizes(num_train=8, num_val=4, epochs=1.0, batch_size=8, seeds=1, randoms=1)
TASKS = set(DESIGNED_TASKS)   # the demo runs on the designed scene preset


def check_demo_folder(out: Path) -> dict:
    """Assert that every file the demo writes is valid; return results.json."""
    # The architecture: IR text that parses and verifies, and weights that reload.
    arch = out / "architecture"
    graph = parse_graph((arch / ARCH_FILE).read_text())
    spec = ModelSpec.load(arch)
    backbone = spec.build_backbone()
    verify(graph, num_blocks=backbone.num_blocks)
    tasks = spec.build_tasks()
    graph, params = load(arch, backbone, spec.build_heads(backbone, tasks))
    assert set(graph.tasks) == TASKS

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
        # float32 conv stacks through two runtimes: differences of a few ulps per layer, far below 1e-4.
        np.testing.assert_allclose(value, expected[task].numpy(), atol=1e-4, rtol=1e-4)

    # The diagram is SVG that parses as XML and names every task.
    svg = (out / "architecture.svg").read_text()
    ET.fromstring(svg)
    for task in graph.tasks:
        assert task in svg

    # results.json follows the schema; the report leads with the matched-compute comparison.
    results = json.loads((out / "results.json").read_text())
    validate_results(results)
    assert results["strategy"] == "mtsl"
    report = (out / "report.md").read_text()
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Learned vs matched-compute baselines"
    assert headings[-1].startswith("## The learned architecture (seed 0")
    for name in ("learned", "One-Net (width-matched)", "One-Net", "STN"):
        assert f"| {name} |" in report
    learned = results["search"]["learned"]
    if all(info["structure"] in ("one_net", "stn") for info in learned.values()):
        assert "**The strategy learned" in report and "Why:" in report   # a trivial result is called out
    # Every link in the report resolves to a file that was written.
    links = re.findall(r"\]\(([^)#]+)\)", report)
    assert {"pareto.png", "architecture.svg", "cost.json", "model.onnx"} <= set(links)
    for link in links:
        assert (out / link).exists(), f"report.md links {link!r}, which does not exist"
    return results


def test_demo_with_tiny_sizes_writes_valid_files(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    written = demo(out=out, sizes=TINY, progress=False, threads=1)
    assert set(written) == {"architecture", "onnx", "diagram", "report", "results", "figure"}
    results = check_demo_folder(out)
    assert results["protocol"]["seeds"] == [0]   # one seed: means without intervals, which the report says
    assert results["structure_recovery"]["clusters"] == [list(c) for c in DESIGNED_CLUSTERS]
    assert {r["kind"] for r in results["rows"]} >= {"strategy", "stn", "one_net", "width_matched"}
    # A rerun continues the demo: nothing is trained again.
    before = {p: p.stat().st_mtime_ns for p in out.glob("units/seed-*/*/result.json")}
    demo(out=out, sizes=TINY, progress=False, threads=1)
    assert {p: p.stat().st_mtime_ns for p in out.glob("units/seed-*/*/result.json")} == before


@pytest.mark.slow
def test_quick_demo_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("torch threads: ")
    for label in ("architecture", "onnx", "diagram", "report", "results"):
        assert label in printed
    results = check_demo_folder(out)
    assert results["protocol"]["seeds"] == [0, 1] and results["protocol"]["randoms"] == 2

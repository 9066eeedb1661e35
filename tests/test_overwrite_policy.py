"""The overwrite policy of every writer: existing files are replaced atomically, unrelated files are kept.

docs/deployment.md ("Existing files are replaced, atomically") states the
policy; these tests hold the code to it, and the CLI's help to saying it.
"""

from __future__ import annotations

import shutil

import onnx
import pytest

import mtgraph
from mtgraph.cli import build_parser
from mtgraph.exporters import export_onnx, render
from mtgraph.persist import ARCH_FILE, WEIGHTS_FILE


@pytest.fixture(scope="module")
def model():
    problem = mtgraph.toy_problem(("seg", "depth"), blocks=2)
    graph = mtgraph.one_net(problem.backbone.num_blocks, problem.task_names)
    return graph, mtgraph.ParamStore.create(graph, problem.backbone, problem.heads)


def test_export_replaces_an_existing_file_with_a_valid_model(model, tmp_path):
    graph, params = model
    target = tmp_path / "model.onnx"
    target.write_bytes(b"an older model")
    export_onnx(graph, params, target)
    onnx.checker.check_model(onnx.load(str(target)))
    assert [o.name for o in onnx.load(str(target)).graph.output] == ["seg", "depth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary file left beside it


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_render_replaces_an_existing_diagram(model, tmp_path):
    graph, params = model
    target = tmp_path / "architecture.svg"
    target.write_text("old drawing")
    assert render(graph, params, target, format="svg") == target
    assert target.read_text().lstrip().startswith(("<?xml", "<svg"))


def test_save_replaces_its_own_files_and_keeps_the_others(model, tmp_path):
    graph, params = model
    (tmp_path / ARCH_FILE).write_text("stale IR")
    (tmp_path / WEIGHTS_FILE).write_bytes(b"stale weights")
    (tmp_path / "notes.txt").write_text("mine")
    mtgraph.save(graph, params, tmp_path)
    assert mtgraph.parse_graph((tmp_path / ARCH_FILE).read_text()) == graph
    assert (tmp_path / "notes.txt").read_text() == "mine"
    problem = mtgraph.toy_problem(("seg", "depth"), blocks=2)
    reloaded, _ = mtgraph.load(tmp_path, problem.backbone, problem.heads)
    assert reloaded == graph


@pytest.mark.parametrize("command", ["export", "render", "demo", "learn", "run"])
def test_every_command_that_writes_says_what_happens_to_existing_files(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    assert "replaced" in " ".join(capsys.readouterr().out.split())  # help text is wrapped: join its lines

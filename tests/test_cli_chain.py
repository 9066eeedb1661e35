"""The command line end to end, as a newcomer chains it on the `demo --quick` output in a clean folder:
demo -> inspect -> cost -> export (fp32, int8) -> render (svg, png) -> run -> bench -> opt, then open().

The demo runs through `mtgraph demo --quick` with the quick sizes shrunk (one seed, a few images) so the chain
stays around a minute; the full-size `--quick` demo is test_demo.py's slow test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import mtgraph
from mtgraph.cli import main
from mtgraph.exporters import read_metadata
from mtgraph.exporters.graphviz import dot_available
from mtgraph.persist import ARCH_FILE, WEIGHTS_FILE
from mtgraph.spec import SPEC_FILE
from mtgraph.workflow import DemoSizes

TINY_QUICK = DemoSizes(num_train=8, num_val=4, epochs=1.0, batch_size=8, seeds=1, randoms=1)


@pytest.mark.slow
def test_the_cli_chain_on_the_quick_demo_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("mtgraph.workflow.QUICK_SIZES", TINY_QUICK)
    monkeypatch.chdir(tmp_path)
    assert os.listdir(tmp_path) == []

    def run(*argv: str, code: int = 0) -> str:
        got = main(list(argv))
        captured = capsys.readouterr()
        assert got == code, f"mtgraph {' '.join(argv)} exited {got}: {captured.err[-1500:]}"
        return captured.out if code == 0 else captured.err

    # demo: the default output folder of --quick, the learned architecture inside it
    out = run("demo", "--quick", "--threads", "1", "--no-progress")
    demo = tmp_path / "mtgraph-demo-quick"
    arch = demo / "architecture"
    assert "architecture" in out and "torch threads: 1" in out
    for name in (ARCH_FILE, WEIGHTS_FILE, SPEC_FILE, "README.md"):
        assert (arch / name).is_file(), name
    assert (demo / "report.md").is_file() and (demo / "results.json").is_file()

    # the demo folder itself is not an architecture: one line that names the right one
    err = run("cost", str(demo), code=2)
    assert f"did you mean '{arch}'?" in err and len(err.strip().splitlines()) == 1

    # inspect the saved architecture: the backbone's blocks and the IR
    out = run("inspect", str(arch))
    tasks = mtgraph.parse_graph((arch / ARCH_FILE).read_text()).tasks
    assert out.startswith("resnet_tiny_w4: input [N,3,32,32]") and all(f"{t} = head (" in out for t in tasks)

    # cost: a table headed by its input size, adaptive units, and JSON
    out = run("cost", str(arch))
    assert out.splitlines()[0].startswith("cost per image of input [3, 32, 32]") and "0.0000" not in out
    data = json.loads(run("cost", str(arch), "--json"))
    assert set(data["tasks"]) == set(tasks) and data["total_macs"] > 0

    # export float32 (default file) and int8 (-o)
    out = run("export", str(arch))
    fp32 = arch / "model.onnx"
    onnx.checker.check_model(onnx.load(str(fp32)))
    assert f"wrote {fp32} (fp32; outputs: {', '.join(tasks)}" in out
    int8 = tmp_path / "int8.onnx"
    out = run("export", str(arch), "--quantize", "int8", "--calibration-images", "8", "--eval-images", "8",
              "-o", str(int8))
    assert int8.is_file() and read_metadata(int8)["precision"] == "int8" and "held-out images" in out

    # render: the format follows the suffix
    if dot_available():
        run("render", str(arch), "-o", "diagram.svg")
        assert (tmp_path / "diagram.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
        run("render", str(arch), "--out", "diagram.png")
        assert (tmp_path / "diagram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        run("render", str(arch), "-o", "diagram.dot")
        assert (tmp_path / "diagram.dot").read_text().startswith("digraph")

    # run the exported model on two images of different sizes: the second is resized, outputs are saved
    rng = np.random.default_rng(0)
    np.save("a.npy", rng.random((3, 32, 32), dtype=np.float32))
    np.save("b.npy", rng.random((32, 48, 3), dtype=np.float32))   # H,W,C and another size
    out = run("run", str(fp32), "a.npy", "b.npy", "-o", "outputs", "--threads", "1")
    assert "b.npy is 32x48; resized to the model's input 32x32" in out
    for task in tasks:
        assert np.load(tmp_path / "outputs" / f"{task}.npy").shape[0] == 2

    # bench: equal thread counts on every side, printed
    out = run("bench", str(arch), "--variants", "eager,ort-fp32", "--threads", "1", "--batches", "1",
              "--repeats", "2", "--warmup", "1")
    assert "threads" in out and "eager" in out and "ort-fp32" in out

    # opt: a pass pipeline, saved as an architecture folder that reopens
    out = run("opt", str(arch), "--passes", "dce", "-o", "optimised")
    assert (tmp_path / "optimised" / SPEC_FILE).is_file() and (tmp_path / "optimised" / "README.md").is_file()
    opened = mtgraph.open(tmp_path / "optimised")
    assert opened.source == "factory" and set(opened.graph.tasks) == set(tasks)

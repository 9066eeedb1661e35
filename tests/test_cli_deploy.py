"""`mtgraph export` (float32, int8, float16, metadata), `mtgraph run` with a recorded normalisation, `mtgraph bench`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtgraph.cli import main
from mtgraph.exporters import IMAGENET, op_counts, read_metadata
from mtgraph.ir import from_groups
from mtgraph.params import ParamStore
from mtgraph.persist import save
from mtgraph.spec import ModelSpec, TaskSpec


@pytest.fixture(scope="module")
def arch(tmp_path_factory) -> Path:
    """A saved two-task tree on resnet_tiny_w4 at 32 px with its model.json (what `mtgraph learn` writes)."""
    folder = tmp_path_factory.mktemp("arch")
    spec = ModelSpec("resnet_tiny_w4", (3, 32, 32),
                     (TaskSpec("seg", "segmentation", {"num_classes": 5}), TaskSpec("depth", "depth")))
    backbone = spec.build_backbone()
    tasks = spec.build_tasks()
    graph = from_groups(backbone.num_blocks, list(tasks), [[["seg", "depth"]]] * 6 + [[["seg"], ["depth"]]] * 3)
    save(graph, ParamStore.create(graph, backbone, spec.build_heads(backbone, tasks)), folder)
    spec.save(folder)
    return folder


def test_export_writes_an_optimised_float32_model_and_says_what_it_is(arch, capsys):
    assert main(["export", str(arch)]) == 0
    out = capsys.readouterr().out
    path = arch / "model.onnx"
    assert path.is_file() and f"wrote {path} (fp32; outputs: seg, depth; max |onnxruntime - torch| = " in out
    assert "dynamic axes: batch, height, width" in out and "BatchNorm nodes left: 0" in out
    assert read_metadata(path)["optimization"].startswith("all")


def test_export_int8_calibrates_on_scenes_and_prints_metrics_before_and_after(arch, capsys):
    argv = ["export", str(arch), "--quantize", "int8", "--calibration-images", "16", "--eval-images", "16"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    path = arch / "model.int8.onnx"
    assert path.is_file() and read_metadata(path)["precision"] == "int8" and "QLinearConv" in op_counts(path)
    assert "QDQ, int8 weights per channel (7-bit range), uint8 activations, min/max over 16 calibration images" in out
    assert "metrics on 16 held-out images (scenes" in out
    assert "*miou (higher is better)" in out and "*rmse (lower is better)" in out


def test_export_int8_from_a_folder_of_images_reports_output_error(arch, tmp_path, capsys):
    images = tmp_path / "calibration"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in range(5):
        np.save(images / f"{k}.npy", rng.random((32, 32, 3), dtype=np.float32))  # H,W,C is accepted too
    out_file = tmp_path / "q.onnx"
    assert main(["export", str(arch), "--quantize", "int8", "--calibration", str(images), "-o", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert out_file.is_file() and "over 5 calibration images" in out
    assert "no labelled data" in out and "output rel. RMS error" in out
    np.save(images / "odd.npy", np.zeros((16, 16, 3), np.float32))
    assert main(["export", str(arch), "--quantize", "int8", "--calibration", str(images), "-o", str(out_file)]) == 2
    assert "different shapes" in capsys.readouterr().err


def test_export_fp16_and_recorded_normalisation_used_by_run(arch, tmp_path, capsys):
    assert main(["export", str(arch), "--fp16", "-o", str(tmp_path / "h.onnx")]) == 0
    assert read_metadata(tmp_path / "h.onnx")["precision"] == "fp16"
    model = tmp_path / "norm.onnx"
    mean, std = ",".join(map(str, IMAGENET.mean)), ",".join(map(str, IMAGENET.std))
    assert main(["export", str(arch), "-o", str(model), "--mean", mean, "--std", std, "--optimize", "basic"]) == 0
    metadata = read_metadata(model)
    assert metadata["input_mean"] == "[0.485, 0.456, 0.406]" and metadata["optimization"].startswith("basic")
    capsys.readouterr()
    image = np.random.default_rng(1).random((3, 32, 32), dtype=np.float32)
    np.save(tmp_path / "image.npy", image)
    assert main(["run", str(model), str(tmp_path / "image.npy"), "--out", str(tmp_path / "out"), "--threads", "1"]) == 0
    assert "normalised with the model's recorded mean [0.485, 0.456, 0.406]" in capsys.readouterr().out
    spec = ModelSpec.load(arch)
    from mtgraph.compile import compile as compile_graph
    from mtgraph.persist import load

    backbone = spec.build_backbone()
    graph, params = load(arch, backbone, spec.build_heads(backbone, spec.build_tasks()))
    normalised = torch.from_numpy(np.asarray(IMAGENET.apply(image[None]), dtype=np.float32))
    with torch.no_grad():
        want = compile_graph(graph, params).eval()(normalised)["depth"].numpy()
    # The export's own parity bound (1e-4): the same float32 network, summed in another order.
    np.testing.assert_allclose(np.load(tmp_path / "out" / "depth.npy"), want, atol=1e-4, rtol=0)
    assert main(["export", str(arch), "--mean", mean]) == 2
    assert "--mean and --std together" in capsys.readouterr().err


def test_bench_prints_every_variant_with_its_threads(arch, capsys, monkeypatch):
    from mtgraph.exporters import inductor

    # dynamo's "eager" backend instead of inductor: the compiled variant's path, without minutes of C++ compilation.
    real = inductor.torch.compile
    monkeypatch.setattr(inductor.torch, "compile", lambda module, **options: real(module, **{**options, "backend": "eager"}))
    argv = ["bench", str(arch), "--threads", "1", "--batches", "1", "2", "--repeats", "2", "--warmup", "1",
            "--calibration-images", "16"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "intra_op_num_threads=n" in out and "load average" in out
    variants = (("eager", "torch"), ("compiled", "torch"), ("ort-fp32", "onnxruntime"), ("ort-int8", "onnxruntime"))
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in ([v] for v, _ in variants)]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [(v, rt, "1", b) for b in ("1", "2") for v, rt in variants]
    assert all(float(r[4]) > 0 for r in rows) and "compiled ran eagerly" not in out
    assert main(["bench", str(arch), "--variants", "eager,tvm"]) == 2
    assert "unknown bench variants ['tvm']" in capsys.readouterr().err

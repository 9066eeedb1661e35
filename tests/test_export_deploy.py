"""Deployment forms of an export: folded and optimised float32, dynamic height/width, metadata, float16, int8.

Float tolerances here are bounds derived from the rounding of the arithmetic
(see :func:`error_bound`), not guesses; int8 is judged by the tasks' metrics.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mtgraph
from mtgraph.errors import ConfigError, ExportError
from mtgraph.exporters import (
    IMAGENET,
    InputNormalization,
    ProviderWarning,
    export_onnx,
    op_counts,
    open_session,
    read_metadata,
)
from mtgraph.exporters import runtime as runtime_module
from mtgraph.exporters.runtime import CPU, CUDA, TENSORRT

U32 = 2.0**-24  # float32 unit roundoff
U16 = 2.0**-11  # float16 unit roundoff


def gamma(n: int, u: float = U32) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of n chained float roundings."""
    return n * u / (1 - n * u)


# --------------------------------------------------------------------------- #
# A Conv+BatchNorm network whose exact output and rounding-error bound are computable
# --------------------------------------------------------------------------- #


def conv_bn(cin: int, cout: int, stride: int, generator: torch.Generator) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=True)
    bn = nn.BatchNorm2d(cout)
    with torch.no_grad():  # trained-looking statistics and affine parameters, far from the identity
        bn.running_mean.normal_(0.0, 0.5, generator=generator)
        bn.running_var.uniform_(0.2, 3.0, generator=generator)
        bn.weight.uniform_(0.5, 2.0, generator=generator)
        bn.bias.normal_(0.0, 0.5, generator=generator)
    return conv, bn


@pytest.fixture(scope="module")
def bn_net():
    """(graph, params, layers): conv-BN-ReLU x2 as the backbone and conv-BN as the head, in eval mode."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    c1, b1 = conv_bn(3, 16, 1, generator)
    c2, b2 = conv_bn(16, 16, 2, generator)
    c3, b3 = conv_bn(16, 4, 1, generator)
    backbone = mtgraph.trace(nn.Sequential(c1, b1, nn.ReLU(), c2, b2, nn.ReLU()).eval(), torch.randn(2, 3, 32, 32))
    graph = mtgraph.one_net(backbone.num_blocks, ["out"])
    params = mtgraph.ParamStore.create(graph, backbone, {"out": nn.Sequential(c3, b3)})
    layers = [(c1, b1, True), (c2, b2, True), (c3, b3, False)]
    return graph, params, layers


def error_bound(layers, x: torch.Tensor, weight_u: float = 0.0, activation_u: float = 0.0, eps: float | None = None):
    """(exact output, elementwise bound on |float computation - exact|) of the conv-BN(-ReLU) chain on ``x``.

    Folding BatchNorm into a convolution only reassociates: the folded layer
    computes ``sum_k (w_k s) x_k + (b - mu) s + beta`` with ``s = gamma / sqrt(var + eps)``.
    In float32 every output is a K-term dot product plus a bias, where the
    folded weight and bias took at most 8 more roundings (eps add, sqrt,
    divide, multiply, subtract, add); by the standard model its error is at
    most gamma_{K+8} (|W'| |x| + |mu s| + |beta| + |b s|), whatever the order of
    summation. An input error e propagates as |W'| e, ReLU does not increase
    it. ``weight_u``/``activation_u`` add the rounding of the weights and of
    the input and every layer's output to a narrower type (float16: 2**-11 each).
    ``eps`` replaces BatchNorm's own eps: the "exact" output of a wrongly folded network.
    """
    exact = x.double()
    err = activation_u * exact.abs()
    with torch.no_grad():
        for conv, bn, relu in layers:
            exact, err = _layer_bound(conv, bn, relu, exact, err, weight_u, activation_u, eps)
    return exact.numpy(), err.numpy()


def _layer_bound(conv, bn, relu, exact, err, weight_u, activation_u, eps):
    """One conv-BN(-ReLU) layer of :func:`error_bound`: (exact output, its error bound)."""
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + (bn.eps if eps is None else eps))
    weight = conv.weight.double() * s[:, None, None, None]
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(s)
    folded_bias = (bias - bn.running_mean.double()) * s + bn.bias.double()
    magnitude_bias = (bias.abs() + bn.running_mean.double().abs()) * s.abs() + bn.bias.double().abs()

    def spread(t):
        return F.conv2d(t, weight.abs(), None, conv.stride, conv.padding)

    g = gamma(weight[0].numel() + 8) + weight_u
    nxt = F.conv2d(exact, weight, folded_bias, conv.stride, conv.padding)
    err = spread(err) + g * (spread(exact.abs() + err) + magnitude_bias[None, :, None, None])
    if relu:
        nxt = torch.relu(nxt)
    err = err + activation_u * (nxt.abs() + err)
    return nxt, err


def test_folded_optimised_float32_is_within_the_rounding_bound(bn_net, tmp_path):
    graph, params, layers = bn_net
    result = export_onnx(graph, params, tmp_path / "m.onnx")
    assert result.batchnorm_nodes == 0 and op_counts(result.path).get("BatchNormalization", 0) == 0
    assert result.optimization.startswith("all")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    exact, bound = error_bound(layers, x)
    got = open_session(result.path, providers="cpu", threads=1).run(x)["out"]
    assert np.all(np.abs(got - exact) <= bound), float(np.max(np.abs(got - exact) - bound))
    # The bound is a worst case (typical errors are far below it) yet still catches a folding mistake as small
    # as BatchNorm's eps taken as 1e-2 instead of 1e-5 (a 0.2-2.5 % change of each layer's scale).
    wrong, _ = error_bound(layers, x, eps=1e-2)
    assert np.mean(np.abs(wrong - exact) > bound) > 0.5


def test_every_optimisation_level_keeps_parity_and_folds_batchnorm(bn_net, tmp_path):
    graph, params, layers = bn_net
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    exact, bound = error_bound(layers, x)
    for level in ("none", "basic", "extended"):
        result = export_onnx(graph, params, tmp_path / f"{level}.onnx", optimize=level)
        assert result.optimization.split(";")[0] == level and result.batchnorm_nodes == 0
        got = open_session(result.path, providers="cpu", threads=1).run(x)["out"]
        assert np.all(np.abs(got - exact) <= bound), level
    assert "ReorderOutput" not in op_counts(tmp_path / "basic.onnx")  # portable: no CPU-specific layout


# --------------------------------------------------------------------------- #
# Loading a stored optimisation
# --------------------------------------------------------------------------- #


def test_a_stored_full_optimisation_is_loaded_as_is_and_refused_on_another_cpu_family(bn_net, tmp_path, monkeypatch):
    graph, params, _ = bn_net
    full = export_onnx(graph, params, tmp_path / "all.onnx").path
    portable = export_onnx(graph, params, tmp_path / "basic.onnx", optimize="basic").path
    level = open_session(full, threads=1).session.get_session_options().graph_optimization_level
    assert level == onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL  # nothing left to optimise at load
    level = open_session(portable, threads=1).session.get_session_options().graph_optimization_level
    assert level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    monkeypatch.setattr(runtime_module, "cpu_family", lambda: "SOME_OTHER_FAMILY")
    with pytest.raises(ExportError, match=r"optimisation for .* CPUs .* this CPU is SOME_OTHER_FAMILY.*optimize='basic'"):
        open_session(full)
    assert open_session(portable, threads=1).run(torch.zeros(1, 3, 32, 32))["out"].shape == (1, 4, 16, 16)


# --------------------------------------------------------------------------- #
# Dynamic height and width
# --------------------------------------------------------------------------- #


class FullyConvolutional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.stem(x))


def test_a_fully_convolutional_net_gets_dynamic_height_and_width(tmp_path):
    torch.manual_seed(0)
    backbone = mtgraph.trace(FullyConvolutional(), torch.randn(2, 3, 32, 32))
    heads = {"seg": nn.Conv2d(16, 3, 1), "cls": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))}
    graph = mtgraph.one_net(backbone.num_blocks, list(heads))
    params = mtgraph.ParamStore.create(graph, backbone, heads)
    result = export_onnx(graph, params, tmp_path / "m.onnx")
    assert result.dynamic_size and result.static_size_reason is None
    assert result.dynamic_axes == ("batch", "height", "width")
    dims = onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in dims] == [True, False, True, True] and dims[1].dim_value == 3
    assert read_metadata(result.path)["dynamic_axes"] == "batch,height,width"
    net = mtgraph.compile(graph, params).eval()
    session = open_session(result.path, providers="cpu", threads=1)
    for size in ((48, 40), (17, 64)):  # neither is the traced 32x32
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(size[0]))
        with torch.no_grad():
            want = net(x)
        got = session.run(x)
        for task in heads:
            assert got[task].shape == tuple(want[task].shape)
            # Same bound as the export's own parity check (1e-4): these layers sum at most 144 terms of
            # magnitude ~1, so float32 reassociation errors stay below 144 * 2**-24 * 100 ~ 1e-3 / 10.
            np.testing.assert_allclose(got[task], want[task].numpy(), atol=1e-4, rtol=0)


def test_a_net_that_fixes_its_input_size_keeps_static_height_and_width_and_says_why(tmp_path):
    torch.manual_seed(0)
    backbone = mtgraph.trace(FullyConvolutional(), torch.randn(2, 3, 32, 32))
    heads = {"cls": nn.Sequential(nn.Flatten(), nn.Linear(16 * 16 * 16, 5))}  # needs a 16x16 feature map
    graph = mtgraph.one_net(backbone.num_blocks, ["cls"])
    params = mtgraph.ParamStore.create(graph, backbone, heads)
    result = export_onnx(graph, params, tmp_path / "m.onnx")
    assert not result.dynamic_size and result.dynamic_axes == ("batch",)
    assert "fixes the input size" in result.static_size_reason and "64x64" in result.static_size_reason
    dims = onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 32, 32]
    metadata = read_metadata(result.path)
    assert metadata["dynamic_axes"] == "batch" and metadata["static_size"] == result.static_size_reason
    with pytest.raises(ConfigError, match=r"shape \[N, 3, 32, 32\]; got \[1, 3, 48, 48\]"):
        open_session(result.path, threads=1).run(np.zeros((1, 3, 48, 48), np.float32))
    with pytest.raises(ExportError, match="dynamic_size=True, but height/width cannot be dynamic"):
        export_onnx(graph, params, tmp_path / "other.onnx", dynamic_size=True)
    assert not (tmp_path / "other.onnx").exists()


# --------------------------------------------------------------------------- #
# Metadata
# --------------------------------------------------------------------------- #


def test_metadata_records_input_size_normalisation_precision_and_optimisation(bn_net, tmp_path):
    graph, params, _ = bn_net
    result = export_onnx(graph, params, tmp_path / "m.onnx", normalization=IMAGENET)
    metadata = read_metadata(result.path)
    assert metadata["input_shape"] == "3,32,32" and metadata["tasks"] == "out"
    assert metadata["precision"] == "fp32" and metadata["optimization"] == result.optimization
    assert metadata["architecture"] == mtgraph.print_graph(graph)
    session = open_session(result.path, threads=1)
    assert session.normalization == IMAGENET and result.normalization == IMAGENET
    plain = read_metadata(export_onnx(graph, params, tmp_path / "plain.onnx", optimize="none").path)
    assert "input_mean" not in plain and plain["normalization"].startswith("not recorded")
    with pytest.raises(ExportError, match="normalization has 1 channels; the network's input has 3"):
        export_onnx(graph, params, tmp_path / "bad.onnx", normalization=InputNormalization((0.5,), (0.5,)))


# --------------------------------------------------------------------------- #
# float16
# --------------------------------------------------------------------------- #


def test_fp16_loads_on_the_cpu_within_the_float16_bound_and_providers_fall_back(bn_net, tmp_path, monkeypatch):
    graph, params, layers = bn_net
    result = export_onnx(graph, params, tmp_path / "m.fp16.onnx", quantize="fp16")
    assert result.precision == "fp16" and result.optimization == "none"
    model = onnx.load(str(result.path))
    assert {t.data_type for t in model.graph.initializer if t.dims} == {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # callers keep float32
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    # The input, the weights and every layer's output are rounded to float16 once each; onnxruntime's CPU
    # provider computes each float16 layer through float32 casts (sums in float32).
    exact, bound = error_bound(layers, x, weight_u=U16, activation_u=U16)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU])
    for request in ("auto", ["cuda"], ["tensorrt", "cuda"]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            session = open_session(result.path, providers=request, threads=1)
        messages = [str(w.message) for w in caught if issubclass(w.category, ProviderWarning)]
        assert session.providers == [CPU]
        assert any("float16 model" in m for m in messages), messages
        if request != "auto":  # one more warning: the GPU provider asked for is not there
            assert any(CUDA in m for m in messages) and len(messages) == 2
        got = session.run(x)["out"]
        assert got.dtype == np.float32
        assert np.all(np.abs(got - exact) <= bound), float(np.max(np.abs(got - exact) - bound))
    with pytest.raises(ExportError, match="optimize='none'"):
        export_onnx(graph, params, tmp_path / "x.onnx", quantize="fp16", optimize="all")


def test_fp16_model_on_faked_gpu_providers_that_cannot_start(bn_net, tmp_path, monkeypatch):
    graph, params, _ = bn_net
    path = export_onnx(graph, params, tmp_path / "m.fp16.onnx", quantize="fp16").path
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [TENSORRT, CUDA, CPU])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session = open_session(path)  # auto picks TensorRT and CUDA; neither can start here
    messages = [str(w.message) for w in caught if issubclass(w.category, ProviderWarning)]
    assert session.providers == [CPU] and len(messages) == 2
    assert TENSORRT in messages[0] and "float16 model" in messages[1]


# --------------------------------------------------------------------------- #
# int8
# --------------------------------------------------------------------------- #


def test_int8_needs_calibration_and_checks_it(bn_net, tmp_path):
    graph, params, _ = bn_net
    with pytest.raises(ExportError, match="needs calibration"):
        export_onnx(graph, params, tmp_path / "q.onnx", quantize="int8")
    with pytest.raises(ExportError, match=r"batch 0 has shape \[2, 4, 32, 32\]; expected \[N, 3, H, W\]"):
        export_onnx(graph, params, tmp_path / "q.onnx", quantize="int8", calibration=[torch.rand(2, 4, 32, 32)])
    with pytest.raises(ExportError, match="quantize must be"):
        export_onnx(graph, params, tmp_path / "q.onnx", quantize="int4")
    with pytest.raises(ExportError, match="eval_tasks and eval_data together"):
        export_onnx(graph, params, tmp_path / "q.onnx", quantize="int8", calibration=[torch.rand(2, 3, 32, 32)],
                    eval_data=[])
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def trained_tiny():
    """A two-task One-Net on resnet_tiny (width 4, 32 px) trained for 150 steps on generated scenes."""
    from mtgraph import tasks as T
    from mtgraph.data import SceneDataset
    from mtgraph.train import fit
    from mtgraph.zoo import resnet_tiny

    torch.manual_seed(0)
    backbone = mtgraph.trace(resnet_tiny(width=4), torch.randn(2, 3, 32, 32))
    tasks = {"seg": T.segmentation(5, hidden=16), "depth": T.depth(hidden=16)}
    heads = {n: t.make_head(backbone.output_shape[0], (32, 32)) for n, t in tasks.items()}
    graph = mtgraph.one_net(backbone.num_blocks, list(tasks))
    params = mtgraph.ParamStore.create(graph, backbone, heads)
    train = SceneDataset(256, size=32, seed=0, num_classes=4)
    result = fit(graph, params, tasks, train, steps=150, batch_size=16, seed=0, device="cpu", progress=False)
    return result.graph, result.params, tasks, train


def test_int8_keeps_every_tasks_primary_metric_and_reports_before_and_after(trained_tiny, tmp_path):
    from mtgraph.data import SceneDataset

    graph, params, tasks, train = trained_tiny
    calibration = [torch.stack([train[i][0] for i in range(k, k + 16)]) for k in range(0, 64, 16)]
    val = SceneDataset(64, size=32, seed=10_000, num_classes=4)
    result = export_onnx(graph, params, tmp_path / "q.onnx", quantize="int8", calibration=calibration,
                         eval_tasks=tasks, eval_data=val)
    ops = op_counts(result.path)
    # Every convolution is int8 but the last one of each head (a 1x1 convolution per task, kept float32).
    assert result.precision == "int8" and ops.get("QLinearConv", 0) > 0 and ops.get("Conv", 0) == len(tasks)
    assert read_metadata(result.path)["precision"] == "int8"
    report = result.quantization
    assert report is not None and report.calibration_images == 64 and "QDQ" in report.method
    assert set(report.metrics_fp32) == set(report.metrics_low) == {"seg", "depth"}
    assert report.primary == {"seg": "miou", "depth": "rmse"}
    # The float32 side is the torch network's own evaluation.
    assert report.metrics_fp32 == dict(mtgraph.train.evaluate(graph, params, tasks, val))
    # int8 is judged by the metric a user reads: each primary metric within 1 % (relative) of float32, the
    # target bench/bench_deploy.py also measures on the benchmark models. (Quantising the heads' last layers
    # too, or the full 8-bit weight range on this CPU family, moves the depth RMSE by 1.2-2.7 %.)
    for task, metric in report.primary.items():
        before, after = report.metrics_fp32[task][metric], report.metrics_low[task][metric]
        assert math.isclose(after, before, rel_tol=0.01), (task, metric, before, after)
    assert report.worst_loss() < 0.01
    assert 0 < max(report.output_error.values()) < 0.2  # quantised: not bit-identical, not broken either
    assert "*miou" in report.table() and "fp32" in report.table()

"""The ONNX Runtime helper: provider choice (with faked provider lists) and running an exported model."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

import mtgraph
from mtgraph.errors import ConfigError, ExportError
from mtgraph.exporters import ProviderWarning, choose_providers, export_onnx, open_session
from mtgraph.exporters.runtime import CPU, CUDA, TENSORRT
from mtgraph.ir import one_net

TASKS = ("seg", "cls")
AZURE = "AzureExecutionProvider"


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(self.stem(x))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(compiled torch module, path of its ONNX export) for a two-task One-Net."""
    torch.manual_seed(0)
    backbone = mtgraph.trace(TinyNet(), torch.randn(2, 3, 32, 32), cuts="stages")
    heads = {"seg": nn.Conv2d(16, 3, 1), "cls": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))}
    graph = one_net(backbone.num_blocks, TASKS)
    params = mtgraph.ParamStore.create(graph, backbone, heads)
    result = export_onnx(graph, params, tmp_path_factory.mktemp("rt") / "model.onnx")
    return mtgraph.compile(graph, params).eval(), result.path


def record(fn):
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        value = fn()
    return value, [r for r in records if issubclass(r.category, ProviderWarning)], records


# --------------------------------------------------------------------------- #
# choose_providers: a pure function, checked with made-up availability lists
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("available", "expected"),
    [
        ([TENSORRT, CUDA, CPU], [TENSORRT, CUDA, CPU]),
        ([CUDA, CPU], [CUDA, CPU]),
        ([CPU, CUDA], [CUDA, CPU]),
        ([AZURE, CPU], [CPU]),
        ([], [CPU]),
    ],
)
def test_auto_prefers_tensorrt_then_cuda_then_cpu(available, expected):
    chosen, providers_warned, _ = record(lambda: choose_providers("auto", available))
    assert chosen == expected and providers_warned == []


def test_requested_gpu_provider_missing_falls_back_with_one_warning():
    chosen, warned, _ = record(lambda: choose_providers(["tensorrt", "cuda"], [AZURE, CPU]))
    assert chosen == [CPU]
    assert len(warned) == 1
    message = str(warned[0].message)
    assert TENSORRT in message and CUDA in message and "onnxruntime-gpu" in message and "never both" in message


def test_explicit_requests():
    assert choose_providers(["cpu"], [TENSORRT, CUDA, CPU]) == [CPU]
    assert choose_providers("cuda", [TENSORRT, CUDA, CPU]) == [CUDA, CPU]
    # TensorRT is backed by CUDA for the nodes it cannot take.
    assert choose_providers([TENSORRT], [TENSORRT, CUDA, CPU]) == [TENSORRT, CUDA, CPU]
    assert choose_providers(["cuda", "CUDAExecutionProvider", "cpu"], [CUDA, CPU]) == [CUDA, CPU]
    chosen, warned, _ = record(lambda: choose_providers(["tensorrt", "cuda"], [CUDA, CPU]))
    assert chosen == [CUDA, CPU] and len(warned) == 1 and TENSORRT in str(warned[0].message)
    chosen, warned, _ = record(lambda: choose_providers(["cuda"], [CPU], warn=False))
    assert chosen == [CPU] and warned == []


def test_unknown_provider_names_are_errors():
    with pytest.raises(ConfigError, match="unknown execution provider 'tpu'"):
        choose_providers(["tpu"], [CPU])
    with pytest.raises(ConfigError, match="empty"):
        choose_providers([], [CPU])


# --------------------------------------------------------------------------- #
# open_session / MultiTaskSession
# --------------------------------------------------------------------------- #


def test_session_runs_every_task_like_torch(model):
    module, path = model
    session, warned, records = record(lambda: open_session(path))
    assert warned == [] and records == []
    assert session.providers == [CPU] and session.tasks == TASKS and session.input_name == "input"
    # Batch, height and width are dynamic: the network is fully convolutional up to a global pooling.
    assert session.input_shape == (None, 3, None, None) and session.dynamic_axes == ("batch", "height", "width")
    assert session.metadata["tasks"] == ",".join(TASKS) and session.normalization is None
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = module(x)
    for batch in (x, x.numpy(), x.numpy().astype(np.float64)):
        out = session.run(batch)
        assert list(out) == list(TASKS)
        for task in TASKS:
            np.testing.assert_allclose(out[task], expected[task].numpy(), atol=1e-4)
    only = session.run(x, tasks=["cls"])
    assert list(only) == ["cls"]


def test_session_rejects_bad_input(model):
    _, path = model
    session = open_session(path)
    with pytest.raises(ConfigError, match=r"shape \[N, 3, H, W\]; got \[2, 4, 32, 32\]"):
        session.run(np.zeros((2, 4, 32, 32), np.float32))
    with pytest.raises(ConfigError, match=r"shape \[N, 3, H, W\]; got \[3, 32, 32\]"):
        session.run(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(ConfigError, match="dtype int64"):
        session.run(np.zeros((2, 3, 32, 32), np.int64))
    with pytest.raises(ConfigError, match=r"tasks \['depth'\] are not outputs"):
        session.run(np.zeros((1, 3, 32, 32), np.float32), tasks=["depth"])


def test_faked_gpu_availability_falls_back_to_cpu_with_one_warning(model, monkeypatch):
    """onnxruntime claims GPU providers it cannot enable: the session still opens, on the CPU, with one warning."""
    module, path = model
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [TENSORRT, CUDA, CPU])
    session, warned, records = record(lambda: open_session(path))
    assert len(warned) == 1 and len(records) == 1, [str(r.message) for r in records]
    assert TENSORRT in str(warned[0].message) and CUDA in str(warned[0].message)
    assert session.providers == [CPU]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(session.run(x)["seg"], module(x)["seg"].numpy(), atol=1e-4)


def test_requested_cuda_on_a_cpu_machine(model, monkeypatch):
    _, path = model
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [AZURE, CPU])
    session, warned, records = record(lambda: open_session(path, providers=["cuda"]))
    assert len(warned) == 1 and len(records) == 1 and CUDA in str(warned[0].message)
    assert session.providers == [CPU]


def test_threads_option(model):
    _, path = model
    session = open_session(path, threads=1)
    assert session.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(ConfigError, match="threads"):
        open_session(path, threads=0)
    with pytest.raises(ConfigError, match="not in use"):
        open_session(path, provider_options={CUDA: {"device_id": 0}})


def test_missing_or_invalid_file(tmp_path):
    with pytest.raises(ExportError, match="no ONNX model"):
        open_session(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="cannot open"):
        open_session(broken)

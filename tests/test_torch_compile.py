"""torch.compile as an option of the compiled network and of fit: same results, and a clean fallback."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import mtgraph
from mtgraph import tasks as T
from mtgraph.data import SceneDataset
from mtgraph.errors import ConfigError
from mtgraph.exporters import TorchCompileWarning, torch_compile
from mtgraph.exporters import inductor as torch_compile_module
from mtgraph.train import fit
from mtgraph.zoo import resnet_tiny


def failing_backend(graph_module, example_inputs):
    raise RuntimeError("no C++ compiler found")


@pytest.fixture()
def net():
    torch.manual_seed(0)
    backbone = mtgraph.trace(resnet_tiny(width=4), torch.randn(2, 3, 16, 16))
    heads = {"seg": nn.Conv2d(32, 3, 1), "depth": nn.Conv2d(32, 1, 1)}
    graph = mtgraph.one_net(backbone.num_blocks, list(heads))
    return mtgraph.compile(graph, mtgraph.ParamStore.create(graph, backbone, heads)).eval()


def test_a_working_backend_computes_the_same_outputs(net):
    # dynamo's "eager" backend captures the graph for real and runs torch's own kernels: bitwise the same.
    compiled = torch_compile(net, backend="eager")
    x = torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TorchCompileWarning)
        got = compiled(x)
    want = net(x)
    assert compiled.fallback_reason is None
    assert all(torch.equal(got[t], want[t]) for t in want)
    assert list(compiled.parameters()) == list(net.parameters())  # listed once, the network's own


def test_a_failing_compiler_falls_back_to_eager_with_one_warning(net):
    compiled = torch_compile(net, backend=failing_backend)
    x = torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = compiled(x)
        second = compiled(x)
    messages = [str(w.message) for w in caught if issubclass(w.category, TorchCompileWarning)]
    assert len(messages) == 1 and "no C++ compiler found" in messages[0] and "eagerly" in messages[0]
    assert "no C++ compiler found" in compiled.fallback_reason
    want = net(x)
    assert all(torch.equal(first[t], want[t]) and torch.equal(second[t], want[t]) for t in want)


def test_a_users_error_is_raised_as_eager_gives_it_and_compilation_is_kept(net):
    compiled = torch_compile(net, backend="eager")
    with pytest.raises(RuntimeError, match="channels"):
        compiled(torch.randn(2, 5, 16, 16))  # wrong channel count: the user's mistake, not the compiler's
    assert compiled.fallback_reason is None
    assert compiled(torch.randn(1, 3, 16, 16))["seg"].shape == (1, 3, 2, 2)


def test_unavailable_torch_compile_warns_once_when_set_up(net, monkeypatch):
    monkeypatch.setattr(torch_compile_module, "_unavailable", lambda: "torch.compile does not support this Python")
    with pytest.warns(TorchCompileWarning, match="does not support this Python"):
        compiled = torch_compile(net)
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(compiled(x)["depth"], net(x)["depth"])
    with pytest.raises(ConfigError, match="nn.Module"):
        torch_compile("not a module")  # type: ignore[arg-type]


def _fit(torch_compile_flag: bool):
    torch.manual_seed(0)
    backbone = mtgraph.trace(resnet_tiny(width=4), torch.randn(2, 3, 32, 32))
    tasks = {"seg": T.segmentation(5, hidden=8), "depth": T.depth(hidden=8)}
    heads = {n: t.make_head(backbone.output_shape[0], (32, 32)) for n, t in tasks.items()}
    graph = mtgraph.one_net(backbone.num_blocks, list(tasks))
    params = mtgraph.ParamStore.create(graph, backbone, heads)
    data = SceneDataset(16, size=32, seed=0, num_classes=4)
    return fit(graph, params, tasks, data, steps=3, batch_size=4, seed=0, device="cpu", progress=False,
               torch_compile=torch_compile_flag)


def test_fit_with_torch_compile_falls_back_and_trains_exactly_like_eager(monkeypatch):
    real = torch.compile
    monkeypatch.setattr(torch_compile_module.torch, "compile",
                        lambda module, **options: real(module, **{**options, "backend": failing_backend}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = _fit(True)
    assert sum(issubclass(w.category, TorchCompileWarning) for w in caught) == 1
    eager = _fit(False)
    assert compiled.history.losses == eager.history.losses
    for (key, a), (_, b) in zip(compiled.params.items(), eager.params.items()):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values())), key
    with pytest.raises(ConfigError, match="torch_compile must be True or False"):
        fit(compiled.graph, compiled.params, {}, [], steps=1, torch_compile="yes")  # type: ignore[arg-type]

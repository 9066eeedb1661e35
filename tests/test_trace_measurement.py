"""The signature table from one run of the traced graph equals measuring block by block.

``mtgraph.trace`` measures shapes, MACs and in-place writes in one run of the
whole traced graph (on meta tensors for large inputs where the network allows
it, for real otherwise; the tests below run both ways). Before,
each block was extracted and run on a copy of its input under the MAC
counter; that per-block measurement is kept (``_BlockByBlock``) for the
cases one run cannot tell, and is the reference here: for every backbone the
signature table (shapes, MACs, parameters, shortcut, members, carried) and
each block's code (where the in-place guards are) must be identical.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from backbones import (
    DATA_DEPENDENT_MODULE,
    HAS_TORCHVISION,
    TORCHVISION,
    convnext,
    data_dependent,
    mobilenet_v2,
    pyramid,
    resnet_basic,
    resnet_bottleneck,
    tied,
    twice_called,
    unet,
    unet4,
    vit_mha,
)
from torch import nn

import mtgraph
import mtgraph.frontend.backbone as backbone_module
from mtgraph.analysis.macs import mac_counter
from mtgraph.frontend.measure import AmbiguousWrite, GraphRun, run_graph
from mtgraph.frontend.tracer import trace_module


def _in_eval(build: Callable[[], nn.Module], batch: int) -> Callable[[], tuple[nn.Module, torch.Tensor]]:
    def make() -> tuple[nn.Module, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return build().eval(), torch.randn(batch, 3, 16, 16)

    return make


class _SkipWrittenLater(nn.Module):
    """An encoder-decoder whose skip feature, carried across three blocks, is written in place by the fourth.

    The ReLU writing it is the encoder's ReLU again (same configuration and shape): on meta tensors the
    repeated call is not run, and its in-place write must still be seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True))
        self.down = nn.Sequential(nn.Conv2d(4, 4, 3, 2, 1), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(4, 4, 2, 2))
        self.act = nn.ReLU(inplace=True)
        self.dec = nn.Sequential(nn.Conv2d(8, 4, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc(x)
        y = self.up(self.mid(self.down(skip)))
        return self.dec(torch.cat([y, self.act(skip)], 1))


class _ScaleFirstChannel(nn.Module):
    """Writes into its input through a view of it, then convolves."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x[:, :1].mul_(0.5)
        return self.conv(x)


def _view_write() -> nn.Module:
    # The second block's write repeats the first's (same method, same view shape): on meta tensors it is not
    # re-run, and must still be seen.
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _ScaleFirstChannel(), _ScaleFirstChannel(), nn.Conv2d(4, 4, 1))


class _AliasedSkip(nn.Module):
    """A cut carries one tensor under two names (``nn.Identity`` returns its input), and the next block writes into it."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
        self.keep = nn.Sequential(nn.Identity())
        self.act = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, padding=1))
        self.dec = nn.Sequential(nn.Conv2d(8, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        return self.dec(torch.cat([self.act(self.keep(e)), e], 1))


def _batch_of_one(factory: Callable[[], tuple[nn.Module, torch.Tensor]]) -> Callable[[], tuple[nn.Module, torch.Tensor]]:
    def make() -> tuple[nn.Module, torch.Tensor]:
        model, x = factory()
        return model, x[:1]

    return make


#: name -> (factory, trace options): projection shortcuts, in-place ReLUs and adds, attention, multi-tensor
#: cuts, tuple outputs, shared parameters, a network that needs real values, and batches of one and of two.
CASES: dict[str, tuple[Callable[[], tuple[nn.Module, torch.Tensor]], dict[str, Any]]] = {
    "resnet_basic": (resnet_basic, {}),
    "resnet_bottleneck-batch-of-one": (_batch_of_one(resnet_bottleneck), {}),
    "mobilenet_v2-stages": (mobilenet_v2, {"cuts": "stages"}),
    "vit_mha": (vit_mha, {}),
    "convnext": (convnext, {}),
    "unet": (unet, {}),
    "unet-single-tensor-cuts": (unet, {"max_live": 1}),
    "unet4-batch-of-one": (_batch_of_one(unet4), {}),
    "pyramid": (pyramid, {}),
    "tied": (tied, {}),
    "twice_called": (twice_called, {}),
    "data_dependent-leaf": (data_dependent, {"leaf_modules": [DATA_DEPENDENT_MODULE]}),
    "skip-written-later": (_in_eval(_SkipWrittenLater, 2), {}),
    "skip-written-later-batch-of-one": (_in_eval(_SkipWrittenLater, 1), {}),
    "view-write": (_in_eval(_view_write, 2), {}),
    **{name: (factory, {}) for name, factory in TORCHVISION.items() if name != "tv_convnext_tiny"},
}


@pytest.fixture(params=["meta", "real"])
def measured_on(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Measure on meta tensors wherever the dtypes allow, or always for real (whatever the input's size)."""
    monkeypatch.setattr(backbone_module, "_META_FROM_ELEMENTS", 0 if request.param == "meta" else 1 << 62)
    return str(request.param)


def _never(*args: object) -> Any:
    raise AssertionError("the one run did not measure this backbone: trace fell back to measuring block by block")


def _ambiguous(*args: object) -> Any:
    raise AmbiguousWrite("forced by the test")


def _trace_one_run(monkeypatch: pytest.MonkeyPatch, model: nn.Module, x: torch.Tensor, **options: Any) -> mtgraph.Backbone:
    with monkeypatch.context() as patch:
        patch.setattr(backbone_module._BlockByBlock, "measure", _never)
        return mtgraph.trace(model, x, **options)


def _trace_block_by_block(
    monkeypatch: pytest.MonkeyPatch, model: nn.Module, x: torch.Tensor, **options: Any
) -> mtgraph.Backbone:
    with monkeypatch.context() as patch:
        patch.setattr(GraphRun, "written_inputs", _ambiguous)  # what trace does where one run cannot tell
        return mtgraph.trace(model, x, **options)


def _guarded(backbone: mtgraph.Backbone) -> list[str]:
    """Names of the blocks that copy their input before writing into it (guard_input's ``clone``)."""
    return [b.name for b in backbone if ".clone()" in b.module.code]


@pytest.mark.parametrize("name", list(CASES))
def test_one_run_gives_the_signature_table_of_measuring_block_by_block(
    name: str, measured_on: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory, options = CASES[name]
    model, x = factory()
    one_run = _trace_one_run(monkeypatch, model, x, **options)
    reference = _trace_block_by_block(monkeypatch, model, x, **options)
    assert one_run.signature == reference.signature
    assert [b.module.code for b in one_run] == [b.module.code for b in reference]  # the same in-place guards
    assert [b.signature.shortcut for b in one_run] == [b.signature.shortcut for b in reference]


def test_the_pinned_cases_exercise_what_one_run_must_get_right(measured_on: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A projection shortcut measured, multi-tensor cuts, in-place guards: the equality above is not vacuous.
    resnet = _trace_one_run(monkeypatch, *resnet_basic())
    assert any(b.shortcut.kind == "projection" and b.shortcut.macs > 0 for b in resnet)
    assert any(len(b.signature.outputs) > 1 for b in _trace_one_run(monkeypatch, *unet()))
    assert _guarded(_trace_one_run(monkeypatch, *_in_eval(_view_write, 2)())) == ["1", "2"]


def test_an_input_written_several_blocks_later_is_guarded_only_in_the_block_writing_it(
    measured_on: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x = _in_eval(_SkipWrittenLater, 2)()
    backbone = _trace_one_run(monkeypatch, model, x)
    # The skip is carried by down, mid and up (unchanged) and written by act: only that block copies it.
    assert [(b.name, len(b.signature.inputs)) for b in backbone] == [
        ("enc", 1), ("down", 1), ("mid", 2), ("up.0", 2), ("act..cat", 2), ("dec.0", 1)
    ]
    assert _guarded(backbone) == ["act..cat"]
    with torch.no_grad():
        assert torch.equal(backbone(x), model(x))


def test_a_write_into_one_of_two_names_of_a_tensor_is_measured_block_by_block(
    measured_on: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x = _in_eval(_AliasedSkip, 2)()
    gm = trace_module(model)
    with torch.no_grad():
        _, run = run_graph(gm, x[:1], meta=measured_on == "meta", count=True)
    act = [n for n in gm.graph.nodes if n.name == "act_0"]
    inputs = tuple(n for n in gm.graph.nodes if n.name in ("enc_0", "keep_0"))
    with pytest.raises(AmbiguousWrite):
        run.written_inputs(inputs, act)  # one run cannot tell which of the two names the ReLU wrote through
    backbone = mtgraph.trace(model, x)
    reference = _trace_block_by_block(monkeypatch, model, x)
    assert backbone.signature == reference.signature
    assert [b.module.code for b in backbone] == [b.module.code for b in reference]
    assert _guarded(backbone) == ["act..cat"]


def test_a_batch_of_one_is_run_once_on_meta_tensors_when_large(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[bool] = []
    real_run_graph = backbone_module.run_graph

    def recording(gm: Any, x: torch.Tensor, **options: Any) -> Any:
        runs.append(options["meta"])
        return real_run_graph(gm, x, **options)

    monkeypatch.setattr(backbone_module, "run_graph", recording)
    model, x = resnet_basic()
    _trace_one_run(monkeypatch, model, x[:1])
    assert runs == [False]  # 3 x 32 x 32 is small: real arithmetic costs less than meta kernels
    monkeypatch.setattr(backbone_module, "_META_FROM_ELEMENTS", 3 * 32 * 32)
    runs.clear()
    _trace_one_run(monkeypatch, model, x[:1])
    assert runs == [True]
    runs.clear()
    _trace_one_run(monkeypatch, model, x)  # a batch of two: its shapes, then one sample measured
    assert runs == [True, True]
    runs.clear()
    _trace_one_run(monkeypatch, *data_dependent(), leaf_modules=[DATA_DEPENDENT_MODULE])
    assert runs == [True, False, False]  # a branch on a value fails on meta tensors: run for real from then on


@pytest.mark.parametrize(
    ("model", "x", "message"),
    [
        (nn.Linear(4, 4), torch.zeros(1, 4, dtype=torch.int64), "same dtype"),
        (nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(4, 2).double()), torch.zeros(1, 3, 1, 1), "dtype"),
    ],
    ids=["int64-input", "float64-layer"],
)
def test_a_dtype_error_meta_kernels_let_pass_is_still_reported_by_trace(
    model: nn.Module, x: torch.Tensor, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On meta tensors nn.Linear accepts an input of another dtype; the real kernel refuses it, and so must trace.
    monkeypatch.setattr(backbone_module, "_META_FROM_ELEMENTS", 0)
    with pytest.raises(mtgraph.TraceError, match=message):
        mtgraph.trace(model, x)


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installed")
def test_torchvision_resnet50_signature_table_is_pinned(measured_on: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import resnet50

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = resnet50().eval()
    x = torch.zeros(1, 3, 64, 64)
    backbone = _trace_one_run(monkeypatch, model, x)
    assert backbone.signature == _trace_block_by_block(monkeypatch, model, x).signature
    # FlopCounterMode on the model itself (a batch of one): the blocks' MACs add up to it.
    counter = mac_counter()
    with torch.no_grad(), counter:
        model(x)
    assert backbone.macs == counter.get_total_flops() // 2
    assert [b.shortcut.kind for b in backbone].count("projection") == 4

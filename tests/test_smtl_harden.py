"""Hardening Safe MTL: one encoder per task (public iff α > 0.5, tie → private); cost, outputs and ONNX shrink to it."""

from __future__ import annotations

import math

import pytest
import torch
from backbones import make_heads

import mtgraph
from mtgraph import tasks as T
from mtgraph.analysis.macs import count_macs
from mtgraph.data import SceneDataset
from mtgraph.ir import Gate, one_net, stn
from mtgraph.ir.nodes import head_weights
from mtgraph.strategies.smtl import (
    TIE_TO_PRIVATE,
    DualHead,
    SMTLConfig,
    build_smtl,
    choices,
    choose,
    harden_smtl,
)

TASKS = ("a", "b", "c")


def problem_of(backbone: mtgraph.Backbone, heads: dict[str, torch.nn.Module]) -> mtgraph.Problem:
    """A Problem over these backbone and heads for building (the tasks' losses and data are never used)."""
    return mtgraph.Problem(backbone, heads, {t: T.regression(name=t) for t in heads}, SceneDataset(1, size=32))


@pytest.fixture(scope="module")
def setup(traced):
    _, _, backbone = traced("resnet_basic")
    return backbone, make_heads(backbone.output_shape, TASKS), torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def set_alpha(params: mtgraph.ParamStore, key: str, alpha: float) -> None:
    """Set a gate's logits so that softmax gives exactly (alpha, 1 - alpha) where representable."""
    module = params[key]
    mix = getattr(module, "mix", module)
    with torch.no_grad():
        if alpha == 0.5:
            mix.logits.copy_(torch.tensor([0.25, 0.25]))  # equal logits: an exact tie
        else:
            mix.logits.copy_(torch.log(torch.tensor([alpha, 1.0 - alpha])))


def encoder_cost(backbone: mtgraph.Backbone) -> tuple[int, int]:
    return sum(b.macs for b in backbone.blocks), sum(b.params for b in backbone.blocks)


def head_cost(head: torch.nn.Module, backbone: mtgraph.Backbone) -> tuple[int, int]:
    probe = torch.zeros(1, *backbone.output_shape)
    return count_macs(head.eval(), probe), sum(p.numel() for p in head.parameters())


def test_choice_rule_public_iff_alpha_above_one_half():
    assert choose(0.5000001) == "public"
    assert choose(0.5) == "private"  # the tie keeps the private encoder
    assert choose(0.4999) == "private"
    assert TIE_TO_PRIVATE > 0.5 and math.nextafter(TIE_TO_PRIVATE, 0.0) == 0.5


@pytest.mark.parametrize("variant", ["lite", "smtl", "lite_c"])
def test_hardened_network_keeps_only_the_chosen_encoders(setup, variant):
    backbone, heads, x = setup
    net = build_smtl(problem_of(backbone, heads), SMTLConfig(variant=variant))
    set_alpha(net.params, net.gates["a"], 0.7)  # public
    set_alpha(net.params, net.gates["b"], 0.3)  # private
    set_alpha(net.params, net.gates["c"], 0.5)  # tie -> private
    assert choices(net.graph, net.params) == {"a": "public", "b": "private", "c": "private"}
    hard = harden_smtl(net.graph, net.params)
    assert hard.choices == {"a": "public", "b": "private", "c": "private"}
    assert hard.alphas["c"] == 0.5
    assert not any(isinstance(n, Gate) for n in hard.graph.nodes)
    blocks = {k for k in hard.params.keys() if not k.startswith("head.")}
    assert blocks == {f"b{k}.{s}" for k in range(5) for s in ("shared", "b", "c")}, "unchosen encoders must be gone"
    assert all(not k.startswith("gate.") for k in hard.params.keys())
    # Cost: one public encoder (task a), two private ones, three heads; nothing else.
    enc_macs, enc_params = encoder_cost(backbone)
    heads_cost = [head_cost(hard.params[head_weights(t)], backbone) for t in TASKS]
    report = mtgraph.cost(hard.graph, hard.params)
    assert report.total_macs == 3 * enc_macs + sum(m for m, _ in heads_cost)
    assert report.total_params == 3 * enc_params + sum(p for _, p in heads_cost)
    # Outputs: task a = the One-Net path, b and c = their single-task paths, with the trained weights.
    module = mtgraph.compile(hard.graph, hard.params).eval()
    with torch.no_grad():
        got = module(x)
    for task, graph in (("a", one_net(5, TASKS)), ("b", stn(5, TASKS)), ("c", stn(5, TASKS))):
        reference = hard.params.updated(add={k: net.params[k] for k in graph.weight_keys() if not k.startswith("head.")})
        if variant == "lite_c":
            dual = net.params[head_weights(task)]
            assert isinstance(dual, DualHead)
            assert hard.params[head_weights(task)] is (dual.public if task == "a" else dual.private)
        with torch.no_grad():
            want = mtgraph.compile(graph, reference.restricted(graph)).eval()(x)
        torch.testing.assert_close(got[task], want[task])


def test_all_private_equals_stn_and_all_public_equals_one_net_in_size(setup):
    backbone, heads, _ = setup
    for alpha, reference in ((0.2, stn(5, TASKS)), (0.9, one_net(5, TASKS))):
        net = build_smtl(problem_of(backbone, heads), SMTLConfig(variant="lite"))
        for key in net.gates.values():
            set_alpha(net.params, key, alpha)
        hard = harden_smtl(net.graph, net.params)
        got = mtgraph.cost(hard.graph, hard.params)
        want = mtgraph.cost(reference, mtgraph.ParamStore.create(reference, backbone, heads))
        assert (got.total_macs, got.total_params) == (want.total_macs, want.total_params)
        if alpha < 0.5:
            assert not any(k.endswith(".shared") for k in hard.params.keys()), "nobody chose public: f_S must go"


def test_partial_range_hardening_keeps_the_stem_and_private_decoders(setup):
    backbone, heads, _ = setup
    net = build_smtl(problem_of(backbone, heads), SMTLConfig(variant="lite", start=1, end=3))
    for key in net.gates.values():
        set_alpha(net.params, key, 0.9)
    hard = harden_smtl(net.graph, net.params)
    # Everyone public: blocks 0..3 shared, block 4 (after the range) one copy per task.
    assert set(hard.params.keys()) - {head_weights(t) for t in TASKS} == {
        "b0.shared", "b1.shared", "b2.shared", "b3.shared", "b4.a", "b4.b", "b4.c"}


def test_hardening_does_not_touch_the_soft_network(setup):
    backbone, heads, _ = setup
    net = build_smtl(problem_of(backbone, heads), SMTLConfig(variant="lite_c"))
    keys = net.params.keys()
    harden_smtl(net.graph, net.params)
    assert net.params.keys() == keys
    assert all(isinstance(net.params[head_weights(t)], DualHead) for t in TASKS)


@pytest.mark.slow
def test_onnx_of_the_hardened_network_holds_the_chosen_paths_only(setup, tmp_path):
    from mtgraph.exporters import export_onnx, initializer_stats

    backbone, heads, _ = setup
    net = build_smtl(problem_of(backbone, heads), SMTLConfig(variant="lite"))
    for key in net.gates.values():
        set_alpha(net.params, key, 0.5)  # every tie goes private: the export must be exactly STN-sized
    hard = harden_smtl(net.graph, net.params)
    assert {k for k in hard.params.keys() if not k.startswith("head.")} == {f"b{k}.{t}" for k in range(5) for t in TASKS}
    exported = export_onnx(hard.graph, hard.params, tmp_path / "lite.onnx")
    assert max(exported.max_abs_diff.values()) < 1e-4
    reference = stn(5, TASKS)
    stn_file = export_onnx(reference, mtgraph.ParamStore.create(reference, backbone, heads), tmp_path / "stn.onnx")
    assert initializer_stats(exported.path) == initializer_stats(stn_file.path)

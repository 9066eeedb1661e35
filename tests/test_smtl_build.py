"""Safe MTL's gated graph: the α = 0 / α = 1 limits, gradients to α, the lite one-hot forward, decoder-level gates."""

from __future__ import annotations

import pytest
import torch
from backbones import make_heads

import mtgraph
from mtgraph import tasks as T
from mtgraph.data import SceneDataset
from mtgraph.ir import Gate, from_groups, one_net, stn
from mtgraph.ir.nodes import head_weights
from mtgraph.modules import MixGate
from mtgraph.passes import parse_pipeline, run_passes
from mtgraph.strategies.smtl import (
    PUBLIC,
    DecoderGate,
    DualHead,
    SMTLConfig,
    alphas,
    build_smtl,
    gate_nodes,
)

TASKS = ("a", "b", "c")


def problem_of(backbone: mtgraph.Backbone, heads: dict[str, torch.nn.Module]) -> mtgraph.Problem:
    """A Problem over these backbone and heads for building (the tasks' losses and data are never used)."""
    return mtgraph.Problem(backbone, heads, {t: T.regression(name=t) for t in heads}, SceneDataset(1, size=32))


@pytest.fixture(scope="module")
def setup(traced):
    """(backbone, heads, a batch) for the 5-block test ResNet (blocks 0..4, output [16, 8, 8])."""
    _, x, backbone = traced("resnet_basic")
    return backbone, make_heads(backbone.output_shape, TASKS), torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def perturb(params: mtgraph.ParamStore, seed: int = 0) -> None:
    """Give every module of the store its own random offsets, so the public and private copies differ."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, module in params.items():
            if key.startswith("gate."):
                continue
            for tensor in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator).abs())


def run(graph: mtgraph.MTGraph, params: mtgraph.ParamStore, x: torch.Tensor, train: bool = False) -> dict[str, torch.Tensor]:
    module = mtgraph.compile(graph, params)
    module.train(train)
    with torch.no_grad():
        return module(x)


def test_default_graph_is_public_encoder_plus_private_encoders_and_one_gate_per_task(setup):
    backbone, heads, _ = setup
    net = build_smtl(problem_of(backbone, heads), SMTLConfig())
    assert net.block_range == (0, 4)
    keys = set(net.params.keys())
    for k in range(5):
        assert {f"b{k}.shared", f"b{k}.a", f"b{k}.b", f"b{k}.c"} <= keys
    gates = gate_nodes(net.graph)
    assert set(gates) == set(TASKS)
    for task, i in gates.items():
        gate = net.graph.nodes[i]
        assert isinstance(gate, Gate)
        public, private = (net.graph.nodes[s] for s in gate.srcs)
        assert public.weights == "b4.shared" and private.weights == f"b4.{task}"
        assert net.graph.nodes[net.graph.heads[task]].src == i
        module = net.params[gate.weights]
        assert isinstance(module, MixGate) and module.mode == "softmax"
    assert alphas(net.graph, net.params) == {t: pytest.approx(0.5) for t in TASKS}
    # The pipeline reproduces the graph from the One-Net.
    start = one_net(5, TASKS)
    rebuilt = run_passes(start, mtgraph.ParamStore.create(start, backbone, heads), parse_pipeline(net.pipeline))
    assert rebuilt.graph == net.graph


@pytest.mark.parametrize("block_range", [(0, 4), (1, 3), (2, 2)])
def test_alpha_zero_is_the_single_task_network_and_alpha_one_the_shared_one(setup, block_range):
    backbone, heads, x = setup
    start, end = block_range
    outputs = {}
    for alpha in (0.0, 1.0):
        net = build_smtl(problem_of(backbone, heads), SMTLConfig(start=start, end=end, alpha=alpha))
        perturb(net.params)
        outputs[alpha] = (net, run(net.graph, net.params, x))
    # α = 0: each task runs its own blocks from `start` on; before it, the shared stem.
    shared = [[list(TASKS)]] * start
    private = [[[t] for t in TASKS]] * (5 - start)
    net, got = outputs[0.0]
    stn_like = from_groups(5, TASKS, shared + private)
    if start == 0:
        assert stn_like == stn(5, TASKS)
    want = run(stn_like, net.params.restricted(stn_like), x)
    for t in TASKS:
        torch.testing.assert_close(got[t], want[t], rtol=1e-5, atol=1e-6)
    # α = 1: the shared (public) blocks up to `end`, the task's own blocks after it.
    net, got = outputs[1.0]
    one_like = from_groups(5, TASKS, [[list(TASKS)]] * (end + 1) + [[[t] for t in TASKS]] * (4 - end))
    if end == 4:
        assert one_like == one_net(5, TASKS)
    want = run(one_like, net.params.restricted(one_like), x)
    for t in TASKS:
        torch.testing.assert_close(got[t], want[t], rtol=1e-5, atol=1e-6)


def test_soft_gate_output_is_the_convex_combination_alpha_public_plus_one_minus_alpha_private(setup):
    backbone, heads, x = setup
    net = build_smtl(problem_of(backbone, heads), SMTLConfig(alpha=0.3))
    assert alphas(net.graph, net.params) == {t: pytest.approx(0.3) for t in TASKS}
    perturb(net.params)
    # The head of a task sees 0.3 public + 0.7 private features: check at the gate with identity heads.
    identity = net.params.updated(add={head_weights(t): torch.nn.Identity() for t in TASKS})
    got = run(net.graph, identity, x)
    public = run(one_net(5, TASKS), identity.restricted(one_net(5, TASKS)), x)
    private = run(stn(5, TASKS), identity.restricted(stn(5, TASKS)), x)
    for t in TASKS:
        torch.testing.assert_close(got[t], 0.3 * public[t] + 0.7 * private[t], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["smtl", "lite", "smtl_c", "lite_c"])
def test_gradients_reach_every_alpha(setup, variant):
    backbone, heads, x = setup
    net = build_smtl(problem_of(backbone, heads), SMTLConfig(variant=variant))
    perturb(net.params)  # with equal public and private weights dL/dα is exactly 0
    module = mtgraph.compile(net.graph, net.params).train()
    torch.manual_seed(0)
    outputs = module(x)
    sum((o - 1.0).pow(2).mean() for o in outputs.values()).backward()
    for task, key in net.gates.items():
        grad = net.params[key].mix.logits.grad if variant.endswith("_c") else net.params[key].logits.grad
        assert grad is not None and float(grad.abs().sum()) > 0, f"no gradient reaches α of task {task}"


@pytest.mark.parametrize("variant", ["lite", "lite_c"])
def test_lite_forward_uses_exactly_one_path_per_task(setup, variant):
    backbone, heads, x = setup
    net = build_smtl(problem_of(backbone, heads), SMTLConfig(variant=variant))
    perturb(net.params)
    public_graph, private_graph = one_net(5, TASKS), stn(5, TASKS)
    if variant == "lite_c":
        public_params = net.params.restricted(public_graph).updated(
            add={head_weights(t): net.params[head_weights(t)].public for t in TASKS})
        private_params = net.params.restricted(private_graph).updated(
            add={head_weights(t): net.params[head_weights(t)].private for t in TASKS})
    else:
        public_params, private_params = net.params.restricted(public_graph), net.params.restricted(private_graph)
    public = run(public_graph, public_params, x, train=True)
    private = run(private_graph, private_params, x, train=True)
    seen = {t: set() for t in TASKS}
    torch.manual_seed(0)
    for _ in range(12):
        got = run(net.graph, net.params, x, train=True)
        for t in TASKS:
            is_public = torch.allclose(got[t], public[t], rtol=1e-5, atol=1e-6)
            is_private = torch.allclose(got[t], private[t], rtol=1e-5, atol=1e-6)
            assert is_public != is_private, f"task {t}: the forward is not exactly one of the two paths"
            seen[t].add("public" if is_public else "private")
    assert all(s == {"public", "private"} for s in seen.values()), seen  # α = 0.5: both get sampled

@pytest.mark.parametrize("variant", ["lite", "lite_c"])
def test_lite_gates_use_the_configured_temperature(setup, variant):
    """τ (eq. 4) shapes the straight-through gradient, (1/τ)·p(1 − p)·(∂L/∂w_pub − ∂L/∂w_priv) with
    p = σ((Δlogit + Δgumbel)/τ), and not the one-hot forward: with the same weights and the same Gumbel noise, two
    configs differing only in τ give the same outputs and different gradients to every gate. A network that ignored
    the config's τ (a pass dropping it, a gate ignoring its own) would give equal gradients."""
    backbone, heads, x = setup
    outputs, grads = {}, {}
    for tau in (0.1, 1.0):
        net = build_smtl(problem_of(backbone, heads), SMTLConfig(variant=variant, tau=tau))
        perturb(net.params)  # the same offsets for both τ (seeded): equal weights
        module = mtgraph.compile(net.graph, net.params).train()
        torch.manual_seed(0)  # the same Gumbel noise for both τ
        out = module(x)
        sum((o - 1.0).pow(2).mean() for o in out.values()).backward()
        outputs[tau] = {t: o.detach() for t, o in out.items()}
        grads[tau] = {t: getattr(net.params[key], "mix", net.params[key]).logits.grad.clone()
                      for t, key in net.gates.items()}
    for t in TASKS:
        assert torch.equal(outputs[0.1][t], outputs[1.0][t]), "the one-hot forward must not depend on τ"
        assert float(grads[1.0][t].abs().sum()) > 0, f"no gradient reaches the gate of {t}"
        assert not torch.equal(grads[0.1][t], grads[1.0][t]), f"the gate of {t} ignores the configured τ"



def test_lite_samples_public_with_probability_alpha():
    gate = MixGate(2, mode="gumbel_st", tau=0.1, init_probs=(0.8, 0.2)).train()
    torch.manual_seed(0)
    samples = torch.stack([gate.weights().detach() for _ in range(2000)])
    assert set(samples.flatten().tolist()) <= {0.0, 1.0}
    assert torch.all(samples.sum(1) == 1)
    assert abs(float(samples[:, PUBLIC].mean()) - 0.8) < 0.03


def test_decoder_level_gate_mixes_the_two_decoders_outputs(setup):
    backbone, heads, x = setup
    net = build_smtl(problem_of(backbone, heads), SMTLConfig(variant="smtl_c", alpha=0.25))
    perturb(net.params)
    for t in TASKS:
        assert isinstance(net.params[net.gates[t]], DecoderGate)
        head = net.params[head_weights(t)]
        assert isinstance(head, DualHead) and head.public is not head.private
    got = run(net.graph, net.params, x)
    public_out = run(one_net(5, TASKS), net.params.restricted(one_net(5, TASKS)).updated(
        add={head_weights(t): net.params[head_weights(t)].public for t in TASKS}), x)
    private_out = run(stn(5, TASKS), net.params.restricted(stn(5, TASKS)).updated(
        add={head_weights(t): net.params[head_weights(t)].private for t in TASKS}), x)
    for t in TASKS:
        torch.testing.assert_close(got[t], 0.25 * public_out[t] + 0.75 * private_out[t], rtol=1e-5, atol=1e-6)
    # Both decoders are counted, once each; GMac counts both decoders too.
    report = mtgraph.cost(net.graph, net.params)
    soft = build_smtl(problem_of(backbone, heads), SMTLConfig())
    head_params = sum(p.numel() for p in heads["a"].parameters()) + sum(p.numel() for p in heads["b"].parameters()) \
        + sum(p.numel() for p in heads["c"].parameters())
    assert report.total_params == mtgraph.cost(soft.graph, soft.params).total_params + head_params

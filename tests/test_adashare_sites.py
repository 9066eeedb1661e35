"""BatchNorm statistics per call site for weights called from several IR nodes (AdaShare after divergence)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtgraph
from mtgraph.errors import ConfigError
from mtgraph.strategies.adashare import (
    gated_blocks,
    harden_policy,
    load_site_statistics,
    recalibrate,
    shared_bn_sites,
    site_module,
    site_statistics,
)
from mtgraph.zoo import resnet_tiny

TASKS = ("seg", "normals", "depth")


@pytest.fixture(scope="module")
def hardened() -> tuple[mtgraph.MTGraph, mtgraph.ParamStore]:
    torch.manual_seed(0)
    backbone = mtgraph.trace(resnet_tiny(4), torch.randn(2, 3, 32, 32))
    gated, _ = gated_blocks(backbone)
    u = torch.ones(3, len(gated), dtype=torch.bool)
    u[0, gated.index(1)] = False  # seg diverges at block 1 ...
    u[1, gated.index(3)] = False  # ... normals at block 3 (a projection: its shortcut BN is shared too)
    heads = {t: nn.Conv2d(backbone.output_shape[0], 2, 1) for t in TASKS}
    graph, params, _ = harden_policy(backbone, heads, TASKS, gated, u)
    return graph, params


def _bns(module: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def test_each_call_site_gets_its_own_buffers_and_shares_parameters(hardened) -> None:
    graph, params = hardened
    module = site_module(graph, params)
    calls = [n for n in module.graph.nodes if n.op == "call_module"]
    seen_buffers: set[int] = set()
    for node in calls:
        for bn in _bns(module.get_submodule(str(node.target))):
            assert id(bn.running_mean) not in seen_buffers, node.name
            seen_buffers.add(id(bn.running_mean))
    # Parameters are the store's own tensors: nothing is copied, 1x backbone.
    store_params = {id(p) for _, m in params.items() for p in m.parameters()}
    assert {id(p) for p in module.parameters()} <= store_params
    assert sum(p.numel() for p in module.parameters()) == mtgraph.cost(graph, params).total_params
    # Every block call site (a Block, or a projection Skip) beyond the first of its key reuses buffers.
    sites = [n for n in graph.nodes if isinstance(n, mtgraph.ir.Block) or (isinstance(n, mtgraph.ir.Skip) and n.weights)]
    assert shared_bn_sites(graph, params) == len(sites) - len({n.weights for n in sites}) == 13


def test_recalibrated_sites_match_batch_statistics(hardened) -> None:
    graph, params = hardened
    torch.manual_seed(1)
    x = torch.randn(64, 3, 32, 32) * 2 + 0.5
    plain = mtgraph.compile(graph, params)
    with torch.no_grad():
        reference = plain.train()(x)  # batch statistics everywhere (running stats are not used)
    module = site_module(graph, params, copy_all=True)
    assert recalibrate(module, [x]) == 1
    with torch.no_grad():
        out = module.eval()(x)

    def error(outputs: dict[str, torch.Tensor]) -> float:
        return max(float((outputs[t] - reference[t]).abs().max() / reference[t].abs().max()) for t in TASKS)

    # Not exact: running variances are unbiased, batch normalisation uses the biased one.
    assert error(out) < 0.01
    # One set of statistics shared by every site cannot do this.
    recalibrate(plain, [x])
    with torch.no_grad():
        mixed = plain.eval()(x)
    assert error(mixed) > 0.1


def test_copy_all_leaves_the_store_untouched(hardened) -> None:
    graph, params = hardened
    before = {k: {n: t.clone() for n, t in m.state_dict().items()} for k, m in params.items()}
    module = site_module(graph, params, copy_all=True)
    recalibrate(module, [torch.randn(4, 3, 32, 32) + 3])
    for key, module_ in params.items():
        for name, tensor in module_.state_dict().items():
            assert torch.equal(tensor, before[key][name]), (key, name)


def test_site_statistics_round_trip(hardened) -> None:
    graph, params = hardened
    module = site_module(graph, params, copy_all=True)
    recalibrate(module, [torch.randn(8, 3, 32, 32)])
    stats = site_statistics(module, calibration_batches=1)
    x = torch.randn(2, 3, 32, 32)
    again = site_module(graph, params, stats, copy_all=True)
    with torch.no_grad():
        a, b = module.eval()(x), again.eval()(x)
    for t in TASKS:
        assert torch.equal(a[t], b[t])
    with pytest.raises(ConfigError, match="unknown call sites"):
        load_site_statistics(site_module(mtgraph.one_net(params.backbone.num_blocks, TASKS), params), stats)


def test_recalibration_needs_data(hardened) -> None:
    graph, params = hardened
    with pytest.raises(ConfigError, match="at least one batch"):
        recalibrate(site_module(graph, params, copy_all=True), [])


def test_copied_sites_hold_no_store_module(hardened) -> None:
    graph, params = hardened
    module = site_module(graph, params, copy_all=True)
    store = {id(m) for _, m in params.items() for m in m.modules() if isinstance(m, nn.BatchNorm2d)}
    assert not store & {id(m) for m in module.modules()}
    for _, m in params.items():
        m.train()
    module.eval()  # reaches no BatchNorm of the store (it would switch training to running statistics)
    assert all(bn.training for _, m in params.items() for bn in _bns(m))

"""AdaShare on the IR: skip semantics, the soft graph, the hardened graph, its cost and parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtgraph
from mtgraph.analysis.macs import count_macs, count_parameters
from mtgraph.errors import ConfigError
from mtgraph.ir import Block, Gate, Skip
from mtgraph.passes import parse_pipeline, run_passes
from mtgraph.strategies import Heatmap
from mtgraph.strategies.adashare import (
    AdaShareConfig,
    gate_key,
    gated_blocks,
    harden_policy,
    make_gates,
    policy_figures,
    policy_logits,
    random_policy,
    set_temperature,
    soft_graph,
)
from mtgraph.zoo import resnet_tiny

TASKS = ("seg", "normals", "depth")


@pytest.fixture(scope="module")
def backbone() -> mtgraph.Backbone:
    torch.manual_seed(0)
    return mtgraph.trace(resnet_tiny(4), torch.randn(2, 3, 32, 32))


def _heads(backbone: mtgraph.Backbone) -> dict[str, nn.Module]:
    torch.manual_seed(1)
    channels = backbone.output_shape[0]
    return {t: nn.Conv2d(channels, k, 1) for t, k in zip(TASKS, (5, 3, 1))}


def _randomize_bn(params: mtgraph.ParamStore) -> None:
    """Non-trivial BatchNorm statistics, so eval-mode outputs depend on them."""
    g = torch.Generator().manual_seed(3)
    for _, module in params.items():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _policy(backbone: mtgraph.Backbone) -> torch.Tensor:
    """seg skips 1 and 3 (a projection block), normals skips 3, depth skips 8; every block is run by some task."""
    gated, _ = gated_blocks(backbone)
    u = torch.ones(len(TASKS), len(gated), dtype=torch.bool)
    for task, block in (("seg", 1), ("seg", 3), ("normals", 3), ("depth", 8)):
        u[TASKS.index(task), gated.index(block)] = False
    return u


# --------------------------------------------------------------------------- skip semantics


def test_skippable_blocks_come_from_the_traced_shortcuts(backbone: mtgraph.Backbone) -> None:
    gated, kept = gated_blocks(backbone)
    assert gated == (1, 2, 3, 4, 5, 6, 7, 8)
    assert [backbone.blocks[b].shortcut.kind for b in (3, 5, 7)] == ["projection"] * 3
    assert len(kept) == 1 and kept[0].accepted is False
    assert kept[0].where == "block 0 (stem)"
    assert "cannot be skipped" in kept[0].reason and "[3, 32, 32] -> [4, 32, 32]" in kept[0].reason


def test_backbone_without_skippable_block_is_refused() -> None:
    plain = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1))
    bb = mtgraph.trace(plain, torch.randn(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="AdaShare needs at least one skippable block"):
        gated_blocks(bb)
    with pytest.raises(ConfigError, match="none of the backbone's"):
        soft_graph(bb, TASKS)


@pytest.mark.parametrize("name", ["lambda_sparsity", "lambda_sharing"])
def test_negative_lambda_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"AdaShareConfig.{name} must be a number >= 0, got -0.01"):
        AdaShareConfig(**{name: -0.01})


def test_bad_config_values_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"AdaShareConfig.policy_fraction must be a number in \(0, 1\), got 1.0"):
        AdaShareConfig(policy_fraction=1.0)
    with pytest.raises(ConfigError, match=r"AdaShareConfig.tau_decay must be a number in \(0, 1\], got 1.5"):
        AdaShareConfig(tau_decay=1.5)
    with pytest.raises(ConfigError, match=r"AdaShareConfig.derive must be one of \['argmax', 'sample'\], got 'best'"):
        AdaShareConfig(derive="best")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"AdaShareConfig.straight_through must be True or False, got 1"):
        AdaShareConfig(straight_through=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"AdaShareConfig.decided_margin must be a number in \[0, 0.5\], got 0.6"):
        AdaShareConfig(decided_margin=0.6)
    with pytest.raises(ConfigError, match=r"AdaShareConfig.device must name a torch device .*, got 'gpu7'"):
        AdaShareConfig(device="gpu7")


# --------------------------------------------------------------------------- the soft graph


def test_soft_graph_has_one_gate_per_task_and_skippable_block(backbone: mtgraph.Backbone) -> None:
    graph = soft_graph(backbone, TASKS)
    mtgraph.verify(graph, num_blocks=backbone.num_blocks)
    gates = [n for n in graph.nodes if isinstance(n, Gate)]
    assert sorted((g.task, g.weights) for g in gates) == sorted((t, gate_key(t, b)) for t in TASKS for b in range(1, 9))
    for gate in gates:
        execute, skip = (graph.nodes[s] for s in gate.srcs)
        assert isinstance(execute, Block) and isinstance(skip, Skip)  # (execute, skip) = policy index (0, 1)
        assert execute.weights == f"b{execute.block}.shared" and execute.src == skip.src
        # A projection skip runs the block's own shortcut weights; an identity skip names none.
        assert skip.weights == (execute.weights if backbone.blocks[skip.block].shortcut.has_weights else None)
    # Every call site of block b names one key: one weight set for all tasks.
    assert {n.weights for n in graph.nodes if isinstance(n, Block) and n.block == 5} == {"b5.shared"}
    # The stem (not skippable) and block 1 (same input for every task) are computed once.
    assert sum(isinstance(n, Block) and n.block in (0, 1) for n in graph.nodes) == 2


def test_locked_blocks_are_plain_shared_blocks(backbone: mtgraph.Backbone) -> None:
    graph = soft_graph(backbone, TASKS, learnable=(7, 8))
    assert {n.weights for n in graph.nodes if isinstance(n, Gate)} == {gate_key(t, b) for t in TASKS for b in (7, 8)}
    # Blocks 0..6 are executed once for all tasks (the locked prefix is shared).
    assert [graph.served[i] for i, n in enumerate(graph.nodes) if isinstance(n, Block) and n.block < 7] == [
        frozenset(TASKS)
    ] * 7


def test_soft_graph_forcing_execute_equals_the_one_net(backbone: mtgraph.Backbone) -> None:
    graph = soft_graph(backbone, TASKS)
    gated, _ = gated_blocks(backbone)
    gates = make_gates(TASKS, gated)
    params = mtgraph.ParamStore.create(graph, backbone, _heads(backbone), gates=gates)
    _randomize_bn(params)
    with torch.no_grad():
        for gate in gates.values():
            gate.logits.copy_(torch.tensor([0.0, -60.0]))  # execute with probability ~1
    shared = mtgraph.one_net(backbone.num_blocks, TASKS)
    soft, plain = mtgraph.compile(graph, params), mtgraph.compile(shared, params)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        soft.eval(), plain.eval()  # eval: gates take the hard argmax decision
        out, ref = soft(x), plain(x)
        for t in TASKS:
            torch.testing.assert_close(out[t], ref[t], rtol=0, atol=0)
        # In training mode the Gumbel mixture is exactly one-hot at a low temperature.
        set_temperature(gates.values(), 0.05)
        soft.train(), plain.train()
        out, ref = soft(x), plain(x)
        for t in TASKS:
            torch.testing.assert_close(out[t], ref[t], rtol=0, atol=0)


def test_soft_graph_with_hard_decisions_equals_the_hardened_network(backbone: mtgraph.Backbone) -> None:
    graph = soft_graph(backbone, TASKS)
    gated, _ = gated_blocks(backbone)
    gates = make_gates(TASKS, gated)
    params = mtgraph.ParamStore.create(graph, backbone, _heads(backbone), gates=gates)
    _randomize_bn(params)
    u = _policy(backbone)
    with torch.no_grad():
        for k, t in enumerate(TASKS):
            for j, b in enumerate(gated):
                gates[gate_key(t, b)].logits.copy_(torch.tensor([1.0, -1.0] if u[k, j] else [-1.0, 1.0]))
    hard_graph, hard_params, _ = harden_policy(backbone, {}, TASKS, gated, u, params=params)
    x = torch.randn(3, 3, 32, 32)
    soft, hard = mtgraph.compile(graph, params).eval(), mtgraph.compile(hard_graph, hard_params).eval()
    with torch.no_grad():
        out, ref = soft(x), hard(x)
    for t in TASKS:
        torch.testing.assert_close(out[t], ref[t], rtol=0, atol=1e-6)


def test_policy_logits_are_the_gates_logits(backbone: mtgraph.Backbone) -> None:
    gated, _ = gated_blocks(backbone)
    gates = make_gates(TASKS, gated)
    logits = policy_logits(gates, TASKS, gated)
    assert logits.shape == (3, 8, 2)
    torch.testing.assert_close(torch.softmax(logits, -1), torch.full((3, 8, 2), 0.5))  # α = 0.5 at the start
    logits[1, 2, 0].backward()
    assert gates[gate_key("normals", 3)].logits.grad.tolist() == [1.0, 0.0]
    assert gates[gate_key("seg", 3)].logits.grad.tolist() == [0.0, 0.0]
    # Blocks outside ``trainable`` enter as constants: no gradient at all.
    gates = make_gates(TASKS, gated)
    policy_logits(gates, TASKS, gated, trainable=(7, 8)).sum().backward()
    assert gates[gate_key("seg", 1)].logits.grad is None
    assert gates[gate_key("seg", 8)].logits.grad.tolist() == [1.0, 1.0]


# --------------------------------------------------------------------------- the hardened graph


def _shortcut_macs(backbone: mtgraph.Backbone, block: int) -> int:
    info = backbone.blocks[block]
    shortcut = info.shortcut_of(info.module)
    if shortcut is None:
        return 0
    with torch.no_grad():
        return count_macs(shortcut.eval(), torch.zeros(1, *info.in_shape))


def test_hardened_cost_is_backbone_minus_skipped_main_branches(backbone: mtgraph.Backbone) -> None:
    gated, _ = gated_blocks(backbone)
    u = _policy(backbone)
    graph, params, _ = harden_policy(backbone, _heads(backbone), TASKS, gated, u)
    report = mtgraph.cost(graph, params)
    one = mtgraph.one_net(backbone.num_blocks, TASKS)
    reference = mtgraph.cost(one, mtgraph.ParamStore.create(one, backbone, _heads(backbone)))
    assert _shortcut_macs(backbone, 3) > 0  # the projection still costs its 1x1 convolution
    for k, task in enumerate(TASKS):
        skipped = [b for j, b in enumerate(gated) if not u[k, j]]
        saved = sum(backbone.blocks[b].macs - _shortcut_macs(backbone, b) for b in skipped)
        assert report.tasks[task].macs == reference.tasks[task].macs - saved, task


def test_hardened_parameters_are_one_backbone_plus_heads(backbone: mtgraph.Backbone) -> None:
    gated, _ = gated_blocks(backbone)
    heads = _heads(backbone)
    graph, params, _ = harden_policy(backbone, heads, TASKS, gated, _policy(backbone))
    expected = count_parameters(b.module for b in backbone.blocks) + count_parameters(heads.values())
    assert mtgraph.cost(graph, params).total_params == expected
    # Every key names one module (no hidden copies): blocks 0..8 once each, plus the heads.
    assert sorted(params.keys()) == sorted([f"b{b}.shared" for b in range(9)] + [f"head.{t}" for t in TASKS])


def test_block_skipped_by_every_task_leaves_the_network(backbone: mtgraph.Backbone) -> None:
    gated, _ = gated_blocks(backbone)
    u = _policy(backbone)
    u[:, gated.index(8)] = False  # identity block 8 skipped by everyone: dead
    graph, params, _ = harden_policy(backbone, _heads(backbone), TASKS, gated, u)
    assert "b8.shared" not in params
    expected = count_parameters(b.module for b in backbone.blocks[:8]) + count_parameters(_heads(backbone).values())
    assert mtgraph.cost(graph, params).total_params == expected


def test_tasks_with_equal_decisions_share_their_common_prefix(backbone: mtgraph.Backbone) -> None:
    gated, _ = gated_blocks(backbone)
    u = _policy(backbone)
    graph, _, _ = harden_policy(backbone, _heads(backbone), TASKS, gated, u)
    # seg skips block 1, so it diverges there; normals and depth agree on blocks 0..2
    # (both execute them), so those are computed once for both of them.
    served: dict[tuple[str, int], list[frozenset[str]]] = {}
    for i, n in enumerate(graph.nodes):
        if isinstance(n, (Block, Skip)):
            served.setdefault((type(n).__name__, n.block), []).append(graph.served[i])
    assert served[("Block", 0)] == [frozenset(TASKS)]
    assert served[("Block", 1)] == [frozenset({"normals", "depth"})]
    assert served[("Skip", 1)] == [frozenset({"seg"})]
    assert sorted(map(sorted, served[("Block", 2)])) == [["depth", "normals"], ["seg"]]
    assert sorted(map(sorted, served[("Skip", 3)])) == [["normals"], ["seg"]]  # same block, different inputs
    assert served[("Block", 3)] == [frozenset({"depth"})]
    mtgraph.ir.check_canonical(graph)


def test_pipeline_string_reproduces_the_hardened_graph(backbone: mtgraph.Backbone) -> None:
    gated, _ = gated_blocks(backbone)
    graph, _, pipeline = harden_policy(backbone, _heads(backbone), TASKS, gated, _policy(backbone))
    assert pipeline.startswith("skip{task=seg,block=1},skip{task=seg,block=3},") and pipeline.endswith(",cse,dce")
    one = mtgraph.one_net(backbone.num_blocks, TASKS)
    again = run_passes(one, mtgraph.ParamStore.create(one, backbone, _heads(backbone)), parse_pipeline(pipeline))
    assert again.graph == graph


def test_random_policy_keeps_the_number_of_skips() -> None:
    reference = torch.tensor([[True, False, False, True], [True, True, True, False]])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        per_task = random_policy(reference, per_task=True, generator=g)
        assert (~per_task).sum(1).tolist() == [2, 1]
        anywhere = random_policy(reference, per_task=False, generator=g)
        assert int((~anywhere).sum()) == 3


def test_policy_figures(backbone: mtgraph.Backbone) -> None:
    gated, _ = gated_blocks(backbone)
    alpha = torch.rand(3, 8, dtype=torch.float64).clamp(0.05, 0.95)
    logits = torch.stack([alpha.log(), (1 - alpha).log()], -1)
    figures = policy_figures(logits, TASKS, gated, backbone)
    matrix = figures["policy_matrix"]
    assert isinstance(matrix, Heatmap)
    assert matrix.columns == TASKS and matrix.rows[0] == "1 layer1.0" and len(matrix.rows) == 8
    torch.testing.assert_close(torch.tensor(matrix.values, dtype=torch.float64), alpha.T)
    corr = figures["task_correlation"]
    assert isinstance(corr, Heatmap) and corr.rows == corr.columns == TASKS
    expected = torch.nn.functional.cosine_similarity(alpha[:, None], alpha[None], dim=-1)
    torch.testing.assert_close(torch.tensor(corr.values, dtype=torch.float64), expected)

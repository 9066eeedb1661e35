"""MTSL building blocks on hand-made inputs: alignment term, ATT loss, schedule mapping, config errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import mtgraph
from mtgraph.errors import ConfigError
from mtgraph.ir import from_groups, stn
from mtgraph.strategies.mtsl import (
    MTSLConfig,
    alignment_loss,
    alignment_pairs,
    alignment_sets,
    amalgamation_loss,
    build_schedule,
    epochs_to_steps,
    map_profile,
    sibling_sets,
    task_nodes,
)
from mtgraph.strategies.mtsl.alignment import FeatureTap, run_prefix
from mtgraph.strategies.mtsl.amalgamation import ChannelAttention


def _hsic1(k: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Song et al. (2012) unbiased HSIC, written from the paper's formula (K, L there; k, g here)."""
    n = k.shape[0]
    k = k - torch.diag(torch.diag(k))
    g = g - torch.diag(torch.diag(g))
    one = torch.ones(n, 1, dtype=k.dtype)
    term = torch.trace(k @ g)
    term = term + (one.T @ k @ one).squeeze() * (one.T @ g @ one).squeeze() / ((n - 1) * (n - 2))
    term = term - 2.0 / (n - 2) * (one.T @ k @ g @ one).squeeze()
    return term / (n * (n - 3))


def _hand_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    x = x.double().mean(dim=(2, 3))
    y = y.double().mean(dim=(2, 3))
    k, g = x @ x.T, y @ y.T
    return float(_hsic1(k, g) / torch.sqrt(_hsic1(k, k) * _hsic1(g, g)))


# --------------------------------------------------------------------------- #
# task nodes, sibling pairs, alignment term
# --------------------------------------------------------------------------- #


def _tree() -> mtgraph.MTGraph:
    # block 0: {a, b, c} share, d alone; block 1 onwards: every task alone.
    return from_groups(
        3, ["a", "b", "c", "d"], [[["a", "b", "c"], ["d"]], [["a"], ["b"], ["c"], ["d"]], [["a"], ["b"], ["c"], ["d"]]]
    )


def test_task_nodes_are_first_blocks_used_alone_and_siblings_share_a_source():
    graph = _tree()
    nodes = task_nodes(graph)
    assert {t: graph.nodes[i].block for t, i in nodes.items()} == {"a": 1, "b": 1, "c": 1, "d": 0}
    sets = sibling_sets(graph)
    # d is alone at the input: it has no sibling, so only {a, b, c} is a sibling set.
    assert [(s.tasks, s.block) for s in sets] == [(("a", "b", "c"), 1)]
    assert alignment_pairs(graph) == (("a", "b"), ("a", "c"), ("b", "c"))
    assert alignment_pairs(stn(2, ["x", "y", "z"])) == (("x", "y"), ("x", "z"), ("y", "z"))
    assert alignment_pairs(mtgraph.one_net(2, ["x", "y"])) == ()


def test_alignment_term_over_the_sibling_set_of_a_tree_matches_the_song_estimator():
    torch.manual_seed(0)
    feats = {t: torch.randn(8, 5, 3, 3) for t in "abcd"}
    feats["b"] = feats["a"] * 2 + 0.1 * torch.randn(8, 5, 3, 3)  # a and b strongly aligned
    sets = alignment_sets(_tree())
    assert sets == (("a", "b", "c"),)
    gaps = [1 - _hand_cka(feats[i], feats[j]) for i, j in [("a", "b"), ("a", "c"), ("b", "c")]]
    got = alignment_loss(feats, sets, 0.2)
    # float32 features against a float64 reference: rel 1e-5 covers the float32 Gram sums of 8 x 5 products.
    assert float(got) == pytest.approx(0.2 * sum(gaps) / 3, rel=1e-5, abs=1e-6)
    assert float(alignment_loss(feats, sets, 0.2, balance="mean_sum")) == pytest.approx(0.2 * sum(gaps), rel=1e-5)
    # d's features are not part of any set: changing them changes nothing.
    feats["d"] = torch.randn(8, 5, 3, 3) * 100
    assert float(alignment_loss(feats, sets, 0.2)) == float(got)
    # Differentiable: the gradient flows into the task node features.
    f = {t: v.clone().requires_grad_(True) for t, v in feats.items()}
    alignment_loss(f, sets, 0.2).backward()
    assert f["c"].grad is not None and float(f["c"].grad.abs().sum()) > 0
    assert f["d"].grad is None
    assert float(alignment_loss(feats, (), 0.2)) == 0.0


def _one_dim(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(4, 1)


def test_loss_balances_by_hand():
    # N = 4 one-dimensional features. Their U-centred Gram matrices (zero diagonal and zero row sums, 4 x 4,
    # symmetric) have K12 = K34 = p, K13 = K24 = q, K14 = K23 = r with p + q + r = 0, so the unbiased CKA of two
    # features is the cosine of their (p, q, r). For x = (1, 1, 0, 0): K = xx^T off the diagonal has only
    # K12 = 1, row sums (1, 1, 0, 0), total 2, so K̃ij = Kij - (ri + rj) / 2 + 2 / 6 gives
    # p = 1 - 1 + 1/3, q = r = -1/2 + 1/3: (p, q, r) ∝ (2, -1, -1). Likewise z = (1, 0, 1, 0) ∝ (-1, 2, -1) and
    # w = (-1, 0, 0, 1) (K14 = -1) ∝ (1, 1, -2). Scaling a feature scales K̃. Hence
    #   CKA(x, 2x) = 1,  CKA(x, w) = (2 - 1 + 2) / 6 = 1/2,  CKA(x, z) = (-2 - 2 + 1) / 6 = -1/2.
    x, z, w = _one_dim([1, 1, 0, 0]), _one_dim([1, 0, 1, 0]), _one_dim([-1, 0, 0, 1])
    features = {"a": x, "b": 2 * x, "c": w, "d": x, "e": z}
    sets = [("a", "b", "c"), ("d", "e")]  # two sibling sets: pairs ab = 1, ac = bc = 1/2; de = -1/2
    # paper: λ Σ_sets (1 - mean CKA) = 0.2 [(1 - (1 + 1/2 + 1/2) / 3) + (1 + 1/2)] = 0.2 (1/3 + 3/2) = 11/30
    # mean_sum: λ Σ_pairs (1 - CKA) = 0.2 [(0 + 1/2 + 1/2) + 3/2] = 1/2
    # float64, about 30 rounded operations per CKA (relative 2^-53 each): 1e-14 is far above their sum.
    assert float(alignment_loss(features, sets, 0.2)) == pytest.approx(11 / 30, abs=1e-14)
    assert float(alignment_loss(features, sets, 0.2, balance="mean_sum")) == pytest.approx(1 / 2, abs=1e-14)
    # The task-loss half of each balance: the paper sums the task losses, mean_sum averages them.
    tasks = ("a", "b", "c", "d", "e")
    assert MTSLConfig().task_loss_weights(tasks) == dict.fromkeys(tasks, 1.0)
    assert MTSLConfig(loss_balance="mean_sum").task_loss_weights(tasks) == dict.fromkeys(tasks, 0.2)
    # With task losses (1, 2, 3, 4, 5) the whole objective of eq. 1 is then 15 + 11/30 or 3 + 1/2.
    losses = dict(zip(tasks, (1.0, 2.0, 3.0, 4.0, 5.0)))
    for balance, expected in (("paper", 15 + 11 / 30), ("mean_sum", 3 + 1 / 2)):
        weights = MTSLConfig(loss_balance=balance).task_loss_weights(tasks)
        total = sum(weights[t] * losses[t] for t in tasks) + float(alignment_loss(features, sets, 0.2, balance=balance))
        assert total == pytest.approx(expected, abs=1e-13)


def test_alignment_loss_refuses_bad_sets_and_balances():
    features = {"a": torch.randn(4, 2), "b": torch.randn(4, 2)}
    with pytest.raises(ConfigError, match=r"task node features of \['c'\]"):
        alignment_loss(features, (("a", "c"),), 0.2)
    with pytest.raises(ConfigError, match=r"two or more tasks, got \[\['a'\]\]"):
        alignment_loss(features, (("a",),), 0.2)
    with pytest.raises(ConfigError, match=r"balance must be one of \['paper', 'mean_sum'\], got 'mean'"):
        alignment_loss(features, (("a", "b"),), 0.2, balance="mean")  # type: ignore[arg-type]


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.b0 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b2(self.b1(self.b0(x)))


def test_feature_tap_on_compiled_module_sees_exactly_the_task_node_outputs():
    torch.manual_seed(0)
    backbone = mtgraph.trace(_Tiny(), torch.randn(2, 3, 8, 8), cuts="blocks")
    assert backbone.num_blocks == 3
    graph = _tree()
    heads = {t: nn.Conv2d(4, 1, 1) for t in graph.tasks}
    params = mtgraph.ParamStore.create(graph, backbone, heads)
    for module in params._modules.values():  # distinct weights per key, so outputs differ
        for p in module.parameters():
            nn.init.normal_(p)
    compiled = mtgraph.compile(graph, params)
    nodes = task_nodes(graph)
    x = torch.randn(4, 3, 8, 8)
    with FeatureTap(params, {t: graph.nodes[i].weights for t, i in nodes.items()}) as tap:
        out = compiled(x)
        assert set(out) == {"a", "b", "c", "d"}  # contract unchanged
        direct = run_prefix(graph, params, x, list(nodes.values()))
        for t, i in nodes.items():
            torch.testing.assert_close(tap.features[t], direct[i])
    assert tap.features == {}
    assert len(params[graph.nodes[nodes["a"]].weights]._forward_hooks) == 0


# --------------------------------------------------------------------------- #
# attention amalgamation
# --------------------------------------------------------------------------- #


def test_att_loss_equals_hand_formula_on_tiny_tensors():
    torch.manual_seed(0)
    group = torch.rand(2, 3, 2, 2)
    targets = [torch.rand(2, 3, 2, 2), torch.rand(2, 3, 2, 2)]
    atts = [ChannelAttention(3, reduction=1, min_hidden=2) for _ in targets]
    got = amalgamation_loss(group, targets, atts)
    total = 0.0
    for target, att in zip(targets, atts):
        w1, b1, w2, b2 = (t.detach() for t in (att.fc1.weight, att.fc1.bias, att.fc2.weight, att.fc2.bias))
        err = 0.0
        for n in range(2):
            pooled = [sum(float(group[n, c, i, j]) for i in range(2) for j in range(2)) / 4 for c in range(3)]
            hidden = [
                max(0.0, sum(float(w1[h, c]) * pooled[c] for c in range(3)) + float(b1[h])) for h in range(w1.shape[0])
            ]
            logits = [sum(float(w2[c, h]) * hidden[h] for h in range(len(hidden))) + float(b2[c]) for c in range(3)]
            weights = [1 / (1 + math.exp(-z)) for z in logits]
            for c, i, j in itertools.product(range(3), range(2), range(2)):
                err += (float(target[n, c, i, j]) - weights[c] * float(group[n, c, i, j])) ** 2
        total += err / group.numel()
    assert float(got.detach()) == pytest.approx(total / 2, rel=1e-5)


def test_att_networks_have_two_linear_layers_relu_and_sigmoid():
    att = ChannelAttention(16)
    assert [type(m) for m in att.children()] == [nn.Linear, nn.ReLU, nn.Linear]
    # Hidden width C by default, as the authors' released code (two C -> C layers); C // r on request.
    assert (att.fc1.in_features, att.fc1.out_features, att.fc2.out_features) == (16, 16, 16)
    assert ChannelAttention(16, reduction=4).fc1.out_features == 4
    assert MTSLConfig().att_reduction == 1
    w = att(torch.randn(5, 16, 4, 4)).detach()
    assert w.shape == (5, 16) and float(w.min()) > 0 and float(w.max()) < 1
    with pytest.raises(ConfigError, match=r"expects features \[N, 16"):
        att(torch.randn(5, 8, 4, 4))
    with pytest.raises(ConfigError, match="one attention network per task node"):
        amalgamation_loss(torch.randn(2, 16, 1, 1), [torch.randn(2, 16, 1, 1)], [])


# --------------------------------------------------------------------------- #
# schedule
# --------------------------------------------------------------------------- #


def test_paper_schedule_on_ten_blocks_is_appendix_c():
    s = build_schedule(
        task_epochs=MTSLConfig().task_epochs,
        att_epochs=MTSLConfig().att_epochs,
        total_epochs=80,
        min_finetune_epochs=0,
        phases=None,
        num_blocks=10,
    )
    assert s.task_epochs == (2, 2, 2, 2, 4, 4, 8, 8, 8, 8)
    assert s.att_epochs == (1, 1, 2, 2, 2, 2, 4, 4, 8, 8)
    assert s.finetune_epochs == 32 and sum(s.att_epochs) == 34


def test_schedule_maps_onto_a_nine_block_backbone_by_dropping_the_fifth_entry():
    c = MTSLConfig()
    s = build_schedule(
        task_epochs=c.task_epochs,
        att_epochs=c.att_epochs,
        total_epochs=c.total_epochs,
        min_finetune_epochs=c.min_finetune_epochs,
        phases=c.phases,
        num_blocks=9,
    )
    assert len(s.phases) == 9
    assert s.task_epochs == (2, 2, 2, 2, 4, 8, 8, 8, 8)
    assert s.att_epochs == (1, 1, 2, 2, 2, 4, 4, 8, 8)
    assert s.finetune_epochs == 36  # E is kept: 80 - 44
    assert "mapped onto 9 phases" in s.description
    # entry floor((i + 1/2) * n / P): identity when P == n, repeats when P > n
    assert map_profile([1, 2, 3], 3) == (1, 2, 3)
    assert map_profile([1, 2], 4) == (1, 1, 2, 2)


def test_budget_scaling_and_steps():
    c = MTSLConfig().with_budget(4)
    assert c.total_epochs == 4 and c.task_epochs[0] == pytest.approx(0.1) and c.att_epochs[-1] == pytest.approx(0.4)
    s = build_schedule(
        task_epochs=c.task_epochs,
        att_epochs=c.att_epochs,
        total_epochs=c.total_epochs,
        min_finetune_epochs=0,
        phases=None,
        num_blocks=10,
    )
    assert s.finetune_epochs == pytest.approx(1.6)
    assert epochs_to_steps(0.1, 5) == 1 and epochs_to_steps(0.0, 5) == 0 and epochs_to_steps(2.5, 4) == 10


# --------------------------------------------------------------------------- #
# bad input
# --------------------------------------------------------------------------- #


def test_more_phases_than_blocks_is_a_config_error_with_numbers():
    with pytest.raises(
        ConfigError, match=r"expects 10 structural phases, one block each, but the backbone has only 4 blocks"
    ):
        build_schedule(
            task_epochs=(1,), att_epochs=(1,), total_epochs=80, min_finetune_epochs=0, phases=10, num_blocks=4
        )


def test_task_phases_must_fit_the_budget():
    with pytest.raises(ConfigError, match=r"take 48 epochs .* E = 40 minus the minimum fine-tuning f = 0"):
        build_schedule(
            task_epochs=MTSLConfig().task_epochs,
            att_epochs=(1,),
            total_epochs=40,
            min_finetune_epochs=0,
            phases=None,
            num_blocks=10,
        )


@pytest.mark.parametrize("gamma", [-0.1, 1.5])
def test_gamma_outside_unit_interval_is_a_config_error(gamma):
    with pytest.raises(ConfigError, match=r"MTSLConfig.gamma must be a number in \[0, 1\], got"):
        MTSLConfig(gamma=gamma)


@pytest.mark.parametrize("gamma", [float("nan"), True, "0.8"])
def test_gamma_that_is_no_finite_number_is_a_config_error(gamma):
    with pytest.raises(ConfigError, match=r"MTSLConfig.gamma must be a finite number, got"):
        MTSLConfig(gamma=gamma)


def test_new_options_are_validated():
    assert MTSLConfig().loss_balance == "paper" and MTSLConfig().device is None
    assert MTSLConfig(device="cpu").device == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"MTSLConfig.loss_balance must be one of \['paper', 'mean_sum'\], got 'sum'"):
        MTSLConfig(loss_balance="sum")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"MTSLConfig.device must name a torch device such as 'cpu'.*got 'gpu0'"):
        MTSLConfig(device="gpu0")
    with pytest.raises(ConfigError, match=r"MTSLConfig.att_reduction must be an integer >= 1, got 0"):
        MTSLConfig(att_reduction=0)
    with pytest.raises(ConfigError, match=r"MTSLConfig.grouping_rule must be one of \['code', 'paper'\]"):
        MTSLConfig(grouping_rule="greedy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"MTSLConfig.with_budget\(epochs\) must be a number > 0, got 0"):
        MTSLConfig().with_budget(0)


def test_other_config_errors():
    with pytest.raises(ConfigError, match="at least 2 tasks, got 1"):
        MTSLConfig.check_tasks(("seg",))
    with pytest.raises(ConfigError, match="at most 10 tasks"):
        MTSLConfig.check_tasks(tuple(f"t{i}" for i in range(11)))
    with pytest.raises(ConfigError, match="MTSLConfig.batch_size must be an integer >= 4, got 2"):
        MTSLConfig(batch_size=2)
    assert MTSLConfig(batch_size=2, align=False).batch_size == 2  # only the alignment's CKA needs 4 samples
    with pytest.raises(ConfigError, match=r"MTSLConfig.align_weight must be a number >= 0, got -1"):
        MTSLConfig(align_weight=-1)
    with pytest.raises(ConfigError, match="MTSLConfig.task_epochs entry must be a number >= 0, got -1"):
        MTSLConfig(task_epochs=(1, -1))
    with pytest.raises(ConfigError, match=r"MTSLConfig.task_epochs entries must be > 0, got \[1.0, 0.0\]"):
        MTSLConfig(task_epochs=(1, 0))

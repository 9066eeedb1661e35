"""MTSL end to end at tiny scale: group-node creation, the γ threshold behaviour (One-Net / tree / STN), the front door
(Problem in, typed figures and a replayable pipeline out), the loss balance reaching training, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mtgraph
from mtgraph.data import SceneDataset
from mtgraph.errors import ConfigError
from mtgraph.ir import from_groups, one_net, print_graph, stn
from mtgraph.passes import remap_optimizer, run_passes
from mtgraph.strategies import StrategyResult, registry
from mtgraph.strategies.mtsl import MTSLConfig, learn_mtsl, structural_step, task_nodes, tree_rows
from mtgraph.strategies.protocol import replay
from mtgraph.strategies.result import Heatmap, Table
from mtgraph.tasks import depth, edges, segmentation

SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These runs are tiny: one thread avoids oversubscribing a busy CI machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class FourBlocks(nn.Module):
    """A 4-block conv net (conv, BatchNorm, ReLU per block)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.b0 = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.b3 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b3(self.b2(self.b1(self.b0(x))))


@pytest.fixture(scope="module")
def backbone() -> mtgraph.Backbone:
    torch.manual_seed(0)
    traced = mtgraph.trace(FourBlocks(), torch.randn(2, 3, SIZE, SIZE), cuts="blocks")
    assert traced.num_blocks == 4
    return traced


@pytest.fixture(scope="module")
def data() -> SceneDataset:
    return SceneDataset(16, size=SIZE, seed=0)


def _config(**options) -> MTSLConfig:
    # 2 batches per epoch: each phase trains 1 step and amalgamates 1 step, then 2 fine-tuning steps.
    base = dict(
        task_epochs=(0.5,),
        att_epochs=(0.5,),
        total_epochs=3.0,
        batch_size=8,
        grouping_images=16,
        lr=1e-2,
        eval_batch_size=16,
    )
    base.update(options)
    return MTSLConfig(**base)


def _heads(names, out_channels, backbone):
    torch.manual_seed(1)
    head = nn.Sequential(nn.Conv2d(backbone.output_shape[0], out_channels, 1), nn.Upsample(size=(SIZE, SIZE)))
    return {n: copy.deepcopy(head) for n in names}


# --------------------------------------------------------------------------- two identical pairs


def _pair_tasks():
    """a, b: the same depth task twice; c, d: the same edge task twice."""
    return {
        "a": depth(name="a", target="depth"),
        "b": depth(name="b", target="depth"),
        "c": edges(name="c", target="edges"),
        "d": edges(name="d", target="edges"),
    }


@pytest.fixture(scope="module")
def pairs_setup(backbone):
    """Tasks, heads and initial STN weights: c and d start from their own (equal) random blocks."""
    tasks = _pair_tasks()
    heads = _heads(tasks, 1, backbone)
    graph = stn(backbone.num_blocks, tuple(tasks))
    initial = mtgraph.ParamStore.create(graph, backbone, heads)
    torch.manual_seed(123)
    for b in range(backbone.num_blocks):
        other = copy.deepcopy(backbone.blocks[b].module)
        for m in other.modules():
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()
        initial[f"b{b}.c"].load_state_dict(other.state_dict())
        initial[f"b{b}.d"].load_state_dict(other.state_dict())
    return tasks, heads, initial


def _problem(backbone, heads, tasks, data) -> mtgraph.Problem:
    return mtgraph.Problem(backbone, heads, tasks, data, seed=0)


def _run(backbone, setup, data, **options) -> StrategyResult:
    tasks, heads, initial = setup
    fresh = mtgraph.ParamStore(initial.backbone, {k: copy.deepcopy(m) for k, m in initial.items()})
    return registry()["mtsl"].learn(_problem(backbone, heads, tasks, data), _config(**options), initial=fresh)


@pytest.fixture(scope="module")
def gamma_zero(backbone, pairs_setup, data) -> StrategyResult:
    return _run(backbone, pairs_setup, data, gamma=0.0, grouping_rule="code")


def _cost(graph, backbone, heads):
    report = mtgraph.cost(graph, mtgraph.ParamStore.create(graph, backbone, heads))
    return report.total_macs, report.total_params


def test_gamma_zero_gives_one_net(gamma_zero, backbone, pairs_setup):
    _, heads, _ = pairs_setup
    tasks = tuple(pairs_setup[0])
    assert gamma_zero.graph == one_net(4, tasks)
    got = mtgraph.cost(gamma_zero.graph, gamma_zero.params)
    assert (got.total_macs, got.total_params) == _cost(one_net(4, tasks), backbone, heads)
    fused = [d for d in gamma_zero.decisions if d.accepted and d.what.startswith("fuse")]
    assert [(d.data["block"], d.data["group"]) for d in fused] == [(b, ["a", "b", "c", "d"]) for b in range(4)]
    assert gamma_zero.pipeline == ",".join(f"fuse{{tasks=a+b+c+d,block={b},init=average}}" for b in range(4))
    # Identical tasks have CKA 1 (features compared in float64 after pooling: 1e-9 is far above its rounding).
    first = next(d for d in gamma_zero.decisions if d.data.get("phase") == 0 and "cka" in d.data)
    assert first.data["cka"][0][1] == pytest.approx(1.0, abs=1e-9)
    assert first.data["cka"][2][3] == pytest.approx(1.0, abs=1e-9)
    # The alignment term was in the loss during task learning, not during fine-tuning.
    extra = gamma_zero.history["train"]["extra"]["cka_alignment"]
    assert extra[0] is not None and extra[-1] is None
    # One ATT step per phase (E_s = 0.5 epoch of 2 batches), and the schedule in steps.
    assert sorted(gamma_zero.history["att_losses"]) == [0, 1, 2, 3]
    schedule = gamma_zero.history["schedule"]
    assert (schedule["task_steps"], schedule["finetune_steps"], schedule["total_steps"]) == ([1, 1, 1, 1], 2, 6)


def test_figures_are_typed_heatmaps_of_every_phase_and_the_tree_table(gamma_zero):
    figures = gamma_zero.figures
    assert all(isinstance(f, (Heatmap, Table)) for f in figures.values())
    heatmaps = {name: f for name, f in figures.items() if isinstance(f, Heatmap)}
    # One CKA heatmap per phase (a sibling set of four at blocks 0..3), holding the matrix the decision used.
    assert sorted(heatmaps) == [f"phase {p} block {p} after {'input' if p == 0 else 'a+b+c+d'}" for p in range(4)]
    for phase in range(4):
        decision = next(d for d in gamma_zero.decisions if d.data.get("phase") == phase and "cka" in d.data)
        name = f"phase {phase} block {phase} after {'input' if phase == 0 else 'a+b+c+d'}"
        heatmap = heatmaps[name]
        assert heatmap.title == f"CKA of the task nodes at {name}"
        assert heatmap.is_square and heatmap.rows == ("a", "b", "c", "d")
        assert [list(row) for row in heatmap.values] == decision.data["cka"]
    tree = figures["tree"]
    assert isinstance(tree, Table) and tree.columns == ("block", "branches")
    assert tree.rows == tuple((b, "a+b+c+d") for b in range(4))
    # What is not a figure is in the history: the tree rows and the IR text.
    assert gamma_zero.history["tree"] == tree_rows(gamma_zero.graph)
    assert gamma_zero.history["tree_text"] == print_graph(gamma_zero.graph)


def test_pipeline_replayed_on_stn_gives_exactly_the_learned_graph(gamma_zero, backbone, pairs_setup, data):
    tasks, heads, _ = pairs_setup
    problem = _problem(backbone, heads, tasks, data)
    tree = _run(backbone, pairs_setup, data, gamma=0.999, grouping_rule="code")  # fuses the identical pairs only
    results = {"one_net": gamma_zero, "tree": tree}
    for label, result in results.items():
        assert result.start == "stn", label
        graph, params = replay(problem, result.start, result.pipeline)
        assert graph == result.graph, label
        assert set(params.keys()) == set(result.params.keys()), label
    assert tree.graph == from_groups(4, tuple(tasks), [[["a", "b"], ["c", "d"]]] * 4)


def test_the_loss_balance_reaches_training(backbone, pairs_setup, data):
    # fit optimises sum_t w_t L_t + the alignment term; the paper's balance gives w_t = 1, mean_sum 1/T.
    first_terms = {}
    for balance, weight in (("paper", 1.0), ("mean_sum", 0.25)):
        result = _run(backbone, pairs_setup, data, gamma=1.0, loss_balance=balance, phases=2, task_epochs=(1.0,), att=False)
        assert result.history["loss_weights"] == dict.fromkeys("abcd", weight)
        train = result.history["train"]
        for step, total in enumerate(train["total"]):
            extra = train["extra"]["cka_alignment"][step] or 0.0
            expected = sum(weight * train["losses"][t][step] for t in "abcd") + extra
            # Non-negative float32 terms (the alignment term is 0 up to rounding): 4 products and 4 sums,
            # each rounding by at most 2^-24 of the total, so a relative 1e-6 bounds it.
            assert total == pytest.approx(expected, rel=1e-6, abs=1e-6), (balance, step)
        first_terms[balance] = train["extra"]["cka_alignment"][0]
    # Step 0 sees the same features under both balances (weights only differ in the gradient): one sibling set
    # of 4 tasks, so mean_sum's sum over its 6 pairs is 6 times the paper's mean. c, d start from other random
    # blocks than a, b, so the term is well above rounding; float32 sums of 6 terms: relative 1e-6.
    assert first_terms["paper"] > 1e-3
    assert first_terms["mean_sum"] == pytest.approx(6 * first_terms["paper"], rel=1e-6)


def test_learn_mtsl_is_a_thin_wrapper_of_the_strategy(backbone, data):
    tasks = {"a": depth(name="a", target="depth"), "b": edges(name="b", target="edges")}
    heads = _heads(tasks, 1, backbone)
    config = _config(gamma=0.0, phases=2)
    old = learn_mtsl(backbone, heads, tasks, data, config=config, seed=0)
    new = registry()["mtsl"].learn(_problem(backbone, heads, tasks, data), config)
    assert (old.graph, old.pipeline, old.start) == (new.graph, new.pipeline, new.start)
    for key, module in new.params.items():
        for name, tensor in module.state_dict().items():
            assert torch.equal(tensor, old.params[key].state_dict()[name]), (key, name)


def test_a_budget_a_foreign_config_or_no_problem_is_refused(backbone, data):
    tasks = {"a": depth(name="a", target="depth"), "b": edges(name="b", target="edges")}
    problem = _problem(backbone, _heads(tasks, 1, backbone), tasks, data)
    with pytest.raises(ConfigError, match=r"MTSL has no cost budget \(γ decides how much is shared\); pass budget=None"):
        registry()["mtsl"].learn(problem, _config(), mtgraph.Budget.gmac(1.0, relative_to="one_net"))
    with pytest.raises(ConfigError, match="config must be an MTSLConfig, got dict"):
        registry()["mtsl"].learn(problem, {"gamma": 0.5})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"problem must be an mtgraph.Problem \(see Problem.create\), got tuple"):
        registry()["mtsl"].learn((backbone, tasks, data), _config())  # type: ignore[arg-type]


def test_gamma_between_gives_a_tree_strictly_between_stn_and_one_net(gamma_zero, backbone, pairs_setup, data):
    # Phase-0 similarities (identical up to γ: training before the first decision does not depend on γ).
    first = next(d for d in gamma_zero.decisions if d.data.get("phase") == 0 and "cka" in d.data)
    one_group_value = first.data["value"]  # V of {a, b, c, d}
    assert one_group_value < 0.99, "c, d must differ from a, b for this construction"
    gamma = (one_group_value + 1.0) / 2  # pairs (value 1) above γ, the single group below
    result = _run(backbone, pairs_setup, data, gamma=gamma, grouping_rule="code")
    tasks = tuple(pairs_setup[0])
    assert result.graph == from_groups(4, tasks, [[["a", "b"], ["c", "d"]]] * 4)
    macs, params = (lambda r: (r.total_macs, r.total_params))(mtgraph.cost(result.graph, result.params))
    one = _cost(one_net(4, tasks), backbone, pairs_setup[1])
    separate = _cost(stn(4, tasks), backbone, pairs_setup[1])
    assert one[0] < macs < separate[0] and one[1] < params < separate[1]
    # The pipeline rebuilds the learned tree from the initial STN, and the store holds only used weights.
    start = mtgraph.ParamStore.create(stn(4, tasks), backbone, pairs_setup[1])
    assert run_passes(stn(4, tasks), start, result.pipeline).graph == result.graph
    assert set(result.params.keys()) == set(result.graph.weight_keys()) | {f"head.{t}" for t in tasks}
    rejected = [d for d in result.decisions if d.data.get("phase") == 0 and not d.accepted]
    assert rejected == []  # the chosen grouping was {a, b}{c, d}; both fused
    phase0 = [d for d in result.decisions if d.data.get("phase") == 0 and "cka" in d.data]
    assert phase0[0].data["cka"] == first.data["cka"]
    assert phase0[0].data["partition"] == [["a", "b"], ["c", "d"]]


def test_paper_rule_at_gamma_zero_keeps_the_pairs_apart(backbone, pairs_setup, data):
    # Algorithm 2 as printed averages over groups: {a, b}{c, d} (score 1) beats {a, b, c, d},
    # so γ = 0 does not give One-Net under rule="paper" (the grouping module documents this).
    result = _run(backbone, pairs_setup, data, gamma=0.0, grouping_rule="paper", att=False)
    assert result.graph == from_groups(4, tuple(pairs_setup[0]), [[["a", "b"], ["c", "d"]]] * 4)
    assert result.history["att_losses"] == {}  # ATT ablation: no amalgamation steps


def test_retrain_variant_keeps_the_tree_and_starts_from_fresh_weights(gamma_zero, backbone, pairs_setup, data):
    result = _run(backbone, pairs_setup, data, gamma=0.0, grouping_rule="code", retrain=True)
    assert result.strategy == "mtsl-r" and gamma_zero.strategy == "mtsl"
    assert result.graph == gamma_zero.graph
    assert result.decisions[-1].where == "retrain"
    # Same MTSL run up to the tree, then different weights: retrained from the initial copies.
    mtsl_weight = gamma_zero.params["b0.shared"].state_dict()
    retrained = result.params["b0.shared"].state_dict()
    assert any(not torch.equal(mtsl_weight[k], retrained[k]) for k in mtsl_weight)
    steps = result.history["retrain"]["train"]["total"]
    assert len(steps) == 6  # E = 3 epochs of 2 batches


def test_gamma_one_gives_stn(backbone, data):
    tasks = {"seg": segmentation(5), "depth": depth(), "edges": edges()}
    heads = {"seg": _heads(["seg"], 5, backbone)["seg"], **_heads(["depth", "edges"], 1, backbone)}
    result = registry()["mtsl"].learn(_problem(backbone, heads, tasks, data), _config(gamma=1.0))
    assert result.graph == stn(4, tuple(tasks)) and result.start == "stn"
    got = mtgraph.cost(result.graph, result.params)
    assert (got.total_macs, got.total_params) == _cost(stn(4, tuple(tasks)), backbone, heads)
    assert result.pipeline == ""
    kept = [d for d in result.decisions if "cka" in d.data]
    assert len(kept) == 4 and not any(d.accepted for d in kept)  # block 0 offered in each of the 4 phases
    assert all(d.data["block"] == 0 and "< gamma 1" in d.reason for d in kept)


def test_alignment_raises_task_node_similarity(backbone, data):
    # papers/000 Figure 4: CKA regularisation makes task nodes more similar before grouping.
    tasks = {"seg": segmentation(5), "depth": depth(), "edges": edges()}
    heads = {"seg": _heads(["seg"], 5, backbone)["seg"], **_heads(["depth", "edges"], 1, backbone)}

    def phase0_sum(**options):
        config = _config(gamma=1.0, task_epochs=(2.0,), total_epochs=10.0, **options)
        result = registry()["mtsl"].learn(_problem(backbone, heads, tasks, data), config)
        cka = next(d for d in result.decisions if d.data.get("phase") == 0 and "cka" in d.data).data["cka"]
        return cka[0][1] + cka[0][2] + cka[1][2], result

    without, plain = phase0_sum(align=False)
    with_alignment, aligned = phase0_sum(align=True, align_weight=5.0)
    assert with_alignment > without + 0.1
    assert all(v is None for v in plain.history["train"]["extra"].get("cka_alignment", [None]))
    # Step 0: the single-task copies start identical (papers/000: every STN from the same initialisation), so
    # each pair's features are bit-identical and CKA = s / (sqrt(s) * sqrt(s)) for one float32 sum s. A
    # correctly rounded sqrt, product and quotient put that within 2 eps of 1, and 1 − CKA is then exact
    # (Sterbenz). Under the paper's balance the term is λ Σ_sets mean_pairs (1 − CKA): one sibling set here,
    # whose 3 equal gaps average to one gap up to two roundings (sum, division), and the product with λ adds
    # one more: |term| <= λ · (sibling sets = 1) · 2 eps · (1 + eps/2)^3 < λ · 1 · 2 eps · (1 + 2 eps). Its
    # sign depends on the rounding, hence on the machine.
    terms = [t for t in aligned.history["train"]["extra"]["cka_alignment"] if t is not None]  # None: not aligning
    eps = torch.finfo(torch.float32).eps
    bound = 5.0 * 1 * 2 * eps * (1 + 2 * eps)
    assert abs(terms[0]) <= bound
    # The copies then diverge under their tasks' different losses, and the term becomes a real penalty.
    assert max(terms) > 1e3 * bound


# --------------------------------------------------------------------------- group node creation


def _distinct_store(backbone, names):
    graph = stn(backbone.num_blocks, names)
    heads = _heads(names, 1, backbone)
    params = mtgraph.ParamStore.create(graph, backbone, heads)
    torch.manual_seed(7)
    for _, module in params.items():
        for p in module.parameters():
            nn.init.normal_(p)
        for buf in module.buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
    return graph, params


def test_group_node_weights_and_adam_moments_are_the_average(backbone, data):
    names = ("a", "b", "c")
    graph, params = _distinct_store(backbone, names)
    # Adam moments for every task node, different per task.
    named = [(f"{k}/{n}", p) for k, m in params.items() for n, p in m.named_parameters()]
    opt = torch.optim.Adam([p for _, p in named], lr=1e-3)
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.randn_like(p)
    opt.step()
    out = structural_step(
        0,
        graph,
        params,
        config=_config(gamma=0.0, grouping_rule="code", att=False),
        subset=data,
        train_data=data,
        att_steps=0,
        seed=0,
    )
    assert [str(p) for p in out.passes] == ["fuse{tasks=a+b+c,block=0,init=average}"]
    group = out.params["b0.shared"]
    for name, tensor in group.state_dict().items():
        sources = [params[f"b0.{t}"].state_dict()[name] for t in names]
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, sum(sources) / 3, rtol=1e-6, atol=1e-6)
    assert all(f"b0.{t}" not in out.params for t in names)  # task nodes removed
    # The next block of each branch is the new task node.
    assert {t: out.graph.nodes[i].block for t, i in task_nodes(out.graph).items()} == {"a": 1, "b": 1, "c": 1}
    moments = {n: opt.state[p]["exp_avg"].clone() for n, p in named}
    # fit carries the optimizer across the rewrite with remap_optimizer and the fuse lineage.
    remap_optimizer(opt, out.lineage, params, out.params)
    for rest, p in group.named_parameters():
        expected = sum(moments[f"b0.{t}/{rest}"] for t in names) / 3
        torch.testing.assert_close(opt.state[p]["exp_avg"], expected)


def test_copy_ablation_copies_the_first_task_node(backbone, data):
    graph, params = _distinct_store(backbone, ("a", "b"))
    out = structural_step(
        0,
        graph,
        params,
        config=_config(gamma=0.0, average=False, att=False),
        subset=data,
        train_data=data,
        att_steps=0,
        seed=0,
    )
    assert [str(p) for p in out.passes] == ["fuse{tasks=a+b,block=0,init=copy,source_task=a}"]
    for name, tensor in out.params["b0.shared"].state_dict().items():
        torch.testing.assert_close(tensor, params["b0.a"].state_dict()[name])


def test_att_trains_the_group_node_towards_the_removed_task_nodes(backbone, data):
    graph, params = _distinct_store(backbone, ("a", "b"))
    before = copy.deepcopy(params["b0.a"])
    out = structural_step(
        0, graph, params, config=_config(gamma=0.0, lr=1e-2), subset=data, train_data=data, att_steps=30, seed=0
    )
    assert len(out.att_losses) == 30 and out.att_losses[-1] < out.att_losses[0]
    # Teachers are frozen (their weights and BatchNorm statistics do not move).
    for name, tensor in params["b0.a"].state_dict().items():
        torch.testing.assert_close(tensor, before.state_dict()[name])


# --------------------------------------------------------------------------- bad input


def test_one_task_only_is_a_config_error(backbone, data):
    task = {"depth": depth()}
    with pytest.raises(ConfigError, match=r"at least 2 tasks, got 1: \['depth'\]"):
        registry()["mtsl"].learn(_problem(backbone, _heads(task, 1, backbone), task, data), _config())


def test_fewer_blocks_than_the_schedule_expects_is_a_config_error(backbone, data):
    tasks = {"a": depth(name="a", target="depth"), "b": edges(name="b", target="edges")}
    with pytest.raises(
        ConfigError, match=r"expects 10 structural phases, one block each, but the backbone has only 4 blocks"
    ):
        registry()["mtsl"].learn(_problem(backbone, _heads(tasks, 1, backbone), tasks, data), _config(phases=10))


def test_gamma_outside_unit_interval_is_a_config_error():
    with pytest.raises(ConfigError, match=r"gamma must be a number in \[0, 1\], got 1.2"):
        MTSLConfig(gamma=1.2)
    with pytest.raises(ConfigError, match=r"gamma must be a number in \[0, 1\], got -0.5"):
        MTSLConfig(gamma=-0.5)


def test_initial_store_must_hold_the_stn_weights(backbone, data):
    tasks = {"a": depth(name="a", target="depth"), "b": edges(name="b", target="edges")}
    heads = _heads(tasks, 1, backbone)
    wrong = mtgraph.ParamStore.create(one_net(4, tuple(tasks)), backbone, heads)
    with pytest.raises(ConfigError, match=r"missing \['b0.a', 'b0.b'"):
        registry()["mtsl"].learn(_problem(backbone, heads, tasks, data), _config(), initial=wrong)


@pytest.mark.slow
def test_resnet_tiny_nine_blocks_end_to_end():
    from torch.utils.data import DataLoader

    from mtgraph.tasks import dense_tasks
    from mtgraph.zoo import resnet_tiny

    train = SceneDataset(16, size=SIZE, seed=0)
    tasks = dense_tasks(train.config.seg_classes, ["seg", "depth", "normals"])
    torch.manual_seed(0)
    backbone = mtgraph.trace(resnet_tiny(width=4), torch.zeros(1, 3, SIZE, SIZE))
    assert backbone.num_blocks == 9
    config = MTSLConfig(batch_size=8, grouping_images=16, eval_batch_size=16).with_budget(2.0)
    problem = mtgraph.Problem.create(resnet_tiny(width=4), tasks, DataLoader(train, batch_size=8), val_data=train)
    result = registry()["mtsl"].learn(problem, config)
    schedule = result.history["schedule"]
    # Nine phases; E_t / E_s mapped as documented (the fifth entry of the paper's lists dropped), in steps.
    assert len(schedule["task_steps"]) == 9
    # 2 epochs of 2 batches: E_t = 0.05 .. 0.2 epochs, each rounded up to one step; fine-tuning 0.9 epoch.
    assert schedule["task_steps"] == [1] * 9 and schedule["finetune_steps"] == 2
    assert "mapped onto 9 phases" in schedule["description"]
    outputs = mtgraph.compile(result.graph, result.params)(torch.zeros(2, 3, SIZE, SIZE))
    assert set(outputs) == set(tasks)
    assert set(result.history["metrics"]) == set(tasks)
    first = next(d for d in result.decisions if "cka" in d.data)
    assert (first.data["phase"], first.data["block"], first.data["tasks"]) == (0, 0, list(tasks))

"""The affinity strategy (papers/001): locations, cost of a tree, tree -> passes, budget errors, config, the front door."""

from __future__ import annotations

import pytest
import torch
import torchvision
from backbones import make_heads
from torch.utils.data import Dataset

import mtgraph
from mtgraph import Budget, Problem
from mtgraph import tasks as T
from mtgraph.analysis.cost import cost
from mtgraph.data import SceneDataset
from mtgraph.errors import BudgetError, ConfigError
from mtgraph.ir import from_groups, group_key, one_net, stn
from mtgraph.ir.nodes import Block
from mtgraph.params import ParamStore
from mtgraph.strategies import Curve, Heatmap, Table, get_strategy, replay
from mtgraph.strategies.affinity import (
    AffinityConfig,
    AffinityStrategy,
    BranchingTree,
    TreeCost,
    block_groups,
    build_tree,
    config_for,
    enumerate_trees,
    fuse_pipeline,
    learn_affinity,
    probe_affinity,
    probe_images,
    resolve_locations,
    train_stn,
)
from mtgraph.train import checkpointing
from mtgraph.zoo import resnet_tiny

TASKS = ("S", "E", "D")
SCENE_TASKS = ("seg", "depth", "edges")


def _tree(*partitions: str) -> BranchingTree:
    """``_tree("SED", "SE|D")``: one string per location, groups separated by '|'."""
    return BranchingTree(tuple(tuple(tuple(g) for g in p.split("|")) for p in partitions))


def _scene_tasks() -> dict[str, T.Task]:
    return {"seg": T.segmentation(5, hidden=8), "depth": T.depth(hidden=8), "edges": T.edges(hidden=8)}


@pytest.fixture
def resnet(traced):
    _, _, backbone = traced("resnet_basic")  # 5 blocks
    return backbone, make_heads(backbone.output_shape, TASKS)


@pytest.fixture(scope="module")
def scenes():
    return SceneDataset(16, size=32, seed=0), SceneDataset(8, size=32, seed=1)


@pytest.fixture
def problem(traced, scenes) -> Problem:
    """Three scene tasks on resnet_basic (5 blocks, 32 px), 16 training and 8 validation scenes."""
    _, _, backbone = traced("resnet_basic")
    torch.manual_seed(0)
    train, val = scenes
    return Problem.create(backbone, _scene_tasks(), train, val_data=val)


# --------------------------------------------------------------------------- #
# Locations
# --------------------------------------------------------------------------- #


def test_block_groups_hold_each_partition_over_the_segment_ending_at_its_location():
    tree = _tree("SED", "SE|D")
    groups = block_groups(tree, (1, 3), 5, TASKS)
    everyone, split = (("S", "E", "D"),), (("S", "E"), ("D",))
    # blocks 0-1 end at location 0, blocks 2-3 at location 1, block 4 (after the last) keeps location 1's
    assert groups == (everyone, everyone, split, split, split)
    three = _tree("SED", "SE|D", "S|E|D")
    assert block_groups(three, (0, 2, 4), 5, TASKS) == (
        everyone,
        split,
        split,
        (("S",), ("E",), ("D",)),
        (("S",), ("E",), ("D",)),
    )


def test_locations_presets(resnet):
    backbone, _ = resnet
    assert resolve_locations(backbone, "all") == (0, 1, 2, 3, 4)
    # layer2.0 starts the second stage (a projection); the first stage ends at layer1.1, the second at layer2.1
    assert resolve_locations(backbone, "stages") == (2, 4)
    with pytest.raises(ConfigError, match=r"outside the backbone, which has blocks 0\.\.4"):
        resolve_locations(backbone, (1, 7))
    with pytest.raises(ConfigError, match=r"locations must be one of \['stages', 'all'\]"):
        resolve_locations(backbone, "deep")


@pytest.mark.parametrize(
    ("model", "size", "stages"),
    [
        (lambda: torchvision.models.resnet18(), 64, ("layer1.1", "layer2.1", "layer3.1", "layer4.1")),
        (lambda: torchvision.models.resnet50(), 64, ("layer1.2", "layer2.3", "layer3.5", "layer4.2")),
        # The paper's backbone: ResNet-50 with dilated layer3 and layer4 (they keep layer2's resolution).
        (lambda: torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]), 64,
         ("layer1.2", "layer2.3", "layer3.5", "layer4.2")),
        (lambda: resnet_tiny(4), 32, ("layer1.1", "layer2.1", "layer3.1", "layer4.1")),
    ],
    ids=["resnet18", "resnet50", "resnet50-dilated", "resnet_tiny"],
)
def test_stages_are_the_papers_four_locations_after_each_resnet_stage(model, size, stages):
    """papers/001 §4: affinity "after every block (1 to 4) in the ResNet-50 model": not the stem, not the classifier."""
    torch.manual_seed(0)
    backbone = mtgraph.trace(model().eval(), torch.zeros(1, 3, size, size))
    locations = resolve_locations(backbone, "stages")
    assert tuple(backbone.blocks[b].name for b in locations) == stages
    # With the root shared, the stem and layer1 are shared and the trees branch in the last three stages.
    strategy_points = [b + 1 for b in locations[:-1]]
    assert [backbone.blocks[b].name.split(".")[0] for b in strategy_points] == ["layer2", "layer3", "layer4"]


def test_stages_of_a_resnet_cut_into_whole_stages(traced):
    backbone = mtgraph.trace(torchvision.models.resnet18().eval(), torch.zeros(1, 3, 64, 64), cuts="stages")
    assert [backbone.blocks[b].name for b in resolve_locations(backbone, "stages")] == [
        "layer1", "layer2", "layer3", "layer4"]


# --------------------------------------------------------------------------- #
# Tree -> passes
# --------------------------------------------------------------------------- #


def test_built_tree_is_from_groups_of_the_expected_partition(problem):
    tree = BranchingTree(((SCENE_TASKS,), (("seg", "edges"), ("depth",)), (("seg",), ("edges",), ("depth",))))
    groups = block_groups(tree, (0, 2, 3), problem.backbone.num_blocks, SCENE_TASKS)
    expected = [
        [["seg", "depth", "edges"]],
        [["seg", "edges"], ["depth"]],
        [["seg", "edges"], ["depth"]],
        [["seg"], ["depth"], ["edges"]],
        [["seg"], ["depth"], ["edges"]],
    ]
    graph, params, pipeline = build_tree(problem, groups)
    assert graph == from_groups(problem.backbone.num_blocks, SCENE_TASKS, expected)
    assert set(params.keys()) == set(graph.weight_keys()) | {f"head.{t}" for t in SCENE_TASKS}
    coster = TreeCost(problem.backbone, problem.heads, SCENE_TASKS, (0, 2, 3))
    assert coster.graph(tree) == graph
    assert replay(problem, "stn", pipeline)[0] == graph


@pytest.mark.parametrize("how", ["first", "average"])
def test_fuse_pipeline_rebuilds_every_tree_from_the_single_task_networks(problem, how):
    trees = list(enumerate_trees(SCENE_TASKS, 3, root_shared=True))
    for tree in trees[:: max(1, len(trees) // 6)] + [trees[-1]]:
        groups = block_groups(tree, (1, 3, 4), problem.backbone.num_blocks, SCENE_TASKS)
        graph, _ = replay(problem, "stn", fuse_pipeline(groups, SCENE_TASKS, shared_init=how))
        assert graph == from_groups(problem.backbone.num_blocks, SCENE_TASKS, groups)
    assert fuse_pipeline([[[t] for t in SCENE_TASKS]] * 5, SCENE_TASKS) == ""


@pytest.mark.parametrize("how", ["first", "average"])
def test_stn_initialisation_through_fuse(problem, how):
    graph = stn(problem.backbone.num_blocks, SCENE_TASKS)
    stn_params = ParamStore.create(graph, problem.backbone, problem.heads)
    with torch.no_grad():
        for k, key in enumerate(stn_params.keys()):
            for p in stn_params[key].parameters():
                p.add_(0.01 * (k + 1))
    before = {k: {n: v.clone() for n, v in stn_params[k].state_dict().items()} for k in stn_params.keys()}
    groups = [[list(SCENE_TASKS)]] * 3 + [[["seg", "edges"], ["depth"]]] * 2
    built, params, pipeline = build_tree(problem, groups, stn_params=stn_params, shared_init=how)
    assert pipeline.count("init=copy" if how == "first" else "init=average") == 5
    members = {"b1.shared": SCENE_TASKS, "b4.seg+edges": ("seg", "edges"), "b4.depth": ("depth",)}
    for key, tasks in members.items():
        sources = [before[group_key(int(key[1]), [t], SCENE_TASKS)] for t in tasks]
        for name, value in params[key].state_dict().items():
            if how == "first" or len(sources) == 1:
                assert torch.equal(value, sources[0][name])
            elif value.is_floating_point():
                # fuse averages as m0 + Σ w_i (m_i - m0): within a few float32 ulps of the mean; the 3 shifts
                # differ by 0.01-0.03 on weights of order 0.1-1, so 1e-6 absolute is ~10 ulps.
                assert torch.allclose(value, torch.stack([s[name] for s in sources]).mean(0), rtol=0, atol=1e-6)
            else:
                assert torch.equal(value, torch.stack([s[name] for s in sources]).max(0).values)
    for t in SCENE_TASKS:
        for a, b in zip(params[f"head.{t}"].state_dict().values(), before[f"head.{t}"].values()):
            assert torch.equal(a, b)
    # The caller's networks are copied, never shared or changed.
    assert all(params[k] is not stn_params[k] for k in params.keys() if k in stn_params)
    with torch.no_grad():
        for module in (params[k] for k in params.keys()):
            for p in module.parameters():
                p.mul_(0.0)
    assert all(torch.equal(v, before[k][n]) for k in stn_params.keys() for n, v in stn_params[k].state_dict().items())


# --------------------------------------------------------------------------- #
# Cost of a tree
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("measure", ["params", "gmac"])
def test_cost_fn_equals_mtgraph_cost_of_the_built_graph(resnet, measure):
    backbone, heads = resnet
    locations = (1, 3, 4)
    coster = TreeCost(backbone, heads, TASKS, locations, measure)
    exact = TreeCost(backbone, heads, TASKS, locations, measure, exact=True)

    def measured(graph):
        report = cost(graph, ParamStore.create(graph, backbone, heads))
        return report.total_params if measure == "params" else report.total_macs / 1e9

    trees = list(enumerate_trees(TASKS, len(locations)))
    sample = trees[:: len(trees) // 5] + [trees[-1]]
    assert len(sample) >= 6
    for k, tree in enumerate(sample):
        graph = from_groups(backbone.num_blocks, TASKS, block_groups(tree, locations, backbone.num_blocks, TASKS))
        expected = measured(graph)
        assert coster(tree) == expected
        if k % 2 == 0:
            assert exact(tree) == expected
    assert coster.one_net == measured(one_net(backbone.num_blocks, TASKS))
    assert coster.stn == measured(stn(backbone.num_blocks, TASKS))


def test_cost_fn_builds_every_candidate_when_blocks_tie_weights(traced):
    _, _, backbone = traced("tied")  # blocks 2 and 4 are one module
    heads = make_heads(backbone.output_shape, TASKS)
    locations = tuple(range(backbone.num_blocks))
    coster = TreeCost(backbone, heads, TASKS, locations)
    assert coster.exact
    tree = _tree("SED", "SED", "SED", "SED", "SED", "SE|D")
    graph = coster.graph(tree)
    report = cost(graph, ParamStore.create(graph, backbone, heads))
    assert coster(tree) == report.total_params
    # A per-node sum counts the tied block once per call site, so it would be wrong here.
    assert sum(n.params for n in report.nodes) > report.total_params


# --------------------------------------------------------------------------- #
# Budget and configuration errors
# --------------------------------------------------------------------------- #


class _Untouchable(Dataset):
    """Training data that fails if anything reads it: budget errors must come before training."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int):
        raise AssertionError("the data was read before the budget was checked")


@pytest.mark.parametrize("measure", ["params", "gmac"])
def test_budget_below_the_one_net_is_refused_with_the_minimum(traced, measure):
    _, _, backbone = traced("resnet_basic")
    problem = Problem.create(backbone, _scene_tasks(), _Untouchable())
    minimum = TreeCost(backbone, problem.heads, SCENE_TASKS, (2, 4), measure).one_net
    text = f"{round(minimum):,} parameters" if measure == "params" else f"{minimum:.9g} GMac"
    budget = Budget(measure, minimum * 0.9)
    with pytest.raises(BudgetError, match=rf"below the cost of the One-Net.*the budget must be at least {text}"):
        AffinityStrategy().learn(problem, AffinityConfig(), budget)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"locations": "deep"}, r"locations must be one of \['stages', 'all'\]"),
        ({"locations": (2, 1)}, r"strictly increasing"),
        ({"locations": (1, -2)}, r"block indices \(integers >= 0\), got \[-2\]"),
        ({"probe_images": 2}, r"AffinityConfig.probe_images must be an integer >= 3, got 2"),
        ({"init": "imagenet"}, r"init must be one of \['scratch', 'stn'\]"),
        ({"shared_init": "max"}, r"shared_init must be one of"),
        ({"epochs": -1}, r"AffinityConfig.epochs must be a number >= 0, got -1"),
        ({"lr": 0}, r"AffinityConfig.lr must be a number > 0, got 0"),
        ({"batch_size": 0}, r"AffinityConfig.batch_size must be an integer >= 1"),
        ({"linkage": "single"}, r"linkage must be one of"),
        ({"root_shared": 1}, r"AffinityConfig.root_shared must be True or False, got 1"),
        ({"device": "gpu7"}, r"AffinityConfig.device must name a torch device"),
    ],
)
def test_config_is_validated(options, message):
    with pytest.raises(ConfigError, match=message):
        AffinityConfig(**options)


def test_learn_refuses_wrong_arguments_with_typed_errors(problem):
    strategy = AffinityStrategy()
    with pytest.raises(ConfigError, match="config must be an AffinityConfig, got dict"):
        strategy.learn(problem, {"epochs": 1})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"budget must be an mtgraph.Budget .*got float"):
        strategy.learn(problem, AffinityConfig(), 0.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="leaves only the One-Net"):
        strategy.learn(problem, AffinityConfig(locations=(4,)))
    single = Problem.create(problem.backbone, {"seg": T.segmentation(5, hidden=8)}, problem.train_data)
    with pytest.raises(ConfigError, match=r"needs at least 2 tasks, got \['seg'\]"):
        strategy.learn(single)


def test_config_for_splits_the_epochs_and_picks_the_locations(problem):
    config = config_for(problem, 5.0)
    assert config.stn_epochs + config.epochs == pytest.approx(5.0)
    assert config.init == "stn" and config.locations == "stages" and config.probe_images == 8  # 8 val scenes
    # A plain network of equal-shaped blocks has one stage: every block is a location instead.
    assert config_for(mtgraph.toy_problem(blocks=3), 2).locations == "all"
    with pytest.raises(ConfigError, match="epochs must be a number > 0"):
        config_for(problem, 0)
    assert get_strategy("affinity").config_for(problem, 5.0) == config


# --------------------------------------------------------------------------- #
# The strategy end to end
# --------------------------------------------------------------------------- #


def test_learn_end_to_end(problem):
    config = AffinityConfig(locations="all", stn_epochs=1, epochs=0.5, batch_size=8, probe_images=8)
    result = get_strategy("affinity").learn(problem, config, Budget.params(0.6, relative_to="one_net..stn"))
    blocks = problem.backbone.num_blocks
    chosen = result.decisions[0]
    assert chosen.accepted and chosen.where.startswith("budget ")
    groups = chosen.data["groups"]
    assert result.graph == from_groups(blocks, SCENE_TASKS, groups)
    report = cost(result.graph, result.params)
    assert report.total_params == chosen.data["cost"] <= chosen.data["budget"]
    assert chosen.data["one_net"] <= chosen.data["budget"] <= chosen.data["stn"]
    # The pipeline is what built the graph: replaying it on fresh single-task networks gives exactly the graph.
    assert result.start == "stn" and result.pipeline.startswith("fuse{")
    assert replay(problem, result.start, result.pipeline)[0] == result.graph
    # Typed figures: one heatmap per location, the budget path, the tree.
    heatmaps = [f for f in result.figures.values() if isinstance(f, Heatmap)]
    assert len(heatmaps) == blocks and all(h.is_square and h.rows == SCENE_TASKS for h in heatmaps)
    tensor = torch.tensor(result.history["affinity"]["tensor"], dtype=torch.float64)
    assert tensor.shape == (blocks, 3, 3)
    assert heatmaps[1].values == tuple(tuple(row) for row in tensor[1].tolist())
    curve = result.figures["budget path"]
    assert isinstance(curve, Curve) and curve.x[0] == chosen.data["one_net"] and list(curve.x) == sorted(curve.x)
    table = result.figures["tree"]
    assert isinstance(table, Table) and len(table.rows) == blocks
    path = result.history["budget_path"]
    assert any(p[2] == groups for p in path)
    assert set(result.history["metrics"]) == set(SCENE_TASKS) and set(result.history["stn_metrics"]) == set(SCENE_TASKS)
    assert result.history["stn"] is not None
    # The architecture to retrain is the same graph with fresh weights.
    arch = get_strategy("affinity").architecture(problem, result)
    assert arch.graph == result.graph and arch.params[arch.graph.weight_keys()[0]] is not result.params[
        result.graph.weight_keys()[0]]


def test_given_stn_weights_are_used_not_retrained(problem):
    trained = train_stn(problem, AffinityConfig(stn_epochs=1, batch_size=8))
    before = {k: v.clone() for k, v in trained.params["b4.seg"].state_dict().items()}
    config = AffinityConfig(epochs=0.5, batch_size=8, probe_images=8, init="stn", locations=(2, 4))
    result = AffinityStrategy().learn(problem, config, Budget.params(1.0, relative_to="one_net..stn"),
                                      stn_params=trained.params)
    assert result.history["stn"] is None
    # Training the tree did not touch the given networks.
    assert all(torch.equal(v, before[k]) for k, v in trained.params["b4.seg"].state_dict().items())
    expected = probe_affinity(trained.graph, trained.params, probe_images(problem.val_data, 8), locations=(2, 4))
    assert torch.tensor(result.history["affinity"]["tensor"], dtype=torch.float64).equal(expected.affinity)
    assert replay(problem, result.start, result.pipeline)[0] == result.graph


def test_init_stn_starts_each_block_from_its_groups_first_task(problem):
    trained = train_stn(problem, AffinityConfig(stn_epochs=1, batch_size=8))
    config = AffinityConfig(epochs=0, probe_images=8, init="stn", locations=(2, 4))
    result = AffinityStrategy().learn(problem, config, Budget.params(0.5, relative_to="one_net..stn"),
                                      stn_params=trained.params)
    names = problem.task_names
    for i, node in enumerate(result.graph.nodes):
        if isinstance(node, Block):
            first = next(t for t in names if t in result.graph.served[i])
            source = trained.params[group_key(node.block, [first], names)].state_dict()
            assert all(torch.equal(v, source[k]) for k, v in result.params[node.weights].state_dict().items())


def test_phases_are_named_and_a_checkpointed_run_resumes_to_the_same_network(problem, tmp_path):
    config = AffinityConfig(locations=(2, 4), stn_epochs=1, epochs=0.5, batch_size=8, probe_images=8)
    with checkpointing(tmp_path) as session:
        first = AffinityStrategy().learn(problem, config)
    assert session.phases == ["affinity-stn", "affinity-tree"]
    with checkpointing(tmp_path, resume=True):
        again = AffinityStrategy().learn(problem, config)
    assert again.graph == first.graph and again.pipeline == first.pipeline
    for key in first.params.keys():
        for (name, a), b in zip(first.params[key].state_dict().items(), again.params[key].state_dict().values()):
            assert torch.equal(a, b), (key, name)


def test_learn_affinity_is_a_thin_wrapper_over_the_strategy(problem):
    config = AffinityConfig(locations=(2, 4), stn_epochs=0, epochs=0, probe_images=8)
    budget = Budget.params(0.5, relative_to="one_net..stn")
    old = learn_affinity(problem.backbone, dict(problem.heads), dict(problem.tasks), problem.train_data, config=config,
                         budget=budget, val_data=problem.val_data)
    new = AffinityStrategy().learn(problem, config, budget)
    assert old.graph == new.graph and old.pipeline == new.pipeline and old.decisions[0] == new.decisions[0]

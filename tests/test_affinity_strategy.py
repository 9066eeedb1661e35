"""The affinity strategy (papers/001): cost of a tree, tree → IR, budget errors, config, the driver end to end."""

from __future__ import annotations

import pytest
import torch
from backbones import make_heads
from torch.utils.data import Dataset

from mtgraph import tasks as T
from mtgraph.analysis.cost import cost
from mtgraph.data import SceneDataset
from mtgraph.errors import BudgetError, ConfigError
from mtgraph.ir import from_groups, group_key, one_net, stn
from mtgraph.params import ParamStore
from mtgraph.passes import run_passes
from mtgraph.strategies.affinity import (
    AffinityConfig,
    BranchingTree,
    TreeCost,
    block_groups,
    build_network,
    config_for_budget,
    enumerate_trees,
    learn_affinity,
    probe_affinity,
    probe_images,
    resolve_locations,
    split_pipeline,
    train_stn,
)

TASKS = ("S", "E", "D")


def _tree(*partitions: str) -> BranchingTree:
    """``_tree("SED", "SE|D")``: one string per location, groups separated by '|'."""
    return BranchingTree(tuple(tuple(tuple(g) for g in p.split("|")) for p in partitions))


@pytest.fixture
def resnet(traced):
    _, _, backbone = traced("resnet_basic")  # 5 blocks
    return backbone, make_heads(backbone.output_shape, TASKS)


# --------------------------------------------------------------------------- #
# Tree -> IR
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


def test_built_graph_of_a_hand_given_tree_is_from_groups_of_the_expected_partition(resnet):
    backbone, heads = resnet
    tree = _tree("SED", "SD|E", "S|D|E")
    groups = block_groups(tree, (0, 2, 3), backbone.num_blocks, TASKS)
    expected = [
        [["S", "E", "D"]],
        [["S", "D"], ["E"]],
        [["S", "D"], ["E"]],
        [["S"], ["E"], ["D"]],
        [["S"], ["E"], ["D"]],
    ]
    graph, params = build_network(groups, backbone, heads, TASKS)
    assert graph == from_groups(backbone.num_blocks, TASKS, expected)
    assert set(params.keys()) == set(graph.weight_keys())
    coster = TreeCost(backbone, heads, TASKS, (0, 2, 3))
    assert coster.graph(tree) == graph


def test_split_pipeline_rebuilds_the_tree_from_the_one_net(resnet):
    backbone, heads = resnet
    for groups in (
        [[["S", "E", "D"]]] * 2 + [[["S", "D"], ["E"]]] + [[["S"], ["D"], ["E"]]] * 2,
        [[["S", "E", "D"]]] * 5,
        [[["S"], ["E"], ["D"]]] * 5,
    ):
        pipeline = split_pipeline(groups, TASKS)
        base = one_net(backbone.num_blocks, TASKS)
        rebuilt = run_passes(base, ParamStore.create(base, backbone, heads), pipeline).graph if pipeline else base
        assert rebuilt == from_groups(backbone.num_blocks, TASKS, groups)
    assert split_pipeline([[["S", "E", "D"]]] * 5, TASKS) == ""


# --------------------------------------------------------------------------- #
# Cost of a tree
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("kind", ["params", "gmac"])
def test_cost_fn_equals_mtgraph_cost_of_the_built_graph(resnet, kind):
    backbone, heads = resnet
    locations = (1, 3, 4)
    coster = TreeCost(backbone, heads, TASKS, locations, kind)
    exact = TreeCost(backbone, heads, TASKS, locations, kind, exact=True)

    def measured(graph):
        report = cost(graph, ParamStore.create(graph, backbone, heads))
        return report.total_params if kind == "params" else report.total_macs / 1e9

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
# Build with STN weights
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("how", ["first", "average"])
def test_stn_initialisation(resnet, how):
    backbone, heads = resnet
    graph = stn(backbone.num_blocks, TASKS)
    stn_params = ParamStore.create(graph, backbone, heads)
    with torch.no_grad():
        for k, key in enumerate(stn_params.keys()):
            for p in stn_params[key].parameters():
                p.add_(0.01 * (k + 1))
    groups = [[["S", "E", "D"]]] * 3 + [[["S", "D"], ["E"]]] * 2
    built, params = build_network(groups, backbone, heads, TASKS, stn_params=stn_params, shared_init=how)
    for key in ("b1.shared", "b4.S+D", "b4.E"):
        block = int(key[1])
        members = {"b1.shared": TASKS, "b4.S+D": ("S", "D"), "b4.E": ("E",)}[key]
        sources = [stn_params[group_key(block, [t], TASKS)].state_dict() for t in members]
        for name, value in params[key].state_dict().items():
            if how == "first" or not value.is_floating_point():
                assert torch.equal(value, sources[0][name])
            else:
                assert torch.allclose(value, torch.stack([s[name] for s in sources]).mean(0))
    for t in TASKS:
        for a, b in zip(params[f"head.{t}"].state_dict().values(), stn_params[f"head.{t}"].state_dict().values()):
            assert torch.equal(a, b)


# --------------------------------------------------------------------------- #
# Budget and configuration errors
# --------------------------------------------------------------------------- #


class _Untouchable(Dataset):
    """Training data that fails if anything reads it: budget errors must come before training."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int):
        raise AssertionError("the data was read before the budget was checked")


def _scene_tasks():
    return {"seg": T.segmentation(5, hidden=8), "depth": T.depth(hidden=8), "edges": T.edges(hidden=8)}


@pytest.mark.parametrize("kind", ["params", "gmac"])
def test_budget_below_the_one_net_is_refused_with_the_minimum(resnet, kind):
    backbone, _ = resnet
    tasks = _scene_tasks()
    heads = {n: t.make_head(backbone.output_shape[0], (32, 32)) for n, t in tasks.items()}
    minimum = TreeCost(backbone, heads, tuple(tasks), tuple(range(5)), kind).one_net
    text = f"{round(minimum):,} parameters" if kind == "params" else f"{minimum:.9g} GMac"
    config = AffinityConfig(budget_kind=kind, budget=minimum * 0.9)
    with pytest.raises(BudgetError, match=rf"below the cost of the One-Net.*the budget must be at least {text}"):
        learn_affinity(backbone, heads, tasks, _Untouchable(), config=config)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"budget_kind": "flops"}, r"budget_kind must be one of \['params', 'gmac'\]"),
        ({"budget": -3}, r"budget must be > 0"),
        ({"budget_fraction": 1.5}, r"budget_fraction must be in \[0, 1\]"),
        ({"budget": 1e5, "budget_fraction": 0.5}, r"not both"),
        ({"locations": "deep"}, r"locations must be one of \['all', 'stages'\]"),
        ({"locations": (2, 1)}, r"strictly increasing"),
        ({"probe_images": 2}, r"probe_images must be at least 3"),
        ({"init": "imagenet"}, r"init must be one of \['scratch', 'stn'\]"),
        ({"shared_init": "max"}, r"shared_init must be one of"),
        ({"epochs": -1}, r"epochs must be >= 0"),
        ({"lr": 0}, r"lr must be > 0"),
        ({"batch_size": 0}, r"batch_size must be >= 1"),
        ({"linkage": "single"}, r"linkage must be one of"),
    ],
)
def test_config_is_validated(options, message):
    with pytest.raises(ConfigError, match=message):
        AffinityConfig(**options)


def test_config_for_budget_splits_the_epochs():
    config = config_for_budget(5.0)
    assert config.stn_epochs + config.epochs == pytest.approx(5.0)
    assert config.init == "stn" and config.locations == "stages"
    with pytest.raises(ConfigError, match="positive"):
        config_for_budget(0)


def test_locations_presets(resnet):
    backbone, _ = resnet
    assert resolve_locations(backbone, "all") == (0, 1, 2, 3, 4)
    # outputs [8,16,16] x3 then [16,8,8] x2: the stage ends are blocks 2 and 4
    assert resolve_locations(backbone, "stages") == (2, 4)
    with pytest.raises(ConfigError, match=r"outside the backbone, which has blocks 0\.\.4"):
        resolve_locations(backbone, (1, 7))


# --------------------------------------------------------------------------- #
# The driver
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def scenes():
    return SceneDataset(16, size=32, seed=0), SceneDataset(8, size=32, seed=1)


def test_learn_affinity_end_to_end(resnet, scenes):
    backbone, _ = resnet
    train, val = scenes
    tasks = _scene_tasks()
    config = AffinityConfig(stn_epochs=1, epochs=0.5, batch_size=8, probe_images=8, budget_fraction=0.6)
    result = learn_affinity(backbone, None, tasks, train, config=config, val_data=val)
    names = tuple(tasks)
    chosen = result.decisions[0]
    assert chosen.accepted and chosen.where.startswith("budget ")
    groups = chosen.data["groups"]
    assert result.graph == from_groups(backbone.num_blocks, names, groups)
    report = cost(result.graph, result.params)
    assert report.total_params == chosen.data["cost"] <= chosen.data["budget"]
    assert chosen.data["one_net"] <= chosen.data["budget"] <= chosen.data["stn"]
    # affinity heatmaps per location, the budget path, the pipeline
    assert len(result.figures["similarity"]) == backbone.num_blocks
    tensor = torch.tensor(result.figures["affinity"]["tensor"])
    assert tensor.shape == (backbone.num_blocks, 3, 3)
    path = result.figures["budget_path"]
    assert path[0][0] == chosen.data["one_net"]
    assert [p[0] for p in path] == sorted(p[0] for p in path)
    assert any(p[2] == groups for p in path)
    base = one_net(backbone.num_blocks, names)
    assert result.pipeline.startswith("split{")
    heads = {t: result.params[f"head.{t}"] for t in names}
    assert run_passes(base, ParamStore.create(base, backbone, heads), result.pipeline).graph == result.graph
    assert set(result.history["metrics"]) == set(names) and set(result.history["stn_metrics"]) == set(names)
    assert result.history["stn"] is not None


def test_given_stn_weights_are_used_not_retrained(resnet, scenes):
    backbone, _ = resnet
    train, val = scenes
    tasks = _scene_tasks()
    names = tuple(tasks)
    heads = {n: t.make_head(backbone.output_shape[0], (32, 32)) for n, t in tasks.items()}
    trained = train_stn(backbone, heads, tasks, train, config=AffinityConfig(stn_epochs=1, batch_size=8))
    before = {k: v.clone() for k, v in trained.params["b4.seg"].state_dict().items()}
    config = AffinityConfig(epochs=0, probe_images=8, budget_fraction=1.0, init="stn", locations=(2, 4))
    result = learn_affinity(backbone, heads, tasks, train, config=config, val_data=val, stn_params=trained.params)
    assert result.history["stn"] is None
    assert all(torch.equal(v, before[k]) for k, v in trained.params["b4.seg"].state_dict().items())
    expected = probe_affinity(trained.graph, trained.params, probe_images(val, 8), locations=(2, 4)).affinity
    assert torch.tensor(result.figures["affinity"]["tensor"], dtype=torch.float64).equal(expected)
    # epochs=0 and init="stn": every block copy holds its group's first task's STN weights
    for i, node in enumerate(result.graph.nodes):
        if getattr(node, "block", None) is not None and node.weights:
            first = next(t for t in names if t in result.graph.served[i])
            source = trained.params[group_key(node.block, [first], names)].state_dict()
            assert all(torch.equal(v, source[k]) for k, v in result.params[node.weights].state_dict().items())

"""The strategy front door: Problem, Budget, the registry and random trees."""

from __future__ import annotations

import pickle
import random

import pytest
import torch
from torch import nn

import mtgraph
from mtgraph import Budget, Problem
from mtgraph import tasks as T
from mtgraph.data import SceneDataset
from mtgraph.errors import BudgetError, ConfigError, DataError
from mtgraph.strategies import Strategy, get_strategy, registry, replay
from mtgraph.strategies.random_trees import random_tree, tree_from_graph, tree_macs, tree_pipeline
from mtgraph.zoo import resnet_tiny


@pytest.fixture(scope="module")
def problem() -> Problem:
    torch.manual_seed(0)
    data = SceneDataset(8, size=32, seed=0, num_classes=3)
    tasks = [T.segmentation(4, hidden=4), T.depth(hidden=4), T.edges(hidden=4), T.normals(hidden=4)]
    return Problem.create(resnet_tiny(4), tasks, data, val_data=SceneDataset(4, size=32, seed=1, num_classes=3))


# --------------------------------------------------------------------------- Problem


def test_problem_create_traces_builds_heads_and_freezes(problem):
    assert problem.task_names == ("seg", "depth", "edges", "normals")
    assert problem.backbone.num_blocks == 9
    with pytest.raises(TypeError):
        problem.heads["seg"] = nn.Identity()  # type: ignore[index]
    with pytest.raises(AttributeError):
        problem.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"backbone": nn.Linear(2, 2)}, ConfigError, "backbone must be a traced mtgraph.Backbone, got Linear"),
        ({"tasks": {}}, ConfigError, "tasks must be a non-empty mapping"),
        ({"tasks": {"seg": "segmentation"}}, ConfigError, r"tasks\['seg'\] must be an mtgraph.tasks.Task, got str"),
        ({"heads": [nn.Identity()]}, ConfigError, "heads must be a mapping task name -> nn.Module, got list"),
        ({"train_data": [1, 2]}, ConfigError, "train_data must be a map-style torch Dataset or a DataLoader, got list"),
        ({"train_data": SceneDataset(0, size=32)}, DataError, "train_data is empty"),
        ({"val_data": "val"}, ConfigError, "val_data must be a map-style torch Dataset or a DataLoader, got str"),
        ({"seed": -1}, ConfigError, "seed must be an int >= 0, got -1"),
        ({"seed": True}, ConfigError, "seed must be an int >= 0, got True"),
        ({"device": "gpu7"}, ConfigError, "device must name a torch device"),
        ({"rescale": 3}, ConfigError, "rescale must be a callable"),
    ],
)
def test_problem_refuses_bad_fields_with_typed_errors(problem, change, error, message):
    fields = {
        "backbone": problem.backbone, "heads": dict(problem.heads), "tasks": dict(problem.tasks),
        "train_data": problem.train_data, "val_data": problem.val_data, "seed": 0,
    }
    fields.update(change)
    with pytest.raises(error, match=message):
        Problem(**fields)


def test_problem_names_missing_and_unknown_heads(problem):
    heads = dict(problem.heads)
    del heads["depth"]
    with pytest.raises(ConfigError, match=r"no head for tasks \['depth'\]"):
        Problem(problem.backbone, heads, problem.tasks, problem.train_data)
    with pytest.raises(ConfigError, match=r"heads were given for tasks \['pose'\] that are not in tasks"):
        Problem(problem.backbone, {**problem.heads, "pose": nn.Identity()}, problem.tasks, problem.train_data)


def test_problem_pickles_and_changes_only_its_seed(problem):
    again = pickle.loads(pickle.dumps(problem.with_seed(4)))
    assert again.seed == 4 and problem.seed == 0
    assert again.task_names == problem.task_names and again.backbone.num_blocks == problem.backbone.num_blocks


def test_reference_costs_are_those_of_stn_and_one_net(problem):
    costs = problem.reference_costs
    for build, gmac, params in ((mtgraph.stn, costs.stn_gmac, costs.stn_params),
                                (mtgraph.one_net, costs.one_net_gmac, costs.one_net_params)):
        graph = build(9, problem.task_names)
        report = mtgraph.cost(graph, mtgraph.ParamStore.create(graph, problem.backbone, problem.heads))
        assert (report.gmac, report.total_params) == (gmac, params)
    assert costs.stn_gmac > costs.one_net_gmac


# --------------------------------------------------------------------------- Budget


def test_budget_resolves_absolute_and_relative_values(problem):
    costs = problem.reference_costs
    assert Budget.gmac(0.7, relative_to="one_net").resolve(problem) == pytest.approx(0.7 * costs.one_net_gmac, rel=1e-12)
    assert Budget.params(2, relative_to="stn").resolve(problem) == 2 * costs.stn_params
    halfway = Budget.params(0.5, relative_to="one_net..stn").resolve(problem)
    assert halfway == costs.one_net_params + 0.5 * (costs.stn_params - costs.one_net_params)
    assert Budget.gmac(1.25).resolve(problem) == 1.25


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("flops", 1.0), "Budget.measure must be one of"),
        (("gmac", 0.0), "Budget.value must be a finite number > 0, got 0"),
        (("gmac", float("nan")), "Budget.value must be a finite number > 0"),
        (("params", 1.5, "one_net..stn"), r"fraction in \[0, 1\]"),
        (("params", 1.0, "two_nets"), "Budget.relative_to must be None or one of"),
    ],
)
def test_budget_refuses_bad_values(args, message):
    with pytest.raises(ConfigError, match=message):
        Budget(*args)


def test_budget_below_the_cheapest_network_is_a_budget_error(problem):
    with pytest.raises(BudgetError, match=r"is below the cheapest network this strategy can build \(5e\+06\)"):
        Budget.params(0.5, relative_to="one_net").check_reachable(problem, cheapest=5e6)


# --------------------------------------------------------------------------- registry


def test_registry_lists_the_five_strategies_by_name():
    strategies = registry()
    assert list(strategies) == ["mtsl", "affinity", "adashare", "grouping", "smtl"]
    for name, strategy in strategies.items():
        assert isinstance(strategy, Strategy) and strategy.name == name
        assert strategy.search_space and strategy.paper
    with pytest.raises(TypeError):
        strategies["mine"] = strategies["mtsl"]  # type: ignore[index]


def test_an_unknown_strategy_name_is_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match="unknown strategy 'importlib'; choose one of mtsl, affinity"):
        get_strategy("importlib")


# --------------------------------------------------------------------------- random trees


def test_tree_macs_equals_the_cost_of_the_built_network(problem):
    tree = random_tree(problem, random.Random(3))
    graph, params = replay(problem, "stn", tree_pipeline(problem, tree))
    assert mtgraph.cost(graph, params).total_macs == tree_macs(problem, tree)
    assert tree_from_graph(problem, graph) == tree


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_random_trees_hit_the_target_gmac_within_five_percent(problem, fraction):
    costs = problem.reference_costs
    target = costs.one_net_gmac + fraction * (costs.stn_gmac - costs.one_net_gmac)
    rng = random.Random(0)
    drawn = []
    for _ in range(5):
        tree = random_tree(problem, rng, target, exclude=drawn)
        drawn.append(tree)
        graph, params = replay(problem, "stn", tree_pipeline(problem, tree))
        assert abs(mtgraph.cost(graph, params).gmac - target) <= 0.05 * target
    assert len(set(drawn)) == 5


def test_an_unreachable_tree_target_is_a_budget_error(problem):
    below_one_net = 0.5 * problem.reference_costs.one_net_gmac
    with pytest.raises(BudgetError, match="no random tree within ±5% of"):
        random_tree(problem, random.Random(0), below_one_net, attempts=200)


def test_mtsl_samples_random_trees_and_rebuilds_learned_ones_from_stn(problem):
    mtsl = get_strategy("mtsl")
    budget = Budget.gmac(0.5, relative_to="one_net..stn")
    arch = mtsl.sample_random(problem, random.Random(1), budget)
    target = budget.resolve(problem)
    assert abs(mtgraph.cost(arch.graph, arch.params).gmac - target) <= 0.05 * target
    assert arch.start == "stn" and replay(problem, "stn", arch.pipeline)[0] == arch.graph
    with pytest.raises(ConfigError, match="random trees are matched in GMac"):
        mtsl.sample_random(problem, random.Random(1), Budget.params(1.0, relative_to="one_net"))

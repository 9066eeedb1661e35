"""Bad Safe MTL input fails early with a typed error naming the offending values."""

from __future__ import annotations

import pytest
import torch
from backbones import make_heads

import mtgraph
from mtgraph import Budget, ConfigError
from mtgraph import tasks as T
from mtgraph.data import SceneDataset
from mtgraph.errors import BudgetError
from mtgraph.strategies.smtl import SMTLConfig, SMTLStrategy, build_smtl, learn_smtl, safety, train_reference

TASKS = ("a", "b")


def problem_of(backbone: mtgraph.Backbone, heads: dict[str, torch.nn.Module]) -> mtgraph.Problem:
    """A Problem over these backbone and heads for building (the tasks' losses and data are never used)."""
    return mtgraph.Problem(backbone, heads, {t: T.regression(name=t) for t in heads}, SceneDataset(1, size=32))


@pytest.fixture(scope="module")
def setup(traced):
    _, _, backbone = traced("resnet_basic")
    return backbone, make_heads(backbone.output_shape, TASKS)


@pytest.mark.parametrize(
    ("alpha", "message"),
    [
        (1.5, "must be a number in [0, 1], got 1.5"),
        (-0.1, "must be a number in [0, 1], got -0.1"),
        (float("nan"), "must be a finite number, got nan"),
        (True, "must be a finite number, got True"),
        ("0.5", "must be a finite number, got '0.5'"),
    ],
)
def test_initial_alpha_outside_unit_interval_is_refused(alpha, message):
    with pytest.raises(ConfigError) as info:
        SMTLConfig(alpha=alpha)
    assert str(info.value) == f"SMTLConfig.alpha {message}"


@pytest.mark.parametrize(
    ("start", "end", "shown"),
    [(0, 9, "start=0..end=9"), (7, None, "start=7..end=4"), (5, 5, "start=5..end=5")],
)
def test_gate_range_outside_the_backbone_names_the_range_and_the_blocks(setup, start, end, shown):
    backbone, heads = setup
    with pytest.raises(ConfigError) as info:
        build_smtl(problem_of(backbone, heads), SMTLConfig(start=start, end=end))
    assert str(info.value) == (
        f"SMTLConfig: the gated block range {shown} is outside the backbone, which has blocks 0..4"
    )


def test_empty_range_and_decoder_gates_before_the_last_block_are_refused(setup):
    backbone, heads = setup
    with pytest.raises(ConfigError, match=r"start=3\.\.end=1 is empty"):
        SMTLConfig(start=3, end=1)
    with pytest.raises(ConfigError, match=r"variant 'lite_c' gates after the decoders.*last block 4; got end=2"):
        build_smtl(problem_of(backbone, heads), SMTLConfig(variant="lite_c", end=2))


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"variant": "soft"}, r"variant must be one of \['smtl', 'lite', 'smtl_c', 'lite_c'\], got 'soft'"),
        ({"tau": 0}, r"tau must be a number > 0, got 0"),
        ({"start": -1}, r"start must be an integer >= 0, got -1"),
        ({"epochs": 1.5}, r"epochs must be an integer, got 1.5"),
        ({"gate_lr": -1.0}, r"gate_lr must be a number > 0, got -1.0"),
        ({"private_init": "random"}, r"private_init must be one of \['fresh', 'copy'\], got 'random'"),
        ({"learn_alpha": 1}, r"learn_alpha must be True or False, got 1"),
        ({"formulation": "trilevel"}, r"formulation must be one of \['single', 'bilevel'\], got 'trilevel'"),
        ({"gate_fraction": 1.0}, r"gate_fraction must be a number in \(0, 1\), got 1.0"),
        ({"formulation": "bilevel", "learn_alpha": False}, r"with learn_alpha=False there is nothing to learn"),
        ({"device": "gpu7"}, r"SMTLConfig.device must name a torch device such as 'cpu' or 'cuda:0', got 'gpu7'"),
    ],
)
def test_bad_options_name_the_option_and_value(options, pattern):
    with pytest.raises(ConfigError, match=pattern):
        SMTLConfig(**options)


def test_bad_strategy_inputs(setup):
    backbone, heads = setup
    problem = problem_of(backbone, heads)
    strategy = SMTLStrategy()
    with pytest.raises(ConfigError, match="config must be an SMTLConfig, got dict"):
        strategy.learn(problem, {"variant": "lite"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Safe MTL has no cost budget"):
        strategy.learn(problem, SMTLConfig(), Budget.gmac(1.0, relative_to="one_net"))
    with pytest.raises(ConfigError, match=r"reference kind must be one of \['stn', 'one_net'\], got 'dmtl'"):
        train_reference("dmtl", problem)
    with pytest.raises(ConfigError, match="problem must be an mtgraph.Problem, got Backbone"):
        train_reference("stn", backbone)  # type: ignore[arg-type]
    # The wrapper kept for one release checks its inputs through Problem.
    data = SceneDataset(2, size=32)
    with pytest.raises(ConfigError, match=r"no head for tasks \['b'\]"):
        learn_smtl(backbone, {"a": heads["a"]}, {t: T.regression(name=t) for t in TASKS}, data)
    with pytest.raises(ConfigError, match=r"tasks\['a'\] must be an mtgraph.tasks.Task, got object"):
        learn_smtl(backbone, heads, {"a": object(), "b": object()}, data)


def test_bilevel_needs_two_samples_to_split(setup):
    backbone, heads = setup
    problem = problem_of(backbone, heads)  # one training sample
    with pytest.raises(ConfigError, match=r"holds out gate_fraction=0.2 of the 1 training samples"):
        SMTLStrategy().learn(problem, SMTLConfig(formulation="bilevel", epochs=1))


def test_random_draws_at_an_unreachable_budget_say_what_is_reachable(setup):
    import random

    backbone, heads = setup
    problem = problem_of(backbone, heads)
    with pytest.raises(BudgetError, match=r"every soft Safe MTL network \(smtl, blocks \(0, 4\)\) costs .* not within ±5%"):
        SMTLStrategy().sample_random(problem, random.Random(0), Budget.gmac(1.0, relative_to="one_net"))
    with pytest.raises(BudgetError, match=r"no lite Safe MTL network is within ±5% .* 0 private: .*, 1 private: "):
        SMTLStrategy().sample_random(problem, random.Random(0), Budget.gmac(0.5, relative_to="one_net"),
                                     config=SMTLConfig(variant="lite"))


def test_safety_refuses_undefined_comparisons():
    up = {"t": {"m": True}}
    with pytest.raises(ConfigError, match=r"single-task t\.m is 0"):
        safety({"t": {"m": 1.0}}, {"t": {"m": 0.0}}, up)
    with pytest.raises(ConfigError, match=r"multi-task results of 't' lack metric 'm'"):
        safety({"t": {}}, {"t": {"m": 1.0}}, up)
    with pytest.raises(ConfigError, match=r"no direction \(higher_is_better\) for t\.m"):
        safety({"t": {"m": 1.0}}, {"t": {"m": 1.0}}, {"t": {}})
    with pytest.raises(ConfigError, match="tolerance must be a finite number >= 0, got -0.1"):
        safety({"t": {"m": 1.0}}, {"t": {"m": 1.0}}, up, tolerance=-0.1)

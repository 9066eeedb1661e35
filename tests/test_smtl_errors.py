"""Bad Safe MTL input fails early with a typed error naming the offending values."""

from __future__ import annotations

import pytest
import torch
from backbones import make_heads

from mtgraph import ConfigError
from mtgraph.strategies.smtl import SMTLConfig, build_smtl, learn_smtl, safety, train_reference

TASKS = ("a", "b")


@pytest.fixture(scope="module")
def setup(traced):
    _, _, backbone = traced("resnet_basic")
    return backbone, make_heads(backbone.output_shape, TASKS)


@pytest.mark.parametrize("alpha", [1.5, -0.1, float("nan"), True, "0.5"])
def test_initial_alpha_outside_unit_interval_is_refused(alpha):
    with pytest.raises(ConfigError) as info:
        SMTLConfig(alpha=alpha)
    assert str(info.value) == f"SMTLConfig.alpha (the initial P(public) of every gate) must be in [0, 1], got {alpha!r}"


@pytest.mark.parametrize(
    ("start", "end", "shown"),
    [(0, 9, "start=0..end=9"), (7, None, "start=7..end=4"), (5, 5, "start=5..end=5")],
)
def test_gate_range_outside_the_backbone_names_the_range_and_the_blocks(setup, start, end, shown):
    backbone, heads = setup
    with pytest.raises(ConfigError) as info:
        build_smtl(backbone, heads, TASKS, SMTLConfig(start=start, end=end))
    assert str(info.value) == (
        f"SMTLConfig: the gated block range {shown} is outside the backbone, which has blocks 0..4"
    )


def test_empty_range_and_decoder_gates_before_the_last_block_are_refused(setup):
    backbone, heads = setup
    with pytest.raises(ConfigError, match=r"start=3\.\.end=1 is empty"):
        SMTLConfig(start=3, end=1)
    with pytest.raises(ConfigError, match=r"variant 'lite_c' gates after the decoders.*last block 4; got end=2"):
        build_smtl(backbone, heads, TASKS, SMTLConfig(variant="lite_c", end=2))


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"variant": "soft"}, r"variant must be one of \['smtl', 'lite', 'smtl_c', 'lite_c'\], got 'soft'"),
        ({"tau": 0}, r"tau must be > 0, got 0"),
        ({"start": -1}, r"start must be >= 0, got -1"),
        ({"epochs": 1.5}, r"epochs must be a finite integer, got 1.5"),
        ({"gate_lr": -1.0}, r"gate_lr must be > 0, got -1.0"),
        ({"private_init": "random"}, r"private_init must be one of \['fresh', 'copy'\], got 'random'"),
        ({"learn_alpha": 1}, r"learn_alpha must be True or False, got 1"),
    ],
)
def test_bad_options_name_the_option_and_value(options, pattern):
    with pytest.raises(ConfigError, match=pattern):
        SMTLConfig(**options)


def test_bad_strategy_inputs(setup):
    backbone, heads = setup
    data = torch.utils.data.TensorDataset(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ConfigError, match=r"no head for tasks \['b'\]"):
        learn_smtl(backbone, {"a": heads["a"]}, {"a": object(), "b": object()}, data)
    with pytest.raises(ConfigError, match="backbone must be a traced mtgraph.Backbone, got Linear"):
        learn_smtl(torch.nn.Linear(2, 2), heads, {"a": object()}, data)
    with pytest.raises(ConfigError, match="config must be an SMTLConfig, got dict"):
        learn_smtl(backbone, heads, {"a": object()}, data, config={"variant": "lite"})
    with pytest.raises(ConfigError, match=r"reference kind must be one of \['stn', 'one_net'\], got 'dmtl'"):
        train_reference("dmtl", backbone, heads, {"a": object()}, data)


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

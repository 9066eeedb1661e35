"""Width scaling: ResNetTiny at a float multiplier, ModelSpec.rescaled, and the One-Net matched to a target GMac."""

from __future__ import annotations

import pickle

import pytest
import torch

import mtgraph
from mtgraph.errors import ConfigError
from mtgraph.evaluation.width import match_width, one_net_gmac
from mtgraph.spec import ModelSpec, TaskSpec
from mtgraph.workflow import scene_problem
from mtgraph.zoo import ResNetTiny, _relative_macs, scaled_model, scaled_widths

TOLERANCE = 0.05


@pytest.fixture(scope="module")
def problem():
    return scene_problem(("seg", "depth", "edges", "normals", "autoencoder"), size=32, width=4, num_train=4,
                         num_val=4)


def test_scaled_widths_keep_integer_multiples_exact_and_track_the_cost_between() -> None:
    assert scaled_widths(4, 1.0) == (4, 8, 16, 32)
    assert scaled_widths(4, 2.0) == (8, 16, 32, 64)
    assert scaled_widths(8, 0.5) == (4, 8, 16, 32)
    for multiplier in (0.7, 0.93, 1.1, 1.27, 1.6, 2.4):
        ideal = _relative_macs([multiplier * 4 * 2**k for k in range(4)])
        # Rounding each stage down or up (16 combinations) lands within 3 % of the ideal widths' cost here.
        assert abs(_relative_macs(scaled_widths(4, multiplier)) / ideal - 1) < 0.03, multiplier
    with pytest.raises(ConfigError, match="width multiplier must be a finite number > 0"):
        scaled_widths(4, 0.0)


def test_resnet_tiny_takes_per_stage_widths() -> None:
    model = ResNetTiny(widths=(3, 7, 13, 25))
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 25, 4, 4)
    with pytest.raises(ConfigError, match="four positive integers"):
        ResNetTiny(widths=(3, 7, 13))
    with pytest.raises(ConfigError, match="cannot be width-scaled"):
        scaled_model("torchvision:resnet18", 2.0)


def test_spec_rescaled_at_one_rebuilds_the_same_weights_and_pickles() -> None:
    spec = ModelSpec("resnet_tiny_w4", (3, 32, 32), (TaskSpec("depth", "depth"), TaskSpec("seg", "segmentation")))
    backbone, heads = spec.rescaled(1.0)
    reference = spec.build_backbone()
    for ours, theirs in zip(backbone.blocks, reference.blocks):
        for a, b in zip(ours.module.state_dict().values(), theirs.module.state_dict().values()):
            assert torch.equal(a, b)
    assert list(heads) == ["depth", "seg"]
    again = pickle.loads(pickle.dumps(spec.rescaled))   # a Problem's rescale crosses process boundaries
    assert again(2.0)[0].output_shape[0] == 64
    assert not ModelSpec("torchvision:resnet18", (3, 32, 32), ()).rescalable


@pytest.mark.parametrize("fraction", [0.1, 0.45, 0.85])
def test_match_width_reaches_every_target_between_one_net_and_stn(problem, fraction: float) -> None:
    costs = problem.reference_costs
    target = costs.one_net_gmac + fraction * (costs.stn_gmac - costs.one_net_gmac)
    match = match_width(problem, target, tolerance=TOLERANCE)
    assert match.within and match.note == ""
    assert abs(match.gmac - target) <= TOLERANCE * target
    assert match.gmac == pytest.approx(one_net_gmac(problem, match.multiplier), rel=1e-12)   # recorded, not guessed
    assert match.multiplier > 1.0


def test_match_width_says_when_the_target_cannot_be_reached(problem) -> None:
    target = problem.reference_costs.one_net_gmac * 1e-4   # below a One-Net of one channel per stage
    match = match_width(problem, target, tolerance=TOLERANCE)
    assert not match.within
    assert match.gmac is not None and match.gmac > target * (1 + TOLERANCE)
    assert "no width multiplier gives a One-Net within ±5%" in match.note


def test_match_width_without_rescale_is_reported_not_raised() -> None:
    problem = mtgraph.toy_problem(("seg", "depth"))
    match = match_width(problem, 0.001)
    assert (match.multiplier, match.gmac, match.within) == (None, None, False)
    assert "has no rescale" in match.note

"""Random trees of the affinity strategy's own search space: branching only after its locations, at a GMac ±5 %."""

from __future__ import annotations

import random

import pytest
import torch

import mtgraph
from mtgraph import Budget, Problem
from mtgraph import tasks as T
from mtgraph.data import SceneDataset
from mtgraph.errors import BudgetError, ConfigError
from mtgraph.strategies import get_strategy, replay
from mtgraph.strategies.affinity import AffinityConfig, resolve_locations, split_points
from mtgraph.strategies.random_trees import random_tree, tree_from_graph
from mtgraph.zoo import resnet_tiny


@pytest.fixture(scope="module")
def problem() -> Problem:
    torch.manual_seed(0)
    data = SceneDataset(8, size=32, seed=0, num_classes=3)
    tasks = [T.segmentation(4, hidden=4), T.depth(hidden=4), T.edges(hidden=4), T.normals(hidden=4)]
    return Problem.create(resnet_tiny(4), tasks, data)


def _first_split(tree) -> int | None:
    return next((b for b, groups in enumerate(tree) if len(groups) > 1), None)


# Trees of this space cost One-Net + k/13 of the way to the STN, k = 0..9 (4 tasks, root shared, 3 split points):
# targets near a reachable cost; the learned tree's own GMac, the protocol's target, is always reachable.
@pytest.mark.parametrize("fraction", [0.15, 0.4, 0.6])
def test_random_trees_hit_the_gmac_and_branch_only_after_the_stages(problem, fraction):
    strategy = get_strategy("affinity")
    budget = Budget.gmac(fraction, relative_to="one_net..stn")
    target = budget.resolve(problem)
    locations = resolve_locations(problem.backbone, "stages")  # (2, 4, 6, 8): after layer1..layer4
    allowed = set(split_points(locations, root_shared=True))  # {3, 5, 7}
    assert allowed == {3, 5, 7}
    splits = set()
    for seed in range(3):
        arch = strategy.sample_random(problem, random.Random(seed), budget)
        assert abs(mtgraph.cost(arch.graph, arch.params).gmac - target) <= 0.05 * target
        assert arch.start == "stn" and replay(problem, "stn", arch.pipeline)[0] == arch.graph
        tree = tree_from_graph(problem, arch.graph)
        assert len(tree[0]) == 1 and tree[0] == tree[1] == tree[2]  # stem and layer1: the shared root
        for b in range(1, len(tree)):
            if tree[b] != tree[b - 1]:
                splits.add(b)
                assert b in allowed, f"seed {seed}: the tree branches at block {b}, not after a location"
        assert arch.details["locations"] == list(locations)
    assert splits, "no draw branched at all"


def test_every_block_sampler_would_branch_elsewhere(problem):
    """The restriction is what keeps the draws in the space: unrestricted trees branch at other blocks."""
    rng = random.Random(0)
    firsts = {_first_split(random_tree(problem, rng)) for _ in range(40)}
    assert firsts - {3, 5, 7, None}


def test_sample_random_follows_the_given_locations(problem):
    config = AffinityConfig(locations=(1, 5, 8), root_shared=False)
    rng = random.Random(3)
    seen = set()
    for _ in range(6):
        tree = tree_from_graph(problem, get_strategy("affinity").sample_random(problem, rng, config=config).graph)
        seen |= {b for b in range(1, len(tree)) if tree[b] != tree[b - 1]}
        seen |= {0} if len(tree[0]) > 1 else set()
    assert seen <= {0, 2, 6} and len(seen) >= 2


def test_sample_random_refuses_a_parameter_budget(problem):
    with pytest.raises(ConfigError, match=r"random trees are matched in GMac.*give Budget.gmac"):
        get_strategy("affinity").sample_random(problem, random.Random(0), Budget.params(0.5, relative_to="one_net..stn"))


def test_a_gmac_the_space_cannot_reach_is_a_budget_error(problem):
    # The root (stem and layer1) is shared, so even the most split tree stays well below the STN's GMac.
    with pytest.raises(BudgetError, match="no random tree within ±5%"):
        random_tree(problem, random.Random(0), problem.reference_costs.stn_gmac, attempts=300,
                    split_points=split_points(resolve_locations(problem.backbone, "stages"), root_shared=True))

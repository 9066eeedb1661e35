"""The strategies on an encoder-decoder: a U-Net whose decoder levels carry the encoder's skip features.

Each strategy runs end to end through the front door (``registry()[name].learn``)
with a tiny configuration; its result must be a valid architecture of the
U-Net that compiles, costs what FlopCounterMode measures and, where the
strategy records one, is rebuilt by its pipeline.
"""

from __future__ import annotations

import pytest
import torch
from backbones import unet4
from torch.utils.flop_counter import FlopCounterMode

import mtgraph
from mtgraph import Problem
from mtgraph import tasks as T
from mtgraph.data import SceneDataset
from mtgraph.ir import Block, Skip
from mtgraph.strategies import StrategyResult, registry, replay
from mtgraph.strategies.adashare import gated_blocks
from mtgraph.strategies.affinity import AffinityConfig
from mtgraph.strategies.result import Heatmap

DECODER = {5, 6, 7, 8}  # up2, up3, up4, outc: levels 5..8 carry one to three skip features


@pytest.fixture(scope="module")
def problem() -> Problem:
    model, _ = unet4()
    data = SceneDataset(8, size=32, seed=0, num_classes=3)
    # Running statistics of the data (not the test backbone's random ones): eval-mode features keep varying
    # across images down the decoder, which the similarity probes need.
    images = torch.stack([data[i][0] for i in range(len(data))])
    model.train()
    with torch.no_grad():
        for _ in range(30):
            model(images)
    model.eval()
    tasks = [T.segmentation(4, hidden=4), T.depth(hidden=4), T.edges(hidden=4)]
    torch.manual_seed(0)
    return Problem.create(model, tasks, data, val_data=SceneDataset(8, size=32, seed=1, num_classes=3))


def _check_architecture(problem: Problem, result: StrategyResult, start: str | None = None) -> None:
    graph, params = result.graph, result.params
    mtgraph.verify(graph, signature=problem.backbone.signature, weight_keys=set(params.keys()))
    net = mtgraph.compile(graph, params).eval()
    x = problem.train_dataset[0][0].unsqueeze(0)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        out = net(x)
    assert mtgraph.cost(graph, params).total_macs == counter.get_total_flops() // 2
    assert set(out) == set(problem.task_names) and all(v.shape[-2:] == (32, 32) for v in out.values())
    if result.pipeline:
        assert replay(problem, start or result.start, result.pipeline)[0] == graph


def test_the_unet_problem_has_decoder_levels_carrying_skip_features(problem) -> None:
    table = problem.backbone.signature
    assert problem.backbone.num_blocks == 9
    assert all(len(table.level(b)) > 1 for b in (2, 3, 4, 5, 6, 7))


def test_mtsl_learns_on_the_unet_with_decisions_at_decoder_blocks(problem) -> None:
    strategy = registry()["mtsl"]
    result = strategy.learn(problem, strategy.config_for(problem, 1.0))
    # MTSL's fuse pipeline starts from the single-task networks (its result on main says "one_net").
    _check_architecture(problem, result, start="stn")
    blocks = {d.data["block"] for d in result.decisions if isinstance(d.data, dict) and "block" in d.data}
    assert blocks & DECODER, blocks  # task nodes were compared (CKA of the block's own map) inside the decoder


def test_affinity_probes_every_block_of_the_unet_and_learns_a_tree(problem) -> None:
    config = AffinityConfig(locations="all", stn_epochs=0.5, epochs=0.5, batch_size=8, probe_images=8)
    result = registry()["affinity"].learn(problem, config)
    _check_architecture(problem, result)
    heatmaps = [f for f in result.figures.values() if isinstance(f, Heatmap)]
    assert len(heatmaps) == problem.backbone.num_blocks  # one RSA affinity matrix per location, decoder included


def test_grouping_learns_on_the_unet(problem) -> None:
    strategy = registry()["grouping"]
    result = strategy.learn(problem, strategy.config_for(problem, 1.0))
    _check_architecture(problem, result)


def test_safe_mtl_gates_multi_tensor_values_on_the_unet(problem) -> None:
    strategy = registry()["smtl"]
    result = strategy.learn(problem, strategy.config_for(problem, 1.0))
    _check_architecture(problem, result)


@pytest.mark.slow
def test_adashare_gates_only_the_blocks_whose_skip_is_defined(problem) -> None:
    gated, kept = gated_blocks(problem.backbone)
    assert gated == (4, 8)  # down4..up1 keeps its value's shapes; outc is the identity; the rest change shapes
    assert any("only the identity skip is defined at a multi-tensor boundary" in d.reason for d in kept)
    strategy = registry()["adashare"]
    result = strategy.learn(problem, strategy.config_for(problem, 1.0))
    _check_architecture(problem, result)
    assert {n.block for n in result.graph.nodes if isinstance(n, Skip)} <= {4, 8}
    assert {n.block for n in result.graph.nodes if isinstance(n, Block)} >= set(range(9)) - {4, 8}

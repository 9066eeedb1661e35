"""The RSA probe of the affinity strategy (papers/001 §3.1): features of the STN at block outputs → A[d, i, j]."""

from __future__ import annotations

import pytest
import torch
from backbones import make_heads
from torch.utils.data import TensorDataset

from mtgraph.analysis.similarity import rsa_affinity
from mtgraph.errors import ConfigError
from mtgraph.ir import group_key, stn
from mtgraph.params import ParamStore
from mtgraph.strategies.affinity import AffinityConfig, probe_affinity, probe_images

TASKS = ("S", "E", "D")


def _perturb(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))


@pytest.fixture
def network(traced):
    """The STN over resnet_basic (5 blocks) where S and E are identical and D differs at every block."""
    _, x, backbone = traced("resnet_basic")
    graph = stn(backbone.num_blocks, TASKS)
    params = ParamStore.create(graph, backbone, make_heads(backbone.output_shape, TASKS))
    for b in range(backbone.num_blocks):
        _perturb(params[group_key(b, ["D"], TASKS)], seed=b)
    images = torch.randn((12, *x.shape[1:]), generator=torch.Generator().manual_seed(7))
    return backbone, graph, params, images


def test_identical_single_task_networks_have_affinity_one_everywhere(network):
    backbone, graph, params, images = network
    probe = probe_affinity(graph, params, images)
    assert probe.locations == tuple(range(backbone.num_blocks))
    assert probe.affinity.shape == (backbone.num_blocks, 3, 3)
    s, e, d = (TASKS.index(t) for t in ("S", "E", "D"))
    for loc in range(backbone.num_blocks):
        assert float(probe.affinity[loc, s, e]) == pytest.approx(1.0, abs=1e-12)
        assert float(probe.affinity[loc, s, d]) < 0.999
    assert torch.equal(probe.affinity, probe.affinity.transpose(1, 2))
    assert torch.all(torch.diagonal(probe.affinity, dim1=1, dim2=2) == 1)


def test_probe_reads_the_output_of_each_probed_block(network):
    backbone, graph, params, images = network
    probe = probe_affinity(graph, params, images, locations=(1, 3))
    assert probe.locations == (1, 3)
    assert probe.block_names == (backbone.blocks[1].name, backbone.blocks[3].name)
    # Run every task's chain of blocks by hand and compare.
    expected = []
    with torch.no_grad():
        features = {t: images for t in TASKS}
        per_block = []
        for b in range(backbone.num_blocks):
            for t in TASKS:
                module = params[group_key(b, [t], TASKS)].eval()
                features[t] = module(features[t])
            per_block.append(dict(features))
    for b in (1, 3):
        expected.append(rsa_affinity(per_block[b])[1])
    assert torch.allclose(probe.affinity, torch.stack(expected), atol=1e-10)


def test_affinity_does_not_depend_on_the_probe_batch_size(network):
    _, graph, params, images = network
    whole = probe_affinity(graph, params, images, batch_size=64)
    chunked = probe_affinity(graph, params, images, batch_size=5)
    assert torch.allclose(whole.affinity, chunked.affinity, atol=1e-10)


def test_heatmaps_and_mean_affinity(network):
    _, graph, params, images = network
    probe = probe_affinity(graph, params, images, locations=(0, 4))
    maps = probe.heatmaps()
    assert list(maps) == [f"RSA affinity at {probe.label(0)}", f"RSA affinity at {probe.label(1)}"]
    labels, matrix = maps[f"RSA affinity at {probe.label(1)}"]
    assert labels == TASKS and matrix == probe.affinity[1].tolist()
    off = probe.affinity[1][~torch.eye(3, dtype=torch.bool)].mean()
    assert probe.mean_affinity()[1] == pytest.approx(float(off))


@pytest.mark.parametrize("k", [0, 1, 2])
def test_fewer_than_three_probe_images_is_an_error(network, k):
    _, graph, params, images = network
    with pytest.raises(ConfigError, match=r"K >= 3"):
        probe_affinity(graph, params, images[:k])
    with pytest.raises(ConfigError, match=r"K >= 3"):
        probe_images(images, k)
    with pytest.raises(ConfigError, match=r"AffinityConfig.probe_images must be an integer >= 3"):
        AffinityConfig(probe_images=k)


@pytest.mark.parametrize(
    ("locations", "message"),
    [
        ((5,), r"not block indices.*0\.\.4"),
        ((3, 1), "strictly increasing"),
        ((), "at least one block"),
        ("all", "block indices, got the string"),
    ],
)
def test_bad_locations_are_refused(network, locations, message):
    _, graph, params, images = network
    with pytest.raises(ConfigError, match=message):
        probe_affinity(graph, params, images, locations=locations)


def test_probe_images_from_a_dataset(network):
    _, _, _, images = network
    data = TensorDataset(images, torch.zeros(len(images)))
    assert torch.equal(probe_images(data, 5), images[:5])
    with pytest.raises(ConfigError, match=r"needs 20 images but the probe data holds only 12"):
        probe_images(data, 20)

"""The RSA probe of branched multi-task networks (papers/001 §3.1, Algorithm 1).

Given trained single-task networks (the STN graph, where every task has its
own copy of every block) and K probe images, the probe records each task's
features at D candidate locations — the outputs of chosen blocks on the
task's own path — and turns them into the affinity tensor
``A[d, i, j]``: the Spearman correlation between the upper triangles of
tasks i's and j's representation dissimilarity matrices at location d
(:func:`mtgraph.analysis.similarity.rsa_affinity`).

Features are collected in one pass of the compiled network over the K
images (in chunks of ``batch_size``), with forward hooks on the modules the
task paths call at the probed blocks, in eval mode and without gradients.
Each image's feature map is flattened whole (C·H·W values), as the paper
does; nothing is pooled.

Nothing here trains or searches: the result is a value
(:class:`AffinityProbe`) that the tree search and the report consume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from mtgraph.analysis.macs import evaluation_mode
from mtgraph.analysis.similarity import rsa_affinity
from mtgraph.compile import compile as compile_graph
from mtgraph.errors import ConfigError
from mtgraph.frontend import primary
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block
from mtgraph.params import ParamStore

__all__ = ["AffinityProbe", "MIN_PROBE_IMAGES", "probe_affinity", "probe_images"]

#: RSA ranks image pairs: with fewer than 3 images an RDM has a single pair and no order.
MIN_PROBE_IMAGES = 3


@dataclass(frozen=True, eq=False)
class AffinityProbe:
    """The RSA affinity tensor of N tasks at D locations.

    Attributes:
        tasks: task names, the order of the affinity's rows and columns.
        locations: the probed block indices (location ``d`` is the output of
            block ``locations[d]``), increasing.
        block_names: the backbone's name of each probed block.
        affinity: float64 tensor ``[D, N, N]``, symmetric per location with
            ones on the diagonal (Spearman correlations in ``[-1, 1]``).
        num_images: K, the number of probe images.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> from mtgraph.strategies.affinity import probe_affinity
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.randn(2, 3, 8, 8))
        >>> graph = mtgraph.stn(backbone.num_blocks, ("a", "b"))  # two equal single-task networks
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"a": nn.Conv2d(4, 1, 1), "b": nn.Conv2d(4, 1, 1)})
        >>> probe = probe_affinity(graph, params, torch.randn(6, 3, 8, 8))
        >>> probe.label(1), list(probe.heatmaps())[0]
        ('block 1 (1)', 'RSA affinity at block 0 (0)')
        >>> [round(a, 6) for a in probe.mean_affinity()]  # equal networks: affinity 1 everywhere
        [1.0, 1.0]
    """

    tasks: tuple[str, ...]
    locations: tuple[int, ...]
    block_names: tuple[str, ...]
    affinity: torch.Tensor
    num_images: int

    def label(self, d: int) -> str:
        """A readable name of location ``d``: ``"block 3 (layer2.0)"``."""
        return f"block {self.locations[d]} ({self.block_names[d]})"

    def heatmaps(self) -> dict[str, tuple[tuple[str, ...], list[list[float]]]]:
        """One ``(labels, N×N matrix)`` per location, keyed ``"RSA affinity at block b (name)"``.

        This is the ``name -> (labels, matrix)`` form the report draws as heatmaps.
        """
        return {
            f"RSA affinity at {self.label(d)}": (self.tasks, self.affinity[d].tolist())
            for d in range(len(self.locations))
        }

    def mean_affinity(self) -> tuple[float, ...]:
        """Mean off-diagonal affinity at each location (NaN when there is a single task)."""
        n = len(self.tasks)
        if n < 2:
            return tuple(float("nan") for _ in self.locations)
        off = ~torch.eye(n, dtype=torch.bool)
        return tuple(float(self.affinity[d][off].mean()) for d in range(len(self.locations)))


def probe_images(data: torch.Tensor | Dataset | DataLoader, count: int) -> torch.Tensor:
    """The first ``count`` images of ``data`` stacked into one ``[K, C, H, W]`` tensor.

    ``data`` is an image tensor, a map-style Dataset of ``(image, targets)``
    or a DataLoader yielding ``(images, targets)`` batches.

    Args:
        data: where the images come from.
        count: K, the number of images (at least :data:`MIN_PROBE_IMAGES`).

    Returns:
        The ``[K, C, H, W]`` images.

    Raises:
        ConfigError: ``count`` below 3, ``data`` holding fewer images, or data of an unsupported kind.

    Examples:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from mtgraph.strategies.affinity import probe_images
        >>> images = torch.randn(10, 3, 8, 8)
        >>> probe_images(TensorDataset(images, torch.zeros(10)), 4).shape
        torch.Size([4, 3, 8, 8])
        >>> probe_images(images, 2)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: the RSA probe needs K >= 3 images (an RDM of K images has ...), got K=2
    """
    _check_count(count)
    if isinstance(data, torch.Tensor):
        if data.ndim < 2:
            raise ConfigError(f"probe images must be a tensor [K, ...], got shape {list(data.shape)}")
        images = data
    elif isinstance(data, DataLoader):
        chunks: list[torch.Tensor] = []
        have = 0
        for batch in data:
            chunk = _images_of(batch)
            chunks.append(chunk)
            have += chunk.shape[0]
            if have >= count:
                break
        if not chunks:
            raise ConfigError("the probe data loader yields no batches")
        images = torch.cat(chunks)
    elif isinstance(data, Dataset):
        try:
            size = len(data)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ConfigError("probe data must be a sized (map-style) Dataset") from exc
        if size < count:
            raise ConfigError(
                f"the RSA probe needs {count} images but the probe data holds only {size}; "
                "lower probe_images or give more held-out data"
            )
        images = torch.stack([_images_of(data[i], single=True) for i in range(count)])
    else:
        raise ConfigError(f"probe data must be a tensor, Dataset or DataLoader, got {type(data).__name__}")
    if images.shape[0] < count:
        raise ConfigError(
            f"the RSA probe needs {count} images but the probe data holds only {images.shape[0]}; "
            "lower probe_images or give more held-out data"
        )
    return images[:count]


def _images_of(item: Any, single: bool = False) -> torch.Tensor:
    """The image part of a dataset item or batch: ``(image, targets)`` or a bare tensor."""
    image = item[0] if isinstance(item, (tuple, list)) else item
    if not isinstance(image, torch.Tensor):
        what = "dataset item" if single else "batch"
        raise ConfigError(f"each {what} must be (image, targets) with a tensor image, got {type(image).__name__}")
    return image


def _check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int):
        raise ConfigError(f"the number of probe images must be an integer, got {count!r}")
    if count < MIN_PROBE_IMAGES:
        raise ConfigError(
            f"the RSA probe needs K >= {MIN_PROBE_IMAGES} images (an RDM of K images has K(K-1)/2 pairs to rank; "
            f"K={count} gives {max(count * (count - 1) // 2, 0)}), got K={count}"
        )


def _resolve_locations(params: ParamStore, locations: Sequence[int] | None) -> tuple[int, ...]:
    num_blocks = params.backbone.num_blocks
    if locations is None:
        return tuple(range(num_blocks))
    if isinstance(locations, (str, bytes)):
        raise ConfigError(f"locations must be block indices, got the string {locations!r}")
    chosen = tuple(locations)
    if not chosen:
        raise ConfigError("locations must name at least one block")
    bad = [b for b in chosen if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < num_blocks]
    if bad:
        raise ConfigError(f"locations {bad} are not block indices of this backbone (blocks 0..{num_blocks - 1})")
    if any(b >= c for b, c in zip(chosen, chosen[1:])):
        raise ConfigError(f"locations must be strictly increasing block indices, got {list(chosen)}")
    return chosen


def _probed_modules(graph: MTGraph, params: ParamStore, locations: tuple[int, ...]) -> dict[tuple[int, str], str]:
    """``(block, task) -> weight key`` of the Block node on the task's path at each probed block."""
    keys: dict[tuple[int, str], str] = {}
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if isinstance(node, Block):
            calls[node.weights] = calls.get(node.weights, 0) + 1
    for task in graph.tasks:
        blocks = [graph.nodes[i] for i in graph.path(task)]
        on_path = {n.block: n for n in blocks if isinstance(n, Block)}
        for b in locations:
            site = on_path.get(b)
            if site is None:
                raise ConfigError(
                    f"task {task!r} does not run block {b} ({params.backbone.blocks[b].name}) in this graph "
                    "(it skips it); the RSA probe needs every task's own output of every probed block"
                )
            if calls[site.weights] != 1:
                # A hook on a module called from several sites would see several outputs.
                raise ConfigError(
                    f"weights {site.weights!r} of block {b} are called from {calls[site.weights]} sites; "
                    "the RSA probe needs one call site per weight key (probe the single-task graph)"
                )
            keys[(b, task)] = site.weights
    return keys


def probe_affinity(
    graph: MTGraph,
    params: ParamStore,
    images: torch.Tensor,
    *,
    locations: Sequence[int] | None = None,
    batch_size: int = 64,
) -> AffinityProbe:
    """Measure the RSA task affinity of ``graph`` at the outputs of the blocks ``locations``.

    Args:
        graph: the single-task networks (``mtgraph.ir.stn(num_blocks, tasks)``)
            or any graph in which every task has its own call of every probed
            block (tasks that share a node get affinity 1 there, trivially).
        params: its trained weights.
        images: the K held-out probe images ``[K, C, H, W]`` (see :func:`probe_images`).
        locations: probed block indices, strictly increasing (default: every block).
        batch_size: images per forward pass (memory only; results do not depend on it).

    Returns:
        An :class:`AffinityProbe` with the ``[D, N, N]`` affinity tensor.

    Raises:
        ConfigError: K < 3, bad locations, a task without its own call of a
            probed block, or a task whose RDM is constant at some location.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> from mtgraph.strategies.affinity import probe_affinity
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.randn(2, 3, 8, 8))
        >>> graph = mtgraph.stn(backbone.num_blocks, ("a", "b"))  # two equal single-task networks
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"a": nn.Conv2d(4, 1, 1), "b": nn.Conv2d(4, 1, 1)})
        >>> probe = probe_affinity(graph, params, torch.randn(6, 3, 8, 8))
        >>> probe.tasks, probe.locations, probe.affinity.shape
        (('a', 'b'), (0, 1), torch.Size([2, 2, 2]))
        >>> round(float(probe.affinity[0, 0, 1]), 6)
        1.0
    """
    if not isinstance(images, torch.Tensor) or images.ndim < 2:
        raise ConfigError("probe images must be a tensor [K, C, H, W]; use probe_images(data, K) to collect them")
    _check_count(int(images.shape[0]))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    chosen = _resolve_locations(params, locations)
    keys = _probed_modules(graph, params, chosen)
    module = compile_graph(graph, params)
    device = next((p.device for p in module.parameters()), torch.device("cpu"))

    captured: dict[tuple[int, str], list[torch.Tensor]] = {site: [] for site in keys}
    handles = []
    # One weight key may serve several (block, task) sites when tasks share a node.
    sites_of: dict[str, list[tuple[int, str]]] = {}
    for site, key in keys.items():
        sites_of.setdefault(key, []).append(site)
    for key, sites in sites_of.items():

        def record(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor, sites: list = sites) -> None:
            output = primary(output)  # a multi-tensor value: the block's own feature map, not the skips
            flat = output.detach().reshape(output.shape[0], -1).to("cpu", torch.float64)
            for site in sites:
                captured[site].append(flat)

        handles.append(params[key].register_forward_hook(record))
    try:
        with evaluation_mode(module), torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                module(images[start : start + batch_size].to(device))
    finally:
        for handle in handles:
            handle.remove()

    tasks = graph.tasks
    matrices = []
    for b in chosen:
        features = {task: torch.cat(captured[(b, task)]) for task in tasks}
        try:
            _names, matrix = rsa_affinity(features)
        except ConfigError as exc:
            raise ConfigError(f"RSA at block {b} ({params.backbone.blocks[b].name}): {exc}") from exc
        matrices.append(matrix)
    return AffinityProbe(
        tasks=tasks,
        locations=chosen,
        block_names=tuple(params.backbone.blocks[b].name for b in chosen),
        affinity=torch.stack(matrices),
        num_images=int(images.shape[0]),
    )

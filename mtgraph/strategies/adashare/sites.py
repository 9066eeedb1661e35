"""BatchNorm statistics per call site (DESIGN.md "Weights vs call sites").

After AdaShare's policies diverge, one block's weights are called from several
IR nodes with different inputs. Sharing the affine parameters is the point of
AdaShare; sharing the BatchNorm *running statistics* is not: a single set of
buffers ends up holding a mixture of every site's input distribution, and the
network collapses in eval mode (notes/methods-001-002.md §B.4: Δ_MTL about
−60% instead of about +1%).

The statistics live in the :class:`~mtgraph.ParamStore` as *site modules*
(:meth:`~mtgraph.ParamStore.with_site_statistics`): copies of a block that
share its parameters and own their running statistics, keyed by the call
site's id. :func:`~mtgraph.compile` calls them, and ``save``, checkpoints and
ONNX export carry them, so a result is deployed with the statistics it was
evaluated with. This module re-estimates them:

* :func:`recalibrate` resets every BatchNorm buffer of a compiled network and
  re-estimates it in one pass over calibration batches (cumulative average,
  ``momentum=None``), each site on its own inputs; run it after training, on
  training data.
* :func:`shared_bn_sites` counts the call sites that need their own statistics.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.fx as fx
from torch import nn

from mtgraph.errors import ConfigError
from mtgraph.ir.graph import MTGraph
from mtgraph.params import ParamStore, running_statistics, weight_call_sites

__all__ = ["recalibrate", "shared_bn_sites"]

_BN = nn.modules.batchnorm._BatchNorm


def shared_bn_sites(graph: MTGraph, params: ParamStore) -> int:
    """How many call sites of ``graph`` reuse an earlier site's weights with BatchNorm statistics (0 = no problem).

    Args:
        graph: the network.
        params: its weights (decides which keys hold BatchNorm statistics).

    Returns:
        The number of extra call sites that need their own statistics.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.strategies.adashare import gated_blocks, harden_policy, shared_bn_sites
        >>> backbone = mtgraph.trace(resnet_tiny(width=4), torch.randn(2, 3, 32, 32))
        >>> gated, _ = gated_blocks(backbone)  # blocks 1..8
        >>> heads = {"seg": torch.nn.Identity(), "depth": torch.nn.Identity()}
        >>> decisions = torch.ones(2, 8, dtype=torch.bool)
        >>> shared_bn_sites(*harden_policy(backbone, heads, ["seg", "depth"], gated, decisions)[:2])
        0
        >>> decisions[1, 6] = False  # depth skips block 7: b7 and b8 are each called from two sites
        >>> shared_bn_sites(*harden_policy(backbone, heads, ["seg", "depth"], gated, decisions)[:2])
        2
    """
    return sum(len(sites) - 1 for key, sites in weight_call_sites(graph).items() if running_statistics(params[key]))


@torch.no_grad()
def recalibrate(module: fx.GraphModule, batches: Iterable[torch.Tensor], *, max_batches: int | None = None) -> int:
    """Re-estimate every BatchNorm's running statistics from ``batches`` of input images.

    Each BatchNorm (one per call site when the store has site modules,
    :meth:`~mtgraph.ParamStore.with_site_statistics`) is reset and
    accumulates a cumulative average over the batches it sees
    (``momentum=None``). Everything else runs in eval mode (a Gumbel gate
    takes its argmax decision, dropout is off); parameters do not change, and
    the module's train flags and momenta are restored. Returns the number of
    batches used.

    Args:
        module: the compiled network (:func:`mtgraph.compile`).
        batches: input image batches (training data).
        max_batches: use at most this many batches (None: all).

    Returns:
        The number of batches used.

    Raises:
        ConfigError: no batch was given.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.strategies.adashare import recalibrate
        >>> backbone = mtgraph.trace(resnet_tiny(width=4), torch.randn(2, 3, 32, 32))
        >>> graph = mtgraph.one_net(backbone.num_blocks, ["seg"])
        >>> module = mtgraph.compile(graph, mtgraph.ParamStore.create(graph, backbone, {"seg": torch.nn.Identity()}))
        >>> recalibrate(module, [torch.randn(2, 3, 32, 32) for _ in range(3)], max_batches=2)
        2
        >>> recalibrate(module, [])
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: BatchNorm recalibration needs at least one batch of calibration images
    """
    # A compiled module holds only what its graph calls, so these are every call site's BatchNorms, each once.
    unique = [m for m in module.modules() if isinstance(m, _BN)]
    momenta = [bn.momentum for bn in unique]
    flags = {m: m.training for m in module.modules()}
    for bn in unique:
        bn.reset_running_stats()
        bn.momentum = None
    used = 0
    try:
        module.eval()
        for bn in unique:
            bn.train()
        for x in batches:
            if max_batches is not None and used >= max_batches:
                break
            module(x)
            used += 1
    finally:
        for bn, momentum in zip(unique, momenta):
            bn.momentum = momentum
        for m, flag in flags.items():
            m.training = flag
    if used == 0:
        raise ConfigError("BatchNorm recalibration needs at least one batch of calibration images")
    return used

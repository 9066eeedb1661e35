"""BatchNorm statistics per call site (DESIGN.md "Weights vs call sites").

After AdaShare's policies diverge, one block's weights are called from several
IR nodes with different inputs. Sharing the affine parameters is the point of
AdaShare; sharing the BatchNorm *running statistics* is not: a single set of
buffers ends up holding a mixture of every site's input distribution, and the
network collapses in eval mode (notes/methods-001-002.md §B.4: Δ_MTL about
−60% instead of about +1%).

The IR keeps one weight key per block (two nodes share parameters iff they
name the same key), so per-site statistics cannot live in the
:class:`~mtgraph.ParamStore`, which holds one module per key. They live in a
:class:`SiteStatistics` value instead, keyed by IR node id:

* :func:`site_module` compiles ``graph`` and gives every call site whose
  BatchNorm buffers are already used by an earlier site its own copy of those
  buffers (parameters and every other tensor stay shared: training it trains
  the store). A projection shortcut (``skip`` of a downsampling block) shares
  its BatchNorm with the block's full call, so it is a separate site too.
* :func:`recalibrate` resets every BatchNorm buffer and re-estimates it in one
  pass over calibration batches (cumulative average, ``momentum=None``), each
  site on its own inputs; run it after training, on training data.
* :func:`site_statistics` / :func:`load_site_statistics` move the buffers out
  of and back into a site module, so a result can carry them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from mtgraph.compile import compile as compile_graph
from mtgraph.errors import ConfigError
from mtgraph.ir.graph import MTGraph
from mtgraph.params import ParamStore

__all__ = ["SiteStatistics", "site_module", "recalibrate", "site_statistics", "load_site_statistics", "shared_bn_sites"]

_BN = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class SiteStatistics:
    """BatchNorm buffers of every call site: ``{fx node name: {buffer name: tensor}}``.

    fx node names of a compiled graph are deterministic for a given IR graph,
    so the statistics are reusable with :func:`site_module` of the same graph.
    ``calibration_batches`` records how they were estimated.
    """

    buffers: Mapping[str, Mapping[str, torch.Tensor]] = field(default_factory=dict)
    calibration_batches: int = 0


def _bn_buffers(module: nn.Module) -> Iterator[torch.Tensor]:
    for sub in module.modules():
        if isinstance(sub, _BN):
            yield from (b for b in sub.buffers() if b is not None)


def _clone_with_own_bn(module: nn.Module) -> nn.Module:
    """A copy of ``module`` sharing every parameter and non-BatchNorm buffer, with fresh BatchNorm buffers."""
    memo: dict[int, object] = {id(p): p for p in module.parameters()}
    bn_ids = {id(b) for b in _bn_buffers(module)}
    for b in module.buffers():
        if id(b) not in bn_ids:
            memo[id(b)] = b
    return copy.deepcopy(module, memo)


def site_module(
    graph: MTGraph,
    params: ParamStore,
    statistics: SiteStatistics | None = None,
    *,
    copy_all: bool = False,
) -> fx.GraphModule:
    """Compile ``graph`` with BatchNorm buffers per call site (parameters stay shared with ``params``).

    The first call site of a set of BatchNorm buffers keeps the store's own
    buffers and every later one gets a copy; with ``copy_all`` every site gets
    a copy, so nothing done to the result's statistics touches ``params``.
    With ``statistics`` the buffers are then loaded from it (see
    :func:`site_statistics`).
    """
    compiled = compile_graph(graph, params)
    claimed: set[int] = set()
    for node in list(compiled.graph.nodes):
        if node.op != "call_module":
            continue
        target = str(node.target)
        module = compiled.get_submodule(target)
        buffers = {id(b) for b in _bn_buffers(module)}
        if not buffers:
            continue
        if copy_all or buffers & claimed:
            clone = _clone_with_own_bn(module)
            name = f"{target}__site_{node.name}"
            compiled.add_submodule(name, clone)
            node.target = name
            buffers = {id(b) for b in _bn_buffers(clone)}
        claimed |= buffers
    # A store module whose every call site got a copy is no longer called: drop it, so
    # that nothing done to the site module (eval(), train()) reaches the store's modules.
    compiled.delete_all_unused_submodules()
    compiled.recompile()
    if statistics is not None:
        load_site_statistics(compiled, statistics)
    return compiled


def shared_bn_sites(graph: MTGraph, params: ParamStore) -> int:
    """How many call sites of ``graph`` would share BatchNorm buffers with an earlier site (0 = no problem)."""
    compiled = compile_graph(graph, params)
    claimed: set[int] = set()
    shared = 0
    for node in compiled.graph.nodes:
        if node.op != "call_module":
            continue
        buffers = {id(b) for b in _bn_buffers(compiled.get_submodule(str(node.target)))}
        shared += bool(buffers & claimed)
        claimed |= buffers
    return shared


def _site_bns(module: fx.GraphModule) -> Iterator[tuple[str, str, _BN]]:
    for node in module.graph.nodes:
        if node.op == "call_module":
            for name, sub in module.get_submodule(str(node.target)).named_modules():
                if isinstance(sub, _BN):
                    yield node.name, name, sub


@torch.no_grad()
def recalibrate(module: fx.GraphModule, batches: Iterable[torch.Tensor], *, max_batches: int | None = None) -> int:
    """Re-estimate every BatchNorm's running statistics from ``batches`` of input images.

    Each BatchNorm (one per call site after :func:`site_module`) is reset and
    accumulates a cumulative average over the batches it sees
    (``momentum=None``). Everything else runs in eval mode (a Gumbel gate
    takes its argmax decision, dropout is off); parameters do not change, and
    the module's train flags and momenta are restored. Returns the number of
    batches used.

    Raises:
        ConfigError: no batch was given.
    """
    bns = [bn for _, _, bn in _site_bns(module)]
    unique = list({id(bn): bn for bn in bns}.values())
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


def site_statistics(module: fx.GraphModule, calibration_batches: int = 0) -> SiteStatistics:
    """Copy every call site's BatchNorm buffers out of a :func:`site_module`."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for site, name, bn in _site_bns(module):
        for buf_name, buf in bn.named_buffers(recurse=False):
            if buf is not None:
                out.setdefault(site, {})[f"{name}.{buf_name}" if name else buf_name] = buf.detach().clone()
    return SiteStatistics(buffers=out, calibration_batches=calibration_batches)


@torch.no_grad()
def load_site_statistics(module: fx.GraphModule, statistics: SiteStatistics) -> None:
    """Copy :class:`SiteStatistics` into a :func:`site_module` of the same graph.

    Raises:
        ConfigError: a site or buffer is missing, or shapes differ.
    """
    seen: set[str] = set()
    for site, name, bn in _site_bns(module):
        if site not in statistics.buffers:
            raise ConfigError(f"no BatchNorm statistics for call site {site!r}; they belong to a different graph")
        stored = statistics.buffers[site]
        for buf_name, buf in bn.named_buffers(recurse=False):
            if buf is None:
                continue
            full = f"{name}.{buf_name}" if name else buf_name
            if full not in stored or tuple(stored[full].shape) != tuple(buf.shape):
                raise ConfigError(f"call site {site!r}: BatchNorm buffer {full!r} is missing or has another shape")
            buf.copy_(stored[full])
        seen.add(site)
    extra = sorted(set(statistics.buffers) - seen)
    if extra:
        raise ConfigError(f"BatchNorm statistics for unknown call sites {extra[:5]}; they belong to a different graph")

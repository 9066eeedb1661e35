"""The :class:`ParamStore`: weight key -> module, made from a traced backbone and task heads."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from mtgraph.analysis.macs import evaluation_mode
from mtgraph.errors import HeadError
from mtgraph.frontend.backbone import Backbone
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block, Gate, Skip, head_weights
from mtgraph.ir.signature import BackboneSignature
from mtgraph.ir.sites import call_site_ids
from mtgraph.modules import MemberHead

__all__ = ["ParamStore", "check_heads", "SiteKey", "running_statistics", "weight_call_sites"]

SiteKey = tuple[str, str]
"""A call site of a weight key: ``(weight key, site id)`` (see :mod:`mtgraph.ir.sites`)."""

_RUNNING_STATS = nn.modules.batchnorm._NormBase


def running_statistics(module: nn.Module) -> dict[str, torch.Tensor]:
    """The running-statistics buffers of every normalisation layer in ``module``, by buffer name.

    These are what depend on a call site's input distribution (BatchNorm,
    SyncBatchNorm, InstanceNorm with ``track_running_stats``); parameters and
    any other buffer do not.
    """
    out: dict[str, torch.Tensor] = {}
    for prefix, sub in module.named_modules():
        if isinstance(sub, _RUNNING_STATS):
            for name, buffer in sub.named_buffers(recurse=False):
                if buffer is not None:
                    out[f"{prefix}.{name}" if prefix else name] = buffer
    return out


def weight_call_sites(graph: MTGraph) -> dict[str, tuple[str, ...]]:
    """Each weight key of ``graph`` -> the distinct site ids calling it (blocks, weighted skips, gates, heads)."""
    ids = call_site_ids(graph)
    out: dict[str, list[str]] = {}
    for i, node in enumerate(graph.nodes):
        key = getattr(node, "weights", None)  # a Head's is head_weights(task); an identity Skip has none
        if key is not None:
            sites = out.setdefault(key, [])
            if ids[i] not in sites:
                sites.append(ids[i])
    return {key: tuple(sites) for key, sites in out.items()}


def _copy_with_own_statistics(module: nn.Module) -> nn.Module:
    """A copy of ``module`` sharing every parameter and buffer except its running statistics, which are cloned."""
    own = {id(b) for b in running_statistics(module).values()}
    memo: dict[int, object] = {id(p): p for p in module.parameters()}
    memo.update({id(b): b for b in module.buffers() if id(b) not in own})
    return copy.deepcopy(module, memo)


def _first_layer_width(head: nn.Module) -> str:
    for module in head.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return f"{module.in_channels} input channels"
        if isinstance(module, nn.Linear):
            return f"{module.in_features} input features"
    return "a different input"


def _output_text(backbone: Backbone) -> str:
    value = backbone.signature.output
    parts = [f"[N, {', '.join(map(str, t.shape))}]" for t in value]
    if len(parts) == 1:
        return parts[0]
    named = ", ".join(f"{name} {part}" for name, part in zip(backbone.output_members, parts))
    return f"a tuple of {len(parts)} tensors ({named})"


def _check_member_head(task: str, head: MemberHead, backbone: Backbone) -> None:
    names = backbone.output_members
    if backbone.output_arity == 1:
        raise HeadError(
            f"the head of task {task!r} reads output member {head.index} ({head.name or 'unnamed'}), but the backbone "
            "returns one tensor; pass the head itself"
        )
    if head.index >= len(names):
        raise HeadError(
            f"the head of task {task!r} reads output member {head.index}, but the backbone returns {len(names)} "
            f"tensors {list(names)}"
        )
    if head.name and names[head.index] != head.name:
        raise HeadError(
            f"the head of task {task!r} was made for output member {head.name!r} (index {head.index}), but this "
            f"backbone's member {head.index} is {names[head.index]!r}; its outputs are {list(names)} "
            "(make it with backbone.member_head(name, head))"
        )


def check_heads(heads: Mapping[str, nn.Module], backbone: Backbone, tasks: tuple[str, ...] | None = None) -> None:
    """Check that ``heads`` has a module per task and each accepts the backbone's output.

    A backbone returning several tensors gives each head the tuple of them,
    or one of them through a :class:`~mtgraph.MemberHead`.

    Raises HeadError naming the task and both shapes, naming a member head
    whose member the backbone does not have, or naming a head that writes
    into its input while other heads read the same value.
    """
    if not isinstance(heads, Mapping):
        raise HeadError(f"heads must be a mapping task name -> nn.Module, got {type(heads).__name__}")
    if tasks is not None:
        missing = [t for t in tasks if t not in heads]
        if missing:
            raise HeadError(f"no head given for tasks {missing}; heads were given for {list(heads)}")
    checked = [t for t in heads if tasks is None or t in tasks]
    value = backbone.signature.output
    for task in checked:
        head = heads[task]
        if not isinstance(head, nn.Module):
            raise HeadError(f"the head of task {task!r} must be an nn.Module, got {type(head).__name__}")
        if isinstance(head, MemberHead):
            _check_member_head(task, head, backbone)
        tensors = [torch.zeros((1, *t.shape), dtype=backbone.input_dtype) for t in value]
        probe = tensors[0] if len(tensors) == 1 else tuple(tensors)
        versions = [t._version for t in tensors]
        with evaluation_mode(head):
            try:
                head(probe)
            except Exception as exc:
                raise HeadError(
                    f"the head of task {task!r} does not fit the backbone: the backbone outputs "
                    f"{_output_text(backbone)} but the head expects "
                    f"{_first_layer_width(head)} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                ) from exc
        if any(t._version != v for t, v in zip(tensors, versions)) and len(checked) > 1:
            # All heads read the same backbone output in a shared network: one writing into it changes the others'.
            raise HeadError(
                f"the head of task {task!r} modifies its input in place (for example nn.ReLU(inplace=True) as its "
                "first layer); several heads read the same backbone output, so make that first operation "
                "out of place (inplace=False)"
            )


class ParamStore:
    """Modules keyed by weight key, plus the signature table of the Backbone they were copied from.

    A ParamStore is used as a value: passes return a new store (via
    :meth:`updated`) that shares the unchanged modules with the old one.
    Modules are never the user's own: blocks and heads are copied in.

    **Call sites.** A weight key called from several IR nodes with different
    inputs (AdaShare after its policies diverge) shares its parameters across
    those nodes by definition, but its BatchNorm running statistics describe
    one input distribution. A store can therefore hold *site modules*: for a
    ``(key, site id)`` (:func:`~mtgraph.ir.sites.call_site_ids`), a copy of
    the key's module that shares every parameter and buffer with it except
    its running statistics. :func:`~mtgraph.compile` calls the site module at
    that node, so training trains the shared parameters and the site's own
    statistics; saving, checkpoints and ONNX export carry them. Site modules
    are made by :meth:`with_site_statistics`. A site id names what flows into
    the node, so a rewrite that changes a node's ancestry drops its site
    statistics (:meth:`restricted`) and the node falls back to the key's own.

    Args:
        backbone: the traced backbone the block modules were copied from.
        modules: weight key -> module (use :meth:`create` to make them).
        sites: ``(key, site id)`` -> site module; entries of unknown keys are dropped.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> graph = mtgraph.stn(backbone.num_blocks, ["seg", "depth"])
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"seg": nn.Conv2d(4, 2, 1), "depth": nn.Conv2d(4, 1, 1)})
        >>> params
        ParamStore(6 keys: b0.seg, b0.depth, b1.seg, b1.depth, head.seg, head.depth)
        >>> params["b0.seg"] is params["b0.depth"]  # one copy of the block per task
        False
        >>> params.restricted(mtgraph.stn(backbone.num_blocks, ["seg"]))
        ParamStore(3 keys: b0.seg, b1.seg, head.seg)
    """

    def __init__(
        self,
        backbone: Backbone,
        modules: Mapping[str, nn.Module],
        sites: Mapping[SiteKey, nn.Module] | None = None,
    ) -> None:
        #: The traced backbone. Kept for code that still reads it; passes, verify, cost and compile
        #: read :attr:`signature` and :meth:`fresh_block` instead, and never touch this attribute.
        self.backbone = backbone
        #: The block signature table of the backbone the blocks were copied from.
        self.signature: BackboneSignature = backbone.signature
        # The traced blocks, the originals fresh_block copies (kept apart from the Backbone value).
        self._prototypes: tuple[nn.Module, ...] = tuple(b.module for b in backbone.blocks)
        self._modules: dict[str, nn.Module] = dict(modules)
        self._sites: dict[SiteKey, nn.Module] = {k: m for k, m in (sites or {}).items() if k[0] in self._modules}

    @classmethod
    def create(
        cls,
        graph: MTGraph,
        backbone: Backbone,
        heads: Mapping[str, nn.Module],
        gates: Mapping[str, nn.Module] | None = None,
    ) -> ParamStore:
        """Fresh modules for every key of ``graph``: block copies, head copies and the given gates.

        Block instances whose keys share a suffix (``b1.S``, ``b3.S``) are
        copied together, so weights tied across blocks of the backbone stay
        tied inside each copy.

        Args:
            graph: the architecture whose keys need modules.
            backbone: the traced backbone whose blocks are copied.
            heads: task -> head module (copied); each must accept the backbone's output.
            gates: gate weight key -> gate module (used as is), for graphs with gates.

        Returns:
            A new store with a module for every key of ``graph``.

        Raises:
            HeadError: a task has no head, a head does not fit the backbone's
                output or writes into its input, or a gate module is missing.
        """
        check_heads(heads, backbone, graph.tasks)
        modules: dict[str, nn.Module] = {}
        memos: dict[str, dict[int, object]] = {}
        gates = dict(gates or {})
        for node in graph.nodes:
            key = getattr(node, "weights", None)
            if key is None or key in modules:
                continue
            if isinstance(node, (Block, Skip)):
                memo = memos.setdefault(key.partition(".")[2], {})
                modules[key] = copy.deepcopy(backbone.blocks[node.block].module, memo)
            elif isinstance(node, Gate):
                if key not in gates:
                    raise HeadError(f"gate weights {key!r} of task {node.task!r} were not given")
                modules[key] = gates[key]
        for task in graph.tasks:
            modules[head_weights(task)] = copy.deepcopy(heads[task])
        return cls(backbone, modules)

    def fresh_block(self, block: int, memo: dict[int, object] | None = None) -> nn.Module:
        """A new copy of traced block ``block`` with the backbone's own (for example pretrained) weights.

        Args:
            block: the block index.
            memo: a ``copy.deepcopy`` memo; copies made with one memo keep
                weights tied across blocks tied among themselves.

        Returns:
            A deep copy of the traced block's module.

        Raises:
            IndexError: ``block`` is not a block of the backbone.

        Examples:
            >>> import torch, mtgraph
            >>> from torch import nn
            >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
            >>> graph = mtgraph.one_net(2, ["seg"])
            >>> params = mtgraph.ParamStore.create(graph, backbone, {"seg": nn.Conv2d(4, 2, 1)})
            >>> fresh = params.fresh_block(0)
            >>> fresh is params["b0.seg"], torch.equal(fresh.get_submodule("0").weight, params["b0.seg"].get_submodule("0").weight)
            (False, True)
        """
        if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < self.signature.num_blocks:
            raise IndexError(f"block {block!r} is not a block of the backbone, which has blocks 0..{self.signature.num_blocks - 1}")
        return copy.deepcopy(self._prototypes[block], memo if memo is not None else {})

    def __getitem__(self, key: str) -> nn.Module:
        try:
            return self._modules[key]
        except KeyError:
            raise KeyError(f"weight key {key!r} is not in the ParamStore; keys: {sorted(self._modules)}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._modules

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)

    def keys(self) -> list[str]:
        """The weight keys, in insertion order."""
        return list(self._modules)

    def items(self) -> list[tuple[str, nn.Module]]:
        """(key, module) pairs, in insertion order."""
        return list(self._modules.items())

    def updated(self, add: Mapping[str, nn.Module] | None = None, drop: tuple[str, ...] | list[str] = ()) -> ParamStore:
        """A new store with ``add`` inserted (replacing same keys) and ``drop`` removed.

        Site modules of a replaced or dropped key are dropped: they share the
        old module's parameters.
        """
        add = dict(add or {})
        gone = set(drop) | set(add)
        modules = {k: m for k, m in self._modules.items() if k not in set(drop)}
        modules.update(add)
        sites = {k: m for k, m in self._sites.items() if k[0] not in gone}
        return self._derived(modules, sites)

    def _derived(self, modules: Mapping[str, nn.Module], sites: Mapping[SiteKey, nn.Module]) -> ParamStore:
        """A store over the same backbone with other modules (what every rewrite returns)."""
        store = object.__new__(ParamStore)
        store.__dict__.update(self.__dict__)
        store._modules = dict(modules)
        store._sites = {k: m for k, m in sites.items() if k[0] in store._modules}
        return store

    def restricted(self, graph: MTGraph) -> ParamStore:
        """A new store with only the keys and call sites ``graph`` uses (what ``dce`` keeps)."""
        used = set(graph.weight_keys()) | {head_weights(t) for t in graph.tasks}
        calls = weight_call_sites(graph) if self._sites else {}
        sites = {k: m for k, m in self._sites.items() if k[1] in calls.get(k[0], ())}
        return self._derived({k: m for k, m in self._modules.items() if k in used}, sites)

    # -- call sites ---------------------------------------------------------

    def module_at(self, key: str, site: str) -> nn.Module:
        """The module to call for weight key ``key`` at call site ``site``: its site module, else the key's own."""
        site_module = self._sites.get((key, site))
        return site_module if site_module is not None else self[key]

    def site_items(self) -> list[tuple[SiteKey, nn.Module]]:
        """((key, site id), site module) pairs, in insertion order."""
        return list(self._sites.items())

    def with_site_statistics(self, graph: MTGraph, *, every_site: bool = False) -> ParamStore:
        """A new store in which call sites of ``graph`` get their own running statistics.

        Every weight key called from two or more distinct sites gets a site
        module per site (``every_site``: every called key, so that nothing done
        to the new store's statistics touches this store's). Each new site
        module starts from a copy of the statistics the site uses now (its
        existing site module's, else the key's own) and shares parameters and
        every other buffer with the key's module. Re-estimate them with
        :func:`mtgraph.strategies.adashare.recalibrate` (or by training).
        """
        sites = dict(self._sites)
        for key, calls in weight_call_sites(graph).items():
            if len(calls) < 2 and not every_site:
                continue
            if not running_statistics(self[key]):
                continue
            for site in calls:
                sites[(key, site)] = _copy_with_own_statistics(self.module_at(key, site))
        return self._derived(self._modules, sites)

    def add_site(self, key: str, site: str) -> nn.Module:
        """Give ``(key, site)`` a site module (a copy of the key's statistics) if it has none; return it.

        Used by loaders, which then copy saved statistics into it.
        """
        if (key, site) not in self._sites:
            self._sites[(key, site)] = _copy_with_own_statistics(self[key])
        return self._sites[(key, site)]

    def __repr__(self) -> str:
        sites = f", {len(self._sites)} site modules" if self._sites else ""
        return f"ParamStore({len(self)} keys: {', '.join(self._modules)}{sites})"

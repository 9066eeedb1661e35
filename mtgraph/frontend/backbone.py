"""The :class:`Backbone` value and :func:`trace`, the frontend's entry point."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Union

import torch
import torch.fx as fx
from torch import nn

from mtgraph.analysis.macs import count_macs, count_parameters, evaluation_mode, run_counted
from mtgraph.errors import HeadError, TraceError
from mtgraph.frontend.measure import GraphRun, MetaCall, dtype_name, run_graph
from mtgraph.frontend.partition import (
    DEFAULT_MAX_LIVE,
    CutPoint,
    _label,
    extract_subgraph,
    find_cut_points,
    guard_input,
    select_cuts,
)
from mtgraph.frontend.residual import find_shortcut, shortcut_module
from mtgraph.frontend.tracer import SCOPE_KEY, torch_message, trace_module
from mtgraph.ir.signature import (
    COMPUTED,
    INPUT_MEMBER,
    BackboneSignature,
    BlockSignature,
    Shortcut,
    TensorSignature,
    default_members,
)
from mtgraph.modules import MemberHead

__all__ = ["BlockInfo", "Backbone", "trace", "dtype_name", "Value", "members_of", "primary"]

Shape = tuple[int, ...]

#: A value at a block boundary at run time: the tensor itself, or a tuple of tensors at a multi-tensor boundary.
Value = Union[torch.Tensor, tuple[torch.Tensor, ...]]  # noqa: UP007 - a runtime alias must work on Python 3.10


def members_of(value: Any) -> tuple[torch.Tensor, ...]:
    """The member tensors of a run-time value: ``(value,)`` for a tensor, the tuple itself otherwise.

    Examples:
        >>> import torch
        >>> from mtgraph.frontend.backbone import members_of
        >>> len(members_of(torch.zeros(2))), len(members_of((torch.zeros(2), torch.ones(3))))
        (1, 2)
    """
    return (value,) if isinstance(value, torch.Tensor) else tuple(value)


def primary(value: Any) -> torch.Tensor:
    """The primary tensor of a run-time value: the value itself, or its last member.

    Members are in the order they were computed, so the last one is the
    feature map the block producing the value computed (the others are skip
    features carried from earlier blocks): what a similarity measure (CKA,
    RSA) or a feature transfer should read of a block's output.

    Examples:
        >>> import torch
        >>> from mtgraph.frontend import primary
        >>> skip, current = torch.zeros(1, 4, 8, 8), torch.ones(1, 8, 4, 4)
        >>> primary((skip, current)) is current, primary(current) is current
        (True, True)
    """
    return value if isinstance(value, torch.Tensor) else value[-1]


def _clone(value: Value) -> Value:
    return value.clone() if isinstance(value, torch.Tensor) else tuple(t.clone() for t in value)


@dataclass(frozen=True, eq=False)
class BlockInfo:
    """One block of a traced backbone: a GraphModule from one value to the next, and its signature.

    A value is one tensor, or a tuple of tensors at a multi-tensor boundary
    (see :mod:`mtgraph.ir.signature`). Shapes exclude the batch dimension
    (``in_shape`` and ``out_shape`` are the primary, last, member's);
    ``macs`` is per image (batch of one).
    Every number about the block lives in :attr:`signature` (a row of the
    block signature table, :class:`~mtgraph.ir.BlockSignature`); the
    attributes below read it.

    Attributes:
        index: position of the block in the chain.
        name: the module (or range of modules) the block covers, such as ``layer2.1``.
        module: the block as a GraphModule taking and returning one value.
        signature: the block's row of the signature table.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> conv = backbone.blocks[0]
        >>> conv.name, conv.in_shape, conv.out_shape, conv.macs, conv.params
        ('0', (3, 8, 8), (4, 6, 6), 3888, 112)
        >>> conv.skippable, backbone.blocks[1].skippable  # a ReLU keeps the shape: its shortcut is the identity
        (False, True)
    """

    index: int
    name: str
    module: fx.GraphModule
    signature: BlockSignature

    @property
    def in_shape(self) -> Shape:
        """Input shape without the batch dimension."""
        return self.signature.in_shape

    @property
    def out_shape(self) -> Shape:
        """Output shape without the batch dimension."""
        return self.signature.out_shape

    @property
    def macs(self) -> int:
        """Multiply-accumulates per image."""
        return self.signature.macs

    @property
    def params(self) -> int:
        """Parameter count of the block."""
        return self.signature.params

    @property
    def shortcut(self) -> Shortcut:
        """What running only the block's shortcut means (for ``Skip``)."""
        return self.signature.shortcut

    @property
    def skippable(self) -> bool:
        """True when the block can be bypassed by its shortcut (see :mod:`mtgraph.frontend.residual`)."""
        return self.shortcut.skippable

    def shortcut_of(self, module: nn.Module) -> fx.GraphModule | None:
        """The shortcut-only module of ``module`` (a copy of this block), None for the identity."""
        if not isinstance(module, fx.GraphModule):
            raise TraceError(f"block {self.index} ({self.name}): expected a copy of the traced block, got {type(module).__name__}")
        return shortcut_module(module, self.shortcut)


@dataclass(frozen=True, eq=False)
class Backbone:
    """A traced backbone: an ordered chain of blocks whose composition is the original forward.

    Made by :func:`trace`; iterating over it yields its :class:`BlockInfo` s.

    Attributes:
        blocks: the blocks in order.
        input_shape: shape of one input, without the batch dimension.
        input_dtype: dtype of the traced input.
        source: class name of the traced model.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> backbone = mtgraph.trace(model, torch.zeros(1, 3, 8, 8))
        >>> print(backbone.describe())
          #  block in                 out                     KMac     params  skip
          0  0     [3, 8, 8]          [4, 6, 6]               3.89        112  no
          1  1     [4, 6, 6]          [4, 6, 6]                  0          0  identity
        total: 3.89 KMac per image of input [3, 8, 8], 112 parameters, 2 blocks
        >>> x = torch.randn(2, 3, 8, 8)
        >>> torch.equal(backbone(x), model(x)), backbone.output_shape
        (True, (4, 6, 6))
    """

    blocks: tuple[BlockInfo, ...]
    input_shape: Shape
    input_dtype: torch.dtype
    source: str

    @property
    def num_blocks(self) -> int:
        """Number of blocks in the chain."""
        return len(self.blocks)

    @cached_property
    def signature(self) -> BackboneSignature:
        """The block signature table: what the IR, the passes and cost know of this backbone."""
        return BackboneSignature(
            blocks=tuple(b.signature for b in self.blocks),
            input=(TensorSignature(self.input_shape, dtype_name(self.input_dtype)),),
            source=self.source,
        )

    @property
    def output_shape(self) -> Shape:
        """Shape (without batch) of the backbone's output: its primary (last) tensor when it returns several."""
        return self.blocks[-1].out_shape

    @property
    def output_members(self) -> tuple[str, ...]:
        """Names of the output's tensors: one name, or one per tensor of a tuple or dict output (dict keys)."""
        return self.signature.output_members

    @property
    def output_arity(self) -> int:
        """How many tensors the backbone returns (and each head reads, unless it reads one member)."""
        return len(self.signature.output)

    def member_head(self, member: str | int, head: nn.Module) -> MemberHead:
        """``head`` reading only tensor ``member`` of the output (a name of :attr:`output_members`, or an index).

        Args:
            member: the output tensor's name (a dict key, or the block that computed it) or index.
            head: the head module; it receives that tensor.

        Returns:
            A :class:`~mtgraph.MemberHead` naming the member, so that a head
            built for one backbone cannot read another tensor of a different one.

        Raises:
            HeadError: the backbone returns one tensor, or ``member`` is not one of its outputs.

        Examples:
            >>> import torch, mtgraph
            >>> from torch import nn
            >>> class TwoScales(nn.Module):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.fine, self.coarse = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 8, 3, stride=2, padding=1)
            ...     def forward(self, x):
            ...         fine = self.fine(x)
            ...         return {"fine": fine, "coarse": self.coarse(fine)}
            >>> backbone = mtgraph.trace(TwoScales(), torch.zeros(1, 3, 8, 8))
            >>> backbone.output_members, backbone.output_arity
            (('fine', 'coarse'), 2)
            >>> head = backbone.member_head("fine", nn.Conv2d(4, 1, 1))
            >>> head.index, tuple(head(backbone(torch.zeros(2, 3, 8, 8))).shape)
            (0, (2, 1, 8, 8))
        """
        names = self.output_members
        if self.output_arity == 1:
            raise HeadError(f"the backbone returns one tensor ({names[0]}); pass the head itself, not a member head")
        if isinstance(member, bool) or not isinstance(member, (str, int)):
            raise HeadError(f"member must be an output name {list(names)} or an index, got {member!r}")
        if isinstance(member, int):
            if not 0 <= member < len(names):
                raise HeadError(f"member {member} is not an output index; the backbone returns {len(names)} tensors")
            return MemberHead(head, member, names[member])
        if member not in names:
            raise HeadError(f"member {member!r} is not an output of the backbone; its outputs are {list(names)}")
        return MemberHead(head, names.index(member), member)

    @property
    def macs(self) -> int:
        """MACs per image of the whole chain."""
        return sum(b.macs for b in self.blocks)

    @property
    def params(self) -> int:
        """Parameters of the whole chain, shared tensors counted once."""
        return count_parameters(b.module for b in self.blocks)

    def __iter__(self) -> Iterator[BlockInfo]:
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __call__(self, x: torch.Tensor) -> Value:
        """Run the chain of blocks on ``x`` (equals the original backbone's forward).

        A backbone returning several tensors (a tuple, a list or a dict)
        gives them as a tuple, in the order of :attr:`output_members`.
        """
        value: Value = x
        for block in self.blocks:
            value = block.module(value)
        return value

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A deterministic input of the traced shape and dtype."""
        generator = torch.Generator().manual_seed(0)
        if self.input_dtype.is_floating_point:
            return torch.randn((batch, *self.input_shape), generator=generator, dtype=self.input_dtype)
        return torch.zeros((batch, *self.input_shape), dtype=self.input_dtype)

    def describe(self) -> str:
        """A table of the blocks: name, shapes, MACs per image, parameters and whether each is skippable.

        The MAC column is in the unit its largest value needs (GMac, MMac,
        KMac), every cell with 3 significant digits.
        """
        from mtgraph.analysis.cost import format_macs, scaled_column  # cost imports the compiler, which imports this

        width = max([5] + [len(b.name) for b in self.blocks])
        unit, macs = scaled_column([b.macs for b in self.blocks])
        rows = [f"{'#':>3}  {'block':<{width}} {'in':<18} {'out':<18} {unit:>9} {'params':>10}  skip"]
        for b, cell in zip(self.blocks, macs):
            skip = b.shortcut.kind if b.skippable else "no"
            rows.append(
                f"{b.index:>3}  {b.name:<{width}} {_value_cell(b.signature.inputs):<18} "
                f"{_value_cell(b.signature.outputs):<18} {cell:>9} {b.params:>10}  {skip}"
            )
        if any(len(b.signature.outputs) > 1 for b in self.blocks):
            rows.append("(+k: the boundary also carries k earlier tensors, such as an encoder's skip features)")
        rows.append(f"total: {format_macs(self.macs)} per image of input [{', '.join(map(str, self.input_shape))}], "
                    f"{self.params} parameters, {self.num_blocks} blocks")
        return "\n".join(rows)


def _value_cell(value: tuple[TensorSignature, ...]) -> str:
    """The primary member's shape, and ``+k`` for the k other tensors a multi-tensor value carries."""
    text = str(list(value[-1].shape))
    return text if len(value) == 1 else f"{text} +{len(value) - 1}"


def _tensor(node: fx.Node) -> TensorSignature:
    return TensorSignature(tuple(node.meta["mtgraph_shape"]), node.meta["mtgraph_dtype"])


def _measured_shortcut(module: fx.GraphModule, shortcut: Shortcut, probe: torch.Tensor) -> Shortcut:
    """``shortcut`` with the MACs, parameter count and parameter names of running it on ``probe``.

    ``probe`` is the block's input (a batch of one), a meta tensor when the
    network was measured on meta tensors: the shortcut then runs on meta
    copies of its weights.
    """
    if not shortcut.has_weights:
        return shortcut  # the identity costs nothing; a block without shortcut has nothing to measure
    branch = shortcut_module(module, shortcut)
    if branch is None:
        return shortcut
    names = tuple(name for name, _ in branch.named_parameters(remove_duplicate=False))
    macs, _ = run_counted(MetaCall(branch) if probe.is_meta else branch, probe.clone())
    return replace(shortcut, macs=macs, params=count_parameters([branch]), parameters=names)


def _block_name(members: Sequence[fx.Node]) -> str:
    scopes = [n.meta.get(SCOPE_KEY, ()) for n in members if n.op not in ("placeholder", "get_attr", "output")]
    if not scopes:
        return "empty"
    common = scopes[0]
    for scope in scopes[1:]:
        k = 0
        while k < min(len(common), len(scope)) and common[k] == scope[k]:
            k += 1
        common = common[:k]
    if common:
        return _label(common[-1])
    tops: list[str] = []
    for node, scope in zip((n for n in members if n.op not in ("placeholder", "get_attr", "output")), scopes):
        label = _label(scope[0]) if scope else str(getattr(node.target, "__name__", node.target))
        if not tops or tops[-1] != label:
            tops.append(label)
    return tops[0] if len(tops) == 1 else f"{tops[0]}..{tops[-1]}"


def _check_input(example_input: object) -> torch.Tensor:
    if not isinstance(example_input, torch.Tensor):
        raise TraceError(f"example_input must be a torch.Tensor batch, got {type(example_input).__name__}")
    if example_input.dim() < 2:
        raise TraceError(f"example_input must have a batch dimension first; got shape {list(example_input.shape)}")
    return example_input


def _check_max_live(max_live: object) -> int:
    if isinstance(max_live, bool) or not isinstance(max_live, int) or max_live < 1:
        raise TraceError(f"max_live must be an int >= 1 (how many tensors a cut may carry), got {max_live!r}")
    return max_live


def _output_members(output: fx.Node, result: object) -> tuple[tuple[fx.Node, ...], tuple[str, ...] | None]:
    """The nodes of the tensors the traced forward returns, and their names when it returns a dict."""
    final = output.args[0]
    # fx hands dicts and lists back as its immutable_dict / immutable_list: name what the user wrote.
    kind = "dict" if isinstance(result, dict) else "tuple" if isinstance(result, (tuple, list)) else type(result).__name__
    how = (
        "mtgraph needs a backbone that returns one tensor, or a flat tuple, list or dict of tensors "
        "(wrap it to select the feature maps the heads should read)"
    )
    if isinstance(final, fx.Node):
        if isinstance(result, torch.Tensor):
            return (final,), None
        raise TraceError(f"the backbone returns a {kind} made by one operation; {how}")
    names: tuple[str, ...] | None = None
    if isinstance(final, dict):
        if not all(isinstance(k, str) for k in final):
            raise TraceError(f"the backbone returns a dict with keys {list(final)}; its keys must be strings")
        names, items = tuple(final), tuple(final.values())
    elif isinstance(final, (tuple, list)):
        items = tuple(final)
    else:
        raise TraceError(f"the backbone returns a {kind}; {how}")
    if not items:
        raise TraceError(f"the backbone returns an empty {kind}; {how}")
    if not all(isinstance(item, fx.Node) and "mtgraph_shape" in item.meta for item in items):
        raise TraceError(f"the backbone returns a {kind} holding something other than tensors; {how}")
    return tuple(items), names  # type: ignore[return-value]


def _unique(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` with repeats numbered (``a``, ``a#2``) so that each names one member."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0) + 1
        seen[name] = count
        candidate = name if count == 1 else f"{name}#{count}"
        while candidate in seen and candidate != name:
            count += 1
            candidate = f"{name}#{count}"
        out.append(candidate)
    return tuple(out)


def _members(
    name: str, inputs: Sequence[fx.Node], outputs: Sequence[fx.Node], input_names: Sequence[str],
    output_names: Sequence[str] | None,
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Names and provenance of a block's output tensors: carried inputs keep their names, computed ones get the block's."""
    carried = tuple(inputs.index(node) if node in inputs else COMPUTED for node in outputs)
    fresh = iter(default_members(name, sum(c == COMPUTED for c in carried)))
    names = [input_names[c] if c != COMPUTED else next(fresh) for c in carried]
    return _unique(output_names if output_names is not None else names), carried


def trace(
    backbone: nn.Module,
    example_input: torch.Tensor,
    *,
    cuts: str | Sequence[str] = "auto",
    leaf_modules: Iterable[str | type] = (),
    max_live: int = DEFAULT_MAX_LIVE,
) -> Backbone:
    """Trace ``backbone`` and partition it into a chain of blocks.

    ``cuts`` is ``"auto"``/``"blocks"`` (every child of a container such as
    ``layer2.1`` or ``features.3``), ``"stages"`` (top-level children) or a
    list of module names to cut after. A cut carries every tensor still
    needed after it: one at most boundaries, up to ``max_live`` where an
    encoder's skip features stay alive across a decoder (U-Nets, feature
    pyramids). Single-tensor cuts are preferred: a backbone that has them
    traces the same whatever ``max_live``; cuts carrying several tensors only
    split what single-tensor cuts leave whole (see
    :mod:`mtgraph.frontend.partition`).

    ``leaf_modules`` (qualified names or module classes) are kept as black
    boxes, which is how a submodule with data-dependent control flow is
    traced. Forward parameters after the first that have defaults (a ViT's
    ``attn_mask=None``) are traced with their defaults. The backbone is traced
    and run once on ``example_input`` in eval mode without gradients (so a
    Python branch on ``self.training`` is recorded as in eval mode); its state
    (train flags, BatchNorm statistics) and the input are left as they were.

    Args:
        backbone: the model; its forward takes one tensor (other parameters
            need defaults) and returns one tensor, or a flat tuple, list or
            dict of tensors (feature pyramids: the heads then read them as a
            tuple, or one member through :meth:`Backbone.member_head`).
        example_input: a batch ``[N, ...]`` of the input shape and dtype.
        cuts: ``"auto"``, ``"blocks"``, ``"stages"`` or module names to cut after.
        leaf_modules: qualified module names or module classes not to trace into.
        max_live: the most tensors one cut may carry (1: single-tensor cuts only).

    Returns:
        The :class:`Backbone`: blocks are copies, the model itself is not changed.

    Raises:
        TraceError: ``backbone`` is not a module, ``example_input`` is not a
            batched tensor, ``max_live`` is not a positive int, the forward
            takes a second input without a default, fails on the input,
            returns something other than tensors, or computes nothing.
        CutError: ``cuts`` is not a granularity or names a module whose end
            is not a boundary carrying at most ``max_live`` tensors.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        >>> [block.name for block in mtgraph.trace(model, torch.zeros(1, 3, 8, 8))]
        ['0', '1', '2']
        >>> backbone = mtgraph.trace(model, torch.zeros(1, 3, 8, 8), cuts=["1"])
        >>> [(block.name, block.out_shape) for block in backbone]
        [('0..1', (4, 6, 6)), ('2', (4, 4, 4))]

        An encoder-decoder: the cut after ``down`` carries the skip feature too.

        >>> def stage(cin, cout, stride=1):
        ...     return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU())
        >>> class TinyUNet(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.enc, self.down, self.mid = stage(3, 4), stage(4, 4, 2), stage(4, 4)
        ...         self.up, self.dec = nn.Sequential(nn.ConvTranspose2d(4, 4, 2, 2)), stage(8, 4)
        ...     def forward(self, x):
        ...         skip = self.enc(x)
        ...         return self.dec(torch.cat([self.up(self.mid(self.down(skip))), skip], dim=1))
        >>> unet = mtgraph.trace(TinyUNet(), torch.zeros(1, 3, 8, 8))
        >>> [(b.name, b.signature.members) for b in unet]
        [('enc', ('enc',)), ('down', ('enc', 'down')), ('mid', ('enc', 'mid')), ('up..cat', ('up..cat',)), ('dec', ('dec',))]
        >>> [b.name for b in mtgraph.trace(TinyUNet(), torch.zeros(1, 3, 8, 8), max_live=1)]  # single-tensor cuts only
        ['enc', 'down..cat', 'dec']
    """
    if not isinstance(backbone, nn.Module):
        raise TraceError(f"the backbone must be a torch.nn.Module, got {type(backbone).__name__}")
    example = _check_input(example_input)
    max_live = _check_max_live(max_live)
    # torch.fx records one path through Python branches on ``self.training`` (torchvision's
    # StochasticDepth draws random masks when training): record the inference path. Leaf modules
    # (BatchNorm, Dropout) still follow the train flag at run time.
    with evaluation_mode(backbone):
        gm = trace_module(backbone, leaf_modules)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise TraceError(
            f"the backbone's forward takes {len(placeholders)} inputs {[p.name for p in placeholders]}; "
            "mtgraph needs exactly one tensor input (parameters with defaults are traced with them: give the "
            "others defaults, or wrap the model so extra arguments are fixed)"
        )
    # One run on a batch of one gives shapes, MACs and in-place writes; a larger example is first run whole
    # for its shapes (as the user's batch gives them) and to check that it runs at all.
    batch_of_one = example.shape[0] == 1
    with evaluation_mode(backbone):
        result, run = _run_example(gm, example, count=batch_of_one, meta=_on_meta(gm, example))
    nodes = list(gm.graph.nodes)
    final_values, final_names = _output_members(nodes[-1], result)
    compute, candidates = find_cut_points(gm, max_live)
    chosen: list[CutPoint] = select_cuts(gm, backbone, candidates, cuts, max_live)
    boundaries: list[tuple[int, tuple[fx.Node, ...]]] = [(0, (placeholders[0],))]
    boundaries.extend((cut.position, cut.values) for cut in chosen)
    boundaries.append((len(nodes) - 1, final_values))

    with evaluation_mode(backbone):
        if not batch_of_one:
            run = _run_sample(gm, example, meta=run.meta)
        blocks = _measure_blocks(gm, nodes, boundaries, final_names, run, example)
    if not blocks:
        raise TraceError("the backbone computes nothing; mtgraph needs at least one operation")
    return Backbone(
        blocks=tuple(blocks),
        input_shape=tuple(example.shape[1:]),
        input_dtype=example.dtype,
        source=type(backbone).__name__,
    )


#: Elements of one sample from which the measuring run is on meta tensors. A meta run does no arithmetic but
#: pays a fixed price per operator (many meta kernels are Python), a real one pays for its arithmetic: on one
#: thread, real runs are faster for torchvision's resnet18, resnet50 and convnext_tiny up to 128 px
#: (49k elements) and meta runs from 224 px (150k; resnet50: 0.24 s against 0.39 s), while mobilenet_v3_small
#: runs faster for real at any size. Either way the signature table is the same.
_META_FROM_ELEMENTS = 1 << 16


def _on_meta(gm: fx.GraphModule, example: torch.Tensor) -> bool:
    """Whether to measure on meta tensors: a large sample, whose dtype every floating-point tensor of ``gm`` shares.

    Meta kernels check shapes as the real ones do, but not always dtypes
    (``nn.Linear`` takes an int64 input on meta tensors): a network given
    another dtype is run for real, so that a dtype error is reported here.
    """
    if example[0].numel() < _META_FROM_ELEMENTS or not example.dtype.is_floating_point:
        return False
    tensors = itertools.chain(gm.parameters(), gm.buffers())
    return all(t.dtype == example.dtype for t in tensors if t.is_floating_point())


def _run_example(gm: fx.GraphModule, example: torch.Tensor, *, count: bool, meta: bool) -> tuple[object, GraphRun]:
    """Run ``gm`` on the whole example, recording shapes (and, if ``count``, MACs and in-place writes).

    On meta tensors if ``meta`` and the network allows it, else for real;
    what fails for real is a :class:`TraceError` naming torch's own message.
    """
    if meta:
        try:
            return run_graph(gm, example, meta=True, count=count)
        except Exception:  # noqa: S110 - the real run below reports what is wrong, in the user's terms
            pass
    try:
        return run_graph(gm, example, meta=False, count=count)
    except Exception as exc:
        raise TraceError(
            f"running the traced backbone on an input of shape {list(example.shape)} failed: "
            f"{torch_message(exc)}. Check example_input's shape and dtype"
        ) from exc


def _run_sample(gm: fx.GraphModule, example: torch.Tensor, meta: bool) -> GraphRun:
    """Run ``gm`` on one sample of ``example`` under the MAC counter; on meta tensors if ``meta`` and the network allows it."""
    sample = example[:1]
    if meta:
        try:
            return run_graph(gm, sample, meta=True, count=True, shapes=False)[1]
        except Exception:  # noqa: S110 - the real run below raises what is wrong
            pass
    try:
        return run_graph(gm, sample, meta=False, count=True, shapes=False)[1]
    except Exception as exc:
        raise _not_batched(example, exc) from exc


def _measure_blocks(
    gm: fx.GraphModule, nodes: list[fx.Node], boundaries: list[tuple[int, tuple[fx.Node, ...]]],
    final_names: tuple[str, ...] | None, run: GraphRun, example: torch.Tensor,
) -> list[BlockInfo]:
    """The blocks and their rows from ``run``; measured block by block on one sample where ``run`` cannot tell."""
    try:
        return _blocks(gm, nodes, boundaries, final_names, _FromRun(run))
    except TraceError:
        raise
    except Exception:  # noqa: S110 - an AmbiguousWrite, or a shortcut that does not run on meta tensors
        pass
    try:
        return _blocks(gm, nodes, boundaries, final_names, _BlockByBlock(example[:1].clone()))
    except TraceError:
        raise
    except Exception as exc:
        raise _not_batched(example, exc) from exc


def _not_batched(example: torch.Tensor, exc: Exception) -> TraceError:
    # The whole example ran, one sample of it did not: its first dimension is not a batch (a conv net
    # also accepts an unbatched [C, H, W] image, then reads [1, H, W] as a 1-channel image).
    return TraceError(
        f"the backbone runs on example_input of shape {list(example.shape)} but not on one sample of it, "
        f"{[1, *example.shape[1:]]} ({torch_message(exc)}): example_input must be a batch whose first "
        f"dimension is the batch size, e.g. [N, C, H, W] for images; add the batch dimension with "
        f"example_input.unsqueeze(0)"
    )


class _FromRun:
    """Each block's MACs, written inputs and shortcut probe, read from one run of the whole graph."""

    def __init__(self, run: GraphRun) -> None:
        self.run = run

    def measure(
        self, module: fx.GraphModule, inputs: Sequence[fx.Node], members: Sequence[fx.Node]
    ) -> tuple[int, list[int], torch.Tensor | None]:
        """MACs of the block made of ``members``, the indices of the ``inputs`` it writes, its input if one tensor."""
        probe = self.run.values[inputs[0]] if len(inputs) == 1 else None
        return self.run.macs(members), self.run.written_inputs(inputs, members), probe

    def advance(self, module: fx.GraphModule) -> None:
        """Nothing to do: the run computed every value already."""


class _BlockByBlock:
    """Measures each block by running it on a copy of its input, then passing its output on (a batch of one).

    What :class:`_FromRun` reads from one run, block after block instead:
    used where one run cannot tell which input a block writes into
    (:class:`~mtgraph.frontend.measure.AmbiguousWrite`), and by the tests as
    the reference.
    """

    def __init__(self, x: torch.Tensor) -> None:
        self.value: Value = x

    def measure(
        self, module: fx.GraphModule, inputs: Sequence[fx.Node], members: Sequence[fx.Node]
    ) -> tuple[int, list[int], torch.Tensor | None]:
        """MACs of ``module`` on a copy of the current value, the input tensors it wrote, the value if one tensor.

        The value itself is what a shortcut with weights is measured on.
        """
        probe = _clone(self.value)
        versions = [t._version for t in members_of(probe)]
        macs = count_macs(module, probe)
        written = [k for k, t in enumerate(members_of(probe)) if t._version != versions[k]]
        return macs, written, self.value if isinstance(self.value, torch.Tensor) else None

    def advance(self, module: fx.GraphModule) -> None:
        """Pass the current value through ``module``, the block as the chain runs it."""
        self.value = module(self.value)


def _blocks(
    gm: fx.GraphModule, nodes: list[fx.Node], boundaries: list[tuple[int, tuple[fx.Node, ...]]],
    final_names: tuple[str, ...] | None, measured: _FromRun | _BlockByBlock,
) -> list[BlockInfo]:
    """Extract each block between consecutive boundaries, in order, with its row of the signature table.

    ``measured`` gives each block's MACs per image and the input tensors it
    writes in place: read from one run of the whole graph (:class:`_FromRun`)
    or measured block by block (:class:`_BlockByBlock`).
    ``final_names`` names the members of the backbone's output (the last
    boundary; None: default names). A block writing into one of its input
    tensors gets a copy of it (:func:`guard_input`).
    """
    blocks: list[BlockInfo] = []
    names: tuple[str, ...] = (INPUT_MEMBER,)
    for (start, inp), (end, out) in zip(boundaries, boundaries[1:]):
        members = [n for n in nodes[start + 1:end + 1] if n.op != "output"]
        if not any(n.op.startswith("call") for n in members):
            continue  # nothing computed between these cuts
        index = len(blocks)
        name = _block_name(members)
        module = extract_subgraph(gm, inp, out, members, class_name=f"Block{index}")
        macs, written, probe = measured.measure(module, inp, members)
        if written:
            # The block writes into its input; where its input feeds other blocks too (a shared
            # node of a multi-task network) that would corrupt them, so it works on a copy.
            guard_input(module, written)
        in_value, out_value = tuple(_tensor(n) for n in inp), tuple(_tensor(n) for n in out)
        shortcut = find_shortcut(module, in_value, out_value)
        if probe is not None and len(out_value) == 1:
            shortcut = _measured_shortcut(module, shortcut, probe)
        member_names, carried = _members(name, inp, out, names, final_names if end == len(nodes) - 1 else None)
        measured.advance(module)
        blocks.append(BlockInfo(
            index=index,
            name=name,
            module=module,
            signature=BlockSignature(
                index=index,
                name=name,
                inputs=in_value,
                outputs=out_value,
                macs=macs,
                params=count_parameters([module]),
                shortcut=shortcut,
                state=tuple((key, tuple(t.shape)) for key, t in module.state_dict().items()),
                members=member_names,
                carried=carried,
            ),
        ))
        names = member_names
    return blocks

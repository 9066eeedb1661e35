"""The :class:`Backbone` value and :func:`trace`, the frontend's entry point."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import torch
import torch.fx as fx
from torch import nn

from mtgraph.analysis.macs import count_macs, count_parameters, evaluation_mode
from mtgraph.errors import TraceError
from mtgraph.frontend.partition import CutPoint, _label, extract_subgraph, find_cut_points, guard_input, select_cuts
from mtgraph.frontend.residual import find_shortcut, shortcut_module
from mtgraph.frontend.tracer import SCOPE_KEY, torch_message, trace_module
from mtgraph.ir.signature import BackboneSignature, BlockSignature, Shortcut, TensorSignature

__all__ = ["BlockInfo", "Backbone", "trace", "dtype_name"]

Shape = tuple[int, ...]


@dataclass(frozen=True, eq=False)
class BlockInfo:
    """One block of a traced backbone: a GraphModule with one tensor in and one out, and its signature.

    Shapes exclude the batch dimension; ``macs`` is per image (batch of one).
    Every number about the block lives in :attr:`signature` (a row of the
    block signature table, :class:`~mtgraph.ir.BlockSignature`); the
    attributes below read it.

    Attributes:
        index: position of the block in the chain.
        name: the module (or range of modules) the block covers, such as ``layer2.1``.
        module: the block as a GraphModule taking and returning one tensor.
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
          #  block in                 out                     GMac     params  skip
          0  0     [3, 8, 8]          [4, 6, 6]             0.0000        112  no
          1  1     [4, 6, 6]          [4, 6, 6]             0.0000          0  identity
        total: 0.0000 GMac, 112 parameters, 2 blocks
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
        """Shape (without batch) of the backbone's output."""
        return self.blocks[-1].out_shape

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

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Run the chain of blocks on ``x`` (equals the original backbone's forward)."""
        for block in self.blocks:
            x = block.module(x)
        return x

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A deterministic input of the traced shape and dtype."""
        generator = torch.Generator().manual_seed(0)
        if self.input_dtype.is_floating_point:
            return torch.randn((batch, *self.input_shape), generator=generator, dtype=self.input_dtype)
        return torch.zeros((batch, *self.input_shape), dtype=self.input_dtype)

    def describe(self) -> str:
        """A table of the blocks: name, shapes, GMac, parameters and whether each is skippable."""
        width = max([5] + [len(b.name) for b in self.blocks])
        rows = [f"{'#':>3}  {'block':<{width}} {'in':<18} {'out':<18} {'GMac':>9} {'params':>10}  skip"]
        for b in self.blocks:
            skip = b.shortcut.kind if b.skippable else "no"
            rows.append(
                f"{b.index:>3}  {b.name:<{width}} {str(list(b.in_shape)):<18} {str(list(b.out_shape)):<18} "
                f"{b.macs / 1e9:>9.4f} {b.params:>10}  {skip}"
            )
        rows.append(f"total: {self.macs / 1e9:.4f} GMac, {self.params} parameters, {self.num_blocks} blocks")
        return "\n".join(rows)


def dtype_name(dtype: torch.dtype) -> str:
    """The name of a torch dtype as the signature table writes it (``torch.float32`` -> ``"float32"``).

    Examples:
        >>> import torch
        >>> from mtgraph.frontend.backbone import dtype_name
        >>> dtype_name(torch.float16)
        'float16'
    """
    return str(dtype).removeprefix("torch.")


class _RecordShapes(fx.Interpreter):
    """Run a GraphModule, recording each tensor node's batch-free shape and dtype in ``node.meta``."""

    def run_node(self, n: fx.Node) -> object:
        value = super().run_node(n)
        if isinstance(value, torch.Tensor):
            n.meta["mtgraph_shape"] = tuple(value.shape[1:])
            n.meta["mtgraph_dtype"] = dtype_name(value.dtype)
        return value


def _tensor(node: fx.Node) -> TensorSignature:
    return TensorSignature(tuple(node.meta["mtgraph_shape"]), node.meta["mtgraph_dtype"])


def _measured_shortcut(module: fx.GraphModule, shortcut: Shortcut, probe: torch.Tensor) -> Shortcut:
    """``shortcut`` with the MACs, parameter count and parameter names of running it on ``probe``."""
    if not shortcut.has_weights:
        return shortcut  # the identity costs nothing; a block without shortcut has nothing to measure
    branch = shortcut_module(module, shortcut)
    if branch is None:
        return shortcut
    names = tuple(name for name, _ in branch.named_parameters(remove_duplicate=False))
    return replace(shortcut, macs=count_macs(branch, probe.clone()), params=count_parameters([branch]), parameters=names)


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


def trace(
    backbone: nn.Module,
    example_input: torch.Tensor,
    *,
    cuts: str | Sequence[str] = "auto",
    leaf_modules: Iterable[str | type] = (),
) -> Backbone:
    """Trace ``backbone`` and partition it into a chain of blocks.

    ``cuts`` is ``"auto"``/``"blocks"`` (every child of a container such as
    ``layer2.1`` or ``features.3``), ``"stages"`` (top-level children) or a
    list of module names to cut after. ``leaf_modules`` (qualified names or
    module classes) are kept as black boxes, which is how a submodule with
    data-dependent control flow is traced. The backbone is traced and run
    once on ``example_input`` in eval mode without gradients (so a Python
    branch on ``self.training`` is recorded as in eval mode); its state (train
    flags, BatchNorm statistics) and the input are left as they were.

    Args:
        backbone: the model; its forward takes one tensor and returns one tensor.
        example_input: a batch ``[N, ...]`` of the input shape and dtype.
        cuts: ``"auto"``, ``"blocks"``, ``"stages"`` or module names to cut after.
        leaf_modules: qualified module names or module classes not to trace into.

    Returns:
        The :class:`Backbone`: blocks are copies, the model itself is not changed.

    Raises:
        TraceError: ``backbone`` is not a module, ``example_input`` is not a
            batched tensor, the forward takes several inputs, fails on the
            input, returns something other than one tensor, or computes nothing.
        CutError: ``cuts`` is not a granularity or names a module whose end is
            not a single-tensor boundary.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        >>> [block.name for block in mtgraph.trace(model, torch.zeros(1, 3, 8, 8))]
        ['0', '1', '2']
        >>> backbone = mtgraph.trace(model, torch.zeros(1, 3, 8, 8), cuts=["1"])
        >>> [(block.name, block.out_shape) for block in backbone]
        [('0..1', (4, 6, 6)), ('2', (4, 4, 4))]
    """
    if not isinstance(backbone, nn.Module):
        raise TraceError(f"the backbone must be a torch.nn.Module, got {type(backbone).__name__}")
    example = _check_input(example_input)
    # torch.fx records one path through Python branches on ``self.training`` (torchvision's
    # StochasticDepth draws random masks when training): record the inference path. Leaf modules
    # (BatchNorm, Dropout) still follow the train flag at run time.
    with evaluation_mode(backbone):
        gm = trace_module(backbone, leaf_modules)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise TraceError(
            f"the backbone's forward takes {len(placeholders)} inputs {[p.name for p in placeholders]}; "
            "mtgraph needs exactly one tensor input (wrap the model so extra arguments are fixed)"
        )
    with evaluation_mode(backbone):
        try:
            # A copy: a backbone that writes into its input must not change the caller's tensor.
            result = _RecordShapes(gm).run(example.clone())
        except Exception as exc:
            raise TraceError(
                f"running the traced backbone on an input of shape {list(example.shape)} failed: "
                f"{torch_message(exc)}. Check example_input's shape and dtype"
            ) from exc
    if not isinstance(result, torch.Tensor):
        # fx hands dicts and lists back as its immutable_dict / immutable_list: name what the user wrote.
        kind = "dict" if isinstance(result, dict) else "tuple" if isinstance(result, (tuple, list)) else type(result).__name__
        raise TraceError(
            f"the backbone returns a {kind}; mtgraph needs a backbone that returns one tensor "
            "(wrap it to select the feature map the heads should read)"
        )
    compute, candidates = find_cut_points(gm)
    chosen: list[CutPoint] = select_cuts(gm, backbone, candidates, cuts)
    nodes = list(gm.graph.nodes)
    output = nodes[-1]
    boundaries: list[tuple[int, fx.Node]] = [(0, placeholders[0])]
    for cut in chosen:
        boundaries.append((cut.position, cut.value))
    final_value = output.args[0]
    assert isinstance(final_value, fx.Node)
    boundaries.append((len(nodes) - 1, final_value))

    try:
        blocks = _measure_blocks(gm, nodes, boundaries, example[:1].clone(), backbone)
    except TraceError:
        raise
    except Exception as exc:
        # The whole example ran, one sample of it did not: its first dimension is not a batch (a conv net
        # also accepts an unbatched [C, H, W] image, then reads [1, H, W] as a 1-channel image).
        raise TraceError(
            f"the backbone runs on example_input of shape {list(example.shape)} but not on one sample of it, "
            f"{[1, *example.shape[1:]]} ({torch_message(exc)}): example_input must be a batch whose first "
            f"dimension is the batch size, e.g. [N, C, H, W] for images; add the batch dimension with "
            f"example_input.unsqueeze(0)"
        ) from exc
    if not blocks:
        raise TraceError("the backbone computes nothing; mtgraph needs at least one operation")
    return Backbone(
        blocks=tuple(blocks),
        input_shape=tuple(example.shape[1:]),
        input_dtype=example.dtype,
        source=type(backbone).__name__,
    )


def _measure_blocks(
    gm: fx.GraphModule, nodes: list[fx.Node], boundaries: list[tuple[int, fx.Node]], x: torch.Tensor,
    backbone: nn.Module,
) -> list[BlockInfo]:
    """Extract each block between consecutive boundaries and measure it on ``x`` (a batch of one), in order."""
    blocks: list[BlockInfo] = []
    with evaluation_mode(backbone):
        for (start, inp), (end, out) in zip(boundaries, boundaries[1:]):
            members = [n for n in nodes[start + 1:end + 1] if n.op != "output"]
            if not any(n.op.startswith("call") for n in members):
                continue  # nothing computed between these cuts
            index = len(blocks)
            module = extract_subgraph(gm, inp, out, members, class_name=f"Block{index}")
            probe = x.clone()
            version = probe._version
            macs = count_macs(module, probe)
            if probe._version != version:
                # The block writes into its input; where its input feeds other blocks too (a shared
                # node of a multi-task network) that would corrupt them, so it works on a copy.
                guard_input(module)
            in_value, out_value = _tensor(inp), _tensor(out)
            shortcut = _measured_shortcut(module, find_shortcut(module, in_value.shape, out_value.shape), x)
            x = module(x)
            blocks.append(BlockInfo(
                index=index,
                name=_block_name(members),
                module=module,
                signature=BlockSignature(
                    index=index,
                    name=_block_name(members),
                    inputs=(in_value,),
                    outputs=(out_value,),
                    macs=macs,
                    params=count_parameters([module]),
                    shortcut=shortcut,
                    state=tuple((name, tuple(t.shape)) for name, t in module.state_dict().items()),
                ),
            ))
    return blocks

"""The block signature table: what the IR needs to know about a traced backbone, as frozen values.

The frontend traces a backbone into a chain of blocks; everything the
verifier, the passes and the cost interpreter need from it is here, with no
torch.fx object: each block's name, the values it consumes and produces
(shapes and dtypes), its MACs and parameter count, and what skipping it means
(its :class:`Shortcut`). ``Backbone.signature`` gives the table of a traced
backbone and ``ParamStore.signature`` the table its blocks were copied from.

**Values.** The value at a block boundary (a *level*) is a tuple of
:class:`TensorSignature`. Today every boundary carries exactly one tensor, so
every tuple has one member and :attr:`BlockSignature.in_shape` /
``out_shape`` give its shape; a later change can let a boundary carry several
tensors (an encoder's skip features next to the decoder's feature map)
without changing the table's form.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from mtgraph.errors import IRError

__all__ = ["TensorSignature", "Shortcut", "BlockSignature", "BackboneSignature", "SHORTCUT_KINDS"]

#: What running only a block's shortcut means: the identity, a projection branch, or nothing (not skippable).
SHORTCUT_KINDS = ("identity", "projection", "none")


def _check_count(owner: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise IRError(f"{owner}: {name} must be a non-negative int, got {value!r}")
    return value


def _check_strings(owner: str, name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
        raise IRError(f"{owner}: {name} must be a tuple of str, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class TensorSignature:
    """One tensor of a value: its shape without the batch dimension, and its dtype name.

    Attributes:
        shape: the shape of one sample (no batch dimension).
        dtype: the torch dtype's name without ``torch.`` (``"float32"``).

    Examples:
        >>> from mtgraph.ir import TensorSignature
        >>> TensorSignature((8, 16, 16))
        TensorSignature(shape=(8, 16, 16), dtype='float32')
        >>> TensorSignature([8, -1])
        Traceback (most recent call last):
        ...
        mtgraph.errors.IRError: TensorSignature: shape must be a tuple of non-negative ints, got [8, -1]
    """

    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        shape = self.shape
        if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise IRError(f"TensorSignature: shape must be a tuple of non-negative ints, got {shape!r}")
        object.__setattr__(self, "shape", tuple(shape))
        if not isinstance(self.dtype, str) or not self.dtype:
            raise IRError(f"TensorSignature: dtype must be a dtype name such as 'float32', got {self.dtype!r}")


def _check_value(owner: str, name: str, value: object) -> tuple[TensorSignature, ...]:
    if not isinstance(value, (tuple, list)) or not value or not all(isinstance(t, TensorSignature) for t in value):
        raise IRError(f"{owner}: {name} must be a non-empty tuple of TensorSignature, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class Shortcut:
    """How a block is skipped (AdaShare's skip), found from the block's traced graph.

    ``kind`` is ``"identity"`` (input and output shapes match), ``"projection"``
    (the block ends in ``main(x) + shortcut(x)`` and the skip runs the
    shortcut branch) or ``"none"`` (the block cannot be skipped; ``reason``
    says why).

    Attributes:
        kind: one of :data:`SHORTCUT_KINDS`.
        nodes: for a projection, the names of the shortcut branch's nodes in
            the block's traced graph, in order (opaque to the IR: the frontend
            cuts the branch out of a copy of the block with them).
        reason: why a ``"none"`` block cannot be skipped.
        macs: MACs per image of running the shortcut (0 for the identity).
        params: parameters the shortcut uses.
        parameters: qualified names, inside the block's module, of the
            parameters the shortcut uses (so a copy of the block can say which
            of its tensors a skip keeps).

    Examples:
        >>> from mtgraph.ir import Shortcut
        >>> Shortcut("identity").skippable, Shortcut("projection", macs=512).has_weights
        (True, True)
        >>> Shortcut("none", reason="shapes differ").skippable
        False
    """

    kind: str
    nodes: tuple[str, ...] = ()
    reason: str = ""
    macs: int = 0
    params: int = 0
    parameters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in SHORTCUT_KINDS:
            raise IRError(f"Shortcut: kind must be one of {list(SHORTCUT_KINDS)}, got {self.kind!r}")
        object.__setattr__(self, "nodes", _check_strings("Shortcut", "nodes", self.nodes))
        object.__setattr__(self, "parameters", _check_strings("Shortcut", "parameters", self.parameters))
        _check_count("Shortcut", "macs", self.macs)
        _check_count("Shortcut", "params", self.params)

    @property
    def skippable(self) -> bool:
        """True when the block can be replaced by its shortcut."""
        return self.kind != "none"

    @property
    def has_weights(self) -> bool:
        """True when running the shortcut needs the block's parameters (a projection)."""
        return self.kind == "projection"


@dataclass(frozen=True)
class BlockSignature:
    """One row of the table: block ``index`` of the traced chain.

    Attributes:
        index: position of the block in the chain.
        name: the module (or range of modules) the block covers, such as ``layer2.1``.
        inputs: the value the block consumes (one tensor today).
        outputs: the value the block produces (one tensor today).
        macs: multiply-accumulates per image of running the block.
        params: parameters of the block, shared tensors counted once.
        shortcut: what skipping the block means.
        state: the name and shape of every parameter and buffer of the
            block's module (its ``state_dict``): a module with exactly these
            is a copy of this block and costs :attr:`macs`.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> conv = backbone.signature.blocks[0]
        >>> conv.name, conv.in_shape, conv.out_shape, conv.macs, conv.params, conv.skippable
        ('0', (3, 8, 8), (4, 6, 6), 3888, 112, False)
        >>> conv.state
        (('0.weight', (4, 3, 3, 3)), ('0.bias', (4,)))
    """

    index: int
    name: str
    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...]
    macs: int
    params: int
    shortcut: Shortcut
    state: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def __post_init__(self) -> None:
        owner = f"BlockSignature {self.index!r}"
        _check_count(owner, "index", self.index)
        if not isinstance(self.name, str):
            raise IRError(f"{owner}: name must be a str, got {self.name!r}")
        object.__setattr__(self, "inputs", _check_value(owner, "inputs", self.inputs))
        object.__setattr__(self, "outputs", _check_value(owner, "outputs", self.outputs))
        _check_count(owner, "macs", self.macs)
        _check_count(owner, "params", self.params)
        if not isinstance(self.shortcut, Shortcut):
            raise IRError(f"{owner}: shortcut must be a Shortcut, got {type(self.shortcut).__name__}")
        object.__setattr__(self, "state", tuple((str(n), tuple(s)) for n, s in self.state))

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Shape (without batch) of the block's input tensor."""
        return self.inputs[0].shape

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape (without batch) of the block's output tensor."""
        return self.outputs[0].shape

    @property
    def skippable(self) -> bool:
        """True when the block can be bypassed by its shortcut."""
        return self.shortcut.skippable


@dataclass(frozen=True)
class BackboneSignature:
    """The frozen per-block table of a traced backbone: blocks in chain order and the input value.

    Level ``k`` is the value block ``k`` consumes: the input at level 0,
    block ``k - 1``'s output after it. Construction checks that the chain
    fits together (each block consumes the value the previous one produces).

    Attributes:
        blocks: one :class:`BlockSignature` per block, ``blocks[b].index == b``.
        input: the value the backbone consumes (level 0).
        source: class name of the traced model.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> table = backbone.signature
        >>> table.num_blocks, table.level(0), table.output
        (2, (TensorSignature(shape=(3, 8, 8), dtype='float32'),), (TensorSignature(shape=(4, 6, 6), dtype='float32'),))
        >>> [(b.name, b.macs, b.shortcut.kind) for b in table]
        [('0', 3888, 'none'), ('1', 0, 'identity')]
    """

    blocks: tuple[BlockSignature, ...]
    input: tuple[TensorSignature, ...]
    source: str = ""

    def __post_init__(self) -> None:
        blocks = self.blocks
        if not isinstance(blocks, (tuple, list)) or not blocks or not all(isinstance(b, BlockSignature) for b in blocks):
            raise IRError(f"BackboneSignature: blocks must be a non-empty tuple of BlockSignature, got {blocks!r}")
        object.__setattr__(self, "blocks", tuple(blocks))
        object.__setattr__(self, "input", _check_value("BackboneSignature", "input", self.input))
        previous = self.input
        for b, block in enumerate(self.blocks):
            if block.index != b:
                raise IRError(f"BackboneSignature: blocks[{b}] has index {block.index}; blocks must be in chain order")
            if block.inputs != previous:
                raise IRError(
                    f"BackboneSignature: block {b} ({block.name}) consumes {_text(block.inputs)} but level {b} "
                    f"holds {_text(previous)}; each block must consume what the previous one produces"
                )
            previous = block.outputs

    @property
    def num_blocks(self) -> int:
        """Number of blocks in the chain."""
        return len(self.blocks)

    @property
    def output(self) -> tuple[TensorSignature, ...]:
        """The value the last block produces (what the heads read)."""
        return self.blocks[-1].outputs

    @property
    def macs(self) -> int:
        """MACs per image of the whole chain."""
        return sum(b.macs for b in self.blocks)

    def level(self, k: int) -> tuple[TensorSignature, ...]:
        """The value at level ``k`` (0 = the input, ``num_blocks`` = the output); IRError outside 0..num_blocks."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(self.blocks):
            raise IRError(f"level {k!r} is outside the backbone, which has levels 0..{len(self.blocks)}")
        return self.input if k == 0 else self.blocks[k - 1].outputs

    def __getitem__(self, b: int) -> BlockSignature:
        return self.blocks[b]

    def __iter__(self) -> Iterator[BlockSignature]:
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)


def _text(value: tuple[TensorSignature, ...]) -> str:
    return ", ".join(f"[{', '.join(map(str, t.shape))}] {t.dtype}" for t in value)

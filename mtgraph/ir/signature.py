"""The block signature table: what the IR needs to know about a traced backbone, as frozen values.

The frontend traces a backbone into a chain of blocks; everything the
verifier, the passes and the cost interpreter need from it is here, with no
torch.fx object: each block's name, the values it consumes and produces
(shapes and dtypes), its MACs and parameter count, and what skipping it means
(its :class:`Shortcut`). ``Backbone.signature`` gives the table of a traced
backbone and ``ParamStore.signature`` the table its blocks were copied from.

**Values.** The value at a block boundary (a *level*) is a tuple of
:class:`TensorSignature`, its *members*: the tensors still needed after that
point of the forward, in the order they were computed. Most boundaries carry
one tensor; an encoder-decoder's boundaries inside the decoder carry the
current feature map plus the encoder's skip features still to be read (a
U-Net level holds ``(e1, e2, d3)``, say). A value's *arity* is its member
count. At run time a one-member value is the tensor itself and a value of
several members is a tuple of tensors, so a block, a skip, a gate and a head
each consume and produce one value whatever its arity.

Each row also says where its output members come from
(:attr:`BlockSignature.carried`: passed on unchanged from an input member, or
computed by the block) and names them (:attr:`BlockSignature.members`: the
block that computed the tensor, or a key of the backbone's output dict), so
a consumer can tell a skip feature from the block's own result. The last
member of a value is its *primary* member: the tensor computed most recently
(:attr:`BlockSignature.in_shape` and ``out_shape`` are its shape).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from mtgraph.errors import IRError

__all__ = [
    "TensorSignature", "Shortcut", "BlockSignature", "BackboneSignature", "SHORTCUT_KINDS", "INPUT_MEMBER", "COMPUTED",
    "value_text", "default_members",
]

#: The member name of the backbone's input (the value at level 0).
INPUT_MEMBER = "input"

#: ``BlockSignature.carried`` entry of an output member the block computes itself.
COMPUTED = -1

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
        inputs: the value the block consumes (one tensor, or several at a
            multi-tensor boundary), members in order of computation.
        outputs: the value the block produces.
        macs: multiply-accumulates per image of running the block.
        params: parameters of the block, shared tensors counted once.
        shortcut: what skipping the block means.
        state: the name and shape of every parameter and buffer of the
            block's module (its ``state_dict``): a module with exactly these
            is a copy of this block and costs :attr:`macs`.
        members: a name per output member, unique in the value (default: the
            block's name, numbered ``name#2``... when it has several members).
        carried: per output member, the index of the input member it is
            (passed on unchanged), or -1 when the block computes it (default:
            every member computed).

    Raises:
        IRError: a field of the wrong type or size, a carried index outside
            the inputs, or a carried member whose signature differs from its
            input's.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> conv = backbone.signature.blocks[0]
        >>> conv.name, conv.in_shape, conv.out_shape, conv.macs, conv.params, conv.skippable
        ('0', (3, 8, 8), (4, 6, 6), 3888, 112, False)
        >>> conv.state
        (('0.weight', (4, 3, 3, 3)), ('0.bias', (4,)))
        >>> from mtgraph.ir import BlockSignature, Shortcut, TensorSignature
        >>> skip, new = TensorSignature((8, 16, 16)), TensorSignature((16, 8, 8))
        >>> down = BlockSignature(1, "down1", (skip,), (skip, new), macs=0, params=0, shortcut=Shortcut("none"),
        ...                       members=("enc1", "down1"), carried=(0, -1))
        >>> down.arity_in, down.arity_out, down.out_shape, down.computed
        (1, 2, (16, 8, 8), (1,))
    """

    index: int
    name: str
    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...]
    macs: int
    params: int
    shortcut: Shortcut
    state: tuple[tuple[str, tuple[int, ...]], ...] = ()
    members: tuple[str, ...] = ()
    carried: tuple[int, ...] = ()

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
        arity = len(self.outputs)
        members = _check_strings(owner, "members", self.members) or default_members(self.name, arity)
        if len(members) != arity or len(set(members)) != arity:
            raise IRError(f"{owner}: members must name each of the {arity} output tensors once, got {members!r}")
        object.__setattr__(self, "members", members)
        carried = self.carried or (COMPUTED,) * arity
        if (
            not isinstance(carried, (tuple, list)) or len(carried) != arity
            or any(isinstance(c, bool) or not isinstance(c, int) or not COMPUTED <= c < len(self.inputs) for c in carried)
        ):
            raise IRError(
                f"{owner}: carried must give, per output tensor, an input index (0..{len(self.inputs) - 1}) or -1, "
                f"got {self.carried!r}"
            )
        for k, c in enumerate(carried):
            if c != COMPUTED and self.inputs[c] != self.outputs[k]:
                raise IRError(f"{owner}: output {k} is carried from input {c}, but their signatures differ")
        object.__setattr__(self, "carried", tuple(carried))

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Shape (without batch) of the block's primary (last) input tensor: its only one at a one-tensor boundary."""
        return self.inputs[-1].shape

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape (without batch) of the block's primary (last) output tensor."""
        return self.outputs[-1].shape

    @property
    def arity_in(self) -> int:
        """How many tensors the block consumes."""
        return len(self.inputs)

    @property
    def arity_out(self) -> int:
        """How many tensors the block produces."""
        return len(self.outputs)

    @property
    def computed(self) -> tuple[int, ...]:
        """Indices of the output members the block computes (the others are carried inputs)."""
        return tuple(k for k, c in enumerate(self.carried) if c == COMPUTED)

    @property
    def consumed(self) -> tuple[int, ...]:
        """Indices of the input members the block does not pass on: their last reader is this block."""
        kept = set(self.carried)
        return tuple(j for j in range(len(self.inputs)) if j not in kept)

    @property
    def skippable(self) -> bool:
        """True when the block can be bypassed by its shortcut."""
        return self.shortcut.skippable


def default_members(name: str, arity: int) -> tuple[str, ...]:
    """Member names of a value of ``arity`` tensors computed by block ``name``: ``name``, ``name#2``, ...

    Examples:
        >>> from mtgraph.ir.signature import default_members
        >>> default_members("layer4", 1), default_members("fpn", 3)
        (('layer4',), ('fpn', 'fpn#2', 'fpn#3'))
    """
    return tuple(name if k == 0 else f"{name}#{k + 1}" for k in range(arity))


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
                    f"BackboneSignature: block {b} ({block.name}) consumes {value_text(block.inputs)} but level {b} "
                    f"holds {value_text(previous)}; each block must consume what the previous one produces"
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

    @property
    def output_members(self) -> tuple[str, ...]:
        """The member names of the output value (what :class:`~mtgraph.MemberHead` names)."""
        return self.blocks[-1].members

    def level(self, k: int) -> tuple[TensorSignature, ...]:
        """The value at level ``k`` (0 = the input, ``num_blocks`` = the output); IRError outside 0..num_blocks."""
        self._check_level(k)
        return self.input if k == 0 else self.blocks[k - 1].outputs

    def level_members(self, k: int) -> tuple[str, ...]:
        """The member names of the value at level ``k`` (``("input",)`` at level 0)."""
        self._check_level(k)
        return (INPUT_MEMBER,) if k == 0 else self.blocks[k - 1].members

    def _check_level(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(self.blocks):
            raise IRError(f"level {k!r} is outside the backbone, which has levels 0..{len(self.blocks)}")

    def __getitem__(self, b: int) -> BlockSignature:
        return self.blocks[b]

    def __iter__(self) -> Iterator[BlockSignature]:
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)


def value_text(value: tuple[TensorSignature, ...]) -> str:
    """A value as text: each member's shape and dtype, ``+`` between members.

    Examples:
        >>> from mtgraph.ir import TensorSignature
        >>> from mtgraph.ir.signature import value_text
        >>> value_text((TensorSignature((8, 16, 16)), TensorSignature((16, 8, 8))))
        '[8, 16, 16] float32 + [16, 8, 8] float32'
    """
    return " + ".join(f"[{', '.join(map(str, t.shape))}] {t.dtype}" for t in value)

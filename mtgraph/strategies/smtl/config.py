"""The validated options of a Safe MTL run (:class:`SMTLConfig`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mtgraph.errors import ConfigError

__all__ = ["SMTLConfig", "VARIANTS", "PRIVATE_INITS"]

#: ``smtl`` (§3.2), ``lite`` (L-SMTL, §3.3), ``smtl_c`` and ``lite_c`` (gates after the decoders, §3.4).
VARIANTS = ("smtl", "lite", "smtl_c", "lite_c")
#: How private encoders start: ``fresh`` copies of the traced backbone's blocks, or ``copy`` of the public ones.
PRIVATE_INITS = ("fresh", "copy")


def _number(name: str, value: Any, *, low: float | None = None, high: float | None = None, strict_low: bool = False,
            integer: bool = False, optional: bool = False) -> None:
    if value is None and optional:
        return
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise ConfigError(f"SMTLConfig.{name} must be a finite {'integer' if integer else 'number'}, got {value!r}")
    if low is not None and (value <= low if strict_low else value < low):
        raise ConfigError(f"SMTLConfig.{name} must be {'>' if strict_low else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"SMTLConfig.{name} must be <= {high}, got {value!r}")


@dataclass(frozen=True)
class SMTLConfig:
    """Options of :func:`~mtgraph.strategies.smtl.learn_smtl`.

    Architecture:
        variant: ``"smtl"`` (a soft gate per task mixing the public and the
            private encoder, papers/004 eq. 1), ``"lite"`` (L-SMTL: the gate
            samples one encoder with straight-through Gumbel-softmax, eq. 3-4,
            and the exported network keeps only the chosen one), ``"smtl_c"``
            / ``"lite_c"`` (the same with the gate after the decoders, §3.4).
        start, end: the gated block range (inclusive). Blocks before ``start``
            are one shared stem, blocks ``start..end`` exist as the public copy
            and one private copy per task, blocks after ``end`` belong to each
            task's private decoder. Default: the whole encoder (``0`` to the
            last block, ``end=None``). The ``_c`` variants need ``end`` to be
            the last block (their gate sits after the decoders).
        alpha: initial α_t = P(public) of every gate, in [0, 1] (0.5: the
            reference code's equal logits). 0 and 1 are represented as a
            probability of 1e-12, not an exact zero (MixGate keeps finite logits).
        tau: temperature of the lite variants' Gumbel-softmax (0.1, the
            reference code's; unused by the soft variants).
        learn_alpha: False keeps every α at its initial value (an ablation:
            SMTL with a fixed mix).
        private_init: ``"fresh"`` (copies of the traced backbone's blocks, so
            public and private encoders start equal, as the paper's encoders
            all start from one pretrained ResNet) or ``"copy"`` (copies of the
            public path's weights; the same at build time, differs only if the
            public weights were changed before gating).

    Optimisation (one Adam for everything, as the reference code; the gates
    share the model's learning rate unless ``gate_lr`` is given):
        epochs, batch_size, lr, weight_decay, gate_lr (None: ``lr``),
        grad_clip (None: no clipping).

    Evaluation (the final epoch is always the one kept and reported, notes D.8):
        eval_every: also evaluate the validation data every this many epochs
            during training (None: only once, at the end); eval_batch_size.

    Raises:
        ConfigError: an option out of range or of the wrong type, naming it.

    Examples:
        >>> from mtgraph.strategies.smtl import SMTLConfig
        >>> config = SMTLConfig(variant="lite", epochs=1)
        >>> config.lite, config.mode, config.block_range(4)  # whole encoder of a 4-block backbone
        (True, 'gumbel_st', (0, 3))
        >>> SMTLConfig(alpha=2)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: SMTLConfig.alpha (the initial P(public) of every gate) must be in [0, 1], got 2
    """

    variant: str = "smtl"
    start: int = 0
    end: int | None = None
    alpha: float = 0.5
    tau: float = 0.1
    learn_alpha: bool = True
    private_init: str = "fresh"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    gate_lr: float | None = None
    grad_clip: float | None = None
    eval_every: int | None = None
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"SMTLConfig.variant must be one of {list(VARIANTS)}, got {self.variant!r}")
        _number("start", self.start, low=0, integer=True)
        _number("end", self.end, low=0, integer=True, optional=True)
        if self.end is not None and self.end < self.start:
            raise ConfigError(f"SMTLConfig: the gated block range start={self.start}..end={self.end} is empty; need start <= end")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"SMTLConfig.alpha (the initial P(public) of every gate) must be in [0, 1], got {self.alpha!r}")
        _number("tau", self.tau, low=0, strict_low=True)
        if not isinstance(self.learn_alpha, bool):
            raise ConfigError(f"SMTLConfig.learn_alpha must be True or False, got {self.learn_alpha!r}")
        if self.private_init not in PRIVATE_INITS:
            raise ConfigError(f"SMTLConfig.private_init must be one of {list(PRIVATE_INITS)}, got {self.private_init!r}")
        _number("epochs", self.epochs, low=0, integer=True)
        _number("batch_size", self.batch_size, low=1, integer=True)
        _number("lr", self.lr, low=0, strict_low=True)
        _number("weight_decay", self.weight_decay, low=0)
        _number("gate_lr", self.gate_lr, low=0, strict_low=True, optional=True)
        _number("grad_clip", self.grad_clip, low=0, strict_low=True, optional=True)
        _number("eval_every", self.eval_every, low=1, integer=True, optional=True)
        _number("eval_batch_size", self.eval_batch_size, low=1, integer=True)

    @property
    def lite(self) -> bool:
        """True for the variants that choose one encoder per task (``lite``, ``lite_c``)."""
        return self.variant in ("lite", "lite_c")

    @property
    def after_decoders(self) -> bool:
        """True for the variants whose gate mixes decoder outputs (``smtl_c``, ``lite_c``)."""
        return self.variant.endswith("_c")

    @property
    def mode(self) -> str:
        """The MixGate mode of the gates: ``softmax`` (soft variants) or ``gumbel_st`` (lite variants)."""
        return "gumbel_st" if self.lite else "softmax"

    def block_range(self, num_blocks: int) -> tuple[int, int]:
        """``(start, end)`` for a backbone of ``num_blocks`` blocks; ConfigError naming the values if it does not fit."""
        end = num_blocks - 1 if self.end is None else self.end
        if self.start >= num_blocks or end >= num_blocks:
            raise ConfigError(
                f"SMTLConfig: the gated block range start={self.start}..end={end} is outside the backbone, "
                f"which has blocks 0..{num_blocks - 1}"
            )
        if self.after_decoders and end != num_blocks - 1:
            raise ConfigError(
                f"SMTLConfig: variant {self.variant!r} gates after the decoders, so the gated range must end at the "
                f"last block {num_blocks - 1}; got end={end} (gate a shorter range with variant "
                f"{self.variant.removesuffix('_c')!r})"
            )
        return self.start, end

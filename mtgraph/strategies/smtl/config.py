"""The validated options of a Safe MTL run (:class:`SMTLConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtgraph.errors import ConfigError
from mtgraph.options import check_choice, check_flag, check_number

__all__ = ["SMTLConfig", "VARIANTS", "PRIVATE_INITS", "FORMULATIONS", "DEFAULT_GATE_LR"]

#: ``smtl`` (§3.2), ``lite`` (L-SMTL, §3.3), ``smtl_c`` and ``lite_c`` (gates after the decoders, §3.4).
VARIANTS = ("smtl", "lite", "smtl_c", "lite_c")
#: How private encoders start: ``fresh`` copies of the traced backbone's blocks, or ``copy`` of the public ones.
PRIVATE_INITS = ("fresh", "copy")
#: ``single``: eq. 2, gates learned on the training loss with everything else (the paper's choice);
#: ``bilevel``: eq. 6 (§4.4), gates learned on a held-out part of the training data, first-order.
FORMULATIONS = ("single", "bilevel")
#: The gates' Adam learning rate unless ``gate_lr`` says otherwise (see :class:`SMTLConfig`).
DEFAULT_GATE_LR = 0.02

_OWNER = "SMTLConfig"


@dataclass(frozen=True)
class SMTLConfig:
    """Options of :class:`~mtgraph.strategies.smtl.SMTLStrategy` (and :func:`~mtgraph.strategies.smtl.learn_smtl`).

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
        private_init: ``"fresh"`` (copies of the traced backbone's blocks) or
            ``"copy"`` (copies of the public path's weights; the same at build
            time, differs only if the public weights were changed before
            gating). Either way public and private encoders start equal, **as
            in the paper**: its text does not say, and its reference code
            initialises every encoder, public and private, from the same
            ImageNet-pretrained ResNet (notes B.7). Consequence: the gate's
            gradient ∂L/∂α_t = ⟨∂L/∂z_t, f_S(x) − f_t(x)⟩ is exactly zero at
            the first step. It is zero only there: the public encoder is
            trained by every task and the private one by its task alone, so
            they differ from the first update on, and the gate then learns
            (measured in ``docs/strategies/smtl.md``).

    Formulation:
        formulation: ``"single"`` (eq. 2: gates, encoders and decoders
            minimise the training loss together; the paper's choice, §4.4) or
            ``"bilevel"`` (eq. 6: the gates are fitted on ``gate_fraction`` of
            the training data held out from the encoders and decoders; see
            :mod:`mtgraph.strategies.smtl.strategy` for how, and how it
            differs from the reference code's second-order step).
        gate_fraction: share of the training data held out for the gates
            under ``"bilevel"``, in (0, 1) (the paper does not give its split).

    Optimisation (one Adam, as the reference code; the gates in their own group):
        epochs, batch_size, lr, weight_decay, grad_clip (None: no clipping).
        gate_lr: the gates' Adam learning rate (None: ``lr``, the paper's and
            reference code's setting: one Adam at 1e-4 for everything).
            Default :data:`DEFAULT_GATE_LR` = 0.02, a deviation. Why: Adam
            moves a logit by at most about its learning rate per step, so a
            gate's logit difference moves by at most ``2 · gate_lr`` per step.
            The paper's runs (200 epochs, 8,500 to 55,000 steps at 1e-4) gave
            it room for 1.7 to 11 units (its learned α range from 0.20 to
            0.87). A run of ten epochs over a few hundred images has a few
            hundred steps: at the model's ``lr`` the gate cannot leave about
            0.5 ± 0.2 whatever the data say. 0.02 gives the example's 192
            steps the room of the paper's NYUv2 runs (about 8 units). Measured
            on ``examples/smtl_scenes.py`` (3 seeds, 192 steps, lr 2e-3):
            at ``gate_lr=None`` every α stays in [0.38, 0.50]; at 0.02 the
            gates decide, every one towards its private encoder
            (segmentation 0.07 to 0.14, the unrelated task 0.16 to 0.19,
            depth 0.23 to 0.40), and SMTL's strict η̂ against STN goes from
            100 / 67 / 56 to 100 / 100 / 67 on the three seeds
            (``docs/strategies/smtl.md`` has the table).

    Evaluation (the final epoch is always the one kept and reported, notes D.8):
        eval_every: also evaluate the validation data every this many epochs
            during training (None: only once, at the end); eval_batch_size.

    Where:
        device: where to train (None: the Problem's device, else
            :func:`~mtgraph.train.fit`'s choice); overrides ``Problem.device``.

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
        mtgraph.errors.ConfigError: SMTLConfig.alpha must be a number in [0, 1], got 2
    """

    variant: str = "smtl"
    start: int = 0
    end: int | None = None
    alpha: float = 0.5
    tau: float = 0.1
    learn_alpha: bool = True
    private_init: str = "fresh"
    formulation: str = "single"
    gate_fraction: float = 0.2
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    gate_lr: float | None = DEFAULT_GATE_LR
    grad_clip: float | None = None
    eval_every: int | None = None
    eval_batch_size: int = 64
    device: str | torch.device | None = None

    def __post_init__(self) -> None:
        check_choice(_OWNER, "variant", self.variant, VARIANTS)
        check_number(_OWNER, "start", self.start, low=0, integer=True)
        check_number(_OWNER, "end", self.end, low=0, integer=True, optional=True)
        if self.end is not None and self.end < self.start:
            raise ConfigError(f"SMTLConfig: the gated block range start={self.start}..end={self.end} is empty; need start <= end")
        check_number(_OWNER, "alpha", self.alpha, low=0, high=1)
        check_number(_OWNER, "tau", self.tau, low=0, strict_low=True)
        check_flag(_OWNER, "learn_alpha", self.learn_alpha)
        check_choice(_OWNER, "private_init", self.private_init, PRIVATE_INITS)
        check_choice(_OWNER, "formulation", self.formulation, FORMULATIONS)
        check_number(_OWNER, "gate_fraction", self.gate_fraction, low=0, high=1, strict_low=True, strict_high=True)
        if self.formulation == "bilevel" and not self.learn_alpha:
            raise ConfigError("SMTLConfig: formulation='bilevel' learns the gates on held-out data; with learn_alpha=False "
                              "there is nothing to learn there (use formulation='single')")
        check_number(_OWNER, "epochs", self.epochs, low=0, integer=True)
        check_number(_OWNER, "batch_size", self.batch_size, low=1, integer=True)
        check_number(_OWNER, "lr", self.lr, low=0, strict_low=True)
        check_number(_OWNER, "weight_decay", self.weight_decay, low=0)
        check_number(_OWNER, "gate_lr", self.gate_lr, low=0, strict_low=True, optional=True)
        check_number(_OWNER, "grad_clip", self.grad_clip, low=0, strict_low=True, optional=True)
        check_number(_OWNER, "eval_every", self.eval_every, low=1, integer=True, optional=True)
        check_number(_OWNER, "eval_batch_size", self.eval_batch_size, low=1, integer=True)
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as exc:
                raise ConfigError(f"SMTLConfig.device must name a torch device such as 'cpu' or 'cuda:0', "
                                  f"got {self.device!r}") from exc

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

    @property
    def effective_gate_lr(self) -> float:
        """The gates' learning rate: ``gate_lr``, or ``lr`` when it is None."""
        return self.lr if self.gate_lr is None else self.gate_lr

    def block_range(self, num_blocks: int) -> tuple[int, int]:
        """``(start, end)`` for a backbone of ``num_blocks`` blocks; ConfigError naming the values if it does not fit.

        Examples:
            >>> from mtgraph.strategies.smtl import SMTLConfig
            >>> SMTLConfig(start=1).block_range(5)
            (1, 4)
            >>> SMTLConfig(end=6).block_range(5)
            Traceback (most recent call last):
            ...
            mtgraph.errors.ConfigError: SMTLConfig: the gated block range start=0..end=6 is outside the backbone, ...
        """
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

"""The validated options of an AdaShare run (:class:`AdaShareConfig`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from mtgraph.errors import ConfigError
from mtgraph.options import check_choice, check_flag, check_number

__all__ = ["AdaShareConfig"]

_OWNER = "AdaShareConfig"


@dataclass(frozen=True)
class AdaShareConfig:
    """Every knob of the AdaShare strategy; defaults follow papers/002 (Table 7) and its released code.

    **The policy losses: one consistent pair.** The defaults are the authors'
    released code's regularisers (``sparsity_form="code"``: the mean over the
    learnable blocks of ``−log(1 − α)`` per task, summed over tasks;
    ``sharing_form="code"``: the ``(l + 1)/L``-weighted L1 distance of the raw
    execute logits over unordered task pairs) with the λ Table 7 lists for
    NYU v2 3-task (λ_sp = 0.001, λ_sh = 0.05), which the authors tuned on
    those forms. The paper's printed eq. 5 / 6 (``"paper"``) are options; the
    same λ mean something else with them: eq. 5's ``Σ log α`` pushes every
    execute logit towards skip with a gradient ``λ (1 − α)`` that never
    vanishes (L times the code form's ``λ α / L`` at α = 0.5, L learnable
    blocks), and eq. 6 works on probabilities and weights the first blocks
    most, the code the last.

    **λ are scale-dependent** (measured on ``examples/adashare_scenes.py``'s
    problem: 3 tasks, 8 gated blocks, one search seed, the mean |gradient| on
    a learnable execute logit): the task loss gives about 5e-3; Table 7's
    λ_sh = 0.05 (code form) gives 6.8x that, and two of the three tasks end
    with one identical policy; Table 7's NYU v2 2-task λ_sp = 0.05 gives 0.4x
    and almost every block is skipped. λ_sp = 0.01 and λ_sh = 0.002 (0.1x and
    0.3x) leave three distinct policies, which is what
    :meth:`~mtgraph.strategies.adashare.AdaShareStrategy.config_for` uses.
    The search measures this balance every epoch
    (``history["search"]["records"][e]["gradients"]``) and logs a decision
    saying whether a regulariser outweighs the task signal.

    Search:
        epochs: policy epochs (weight-then-policy cycles); with the curriculum
            it must be at least ``(L − 1) · curriculum_speed + 1`` so every
            gated block gets unlocked.
        weight_steps / policy_steps: steps per turn (None: one pass over the
            80% / 20% split).
        policy_fraction: share of the training set used for the policy (0.2).
        batch_size: batch size of every phase.
        warmup_steps: hard-sharing warm-up steps (None: ``warmup_fraction`` of
            the search's total steps; the paper warms up for 20%).
        weight_lr, weight_momentum, weight_decay: SGD of the weights in the
            warm-up and the search (the paper: SGD; Table 7: lr 0.001).
        policy_lr, policy_weight_decay: Adam of the policy logits (0.01, 5e-4).
        tau0, tau_decay: Gumbel-softmax temperature ``tau0 · tau_decay**epoch``.
        lambda_sparsity, lambda_sharing: λ_sp, λ_sh of eq. 7 (>= 0; Table 7,
            NYU v2 3-task: 0.001 and 0.05).
        sparsity_form, sharing_form: ``"code"`` (default, the released code's
            regularisers, on which Table 7's λ were tuned) or ``"paper"``
            (eq. 5 / eq. 6 as printed), see :mod:`.policy`.
        curriculum: learn the last l blocks' policies at epoch l (False: all
            blocks from the first epoch, the "w/o curriculum" ablation).
        curriculum_speed: epochs per newly unlocked block.
        straight_through: the hard mode: every step samples a one-hot
            select-or-skip decision per (task, block) instead of the paper's
            soft Gumbel mixture (notes/methods-001-002.md §B.5 item 6). The
            weight turns then run only the sampled paths, and tasks whose
            sampled decisions agree on a prefix of blocks compute it once
            (:mod:`.routing`); the policy turns use the straight-through
            estimator (one-hot forward, soft gradient). False (the paper):
            soft mixtures in both turns.
        task_weights: λ_k of eq. 4 per task (None: 1 for every task, the sum).
        calibration_batches: training batches used to re-estimate BatchNorm
            statistics per call site before every hard evaluation.
        decided_margin: a gate counts as decided when ``|α − 0.5|`` is at
            least this; gates still undecided when the search ends are
            reported with a warning
            (:class:`~mtgraph.strategies.adashare.UndecidedPolicyWarning`) and
            a decision, since their argmax is nearly a coin flip (0.25:
            decided means α <= 0.25 or α >= 0.75).
    Derive and retrain:
        derive: ``"argmax"`` (execute iff α >= 0.5) or ``"sample"`` (the
            paper's "we sample a select-or-skip decision").
        num_samples: with ``"sample"``, how many policies are drawn; every
            distinct one is retrained and the best on validation is kept.
        retrain_steps: optimizer steps of the retraining.
        retrain_lr: Adam learning rate of the retraining (betas (0.5, 0.999),
            weight decay 1e-4, as the released code).
        retrain_lr_step: halve the learning rate every this many steps (None: constant).
        retrain_select: ``"best"`` keeps the weights of the best validation
            evaluation (the paper's early stop), ``"last"`` the final ones.
        retrain_eval_every: evaluate every this many epochs while retraining.
    Placement:
        device: where every phase trains (``"cpu"``, ``"cuda:0"``; None: the
            problem's device, else :func:`~mtgraph.train.fit`'s choice).

    Raises:
        ConfigError: a value out of its range (a negative λ, ``epochs < 1``,
            ``policy_fraction`` outside (0, 1), an unknown form, ...).

    Examples:
        >>> from mtgraph.strategies.adashare import AdaShareConfig
        >>> config = AdaShareConfig(epochs=8, retrain_steps=100)
        >>> config.tau0, config.sharing_form, config.epochs_to_unlock(8)  # 8 gated blocks: all unlocked after 8 epochs
        (5.0, 'code', 8)
        >>> AdaShareConfig(lambda_sparsity=-0.1)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: AdaShareConfig.lambda_sparsity must be a number >= 0, got -0.1
    """

    epochs: int = 24
    weight_steps: int | None = None
    policy_steps: int | None = None
    policy_fraction: float = 0.2
    batch_size: int = 16
    warmup_steps: int | None = None
    warmup_fraction: float = 0.2
    weight_lr: float = 0.001
    weight_momentum: float = 0.9
    weight_decay: float = 1e-4
    policy_lr: float = 0.01
    policy_weight_decay: float = 5e-4
    tau0: float = 5.0
    tau_decay: float = 0.965
    lambda_sparsity: float = 0.001
    lambda_sharing: float = 0.05
    sparsity_form: Literal["paper", "code"] = "code"
    sharing_form: Literal["paper", "code"] = "code"
    curriculum: bool = True
    curriculum_speed: int = 1
    straight_through: bool = False
    task_weights: Mapping[str, float] | None = None
    calibration_batches: int = 8
    decided_margin: float = 0.25
    derive: Literal["argmax", "sample"] = "argmax"
    num_samples: int = 1
    retrain_steps: int = 2000
    retrain_lr: float = 0.001
    retrain_lr_step: int | None = None
    retrain_select: Literal["best", "last"] = "best"
    retrain_eval_every: int = 1
    device: str | None = None

    def __post_init__(self) -> None:
        check_number(_OWNER, "lambda_sparsity", self.lambda_sparsity, low=0)
        check_number(_OWNER, "lambda_sharing", self.lambda_sharing, low=0)
        check_number(_OWNER, "epochs", self.epochs, low=1, integer=True)
        check_number(_OWNER, "weight_steps", self.weight_steps, low=1, integer=True, optional=True)
        check_number(_OWNER, "policy_steps", self.policy_steps, low=1, integer=True, optional=True)
        # The weights need data too: the policy's share of the training set stays below 1.
        check_number(_OWNER, "policy_fraction", self.policy_fraction, low=0, high=1, strict_low=True, strict_high=True)
        check_number(_OWNER, "batch_size", self.batch_size, low=1, integer=True)
        check_number(_OWNER, "warmup_steps", self.warmup_steps, low=0, integer=True, optional=True)
        check_number(_OWNER, "warmup_fraction", self.warmup_fraction, low=0)
        for name in ("weight_lr", "policy_lr", "retrain_lr", "tau0"):
            check_number(_OWNER, name, getattr(self, name), low=0, strict_low=True)
        for name in ("weight_momentum", "weight_decay", "policy_weight_decay"):
            check_number(_OWNER, name, getattr(self, name), low=0)
        check_number(_OWNER, "tau_decay", self.tau_decay, low=0, high=1, strict_low=True)
        check_choice(_OWNER, "sparsity_form", self.sparsity_form, ("paper", "code"))
        check_choice(_OWNER, "sharing_form", self.sharing_form, ("paper", "code"))
        check_flag(_OWNER, "curriculum", self.curriculum)
        check_number(_OWNER, "curriculum_speed", self.curriculum_speed, low=1, integer=True)
        check_flag(_OWNER, "straight_through", self.straight_through)
        check_number(_OWNER, "calibration_batches", self.calibration_batches, low=1, integer=True)
        check_number(_OWNER, "decided_margin", self.decided_margin, low=0, high=0.5)
        check_choice(_OWNER, "derive", self.derive, ("argmax", "sample"))
        check_number(_OWNER, "num_samples", self.num_samples, low=1, integer=True)
        check_number(_OWNER, "retrain_steps", self.retrain_steps, low=0, integer=True)
        check_number(_OWNER, "retrain_lr_step", self.retrain_lr_step, low=1, integer=True, optional=True)
        check_choice(_OWNER, "retrain_select", self.retrain_select, ("best", "last"))
        check_number(_OWNER, "retrain_eval_every", self.retrain_eval_every, low=1, integer=True)
        if self.task_weights is not None:
            if not isinstance(self.task_weights, Mapping):
                raise ConfigError(f"{_OWNER}.task_weights must be a mapping task name -> weight, got "
                                  f"{type(self.task_weights).__name__}")
            for task, weight in self.task_weights.items():
                check_number(_OWNER, f"task_weights[{task!r}]", weight, low=0)
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ConfigError(f"{_OWNER}.device must name a torch device such as 'cpu' or 'cuda:0', "
                                  f"got {self.device!r}") from None

    def epochs_to_unlock(self, num_gated: int) -> int:
        """Epochs after which every gated block's policy is learnable (1 without curriculum).

        Examples:
            >>> from mtgraph.strategies.adashare import AdaShareConfig
            >>> AdaShareConfig(curriculum_speed=3).epochs_to_unlock(8), AdaShareConfig(curriculum=False).epochs_to_unlock(8)
            (22, 1)
        """
        return (num_gated - 1) * self.curriculum_speed + 1 if self.curriculum else 1

    def loss_weights(self, tasks: tuple[str, ...]) -> dict[str, float]:
        """λ_k per task of eq. 4 (1 each without ``task_weights``).

        Raises:
            ConfigError: ``task_weights`` does not name exactly ``tasks``.

        Examples:
            >>> from mtgraph.strategies.adashare import AdaShareConfig
            >>> AdaShareConfig().loss_weights(("seg", "depth"))
            {'seg': 1.0, 'depth': 1.0}
            >>> AdaShareConfig(task_weights={"seg": 2.0}).loss_weights(("seg", "depth"))
            Traceback (most recent call last):
            ...
            mtgraph.errors.ConfigError: AdaShareConfig.task_weights must name every task ['seg', 'depth']; missing ['depth'], unknown []
        """
        if self.task_weights is None:
            return {t: 1.0 for t in tasks}
        unknown = sorted(set(self.task_weights) - set(tasks))
        missing = [t for t in tasks if t not in self.task_weights]
        if unknown or missing:
            raise ConfigError(f"{_OWNER}.task_weights must name every task {list(tasks)}; missing {missing}, unknown {unknown}")
        return {t: float(self.task_weights[t]) for t in tasks}


"""Baselines at equal budget: the all-in-one network width-scaled to spend each budget (papers/003 §6).

The paper compares a grouping that spends ``b`` networks with one all-task
network whose encoder is grown until it costs ``b`` networks ("each baseline
was evaluated with multiple encoder sizes ... so that the results could be
compared at many inference time budgets"). Here that network is One-Net on
the problem's backbone rescaled by ``problem.rescale``, its width found by
:func:`mtgraph.evaluation.width.match_width` so that its GMac (heads
included) is within ±5 % of the budget's, ``unit.gmac(b)``. A budget no width
reaches within ±5 % gets no baseline (the row says why); a width multiplier
of exactly 1 is the all-in-one candidate itself, which is reused.

Each scaled network is trained as a candidate labelled ``w<b>`` (``w2_5``
for 2.5 networks) with the candidates' schedule, seed and data, on its own
backbone variant (:attr:`~.candidates.TrainingSetup.variants`), so reruns
skip it like any candidate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mtgraph.errors import ConfigError
from mtgraph.frontend.backbone import Backbone
from mtgraph.problem import Problem
from mtgraph.strategies.grouping.units import NetworkUnit

__all__ = ["ScaledBaseline", "scaled_label", "plan_scaled_baselines"]


@dataclass(frozen=True)
class ScaledBaseline:
    """The all-in-one network width-scaled to one budget (before training).

    Attributes:
        budget: the budget, in networks.
        target_gmac: its GMac (``unit.gmac(budget)``).
        multiplier: the width multiplier found (None: none; see ``note``).
        gmac: the GMac of One-Net at that multiplier.
        within: whether ``gmac`` is within ±5 % of ``target_gmac``.
        note: why there is no baseline at this budget ("" when there is).
        label: the candidate label it trains under (None: not trained; the
            all-in-one candidate itself when ``multiplier`` is 1).

    Examples:
        >>> from mtgraph.strategies.grouping import ScaledBaseline
        >>> ScaledBaseline(2.0, 0.002, 1.4, 0.00201, True, "", "w2").label
        'w2'
    """

    budget: float
    target_gmac: float
    multiplier: float | None
    gmac: float | None
    within: bool
    note: str
    label: str | None


def scaled_label(budget: float) -> str:
    """The candidate label of the all-in-one network scaled to ``budget`` networks (file-safe).

    Examples:
        >>> from mtgraph.strategies.grouping import scaled_label
        >>> scaled_label(2.0), scaled_label(2.5)
        ('w2', 'w2_5')
    """
    return "w" + f"{budget:g}".replace(".", "_").replace("-", "m").replace("+", "")


def plan_scaled_baselines(
    problem: Problem, budgets: Sequence[float]
) -> tuple[list[ScaledBaseline], dict[str, tuple[Backbone, Mapping[str, nn.Module]]]]:
    """For each budget, the width whose One-Net spends it, and the rescaled backbones to train.

    Args:
        problem: gives the tasks, the unit and ``rescale``.
        budgets: the budgets, in networks.

    Returns:
        ``(plans, variants)``: one :class:`ScaledBaseline` per budget, and
        label -> (backbone, heads) for the ones to train (a multiplier of
        exactly 1 needs no training: it is the all-in-one candidate).

    Raises:
        ConfigError: the problem has no ``rescale``.

    Examples:
        >>> from mtgraph.strategies.grouping import plan_scaled_baselines
        >>> from mtgraph.workflow import scene_problem
        >>> problem = scene_problem(("seg", "depth"), num_train=4, num_val=4)
        >>> plans, variants = plan_scaled_baselines(problem, [1.0, 2.0])
        >>> [(p.within, p.label) for p in plans], sorted(variants)
        ([(True, None), (True, 'w2')], ['w2'])
    """
    from mtgraph.evaluation.width import match_width

    if problem.rescale is None:
        raise ConfigError(
            "width-scaled baselines need problem.rescale (width multiplier -> backbone, heads): build the Problem with "
            "rescale=..., or set GroupingConfig.width_baselines=False"
        )
    unit = NetworkUnit.of(problem)
    plans: list[ScaledBaseline] = []
    variants: dict[str, tuple[Backbone, Mapping[str, nn.Module]]] = {}
    for budget in budgets:
        target = unit.gmac(budget)
        # The search and the rescaled weights must not depend on (nor move) the caller's random state.
        with torch.random.fork_rng():
            torch.manual_seed(problem.seed)
            match = match_width(problem, target)
        label: str | None = None
        if match.within and match.multiplier is not None and match.multiplier != 1.0:
            label = scaled_label(budget)
            with torch.random.fork_rng():
                torch.manual_seed(problem.seed)
                backbone, heads = problem.rescale(match.multiplier)
            variants[label] = (backbone, {t: heads[t] for t in problem.task_names})
        plans.append(ScaledBaseline(budget, target, match.multiplier, match.gmac, match.within, match.note, label))
    return plans, variants

"""The One-Net width-scaled to a target GMac: the matched-compute baseline of the evaluation protocol.

A learned architecture usually costs more than One-Net (tasks branch and run
some blocks more than once) and less than the single-task networks. To tell
"the structure helps" from "more compute helps", the protocol also trains a
One-Net made wider until it costs as much as the learned architecture.

:func:`match_width` searches the width multiplier ``m`` of the problem's
``rescale`` (``m -> (backbone, heads)``) so that One-Net on the rescaled
backbone is within a relative tolerance (±5 %) of the target GMac. Channels
are integers, so the cost is a step function of ``m``: the search brackets
the target, bisects, and keeps the closest cost it measured. When no
multiplier gets within the tolerance the result says so, with the closest
cost, instead of silently comparing at another cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mtgraph.analysis.cost import cost
from mtgraph.errors import ConfigError, MTGraphError
from mtgraph.ir.builders import one_net
from mtgraph.params import ParamStore
from mtgraph.problem import Problem

__all__ = ["WidthMatch", "one_net_gmac", "match_width"]

#: The multipliers tried stay within [1/_RANGE, _RANGE] of the problem's own width.
_RANGE = 64.0


@dataclass(frozen=True)
class WidthMatch:
    """The outcome of :func:`match_width`.

    Attributes:
        target: the GMac asked for.
        multiplier: the width multiplier whose One-Net came closest (None: the
            problem cannot be rescaled).
        gmac: that One-Net's GMac (None with ``multiplier``).
        within: whether ``gmac`` is within the tolerance of ``target``.
        note: why the match failed or is missing ("" when ``within``).

    Examples:
        >>> from mtgraph.evaluation.width import WidthMatch
        >>> WidthMatch(target=0.01, multiplier=1.2, gmac=0.0102, within=True).relative_error
        0.02
    """

    target: float
    multiplier: float | None
    gmac: float | None
    within: bool
    note: str = ""

    @property
    def relative_error(self) -> float | None:
        """``(gmac - target) / target``, rounded to 12 digits (None without a match)."""
        return None if self.gmac is None else round((self.gmac - self.target) / self.target, 12)


def one_net_gmac(problem: Problem, multiplier: float) -> float:
    """GMac of One-Net on the problem's backbone and heads rescaled by ``multiplier`` (``problem.rescale``).

    Raises:
        ConfigError: the problem has no ``rescale``, or it returns something other than (backbone, heads)
            for the problem's tasks.

    Examples:
        >>> from mtgraph.evaluation.width import one_net_gmac
        >>> from mtgraph.workflow import scene_problem
        >>> problem = scene_problem(("seg", "depth"), size=32, width=4, num_train=2, num_val=2)
        >>> one_net_gmac(problem, 1.0) == problem.reference_costs.one_net_gmac
        True
    """
    backbone, heads = _rescaled(problem, multiplier)
    graph = one_net(backbone.num_blocks, problem.task_names)
    return cost(graph, ParamStore.create(graph, backbone, heads)).gmac


def _rescaled(problem: Problem, multiplier: float) -> tuple:  # type: ignore[type-arg]
    from mtgraph.frontend.backbone import Backbone

    if problem.rescale is None:
        raise ConfigError(
            "the problem has no rescale (width multiplier -> backbone, heads); give Problem(rescale=...) to compare "
            "with a width-matched One-Net"
        )
    built = problem.rescale(multiplier)
    if not (isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], Backbone)):
        raise ConfigError(f"problem.rescale({multiplier:g}) must return (traced backbone, heads), got {type(built).__name__}")
    backbone, heads = built
    missing = [t for t in problem.task_names if t not in heads]
    if missing:
        raise ConfigError(f"problem.rescale({multiplier:g}) returned no heads for tasks {missing}")
    return backbone, {t: heads[t] for t in problem.task_names}


def match_width(problem: Problem, target_gmac: float, *, tolerance: float = 0.05, evaluations: int = 24) -> WidthMatch:
    """The width multiplier whose One-Net costs ``target_gmac`` (within ``tolerance``, relative).

    Each step rebuilds the backbone through ``problem.rescale`` and costs
    One-Net on it; at most ``evaluations`` of them.

    Args:
        problem: gives the tasks and ``rescale``.
        target_gmac: the GMac to match (the learned architecture's).
        tolerance: the relative distance accepted (0.05: ±5 %).
        evaluations: how many multipliers to try at most.

    Returns:
        A :class:`WidthMatch` (``within`` False, with the closest cost and a
        note, when the tolerance was not reached; ``multiplier`` None when the
        problem has no ``rescale`` or it failed).

    Raises:
        ConfigError: ``target_gmac`` or ``tolerance`` is not a number > 0.

    Examples:
        >>> from mtgraph.evaluation.width import match_width
        >>> from mtgraph.workflow import scene_problem
        >>> problem = scene_problem(("seg", "depth"), size=32, width=4, num_train=2, num_val=2)
        >>> target = 1.5 * problem.reference_costs.one_net_gmac
        >>> match = match_width(problem, target)
        >>> match.within, abs(match.gmac - target) <= 0.05 * target, match.multiplier > 1
        (True, True, True)
    """
    for name, value in (("target_gmac", target_gmac), ("tolerance", tolerance)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"match_width: {name} must be a finite number > 0, got {value!r}")
    if problem.rescale is None:
        return WidthMatch(target_gmac, None, None, False, "the problem has no rescale (width multiplier -> backbone, "
                                                          "heads), so no width-matched One-Net was trained")
    tried: dict[float, float] = {}

    def measure(m: float) -> float:
        if m not in tried:
            tried[m] = one_net_gmac(problem, m)
        return tried[m]

    def close_enough(m: float) -> bool:
        return abs(measure(m) - target_gmac) <= tolerance * target_gmac / 2  # well inside: stop searching

    try:
        low = high = 1.0
        # Bracket the target: cost grows with the width.
        while measure(high) < target_gmac and high < _RANGE and len(tried) < evaluations:
            low, high = high, high * 2.0
        while measure(low) > target_gmac and low > 1.0 / _RANGE and len(tried) < evaluations:
            low, high = low / 2.0, low
        bracketed = measure(low) <= target_gmac <= measure(high)  # else the target is out of the range tried
        while bracketed and len(tried) < evaluations and not (close_enough(low) or close_enough(high)) \
                and high - low > 1e-4:
            middle = (low + high) / 2.0
            if measure(middle) < target_gmac:
                low = middle
            else:
                high = middle
    except MTGraphError as exc:
        if not tried:
            return WidthMatch(target_gmac, None, None, False, f"rescaling the problem failed: {exc}")
    best = min(tried, key=lambda m: (abs(tried[m] - target_gmac), abs(m - 1.0)))
    gmac = tried[best]
    within = abs(gmac - target_gmac) <= tolerance * target_gmac
    note = "" if within else (
        f"no width multiplier gives a One-Net within ±{tolerance:.0%} of {target_gmac:.4g} GMac; the closest "
        f"(×{best:.3g}) costs {gmac:.4g} GMac ({(gmac - target_gmac) / target_gmac:+.1%})"
    )
    return WidthMatch(target_gmac, best, gmac, within, note)

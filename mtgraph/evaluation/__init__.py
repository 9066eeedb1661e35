"""The evaluation protocol: does a learned architecture beat trivial and matched-compute baselines?

:func:`evaluate` runs a strategy over several seeds, retrains from scratch
(one :class:`Schedule` for all) the learned architecture, STN, One-Net, a
One-Net width-scaled to the learned GMac and random architectures of the
strategy's own search space at the learned GMac, and reports each one's
Δ_MTL with a 95 % interval and the paired same-seed differences. See
``docs/evaluation.md``.

Modules: :mod:`~mtgraph.evaluation.driver` (the protocol),
:mod:`~mtgraph.evaluation.units` (checkpointed units and resume),
:mod:`~mtgraph.evaluation.schedule` (the common training recipe),
:mod:`~mtgraph.evaluation.width` (width matching),
:mod:`~mtgraph.evaluation.stats` (t-intervals),
:mod:`~mtgraph.evaluation.results` (rows, summaries, the ``results.json`` schema),
:mod:`~mtgraph.evaluation.report` (``report.md`` and the figure),
:mod:`~mtgraph.executors` (sequential, process pool, Ray).
"""

from mtgraph.evaluation.driver import Evaluation, evaluate
from mtgraph.evaluation.results import validate_results
from mtgraph.evaluation.schedule import Schedule, retrain
from mtgraph.evaluation.stats import Interval, paired_difference, t_interval, t_quantile
from mtgraph.evaluation.width import WidthMatch, match_width

__all__ = [
    "evaluate", "Evaluation", "Schedule", "retrain", "match_width", "WidthMatch", "t_interval", "t_quantile",
    "paired_difference", "Interval", "validate_results",
]

"""The ``grouping`` strategy: which tasks share a network (papers/003, TG).

Task grouping trains candidate networks on subsets of the tasks (or predicts
their losses from early checkpoints or from pair networks), then picks the
set of networks that serves every task with the lowest summed loss under an
inference budget. In mtgraph the chosen networks become one graph split at
the input.

* :mod:`~mtgraph.strategies.grouping.selection` holds the pure part:
  candidate records, exact network selection (branch and bound, brute force
  for checking), the higher-order and early-stopping approximations, the
  Random baseline and budget sweeps. It knows nothing about graphs or
  training.
* :mod:`~mtgraph.strategies.grouping.candidates` trains the candidate
  networks (sequentially, in local processes or on Ray) and records their
  validation losses and costs; reruns skip finished candidates.
* :mod:`~mtgraph.strategies.grouping.solution` turns a chosen set into one
  MTGraph with the trained candidates' weights.
* :mod:`~mtgraph.strategies.grouping.strategy` is the driver
  :func:`learn_grouping` and its :class:`GroupingConfig`.
"""

from mtgraph.strategies.grouping.candidates import (
    EXECUTORS,
    KEEP,
    PHASES,
    SMALL,
    CandidateRecord,
    CandidateRun,
    CandidateSpec,
    TrainingSetup,
    TrainOptions,
    candidate_specs,
    load_candidate,
    network_costs,
    run_candidate,
    train_candidates,
    validation_losses,
)
from mtgraph.strategies.grouping.selection import (
    ApproximateSelection,
    Candidate,
    RandomBaseline,
    Solution,
    SweepPoint,
    brute_force_select,
    budget_sweep,
    cheapest_cover,
    early_stopping_approximation,
    higher_order_approximation,
    higher_order_candidates,
    predict_from_pairs,
    random_baseline,
    random_solution,
    rescore,
    select_networks,
    train_chosen,
)
from mtgraph.strategies.grouping.solution import CompiledSolution, build_solution, solution_keys
from mtgraph.strategies.grouping.strategy import (
    COSTS,
    METHODS,
    GroupingConfig,
    config_for_budget,
    learn_grouping,
    solution_dict,
)

__all__ = [
    # selection
    "ApproximateSelection", "Candidate", "RandomBaseline", "Solution", "SweepPoint", "brute_force_select",
    "budget_sweep", "cheapest_cover", "early_stopping_approximation", "higher_order_approximation",
    "higher_order_candidates", "predict_from_pairs", "random_baseline", "random_solution", "rescore",
    "select_networks", "train_chosen",
    # candidates
    "SMALL", "PHASES", "EXECUTORS", "KEEP", "CandidateSpec", "TrainOptions", "CandidateRecord", "TrainingSetup",
    "CandidateRun", "candidate_specs", "validation_losses", "network_costs", "run_candidate", "train_candidates",
    "load_candidate",
    # solution
    "CompiledSolution", "build_solution", "solution_keys",
    # driver
    "METHODS", "COSTS", "GroupingConfig", "config_for_budget", "learn_grouping", "solution_dict",
]

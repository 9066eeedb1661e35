"""The ``grouping`` strategy: which tasks share a network (papers/003, TG).

Task grouping trains candidate networks on subsets of the tasks (or predicts
their losses from early runs or from pair networks), then picks the set of
networks that serves every task with the lowest summed loss under an
inference budget. In mtgraph the chosen networks are One-Net split at the
input, built by the ``split`` pass.

* :mod:`~mtgraph.strategies.grouping.entry`: :class:`GroupingStrategy`, the
  front door (``registry()["grouping"]``).
* :mod:`~mtgraph.strategies.grouping.config`: :class:`GroupingConfig`.
* :mod:`~mtgraph.strategies.grouping.units`: a GMac :class:`~mtgraph.Budget`
  in the paper's networks, and back.
* :mod:`~mtgraph.strategies.grouping.selection` holds the pure part:
  candidate records, exact network selection (branch and bound, brute force
  for checking), the higher-order and early-stopping approximations, the
  Random and Pessimal baselines and budget sweeps. It knows nothing about
  graphs or training.
* :mod:`~mtgraph.strategies.grouping.candidates` trains the candidate
  networks (sequentially, in local processes or on Ray) and records their
  validation losses and costs; reruns skip finished candidates.
* :mod:`~mtgraph.strategies.grouping.solution` builds a chosen set by passes
  on One-Net, with the trained candidates' weights.
* :mod:`~mtgraph.strategies.grouping.scaled`: the all-in-one baseline
  width-scaled to each budget.
* :mod:`~mtgraph.strategies.grouping.partitions`: random groupings at a budget
  (the strategy's ``sample_random``).
* :mod:`~mtgraph.strategies.grouping.strategy`: the driver
  :func:`run_grouping`, and :func:`learn_grouping` (kept for one release).
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
from mtgraph.strategies.grouping.config import COSTS, METHODS, OPTIMIZERS, GroupingConfig, planned_trainings
from mtgraph.strategies.grouping.entry import GroupingStrategy
from mtgraph.strategies.grouping.partitions import groupings_near, random_partition, stirling2
from mtgraph.strategies.grouping.report import solution_dict
from mtgraph.strategies.grouping.scaled import ScaledBaseline, plan_scaled_baselines, scaled_label
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
    pessimal_select,
    predict_from_pairs,
    random_baseline,
    random_solution,
    rescore,
    select_networks,
    train_chosen,
)
from mtgraph.strategies.grouping.solution import CompiledSolution, build_solution, groups_pipeline, path_keys
from mtgraph.strategies.grouping.strategy import DEFAULT_NETWORKS, learn_grouping, run_grouping
from mtgraph.strategies.grouping.units import NetworkUnit, budget_of_networks, gmac_limit, networks_in

__all__ = [
    # front door
    "GroupingStrategy", "GroupingConfig", "METHODS", "COSTS", "OPTIMIZERS", "planned_trainings",
    "NetworkUnit", "networks_in", "gmac_limit", "budget_of_networks", "DEFAULT_NETWORKS", "run_grouping", "learn_grouping",
    # selection
    "ApproximateSelection", "Candidate", "RandomBaseline", "Solution", "SweepPoint", "brute_force_select",
    "budget_sweep", "cheapest_cover", "early_stopping_approximation", "higher_order_approximation",
    "higher_order_candidates", "pessimal_select", "predict_from_pairs", "random_baseline", "random_solution",
    "rescore", "select_networks", "train_chosen", "solution_dict",
    # candidates
    "SMALL", "PHASES", "EXECUTORS", "KEEP", "CandidateSpec", "TrainOptions", "CandidateRecord", "TrainingSetup",
    "CandidateRun", "candidate_specs", "validation_losses", "network_costs", "run_candidate", "train_candidates",
    "load_candidate",
    # solution and random groupings
    "CompiledSolution", "build_solution", "groups_pipeline", "path_keys", "stirling2", "random_partition",
    "groupings_near", "ScaledBaseline", "scaled_label", "plan_scaled_baselines",
]

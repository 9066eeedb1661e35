"""Does a learned policy reflect task relatedness? Hamming distances between the tasks' policies.

papers/002 claims that policy similarity tracks task relatedness (fig. 3e:
surface normals and depth, keypoints and edges). On a problem whose task
clusters are known by design (the scenes' "designed" preset: {seg, edges},
{depth, normals}, and an unrelated task), related tasks' policies should be
closer than unrelated ones': :func:`relatedness_gap` compares the mean Hamming
distance (blocks on which two tasks decide differently) within the clusters
with the mean across them.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from mtgraph.errors import ConfigError
from mtgraph.strategies.adashare.policy import derive_policy
from mtgraph.strategies.adashare.search import search_policy
from mtgraph.strategies.result import Heatmap, Table

if TYPE_CHECKING:
    from mtgraph.problem import Problem
    from mtgraph.strategies.adashare.config import AdaShareConfig

__all__ = ["hamming_matrix", "RelatednessGap", "relatedness_gap", "RelatednessEvidence", "relatedness_over_seeds"]


def _check(decisions: torch.Tensor, tasks: Sequence[str]) -> torch.Tensor:
    if not isinstance(decisions, torch.Tensor) or decisions.dtype != torch.bool or decisions.ndim != 2:
        raise ConfigError("policy decisions must be a bool tensor [tasks, gated blocks] (True = execute)")
    if decisions.shape[0] != len(tasks):
        raise ConfigError(f"policy decisions have {decisions.shape[0]} rows for {len(tasks)} tasks {list(tasks)}")
    return decisions.detach().cpu()


def hamming_matrix(decisions: torch.Tensor, tasks: Sequence[str]) -> Heatmap:
    """The number of gated blocks on which each pair of tasks decides differently.

    Args:
        decisions: bool ``[tasks, gated blocks]``, True = execute.
        tasks: task names (rows of ``decisions``).

    Returns:
        A square :class:`~mtgraph.strategies.result.Heatmap` of Hamming distances.

    Raises:
        ConfigError: malformed ``decisions``.

    Examples:
        >>> import torch
        >>> from mtgraph.strategies.adashare import hamming_matrix
        >>> u = torch.tensor([[True, True, False], [True, False, False], [False, False, True]])
        >>> hamming_matrix(u, ["seg", "edges", "depth"]).values
        ((0.0, 1.0, 3.0), (1.0, 0.0, 2.0), (3.0, 2.0, 0.0))
    """
    u = _check(decisions, tasks).int()
    distances = (u[:, None, :] != u[None, :, :]).sum(dim=-1)
    return Heatmap.from_matrix("policy Hamming distance (blocks decided differently)", tasks, distances.double())


@dataclass(frozen=True)
class RelatednessGap:
    """Mean policy distance within designed task clusters and across them.

    Attributes:
        within: mean Hamming distance over pairs of tasks of one cluster.
        across: mean over every other pair (different clusters, or a task outside every cluster).
        within_pairs / across_pairs: the pairs and their distances.

    Examples:
        >>> from mtgraph.strategies.adashare import RelatednessGap
        >>> gap = RelatednessGap(within=1.0, across=2.5, within_pairs={}, across_pairs={})
        >>> gap.holds, gap.gap
        (True, 1.5)
    """

    within: float
    across: float
    within_pairs: dict[str, float]
    across_pairs: dict[str, float]

    @property
    def gap(self) -> float:
        """``across − within``: positive when related tasks' policies are closer."""
        return self.across - self.within

    @property
    def holds(self) -> bool:
        """Whether related tasks' policies are strictly closer than unrelated ones'."""
        return self.within < self.across


def relatedness_gap(decisions: torch.Tensor, tasks: Sequence[str], clusters: Sequence[Sequence[str]]) -> RelatednessGap:
    """Compare the policies' Hamming distances within designed clusters with those across them.

    Args:
        decisions: bool ``[tasks, gated blocks]``, True = execute.
        tasks: task names (rows of ``decisions``).
        clusters: groups of related tasks, e.g. ``[("seg", "edges"), ("depth", "normals")]``;
            a task in no cluster is unrelated to every other.

    Returns:
        The :class:`RelatednessGap`.

    Raises:
        ConfigError: malformed ``decisions``, a cluster naming an unknown task
            or a task twice, or no pair within or across clusters.

    Examples:
        >>> import torch
        >>> from mtgraph.strategies.adashare import relatedness_gap
        >>> u = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 1], [0, 1, 1, 1], [0, 1, 1, 1], [1, 0, 1, 0]], dtype=torch.bool)
        >>> gap = relatedness_gap(u, ["seg", "edges", "depth", "normals", "unrelated"],
        ...                       [("seg", "edges"), ("depth", "normals")])
        >>> gap.within, gap.across, gap.holds
        (0.5, 2.625, True)
    """
    tasks = tuple(tasks)
    u = _check(decisions, tasks)
    seen: list[str] = []
    for cluster in clusters:
        for task in cluster:
            if task not in tasks:
                raise ConfigError(f"cluster {list(cluster)} names {task!r}, which is not one of the tasks {list(tasks)}")
            if task in seen:
                raise ConfigError(f"task {task!r} is in two clusters")
            seen.append(task)
    label = {t: k for k, cluster in enumerate(clusters) for t in cluster}
    within: dict[str, float] = {}
    across: dict[str, float] = {}
    for (i, a), (j, b) in itertools.combinations(enumerate(tasks), 2):
        distance = float((u[i] != u[j]).sum())
        related = a in label and label.get(b) == label[a]
        (within if related else across)[f"{a}-{b}"] = distance
    if not within or not across:
        raise ConfigError(f"the clusters {[list(c) for c in clusters]} leave no pair of tasks "
                          f"{'within' if not within else 'across'} them to compare")
    return RelatednessGap(statistics.mean(within.values()), statistics.mean(across.values()), within, across)


@dataclass(frozen=True)
class RelatednessEvidence:
    """The relatedness gap of learned policies over several search seeds.

    Attributes:
        clusters: the designed clusters.
        per_seed: seed -> the gap of the policy learned with that seed.
        policies: seed -> the learned decisions (bool lists ``[tasks][gated blocks]``).

    Examples:
        >>> from mtgraph.strategies.adashare import RelatednessEvidence, RelatednessGap
        >>> gaps = {0: RelatednessGap(1.0, 3.0, {}, {}), 1: RelatednessGap(2.0, 2.0, {}, {})}
        >>> evidence = RelatednessEvidence((("seg", "edges"),), gaps, {})
        >>> evidence.holds_in, evidence.mean_gap
        (1, 1.0)
        >>> evidence.table().rows[0]
        (0, 1.0, 3.0, 2.0, True)
    """

    clusters: tuple[tuple[str, ...], ...]
    per_seed: dict[int, RelatednessGap]
    policies: dict[int, list[list[bool]]]

    @property
    def holds_in(self) -> int:
        """The number of seeds in which related tasks' policies were strictly closer."""
        return sum(gap.holds for gap in self.per_seed.values())

    @property
    def mean_gap(self) -> float:
        """The mean over seeds of ``across − within``."""
        return statistics.mean(gap.gap for gap in self.per_seed.values())

    def table(self) -> Table:
        """One row per seed: within, across, gap, holds."""
        return Table("policy Hamming distance within vs across the designed clusters",
                     ("seed", "within", "across", "gap", "holds"),
                     tuple((seed, g.within, g.across, g.gap, g.holds) for seed, g in sorted(self.per_seed.items())))


def relatedness_over_seeds(problem: Problem, config: AdaShareConfig, clusters: Sequence[Sequence[str]],
                           seeds: Sequence[int], *, progress: bool = False) -> RelatednessEvidence:
    """Learn a policy per seed (search and derive; the retraining does not change the policy) and measure its gap.

    Runs :func:`~mtgraph.strategies.adashare.search_policy` on
    ``problem.with_seed(seed)`` for every seed and hardens the selected logits
    as the strategy does (argmax), then :func:`relatedness_gap`.

    Args:
        problem: a problem whose tasks include the clusters' (the designed scenes preset).
        config: the search options.
        clusters: the designed groups of related tasks.
        seeds: the search seeds (3 or more for evidence).
        progress: show progress bars.

    Returns:
        The :class:`RelatednessEvidence`.

    Raises:
        ConfigError: see :func:`relatedness_gap` and :func:`~mtgraph.strategies.adashare.search_policy`.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.adashare import AdaShareConfig, relatedness_over_seeds
        >>> problem = mtgraph.toy_problem(("seg", "edges", "depth"), blocks=3, samples=8)
        >>> config = AdaShareConfig(epochs=2, weight_steps=1, policy_steps=1, batch_size=4, warmup_steps=1,
        ...                         decided_margin=0.0)
        >>> evidence = relatedness_over_seeds(problem, config, [("seg", "edges")], seeds=[0, 1])
        >>> sorted(evidence.per_seed), len(evidence.policies[0])
        ([0, 1], 3)
    """
    # Refuse wrong clusters before any training.
    relatedness_gap(torch.zeros(len(problem.task_names), 1, dtype=torch.bool), problem.task_names, clusters)
    per_seed: dict[int, RelatednessGap] = {}
    policies: dict[int, list[list[bool]]] = {}
    for seed in seeds:
        outcome = search_policy(problem.with_seed(seed), config, device=config.device or problem.device,
                                progress=progress)
        decisions = derive_policy(outcome.logits, mode="argmax")
        per_seed[seed] = relatedness_gap(decisions, problem.task_names, clusters)
        policies[seed] = decisions.tolist()
    return RelatednessEvidence(tuple(tuple(c) for c in clusters), per_seed, policies)

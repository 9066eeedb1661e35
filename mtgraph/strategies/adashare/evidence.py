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

import torch

from mtgraph.errors import ConfigError
from mtgraph.strategies.result import Heatmap

__all__ = ["hamming_matrix", "RelatednessGap", "relatedness_gap"]


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

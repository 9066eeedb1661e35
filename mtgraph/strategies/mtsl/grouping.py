"""MTSL task-node grouping: papers/000 Algorithm 2 (appendix B).

At each structural-learning phase MTSL looks at the task nodes that branch
from the same parent (the input or one group node), measures their pairwise
similarity (CKA), scores every way of splitting them into groups, keeps the
best grouping, and fuses each of its groups whose value reaches γ
(papers/000 §3.3: "the groups that satisfy a minimum similarity of γ induce
the creation of a group neuron").

Scoring, as Algorithm 2 states it, for a group G and a grouping 𝔾:

* task value ``V_t = mean_{i ∈ G∖t} S[t, i]`` (row t of the similarity
  matrix; the diagonal is never read);
* group value ``V_G = mean_{t ∈ G} V_t``;
* grouping value ``V_𝔾 = mean_{G ∈ 𝔾} V_G`` (mean over *groups*).

Choices where the paper is silent or ambiguous (each one is a decision):

* **Singletons.** ``G∖t`` is empty for a one-task group, so Algorithm 2 leaves
  ``V_t`` undefined. We score a singleton 0 — the empty sum, and what the
  authors' released code does (``single_task_sim = 0``). Scoring it 1 (self
  similarity) would make "no fusion" always optimal; leaving singletons out of
  the mean would make a lone similar pair beat a grouping that also pairs up
  the remaining tasks.
* **γ is applied after the choice**, to each group of the chosen grouping,
  inclusively: a group is fused iff ``V_G >= γ`` (up to 1e-12 rounding). γ
  never changes which grouping is chosen under ``rule="paper"``. Note the
  consequence: with γ = 0 every group of the chosen grouping is fused, but the
  chosen grouping is not always one group (e.g. S = [[·, .9, 0], [.9, ·, 0],
  [0, 0, ·]] picks {a, b}{c}: 0.45 beats {a, b, c}: 0.30).
* **Mean over groups, as written.** Because ``V_𝔾`` averages groups, not
  tasks, splitting a uniformly similar block into smaller groups of the same
  value can raise the score when other groups are worse (blocks of 0.95 and
  0.9: {four}{four} scores 0.925, {two}{two}{four} scores 0.933). We keep the
  paper's formula; ``rule="code"`` averages over tasks and has no such effect.
* **rule="code"** (the default, here and in ``MTSLConfig``) reproduces the
  search of the authors' released code, which differs from Algorithm 2: a
  grouping is scored by the mean over *tasks* of ``V_t`` (singletons 0), and
  the code tries the fewest groups first: one group of every task node, then
  the best grouping into at most two groups, and so on, stopping at the first
  number of groups whose best grouping reaches γ (with none, the best with at
  most T−1 groups; all singletons is never scored). So γ decides how much is
  fused: γ = 0 always fuses everything into one group (for non-negative
  similarities), matching the paper's remark that γ ≤ 0.7 led to One-Net,
  and the paper's Tables 5 and 6 follow; under ``rule="paper"`` γ never
  changes the chosen grouping. The released code stops on ``score >= γ`` and
  then fuses a group on ``V_G > γ`` (strict); we keep ``>=`` for both.
* **Ties** (scores within 1e-12): fewer groups first (more sharing, a cheaper
  network), then the lexicographically smallest partition, each group listed
  in input order and groups ordered by their first task (so with tasks
  a, b, c, d the grouping ((a, b), (c, d)) wins over ((a, c), (b, d))).

Every set partition is enumerated (Bell(T) of them), so the number of task
nodes is capped at :data:`MAX_TASK_NODES`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from mtgraph.errors import ConfigError

__all__ = [
    "MAX_TASK_NODES",
    "RULES",
    "GroupDecision",
    "GroupingResult",
    "bell_number",
    "group_task_nodes",
    "set_partitions",
]

#: Largest number of task nodes grouped at once: Bell(10) = 115,975 partitions
#: take well under a second; Bell(11) = 678,570 and Bell(12) = 4,213,597 grow
#: too fast for a step that runs inside every structural phase.
MAX_TASK_NODES = 10

# Two scores closer than this are a tie, so that mathematically equal means
# computed in different orders do not decide the grouping by rounding.
_TIE_TOLERANCE = 1e-12

Rule = Literal["paper", "code"]
#: The grouping rules, the default (the released code's search) first.
RULES: tuple[Rule, ...] = ("code", "paper")
Partition = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class GroupDecision:
    """What happened to one group of the chosen grouping, and why.

    Attributes:
        tasks: the task nodes of the group, in input order.
        value: the group value ``V_G`` (0 for a single task node).
        task_values: ``V_t`` for each task of ``tasks``, same order.
        fused: True when the group becomes one group node.
        reason: one line naming the tasks, the value and the threshold.

    Examples:
        >>> from mtgraph.strategies.mtsl import group_task_nodes
        >>> similarity = [[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]]
        >>> result = group_task_nodes(["a", "b", "c"], similarity, gamma=0.8)
        >>> print(result.decisions[0].reason)
        fuse a+b: group value 0.9000 >= gamma 0.8 (task values: a 0.9000, b 0.9000)
        >>> result.decisions[1].tasks, result.decisions[1].fused
        (('c',), False)
    """

    tasks: tuple[str, ...]
    value: float
    task_values: tuple[float, ...]
    fused: bool
    reason: str


@dataclass(frozen=True)
class GroupingResult:
    """The outcome of :func:`group_task_nodes`.

    Attributes:
        tasks: the task nodes considered, in input order.
        partition: the chosen grouping, groups in canonical order.
        score: the chosen grouping's value under ``rule``.
        decisions: one :class:`GroupDecision` per group of ``partition``.
        gamma: the fusion threshold used.
        rule: ``"paper"`` (Algorithm 2) or ``"code"`` (released code's search).
        partitions_scored: how many partitions were scored (Bell(T)).

    Examples:
        >>> from mtgraph.strategies.mtsl import group_task_nodes
        >>> similarity = [[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]]
        >>> result = group_task_nodes(["a", "b", "c"], similarity, gamma=0.8)
        >>> result.partition, result.fused_groups, result.partitions_scored
        ((('a', 'b'), ('c',)), (('a', 'b'),), 5)
        >>> result.group_values
        {('a', 'b'): 0.9, ('c',): 0.0}
    """

    tasks: tuple[str, ...]
    partition: tuple[tuple[str, ...], ...]
    score: float
    decisions: tuple[GroupDecision, ...]
    gamma: float
    rule: Rule
    partitions_scored: int

    @property
    def group_values(self) -> dict[tuple[str, ...], float]:
        """Value ``V_G`` of each group of the chosen partition."""
        return {d.tasks: d.value for d in self.decisions}

    @property
    def fused_groups(self) -> tuple[tuple[str, ...], ...]:
        """The groups that become group nodes (two or more tasks, value ≥ γ)."""
        return tuple(d.tasks for d in self.decisions if d.fused)


def bell_number(n: int) -> int:
    """Return the number of set partitions of ``n`` items (Bell triangle, exact).

    Args:
        n: the number of items, >= 0.

    Returns:
        Bell(n).

    Raises:
        ConfigError: ``n < 0``.

    Examples:
        >>> from mtgraph.strategies.mtsl import MAX_TASK_NODES, bell_number
        >>> [bell_number(n) for n in range(6)], bell_number(MAX_TASK_NODES)
        ([1, 1, 2, 5, 15, 52], 115975)
    """
    if n < 0:
        raise ConfigError(f"bell_number needs n >= 0, got {n}")
    row = [1]
    for _ in range(n):
        next_row = [row[-1]]
        for value in row:
            next_row.append(next_row[-1] + value)
        row = next_row
    return row[0]


def set_partitions(n: int) -> Iterator[Partition]:
    """Every set partition of ``range(n)``, each exactly once, in a fixed order.

    Generated from restricted growth strings (item i joins one of the groups
    opened so far or opens a new one), so each group is increasing and groups
    are ordered by their first item: the canonical form used for tie-breaking.
    ``n = 0`` yields the single empty partition.

    Args:
        n: the number of items, >= 0.

    Yields:
        Each partition as a tuple of groups of item indices.

    Raises:
        ConfigError: ``n < 0``.

    Examples:
        >>> from mtgraph.strategies.mtsl import set_partitions
        >>> for partition in set_partitions(3):
        ...     print(partition)
        ((0, 1, 2),)
        ((0, 1), (2,))
        ((0, 2), (1,))
        ((0,), (1, 2))
        ((0,), (1,), (2,))
    """
    if n < 0:
        raise ConfigError(f"set_partitions needs n >= 0, got {n}")
    groups: list[list[int]] = []

    def extend(item: int) -> Iterator[Partition]:
        if item == n:
            yield tuple(tuple(group) for group in groups)
            return
        for group in groups:
            group.append(item)
            yield from extend(item + 1)
            group.pop()
        groups.append([item])
        yield from extend(item + 1)
        groups.pop()

    yield from extend(0)


def _validate(
    names: Sequence[str], similarity: torch.Tensor | Sequence[Sequence[float]], gamma: float, rule: str
) -> tuple[tuple[str, ...], list[list[float]]]:
    """Check the inputs and return the names and the matrix as Python floats."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 <= gamma <= 1.0:
        raise ConfigError(f"gamma must be a number in [0, 1], got {gamma!r}")
    if rule not in RULES:
        raise ConfigError(f"rule must be 'code' or 'paper', got {rule!r}")
    tasks = tuple(names)
    if not tasks:
        raise ConfigError("group_task_nodes needs at least one task node, got none")
    if any(not isinstance(t, str) or not t for t in tasks):
        raise ConfigError(f"task node names must be non-empty strings, got {list(tasks)}")
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"task node names must be unique, got {list(tasks)}")
    if len(tasks) > MAX_TASK_NODES:
        raise ConfigError(
            f"MTSL grouping enumerates every set partition: {len(tasks)} task nodes have "
            f"Bell({len(tasks)}) = {bell_number(len(tasks)):,} partitions, above the limit "
            f"of {MAX_TASK_NODES} task nodes (Bell({MAX_TASK_NODES}) = "
            f"{bell_number(MAX_TASK_NODES):,}); group fewer task nodes at once"
        )
    matrix = torch.as_tensor(similarity, dtype=torch.float64).detach().cpu()
    size = len(tasks)
    if matrix.shape != (size, size):
        raise ConfigError(
            f"similarity must be a [{size}, {size}] matrix for tasks {list(tasks)}, got shape {list(matrix.shape)}"
        )
    off_diagonal = ~torch.eye(size, dtype=torch.bool)
    if not bool(torch.isfinite(matrix[off_diagonal]).all()):
        raise ConfigError("similarity has NaN or infinite values off the diagonal")
    return tasks, matrix.tolist()


def _task_values(group: tuple[int, ...], sim: list[list[float]]) -> tuple[float, ...]:
    """``V_t`` for each task of ``group``; 0 for a single task (see module doc)."""
    if len(group) == 1:
        return (0.0,)
    return tuple(math.fsum(sim[t][i] for i in group if i != t) / (len(group) - 1) for t in group)


def _group_table(size: int, sim: list[list[float]]) -> dict[tuple[int, ...], tuple[float, tuple[float, ...]]]:
    """Value and task values of every non-empty subset, keyed by sorted indices."""
    table = {}
    for mask in range(1, 1 << size):
        group = tuple(i for i in range(size) if mask >> i & 1)
        values = _task_values(group, sim)
        table[group] = (math.fsum(values) / len(values), values)
    return table


def _score(partition: Partition, table: Mapping, size: int, rule: Rule) -> float:
    """Return the grouping value: mean over groups (paper) or over tasks (code)."""
    if rule == "paper":
        return math.fsum(table[g][0] for g in partition) / len(partition)
    return math.fsum(table[g][0] * len(g) for g in partition) / size


def _best(scored: list[tuple[float, Partition]]) -> tuple[float, Partition]:
    """Highest score; ties → fewer groups, then lexicographically smallest."""
    top = max(score for score, _ in scored)
    tied = [(len(p), p, s) for s, p in scored if s >= top - _TIE_TOLERANCE]
    _, partition, score = min(tied)
    return score, partition


def _choose(size: int, table: Mapping, gamma: float, rule: Rule) -> tuple[float, Partition, int]:
    """Pick the grouping under ``rule``; returns (score, partition, #scored)."""
    scored = [(_score(p, table, size, rule), p) for p in set_partitions(size)]
    if rule == "paper" or size == 1:
        return (*_best(scored), len(scored))
    # Released code: grow the allowed number of groups until the best
    # grouping reaches gamma; all-singletons (k = T) is never considered.
    choice = _best([(s, p) for s, p in scored if len(p) == 1])
    for max_groups in range(2, size):
        if choice[0] >= gamma - _TIE_TOLERANCE:
            break
        choice = _best([(s, p) for s, p in scored if len(p) <= max_groups])
    return (*choice, len(scored))


def _decide(group: tuple[str, ...], value: float, task_values: tuple[float, ...], gamma: float) -> GroupDecision:
    """Fusion decision for one chosen group, with its reason."""
    label = "+".join(group)
    if len(group) == 1:
        return GroupDecision(group, value, task_values, False, f"{label}: single task node, nothing to fuse")
    per_task = ", ".join(f"{t} {v:.4f}" for t, v in zip(group, task_values, strict=True))
    if value >= gamma - _TIE_TOLERANCE:
        reason = f"fuse {label}: group value {value:.4f} >= gamma {gamma:g} (task values: {per_task})"
        return GroupDecision(group, value, task_values, True, reason)
    reason = f"keep {label} apart: group value {value:.4f} < gamma {gamma:g} (task values: {per_task})"
    return GroupDecision(group, value, task_values, False, reason)


def group_task_nodes(
    names: Sequence[str],
    similarity: torch.Tensor | Sequence[Sequence[float]],
    *,
    gamma: float = 0.8,
    rule: Rule = "code",
) -> GroupingResult:
    """Choose how MTSL groups task nodes and which groups it fuses.

    Args:
        names: the task nodes branching from one parent, e.g. the names
            returned by :func:`mtgraph.analysis.similarity.cka_matrix`.
        similarity: ``[T, T]`` pairwise similarity (CKA); ``S[t, i]`` is read
            for ``t ≠ i``, the diagonal is ignored. Need not be symmetric.
        gamma: fusion threshold in ``[0, 1]`` (paper default 0.8).
        rule: ``"code"`` (default, as :class:`~mtgraph.strategies.mtsl.MTSLConfig`:
            the released code's search, fewest groups first, stopping once
            the best grouping reaches γ) or ``"paper"`` (Algorithm 2 as
            printed); see the module docstring.

    Returns:
        A :class:`GroupingResult` with the chosen partition, its score and a
        decision with a reason for each of its groups.

    Raises:
        ConfigError: gamma outside [0, 1], unknown rule, empty/duplicate
            names, a matrix of the wrong shape or with non-finite values, or
            more than :data:`MAX_TASK_NODES` task nodes.

    Examples:
        >>> from mtgraph.strategies.mtsl import group_task_nodes
        >>> similarity = [[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]]
        >>> group_task_nodes(["a", "b", "c"], similarity, gamma=0.8).fused_groups
        (('a', 'b'),)
        >>> group_task_nodes(["a", "b", "c"], similarity, gamma=0.95).fused_groups  # 0.9 < γ
        ()
        >>> near = [[1, .99, .992, .994, .993], [.99, 1, .991, .992, .993], [.992, .991, 1, .995, .994],
        ...         [.994, .992, .995, 1, .993], [.993, .993, .994, .993, 1]]
        >>> group_task_nodes("abcde", near).partition  # one group reaches γ at the first try
        (('a', 'b', 'c', 'd', 'e'),)
        >>> group_task_nodes("abcde", near, rule="paper").partition  # Algorithm 2's mean over groups splits it
        (('a', 'b', 'e'), ('c', 'd'))
        >>> group_task_nodes(["a", "b"], similarity)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: similarity must be a [2, 2] matrix for tasks ['a', 'b'], got shape [3, 3]
    """
    tasks, sim = _validate(names, similarity, gamma, rule)
    size = len(tasks)
    table = _group_table(size, sim)
    score, partition, count = _choose(size, table, float(gamma), rule)
    decisions = []
    for group in partition:
        value, task_values = table[group]
        decisions.append(_decide(tuple(tasks[i] for i in group), value, task_values, float(gamma)))
    return GroupingResult(
        tasks=tasks,
        partition=tuple(d.tasks for d in decisions),
        score=score,
        decisions=tuple(decisions),
        gamma=float(gamma),
        rule=rule,
        partitions_scored=count,
    )

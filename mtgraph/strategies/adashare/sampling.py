"""The cost of a select-or-skip policy, and random policies at a given cost (AdaShare's search space).

The network of a policy (:func:`~mtgraph.strategies.adashare.harden_policy`)
computes each block once per distinct *path prefix*: two tasks reach block b
with the same input iff they took the same decisions on every gated block
before b, so block b (or its shortcut) runs once per distinct (prefix,
decision) pair. :class:`PolicyCosts` counts that from the block signatures
without building anything, and equals :func:`mtgraph.cost` of the built
network.

Random policies that skip as many blocks as the learned one (papers/002
Random #1 / #2, :func:`~mtgraph.strategies.adashare.random_policy`) are not
matched in compute: scattered skips make the tasks' paths diverge early, so
little is shared and such a policy costs about 2-2.6x the learned one on the
tutorial's problem. :func:`random_policy_at_gmac` draws policies whose
network is within a tolerance of a target GMac instead: the baseline the
evaluation protocol compares a learned policy with, at equal compute.

A policy in which every gated block runs for at least one task computes each
block at least once, so it costs at least the One-Net (and holds exactly one
backbone's parameters); only policies in which some block runs for no task
are cheaper.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mtgraph.analysis.macs import count_macs, evaluation_mode
from mtgraph.errors import BudgetError, ConfigError
from mtgraph.problem import Problem
from mtgraph.strategies.adashare.derive import check_decisions
from mtgraph.strategies.adashare.soft_graph import gated_blocks

__all__ = ["PolicyCosts", "random_policy_at_gmac"]


@dataclass(frozen=True)
class PolicyCosts:
    """Per-image MACs of every AdaShare network over one problem's backbone and heads.

    Attributes:
        tasks: task names (rows of a decision matrix).
        gated: the gated (skippable) blocks (its columns).
        block_macs: MACs of each block of the backbone.
        shortcut_macs: MACs of each block's shortcut (0 for the identity or
            a block that cannot be skipped).
        head_macs: MACs of all heads together.

    Examples:
        >>> import mtgraph, torch
        >>> from mtgraph.strategies.adashare import PolicyCosts
        >>> problem = mtgraph.toy_problem(("seg", "depth"), blocks=3)
        >>> costs = PolicyCosts.of(problem)
        >>> every = torch.ones(2, len(costs.gated), dtype=torch.bool)
        >>> costs.macs(every) == round(problem.reference_costs.one_net_gmac * 1e9)  # all executed: the One-Net
        True
    """

    tasks: tuple[str, ...]
    gated: tuple[int, ...]
    block_macs: tuple[int, ...]
    shortcut_macs: tuple[int, ...]
    head_macs: int

    @classmethod
    def of(cls, problem: Problem) -> PolicyCosts:
        """The costs of ``problem``'s backbone blocks, shortcuts and heads.

        Raises:
            ConfigError: the backbone has no skippable block.
        """
        backbone = problem.backbone
        gated, _ = gated_blocks(backbone)
        shortcuts = []
        for info in backbone.blocks:
            shortcut = info.shortcut_of(info.module) if info.skippable and info.shortcut.has_weights else None
            if shortcut is None:
                shortcuts.append(0)
                continue
            with evaluation_mode(shortcut):  # measuring must not touch the backbone's BatchNorm statistics
                shortcuts.append(count_macs(shortcut, torch.zeros(1, *info.in_shape, dtype=backbone.input_dtype)))
        heads = round(problem.reference_costs.one_net_gmac * 1e9) - sum(b.macs for b in backbone.blocks)
        return cls(problem.task_names, gated, tuple(b.macs for b in backbone.blocks), tuple(shortcuts), heads)

    def macs(self, decisions: torch.Tensor) -> int:
        """MACs per image of the network of ``decisions`` (bool ``[tasks, gated blocks]``, True = execute).

        Raises:
            ConfigError: malformed ``decisions``.
        """
        u = check_decisions(decisions, self.tasks, self.gated).tolist()
        column = {b: j for j, b in enumerate(self.gated)}
        prefixes: list[tuple[bool, ...]] = [() for _ in self.tasks]
        total = self.head_macs
        for b, block in enumerate(self.block_macs):
            j = column.get(b)
            if j is None:  # executed by every task: once per distinct input
                total += block * len(set(prefixes))
                continue
            executed = {p for p, row in zip(prefixes, u) if row[j]}
            skipped = {p for p, row in zip(prefixes, u) if not row[j]}
            total += block * len(executed) + self.shortcut_macs[b] * len(skipped)
            prefixes = [(*p, row[j]) for p, row in zip(prefixes, u)]
        return total

    def every_block_run(self, decisions: torch.Tensor) -> bool:
        """Whether every gated block is executed by at least one task (the network keeps one whole backbone).

        Examples:
            >>> import mtgraph, torch
            >>> from mtgraph.strategies.adashare import PolicyCosts
            >>> costs = PolicyCosts.of(mtgraph.toy_problem(("seg", "depth"), blocks=3))
            >>> costs.every_block_run(torch.tensor([[True, False], [False, True]]))
            True
        """
        u = check_decisions(decisions, self.tasks, self.gated)
        return bool(u.any(dim=0).all())


def _draw(num_tasks: int, num_gated: int, rng: random.Random, keep_blocks: bool) -> torch.Tensor:
    """One policy: a random density p, each gate executed with probability p, dead blocks revived if asked."""
    p = rng.random()
    u = torch.tensor([[rng.random() < p for _ in range(num_gated)] for _ in range(num_tasks)], dtype=torch.bool)
    if keep_blocks:
        for j in range(num_gated):
            if not bool(u[:, j].any()):
                u[rng.randrange(num_tasks), j] = True
    return u


def random_policy_at_gmac(
    costs: PolicyCosts,
    rng: random.Random,
    target_gmac: float | None = None,
    *,
    tolerance: float = 0.05,
    exclude: Sequence[torch.Tensor] = (),
    keep_blocks: bool = True,
    attempts: int = 20_000,
) -> torch.Tensor:
    """A random select-or-skip policy whose network is within ``tolerance`` (relative) of ``target_gmac``.

    Each draw picks a density p ~ U(0, 1) and executes each (task, block)
    with probability p, so sparse and dense policies are both drawn; with
    ``keep_blocks`` a block no task executes is given to one task at random,
    so the network keeps exactly one backbone's parameters (AdaShare's
    claim). Draws are repeated until one lands within the tolerance and is
    not in ``exclude``.

    Args:
        costs: the problem's :class:`PolicyCosts`.
        rng: the random source (the caller seeds it).
        target_gmac: the GMac to match (None: any policy of the process).
        tolerance: relative distance allowed from ``target_gmac`` (0.05: ±5 %).
        exclude: policies not to return (the learned one, earlier draws).
        keep_blocks: every gated block executed by at least one task.
        attempts: draws before giving up.

    Returns:
        A bool ``[tasks, gated blocks]`` matrix, True = execute.

    Raises:
        BudgetError: no draw within the tolerance after ``attempts`` (the
            closest cost found is stated).
        ConfigError: a tolerance that is not a number in (0, 1).

    Examples:
        >>> import random
        >>> import mtgraph
        >>> from mtgraph.strategies.adashare import PolicyCosts, random_policy_at_gmac
        >>> problem = mtgraph.toy_problem(("seg", "depth", "edges"), blocks=5)
        >>> costs = PolicyCosts.of(problem)
        >>> target = 1.2 * problem.reference_costs.one_net_gmac
        >>> policy = random_policy_at_gmac(costs, random.Random(0), target)
        >>> abs(costs.macs(policy) / 1e9 - target) <= 0.05 * target, costs.every_block_run(policy)
        (True, True)
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
        raise ConfigError(f"tolerance must be a number in (0, 1), got {tolerance!r}")
    excluded = {tuple(map(tuple, check_decisions(u, costs.tasks, costs.gated).tolist())) for u in exclude}
    closest: float | None = None
    for _ in range(attempts):
        u = _draw(len(costs.tasks), len(costs.gated), rng, keep_blocks)
        if tuple(map(tuple, u.tolist())) in excluded:
            continue
        if target_gmac is None:
            return u
        gmac = costs.macs(u) / 1e9
        if abs(gmac - target_gmac) <= tolerance * target_gmac:
            return u
        if closest is None or abs(gmac - target_gmac) < abs(closest - target_gmac):
            closest = gmac
    raise BudgetError(
        f"no random policy within ±{tolerance:.0%} of {target_gmac:g} GMac in {attempts} draws "
        f"(closest: {'none' if closest is None else f'{closest:g}'} GMac"
        f"{', every block executed by some task' if keep_blocks else ''}); the target may be outside what a "
        "select-or-skip policy of this backbone can cost"
    )

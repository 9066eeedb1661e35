"""AdaShare behind the common front door: :class:`AdaShareStrategy` (registered as ``"adashare"``)."""

from __future__ import annotations

import dataclasses
import random
from typing import ClassVar

from mtgraph.budget import Budget
from mtgraph.errors import ConfigError
from mtgraph.problem import Problem
from mtgraph.strategies.adashare.config import AdaShareConfig
from mtgraph.strategies.adashare.derive import policy_pipeline
from mtgraph.strategies.adashare.sampling import PolicyCosts, random_policy_at_gmac
from mtgraph.strategies.adashare.soft_graph import gated_blocks
from mtgraph.strategies.adashare.strategy import run_adashare
from mtgraph.strategies.protocol import Architecture
from mtgraph.strategies.result import StrategyResult

__all__ = ["AdaShareStrategy"]

#: How far (relative) a random policy's GMac may be from the budget's.
_TOLERANCE = 0.05


def _with_fresh_sites(arch: Architecture) -> Architecture:
    """``arch`` whose shared call sites have their own (fresh) BatchNorm statistics: training estimates them per site."""
    return dataclasses.replace(arch, params=arch.params.with_site_statistics(arch.graph))


class AdaShareStrategy:
    """AdaShare (papers/002): a select-or-skip policy per task and block over one shared backbone.

    Search space: for every task and skippable block, execute it or run its
    shortcut; the network computes each block once per distinct path prefix
    and holds one backbone's parameters. AdaShare has no cost budget: λ_sp
    decides how much is skipped.

    Examples:
        >>> from mtgraph.strategies import registry
        >>> strategy = registry()["adashare"]
        >>> strategy.name, strategy.uses_budget, strategy.config_type.__name__
        ('adashare', False, 'AdaShareConfig')
    """

    name: ClassVar[str] = "adashare"
    paper: ClassVar[str] = "AdaShare: Learning What To Share For Efficient Deep Multi-Task Learning"
    search_space: ClassVar[str] = "a select-or-skip policy per task and skippable block over one backbone"
    config_type: ClassVar[type] = AdaShareConfig
    uses_budget: ClassVar[bool] = False

    def config_for(self, problem: Problem, epochs: float, *, batch_size: int = 16) -> AdaShareConfig:
        """A configuration training about ``epochs`` epochs in all, in the paper's proportions.

        Half of the epochs search, half retrain. The search has one epoch per
        gated block (the curriculum unlocks every block by its last epoch),
        each with 80 % of its steps on the weights and 20 % on the policy,
        after a warm-up of 20 % of the search's steps, as in the paper. The policy's learning rate and the temperature's decay are
        set so that τ ends near 0.3 and the logits can move in a short search
        (notes/methods-001-002.md §B.5 item 5).

        **λ deviate from Table 7** (measured; see :class:`AdaShareConfig`):
        on a small problem the task loss's gradient on an execute logit is
        about 5e-3, so Table 7's λ_sh = 0.05 (code form) outweighs it 6.8x and
        the tasks end with one policy; λ_sp = 0.01 and λ_sh = 0.002 keep both
        regularisers below the task signal (0.1x and 0.3x measured).

        Args:
            problem: the problem (its size sets the steps).
            epochs: the training budget in epochs of the training set.
            batch_size: the batch size of every phase.

        Returns:
            The configuration.

        Examples:
            >>> import mtgraph
            >>> from mtgraph.strategies import registry
            >>> problem = mtgraph.toy_problem(("seg", "depth"), blocks=4, samples=64)
            >>> config = registry()["adashare"].config_for(problem, 4)
            >>> config.epochs, config.weight_steps, config.policy_steps, config.retrain_steps
            (3, 2, 1, 8)
        """
        if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not epochs > 0:
            raise ConfigError(f"epochs must be a number > 0, got {epochs!r}")
        gated, _ = gated_blocks(problem.backbone)
        search_epochs = len(gated)
        steps_per_epoch = max(1, len(problem.train_dataset) // batch_size)  # type: ignore[arg-type]
        per_search_epoch = max(2, int(0.5 * epochs * steps_per_epoch / search_epochs))
        final_tau = 0.3
        return AdaShareConfig(
            epochs=search_epochs,
            weight_steps=max(1, round(0.8 * per_search_epoch)),
            policy_steps=max(1, round(0.2 * per_search_epoch)),
            batch_size=batch_size,
            policy_lr=0.05,
            tau_decay=(final_tau / 5.0) ** (1.0 / max(1, search_epochs - 1)),
            lambda_sparsity=0.01,
            lambda_sharing=0.002,
            retrain_steps=max(1, int(0.5 * epochs * steps_per_epoch)),
        )

    def learn(
        self, problem: Problem, config: AdaShareConfig | None = None, budget: Budget | None = None, *,
        progress: bool = False,
    ) -> StrategyResult:
        """Run AdaShare on ``problem`` (see :func:`~mtgraph.strategies.adashare.run_adashare`); a budget is refused.

        Args:
            problem: the problem.
            config: the options (None: :class:`AdaShareConfig`'s defaults, the paper's).
            budget: must be None: λ_sp, not a budget, decides how much is skipped.
            progress: show progress bars.

        Returns:
            The retrained network and the search's evidence.

        Raises:
            ConfigError: a budget, a bad config, no skippable block.

        Examples:
            >>> import mtgraph
            >>> from mtgraph.strategies import registry, replay
            >>> from mtgraph.strategies.adashare import AdaShareConfig
            >>> problem = mtgraph.toy_problem(("seg", "depth"), blocks=3, samples=8)
            >>> config = AdaShareConfig(epochs=2, weight_steps=1, policy_steps=1, batch_size=4, warmup_steps=1,
            ...                         retrain_steps=1, calibration_batches=1, decided_margin=0.0)
            >>> result = registry()["adashare"].learn(problem, config)
            >>> replay(problem, result.start, result.pipeline)[0] == result.graph
            True
        """
        if budget is not None:
            raise ConfigError("AdaShare has no cost budget (λ_sparsity decides how much is skipped); pass budget=None")
        return run_adashare(problem, config if config is not None else AdaShareConfig(), progress=progress)

    def sample_random(self, problem: Problem, rng: random.Random, budget: Budget | None = None) -> Architecture:
        """A random select-or-skip policy whose network is within ±5 % of the budget's GMac.

        A network in which every gated block runs for at least one task holds
        exactly one backbone's parameters, like AdaShare's, and computes each
        block at least once: it costs at least the One-Net. So for a budget
        of at least the One-Net's GMac every block runs for some task; below
        it (a learned policy that skips a block for every task is that cheap)
        some blocks run for no task and the network holds less than one
        backbone (``details["every_block_run"]``). Without a budget, any
        policy of the process in which every block runs. Call sites that
        share weights get fresh per-site BatchNorm statistics.

        Args:
            problem: the problem.
            rng: the random source (the caller seeds it).
            budget: a GMac budget (e.g. the learned network's GMac), or None.

        Returns:
            The :class:`~mtgraph.strategies.Architecture` (start ``"one_net"``,
            details: ``decisions``, ``gmac``, ``every_block_run``).

        Raises:
            ConfigError: a budget in parameters (every policy network has one backbone's).
            BudgetError: no policy within ±5 % of the budget.

        Examples:
            >>> import random
            >>> import mtgraph
            >>> from mtgraph.strategies import registry
            >>> problem = mtgraph.toy_problem(("seg", "depth", "edges"), blocks=5)
            >>> budget = mtgraph.Budget.gmac(1.3, relative_to="one_net")
            >>> arch = registry()["adashare"].sample_random(problem, random.Random(0), budget)
            >>> target = budget.resolve(problem)
            >>> abs(mtgraph.cost(arch.graph, arch.params).gmac - target) <= 0.05 * target, arch.start
            (True, 'one_net')
        """
        target = None
        if budget is not None:
            if budget.measure != "gmac":
                raise ConfigError(f"AdaShare's random policies are matched in GMac (every one holds one backbone's "
                                  f"parameters); got a budget in {budget.measure}")
            target = budget.resolve(problem)
        costs = PolicyCosts.of(problem)
        # A network in which every block runs for some task computes each block at least once: it costs at least
        # the One-Net. Cheaper targets need blocks that no task runs.
        keep_blocks = target is None or target >= (1 - _TOLERANCE) * problem.reference_costs.one_net_gmac
        decisions = random_policy_at_gmac(costs, rng, target, tolerance=_TOLERANCE, keep_blocks=keep_blocks)
        arch = Architecture.build(
            problem, "one_net", policy_pipeline(costs.tasks, costs.gated, decisions), label="random policy",
            details={"decisions": decisions.tolist(), "gmac": costs.macs(decisions) / 1e9,
                     "every_block_run": costs.every_block_run(decisions)},
        )
        return _with_fresh_sites(arch)

    def architecture(self, problem: Problem, result: StrategyResult) -> Architecture:
        """The learned policy's network with fresh weights and fresh per-site statistics (rebuilt from One-Net).

        Args:
            problem: the problem the result was learned on.
            result: an AdaShare result.

        Returns:
            The :class:`~mtgraph.strategies.Architecture` (label ``"learned"``, details: ``decisions``).

        Raises:
            ConfigError: the result does not start from One-Net.
            PassError: its pipeline does not apply to this problem.

        Examples:
            >>> import torch, mtgraph
            >>> from mtgraph.strategies import registry
            >>> from mtgraph.strategies.adashare import AdaShareConfig, run_fixed_policy
            >>> problem = mtgraph.toy_problem(("seg", "depth"), blocks=3)
            >>> result = run_fixed_policy(problem, torch.tensor([[True, True], [False, True]]),
            ...                           AdaShareConfig(retrain_steps=1, batch_size=2, calibration_batches=1))
            >>> arch = registry()["adashare"].architecture(problem, result)
            >>> arch.graph == result.graph, arch.pipeline
            (True, 'skip{task=depth,block=1},cse,dce')
        """
        if result.start != "one_net":
            raise ConfigError(f"an AdaShare architecture starts from one_net; this result starts from {result.start!r}")
        decisions = result.history.get("decisions")
        arch = Architecture.build(problem, "one_net", result.pipeline, label="learned",
                                  details={"decisions": decisions} if decisions is not None else {})
        return _with_fresh_sites(arch)

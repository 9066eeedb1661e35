"""Safe multi-task learning behind the common front door: :class:`SMTLStrategy` (registered as ``"smtl"``)."""

from __future__ import annotations

import random
from typing import ClassVar

from mtgraph.budget import Budget
from mtgraph.errors import ConfigError
from mtgraph.problem import Problem
from mtgraph.strategies.protocol import Architecture
from mtgraph.strategies.result import StrategyResult
from mtgraph.strategies.smtl.architectures import learned_architecture, random_architecture
from mtgraph.strategies.smtl.config import SMTLConfig
from mtgraph.strategies.smtl.strategy import _learn

__all__ = ["SMTLStrategy"]


class SMTLStrategy:
    """Safe Multi-Task Learning (papers/004): a public encoder, a private encoder per task, a learned gate per task.

    Search space: per task, the mix of the public and its private encoder
    over a gated block range: a gate α_t in [0, 1] (soft variants) or a
    choice of one of the two (lite variants). Safe MTL has no cost budget:
    the gates decide, by the training loss (or, ``formulation="bilevel"``, a
    held-out loss).

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies import registry
        >>> strategy = registry()["smtl"]
        >>> strategy.name, strategy.uses_budget, strategy.config_type.__name__
        ('smtl', False, 'SMTLConfig')
        >>> problem = mtgraph.toy_problem(("seg", "depth"))
        >>> result = strategy.learn(problem, strategy.config_for(problem, 1))
        >>> result.figures["alpha"].records()[0]["task"], result.pipeline.split(",")[0]
        ('seg', 'gate{task=seg')
    """

    name: ClassVar[str] = "smtl"
    paper: ClassVar[str] = "Safe Multi-Task Learning"
    search_space: ClassVar[str] = "per task, a gate mixing (soft) or choosing (lite) a public and a private encoder"
    config_type: ClassVar[type] = SMTLConfig
    uses_budget: ClassVar[bool] = False

    def config_for(self, problem: Problem, epochs: float, *, batch_size: int = 16) -> SMTLConfig:
        """A configuration training about ``epochs`` epochs (at least one) at lr 2e-3 (``examples/smtl_scenes.py``'s).

        Every other option keeps its :class:`SMTLConfig` default (soft SMTL over
        the whole encoder, single-level, gates at ``DEFAULT_GATE_LR``).

        Examples:
            >>> import mtgraph
            >>> from mtgraph.strategies.smtl import SMTLStrategy
            >>> config = SMTLStrategy().config_for(mtgraph.toy_problem(), 3.4)
            >>> config.epochs, config.batch_size, config.variant
            (3, 16, 'smtl')
        """
        return SMTLConfig(epochs=max(1, round(epochs)), batch_size=batch_size, lr=2e-3)

    def learn(
        self, problem: Problem, config: SMTLConfig | None = None, budget: Budget | None = None, *, progress: bool = False
    ) -> StrategyResult:
        """Learn a Safe MTL network for ``problem``: build the gated network, train it, harden the lite variants.

        Args:
            problem: backbone, heads, tasks, data, device and seed (validated by :class:`~mtgraph.Problem`).
            config: :class:`SMTLConfig` (None: soft SMTL over the whole encoder, single-level).
            budget: must be None (Safe MTL has no cost budget).
            progress: show a progress bar.

        Returns:
            A :class:`~mtgraph.strategies.result.StrategyResult` (``strategy="smtl"``,
            ``start="one_net"``): the soft gated network (``smtl``, ``smtl_c``)
            or the hardened one (``lite``, ``lite_c``). ``figures["alpha"]`` is
            a :class:`~mtgraph.strategies.result.Table` of α_t per task and the
            side it leans to (soft) or keeps (lite); ``figures["alpha_curve"]``
            a :class:`~mtgraph.strategies.result.Curve` of α_t before training
            and after every epoch. ``history`` holds the training history,
            ``"alpha"`` (the same records), ``"variant"``, ``"formulation"``,
            ``"block_range"`` and, with validation data, ``"metrics"``.
            ``pipeline`` rebuilds ``graph`` from the One-Net: the ``split`` and
            ``gate`` passes (soft), with the choices as α ∈ {0, 1} and
            ``harden,dce`` after them (lite). For ``smtl_c`` the graph is
            rebuilt but not its decoder-level modules (see
            :func:`~mtgraph.strategies.smtl.decoder_level`).

        Raises:
            ConfigError: a budget, a config that is not an SMTLConfig, a block range outside the backbone.

        Examples:
            >>> import mtgraph
            >>> from mtgraph.strategies import replay
            >>> from mtgraph.strategies.smtl import SMTLConfig, SMTLStrategy
            >>> problem = mtgraph.toy_problem(("seg", "depth"))
            >>> result = SMTLStrategy().learn(problem, SMTLConfig(variant="lite", epochs=1, batch_size=4))
            >>> [row["choice"] for row in result.figures["alpha"].records()]
            ['private', 'private']
            >>> replay(problem, result.start, result.pipeline)[0] == result.graph
            True
        """
        if budget is not None:
            raise ConfigError("Safe MTL has no cost budget (its gates decide what is shared); pass budget=None")
        return _learn(problem, SMTLConfig() if config is None else config, progress=progress)

    def sample_random(
        self, problem: Problem, rng: random.Random, budget: Budget | None = None, *, config: SMTLConfig | None = None
    ) -> Architecture:
        """Fixed random gate settings (see :func:`~mtgraph.strategies.smtl.random_architecture`).

        ``config`` gives the variant and block range (default ``SMTLConfig()``:
        soft gates over the whole encoder, each α_t uniform in [0, 1), frozen).

        Examples:
            >>> import random
            >>> import mtgraph
            >>> from mtgraph.strategies.smtl import SMTLStrategy
            >>> arch = SMTLStrategy().sample_random(mtgraph.toy_problem(("seg", "depth")), random.Random(1))
            >>> arch.label, sorted(arch.frozen)
            ('random gates', ['gate.depth.b0-1', 'gate.seg.b0-1'])
        """
        return random_architecture(problem, rng, SMTLConfig() if config is None else config, budget)

    def architecture(self, problem: Problem, result: StrategyResult) -> Architecture:
        """The learned gate settings fixed, fresh encoder and decoder weights (see :func:`~mtgraph.strategies.smtl.learned_architecture`).

        Examples:
            >>> import mtgraph
            >>> from mtgraph.strategies.smtl import SMTLConfig, SMTLStrategy
            >>> problem = mtgraph.toy_problem(("seg", "depth"))
            >>> strategy = SMTLStrategy()
            >>> arch = strategy.architecture(problem, strategy.learn(problem, SMTLConfig(epochs=1, batch_size=4)))
            >>> arch.label, len(arch.frozen)
            ('learned', 2)
        """
        return learned_architecture(problem, result)

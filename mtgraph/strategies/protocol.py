"""What a strategy is: the :class:`Strategy` protocol, and the :class:`Architecture` values it hands out.

Every strategy of :func:`~mtgraph.strategies.registry` has the same four
entry points, so a caller (the command line, the evaluation protocol, a
user's script) treats "a strategy" as one thing:

* ``config_for(problem, epochs)``: a configuration whose training adds up
  to about ``epochs`` epochs, keeping the paper's proportions;
* ``learn(problem, config, budget)``: the learned architecture and weights
  (a :class:`~mtgraph.strategies.result.StrategyResult`), built by running
  passes on STN or One-Net, so that its pipeline string reproduces it;
* ``sample_random(problem, rng, budget)``: a random architecture of the
  strategy's own search space, at about the budget's cost: the baseline a
  learned architecture must beat at equal compute;
* ``architecture(problem, result)``: the learned architecture with fresh
  weights, to retrain from scratch under the same schedule as the baselines.

Architectures are built by :func:`replay`: a pipeline of passes applied to the
start graph with fresh weights from the problem.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from mtgraph.budget import Budget
from mtgraph.errors import ConfigError
from mtgraph.ir.builders import one_net, stn
from mtgraph.ir.graph import MTGraph
from mtgraph.params import ParamStore
from mtgraph.problem import Problem
from mtgraph.strategies.result import STARTS, StrategyResult

__all__ = ["Strategy", "Architecture", "replay", "start_graph"]


def start_graph(problem: Problem, start: Literal["stn", "one_net"]) -> MTGraph:
    """The initial architecture ``start`` (``"stn"`` or ``"one_net"``) for ``problem``'s backbone and tasks.

    Raises:
        ConfigError: ``start`` is neither.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> from mtgraph import tasks as T
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.strategies.protocol import start_graph
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        >>> problem = mtgraph.Problem.create(model, [T.depth(hidden=4), T.edges(hidden=4)], SceneDataset(4, size=32))
        >>> start_graph(problem, "one_net") == mtgraph.one_net(2, ("depth", "edges"))
        True
    """
    if start not in STARTS:
        raise ConfigError(f"start must be one of {list(STARTS)}, got {start!r}")
    build = stn if start == "stn" else one_net
    return build(problem.backbone.num_blocks, problem.task_names)


def replay(problem: Problem, start: Literal["stn", "one_net"], pipeline: str) -> tuple[MTGraph, ParamStore]:
    """Apply ``pipeline`` to the start graph with fresh weights from ``problem``: the architecture it describes.

    Args:
        problem: gives the backbone, heads and tasks.
        start: ``"stn"`` or ``"one_net"``.
        pipeline: a pass pipeline string (``""``: the start graph itself).

    Returns:
        The graph and its (untrained) weights.

    Raises:
        ConfigError: an unknown start.
        PassError: the pipeline does not parse or a pass refuses.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> from mtgraph import tasks as T
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.strategies.protocol import replay
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        >>> problem = mtgraph.Problem.create(model, [T.depth(hidden=4), T.edges(hidden=4)], SceneDataset(4, size=32))
        >>> graph, params = replay(problem, "stn", "fuse{tasks=depth+edges,block=0},fuse{tasks=depth+edges,block=1}")
        >>> graph == mtgraph.one_net(2, ("depth", "edges")), sorted(params.keys())[:2]
        (True, ['b0.shared', 'b1.shared'])
    """
    from mtgraph.passes import run_passes

    graph = start_graph(problem, start)
    params = ParamStore.create(graph, problem.backbone, problem.heads)
    if not pipeline:
        return graph, params
    result = run_passes(graph, params, pipeline)
    return result.graph, result.params


@dataclass(frozen=True)
class Architecture:
    """An architecture to train from scratch: its graph, fresh weights, and the pipeline that built it.

    Attributes:
        label: a short name for reports (``"random tree 3"``, ``"learned"``).
        graph: the architecture.
        params: its untrained weights.
        start: the graph the pipeline applies to (``"stn"`` or ``"one_net"``).
        pipeline: the pass pipeline that builds ``graph`` from ``start``.
        frozen: weight keys held fixed while training (Safe MTL's fixed gates).
        details: what defines it beyond the graph, JSON values (a policy, gate values).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> from mtgraph import tasks as T
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.strategies.protocol import Architecture
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        >>> problem = mtgraph.Problem.create(model, [T.depth(hidden=4), T.edges(hidden=4)], SceneDataset(4, size=32))
        >>> arch = Architecture.build(problem, "stn", "fuse{tasks=depth+edges,block=0}", label="stem shared")
        >>> arch.graph.nodes[1], arch.label
        (Block(block=0, weights='b0.shared', src=0), 'stem shared')
    """

    label: str
    graph: MTGraph
    params: ParamStore
    start: Literal["stn", "one_net"]
    pipeline: str
    frozen: frozenset[str] = frozenset()
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls, problem: Problem, start: Literal["stn", "one_net"], pipeline: str, *, label: str = "",
        details: dict[str, Any] | None = None,
    ) -> Architecture:
        """The architecture ``pipeline`` builds from ``start``, with fresh weights (see :func:`replay`)."""
        graph, params = replay(problem, start, pipeline)
        return cls(label or pipeline or start, graph, params, start, pipeline, details=dict(details or {}))


@runtime_checkable
class Strategy(Protocol):
    """A structural-learning method, as the registry, the command line and the evaluation protocol see it.

    Attributes:
        name: the registry name (``"mtsl"``, ``"affinity"``, ...).
        paper: the paper it implements (title, venue).
        search_space: one line saying what architectures it chooses among.
        config_type: its configuration dataclass (every field validated; has ``device``).
        uses_budget: whether :meth:`learn` honours a :class:`~mtgraph.Budget`.

    Examples:
        >>> from mtgraph.strategies import Strategy, registry
        >>> all(isinstance(s, Strategy) for s in registry().values())
        True
    """

    name: ClassVar[str]
    paper: ClassVar[str]
    search_space: ClassVar[str]
    config_type: ClassVar[type]
    uses_budget: ClassVar[bool]

    def config_for(self, problem: Problem, epochs: float) -> Any:
        """A configuration whose training adds up to about ``epochs`` epochs on ``problem``."""
        ...

    def learn(
        self, problem: Problem, config: Any = None, budget: Budget | None = None, *, progress: bool = False
    ) -> StrategyResult:
        """Learn an architecture and its weights (``config`` None: the paper's defaults)."""
        ...

    def sample_random(self, problem: Problem, rng: random.Random, budget: Budget | None = None) -> Architecture:
        """A random architecture of the strategy's search space, at about ``budget``'s cost when given."""
        ...

    def architecture(self, problem: Problem, result: StrategyResult) -> Architecture:
        """The learned architecture of ``result`` with fresh weights, to retrain from scratch."""
        ...

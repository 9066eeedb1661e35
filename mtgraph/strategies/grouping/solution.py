"""A selected set of networks becomes one MTGraph, built by passes: One-Net split at the input, one path per network.

papers/003 deploys the chosen networks side by side; each task is read off
the network that serves it best (:class:`~.selection.Solution.serving`). In
mtgraph that is One-Net split at block 0 into one group per kept network,
the group being the tasks that network serves: ``split`` copies every block
from block 0 on per group, so the groups share nothing but the input
(:func:`groups_pipeline`). The structure is built by running that pipeline on
One-Net (:func:`~mtgraph.strategies.protocol.replay`), so the recorded
pipeline is what produced the graph; the weights under each group's keys are
then the trained candidate's own modules, so the compiled solution
reproduces, task by task, the outputs of the candidate serving it.

What is dropped:

* heads a network has but does not serve (auxiliary heads, papers/003
  fig. 3's dotted decoders): they helped training, they cost nothing now;
* a chosen network serving no task at all (an optimal selection never
  holds one, since removing it keeps the loss and lowers the cost; a
  hand-made, rescored or Pessimal set might): its whole path goes, and
  :attr:`CompiledSolution.dropped` names it.

Networks on the second, smaller backbone (label ``small``)
----------------------------------------------------------
A ``Block(block, weights)`` node names a block *index*; the module it runs
is whatever the ParamStore holds under ``weights``. A small network's group
therefore has the same nodes and keys as a full-size one (the pipeline
builds it like any other group) and its keys hold the small backbone's
modules: :attr:`CompiledSolution.small_keys` lists them. The solution
compiles, costs (per node, by running each module), exports to ONNX and
saves like any other. Replaying the pipeline gives the same graph with
full-size weights: the widths are not part of the structure. And
:func:`mtgraph.load` of such a saved solution fails (a CheckpointError
naming the tensor and both shapes), since it rebuilds every block key from
one backbone's modules. Both backbones must have the same number of blocks
and the same input; that is checked here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from mtgraph.errors import ConfigError
from mtgraph.frontend.backbone import Backbone
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block, head_weights
from mtgraph.params import ParamStore
from mtgraph.passes.pipeline import format_pipeline
from mtgraph.passes.split import SplitPass
from mtgraph.problem import Problem
from mtgraph.strategies.grouping.selection import Solution
from mtgraph.strategies.protocol import replay

__all__ = ["CompiledSolution", "build_solution", "groups_pipeline", "path_keys"]


def groups_pipeline(groups: Sequence[Sequence[str]]) -> str:
    """The pipeline turning One-Net into one separate network per group: ``split`` at block 0 (``""`` for one group).

    Args:
        groups: disjoint task groups covering every task (each a network).

    Returns:
        The pipeline string.

    Raises:
        PassError: empty or overlapping groups.

    Examples:
        >>> from mtgraph.strategies.grouping import groups_pipeline
        >>> groups_pipeline([("seg", "depth"), ("normals",)])
        'split{block=0,groups=seg+depth/normals}'
        >>> groups_pipeline([("seg", "depth")])
        ''
    """
    split = SplitPass(block=0, groups=tuple(tuple(g) for g in groups))
    return "" if len(split.groups) == 1 else format_pipeline([split])


def path_keys(graph: MTGraph, task: str) -> tuple[str, ...]:
    """The weight keys of the Blocks on ``task``'s path, in block order (the path must be a chain of Blocks).

    Args:
        graph: a graph whose task paths are chains of blocks (One-Net, or split One-Net).
        task: one of its tasks.

    Returns:
        One key per block.

    Raises:
        ConfigError: the path holds something other than the input, Blocks and the head.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.grouping import path_keys
        >>> path_keys(mtgraph.one_net(3, ["seg", "depth"]), "seg")
        ('b0.shared', 'b1.shared', 'b2.shared')
    """
    nodes = [graph.nodes[i] for i in graph.path(task)]
    blocks = [n for n in nodes if isinstance(n, Block)]
    if len(blocks) != len(nodes) - 2:  # input, the blocks, the head
        raise ConfigError(f"candidate networks must be chains of blocks (a One-Net); task {task!r}'s path is {nodes}")
    return tuple(n.weights for n in sorted(blocks, key=lambda n: n.block))


@dataclass(frozen=True)
class CompiledSolution:
    """The chosen networks as one graph.

    Attributes:
        graph, params: the network (every task once, one path per kept network).
        serving: task -> name of the network whose head computes it.
        networks: names of the networks kept, in the order of the pipeline's groups.
        dropped: chosen networks that served no task (removed).
        auxiliary: network name -> its heads that were dropped (tasks served elsewhere).
        keys: network name -> the weight keys of its path, block by block.
        pipeline: the pass pipeline that built ``graph`` from One-Net (``""``: One-Net itself).
        small_keys: the keys holding the small backbone's modules (see the module docstring).

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.strategies.grouping import Candidate, build_solution, select_networks
        >>> problem = mtgraph.toy_problem(("seg", "depth"))
        >>> networks = {}  # two single-task networks (untrained here; normally load_candidate's)
        >>> for task in ("seg", "depth"):
        ...     graph = mtgraph.one_net(problem.backbone.num_blocks, [task])
        ...     networks[task] = (graph, mtgraph.ParamStore.create(graph, problem.backbone, problem.heads))
        >>> table = [Candidate({"seg": 1.0}, 1.0), Candidate({"depth": 1.0}, 1.0)]
        >>> compiled = build_solution(select_networks(table, ["seg", "depth"], 2.0), networks, problem)
        >>> compiled.networks, compiled.serving, compiled.pipeline
        (('depth', 'seg'), {'seg': 'seg', 'depth': 'depth'}, 'split{block=0,groups=depth/seg}')
    """

    graph: MTGraph
    params: ParamStore
    serving: dict[str, str]
    networks: tuple[str, ...]
    dropped: tuple[str, ...] = ()
    auxiliary: dict[str, tuple[str, ...]] = field(default_factory=dict)
    keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    pipeline: str = ""
    small_keys: tuple[str, ...] = ()


def _check_backbones(backbone: Backbone, other: Backbone, name: str) -> None:
    if other.num_blocks != backbone.num_blocks or tuple(other.input_shape) != tuple(backbone.input_shape):
        raise ConfigError(
            f"network {name} is built on a backbone with {other.num_blocks} blocks and input "
            f"{list(other.input_shape)}, the solution's backbone has {backbone.num_blocks} blocks and input "
            f"{list(backbone.input_shape)}; a solution's networks must read the same input through the same number "
            "of blocks (trace the smaller model with the same cuts and input)"
        )


def build_solution(
    solution: Solution, networks: Mapping[str, tuple[MTGraph, ParamStore]], problem: Problem
) -> CompiledSolution:
    """Build the chosen set ``solution`` by passes on ``problem``'s One-Net, with weights from the trained ``networks``.

    ``networks`` maps each chosen network's name to its trained One-Net and
    weights (:func:`~.candidates.load_candidate`). The groups are the tasks
    each kept network serves, in the order of ``solution.networks``; the
    graph is ``replay(problem, "one_net", groups_pipeline(groups))``. The
    trained modules are used as they are (not copied): build from freshly
    loaded networks if the candidates must stay untouched.

    Args:
        solution: the chosen set of networks.
        networks: network name -> its trained ``(graph, params)``.
        problem: gives the backbone, the tasks (and their output order) and the start graph.

    Returns:
        The :class:`CompiledSolution`.

    Raises:
        ConfigError: a task is not served, a served network is missing from
            ``networks``, is not a chain of blocks, or was built on a
            backbone with other blocks or input.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.strategies.grouping import Candidate, build_solution, select_networks
        >>> from mtgraph.strategies.protocol import replay
        >>> problem = mtgraph.toy_problem(("seg", "depth"))
        >>> networks = {}  # two single-task networks (untrained here; normally load_candidate's)
        >>> for task in ("seg", "depth"):
        ...     graph = mtgraph.one_net(problem.backbone.num_blocks, [task])
        ...     networks[task] = (graph, mtgraph.ParamStore.create(graph, problem.backbone, problem.heads))
        >>> table = [Candidate({"seg": 1.0}, 1.0), Candidate({"depth": 1.0}, 1.0)]
        >>> compiled = build_solution(select_networks(table, ["seg", "depth"], 2.0), networks, problem)
        >>> replay(problem, "one_net", compiled.pipeline)[0] == compiled.graph
        True
        >>> print(mtgraph.print_graph(compiled.graph).splitlines()[1])
        %1 = block 0 w=b0.seg (%0)                  # seg
    """
    names = problem.task_names
    missing = sorted(set(names) - set(solution.serving))
    if missing:
        raise ConfigError(f"the solution serves no network for tasks {missing}")
    kept: list[str] = []
    dropped: list[str] = []
    groups: list[tuple[str, ...]] = []
    for net in solution.networks:
        served = tuple(t for t in names if solution.serving[t] == net.name)
        if not served:
            dropped.append(net.name)
            continue
        if net.name not in networks:
            raise ConfigError(f"no trained network given for {net.name}; networks were given for {sorted(networks)}")
        kept.append(net.name)
        groups.append(served)
    pipeline = groups_pipeline(groups)
    graph, fresh = replay(problem, "one_net", pipeline)
    modules: dict[str, nn.Module] = dict(fresh.items())
    keys: dict[str, tuple[str, ...]] = {}
    auxiliary: dict[str, tuple[str, ...]] = {}
    small_keys: list[str] = []
    labels = {n.name: n.label for n in solution.networks}
    for name, served in zip(kept, groups, strict=True):
        trained, params = networks[name]
        _check_backbones(problem.backbone, params.backbone, name)
        unused = tuple(t for t in trained.tasks if t not in served)
        if unused:
            auxiliary[name] = unused
        # Every served task of a One-Net runs the same chain; read it off the first one.
        source = path_keys(trained, served[0])
        target = path_keys(graph, served[0])
        if len(source) != len(target):
            raise ConfigError(f"network {name} runs {len(source)} blocks; the backbone has {len(target)}")
        for old, new in zip(source, target, strict=True):
            modules[new] = params[old]
        for task in served:
            modules[head_weights(task)] = params[head_weights(task)]
        keys[name] = target
        if labels[name] is not None:
            small_keys += target
    return CompiledSolution(
        graph=graph,
        params=ParamStore(problem.backbone, modules),
        serving={t: solution.serving[t] for t in names},
        networks=tuple(kept),
        dropped=tuple(dropped),
        auxiliary=auxiliary,
        keys=keys,
        pipeline=pipeline,
        small_keys=tuple(small_keys),
    )

"""A selected set of networks becomes one MTGraph: separate paths from the input, one per serving network.

papers/003 deploys the chosen networks side by side; each task is read off
the network that serves it best (:class:`~.selection.Solution.serving`). In
mtgraph that is one graph split at the input: every kept network is a chain
of ``Block`` nodes with its own weight keys, and each task's ``Head`` sits
on the chain of the network serving it. Weights are the trained
candidates' own modules, so the compiled solution reproduces, task by task,
the outputs of the candidate serving it.

What is dropped:

* heads a network has but does not serve (auxiliary heads, papers/003
  fig. 3's dotted decoders): they helped training, they cost nothing now;
* a chosen network serving no task at all (an optimal selection never
  holds one, since removing it keeps the loss and lowers the cost; a
  hand-made or rescored set might): its whole path goes, and
  :attr:`CompiledSolution.dropped` names it.

Keys: the path of the network serving tasks ``G`` uses
``group_key(b, G, tasks)`` at block ``b`` (``b3.depth+seg``, or
``b3.shared`` when one network serves everything), the names ``split``
gives, so a full-size solution is ``one_net`` + ``split{block=0,...}``
(:attr:`CompiledSolution.pipeline`).

Networks on the second, smaller backbone (label ``small``)
----------------------------------------------------------
A ``Block(block, weights)`` node names a block *index*; the module it runs
is whatever the ParamStore holds under ``weights``. A small network's path
therefore uses the same block indices with its own keys (suffix
``-small``: ``b3.seg-small``) holding the small backbone's modules, and the
solution compiles, costs (per node, by running each module), exports to
ONNX and saves like any other. What does *not* work is
:func:`mtgraph.load` of such a saved solution: it rebuilds every block key
from one backbone's modules, so the small keys' tensors do not fit (a
CheckpointError naming the tensor and both shapes). Both backbones must
have the same number of blocks and the same input; that is checked here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from mtgraph.errors import ConfigError
from mtgraph.frontend.backbone import Backbone
from mtgraph.ir.builders import group_key
from mtgraph.ir.canonical import canonicalize
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block, Head, Input, Node, head_weights
from mtgraph.ir.verify import verify
from mtgraph.params import ParamStore
from mtgraph.passes.pipeline import format_pipeline
from mtgraph.passes.split import SplitPass
from mtgraph.strategies.grouping.selection import Solution

__all__ = ["CompiledSolution", "build_solution", "solution_keys"]


@dataclass(frozen=True)
class CompiledSolution:
    """The chosen networks as one graph.

    Attributes:
        graph, params: the network (every task once, one path per kept network).
        serving: task -> name of the network whose head computes it.
        networks: names of the networks kept, in path order.
        dropped: chosen networks that served no task (removed).
        auxiliary: network name -> its heads that were dropped (tasks served elsewhere).
        keys: network name -> the weight keys of its path, block by block.
        pipeline: the pass pipeline producing the structure from ``one_net``
            (empty for one network; empty when a small network is kept,
            since no pass builds a path on another backbone).

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.strategies.grouping import Candidate, build_solution, select_networks
        >>> backbone = mtgraph.trace(resnet_tiny(width=2), torch.zeros(2, 3, 32, 32))
        >>> networks = {}  # two single-task networks (untrained here; normally load_candidate's)
        >>> for task in ("seg", "depth"):
        ...     graph = mtgraph.one_net(backbone.num_blocks, [task])
        ...     networks[task] = (graph, mtgraph.ParamStore.create(graph, backbone, {task: torch.nn.Identity()}))
        >>> table = [Candidate({"seg": 1.0}, 1.0), Candidate({"depth": 1.0}, 1.0)]
        >>> compiled = build_solution(select_networks(table, ["seg", "depth"], 2.0), networks, ["seg", "depth"], backbone)
        >>> compiled.networks, compiled.serving
        (('depth', 'seg'), {'seg': 'seg', 'depth': 'depth'})
    """

    graph: MTGraph
    params: ParamStore
    serving: dict[str, str]
    networks: tuple[str, ...]
    dropped: tuple[str, ...] = ()
    auxiliary: dict[str, tuple[str, ...]] = field(default_factory=dict)
    keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    pipeline: str = ""


def solution_keys(num_blocks: int, served: Sequence[str], tasks: Sequence[str], label: str | None) -> tuple[str, ...]:
    """The weight keys of the path of a network serving ``served``, block by block.

    Args:
        num_blocks: blocks of the backbone.
        served: the tasks the network serves.
        tasks: every task of the solution.
        label: the network's label (``"small"``) or None.

    Returns:
        One weight key per block.

    Examples:
        >>> from mtgraph.strategies.grouping import solution_keys
        >>> solution_keys(3, ["seg"], ["seg", "depth"], None)
        ('b0.seg', 'b1.seg', 'b2.seg')
        >>> solution_keys(2, ["seg", "depth"], ["seg", "depth"], None), solution_keys(1, ["seg"], ["seg", "depth"], "small")
        (('b0.shared', 'b1.shared'), ('b0.seg-small',))
    """
    suffix = f"-{label}" if label else ""
    return tuple(group_key(b, served, tasks) + suffix for b in range(num_blocks))


def _trunk_keys(graph: MTGraph, task: str) -> tuple[str, ...]:
    """The weight keys on ``task``'s path of a candidate (a One-Net), in block order."""
    nodes = [graph.nodes[i] for i in graph.path(task)]
    blocks = [n for n in nodes if isinstance(n, Block)]
    if len(blocks) != len(nodes) - 2:  # input, the blocks, the head
        raise ConfigError(f"candidate networks must be chains of blocks (a One-Net); task {task!r}'s path is {nodes}")
    return tuple(n.weights for n in sorted(blocks, key=lambda n: n.block))


def _check_backbones(backbone: Backbone, other: Backbone, name: str) -> None:
    if other.num_blocks != backbone.num_blocks or tuple(other.input_shape) != tuple(backbone.input_shape):
        raise ConfigError(
            f"network {name} is built on a backbone with {other.num_blocks} blocks and input "
            f"{list(other.input_shape)}, the solution's backbone has {backbone.num_blocks} blocks and input "
            f"{list(backbone.input_shape)}; a solution's networks must read the same input through the same number "
            "of blocks (trace the smaller model with the same cuts and input)"
        )


def build_solution(
    solution: Solution,
    networks: Mapping[str, tuple[MTGraph, ParamStore]],
    tasks: Sequence[str],
    backbone: Backbone,
) -> CompiledSolution:
    """Compile the chosen set ``solution`` into one graph with weights from the trained ``networks``.

    ``networks`` maps each chosen network's name to its trained One-Net and
    weights (:func:`~.candidates.load_candidate`). ``tasks`` fixes the
    output order. ``backbone`` is the store's backbone (the full-size one).
    The modules are used as they are (not copied): build from freshly
    loaded networks if the candidates must stay untouched.

    Args:
        solution: the chosen set of networks.
        networks: network name -> its trained ``(graph, params)``.
        tasks: every task, in output order.
        backbone: the full-size backbone.

    Returns:
        The :class:`CompiledSolution`.

    Raises:
        ConfigError: a task is not served, a served network is missing from
            ``networks``, is not a chain of blocks, or was built on a
            backbone with other blocks or input.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.strategies.grouping import Candidate, build_solution, select_networks
        >>> backbone = mtgraph.trace(resnet_tiny(width=2), torch.zeros(2, 3, 32, 32))
        >>> networks = {}  # two single-task networks (untrained here; normally load_candidate's)
        >>> for task in ("seg", "depth"):
        ...     graph = mtgraph.one_net(backbone.num_blocks, [task])
        ...     networks[task] = (graph, mtgraph.ParamStore.create(graph, backbone, {task: torch.nn.Identity()}))
        >>> table = [Candidate({"seg": 1.0}, 1.0), Candidate({"depth": 1.0}, 1.0)]
        >>> compiled = build_solution(select_networks(table, ["seg", "depth"], 2.0), networks, ["seg", "depth"], backbone)
        >>> compiled.pipeline
        'split{block=0,groups=depth/seg}'
        >>> print(mtgraph.print_graph(compiled.graph).splitlines()[1])
        %1 = block 0 w=b0.seg (%0)                  # seg
    """
    names = tuple(tasks)
    missing = sorted(set(names) - set(solution.serving))
    if missing:
        raise ConfigError(f"the solution serves no network for tasks {missing}")
    nodes: list[Node] = [Input()]
    modules: dict[str, nn.Module] = {}
    keys: dict[str, tuple[str, ...]] = {}
    auxiliary: dict[str, tuple[str, ...]] = {}
    head_src: dict[str, int] = {}
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
        graph, params = networks[net.name]
        _check_backbones(backbone, params.backbone, net.name)
        unused = tuple(t for t in graph.tasks if t not in served)
        if unused:
            auxiliary[net.name] = unused
        # Every served task of a One-Net runs the same chain; read it off the first one.
        source = _trunk_keys(graph, served[0])
        if len(source) != backbone.num_blocks:
            raise ConfigError(f"network {net.name} runs {len(source)} blocks; the backbone has {backbone.num_blocks}")
        target = solution_keys(backbone.num_blocks, served, names, net.label)
        src = 0
        for b, (old, new) in enumerate(zip(source, target)):
            if new in modules:
                raise ConfigError(f"two networks of the solution would both use weight key {new!r}")
            modules[new] = params[old]
            nodes.append(Block(block=b, weights=new, src=src))
            src = len(nodes) - 1
        for t in served:
            head_src[t] = src
            modules[head_weights(t)] = params[head_weights(t)]
        keys[net.name] = target
        kept.append(net.name)
        groups.append(served)
    nodes.extend(Head(task=t, src=head_src[t]) for t in names)
    graph = canonicalize(MTGraph(tuple(nodes)))
    store = ParamStore(backbone, modules)
    verify(graph, num_blocks=backbone.num_blocks, weight_keys=set(store.keys()))
    small = any(n.label for n in solution.networks if n.name in kept)
    pipeline = ""
    if len(groups) > 1 and not small:
        pipeline = format_pipeline([SplitPass(block=0, groups=tuple(groups))])
    return CompiledSolution(
        graph=graph,
        params=store,
        serving={t: solution.serving[t] for t in names},
        networks=tuple(kept),
        dropped=tuple(dropped),
        auxiliary=auxiliary,
        keys=keys,
        pipeline=pipeline,
    )

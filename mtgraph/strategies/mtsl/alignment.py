"""MTSL task nodes, their sibling sets, and the CKA alignment term (papers/000 §3.2, eq. 1).

Vocabulary (DESIGN.md): a *task node* is the first ``Block`` on a task's path
used by that task alone; a *group node* is a ``Block`` reached by several
tasks. Task nodes that read the same source (the input, or one group node)
are *siblings*: only siblings can be fused (§3.1), and the alignment term
pulls every pair of siblings together. Eq. 1 reads
``L = L_MTL + λ (1 − L_CKA)``; how the pairs enter it is the *loss balance*
(:data:`LOSS_BALANCES`):

* ``"paper"`` (default), as the authors' released code computes it: per
  sibling set, ``1 − mean`` over its pairs of CKA, summed over the sibling
  sets, with ``L_MTL`` the *sum* of the task losses (appendix C: "we equally
  weigh all task losses (all task losses have a weight of 1)")::

      L = Σ_t L_t + λ · Σ_{sets S} (1 − mean_{i < j ∈ S} CKA(F_i, F_j))

* ``"mean_sum"``, mtgraph's earlier balance, kept as an option: the *mean* of
  the task losses and ``λ`` times the *sum* over every sibling pair::

      L = mean_t L_t + λ · Σ_{sets S} Σ_{i < j ∈ S} (1 − CKA(F_i, F_j))

  Relative to the task losses the alignment is ``T · P`` times the paper's
  for one sibling set of T task nodes and P = T(T−1)/2 pairs (the task
  losses are divided by T, the alignment multiplied by P): 9× for 3 tasks,
  50× for 5.

CKA is the unbiased linear CKA of
:func:`mtgraph.analysis.similarity.linear_cka` on the current minibatch
(appendix F). A set's term is computed as the mean of ``1 − CKA`` (equal to
``1 − mean CKA``; subtracting each CKA from 1 first is exact in floating point
near CKA = 1, where the term lives).

**How the features are obtained.** :class:`FeatureTap` registers a forward
hook on the ParamStore module of each task node. A task node's weight key is
used by that node alone (it serves one task), and the compiled module calls
the store's very module objects, so the hook sees exactly that node's output
on every forward of the compiled network — whose contract
(``forward(x) -> {task: tensor}``) is left untouched. Structural steps that
need features without the heads use :func:`run_prefix`, an interpreter that
evaluates only the nodes a set of targets depends on.

**Unfused task nodes stay task nodes.** When a sibling set is not (entirely)
fused, the task nodes left over remain task nodes of the same source (the
paper only moves a task node down when it is removed, §3.4). They keep being
aligned with their remaining siblings and are offered for grouping again in
the next structural phase. A task node left without siblings is final.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from mtgraph.analysis.similarity import linear_cka
from mtgraph.errors import ConfigError
from mtgraph.frontend import primary
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block, Head, Input
from mtgraph.options import check_choice
from mtgraph.params import ParamStore

__all__ = [
    "LOSS_BALANCES",
    "LossBalance",
    "FeatureTap",
    "SiblingSet",
    "alignment_loss",
    "alignment_pairs",
    "alignment_sets",
    "block_weights",
    "run_prefix",
    "sibling_sets",
    "task_nodes",
]


#: How eq. 1 balances the task losses and the alignment term (see the module docstring).
LossBalance = Literal["paper", "mean_sum"]
#: The loss balances, the paper's (released code's) first.
LOSS_BALANCES: tuple[LossBalance, ...] = ("paper", "mean_sum")


def block_weights(graph: MTGraph, node_id: int) -> str:
    """The weight key of Block node ``node_id`` (ConfigError if it is not a Block).

    Args:
        graph: the graph.
        node_id: index of a node in ``graph.nodes``.

    Returns:
        The Block's weight key in the ParamStore.

    Raises:
        ConfigError: node ``node_id`` is not a Block.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.mtsl import block_weights
        >>> graph = mtgraph.stn(2, ("a", "b"))
        >>> block_weights(graph, 1)
        'b0.a'
        >>> block_weights(graph, 0)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: node %0 is a Input, not a block
    """
    node = graph.nodes[node_id]
    if not isinstance(node, Block):
        raise ConfigError(f"node %{node_id} is a {type(node).__name__}, not a block")
    return node.weights


def task_nodes(graph: MTGraph) -> dict[str, int]:
    """Map each task to the id of its task node; tasks whose blocks are all shared are absent.

    Args:
        graph: the graph.

    Returns:
        Task name -> id of the first Block on its path that serves it alone.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.mtsl import task_nodes
        >>> from mtgraph.ir import from_groups
        >>> graph = from_groups(2, ["a", "b", "c"], [[["a", "b"], ["c"]], [["a"], ["b"], ["c"]]])  # a+b share block 0
        >>> task_nodes(graph)  # c's own block 0 (%2), a and b's own blocks 1 (%3, %4)
        {'a': 3, 'b': 4, 'c': 2}
        >>> task_nodes(mtgraph.one_net(2, ("a", "b")))
        {}
    """
    out: dict[str, int] = {}
    for task in graph.tasks:
        for i in graph.path(task):
            node = graph.nodes[i]
            if isinstance(node, Block) and graph.served[i] == frozenset({task}):
                out[task] = i
                break
    return out


@dataclass(frozen=True)
class SiblingSet:
    """Task nodes reading the same source: the candidates of one grouping decision.

    Attributes:
        source: id of the node they read (0 is the input).
        block: the backbone block index of the task nodes.
        tasks: the tasks, in task order.
        nodes: the task node ids, same order as ``tasks``.

    Examples:
        >>> from mtgraph.strategies.mtsl import sibling_sets
        >>> from mtgraph.ir import from_groups
        >>> graph = from_groups(2, ["a", "b", "c"], [[["a", "b"], ["c"]], [["a"], ["b"], ["c"]]])  # a+b share block 0
        >>> (siblings,) = sibling_sets(graph)
        >>> siblings.tasks, siblings.nodes, siblings.describe(graph)
        (('a', 'b'), (3, 4), 'block 1 after %1 (a+b)')
    """

    source: int
    block: int
    tasks: tuple[str, ...]
    nodes: tuple[int, ...]

    def describe(self, graph: MTGraph) -> str:
        """Human-readable location, e.g. ``block 2 after %3 (S+E)``."""
        if isinstance(graph.nodes[self.source], Input):
            parent = "the input"
        else:
            served = [t for t in graph.tasks if t in graph.served[self.source]]
            parent = f"%{self.source} ({'+'.join(served)})"
        return f"block {self.block} after {parent}"


def sibling_sets(graph: MTGraph) -> tuple[SiblingSet, ...]:
    """Every group of two or more task nodes that read the same source, in graph order.

    Args:
        graph: the graph.

    Returns:
        One :class:`SiblingSet` per source read by two or more task nodes (a task node alone at its source has none).

    Raises:
        ConfigError: task nodes reading one source sit at different blocks.

    Examples:
        >>> from mtgraph.strategies.mtsl import sibling_sets
        >>> from mtgraph.ir import from_groups
        >>> graph = from_groups(2, ["a", "b", "c"], [[["a", "b"], ["c"]], [["a"], ["b"], ["c"]]])  # a+b share block 0
        >>> sibling_sets(graph)  # c alone at the input has no sibling
        (SiblingSet(source=1, block=1, tasks=('a', 'b'), nodes=(3, 4)),)
    """
    by_source: dict[int, list[tuple[str, int]]] = {}
    for task, node_id in task_nodes(graph).items():
        node = graph.nodes[node_id]
        assert isinstance(node, Block)
        by_source.setdefault(node.src, []).append((task, node_id))
    sets = []
    for source in sorted(by_source):
        members = sorted(by_source[source], key=lambda m: graph.tasks.index(m[0]))
        if len(members) < 2:
            continue
        blocks = {graph.nodes[n].block for _, n in members}  # type: ignore[union-attr]
        if len(blocks) != 1:
            raise ConfigError(f"task nodes reading %{source} sit at different blocks {sorted(blocks)}")
        sets.append(SiblingSet(source, blocks.pop(), tuple(t for t, _ in members), tuple(n for _, n in members)))
    return tuple(sets)


def alignment_sets(graph: MTGraph) -> tuple[tuple[str, ...], ...]:
    """The tasks of every sibling set, the sets eq. 1 aligns (see :func:`sibling_sets`).

    Args:
        graph: the graph.

    Returns:
        One tuple of task names per sibling set, in task order.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.ir import from_groups
        >>> from mtgraph.strategies.mtsl import alignment_sets
        >>> alignment_sets(mtgraph.stn(2, ("a", "b", "c")))
        (('a', 'b', 'c'),)
        >>> alignment_sets(from_groups(2, ["a", "b", "c", "d"], [[["a", "b"], ["c", "d"]], [["a"], ["b"], ["c"], ["d"]]]))
        (('a', 'b'), ('c', 'd'))
    """
    return tuple(s.tasks for s in sibling_sets(graph))


def alignment_pairs(graph: MTGraph) -> tuple[tuple[str, str], ...]:
    """Every unordered pair of sibling task nodes (named by task).

    Args:
        graph: the graph.

    Returns:
        ``(task, task)`` pairs, in task order within each sibling set.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.mtsl import alignment_pairs
        >>> alignment_pairs(mtgraph.stn(2, ("a", "b", "c")))
        (('a', 'b'), ('a', 'c'), ('b', 'c'))
    """
    return tuple(pair for s in sibling_sets(graph) for pair in itertools.combinations(s.tasks, 2))


def alignment_loss(
    features: Mapping[str, torch.Tensor],
    sets: Sequence[Sequence[str]],
    weight: float,
    *,
    balance: LossBalance = "paper",
) -> torch.Tensor:
    """The alignment term of eq. 1 on this batch, with the unbiased, differentiable linear CKA.

    ``"paper"``: ``weight · Σ_sets mean_pairs (1 − CKA)``; ``"mean_sum"``:
    ``weight · Σ_sets Σ_pairs (1 − CKA)`` (see the module docstring). The two
    agree on sets of two tasks.

    Args:
        features: task → its task node's output on the current batch.
        sets: the sibling sets, each two or more tasks (see :func:`alignment_sets`).
        weight: λ (papers/000: 0.2).
        balance: ``"paper"`` or ``"mean_sum"``.

    Returns:
        A 0-d tensor (exactly 0 when there are no sets).

    Raises:
        ConfigError: an unknown balance, a set of fewer than two tasks, or a task without features.

    Examples:
        >>> import torch
        >>> from mtgraph.strategies.mtsl import alignment_loss
        >>> _ = torch.manual_seed(0)
        >>> a, b = torch.randn(8, 4, 3, 3), torch.randn(8, 4, 3, 3)
        >>> float(alignment_loss({"a": a, "b": a}, [("a", "b")], 0.2))  # identical features: CKA = 1
        0.0
        >>> three = {"a": a, "b": a, "c": b}  # one set of three: the paper averages its 3 pairs, mean_sum adds them
        >>> paper = alignment_loss(three, [("a", "b", "c")], 0.2)
        >>> mean_sum = alignment_loss(three, [("a", "b", "c")], 0.2, balance="mean_sum")
        >>> round(float(mean_sum / paper), 4)
        3.0
    """
    check_choice("alignment_loss", "balance", balance, LOSS_BALANCES)
    short = [list(tasks) for tasks in sets if len(tasks) < 2]
    if short:
        raise ConfigError(f"every sibling set of the alignment term needs two or more tasks, got {short}")
    missing = sorted({t for tasks in sets for t in tasks} - set(features))
    if missing:
        raise ConfigError(f"alignment needs the task node features of {missing}; got features of {sorted(features)}")
    terms = []
    for tasks in sets:
        gaps = torch.stack([1.0 - linear_cka(features[a], features[b]) for a, b in itertools.combinations(tasks, 2)])
        terms.append(gaps.mean() if balance == "paper" else gaps.sum())
    if not terms:
        reference = next(iter(features.values()), None)
        return torch.zeros((), device=None if reference is None else reference.device)
    return weight * torch.stack(terms).sum()


class FeatureTap:
    """Capture the outputs of chosen ParamStore modules during a forward pass.

    ``FeatureTap(params, {"S": "b3.S", ...})`` hooks ``params["b3.S"]``;
    after each forward of a network built from ``params`` (e.g. the compiled
    module), ``tap.features`` maps ``"S"`` to that module's latest output (with
    its autograd graph, so a loss can be built on it). Use as a context
    manager, or call :meth:`close` to remove the hooks.

    Args:
        params: the store whose modules are hooked.
        keys: name -> weight key of the module to capture.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.randn(2, 3, 8, 8))
        >>> graph = mtgraph.stn(backbone.num_blocks, ("a", "b"))
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"a": nn.Conv2d(4, 1, 1), "b": nn.Conv2d(4, 1, 1)})
        >>> from mtgraph.strategies.mtsl import FeatureTap
        >>> with FeatureTap(params, {"a": "b0.a"}) as tap:
        ...     _ = mtgraph.compile(graph, params)(torch.randn(2, 3, 8, 8))
        ...     tap.features["a"].shape
        torch.Size([2, 4, 6, 6])
    """

    def __init__(self, params: ParamStore, keys: Mapping[str, str]) -> None:
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        for name, key in keys.items():
            self._handles.append(params[key].register_forward_hook(self._hook(name)))

    def _hook(self, name: str):  # noqa: ANN202 - torch hook signature
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            del module, inputs
            self.features[name] = primary(output)  # a multi-tensor value: the block's own feature map

        return record

    def clear(self) -> None:
        """Forget the captured features (they hold autograd graphs)."""
        self.features = {}

    def close(self) -> None:
        """Remove every hook."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_prefix(graph: MTGraph, params: ParamStore, x: torch.Tensor, targets: Sequence[int]) -> dict[int, torch.Tensor]:
    """Evaluate only the nodes that ``targets`` depend on; return ``{target id: output}``.

    MTSL graphs hold ``Input`` and ``Block`` nodes below the heads, so this
    small interpreter is enough to compute task-node features (grouping) and
    group-node sources (amalgamation) without running the rest of the network.

    Args:
        graph: an MTSL graph (Input, Block and Head nodes).
        params: its weights.
        x: a batch of images.
        targets: ids of the nodes whose outputs are wanted.

    Returns:
        Target id -> its output on ``x``.

    Raises:
        ConfigError: a node the targets depend on is not an Input, Block or Head.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.randn(2, 3, 8, 8))
        >>> graph = mtgraph.stn(backbone.num_blocks, ("a", "b"))
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"a": nn.Conv2d(4, 1, 1), "b": nn.Conv2d(4, 1, 1)})
        >>> from mtgraph.strategies.mtsl import run_prefix
        >>> out = run_prefix(graph, params, torch.randn(2, 3, 8, 8), [1])  # task a's node at block 0
        >>> {node: tuple(value.shape) for node, value in out.items()}
        {1: (2, 4, 6, 6)}
    """
    needed: set[int] = set()
    stack = list(targets)
    while stack:
        i = stack.pop()
        if i in needed:
            continue
        needed.add(i)
        stack.extend(graph.nodes[i].srcs)
    values: dict[int, torch.Tensor] = {}
    for i in sorted(needed):
        node = graph.nodes[i]
        if isinstance(node, Input):
            values[i] = x
        elif isinstance(node, Block):
            values[i] = params[node.weights](values[node.src])
        elif isinstance(node, Head):
            values[i] = params[node.weights](values[node.src])
        else:
            raise ConfigError(f"MTSL graphs hold only input, block and head nodes; node %{i} is {type(node).__name__}")
    return {t: values[t] for t in targets}

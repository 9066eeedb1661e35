"""Honest cost accounting of an MTGraph: GMac and parameters, total, per node, per task.

Conventions (those of the papers' tables):

* MACs per image (batch of one), counted by
  :func:`mtgraph.analysis.macs.count_macs` (FlopCounterMode / 2: convolution,
  linear, matmul/bmm, attention), once per IR node: a node shared by several
  tasks counts once.
* Parameters deduplicated by tensor identity: a weight key called from
  several sites, or a tensor tied across keys, counts once.
* Per task: everything on the task's own path (shared nodes included).
  Shared = nodes serving more than one task; specific = nodes serving one.

The cost is an interpreter over the IR: it runs each node's module on a
batch-of-one input in eval mode and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from mtgraph.analysis.macs import count_macs, evaluation_mode, unique_parameters
from mtgraph.compile import compile as compile_graph
from mtgraph.errors import CompileError
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Input, Skip
from mtgraph.ir.text import format_node
from mtgraph.params import ParamStore

__all__ = ["NodeCost", "TaskCost", "CostReport", "cost"]


@dataclass(frozen=True)
class NodeCost:
    """Cost of one IR node: its MACs per image, its own parameters, the tasks it serves, its output shape.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> graph = mtgraph.one_net(2, ["seg"])
        >>> report = mtgraph.cost(graph, mtgraph.ParamStore.create(graph, backbone, {"seg": nn.Conv2d(4, 2, 1)}))
        >>> report.nodes[1]
        NodeCost(node=1, text='%1 = block 0 w=b0.seg (%0)', tasks=('seg',), macs=3888, params=112, shape=(4, 6, 6))
    """

    node: int
    text: str
    tasks: tuple[str, ...]
    macs: int
    params: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class TaskCost:
    """Cost of one task's whole path, and how much of it is shared with other tasks.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> graph = mtgraph.one_net(2, ["seg", "depth"])
        >>> heads = {"seg": nn.Conv2d(4, 2, 1), "depth": nn.Conv2d(4, 1, 1)}
        >>> mtgraph.cost(graph, mtgraph.ParamStore.create(graph, backbone, heads)).tasks["seg"]
        TaskCost(macs=4176, params=122, shared_macs=3888, specific_macs=288)
    """

    macs: int
    params: int
    shared_macs: int
    specific_macs: int


@dataclass(frozen=True)
class CostReport:
    """The cost of a compiled multi-task network (see module docstring for conventions).

    ``str(report)`` is a table in GMac and millions of parameters per task.

    Attributes:
        total_macs: MACs per image of the whole network, shared nodes once.
        total_params: parameters, each tensor counted once.
        shared_macs: MACs of nodes serving more than one task.
        specific_macs: MACs of nodes serving one task.
        shared_params: parameters of nodes serving more than one task.
        specific_params: parameters used only by single-task nodes.
        nodes: the cost of every node, in node order.
        tasks: task -> the cost of its path.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> graph = mtgraph.one_net(2, ["seg", "depth"])
        >>> heads = {"seg": nn.Conv2d(4, 2, 1), "depth": nn.Conv2d(4, 1, 1)}
        >>> report = mtgraph.cost(graph, mtgraph.ParamStore.create(graph, backbone, heads))
        >>> report.total_macs, report.shared_macs, report.specific_macs, report.total_params
        (4320, 3888, 432, 127)
        >>> sorted(report.to_dict())[:4]
        ['gmac', 'nodes', 'shared_macs', 'shared_params']
    """

    total_macs: int
    total_params: int
    shared_macs: int
    specific_macs: int
    shared_params: int
    specific_params: int
    nodes: tuple[NodeCost, ...]
    tasks: dict[str, TaskCost]

    @property
    def gmac(self) -> float:
        """Total GMac per image."""
        return self.total_macs / 1e9

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every number in the report."""
        data = asdict(self)
        data["gmac"] = self.gmac
        return data

    def __str__(self) -> str:
        lines = [f"{'':<12} {'GMac':>10} {'params (M)':>11} {'shared GMac':>12} {'own GMac':>10}"]
        for task, tc in self.tasks.items():
            lines.append(
                f"{task:<12} {tc.macs / 1e9:>10.4f} {tc.params / 1e6:>11.4f} "
                f"{tc.shared_macs / 1e9:>12.4f} {tc.specific_macs / 1e9:>10.4f}"
            )
        lines.append(
            f"{'total':<12} {self.total_macs / 1e9:>10.4f} {self.total_params / 1e6:>11.4f} "
            f"{self.shared_macs / 1e9:>12.4f} {self.specific_macs / 1e9:>10.4f}"
        )
        return "\n".join(lines)


def _node_modules(module: torch.fx.GraphModule) -> list[nn.Module | None]:
    """For each IR node (in order), the submodule the compiled graph calls for it, or None."""
    called: list[nn.Module | None] = []
    for fx_node in module.graph.nodes:
        if fx_node.op == "call_module":
            called.append(module.get_submodule(str(fx_node.target)))
    return called


def _present(modules: Iterable[nn.Module | None]) -> list[nn.Module]:
    return [m for m in modules if m is not None]


def _count(modules: Iterable[nn.Module | None]) -> int:
    return sum(p.numel() for p in unique_parameters(_present(modules)).values())


def cost(graph: MTGraph, params: ParamStore) -> CostReport:
    """Measure ``graph`` with ``params``: MACs per image and parameters, total, per node and per task.

    Args:
        graph: the architecture.
        params: its modules; they are run once on a batch of one in eval mode
            and left unchanged.

    Returns:
        The :class:`CostReport`.

    Raises:
        CompileError: ``graph`` and ``params`` do not compile (see
            :func:`mtgraph.compile.compile`).
        VerifyError: ``graph`` is invalid for ``params``.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> heads = {"seg": nn.Conv2d(4, 2, 1), "depth": nn.Conv2d(4, 1, 1)}
        >>> shared = mtgraph.one_net(2, ["seg", "depth"])
        >>> separate = mtgraph.stn(2, ["seg", "depth"])
        >>> mtgraph.cost(shared, mtgraph.ParamStore.create(shared, backbone, heads)).total_macs
        4320
        >>> mtgraph.cost(separate, mtgraph.ParamStore.create(separate, backbone, heads)).total_macs  # the conv runs twice
        8208
    """
    compiled = compile_graph(graph, params)
    submodules = iter(_node_modules(compiled))
    x = params.backbone.example_input(1)
    values: list[torch.Tensor] = []
    node_modules: list[nn.Module | None] = []
    macs: list[int] = []
    with evaluation_mode(compiled):
        for node in graph.nodes:
            module: nn.Module | None = None
            if isinstance(node, Input):
                out = x
            elif isinstance(node, Skip) and not params.backbone.blocks[node.block].shortcut.has_weights:
                out = values[node.src]
            else:
                called = next(submodules)
                if called is None:
                    raise CompileError(f"node %{len(values)} has no compiled module to measure")
                inputs = [values[s] for s in node.srcs]
                macs_here = count_macs(called, *inputs)
                out = called(*inputs)
                macs.append(macs_here)
                node_modules.append(called)
                values.append(out)
                continue
            macs.append(0)
            node_modules.append(module)
            values.append(out)
    served = graph.served
    order = {t: k for k, t in enumerate(graph.tasks)}
    nodes = tuple(
        NodeCost(
            node=i,
            text=format_node(n, i),
            tasks=tuple(sorted(served[i], key=order.__getitem__)),
            macs=macs[i],
            params=_count([node_modules[i]]),
            shape=tuple(values[i].shape[1:]) if isinstance(values[i], torch.Tensor) else (),
        )
        for i, n in enumerate(graph.nodes)
    )
    shared_ids = [i for i, s in enumerate(served) if len(s) > 1]
    specific_ids = [i for i, s in enumerate(served) if len(s) == 1]
    shared_tensors = unique_parameters(_present(node_modules[i] for i in shared_ids))
    specific_all = unique_parameters(_present(node_modules[i] for i in specific_ids))
    specific_tensors = {k: p for k, p in specific_all.items() if k not in shared_tensors}
    tasks: dict[str, TaskCost] = {}
    for task in graph.tasks:
        path = graph.path(task)
        tasks[task] = TaskCost(
            macs=sum(macs[i] for i in path),
            params=_count(node_modules[i] for i in path),
            shared_macs=sum(macs[i] for i in path if len(served[i]) > 1),
            specific_macs=sum(macs[i] for i in path if len(served[i]) == 1),
        )
    return CostReport(
        total_macs=sum(macs),
        total_params=_count(node_modules),
        shared_macs=sum(macs[i] for i in shared_ids),
        specific_macs=sum(macs[i] for i in specific_ids),
        shared_params=sum(p.numel() for p in shared_tensors.values()),
        specific_params=sum(p.numel() for p in specific_tensors.values()),
        nodes=nodes,
        tasks=tasks,
    )

"""A branching tree as an architecture, built by ``fuse`` passes on the single-task networks.

The tree's per-block groups become one ``fuse`` per block and group of two
or more tasks, in block order, applied to the STN graph
(:func:`fuse_pipeline`); so the pipeline string recorded in the result is
what built the graph, and :func:`~mtgraph.strategies.replay` rebuilds it.

Initialisation. papers/001 does not say how its branched networks start
(notes/methods-001-002.md §A.5.9). With fresh weights every copy of a block
is the traced block, so any fuse gives the same weights as a fresh network.
Starting from trained single-task networks (``AffinityConfig(init="stn")``),
the fused block of a group either copies the STN block of the group's first
task in task order (``shared_init="first"``, ``fuse{...,init=copy,
source_task=...}``; the notes' recommendation: along a path the first task of
a group is also the first of the child group that contains it, so one task's
encoder is carried down the branch unchanged) or averages the members' blocks
(``"average"``, BatchNorm statistics included; independently trained networks
are not aligned, so this mixes unrelated filters). Each head starts from its
task's STN head. The trained STN weights are copied first: the caller's
networks are never changed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from mtgraph.errors import ConfigError
from mtgraph.ir.builders import stn
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import head_weights
from mtgraph.params import ParamStore
from mtgraph.passes import FusePass, format_pipeline, run_passes
from mtgraph.problem import Problem
from mtgraph.strategies.affinity.locations import partition_of
from mtgraph.strategies.protocol import replay

__all__ = ["fuse_pipeline", "build_tree", "check_stn_params"]


def fuse_pipeline(groups: Sequence[Sequence[Sequence[str]]], tasks: Sequence[str], *, shared_init: str = "first") -> str:
    """The ``fuse`` pipeline that turns the single-task networks into the tree of per-block ``groups``.

    One ``fuse`` per block and group of two or more tasks, in block order (a
    group's tasks share the earlier blocks by then, as ``fuse`` requires).
    ``shared_init="first"`` fuses with ``init=copy`` of the group's first task
    (in ``tasks`` order), ``"average"`` with ``init=average``.

    Args:
        groups: one partition of the tasks per block, each refining the one before.
        tasks: the task order.
        shared_init: ``"first"`` or ``"average"``.

    Returns:
        The pipeline text, ``""`` for the single-task networks.

    Raises:
        ConfigError: an unknown ``shared_init``.

    Examples:
        >>> from mtgraph.strategies.affinity import fuse_pipeline
        >>> fuse_pipeline([[["a", "b", "c"]], [["a", "b"], ["c"]], [["a"], ["b"], ["c"]]], ["a", "b", "c"])
        'fuse{tasks=a+b+c,block=0,init=copy,source_task=a},fuse{tasks=a+b,block=1,init=copy,source_task=a}'
        >>> fuse_pipeline([[["b", "a"]]], ["a", "b"], shared_init="average")
        'fuse{tasks=a+b,block=0,init=average}'
    """
    if shared_init not in ("first", "average"):
        raise ConfigError(f"shared_init must be 'first' or 'average', got {shared_init!r}")
    names = tuple(tasks)
    passes = []
    for b, raw in enumerate(groups):
        for group in partition_of(raw, names):
            if len(group) < 2:
                continue
            if shared_init == "first":
                passes.append(FusePass(group, block=b, init="copy", source_task=group[0]))
            else:
                passes.append(FusePass(group, block=b, init="average"))
    return format_pipeline(passes) if passes else ""


def check_stn_params(stn_params: Any, problem: Problem) -> ParamStore:
    """``stn_params`` if they are weights of the problem's single-task networks; ConfigError naming what is missing.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.affinity import check_stn_params
        >>> problem = mtgraph.toy_problem()
        >>> one_net = mtgraph.one_net(2, problem.task_names)
        >>> check_stn_params(mtgraph.ParamStore.create(one_net, problem.backbone, problem.heads), problem)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: stn_params lack the keys ['b0.seg', 'b0.depth', 'b1.seg', 'b1.depth'] ...
    """
    backbone, names = problem.backbone, problem.task_names
    if not isinstance(stn_params, ParamStore):
        raise ConfigError(f"stn_params must be the ParamStore of the STN graph, got {type(stn_params).__name__}")
    if stn_params.backbone.num_blocks != backbone.num_blocks:
        raise ConfigError(
            f"stn_params were made for a backbone of {stn_params.backbone.num_blocks} blocks; this one has "
            f"{backbone.num_blocks}"
        )
    graph = stn(backbone.num_blocks, names)
    missing = [k for k in (*graph.weight_keys(), *(head_weights(t) for t in names)) if k not in stn_params]
    if missing:
        raise ConfigError(
            f"stn_params lack the keys {missing[:6]}{' ...' if len(missing) > 6 else ''} of the STN graph "
            f"mtgraph.stn({backbone.num_blocks}, {list(names)})"
        )
    return stn_params


def build_tree(
    problem: Problem,
    groups: Sequence[Sequence[Sequence[str]]],
    *,
    stn_params: ParamStore | None = None,
    shared_init: str = "first",
) -> tuple[MTGraph, ParamStore, str]:
    """The branched network of per-block ``groups``: :func:`fuse_pipeline` run on the single-task networks.

    Args:
        problem: gives the backbone, heads and tasks.
        groups: one partition of the tasks per block, each refining the one before.
        stn_params: trained weights of ``mtgraph.stn(num_blocks, tasks)`` to
            start from (copied, never changed), or None for fresh weights.
        shared_init: ``"first"`` or ``"average"`` (see the module docstring).

    Returns:
        The graph, its weights and the pipeline that built them from ``"stn"``.

    Raises:
        ConfigError: ``stn_params`` that do not fit, or an unknown ``shared_init``.
        PassError: ``groups`` that are not a tree (tasks that split apart and meet again).

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.affinity import build_tree
        >>> problem = mtgraph.toy_problem(("seg", "depth", "edges"), blocks=3)
        >>> groups = [[["seg", "depth", "edges"]], [["seg", "edges"], ["depth"]], [["seg", "edges"], ["depth"]]]
        >>> graph, params, pipeline = build_tree(problem, groups)
        >>> print(mtgraph.print_graph(graph), end="")
        %0 = input                                  # seg depth edges
        %1 = block 0 w=b0.shared (%0)               # seg depth edges
        %2 = block 1 w=b1.seg+edges (%1)            # seg edges
        %3 = block 1 w=b1.depth (%1)                # depth
        %4 = block 2 w=b2.seg+edges (%2)            # seg edges
        %5 = block 2 w=b2.depth (%3)                # depth
        seg = head (%4)
        depth = head (%5)
        edges = head (%4)
        >>> mtgraph.strategies.replay(problem, "stn", pipeline)[0] == graph
        True
    """
    pipeline = fuse_pipeline(groups, problem.task_names, shared_init=shared_init)
    if stn_params is None:
        graph, params = replay(problem, "stn", pipeline)
        return graph, params, pipeline
    check_stn_params(stn_params, problem)
    graph = stn(problem.backbone.num_blocks, problem.task_names)
    keys = [*graph.weight_keys(), *(head_weights(t) for t in problem.task_names)]
    # One deepcopy of all modules keeps weights tied across blocks tied, and leaves the caller's networks alone.
    params = ParamStore(problem.backbone, copy.deepcopy({k: stn_params[k] for k in keys}))
    if pipeline:
        result = run_passes(graph, params, pipeline)
        graph, params = result.graph, result.params
    return graph, params, pipeline

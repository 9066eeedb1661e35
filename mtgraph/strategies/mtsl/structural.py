"""One structural-learning phase of MTSL: measure, group, create group nodes, amalgamate, remove task nodes.

papers/000 §3.3-3.4 and Algorithm 1's structural half, on the IR:

1. **Measure.** Every task node that has a sibling runs on a fixed subset of
   training images (appendix F: "CKA similarities for grouping decisions
   ... are calculated using a subset of 800 training images"), in eval mode,
   through :func:`~mtgraph.strategies.mtsl.alignment.run_prefix` (only the
   network up to the task nodes). Features are mean-pooled over space per
   batch, and the unbiased linear CKA is taken over the whole subset.
2. **Group.** Per sibling set, :func:`group_task_nodes` (Algorithm 2, γ,
   rule) picks the grouping. The unbiased CKA estimate can fall slightly
   below 0 (or above 1 by rounding) for unrelated (identical) features;
   the matrix handed to the grouping is clipped to [0, 1], the range of the
   quantity it estimates, so that "γ = 0 fuses every group" holds under
   ``rule="code"``. The raw matrix is what the log and the figures show.
3. **Create + remove.** Each fused group becomes one group node through the
   ``fuse`` pass (``init="average"``, or ``"copy"`` of the first task's node
   for the no-averaging ablation). ``fuse`` rewires the tasks' branches to
   the group node and drops the task nodes' weights: neuron creation and
   removal are one rewrite of the IR. The optimizer state follows the pass's
   lineage (averaged Adam moments), applied by ``fit`` when it takes the
   rewrite.
4. **Amalgamate.** Before the rewrite is handed back, each group node is
   trained by ATT against the removed task nodes, which still live in the
   old ParamStore (stores are values: the pass returned a new one).

Task nodes that were not fused stay task nodes of their source and are
offered again in the next phase (see :mod:`.alignment`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from mtgraph.analysis.macs import evaluation_mode
from mtgraph.analysis.similarity import cka_matrix
from mtgraph.frontend import primary
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block
from mtgraph.params import ParamStore
from mtgraph.passes import FusePass, Lineage, run_passes
from mtgraph.strategies.mtsl.alignment import SiblingSet, block_weights, run_prefix, sibling_sets, task_nodes
from mtgraph.strategies.mtsl.amalgamation import AmalgamationJob, amalgamate
from mtgraph.strategies.mtsl.config import MTSLConfig
from mtgraph.strategies.mtsl.grouping import GroupingResult, group_task_nodes
from mtgraph.strategies.result import Decision

__all__ = ["StructuralOutcome", "measure_task_nodes", "structural_step"]


@dataclass(frozen=True)
class StructuralOutcome:
    """What one structural phase decided and produced.

    Attributes:
        graph / params: the architecture after the phase (unchanged if nothing fused).
        lineage: the weights' lineage (new group node keys and their sources).
        passes: the ``fuse`` passes applied, in order.
        decisions: one :class:`Decision` per group of every chosen grouping.
        similarity: name -> (task labels, raw CKA matrix) per sibling set.
        att_losses: the amalgamation loss per step (empty without ATT).
        stop: True when no two task nodes share a source (Algorithm 1's
            "no more layer in all task branches"): nothing can ever fuse again.

    Examples:
        A One-Net has no task nodes left to fuse, so a phase on it stops at once:

        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import TensorDataset
        >>> import mtgraph
        >>> from mtgraph.strategies.mtsl import MTSLConfig, structural_step
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.randn(2, 3, 8, 8))
        >>> graph = mtgraph.one_net(backbone.num_blocks, ("a", "b"))
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"a": nn.Conv2d(4, 1, 1), "b": nn.Conv2d(4, 1, 1)})
        >>> images = TensorDataset(torch.randn(4, 3, 8, 8))
        >>> outcome = structural_step(0, graph, params, config=MTSLConfig(), subset=images, train_data=images,
        ...                           att_steps=1, seed=0)
        >>> outcome.stop, outcome.graph is graph, outcome.passes, outcome.decisions
        (True, True, (), ())
    """

    graph: MTGraph
    params: ParamStore
    lineage: Lineage = field(default_factory=Lineage)
    passes: tuple[FusePass, ...] = ()
    decisions: tuple[Decision, ...] = ()
    similarity: dict[str, tuple[tuple[str, ...], list[list[float]]]] = field(default_factory=dict)
    att_losses: tuple[float, ...] = ()
    stop: bool = False


def measure_task_nodes(
    graph: MTGraph,
    params: ParamStore,
    node_ids: Sequence[int],
    data: Dataset,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> dict[int, torch.Tensor]:
    """Spatially mean-pooled outputs ``[N, C]`` (float64) of ``node_ids`` over every image of ``data``.

    Runs in eval mode without gradients and restores every module's mode.

    Args:
        graph: an MTSL graph (Input, Block and Head nodes).
        params: its weights.
        node_ids: the nodes to measure.
        data: map-style dataset whose items start with an image.
        batch_size: images per forward pass.
        device: where to run.

    Returns:
        Node id -> ``[len(data), C]`` float64 features.

    Raises:
        ConfigError: a node the targets depend on is not an Input, Block or Head.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import TensorDataset
        >>> import mtgraph
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.randn(2, 3, 8, 8))
        >>> graph = mtgraph.stn(backbone.num_blocks, ("a", "b"))  # both task nodes start as copies of one block
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"a": nn.Conv2d(4, 1, 1), "b": nn.Conv2d(4, 1, 1)})
        >>> images = TensorDataset(torch.randn(8, 3, 8, 8))
        >>> from mtgraph.strategies.mtsl import measure_task_nodes
        >>> features = measure_task_nodes(graph, params, [1, 2], images, batch_size=4)
        >>> features[1].shape, features[1].dtype, torch.equal(features[1], features[2])
        (torch.Size([8, 4]), torch.float64, True)
    """
    # An own generator: making the iterator must not draw from the global RNG (training's stream).
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, generator=torch.Generator().manual_seed(0))
    pooled: dict[int, list[torch.Tensor]] = {i: [] for i in node_ids}
    modules = [module for _, module in params.items()]
    with evaluation_mode(*modules):
        for batch in loader:
            images = batch[0].to(device)
            outputs = run_prefix(graph, params, images, list(node_ids))
            for i, value in outputs.items():
                out = primary(value)  # a multi-tensor value: the block's own feature map, not the skips
                reduced = out.mean(dim=tuple(range(2, out.ndim))) if out.ndim > 2 else out
                pooled[i].append(reduced.double().cpu())
    return {i: torch.cat(chunks) for i, chunks in pooled.items()}


def _parent_label(graph: MTGraph, s: SiblingSet) -> str:
    served = [t for t in graph.tasks if t in graph.served[s.source]]
    return "input" if s.source == 0 else "+".join(served)


def _decisions(
    phase: int, s: SiblingSet, where: str, raw: torch.Tensor, result: GroupingResult,
    refused: Mapping[tuple[str, ...], str],
) -> list[Decision]:
    """One decision per group of the chosen grouping; a group the ``fuse`` pass refused is declined with its reason."""
    out = []
    matrix = [[float(v) for v in row] for row in raw.tolist()]
    partition = [list(g) for g in result.partition]
    for d in result.decisions:
        label = "+".join(d.tasks)
        what = f"fuse {label}" if d.fused else (f"{label} stays alone" if len(d.tasks) == 1 else f"keep {label} apart")
        data: dict[str, Any] = {
            "phase": phase,
            "block": s.block,
            "source": s.source,
            "tasks": list(s.tasks),
            "cka": matrix,
            "partition": partition,
            "grouping_score": result.score,
            "group": list(d.tasks),
            "value": d.value,
            "task_values": list(d.task_values),
            "gamma": result.gamma,
            "rule": result.rule,
        }
        refusal = refused.get(d.tasks)
        if refusal is not None:
            data["refusal"] = refusal
            out.append(Decision(where=where, what=what, accepted=False, reason=f"{d.reason}; fuse refused: {refusal}",
                                data=data))
            continue
        out.append(Decision(where=where, what=what, accepted=d.fused, reason=d.reason, data=data))
    return out


def _fuse_pass(group: tuple[str, ...], block: int, config: MTSLConfig) -> FusePass:
    if config.average:
        return FusePass(tasks=group, block=block, init="average")
    return FusePass(tasks=group, block=block, init="copy", source_task=group[0])


def _refusal(fuse: FusePass, graph: MTGraph, params: ParamStore) -> str | None:
    """Why ``fuse`` cannot apply to ``graph`` (None: it can). THE ONE PLACE where pass refusals enter MTSL.

    Until passes have ``check(graph, params) -> Refusal | None`` (issue #18,
    item 4) this returns None: the groups come from sibling sets, which
    ``fuse`` accepts by construction, and a refusal would still surface as
    the PassError of ``run_passes``. With ``check()``, return its reason
    here; :func:`structural_step` then logs the group as a declined decision
    with that reason instead of fusing it.
    """
    del fuse, graph, params
    return None


def _group_node_key(graph: MTGraph, block: int, group: tuple[str, ...]) -> str:
    """The weight key of the Block at ``block`` serving exactly ``group`` (the new group node)."""
    for i, node in enumerate(graph.nodes):
        if isinstance(node, Block) and node.block == block and graph.served[i] == frozenset(group):
            return node.weights
    raise LookupError(f"no group node for {group} at block {block}")  # fuse guarantees one


def structural_step(
    phase: int,
    graph: MTGraph,
    params: ParamStore,
    *,
    config: MTSLConfig,
    subset: Dataset,
    train_data: Dataset,
    att_steps: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> StructuralOutcome:
    """Run structural phase ``phase`` on ``graph``; see the module docstring for the steps.

    Args:
        phase: 0-based phase index (for logs and the ATT seed).
        graph / params: the current architecture and weights.
        config: γ, rule, averaging and ATT switches, ATT hyperparameters.
        subset: the fixed images on which grouping CKA is measured.
        train_data: images for ATT.
        att_steps: optimizer steps of ATT (E_s in steps; 0 skips it).
        seed: base seed of ATT (shuffling, attention networks).
        device: where the measurement and ATT run.

    Returns:
        The :class:`StructuralOutcome`; ``stop`` is True when no task nodes are siblings any more.

    Raises:
        ConfigError: more than :data:`~mtgraph.strategies.mtsl.grouping.MAX_TASK_NODES` siblings.
        PassError: a ``fuse`` pass refused the rewrite.
        TrainError: the amalgamation loss became NaN or infinite.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import TensorDataset
        >>> import mtgraph
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.randn(2, 3, 8, 8))
        >>> graph = mtgraph.stn(backbone.num_blocks, ("a", "b"))  # both task nodes start as copies of one block
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"a": nn.Conv2d(4, 1, 1), "b": nn.Conv2d(4, 1, 1)})
        >>> images = TensorDataset(torch.randn(8, 3, 8, 8))
        >>> from mtgraph.strategies.mtsl import MTSLConfig, structural_step
        >>> outcome = structural_step(0, graph, params, config=MTSLConfig(batch_size=4), subset=images,
        ...                           train_data=images, att_steps=2, seed=0)
        >>> [d.what for d in outcome.decisions], outcome.passes[0].init, len(outcome.att_losses)
        (['fuse a+b'], 'average', 2)
        >>> print(mtgraph.print_graph(outcome.graph).splitlines()[1])
        %1 = block 0 w=b0.shared (%0)               # a b
    """
    sets = sibling_sets(graph)
    if not sets:
        return StructuralOutcome(graph, params, stop=True)
    ids = [i for s in sets for i in s.nodes]
    features = measure_task_nodes(graph, params, ids, subset, batch_size=config.eval_batch_size, device=device)
    decisions: list[Decision] = []
    similarity: dict[str, tuple[tuple[str, ...], list[list[float]]]] = {}
    passes: list[FusePass] = []
    fused_sets: list[tuple[SiblingSet, tuple[str, ...]]] = []
    for s in sets:
        names, raw = cka_matrix({t: features[i] for t, i in zip(s.tasks, s.nodes)})
        result = group_task_nodes(names, raw.clamp(0.0, 1.0), gamma=config.gamma, rule=config.grouping_rule)
        where = f"phase {phase}: block {s.block} after {_parent_label(graph, s)}"
        similarity[f"phase {phase} block {s.block} after {_parent_label(graph, s)}"] = (
            names,
            [[float(v) for v in row] for row in raw.tolist()],
        )
        refused: dict[tuple[str, ...], str] = {}
        for group in result.fused_groups:
            fuse = _fuse_pass(group, s.block, config)
            # Sibling sets are disjoint, so each fuse is checked against the graph of this phase.
            reason = _refusal(fuse, graph, params)
            if reason is not None:
                refused[group] = reason
                continue
            passes.append(fuse)
            fused_sets.append((s, group))
        decisions += _decisions(phase, s, where, raw, result, refused)
    if not passes:
        return StructuralOutcome(graph, params, decisions=tuple(decisions), similarity=similarity)
    rewritten = run_passes(graph, params, passes)
    losses: list[float] = []
    if config.att and att_steps > 0:
        nodes_of = task_nodes(graph)
        prefix = tuple(module for _, module in params.items())
        jobs = []
        for s, group in fused_sets:
            source = s.source

            def run_source(images: torch.Tensor, source: int = source) -> torch.Tensor:
                return run_prefix(graph, params, images, [source])[source]

            key = _group_node_key(rewritten.graph, s.block, group)
            teachers = tuple(params[block_weights(graph, nodes_of[t])] for t in group)
            jobs.append(AmalgamationJob(key, run_source, teachers, rewritten.params[key], prefix))
        losses = amalgamate(
            jobs,
            train_data,
            steps=att_steps,
            batch_size=config.batch_size,
            lr=config.att_lr if config.att_lr is not None else config.lr,
            weight_decay=config.weight_decay,
            reduction=config.att_reduction,
            seed=seed * 1000 + phase,
            device=device,
        )
    return StructuralOutcome(
        graph=rewritten.graph,
        params=rewritten.params,
        lineage=rewritten.lineage,
        passes=tuple(passes),
        decisions=tuple(decisions),
        similarity=similarity,
        att_losses=tuple(losses),
    )

"""The MTSL driver: :func:`run_mtsl` (papers/000 Algorithm 1 on mtgraph's IR and training loop).

:class:`~mtgraph.strategies.mtsl.MTSLStrategy` (``registry()["mtsl"]``)
calls it with a validated :class:`~mtgraph.Problem`.

One call of :func:`mtgraph.train.fit` runs the whole schedule, so the
optimizer (Adam) and the step learning-rate schedule continue across phases
and across every rewrite:

* **task learning** (``E_t`` of each phase): the multi-task loss plus, when
  ``align`` is on, the CKA alignment of sibling task nodes (eq. 1; under the
  paper's balance the sum of the task losses plus ``λ Σ_sets (1 − mean
  CKA)``), computed by a :class:`~mtgraph.train.Hook` from forward hooks on
  the task nodes' modules (see :mod:`.alignment`);
* **structural learning** at the end of each task-learning phase, from the
  same hook's ``on_epoch_end``: :func:`~.structural.structural_step` measures
  CKA on a fixed training subset, groups (Algorithm 2), fuses, trains the
  new group nodes by ATT for ``E_s`` and hands ``fit`` a
  :class:`~mtgraph.train.Rewrite`, which recompiles and carries the Adam
  state along the fuse pass's lineage (averaged moments for a group node);
* **fine-tuning** for the rest of the budget without alignment. When no two
  task nodes share a source any more, Algorithm 1 exits its loop: the
  remaining task-learning steps become fine-tuning.

``fit``'s "epoch" is set to the greatest common divisor of the phase lengths
(in optimizer steps), so that every phase boundary is an epoch end, where
hooks may rewrite. Fractional epochs of small runs are rounded to whole
steps (:func:`~.schedule.epochs_to_steps`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from mtgraph.errors import ConfigError
from mtgraph.ir import MTGraph, print_graph, stn
from mtgraph.ir.nodes import Block, head_weights
from mtgraph.params import ParamStore
from mtgraph.passes import FusePass, format_pipeline, parse_pipeline
from mtgraph.problem import Problem
from mtgraph.strategies.mtsl.alignment import FeatureTap, alignment_loss, alignment_sets, block_weights, task_nodes
from mtgraph.strategies.mtsl.config import MTSLConfig
from mtgraph.strategies.mtsl.schedule import Schedule, build_schedule, epochs_to_steps
from mtgraph.strategies.mtsl.structural import structural_step
from mtgraph.strategies.result import Decision, Figure, Heatmap, StrategyResult, Table
from mtgraph.train import Hook, OptimizerGroup, Rewrite, TrainState, adam, evaluate, fit

__all__ = ["MTSLHook", "run_mtsl", "tree_rows"]


class MTSLHook(Hook):
    """Alignment loss during task learning and a structural step at each phase boundary.

    Args:
        config: the run's options.
        boundaries: optimizer step at which each phase's task learning ends.
        att_steps: ATT steps of each phase.
        subset: the fixed images of the grouping measurement.
        train_data: images for ATT.
        seed: the run's seed.

    After ``fit`` returns, ``decisions``, ``similarity``, ``passes``,
    ``att_losses`` and ``phase_log`` hold what happened.

    Raises:
        ConfigError: the boundaries are not strictly increasing, or not one per phase.

    Examples:
        :func:`run_mtsl` builds and runs this hook; on its own:

        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from mtgraph.strategies.mtsl import MTSLConfig, MTSLHook
        >>> images = TensorDataset(torch.randn(4, 3, 8, 8))
        >>> hook = MTSLHook(config=MTSLConfig(), boundaries=[2, 4], att_steps=[1, 1], subset=images,
        ...                 train_data=images, seed=0)
        >>> hook.name, hook.aligning, hook.decisions
        ('cka_alignment', True, [])
        >>> MTSLHook(config=MTSLConfig(), boundaries=[4, 2], att_steps=[1, 1], subset=images,
        ...          train_data=images, seed=0)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: phase boundaries must be strictly increasing, one per phase, got [4, 2]
    """

    def __init__(
        self,
        *,
        config: MTSLConfig,
        boundaries: Sequence[int],
        att_steps: Sequence[int],
        subset: Dataset,
        train_data: Dataset,
        seed: int,
    ) -> None:
        if len(boundaries) != len(att_steps) or list(boundaries) != sorted(set(boundaries)):
            raise ConfigError(f"phase boundaries must be strictly increasing, one per phase, got {list(boundaries)}")
        self.config = config
        self.boundaries = tuple(boundaries)
        self.att_steps = tuple(att_steps)
        self.subset = subset
        self.train_data = train_data
        self.seed = seed
        self.phase = 0
        self.finetuning = False
        self.decisions: list[Decision] = []
        self.similarity: dict[str, tuple[tuple[str, ...], list[list[float]]]] = {}
        self.passes: list[FusePass] = []
        self.att_losses: dict[int, list[float]] = {}
        self.phase_log: list[dict[str, Any]] = []
        self._tap: FeatureTap | None = None
        self._tapped: ParamStore | None = None
        self._sets: tuple[tuple[str, ...], ...] = ()

    @property
    def name(self) -> str:
        """Label of the alignment term in the training history."""
        return "cka_alignment"

    @property
    def aligning(self) -> bool:
        """True while the alignment term is part of the loss (task learning with align on)."""
        return self.config.align and self.config.align_weight > 0 and not self.finetuning

    def _untap(self) -> None:
        if self._tap is not None:
            self._tap.close()
        self._tap, self._tapped, self._sets = None, None, ()

    def _retap(self, state: TrainState) -> None:
        """Hook the current task nodes (after a rewrite the store, and so the modules, changed)."""
        if self._tapped is state.params:
            return
        self._untap()
        graph = state.graph
        sets = alignment_sets(graph)
        nodes = task_nodes(graph)
        keys = {t: block_weights(graph, nodes[t]) for tasks in sets for t in tasks}
        self._tap = FeatureTap(state.params, keys) if keys else None
        self._tapped, self._sets = state.params, sets

    def on_step_start(self, state: TrainState) -> None:
        """Make sure the current task nodes are hooked."""
        if self.aligning:
            self._retap(state)

    def extra_loss(self, state: TrainState, outputs: Mapping[str, torch.Tensor], batch: Any) -> torch.Tensor | None:
        """The alignment term of eq. 1 over the sibling sets on this batch (None when not aligning).

        ``λ Σ_sets (1 − mean CKA)`` under the paper's balance, ``λ Σ_pairs (1 − CKA)``
        under ``"mean_sum"`` (see :func:`~mtgraph.strategies.mtsl.alignment_loss`).
        """
        if not self.aligning or not self._sets or self._tap is None:
            return None
        return alignment_loss(self._tap.features, self._sets, self.config.align_weight, balance=self.config.loss_balance)

    def on_step_end(self, state: TrainState) -> None:
        """Drop the captured features (they hold the step's autograd graph)."""
        if self._tap is not None:
            self._tap.clear()

    def on_epoch_end(self, state: TrainState) -> Rewrite | None:
        """At a phase boundary: run the structural phase and return its rewrite."""
        if self.finetuning or self.phase >= len(self.boundaries) or state.step < self.boundaries[self.phase]:
            return None
        phase = self.phase
        outcome = structural_step(
            phase,
            state.graph,
            state.params,
            config=self.config,
            subset=self.subset,
            train_data=self.train_data,
            att_steps=self.att_steps[phase],
            seed=self.seed,
            device=state.ctx.device,
        )
        self.phase += 1
        self.decisions.extend(outcome.decisions)
        self.similarity.update(outcome.similarity)
        self.passes.extend(outcome.passes)
        if outcome.att_losses:
            self.att_losses[phase] = list(outcome.att_losses)
        fused = ["+".join(p.tasks) + f"@b{p.block}" for p in outcome.passes]
        self.phase_log.append({"phase": phase, "step": state.step, "fused": fused, "graph": print_graph(outcome.graph)})
        if outcome.stop:
            remaining = self.boundaries[-1] - state.step
            self.decisions.append(
                Decision(
                    where=f"phase {phase}",
                    what="stop structural learning",
                    accepted=True,
                    reason=(
                        "no two task nodes share a source, so nothing can be fused any more (Algorithm 1: no layer "
                        f"left in the task branches); the remaining {remaining} task-learning steps become fine-tuning"
                    ),
                    data={"phase": phase, "step": state.step},
                )
            )
        if outcome.stop or self.phase == len(self.boundaries):
            self.finetuning = True
            self._untap()
        if not outcome.passes:
            return None
        return Rewrite(
            outcome.graph, outcome.params, outcome.lineage, note=f"mtsl phase {phase}: fuse {', '.join(fused)}"
        )

    def on_fit_end(self, state: TrainState) -> None:
        """Remove the forward hooks."""
        self._untap()

    def state_dict(self) -> dict[str, Any]:
        """Where the schedule is and what it decided, so a checkpoint taken mid-run resumes exactly.

        The forward hooks are not state: they are re-attached on the next step.
        """
        return {
            "phase": self.phase,
            "finetuning": self.finetuning,
            "decisions": [_jsonable(dataclasses.asdict(d)) for d in self.decisions],
            "similarity": {k: {"labels": list(labels), "matrix": _jsonable(m)} for k, (labels, m) in self.similarity.items()},
            "passes": format_pipeline(self.passes) if self.passes else "",
            "att_losses": {str(k): [float(v) for v in values] for k, values in self.att_losses.items()},
            "phase_log": _jsonable(self.phase_log),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.phase = int(state["phase"])
        self.finetuning = bool(state["finetuning"])
        self.decisions = [Decision(**d) for d in state["decisions"]]
        self.similarity = {k: (tuple(v["labels"]), [list(row) for row in v["matrix"]]) for k, v in state["similarity"].items()}
        passes = parse_pipeline(state["passes"]) if state["passes"] else []
        self.passes = [p for p in passes if isinstance(p, FusePass)]
        self.att_losses = {int(k): list(v) for k, v in state["att_losses"].items()}
        self.phase_log = [dict(entry) for entry in state["phase_log"]]
        self._untap()


def _jsonable(value: Any) -> Any:
    """``value`` with tuples as lists and numpy/torch scalars as Python numbers (checkpoint state is JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# --------------------------------------------------------------------------- inputs


def _initial(initial: ParamStore | None, graph: MTGraph, problem: Problem) -> ParamStore:
    if initial is None:
        return ParamStore.create(graph, problem.backbone, problem.heads)
    if not isinstance(initial, ParamStore):
        raise ConfigError(f"initial must be a ParamStore of single-task networks, got {type(initial).__name__}")
    needed = list(graph.weight_keys()) + [head_weights(t) for t in graph.tasks]
    missing = [k for k in needed if k not in initial]
    if missing:
        raise ConfigError(
            f"initial must hold the single-task networks' weights {needed} (see mtgraph.stn); missing {missing}"
        )
    if initial.backbone.num_blocks != problem.backbone.num_blocks:
        raise ConfigError(
            f"initial was made for a backbone of {initial.backbone.num_blocks} blocks, "
            f"this one has {problem.backbone.num_blocks}"
        )
    return initial.restricted(graph)


def _subset(data: Dataset, size: int, seed: int) -> Subset:
    """The fixed grouping subset: ``size`` images drawn once from ``seed`` (sorted indices)."""
    n = len(data)  # type: ignore[arg-type]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(size, n)]
    return Subset(data, sorted(order.tolist()))


def _main_group(config: MTSLConfig, total_steps: int, epoch_steps: int) -> OptimizerGroup:
    milestones = sorted({max(1, round(m * total_steps)) for m in config.lr_milestones})

    def scheduler(optimizer: torch.optim.Optimizer) -> Any:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=config.lr_decay)

    return OptimizerGroup(
        "main", None, adam(lr=config.lr, weight_decay=config.weight_decay), scheduler, steps=epoch_steps
    )


def tree_rows(graph: MTGraph) -> list[dict[str, Any]]:
    """The converged tree as rows ``{"block": b, "groups": [[tasks], ...]}`` (tasks sharing block b's node).

    Args:
        graph: the graph.

    Returns:
        One row per backbone block, in order; ``"text"`` is the row as one line (``a+b | c``).

    Examples:
        >>> from mtgraph.ir import from_groups
        >>> from mtgraph.strategies.mtsl import tree_rows
        >>> graph = from_groups(2, ["a", "b", "c"], [[["a", "b"], ["c"]], [["a"], ["b"], ["c"]]])
        >>> [row["text"] for row in tree_rows(graph)]
        ['a+b | c', 'a | b | c']
        >>> tree_rows(graph)[0]["groups"]
        [['a', 'b'], ['c']]
    """
    rows = []
    blocks = sorted({n.block for n in graph.nodes if isinstance(n, Block)})
    for b in blocks:
        groups = []
        for i, node in enumerate(graph.nodes):
            if isinstance(node, Block) and node.block == b:
                groups.append([t for t in graph.tasks if t in graph.served[i]])
        rows.append({"block": b, "groups": groups, "text": " | ".join("+".join(g) for g in groups)})
    return rows


def _figures(similarity: Mapping[str, tuple[tuple[str, ...], list[list[float]]]], graph: MTGraph) -> dict[str, Figure]:
    """The typed figures: one CKA heatmap per phase and sibling set, and the learned tree as a table."""
    figures: dict[str, Figure] = {
        name: Heatmap.from_matrix(f"CKA of the task nodes at {name}", labels, matrix)
        for name, (labels, matrix) in similarity.items()
    }
    figures["tree"] = Table("learned tree: tasks sharing each block's node", ("block", "branches"),
                            tuple((row["block"], row["text"]) for row in tree_rows(graph)))
    return figures


# --------------------------------------------------------------------------- the run


def run_mtsl(
    problem: Problem, config: MTSLConfig, *, progress: bool = False, initial: ParamStore | None = None
) -> StrategyResult:
    """MTSL on a validated problem: the body of :meth:`MTSLStrategy.learn <mtgraph.strategies.mtsl.MTSLStrategy.learn>`.

    Starts from single-task networks (one copy of every block per task, all
    copies equal, as the paper's ImageNet-initialised STNs), alternates
    aligned task learning and structural learning block by block, then
    fine-tunes (see the module docstring and :class:`MTSLConfig`). One call
    of ``fit`` (phase ``"mtsl"``) runs the schedule; MTSL-R retrains in a
    second (phase ``"mtsl-r"``).

    Args:
        problem: backbone, heads, tasks (2..10), data, device and seed.
        config: the options.
        progress: show a progress bar.
        initial: optional weights of the initial single-task networks (keys
            of ``mtgraph.stn(num_blocks, tasks)``), e.g. pretrained STNs.

    Returns:
        The :class:`StrategyResult`; see :meth:`MTSLStrategy.learn <mtgraph.strategies.mtsl.MTSLStrategy.learn>`.

    Raises:
        ConfigError: fewer than 2 or more than 10 tasks, a schedule with more
            phases than the backbone has blocks, an ``initial`` store without
            the single-task networks' weights.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.mtsl import MTSLConfig
        >>> from mtgraph.strategies.mtsl.strategy import run_mtsl
        >>> problem = mtgraph.toy_problem(("seg", "depth"), blocks=2)
        >>> config = MTSLConfig(task_epochs=(1,), att_epochs=(1,), total_epochs=2, phases=1, batch_size=4,
        ...                     grouping_images=4, eval_batch_size=4)
        >>> run_mtsl(problem, config).start
        'stn'
    """
    names = problem.task_names
    MTSLConfig.check_tasks(names)
    data = problem.train_dataset
    device = torch.device(config.device) if config.device is not None else problem.device
    schedule = build_schedule(
        task_epochs=config.task_epochs,
        att_epochs=config.att_epochs,
        total_epochs=config.total_epochs,
        min_finetune_epochs=config.min_finetune_epochs,
        phases=config.phases,
        num_blocks=problem.backbone.num_blocks,
    )
    graph = stn(problem.backbone.num_blocks, names)
    params = _initial(initial, graph, problem)
    loss_weights = config.task_loss_weights(names)

    per_epoch = math.ceil(len(data) / config.batch_size)  # type: ignore[arg-type]
    plan = _plan(schedule, per_epoch)
    hook = MTSLHook(
        config=config,
        boundaries=plan["boundaries"],
        att_steps=plan["att_steps"] if config.att else [0] * len(schedule.phases),
        subset=_subset(data, config.grouping_images, problem.seed),
        train_data=data,
        seed=problem.seed,
    )
    fitted = fit(
        graph,
        params,
        problem.tasks,
        data,
        steps=plan["total_steps"],
        batch_size=config.batch_size,
        groups=[_main_group(config, plan["total_steps"], plan["epoch_steps"])],
        hooks=[hook],
        seed=problem.seed,
        progress=progress,
        device=device,
        loss_weights=loss_weights,
        phase="mtsl",
    )
    metrics = None
    if problem.val_data is not None:
        metrics = evaluate(fitted.graph, fitted.params, problem.tasks, problem.val_data, batch_size=config.eval_batch_size)
    decisions = [Decision("schedule", "map the phase lists onto the backbone", True, schedule.description, dict(plan))]
    decisions += hook.decisions
    history: dict[str, Any] = {
        "train": fitted.history.to_state(),
        "att_losses": hook.att_losses,
        "phases": hook.phase_log,
        "schedule": {**plan, "description": schedule.description},
        "loss_weights": loss_weights,
        "metrics": dict(metrics) if metrics is not None else None,
    }
    final_params, strategy = fitted.params, "mtsl"
    if config.retrain:
        final_params, retrain_metrics, retrain_history = _retrain(
            fitted.graph, problem, config, per_epoch, progress, device
        )
        history["retrain"] = {"train": retrain_history, "metrics": retrain_metrics}
        strategy = "mtsl-r"
        decisions.append(
            Decision(
                "retrain",
                "re-initialise and retrain the converged architecture (MTSL-R)",
                True,
                f"fresh copies of the backbone blocks and heads, {round(config.total_epochs * per_epoch)} steps of L_MTL",
            )
        )
    history["tree"] = tree_rows(fitted.graph)
    history["tree_text"] = print_graph(fitted.graph)
    return StrategyResult(
        strategy=strategy,
        graph=fitted.graph,
        params=final_params,
        decisions=tuple(decisions),
        pipeline=format_pipeline(hook.passes) if hook.passes else "",
        figures=_figures(hook.similarity, fitted.graph),
        history=history,
        start="stn",
    )


def _plan(schedule: Schedule, per_epoch: int) -> dict[str, Any]:
    """The schedule in optimizer steps, and ``fit``'s epoch length (gcd of the phase lengths)."""
    task_steps = [epochs_to_steps(p.task_epochs, per_epoch) for p in schedule.phases]
    att_steps = [epochs_to_steps(p.att_epochs, per_epoch) for p in schedule.phases]
    finetune = epochs_to_steps(schedule.finetune_epochs, per_epoch)
    boundaries = [sum(task_steps[: i + 1]) for i in range(len(task_steps))]
    lengths = task_steps + ([finetune] if finetune else [])
    return {
        "batches_per_epoch": per_epoch,
        "task_steps": task_steps,
        "att_steps": att_steps,
        "finetune_steps": finetune,
        "boundaries": boundaries,
        "total_steps": boundaries[-1] + finetune,
        "epoch_steps": math.gcd(*lengths),
    }


def _retrain(
    graph: MTGraph,
    problem: Problem,
    config: MTSLConfig,
    per_epoch: int,
    progress: bool,
    device: torch.device | None,
) -> tuple[ParamStore, dict[str, Any] | None, dict[str, Any]]:
    """MTSL-R (appendix I): the converged graph with fresh weights, trained for E epochs with L_MTL."""
    fresh = ParamStore.create(graph, problem.backbone, problem.heads)
    steps = max(1, round(config.total_epochs * per_epoch))
    fitted = fit(
        graph,
        fresh,
        problem.tasks,
        problem.train_dataset,
        steps=steps,
        batch_size=config.batch_size,
        groups=[_main_group(config, steps, per_epoch)],
        seed=problem.seed,
        progress=progress,
        device=device,
        loss_weights=config.task_loss_weights(problem.task_names),
        phase="mtsl-r",
    )
    metrics = None
    if problem.val_data is not None:
        metrics = dict(
            evaluate(fitted.graph, fitted.params, problem.tasks, problem.val_data, batch_size=config.eval_batch_size)
        )
    return fitted.params, metrics, fitted.history.to_state()

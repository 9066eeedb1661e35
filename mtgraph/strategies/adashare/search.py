"""AdaShare's first stage (papers/002 §3.3, appendix A): warm-up, then the alternating policy search.

1. **Warm-up.** The One-Net (every block shared and executed) is trained on
   the whole training set for a fraction of the search's steps.
2. **Policy search.** The soft graph (:mod:`.soft_graph`) is trained by
   :func:`mtgraph.train.fit` with two optimizer groups taking turns: each
   epoch the ``weights`` group (SGD) takes its steps on a fixed 80 % split
   with policies sampled from the current distribution, then the ``policy``
   group (Adam, the gates' logits only) takes its steps on the other 20 %
   with the weights frozen, minimising ``Σ λ_k L_k + λ_sp L_sparsity +
   λ_sh L_sharing`` (eq. 4-7). The :class:`PolicySearch` hook anneals τ
   (``τ0 · decay^epoch``), adds the regularisers in the policy turn, unlocks
   the curriculum (epoch ``e`` learns the last ``e + 1`` gated blocks; an
   unlock is a :class:`~mtgraph.train.Rewrite` to a soft graph with one more
   gated level), and tracks the best policy on validation data once every
   block is unlocked.

What the search measured goes into its records, one per epoch: τ as the
schedule gives it and as the gates held it, the learnable blocks, α and the
logits, and the **gradient balance**: on the first policy step of the epoch,
the mean absolute gradient of the task loss, of ``λ_sp L_sparsity`` and of
``λ_sh L_sharing`` on the learnable execute logits. When a regulariser's
gradient outweighs the task signal the policy follows λ rather than the
tasks; the decision log says so. Gates still undecided at the end (α within
``decided_margin`` of 0.5) are reported with an :class:`UndecidedPolicyWarning`
and a decision.
"""

from __future__ import annotations

import functools
import math
import statistics
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from mtgraph.errors import ConfigError
from mtgraph.ir.builders import one_net
from mtgraph.ir.graph import MTGraph
from mtgraph.modules import MixGate
from mtgraph.params import ParamStore
from mtgraph.problem import Problem
from mtgraph.strategies.adashare.config import AdaShareConfig
from mtgraph.strategies.adashare.derive import harden_policy
from mtgraph.strategies.adashare.evaluation import evaluate_hard, relative_score
from mtgraph.strategies.adashare.policy import (
    EXECUTE,
    curriculum_mask,
    derive_policy,
    execute_probability,
    sharing_loss,
    sparsity_loss,
    temperature,
    undecided_gates,
)
from mtgraph.strategies.adashare.routing import SampledPathSharing
from mtgraph.strategies.adashare.soft_graph import (
    gate_key,
    gated_blocks,
    make_gates,
    policy_logits,
    set_temperature,
    soft_graph,
)
from mtgraph.strategies.result import Decision
from mtgraph.train import Hook, OptimizerGroup, Rewrite, TrainState, fit, sgd

__all__ = ["PolicySearch", "SearchOutcome", "UndecidedPolicyWarning", "search_policy", "WEIGHTS_GROUP", "POLICY_GROUP"]

#: The optimizer group that trains the network's weights in the search.
WEIGHTS_GROUP = "weights"
#: The optimizer group that trains the policy logits.
POLICY_GROUP = "policy"

Evaluator = Callable[[MTGraph, ParamStore], dict[str, dict[str, float]]]


class UndecidedPolicyWarning(UserWarning):
    """The policy search ended with gates whose execute probability is still close to 0.5.

    Their hardened decision is nearly a coin flip: a longer search, a larger
    policy learning rate or a faster temperature decay decides them.

    Examples:
        >>> from mtgraph.strategies.adashare import UndecidedPolicyWarning
        >>> issubclass(UndecidedPolicyWarning, UserWarning)
        True
    """


@dataclass
class SearchOutcome:
    """What the first stage hands to the second.

    Attributes:
        logits: the selected policy's logits ``[T, L, 2]`` (the best epoch's, else the last).
        best_epoch: the epoch they come from.
        best_score: its validation score (None without validation data).
        reference: the warmed-up One-Net's validation metrics (None without validation data).
        records: one record per search epoch (see the module docstring).
        decisions: the selection, the gradient balance and undecided gates, for the decision log.
        history: warm-up and search losses and steps, for the result's history.

    Examples:
        >>> import torch
        >>> from mtgraph.strategies.adashare import SearchOutcome
        >>> outcome = SearchOutcome(torch.zeros(2, 8, 2), best_epoch=7, best_score=None, reference=None, records=[])
        >>> outcome.best_epoch, outcome.decisions
        (7, ())
    """

    logits: torch.Tensor
    best_epoch: int
    best_score: float | None
    reference: dict[str, dict[str, float]] | None
    records: list[dict[str, Any]]
    decisions: tuple[Decision, ...] = ()
    history: dict[str, Any] = field(default_factory=dict)


class PolicySearch(Hook):
    """Temperature, curriculum, policy regularisers, gradient balance and best-policy tracking of the search.

    Args:
        problem: the problem (backbone, tasks).
        gated: the gated blocks, in order.
        gates: gate key -> gate (every (task, gated block)).
        config: the run's options.
        evaluate: scores a hard network on validation data (None: the latest policy is kept).
        reference: the warmed-up One-Net's validation metrics the score is relative to.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.adashare import AdaShareConfig, PolicySearch, gated_blocks, make_gates
        >>> problem = mtgraph.toy_problem(("seg", "depth"), blocks=4)
        >>> gated, _ = gated_blocks(problem.backbone)
        >>> search = PolicySearch(problem, gated, make_gates(problem.task_names, gated), AdaShareConfig(epochs=3))
        >>> search.learnable(0), search.learnable(2)  # the curriculum unlocks from the last block
        ((3,), (1, 2, 3))
    """

    def __init__(self, problem: Problem, gated: tuple[int, ...], gates: Mapping[str, MixGate], config: AdaShareConfig,
                 evaluate: Evaluator | None = None, reference: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self.problem, self.gated, self.gates, self.config = problem, gated, gates, config
        self.task_names = problem.task_names
        self.loss_weights = config.loss_weights(self.task_names)
        self.evaluate, self.reference = evaluate, reference
        self.records: list[dict[str, Any]] = []
        self.best_logits: torch.Tensor | None = None
        self.best_score = -math.inf
        self.best_epoch = -1
        self.pending: dict[str, float] | None = None  # this epoch's gradient balance, until its record is written

    @property
    def name(self) -> str:
        return "adashare_policy"

    def mask(self, epoch: int) -> torch.Tensor:
        """Learnable gated blocks at ``epoch`` (bool over the gated blocks)."""
        if not self.config.curriculum:
            return torch.ones(len(self.gated), dtype=torch.bool)
        return curriculum_mask(len(self.gated), epoch, speed=self.config.curriculum_speed)

    def learnable(self, epoch: int) -> tuple[int, ...]:
        """Learnable block indices at ``epoch``."""
        return tuple(b for b, on in zip(self.gated, self.mask(epoch).tolist()) if on)

    def logits(self) -> torch.Tensor:
        """The current policy logits ``[T, L, 2]``."""
        return policy_logits(self.gates, self.task_names, self.gated)

    def on_epoch_start(self, state: TrainState) -> None:
        set_temperature(self.gates.values(), temperature(state.epoch, self.config.tau0, self.config.tau_decay))

    def extra_loss(self, state: TrainState, outputs: Mapping[str, torch.Tensor], batch: Any) -> torch.Tensor | None:
        if state.group != POLICY_GROUP:
            return None
        learnable = self.learnable(state.epoch)
        # Locked blocks take part as constants: their logits get no gradient and
        # cannot move (they are not in the graph, hence not in the optimizer).
        logits = policy_logits(self.gates, self.task_names, self.gated, trainable=learnable)
        c = self.config
        sparsity = c.lambda_sparsity * sparsity_loss(logits, blocks=self.mask(state.epoch).to(logits.device),
                                                     form=c.sparsity_form)
        sharing = c.lambda_sharing * sharing_loss(logits, form=c.sharing_form)
        if self.pending is None:
            self.pending = self._gradient_balance(outputs, batch[1], learnable, sparsity, sharing)
        return sparsity + sharing

    def _gradient_balance(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                          learnable: tuple[int, ...], sparsity: torch.Tensor, sharing: torch.Tensor) -> dict[str, float]:
        """Mean |gradient| of the task loss and of each weighted regulariser on the learnable execute logits."""
        tasks = self.problem.tasks
        leaves = [self.gates[gate_key(t, b)].logits for t in self.task_names for b in learnable]
        task_loss = sum((self.loss_weights[t] * tasks[t].loss(outputs[t], targets[t]) for t in self.task_names),
                        torch.zeros((), device=leaves[0].device))
        out = {}
        for label, loss in (("task", task_loss), ("sparsity", sparsity), ("sharing", sharing)):
            if not loss.requires_grad:
                out[label] = 0.0
                continue
            grads = torch.autograd.grad(loss, leaves, retain_graph=True, allow_unused=True)
            out[label] = float(torch.stack([
                (g[EXECUTE] if g is not None else torch.zeros((), device=leaves[0].device)).abs() for g in grads
            ]).mean())
        return out

    def on_epoch_end(self, state: TrainState) -> Rewrite | None:
        epoch = state.epoch
        logits = self.logits().detach().cpu().clone()
        record: dict[str, Any] = {
            "epoch": epoch,
            "tau": temperature(epoch, self.config.tau0, self.config.tau_decay),
            # What the gates held, not what the schedule says: the two differ only if the schedule is not applied.
            "gate_tau": sorted({float(gate.tau) for gate in self.gates.values()}),
            "learnable": list(self.learnable(epoch)),
            "alpha": execute_probability(logits).tolist(),
            "logits": logits.tolist(),
            "gradients": self.pending,
            "score": None,
        }
        self.pending = None
        complete = len(self.learnable(epoch)) == len(self.gated)
        if complete:
            if self.evaluate is not None and self.reference is not None:
                decisions = derive_policy(logits, mode="argmax")
                graph, hardened, _ = harden_policy(self.problem.backbone, {}, self.task_names, self.gated, decisions,
                                                   params=state.params)
                metrics = self.evaluate(graph, hardened)
                score = relative_score(metrics, self.reference, self.problem.tasks)
                record.update(score=score, metrics=metrics)
            else:
                score = float(epoch)  # no validation data: the latest policy is the best one
            if score > self.best_score:
                self.best_score, self.best_epoch, self.best_logits = score, epoch, logits
        self.records.append(record)
        following = self.learnable(epoch + 1)
        if following != self.learnable(epoch):
            graph = soft_graph(self.problem.backbone, self.task_names, learnable=following)
            newly = sorted(set(following) - set(self.learnable(epoch)))
            return Rewrite(graph, state.params, {}, note=f"curriculum: unlock block(s) {newly}")
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records, "best_score": self.best_score if math.isfinite(self.best_score) else None,
                "best_epoch": self.best_epoch, "best_logits": self.best_logits, "pending": self.pending}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.records = list(state["records"])
        self.best_score = -math.inf if state["best_score"] is None else float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.best_logits = state["best_logits"]
        self.pending = state.get("pending")


def split_data(data: Dataset, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """A fixed split of ``data`` into (1 − fraction, fraction), drawn once from ``seed`` (notes §B.5 item 16).

    Raises:
        ConfigError: the data is too small to split.

    Examples:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from mtgraph.strategies.adashare.search import split_data
        >>> weights, policy = split_data(TensorDataset(torch.arange(10)), 0.2, seed=0)
        >>> len(weights), len(policy), sorted(weights.indices + policy.indices) == list(range(10))
        (8, 2, True)
    """
    n = len(data)  # type: ignore[arg-type]
    n_policy = max(1, round(n * fraction))
    if n - n_policy < 1:
        raise ConfigError(f"the training set has {n} samples: too few to split {1 - fraction:.0%} / {fraction:.0%}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(data, order[n_policy:]), Subset(data, order[:n_policy])


def _turn(steps: int | None, data: Dataset, batch_size: int) -> int:
    n = len(data)  # type: ignore[arg-type]
    return steps if steps is not None else max(1, math.ceil(n / batch_size))


def evaluator(problem: Problem, config: AdaShareConfig, seed: int) -> Evaluator | None:
    """Scores hard networks on the problem's validation data with per-site statistics (None without validation data).

    Examples:
        >>> import dataclasses, mtgraph
        >>> from mtgraph.strategies.adashare import AdaShareConfig
        >>> from mtgraph.strategies.adashare.search import evaluator
        >>> problem = mtgraph.toy_problem(("seg", "depth"), blocks=3)
        >>> without = dataclasses.replace(problem, val_data=None)
        >>> evaluator(problem, AdaShareConfig(), 0) is not None, evaluator(without, AdaShareConfig(), 0)
        (True, None)
    """
    if problem.val_data is None:
        return None
    return functools.partial(evaluate_hard, tasks=problem.tasks, calibration=problem.train_dataset,
                             data=problem.val_data, batches=config.calibration_batches,
                             batch_size=config.batch_size, seed=seed)


def _balance_decision(records: list[dict[str, Any]], config: AdaShareConfig) -> Decision:
    measured = [r["gradients"] for r in records if r.get("gradients")]
    if not measured:
        return Decision("policy search", "gradient balance on the policy logits", True,
                        "not measured (no policy step ran)", {})
    task = statistics.median(m["task"] for m in measured)
    sparsity = statistics.median(m["sparsity"] for m in measured)
    sharing = statistics.median(m["sharing"] for m in measured)

    def ratio(value: float) -> float:
        return value / task if task > 0 else math.inf

    dominant = [name for name, value in (("sparsity", sparsity), ("sharing", sharing)) if ratio(value) > 1.0]
    verdict = (f"the {' and '.join(dominant)} gradient outweighs the task signal: the policy follows λ rather than the "
               "tasks (lower λ to let the tasks decide)") if dominant else "the task signal outweighs both regularisers"
    return Decision(
        where="policy search",
        what="gradient balance on the policy logits",
        accepted=not dominant,
        reason=(f"median over {len(measured)} epochs of the mean |∂/∂ execute logit|: task loss {task:.2e}, "
                f"λ_sp·L_sparsity ({config.sparsity_form} form, λ_sp = {config.lambda_sparsity:g}) {sparsity:.2e} "
                f"({ratio(sparsity):.2f}x the task's), λ_sh·L_sharing ({config.sharing_form} form, "
                f"λ_sh = {config.lambda_sharing:g}) {sharing:.2e} ({ratio(sharing):.2f}x); {verdict}"),
        data={"task": task, "sparsity": sparsity, "sharing": sharing,
              "sparsity_ratio": ratio(sparsity), "sharing_ratio": ratio(sharing)},
    )


def _undecided_decision(logits: torch.Tensor, problem: Problem, gated: tuple[int, ...],
                        config: AdaShareConfig) -> Decision:
    undecided = undecided_gates(logits, config.decided_margin)
    alpha = execute_probability(logits)
    gates = [(problem.task_names[k], gated[j], float(alpha[k, j])) for k, j in undecided.nonzero().tolist()]
    total = undecided.numel()
    if gates:
        listed = ", ".join(f"{t} block {b} (α = {a:.2f})" for t, b, a in gates)
        message = (f"AdaShare's policy search ended with {len(gates)} of {total} gates undecided (|α − 0.5| < "
                   f"{config.decided_margin:g}): {listed}; their argmax decisions are nearly coin flips. Search "
                   "longer (epochs), raise policy_lr or decay τ faster")
        warnings.warn(message, UndecidedPolicyWarning, stacklevel=3)
    return Decision(
        where="policy search",
        what=f"{total - len(gates)} of {total} gates decided",
        accepted=not gates,
        reason=(f"undecided (|α − 0.5| < {config.decided_margin:g}): "
                + ", ".join(f"{t} block {b} α = {a:.2f}" for t, b, a in gates)) if gates
        else f"every gate has |α − 0.5| >= {config.decided_margin:g}",
        data={"margin": config.decided_margin, "undecided": [{"task": t, "block": b, "alpha": a} for t, b, a in gates]},
    )


def search_policy(problem: Problem, config: AdaShareConfig, *, device: torch.device | str | None = None,
                  progress: bool = False) -> SearchOutcome:
    """Warm up the One-Net, then search the policy; return the selected logits and what was measured.

    Trains in two :func:`~mtgraph.train.fit` calls, ``"adashare-warmup"`` and
    ``"adashare-search"``. The problem's data: a DataLoader's dataset is used,
    batched by ``config.batch_size``.

    Args:
        problem: the problem.
        config: the run's options.
        device: where to train (None: ``fit``'s choice).
        progress: show progress bars.

    Returns:
        The :class:`SearchOutcome`.

    Raises:
        ConfigError: no skippable block, or too few epochs for the curriculum
            to unlock every block.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.adashare import AdaShareConfig, search_policy
        >>> problem = mtgraph.toy_problem(("seg", "depth"), blocks=3, samples=8)
        >>> config = AdaShareConfig(epochs=2, weight_steps=1, policy_steps=1, batch_size=4, warmup_steps=1,
        ...                         calibration_batches=1, decided_margin=0.0)
        >>> outcome = search_policy(problem, config)
        >>> outcome.logits.shape, [r["learnable"] for r in outcome.records]
        (torch.Size([2, 2, 2]), [[2], [1, 2]])
    """
    names = problem.task_names
    gated, _ = gated_blocks(problem.backbone)
    needed = config.epochs_to_unlock(len(gated))
    if config.epochs < needed:
        raise ConfigError(
            f"the curriculum unlocks one of the {len(gated)} gated blocks every {config.curriculum_speed} epoch(s), "
            f"so AdaShareConfig.epochs must be >= {needed} to learn every block's policy, got {config.epochs}"
        )
    seed = problem.seed
    train = problem.train_dataset
    weights_data, policy_data = split_data(train, config.policy_fraction, seed)
    n_w = _turn(config.weight_steps, weights_data, config.batch_size)
    n_a = _turn(config.policy_steps, policy_data, config.batch_size)
    warmup = config.warmup_steps if config.warmup_steps is not None else round(config.warmup_fraction * config.epochs * (n_w + n_a))
    loss_weights = config.loss_weights(names)
    weight_opt = sgd(config.weight_lr, config.weight_momentum, weight_decay=config.weight_decay)

    # The One-Net weights and every gate, in one store.
    gates = make_gates(names, gated, tau=config.tau0, straight_through=config.straight_through)
    params = ParamStore.create(soft_graph(problem.backbone, names), problem.backbone, problem.heads, gates=gates)

    # Warm-up with hard sharing.
    shared = one_net(problem.backbone.num_blocks, names)
    warm_losses: dict[str, list[float]] = {}
    if warmup > 0:
        warm = fit(shared, params, problem.tasks, train, steps=warmup, batch_size=config.batch_size,
                   optimizer=weight_opt, loss_weights=loss_weights, seed=seed, phase="adashare-warmup",
                   device=device, progress=progress)
        params, warm_losses = warm.params, warm.history.losses
    evaluate = evaluator(problem, config, seed)
    reference = evaluate(shared, params) if evaluate is not None else None

    # Alternate weights (80 %) and policy (20 %).
    search = PolicySearch(problem, gated, gates, config, evaluate, reference)
    hooks: list[Hook] = [search]
    if config.straight_through:
        hooks.append(SampledPathSharing(gates, WEIGHTS_GROUP))
    groups = [
        OptimizerGroup(WEIGHTS_GROUP, None, weight_opt, data=weights_data, batch_size=config.batch_size, steps=n_w),
        OptimizerGroup(POLICY_GROUP, lambda key, module: key.startswith("policy."),
                       functools.partial(torch.optim.Adam, lr=config.policy_lr, weight_decay=config.policy_weight_decay),
                       data=policy_data, batch_size=config.batch_size, steps=n_a),
    ]
    start = soft_graph(problem.backbone, names, learnable=search.learnable(0))
    searched = fit(start, params, problem.tasks, train, epochs=config.epochs, batch_size=config.batch_size,
                   groups=groups, loss_weights=loss_weights, hooks=hooks, seed=seed, phase="adashare-search",
                   device=device, progress=progress)
    best = search.best_logits if search.best_logits is not None else search.logits().detach().cpu()
    epoch = search.best_epoch if search.best_logits is not None else config.epochs - 1
    selection = Decision(
        where="policy search",
        what=f"best policy of epoch {epoch}",
        accepted=True,
        reason=(f"validation score {search.best_score:+.2f}% (primary metrics vs the warmed-up One-Net) was the best "
                f"of the epochs with every block unlocked (from epoch {needed - 1})")
        if reference is not None else "no validation data: the policy of the last epoch is used",
        data={"epoch": epoch, "score": search.best_score if reference is not None else None},
    )
    decisions = (selection, _balance_decision(search.records, config), _undecided_decision(best, problem, gated, config))
    history = {
        "warmup": {"steps": warmup, "losses": warm_losses},
        "search": {"records": search.records, "best_epoch": epoch,
                   "best_score": search.best_score if reference is not None else None,
                   "best_logits": best.tolist(), "steps_per_epoch": {WEIGHTS_GROUP: n_w, POLICY_GROUP: n_a},
                   "losses": searched.history.losses, "groups": searched.history.groups,
                   "regularisers": searched.history.extra.get(search.name, [])},
    }
    return SearchOutcome(best, epoch, search.best_score if reference is not None else None, reference,
                         search.records, decisions, history)

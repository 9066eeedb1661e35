"""What a strategy plugs into the training loop: :class:`Hook`, :class:`TrainState` and :class:`Rewrite`.

Strategies do not write their own loops. They pass hooks to
:func:`~mtgraph.train.fit`: a hook may add a loss term every step (CKA
alignment, AdaShare's sparsity and sharing losses), act after a step or an
epoch (anneal a temperature, unlock a curriculum stage), and at an epoch's end
return a :class:`Rewrite` (a new graph, its params and the lineage of its
weights), which the loop compiles and continues training with, carrying the
optimizer state across. A hook's own state goes into checkpoints through
:meth:`Hook.state_dict`, so a resumed run continues the strategy exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from mtgraph.errors import MTGraphError, TrainError
from mtgraph.ir.graph import MTGraph
from mtgraph.params import ParamStore
from mtgraph.passes import Lineage, LineageEntry, PassResult

if TYPE_CHECKING:
    import torch.fx as fx

    from mtgraph.tasks import Task
    from mtgraph.train.distributed import DistContext
    from mtgraph.train.loop import History

__all__ = ["Hook", "TrainState", "Rewrite", "as_lineage"]


@dataclass
class TrainState:
    """The loop's state as hooks see it (replace the architecture only by returning a Rewrite).

    Attributes:
        phase: name of this :func:`~mtgraph.train.fit` call (names its checkpoints).
        step: optimizer steps done so far. Inside ``extra_loss`` and
            ``on_step_start`` it is the index of the step being taken
            (0-based); in ``on_step_end`` it already counts that step.
        epoch: index of the current epoch (one cycle through every
            optimizer group's turn); in ``on_epoch_end`` the epoch that ended.
        group: name of the optimizer group whose turn it is.
        graph: the graph being trained.
        params: its weights.
        module: the compiled module (not the DDP wrapper).
        optimizers: optimizer per group name (None for a group without parameters).
        tasks: the tasks, by name.
        history: losses and metrics so far.
        ctx: rank, world size and device.
        losses: the last step's loss per task (global mean under DDP).
        metrics: the last evaluation's metrics, per task (None before the first).

    Examples:
        A hook that records what it sees after every step:

        >>> import torch, mtgraph
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.tasks import depth
        >>> from mtgraph.train import Hook, fit
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()),
        ...                          torch.zeros(2, 3, 32, 32))
        >>> tasks = {"depth": depth(hidden=4)}
        >>> graph = mtgraph.one_net(backbone.num_blocks, ["depth"])
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"depth": tasks["depth"].make_head(4, (32, 32))})
        >>> class Steps(Hook):
        ...     def __init__(self): self.seen = []
        ...     def on_step_end(self, state): self.seen.append((state.phase, state.step, sorted(state.losses)))
        >>> steps = Steps()
        >>> _ = fit(graph, params, tasks, SceneDataset(4, 32, seed=0), steps=2, batch_size=2, hooks=[steps],
        ...         progress=False)
        >>> steps.seen
        [('train', 1, ['depth']), ('train', 2, ['depth'])]
    """

    phase: str
    step: int
    epoch: int
    group: str
    graph: MTGraph
    params: ParamStore
    module: fx.GraphModule
    optimizers: dict[str, torch.optim.Optimizer | None]
    tasks: Mapping[str, Task]
    history: History
    ctx: DistContext
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] | None = None


@dataclass(frozen=True)
class Rewrite:
    """A new architecture to continue training with, returned by :meth:`Hook.on_epoch_end`.

    Attributes:
        graph: the rewritten graph (same tasks).
        params: its weights; modules shared with the old store keep their
            optimizer state, new keys get the state their lineage says.
        lineage: a pass's :class:`~mtgraph.passes.Lineage`, or a mapping new
            key -> old key(s) it was made from (one: a copy, several: an
            average); keys kept under the same name need no entry.
        note: a short description recorded in the history ("split b1").

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.passes import DCEPass, SplitPass, run_passes
        >>> from mtgraph.train import Rewrite
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
        >>> backbone = mtgraph.trace(net, torch.zeros(2, 3, 8, 8))
        >>> graph = mtgraph.one_net(backbone.num_blocks, ["a", "b"])
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"a": torch.nn.Identity(), "b": torch.nn.Identity()})
        >>> split = SplitPass(block=1, groups=(("a",), ("b",)))
        >>> rewrite = Rewrite.from_pass(run_passes(graph, params, [split]), note="split b1")
        >>> rewrite.note, [str(entry) for entry in rewrite.lineage.entries]
        ('split b1', ['b1.a <- copy(b1.shared)', 'b1.b <- copy(b1.shared)'])
        >>> Rewrite.from_pass(run_passes(graph, params, [DCEPass()])) is None  # nothing changed
        True
    """

    graph: MTGraph
    params: ParamStore
    lineage: Lineage | Mapping[str, Any] = field(default_factory=Lineage)
    note: str = ""

    @classmethod
    def from_pass(cls, result: PassResult, note: str = "") -> Rewrite | None:
        """The Rewrite of a pass's (or :func:`~mtgraph.passes.run_passes`') result, or None if nothing changed.

        Args:
            result: the pass result (graph, params, lineage, changed).
            note: a short description recorded in the history.

        Returns:
            The Rewrite, or None when ``result.changed`` is False.
        """
        if not result.changed:
            return None
        return cls(result.graph, result.params, result.lineage, note)


class Hook:
    """Base class of training hooks; every method is a no-op, override what you need.

    Hooks run on every rank in the same order; anything that changes the
    model (a rewrite, a temperature) must be decided deterministically, so
    that all ranks agree. ``name`` labels the hook's loss in the history and
    its state in checkpoints (default: the class name).

    Examples:
        A hook adding a small weight penalty to every step's loss (recorded in ``history.extra``):

        >>> import torch, mtgraph
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.tasks import depth
        >>> from mtgraph.train import Hook, fit
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()),
        ...                          torch.zeros(2, 3, 32, 32))
        >>> tasks = {"depth": depth(hidden=4)}
        >>> graph = mtgraph.one_net(backbone.num_blocks, ["depth"])
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"depth": tasks["depth"].make_head(4, (32, 32))})
        >>> class L2(Hook):
        ...     def extra_loss(self, state, outputs, batch):
        ...         return 1e-4 * sum(p.pow(2).sum() for p in state.module.parameters())
        >>> result = fit(graph, params, tasks, SceneDataset(4, 32, seed=0), steps=2, batch_size=2, hooks=[L2()],
        ...              progress=False)
        >>> list(result.history.extra), len(result.history.extra["L2"])
        (['L2'], 2)
    """

    @property
    def name(self) -> str:
        """Label of this hook in histories and checkpoints."""
        return type(self).__name__

    def on_fit_start(self, state: TrainState) -> None:
        """Called once before the first step (also when resuming, before :meth:`load_state_dict`)."""

    def on_epoch_start(self, state: TrainState) -> None:
        """Called before the first step of every epoch."""

    def on_step_start(self, state: TrainState) -> None:
        """Called before every step's forward pass."""

    def extra_loss(self, state: TrainState, outputs: Mapping[str, torch.Tensor], batch: Any) -> torch.Tensor | None:
        """A scalar added to this step's loss, or None (``batch`` is ``(images, targets)`` on the device)."""
        return None

    def on_step_end(self, state: TrainState) -> None:
        """Called after every optimizer step."""

    def on_epoch_end(self, state: TrainState) -> Rewrite | None:
        """Called after every epoch (after evaluation); return a Rewrite to change the architecture."""
        return None

    def on_fit_end(self, state: TrainState) -> None:
        """Called once after the last step."""

    def state_dict(self) -> dict[str, Any]:
        """This hook's state for checkpoints: nested dicts/lists of numbers, strings, bools, None and tensors."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def as_lineage(lineage: Lineage | Mapping[str, Any], old: ParamStore, new: ParamStore) -> Lineage:
    """A pass :class:`~mtgraph.passes.Lineage` from either one or a plain mapping ``new key -> old key(s)``.

    In a mapping, one source means a copy, several an average, none fresh
    weights; a key of ``new`` that is neither in ``old`` nor in the mapping
    is fresh, and a key of ``old`` missing from ``new`` is dropped.

    Args:
        lineage: a Lineage (returned as is) or a mapping ``new key -> old key(s)``.
        old: the store before the rewrite.
        new: the store after it.

    Returns:
        The Lineage.

    Raises:
        TrainError: ``lineage`` is neither a Lineage nor a well-formed mapping.

    Examples:
        >>> import copy, torch, mtgraph
        >>> from mtgraph.train import as_lineage
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
        >>> backbone = mtgraph.trace(net, torch.zeros(2, 3, 8, 8))
        >>> graph = mtgraph.one_net(backbone.num_blocks, ["a", "b"])
        >>> old = mtgraph.ParamStore.create(graph, backbone, {"a": torch.nn.Identity(), "b": torch.nn.Identity()})
        >>> new = old.updated(add={"b1.a": copy.deepcopy(old["b1.shared"])}, drop=["b1.shared"])
        >>> lineage = as_lineage({"b1.a": "b1.shared"}, old, new)
        >>> [str(entry) for entry in lineage.entries], lineage.dropped
        (['b1.a <- copy(b1.shared)'], ('b1.shared',))
        >>> as_lineage(42, old, new)
        Traceback (most recent call last):
        ...
        mtgraph.errors.TrainError: a rewrite's lineage must be a mtgraph.passes.Lineage or a mapping ..., got int
    """
    if isinstance(lineage, Lineage):
        return lineage
    if not isinstance(lineage, Mapping):
        raise TrainError(f"a rewrite's lineage must be a mtgraph.passes.Lineage or a mapping new key -> old keys, got {type(lineage).__name__}")
    entries = []
    try:
        for key, sources in lineage.items():
            found = (sources,) if isinstance(sources, str) else tuple(sources)
            entries.append(LineageEntry(key, found, "fresh" if not found else "copy" if len(found) == 1 else "average"))
    except (TypeError, MTGraphError) as exc:
        raise TrainError(f"malformed rewrite lineage {dict(lineage)!r}: {exc}") from exc
    entries += [LineageEntry(key, (), "fresh") for key in new.keys() if key not in old and key not in lineage]
    return Lineage(entries=tuple(entries), dropped=tuple(k for k in old.keys() if k not in new))

"""The hard (straight-through) search mode: sampled paths, computed once per distinct path prefix.

In the paper's soft relaxation every task mixes a block with its shortcut,
so the tasks' features differ from the first gate on and nothing after it can
be shared; only the curriculum's forced-execute prefix is (the soft graph
computes it once by construction, :mod:`.soft_graph`). In the hard mode
(``AdaShareConfig.straight_through``) every step samples one select-or-skip
decision per (task, block), so two tasks whose sampled decisions agree on
blocks ``0..l`` have *equal* features after block ``l``: the network should
compute that prefix once.

Which tasks agree changes every step, so no static graph expresses it; the
sharing happens at run time and only where it is exact:

* **Weight turns** (the policy is frozen): each :class:`PolicyGate` *routes*,
  returning the sampled input itself (the same tensor object, not a copy),
  and :func:`share_repeated_calls` makes every block of the compiled network
  remember the inputs it was called on within one forward pass: a second call
  on the very same tensor returns the first call's output. Tasks with the
  same sampled prefix then reach each block with the same tensor and share
  its computation and its backward pass. Forward values are those of the
  unshared network bit for bit (the same operations on the same inputs) and
  the weights' gradients are the same sums in another order (autograd
  accumulates the tasks' gradients at the shared output instead of at the
  parameters).
* **Policy turns** (the weights are frozen): the gates use the
  straight-through estimator (one-hot forward, soft gradient), which needs
  each task's own loss gradient at each of its gates, so every task keeps its
  own path there (exact, and unshared beyond the forced prefix). Policy turns
  are the smaller share of the search (20 % of the data).

A block's BatchNorm running statistics are updated once per distinct input
instead of once per task (they are not used: every hard evaluation
re-estimates statistics per call site, :mod:`.sites`). Blocks that draw
random numbers in training mode (dropout) are never shared: two calls of such
a block are not equal.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from mtgraph.modules import MixGate
from mtgraph.train import Hook, TrainState

__all__ = ["PolicyGate", "SharedCall", "share_repeated_calls", "SampledPathSharing"]

_RANDOM = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class PolicyGate(MixGate):
    """AdaShare's select-or-skip gate: a two-way Gumbel :class:`~mtgraph.MixGate` that can also route.

    Inputs are ``(execute, skip)``. With ``straight_through`` the gate is a
    ``"gumbel_st"`` MixGate (one-hot forward, soft gradient), else the
    paper's soft ``"gumbel"`` mixture. While :attr:`route` is set (and the
    gate is training) it samples the same one-hot decision the
    straight-through gate would (the same random draw) and returns the chosen
    input itself, without arithmetic and without a gradient to its logits:
    the weight turns of the hard mode, in which the policy is frozen.
    It saves and loads as a plain MixGate (:meth:`~mtgraph.MixGate.spec`).

    Args:
        tau: initial Gumbel-softmax temperature.
        straight_through: hard (straight-through) rather than soft mixing.

    Examples:
        >>> import torch
        >>> from mtgraph.strategies.adashare import PolicyGate
        >>> gate = PolicyGate(tau=1.0, straight_through=True)
        >>> execute, skip = torch.ones(2), torch.zeros(2)
        >>> gate.route = True
        >>> chosen = gate(execute, skip)
        >>> chosen is execute or chosen is skip  # the sampled input itself
        True
        >>> gate.mode, gate.probabilities().tolist()
        ('gumbel_st', [0.5, 0.5])
    """

    def __init__(self, *, tau: float = 5.0, straight_through: bool = False) -> None:
        super().__init__(2, mode="gumbel_st" if straight_through else "gumbel", tau=tau, init_probs=(0.5, 0.5))
        self.route = False

    def sample(self) -> int:
        """Index of a one-hot Gumbel sample, drawn exactly as :func:`torch.nn.functional.gumbel_softmax` draws it.

        Examples:
            >>> import torch
            >>> from mtgraph.strategies.adashare import PolicyGate
            >>> gate = PolicyGate(tau=1.0)
            >>> with torch.no_grad():
            ...     _ = gate.logits.copy_(torch.tensor([30.0, 0.0]))
            >>> gate.sample()  # execute is e^30 times more likely
            0
        """
        with torch.no_grad():
            # Same draw and the same arithmetic as gumbel_softmax(hard=True): a routed step consumes the random
            # stream exactly like a straight-through step and picks the same input.
            gumbels = -torch.empty_like(self.logits, memory_format=torch.legacy_contiguous_format).exponential_().log()
            y_soft = ((self.logits + gumbels) / self.tau).softmax(-1)
            return int(y_soft.max(-1)[1])

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.route and self.training:
            return inputs[self.sample()]
        return super().forward(*inputs)


class SharedCall(nn.Module):
    """Run ``inner`` once per distinct input tensor between two :meth:`clear` calls.

    A call on the very tensor object (same identity and version counter) seen
    before returns the earlier output, so several call sites fed one tensor
    compute once, and autograd sums their gradients at the shared output.

    Args:
        inner: the module to call (a block, a projection shortcut).

    Examples:
        >>> import torch
        >>> from mtgraph.strategies.adashare import SharedCall
        >>> calls = []
        >>> class Count(torch.nn.Module):
        ...     def forward(self, x):
        ...         calls.append(1)
        ...         return x + 1
        >>> shared = SharedCall(Count())
        >>> x = torch.zeros(2)
        >>> shared(x) is shared(x), len(calls)
        (True, 1)
        >>> shared.clear(); _ = shared(x); len(calls)
        2
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self._seen: list[tuple[torch.Tensor, int, Any]] = []

    def forward(self, x: torch.Tensor) -> Any:
        for seen, version, out in self._seen:
            if seen is x and seen._version == version:
                return out
        out = self.inner(x)
        self._seen.append((x, x._version, out))
        return out

    def clear(self) -> None:
        """Forget every remembered call (and release the tensors it held)."""
        self._seen.clear()


def _stochastic(module: nn.Module) -> bool:
    return any(isinstance(m, _RANDOM) and m.p > 0 for m in module.modules())


def share_repeated_calls(module: fx.GraphModule) -> list[SharedCall]:
    """Make every single-input, deterministic submodule of a compiled network a :class:`SharedCall`.

    Gates (several inputs) and modules containing dropout are left alone.
    The module's parameters stay the same tensors (the wrappers hold the same
    submodules). Returns the wrappers, to :meth:`SharedCall.clear` them
    between forward passes; idempotent.

    Args:
        module: a network compiled by :func:`mtgraph.compile`.

    Returns:
        Every wrapper now in ``module``.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.strategies.adashare import share_repeated_calls
        >>> backbone = mtgraph.trace(resnet_tiny(width=4), torch.randn(2, 3, 32, 32))
        >>> graph = mtgraph.one_net(backbone.num_blocks, ["seg"])
        >>> net = mtgraph.compile(graph, mtgraph.ParamStore.create(graph, backbone, {"seg": torch.nn.Identity()}))
        >>> len(share_repeated_calls(net)), len(share_repeated_calls(net))  # 9 blocks and a head; idempotent
        (10, 10)
    """
    wrappers: dict[str, SharedCall] = {}
    for node in module.graph.nodes:
        if node.op != "call_module" or len(node.args) != 1:
            continue
        target = str(node.target)
        called = module.get_submodule(target)
        if isinstance(called, SharedCall):
            wrappers[target] = called
        elif not isinstance(called, MixGate) and not _stochastic(called):
            wrappers[target] = SharedCall(called)
            module.set_submodule(target, wrappers[target])
    return list(wrappers.values())


class SampledPathSharing(Hook):
    """The hard mode's training hook: gates route in the weight turns, shared calls are installed and cleared.

    Before each step it switches every gate to routing when the step belongs
    to ``weights_group`` (straight-through otherwise), wraps the compiled
    network's blocks with :class:`SharedCall` (again after each curriculum
    rewrite, which compiles a new network) and forgets the previous step's
    calls; after each step it releases them. Under DDP nothing is shared
    (the wrapped module must not change under it): the hard mode then runs
    every task's path.

    Args:
        gates: the policy gates (all of them; those not in the graph are harmless).
        weights_group: the name of the optimizer group that trains the weights.

    Examples:
        >>> from mtgraph.strategies.adashare import SampledPathSharing, make_gates
        >>> hook = SampledPathSharing(make_gates(["seg"], [1], straight_through=True), "weights")
        >>> hook.name
        'adashare_path_sharing'
    """

    def __init__(self, gates: Mapping[str, MixGate], weights_group: str) -> None:
        self.gates = [g for g in gates.values() if isinstance(g, PolicyGate)]
        self.weights_group = weights_group
        self._module: weakref.ref[fx.GraphModule] | None = None
        self._wrappers: list[SharedCall] = []

    @property
    def name(self) -> str:
        return "adashare_path_sharing"

    def on_step_start(self, state: TrainState) -> None:
        routing = state.group == self.weights_group
        for gate in self.gates:
            gate.route = routing
        if state.ctx.distributed:
            return
        if self._module is None or self._module() is not state.module:
            # A new network (the first step, or a curriculum rewrite recompiled it): wrap its blocks.
            self._wrappers = share_repeated_calls(state.module)
            self._module = weakref.ref(state.module)
        _clear(self._wrappers)

    def on_step_end(self, state: TrainState) -> None:
        _clear(self._wrappers)

    def on_fit_end(self, state: TrainState) -> None:
        _clear(self._wrappers)
        for gate in self.gates:
            gate.route = False


def _clear(wrappers: Iterable[SharedCall]) -> None:
    for wrapper in wrappers:
        wrapper.clear()

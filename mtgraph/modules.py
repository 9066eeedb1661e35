"""The nn.Modules mtgraph itself adds to a network: mixing gates and member heads.

A :class:`MixGate` mixes ``k`` same-shaped inputs with weights drawn from
learned logits (member by member when the inputs are multi-tensor values,
tuples of tensors). It is the module behind every IR ``Gate`` node:

* ``mode="softmax"``: a deterministic convex combination (Safe MTL's
  ``alpha f_S + (1 - alpha) f_t`` for k = 2; exportable as it is);
* ``mode="gumbel"``: soft Gumbel-softmax samples while training (AdaShare's
  relaxed select-or-skip policy), the argmax decision in eval mode;
* ``mode="gumbel_st"``: straight-through Gumbel-softmax (one-hot forward,
  softmax gradient: the lite Safe MTL), the argmax decision in eval mode.

Gates are rebuilt from :meth:`MixGate.spec` when an architecture is loaded, so
loading never needs to unpickle a class.

A :class:`MemberHead` is a task head that reads one tensor of a backbone
returning several (a feature pyramid's finest level, say).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mtgraph.errors import ConfigError

__all__ = ["MixGate", "GATE_MODES", "gate_from_spec", "MemberHead"]

GATE_MODES = ("softmax", "gumbel", "gumbel_st")


class MixGate(nn.Module):
    """Mix ``num_inputs`` same-shaped tensors with weights from learned logits.

    Inputs may also be multi-tensor values (tuples of tensors of one
    signature): each member is mixed with the same weights, and the result is
    a tuple.

    Args:
        num_inputs: how many tensors are mixed (at least 2).
        mode: ``"softmax"``, ``"gumbel"`` or ``"gumbel_st"`` (see the module docstring).
        tau: Gumbel-softmax temperature (> 0; unused in softmax mode).
        init_probs: initial mixing probabilities (default: uniform).

    Raises:
        ConfigError: fewer than 2 inputs, an unknown mode, ``tau`` <= 0, or
            ``init_probs`` that are not ``num_inputs`` probabilities summing to 1.

    Examples:
        >>> import torch, mtgraph
        >>> gate = mtgraph.MixGate(2, init_probs=[0.75, 0.25])
        >>> gate(torch.ones(1, 2), torch.zeros(1, 2))  # 0.75 * ones + 0.25 * zeros
        tensor([[0.7500, 0.7500]], grad_fn=<AddBackward0>)
        >>> gate.chosen(), gate.spec()
        (0, {'type': 'MixGate', 'num_inputs': 2, 'mode': 'softmax', 'tau': 1.0})
        >>> policy = mtgraph.MixGate(2, mode="gumbel", init_probs=[0.25, 0.75]).eval()
        >>> policy(torch.ones(1), torch.zeros(1))  # eval mode: the most probable input only
        tensor([0.])
        >>> gate((torch.ones(1), torch.ones(2)), (torch.zeros(1), torch.zeros(2)))  # two-tensor values
        (tensor([0.7500], grad_fn=<AddBackward0>), tensor([0.7500, 0.7500], grad_fn=<AddBackward0>))
    """

    def __init__(
        self,
        num_inputs: int,
        *,
        mode: str = "softmax",
        tau: float = 1.0,
        init_probs: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if num_inputs < 2:
            raise ConfigError(f"a gate mixes at least 2 inputs, got {num_inputs}")
        if mode not in GATE_MODES:
            raise ConfigError(f"gate mode {mode!r} is not one of {list(GATE_MODES)}")
        if tau <= 0:
            raise ConfigError(f"gate temperature tau must be > 0, got {tau}")
        probs = torch.full((num_inputs,), 1.0 / num_inputs) if init_probs is None else torch.as_tensor(
            [float(p) for p in init_probs]
        )
        if probs.shape != (num_inputs,) or bool((probs < 0).any()) or bool((probs > 1).any()):
            raise ConfigError(f"init_probs must be {num_inputs} probabilities in [0, 1], got {list(probs.tolist())}")
        if abs(float(probs.sum()) - 1.0) > 1e-6:
            raise ConfigError(f"init_probs must sum to 1, got {float(probs.sum())}")
        self.mode = mode
        self.tau: torch.Tensor
        # Logits are log-probabilities: a probability of exactly 0 or 1 is kept as a large finite logit.
        self.logits = nn.Parameter(torch.log(probs.clamp_min(1e-12)))
        self.register_buffer("tau", torch.tensor(float(tau)))

    @property
    def num_inputs(self) -> int:
        """How many inputs the gate mixes."""
        return int(self.logits.numel())

    def probabilities(self) -> torch.Tensor:
        """The mixing distribution softmax(logits)."""
        return torch.softmax(self.logits, dim=0)

    def chosen(self) -> int:
        """Index of the most probable input (the hardened decision; ties pick the lowest index)."""
        return int(torch.argmax(self.logits.detach()).item())

    def weights(self) -> torch.Tensor:
        """The mixing weights used by the next forward in the current mode."""
        if self.mode == "softmax":
            return self.probabilities()
        if not self.training:
            return F.one_hot(torch.argmax(self.logits), self.num_inputs).to(self.logits.dtype)
        return F.gumbel_softmax(self.logits, tau=float(self.tau), hard=self.mode == "gumbel_st")

    def forward(self, *inputs: Any) -> Any:
        w = self.weights()
        if isinstance(inputs[0], torch.Tensor):
            return self._mix(w, inputs)
        arity = len(inputs[0])
        if any(isinstance(v, torch.Tensor) or len(v) != arity for v in inputs):
            raise ConfigError(
                f"a gate mixes values of one form; got values of {[1 if isinstance(v, torch.Tensor) else len(v) for v in inputs]} "
                "tensors"
            )
        return tuple(self._mix(w, [v[m] for v in inputs]) for m in range(arity))

    @staticmethod
    def _mix(w: torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        out = tensors[0] * w[0]
        for k in range(1, len(tensors)):
            out = out + tensors[k] * w[k]
        return out

    def spec(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (the weights are saved separately)."""
        return {"type": "MixGate", "num_inputs": self.num_inputs, "mode": self.mode, "tau": float(self.tau)}

    def extra_repr(self) -> str:
        return f"num_inputs={self.num_inputs}, mode={self.mode!r}"


def gate_from_spec(spec: Mapping[str, Any]) -> MixGate:
    """Rebuild a gate from :meth:`MixGate.spec` output (a closed set of types: no code is looked up).

    Args:
        spec: the dict :meth:`MixGate.spec` returned (possibly through JSON).

    Returns:
        A fresh gate with uniform logits; load the saved weights into it.

    Raises:
        ConfigError: the spec is not a MixGate spec or a value is malformed.

    Examples:
        >>> from mtgraph.modules import gate_from_spec
        >>> gate_from_spec({"type": "MixGate", "num_inputs": 3, "mode": "gumbel", "tau": 0.5})
        MixGate(num_inputs=3, mode='gumbel')
    """
    if not isinstance(spec, Mapping) or spec.get("type") != "MixGate":
        raise ConfigError(f"unknown gate spec {spec!r}; expected a MixGate spec")
    try:
        return MixGate(int(spec["num_inputs"]), mode=str(spec["mode"]), tau=float(spec["tau"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"malformed gate spec {dict(spec)!r}: {exc}") from exc


class MemberHead(nn.Module):
    """A head reading one tensor of a multi-tensor value: ``head(value[index])``.

    For backbones that return several tensors (a feature pyramid, timm's
    ``features_only``): every head receives the whole value (a tuple) unless
    it is wrapped in a MemberHead. Make one with
    :meth:`mtgraph.Backbone.member_head`, which finds the index from the
    member's name; the name is kept so that :meth:`mtgraph.ParamStore.create`
    can refuse the head on a backbone whose tensor at ``index`` is another one.

    Args:
        head: the head module; it receives the one tensor.
        index: which tensor of the value it reads.
        name: the member's name (``""``: not checked).

    Raises:
        ConfigError: ``head`` is not a module or ``index`` is not an int >= 0.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from mtgraph import MemberHead
        >>> head = MemberHead(nn.Conv2d(8, 1, 1), 1, "coarse")
        >>> tuple(head((torch.zeros(2, 4, 8, 8), torch.zeros(2, 8, 4, 4))).shape)
        (2, 1, 4, 4)
        >>> head
        MemberHead(
          member=1 ('coarse')
          (head): Conv2d(8, 1, kernel_size=(1, 1), stride=(1, 1))
        )
    """

    def __init__(self, head: nn.Module, index: int, name: str = "") -> None:
        super().__init__()
        if not isinstance(head, nn.Module):
            raise ConfigError(f"MemberHead needs an nn.Module head, got {type(head).__name__}")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ConfigError(f"MemberHead index must be an int >= 0, got {index!r}")
        self.head = head
        self.index = index
        self.name = str(name)

    def forward(self, value: Any) -> Any:
        return self.head(value if isinstance(value, torch.Tensor) else value[self.index])

    def extra_repr(self) -> str:
        return f"member={self.index}" + (f" ({self.name!r})" if self.name else "")

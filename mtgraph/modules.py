"""The nn.Modules mtgraph itself adds to a network: mixing gates.

A :class:`MixGate` mixes ``k`` same-shaped inputs with weights drawn from
learned logits. It is the module behind every IR ``Gate`` node:

* ``mode="softmax"``: a deterministic convex combination (Safe MTL's
  ``alpha f_S + (1 - alpha) f_t`` for k = 2; exportable as it is);
* ``mode="gumbel"``: soft Gumbel-softmax samples while training (AdaShare's
  relaxed select-or-skip policy), the argmax decision in eval mode;
* ``mode="gumbel_st"``: straight-through Gumbel-softmax (one-hot forward,
  softmax gradient: the lite Safe MTL), the argmax decision in eval mode.

Gates are rebuilt from :meth:`MixGate.spec` when an architecture is loaded, so
loading never needs to unpickle a class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mtgraph.errors import ConfigError

__all__ = ["MixGate", "GATE_MODES", "gate_from_spec"]

GATE_MODES = ("softmax", "gumbel", "gumbel_st")


class MixGate(nn.Module):
    """Mix ``num_inputs`` same-shaped tensors with weights from learned logits.

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

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        w = self.weights()
        out = inputs[0] * w[0]
        for k in range(1, len(inputs)):
            out = out + inputs[k] * w[k]
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

"""Gating after the decoders (SMTL_c / L-SMTL_c, papers/004 §3.4) inside an IR whose Head ends every task.

The paper's SMTL_c computes, per task t,

    o_S = h_{S,t}(f_S(x)),   o_t = h_t(f_t(x)),   ŷ_t = α_t o_S + (1 − α_t) o_t

with a public decoder ``h_{S,t}`` *per task*. In mtgraph's IR a task ends with
exactly one ``Head`` and ``Gate`` nodes mix values at backbone levels, so
there is no node that could sit after two decoders. The gate is therefore
split over the two places the IR has:

* the task's ``Gate`` node (same place, same sources as SMTL's: the public
  and the private encoder outputs at the last level) holds α_t in a
  :class:`DecoderGate`. Instead of mixing, it passes the *pair* on, together
  with the mixing weights of this forward (the softmax, or one Gumbel sample
  for the lite variant);
* the task's ``Head`` is a :class:`DualHead` holding ``h_{S,t}`` and ``h_t``.
  It decodes each encoder output with its own decoder and mixes the raw,
  pre-activation outputs (the reference code mixes logits; any activation
  such as softmax is applied after, by the loss or the metric).

Why the α lives in the Gate node and not in the head: ``harden`` then works
unchanged (it reads ``probabilities()`` of the gate's module and keeps one
source), the α of every variant is found at the same key (``gate.<task>...``),
and ``dce`` removes the unchosen encoder exactly as for SMTL. Hardening only
needs one extra, SMTL-specific step: the head must become the chosen decoder
(:func:`mtgraph.strategies.smtl.harden.harden_smtl` does it).

Limits of this encoding:

* the Gate node's value is a tuple, not a tensor: ``mtgraph.cost`` reports
  no shape for it, and only a :class:`DualHead` can consume it;
* the IR text of SMTL_c reads like SMTL's (a ``gate`` at the last level);
  the difference lives in the ParamStore's module types;
* ``mtgraph.save`` records specs of :class:`~mtgraph.MixGate` gates only, so
  a *soft* SMTL_c network cannot be reloaded with ``mtgraph.load`` (it
  refuses, naming the gate). A hardened L-SMTL_c network has no gate and plain
  heads, and saves and loads like any other.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtgraph.errors import ConfigError
from mtgraph.modules import MixGate

__all__ = ["DecoderGate", "DualHead", "GatedPair"]

#: What a :class:`DecoderGate` passes to its task's head: (public features, private features, mixing weights).
GatedPair = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class DecoderGate(nn.Module):
    """The Gate-node module of SMTL_c: holds α_t (a 2-input :class:`~mtgraph.MixGate`) and defers the mix to the head.

    ``forward(public, private)`` returns ``(public, private, weights)`` with
    ``weights = mix.weights()``: ``(α_t, 1 − α_t)`` in softmax mode, a one-hot
    straight-through Gumbel sample in ``gumbel_st`` mode while training (one
    sample per forward, shared by the batch), the argmax in eval mode.
    ``probabilities()`` and ``chosen()`` are the MixGate's, so ``harden``
    treats this gate like any other.

    Args:
        mix: the 2-input MixGate holding α_t's logits (kept, not copied).

    Raises:
        ConfigError: ``mix`` is not a 2-input MixGate.

    Examples:
        >>> import torch
        >>> from mtgraph import MixGate
        >>> from mtgraph.strategies.smtl import DecoderGate
        >>> gate = DecoderGate(MixGate(2, init_probs=[0.7, 0.3]))
        >>> public, private, weights = gate(torch.ones(1, 4), torch.zeros(1, 4))
        >>> [round(w, 4) for w in weights.tolist()], gate.chosen()
        ([0.7, 0.3], 0)
        >>> DecoderGate(MixGate(3))
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: a DecoderGate wraps a 2-input MixGate, got MixGate(num_inputs=3, mode='softmax')
    """

    def __init__(self, mix: MixGate) -> None:
        super().__init__()
        if not isinstance(mix, MixGate) or mix.num_inputs != 2:
            raise ConfigError(f"a DecoderGate wraps a 2-input MixGate, got {mix!r}")
        self.mix = mix

    @property
    def mode(self) -> str:
        """The wrapped MixGate's mode."""
        return self.mix.mode

    def probabilities(self) -> torch.Tensor:
        """``(α_t, 1 − α_t)``: P(public decoder output), P(private decoder output)."""
        return self.mix.probabilities()

    def chosen(self) -> int:
        """0 (public) or 1 (private): the MixGate's argmax."""
        return self.mix.chosen()

    def forward(self, public: torch.Tensor, private: torch.Tensor) -> GatedPair:
        return public, private, self.mix.weights()

    def spec(self) -> dict[str, Any]:
        """A description for reports; not a MixGate spec, so ``mtgraph.load`` refuses it rather than rebuild it wrongly."""
        return {"type": "DecoderGate", **{k: v for k, v in self.mix.spec().items() if k != "type"}}


class DualHead(nn.Module):
    """The Head module of SMTL_c: the public decoder ``h_{S,t}`` and the private decoder ``h_t``, mixed.

    Consumes the :data:`GatedPair` of the task's :class:`DecoderGate` and
    returns ``w_0 · public(f_S) + w_1 · private(f_t)`` (raw outputs, before
    any activation).

    Args:
        public: the public decoder ``h_{S,t}``.
        private: the private decoder ``h_t``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from mtgraph import MixGate
        >>> from mtgraph.strategies.smtl import DecoderGate, DualHead
        >>> gate = DecoderGate(MixGate(2, init_probs=[1.0, 0.0]))  # all public
        >>> head = DualHead(public=nn.Linear(4, 2), private=nn.Linear(4, 2))
        >>> x = torch.randn(3, 4)
        >>> out = head(gate(x, torch.randn(3, 4)))
        >>> out.shape, torch.allclose(out, head.public(x))
        (torch.Size([3, 2]), True)
    """

    def __init__(self, public: nn.Module, private: nn.Module) -> None:
        super().__init__()
        self.public = public
        self.private = private

    def forward(self, pair: GatedPair) -> torch.Tensor:
        public_features, private_features, weights = pair
        return weights[0] * self.public(public_features) + weights[1] * self.private(private_features)

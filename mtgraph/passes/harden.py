"""``harden``: every Gate becomes the single source it chose (soft decisions become graph structure).

Each ``Gate`` node is replaced by one of its sources, and whatever only the
unchosen sources used disappears (their nodes, and keys nothing else uses,
the gate's own key included). A skip policy written as ``Gate(Block, Skip)``
per task and block (``gate`` with ``private="skip"``) thereby becomes a Block
or a Skip per task; tasks whose hardened paths agree share them again.

Choice, per gate module:

* default: ``module.chosen()`` — for a MixGate the argmax of its logits,
  **ties going to the lowest index**, i.e. the first source: the public
  path, or "execute" for a skip gate (keeping a block is the conservative
  choice);
* ``threshold=t`` (2-input gates only): the first source iff its
  probability ``module.probabilities()[0] >= t``. ``threshold=0.5`` equals
  the default; a higher threshold prefers the private path / skipping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mtgraph.errors import PassError
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Gate, Node
from mtgraph.params import ParamStore
from mtgraph.passes.base import Pass
from mtgraph.passes.checks import describe_node
from mtgraph.passes.refusal import Refusal
from mtgraph.passes.result import PassResult, make_result, unchanged
from mtgraph.passes.rewrite import PathRewriter, rewrite_paths

__all__ = ["HardenPass"]


@dataclass(frozen=True)
class HardenPass(Pass):
    """Replace every Gate by its chosen source (argmax, ties to the first; or by ``threshold`` on P(first)).

    Args:
        threshold: None (each gate's argmax), or a probability in [0, 1]: keep
            a 2-input gate's first source iff its probability is at least this.

    Raises:
        PassError: a bad threshold (at construction), or a gate module that
            cannot say what it chose (:meth:`check` returns that refusal).

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)),
        ...                          torch.randn(1, 3, 8, 8))
        >>> graph = mtgraph.one_net(2, ("S", "D"))
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"S": nn.Conv2d(4, 1, 1), "D": nn.Conv2d(4, 1, 1)})
        >>> from mtgraph.passes import GatePass, HardenPass
        >>> gated = GatePass("D", start=1, end=1, private="skip")(graph, params)  # run block 1 or skip it
        >>> print(HardenPass(threshold=0.6)(gated.graph, gated.params).graph)  # P(run) = 0.5 < 0.6: skip
        %0 = input                                  # S D
        %1 = block 0 w=b0.shared (%0)               # S D
        %2 = block 1 w=b1.shared (%1)               # S
        %3 = skip 1 (%1)                            # D
        S = head (%2)
        D = head (%3)
        >>> HardenPass()(gated.graph, gated.params).graph == graph  # argmax, tie to the first: run it
        True
    """

    name = "harden"

    threshold: float | None = None

    def __post_init__(self) -> None:
        t = self.threshold
        if t is not None:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and 0.0 <= t <= 1.0):
                raise PassError(f"harden: threshold must be a probability in [0, 1] or None, got {t!r}")
            object.__setattr__(self, "threshold", float(t))

    def choose(self, graph: MTGraph, params: ParamStore, i: int) -> int | Refusal:
        """Index (into the gate's sources) of the source gate node ``i`` keeps, or why it cannot say."""
        gate = graph.nodes[i]
        if not isinstance(gate, Gate):
            raise PassError(f"internal error: harden: node %{i} is not a gate")
        module = params[gate.weights]
        where = f"harden: gate {describe_node(graph, i)} of task {gate.task!r}"

        def refused(text: str) -> Refusal:
            return self.refuse("no-choice", f"{where}: {text}", tasks=(gate.task,), nodes=(i,))

        if self.threshold is None:
            chosen = getattr(module, "chosen", None)
            if not callable(chosen):
                return refused(f"its module {type(module).__name__} has no chosen() method to harden with")
            index = int(chosen())
        else:
            probabilities = getattr(module, "probabilities", None)
            if not callable(probabilities):
                return refused(f"its module {type(module).__name__} has no probabilities() method")
            if len(gate.srcs) != 2:
                return refused(f"threshold applies to 2-input gates, this one mixes {len(gate.srcs)}")
            with torch.no_grad():
                first = float(probabilities()[0])
            index = 0 if first >= self.threshold else 1
        if not 0 <= index < len(gate.srcs):
            return refused(f"its module chose input {index}, but the gate has {len(gate.srcs)} sources")
        return index

    def match(self, graph: MTGraph, params: ParamStore) -> dict[int, int] | Refusal:
        """Gate node id -> the index of the source it keeps, for every live gate; or the first gate's refusal."""
        choices: dict[int, int] = {}
        for i, node in enumerate(graph.nodes):
            if isinstance(node, Gate) and graph.served[i]:
                choice = self.choose(graph, params, i)
                if isinstance(choice, Refusal):
                    return choice
                choices[i] = choice
        return choices

    def precondition(self, graph: MTGraph, params: ParamStore) -> Refusal | None:
        """Refused when a gate's module cannot say which source it chose (see :meth:`choose`)."""
        found = self.match(graph, params)
        return found if isinstance(found, Refusal) else None

    def apply(self, graph: MTGraph, params: ParamStore) -> PassResult:
        """Route each gate's consumers to its chosen source and drop the rest."""
        choices = self.match(graph, params)
        if isinstance(choices, Refusal):
            raise choices.error()
        if not choices:
            return unchanged(graph, params)

        def visit(task: str, old_id: int, node: Node, rewriter: PathRewriter) -> Node | int:
            if old_id in choices:
                return node.srcs[choices[old_id]]
            return node

        return make_result(graph, params, rewrite_paths(graph, visit))

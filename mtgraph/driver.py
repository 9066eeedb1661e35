"""The compiler driver behind ``mtgraph opt`` and ``mtgraph explain``: run or explain a pass pipeline.

``mtgraph opt ARCH --passes PIPELINE`` applies a pipeline to a saved
architecture with :func:`~mtgraph.passes.run_passes` (stopping at the first
refusal, which is the error) and prints the IR. ``mtgraph explain ARCH
--passes PIPELINE`` asks every step's :meth:`~mtgraph.passes.Pass.check`
instead: :func:`explain_pipeline` applies the steps that apply and records
the refusal of the others, **leaving the graph unchanged at a refused step and
running the rest on it**, so one command lists every step that would fail
(a refusal can depend on the earlier steps: later steps see the graph as the
applied ones left it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mtgraph.errors import PassError
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.text import print_graph
from mtgraph.ir.verify import verify
from mtgraph.params import ParamStore
from mtgraph.passes import Lineage, Pass, PassResult, Refusal, parse_pipeline

__all__ = ["StepOutcome", "Explanation", "explain_pipeline", "format_after_step"]


@dataclass(frozen=True)
class StepOutcome:
    """What one step of an explained pipeline did: applied (and whether it changed anything) or refused.

    Attributes:
        index: the step's position, from 1.
        step: the pass's pipeline text.
        refusal: why the step did not apply, or None when it applied.
        changed: whether the applied step changed the graph or the weights.

    Examples:
        >>> from mtgraph.driver import StepOutcome
        >>> print(StepOutcome(1, "cse", None, False))
        step 1 cse: applied, nothing changed
    """

    index: int
    step: str
    refusal: Refusal | None
    changed: bool

    @property
    def applied(self) -> bool:
        """True when the step applied."""
        return self.refusal is None

    def __str__(self) -> str:
        if self.refusal is None:
            return f"step {self.index} {self.step}: applied" + ("" if self.changed else ", nothing changed")
        reason = self.refusal.text.splitlines()[0]
        return f"step {self.index} {self.step}: refused ({self.refusal.failed}): {reason}"


@dataclass(frozen=True)
class Explanation:
    """The outcome of every step of a pipeline, and the graph and store after the steps that applied.

    ``str(explanation)`` is one line per step and a summary line.

    Attributes:
        steps: one :class:`StepOutcome` per pass, in order.
        result: the graph, store and composed lineage after the applied steps.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.driver import explain_pipeline
        >>> problem = mtgraph.toy_problem()
        >>> graph = mtgraph.stn(problem.backbone.num_blocks, problem.task_names)
        >>> params = mtgraph.ParamStore.create(graph, problem.backbone, problem.heads)
        >>> explanation = explain_pipeline(graph, params, "fuse{tasks=seg+depth,block=1},fuse{tasks=seg+depth,block=0},dce")
        >>> print(explanation)  # doctest: +ELLIPSIS
        step 1 fuse{tasks=seg+depth,block=1,init=average}: refused (no-common-source): fuse tasks seg+depth at block 1: ...
        step 2 fuse{tasks=seg+depth,block=0,init=average}: applied
        step 3 dce: applied, nothing changed
        2 of 3 steps applied; a refused step left the graph unchanged and the next steps ran on it
    """

    steps: tuple[StepOutcome, ...]
    result: PassResult

    def __str__(self) -> str:
        applied = sum(s.applied for s in self.steps)
        lines = [str(s) for s in self.steps]
        summary = f"{applied} of {len(self.steps)} steps applied"
        if applied < len(self.steps):
            summary += "; a refused step left the graph unchanged and the next steps ran on it"
        return "\n".join([*lines, summary])


def _passes(passes: Iterable[Pass] | str) -> list[Pass]:
    steps = parse_pipeline(passes) if isinstance(passes, str) else list(passes)
    for p in steps:
        if not isinstance(p, Pass):
            raise PassError(f"explain_pipeline expects pass objects, got {type(p).__name__} ({p!r})")
    return steps


def explain_pipeline(graph: MTGraph, params: ParamStore, passes: Iterable[Pass] | str) -> Explanation:
    """Ask every step of ``passes`` whether it applies, applying those that do (see the module docstring).

    The input graph is verified once; each applied step's output is verified
    like :func:`~mtgraph.passes.run_passes` does.

    Args:
        graph: the input graph.
        params: its store.
        passes: pass objects or a pipeline string.

    Returns:
        The :class:`Explanation`.

    Raises:
        ParseError: a pipeline string that does not parse.
        PassError: an element of ``passes`` that is not a pass, or ``params`` not a ParamStore.
        VerifyError: the input graph does not verify against ``params`` (no
            step can be explained on it), or a step produced an invalid graph.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.driver import explain_pipeline
        >>> problem = mtgraph.toy_problem()
        >>> graph = mtgraph.one_net(problem.backbone.num_blocks, problem.task_names)
        >>> params = mtgraph.ParamStore.create(graph, problem.backbone, problem.heads)
        >>> explanation = explain_pipeline(graph, params, "split{block=1,groups=seg/depth},skip{task=seg,block=0}")
        >>> [(s.applied, s.refusal and s.refusal.failed) for s in explanation.steps]
        [(True, None), (False, 'not-skippable')]
        >>> explanation.result.graph.weight_keys()
        ('b0.shared', 'b1.seg', 'b1.depth', 'head.seg', 'head.depth')
    """
    steps = _passes(passes)
    if not isinstance(params, ParamStore):
        raise PassError(f"explain_pipeline expects a ParamStore, got {type(params).__name__}")
    verify(graph, signature=params.signature, weight_keys=set(params.keys()))
    outcomes: list[StepOutcome] = []
    lineage, changed = Lineage(), False
    for index, p in enumerate(steps, start=1):
        refusal = p.precondition(graph, params)  # the graph verifies: the input, or an applied step's output
        if refusal is not None:
            outcomes.append(StepOutcome(index, str(p), refusal, False))
            continue
        result = p.apply(graph, params)
        verify(result.graph, signature=result.params.signature, weight_keys=set(result.params.keys()))
        outcomes.append(StepOutcome(index, str(p), None, result.changed))
        graph, params = result.graph, result.params
        lineage, changed = lineage.then(result.lineage), changed or result.changed
    return Explanation(tuple(outcomes), PassResult(graph=graph, params=params, lineage=lineage, changed=changed))


def format_after_step(index: int, pass_: Pass, graph: MTGraph) -> str:
    """The IR after step ``index`` (from 1), headed by an IR comment naming the step (``--print-after-all``).

    Examples:
        >>> import mtgraph
        >>> from mtgraph.driver import format_after_step
        >>> from mtgraph.passes import CSEPass
        >>> print(format_after_step(1, CSEPass(), mtgraph.one_net(1, ["seg"])), end="")
        # after step 1: cse
        %0 = input                                  # seg
        %1 = block 0 w=b0.seg (%0)                  # seg
        seg = head (%1)
    """
    return f"# after step {index}: {pass_}\n{print_graph(graph)}"

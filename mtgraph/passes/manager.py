"""The pass manager: run a sequence of passes, verifying once per step, composing the lineage."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from mtgraph.errors import MTGraphError, PassError
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.verify import verify
from mtgraph.params import ParamStore
from mtgraph.passes.base import Pass
from mtgraph.passes.lineage import Lineage
from mtgraph.passes.result import PassResult

__all__ = ["run_passes", "StepObserver"]

#: ``on_step(index, pass_, result)``: what :func:`run_passes` calls after each step.
StepObserver = Callable[[int, Pass, PassResult], None]


def _with_context(exc: Exception, message: str) -> Exception:
    if isinstance(exc, MTGraphError):
        try:
            return type(exc)(message)
        except TypeError:  # a subclass with a different constructor
            return PassError(message)
    return PassError(message)


def run_passes(
    graph: MTGraph,
    params: ParamStore,
    passes: Iterable[Pass] | str,
    *,
    on_step: StepObserver | None = None,
) -> PassResult:
    """Run ``passes`` in order, verifying the graph against the store once per step.

    ``passes`` is a sequence of pass objects or a pipeline string (see
    :func:`mtgraph.passes.parse_pipeline`). Any failure is re-raised with its
    type kept and the context prepended: ``while running 'fuse{...}' after
    ['cse']: ...``. The result's lineage is the composition of every pass's
    lineage (sources are keys of the input ``params``); ``changed`` is true if
    any pass changed something.

    Verification happens once per step: the input graph is checked once
    (with the first pass's :meth:`~Pass.check`), then each step's output is
    verified against its store (signature table and keys); the next step
    runs only its :meth:`~Pass.precondition` on that verified graph.

    Args:
        graph: the input graph.
        params: its store.
        passes: pass objects, or a pipeline string such as ``"fuse{tasks=S+D,block=0},dce"``.
        on_step: called as ``on_step(index, pass_, result)`` after each step
            (0-based index; ``result`` is that step's own PassResult), for
            example to print the IR after every pass.

    Returns:
        The last pass's graph and store, the composed lineage, and whether anything changed.

    Raises:
        ParseError: a pipeline string that does not parse.
        PassError: an element of ``passes`` that is not a pass, or a pass
            that refuses the graph (other errors keep their type).
        VerifyError: the input graph, or one produced by a pass, does not verify.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)),
        ...                          torch.randn(1, 3, 8, 8))
        >>> graph = mtgraph.stn(2, ("S", "D"))
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"S": nn.Conv2d(4, 1, 1), "D": nn.Conv2d(4, 1, 1)})
        >>> from mtgraph.passes import run_passes
        >>> result = run_passes(graph, params, "fuse{tasks=S+D,block=0},fuse{tasks=S+D,block=1}")
        >>> print(result.graph)
        %0 = input                                  # S D
        %1 = block 0 w=b0.shared (%0)               # S D
        %2 = block 1 w=b1.shared (%1)               # S D
        S = head (%2)
        D = head (%2)
        >>> result.lineage.new_keys
        ('b0.shared', 'b1.shared')
    """
    if isinstance(passes, str):
        from mtgraph.passes.pipeline import parse_pipeline

        passes = parse_pipeline(passes)
    passes = list(passes)
    for p in passes:
        if not isinstance(p, Pass):
            raise PassError(f"run_passes expects pass objects, got {type(p).__name__} ({p!r})")
    lineage = Lineage()
    changed = False
    done: list[str] = []
    for index, p in enumerate(passes):
        try:
            # The first step checks its input fully; later inputs are earlier outputs, verified below.
            refusal = p.check(graph, params) if index == 0 else p.precondition(graph, params)
            if refusal is not None:
                raise refusal.error()
            result = p.apply(graph, params)
            if not isinstance(result, PassResult):
                raise PassError(f"pass returned {type(result).__name__}, not a PassResult")
            if not isinstance(result.params, ParamStore):
                raise PassError(f"pass returned a store of type {type(result.params).__name__}, not a ParamStore")
            verify(result.graph, signature=result.params.signature, weight_keys=set(result.params.keys()))
        except Exception as exc:
            raise _with_context(exc, f"while running '{p}' after {done}: {exc}") from exc
        graph, params = result.graph, result.params
        lineage = lineage.then(result.lineage)
        changed = changed or result.changed
        done.append(p.name)
        if on_step is not None:
            on_step(index, p, result)
    return PassResult(graph=graph, params=params, lineage=lineage, changed=changed)

"""Refusals as values: why a pass does not apply, as a rewriter returns a failed match.

Every pass has ``check(graph, params) -> Refusal | None``; calling the pass
raises ``refusal.error()`` when there is one, so the exception's text is the
refusal's :attr:`~Refusal.text`, word for word. A strategy can therefore ask
"could I fuse S+E at block 3, and if not, why?" and log the answer as a
decision without catching anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtgraph.errors import MTGraphError, PassError, VerifyError

__all__ = ["Refusal", "REFUSAL_KINDS"]

#: What can fail, as :attr:`Refusal.failed` names it.
REFUSAL_KINDS: dict[str, str] = {
    "input-type": "the graph is not an MTGraph or the store not a ParamStore",
    "invalid-graph": "the input graph does not verify against the store (raised as VerifyError)",
    "unknown-task": "a task the pass names is not a task of the graph",
    "block-out-of-range": "a block the pass names is not a block of the backbone",
    "gated": "a task has several nodes of the block on its path (a gate sits there)",
    "skipped": "a task skips the block, so it has no Block node there",
    "no-common-source": "the tasks' Blocks do not consume one node (fuse)",
    "serves-other-tasks": "a node to fuse also serves tasks the pass does not name (fuse)",
    "not-shared": "the tasks do not share one node at the block (split)",
    "groups-incomplete": "the groups do not cover every task the shared node serves (split)",
    "not-skippable": "the block has no shortcut: its shapes differ and it is not residual",
    "structure-mismatch": "the weights to average have different structures (fuse)",
    "no-choice": "a gate's module cannot say which source it chose, or chose none of them (harden)",
}


@dataclass(frozen=True)
class Refusal:
    """Why pass ``step`` does not apply to a graph: the message, and the same facts as fields.

    Attributes:
        pass_name: the pass's registry name (``"fuse"``).
        step: the pass's pipeline text (``"fuse{tasks=S+E,block=3,init=average}"``).
        failed: what failed, one of :data:`REFUSAL_KINDS`.
        text: the full message; calling the pass raises it unchanged.
        tasks: the tasks concerned (those named in the failed condition).
        block: the block concerned, or None.
        nodes: ids of the offending nodes in the input graph.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.passes import FusePass
        >>> problem = mtgraph.toy_problem()
        >>> graph = mtgraph.stn(problem.backbone.num_blocks, problem.task_names)
        >>> params = mtgraph.ParamStore.create(graph, problem.backbone, problem.heads)
        >>> refusal = FusePass(problem.task_names, block=1).check(graph, params)
        >>> refusal.failed, refusal.block, refusal.tasks
        ('no-common-source', 1, ('seg', 'depth'))
        >>> print(refusal.text)  # doctest: +ELLIPSIS
        fuse tasks seg+depth at block 1: the tasks do not share a source at block 1 (...); fusing needs ...
        >>> FusePass(problem.task_names, block=0).check(graph, params) is None
        True
    """

    pass_name: str
    step: str
    failed: str
    text: str
    tasks: tuple[str, ...] = ()
    block: int | None = None
    nodes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.failed not in REFUSAL_KINDS:
            raise PassError(f"refusal of {self.step!r}: failed must be one of {sorted(REFUSAL_KINDS)}, got {self.failed!r}")
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "nodes", tuple(self.nodes))

    def error(self) -> MTGraphError:
        """The exception calling the pass raises: VerifyError for an invalid input graph, PassError otherwise."""
        return VerifyError(self.text) if self.failed == "invalid-graph" else PassError(self.text)

    def __str__(self) -> str:
        return self.text

"""The pass contract: a frozen dataclass whose fields are its options, with ``check`` and ``apply``.

A pass is a frozen dataclass whose fields are its options, with a class-level
``name``. Its three methods:

* ``check(graph, params) -> Refusal | None``: why the pass does not apply, as a
  value (None: it applies). It never raises for any graph or store.
* ``apply(graph, params) -> PassResult``: the rewrite, for inputs ``check``
  accepted.
* ``pass_(graph, params)``: ``check``, raising ``refusal.error()`` (same text)
  on a refusal, then ``apply``.

Subclasses implement :meth:`Pass.precondition` (the pass's own conditions, on
a graph already known to verify) and :meth:`Pass.apply`.

Conventions every pass follows (so strategies can rely on them):

* **Canonical output.** The structural passes (fuse, split, skip, gate,
  harden) rebuild the graph task by task with hash-consing (see
  :func:`~mtgraph.passes.rewrite.rewrite_paths`), so their result has no
  duplicate and no dead node and is in canonical node order: its printed text
  is stable.
* **New keys are new names.** A pass never reuses a key that the input graph
  or store holds; it allocates a fresh one from the ``group_key`` convention
  (``b3.S+E``) with a ``-2``, ``-3`` ... suffix when that name is taken
  (:class:`~mtgraph.passes.keys.KeyAllocator`). So a key present before and
  after a pass with no lineage entry names the *same* weights.
* **A pass drops what it made unused.** Keys the input graph used and the
  output graph no longer uses leave the store (they are listed in
  ``Lineage.dropped``); ``dce`` additionally drops every unused key.
* **Passes read the signature table**, ``params.signature``, for block
  shapes, skippability and counts; never the traced backbone.
"""

from __future__ import annotations

from typing import ClassVar

from mtgraph.errors import VerifyError
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.verify import verify
from mtgraph.params import ParamStore
from mtgraph.passes.option_text import format_pass
from mtgraph.passes.refusal import Refusal
from mtgraph.passes.result import PassResult

__all__ = ["Pass"]


class Pass:
    """Base class of every pass: subclasses are frozen dataclasses that set ``name`` and implement :meth:`apply`.

    Calling a pass runs :meth:`check` (input types, the graph verifies against
    the store's signature table and keys, then the pass's own
    :meth:`precondition`) and raises the refusal's error, PassError, or
    VerifyError for a graph that does not verify; otherwise it runs
    :meth:`apply`.

    Examples:
        >>> from mtgraph.passes import DCEPass, FusePass, Pass
        >>> isinstance(DCEPass(), Pass), str(FusePass(("S", "E"), block=3))  # str: its pipeline text
        (True, 'fuse{tasks=S+E,block=3,init=average}')
        >>> DCEPass().check("not a graph", None).text
        "'dce' expects an MTGraph, got str"
        >>> DCEPass()("not a graph", None)
        Traceback (most recent call last):
        ...
        mtgraph.errors.PassError: 'dce' expects an MTGraph, got str
    """

    name: ClassVar[str] = ""

    def check(self, graph: MTGraph, params: ParamStore) -> Refusal | None:
        """Why this pass does not apply to ``graph`` and ``params``, or None when it does.

        Never raises for any graph or store: a bad type, a graph that does
        not verify, and every condition of the pass come back as a
        :class:`~mtgraph.passes.Refusal`. Calling the pass raises exactly
        ``refusal.error()``.

        Args:
            graph: the input graph.
            params: its store.

        Returns:
            The refusal, or None.
        """
        if not isinstance(graph, MTGraph):
            return self.refuse("input-type", f"'{self}' expects an MTGraph, got {type(graph).__name__}")
        if not isinstance(params, ParamStore):
            return self.refuse("input-type", f"'{self}' expects a ParamStore, got {type(params).__name__}")
        try:
            verify(graph, signature=params.signature, weight_keys=set(params.keys()))
        except VerifyError as exc:
            return self.refuse("invalid-graph", f"the input graph of '{self}' is invalid: {exc}")
        return self.precondition(graph, params)

    def precondition(self, graph: MTGraph, params: ParamStore) -> Refusal | None:
        """The pass's own conditions on a graph that verifies against ``params``; subclasses override it.

        The pass manager calls it directly for every step after the first:
        each step's output was verified already.
        """
        return None

    def apply(self, graph: MTGraph, params: ParamStore) -> PassResult:
        """Rewrite ``graph`` and ``params``, which :meth:`check` accepted; subclasses implement this."""
        raise NotImplementedError

    def refuse(
        self,
        failed: str,
        text: str,
        *,
        tasks: tuple[str, ...] = (),
        block: int | None = None,
        nodes: tuple[int, ...] = (),
    ) -> Refusal:
        """A :class:`~mtgraph.passes.Refusal` of this pass (its name and pipeline text filled in)."""
        return Refusal(pass_name=self.name, step=str(self), failed=failed, text=text, tasks=tasks, block=block, nodes=nodes)

    def __call__(self, graph: MTGraph, params: ParamStore) -> PassResult:
        refusal = self.check(graph, params)
        if refusal is not None:
            raise refusal.error()
        return self.apply(graph, params)

    def __str__(self) -> str:
        return format_pass(self)

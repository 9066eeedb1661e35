"""Rewrite passes over an MTGraph and its ParamStore.

A pass is a frozen dataclass whose fields are its options; ``pass_(graph,
params)`` returns a :class:`PassResult` (new graph, new store, lineage of new
weights, changed flag), and ``pass_.check(graph, params)`` returns the
:class:`Refusal` it would raise (or None) without raising.
:func:`run_passes` runs a sequence of passes, verifying once per step; a
pipeline can be written as one line (:func:`parse_pipeline` /
:func:`format_pipeline`), e.g. ``fuse{tasks=S+E,block=3,init=average},dce``.
:func:`remap_optimizer` carries optimizer state across a rewrite using the
lineage.

The contract lives in small modules, one concern each: ``base`` (the
:class:`Pass` class: check, precondition, apply), ``refusal``, ``result``,
``lineage``, ``manager`` (:func:`run_passes`), ``option_text`` (how options
are written), ``rewrite`` (path rewriting), ``keys`` (new key names),
``averaging`` and ``checks`` (what the passes share).

The passes (name in a pipeline string -> class):

* ``fuse`` -> :class:`FusePass`: tasks sharing a source at block b get one Block;
* ``split`` -> :class:`SplitPass`: a shared Block becomes one copy per task subset;
* ``skip`` -> :class:`SkipPass`: a task bypasses block b (runs its shortcut);
* ``gate`` -> :class:`GatePass`: a public and a private path joined by a learned Gate;
* ``harden`` -> :class:`HardenPass`: every Gate becomes its chosen source;
* ``cse`` -> :class:`CSEPass`: merge equal nodes, canonical order;
* ``dce`` -> :class:`DCEPass`: drop dead nodes and unused weights.
"""

from mtgraph.passes.base import Pass
from mtgraph.passes.cse import CSEPass
from mtgraph.passes.dce import DCEPass
from mtgraph.passes.fuse import FUSE_INITS, FusePass
from mtgraph.passes.gate import PRIVATE_INITS, GatePass
from mtgraph.passes.harden import HardenPass
from mtgraph.passes.lineage import HOWS, Lineage, LineageEntry
from mtgraph.passes.manager import StepObserver, run_passes
from mtgraph.passes.optim import remap_optimizer
from mtgraph.passes.pipeline import REGISTRY, format_pipeline, parse_pipeline, pass_class
from mtgraph.passes.refusal import REFUSAL_KINDS, Refusal
from mtgraph.passes.result import PassResult
from mtgraph.passes.skip import SkipPass
from mtgraph.passes.split import SplitPass

__all__ = [
    "Pass", "PassResult", "Refusal", "REFUSAL_KINDS", "Lineage", "LineageEntry", "HOWS", "run_passes", "StepObserver",
    "FusePass", "SplitPass", "SkipPass", "GatePass", "HardenPass", "CSEPass", "DCEPass",
    "FUSE_INITS", "PRIVATE_INITS",
    "REGISTRY", "pass_class", "parse_pipeline", "format_pipeline",
    "remap_optimizer",
]

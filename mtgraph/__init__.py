"""mtgraph: compile multi-task neural network architectures.

A backbone is traced into a chain of blocks (:func:`trace`); a multi-task
architecture over those blocks is an :class:`MTGraph` with weights in a
:class:`ParamStore`; :func:`compile` turns both into one module computing every
shared block once, and :func:`cost` measures it.
"""

from mtgraph.analysis.cost import CostReport, cost
from mtgraph.budget import Budget
from mtgraph.compile import compile
from mtgraph.errors import (
    BudgetError,
    CheckpointError,
    CompileError,
    ConfigError,
    CutError,
    DataError,
    ExportError,
    HeadError,
    IRError,
    MTGraphError,
    ParseError,
    PassError,
    TraceError,
    TrainError,
    VerifyError,
)
from mtgraph.evaluation import evaluate
from mtgraph.frontend import Backbone, BlockInfo, trace
from mtgraph.ir import MTGraph, from_groups, one_net, parse_graph, print_graph, stn, verify
from mtgraph.modules import MemberHead, MixGate
from mtgraph.params import ParamStore
from mtgraph.persist import load, save
from mtgraph.problem import Problem, toy_problem
from mtgraph.reopen import open  # noqa: A004 - mtgraph.open reopens a saved folder

__all__ = [
    "trace", "Backbone", "BlockInfo",
    "MTGraph", "stn", "one_net", "from_groups", "parse_graph", "print_graph", "verify",
    "ParamStore", "MixGate", "MemberHead", "compile", "cost", "CostReport", "save", "load", "open", "Problem", "Budget", "toy_problem",
    "evaluate",
    "MTGraphError", "TraceError", "CutError", "HeadError", "IRError", "ParseError", "VerifyError",
    "PassError", "CompileError", "ExportError", "DataError", "TrainError", "CheckpointError",
    "ConfigError", "BudgetError",
]
__version__ = "0.1.0"

"""The intermediate representation: nodes, the graph value, text form, verifier, builders and the block signature table."""

from mtgraph.ir.builders import SHARED, from_groups, group_key, one_net, stn
from mtgraph.ir.canonical import canonicalize, merge_duplicates, remove_dead
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.names import RESERVED_TASK_NAMES
from mtgraph.ir.nodes import Block, Gate, Head, Input, Node, Skip, head_weights
from mtgraph.ir.signature import BackboneSignature, BlockSignature, Shortcut, TensorSignature
from mtgraph.ir.text import parse_graph, print_graph
from mtgraph.ir.verify import check_canonical, verify

__all__ = [
    "MTGraph", "Node", "Input", "Block", "Skip", "Gate", "Head", "head_weights",
    "print_graph", "parse_graph", "verify", "check_canonical",
    "canonicalize", "merge_duplicates", "remove_dead",
    "stn", "one_net", "from_groups", "group_key", "SHARED", "RESERVED_TASK_NAMES",
    "BackboneSignature", "BlockSignature", "TensorSignature", "Shortcut",
]

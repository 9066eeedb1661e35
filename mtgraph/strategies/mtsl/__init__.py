"""MTSL strategy (papers/000): CKA-aligned task nodes fused layer by layer.

The entry point is :class:`MTSLStrategy` (``registry()["mtsl"]``), whose
``learn(problem, config)`` takes a :class:`~mtgraph.Problem`;
:func:`learn_mtsl` is the former entry point, kept for one release.
``grouping`` holds Algorithm 2 (which task nodes to fuse), ``alignment`` the
task-node vocabulary and the CKA term of eq. 1, ``amalgamation`` the ATT
distillation of eq. 2, ``schedule`` Algorithm 1's phases, ``config`` the
options, ``structural`` one structural phase and ``strategy`` the driver.
"""

from mtgraph.strategies.mtsl.alignment import (
    LOSS_BALANCES,
    FeatureTap,
    LossBalance,
    SiblingSet,
    alignment_loss,
    alignment_pairs,
    alignment_sets,
    block_weights,
    run_prefix,
    sibling_sets,
    task_nodes,
)
from mtgraph.strategies.mtsl.amalgamation import (
    AmalgamationJob,
    ChannelAttention,
    amalgamate,
    amalgamation_loss,
    attention_networks,
)
from mtgraph.strategies.mtsl.config import MTSLConfig
from mtgraph.strategies.mtsl.entry import MTSLStrategy, learn_mtsl
from mtgraph.strategies.mtsl.grouping import (
    MAX_TASK_NODES,
    RULES,
    GroupDecision,
    GroupingResult,
    bell_number,
    group_task_nodes,
    set_partitions,
)
from mtgraph.strategies.mtsl.schedule import (
    PAPER_ATT_EPOCHS,
    PAPER_TASK_EPOCHS,
    PAPER_TOTAL_EPOCHS,
    Phase,
    Schedule,
    build_schedule,
    epochs_to_steps,
    map_profile,
)
from mtgraph.strategies.mtsl.strategy import MTSLHook, tree_rows
from mtgraph.strategies.mtsl.structural import StructuralOutcome, measure_task_nodes, structural_step

__all__ = [
    "MTSLStrategy",
    "learn_mtsl",
    "MTSLConfig",
    "MTSLHook",
    "tree_rows",
    "StructuralOutcome",
    "measure_task_nodes",
    "structural_step",
    "AmalgamationJob",
    "amalgamate",
    "FeatureTap",
    "SiblingSet",
    "LOSS_BALANCES",
    "LossBalance",
    "alignment_loss",
    "alignment_pairs",
    "alignment_sets",
    "block_weights",
    "run_prefix",
    "sibling_sets",
    "task_nodes",
    "ChannelAttention",
    "amalgamation_loss",
    "attention_networks",
    "MAX_TASK_NODES",
    "RULES",
    "GroupDecision",
    "GroupingResult",
    "bell_number",
    "group_task_nodes",
    "set_partitions",
    "PAPER_ATT_EPOCHS",
    "PAPER_TASK_EPOCHS",
    "PAPER_TOTAL_EPOCHS",
    "Phase",
    "Schedule",
    "build_schedule",
    "epochs_to_steps",
    "map_profile",
]

"""Training: one loop for every strategy, hooks, checkpoints, evaluation, torchrun DDP.

:func:`fit` trains a graph and its params on tasks; strategies plug in through
:class:`Hook` (extra loss terms, per-step/epoch actions, mid-training
:class:`Rewrite`) and :class:`OptimizerGroup` (alternating optimizers on
separate data). :func:`evaluate` measures every task's metrics. Checkpoints
are safetensors + JSON, never pickle, and a resumed run is bit-identical to an
uninterrupted one on CPU; :func:`checkpointing` checkpoints every ``fit`` call
of a block (a whole strategy run) without passing a folder to each.
"""

from mtgraph.train.checkpoint import (
    Checkpoint,
    CheckpointConfig,
    CheckpointWarning,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resume_checkpoint,
)
from mtgraph.train.distributed import DistContext, init_distributed, shutdown
from mtgraph.train.evaluate import MetricsTable, evaluate
from mtgraph.train.hooks import Hook, Rewrite, TrainState, as_lineage
from mtgraph.train.loop import FitResult, History, OptimizerGroup, adam, fit, sgd
from mtgraph.train.session import CheckpointSession, checkpointing

__all__ = [
    "fit",
    "FitResult",
    "History",
    "OptimizerGroup",
    "adam",
    "sgd",
    "Hook",
    "TrainState",
    "Rewrite",
    "as_lineage",
    "evaluate",
    "MetricsTable",
    "CheckpointConfig",
    "Checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "resume_checkpoint",
    "CheckpointWarning",
    "list_checkpoints",
    "checkpoint_path",
    "checkpointing",
    "CheckpointSession",
    "DistContext",
    "init_distributed",
    "shutdown",
]
